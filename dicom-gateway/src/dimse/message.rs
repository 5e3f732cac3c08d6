//! Reassembly of DIMSE messages from P-DATA-TF fragments (PS3.8 9.3.5,
//! Annex E): a command set in one or more command fragments, then, when the
//! command announces one, a data set in one or more data fragments, all on
//! one presentation context. Messages are never interleaved on an
//! association, so one assembler per association suffices.

use dicom_ul::pdu::{PDataValue, PDataValueType};

use super::command::{Command, CommandError};

/// A complete DIMSE message.
#[derive(Debug)]
pub struct Message {
    pub presentation_context_id: u8,
    pub command: Command,
    /// The data set bytes exactly as received, in the context's transfer syntax.
    pub data_set: Option<DataSet>,
}

/// Room left in front of a data set received in several fragments: a
/// C-STORE becomes a Part-10 object by writing its preamble and file meta
/// group there, without copying the data set again (an instance is
/// hundreds of kilobytes; its meta group a few hundred bytes).
pub const HEADROOM: usize = 1024;

/// A received data set: one buffer, with [`HEADROOM`] free bytes before the
/// data when it came in several fragments.
#[derive(Debug, Default)]
pub struct DataSet {
    buffer: Vec<u8>,
    start: usize,
}

impl DataSet {
    /// The data set of one fragment, as it came (no room in front).
    pub fn whole(bytes: Vec<u8>) -> Self {
        DataSet {
            buffer: bytes,
            start: 0,
        }
    }

    /// Join fragments into one buffer of the exact size, with [`HEADROOM`]
    /// in front: the one copy a data set needs.
    fn joined(fragments: Vec<Vec<u8>>) -> Self {
        let len: usize = fragments.iter().map(Vec::len).sum();
        let mut buffer = Vec::with_capacity(HEADROOM + len);
        buffer.resize(HEADROOM, 0);
        for fragment in fragments {
            buffer.extend_from_slice(&fragment);
        }
        DataSet {
            buffer,
            start: HEADROOM,
        }
    }

    /// `prefix` followed by the data set, in one buffer: in place when the
    /// room in front is large enough, copied otherwise.
    pub fn with_prefix(self, prefix: &[u8]) -> bytes::Bytes {
        let DataSet { mut buffer, start } = self;
        if prefix.len() <= start {
            let at = start - prefix.len();
            buffer[at..start].copy_from_slice(prefix);
            bytes::Bytes::from(buffer).slice(at..)
        } else {
            let mut out = Vec::with_capacity(prefix.len() + buffer.len() - start);
            out.extend_from_slice(prefix);
            out.extend_from_slice(&buffer[start..]);
            bytes::Bytes::from(out)
        }
    }
}

impl std::ops::Deref for DataSet {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buffer[self.start..]
    }
}

/// A peer that broke the P-DATA rules; the association must be aborted.
#[derive(Debug, thiserror::Error)]
pub enum AssemblyError {
    #[error("fragment on presentation context {got} while a message on {expected} is open")]
    ContextSwitch { expected: u8, got: u8 },
    #[error("presentation context {0} was not accepted")]
    UnknownContext(u8),
    #[error("data fragment before the command set was complete")]
    DataBeforeCommand,
    #[error("command fragment while the data set was being received")]
    CommandDuringData,
    #[error("invalid command set: {0}")]
    Command(#[from] CommandError),
    #[error("message larger than the limit of {0} bytes")]
    TooLarge(u64),
}

enum State {
    Idle,
    Command {
        pc: u8,
        bytes: Vec<u8>,
    },
    Data {
        pc: u8,
        command: Command,
        /// The fragments so far (joined once, when the last one comes) and
        /// their total length.
        fragments: Vec<Vec<u8>>,
        len: usize,
    },
}

/// Collects fragments into messages.
pub struct Assembler {
    state: State,
    max_message_bytes: u64,
}

impl Assembler {
    pub fn new(max_message_bytes: u64) -> Self {
        Assembler {
            state: State::Idle,
            max_message_bytes,
        }
    }

    /// True when no message is partly received: a safe point to stop.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle)
    }

    /// Bytes of the message being received so far.
    pub fn pending_bytes(&self) -> usize {
        match &self.state {
            State::Idle => 0,
            State::Command { bytes, .. } => bytes.len(),
            State::Data { len, .. } => *len,
        }
    }

    /// Add one fragment; returns a message when it completes one.
    /// `accepted` says whether a presentation context ID was accepted.
    pub fn push(
        &mut self,
        pdv: PDataValue,
        accepted: impl Fn(u8) -> bool,
    ) -> Result<Option<Message>, AssemblyError> {
        let pc = pdv.presentation_context_id;
        if !accepted(pc) {
            return Err(AssemblyError::UnknownContext(pc));
        }
        let state = std::mem::replace(&mut self.state, State::Idle);
        let (next, done) = match (state, pdv.value_type) {
            (State::Idle, PDataValueType::Command) => {
                self.check_size(pdv.data.len())?;
                self.command_fragment(pc, pdv.data, pdv.is_last)?
            }
            (State::Idle, PDataValueType::Data) => return Err(AssemblyError::DataBeforeCommand),
            (
                State::Command {
                    pc: open,
                    mut bytes,
                },
                PDataValueType::Command,
            ) => {
                if open != pc {
                    return Err(AssemblyError::ContextSwitch {
                        expected: open,
                        got: pc,
                    });
                }
                self.check_size(bytes.len() + pdv.data.len())?;
                bytes.extend_from_slice(&pdv.data);
                self.command_fragment(pc, bytes, pdv.is_last)?
            }
            (State::Command { .. }, PDataValueType::Data) => {
                return Err(AssemblyError::DataBeforeCommand);
            }
            (State::Data { .. }, PDataValueType::Command) => {
                return Err(AssemblyError::CommandDuringData);
            }
            (
                State::Data {
                    pc: open,
                    command,
                    mut fragments,
                    len,
                },
                PDataValueType::Data,
            ) => {
                if open != pc {
                    return Err(AssemblyError::ContextSwitch {
                        expected: open,
                        got: pc,
                    });
                }
                let len = len + pdv.data.len();
                self.check_size(len)?;
                fragments.push(pdv.data);
                if pdv.is_last {
                    let data_set = if fragments.len() == 1 {
                        DataSet::whole(fragments.pop().unwrap_or_default())
                    } else {
                        DataSet::joined(fragments)
                    };
                    (
                        State::Idle,
                        Some(Message {
                            presentation_context_id: pc,
                            command,
                            data_set: Some(data_set),
                        }),
                    )
                } else {
                    (
                        State::Data {
                            pc,
                            command,
                            fragments,
                            len,
                        },
                        None,
                    )
                }
            }
        };
        self.state = next;
        Ok(done)
    }

    fn check_size(&self, len: usize) -> Result<(), AssemblyError> {
        if len as u64 > self.max_message_bytes {
            return Err(AssemblyError::TooLarge(self.max_message_bytes));
        }
        Ok(())
    }

    fn command_fragment(
        &self,
        pc: u8,
        bytes: Vec<u8>,
        is_last: bool,
    ) -> Result<(State, Option<Message>), AssemblyError> {
        if !is_last {
            return Ok((State::Command { pc, bytes }, None));
        }
        let command = Command::decode(&bytes)?;
        if command.has_data_set() {
            Ok((
                State::Data {
                    pc,
                    command,
                    fragments: Vec::new(),
                    len: 0,
                },
                None,
            ))
        } else {
            Ok((
                State::Idle,
                Some(Message {
                    presentation_context_id: pc,
                    command,
                    data_set: None,
                }),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dimse::command::{field, tag};

    fn pdv(pc: u8, value_type: PDataValueType, is_last: bool, data: &[u8]) -> PDataValue {
        PDataValue {
            presentation_context_id: pc,
            value_type,
            is_last,
            data: data.to_vec(),
        }
    }

    fn store_command() -> Vec<u8> {
        let mut c = Command::new(field::C_STORE_RQ);
        c.set_us(tag::MESSAGE_ID, 1)
            .set_us(tag::COMMAND_DATA_SET_TYPE, 0)
            .set_text(tag::AFFECTED_SOP_INSTANCE_UID, "1.2.3");
        c.encode()
    }

    #[test]
    fn fragments_are_joined() {
        let mut a = Assembler::new(1 << 20);
        let cmd = store_command();
        let (c1, c2) = cmd.split_at(5);
        let ok = |_| true;
        assert!(
            a.push(pdv(3, PDataValueType::Command, false, c1), ok)
                .unwrap()
                .is_none()
        );
        assert!(
            a.push(pdv(3, PDataValueType::Command, true, c2), ok)
                .unwrap()
                .is_none()
        );
        assert!(!a.is_idle());
        assert!(
            a.push(pdv(3, PDataValueType::Data, false, b"abc"), ok)
                .unwrap()
                .is_none()
        );
        let m = a
            .push(pdv(3, PDataValueType::Data, true, b"def"), ok)
            .unwrap()
            .unwrap();
        assert_eq!(m.data_set.as_deref(), Some(&b"abcdef"[..]));
        assert_eq!(m.command.message_id(), Some(1));
        assert!(a.is_idle());
    }

    #[test]
    fn a_data_set_gets_its_prefix_in_place_or_by_copy() {
        let ok = |_| true;
        let receive = |parts: &[&[u8]]| {
            let mut a = Assembler::new(1 << 20);
            a.push(pdv(3, PDataValueType::Command, true, &store_command()), ok)
                .unwrap();
            let mut done = None;
            for (i, part) in parts.iter().enumerate() {
                done = a
                    .push(pdv(3, PDataValueType::Data, i + 1 == parts.len(), part), ok)
                    .unwrap();
            }
            done.unwrap().data_set.unwrap()
        };
        // Several fragments: joined with room in front, the prefix written there.
        let joined = receive(&[b"abc", b"def", b"g"]);
        assert_eq!(&*joined, b"abcdefg");
        let start = joined.as_ptr();
        let part10 = joined.with_prefix(b"META");
        assert_eq!(&part10[..], b"METAabcdefg");
        assert_eq!(part10[4..].as_ptr(), start, "the data set was not copied");
        // One fragment, or a prefix larger than the room: copied.
        assert_eq!(&receive(&[b"xyz"]).with_prefix(b"M")[..], b"Mxyz");
        let big = vec![7u8; HEADROOM + 1];
        let part10 = receive(&[b"ab", b"cd"]).with_prefix(&big);
        assert_eq!(&part10[..HEADROOM + 1], &big[..]);
        assert_eq!(&part10[HEADROOM + 1..], b"abcd");
    }

    #[test]
    fn protocol_violations_are_errors() {
        let ok = |_| true;
        let mut a = Assembler::new(1 << 20);
        assert!(
            a.push(pdv(1, PDataValueType::Data, true, b"x"), ok)
                .is_err()
        );
        let mut a = Assembler::new(1 << 20);
        a.push(pdv(1, PDataValueType::Command, true, &store_command()), ok)
            .unwrap();
        assert!(matches!(
            a.push(pdv(3, PDataValueType::Data, true, b"x"), ok),
            Err(AssemblyError::ContextSwitch { .. })
        ));
        let mut a = Assembler::new(1 << 20);
        assert!(matches!(
            a.push(pdv(5, PDataValueType::Command, true, b""), |pc| pc == 1),
            Err(AssemblyError::UnknownContext(5))
        ));
        let mut a = Assembler::new(4);
        a.push(pdv(1, PDataValueType::Command, true, &store_command()), ok)
            .unwrap_err();
    }
}
