//! C-MOVE driven by DCMTK's movescu, with DCMTK's storescp as the move
//! destination (bit-preserving, so what it writes is what it received).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{
    CALLING, IMPLICIT_VR_LE, Server, TIMEOUT, TestScu, dcmtk_tool, split_part10, study_identifier,
};
use pacs_dicom_gateway::MoveDestination;
use pacs_dicom_gateway::dimse::tag;
use pacs_fixtures::{DatasetSpec, FixtureFile, Kind, ts};

const STUDY_ROOT_MOVE: &str = "1.2.840.10008.5.1.4.1.2.2.2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn movescu_moves_a_study_to_storescp_byte_for_byte() {
    if !common::dcmtk_tools(&["movescu", "storescp"]) {
        return;
    }
    // Every transfer syntax accepted, files written as received.
    let (_storescp, port, received) = storescp(&["+xa", "+B"]).await;
    let mut server = gateway_moving_to(port).await;
    let files: Vec<FixtureFile> = DatasetSpec::small().iter().collect();
    store_all(&server, &files.iter().collect::<Vec<_>>()).await;
    // The study with the most transfer syntaxes.
    let study = files
        .iter()
        .map(|f| f.study_instance_uid.clone())
        .max_by_key(|s| {
            let mut syntaxes: Vec<_> = files
                .iter()
                .filter(|f| &f.study_instance_uid == s)
                .map(|f| f.transfer_syntax)
                .collect();
            syntaxes.sort();
            syntaxes.dedup();
            syntaxes.len()
        })
        .unwrap();
    let members: Vec<&FixtureFile> = files
        .iter()
        .filter(|f| f.study_instance_uid == study)
        .collect();
    let port_text = server.port();
    let key = format!("StudyInstanceUID={study}");
    let (ok, log) = dcmtk_tool(
        "movescu",
        &[
            "-aet",
            CALLING,
            "-aec",
            "PACS",
            "-aem",
            "DEST",
            "-S",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            &key,
            "127.0.0.1",
            &port_text,
        ],
    )
    .await;
    assert!(ok, "{log}");
    let got: Vec<Vec<u8>> = std::fs::read_dir(received.path())
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(got.len(), members.len(), "{log}");
    for f in members {
        let file = got
            .iter()
            .find(|b| {
                b.windows(f.sop_instance_uid.len())
                    .any(|w| w == f.sop_instance_uid.as_bytes())
            })
            .unwrap_or_else(|| panic!("{} not moved", f.sop_instance_uid));
        let (got_ts, got_data) = split_part10(file);
        let (sent_ts, sent_data) = split_part10(&f.bytes);
        if got_ts == sent_ts {
            assert!(got_data == sent_data, "{} changed on the way", f.file_name);
        } else {
            // storescp (3.6.7) writes a Big Endian data set as Explicit VR
            // Little Endian even with --bit-preserving (its own conversion):
            // the gateway sent it in Big Endian, as stored.
            assert_eq!(
                sent_ts,
                pacs_fixtures::ts::EXPLICIT_VR_BE,
                "{}",
                f.file_name
            );
            assert_eq!(got_ts, pacs_fixtures::ts::EXPLICIT_VR_LE, "{}", f.file_name);
        }
    }

    // An unknown destination is refused with 0xA801.
    let (ok, log) = dcmtk_tool(
        "movescu",
        &[
            "-aet",
            CALLING,
            "-aec",
            "PACS",
            "-aem",
            "NOWHERE",
            "-S",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            &key,
            "127.0.0.1",
            &port_text,
        ],
    )
    .await;
    let _ = ok;
    assert!(
        log.contains("a801") || log.contains("A801") || log.contains("Destination"),
        "{log}"
    );
    server.shutdown().await;
}

/// Start DCMTK's storescp as AE "DEST" with `options`, writing into a
/// fresh directory; returns once it listens. (Its port is found by binding
/// and releasing one: a small race, covered by waiting until it listens.)
async fn storescp(options: &[&str]) -> (tokio::process::Child, u16, tempfile::TempDir) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let received = tempfile::tempdir().unwrap();
    let child = tokio::process::Command::new("/usr/bin/storescp")
        .args(["-aet", "DEST"])
        .args(options)
        .arg("-od")
        .arg(received.path())
        .arg(port.to_string())
        .env("TCP_NODELAY", "1")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "storescp did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (child, port, received)
}

async fn gateway_moving_to(port: u16) -> Server {
    Server::start(|c| {
        c.move_destinations.push(MoveDestination {
            ae_title: "DEST".into(),
            host: "127.0.0.1".into(),
            port,
        })
    })
    .await
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

/// Store the JPEG baseline instance `f` as if it were `syntax` (a syntax
/// whose encapsulated pixel data the archive has no decoder for, such as
/// JPEG-LS or JPEG 2000): it can only ever go out as stored.
async fn store_claiming(server: &Server, f: &FixtureFile, syntax: &str) {
    assert_eq!(f.transfer_syntax, ts::JPEG_BASELINE);
    let (_, data) = split_part10(&f.bytes);
    let mut scu = TestScu::connect(server.addr, &[(f.sop_class_uid.as_str(), syntax)])
        .await
        .unwrap();
    let rsp = scu.store(&f.sop_class_uid, &f.sop_instance_uid, data).await;
    assert_eq!(rsp.us(tag::STATUS), Some(0));
    scu.association.release().await.unwrap();
}

const JPEG_LS_LOSSLESS: &str = "1.2.840.10008.1.2.4.80";
const JPEG_2000_LOSSLESS: &str = "1.2.840.10008.1.2.4.90";

/// The transfer syntax of the files storescp wrote into `dir`.
fn received_syntaxes(dir: &std::path::Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| split_part10(&std::fs::read(e.unwrap().path()).unwrap()).0)
        .collect()
}

/// Which of `uids` did storescp write into `dir`? (Read from the files'
/// SOP Instance UID: reports reference the images of their study, so a
/// byte search would find those too.)
fn received_uids(dir: &std::path::Path, uids: &[&str]) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let object = dicom_object::open_file(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            object
                .element(dicom_core::Tag(0x0008, 0x0018))
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end_matches(['\0', ' '])
                .to_owned()
        })
        .filter(|u| uids.contains(&u.as_str()))
        .collect()
}

/// The values movescu prints for a command element in its debug dump of
/// the responses, e.g. "D: Failed Suboperations          : 2".
fn dumped(log: &str, label: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.trim_start_matches("D: ").trim().strip_prefix(label))
        .map(|v| v.trim_start_matches([' ', ':']).trim().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_to_an_implicit_only_destination_converts_and_lists_what_cannot_be() {
    if !common::dcmtk_tools(&["movescu", "storescp"]) {
        return;
    }
    // storescp taking Implicit VR Little Endian only.
    let (_storescp, port, received) = storescp(&["+xi"]).await;
    let mut server = gateway_moving_to(port).await;
    let files: Vec<FixtureFile> = DatasetSpec::small().iter().collect();
    // The study with the most transfer syntaxes.
    let study = files
        .iter()
        .map(|f| f.study_instance_uid.clone())
        .max_by_key(|s| {
            let mut syntaxes: Vec<_> = files
                .iter()
                .filter(|f| &f.study_instance_uid == s)
                .map(|f| f.transfer_syntax)
                .collect();
            syntaxes.sort();
            syntaxes.dedup();
            syntaxes.len()
        })
        .unwrap();
    let mut members: Vec<&FixtureFile> = files
        .iter()
        .filter(|f| f.study_instance_uid == study)
        .collect();
    assert!(
        members.iter().any(
            |f| f.transfer_syntax == ts::JPEG_BASELINE || f.transfer_syntax == ts::RLE_LOSSLESS
        )
    );
    store_all(&server, &members).await;

    // Every instance of the study arrives, converted where needed.
    let port_text = server.port();
    let key = format!("StudyInstanceUID={study}");
    let (ok, log) = dcmtk_tool(
        "movescu",
        &[
            "-d",
            "-aet",
            CALLING,
            "-aec",
            "PACS",
            "-aem",
            "DEST",
            "-S",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            &key,
            "127.0.0.1",
            &port_text,
        ],
    )
    .await;
    assert!(ok, "{log}");
    let last = log
        .rfind("Received Final Move Response")
        .unwrap_or_else(|| panic!("no final response: {log}"));
    assert!(log[last..].contains("0x0000"), "{}", &log[last..]);
    assert_eq!(
        dumped(&log[last..], "Completed Suboperations").first(),
        Some(&members.len().to_string()),
        "{}",
        &log[last..]
    );
    let all: Vec<&str> = members
        .iter()
        .map(|f| f.sop_instance_uid.as_str())
        .collect();
    assert_eq!(
        received_uids(received.path(), &all).len(),
        members.len(),
        "{log}"
    );
    assert_eq!(
        received_syntaxes(received.path()),
        BTreeSet::from([IMPLICIT_VR_LE.to_owned()])
    );

    // An instance stored in JPEG-LS cannot be decoded here: with it in the
    // move, it is the one failed sub-operation.
    let jpeg_ls = pacs_fixtures::single(Kind::Ct, ts::JPEG_BASELINE, 31);
    store_claiming(&server, &jpeg_ls, JPEG_LS_LOSSLESS).await;
    members.push(&jpeg_ls);
    let uids: Vec<&str> = members
        .iter()
        .map(|f| f.sop_instance_uid.as_str())
        .collect();
    let refused: BTreeSet<String> = BTreeSet::from([jpeg_ls.sop_instance_uid.clone()]);
    let moved = uids.len() - refused.len();
    let both_studies = [study.as_str(), jpeg_ls.study_instance_uid.as_str()];

    // The crate's SCU reads the final response element by element.
    let mut scu = TestScu::connect(server.addr, &[(STUDY_ROOT_MOVE, IMPLICIT_VR_LE)])
        .await
        .unwrap();
    let got = scu
        .retrieve(
            STUDY_ROOT_MOVE,
            Some("DEST"),
            &study_identifier(&both_studies),
        )
        .await;
    scu.association.release().await.unwrap();
    assert_eq!(got.status(), 0xB000, "{got:?}");
    assert_eq!(
        got.counts(),
        (Some(moved as u16), Some(refused.len() as u16), Some(0)),
        "{got:?}"
    );
    assert_eq!(
        got.last.us(tag::REMAINING_SUB_OPERATIONS).unwrap_or(0),
        0,
        "{got:?}"
    );
    assert_eq!(
        got.failed_uids(),
        Some(refused.iter().cloned().collect::<Vec<_>>())
    );
    // One pending response after each sub-operation but the last.
    assert_eq!(got.pending.len(), uids.len() - 1, "{got:?}");
    // What storescp holds is exactly what was not refused.
    let expected: BTreeSet<String> = uids
        .iter()
        .map(|u| u.to_string())
        .filter(|u| !refused.contains(u))
        .collect();
    assert_eq!(received_uids(received.path(), &uids), expected);

    // movescu, a real C-MOVE SCU, reads the same final response.
    let key = format!("StudyInstanceUID={}", both_studies.join("\\"));
    let (_, log) = dcmtk_tool(
        "movescu",
        &[
            "-d",
            "-aet",
            CALLING,
            "-aec",
            "PACS",
            "-aem",
            "DEST",
            "-S",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            &key,
            "127.0.0.1",
            &port_text,
        ],
    )
    .await;
    let last = log
        .rfind("Received Final Move Response")
        .unwrap_or_else(|| panic!("no final response: {log}"));
    let final_part = &log[last..];
    assert!(final_part.contains("0xb000"), "{final_part}");
    assert_eq!(
        dumped(final_part, "Completed Suboperations").first(),
        Some(&moved.to_string()),
        "{final_part}"
    );
    assert_eq!(
        dumped(final_part, "Failed Suboperations").first(),
        Some(&refused.len().to_string()),
        "{final_part}"
    );
    let listed = final_part
        .lines()
        .find(|l| l.contains("(0008,0058)"))
        .unwrap_or_else(|| panic!("no Failed SOP Instance UID List: {final_part}"));
    for uid in &uids {
        assert_eq!(listed.contains(uid), refused.contains(*uid), "{listed}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_where_every_sub_operation_fails_is_refused_a702_with_counts_and_uids() {
    if !common::dcmtk_tools(&["movescu", "storescp"]) {
        return;
    }
    let (_storescp, port, received) = storescp(&[]).await;
    let mut server = gateway_moving_to(port).await;
    // Two studies of instances stored in syntaxes without a decoder here:
    // storescp (uncompressed only) takes none of them as stored and they
    // cannot be converted.
    let jpeg = pacs_fixtures::single(Kind::Ct, ts::JPEG_BASELINE, 7);
    let j2k = pacs_fixtures::single(Kind::Mr, ts::JPEG_BASELINE, 8);
    store_claiming(&server, &jpeg, JPEG_LS_LOSSLESS).await;
    store_claiming(&server, &j2k, JPEG_2000_LOSSLESS).await;
    let studies = [
        jpeg.study_instance_uid.as_str(),
        j2k.study_instance_uid.as_str(),
    ];
    let mut failed = vec![jpeg.sop_instance_uid.clone(), j2k.sop_instance_uid.clone()];
    failed.sort();

    let mut scu = TestScu::connect(server.addr, &[(STUDY_ROOT_MOVE, IMPLICIT_VR_LE)])
        .await
        .unwrap();
    let got = scu
        .retrieve(STUDY_ROOT_MOVE, Some("DEST"), &study_identifier(&studies))
        .await;
    scu.association.release().await.unwrap();
    assert_eq!(got.status(), 0xA702, "{got:?}");
    assert_eq!(got.counts(), (Some(0), Some(2), Some(0)), "{got:?}");
    assert_eq!(got.failed_uids(), Some(failed.clone()));
    assert!(
        received_uids(
            received.path(),
            &[&jpeg.sop_instance_uid, &j2k.sop_instance_uid]
        )
        .is_empty()
    );

    // The same through movescu: a failure status with the counts and list.
    let port_text = server.port();
    let key = format!("StudyInstanceUID={}", studies.join("\\"));
    let (_, log) = dcmtk_tool(
        "movescu",
        &[
            "-d",
            "-aet",
            CALLING,
            "-aec",
            "PACS",
            "-aem",
            "DEST",
            "-S",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            &key,
            "127.0.0.1",
            &port_text,
        ],
    )
    .await;
    let last = log
        .rfind("Received Final Move Response")
        .unwrap_or_else(|| panic!("no final response: {log}"));
    let final_part = &log[last..];
    assert!(final_part.contains("0xa702"), "{final_part}");
    assert_eq!(
        dumped(final_part, "Failed Suboperations").first(),
        Some(&"2".to_owned()),
        "{final_part}"
    );
    let listed = final_part
        .lines()
        .find(|l| l.contains("(0008,0058)"))
        .unwrap_or_else(|| panic!("no Failed SOP Instance UID List: {final_part}"));
    assert!(
        failed.iter().all(|u| listed.contains(u.as_str())),
        "{listed}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_never_answers_fails_the_move_within_the_dimse_timeout() {
    if !common::dcmtk_tools(&["storescp"]) {
        return;
    }
    // HANG accepts the association, then sleeps a minute before answering
    // each C-STORE; DEST answers normally.
    let (_hanging, hang_port, _) = storescp(&["--sleep-during", "60"]).await;
    let (_storescp, port, received) = storescp(&[]).await;
    let mut server = Server::start(|c| {
        c.dimse_timeout_secs = 2;
        for (ae_title, port) in [("HANG", hang_port), ("DEST", port)] {
            c.move_destinations.push(MoveDestination {
                ae_title: ae_title.into(),
                host: "127.0.0.1".into(),
                port,
            });
        }
    })
    .await;
    let files = [
        pacs_fixtures::single(Kind::Ct, ts::EXPLICIT_VR_LE, 41),
        pacs_fixtures::single(Kind::Mr, ts::EXPLICIT_VR_LE, 42),
        pacs_fixtures::single(Kind::Cr, ts::EXPLICIT_VR_LE, 43),
    ];
    let members: Vec<&FixtureFile> = files.iter().collect();
    store_all(&server, &members).await;
    let studies: Vec<&str> = files
        .iter()
        .map(|f| f.study_instance_uid.as_str())
        .collect();
    let mut all: Vec<String> = files.iter().map(|f| f.sop_instance_uid.clone()).collect();
    all.sort();

    let mut scu = TestScu::connect(server.addr, &[(STUDY_ROOT_MOVE, IMPLICIT_VR_LE)])
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let got = scu
        .retrieve(STUDY_ROOT_MOVE, Some("HANG"), &study_identifier(&studies))
        .await;
    let took = started.elapsed();
    // One timeout for the first sub-operation; the others are not tried.
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert_eq!(got.status(), 0xA702, "{got:?}");
    assert_eq!(got.counts(), (Some(0), Some(3), Some(0)), "{got:?}");
    assert_eq!(got.failed_uids(), Some(all.clone()));

    // The server goes on serving: the same association moves the same
    // instances to a destination that answers.
    let got = scu
        .retrieve(STUDY_ROOT_MOVE, Some("DEST"), &study_identifier(&studies))
        .await;
    scu.association.release().await.unwrap();
    assert_eq!(got.status(), 0x0000, "{got:?}");
    assert_eq!(got.counts(), (Some(3), Some(0), Some(0)), "{got:?}");
    let uids: Vec<&str> = all.iter().map(String::as_str).collect();
    assert_eq!(received_uids(received.path(), &uids).len(), 3);
    server.shutdown().await;
}
