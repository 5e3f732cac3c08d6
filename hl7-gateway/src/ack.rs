//! Acknowledgements (original mode): the one place where errors become HL7
//! answers ([`nak_for`], [`SinkError::nak`]) and where ACK messages are
//! written ([`build_ack`]).
//!
//! Classes, as HL7 v2.5 section 2.9 and common practice (HAPI) use them:
//!
//! - **AR** (reject): the message cannot be routed or read: no MSH, bad
//!   encoding characters, missing MSH-9/10/12, unsupported version,
//!   character set, message type or trigger, bytes invalid in the declared
//!   character set, lines that are not segments, a frame over the size
//!   limit. Resending the same bytes cannot succeed.
//! - **AE** (error): a readable ORU^R01 whose content is wrong (no PID, no
//!   patient identifier, OBX before OBR, a non-numeric NM value), or the
//!   archive could not make it durable (207, the sender should retry).
//! - **AA**: the sink accepted the message (stored, or already stored).
//!
//! The ACK uses the received message's delimiters, version, processing id
//! and character set (it is encoded back in it), swaps sender and receiver,
//! and names the original control id in MSA-2. The ERR segment follows the
//! version: v2.5+ writes ERR-2 (location), ERR-3 (code), ERR-4 (severity)
//! and ERR-8 (text); v2.3/v2.4 write ERR-1 (ELD: location and code).
//! MSA-3 carries the text in every version, as many senders only log that.

use crate::Hl7Error;
use crate::parse::{Charset, Delimiters, MessageHeader};
use crate::server::SinkError;

/// MSA-1 (table 0008, original mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// Application accept.
    AA,
    /// Application error.
    AE,
    /// Application reject.
    AR,
}

impl AckCode {
    pub fn as_str(self) -> &'static str {
        match self {
            AckCode::AA => "AA",
            AckCode::AE => "AE",
            AckCode::AR => "AR",
        }
    }
}

/// HL7 error codes (table 0357).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 100: segments out of order, or a required segment missing.
    SegmentSequence,
    /// 101
    RequiredFieldMissing,
    /// 102
    DataTypeError,
    /// 103 (e.g. an MSH-18 character set we do not know)
    TableValueNotFound,
    /// 200
    UnsupportedMessageType,
    /// 201
    UnsupportedEventCode,
    /// 203
    UnsupportedVersionId,
    /// 205: a re-sent control id with different content.
    DuplicateKeyIdentifier,
    /// 207
    ApplicationInternalError,
}

impl ErrorCode {
    pub fn code(self) -> u16 {
        match self {
            ErrorCode::SegmentSequence => 100,
            ErrorCode::RequiredFieldMissing => 101,
            ErrorCode::DataTypeError => 102,
            ErrorCode::TableValueNotFound => 103,
            ErrorCode::UnsupportedMessageType => 200,
            ErrorCode::UnsupportedEventCode => 201,
            ErrorCode::UnsupportedVersionId => 203,
            ErrorCode::DuplicateKeyIdentifier => 205,
            ErrorCode::ApplicationInternalError => 207,
        }
    }

    /// The table 0357 description.
    pub fn description(self) -> &'static str {
        match self {
            ErrorCode::SegmentSequence => "Segment sequence error",
            ErrorCode::RequiredFieldMissing => "Required field missing",
            ErrorCode::DataTypeError => "Data type error",
            ErrorCode::TableValueNotFound => "Table value not found",
            ErrorCode::UnsupportedMessageType => "Unsupported message type",
            ErrorCode::UnsupportedEventCode => "Unsupported event code",
            ErrorCode::UnsupportedVersionId => "Unsupported version id",
            ErrorCode::DuplicateKeyIdentifier => "Duplicate key identifier",
            ErrorCode::ApplicationInternalError => "Application internal error",
        }
    }
}

/// Where an error is (ERR-2 / ERR-1 location): segment id, its occurrence,
/// the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorLocation {
    pub segment: String,
    pub sequence: Option<usize>,
    pub field: Option<usize>,
}

impl ErrorLocation {
    fn new(segment: &str, sequence: Option<usize>, field: Option<usize>) -> Self {
        ErrorLocation {
            segment: segment.to_string(),
            sequence,
            field,
        }
    }
}

/// A negative answer: its class, code, location and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nak {
    pub ack_code: AckCode,
    pub error: ErrorCode,
    pub location: Option<ErrorLocation>,
    pub text: String,
}

/// The answer to an error of this crate: the one mapping.
pub fn nak_for(error: &Hl7Error) -> Nak {
    use ErrorCode as C;
    let loc = ErrorLocation::new;
    let (ack_code, code, location) = match error {
        Hl7Error::MissingMsh => (
            AckCode::AR,
            C::SegmentSequence,
            Some(loc("MSH", Some(1), None)),
        ),
        Hl7Error::BadEncodingCharacters(_) => (
            AckCode::AR,
            C::DataTypeError,
            Some(loc("MSH", Some(1), Some(2))),
        ),
        Hl7Error::MissingHeaderField { field, .. } => (
            AckCode::AR,
            C::RequiredFieldMissing,
            Some(loc("MSH", Some(1), Some(*field))),
        ),
        Hl7Error::UnsupportedCharset(_) => (
            AckCode::AR,
            C::TableValueNotFound,
            Some(loc("MSH", Some(1), Some(18))),
        ),
        Hl7Error::UnsupportedVersion(_) => (
            AckCode::AR,
            C::UnsupportedVersionId,
            Some(loc("MSH", Some(1), Some(12))),
        ),
        Hl7Error::UnsupportedMessageType(_) => (
            AckCode::AR,
            C::UnsupportedMessageType,
            Some(loc("MSH", Some(1), Some(9))),
        ),
        Hl7Error::UnsupportedTriggerEvent(_) => (
            AckCode::AR,
            C::UnsupportedEventCode,
            Some(loc("MSH", Some(1), Some(9))),
        ),
        Hl7Error::InvalidText { .. } => (AckCode::AR, C::DataTypeError, None),
        Hl7Error::MalformedSegment { .. } => (AckCode::AR, C::SegmentSequence, None),
        Hl7Error::FrameTooLarge { .. } => (AckCode::AR, C::ApplicationInternalError, None),
        Hl7Error::SegmentSequence {
            segment, sequence, ..
        } => (
            AckCode::AE,
            C::SegmentSequence,
            Some(loc(segment, *sequence, None)),
        ),
        Hl7Error::MissingField {
            segment,
            sequence,
            field,
            ..
        } => (
            AckCode::AE,
            C::RequiredFieldMissing,
            Some(loc(segment, Some(*sequence), Some(*field))),
        ),
        Hl7Error::DataType {
            segment,
            sequence,
            field,
            ..
        } => (
            AckCode::AE,
            C::DataTypeError,
            Some(loc(segment, Some(*sequence), Some(*field))),
        ),
        Hl7Error::Io(_) => (AckCode::AE, C::ApplicationInternalError, None),
    };
    Nak {
        ack_code,
        error: code,
        location,
        text: error.to_string(),
    }
}

impl SinkError {
    /// The answer to a sink failure: AE, so the sender retries (207) or
    /// fixes its control ids (205). The detail stays in our log: the text
    /// sent is generic.
    pub fn nak(&self) -> Nak {
        match self {
            SinkError::Unavailable(_) => Nak {
                ack_code: AckCode::AE,
                error: ErrorCode::ApplicationInternalError,
                location: None,
                text: "the archive could not store the message; send it again later".into(),
            },
            SinkError::Conflict(_) => Nak {
                ack_code: AckCode::AE,
                error: ErrorCode::DuplicateKeyIdentifier,
                location: Some(ErrorLocation::new("MSH", Some(1), Some(10))),
                text: "this control id was already received from this sender with other content"
                    .into(),
            },
            SinkError::Rejected(why) => Nak {
                ack_code: AckCode::AE,
                error: ErrorCode::RequiredFieldMissing,
                location: None,
                text: why.clone(),
            },
        }
    }
}

/// What our side of the ACK header says when the received MSH-5/MSH-6 are
/// empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Responder {
    pub application: String,
    pub facility: String,
}

/// Write an ACK (without MLLP framing).
///
/// `received` is the header of the message being answered; `None` when it
/// could not be read at all: the ACK then uses `|^~\&`, version 2.5.1 and an
/// empty MSA-2. `control_id` is the ACK's own MSH-10, `now` its MSH-7
/// (`YYYYMMDDHHMMSS+ZZZZ`).
pub fn build_ack(
    received: Option<&MessageHeader>,
    nak: Option<&Nak>,
    responder: &Responder,
    control_id: &str,
    now: &str,
) -> Vec<u8> {
    let d = received.map_or_else(Delimiters::default, |h| h.delimiters);
    let charset = received.map_or(Charset::Ascii, |h| h.charset);
    let version = received
        .map(|h| h.version.as_str())
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
        .unwrap_or("2.5.1");
    let f = d.field;
    let esc = |s: &str| d.escape_text(s);
    let or = |raw: Option<&str>, fallback: &str| match raw {
        Some(r) if !r.is_empty() => r.to_string(),
        _ => esc(fallback),
    };
    let trigger = received
        .map(|h| h.message_type.trigger.as_str())
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric()));
    // v2.3 has no message structure component; v2.3.1 and later do.
    let message_type = match trigger {
        Some(t) if version == "2.3" || version.starts_with("2.2") || version.starts_with("2.1") => {
            format!("ACK{}{t}", d.component)
        }
        Some(t) => format!("ACK{c}{t}{c}ACK", c = d.component),
        None => "ACK".to_string(),
    };
    let processing_id = received
        .map(|h| h.processing_id.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or("P");
    let mut msh = vec![
        "MSH".to_string(),
        d.encoding_characters(),
        or(
            received.map(|h| h.raw_receiving_application.as_str()),
            &responder.application,
        ),
        or(
            received.map(|h| h.raw_receiving_facility.as_str()),
            &responder.facility,
        ),
        received.map_or(String::new(), |h| h.raw_sending_application.clone()),
        received.map_or(String::new(), |h| h.raw_sending_facility.clone()),
        now.to_string(),
        String::new(),
        message_type,
        esc(control_id),
        esc(processing_id),
        esc(version),
    ];
    if let Some(h) = received.filter(|h| !h.charset_field.is_empty()) {
        msh.resize(17, String::new());
        msh.push(h.charset_field.clone());
    }
    let code = nak.map_or(AckCode::AA, |n| n.ack_code);
    let original_id = received.map_or(String::new(), |h| esc(&h.control_id));
    let mut msa = vec!["MSA".to_string(), code.as_str().to_string(), original_id];
    let mut segments = vec![join(&msh, f), String::new()];
    if let Some(nak) = nak {
        msa.push(esc(&nak.text));
        segments[1] = join(&msa, f);
        segments.push(err_segment(nak, &d, version));
    } else {
        segments[1] = join(&msa, f);
    }
    charset.encode(&segments.join("\r"))
}

fn join(fields: &[String], sep: char) -> String {
    let mut s = String::new();
    for (i, v) in fields.iter().enumerate() {
        if i > 0 {
            s.push(sep);
        }
        s.push_str(v);
    }
    s
}

fn err_segment(nak: &Nak, d: &Delimiters, version: &str) -> String {
    let (c, s) = (d.component, d.subcomponent);
    let opt = |n: Option<usize>| n.map_or(String::new(), |n| n.to_string());
    let old_style = version.starts_with("2.1")
        || version.starts_with("2.2")
        || version.starts_with("2.3")
        || version.starts_with("2.4");
    let code = nak.error.code();
    let description = nak.error.description();
    if old_style {
        // ERR-1 (ELD): segment^sequence^field^code&text&HL70357
        let location = nak.location.as_ref().map_or(format!("{c}{c}"), |l| {
            format!("{}{c}{}{c}{}", l.segment, opt(l.sequence), opt(l.field))
        });
        format!(
            "ERR{f}{location}{c}{code}{s}{description}{s}HL70357",
            f = d.field
        )
    } else {
        // ERR-2 (ERL) | ERR-3 (CWE) | ERR-4 severity | ... | ERR-8 text
        let location = nak.location.as_ref().map_or(String::new(), |l| {
            let mut v = format!("{}{c}{}{c}{}", l.segment, opt(l.sequence), opt(l.field));
            while v.ends_with(c) {
                v.pop();
            }
            v
        });
        format!(
            "ERR{f}{f}{location}{f}{code}{c}{description}{c}HL70357{f}E{f}{f}{f}{f}{text}",
            f = d.field,
            text = d.escape_text(&nak.text)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::read_header;

    const MSG: &[u8] = b"MSH|^~\\&|LAB|HOSP|PACS|RAD|20240101120000||ORU^R01^ORU_R01|MSG0001|P|2.5.1\rPID|1||123^^^HOSP^MR";

    fn responder() -> Responder {
        Responder {
            application: "PACS".into(),
            facility: "".into(),
        }
    }

    #[test]
    fn aa_swaps_sender_and_receiver() {
        let h = read_header(MSG).unwrap();
        let ack = build_ack(Some(&h), None, &responder(), "A1", "20240101120001+0000");
        assert_eq!(
            String::from_utf8(ack).unwrap(),
            "MSH|^~\\&|PACS|RAD|LAB|HOSP|20240101120001+0000||ACK^R01^ACK|A1|P|2.5.1\rMSA|AA|MSG0001"
        );
    }

    #[test]
    fn ae_in_v23_uses_eld() {
        let msg = b"MSH|^~\\&|LAB|HOSP|||20240101||ORU^R01|X|P|2.3";
        let h = read_header(msg).unwrap();
        let nak = nak_for(&Hl7Error::MissingField {
            segment: "PID",
            sequence: 1,
            field: 3,
            name: "patient identifier list",
        });
        let ack =
            String::from_utf8(build_ack(Some(&h), Some(&nak), &responder(), "A2", "T")).unwrap();
        let segs: Vec<&str> = ack.split('\r').collect();
        assert_eq!(segs[0], "MSH|^~\\&|PACS||LAB|HOSP|T||ACK^R01|A2|P|2.3");
        assert!(
            segs[1].starts_with("MSA|AE|X|required field PID-3"),
            "{}",
            segs[1]
        );
        assert_eq!(segs[2], "ERR|PID^1^3^101&Required field missing&HL70357");
    }

    #[test]
    fn unreadable_header_gets_ar_with_defaults() {
        let nak = nak_for(&Hl7Error::MissingMsh);
        let ack = String::from_utf8(build_ack(None, Some(&nak), &responder(), "A3", "T")).unwrap();
        let segs: Vec<&str> = ack.split('\r').collect();
        assert_eq!(segs[0], "MSH|^~\\&|PACS||||T||ACK|A3|P|2.5.1");
        assert!(segs[1].starts_with("MSA|AR||"));
        assert_eq!(
            segs[2],
            "ERR||MSH^1|100^Segment sequence error^HL70357|E||||the message does not start with an MSH segment"
        );
    }
}
