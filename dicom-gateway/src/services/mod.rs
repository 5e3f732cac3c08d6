//! The DIMSE services: one module each, taking a complete message and
//! returning the response (C-FIND: the query and its response identifiers;
//! the association sends them).

pub mod echo;
pub mod find;
pub mod store;
