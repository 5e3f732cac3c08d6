//! FHIR R4 JSON to and from the archive's one results model.
//!
//! Resources are handled as `serde_json::Value`: only the few elements the
//! model holds are read or written, and no full FHIR model is needed.
//!
//! - Patient: `identifier` (first with a value: value = Patient ID, system =
//!   issuer), `name` ↔ DICOM PN, `birthDate`, `gender` ↔ M/F/O.
//! - DiagnosticReport: `code` → service; `identifier` typed `PLAC`/`FILL`/
//!   `ACSN` (HL7 table 0203) → placer/filler/accession number, an untyped
//!   one → filler number, `basedOn.identifier` → placer number; a
//!   `urn:dicom:uid` identifier or `imagingStudy.identifier` → Study
//!   Instance UID; `effective[x]`/`issued` → observed_at; `status` ↔ HL7
//!   OBR-25 letter; `presentedForm` text (or `conclusion`) → report text.
//! - Observation: `code`; `valueQuantity` → NM (SN with a comparator),
//!   `valueString` → ST, `valueCodeableConcept` → CWE, `valueInteger` →
//!   NM, `valueBoolean` → ST, `valueDateTime` → DTM, `valueTime` → TM;
//!   `referenceRange` ↔ HL7 OBX-7 text (`low-high`, `<high`, `>low`);
//!   `interpretation` ↔ abnormal flags (HL7 0078 and the v3 interpretation
//!   codes share their letters); `status` ↔ OBX-11 letter (`corrected` and
//!   `amended` both become `C`, the correction that keeps history);
//!   `effective[x]` → observed_at; `note` → notes.
//! - Times: FHIR `dateTime` ↔ the archive's `YYYYMMDDHHMMSS[.f][+ZZZZ]`.
//!   A stored time without a zone (HL7 senders often give none) is written
//!   with `Z`, since FHIR requires a zone on a time.
//! - Coding systems are stored as the sender names them and written as
//!   FHIR URIs: `LN` ↔ `http://loinc.org`, `SCT`/`SNM` ↔
//!   `http://snomed.info/sct`, `UCUM` ↔ `http://unitsofmeasure.org`.

use std::collections::HashMap;

use base64::Engine;
use pacs_archive::catalog::fhir::{ObservationRecord, PatientRecord, ReportRecord};
use pacs_archive::results::{
    Coding, MessageFormat, PatientResults, ResultMessage, ResultObservation, ResultPatient,
    ResultReport,
};
use serde_json::{Map, Value, json};

use super::error::FhirError;

const V2_0203: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";
const V3_INTERPRETATION: &str =
    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";
const DICOM_UID: &str = "urn:dicom:uid";
const LOINC: &str = "http://loinc.org";
const SNOMED: &str = "http://snomed.info/sct";
const UCUM: &str = "http://unitsofmeasure.org";

// ---------------------------------------------------------------------------
// Coding systems, statuses, times
// ---------------------------------------------------------------------------

/// A stored coding-system name as a FHIR system URI.
pub fn system_to_fhir(system: &str) -> String {
    match system.to_ascii_uppercase().as_str() {
        "LN" | "LOINC" => LOINC.into(),
        "SCT" | "SNM" | "SNOMED" | "SNOMED-CT" | "SNOMEDCT" => SNOMED.into(),
        "UCUM" => UCUM.into(),
        _ => system.into(),
    }
}

/// Every name under which codes of a FHIR system may be stored.
pub fn system_names(system: &str) -> Vec<String> {
    let uri = system_to_fhir(system);
    let mut names = vec![uri.clone()];
    let aliases: &[&str] = match uri.as_str() {
        LOINC => &["LN", "LOINC"],
        SNOMED => &["SCT", "SNM", "SNOMED-CT"],
        UCUM => &["UCUM"],
        _ => &[],
    };
    names.extend(aliases.iter().map(|s| s.to_string()));
    if !names.iter().any(|n| n == system) {
        names.push(system.to_owned());
    }
    names
}

/// FHIR DiagnosticReport status of a stored HL7 OBR-25 letter.
pub fn report_status_to_fhir(status: Option<&str>) -> &'static str {
    match status.unwrap_or("") {
        "O" | "I" | "S" => "registered",
        "A" => "partial",
        "P" | "R" => "preliminary",
        "F" => "final",
        "C" => "corrected",
        "X" => "cancelled",
        "W" => "entered-in-error",
        _ => "unknown",
    }
}

/// The HL7 OBR-25 letter a FHIR DiagnosticReport status is stored as.
pub fn report_status_from_fhir(status: &str) -> Result<Option<&'static str>, String> {
    Ok(Some(match status {
        "registered" => "O",
        "partial" => "A",
        "preliminary" => "P",
        "final" | "appended" => "F",
        "corrected" | "amended" => "C",
        "cancelled" => "X",
        "entered-in-error" => "W",
        "unknown" => return Ok(None),
        other => {
            return Err(format!(
                "DiagnosticReport.status {other:?} is not an R4 status"
            ));
        }
    }))
}

/// FHIR Observation status of a stored HL7 OBX-11 letter.
pub fn observation_status_to_fhir(status: Option<&str>) -> &'static str {
    match status.unwrap_or("") {
        "I" | "O" => "registered",
        "P" | "R" | "S" => "preliminary",
        "F" | "U" => "final",
        "C" => "corrected",
        "X" | "N" | "D" => "cancelled",
        "W" => "entered-in-error",
        _ => "unknown",
    }
}

/// The HL7 OBX-11 letter a FHIR Observation status is stored as.
pub fn observation_status_from_fhir(status: &str) -> Result<Option<&'static str>, String> {
    Ok(Some(match status {
        "registered" => "I",
        "preliminary" => "P",
        "final" => "F",
        "corrected" | "amended" => "C",
        "cancelled" => "X",
        "entered-in-error" => "W",
        "unknown" => return Ok(None),
        other => return Err(format!("Observation.status {other:?} is not an R4 status")),
    }))
}

/// Every stored letter shown as FHIR status `fhir` by `to_fhir`.
pub fn stored_statuses(fhir: &str, to_fhir: fn(Option<&str>) -> &'static str) -> Vec<String> {
    [
        "O", "I", "S", "A", "P", "R", "F", "U", "C", "X", "N", "D", "W",
    ]
    .iter()
    .filter(|l| to_fhir(Some(l)) == fhir)
    .map(|l| l.to_string())
    .collect()
}

/// A FHIR date or dateTime, split up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FhirTime {
    /// 4 (year), 6 (month), 8 (day) or 14 (second) digits.
    pub digits: String,
    /// Fraction of a second, without the dot.
    pub fraction: Option<String>,
    /// `+HHMM` / `-HHMM` (`Z` as `+0000`).
    pub zone: Option<String>,
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Parse a FHIR `date`, `dateTime` or `instant` (also accepted without a
/// zone, and with minutes precision).
pub fn parse_fhir_time(s: &str) -> Option<FhirTime> {
    let s = s.trim();
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let parts: Vec<&str> = date.split('-').collect();
    let ok = match parts.as_slice() {
        [y] => y.len() == 4 && all_digits(y),
        [y, m] => y.len() == 4 && m.len() == 2 && all_digits(y) && all_digits(m),
        [y, m, d] => {
            y.len() == 4 && m.len() == 2 && d.len() == 2 && all_digits(&format!("{y}{m}{d}"))
        }
        _ => false,
    };
    if !ok {
        return None;
    }
    let mut digits: String = parts.concat();
    let (mut fraction, mut zone) = (None, None);
    if let Some(t) = time {
        if digits.len() != 8 {
            return None;
        }
        let (clock, z) = if let Some(c) = t.strip_suffix('Z') {
            (c, Some("+0000".to_owned()))
        } else if let Some(i) = t.rfind(['+', '-']) {
            let z = &t[i..];
            let zd = z[1..].replace(':', "");
            if zd.len() != 4 || !all_digits(&zd) {
                return None;
            }
            (&t[..i], Some(format!("{}{zd}", &z[..1])))
        } else {
            (t, None)
        };
        zone = z;
        let (hms, frac) = match clock.split_once('.') {
            Some((h, f)) if all_digits(f) => (h, Some(f.to_owned())),
            Some(_) => return None,
            None => (clock, None),
        };
        fraction = frac;
        let fields: Vec<&str> = hms.split(':').collect();
        let (h, m, sec) = match fields.as_slice() {
            [h, m] => (*h, *m, "00"),
            [h, m, s] => (*h, *m, *s),
            _ => return None,
        };
        if [h, m, sec].iter().any(|f| f.len() != 2 || !all_digits(f)) {
            return None;
        }
        digits.push_str(&format!("{h}{m}{sec}"));
    }
    Some(FhirTime {
        digits,
        fraction,
        zone,
    })
}

/// A FHIR date/dateTime as the archive stores times.
pub fn fhir_time_to_archive(s: &str) -> Option<String> {
    let t = parse_fhir_time(s)?;
    let mut out = t.digits;
    if let Some(f) = t.fraction {
        out.push('.');
        out.push_str(&f);
    }
    if let Some(z) = t.zone {
        out.push_str(&z);
    }
    Some(out)
}

/// A stored time (`YYYY[MM[DD[HH[MM[SS[.f]]]]]][+/-ZZZZ]`) as a FHIR
/// dateTime, or `None` when it is not one.
pub fn archive_time_to_fhir(s: &str) -> Option<String> {
    let s = s.trim();
    let (body, zone) = match s.find(['+', '-']) {
        Some(i) => (&s[..i], Some(&s[i..])),
        None => (s, None),
    };
    let (digits, fraction) = match body.split_once('.') {
        Some((d, f)) if all_digits(f) => (d, Some(f)),
        Some(_) => return None,
        None => (body, None),
    };
    if !all_digits(digits) {
        return None;
    }
    let d = digits;
    let date = match d.len() {
        4 => return Some(d.to_owned()),
        6 => return Some(format!("{}-{}", &d[..4], &d[4..6])),
        8 => return Some(format!("{}-{}-{}", &d[..4], &d[4..6], &d[6..8])),
        10 | 12 | 14 => format!("{}-{}-{}", &d[..4], &d[4..6], &d[6..8]),
        _ => return None,
    };
    let field = |from: usize| d.get(from..from + 2).unwrap_or("00");
    let mut out = format!("{date}T{}:{}:{}", field(8), field(10), field(12));
    if let (Some(f), 14) = (fraction, d.len()) {
        out.push('.');
        out.push_str(f);
    }
    match zone {
        Some(z) if z.len() == 5 && all_digits(&z[1..]) => {
            out.push_str(&format!("{}{}:{}", &z[..1], &z[1..3], &z[3..5]))
        }
        _ => out.push('Z'),
    }
    Some(out)
}

// ---------------------------------------------------------------------------
// Model → FHIR
// ---------------------------------------------------------------------------

fn insert(map: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(v) = value {
        map.insert(key.to_owned(), v);
    }
}

fn codeable(c: &Coding, fallback: &str) -> Value {
    let mut concept = Map::new();
    if let Some(code) = &c.code {
        let mut coding = Map::new();
        insert(
            &mut coding,
            "system",
            c.system.as_deref().map(|s| json!(system_to_fhir(s))),
        );
        coding.insert("code".into(), json!(code));
        insert(&mut coding, "display", c.display.as_ref().map(|d| json!(d)));
        concept.insert("coding".into(), json!([coding]));
    }
    concept.insert(
        "text".into(),
        json!(
            c.display
                .as_deref()
                .or(c.code.as_deref())
                .unwrap_or(fallback)
        ),
    );
    Value::Object(concept)
}

/// A patient's identifier as FHIR (system = issuer, when it is a URI-like
/// token; an issuer with spaces becomes the assigner's name).
fn identifier_of(patient_id: &str, issuer: Option<&str>) -> Value {
    let mut id = Map::new();
    match issuer {
        Some(i) if !i.contains(char::is_whitespace) => {
            id.insert("system".into(), json!(i));
        }
        Some(i) => {
            id.insert("assigner".into(), json!({ "display": i }));
        }
        None => {}
    }
    id.insert("value".into(), json!(patient_id));
    Value::Object(id)
}

fn subject(pk: i64, patient_id: Option<&str>, issuer: Option<&str>) -> Value {
    let mut s = Map::new();
    s.insert("reference".into(), json!(format!("Patient/{pk}")));
    if let Some(id) = patient_id {
        s.insert("identifier".into(), identifier_of(id, issuer));
    }
    Value::Object(s)
}

/// `Family^Given^Middle^Prefix^Suffix` as a FHIR HumanName.
fn human_name(pn: &str) -> Option<Value> {
    // The alphabetic group only (before any `=` ideographic group).
    let alphabetic = pn.split('=').next().unwrap_or("");
    let parts: Vec<&str> = alphabetic.split('^').map(str::trim).collect();
    let get = |i: usize| parts.get(i).copied().filter(|s| !s.is_empty());
    let mut name = Map::new();
    insert(&mut name, "family", get(0).map(|f| json!(f)));
    let given: Vec<&str> = [get(1), get(2)].into_iter().flatten().collect();
    if !given.is_empty() {
        name.insert("given".into(), json!(given));
    }
    insert(&mut name, "prefix", get(3).map(|p| json!([p])));
    insert(&mut name, "suffix", get(4).map(|p| json!([p])));
    (!name.is_empty()).then_some(Value::Object(name))
}

/// The FHIR Patient of a catalog patient row (`id` = row id).
pub fn patient_resource(p: &PatientRecord) -> Value {
    let mut r = Map::new();
    r.insert("resourceType".into(), json!("Patient"));
    r.insert("id".into(), json!(p.pk.to_string()));
    if let Some(id) = &p.patient_id {
        r.insert(
            "identifier".into(),
            json!([identifier_of(id, p.issuer.as_deref())]),
        );
    }
    if let Some(name) = p.name.as_deref().and_then(human_name) {
        r.insert("name".into(), json!([name]));
    }
    let gender = match p.sex.as_deref() {
        Some("M") => Some("male"),
        Some("F") => Some("female"),
        Some("O") => Some("other"),
        Some(_) => Some("unknown"),
        None => None,
    };
    insert(&mut r, "gender", gender.map(|g| json!(g)));
    insert(
        &mut r,
        "birthDate",
        p.birth_date
            .as_deref()
            .filter(|d| d.len() >= 8)
            .and_then(|d| archive_time_to_fhir(&d[..8]))
            .map(|d| json!(d)),
    );
    Value::Object(r)
}

fn typed_identifier(kind: &str, text: &str, value: &str) -> Value {
    json!({
        "type": { "coding": [{ "system": V2_0203, "code": kind }], "text": text },
        "value": value,
    })
}

/// The FHIR DiagnosticReport of a stored report (`id` = row id; results
/// as `Observation/{row id}`).
pub fn report_resource(rec: &ReportRecord) -> Value {
    let stored = &rec.report;
    let r = &stored.report;
    let mut out = Map::new();
    out.insert("resourceType".into(), json!("DiagnosticReport"));
    out.insert("id".into(), json!(stored.id.to_string()));
    let mut identifiers = Vec::new();
    if let Some(v) = &r.placer_number {
        identifiers.push(typed_identifier("PLAC", "Placer order number", v));
    }
    if let Some(v) = &r.filler_number {
        identifiers.push(typed_identifier("FILL", "Filler order number", v));
    }
    if let Some(v) = &r.accession_number {
        identifiers.push(typed_identifier("ACSN", "Accession number", v));
    }
    if !identifiers.is_empty() {
        out.insert("identifier".into(), json!(identifiers));
    }
    out.insert(
        "status".into(),
        json!(report_status_to_fhir(r.status.as_deref())),
    );
    out.insert("code".into(), codeable(&r.service, "Report"));
    out.insert(
        "subject".into(),
        subject(
            rec.patient_pk,
            stored.patient_id.as_deref(),
            rec.issuer.as_deref(),
        ),
    );
    insert(
        &mut out,
        "effectiveDateTime",
        r.observed_at
            .as_deref()
            .and_then(archive_time_to_fhir)
            .map(|t| json!(t)),
    );
    if !rec.result_ids.is_empty() {
        let results: Vec<Value> = rec
            .result_ids
            .iter()
            .map(|id| json!({ "reference": format!("Observation/{id}") }))
            .collect();
        out.insert("result".into(), json!(results));
    }
    if let Some(uid) = &r.study_instance_uid {
        out.insert(
            "imagingStudy".into(),
            json!([{ "identifier": { "system": DICOM_UID, "value": format!("urn:oid:{uid}") } }]),
        );
    }
    if let Some(text) = &r.report_text {
        out.insert("conclusion".into(), json!(text));
        out.insert(
            "presentedForm".into(),
            json!([{
                "contentType": "text/plain; charset=utf-8",
                "data": base64::engine::general_purpose::STANDARD.encode(text.as_bytes()),
            }]),
        );
    }
    Value::Object(out)
}

fn number(text: &str) -> Option<f64> {
    let t = text.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit() || b"+-.".contains(&b)) {
        return None;
    }
    t.parse::<f64>().ok().filter(|f| f.is_finite())
}

fn quantity(value: f64, units: Option<&str>) -> Value {
    let mut q = Map::new();
    q.insert("value".into(), json!(value));
    insert(&mut q, "unit", units.map(|u| json!(u)));
    Value::Object(q)
}

/// An HL7 OBX-7 reference range as a FHIR referenceRange.
fn reference_range(text: &str, units: Option<&str>) -> Value {
    let mut range = Map::new();
    let t = text.trim();
    if let Some(high) = t.strip_prefix('<').and_then(number) {
        range.insert("high".into(), quantity(high, units));
    } else if let Some(low) = t.strip_prefix('>').and_then(number) {
        range.insert("low".into(), quantity(low, units));
    } else if let Some((low, high)) = t
        .char_indices()
        .skip(1)
        .find(|(_, c)| *c == '-')
        .map(|(i, _)| (&t[..i], &t[i + 1..]))
        && let (Some(low), Some(high)) = (number(low), number(high))
    {
        range.insert("low".into(), quantity(low, units));
        range.insert("high".into(), quantity(high, units));
    }
    range.insert("text".into(), json!(text));
    Value::Object(range)
}

/// The value[x] of a stored result.
fn value_of(o: &ResultObservation) -> Option<(&'static str, Value)> {
    let text = o.value.as_deref()?;
    let units = o.units.as_deref();
    let kind = o.value_type.as_deref().unwrap_or("");
    match kind {
        "NM" | "SN" => {
            if let Some(n) = o.numeric_value.or_else(|| number(text)) {
                return Some(("valueQuantity", quantity(n, units)));
            }
            for comparator in ["<=", ">=", "<", ">"] {
                if let Some(n) = text.trim().strip_prefix(comparator).and_then(number) {
                    let mut q = quantity(n, units);
                    q["comparator"] = json!(comparator);
                    return Some(("valueQuantity", q));
                }
            }
            Some(("valueString", json!(text)))
        }
        "CE" | "CWE" | "CNE" | "CF" => Some(("valueCodeableConcept", json!({ "text": text }))),
        "DT" | "DTM" | "TS" => match archive_time_to_fhir(text) {
            Some(t) => Some(("valueDateTime", json!(t))),
            None => Some(("valueString", json!(text))),
        },
        _ => Some(("valueString", json!(text))),
    }
}

/// The FHIR Observation of a stored result (`id` = row id). A result
/// superseded by a correction keeps its stored status.
pub fn observation_resource(rec: &ObservationRecord) -> Value {
    let o = &rec.observation.observation;
    let mut out = Map::new();
    out.insert("resourceType".into(), json!("Observation"));
    out.insert("id".into(), json!(rec.observation.id.to_string()));
    out.insert(
        "status".into(),
        json!(observation_status_to_fhir(o.status.as_deref())),
    );
    out.insert("code".into(), codeable(&o.code, "Result"));
    out.insert(
        "subject".into(),
        subject(
            rec.patient_pk,
            rec.patient_id.as_deref(),
            rec.issuer.as_deref(),
        ),
    );
    insert(
        &mut out,
        "effectiveDateTime",
        o.observed_at
            .as_deref()
            .and_then(archive_time_to_fhir)
            .map(|t| json!(t)),
    );
    if let Some((key, value)) = value_of(o) {
        out.insert(key.into(), value);
    }
    if !o.abnormal_flags.is_empty() {
        let concepts: Vec<Value> = o
            .abnormal_flags
            .iter()
            .filter(|f| !f.trim().is_empty())
            .map(|f| json!({ "coding": [{ "system": V3_INTERPRETATION, "code": f }], "text": f }))
            .collect();
        if !concepts.is_empty() {
            out.insert("interpretation".into(), json!(concepts));
        }
    }
    if !o.notes.is_empty() {
        let notes: Vec<Value> = o.notes.iter().map(|n| json!({ "text": n })).collect();
        out.insert("note".into(), json!(notes));
    }
    if let Some(range) = &o.reference_range {
        out.insert(
            "referenceRange".into(),
            json!([reference_range(range, o.units.as_deref())]),
        );
    }
    Value::Object(out)
}

// ---------------------------------------------------------------------------
// FHIR → model
// ---------------------------------------------------------------------------

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn array<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v.get(key).and_then(Value::as_array).into_iter().flatten()
}

fn coding_of(concept: Option<&Value>) -> Coding {
    let Some(concept) = concept else {
        return Coding::default();
    };
    let coding = array(concept, "coding").find(|c| text(c, "code").is_some());
    match coding {
        Some(c) => Coding {
            code: text(c, "code"),
            display: text(c, "display").or_else(|| text(concept, "text")),
            system: text(c, "system"),
        },
        None => Coding {
            code: None,
            display: text(concept, "text"),
            system: None,
        },
    }
}

fn time_of(resource: &Value, what: &str) -> Result<Option<String>, FhirError> {
    let raw = text(resource, "effectiveDateTime")
        .or_else(|| text(resource, "effectiveInstant"))
        .or_else(|| {
            resource
                .get("effectivePeriod")
                .and_then(|p| text(p, "start"))
        })
        .or_else(|| text(resource, "issued"));
    raw.map(|t| {
        fhir_time_to_archive(&t)
            .ok_or_else(|| FhirError::Invalid(format!("{what}: {t:?} is not a FHIR dateTime")))
    })
    .transpose()
}

/// The number of a JSON value as the text it was sent as.
fn json_number(v: Option<&Value>) -> Option<(String, f64)> {
    let n = v?.as_number()?;
    Some((n.to_string(), n.as_f64()?))
}

fn observation_from(o: &Value, what: &str) -> Result<ResultObservation, FhirError> {
    let invalid = |why: String| FhirError::Invalid(format!("{what}: {why}"));
    let mut out = ResultObservation {
        code: coding_of(o.get("code")),
        status: match o.get("status").and_then(Value::as_str) {
            Some(s) => observation_status_from_fhir(s)
                .map_err(invalid)?
                .map(str::to_owned),
            None => None,
        },
        observed_at: time_of(o, what)?,
        ..ResultObservation::default()
    };
    if out.code.code.is_none() && out.code.display.is_none() {
        return Err(invalid("an Observation needs a code".into()));
    }
    if let Some(q) = o.get("valueQuantity") {
        let (text, value) = json_number(q.get("value"))
            .ok_or_else(|| invalid("valueQuantity has no numeric value".into()))?;
        out.units = text_of_units(q);
        match q.get("comparator").and_then(Value::as_str) {
            Some(c) => {
                out.value_type = Some("SN".into());
                out.value = Some(format!("{c}{text}"));
            }
            None => {
                out.value_type = Some("NM".into());
                out.value = Some(text);
                out.numeric_value = Some(value);
            }
        }
    } else if let Some((text, value)) = json_number(o.get("valueInteger")) {
        out.value_type = Some("NM".into());
        out.value = Some(text);
        out.numeric_value = Some(value);
    } else if let Some(s) = text(o, "valueString") {
        out.value_type = Some(if s.contains('\n') { "TX" } else { "ST" }.into());
        out.value = Some(s);
    } else if let Some(c) = o.get("valueCodeableConcept") {
        let coding = coding_of(Some(c));
        out.value_type = Some("CWE".into());
        out.value = coding.display.or(coding.code);
    } else if let Some(b) = o.get("valueBoolean").and_then(Value::as_bool) {
        out.value_type = Some("ST".into());
        out.value = Some(b.to_string());
    } else if let Some(t) = text(o, "valueDateTime") {
        out.value_type = Some("DTM".into());
        out.value = Some(
            fhir_time_to_archive(&t).ok_or_else(|| invalid(format!("{t:?} is not a dateTime")))?,
        );
    } else if let Some(t) = text(o, "valueTime") {
        out.value_type = Some("TM".into());
        out.value = Some(t.replace(':', ""));
    } else if let Some(key) = o
        .as_object()
        .and_then(|m| m.keys().find(|k| k.starts_with("value")))
    {
        return Err(FhirError::Unprocessable(format!(
            "{what}: {key} is not supported (Quantity, string, CodeableConcept, integer, \
             boolean, dateTime and time are)"
        )));
    }
    if let Some(range) = array(o, "referenceRange").next() {
        out.reference_range = text(range, "text").or_else(|| {
            let bound = |k: &str| json_number(range.get(k).and_then(|q| q.get("value")));
            match (bound("low"), bound("high")) {
                (Some((l, _)), Some((h, _))) => Some(format!("{l}-{h}")),
                (Some((l, _)), None) => Some(format!(">{l}")),
                (None, Some((h, _))) => Some(format!("<{h}")),
                (None, None) => None,
            }
        });
    }
    out.abnormal_flags = array(o, "interpretation")
        .filter_map(|c| {
            array(c, "coding")
                .find_map(|x| text(x, "code"))
                .or_else(|| text(c, "text"))
        })
        .collect();
    out.notes = array(o, "note").filter_map(|n| text(n, "text")).collect();
    Ok(out)
}

fn text_of_units(q: &Value) -> Option<String> {
    text(q, "code").or_else(|| text(q, "unit"))
}

fn patient_from(p: &Value, what: &str) -> Result<ResultPatient, FhirError> {
    let identifier = array(p, "identifier")
        .find(|i| text(i, "value").is_some())
        .ok_or_else(|| {
            FhirError::Unprocessable(format!(
                "{what}: a Patient needs an identifier with a value (the Patient ID)"
            ))
        })?;
    let name = array(p, "name").next().map(|n| {
        let given: Vec<String> = array(n, "given")
            .filter_map(|g| g.as_str().map(str::to_owned))
            .collect();
        let first = |k: &str| {
            array(n, k)
                .next()
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let pn = [
            text(n, "family").unwrap_or_default(),
            given.first().cloned().unwrap_or_default(),
            given.get(1..).map(|g| g.join(" ")).unwrap_or_default(),
            first("prefix"),
            first("suffix"),
        ]
        .join("^");
        pn.trim_end_matches('^').to_owned()
    });
    Ok(ResultPatient {
        id: text(identifier, "value").unwrap_or_default(),
        issuer: text(identifier, "system")
            .or_else(|| identifier.get("assigner").and_then(|a| text(a, "display"))),
        name: name.filter(|n| !n.is_empty()),
        birth_date: text(p, "birthDate")
            .and_then(|d| fhir_time_to_archive(&d))
            .filter(|d| d.len() == 8),
        sex: match p.get("gender").and_then(Value::as_str) {
            Some("male") => Some("M".into()),
            Some("female") => Some("F".into()),
            Some("other") => Some("O".into()),
            _ => None,
        },
    })
}

fn report_from(
    r: &Value,
    what: &str,
    results: Vec<ResultObservation>,
) -> Result<ResultReport, FhirError> {
    let invalid = |why: String| FhirError::Invalid(format!("{what}: {why}"));
    let mut out = ResultReport {
        service: coding_of(r.get("code")),
        status: match r.get("status").and_then(Value::as_str) {
            Some(s) => report_status_from_fhir(s)
                .map_err(invalid)?
                .map(str::to_owned),
            None => None,
        },
        observed_at: time_of(r, what)?,
        observations: results,
        ..ResultReport::default()
    };
    for id in array(r, "identifier") {
        let Some(value) = text(id, "value") else {
            continue;
        };
        let kind = id
            .get("type")
            .map(|t| array(t, "coding").find_map(|c| text(c, "code")))
            .unwrap_or_default();
        if text(id, "system").as_deref() == Some(DICOM_UID) {
            out.study_instance_uid = Some(value.trim_start_matches("urn:oid:").to_owned());
            continue;
        }
        let slot = match kind.as_deref() {
            Some("PLAC") => &mut out.placer_number,
            Some("ACSN") => &mut out.accession_number,
            _ => &mut out.filler_number,
        };
        slot.get_or_insert(value);
    }
    if out.placer_number.is_none() {
        out.placer_number =
            array(r, "basedOn").find_map(|b| b.get("identifier").and_then(|i| text(i, "value")));
    }
    if out.study_instance_uid.is_none() {
        out.study_instance_uid = array(r, "imagingStudy").find_map(|s| {
            s.get("identifier")
                .filter(|i| text(i, "system").as_deref() == Some(DICOM_UID))
                .and_then(|i| text(i, "value"))
                .map(|v| v.trim_start_matches("urn:oid:").to_owned())
        });
    }
    let presented = array(r, "presentedForm").find_map(|a| {
        let ct = text(a, "contentType").unwrap_or_default();
        if !ct.starts_with("text/") {
            return None;
        }
        let data = base64::engine::general_purpose::STANDARD
            .decode(text(a, "data")?)
            .ok()?;
        String::from_utf8(data).ok()
    });
    out.report_text = presented.or_else(|| text(r, "conclusion"));
    if out.service.code.is_none() && out.service.display.is_none() {
        return Err(invalid("a DiagnosticReport needs a code".into()));
    }
    Ok(out)
}

/// What one entry of a posted Bundle (or the posted resource) became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryTarget {
    /// The patient of group `n` of the message.
    Patient(usize),
    /// Report `n` of the message (counting through every group).
    Report(usize),
    /// Result `m` of report `n`.
    Observation(usize, usize),
}

/// A posted Bundle or DiagnosticReport, mapped: the message to record and,
/// per entry, what it became.
#[derive(Debug, Clone)]
pub struct Posted {
    pub message: ResultMessage,
    pub entries: Vec<EntryTarget>,
}

/// The archive patients (row ids) that posted resources name as
/// `subject: {reference: "Patient/{id}"}`.
pub fn archive_patient_refs(resources: &[&Value]) -> Vec<i64> {
    let mut refs = Vec::new();
    for r in resources {
        if let Some(n) = r
            .get("subject")
            .and_then(|s| text(s, "reference"))
            .and_then(|s| s.strip_prefix("Patient/").and_then(|n| n.parse().ok()))
        {
            refs.push(n);
        }
    }
    refs
}

/// A posted resource with the keys references to it may use.
struct Entry<'a> {
    resource: &'a Value,
    kind: String,
    keys: Vec<String>,
}

fn entry<'a>(resource: &'a Value, full_url: Option<String>) -> Entry<'a> {
    let kind = text(resource, "resourceType").unwrap_or_default();
    let mut keys = Vec::new();
    if let Some(id) = text(resource, "id") {
        keys.push(format!("{kind}/{id}"));
    }
    if let Some(u) = full_url {
        keys.push(u);
    }
    Entry {
        resource,
        kind,
        keys,
    }
}

/// The resources of a posted transaction or batch Bundle.
pub fn bundle_entries(bundle: &Value) -> Result<Vec<(&Value, Option<String>)>, FhirError> {
    match bundle.get("type").and_then(Value::as_str) {
        Some("transaction" | "batch") => {}
        Some(other) => {
            return Err(FhirError::Unprocessable(format!(
                "a Bundle of type {other:?} cannot be posted here: send a transaction or batch"
            )));
        }
        None => return Err(FhirError::Invalid("Bundle.type is missing".into())),
    }
    let mut out = Vec::new();
    for (i, e) in array(bundle, "entry").enumerate() {
        let resource = e
            .get("resource")
            .filter(|r| r.is_object())
            .ok_or_else(|| FhirError::Invalid(format!("Bundle.entry[{i}] has no resource")))?;
        if let Some(method) = e.get("request").and_then(|r| text(r, "method"))
            && !matches!(method.as_str(), "POST" | "PUT")
        {
            return Err(FhirError::Unprocessable(format!(
                "Bundle.entry[{i}]: request method {method} is not supported (POST and PUT are)"
            )));
        }
        out.push((resource, text(e, "fullUrl")));
    }
    if out.is_empty() {
        return Err(FhirError::Unprocessable("the Bundle has no entries".into()));
    }
    Ok(out)
}

/// Map posted resources (a Bundle's entries, or one DiagnosticReport and
/// its contained resources) to one message. `archive_patients` holds the
/// archive's patients that reports reference as `Patient/{id}`.
pub fn message_from(
    posted: &[(&Value, Option<String>)],
    archive_patients: &HashMap<i64, ResultPatient>,
    sender: String,
    control_id: String,
    message_type: &str,
) -> Result<Posted, FhirError> {
    let entries: Vec<Entry> = posted
        .iter()
        .map(|(r, url)| entry(r, url.clone()))
        .collect();
    for (i, e) in entries.iter().enumerate() {
        if !matches!(
            e.kind.as_str(),
            "Patient" | "DiagnosticReport" | "Observation"
        ) {
            return Err(FhirError::Unprocessable(format!(
                "entry {i}: resource type {:?} is not accepted (Patient, DiagnosticReport and \
                 Observation are)",
                e.kind
            )));
        }
    }
    let find = |reference: &str, contained: &[Entry<'_>]| -> Option<(bool, usize)> {
        if let Some(local) = reference.strip_prefix('#') {
            return contained
                .iter()
                .position(|c| text(c.resource, "id").as_deref() == Some(local))
                .map(|i| (true, i));
        }
        entries
            .iter()
            .position(|e| {
                e.keys
                    .iter()
                    .any(|k| k == reference || k.ends_with(&format!("/{reference}")))
            })
            .map(|i| (false, i))
    };
    let mut targets: Vec<Option<EntryTarget>> = vec![None; entries.len()];
    // (patient, reports) in the order first seen.
    let mut groups: Vec<PatientResults> = Vec::new();
    let mut report_count = 0usize;
    let mut report_group: Vec<usize> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if e.kind != "DiagnosticReport" {
            continue;
        }
        let what = format!("DiagnosticReport (entry {i})");
        let contained: Vec<Entry> = array(e.resource, "contained")
            .map(|c| entry(c, None))
            .collect();
        // The patient.
        let subject = e.resource.get("subject");
        let reference = subject.and_then(|s| text(s, "reference"));
        let patient = if let Some(reference) = &reference {
            match find(reference, &contained) {
                Some((true, c)) if contained[c].kind == "Patient" => {
                    (patient_from(contained[c].resource, &what)?, None)
                }
                Some((false, p)) if entries[p].kind == "Patient" => {
                    (patient_from(entries[p].resource, &what)?, Some(p))
                }
                Some(_) => {
                    return Err(FhirError::Unprocessable(format!(
                        "{what}: subject {reference} is not a Patient"
                    )));
                }
                None => {
                    let known = reference
                        .strip_prefix("Patient/")
                        .and_then(|n| n.parse::<i64>().ok())
                        .and_then(|n| archive_patients.get(&n));
                    match known {
                        Some(p) => (p.clone(), None),
                        None => {
                            return Err(FhirError::Unprocessable(format!(
                                "{what}: subject {reference} refers to nothing in the request \
                                 nor in the archive"
                            )));
                        }
                    }
                }
            }
        } else if let Some(id) = subject.and_then(|s| s.get("identifier")) {
            let value = text(id, "value").ok_or_else(|| {
                FhirError::Unprocessable(format!("{what}: subject.identifier has no value"))
            })?;
            (
                ResultPatient {
                    id: value,
                    issuer: text(id, "system"),
                    ..ResultPatient::default()
                },
                None,
            )
        } else {
            return Err(FhirError::Unprocessable(format!(
                "{what}: no patient: give subject as a reference to a Patient (in the request \
                 or Patient/{{id}} of the archive) or as an identifier"
            )));
        };
        // The results.
        let mut results = Vec::new();
        for (k, res) in array(e.resource, "result").enumerate() {
            let reference = text(res, "reference").ok_or_else(|| {
                FhirError::Unprocessable(format!("{what}: result[{k}] has no reference"))
            })?;
            let observation = match find(&reference, &contained) {
                Some((true, c)) if contained[c].kind == "Observation" => observation_from(
                    contained[c].resource,
                    &format!("{what}, contained {reference}"),
                )?,
                Some((false, o)) if entries[o].kind == "Observation" => {
                    if targets[o].is_some() {
                        return Err(FhirError::Unprocessable(format!(
                            "{what}: {reference} is already a result of another report"
                        )));
                    }
                    targets[o] = Some(EntryTarget::Observation(report_count, results.len()));
                    observation_from(entries[o].resource, &format!("Observation (entry {o})"))?
                }
                Some(_) => {
                    return Err(FhirError::Unprocessable(format!(
                        "{what}: result {reference} is not an Observation"
                    )));
                }
                None => {
                    return Err(FhirError::Unprocessable(format!(
                        "{what}: result {reference} refers to nothing in the request"
                    )));
                }
            };
            results.push(observation);
        }
        let report = report_from(e.resource, &what, results)?;
        let (patient, patient_entry) = patient;
        if patient.id.trim().is_empty() {
            return Err(FhirError::Unprocessable(format!(
                "{what}: the patient has no identifier value"
            )));
        }
        let group = match groups
            .iter()
            .position(|g| g.patient.id == patient.id && g.patient.issuer == patient.issuer)
        {
            Some(g) => g,
            None => {
                groups.push(PatientResults {
                    patient,
                    reports: Vec::new(),
                });
                groups.len() - 1
            }
        };
        if let Some(p) = patient_entry {
            targets[p] = Some(EntryTarget::Patient(group));
        }
        groups[group].reports.push(report);
        targets[i] = Some(EntryTarget::Report(report_count));
        report_group.push(group);
        report_count += 1;
    }
    if report_count == 0 {
        return Err(FhirError::Unprocessable(
            "nothing to record: the request holds no DiagnosticReport".into(),
        ));
    }
    // Report numbers were given in arrival order; the message files them
    // group by group, so renumber.
    let mut renumber = vec![0usize; report_count];
    let mut n = 0;
    for g in 0..groups.len() {
        for (r, group) in report_group.iter().enumerate() {
            if *group == g {
                renumber[r] = n;
                n += 1;
            }
        }
    }
    for t in targets.iter_mut().flatten() {
        match t {
            EntryTarget::Report(r) | EntryTarget::Observation(r, _) => *r = renumber[*r],
            EntryTarget::Patient(_) => {}
        }
    }
    let mut out = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        match t {
            Some(t) => out.push(*t),
            None => {
                return Err(FhirError::Unprocessable(format!(
                    "entry {i} ({}) is not referenced by any DiagnosticReport: results are \
                     recorded as parts of a report",
                    entries[i].kind
                )));
            }
        }
    }
    Ok(Posted {
        message: ResultMessage {
            format: MessageFormat::Fhir,
            message_type: message_type.to_owned(),
            sender,
            control_id,
            patients: groups,
        },
        entries: out,
    })
}
