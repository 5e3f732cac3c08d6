//! Full-text search of reports, lab panels and studies against a real
//! embedded archive: a report that arrives before its images is found, then
//! linked to its study (modality filter, study search on report text);
//! lab panels are found by test name and code; filters on patient, date
//! and kind; folding of case and accents; rebuild gives the same index.

use std::sync::Arc;

use bytes::Bytes;
use pacs_archive::query::{Level, Query};
use pacs_archive::results::{
    Coding, MessageFormat, MessageReceipt, PatientResults, ResultMessage, ResultObservation,
    ResultPatient, ResultReport,
};
use pacs_archive::{Archive, ArchiveConfig, IngestReceipt, IngestSource};
use pacs_fixtures::{DatasetSpec, FixtureFile, Kind, ts};
use pacs_indexer::{DocKind, StudyIndex, TextSearch};

fn spec() -> DatasetSpec {
    DatasetSpec {
        seed: 5,
        patients: 2,
        studies_per_patient: 1,
        ct_slices: 1,
        mr_slices: 1,
        us_frames: 1,
        cr_size: (32, 32),
        ct_size: 16,
        mr_size: 16,
        us_size: (32, 24),
        transfer_syntax: Some(ts::EXPLICIT_VR_LE),
        // Only the reports this test sends.
        include_reports: false,
        ..DatasetSpec::default()
    }
}

fn patient(id: &str, name: &str) -> ResultPatient {
    ResultPatient {
        id: id.into(),
        issuer: Some("HOSP".into()),
        name: Some(name.into()),
        birth_date: Some("19700101".into()),
        sex: Some("F".into()),
    }
}

fn test(code: &str, name: &str, value: f64, units: &str) -> ResultObservation {
    ResultObservation {
        code: Coding {
            code: Some(code.into()),
            display: Some(name.into()),
            system: Some("LN".into()),
        },
        value_type: Some("NM".into()),
        value: Some(value.to_string()),
        numeric_value: Some(value),
        units: Some(units.into()),
        status: Some("F".into()),
        ..ResultObservation::default()
    }
}

fn message(control_id: &str, patient: ResultPatient, report: ResultReport) -> ResultMessage {
    ResultMessage {
        format: MessageFormat::Hl7v2,
        message_type: "ORU^R01".into(),
        sender: "LAB|HOSP".into(),
        control_id: control_id.into(),
        patients: vec![PatientResults {
            patient,
            reports: vec![report],
        }],
    }
}

async fn record(archive: &Archive, m: ResultMessage) {
    let raw = Bytes::from(format!("{m:?}"));
    let receipt = archive
        .ingest_message(raw, m, IngestSource::Other("test".into()))
        .await;
    assert!(
        matches!(receipt, MessageReceipt::Stored { .. }),
        "{receipt:?}"
    );
}

fn search(q: &str, kinds: &[DocKind]) -> TextSearch {
    TextSearch {
        q: q.into(),
        kinds: kinds.to_vec(),
        limit: 50,
        ..TextSearch::default()
    }
}

fn report_ids(index: &StudyIndex, s: &TextSearch) -> Vec<i64> {
    index
        .search_text(s)
        .unwrap()
        .hits
        .iter()
        .filter_map(|h| h.report.as_ref().map(|r| r.report_id))
        .collect()
}

#[tokio::test]
async fn reports_and_lab_panels_are_found_and_linked_to_their_studies() {
    let dir = tempfile::tempdir().unwrap();
    let archive = Archive::open(ArchiveConfig::embedded(&dir.path().join("data")))
        .await
        .unwrap();
    let index: Arc<StudyIndex> = StudyIndex::open(&dir.path().join("index")).unwrap();
    let files: Vec<FixtureFile> = spec().iter().collect();
    // The CT study of the first patient: its report comes first.
    let ct = files
        .iter()
        .find(|f| f.kind == Kind::Ct)
        .expect("a CT study");
    let study_uid = ct.study_instance_uid.clone();
    let (patient_id, accession) = {
        let obj = dicom_object::from_reader(&ct.bytes[128..]).unwrap();
        let text = |tag| {
            obj.element(tag)
                .ok()
                .and_then(|e| e.to_str().ok())
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        (
            text(dicom_dictionary_std::tags::PATIENT_ID),
            text(dicom_dictionary_std::tags::ACCESSION_NUMBER),
        )
    };
    assert!(!accession.is_empty() && !patient_id.is_empty());
    record(
        &archive,
        message(
            "R1",
            patient(&patient_id, "Ångström^Élise"),
            ResultReport {
                accession_number: Some(accession.clone()),
                service: Coding {
                    code: Some("CTCHEST".into()),
                    display: Some("CT Chest".into()),
                    system: Some("L".into()),
                },
                observed_at: Some("20240305101500".into()),
                status: Some("F".into()),
                report_text: Some(
                    "FINDINGS: Small apical PNEUMOTHORAX on the right.\nIMPRESSION: Pneumothorax, no tension."
                        .into(),
                ),
                ..ResultReport::default()
            },
        ),
    )
    .await;
    record(
        &archive,
        message(
            "L1",
            patient(&patient_id, "Ångström^Élise"),
            ResultReport {
                filler_number: Some("F1".into()),
                service: Coding {
                    code: Some("58410-2".into()),
                    display: Some("Complete blood count panel".into()),
                    system: Some("LN".into()),
                },
                observed_at: Some("20240301080000".into()),
                observations: vec![
                    test("718-7", "Hemoglobin", 13.2, "g/dL"),
                    test("6690-2", "Leukocytes", 7.1, "10*3/uL"),
                ],
                ..ResultReport::default()
            },
        ),
    )
    .await;
    record(
        &archive,
        message(
            "L2",
            patient("OTHER-1", "Other^Patient"),
            ResultReport {
                filler_number: Some("F2".into()),
                service: Coding {
                    code: Some("24323-8".into()),
                    display: Some("Comprehensive metabolic panel".into()),
                    system: Some("LN".into()),
                },
                observed_at: Some("20230101080000".into()),
                observations: vec![test("718-7", "Hemoglobin", 11.0, "g/dL")],
                ..ResultReport::default()
            },
        ),
    )
    .await;
    index.catch_up(archive.catalog()).await.unwrap();
    assert_eq!(index.count(DocKind::Report), 1);
    assert_eq!(index.count(DocKind::Lab), 2);

    // The report, before its images: found by a word of its text in any
    // case and accent form, not yet linked.
    let page = index
        .search_text(&search("pneumothorax", &[DocKind::Report]))
        .unwrap();
    assert_eq!(page.total, 1);
    let hit = &page.hits[0];
    let report = hit.report.as_ref().unwrap();
    assert_eq!(report.study_instance_uid, None);
    assert!(hit.snippet.contains("<b>"), "{}", hit.snippet);
    assert_eq!(
        report_ids(&index, &search("angstrom elise", &[DocKind::Report])),
        [report.report_id]
    );
    // Words match by their stem.
    assert_eq!(
        report_ids(&index, &search("impressions", &[])),
        [report.report_id]
    );
    // Every word must match; a word nowhere matches nothing.
    assert!(report_ids(&index, &search("pneumothorax fracture", &[])).is_empty());

    // Lab panels by test name and by LOINC code; the patient filter.
    let hemoglobin = report_ids(&index, &search("HEMOGLOBIN", &[DocKind::Lab]));
    assert_eq!(hemoglobin.len(), 2);
    assert_eq!(
        report_ids(&index, &search("718-7", &[DocKind::Lab])).len(),
        2
    );
    let mine = TextSearch {
        patient_ids: Some(vec![patient_id.clone()]),
        ..search("hemoglobin", &[])
    };
    assert_eq!(report_ids(&index, &mine).len(), 1);
    let in_2023 = TextSearch {
        date_from: Some("20230101".into()),
        date_to: Some("2023-12-31".into()),
        ..search("hemoglobin", &[])
    };
    let hits = index.search_text(&in_2023).unwrap().hits;
    assert_eq!(hits.len(), 1);
    assert_eq!(
        hits[0].report.as_ref().unwrap().patient_id.as_deref(),
        Some("OTHER-1")
    );

    // The study search on report text finds nothing before the images.
    let mut by_text = Query::new(Level::Study);
    by_text.report_text = Some("Pneumothorax".into());
    assert_eq!(index.search(&by_text, 10, 0).unwrap().total, 0);

    // The images arrive: the report is linked, the study holds its text.
    for file in &files {
        let receipt = archive
            .ingest_part10(
                Bytes::from(file.bytes.clone()),
                IngestSource::Other("test".into()),
            )
            .await;
        assert!(matches!(receipt, IngestReceipt::Stored(_)), "{receipt:?}");
    }
    index.catch_up(archive.catalog()).await.unwrap();
    let page = index.search(&by_text, 10, 0).unwrap();
    assert_eq!(page.total, 1);
    assert_eq!(page.studies[0].study_instance_uid, study_uid);
    let ct_reports = TextSearch {
        modality: Some("CT".into()),
        ..search("pneumothorax", &[DocKind::Report])
    };
    let hits = index.search_text(&ct_reports).unwrap().hits;
    assert_eq!(hits.len(), 1);
    assert_eq!(
        hits[0]
            .report
            .as_ref()
            .unwrap()
            .study_instance_uid
            .as_deref(),
        Some(study_uid.as_str())
    );
    let mr_reports = TextSearch {
        modality: Some("MR".into()),
        ..search("pneumothorax", &[DocKind::Report])
    };
    assert_eq!(index.search_text(&mr_reports).unwrap().total, 0);
    // Without kinds: the study and the report.
    let kinds: Vec<DocKind> = index
        .search_text(&search("pneumothorax", &[]))
        .unwrap()
        .hits
        .iter()
        .map(|h| h.kind)
        .collect();
    assert_eq!(kinds.len(), 2, "{kinds:?}");
    assert!(kinds.contains(&DocKind::Study) && kinds.contains(&DocKind::Report));
    // No query text: everything that passes the filters, newest first.
    let all = index.search_text(&search("", &[DocKind::Lab])).unwrap();
    assert_eq!(all.total, 2);
    let dates: Vec<String> = all
        .hits
        .iter()
        .map(|h| h.report.as_ref().unwrap().observed_at.clone().unwrap())
        .collect();
    assert!(dates[0] > dates[1], "{dates:?}");

    // A rebuild gives the same documents.
    let studies = index.num_studies();
    index.rebuild(archive.catalog(), &|_, _| {}).await.unwrap();
    assert_eq!(index.num_studies(), studies);
    assert_eq!(index.count(DocKind::Report), 1);
    assert_eq!(index.count(DocKind::Lab), 2);
    assert_eq!(index.search(&by_text, 10, 0).unwrap().total, 1);
}
