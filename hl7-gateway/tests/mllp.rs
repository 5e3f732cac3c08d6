//! The listener on a real socket: `mllp_send` (Python `hl7` package) as the
//! peer nobody here wrote, and a raw TCP peer for what `mllp_send` cannot
//! do (truncated frames, garbage, oversized frames, silence).

mod common;

use common::{RawPeer, Server, control_id, mllp_send, send_with_mllp_send};
use pacs_fixtures::hl7::{complete_blood_count, corrected_result, oru_messages};
use pacs_hl7_gateway::mllp::frame;
use pacs_hl7_gateway::oru::{ObservationStatus, report_text};
use tokio::io::AsyncWriteExt;

const SEED: u64 = 42;

fn msg(lines: &[&str]) -> Vec<u8> {
    lines.join("\r").into_bytes()
}

fn good(control: &str) -> Vec<u8> {
    msg(&[
        &format!(r"MSH|^~\&|LIS|LAB|PACS|RAD|20240101120000||ORU^R01^ORU_R01|{control}|P|2.5.1"),
        "PID|1||P123^^^HOSP^MR||Doe^Jane||19700101|F",
        "OBR|1||F1|2345-7^Glucose^LN|||20240101110000||||||||||||||||||F",
        "OBX|1|NM|2345-7^Glucose^LN||95|mg/dL|70-99|N|||F",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_messages_get_aa_on_one_connection() {
    let Some(bin) = mllp_send() else { return };
    let mut server = Server::start(|_| {}).await;
    let messages = oru_messages(SEED, 16);
    let acks = send_with_mllp_send(&bin, server.addr, &messages).await;
    assert_eq!(acks.len(), messages.len());
    for (m, ack) in messages.iter().zip(&acks) {
        assert_eq!(ack.code, "AA", "{ack:?}");
        assert_eq!(ack.control_id, control_id(m));
        assert!(ack.message_type.starts_with("ACK^R01"), "{ack:?}");
    }
    // The version of each answer is the version of its message.
    assert_eq!(
        acks.iter().map(|a| a.version.as_str()).collect::<Vec<_>>()[..4],
        ["2.5.1", "2.3.1", "2.4", "2.5.1"]
    );
    let accepted = server.sink.accepted();
    assert_eq!(accepted.len(), 16);
    assert_eq!(server.sink.stored(), 16);
    let peers: std::collections::BTreeSet<_> = accepted.iter().map(|r| r.peer).collect();
    assert_eq!(peers.len(), 1, "mllp_send used one connection");
    // The raw bytes are kept exactly as sent (mllp_send strips the final
    // CR of a message, nothing else).
    for (m, r) in messages.iter().zip(&accepted) {
        assert_eq!(&r.raw[..], m.strip_suffix(b"\r").unwrap_or(m));
    }
    // What the archive will get: a radiology report with its text and a
    // correction.
    let report = &accepted[2].message;
    let order = report.orders().next().unwrap();
    assert!(
        order
            .accession_number
            .as_deref()
            .unwrap()
            .starts_with("ACR")
    );
    assert!(report_text(order).unwrap().contains("IMPRESSION:"));
    let corrected = &accepted[3].message;
    assert!(
        corrected
            .orders()
            .flat_map(|o| &o.observations)
            .any(|o| o.status == Some(ObservationStatus::Corrected))
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_get_their_answer_and_the_connection_goes_on() {
    let Some(bin) = mllp_send() else { return };
    let mut server = Server::start(|_| {}).await;
    let mut non_utf8 = good("BAD-UTF8");
    non_utf8.extend(b"\rNTE|1||caf\xE9 au lait");
    let mut non_utf8_declared = msg(&[
        r"MSH|^~\&|LIS|LAB|PACS|RAD|20240101120000||ORU^R01|BAD-UTF8-2|P|2.5||||||UNICODE UTF-8",
        "PID|1||P1||M",
    ]);
    non_utf8_declared.extend(b"\xFCller");
    let cases: Vec<(Vec<u8>, &str, &str, Option<&str>)> = vec![
        // (message, ACK code, MSA-2, ERR code)
        (
            msg(&["MSX|^~\\&|LIS|LAB", "PID|1||X"]),
            "AR",
            "",
            Some("100"),
        ),
        (
            msg(&[
                "MSH|^^\\&|LIS|LAB|||2024||ORU^R01|BAD-ENC|P|2.5",
                "PID|1||X",
            ]),
            "AR",
            "",
            Some("102"),
        ),
        (
            msg(&[
                r"MSH|^~\&|LIS|LAB|PACS|RAD|20240101||ORU^R01|WRONG-DELIMS|P|2.4",
                "PID#1##X1",
                "OBR#1##F1#C^T^L",
            ]),
            "AR",
            "WRONG-DELIMS",
            Some("100"),
        ),
        (non_utf8, "AR", "BAD-UTF8", Some("102")),
        (non_utf8_declared, "AR", "BAD-UTF8-2", Some("102")),
        (
            msg(&[
                r"MSH|^~\&|LIS|LAB|PACS|RAD|20240101||ORU^R01|NO-PID|P|2.5.1",
                "OBR|1||F1|C^T^L",
                "OBX|1|NM|C^T^L||1",
            ]),
            "AE",
            "NO-PID",
            Some("100"),
        ),
        (
            msg(&[
                r"MSH|^~\&|LIS|LAB|PACS|RAD|20240101||ORU^R01|NO-ID|P|2.3",
                "PID|1||^^^HOSP^MR||Doe^John",
                "OBR|1||F1|C^T^L",
            ]),
            "AE",
            "NO-ID",
            Some("101"),
        ),
        (
            msg(&[
                r"MSH|^~\&|ADT|HIS|PACS|RAD|20240101||ADT^A01^ADT_A01|ADT-1|P|2.5.1",
                "PID|1||X",
            ]),
            "AR",
            "ADT-1",
            Some("200"),
        ),
        (
            msg(&[
                r"MSH|^~\&|LIS|LAB|PACS|RAD|20240101||ORU^R01|V27|P|2.7",
                "PID|1||X",
            ]),
            "AR",
            "V27",
            Some("203"),
        ),
        (good("AFTER-ALL"), "AA", "AFTER-ALL", None),
    ];
    let messages: Vec<Vec<u8>> = cases.iter().map(|c| c.0.clone()).collect();
    let acks = send_with_mllp_send(&bin, server.addr, &messages).await;
    assert_eq!(acks.len(), cases.len(), "one answer per message: {acks:?}");
    for ((_, code, id, err), ack) in cases.iter().zip(&acks) {
        assert_eq!(
            (
                ack.code.as_str(),
                ack.control_id.as_str(),
                ack.error_code.as_deref()
            ),
            (*code, *id, *err),
            "{ack:?}"
        );
        if *code != "AA" {
            assert!(!ack.text.is_empty(), "MSA-3 explains: {ack:?}");
        }
    }
    assert_eq!(
        acks[1].version, "2.5.1",
        "unreadable header: default version"
    );
    assert_eq!(acks[5].message_type, "ACK^R01^ACK");
    assert_eq!(acks[6].message_type, "ACK^R01", "v2.3 has no structure");
    assert_eq!(acks[7].message_type, "ACK^A01^ACK");
    assert_eq!(server.sink.stored(), 1, "only the good message is stored");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resent_message_is_acknowledged_without_a_second_copy() {
    let Some(bin) = mllp_send() else { return };
    let mut server = Server::start(|_| {}).await;
    let cbc = complete_blood_count(SEED, 0);
    let correction = corrected_result(SEED, 0);
    let acks = send_with_mllp_send(&bin, server.addr, &[cbc.clone(), cbc.clone()]).await;
    assert_eq!(
        acks.iter().map(|a| a.code.as_str()).collect::<Vec<_>>(),
        ["AA", "AA"]
    );
    // On another connection, as a sender does after a lost ACK.
    let acks = send_with_mllp_send(&bin, server.addr, &[cbc.clone(), correction]).await;
    assert_eq!(
        acks.iter().map(|a| a.code.as_str()).collect::<Vec<_>>(),
        ["AA", "AA"]
    );
    // A client that ends the last segment with CR sends the same content.
    let mut peer = RawPeer::connect(server.addr).await;
    let mut with_cr = cbc.clone();
    with_cr.push(b'\r');
    peer.send(&frame(&with_cr)).await;
    assert_eq!(peer.read_ack().await.code, "AA");
    assert_eq!(server.sink.stored(), 2);
    assert_eq!(server.sink.duplicates(), 3);
    // The same control id from the same sender with other content.
    let mut reused = cbc.clone();
    let at = reused.len() - 3;
    reused[at] = if reused[at] == b'1' { b'2' } else { b'1' };
    let acks = send_with_mllp_send(&bin, server.addr, &[reused]).await;
    assert_eq!(
        (acks[0].code.as_str(), acks[0].error_code.as_deref()),
        ("AE", Some("205"))
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_failure_is_ae_207_and_a_retry_succeeds() {
    let Some(bin) = mllp_send() else { return };
    let mut server = Server::start(|_| {}).await;
    server.sink.set_failing(true);
    let m = good("RETRY-1");
    let acks = send_with_mllp_send(&bin, server.addr, std::slice::from_ref(&m)).await;
    assert_eq!(
        (acks[0].code.as_str(), acks[0].error_code.as_deref()),
        ("AE", Some("207"))
    );
    assert_eq!(server.sink.stored(), 0);
    server.sink.set_failing(false);
    let acks = send_with_mllp_send(&bin, server.addr, &[m]).await;
    assert_eq!(acks[0].code, "AA");
    assert_eq!(server.sink.stored(), 1);
    server.shutdown().await;
}

/// AA is written only after the sink returned: while the sink holds the
/// message, nothing can be read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aa_only_after_the_sink_returned() {
    let mut server = Server::start(|_| {}).await;
    let gate = server.sink.hold();
    let mut peer = RawPeer::connect(server.addr).await;
    let entered = server.sink.entered();
    peer.send(&frame(&good("HELD-1"))).await;
    entered.await;
    let mut probe = [0u8; 16];
    assert!(
        matches!(peer.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "an answer arrived while the sink was still working"
    );
    assert_eq!(server.sink.stored(), 0);
    gate.add_permits(1);
    let ack = peer.read_ack().await;
    assert_eq!(
        (ack.code.as_str(), ack.control_id.as_str()),
        ("AA", "HELD-1")
    );
    assert_eq!(server.sink.stored(), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_frames_are_dropped_and_the_listener_goes_on() {
    let mut server = Server::start(|_| {}).await;
    // A frame cut off by the end of the connection: no answer, nothing
    // stored.
    let mut peer = RawPeer::connect(server.addr).await;
    let whole = frame(&good("CUT-1"));
    peer.send(&whole[..whole.len() / 2]).await;
    peer.stream.shutdown().await.unwrap();
    assert_eq!(peer.read_frame().await, None);
    // A frame interrupted by a new start block on the same connection:
    // exactly one answer, for the complete frame; garbage before a start
    // block is skipped.
    let mut peer = RawPeer::connect(server.addr).await;
    let mut bytes = b"\x0bMSH|^~\\&|half a message".to_vec();
    bytes.extend(frame(&good("WHOLE-1")));
    bytes.extend(b"some noise\r\n");
    bytes.extend(frame(&good("WHOLE-2")));
    peer.send(&bytes).await;
    assert_eq!(peer.read_ack().await.control_id, "WHOLE-1");
    assert_eq!(peer.read_ack().await.control_id, "WHOLE-2");
    // The end block without the CR is accepted too.
    let mut lenient = frame(&good("NO-CR"));
    lenient.pop();
    peer.send(&lenient).await;
    assert_eq!(peer.read_ack().await.code, "AA");
    drop(peer);
    // A new connection is served.
    let mut peer = RawPeer::connect(server.addr).await;
    peer.send(&frame(&good("AFTER-CUT"))).await;
    assert_eq!(peer.read_ack().await.code, "AA");
    assert_eq!(server.sink.stored(), 4);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_over_the_limit_gets_ar_and_the_connection_closes() {
    let mut server = Server::start(|c| c.max_frame_bytes = 16 * 1024).await;
    let mut big = good("BIG-1");
    let text = "x".repeat(1000);
    for i in 0..100 {
        big.extend(format!("\rOBX|{}|TX|T^Text^L||{text}||||||F", i + 2).bytes());
    }
    let mut peer = RawPeer::connect(server.addr).await;
    peer.send(&frame(&big)).await;
    let ack = peer.read_ack().await;
    assert_eq!(
        (
            ack.code.as_str(),
            ack.control_id.as_str(),
            ack.error_code.as_deref()
        ),
        ("AR", "BIG-1", Some("207"))
    );
    assert_eq!(peer.read_frame().await, None, "the connection is closed");
    // Just under the limit is fine, and the listener still serves.
    let mut peer = RawPeer::connect(server.addr).await;
    let mut fits = good("FITS-1");
    fits.extend(format!("\rOBX|2|TX|T^Text^L||{}||||||F", "y".repeat(15_000)).bytes());
    assert!(fits.len() <= 16 * 1024);
    peer.send(&frame(&fits)).await;
    assert_eq!(peer.read_ack().await.code, "AA");
    // An oversized frame whose header cannot be read: AR without MSA-2.
    let mut peer = RawPeer::connect(server.addr).await;
    peer.send(&frame(&vec![b'z'; 40_000])).await;
    let ack = peer.read_ack().await;
    assert_eq!((ack.code.as_str(), ack.control_id.as_str()), ("AR", ""));
    assert_eq!(server.sink.stored(), 1);
    server.shutdown().await;
}

/// The idle timeout closes a silent connection, and drops a frame left
/// unfinished; tested on tokio's paused clock.
#[tokio::test(start_paused = true)]
async fn idle_connections_are_closed() {
    let mut server = Server::start(|c| c.idle_timeout_secs = 30).await;
    let mut silent = RawPeer::connect(server.addr).await;
    assert_eq!(silent.read_frame().await, None);
    let mut half = RawPeer::connect(server.addr).await;
    half.send(b"\x0bMSH|^~\\&|LIS").await;
    assert_eq!(half.read_frame().await, None);
    assert_eq!(server.sink.stored(), 0);
    // A connection that keeps talking is not closed.
    let mut busy = RawPeer::connect(server.addr).await;
    for i in 0..3 {
        busy.send(&frame(&good(&format!("BUSY-{i}")))).await;
        assert_eq!(busy.read_ack().await.code, "AA");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_closed() {
    let mut server = Server::start(|c| c.max_connections = 1).await;
    let mut first = RawPeer::connect(server.addr).await;
    first.send(&frame(&good("CAP-1"))).await;
    assert_eq!(first.read_ack().await.code, "AA");
    let mut second = RawPeer::connect(server.addr).await;
    assert_eq!(second.read_frame().await, None, "over the cap: closed");
    drop(first);
    // The slot is free again once the first connection is gone.
    let deadline = tokio::time::Instant::now() + common::TIMEOUT;
    loop {
        let mut third = RawPeer::connect(server.addr).await;
        third.send(&frame(&good("CAP-2"))).await;
        if let Some(f) = third.read_frame().await {
            assert_eq!(common::read_ack(&f).code, "AA");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server.shutdown().await;
}

/// Shutdown lets the message being stored finish and answers it, then
/// closes the connection and stops accepting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_the_message_in_flight() {
    let mut server = Server::start(|_| {}).await;
    let gate = server.sink.hold();
    let mut peer = RawPeer::connect(server.addr).await;
    let entered = server.sink.entered();
    peer.send(&frame(&good("DRAIN-1"))).await;
    entered.await;
    server.signal_shutdown();
    gate.add_permits(1);
    let ack = peer.read_ack().await;
    assert_eq!(
        (ack.code.as_str(), ack.control_id.as_str()),
        ("AA", "DRAIN-1")
    );
    assert_eq!(peer.read_frame().await, None, "closed after the drain");
    server.shutdown().await;
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
    assert_eq!(server.sink.stored(), 1);
}
