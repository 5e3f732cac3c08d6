//! Lab results and reports that arrive as messages: one model for every
//! front door (HL7 v2 ORU over MLLP, FHIR R4). A front door parses its
//! message into a [`ResultMessage`] and hands it, with the raw bytes, to
//! [`crate::Archive::ingest_message`]; the answer is a [`MessageReceipt`]
//! that it turns into its own acknowledgement (HL7 AA/AE/AR, HTTP status).

use std::fmt;

/// How a message was encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageFormat {
    Hl7v2,
    Fhir,
}

impl MessageFormat {
    pub fn name(self) -> &'static str {
        match self {
            MessageFormat::Hl7v2 => "hl7v2",
            MessageFormat::Fhir => "fhir",
        }
    }
}

/// A code from a coding system (LOINC, a local code...).
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Coding {
    pub code: Option<String>,
    pub display: Option<String>,
    /// The coding system as the sender names it (HL7 `LN`, a FHIR URI...).
    pub system: Option<String>,
}

/// The patient a message is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResultPatient {
    /// The identifier the archive files results under (the first one).
    pub id: String,
    /// Its assigning authority (the DICOM Issuer of Patient ID).
    pub issuer: Option<String>,
    /// Name in DICOM PN form (`Family^Given^Middle^Prefix^Suffix`).
    pub name: Option<String>,
    /// `YYYYMMDD`.
    pub birth_date: Option<String>,
    /// `M`, `F`, `O`...
    pub sex: Option<String>,
}

/// One result (HL7 OBX, FHIR Observation).
#[derive(serde::Serialize, Debug, Clone, Default, PartialEq)]
pub struct ResultObservation {
    pub code: Coding,
    /// HL7 value type (NM, ST, TX, FT, CE, CWE, SN...).
    pub value_type: Option<String>,
    /// The value as text (repetitions joined with `\n`).
    pub value: Option<String>,
    /// The value as a number, when it is one.
    pub numeric_value: Option<f64>,
    pub units: Option<String>,
    pub reference_range: Option<String>,
    pub abnormal_flags: Vec<String>,
    /// HL7 OBX-11 (F final, C corrected, P preliminary...).
    pub status: Option<String>,
    /// `YYYYMMDDHHMMSS` (as precise as sent).
    pub observed_at: Option<String>,
    pub notes: Vec<String>,
}

impl ResultObservation {
    /// A correction of an earlier result (HL7 OBX-11 `C`).
    pub fn is_correction(&self) -> bool {
        self.status.as_deref() == Some("C")
    }
}

/// One report or order group (HL7 OBR and its OBX, FHIR DiagnosticReport).
#[derive(serde::Serialize, Debug, Clone, Default, PartialEq)]
pub struct ResultReport {
    pub placer_number: Option<String>,
    pub filler_number: Option<String>,
    pub accession_number: Option<String>,
    /// What was ordered (HL7 OBR-4).
    pub service: Coding,
    pub observed_at: Option<String>,
    /// HL7 OBR-25 / FHIR status.
    pub status: Option<String>,
    /// Narrative text (a radiology report), if any.
    pub report_text: Option<String>,
    /// The imaging study it reports on, when the message names it.
    pub study_instance_uid: Option<String>,
    pub observations: Vec<ResultObservation>,
}

/// One patient's reports in a message.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PatientResults {
    pub patient: ResultPatient,
    pub reports: Vec<ResultReport>,
}

/// A parsed message, ready to be recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultMessage {
    pub format: MessageFormat,
    /// E.g. `ORU^R01`.
    pub message_type: String,
    /// Who sent it; with `control_id`, what makes a re-sent message the
    /// same message.
    pub sender: String,
    pub control_id: String,
    /// One group per patient (an HL7 ORU may carry several).
    pub patients: Vec<PatientResults>,
}

/// Why a message was not recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageRefusal {
    /// The content is wrong: nothing to file it under, no results...
    #[error("{0}")]
    Invalid(String),
    /// The sender and control id were recorded before with other content:
    /// the sender reuses control ids.
    #[error("control id already recorded with other content: {0}")]
    Conflict(String),
    /// The archive cannot store it right now (resend later).
    #[error("archive unavailable: {0}")]
    Unavailable(String),
}

/// The outcome of recording a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageReceipt {
    /// New, durable: the raw message in the object store, its results in
    /// the catalog.
    Stored {
        message_id: i64,
        reports: Vec<i64>,
    },
    /// The same sender and control id were recorded before; nothing new.
    Duplicate {
        message_id: i64,
    },
    Refused(MessageRefusal),
}

impl MessageReceipt {
    pub fn is_success(&self) -> bool {
        !matches!(self, MessageReceipt::Refused(_))
    }
}

impl fmt::Display for MessageReceipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageReceipt::Stored { message_id, .. } => {
                write!(f, "stored as message {message_id}")
            }
            MessageReceipt::Duplicate { message_id } => {
                write!(f, "already stored as message {message_id}")
            }
            MessageReceipt::Refused(r) => write!(f, "refused: {r}"),
        }
    }
}

/// Object key of a raw message stored on its own: `messages/sha256/ab/<sha256>`.
/// A message is recorded under it while its bytes wait in the catalog's
/// outbox; the mover then points it at its pack (`messages/packs/...`).
/// Messages stored singly by earlier versions keep it (under one or two
/// folder levels: keys are recorded per message) and still read.
pub fn message_key(sha256_hex: &str) -> String {
    format!("messages/sha256/{}/{}", &sha256_hex[0..2], sha256_hex)
}

/// One stored result as the catalog gives it back.
#[derive(serde::Serialize, Debug, Clone, PartialEq)]
pub struct StoredObservation {
    pub id: i64,
    pub report_id: i64,
    pub observation: ResultObservation,
    /// The id of the result that corrected this one, if any.
    pub superseded_by: Option<i64>,
}

/// One stored report as the catalog gives it back (without its results).
#[derive(serde::Serialize, Debug, Clone, PartialEq)]
pub struct StoredReport {
    pub id: i64,
    /// The Patient ID it is filed under.
    pub patient_id: Option<String>,
    /// The DICOM instance that holds it (a Structured Report or an
    /// Encapsulated PDF), for a report that arrived as one.
    pub sop_instance_uid: Option<String>,
    pub report: ResultReport,
}
