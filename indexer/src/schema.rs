//! The study index schema: one document per study, keyed by its
//! StudyInstanceUID, and the conversion of a catalog record into it.

use pacs_archive::catalog::StudyRecord;
use tantivy::TantivyDocument;
use tantivy::schema::{FAST, Field, INDEXED, STORED, STRING, Schema, TEXT};

use crate::StudyDoc;
use crate::fold::{fold, name_tokens, name_values, normalize_date, normalize_time, sort_key};

/// Bump whenever the schema or what is indexed into it changes: an index
/// with another version is wiped on open and rebuilt by the next catch-up.
pub const SCHEMA_VERSION: u32 = 2;

/// The fields of the study index.
#[derive(Debug, Clone)]
pub struct Fields {
    /// Raw StudyInstanceUID: the document key (indexed, fast for ordering).
    pub study_uid: Field,
    /// The [`StudyDoc`] as JSON, stored only.
    pub doc: Field,
    /// Folded whole patient name (and each component group).
    pub patient_name: Field,
    /// Folded patient name components, for fuzzy matching.
    pub patient_name_parts: Field,
    pub patient_id: Field,
    pub issuer: Field,
    pub birth_date: Field,
    pub sex: Field,
    pub study_date: Field,
    pub study_time: Field,
    pub accession_number: Field,
    pub study_id: Field,
    pub study_description: Field,
    pub referring_physician: Field,
    pub referring_physician_parts: Field,
    /// One value per distinct modality of the study's series.
    pub modality: Field,
    /// Free text of the study's reports (reserved; empty for now).
    pub report_text: Field,
    /// Newest-first order: see [`crate::fold::sort_key`].
    pub sort_key: Field,
}

pub fn build_schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let fields = Fields {
        study_uid: b.add_text_field("study_uid", STRING | STORED | FAST),
        doc: b.add_text_field("doc", STORED),
        patient_name: b.add_text_field("patient_name", STRING),
        patient_name_parts: b.add_text_field("patient_name_parts", STRING),
        patient_id: b.add_text_field("patient_id", STRING),
        issuer: b.add_text_field("issuer_of_patient_id", STRING),
        birth_date: b.add_text_field("patient_birth_date", STRING),
        sex: b.add_text_field("patient_sex", STRING),
        study_date: b.add_text_field("study_date", STRING),
        study_time: b.add_text_field("study_time", STRING),
        accession_number: b.add_text_field("accession_number", STRING),
        study_id: b.add_text_field("study_id", STRING),
        study_description: b.add_text_field("study_description", STRING),
        referring_physician: b.add_text_field("referring_physician_name", STRING),
        referring_physician_parts: b.add_text_field("referring_physician_parts", STRING),
        modality: b.add_text_field("modality", STRING),
        report_text: b.add_text_field("report_text", TEXT),
        sort_key: b.add_u64_field("sort_key", INDEXED | FAST),
    };
    (b.build(), fields)
}

/// Trim DICOM padding; empty becomes `None`.
fn clean(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(|v| v.trim_matches(|c: char| c == ' ' || c == '\0'))
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// The study as the index returns it.
pub fn study_doc(r: &StudyRecord) -> StudyDoc {
    StudyDoc {
        study_instance_uid: r.study_instance_uid.clone(),
        patient_name: clean(&r.patient_name),
        patient_id: clean(&r.patient_id),
        issuer_of_patient_id: clean(&r.issuer_of_patient_id),
        patient_birth_date: clean(&r.patient_birth_date),
        patient_sex: clean(&r.patient_sex),
        study_date: clean(&r.study_date),
        study_time: clean(&r.study_time),
        accession_number: clean(&r.accession_number),
        study_id: clean(&r.study_id),
        study_description: clean(&r.study_description),
        referring_physician_name: clean(&r.referring_physician_name),
        modalities: r.modalities.clone(),
        number_of_series: r.number_of_series,
        number_of_instances: r.number_of_instances,
    }
}

fn add_person_name(doc: &mut TantivyDocument, whole: Field, parts: Field, name: &str) {
    let folded = fold(name);
    for value in name_values(&folded) {
        doc.add_text(whole, value);
    }
    let mut seen: Vec<&str> = Vec::new();
    for token in name_tokens(&folded) {
        if !seen.contains(&token) {
            doc.add_text(parts, token);
            seen.push(token);
        }
    }
}

/// The tantivy document of a study.
pub fn to_document(f: &Fields, s: &StudyDoc) -> Result<TantivyDocument, serde_json::Error> {
    let mut doc = TantivyDocument::default();
    doc.add_text(f.study_uid, &s.study_instance_uid);
    doc.add_text(f.doc, serde_json::to_string(s)?);
    if let Some(name) = &s.patient_name {
        add_person_name(&mut doc, f.patient_name, f.patient_name_parts, name);
    }
    if let Some(name) = &s.referring_physician_name {
        add_person_name(
            &mut doc,
            f.referring_physician,
            f.referring_physician_parts,
            name,
        );
    }
    let raw = [
        (f.patient_id, &s.patient_id),
        (f.issuer, &s.issuer_of_patient_id),
        (f.sex, &s.patient_sex),
        (f.accession_number, &s.accession_number),
        (f.study_id, &s.study_id),
        (f.study_description, &s.study_description),
    ];
    for (field, value) in raw {
        if let Some(value) = value {
            doc.add_text(field, value);
        }
    }
    if let Some(d) = &s.patient_birth_date {
        doc.add_text(f.birth_date, normalize_date(d));
    }
    if let Some(d) = &s.study_date {
        doc.add_text(f.study_date, normalize_date(d));
    }
    if let Some(t) = &s.study_time {
        doc.add_text(f.study_time, normalize_time(t));
    }
    for m in &s.modalities {
        doc.add_text(f.modality, m);
    }
    doc.add_text(f.report_text, "");
    doc.add_u64(
        f.sort_key,
        sort_key(s.study_date.as_deref(), s.study_time.as_deref()),
    );
    Ok(doc)
}
