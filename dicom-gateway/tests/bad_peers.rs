//! Misbehaving peers, driven by a small dicom-ul SCU (tests/common) that can
//! do what DCMTK will not: abort mid-message, truncate, oversize PDUs. Every
//! case checks that nothing partial is stored and that the server goes on
//! serving.

mod common;

use std::time::Duration;

use common::{Server, TIMEOUT, TestScu, split_part10};
use dicom_ul::pdu::{
    AbortRQSource, PDataValue, PDataValueType, Pdu, PresentationContextResultReason,
};
use pacs_dicom_gateway::dimse::tag;
use pacs_fixtures::{DatasetSpec, Kind, ts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const VERIFICATION: &str = "1.2.840.10008.1.1";

async fn echo_works(server: &Server) {
    let mut scu = TestScu::connect(server.addr, &[(VERIFICATION, ts::IMPLICIT_VR_LE)])
        .await
        .unwrap();
    let pc = scu.context_id(VERIFICATION).unwrap();
    let mut c =
        pacs_dicom_gateway::dimse::Command::new(pacs_dicom_gateway::dimse::field::C_ECHO_RQ);
    c.set_text(tag::AFFECTED_SOP_CLASS_UID, VERIFICATION)
        .set_us(tag::MESSAGE_ID, 1)
        .set_us(tag::COMMAND_DATA_SET_TYPE, 0x0101);
    scu.send_pdv(pc, PDataValueType::Command, true, &c.encode())
        .await;
    let rsp = scu.response().await;
    assert_eq!(rsp.us(tag::STATUS), Some(0));
    assert_eq!(rsp.us(tag::MESSAGE_ID_BEING_RESPONDED_TO), Some(1));
    scu.association.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_data_sets_in_every_syntax_are_stored_byte_for_byte() {
    let mut server = Server::start(|_| {}).await;
    let files: Vec<_> = DatasetSpec::small().iter().collect();
    let mut seen = std::collections::BTreeSet::new();
    for f in &files {
        seen.insert(f.transfer_syntax);
        let (syntax, data) = split_part10(&f.bytes);
        let mut scu = TestScu::connect(server.addr, &[(f.sop_class_uid.as_str(), syntax.as_str())])
            .await
            .unwrap();
        let rsp = scu.store(&f.sop_class_uid, &f.sop_instance_uid, data).await;
        assert_eq!(rsp.us(tag::STATUS), Some(0), "{}: {rsp:?}", f.file_name);
        scu.association.release().await.unwrap();
        let stored = server.archive.retrieve(&f.sop_instance_uid).await.unwrap();
        let (stored_ts, stored_data) = split_part10(&stored);
        assert_eq!(stored_ts, syntax);
        assert!(
            stored_data == data,
            "{}: not stored as received",
            f.file_name
        );
    }
    assert_eq!(seen.len(), ts::ALL.len(), "{seen:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_abstract_syntaxes_are_rejected_per_context() {
    let mut server = Server::start(|_| {}).await;
    let ct = "1.2.840.10008.5.1.4.1.1.2";
    let scu = TestScu::connect(
        server.addr,
        &[
            ("1.2.826.0.1.3680043.9.999", ts::EXPLICIT_VR_LE),
            (ct, ts::JPEG_BASELINE),
            (ct, "1.2.826.0.1.3680043.9.999.1"),
            // HTJ2K: a current syntax must be accepted even with no codec.
            ("1.2.840.10008.5.1.4.1.1.77.1.6", "1.2.840.10008.1.2.4.201"),
        ],
    )
    .await
    .unwrap();
    // dicom-ul's client lists only the accepted contexts (IDs 1, 3, 5, 7
    // were proposed): the private SOP class (1) and the private transfer
    // syntax (5) were rejected, each on its own.
    let accepted: Vec<_> = scu
        .association
        .presentation_contexts()
        .iter()
        .map(|pc| {
            assert_eq!(pc.reason, PresentationContextResultReason::Acceptance);
            (pc.id, pc.transfer_syntax.as_str())
        })
        .collect();
    assert_eq!(
        accepted,
        [(3, ts::JPEG_BASELINE), (7, "1.2.840.10008.1.2.4.201")]
    );
    scu.association.release().await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_port_does_not_stop_the_server() {
    let mut server = Server::start(|_| {}).await;
    for garbage in [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        (0..65_536u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(),
        vec![0x01, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0, 1],
        vec![0x04, 0x00, 0x00, 0x00, 0x00, 0x10],
    ] {
        let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let _ = s.write_all(&garbage).await;
        let _ = s.shutdown().await;
        let mut sink = Vec::new();
        // The server closes the connection (possibly after an A-ABORT).
        let _ = tokio::time::timeout(TIMEOUT, s.read_to_end(&mut sink))
            .await
            .expect("server kept a garbage connection open");
    }
    echo_works(&server).await;
    assert_eq!(server.instance_count().await, 0);
    server.shutdown().await;
}

fn cr_file() -> (String, String, Vec<u8>) {
    let f = pacs_fixtures::single(Kind::Cr, ts::EXPLICIT_VR_LE, 11);
    let (_, data) = split_part10(&f.bytes);
    (
        f.sop_class_uid.clone(),
        f.sop_instance_uid.clone(),
        data.to_vec(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_in_the_middle_of_a_store_leaves_nothing() {
    let mut server = Server::start(|_| {}).await;
    let (class, instance, data) = cr_file();
    assert!(data.len() > 100_000);
    let mut scu = TestScu::connect(server.addr, &[(class.as_str(), ts::EXPLICIT_VR_LE)])
        .await
        .unwrap();
    let pc = scu.context_id(&class).unwrap();
    let command = scu.store_command(&class, &instance);
    scu.send_pdv(pc, PDataValueType::Command, true, &command)
        .await;
    scu.send_data(pc, &data[..data.len() / 2], false).await;
    server
        .wait_for("the first half to arrive", |c| {
            c.snapshot().bytes_received > 0
        })
        .await;
    scu.association.abort().await.unwrap();
    server
        .wait_for("the abort", |c| c.snapshot().associations_aborted == 1)
        .await;
    assert!(server.archive.retrieve(&instance).await.is_err());
    assert_eq!(server.instance_count().await, 0);
    // The same instance sent whole afterwards is stored.
    let mut scu = TestScu::connect(server.addr, &[(class.as_str(), ts::EXPLICIT_VR_LE)])
        .await
        .unwrap();
    let rsp = scu.store(&class, &instance, &data).await;
    assert_eq!(rsp.us(tag::STATUS), Some(0));
    scu.association.release().await.unwrap();
    assert_eq!(server.instance_count().await, 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_data_set_gets_a_failure_status() {
    let mut server = Server::start(|_| {}).await;
    let (class, instance, data) = cr_file();
    let mut scu = TestScu::connect(server.addr, &[(class.as_str(), ts::EXPLICIT_VR_LE)])
        .await
        .unwrap();
    let rsp = scu
        .store(&class, &instance, &data[..data.len() * 3 / 5])
        .await;
    let status = rsp.us(tag::STATUS).unwrap();
    assert_eq!(status & 0xF000, 0xC000, "{rsp:?}");
    assert!(!rsp.text(tag::ERROR_COMMENT).unwrap_or_default().is_empty());
    assert_eq!(
        rsp.text(tag::AFFECTED_SOP_INSTANCE_UID),
        Some(instance.as_str())
    );
    assert_eq!(server.instance_count().await, 0);
    // The association goes on: the whole object is stored, then accepted
    // again as an identical duplicate.
    for _ in 0..2 {
        let rsp = scu.store(&class, &instance, &data).await;
        assert_eq!(rsp.us(tag::STATUS), Some(0), "{rsp:?}");
    }
    scu.association.release().await.unwrap();
    assert_eq!(server.instance_count().await, 1);
    let c = server.counters.snapshot();
    assert_eq!(
        (c.instances_stored, c.instances_duplicate, c.store_failures),
        (1, 1, 1)
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pdu_larger_than_negotiated_is_aborted() {
    // Below the floor: raised to 64 KiB (see GatewayConfig::max_pdu_length).
    let mut server = Server::start(|c| c.max_pdu_length = 16_384).await;
    let (class, instance, data) = cr_file();
    let mut scu = TestScu::connect(server.addr, &[(class.as_str(), ts::EXPLICIT_VR_LE)])
        .await
        .unwrap();
    assert_eq!(scu.association.acceptor_max_pdu_length(), 65_536);
    let pc = scu.context_id(&class).unwrap();
    let command = scu.store_command(&class, &instance);
    scu.send_pdv(pc, PDataValueType::Command, true, &command)
        .await;
    // Write one 128 KiB P-DATA-TF PDU by hand (dicom-ul refuses to send it).
    let mut raw = Vec::new();
    dicom_ul::write_pdu(
        &mut raw,
        &Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc,
                value_type: PDataValueType::Data,
                is_last: true,
                data: data[..131_072].to_vec(),
            }],
        },
    )
    .unwrap();
    scu.association
        .inner_stream()
        .write_all(&raw)
        .await
        .unwrap();
    match scu.receive().await {
        Ok(Pdu::AbortRQ { source }) => {
            assert!(
                matches!(source, AbortRQSource::ServiceProvider(_)),
                "{source:?}"
            )
        }
        other => panic!("expected A-ABORT, got {other:?}"),
    }
    assert_eq!(server.instance_count().await, 0);
    echo_works(&server).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_association_is_aborted() {
    let mut server = Server::start(|c| c.idle_timeout_secs = 1).await;
    let mut scu = TestScu::connect(server.addr, &[(VERIFICATION, ts::IMPLICIT_VR_LE)])
        .await
        .unwrap();
    match scu.receive().await {
        Ok(Pdu::AbortRQ { .. }) => {}
        other => panic!("expected A-ABORT, got {other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_associates_is_closed_after_artim() {
    let mut server = Server::start(|c| c.artim_timeout_secs = 1).await;
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut sink = Vec::new();
    let n = tokio::time::timeout(TIMEOUT, s.read_to_end(&mut sink))
        .await
        .expect("ARTIM did not close the connection");
    assert!(n.is_ok_and(|n| n == 0) || sink.is_empty());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_an_in_flight_store_then_aborts() {
    let mut server = Server::start(|c| c.shutdown_grace_secs = 300).await;
    let (class, instance, data) = cr_file();
    let mut scu = TestScu::connect(server.addr, &[(class.as_str(), ts::EXPLICIT_VR_LE)])
        .await
        .unwrap();
    let pc = scu.context_id(&class).unwrap();
    let command = scu.store_command(&class, &instance);
    scu.send_pdv(pc, PDataValueType::Command, true, &command)
        .await;
    let half = data.len() / 2;
    scu.send_data(pc, &data[..half], false).await;
    server
        .wait_for("the first half to arrive", |c| {
            c.snapshot().bytes_received > 0
        })
        .await;
    server.signal_shutdown();
    // Once the listener is closed (new peers are refused), the in-flight
    // store still completes.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while tokio::net::TcpStream::connect(server.addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "listener still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    scu.send_data(pc, &data[half..], true).await;
    let rsp = scu.response().await;
    assert_eq!(rsp.us(tag::STATUS), Some(0), "{rsp:?}");
    match scu.receive().await {
        Ok(Pdu::AbortRQ { .. }) | Err(_) => {}
        other => panic!("expected the association to end, got {other:?}"),
    }
    server.shutdown().await;
    assert!(server.archive.retrieve(&instance).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_operations_get_failure_statuses_and_the_association_goes_on() {
    let mut server = Server::start(|_| {}).await;
    let (class, instance, data) = cr_file();
    let mr = "1.2.840.10008.5.1.4.1.1.4";
    let mut scu = TestScu::connect(
        server.addr,
        &[
            (class.as_str(), ts::EXPLICIT_VR_LE),
            (mr, ts::EXPLICIT_VR_LE),
        ],
    )
    .await
    .unwrap();
    // A C-FIND on a storage context: unrecognized operation.
    let pc = scu.context_id(&class).unwrap();
    let mut find = pacs_dicom_gateway::dimse::Command::new(0x0020);
    find.set_text(tag::AFFECTED_SOP_CLASS_UID, &class)
        .set_us(tag::MESSAGE_ID, 42)
        .set_us(tag::COMMAND_DATA_SET_TYPE, 0);
    scu.send_pdv(pc, PDataValueType::Command, true, &find.encode())
        .await;
    scu.send_data(pc, &data[..200], true).await;
    let rsp = scu.response().await;
    assert_eq!(rsp.command_field(), Some(0x8020));
    assert_eq!(rsp.us(tag::STATUS), Some(0x0211));
    assert_eq!(rsp.us(tag::MESSAGE_ID_BEING_RESPONDED_TO), Some(42));
    // A CR object sent on the MR context: SOP class not supported there.
    let mr_pc = scu.context_id(mr).unwrap();
    let command = scu.store_command(&class, &instance);
    scu.send_pdv(mr_pc, PDataValueType::Command, true, &command)
        .await;
    scu.send_data(mr_pc, &data, true).await;
    let rsp = scu.response().await;
    assert_eq!(rsp.us(tag::STATUS), Some(0x0122), "{rsp:?}");
    assert_eq!(server.instance_count().await, 0);
    // The association still works.
    let rsp = scu.store(&class, &instance, &data).await;
    assert_eq!(rsp.us(tag::STATUS), Some(0));
    scu.association.release().await.unwrap();
    server.shutdown().await;
}
