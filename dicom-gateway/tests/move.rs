//! C-MOVE driven by DCMTK's movescu, with DCMTK's storescp as the move
//! destination (bit-preserving, so what it writes is what it received).

mod common;

use std::time::Duration;

use common::{CALLING, Server, TIMEOUT, TestScu, dcmtk_tool, split_part10};
use pacs_dicom_gateway::MoveDestination;
use pacs_dicom_gateway::dimse::tag;
use pacs_fixtures::{DatasetSpec, FixtureFile};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn movescu_moves_a_study_to_storescp_byte_for_byte() {
    if !common::dcmtk_tools(&["movescu", "storescp"]) {
        return;
    }
    // A free port for storescp (bound and released: a small race, retried
    // below by waiting until storescp listens).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let received = tempfile::tempdir().unwrap();
    let _storescp = tokio::process::Command::new("/usr/bin/storescp")
        .args(["-aet", "DEST", "+xa", "+B", "-od"])
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
    let mut server = Server::start(|c| {
        c.move_destinations.push(MoveDestination {
            ae_title: "DEST".into(),
            host: "127.0.0.1".into(),
            port,
        })
    })
    .await;
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
