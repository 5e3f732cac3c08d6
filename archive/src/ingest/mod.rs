//! Reading what arrives: Part-10 bytes from a file or STOW-RS, or a data set
//! plus its transfer syntax as C-STORE hands it over. The pipeline that
//! stores it lives in [`crate::Archive::ingest_part10`].

mod document;
mod parse;
mod structure;

pub use structure::is_deflated;

pub use document::{MAX_TEXT_BYTES, ReportDocument, pdf_text, report_class_name, sr_text};
pub use parse::{ParsedObject, parse_part10, part10_prefix};

/// Implementation Class UID written into the file meta group of objects
/// that arrive without one (C-STORE data sets).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.61092488385493542307712493811342316071";
/// Implementation Version Name that goes with it.
pub const IMPLEMENTATION_VERSION_NAME: &str = "PACSLITE_010";
