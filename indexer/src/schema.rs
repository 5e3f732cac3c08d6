//! The index schema: one document per study (keyed by its
//! StudyInstanceUID) and one per report or lab panel (keyed by its report
//! id), told apart by `kind`; and the conversion of catalog records into
//! them.

use pacs_archive::catalog::{ReportRecord, StudyRecord};
use tantivy::TantivyDocument;
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing, TextOptions,
};
use tantivy::tokenizer::{
    AsciiFoldingFilter, Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer,
    TextAnalyzer,
};

use crate::StudyDoc;
use crate::fold::{fold, name_tokens, name_values, normalize_date, normalize_time, sort_key};

/// Bump whenever the schema or what is indexed into it changes: an index
/// with another version is wiped on open and rebuilt by the next catch-up.
pub const SCHEMA_VERSION: u32 = 4;

/// The tokenizer of free text (report text, test names): words split at
/// anything not alphanumeric, lowercased, accents folded to ASCII, and
/// reduced to their English stem (`nodules` and `nodule`, `impressions`
/// and `impression` are one word).
pub const WORDS: &str = "words";

pub fn words_analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(60))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .filter(Stemmer::new(Language::English))
        .build()
}

/// What a document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocKind {
    /// An imaging study.
    Study,
    /// A report with narrative text (radiology report, SR, PDF).
    Report,
    /// A lab panel: results without narrative text.
    Lab,
}

impl DocKind {
    pub const ALL: [DocKind; 3] = [DocKind::Study, DocKind::Report, DocKind::Lab];

    pub fn name(self) -> &'static str {
        match self {
            DocKind::Study => "study",
            DocKind::Report => "report",
            DocKind::Lab => "lab",
        }
    }

    pub fn parse(value: &str) -> Option<DocKind> {
        DocKind::ALL.into_iter().find(|k| k.name() == value)
    }

    /// The kind of a report's document.
    pub fn of_report(r: &ReportRecord) -> DocKind {
        if r.report_text
            .as_deref()
            .is_some_and(|t| !t.trim().is_empty())
        {
            DocKind::Report
        } else {
            DocKind::Lab
        }
    }
}

/// The fields of the study index.
#[derive(Debug, Clone)]
pub struct Fields {
    /// `study`, `report` or `lab` ([`DocKind`]).
    pub kind: Field,
    /// Raw StudyInstanceUID: the key of a study document (indexed, fast for
    /// ordering). Report documents do not have it.
    pub study_uid: Field,
    /// The key of a report document.
    pub report_id: Field,
    /// The study a report is linked to.
    pub linked_study: Field,
    /// Free text of any document (patient name, description or title,
    /// report text, test names and codes), tokenized as [`WORDS`]; stored
    /// for highlighted snippets.
    pub text: Field,
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
    /// Free text of the study's reports ([`WORDS`]).
    pub report_text: Field,
    /// Newest-first order: see [`crate::fold::sort_key`].
    pub sort_key: Field,
}

pub fn build_schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let words = TextFieldIndexing::default()
        .set_tokenizer(WORDS)
        .set_index_option(IndexRecordOption::WithFreqsAndPositions);
    let fields = Fields {
        kind: b.add_text_field("kind", STRING | STORED),
        study_uid: b.add_text_field("study_uid", STRING | STORED | FAST),
        report_id: b.add_u64_field("report_id", INDEXED),
        linked_study: b.add_text_field("linked_study", STRING),
        text: b.add_text_field(
            "text",
            TextOptions::default()
                .set_indexing_options(words.clone())
                .set_stored(),
        ),
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
        report_text: b.add_text_field(
            "report_text",
            TextOptions::default().set_indexing_options(words),
        ),
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

/// A person name as words (`Doe^John` -> `Doe John`).
fn name_words(name: &str) -> String {
    name.replace(['^', '='], " ")
}

/// The tantivy document of a study, with the text of its reports.
pub fn to_document(
    f: &Fields,
    s: &StudyDoc,
    report_text: Option<&str>,
) -> Result<TantivyDocument, serde_json::Error> {
    let mut doc = TantivyDocument::default();
    doc.add_text(f.kind, DocKind::Study.name());
    doc.add_text(f.study_uid, &s.study_instance_uid);
    let mut text = Vec::new();
    if let Some(name) = &s.patient_name {
        text.push(name_words(name));
    }
    text.extend(s.study_description.iter().cloned());
    text.extend(report_text.map(str::to_owned));
    doc.add_text(f.text, text.join("\n"));
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
    doc.add_text(f.report_text, report_text.unwrap_or_default());
    doc.add_u64(
        f.sort_key,
        sort_key(s.study_date.as_deref(), s.study_time.as_deref()),
    );
    Ok(doc)
}

/// The tantivy document of a report or lab panel. The stored record leaves
/// out the report text (held once, in the stored `text` field).
pub fn report_document(f: &Fields, r: &ReportRecord) -> Result<TantivyDocument, serde_json::Error> {
    let mut doc = TantivyDocument::default();
    doc.add_text(f.kind, DocKind::of_report(r).name());
    doc.add_u64(f.report_id, r.report_id.max(0) as u64);
    let stored = ReportRecord {
        report_text: None,
        ..r.clone()
    };
    doc.add_text(f.doc, serde_json::to_string(&stored)?);
    let mut text = Vec::new();
    if let Some(name) = &r.patient_name {
        text.push(name_words(name));
    }
    text.extend(r.title.iter().cloned());
    for test in &r.tests {
        let words: Vec<&str> = [&test.display, &test.code]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        if !words.is_empty() {
            text.push(words.join(" "));
        }
    }
    text.extend(r.report_text.iter().cloned());
    doc.add_text(f.text, text.join("\n"));
    if let Some(name) = &r.patient_name {
        add_person_name(&mut doc, f.patient_name, f.patient_name_parts, name);
    }
    if let Some(id) = &r.patient_id {
        doc.add_text(f.patient_id, id);
    }
    if let Some(issuer) = &r.issuer_of_patient_id {
        doc.add_text(f.issuer, issuer);
    }
    if let Some(accession) = &r.accession_number {
        doc.add_text(f.accession_number, accession);
    }
    if let Some(study) = &r.study_instance_uid {
        doc.add_text(f.linked_study, study);
    }
    for m in &r.modalities {
        doc.add_text(f.modality, m);
    }
    let (date, time) = match r.observed_at.as_deref() {
        Some(at) if at.len() >= 8 && at.is_char_boundary(8) => (Some(&at[..8]), Some(&at[8..])),
        other => (other, None),
    };
    if let Some(d) = date {
        doc.add_text(f.study_date, normalize_date(d));
    }
    doc.add_u64(f.sort_key, sort_key(date, time.filter(|t| !t.is_empty())));
    Ok(doc)
}
