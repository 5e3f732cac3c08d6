//! HL7 v2 ER7 ("pipe and hat") messages: delimiters from MSH-1/MSH-2, the
//! character set from MSH-18, segments, and borrowed views for fields,
//! repetitions, components and subcomponents with escape decoding.
//!
//! This module knows the syntax only. What an ORU^R01 must contain is
//! `oru`'s business; which answer an error gets is `ack`'s.
//!
//! Numbering follows HL7: fields, repetitions, components and subcomponents
//! are 1-based, and MSH-1 is the field separator itself (so MSH-2 is the
//! encoding characters and MSH-9 the message type, as in the standard).
//! Views split lazily on access; decoding of escape sequences happens only at
//! the leaves, after splitting, so an escaped delimiter (`\F\`, `\S\`, ...)
//! never splits a value.

use std::borrow::Cow;
use std::ops::Range;

use crate::Hl7Error;

/// The versions (MSH-12) this gateway accepts.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["2.3", "2.3.1", "2.4", "2.5", "2.5.1"];

/// The five delimiters of a message, from MSH-1 and MSH-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiters {
    pub field: char,
    pub component: char,
    pub repetition: char,
    pub escape: char,
    pub subcomponent: char,
}

impl Default for Delimiters {
    /// The recommended `|^~\&`.
    fn default() -> Self {
        Delimiters {
            field: '|',
            component: '^',
            repetition: '~',
            escape: '\\',
            subcomponent: '&',
        }
    }
}

impl Delimiters {
    /// MSH-2 as it is written: component, repetition, escape, subcomponent.
    pub fn encoding_characters(&self) -> String {
        [
            self.component,
            self.repetition,
            self.escape,
            self.subcomponent,
        ]
        .iter()
        .collect()
    }

    /// Escape `text` for use as a value under these delimiters (the
    /// reverse of [`unescape`]); line breaks become `\.br\`.
    pub fn escape_text(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len() + 8);
        let e = self.escape;
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            let code = if c == self.escape {
                Some("E")
            } else if c == self.field {
                Some("F")
            } else if c == self.component {
                Some("S")
            } else if c == self.repetition {
                Some("R")
            } else if c == self.subcomponent {
                Some("T")
            } else if c == '\r' || c == '\n' {
                if c == '\r' && chars.peek() == Some(&'\n') {
                    chars.next();
                }
                Some(".br")
            } else {
                None
            };
            match code {
                Some(code) => {
                    out.push(e);
                    out.push_str(code);
                    out.push(e);
                }
                None => out.push(c),
            }
        }
        out
    }
}

/// The character set of a message (MSH-18, first repetition).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// `ASCII`, or MSH-18 empty (the HL7 default). Read as UTF-8, of which
    /// ASCII is a subset, so an undeclared UTF-8 message is still accepted;
    /// bytes that are not UTF-8 are an error.
    Ascii,
    /// `8859/1`: ISO 8859-1, every byte is one character.
    Latin1,
    /// `UNICODE UTF-8` (also `UTF-8`): bytes that are not UTF-8 are an
    /// error.
    Utf8,
}

impl Charset {
    /// Read MSH-18 (first repetition, first component).
    pub fn from_msh18(value: &str) -> Result<Charset, Hl7Error> {
        let v = value.trim();
        match v.to_ascii_uppercase().as_str() {
            "" | "ASCII" => Ok(Charset::Ascii),
            "8859/1" => Ok(Charset::Latin1),
            "UNICODE UTF-8" | "UTF-8" | "UTF8" => Ok(Charset::Utf8),
            _ => Err(Hl7Error::UnsupportedCharset(v.to_string())),
        }
    }

    /// The name used in error messages.
    pub fn name(self) -> &'static str {
        match self {
            Charset::Ascii => "ASCII/UTF-8",
            Charset::Latin1 => "ISO 8859-1",
            Charset::Utf8 => "UTF-8",
        }
    }

    /// Decode message bytes.
    fn decode(self, bytes: &[u8]) -> Result<String, Hl7Error> {
        match self {
            Charset::Latin1 => Ok(bytes.iter().map(|&b| b as char).collect()),
            Charset::Ascii | Charset::Utf8 => match std::str::from_utf8(bytes) {
                Ok(s) => Ok(s.to_string()),
                Err(e) => Err(Hl7Error::InvalidText {
                    charset: self.name(),
                    offset: e.valid_up_to(),
                }),
            },
        }
    }

    /// Decode bytes that must not fail (header values for an error ACK).
    fn decode_lossy(self, bytes: &[u8]) -> String {
        match self {
            Charset::Latin1 => bytes.iter().map(|&b| b as char).collect(),
            Charset::Ascii | Charset::Utf8 => String::from_utf8_lossy(bytes).into_owned(),
        }
    }

    /// Encode text for the wire (an ACK goes back in the sender's
    /// character set); characters outside ISO 8859-1 become `?` there.
    pub fn encode(self, text: &str) -> Vec<u8> {
        match self {
            Charset::Latin1 => text
                .chars()
                .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
                .collect(),
            Charset::Ascii | Charset::Utf8 => text.as_bytes().to_vec(),
        }
    }
}

/// MSH-9: message code, trigger event, message structure.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessageType {
    pub code: String,
    pub trigger: String,
    pub structure: String,
}

impl std::fmt::Display for MessageType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.code)?;
        if !self.trigger.is_empty() {
            write!(f, "^{}", self.trigger)?;
        }
        if !self.structure.is_empty() {
            write!(f, "^{}", self.structure)?;
        }
        Ok(())
    }
}

/// What identifies a message for duplicate detection: a re-sent message
/// carries the same MSH-10 from the same MSH-3/MSH-4 sender.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageKey {
    /// MSH-3, decoded, components joined with `^`.
    pub sending_application: String,
    /// MSH-4, decoded, components joined with `^`.
    pub sending_facility: String,
    /// MSH-10.
    pub control_id: String,
}

/// The MSH segment, read on its own: enough to route the message and to
/// answer it, even when the rest cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageHeader {
    pub delimiters: Delimiters,
    pub charset: Charset,
    /// MSH-18 as sent (empty when absent).
    pub charset_field: String,
    /// MSH-3 to MSH-6 exactly as written (escaped, in this message's
    /// delimiters), for swapping into the ACK.
    pub raw_sending_application: String,
    pub raw_sending_facility: String,
    pub raw_receiving_application: String,
    pub raw_receiving_facility: String,
    /// MSH-7, as written.
    pub date_time: String,
    pub message_type: MessageType,
    /// MSH-10.
    pub control_id: String,
    /// MSH-11, first component (P, D, T).
    pub processing_id: String,
    /// MSH-12, first component.
    pub version: String,
}

impl MessageHeader {
    /// The duplicate-detection key (sending application, sending facility,
    /// control id).
    pub fn key(&self) -> MessageKey {
        MessageKey {
            sending_application: composite_text(&self.raw_sending_application, &self.delimiters),
            sending_facility: composite_text(&self.raw_sending_facility, &self.delimiters),
            control_id: self.control_id.clone(),
        }
    }

    /// Whether MSH-12 is one of [`SUPPORTED_VERSIONS`].
    pub fn version_supported(&self) -> bool {
        SUPPORTED_VERSIONS.contains(&self.version.as_str())
    }
}

/// Decode a composite's components and join them with `^` (trailing empty
/// components dropped): a stable text form of HD values such as MSH-3.
fn composite_text(raw: &str, d: &Delimiters) -> String {
    let first = raw.split(d.repetition).next().unwrap_or("");
    let parts: Vec<String> = first
        .split(d.component)
        .map(|c| unescape(c, d, Charset::Utf8).into_owned())
        .collect();
    let keep = parts
        .iter()
        .rposition(|p| !p.is_empty())
        .map_or(0, |i| i + 1);
    parts[..keep].join("^")
}

fn is_segment_end(b: u8) -> bool {
    b == b'\r' || b == b'\n'
}

/// Skip what a lenient receiver may find before MSH: a UTF-8 byte order
/// mark and blank lines.
fn skip_preamble(bytes: &[u8]) -> &[u8] {
    let b = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let start = b
        .iter()
        .position(|&c| !matches!(c, b'\r' | b'\n' | b' ' | b'\t'))
        .unwrap_or(b.len());
    &b[start..]
}

fn valid_delimiter(b: u8) -> bool {
    b.is_ascii_graphic() && !b.is_ascii_alphanumeric()
}

/// Read the delimiters and return them with the MSH line's byte length.
fn read_delimiters(b: &[u8]) -> Result<(Delimiters, usize), Hl7Error> {
    if !b.starts_with(b"MSH") {
        return Err(Hl7Error::MissingMsh);
    }
    let msh_end = b.iter().position(|&c| is_segment_end(c)).unwrap_or(b.len());
    let msh = &b[..msh_end];
    let Some(&fs) = msh.get(3) else {
        return Err(Hl7Error::BadEncodingCharacters(
            "MSH has no field separator".into(),
        ));
    };
    if !valid_delimiter(fs) {
        return Err(Hl7Error::BadEncodingCharacters(format!(
            "field separator {:?} is not a printable ASCII punctuation character",
            char::from(fs)
        )));
    }
    let enc_end = msh[4..]
        .iter()
        .position(|&c| c == fs)
        .map_or(msh.len(), |i| i + 4);
    let enc = &msh[4..enc_end];
    // MSH-2 has four characters; v2.7 adds a fifth (truncation), which
    // this gateway reads past.
    if enc.len() < 4 || enc.len() > 5 {
        return Err(Hl7Error::BadEncodingCharacters(format!(
            "MSH-2 must hold 4 encoding characters, found {:?}",
            String::from_utf8_lossy(enc)
        )));
    }
    let mut seen = vec![fs];
    for &c in enc {
        if !valid_delimiter(c) {
            return Err(Hl7Error::BadEncodingCharacters(format!(
                "encoding character {:?} is not printable ASCII punctuation",
                char::from(c)
            )));
        }
        if seen.contains(&c) {
            return Err(Hl7Error::BadEncodingCharacters(format!(
                "delimiter {:?} is used twice",
                char::from(c)
            )));
        }
        seen.push(c);
    }
    if enc_end == msh.len() {
        return Err(Hl7Error::BadEncodingCharacters(
            "MSH ends after the encoding characters".into(),
        ));
    }
    Ok((
        Delimiters {
            field: fs.into(),
            component: enc[0].into(),
            repetition: enc[1].into(),
            escape: enc[2].into(),
            subcomponent: enc[3].into(),
        },
        msh_end,
    ))
}

/// Read only the MSH segment of `bytes`. Values are decoded leniently
/// (invalid bytes replaced), so that an error ACK can still be addressed.
/// Does not check version or message type: see [`MessageHeader`].
pub fn read_header(bytes: &[u8]) -> Result<MessageHeader, Hl7Error> {
    let (header, charset) = read_header_lenient(bytes)?;
    charset.map(|_| header)
}

/// Like [`read_header`], but an unsupported character set still yields the
/// header (read as UTF-8), so that the rejection can be addressed.
pub fn read_header_for_reply(bytes: &[u8]) -> Option<MessageHeader> {
    read_header_lenient(bytes).ok().map(|(h, _)| h)
}

/// The header, and separately whether MSH-18 is supported.
fn read_header_lenient(bytes: &[u8]) -> Result<(MessageHeader, Result<(), Hl7Error>), Hl7Error> {
    let b = skip_preamble(bytes);
    let (delimiters, msh_end) = read_delimiters(b)?;
    let msh = &b[..msh_end];
    let fs = delimiters.field as u8;
    // parts[0] = "MSH", parts[n - 1] = MSH-n for n >= 2.
    let parts: Vec<&[u8]> = msh.split(|&c| c == fs).collect();
    let raw = |n: usize| parts.get(n - 1).copied().unwrap_or(b"");
    let charset_field = String::from_utf8_lossy(raw(18)).into_owned();
    let charset = {
        let first_rep = charset_field
            .split(delimiters.repetition)
            .next()
            .unwrap_or("");
        let first = first_rep.split(delimiters.component).next().unwrap_or("");
        Charset::from_msh18(first)
    };
    // An unsupported character set is reported after the header is read,
    // so the AR can still be addressed: read it as UTF-8 meanwhile.
    let (text_charset, charset_ok) = match charset {
        Ok(c) => (c, Ok(())),
        Err(e) => (Charset::Utf8, Err(e)),
    };
    let text = |n: usize| text_charset.decode_lossy(raw(n));
    let first_component = |n: usize| {
        let t = text(n);
        let rep = t.split(delimiters.repetition).next().unwrap_or("");
        let c = rep.split(delimiters.component).next().unwrap_or("");
        unescape(c, &delimiters, text_charset).trim().to_string()
    };
    let msh9 = text(9);
    let msh9_rep = msh9.split(delimiters.repetition).next().unwrap_or("");
    let mut type_parts = msh9_rep
        .split(delimiters.component)
        .map(|c| unescape(c, &delimiters, text_charset).trim().to_string());
    let message_type = MessageType {
        code: type_parts.next().unwrap_or_default(),
        trigger: type_parts.next().unwrap_or_default(),
        structure: type_parts.next().unwrap_or_default(),
    };
    let header = MessageHeader {
        delimiters,
        charset: text_charset,
        charset_field,
        raw_sending_application: text(3),
        raw_sending_facility: text(4),
        raw_receiving_application: text(5),
        raw_receiving_facility: text(6),
        date_time: first_component(7),
        message_type,
        control_id: first_component(10),
        processing_id: first_component(11),
        version: first_component(12),
    };
    Ok((header, charset_ok))
}

/// A parsed message: its decoded text and where its segments and fields
/// are. Views ([`Segment`], [`Field`], ...) borrow from it.
#[derive(Debug, Clone)]
pub struct Message {
    text: String,
    header: MessageHeader,
    /// Per segment: the byte ranges in `text` of the segment id (index 0)
    /// and its fields (index n = field n; for MSH index 1 is the field
    /// separator itself).
    segments: Vec<Vec<Range<usize>>>,
}

/// Parse `bytes` as one HL7 v2 message. Checks the syntax only: delimiters,
/// character set, segment ids, required MSH-9/MSH-10/MSH-12. Version and
/// message type are checked by the ORU reader.
pub fn parse(bytes: &[u8]) -> Result<Message, Hl7Error> {
    let header = read_header(bytes)?;
    for (field, name, value) in [
        (9, "message type", &header.message_type.code),
        (10, "message control id", &header.control_id),
        (12, "version id", &header.version),
    ] {
        if value.is_empty() {
            return Err(Hl7Error::MissingHeaderField { field, name });
        }
    }
    let body = skip_preamble(bytes);
    let text = header.charset.decode(body).map_err(|e| match e {
        Hl7Error::InvalidText { charset, offset } => Hl7Error::InvalidText {
            charset,
            offset: offset + (bytes.len() - body.len()),
        },
        e => e,
    })?;
    let d = header.delimiters;
    let mut segments = Vec::new();
    let mut pos = 0;
    for line in text.split(['\r', '\n']) {
        let start = pos;
        pos += line.len() + 1;
        if line.trim().is_empty() {
            continue;
        }
        let index = segments.len() + 1;
        let id_end = line.find(d.field).unwrap_or(line.len());
        let id = &line[..id_end];
        let well_formed = id.len() == 3
            && id.as_bytes()[0].is_ascii_uppercase()
            && id
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if !well_formed {
            let shown: String = line.chars().take(24).collect();
            return Err(Hl7Error::MalformedSegment {
                index,
                detail: format!(
                    "{shown:?} does not start with a segment id followed by {:?}",
                    d.field
                ),
            });
        }
        if id == "MSH" && index > 1 {
            return Err(Hl7Error::MalformedSegment {
                index,
                detail: "a second MSH: one frame must hold one message".into(),
            });
        }
        let mut ranges = Vec::with_capacity(16);
        let mut field_start = start;
        for (i, c) in line.char_indices() {
            if c == d.field {
                ranges.push(field_start..start + i);
                field_start = start + i + c.len_utf8();
            }
        }
        ranges.push(field_start..start + line.len());
        if index == 1 {
            // MSH-1 is the separator itself, at byte 3.
            ranges.insert(1, start + 3..start + 3 + d.field.len_utf8());
        }
        segments.push(ranges);
    }
    Ok(Message {
        text,
        header,
        segments,
    })
}

impl Message {
    /// The header (MSH), as read before the body.
    pub fn header(&self) -> &MessageHeader {
        &self.header
    }

    pub fn delimiters(&self) -> &Delimiters {
        &self.header.delimiters
    }

    pub fn charset(&self) -> Charset {
        self.header.charset
    }

    /// The whole message, decoded to UTF-8 (still escaped ER7).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// All segments in order.
    pub fn segments(&self) -> impl Iterator<Item = Segment<'_>> + '_ {
        (0..self.segments.len()).map(move |i| Segment { msg: self, idx: i })
    }

    /// The first segment called `name`.
    pub fn segment(&self, name: &str) -> Option<Segment<'_>> {
        self.segments().find(|s| s.name() == name)
    }

    /// Every segment called `name`, in order.
    pub fn segments_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = Segment<'a>> + 'a {
        self.segments().filter(move |s| s.name() == name)
    }
}

/// One segment of a [`Message`].
#[derive(Debug, Clone, Copy)]
pub struct Segment<'m> {
    msg: &'m Message,
    idx: usize,
}

impl<'m> Segment<'m> {
    /// The segment id (`MSH`, `PID`, `OBX`, ...).
    pub fn name(&self) -> &'m str {
        &self.msg.text[self.msg.segments[self.idx][0].clone()]
    }

    /// 0-based position of the segment in the message.
    pub fn position(&self) -> usize {
        self.idx
    }

    /// The number of the last field present.
    pub fn field_count(&self) -> usize {
        self.msg.segments[self.idx].len() - 1
    }

    /// Field `n` (1-based); empty when absent. MSH-1 and MSH-2 are
    /// literal: never split, never unescaped.
    pub fn field(&self, n: usize) -> Field<'m> {
        let ranges = &self.msg.segments[self.idx];
        let raw = match ranges.get(n) {
            Some(r) if n > 0 => &self.msg.text[r.clone()],
            _ => "",
        };
        Field {
            raw,
            delims: &self.msg.header.delimiters,
            charset: self.msg.header.charset,
            literal: self.idx == 0 && (n == 1 || n == 2),
        }
    }

    /// The segment as written (escaped ER7).
    pub fn raw(&self) -> &'m str {
        let r = &self.msg.segments[self.idx];
        let start = r[0].start;
        let end = r.last().map_or(start, |l| l.end);
        &self.msg.text[start..end]
    }
}

/// One field: zero or more repetitions.
#[derive(Debug, Clone, Copy)]
pub struct Field<'m> {
    raw: &'m str,
    delims: &'m Delimiters,
    charset: Charset,
    literal: bool,
}

impl<'m> Field<'m> {
    /// The field as written (escaped).
    pub fn raw(&self) -> &'m str {
        self.raw
    }

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The HL7 explicit null `""` (delete the stored value).
    pub fn is_null(&self) -> bool {
        self.raw == "\"\""
    }

    /// The repetitions; an empty field has none.
    pub fn repetitions(&self) -> impl Iterator<Item = Repetition<'m>> + 'm {
        let raw = self.raw;
        let (delims, charset, literal) = (self.delims, self.charset, self.literal);
        let parts: Box<dyn Iterator<Item = &'m str> + 'm> = if raw.is_empty() {
            Box::new(std::iter::empty())
        } else if literal {
            Box::new(std::iter::once(raw))
        } else {
            Box::new(raw.split(delims.repetition))
        };
        parts.map(move |raw| Repetition {
            raw,
            delims,
            charset,
            literal,
        })
    }

    /// Repetition `n` (1-based); empty when absent.
    pub fn repetition(&self, n: usize) -> Repetition<'m> {
        self.repetitions()
            .nth(n.wrapping_sub(1))
            .unwrap_or(Repetition {
                raw: "",
                delims: self.delims,
                charset: self.charset,
                literal: self.literal,
            })
    }

    /// Component `n` of the first repetition.
    pub fn component(&self, n: usize) -> Component<'m> {
        self.repetition(1).component(n)
    }

    /// The decoded value of the first repetition's first component's first
    /// subcomponent: the value of a field with a primitive data type.
    pub fn value(&self) -> Cow<'m, str> {
        self.repetition(1).component(1).subcomponent(1)
    }

    /// The first repetition decoded as a whole, delimiters inside it kept
    /// as written: for text data types (ST, TX, FT) from senders that do
    /// not escape `^` or `&`.
    pub fn text(&self) -> Cow<'m, str> {
        self.repetition(1).text()
    }
}

/// One repetition of a field: one or more components.
#[derive(Debug, Clone, Copy)]
pub struct Repetition<'m> {
    raw: &'m str,
    delims: &'m Delimiters,
    charset: Charset,
    literal: bool,
}

impl<'m> Repetition<'m> {
    pub fn raw(&self) -> &'m str {
        self.raw
    }

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The components.
    pub fn components(&self) -> impl Iterator<Item = Component<'m>> + 'm {
        let (delims, charset, literal) = (self.delims, self.charset, self.literal);
        let parts: Box<dyn Iterator<Item = &'m str> + 'm> = if literal {
            Box::new(std::iter::once(self.raw))
        } else {
            Box::new(self.raw.split(delims.component))
        };
        parts.map(move |raw| Component {
            raw,
            delims,
            charset,
            literal,
        })
    }

    /// Component `n` (1-based); empty when absent.
    pub fn component(&self, n: usize) -> Component<'m> {
        self.components()
            .nth(n.wrapping_sub(1))
            .unwrap_or(Component {
                raw: "",
                delims: self.delims,
                charset: self.charset,
                literal: self.literal,
            })
    }

    /// The whole repetition, decoded, delimiters kept as written.
    pub fn text(&self) -> Cow<'m, str> {
        if self.literal {
            Cow::Borrowed(self.raw)
        } else {
            unescape(self.raw, self.delims, self.charset)
        }
    }
}

/// One component: one or more subcomponents.
#[derive(Debug, Clone, Copy)]
pub struct Component<'m> {
    raw: &'m str,
    delims: &'m Delimiters,
    charset: Charset,
    literal: bool,
}

impl<'m> Component<'m> {
    pub fn raw(&self) -> &'m str {
        self.raw
    }

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The decoded subcomponents.
    pub fn subcomponents(&self) -> impl Iterator<Item = Cow<'m, str>> + 'm {
        let (delims, charset, literal) = (self.delims, self.charset, self.literal);
        let parts: Box<dyn Iterator<Item = &'m str> + 'm> = if literal {
            Box::new(std::iter::once(self.raw))
        } else {
            Box::new(self.raw.split(delims.subcomponent))
        };
        parts.map(move |raw| {
            if literal {
                Cow::Borrowed(raw)
            } else {
                unescape(raw, delims, charset)
            }
        })
    }

    /// Subcomponent `n` (1-based), decoded; empty when absent.
    pub fn subcomponent(&self, n: usize) -> Cow<'m, str> {
        self.subcomponents()
            .nth(n.wrapping_sub(1))
            .unwrap_or(Cow::Borrowed(""))
    }

    /// The first subcomponent, decoded: the value of a primitive component.
    pub fn value(&self) -> Cow<'m, str> {
        self.subcomponent(1)
    }

    /// The whole component decoded, subcomponent separators kept.
    pub fn text(&self) -> Cow<'m, str> {
        if self.literal {
            Cow::Borrowed(self.raw)
        } else {
            unescape(self.raw, self.delims, self.charset)
        }
    }
}

/// Decode the escape sequences of one value:
///
/// - `\F\ \S\ \T\ \R\ \E\`: the field, component, subcomponent,
///   repetition and escape characters;
/// - `\.br\` a line break, `\.sp n\` a line break and n blank lines (one
///   when n is absent); the other formatting commands of FT (`\.in\ \.ti\
///   \.sk\ \.ce\ \.fi\ \.nf\`) and highlighting (`\H\ \N\`) are dropped;
/// - `\Xhh...\` bytes in hexadecimal, read in the message's character set
///   (invalid UTF-8 becomes U+FFFD);
/// - `\Cxxyy\ \Mxxyyzz\ \Zxx\` (character set switches, local escapes) are
///   dropped.
///
/// An escape character without a closing one is kept as written, so is an
/// unknown sequence.
pub fn unescape<'a>(raw: &'a str, d: &Delimiters, charset: Charset) -> Cow<'a, str> {
    let e = d.escape;
    if !raw.contains(e) {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find(e) {
        out.push_str(&rest[..i]);
        let after = &rest[i + e.len_utf8()..];
        let Some(j) = after.find(e) else {
            // Unterminated: keep as written.
            out.push_str(&rest[i..]);
            rest = "";
            break;
        };
        let seq = &after[..j];
        let consumed = i + e.len_utf8() + j + e.len_utf8();
        match seq {
            "F" => out.push(d.field),
            "S" => out.push(d.component),
            "T" => out.push(d.subcomponent),
            "R" => out.push(d.repetition),
            "E" => out.push(d.escape),
            "H" | "N" => {}
            ".br" => out.push('\n'),
            s if s.starts_with(".sp") => {
                // End the line, then skip n lines (one when absent).
                let n = s[3..].trim().parse::<usize>().unwrap_or(1).min(100);
                for _ in 0..=n {
                    out.push('\n');
                }
            }
            s if s.starts_with('.') => {}
            s if s.starts_with('X') && s.len() > 1 && s.len() % 2 == 1 => {
                let hex = &s[1..];
                let bytes: Option<Vec<u8>> = (0..hex.len())
                    .step_by(2)
                    .map(|k| u8::from_str_radix(hex.get(k..k + 2)?, 16).ok())
                    .collect();
                match bytes {
                    Some(bytes) => out.push_str(&charset.decode_lossy(&bytes)),
                    None => out.push_str(&rest[i..consumed]),
                }
            }
            s if s.starts_with('C') || s.starts_with('M') || s.starts_with('Z') => {}
            _ => out.push_str(&rest[i..consumed]),
        }
        rest = &rest[consumed..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_round_trips() {
        let d = Delimiters::default();
        let text = "a|b^c~d\\e&f\nnext";
        let escaped = d.escape_text(text);
        assert_eq!(escaped, r"a\F\b\S\c\R\d\E\e\T\f\.br\next");
        assert_eq!(unescape(&escaped, &d, Charset::Utf8), text);
    }

    #[test]
    fn delimiters_are_distinct_punctuation() {
        assert!(matches!(
            read_delimiters(b"MSH|^^\\&|A"),
            Err(Hl7Error::BadEncodingCharacters(_))
        ));
        assert!(matches!(
            read_delimiters(b"MSHA^~\\&A"),
            Err(Hl7Error::BadEncodingCharacters(_))
        ));
        assert!(matches!(
            read_delimiters(b"MSH|^~|A"),
            Err(Hl7Error::BadEncodingCharacters(_))
        ));
        assert!(matches!(
            read_delimiters(b"PID|1"),
            Err(Hl7Error::MissingMsh)
        ));
        let (d, _) = read_delimiters(b"MSH#$%!*#APP").unwrap();
        assert_eq!(d.encoding_characters(), "$%!*");
    }

    #[test]
    fn hex_escapes_follow_the_charset() {
        let d = Delimiters::default();
        assert_eq!(unescape(r"\XC3A9\", &d, Charset::Utf8), "é");
        assert_eq!(unescape(r"\XE9\", &d, Charset::Latin1), "é");
        assert_eq!(unescape(r"a\X0D0A\b", &d, Charset::Ascii), "a\r\nb");
        assert_eq!(unescape(r"a\Xzz\b", &d, Charset::Ascii), r"a\Xzz\b");
        assert_eq!(unescape(r"open\S", &d, Charset::Ascii), r"open\S");
    }
}
