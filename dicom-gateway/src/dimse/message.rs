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
    pub data_set: Option<Vec<u8>>,
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
        bytes: Vec<u8>,
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
            State::Command { bytes, .. } | State::Data { bytes, .. } => bytes.len(),
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
                    mut bytes,
                },
                PDataValueType::Data,
            ) => {
                if open != pc {
                    return Err(AssemblyError::ContextSwitch {
                        expected: open,
                        got: pc,
                    });
                }
                self.check_size(bytes.len() + pdv.data.len())?;
                if bytes.is_empty() {
                    bytes = pdv.data;
                } else {
                    bytes.extend_from_slice(&pdv.data);
                }
                if pdv.is_last {
                    (
                        State::Idle,
                        Some(Message {
                            presentation_context_id: pc,
                            command,
                            data_set: Some(bytes),
                        }),
                    )
                } else {
                    (State::Data { pc, command, bytes }, None)
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
                    bytes: Vec::new(),
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
