//! The DIMSE services, one module each. C-ECHO and C-STORE take a complete
//! message and return the response; C-FIND, C-GET and C-MOVE answer with
//! many messages and drive the association (through the helpers of
//! `crate::association`) until their final response.
//!
//! | module | service |
//! |---|---|
//! | `echo` | C-ECHO SCP |
//! | `store` | C-STORE SCP |
//! | `find` | identifier -> query (C-FIND, and the selection of C-GET/C-MOVE) |
//! | `find_scp` | C-FIND SCP: matches, pending responses, C-CANCEL, cap |
//! | `retrieve` | what C-GET and C-MOVE share: instances, stored data sets, sub-operation C-STORE-RQ, counts, Failed SOP Instance UID List |
//! | `transcode` | lossless conversion of a stored instance to a transfer syntax the retrieve peer accepted |
//! | `get` | C-GET SCP: sub-operations on the same association |
//! | `move_` | C-MOVE SCP: sub-operations on an association to the destination |

pub mod echo;
pub mod find;
pub mod find_scp;
pub mod get;
pub mod move_;
pub mod retrieve;
pub mod store;
pub mod transcode;
