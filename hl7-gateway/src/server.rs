//! The MLLP listener: accepts connections (capped by a semaphore), reads
//! frames one after another on each, parses and validates each message,
//! hands it to the [`MessageSink`] and answers with exactly one ACK per
//! complete frame, in order. Shutdown stops accepting, lets messages being
//! processed finish within the grace period, then aborts the rest.
//!
//! The ACK is the promise: AA is written only after [`MessageSink::accept`]
//! returned `Ok`. This module never stores anything itself.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::Hl7Error;
use crate::ack::{self, Nak, Responder};
use crate::config::MllpConfig;
use crate::mllp::{self, MllpDecoder, MllpEvent};
use crate::oru::OruMessage;
use crate::parse::{MessageHeader, MessageKey};

/// Messages larger than this are parsed on the blocking pool, smaller ones
/// inline (a few microseconds; a hop to another thread would cost more).
const INLINE_PARSE_LIMIT: usize = 64 * 1024;

/// How long a connection closed after a fatal error keeps draining what
/// the peer still sends, so that the peer reads our AR before a reset.
const LINGER: Duration = Duration::from_secs(2);

/// A message the gateway has parsed and validated, handed to the sink.
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    /// The message exactly as received (the bytes between the MLLP blocks),
    /// for content-addressed storage.
    pub raw: Bytes,
    /// The typed result.
    pub message: OruMessage,
    /// (MSH-3 sending application, MSH-4 sending facility, MSH-10 control
    /// id): a re-sent message has the same key.
    pub key: MessageKey,
    /// Who sent it.
    pub peer: SocketAddr,
}

impl ReceivedMessage {
    /// The raw message without trailing segment terminators or blanks:
    /// what a duplicate check should compare, since MLLP clients differ in
    /// whether they send the last segment's CR.
    pub fn content(&self) -> &[u8] {
        let end = self
            .raw
            .iter()
            .rposition(|b| !matches!(b, b'\r' | b'\n' | b' ' | b'\t'))
            .map_or(0, |i| i + 1);
        &self.raw[..end]
    }
}

/// What the sink did with an accepted message. Both are answered with AA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkReceipt {
    /// The raw message and its results are durable.
    Stored,
    /// A message with the same [`MessageKey`] and the same content was
    /// stored before (the sender re-sent it, e.g. after a lost ACK); nothing
    /// new was written.
    Duplicate,
}

/// Why a sink did not accept a message. Both are answered with AE.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// Storage or catalog failed; nothing (visible) was stored. The sender
    /// should send the message again later. AE, ERR 207.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The key was seen before with different content: the sender reuses
    /// control ids. AE, ERR 205.
    #[error("control id reused with different content: {0}")]
    Conflict(String),
    /// The archive refused the content (e.g. nothing to file it under).
    /// AE, ERR 101.
    #[error("refused: {0}")]
    Rejected(String),
}

/// Where accepted messages go: the archive, later (make the raw message
/// durable, record the results, then return `Ok`).
///
/// Contract:
/// - `accept` returns `Ok` only once the raw message and its results are
///   durable; the ACK AA is sent after that and never before.
/// - Duplicates are the sink's decision: the key is
///   [`ReceivedMessage::key`], (sending application, sending facility,
///   control id). A message whose key was stored before with the same
///   [`ReceivedMessage::content`] must be answered
///   `Ok(SinkReceipt::Duplicate)` without a second copy (the sender lost
///   our ACK and re-sent); with different content,
///   `Err(SinkError::Conflict)`. The check and the write must be one
///   transaction (two connections may deliver the same message at once).
/// - Messages of one connection arrive one at a time, in order; messages
///   of different connections concurrently.
pub trait MessageSink: Send + Sync + 'static {
    fn accept(
        &self,
        message: ReceivedMessage,
    ) -> impl Future<Output = Result<SinkReceipt, SinkError>> + Send;
}

struct Shared<S> {
    sink: S,
    config: MllpConfig,
    responder: Responder,
    /// MSH-10 of our ACKs: a prefix fixed at start-up and a counter.
    id_prefix: String,
    next_id: AtomicU64,
}

impl<S> Shared<S> {
    fn next_control_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed) % 1_000_000_000;
        format!("{}{n:09}", self.id_prefix)
    }

    /// An ACK, framed for MLLP.
    fn ack(&self, received: Option<&MessageHeader>, nak: Option<&Nak>) -> Vec<u8> {
        let now = now_hl7();
        let id = self.next_control_id();
        mllp::frame(&ack::build_ack(received, nak, &self.responder, &id, &now))
    }
}

/// MSH-7 form of the current time, UTC.
fn now_hl7() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}+0000",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The HL7 v2 listener.
pub struct MllpServer<S: MessageSink> {
    shared: Arc<Shared<S>>,
}

impl<S: MessageSink> Clone for MllpServer<S> {
    fn clone(&self) -> Self {
        MllpServer {
            shared: self.shared.clone(),
        }
    }
}

impl<S: MessageSink> MllpServer<S> {
    pub fn new(sink: S, config: MllpConfig) -> Self {
        let started = time::OffsetDateTime::now_utc().unix_timestamp().max(0);
        let responder = Responder {
            application: config.application.clone(),
            facility: config.facility.clone(),
        };
        MllpServer {
            shared: Arc::new(Shared {
                sink,
                config,
                responder,
                // 'A' + 10 digits + 9 digits: 20 characters, the length of
                // MSH-10 in v2.5.
                id_prefix: format!("A{:010}", started % 10_000_000_000),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    pub fn config(&self) -> &MllpConfig {
        &self.shared.config
    }

    /// Serve connections on `listener` until `shutdown` completes, then
    /// drain: messages being processed get `shutdown_grace_secs`.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Hl7Error> {
        let local = listener
            .local_addr()
            .map_err(|e| Hl7Error::Io(e.to_string()))?;
        let config = &self.shared.config;
        tracing::info!(
            address = %local,
            max_connections = config.max_connections,
            max_frame_bytes = config.max_frame_bytes,
            "HL7 MLLP listener listening"
        );
        let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => {
                    let (socket, peer) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            // Out of file descriptors and the like: back off
                            // instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, "connection refused: too many MLLP connections");
                        drop(socket);
                        continue;
                    };
                    if let Err(e) = socket.set_nodelay(true) {
                        tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
                    }
                    let shared = self.shared.clone();
                    let stop = stop_rx.clone();
                    let span = tracing::info_span!("mllp", %peer);
                    tasks.spawn(
                        async move {
                            connection(shared, socket, peer, stop).await;
                            drop(permit);
                        }
                        .instrument(span),
                    );
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        drop(listener);
        tracing::info!(
            open_connections = tasks.len(),
            "HL7 MLLP listener shutting down"
        );
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(self.shared.config.shutdown_grace(), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                remaining = tasks.len(),
                "grace period over, aborting remaining MLLP connections"
            );
            tasks.shutdown().await;
        }
        tracing::info!("HL7 MLLP listener stopped");
        Ok(())
    }
}

/// One connection: frames in, one ACK out per complete frame.
async fn connection<S: MessageSink>(
    shared: Arc<Shared<S>>,
    mut socket: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    tracing::debug!("connection opened");
    let idle = shared.config.idle_timeout();
    let mut decoder = MllpDecoder::new(shared.config.max_frame_bytes);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        while let Some(event) = decoder.decode(&mut buf) {
            match event {
                MllpEvent::Frame(frame) => {
                    let reply = answer(&shared, frame, peer).await;
                    if let Err(e) = socket.write_all(&reply).await {
                        tracing::info!(error = %e, "peer went away before reading its ACK");
                        return;
                    }
                }
                MllpEvent::Garbage(n) => {
                    tracing::warn!(bytes = n, "discarded bytes outside an MLLP frame")
                }
                MllpEvent::Interrupted(n) => tracing::warn!(
                    bytes = n,
                    "an MLLP frame was interrupted by a new start block: dropped, not acknowledged"
                ),
                MllpEvent::TooLarge(head) => {
                    let limit = shared.config.max_frame_bytes;
                    let header = crate::parse::read_header_for_reply(&head);
                    tracing::warn!(
                        limit,
                        control_id = header.as_ref().map_or("", |h| h.control_id.as_str()),
                        "message over the size limit: AR, closing the connection"
                    );
                    let nak = ack::nak_for(&Hl7Error::FrameTooLarge { limit });
                    let reply = shared.ack(header.as_ref(), Some(&nak));
                    if socket.write_all(&reply).await.is_ok() {
                        linger_close(socket).await;
                    }
                    return;
                }
            }
        }
        if *stop.borrow() {
            break;
        }
        buf.reserve(16 * 1024);
        let read = tokio::select! {
            read = tokio::time::timeout(idle, socket.read_buf(&mut buf)) => read,
            _ = stop.changed() => break,
        };
        match read {
            Err(_) => {
                if decoder.in_frame() {
                    tracing::warn!(
                        bytes = buf.len(),
                        "idle timeout inside an MLLP frame: the frame is dropped, not acknowledged"
                    );
                } else {
                    tracing::info!(idle_secs = idle.as_secs(), "idle timeout, closing");
                }
                break;
            }
            Ok(Ok(0)) => {
                if let Some(n) = decoder.unfinished(&buf) {
                    tracing::warn!(
                        bytes = n,
                        "connection closed inside an MLLP frame: the truncated frame is dropped, not acknowledged"
                    );
                }
                break;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::info!(error = %e, "read failed, closing");
                break;
            }
        }
    }
    tracing::debug!("connection closed");
}

/// Parse, validate, hand to the sink; the framed ACK.
async fn answer<S: MessageSink>(shared: &Shared<S>, frame: Bytes, peer: SocketAddr) -> Vec<u8> {
    let parsed = if frame.len() > INLINE_PARSE_LIMIT {
        let bytes = frame.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| OruMessage::parse(&bytes)))
            .await
            .unwrap_or_else(|e| Err(Hl7Error::Io(format!("parser task failed: {e}"))))
    } else {
        OruMessage::parse(&frame)
    };
    let message = match parsed {
        Ok(m) => m,
        Err(error) => {
            let header = crate::parse::read_header_for_reply(&frame);
            let nak = ack::nak_for(&error);
            tracing::warn!(
                control_id = header.as_ref().map_or("", |h| h.control_id.as_str()),
                ack = nak.ack_code.as_str(),
                code = nak.error.code(),
                %error,
                "message refused"
            );
            return shared.ack(header.as_ref(), Some(&nak));
        }
    };
    let header = message.header.clone();
    let key = header.key();
    let received = ReceivedMessage {
        raw: frame,
        message,
        key,
        peer,
    };
    match shared.sink.accept(received).await {
        Ok(receipt) => {
            tracing::debug!(control_id = %header.control_id, ?receipt, "message accepted (AA)");
            shared.ack(Some(&header), None)
        }
        Err(error) => {
            let nak = error.nak();
            tracing::warn!(
                control_id = %header.control_id,
                code = nak.error.code(),
                %error,
                "message not stored (AE)"
            );
            shared.ack(Some(&header), Some(&nak))
        }
    }
}

/// Close after a fatal error without losing our last answer: send FIN,
/// then read (and discard) what the peer still sends for a moment, since
/// closing with unread data would reset the connection and could destroy
/// the AR before the peer reads it.
async fn linger_close(mut socket: TcpStream) {
    let _ = socket.shutdown().await;
    let mut scratch = vec![0u8; 64 * 1024];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = socket.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}
