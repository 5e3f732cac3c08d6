//! Shared test harness: the listener on 127.0.0.1 port 0 over an in-memory
//! sink (tests only: the archive is the real sink), `mllp_send` from the
//! Python `hl7` package as the real peer, a raw TCP client for the peers
//! that misbehave, and an ACK reader.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use pacs_hl7_gateway::parse::parse;
use pacs_hl7_gateway::{
    Hl7Error, MessageKey, MessageSink, MllpConfig, MllpServer, ReceivedMessage, SinkError,
    SinkReceipt,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio::task::JoinHandle;

/// Generous: the machine has two cores and may be busy.
pub const TIMEOUT: Duration = Duration::from_secs(120);

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PACS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
}

#[derive(Default)]
struct Inner {
    stored: Mutex<HashMap<MessageKey, Bytes>>,
    accepted: Mutex<Vec<ReceivedMessage>>,
    duplicates: AtomicUsize,
    failing: AtomicBool,
    /// When set, `accept` waits for a permit before storing.
    gate: Mutex<Option<Arc<Semaphore>>>,
    entered: Notify,
}

/// A sink keeping messages in memory, with the duplicate rule of the
/// `MessageSink` contract; for tests only.
#[derive(Clone, Default)]
pub struct MemorySink(Arc<Inner>);

impl MemorySink {
    pub fn stored(&self) -> usize {
        self.0.stored.lock().unwrap().len()
    }

    pub fn accepted(&self) -> Vec<ReceivedMessage> {
        self.0.accepted.lock().unwrap().clone()
    }

    pub fn duplicates(&self) -> usize {
        self.0.duplicates.load(Ordering::SeqCst)
    }

    pub fn set_failing(&self, failing: bool) {
        self.0.failing.store(failing, Ordering::SeqCst);
    }

    /// Hold every `accept` until a permit is added to the returned gate.
    pub fn hold(&self) -> Arc<Semaphore> {
        let gate = Arc::new(Semaphore::new(0));
        *self.0.gate.lock().unwrap() = Some(gate.clone());
        gate
    }

    /// Resolves when an `accept` has started.
    pub async fn entered(&self) {
        self.0.entered.notified().await
    }
}

impl MessageSink for MemorySink {
    async fn accept(&self, message: ReceivedMessage) -> Result<SinkReceipt, SinkError> {
        self.0.entered.notify_one();
        let gate = self.0.gate.lock().unwrap().clone();
        if let Some(gate) = gate {
            gate.acquire().await.unwrap().forget();
        }
        if self.0.failing.load(Ordering::SeqCst) {
            return Err(SinkError::Unavailable("test: storage down".into()));
        }
        let receipt = {
            let mut stored = self.0.stored.lock().unwrap();
            match stored.get(&message.key) {
                Some(content) if content[..] == *message.content() => SinkReceipt::Duplicate,
                Some(_) => {
                    return Err(SinkError::Conflict(format!("{:?}", message.key)));
                }
                None => {
                    let content = Bytes::copy_from_slice(message.content());
                    stored.insert(message.key.clone(), content);
                    SinkReceipt::Stored
                }
            }
        };
        if receipt == SinkReceipt::Duplicate {
            self.0.duplicates.fetch_add(1, Ordering::SeqCst);
        } else {
            self.0.accepted.lock().unwrap().push(message);
        }
        Ok(receipt)
    }
}

pub struct Server {
    pub addr: SocketAddr,
    pub sink: MemorySink,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), Hl7Error>>>,
}

impl Server {
    pub async fn start(tune: impl FnOnce(&mut MllpConfig)) -> Server {
        init_logs();
        let mut config = MllpConfig {
            listen_address: "127.0.0.1".parse().unwrap(),
            port: 0,
            ..MllpConfig::default()
        };
        tune(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sink = MemorySink::default();
        let server = MllpServer::new(sink.clone(), config);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(listener, async {
            let _ = stopped.await;
        }));
        Server {
            addr,
            sink,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Ask for shutdown without waiting.
    pub fn signal_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shut down and wait for the drain to finish.
    pub async fn shutdown(&mut self) {
        self.signal_shutdown();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(TIMEOUT, task)
                .await
                .expect("shutdown timed out")
                .unwrap()
                .unwrap();
        }
    }
}

/// An ACK as a sender reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// MSA-1
    pub code: String,
    /// MSA-2
    pub control_id: String,
    /// ERR-3.1 (v2.5+) or ERR-1.4.1 (v2.3/2.4)
    pub error_code: Option<String>,
    /// MSA-3
    pub text: String,
    /// MSH-9
    pub message_type: String,
    /// MSH-12
    pub version: String,
}

/// Read an ACK message (without MLLP framing) with the gateway's parser.
pub fn read_ack(bytes: &[u8]) -> Ack {
    let msg = parse(bytes).unwrap_or_else(|e| {
        panic!(
            "the ACK does not parse ({e}): {:?}",
            String::from_utf8_lossy(bytes)
        )
    });
    let msa = msg.segment("MSA").expect("MSA");
    let error_code = msg.segment("ERR").map(|err| {
        let new = err.field(3).component(1).value().into_owned();
        if new.is_empty() {
            err.field(1).component(4).subcomponent(1).into_owned()
        } else {
            new
        }
    });
    Ack {
        code: msa.field(1).value().into_owned(),
        control_id: msa.field(2).value().into_owned(),
        error_code,
        text: msa.field(3).text().into_owned(),
        message_type: msg.header().message_type.to_string(),
        version: msg.header().version.clone(),
    }
}

/// The ACK frames in a byte stream (MLLP framing removed).
pub fn split_frames(output: &[u8]) -> Vec<Vec<u8>> {
    output
        .split(|&b| b == 0x1C)
        .map(|chunk| {
            let start = chunk
                .iter()
                .position(|&b| b == 0x0B)
                .map_or(chunk.len(), |i| i + 1);
            chunk[start..].to_vec()
        })
        .filter(|c| !c.is_empty())
        .collect()
}

/// `mllp_send` next to `$PACS_TEST_PYTHON`, or `None` (skip) when it is
/// not there and `PACS_TEST_REQUIRE_PEERS` is not set (then: fail).
pub fn mllp_send() -> Option<PathBuf> {
    let why = match std::env::var_os("PACS_TEST_PYTHON") {
        None => "PACS_TEST_PYTHON is not set".to_string(),
        Some(python) => {
            let bin = PathBuf::from(python).with_file_name("mllp_send");
            if bin.exists() {
                return Some(bin);
            }
            format!(
                "{} does not exist (pip install hl7 into the venv)",
                bin.display()
            )
        }
    };
    assert!(
        std::env::var_os("PACS_TEST_REQUIRE_PEERS").is_none(),
        "PACS_TEST_REQUIRE_PEERS is set but {why}"
    );
    eprintln!("skipped: {why}");
    None
}

/// Send `messages` over one connection with `mllp_send` and return the
/// ACKs it printed, in order.
pub async fn send_with_mllp_send(
    bin: &PathBuf,
    addr: SocketAddr,
    messages: &[Vec<u8>],
) -> Vec<Ack> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("messages.hl7");
    let mut data = Vec::new();
    for m in messages {
        data.extend(pacs_hl7_gateway::mllp::frame(m));
    }
    std::fs::write(&file, &data).unwrap();
    let output = tokio::time::timeout(
        TIMEOUT,
        tokio::process::Command::new(bin)
            .arg("-p")
            .arg(addr.port().to_string())
            .arg("-f")
            .arg(&file)
            .arg(addr.ip().to_string())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("mllp_send timed out")
    .unwrap();
    assert!(
        output.status.success(),
        "mllp_send failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    split_frames(&output.stdout)
        .iter()
        .map(|f| read_ack(f))
        .collect()
}

/// A raw TCP peer.
pub struct RawPeer {
    pub stream: TcpStream,
    buffer: Vec<u8>,
}

impl RawPeer {
    pub async fn connect(addr: SocketAddr) -> RawPeer {
        RawPeer {
            stream: TcpStream::connect(addr).await.unwrap(),
            buffer: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next ACK frame, or `None` when the server closed the connection.
    pub async fn read_frame(&mut self) -> Option<Vec<u8>> {
        tokio::time::timeout(TIMEOUT, async {
            loop {
                if let Some(end) = self.buffer.windows(2).position(|w| w == [0x1C, 0x0D]) {
                    let frame: Vec<u8> = self.buffer.drain(..end + 2).collect();
                    let start = frame.iter().position(|&b| b == 0x0B).expect("start block");
                    return Some(frame[start + 1..end].to_vec());
                }
                let mut chunk = [0u8; 4096];
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .expect("no answer in time")
    }

    pub async fn read_ack(&mut self) -> Ack {
        read_ack(
            &self
                .read_frame()
                .await
                .expect("connection closed before the ACK"),
        )
    }
}

/// The control id (MSH-10) of a message.
pub fn control_id(message: &[u8]) -> String {
    pacs_hl7_gateway::parse::read_header(message)
        .unwrap()
        .control_id
}
