//! C-GET driven by DCMTK's getscu: C-STORE sub-operations on the same
//! association, stored transfer syntaxes only (never transcoded).

mod common;

use std::collections::BTreeMap;

use common::{CALLING, Server, TestScu, dcmtk_tool, split_part10, study_identifier};
use pacs_dicom_gateway::dimse::tag;
use pacs_fixtures::{DatasetSpec, FixtureFile, Kind, ts};

/// getscu proposes one storage context per SOP class, Explicit VR Little
/// Endian first, and the gateway accepts the first syntax it supports; as
/// it never transcodes, only instances stored in that syntax can go back
/// to getscu (the others are failed sub-operations, listed).
fn getscu_accepts(syntax: &str) -> bool {
    syntax == ts::EXPLICIT_VR_LE
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn getscu_retrieves_stored_instances_as_stored() {
    if !common::dcmtk_tools(&["getscu", "dcmconv"]) {
        return;
    }
    let mut server = Server::start(|_| {}).await;
    let files: Vec<FixtureFile> = DatasetSpec::small().iter().collect();
    for f in &files {
        let (syntax, data) = split_part10(&f.bytes);
        let mut scu = TestScu::connect(server.addr, &[(f.sop_class_uid.as_str(), syntax.as_str())])
            .await
            .unwrap();
        let rsp = scu.store(&f.sop_class_uid, &f.sop_instance_uid, data).await;
        assert_eq!(rsp.us(tag::STATUS), Some(0));
        scu.association.release().await.unwrap();
    }
    // A study holding both retrievable and (for getscu) unacceptable syntaxes.
    let mut by_study: BTreeMap<&str, Vec<&FixtureFile>> = BTreeMap::new();
    for f in &files {
        by_study.entry(&f.study_instance_uid).or_default().push(f);
    }
    let (study, members) = by_study
        .iter()
        .find(|(_, m)| {
            m.iter().any(|f| getscu_accepts(f.transfer_syntax))
                && m.iter().any(|f| !getscu_accepts(f.transfer_syntax))
        })
        .expect("a study with mixed syntaxes");
    let out = tempfile::tempdir().unwrap();
    let port = server.port();
    let key = format!("StudyInstanceUID={study}");
    let (_, log) = dcmtk_tool(
        "getscu",
        &[
            "-d",
            "-aet",
            CALLING,
            "-aec",
            "PACS",
            "-S",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            &key,
            "-od",
            out.path().to_str().unwrap(),
            "127.0.0.1",
            &port,
        ],
    )
    .await;
    let received: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    let expected: Vec<&&FixtureFile> = members
        .iter()
        .filter(|f| getscu_accepts(f.transfer_syntax))
        .collect();
    assert_eq!(received.len(), expected.len(), "{log}");
    let work = tempfile::tempdir().unwrap();
    for f in expected {
        let got = received
            .iter()
            .find(|b| {
                b.windows(f.sop_instance_uid.len())
                    .any(|w| w == f.sop_instance_uid.as_bytes())
            })
            .unwrap_or_else(|| panic!("{} not received", f.sop_instance_uid));
        let (got_ts, got_data) = split_part10(got);
        assert_eq!(got_ts, f.transfer_syntax);
        let (_, sent_data) = split_part10(&f.bytes);
        if got_data != sent_data {
            // getscu writes what it received through DCMTK (explicit
            // sequence lengths): compare with DCMTK's encoding of the file.
            let original = work.path().join("o.dcm");
            let converted = work.path().join("c.bin");
            std::fs::write(&original, &f.bytes).unwrap();
            let (ok, out) = dcmtk_tool(
                "dcmconv",
                &[
                    "-F",
                    "+e",
                    original.to_str().unwrap(),
                    converted.to_str().unwrap(),
                ],
            )
            .await;
            assert!(ok, "{out}");
            assert!(
                got_data == std::fs::read(&converted).unwrap().as_slice(),
                "{} came back different",
                f.file_name
            );
        }
    }
    // getscu ends cleanly (no unread data set in its way).
    assert!(!log.contains("Release Failed"), "{log}");
    // The failures were reported: Warning B000 with the counts, as getscu
    // read them from the final C-GET-RSP.
    let last = log
        .rfind("C-GET RSP")
        .unwrap_or_else(|| panic!("no C-GET response: {log}"));
    let final_part = &log[last..];
    let value = |label: &str| {
        final_part
            .lines()
            .find_map(|l| l.trim_start_matches("D: ").trim().strip_prefix(label))
            .map(|v| v.trim_start_matches([' ', ':']).trim().to_owned())
    };
    assert!(
        value("DIMSE Status").is_some_and(|s| s.starts_with("0xb000")),
        "{final_part}"
    );
    let failed = members.len() - received.len();
    assert!(failed > 0);
    assert_eq!(
        value("Completed Suboperations"),
        Some(received.len().to_string()),
        "{final_part}"
    );
    assert_eq!(
        value("Failed Suboperations"),
        Some(failed.to_string()),
        "{final_part}"
    );
    assert_eq!(
        value("Warning Suboperations"),
        Some("0".into()),
        "{final_part}"
    );
    server.shutdown().await;
}

const STUDY_ROOT_GET: &str = "1.2.840.10008.5.1.4.1.2.2.3";

/// The uncompressed syntaxes, one storage context each for every SOP class
/// of `files` (SCP role proposed), plus the C-GET context.
async fn uncompressed_get_scu(server: &Server, files: &[&FixtureFile]) -> TestScu {
    let mut classes: Vec<&str> = files.iter().map(|f| f.sop_class_uid.as_str()).collect();
    classes.sort();
    classes.dedup();
    let mut contexts = vec![(STUDY_ROOT_GET, ts::IMPLICIT_VR_LE)];
    for class in &classes {
        for syntax in [ts::IMPLICIT_VR_LE, ts::EXPLICIT_VR_LE, ts::EXPLICIT_VR_BE] {
            contexts.push((class, syntax));
        }
    }
    TestScu::connect_with_scp_roles(server.addr, &contexts, &classes)
        .await
        .unwrap()
}

fn uncompressed(syntax: &str) -> bool {
    [ts::IMPLICIT_VR_LE, ts::EXPLICIT_VR_LE, ts::EXPLICIT_VR_BE].contains(&syntax)
}

async fn store_all(server: &Server, files: &[&FixtureFile]) {
    for f in files {
        let (syntax, data) = split_part10(&f.bytes);
        let mut scu = TestScu::connect(server.addr, &[(f.sop_class_uid.as_str(), syntax.as_str())])
            .await
            .unwrap();
        let rsp = scu.store(&f.sop_class_uid, &f.sop_instance_uid, data).await;
        assert_eq!(rsp.us(tag::STATUS), Some(0));
        scu.association.release().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_without_contexts_for_some_stored_syntaxes_counts_them_failed() {
    let mut server = Server::start(|_| {}).await;
    let files: Vec<FixtureFile> = DatasetSpec::small().iter().collect();
    let study = files
        .iter()
        .map(|f| f.study_instance_uid.as_str())
        .find(|s| {
            let kinds = files
                .iter()
                .filter(|f| f.study_instance_uid == *s)
                .map(|f| uncompressed(f.transfer_syntax));
            kinds.clone().any(|u| u) && kinds.clone().any(|u| !u)
        })
        .expect("a study with compressed and uncompressed instances")
        .to_owned();
    let members: Vec<&FixtureFile> = files
        .iter()
        .filter(|f| f.study_instance_uid == study)
        .collect();
    store_all(&server, &members).await;
    let mut sent: Vec<String> = members
        .iter()
        .filter(|f| uncompressed(f.transfer_syntax))
        .map(|f| f.sop_instance_uid.clone())
        .collect();
    sent.sort();
    let failed = members.len() - sent.len();

    let mut scu = uncompressed_get_scu(&server, &members).await;
    let mut got = scu
        .retrieve(STUDY_ROOT_GET, None, &study_identifier(&[&study]))
        .await;
    scu.association.release().await.unwrap();
    assert_eq!(got.status(), 0xB000, "{got:?}");
    assert_eq!(
        got.counts(),
        (Some(sent.len() as u16), Some(failed as u16), Some(0)),
        "{got:?}"
    );
    assert_eq!(got.pending.len(), members.len() - 1, "{got:?}");
    got.stored.sort();
    assert_eq!(got.stored, sent);
    // The Failed SOP Instance UID List is logged, not sent, for C-GET
    // (getscu cannot read it; see services/get.rs).
    assert_eq!(got.identifier, None);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_where_every_sub_operation_fails_is_refused_a702_with_counts() {
    let mut server = Server::start(|_| {}).await;
    let jpeg = pacs_fixtures::single(Kind::Ct, ts::JPEG_BASELINE, 7);
    let rle = pacs_fixtures::single(Kind::Mr, ts::RLE_LOSSLESS, 8);
    store_all(&server, &[&jpeg, &rle]).await;
    let mut scu = uncompressed_get_scu(&server, &[&jpeg, &rle]).await;
    let got = scu
        .retrieve(
            STUDY_ROOT_GET,
            None,
            &study_identifier(&[&jpeg.study_instance_uid, &rle.study_instance_uid]),
        )
        .await;
    scu.association.release().await.unwrap();
    assert_eq!(got.status(), 0xA702, "{got:?}");
    assert_eq!(got.counts(), (Some(0), Some(2), Some(0)), "{got:?}");
    assert!(got.stored.is_empty(), "{got:?}");
    server.shutdown().await;
}
