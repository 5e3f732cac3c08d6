//! DIMSE command sets (PS3.7 section 9.3, Annex E): always Implicit VR
//! Little Endian, group 0000 only, led by CommandGroupLength. Decoding
//! accepts only what fits in the bytes received; nothing a peer sends can
//! panic it.

use std::fmt;

/// Command Field values (PS3.7 E.1).
pub mod field {
    pub const C_STORE_RQ: u16 = 0x0001;
    pub const C_STORE_RSP: u16 = 0x8001;
    pub const C_GET_RQ: u16 = 0x0010;
    pub const C_GET_RSP: u16 = 0x8010;
    pub const C_FIND_RQ: u16 = 0x0020;
    pub const C_FIND_RSP: u16 = 0x8020;
    pub const C_MOVE_RQ: u16 = 0x0021;
    pub const C_MOVE_RSP: u16 = 0x8021;
    pub const C_ECHO_RQ: u16 = 0x0030;
    pub const C_ECHO_RSP: u16 = 0x8030;
    pub const C_CANCEL_RQ: u16 = 0x0FFF;
}

/// CommandDataSetType value meaning "no data set follows".
pub const NO_DATA_SET: u16 = 0x0101;
/// CommandDataSetType value used when a data set follows (any other value
/// also means one follows).
pub const DATA_SET_PRESENT: u16 = 0x0000;

/// Element numbers of group 0000 that the gateway reads or writes.
pub mod tag {
    pub const COMMAND_GROUP_LENGTH: u16 = 0x0000;
    pub const AFFECTED_SOP_CLASS_UID: u16 = 0x0002;
    pub const COMMAND_FIELD: u16 = 0x0100;
    pub const MESSAGE_ID: u16 = 0x0110;
    pub const MESSAGE_ID_BEING_RESPONDED_TO: u16 = 0x0120;
    pub const MOVE_DESTINATION: u16 = 0x0600;
    pub const PRIORITY: u16 = 0x0700;
    pub const COMMAND_DATA_SET_TYPE: u16 = 0x0800;
    pub const STATUS: u16 = 0x0900;
    pub const ERROR_COMMENT: u16 = 0x0902;
    pub const REMAINING_SUB_OPERATIONS: u16 = 0x1020;
    pub const COMPLETED_SUB_OPERATIONS: u16 = 0x1021;
    pub const FAILED_SUB_OPERATIONS: u16 = 0x1022;
    pub const WARNING_SUB_OPERATIONS: u16 = 0x1023;
    pub const AFFECTED_SOP_INSTANCE_UID: u16 = 0x1000;
    pub const MOVE_ORIGINATOR_AE_TITLE: u16 = 0x1030;
    pub const MOVE_ORIGINATOR_MESSAGE_ID: u16 = 0x1031;
}

/// Why a command set could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("command set truncated at byte {0}")]
    Truncated(usize),
    #[error("element (0000,{0:04X}) outside group 0000 in a command set")]
    WrongGroup(u16),
    #[error("command set lacks (0000,{0:04X})")]
    Missing(u16),
    #[error("element (0000,{0:04X}) has length {1}, expected {2}")]
    BadLength(u16, usize, usize),
}

/// One value of a command element, as the command dictionary types it.
#[derive(Clone, PartialEq, Eq)]
enum Value {
    Us(u16),
    Ul(u32),
    /// UI, AE, LO: text without its padding.
    Text(String),
    /// Anything else, kept raw.
    Raw(Vec<u8>),
}

/// A decoded or to-be-encoded command set: (element, value) in ascending
/// element order.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Command {
    elements: Vec<(u16, Value)>,
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (e, v) in &self.elements {
            let key = format!("(0000,{e:04X})");
            match v {
                Value::Us(x) => m.entry(&key, &format_args!("{x:#06X}")),
                Value::Ul(x) => m.entry(&key, x),
                Value::Text(s) => m.entry(&key, s),
                Value::Raw(b) => m.entry(&key, &format_args!("{} bytes", b.len())),
            };
        }
        m.finish()
    }
}

/// The value representation of each group-0000 element (PS3.7 E.1-1).
fn kind_of(element: u16) -> Kind {
    match element {
        0x0000 => Kind::Ul,
        0x0100 | 0x0110 | 0x0120 | 0x0700 | 0x0800 | 0x0900 | 0x0903 | 0x1005 | 0x1008 | 0x1020
        | 0x1021 | 0x1022 | 0x1023 | 0x1031 => Kind::Us,
        0x0002 | 0x0003 | 0x1000 | 0x1001 => Kind::Text(b'\0'),
        0x0600 | 0x1030 | 0x0902 => Kind::Text(b' '),
        _ => Kind::Raw,
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Us,
    Ul,
    Text(u8),
    Raw,
}

impl Command {
    /// An empty command for building a message.
    pub fn new(command_field: u16) -> Self {
        let mut c = Command::default();
        c.set_us(tag::COMMAND_FIELD, command_field);
        c
    }

    fn set(&mut self, element: u16, value: Value) {
        match self.elements.binary_search_by_key(&element, |(e, _)| *e) {
            Ok(i) => self.elements[i].1 = value,
            Err(i) => self.elements.insert(i, (element, value)),
        }
    }

    fn get(&self, element: u16) -> Option<&Value> {
        self.elements
            .binary_search_by_key(&element, |(e, _)| *e)
            .ok()
            .map(|i| &self.elements[i].1)
    }

    pub fn set_us(&mut self, element: u16, value: u16) -> &mut Self {
        self.set(element, Value::Us(value));
        self
    }

    pub fn set_text(&mut self, element: u16, value: &str) -> &mut Self {
        self.set(element, Value::Text(value.to_owned()));
        self
    }

    pub fn us(&self, element: u16) -> Option<u16> {
        match self.get(element)? {
            Value::Us(v) => Some(*v),
            _ => None,
        }
    }

    pub fn text(&self, element: u16) -> Option<&str> {
        match self.get(element)? {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    pub fn command_field(&self) -> Option<u16> {
        self.us(tag::COMMAND_FIELD)
    }

    pub fn message_id(&self) -> Option<u16> {
        self.us(tag::MESSAGE_ID)
    }

    /// Does a data set follow this command?
    pub fn has_data_set(&self) -> bool {
        self.us(tag::COMMAND_DATA_SET_TYPE)
            .is_some_and(|t| t != NO_DATA_SET)
    }

    /// Decode an Implicit VR Little Endian group-0000 command set.
    pub fn decode(bytes: &[u8]) -> Result<Command, CommandError> {
        let mut command = Command::default();
        let mut at = 0usize;
        while at < bytes.len() {
            let header = bytes.get(at..at + 8).ok_or(CommandError::Truncated(at))?;
            let group = u16::from_le_bytes([header[0], header[1]]);
            let element = u16::from_le_bytes([header[2], header[3]]);
            let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
            if group != 0x0000 {
                return Err(CommandError::WrongGroup(element));
            }
            let start = at + 8;
            let value = start
                .checked_add(len)
                .and_then(|end| bytes.get(start..end))
                .ok_or(CommandError::Truncated(at))?;
            let value = match kind_of(element) {
                Kind::Us => match value {
                    [a, b] => Value::Us(u16::from_le_bytes([*a, *b])),
                    _ => return Err(CommandError::BadLength(element, len, 2)),
                },
                Kind::Ul => match value {
                    [a, b, c, d] => Value::Ul(u32::from_le_bytes([*a, *b, *c, *d])),
                    _ => return Err(CommandError::BadLength(element, len, 4)),
                },
                Kind::Text(_) => Value::Text(
                    String::from_utf8_lossy(value)
                        .trim_matches(|c: char| c == '\0' || c == ' ')
                        .to_owned(),
                ),
                Kind::Raw => Value::Raw(value.to_vec()),
            };
            command.set(element, value);
            at = start + len;
        }
        if command.command_field().is_none() {
            return Err(CommandError::Missing(tag::COMMAND_FIELD));
        }
        Ok(command)
    }

    /// Encode with a leading CommandGroupLength.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(128);
        for (element, value) in &self.elements {
            if *element == tag::COMMAND_GROUP_LENGTH {
                continue;
            }
            let bytes: Vec<u8> = match value {
                Value::Us(v) => v.to_le_bytes().to_vec(),
                Value::Ul(v) => v.to_le_bytes().to_vec(),
                Value::Text(s) => {
                    let mut b = s.as_bytes().to_vec();
                    if b.len() % 2 == 1 {
                        b.push(match kind_of(*element) {
                            Kind::Text(pad) => pad,
                            _ => b' ',
                        });
                    }
                    b
                }
                Value::Raw(b) => b.clone(),
            };
            push_element(&mut body, *element, &bytes);
        }
        let mut out = Vec::with_capacity(body.len() + 12);
        push_element(
            &mut out,
            tag::COMMAND_GROUP_LENGTH,
            &(body.len() as u32).to_le_bytes(),
        );
        out.extend_from_slice(&body);
        out
    }

    /// The response to `request` with `command_field`, echoing its message ID
    /// and affected SOP class/instance, without a data set.
    pub fn response_to(request: &Command, command_field: u16, status: u16) -> Command {
        let mut rsp = Command::new(command_field);
        if let Some(id) = request.message_id() {
            rsp.set_us(tag::MESSAGE_ID_BEING_RESPONDED_TO, id);
        }
        if let Some(class) = request.text(tag::AFFECTED_SOP_CLASS_UID) {
            rsp.set_text(tag::AFFECTED_SOP_CLASS_UID, class);
        }
        if let Some(instance) = request.text(tag::AFFECTED_SOP_INSTANCE_UID) {
            rsp.set_text(tag::AFFECTED_SOP_INSTANCE_UID, instance);
        }
        rsp.set_us(tag::COMMAND_DATA_SET_TYPE, NO_DATA_SET);
        rsp.set_us(tag::STATUS, status);
        rsp
    }
}

fn push_element(out: &mut Vec<u8>, element: u16, value: &[u8]) {
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_rq() -> Command {
        let mut c = Command::new(field::C_STORE_RQ);
        c.set_text(tag::AFFECTED_SOP_CLASS_UID, "1.2.840.10008.5.1.4.1.1.2")
            .set_us(tag::MESSAGE_ID, 7)
            .set_us(tag::PRIORITY, 0)
            .set_us(tag::COMMAND_DATA_SET_TYPE, DATA_SET_PRESENT)
            .set_text(tag::AFFECTED_SOP_INSTANCE_UID, "1.2.3.4.5");
        c
    }

    #[test]
    fn round_trip_with_group_length_and_padding() {
        let c = store_rq();
        let bytes = c.encode();
        assert_eq!(&bytes[..8], &[0, 0, 0, 0, 4, 0, 0, 0]);
        let len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 12);
        assert_eq!(bytes.len() % 2, 0);
        let d = Command::decode(&bytes).unwrap();
        assert_eq!(d.text(tag::AFFECTED_SOP_INSTANCE_UID), Some("1.2.3.4.5"));
        assert_eq!(d.message_id(), Some(7));
        assert!(d.has_data_set());
        assert_eq!(d.command_field(), Some(field::C_STORE_RQ));
        // UIDs are padded with NUL, as PS3.5 requires.
        assert!(bytes.windows(10).any(|w| w == b"1.2.3.4.5\0"));
    }

    #[test]
    fn response_echoes_the_request() {
        let rsp = Command::response_to(&store_rq(), field::C_STORE_RSP, 0xA700);
        let d = Command::decode(&rsp.encode()).unwrap();
        assert_eq!(d.us(tag::MESSAGE_ID_BEING_RESPONDED_TO), Some(7));
        assert_eq!(d.us(tag::STATUS), Some(0xA700));
        assert!(!d.has_data_set());
    }

    #[test]
    fn hostile_bytes_are_errors_not_panics() {
        let good = store_rq().encode();
        for cut in 0..good.len() {
            let _ = Command::decode(&good[..cut]);
        }
        let mut huge = good.clone();
        huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Command::decode(&huge).is_err());
        assert!(Command::decode(&[8, 0, 0x10, 0, 0, 0, 0, 0]).is_err());
        assert!(Command::decode(&[]).is_err());
        // A pseudo-random walk over byte soup.
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..2000 {
            let mut buf = Vec::new();
            for _ in 0..(x % 64) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push(x as u8 & 0x0F);
            }
            let _ = Command::decode(&buf);
        }
    }
}
