//! The domain model: UIDs, the attributes kept per patient, study, series
//! and instance, where an object came from, and the receipt of an ingest.
//!
//! This module owns no I/O; protocol layers map [`IngestReceipt`] and
//! [`RefusalReason`] to their own statuses in one place each.

use std::fmt;

/// Check that `value` is a well formed DICOM UID (PS3.5 9.1): at most 64
/// characters, components of digits separated by single dots.
///
/// Components with a leading zero are forbidden by the standard but are sent
/// by real equipment; they are accepted (and logged by the caller) rather than
/// refusing an otherwise readable image.
pub fn check_uid(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("empty");
    }
    if value.len() > 64 {
        return Err("longer than 64 characters");
    }
    for component in value.split('.') {
        if component.is_empty() {
            return Err("has an empty component");
        }
        if !component.bytes().all(|b| b.is_ascii_digit()) {
            return Err("contains characters other than digits and dots");
        }
    }
    Ok(())
}

/// Whether a UID breaks the no-leading-zero rule (accepted, but worth a log line).
pub fn uid_has_leading_zero(value: &str) -> bool {
    value.split('.').any(|c| c.len() > 1 && c.starts_with('0'))
}

/// The attributes of one instance that the catalog keeps in columns, taken
/// from its data set. Type 2 attributes that the object left empty stay
/// `None`: nothing is invented.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceAttributes {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub transfer_syntax_uid: String,
    pub specific_character_set: Option<String>,
    pub patient_id: Option<String>,
    pub issuer_of_patient_id: Option<String>,
    pub patient_name: Option<String>,
    pub patient_birth_date: Option<String>,
    pub patient_sex: Option<String>,
    pub study_date: Option<String>,
    pub study_time: Option<String>,
    pub accession_number: Option<String>,
    pub study_id: Option<String>,
    pub study_description: Option<String>,
    pub referring_physician_name: Option<String>,
    pub modality: Option<String>,
    pub series_number: Option<i64>,
    pub series_description: Option<String>,
    pub body_part_examined: Option<String>,
    pub series_date: Option<String>,
    pub instance_number: Option<i64>,
    pub content_date: Option<String>,
    pub rows: Option<i64>,
    pub columns: Option<i64>,
    pub number_of_frames: Option<i64>,
}

impl InstanceAttributes {
    /// The key that identifies this instance's patient in the catalog.
    ///
    /// Patients are told apart by Patient ID within its issuer. Real
    /// modalities sometimes send an empty Patient ID; such instances are not
    /// merged into one anonymous patient but keyed by name and birth date.
    pub fn patient_key(&self) -> String {
        patient_key(
            self.patient_id.as_deref(),
            self.issuer_of_patient_id.as_deref(),
            self.patient_name.as_deref(),
            self.patient_birth_date.as_deref(),
        )
    }
}

/// The catalog's key of a patient: Patient ID within its issuer or, without
/// an ID, name and birth date. Images and results of one patient share it.
pub fn patient_key(
    id: Option<&str>,
    issuer: Option<&str>,
    name: Option<&str>,
    birth_date: Option<&str>,
) -> String {
    match id {
        Some(id) => format!("id\u{1f}{}\u{1f}{}", issuer.unwrap_or(""), id),
        None => format!(
            "noid\u{1f}{}\u{1f}{}",
            name.unwrap_or(""),
            birth_date.unwrap_or("")
        ),
    }
}

/// Where an object came from, recorded with the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestSource {
    /// `pacs import` of a file.
    Import { path: String },
    /// A DIMSE C-STORE from a calling AE at an address.
    CStore { calling_ae: String, peer: String },
    /// A DICOMweb STOW-RS request.
    Stow { peer: String },
    /// Anything else (tests, tools).
    Other(String),
}

impl fmt::Display for IngestSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IngestSource::Import { path } => write!(f, "import:{path}"),
            IngestSource::CStore { calling_ae, peer } => write!(f, "dimse:{calling_ae}@{peer}"),
            IngestSource::Stow { peer } => write!(f, "stow:{peer}"),
            IngestSource::Other(s) => write!(f, "{s}"),
        }
    }
}

/// What the archive holds for one instance after a successful ingest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredInstance {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub transfer_syntax_uid: String,
    /// SHA-256 of the Part-10 bytes, lowercase hex; also the blob key.
    pub sha256: String,
    pub original_size: u64,
    pub stored_size: u64,
    /// Change-feed sequence number of this ingest, if it changed anything.
    pub change_seq: Option<i64>,
}

/// Why an object was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefusalReason {
    #[error("empty input")]
    Empty,
    #[error("not a DICOM Part-10 object: {0}")]
    NotDicom(String),
    #[error("the data set cannot be parsed: {0}")]
    Unparseable(String),
    #[error("required attribute {0} is missing or empty")]
    MissingAttribute(&'static str),
    #[error("attribute {attribute} is not a well formed UID ({problem}): {value:?}")]
    MalformedUid {
        attribute: &'static str,
        value: String,
        problem: &'static str,
    },
    #[error("the object belongs to study {found}, not to study {expected} of the request")]
    WrongStudy { expected: String, found: String },
    #[error("transfer syntax {0} is not known to the archive")]
    UnknownTransferSyntax(String),
    #[error(
        "SOP Instance UID {sop_instance_uid} is already stored with different content (stored SHA-256 {stored_sha256}, received {received_sha256}); replacement is disabled"
    )]
    Conflict {
        sop_instance_uid: String,
        stored_sha256: String,
        received_sha256: String,
    },
    #[error("object store unavailable: {0}")]
    StoreUnavailable(String),
    #[error("catalog unavailable: {0}")]
    CatalogUnavailable(String),
}

impl RefusalReason {
    /// True when the object itself is at fault (resending it will not help);
    /// false when the archive could not store it right now.
    pub fn is_permanent(&self) -> bool {
        !matches!(
            self,
            RefusalReason::StoreUnavailable(_) | RefusalReason::CatalogUnavailable(_)
        )
    }
}

/// A refused object, with whatever identity could be read from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: RefusalReason,
    pub sop_class_uid: Option<String>,
    pub sop_instance_uid: Option<String>,
}

/// The result of every ingest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestReceipt {
    /// New instance, durable in the object store and the catalog.
    Stored(StoredInstance),
    /// The identical object was already stored; nothing new was written.
    Duplicate(StoredInstance),
    /// A different object replaced the stored one (only when allowed by
    /// `ingest.allow_replace`).
    Replaced(StoredInstance),
    /// Nothing was stored.
    Refused(Refusal),
}

impl IngestReceipt {
    pub fn is_success(&self) -> bool {
        !matches!(self, IngestReceipt::Refused(_))
    }

    pub fn instance(&self) -> Option<&StoredInstance> {
        match self {
            IngestReceipt::Stored(i) | IngestReceipt::Duplicate(i) | IngestReceipt::Replaced(i) => {
                Some(i)
            }
            IngestReceipt::Refused(_) => None,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            IngestReceipt::Stored(_) => "stored",
            IngestReceipt::Duplicate(_) => "duplicate",
            IngestReceipt::Replaced(_) => "replaced",
            IngestReceipt::Refused(_) => "refused",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_validation() {
        assert!(check_uid("1.2.840.10008.5.1.4.1.1.2").is_ok());
        assert!(check_uid("0").is_ok());
        assert_eq!(check_uid(""), Err("empty"));
        assert!(check_uid("1.2..3").is_err());
        assert!(check_uid("1.2.3.").is_err());
        assert!(check_uid("1.2.abc").is_err());
        assert!(check_uid(&"1.".repeat(40)).is_err());
        assert!(uid_has_leading_zero("1.02.3"));
        assert!(!uid_has_leading_zero("1.0.3"));
    }

    #[test]
    fn empty_patient_id_is_keyed_by_name_not_merged() {
        let a = InstanceAttributes {
            patient_name: Some("DOE^JOHN".into()),
            ..Default::default()
        };
        let b = InstanceAttributes {
            patient_name: Some("ROE^JANE".into()),
            ..Default::default()
        };
        assert_ne!(a.patient_key(), b.patient_key());
        let c = InstanceAttributes {
            patient_id: Some("123".into()),
            patient_name: Some("DOE^JOHN".into()),
            ..Default::default()
        };
        assert!(c.patient_key().contains("123"));
    }
}
