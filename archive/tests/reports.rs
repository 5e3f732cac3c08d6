//! Imaging reports held by DICOM instances: Structured Reports (Basic Text,
//! Enhanced, Comprehensive) and Encapsulated PDF stored like any instance
//! get their text extracted and become reports of their study, in the
//! transaction that records the instance. Inputs are the fixtures'
//! generated reports and pydicom's real sample SR files.

use std::path::PathBuf;
use std::process::Command;

use bytes::Bytes;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{FileDicomObject, InMemDicomObject, OpenFileOptions};
use pacs_archive::ingest::parse_part10;
use pacs_archive::results::StoredReport;
use pacs_archive::{Archive, ArchiveConfig, IngestReceipt, IngestSource};
use pacs_fixtures::{FixtureFile, Kind, SrTemplate, single, structured_report, ts};

const SEED: u64 = 41;

async fn open(allow_replace: bool) -> (tempfile::TempDir, Archive) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ArchiveConfig::embedded(dir.path());
    config.ingest.allow_replace = allow_replace;
    (dir, Archive::open(config).await.unwrap())
}

async fn ingest(archive: &Archive, bytes: Vec<u8>) -> IngestReceipt {
    archive
        .ingest_part10(Bytes::from(bytes), IngestSource::Other("test".into()))
        .await
}

fn stored(receipt: &IngestReceipt) {
    assert!(
        matches!(receipt, IngestReceipt::Stored(_)),
        "expected Stored, got {receipt:?}"
    );
}

fn open_part10(bytes: &[u8]) -> FileDicomObject<InMemDicomObject> {
    OpenFileOptions::new()
        .read_preamble(ReadPreamble::Never)
        .from_reader(&bytes[128..])
        .unwrap()
}

fn write_part10(obj: &FileDicomObject<InMemDicomObject>) -> Vec<u8> {
    let mut out = Vec::new();
    obj.write_all(&mut out).unwrap();
    out
}

/// The PDF fixture with its encapsulated document replaced by `document`.
fn pdf_with_document(document: Vec<u8>) -> (FixtureFile, Vec<u8>) {
    let file = single(Kind::Pdf, ts::EXPLICIT_VR_LE, SEED);
    let mut obj = open_part10(&file.bytes);
    obj.put(DataElement::new(
        tags::ENCAPSULATED_DOCUMENT_LENGTH,
        VR::UL,
        PrimitiveValue::from(document.len() as u32),
    ));
    obj.put(DataElement::new(
        tags::ENCAPSULATED_DOCUMENT,
        VR::OB,
        PrimitiveValue::from(document),
    ));
    let bytes = write_part10(&obj);
    (file, bytes)
}

fn original_pdf(file: &FixtureFile) -> Vec<u8> {
    let obj = open_part10(&file.bytes);
    obj.element(tags::ENCAPSULATED_DOCUMENT)
        .unwrap()
        .to_bytes()
        .unwrap()
        .into_owned()
}

fn report_of<'a>(reports: &'a [StoredReport], sop_instance_uid: &str) -> &'a StoredReport {
    reports
        .iter()
        .find(|r| r.sop_instance_uid.as_deref() == Some(sop_instance_uid))
        .unwrap_or_else(|| panic!("no report of {sop_instance_uid} in {reports:#?}"))
}

fn text(report: &StoredReport) -> &str {
    report.report.report_text.as_deref().unwrap_or("")
}

#[test]
fn basic_text_sr_reads_as_headed_sections() {
    let file = single(Kind::Sr, ts::EXPLICIT_VR_LE, SEED);
    let doc = parse_part10(&file.bytes, 1024).unwrap().document.unwrap();
    assert_eq!(doc.kind, "Basic Text SR");
    assert_eq!(doc.title.as_deref(), Some("Diagnostic Imaging Report"));
    assert_eq!(doc.title_code.as_deref(), Some("18748-4"));
    assert_eq!(doc.status, "F", "VERIFIED and COMPLETE");
    let t = &doc.text;
    assert!(
        t.starts_with("Diagnostic Imaging Report\n(COMPLETE, VERIFIED, verified by "),
        "{t}"
    );
    for heading in [
        "\nCurrent Procedure Descriptions\n",
        "\nFindings\n",
        "\nImpressions\n",
    ] {
        assert!(t.contains(heading), "{heading:?} missing in:\n{t}");
    }
    assert!(t.contains("\n  Impression:"), "{t}");
    assert!(
        t.contains("\n  Finding:\n    Technique: "),
        "multi-line text indented: {t}"
    );
    assert!(t.contains("Observer Type: Person\n"), "{t}");
    assert!(
        !t.contains("English"),
        "the content language is not report text: {t}"
    );
    assert!(
        doc.observed_at.as_deref().is_some_and(|o| o.len() == 14),
        "{doc:?}"
    );
}

#[test]
fn enhanced_and_comprehensive_srs_show_codes_and_measurements() {
    let enhanced = structured_report(SrTemplate::Enhanced, ts::EXPLICIT_VR_LE, SEED);
    let doc = parse_part10(&enhanced.bytes, 1024)
        .unwrap()
        .document
        .unwrap();
    assert_eq!(doc.kind, "Enhanced SR");
    let t = &doc.text;
    assert!(
        t.contains("\nImaging Measurements\n  Measurement Group\n"),
        "{t}"
    );
    assert!(t.contains("    Finding: Solitary nodule of lung\n"), "{t}");
    assert!(t.contains("    Finding Site: Lung structure\n"), "{t}");
    let long_axis = t
        .lines()
        .find(|l| l.trim_start().starts_with("Long Axis: "))
        .unwrap_or_else(|| panic!("no long axis in {t}"));
    assert!(long_axis.ends_with(" mm"), "{long_axis}");
    assert!(t.contains("Short Axis: "), "{t}");

    let comprehensive = structured_report(SrTemplate::Comprehensive, ts::IMPLICIT_VR_LE, SEED);
    let doc = parse_part10(&comprehensive.bytes, 1024)
        .unwrap()
        .document
        .unwrap();
    assert_eq!(doc.kind, "Comprehensive SR");
    assert!(
        doc.text.contains("\n    Study Date: 20240115"),
        "{}",
        doc.text
    );
    assert!(
        doc.text.contains(long_axis),
        "same measurements: {}",
        doc.text
    );
    assert_ne!(comprehensive.sop_instance_uid, enhanced.sop_instance_uid);
}

#[test]
fn pdf_text_is_extracted_line_by_line() {
    let file = single(Kind::Pdf, ts::EXPLICIT_VR_LE, SEED);
    let doc = parse_part10(&file.bytes, 1024).unwrap().document.unwrap();
    assert_eq!(doc.kind, "Encapsulated PDF");
    assert_eq!(doc.title.as_deref(), Some("Radiology Report"));
    assert_eq!(doc.status, "P");
    let t = &doc.text;
    assert!(
        t.starts_with("RADIOLOGY REPORT\nSynthetic General Hospital - Department of Radiology\n"),
        "{t}"
    );
    assert!(t.contains("\nFINDINGS\n"), "{t}");
    assert!(t.contains("\nIMPRESSION\n"), "{t}");
    assert!(t.contains("Electronically signed by "), "{t}");
    // The same report as the SR of the study.
    let sr = single(Kind::Sr, ts::EXPLICIT_VR_LE, SEED);
    let sr = parse_part10(&sr.bytes, 1024).unwrap().document.unwrap();
    // The first line of the impression (on its own line when it has several).
    let mut lines = sr.text.lines().map(str::trim_start);
    let first = lines.find_map(|l| l.strip_prefix("Impression:")).unwrap();
    let impression = match first.trim() {
        "" => lines.next().unwrap(),
        same_line => same_line,
    };
    let start: String = impression.chars().take(40).collect();
    assert!(t.contains(&start), "{start:?} not in:\n{t}");
}

#[test]
fn broken_pdfs_give_no_document_and_no_refusal() {
    let file = single(Kind::Pdf, ts::EXPLICIT_VR_LE, SEED);
    let pdf = original_pdf(&file);
    for broken in [
        pdf[..pdf.len() / 2].to_vec(),
        b"%PDF-1.4\nnot really".to_vec(),
        vec![0u8; 1000],
    ] {
        let (_, bytes) = pdf_with_document(broken);
        let parsed = parse_part10(&bytes, 1024).expect("the instance itself is valid");
        assert!(parsed.document.is_none());
    }
}

#[tokio::test]
async fn stored_reports_are_the_study_reports_with_their_text() {
    let (_dir, archive) = open(false).await;
    let files = [
        single(Kind::Sr, ts::EXPLICIT_VR_LE, SEED),
        single(Kind::Pdf, ts::IMPLICIT_VR_LE, SEED),
        structured_report(SrTemplate::Enhanced, ts::EXPLICIT_VR_LE, SEED),
        structured_report(SrTemplate::Comprehensive, ts::EXPLICIT_VR_LE, SEED),
        single(Kind::Ct, ts::EXPLICIT_VR_LE, SEED),
    ];
    let study = files[0].study_instance_uid.clone();
    for f in &files {
        assert_eq!(f.study_instance_uid, study);
        stored(&ingest(&archive, f.bytes.clone()).await);
    }
    let reports = archive.catalog().study_reports(&study).await.unwrap();
    assert_eq!(
        reports.len(),
        4,
        "one per SR and PDF, none for the CT: {reports:#?}"
    );
    for f in &files[..4] {
        let r = report_of(&reports, &f.sop_instance_uid);
        assert_eq!(r.patient_id.as_deref(), Some(f.patient_id.as_str()));
        assert_eq!(r.report.study_instance_uid.as_deref(), Some(study.as_str()));
        assert!(r.report.accession_number.is_some());
        assert!(r.report.observed_at.is_some());
    }
    let sr = report_of(&reports, &files[0].sop_instance_uid);
    assert!(text(sr).contains("\nImpressions\n"), "{}", text(sr));
    assert_eq!(sr.report.status.as_deref(), Some("F"));
    assert_eq!(
        sr.report.service.display.as_deref(),
        Some("Diagnostic Imaging Report")
    );
    let pdf = report_of(&reports, &files[1].sop_instance_uid);
    assert!(text(pdf).contains("\nIMPRESSION\n"), "{}", text(pdf));
    assert_eq!(
        pdf.report.service.display.as_deref(),
        Some("Radiology Report")
    );
    let enhanced = report_of(&reports, &files[2].sop_instance_uid);
    assert!(text(enhanced).contains("Long Axis: "));

    // `pacs verify` checks each blob once: the reports' blobs are the
    // instances' blobs.
    let verified = archive.verify(|_| {}).await.unwrap();
    assert_eq!(verified.checked, 5);
    assert_eq!(verified.messages_checked, 0);
    assert!(verified.damaged.is_empty(), "{:?}", verified.damaged);
}

#[tokio::test]
async fn a_broken_pdf_is_stored_without_a_report() {
    let (_dir, archive) = open(false).await;
    let good = single(Kind::Pdf, ts::EXPLICIT_VR_LE, SEED);
    let pdf = original_pdf(&good);
    let (file, bytes) = pdf_with_document(pdf[..pdf.len() / 3].to_vec());
    let receipt = ingest(&archive, bytes.clone()).await;
    stored(&receipt);
    let back = archive.retrieve(&file.sop_instance_uid).await.unwrap();
    assert_eq!(&back[..], &bytes[..], "the instance is stored as sent");
    let reports = archive
        .catalog()
        .study_reports(&file.study_instance_uid)
        .await
        .unwrap();
    assert!(reports.is_empty(), "{reports:#?}");
}

#[tokio::test]
async fn a_resent_report_creates_nothing_new() {
    let (_dir, archive) = open(false).await;
    let sr = single(Kind::Sr, ts::EXPLICIT_VR_LE, SEED);
    stored(&ingest(&archive, sr.bytes.clone()).await);
    let again = ingest(&archive, sr.bytes.clone()).await;
    assert!(matches!(again, IngestReceipt::Duplicate(_)), "{again:?}");
    let reports = archive
        .catalog()
        .study_reports(&sr.study_instance_uid)
        .await
        .unwrap();
    assert_eq!(reports.len(), 1, "{reports:#?}");
}

#[tokio::test]
async fn a_replaced_report_has_the_new_text() {
    let (_dir, archive) = open(true).await;
    let sr = single(Kind::Sr, ts::EXPLICIT_VR_LE, SEED);
    stored(&ingest(&archive, sr.bytes.clone()).await);
    let before = archive
        .catalog()
        .study_reports(&sr.study_instance_uid)
        .await
        .unwrap();
    assert_eq!(before[0].report.status.as_deref(), Some("F"));

    // An amended version: the impression rewritten, no longer verified.
    let mut obj = open_part10(&sr.bytes);
    obj.put(DataElement::new(
        tags::VERIFICATION_FLAG,
        VR::CS,
        PrimitiveValue::from("UNVERIFIED"),
    ));
    let mut content = obj
        .element(tags::CONTENT_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()
        .to_vec();
    let impressions = content.last_mut().unwrap();
    let mut items = impressions
        .element(tags::CONTENT_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()
        .to_vec();
    items[0].put(DataElement::new(
        tags::TEXT_VALUE,
        VR::UT,
        PrimitiveValue::from("Addendum: the nodule is unchanged."),
    ));
    impressions.put(DataElement::new(
        tags::CONTENT_SEQUENCE,
        VR::SQ,
        dicom_core::value::DataSetSequence::from(items),
    ));
    obj.put(DataElement::new(
        tags::CONTENT_SEQUENCE,
        VR::SQ,
        dicom_core::value::DataSetSequence::from(content),
    ));
    let receipt = ingest(&archive, write_part10(&obj)).await;
    assert!(matches!(receipt, IngestReceipt::Replaced(_)), "{receipt:?}");
    let after = archive
        .catalog()
        .study_reports(&sr.study_instance_uid)
        .await
        .unwrap();
    assert_eq!(after.len(), 1, "the same report, updated: {after:#?}");
    assert_eq!(after[0].id, before[0].id);
    assert_eq!(after[0].report.status.as_deref(), Some("P"));
    assert!(
        text(&after[0]).contains("Impression: Addendum: the nodule is unchanged."),
        "{}",
        text(&after[0])
    );
    assert_ne!(text(&after[0]), text(&before[0]));
}

/// pydicom's interpreter: `$PACS_TEST_PYTHON`, else the test venv.
fn python() -> Option<String> {
    if let Ok(p) = std::env::var("PACS_TEST_PYTHON")
        && !p.trim().is_empty()
    {
        return Some(p);
    }
    let venv = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/pacs-lite/venv/bin/python"))
        .filter(|p| p.is_file());
    if venv.is_none() {
        assert!(
            std::env::var_os("PACS_TEST_REQUIRE_PEERS").is_none(),
            "PACS_TEST_REQUIRE_PEERS is set but there is no Python with pydicom"
        );
        eprintln!(
            "skipped: no Python with pydicom (set PACS_TEST_PYTHON or run scripts/test once)"
        );
    }
    venv.map(|p| p.to_string_lossy().into_owned())
}

fn pydicom_file(py: &str, name: &str) -> Vec<u8> {
    let out = Command::new(py)
        .args([
            "-c",
            "import sys; from pydicom.data import get_testdata_file as g; print(g(sys.argv[1]))",
            name,
        ])
        .output()
        .unwrap_or_else(|e| panic!("running {py}: {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8(out.stdout).unwrap();
    std::fs::read(path.trim()).unwrap_or_else(|e| panic!("{name} at {path}: {e}"))
}

#[test]
fn pydicom_sample_srs_read_as_text() {
    let Some(py) = python() else { return };

    // A Comprehensive SR with nested containers, text, codes, numbers,
    // coordinates and a content item by reference.
    let doc = parse_part10(&pydicom_file(&py, "test-SR.dcm"), 1024)
        .unwrap()
        .document
        .expect("test-SR.dcm holds a report");
    assert_eq!(doc.kind, "Comprehensive SR");
    assert_eq!(doc.status, "F");
    let t = &doc.text;
    assert!(t.contains("Text Code: A mass of\n"), "{t}");
    assert!(t.contains("Code: Sample Code 1\n"), "{t}");
    assert!(t.contains("Diameter: 3"), "{t}");
    assert!(t.contains("Text Code: was detected.\n"), "{t}");
    assert!(t.contains("Code:\n"), "multi-line text under its name: {t}");
    assert!(
        t.contains("\n    Inferred Sample Text\n    New line.\n"),
        "{t}"
    );
    assert!(!t.contains('\r'), "lines end with LF: {t:?}");

    // Basic Text SRs from a reporting tool's template (one with empty
    // numeric attributes).
    for name in ["reportsi.dcm", "reportsi_with_empty_number_tags.dcm"] {
        let doc = parse_part10(&pydicom_file(&py, name), 1024)
            .unwrap()
            .document
            .unwrap_or_else(|| panic!("{name} holds a report"));
        assert_eq!(doc.kind, "Basic Text SR");
        assert_eq!(doc.title.as_deref(), Some("Document Title"));
        assert_eq!(doc.status, "P", "PARTIAL, UNVERIFIED");
        assert_eq!(doc.observed_at.as_deref(), Some("20050530160527"));
        let t = &doc.text;
        assert!(
            t.contains("\nSection Heading\n  Report Text: Enter text"),
            "{t}"
        );
        assert!(t.contains("Recording Observer's Name: Enter text"), "{t}");
    }
}

#[tokio::test]
async fn pydicom_sample_srs_become_study_reports() {
    let Some(py) = python() else { return };
    let (_dir, archive) = open(false).await;
    let bytes = pydicom_file(&py, "test-SR.dcm");
    stored(&ingest(&archive, bytes.clone()).await);
    let study = parse_part10(&bytes, 1024)
        .unwrap()
        .attributes
        .study_instance_uid;
    let reports = archive.catalog().study_reports(&study).await.unwrap();
    assert_eq!(reports.len(), 1);
    assert!(text(&reports[0]).contains("A mass of"));
}

mod mangled_pdfs {
    use super::*;
    use pacs_archive::ingest::{MAX_TEXT_BYTES, pdf_text};
    use proptest::prelude::*;
    use std::sync::OnceLock;

    fn fixture_pdf() -> &'static [u8] {
        static PDF: OnceLock<Vec<u8>> = OnceLock::new();
        PDF.get_or_init(|| original_pdf(&single(Kind::Pdf, ts::EXPLICIT_VR_LE, SEED)))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        /// Cut and corrupted PDFs: never a refusal of their instance, never
        /// a panic, text within bounds.
        #[test]
        fn never_refuse_their_instance(
            keep in 1usize..=100,
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..12),
        ) {
            let pdf = fixture_pdf();
            let mut doc = pdf[..pdf.len() * keep / 100].to_vec();
            for (at, byte) in flips {
                if !doc.is_empty() {
                    let i = at % doc.len();
                    doc[i] = byte;
                }
            }
            if let Ok(text) = pdf_text(&doc) {
                prop_assert!(text.len() <= MAX_TEXT_BYTES);
            }
            let (_, bytes) = pdf_with_document(doc);
            let parsed = parse_part10(&bytes, 1024);
            prop_assert!(parsed.is_ok(), "{:?}", parsed.err());
        }

        #[test]
        fn arbitrary_bytes_are_no_pdf(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut doc = b"%PDF-1.4\n".to_vec();
            doc.extend_from_slice(&bytes);
            let _ = pdf_text(&doc);
        }
    }
}
