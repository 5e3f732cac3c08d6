//! `GET /api/search` and the QIDO-RS `reporttext` filter over a real
//! embedded archive and index: reports and lab panels recorded as the HL7
//! front door records them, found by words, filtered by patient, date,
//! modality and kind; a patient-scoped caller sees only its patients; bad
//! parameters are 400s; every search and read reaches the audit hook.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use bytes::Bytes;
use pacs_archive::catalog::TokenRole;
use pacs_archive::results::{
    Coding, MessageFormat, MessageReceipt, PatientResults, ResultMessage, ResultObservation,
    ResultPatient, ResultReport,
};
use pacs_archive::{Archive, ArchiveConfig, IngestSource};
use pacs_indexer::StudyIndex;
use pacs_viewer_api::auth::{
    Action, AuditEvent, AuditSink, Policy, Principal, RolePolicy, Scope, Target,
};
use pacs_viewer_api::{AppState, HttpConfig, auth, router};
use serde_json::Value;
use tower::ServiceExt;

/// An audit event as (principal, action, route, patient, status).
type Event = (String, Action, String, Option<String>, u16);

#[derive(Default)]
struct Recorded(Mutex<Vec<Event>>);

impl AuditSink for Recorded {
    fn record(&self, e: &AuditEvent<'_>) {
        self.0.lock().unwrap().push((
            e.principal.name.clone(),
            e.action,
            e.route.to_owned(),
            e.target.patient.clone(),
            e.status,
        ));
    }
}

/// The role policy, with the token named `portal` held to patient P-2.
struct PortalPolicy;

impl Policy for PortalPolicy {
    fn decide(&self, who: &Principal, action: Action, target: &Target) -> Result<(), String> {
        if who.name == "portal" && target.patient.as_deref().is_some_and(|p| p != "P-2") {
            return Err("the portal reads its own patient only".into());
        }
        RolePolicy.decide(who, action, target)
    }

    fn scope(&self, who: &Principal) -> Scope {
        if who.name == "portal" {
            Scope::Patients(vec!["P-2".into()])
        } else {
            Scope::All
        }
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    archive: Archive,
    app: Router,
    admin: String,
    portal: String,
    audit: Arc<Recorded>,
}

fn message(control_id: &str, patient_id: &str, name: &str, report: ResultReport) -> ResultMessage {
    ResultMessage {
        format: MessageFormat::Hl7v2,
        message_type: "ORU^R01".into(),
        sender: "RIS|HOSP".into(),
        control_id: control_id.into(),
        patients: vec![PatientResults {
            patient: ResultPatient {
                id: patient_id.into(),
                issuer: Some("HOSP".into()),
                name: Some(name.into()),
                ..ResultPatient::default()
            },
            reports: vec![report],
        }],
    }
}

fn radiology(accession: &str, at: &str, text: &str) -> ResultReport {
    ResultReport {
        accession_number: Some(accession.into()),
        service: Coding {
            code: Some("RAD".into()),
            display: Some("Chest radiograph".into()),
            system: None,
        },
        observed_at: Some(at.into()),
        status: Some("F".into()),
        report_text: Some(text.into()),
        ..ResultReport::default()
    }
}

fn panel(filler: &str, at: &str) -> ResultReport {
    ResultReport {
        filler_number: Some(filler.into()),
        service: Coding {
            code: Some("24323-8".into()),
            display: Some("Comprehensive metabolic panel".into()),
            system: Some("LN".into()),
        },
        observed_at: Some(at.into()),
        observations: vec![ResultObservation {
            code: Coding {
                code: Some("2345-7".into()),
                display: Some("Glucose".into()),
                system: Some("LN".into()),
            },
            value_type: Some("NM".into()),
            value: Some("5.4".into()),
            numeric_value: Some(5.4),
            units: Some("mmol/L".into()),
            status: Some("F".into()),
            ..ResultObservation::default()
        }],
        ..ResultReport::default()
    }
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let archive = Archive::open(ArchiveConfig::embedded(dir.path()))
        .await
        .unwrap();
    let index: Arc<StudyIndex> = StudyIndex::open(&dir.path().join("index")).unwrap();
    index.spawn_follower(archive.catalog().clone());
    let admin = auth::issue_token(archive.catalog(), "admin", TokenRole::Admin)
        .await
        .unwrap();
    let portal = auth::issue_token(archive.catalog(), "portal", TokenRole::Clinician)
        .await
        .unwrap();
    let audit = Arc::new(Recorded::default());
    let state = AppState::with_policy(
        archive.clone(),
        index.clone(),
        HttpConfig::default(),
        Arc::new(PortalPolicy),
    )
    .with_audit(audit.clone());
    for m in [
        message(
            "1",
            "P-1",
            "Lindgren^Åsa",
            radiology(
                "A1",
                "20240110093000",
                "Consolidation in the right lower lobe, consistent with pneumonia.",
            ),
        ),
        message(
            "2",
            "P-2",
            "Okafor^Chidi",
            radiology(
                "A2",
                "20240520140000",
                "No consolidation. Healed rib fracture on the left.",
            ),
        ),
        message("3", "P-1", "Lindgren^Åsa", panel("L1", "20240111080000")),
        message("4", "P-2", "Okafor^Chidi", panel("L2", "20230101080000")),
    ] {
        let receipt = archive
            .ingest_message(
                Bytes::from(m.control_id.clone()),
                m,
                IngestSource::Other("test".into()),
            )
            .await;
        assert!(matches!(receipt, MessageReceipt::Stored { .. }));
    }
    let h = Harness {
        _dir: dir,
        archive,
        app: router(state),
        admin,
        portal,
        audit,
    };
    // The follower picks the reports up.
    let deadline = Instant::now() + Duration::from_secs(5);
    while index.count(pacs_indexer::DocKind::Lab) < 2
        || index.count(pacs_indexer::DocKind::Report) < 2
    {
        assert!(Instant::now() < deadline, "reports not indexed after 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h
}

impl Harness {
    async fn get_as(&self, token: &str, uri: &str) -> (StatusCode, Value) {
        let request = Request::get(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn search(&self, query: &str) -> Value {
        let (status, body) = self
            .get_as(&self.admin, &format!("/api/search?{query}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{query}: {body}");
        body
    }
}

fn patients(answer: &Value) -> Vec<String> {
    answer["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["report"]["patient_id"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test]
async fn reports_and_results_are_searchable_with_filters() {
    let h = harness().await;
    let a = h.search("q=consolidation&kind=report").await;
    assert_eq!(a["total"], 2, "{a}");
    let a = h.search("q=pneumonia").await;
    assert_eq!(a["total"], 1);
    assert_eq!(a["hits"][0]["kind"], "report");
    assert!(
        a["hits"][0]["snippet"]
            .as_str()
            .unwrap()
            .contains("<b>pneumonia</b>"),
        "{a}"
    );
    // Test names and codes of lab panels; accents fold.
    assert_eq!(h.search("q=GLUCOSE&kind=lab").await["total"], 2);
    assert_eq!(h.search("q=2345-7").await["total"], 2);
    assert_eq!(
        patients(&h.search("q=asa%20lindgren&kind=lab").await),
        ["P-1"]
    );
    // Patient and date filters.
    assert_eq!(patients(&h.search("q=glucose&patient=P-2").await), ["P-2"]);
    let a = h.search("q=glucose&from=2024-01-01&to=2024-12-31").await;
    assert_eq!(patients(&a), ["P-1"]);
    // No query text: everything of the kind, newest first.
    let a = h.search("kind=report").await;
    assert_eq!(patients(&a), ["P-2", "P-1"]);
    // Paging.
    let a = h.search("kind=report&limit=1&offset=1").await;
    assert_eq!(
        (a["total"].as_u64(), patients(&a)),
        (Some(2), vec!["P-1".to_owned()])
    );

    // A patient-scoped caller sees its patient only, whatever it asks.
    let (status, a) = h.get_as(&h.portal, "/api/search?q=consolidation").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(patients(&a), ["P-2"]);
    let (_, a) = h
        .get_as(&h.portal, "/api/search?q=consolidation&patient=P-1")
        .await;
    assert_eq!(a["total"], 0);
    // A refused read is audited too.
    let (status, _) = h.get_as(&h.portal, "/api/patients/P-1/results").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        h.audit
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|(who, action, _, patient, status)| who == "portal"
                && *action == Action::Read
                && patient.as_deref() == Some("P-1")
                && *status == 403)
    );

    // Bad parameters: 400 with a reason; a forged token: 401.
    for bad in [
        "q=x&from=2024-02-30x",
        "kind=images",
        "limit=many",
        "order=date",
        "from=20240201&to=20240101",
    ] {
        let (status, body) = h.get_as(&h.admin, &format!("/api/search?{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(body["error"].is_string() || body.is_object(), "{body}");
    }
    let (status, _) = h.get_as("pacs_forged", "/api/search?q=x").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Every search reached the audit hook with its principal and status.
    let events = h.audit.0.lock().unwrap().clone();
    assert!(
        events
            .iter()
            .any(|(who, action, route, _, status)| who == "portal"
                && *action == Action::Search
                && route == "/api/search"
                && *status == 200)
    );
    assert!(events.iter().any(|(_, _, _, _, status)| *status == 400));
}

#[tokio::test]
async fn study_searches_filter_on_report_text_and_reads_are_audited() {
    let h = harness().await;
    // Images of patient P-1 with the report's accession number arrive.
    let spec = pacs_fixtures::DatasetSpec {
        patients: 1,
        studies_per_patient: 1,
        ct_slices: 1,
        include_cr: false,
        include_us: false,
        include_reports: false,
        ct_size: 16,
        mr_size: 16,
        ..pacs_fixtures::DatasetSpec::default()
    };
    let mut study_uid = String::new();
    for file in spec.iter() {
        let mut obj = dicom_object::from_reader(&file.bytes[128..]).unwrap();
        use dicom_core::{DataElement, VR};
        use dicom_dictionary_std::tags;
        obj.put(DataElement::new(tags::PATIENT_ID, VR::LO, "P-1"));
        obj.put(DataElement::new(tags::ISSUER_OF_PATIENT_ID, VR::LO, "HOSP"));
        obj.put(DataElement::new(tags::ACCESSION_NUMBER, VR::SH, "A1"));
        let mut bytes = Vec::new();
        obj.write_all(&mut bytes).unwrap();
        study_uid = file.study_instance_uid.clone();
        let receipt = h
            .archive
            .ingest_part10(Bytes::from(bytes), IngestSource::Other("test".into()))
            .await;
        assert!(receipt.is_success(), "{receipt:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, a) = h
            .get_as(&h.admin, "/dicom-web/studies?reporttext=pneumonia")
            .await;
        assert_eq!(status, StatusCode::OK);
        let found: Vec<&str> = a
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["0020000D"]["Value"][0].as_str())
            .collect();
        if found == [study_uid.as_str()] {
            break;
        }
        assert!(found.is_empty(), "{a}");
        assert!(
            Instant::now() < deadline,
            "study not found by its report text"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, a) = h
        .get_as(&h.admin, "/dicom-web/studies?reporttext=fracture")
        .await;
    assert_eq!(a.as_array().map(Vec::len), Some(0), "{a}");
    // The report is linked: it carries the study's modalities, and a
    // modality filter finds it.
    let a = h.search("q=pneumonia&kind=report").await;
    let report = &a["hits"][0]["report"];
    assert_eq!(report["study_instance_uid"], study_uid.as_str(), "{a}");
    let modality = report["modalities"][0].as_str().unwrap().to_owned();
    let a = h
        .search(&format!("q=pneumonia&kind=report&modality={modality}"))
        .await;
    assert_eq!(a["total"], 1);
    assert_eq!(h.search("q=pneumonia&modality=XA").await["total"], 0);
    let (status, _) = h
        .get_as(&h.admin, "/dicom-web/studies/1.2.3/series?reporttext=x")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // A FHIR read by row id is audited with the patient the record is of.
    let (status, bundle) = h
        .get_as(&h.admin, "/fhir/r4/Patient?identifier=HOSP%7CP-1")
        .await;
    assert_eq!(status, StatusCode::OK, "{bundle}");
    let id = bundle["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = h.get_as(&h.admin, &format!("/fhir/r4/Patient/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        h.audit
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|(_, action, route, patient, _)| {
                *action == Action::Read
                    && route == "/fhir/r4/{type}/{id}"
                    && patient.as_deref() == Some("P-1")
            })
    );

    // A read of a patient's results is audited with the patient as target.
    let (status, _) = h.get_as(&h.admin, "/api/patients/P-1/results").await;
    assert_eq!(status, StatusCode::OK);
    let events = h.audit.0.lock().unwrap().clone();
    assert!(
        events
            .iter()
            .any(|(who, action, route, patient, status)| who == "admin"
                && *action == Action::Read
                && route == "/api/patients/{patient}/results"
                && patient.as_deref() == Some("P-1")
                && *status == 200),
        "{events:?}"
    );
}
