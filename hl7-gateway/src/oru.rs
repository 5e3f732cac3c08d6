//! ORU^R01 (unsolicited observation result) as a typed result model:
//! patients (PID), order groups (OBR, with ORC as fallback for the order
//! numbers), observations (OBX) and notes (NTE).
//!
//! This module decides what a *readable* ORU^R01 must contain; errors in
//! the content become [`Hl7Error`] variants that `ack` answers with AE (or
//! AR for the header checks: version, message type). It does not store
//! anything.
//!
//! Structure read (v2.3-v2.5.1 ORU_R01, lenient about optional segments):
//! `MSH [SFT] { [PID [PD1] [NTE] [NK1] [PV1 [PV2]]] { [ORC] OBR [NTE]
//! [TQ1] [CTD] { [OBX] [NTE] } [FT1] [CTI] [SPM [OBX]] } } [DSC]`.
//! Segments not named here are skipped. Every order group must belong to a
//! patient (a PID before it) with at least one identifier.

use crate::Hl7Error;
use crate::parse::{Field, Message, MessageHeader, Segment};

/// A coded element (CE/CWE): identifier, text, coding system, and the
/// alternate triplet.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CodedElement {
    pub code: String,
    pub text: String,
    /// e.g. `LN` (LOINC), `SCT`, `L` (local), `ISO+` (units).
    pub coding_system: String,
    pub alternate_code: String,
    pub alternate_text: String,
    pub alternate_coding_system: String,
}

impl CodedElement {
    fn from_field(f: Field<'_>) -> CodedElement {
        let c = |n| f.component(n).value().trim().to_string();
        CodedElement {
            code: c(1),
            text: c(2),
            coding_system: c(3),
            alternate_code: c(4),
            alternate_text: c(5),
            alternate_coding_system: c(6),
        }
    }

    fn from_repetition(r: crate::parse::Repetition<'_>) -> CodedElement {
        let c = |n| r.component(n).value().trim().to_string();
        CodedElement {
            code: c(1),
            text: c(2),
            coding_system: c(3),
            alternate_code: c(4),
            alternate_text: c(5),
            alternate_coding_system: c(6),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.code.is_empty() && self.text.is_empty()
    }
}

/// One patient identifier (PID-3, CX).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientIdentifier {
    /// CX.1
    pub id: String,
    /// CX.4 (HD), namespace id, or universal id when there is no namespace.
    pub assigning_authority: String,
    /// CX.5, e.g. `MR` (medical record number), `PI`, `NNxxx`.
    pub identifier_type: String,
}

/// A person name (XPN). Later repetitions of PID-5 are other
/// representations (ideographic, phonetic) or aliases.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PersonName {
    pub family: String,
    pub given: String,
    /// Second and further given names or initials.
    pub middle: String,
    pub suffix: String,
    pub prefix: String,
}

impl PersonName {
    /// The name in DICOM PN order (`family^given^middle^prefix^suffix`),
    /// trailing empty components dropped.
    pub fn to_dicom_pn(&self) -> String {
        let parts = [
            &self.family,
            &self.given,
            &self.middle,
            &self.prefix,
            &self.suffix,
        ];
        let keep = parts
            .iter()
            .rposition(|p| !p.is_empty())
            .map_or(0, |i| i + 1);
        parts[..keep]
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("^")
    }
}

/// The patient of a PATIENT_RESULT group.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Patient {
    /// PID-3, every repetition with a non-empty id.
    pub identifiers: Vec<PatientIdentifier>,
    /// PID-5, every repetition.
    pub names: Vec<PersonName>,
    /// PID-7, as written (`YYYY[MM[DD...]]`).
    pub birth_date: Option<String>,
    /// PID-8 (table 0001: F, M, O, U, A, N).
    pub sex: Option<String>,
    /// NTE segments after PID.
    pub notes: Vec<String>,
}

impl Patient {
    /// The first name (the legal or usual name by convention).
    pub fn name(&self) -> Option<&PersonName> {
        self.names.first()
    }
}

/// OBX-11 (table 0085).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObservationStatus {
    /// F: final.
    Final,
    /// C: a correction of a result sent earlier as final; the earlier value
    /// is history, not to be overwritten.
    Corrected,
    /// P: preliminary.
    Preliminary,
    /// R: not yet verified.
    NotVerified,
    /// I: in process, no result yet.
    Pending,
    /// D: delete the earlier result.
    Deleted,
    /// W: the earlier result was wrong (for the wrong patient).
    Wrong,
    /// X: cannot be obtained.
    CannotBeObtained,
    /// Any other code of table 0085 (S, U, N, O, A), as sent.
    Other(String),
}

impl ObservationStatus {
    fn from_code(code: &str) -> ObservationStatus {
        match code {
            "F" => ObservationStatus::Final,
            "C" => ObservationStatus::Corrected,
            "P" => ObservationStatus::Preliminary,
            "R" => ObservationStatus::NotVerified,
            "I" => ObservationStatus::Pending,
            "D" => ObservationStatus::Deleted,
            "W" => ObservationStatus::Wrong,
            "X" => ObservationStatus::CannotBeObtained,
            other => ObservationStatus::Other(other.to_string()),
        }
    }

    /// The table 0085 code.
    pub fn code(&self) -> &str {
        match self {
            ObservationStatus::Final => "F",
            ObservationStatus::Corrected => "C",
            ObservationStatus::Preliminary => "P",
            ObservationStatus::NotVerified => "R",
            ObservationStatus::Pending => "I",
            ObservationStatus::Deleted => "D",
            ObservationStatus::Wrong => "W",
            ObservationStatus::CannotBeObtained => "X",
            ObservationStatus::Other(c) => c,
        }
    }
}

/// A number as sent (the text keeps its precision: `4.50` is not `4.5`).
#[derive(Debug, Clone, PartialEq)]
pub struct Decimal {
    pub text: String,
    pub value: f64,
}

impl Decimal {
    /// HL7 NM: optional sign, digits, optional decimal point.
    pub fn parse(text: &str) -> Option<Decimal> {
        let t = text.trim();
        let body = t.strip_prefix(['+', '-']).unwrap_or(t);
        let digits = body.chars().filter(|c| c.is_ascii_digit()).count();
        let points = body.chars().filter(|&c| c == '.').count();
        if digits == 0 || points > 1 || digits + points != body.len() {
            return None;
        }
        Some(Decimal {
            text: t.to_string(),
            value: t.parse().ok()?,
        })
    }
}

/// A structured numeric (SN): `<^5`, `>=^10`, `^100^-^200` (range),
/// `^1^:^128` (ratio), `^2^+` (categorical).
#[derive(Debug, Clone, PartialEq)]
pub struct StructuredNumeric {
    /// `>`, `<`, `>=`, `<=`, `=`, `<>`, or empty.
    pub comparator: String,
    pub number: Option<Decimal>,
    /// `-`, `+`, `/`, `.`, `:` or empty.
    pub separator: String,
    pub second_number: Option<Decimal>,
}

/// One value of OBX-5 (one repetition).
#[derive(Debug, Clone, PartialEq)]
pub enum ObservationValue {
    /// NM
    Numeric(Decimal),
    /// SN
    StructuredNumeric(StructuredNumeric),
    /// CE, CWE (also CNE)
    Coded(CodedElement),
    /// ST, TX, FT: decoded text; `\.br\` became a line break.
    Text(String),
    /// Any other value type (DT, TM, TS, DTM, ED, RP, ...): the decoded
    /// repetition as written.
    Other(String),
}

impl ObservationValue {
    /// The value as display text.
    pub fn display(&self) -> String {
        match self {
            ObservationValue::Numeric(d) => d.text.clone(),
            ObservationValue::StructuredNumeric(sn) => {
                let n =
                    |d: &Option<Decimal>| d.as_ref().map_or("", |d| d.text.as_str()).to_string();
                format!(
                    "{}{}{}{}",
                    sn.comparator,
                    n(&sn.number),
                    sn.separator,
                    n(&sn.second_number)
                )
            }
            ObservationValue::Coded(c) => {
                if c.text.is_empty() {
                    c.code.clone()
                } else {
                    c.text.clone()
                }
            }
            ObservationValue::Text(t) | ObservationValue::Other(t) => t.clone(),
        }
    }
}

/// One OBX with its notes.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// OBX-1
    pub set_id: String,
    /// OBX-2: NM, ST, TX, FT, CE, CWE, SN, ...
    pub value_type: String,
    /// OBX-3: code, name and coding system (e.g. LOINC `LN`).
    pub identifier: CodedElement,
    /// OBX-4: groups OBX of one observation (e.g. the lines of a report).
    pub sub_id: String,
    /// OBX-5, every repetition.
    pub values: Vec<ObservationValue>,
    /// OBX-6 (code, e.g. UCUM `10*9/L`; text when there is no code).
    pub units: Option<CodedElement>,
    /// OBX-7 as written, e.g. `4.0-10.0`, `<5`.
    pub reference_range: Option<String>,
    /// OBX-8, every repetition (table 0078: L, H, LL, HH, N, A, ...).
    pub abnormal_flags: Vec<String>,
    /// OBX-11
    pub status: Option<ObservationStatus>,
    /// OBX-14, as written.
    pub observation_time: Option<String>,
    /// NTE segments after this OBX.
    pub notes: Vec<String>,
}

impl Observation {
    /// Whether this OBX carries report text (TX or FT).
    pub fn is_text(&self) -> bool {
        matches!(self.value_type.as_str(), "TX" | "FT")
    }
}

/// One OBR with its observations and notes (ORDER_OBSERVATION group).
#[derive(Debug, Clone, PartialEq)]
pub struct OrderGroup {
    /// OBR-1
    pub set_id: String,
    /// OBR-2 (or ORC-2 when OBR-2 is empty): the ordering system's number.
    pub placer_order_number: Option<String>,
    /// OBR-3 (or ORC-3): the filler's (laboratory's, RIS's) number.
    pub filler_order_number: Option<String>,
    /// OBR-18 (placer field 1, where radiology puts the accession number)
    /// if present, else the filler order number.
    pub accession_number: Option<String>,
    /// OBR-4
    pub universal_service: CodedElement,
    /// OBR-7, as written.
    pub observation_time: Option<String>,
    /// OBR-25 (table 0123: F, C, P, I, R, S, X, ...).
    pub result_status: Option<String>,
    /// NTE segments after the OBR, before its first OBX.
    pub notes: Vec<String>,
    pub observations: Vec<Observation>,
}

/// The text of a radiology (or pathology) report carried as TX/FT OBX
/// values: each OBX-5 repetition is a line, OBX after OBX in order. `None`
/// when the group has no text observations. Observations of other types
/// (e.g. a coded impression) are not part of the text.
pub fn report_text(order: &OrderGroup) -> Option<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut any = false;
    for obx in order.observations.iter().filter(|o| o.is_text()) {
        any = true;
        for v in &obx.values {
            if let ObservationValue::Text(t) = v {
                lines.extend(t.lines().map(|l| l.trim_end().to_string()));
            }
        }
        if obx.values.is_empty() {
            // An empty TX OBX is a blank line of the report.
            lines.push(String::new());
        }
    }
    if !any {
        return None;
    }
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    Some(lines.join("\n"))
}

/// One PATIENT_RESULT group: a patient and its orders.
#[derive(Debug, Clone, PartialEq)]
pub struct PatientResult {
    pub patient: Patient,
    pub orders: Vec<OrderGroup>,
}

/// A validated ORU^R01.
#[derive(Debug, Clone, PartialEq)]
pub struct OruMessage {
    pub header: MessageHeader,
    /// One or more PATIENT_RESULT groups (most senders send one).
    pub results: Vec<PatientResult>,
}

impl OruMessage {
    /// Parse `bytes` and read them as an ORU^R01.
    pub fn parse(bytes: &[u8]) -> Result<OruMessage, Hl7Error> {
        let message = crate::parse::parse(bytes)?;
        OruMessage::from_message(&message)
    }

    /// The first patient.
    pub fn patient(&self) -> &Patient {
        &self.results[0].patient
    }

    /// Every order group of every patient.
    pub fn orders(&self) -> impl Iterator<Item = &OrderGroup> {
        self.results.iter().flat_map(|r| r.orders.iter())
    }

    /// Check the header (version, type) and read the body.
    pub fn from_message(message: &Message) -> Result<OruMessage, Hl7Error> {
        let header = message.header();
        check_header(header)?;
        let mut results: Vec<PatientResult> = Vec::new();
        let mut counts = SegmentCounts::default();
        // Where the next NTE goes.
        #[derive(Clone, Copy)]
        enum NoteTarget {
            None,
            Patient,
            Order,
            Observation,
        }
        let mut target = NoteTarget::None;
        let mut pending_orc: Option<(Option<String>, Option<String>)> = None;
        for seg in message.segments().skip(1) {
            let name = seg.name();
            let seq = counts.bump(name);
            match name {
                "PID" => {
                    results.push(PatientResult {
                        patient: read_pid(&seg, seq)?,
                        orders: Vec::new(),
                    });
                    target = NoteTarget::Patient;
                    pending_orc = None;
                }
                "ORC" => {
                    pending_orc = Some((
                        non_empty(seg.field(2).value()),
                        non_empty(seg.field(3).value()),
                    ));
                    target = NoteTarget::None;
                }
                "OBR" => {
                    let Some(result) = results.last_mut() else {
                        return Err(Hl7Error::SegmentSequence {
                            segment: "PID",
                            sequence: None,
                            detail: "is missing: every order group needs a patient",
                        });
                    };
                    let orc = pending_orc.take();
                    result.orders.push(read_obr(&seg, seq, orc)?);
                    target = NoteTarget::Order;
                }
                "OBX" => {
                    let order = results.last_mut().and_then(|r| r.orders.last_mut());
                    let Some(order) = order else {
                        return Err(Hl7Error::SegmentSequence {
                            segment: "OBX",
                            sequence: Some(seq),
                            detail: "comes before any OBR",
                        });
                    };
                    // OBX after SPM describe the specimen; they are kept
                    // with the order's observations.
                    order.observations.push(read_obx(&seg, seq)?);
                    target = NoteTarget::Observation;
                }
                "NTE" => {
                    let note = read_nte(&seg);
                    match target {
                        NoteTarget::Patient => {
                            if let Some(r) = results.last_mut() {
                                r.patient.notes.push(note);
                            }
                        }
                        NoteTarget::Order => {
                            if let Some(o) = results.last_mut().and_then(|r| r.orders.last_mut()) {
                                o.notes.push(note);
                            }
                        }
                        NoteTarget::Observation => {
                            if let Some(x) = results
                                .last_mut()
                                .and_then(|r| r.orders.last_mut())
                                .and_then(|o| o.observations.last_mut())
                            {
                                x.notes.push(note);
                            }
                        }
                        // A note on the message as a whole (after SFT) or
                        // after segments we skip: nowhere to keep it.
                        NoteTarget::None => {}
                    }
                }
                // NTE after PD1 still belong to the patient (PID [PD1]
                // [NTE]); after anything else this reader does not model
                // (NK1, PV1, TQ1, CTD, SPM, Z segments...) they are
                // dropped.
                "PD1" => {}
                _ => target = NoteTarget::None,
            }
        }
        if results.is_empty() {
            return Err(Hl7Error::SegmentSequence {
                segment: "PID",
                sequence: None,
                detail: "is missing: an ORU^R01 must name its patient",
            });
        }
        if results.iter().all(|r| r.orders.is_empty()) {
            return Err(Hl7Error::SegmentSequence {
                segment: "OBR",
                sequence: None,
                detail: "is missing: an ORU^R01 must carry at least one order group",
            });
        }
        Ok(OruMessage {
            header: header.clone(),
            results,
        })
    }
}

/// The header checks that decide AR: version, message type, trigger.
pub fn check_header(header: &MessageHeader) -> Result<(), Hl7Error> {
    if !header.version_supported() {
        return Err(Hl7Error::UnsupportedVersion(header.version.clone()));
    }
    if header.message_type.code != "ORU" {
        return Err(Hl7Error::UnsupportedMessageType(
            header.message_type.to_string(),
        ));
    }
    if header.message_type.trigger != "R01" {
        return Err(Hl7Error::UnsupportedTriggerEvent(
            header.message_type.to_string(),
        ));
    }
    Ok(())
}

#[derive(Default)]
struct SegmentCounts(Vec<(String, usize)>);

impl SegmentCounts {
    /// Count one more `name` and return its 1-based occurrence number.
    fn bump(&mut self, name: &str) -> usize {
        if let Some(entry) = self.0.iter_mut().find(|(n, _)| n == name) {
            entry.1 += 1;
            return entry.1;
        }
        self.0.push((name.to_string(), 1));
        1
    }
}

fn non_empty(s: impl AsRef<str>) -> Option<String> {
    let t = s.as_ref().trim();
    (!t.is_empty() && t != "\"\"").then(|| t.to_string())
}

fn read_pid(seg: &Segment<'_>, seq: usize) -> Result<Patient, Hl7Error> {
    let identifiers: Vec<PatientIdentifier> = seg
        .field(3)
        .repetitions()
        .filter_map(|r| {
            let id = non_empty(r.component(1).value())?;
            let authority = r.component(4);
            let assigning_authority = non_empty(authority.subcomponent(1))
                .or_else(|| non_empty(authority.subcomponent(2)))
                .unwrap_or_default();
            Some(PatientIdentifier {
                id,
                assigning_authority,
                identifier_type: r.component(5).value().trim().to_string(),
            })
        })
        .collect();
    if identifiers.is_empty() {
        return Err(Hl7Error::MissingField {
            segment: "PID",
            sequence: seq,
            field: 3,
            name: "patient identifier list",
        });
    }
    let names = seg
        .field(5)
        .repetitions()
        .filter(|r| !r.is_empty())
        .map(|r| {
            let c = |n| r.component(n).value().trim().to_string();
            PersonName {
                family: c(1),
                given: c(2),
                middle: c(3),
                suffix: c(4),
                prefix: c(5),
            }
        })
        .collect();
    Ok(Patient {
        identifiers,
        names,
        birth_date: non_empty(seg.field(7).value()),
        sex: non_empty(seg.field(8).value()),
        notes: Vec::new(),
    })
}

fn read_obr(
    seg: &Segment<'_>,
    seq: usize,
    orc: Option<(Option<String>, Option<String>)>,
) -> Result<OrderGroup, Hl7Error> {
    let (orc_placer, orc_filler) = orc.unwrap_or((None, None));
    let placer = non_empty(seg.field(2).value()).or(orc_placer);
    let filler = non_empty(seg.field(3).value()).or(orc_filler);
    let universal_service = CodedElement::from_field(seg.field(4));
    if universal_service.is_empty() {
        return Err(Hl7Error::MissingField {
            segment: "OBR",
            sequence: seq,
            field: 4,
            name: "universal service identifier",
        });
    }
    Ok(OrderGroup {
        set_id: seg.field(1).value().trim().to_string(),
        accession_number: non_empty(seg.field(18).value()).or_else(|| filler.clone()),
        placer_order_number: placer,
        filler_order_number: filler,
        universal_service,
        observation_time: non_empty(seg.field(7).value()),
        result_status: non_empty(seg.field(25).value()),
        notes: Vec::new(),
        observations: Vec::new(),
    })
}

fn read_obx(seg: &Segment<'_>, seq: usize) -> Result<Observation, Hl7Error> {
    let identifier = CodedElement::from_field(seg.field(3));
    if identifier.is_empty() {
        return Err(Hl7Error::MissingField {
            segment: "OBX",
            sequence: seq,
            field: 3,
            name: "observation identifier",
        });
    }
    let value_type = seg.field(2).value().trim().to_string();
    let value_field = seg.field(5);
    if value_type.is_empty() && !value_field.is_empty() {
        return Err(Hl7Error::MissingField {
            segment: "OBX",
            sequence: seq,
            field: 2,
            name: "value type",
        });
    }
    let mut values = Vec::new();
    if !value_field.is_null() {
        for rep in value_field.repetitions() {
            let value = match value_type.as_str() {
                "NM" => {
                    let text = rep.component(1).value();
                    if text.trim().is_empty() {
                        continue;
                    }
                    ObservationValue::Numeric(Decimal::parse(&text).ok_or_else(|| {
                        Hl7Error::DataType {
                            segment: "OBX",
                            sequence: seq,
                            field: 5,
                            detail: format!("{text:?} is not a number (NM)"),
                        }
                    })?)
                }
                "SN" => {
                    let num = |n: usize| -> Result<Option<Decimal>, Hl7Error> {
                        let t = rep.component(n).value();
                        if t.trim().is_empty() {
                            return Ok(None);
                        }
                        Decimal::parse(&t)
                            .map(Some)
                            .ok_or_else(|| Hl7Error::DataType {
                                segment: "OBX",
                                sequence: seq,
                                field: 5,
                                detail: format!(
                                    "{t:?} is not a number in a structured numeric (SN)"
                                ),
                            })
                    };
                    let sn = StructuredNumeric {
                        comparator: rep.component(1).value().trim().to_string(),
                        number: num(2)?,
                        separator: rep.component(3).value().trim().to_string(),
                        second_number: num(4)?,
                    };
                    if sn.number.is_none() && sn.comparator.is_empty() {
                        continue;
                    }
                    ObservationValue::StructuredNumeric(sn)
                }
                "CE" | "CWE" | "CNE" => {
                    let c = CodedElement::from_repetition(rep);
                    if c.is_empty() {
                        continue;
                    }
                    ObservationValue::Coded(c)
                }
                // A text value is the whole repetition: senders rarely
                // escape `^` in free text.
                "ST" | "TX" | "FT" => ObservationValue::Text(rep.text().into_owned()),
                _ => {
                    if rep.is_empty() {
                        continue;
                    }
                    ObservationValue::Other(rep.text().into_owned())
                }
            };
            values.push(value);
        }
    }
    let units = CodedElement::from_field(seg.field(6));
    Ok(Observation {
        set_id: seg.field(1).value().trim().to_string(),
        value_type,
        identifier,
        sub_id: seg.field(4).value().trim().to_string(),
        values,
        units: (!units.is_empty()).then_some(units),
        reference_range: non_empty(seg.field(7).text()),
        abnormal_flags: seg
            .field(8)
            .repetitions()
            .filter_map(|r| non_empty(r.component(1).value()))
            .collect(),
        status: non_empty(seg.field(11).value()).map(|s| ObservationStatus::from_code(&s)),
        observation_time: non_empty(seg.field(14).value()),
        notes: Vec::new(),
    })
}

/// NTE-3, every repetition, one line each.
fn read_nte(seg: &Segment<'_>) -> String {
    seg.field(3)
        .repetitions()
        .map(|r| r.text().into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}
