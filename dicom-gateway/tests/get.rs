//! C-GET driven by DCMTK's getscu: C-STORE sub-operations on the same
//! association, stored transfer syntaxes only (never transcoded).

mod common;

use std::collections::BTreeMap;

use common::{CALLING, Server, TestScu, dcmtk_tool, split_part10};
use pacs_dicom_gateway::dimse::tag;
use pacs_fixtures::{DatasetSpec, FixtureFile, ts};

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
    // The failures were reported: a warning status with counts.
    assert!(
        log.contains("Warning") || log.contains("B000") || log.to_lowercase().contains("failed"),
        "{log}"
    );
    server.shutdown().await;
}
