//! The report inside an instance: the readable text of a DICOM Structured
//! Report (its content tree) or of an Encapsulated PDF, extracted in the
//! parse stage (on rayon, before the catalog transaction).
//!
//! Which SOP classes are reports: the general-purpose SR classes (Basic
//! Text, Enhanced, Comprehensive, Comprehensive 3D, Extensible), whose
//! content is what a reader wrote, and Encapsulated PDF. Machine-made SRs
//! (radiation dose, CAD findings, Key Object Selection, procedure logs)
//! are not: they would swamp a study's report list with records nobody
//! reads as text. They are stored as instances like any other.
//!
//! Extraction never refuses an instance: a document whose text cannot be
//! read (a broken PDF, an empty content tree) gives no report, with a
//! warning in the log. Text is bounded to [`MAX_TEXT_BYTES`].

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

/// Report text longer than this is cut (at a character boundary).
pub const MAX_TEXT_BYTES: usize = 1 << 20;
/// Content trees nested deeper than this are not followed further.
const MAX_SR_DEPTH: usize = 32;
/// A PDF's page content larger than this (decompressed) is not read.
const MAX_PDF_PAGE_CONTENT: usize = 16 << 20;
/// Decompression bound for the whole PDF while loading (object streams),
/// and again for all the content streams read for its text (a form drawn
/// a thousand times is decompressed a thousand times).
const MAX_PDF_DECOMPRESSED: usize = 64 << 20;
/// Pages read at most.
const MAX_PDF_PAGES: usize = 500;

/// The SOP classes whose instances are reports, with the name recorded as
/// their message type.
const REPORT_CLASSES: &[(&str, &str)] = &[
    ("1.2.840.10008.5.1.4.1.1.88.11", "Basic Text SR"),
    ("1.2.840.10008.5.1.4.1.1.88.22", "Enhanced SR"),
    ("1.2.840.10008.5.1.4.1.1.88.33", "Comprehensive SR"),
    ("1.2.840.10008.5.1.4.1.1.88.34", "Comprehensive 3D SR"),
    ("1.2.840.10008.5.1.4.1.1.88.35", "Extensible SR"),
    (ENCAPSULATED_PDF, "Encapsulated PDF"),
];

const ENCAPSULATED_PDF: &str = "1.2.840.10008.5.1.4.1.1.104.1";

/// The name of a report SOP class, or `None` for a class that is not one.
pub fn report_class_name(sop_class_uid: &str) -> Option<&'static str> {
    REPORT_CLASSES
        .iter()
        .find(|(uid, _)| *uid == sop_class_uid)
        .map(|(_, name)| *name)
}

/// The report an instance holds, ready to be recorded with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportDocument {
    /// The SOP class name (`Basic Text SR`, `Encapsulated PDF`...).
    pub kind: &'static str,
    /// Document title: the SR root's concept name, or the PDF's
    /// DocumentTitle (falling back to its concept name).
    pub title: Option<String>,
    /// The document title as a code (e.g. LOINC 18748-4), when coded.
    pub title_code: Option<String>,
    pub title_code_system: Option<String>,
    /// ContentDate + ContentTime, `YYYYMMDDHHMMSS` (as precise as sent).
    pub observed_at: Option<String>,
    /// `F` when VerificationFlag is VERIFIED and CompletionFlag COMPLETE;
    /// `P` otherwise (also for a PDF, whose IOD has no such flags).
    pub status: String,
    /// The readable text.
    pub text: String,
}

fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let element = obj.element_opt(tag).ok().flatten()?;
    let value = element.to_str().ok()?;
    let trimmed = value.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

fn items(obj: &InMemDicomObject, tag: Tag) -> &[InMemDicomObject] {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.items())
        .unwrap_or(&[])
}

/// (meaning, code value, coding scheme) of the first item of a code sequence.
fn code(
    obj: &InMemDicomObject,
    tag: Tag,
) -> Option<(Option<String>, Option<String>, Option<String>)> {
    let item = items(obj, tag).first()?;
    let value = text(item, tags::CODE_VALUE)
        .or_else(|| text(item, tags::LONG_CODE_VALUE))
        .or_else(|| text(item, tags::URN_CODE_VALUE));
    Some((
        text(item, tags::CODE_MEANING),
        value,
        text(item, tags::CODING_SCHEME_DESIGNATOR),
    ))
}

fn code_meaning(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let (meaning, value, _) = code(obj, tag)?;
    meaning.or(value)
}

/// Extract the report of a parsed data set, if its SOP class is a report
/// class and its text can be read. Never fails: what cannot be read is
/// logged and gives `None`.
pub fn extract(obj: &InMemDicomObject, sop_class_uid: &str) -> Option<ReportDocument> {
    let kind = report_class_name(sop_class_uid)?;
    let sop_instance_uid = text(obj, tags::SOP_INSTANCE_UID).unwrap_or_default();
    let observed_at = match (text(obj, tags::CONTENT_DATE), text(obj, tags::CONTENT_TIME)) {
        (Some(date), Some(time)) => {
            let hhmmss: String = time.chars().take_while(|c| c.is_ascii_digit()).collect();
            Some(format!("{date}{hhmmss}"))
        }
        (Some(date), None) => Some(date),
        _ => None,
    };
    let coded_title = code(obj, tags::CONCEPT_NAME_CODE_SEQUENCE);
    let (title_meaning, title_code, title_code_system) = coded_title.unwrap_or_default();
    let (title, body) = if sop_class_uid == ENCAPSULATED_PDF {
        let title = text(obj, tags::DOCUMENT_TITLE).or(title_meaning);
        let mime = text(obj, tags::MIME_TYPE_OF_ENCAPSULATED_DOCUMENT);
        if mime.as_deref().is_some_and(|m| m != "application/pdf") {
            tracing::warn!(%sop_instance_uid, mime = ?mime, "Encapsulated PDF whose document is not application/pdf: no report text");
            return None;
        }
        let bytes = obj
            .element_opt(tags::ENCAPSULATED_DOCUMENT)
            .ok()
            .flatten()
            .and_then(|e| e.to_bytes().ok());
        let Some(bytes) = bytes else {
            tracing::warn!(%sop_instance_uid, "Encapsulated PDF without its document: no report");
            return None;
        };
        match pdf_text(&bytes) {
            Ok(body) => (title, body),
            Err(why) => {
                tracing::warn!(%sop_instance_uid, %why, "cannot read the text of the encapsulated PDF: instance stored without a report");
                return None;
            }
        }
    } else {
        (title_meaning, sr_text(obj))
    };
    let body = bounded(body.trim().to_owned());
    if body.is_empty() {
        tracing::warn!(%sop_instance_uid, kind, "report without readable text: no report recorded");
        return None;
    }
    let status = if text(obj, tags::VERIFICATION_FLAG).as_deref() == Some("VERIFIED")
        && text(obj, tags::COMPLETION_FLAG).as_deref() == Some("COMPLETE")
    {
        "F"
    } else {
        "P"
    };
    Some(ReportDocument {
        kind,
        title,
        title_code,
        title_code_system,
        observed_at,
        status: status.to_owned(),
        text: body,
    })
}

/// Cut `text` to at most [`MAX_TEXT_BYTES`], at a character boundary.
fn bounded(mut text: String) -> String {
    if text.len() > MAX_TEXT_BYTES {
        let mut end = MAX_TEXT_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// The readable text of an SR content tree: the document title and its
/// completion and verification, then each content item on its line,
/// containers as headings with their content indented below and a blank
/// line between top-level sections. Empty when the tree has no content.
pub fn sr_text(root: &InMemDicomObject) -> String {
    let mut content = String::new();
    walk(root, 0, &mut content);
    if content.trim().is_empty() {
        // A title alone is no report.
        return String::new();
    }
    let mut out = String::new();
    if let Some(title) = code_meaning(root, tags::CONCEPT_NAME_CODE_SEQUENCE) {
        out.push_str(&title);
        out.push('\n');
    }
    let mut flags = Vec::new();
    if let Some(c) = text(root, tags::COMPLETION_FLAG) {
        flags.push(c);
    }
    if let Some(v) = text(root, tags::VERIFICATION_FLAG) {
        flags.push(v);
    }
    if let Some(verifier) = items(root, tags::VERIFYING_OBSERVER_SEQUENCE)
        .first()
        .and_then(|v| text(v, tags::VERIFYING_OBSERVER_NAME))
    {
        flags.push(format!("verified by {}", person_name(&verifier)));
    }
    if !flags.is_empty() {
        out.push_str(&format!("({})\n", flags.join(", ")));
    }
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(&content);
    out
}

/// `Family^Given^Middle^Prefix^Suffix` as `Prefix Given Middle Family Suffix`.
fn person_name(pn: &str) -> String {
    let group = pn.split('=').next().unwrap_or("");
    let parts: Vec<&str> = group.split('^').map(str::trim).collect();
    let get = |i: usize| parts.get(i).copied().unwrap_or("");
    [get(3), get(1), get(2), get(0), get(4)]
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

fn indent(out: &mut String, depth: usize) {
    for _ in 0..depth {
        out.push_str("  ");
    }
}

/// A `Name: value` line (a multi-line value indented below its name).
fn line(out: &mut String, depth: usize, name: Option<&str>, value: &str) {
    // DICOM text separates lines with CR LF (PS3.5 6.1.3); some writers
    // use a bare CR.
    let value = value.replace("\r\n", "\n").replace('\r', "\n");
    let value = value.as_str();
    indent(out, depth);
    let multi_line = value.contains('\n');
    match name {
        Some(name) if multi_line => {
            out.push_str(name);
            out.push_str(":\n");
            for l in value.lines() {
                indent(out, depth + 1);
                out.push_str(l.trim_end());
                out.push('\n');
            }
            return;
        }
        Some(name) => {
            out.push_str(name);
            out.push_str(": ");
        }
        None => {}
    }
    out.push_str(value);
    out.push('\n');
}

fn walk(node: &InMemDicomObject, depth: usize, out: &mut String) {
    if depth >= MAX_SR_DEPTH || out.len() > MAX_TEXT_BYTES {
        return;
    }
    for item in items(node, tags::CONTENT_SEQUENCE) {
        let name = code_meaning(item, tags::CONCEPT_NAME_CODE_SEQUENCE);
        let name = name.as_deref();
        let value_type = text(item, tags::VALUE_TYPE).unwrap_or_default();
        match value_type.as_str() {
            "CONTAINER" => {
                if depth == 0 && !out.is_empty() && !out.ends_with("\n\n") {
                    out.push('\n');
                }
                if let Some(name) = name {
                    indent(out, depth);
                    out.push_str(name);
                    out.push('\n');
                }
                walk(item, depth + 1, out);
                continue;
            }
            "TEXT" => {
                if let Some(v) = text(item, tags::TEXT_VALUE) {
                    line(out, depth, name, &v);
                }
            }
            "CODE" => {
                // The language of the content is metadata, not report text.
                let is_language = code(item, tags::CONCEPT_NAME_CODE_SEQUENCE)
                    .is_some_and(|(_, v, _)| v.as_deref() == Some("121049"));
                if let Some(v) = code_meaning(item, tags::CONCEPT_CODE_SEQUENCE)
                    && !is_language
                {
                    line(out, depth, name, &v);
                }
            }
            "NUM" => {
                if let Some(v) = numeric(item) {
                    line(out, depth, name, &v);
                }
            }
            "DATE" => value_line(item, tags::DATE, depth, name, out),
            "TIME" => value_line(item, tags::TIME, depth, name, out),
            "DATETIME" => value_line(item, tags::DATE_TIME, depth, name, out),
            "UIDREF" => value_line(item, tags::UID, depth, name, out),
            "PNAME" => {
                if let Some(v) = text(item, tags::PERSON_NAME) {
                    line(out, depth, name, &person_name(&v));
                }
            }
            // Image, waveform, composite and coordinate references point at
            // other objects: they have no text of their own.
            _ => {}
        }
        // Content below a non-container item (e.g. the properties of a
        // finding) is shown indented under it.
        walk(item, depth + 1, out);
    }
}

fn value_line(
    item: &InMemDicomObject,
    tag: Tag,
    depth: usize,
    name: Option<&str>,
    out: &mut String,
) {
    if let Some(v) = text(item, tag) {
        line(out, depth, name, &v);
    }
}

/// A NUM item's value with its units: the UCUM code (`mm`, `cm2`) where the
/// units are UCUM, else their meaning; `1` (no units) is left out.
fn numeric(item: &InMemDicomObject) -> Option<String> {
    let Some(measured) = items(item, tags::MEASURED_VALUE_SEQUENCE).first() else {
        // No value: the reason why, if given.
        return code_meaning(item, tags::NUMERIC_VALUE_QUALIFIER_CODE_SEQUENCE);
    };
    let value = text(measured, tags::NUMERIC_VALUE)?;
    let units = code(measured, tags::MEASUREMENT_UNITS_CODE_SEQUENCE).and_then(
        |(meaning, value, scheme)| match (scheme.as_deref(), value) {
            (Some("UCUM"), Some(v)) if v == "1" => None,
            (Some("UCUM"), Some(v)) => Some(v),
            (_, v) => meaning.or(v),
        },
    );
    Some(match units {
        Some(u) => format!("{value} {u}"),
        None => value,
    })
}

/// The text of a PDF, page by page. Text shown in the page content streams
/// and in the form XObjects they draw is read with each font's encoding
/// (standard encodings, Differences, ToUnicode maps); a move to another
/// line starts a new line. Text drawn as images (scans) is not read.
pub fn pdf_text(pdf: &[u8]) -> Result<String, String> {
    // lopdf returns errors for what it recognises as broken; a panic on
    // input it did not foresee must not take the ingest down with it.
    std::panic::catch_unwind(|| pdf_text_unguarded(pdf))
        .unwrap_or_else(|_| Err("the PDF reader failed on this document".into()))
}

/// Form XObjects nested deeper than this are not followed.
const MAX_FORM_DEPTH: usize = 4;

fn pdf_text_unguarded(pdf: &[u8]) -> Result<String, String> {
    use lopdf::{Document, LoadOptions};

    let options = LoadOptions {
        max_decompressed_size: Some(MAX_PDF_DECOMPRESSED),
        ..LoadOptions::default()
    };
    let doc = Document::load_mem_with_options(pdf, options).map_err(|e| e.to_string())?;
    let pages = doc.get_pages();
    if pages.is_empty() {
        return Err("the PDF has no pages".into());
    }
    let mut out = String::new();
    let mut failures = Vec::new();
    let mut budget = MAX_PDF_DECOMPRESSED;
    for (&number, &page_id) in pages.iter().take(MAX_PDF_PAGES) {
        if out.len() > MAX_TEXT_BYTES {
            break;
        }
        let resources = match doc.get_page_resources(page_id) {
            Ok((own, inherited)) => {
                let mut all: Vec<&lopdf::Dictionary> = own.into_iter().collect();
                all.extend(
                    inherited
                        .iter()
                        .filter_map(|id| doc.get_dictionary(*id).ok()),
                );
                all
            }
            Err(e) => {
                failures.push(format!("page {number}: {e}"));
                continue;
            }
        };
        let content = match doc.get_page_content_with_limit(page_id, MAX_PDF_PAGE_CONTENT) {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("page {number}: {e}"));
                continue;
            }
        };
        let mut page = String::new();
        if let Err(e) = show_content(&doc, &content, &resources, 0, &mut budget, &mut page) {
            failures.push(format!("page {number}: {e}"));
        }
        let page = page.trim();
        if !page.is_empty() {
            if !out.is_empty() {
                out.push_str("\n\n");
            }
            out.push_str(page);
        }
    }
    if out.trim().is_empty() {
        return Err(if failures.is_empty() {
            "the PDF shows no text (a scan?)".into()
        } else {
            failures.join("; ")
        });
    }
    if !failures.is_empty() {
        tracing::warn!(failures = %failures.join("; "), "some PDF pages could not be read");
    }
    Ok(out)
}

/// The first entry named `key` of a kind of resource (`Font`, `XObject`)
/// in `resources` (innermost first).
fn resource<'a>(
    doc: &'a lopdf::Document,
    resources: &[&'a lopdf::Dictionary],
    kind: &[u8],
    key: &[u8],
) -> Option<&'a lopdf::Object> {
    resources.iter().find_map(|r| {
        let dict = doc.get_dict_in_dict(r, kind).ok()?;
        doc.dereference(dict.get(key).ok()?).ok().map(|(_, o)| o)
    })
}

/// Append the text that `content` shows to `page`.
fn show_content<'a>(
    doc: &'a lopdf::Document,
    content: &[u8],
    resources: &[&'a lopdf::Dictionary],
    depth: usize,
    budget: &mut usize,
    page: &mut String,
) -> Result<(), String> {
    *budget = budget
        .checked_sub(content.len())
        .ok_or("the PDF's content is larger than the text extraction reads")?;
    use lopdf::content::Content;
    use lopdf::{Encoding, Object};
    use std::collections::BTreeMap;

    let content = Content::decode(content).map_err(|e| e.to_string())?;
    // Each font's encoding is worked out once (a ToUnicode map can be big).
    let mut fonts: BTreeMap<Vec<u8>, Option<Encoding>> = BTreeMap::new();
    let mut font: Option<Vec<u8>> = None;
    let newline = |page: &mut String| {
        let trimmed = page.trim_end_matches(' ').len();
        page.truncate(trimmed);
        if !page.is_empty() && !page.ends_with('\n') {
            page.push('\n');
        }
    };
    let number_at = |ops: &[Object], i: usize| ops.get(i).and_then(|o| o.as_float().ok());
    for op in &content.operations {
        if page.len() > MAX_TEXT_BYTES {
            break;
        }
        let encoding = font
            .as_ref()
            .and_then(|name| fonts.get(name))
            .and_then(Option::as_ref);
        let show = |page: &mut String, operands: &[Object]| {
            let Some(enc) = encoding else { return };
            for operand in operands {
                match operand {
                    Object::String(bytes, _) => {
                        let _ = enc.write_to_string(bytes, page);
                    }
                    Object::Array(parts) => {
                        for part in parts {
                            match part {
                                Object::String(bytes, _) => {
                                    let _ = enc.write_to_string(bytes, page);
                                }
                                // A large negative adjustment is a word gap.
                                Object::Integer(_) | Object::Real(_)
                                    if part.as_float().is_ok_and(|g| g < -200.0)
                                        && !page.ends_with(' ') =>
                                {
                                    page.push(' ');
                                }
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
        };
        match op.operator.as_str() {
            "Tf" => {
                font = op
                    .operands
                    .first()
                    .and_then(|o| o.as_name().ok())
                    .map(<[u8]>::to_vec);
                if let Some(name) = &font
                    && !fonts.contains_key(name)
                {
                    let encoding = resource(doc, resources, b"Font", name)
                        .and_then(|f| f.as_dict().ok())
                        .and_then(|f| {
                            f.get_font_encoding_with_limit(doc, MAX_PDF_PAGE_CONTENT)
                                .ok()
                        });
                    fonts.insert(name.clone(), encoding);
                }
            }
            "Tj" | "TJ" => show(page, &op.operands),
            "'" => {
                newline(page);
                show(page, &op.operands);
            }
            "\"" => {
                newline(page);
                show(page, op.operands.get(2..).unwrap_or(&[]));
            }
            "T*" | "ET" | "Tm" => newline(page),
            "Td" | "TD" => {
                let dx = number_at(&op.operands, 0).unwrap_or(0.0);
                let dy = number_at(&op.operands, 1).unwrap_or(0.0);
                if dy.abs() > 0.01 {
                    newline(page);
                } else if dx > 0.0 && !page.is_empty() && !page.ends_with([' ', '\n']) {
                    page.push(' ');
                }
            }
            // A form XObject: content of its own, drawn here.
            "Do" if depth < MAX_FORM_DEPTH => {
                let form = op
                    .operands
                    .first()
                    .and_then(|o| o.as_name().ok())
                    .and_then(|name| resource(doc, resources, b"XObject", name))
                    .and_then(|o| o.as_stream().ok())
                    .filter(|s| {
                        s.dict
                            .get(b"Subtype")
                            .and_then(Object::as_name)
                            .is_ok_and(|n| n == b"Form")
                    });
                if let Some(form) = form {
                    let own = form
                        .dict
                        .get_deref(b"Resources", doc)
                        .and_then(Object::as_dict)
                        .ok();
                    let mut inner: Vec<&lopdf::Dictionary> = own.into_iter().collect();
                    inner.extend_from_slice(resources);
                    let data = form
                        .get_plain_content_with_limit(MAX_PDF_PAGE_CONTENT)
                        .map_err(|e| e.to_string())?;
                    newline(page);
                    show_content(doc, &data, &inner, depth + 1, budget, page)?;
                    newline(page);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn person_names_read_naturally() {
        assert_eq!(person_name("Kovacs^Eva^^Dr."), "Dr. Eva Kovacs");
        assert_eq!(person_name("Yamada^Tarou=山田^太郎"), "Tarou Yamada");
        assert_eq!(person_name("Smith"), "Smith");
    }

    #[test]
    fn text_is_bounded_at_a_character_boundary() {
        let long = "é".repeat(MAX_TEXT_BYTES);
        let cut = bounded(long);
        assert!(cut.len() <= MAX_TEXT_BYTES);
        assert!(cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn report_classes() {
        assert_eq!(
            report_class_name("1.2.840.10008.5.1.4.1.1.88.22"),
            Some("Enhanced SR")
        );
        assert_eq!(report_class_name("1.2.840.10008.5.1.4.1.1.88.67"), None);
        assert_eq!(report_class_name("1.2.840.10008.5.1.4.1.1.2"), None);
    }

    /// A PDF as another producer (lopdf's writer) makes it: compressed
    /// content, resources inherited from the page tree, words spaced with
    /// TJ adjustments, and text inside a form XObject.
    fn lopdf_made_pdf() -> Vec<u8> {
        use lopdf::content::{Content, Operation};
        use lopdf::{Document, Object, Stream, dictionary};

        let mut doc = Document::with_version("1.5");
        let pages_id = doc.new_object_id();
        let font_id = doc.add_object(dictionary! {
            "Type" => "Font", "Subtype" => "Type1", "BaseFont" => "Courier",
            "Encoding" => "WinAnsiEncoding",
        });
        let op = |name: &str, operands: Vec<Object>| Operation::new(name, operands);
        let form_content = Content {
            operations: vec![
                op("BT", vec![]),
                op("Tf", vec!["F1".into(), 8.into()]),
                op("Td", vec![50.into(), 40.into()]),
                op(
                    "Tj",
                    vec![Object::string_literal(&b"Signed: Dr. M\xfcller"[..])],
                ),
                op("ET", vec![]),
            ],
        };
        let mut form = Stream::new(
            dictionary! {
                "Type" => "XObject", "Subtype" => "Form",
                "BBox" => vec![0.into(), 0.into(), 595.into(), 842.into()],
            },
            form_content.encode().unwrap(),
        );
        form.compress().unwrap();
        let form_id = doc.add_object(form);
        let resources_id = doc.add_object(dictionary! {
            "Font" => dictionary! { "F1" => font_id },
            "XObject" => dictionary! { "Fx" => form_id },
        });
        let content = Content {
            operations: vec![
                op("BT", vec![]),
                op("Tf", vec!["F1".into(), 12.into()]),
                op("Td", vec![50.into(), 800.into()]),
                op(
                    "TJ",
                    vec![Object::Array(vec![
                        Object::string_literal("Hello"),
                        (-300).into(),
                        Object::string_literal("world"),
                    ])],
                ),
                op("Td", vec![0.into(), (-14).into()]),
                op("Tj", vec![Object::string_literal("Second line")]),
                op("ET", vec![]),
                op("Do", vec!["Fx".into()]),
            ],
        };
        let mut stream = Stream::new(dictionary! {}, content.encode().unwrap());
        stream.compress().unwrap();
        let content_id = doc.add_object(stream);
        let page_id = doc.add_object(dictionary! {
            "Type" => "Page", "Parent" => pages_id, "Contents" => content_id,
        });
        doc.objects.insert(
            pages_id,
            Object::Dictionary(dictionary! {
                "Type" => "Pages", "Kids" => vec![page_id.into()], "Count" => 1,
                "Resources" => resources_id,
                "MediaBox" => vec![0.into(), 0.into(), 595.into(), 842.into()],
            }),
        );
        let catalog_id = doc.add_object(dictionary! { "Type" => "Catalog", "Pages" => pages_id });
        doc.trailer.set("Root", catalog_id);
        let mut out = Vec::new();
        doc.save_to(&mut out).unwrap();
        out
    }

    #[test]
    fn pdf_text_of_compressed_content_and_forms() {
        let text = pdf_text(&lopdf_made_pdf()).unwrap();
        assert_eq!(text, "Hello world\nSecond line\nSigned: Dr. M\u{fc}ller");
    }

    #[test]
    fn garbage_and_truncated_pdfs_give_an_error_not_a_panic() {
        assert!(pdf_text(b"").is_err());
        assert!(pdf_text(b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog").is_err());
        assert!(pdf_text(&[0xFFu8; 4096]).is_err());
    }
}
