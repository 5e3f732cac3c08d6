#![doc = include_str!("../README.md")]

pub mod ack;
pub mod config;
pub mod mllp;
pub mod oru;
pub mod parse;
mod server;
mod sink;

pub use ack::{AckCode, ErrorCode, ErrorLocation};
pub use config::MllpConfig;
pub use oru::{OruMessage, report_text};
pub use parse::{Charset, Delimiters, Message, MessageHeader, MessageKey, parse};
pub use server::{MessageSink, MllpServer, ReceivedMessage, SinkError, SinkReceipt};
pub use sink::{ArchiveSink, to_result_message};

/// Everything this crate can fail with. Each variant has exactly one HL7
/// answer (AE or AR with an ERR code), chosen in [`ack::nak_for`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Hl7Error {
    // ---- the header: the message cannot be routed (AR) ----
    /// The message does not start with an MSH segment.
    #[error("the message does not start with an MSH segment")]
    MissingMsh,
    /// MSH-1/MSH-2 do not define a usable set of delimiters.
    #[error("bad encoding characters in MSH-1/MSH-2: {0}")]
    BadEncodingCharacters(String),
    /// A required MSH field is empty.
    #[error("required field MSH-{field} ({name}) is missing")]
    MissingHeaderField { field: usize, name: &'static str },
    /// MSH-18 names a character set this gateway does not read.
    #[error("unsupported character set {0:?} in MSH-18")]
    UnsupportedCharset(String),
    /// MSH-12 names a version outside v2.3-v2.5.1.
    #[error("unsupported HL7 version {0:?} in MSH-12 (supported: 2.3, 2.3.1, 2.4, 2.5, 2.5.1)")]
    UnsupportedVersion(String),
    /// MSH-9 names a message type other than ORU.
    #[error("unsupported message type {0:?}: only ORU^R01 is accepted")]
    UnsupportedMessageType(String),
    /// MSH-9 is ORU, but the trigger event is not R01.
    #[error("unsupported trigger event {0:?}: only ORU^R01 is accepted")]
    UnsupportedTriggerEvent(String),

    // ---- the syntax: the message cannot be read (AR) ----
    /// The bytes are not valid in the declared character set.
    #[error("byte {offset} is not valid {charset}")]
    InvalidText {
        charset: &'static str,
        offset: usize,
    },
    /// A line of the message is not a segment under the declared delimiters
    /// (for example a body written with other delimiters than MSH-1/MSH-2).
    #[error("segment {index} is malformed: {detail}")]
    MalformedSegment { index: usize, detail: String },
    /// The MLLP frame is larger than the configured limit.
    #[error("the message is larger than the limit of {limit} bytes")]
    FrameTooLarge { limit: usize },

    // ---- the content: a readable ORU^R01 that is wrong (AE) ----
    /// A required segment is missing or out of order.
    #[error("segment {segment} {detail}")]
    SegmentSequence {
        segment: &'static str,
        /// Occurrence of the segment (1-based) where it went wrong, when
        /// one exists.
        sequence: Option<usize>,
        detail: &'static str,
    },
    /// A required field is empty.
    #[error("required field {segment}-{field} ({name}) is missing in {segment} #{sequence}")]
    MissingField {
        segment: &'static str,
        sequence: usize,
        field: usize,
        name: &'static str,
    },
    /// A value does not match its data type.
    #[error("{segment}-{field} in {segment} #{sequence}: {detail}")]
    DataType {
        segment: &'static str,
        sequence: usize,
        field: usize,
        detail: String,
    },

    /// The listener socket failed.
    #[error("listener: {0}")]
    Io(String),
}
