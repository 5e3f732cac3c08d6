//! The DIMSE layer, written once: command sets (`command`), reassembly of
//! P-DATA fragments into messages (`message`), and the mapping of outcomes
//! to statuses (`status`). It knows nothing of sockets or of the archive's
//! internals beyond its receipts.

pub mod command;
pub mod message;
pub mod status;

pub use command::{Command, CommandError, field, tag};
pub use message::{Assembler, AssemblyError, Message};
pub use status::Status;
