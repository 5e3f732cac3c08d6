//! The FHIR R4 front door through the real router over a real embedded
//! archive: transaction Bundles and DiagnosticReports in, reads and
//! searches out, HL7 v2 results readable as FHIR, and every refusal an
//! OperationOutcome that stores nothing.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use bytes::Bytes;
use pacs_archive::catalog::TokenRole;
use pacs_archive::{Archive, ArchiveConfig};
use pacs_fixtures::{fhir as fx, hl7};
use pacs_hl7_gateway::{ArchiveSink, MessageSink, OruMessage, ReceivedMessage};
use pacs_indexer::StudyIndex;
use pacs_viewer_api::auth::{Action, Policy, Principal, RolePolicy, Scope, Target};
use pacs_viewer_api::{AppState, HttpConfig, auth, router};
use serde_json::{Value, json};
use tower::ServiceExt;

const BASE: &str = "https://pacs.example.org";
const FHIR: &str = "application/fhir+json";
const MAX_BODY: u64 = 256 << 10;

struct Harness {
    _dir: tempfile::TempDir,
    archive: Archive,
    app: Router,
    token: String,
}

/// A clinician's results only: the policy of a patient portal.
struct OnePatient(String);

impl Policy for OnePatient {
    fn decide(&self, who: &Principal, action: Action, target: &Target) -> Result<(), String> {
        match &target.patient {
            Some(p) if *p != self.0 => Err(format!("not patient {p}")),
            _ => RolePolicy.decide(who, action, target),
        }
    }

    fn scope(&self, _who: &Principal) -> Scope {
        Scope::Patients(vec![self.0.clone()])
    }
}

async fn harness_with(policy: Option<Arc<dyn Policy>>) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let archive = Archive::open(ArchiveConfig::embedded(dir.path()))
        .await
        .unwrap();
    let index: Arc<StudyIndex> = StudyIndex::open(&dir.path().join("index")).unwrap();
    let config = HttpConfig {
        public_base_url: format!("{BASE}/"),
        max_fhir_bytes: MAX_BODY,
        ..HttpConfig::default()
    };
    let token = auth::issue_token(archive.catalog(), "lab-system", TokenRole::Clinician)
        .await
        .unwrap();
    let state = match policy {
        Some(p) => AppState::with_policy(archive.clone(), index, config, p),
        None => AppState::new(archive.clone(), index, config),
    };
    Harness {
        _dir: dir,
        archive,
        app: router(state),
        token,
    }
}

async fn harness() -> Harness {
    harness_with(None).await
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body[..self.body.len().min(300)])
            )
        })
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
}

impl Harness {
    async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, uri: &str) -> Answer {
        let r = Request::get(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::ACCEPT, FHIR)
            .body(Body::empty())
            .unwrap();
        self.send(r).await
    }

    /// GET that must succeed; the JSON body.
    async fn read(&self, uri: &str) -> Value {
        let a = self.get(uri).await;
        assert_eq!(a.status, StatusCode::OK, "{uri}: {}", a.json());
        assert_eq!(a.header("content-type"), FHIR);
        a.json()
    }

    async fn post(&self, uri: &str, body: impl Into<Body>) -> Answer {
        let r = Request::post(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::CONTENT_TYPE, FHIR)
            .body(body.into())
            .unwrap();
        self.send(r).await
    }

    async fn counts(&self) -> (i64, i64, i64) {
        self.archive.catalog().result_counts().await.unwrap()
    }

    /// Record an HL7 ORU as the MLLP listener does.
    async fn ingest_oru(&self, bytes: Vec<u8>) {
        let message = OruMessage::parse(&bytes).unwrap();
        let key = message.header.key();
        let received = ReceivedMessage {
            raw: Bytes::from(bytes),
            message,
            key,
            peer: "127.0.0.1:2575".parse().unwrap(),
        };
        ArchiveSink::new(self.archive.clone())
            .accept(received)
            .await
            .unwrap();
    }
}

/// The path of an absolute URL of this server.
fn path_of(url: &str) -> String {
    url.strip_prefix(BASE)
        .unwrap_or_else(|| panic!("{url} is not under {BASE}"))
        .to_owned()
}

fn entries(bundle: &Value) -> Vec<Value> {
    bundle["entry"].as_array().cloned().unwrap_or_default()
}

fn matches(bundle: &Value) -> Vec<Value> {
    entries(bundle)
        .into_iter()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"].clone())
        .collect()
}

fn link(bundle: &Value, relation: &str) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == relation)
        .map(|l| l["url"].as_str().unwrap().to_owned())
}

fn resource_of<'a>(bundle: &'a Value, kind: &str) -> Vec<&'a Value> {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] == kind)
        .collect()
}

#[tokio::test]
async fn a_transaction_bundle_is_stored_and_read_back() {
    let h = harness().await;
    let posted_bytes = fx::complete_blood_count(11, 0);
    let posted: Value = serde_json::from_slice(&posted_bytes).unwrap();
    let a = h.post("/fhir/r4", posted_bytes.clone()).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json());
    assert_eq!(a.header("content-type"), FHIR);
    let response = a.json();
    assert_eq!(response["type"], "transaction-response");
    let answered = entries(&response);
    assert_eq!(answered.len(), entries(&posted).len());
    for e in &answered {
        assert_eq!(e["response"]["status"], "201 Created");
    }
    // One location per posted entry, of the entry's type.
    let locations: Vec<String> = answered
        .iter()
        .map(|e| e["response"]["location"].as_str().unwrap().to_owned())
        .collect();
    for (l, p) in locations.iter().zip(entries(&posted)) {
        let kind = p["resource"]["resourceType"].as_str().unwrap();
        assert!(l.starts_with(&format!("{kind}/")), "{l} for a {kind}");
    }
    let report_at = locations
        .iter()
        .find(|l| l.starts_with("DiagnosticReport/"))
        .unwrap();
    let report = h.read(&format!("/fhir/r4/{report_at}")).await;
    let sent = resource_of(&posted, "DiagnosticReport")[0];
    assert_eq!(report["status"], "final");
    assert_eq!(report["code"]["coding"][0]["system"], "http://loinc.org");
    assert_eq!(report["code"]["coding"][0]["code"], "58410-2");
    assert_eq!(report["effectiveDateTime"], sent["effectiveDateTime"]);
    let ids: Vec<&str> = report["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["value"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            sent["identifier"][0]["value"].as_str().unwrap(),
            sent["identifier"][1]["value"].as_str().unwrap()
        ]
    );
    let results = report["result"].as_array().unwrap();
    assert_eq!(results.len(), 6);

    // The results read back with their values, ranges and flags.
    let sent_obs = resource_of(&posted, "Observation");
    for (r, s) in results.iter().zip(&sent_obs) {
        let o = h
            .read(&format!("/fhir/r4/{}", r["reference"].as_str().unwrap()))
            .await;
        assert_eq!(o["status"], "final");
        assert_eq!(
            o["code"]["coding"][0]["code"],
            s["code"]["coding"][0]["code"]
        );
        assert_eq!(o["valueQuantity"]["value"], s["valueQuantity"]["value"]);
        assert_eq!(o["valueQuantity"]["unit"], s["valueQuantity"]["code"]);
        assert_eq!(
            o["referenceRange"][0]["low"]["value"],
            s["referenceRange"][0]["low"]["value"]
        );
        assert_eq!(
            o["interpretation"][0]["coding"][0]["code"],
            s["interpretation"][0]["coding"][0]["code"]
        );
        assert_eq!(o["subject"]["reference"], report["subject"]["reference"]);
    }

    // The patient, by the id the report names.
    let patient = h
        .read(&format!(
            "/fhir/r4/{}",
            report["subject"]["reference"].as_str().unwrap()
        ))
        .await;
    let sent_patient = resource_of(&posted, "Patient")[0];
    assert_eq!(
        patient["identifier"][0]["value"],
        sent_patient["identifier"][0]["value"]
    );
    assert_eq!(patient["identifier"][0]["system"], fx::PATIENT_SYSTEM);
    assert_eq!(patient["birthDate"], sent_patient["birthDate"]);
    assert_eq!(
        patient["name"][0]["family"],
        sent_patient["name"][0]["family"]
    );

    // A re-POST is the same message: the same locations, 200, nothing new.
    let before = h.counts().await;
    let again = h.post("/fhir/r4", posted_bytes).await;
    assert_eq!(again.status, StatusCode::OK);
    let again = again.json();
    for (e, l) in entries(&again).iter().zip(&locations) {
        assert_eq!(e["response"]["status"], "200 OK");
        assert_eq!(e["response"]["location"], l.as_str());
    }
    assert_eq!(h.counts().await, before);

    // The same identifier with other content is a conflict.
    let mut changed = posted.clone();
    changed["entry"][1]["resource"]["valueQuantity"]["value"] = json!(99.9);
    let conflict = h.post("/fhir/r4", changed.to_string()).await;
    assert_eq!(conflict.status, StatusCode::CONFLICT);
    assert_eq!(conflict.json()["issue"][0]["code"], "conflict");
    assert_eq!(h.counts().await, before);
}

fn contained_report(subject: Value) -> Value {
    json!({
        "resourceType": "DiagnosticReport",
        "contained": [
            {
                "resourceType": "Patient",
                "id": "p",
                "identifier": [{ "system": "urn:oid:1.2.3.4", "value": "C-100" }],
                "name": [{ "family": "Doe", "given": ["Jane", "Q"] }],
                "gender": "female",
                "birthDate": "1970-05-06"
            },
            {
                "resourceType": "Observation",
                "id": "k",
                "status": "preliminary",
                "code": { "coding": [{ "system": "http://loinc.org", "code": "2823-3", "display": "Potassium" }] },
                "valueQuantity": { "value": 6.1, "unit": "mmol/L" },
                "referenceRange": [{ "low": { "value": 3.5 }, "high": { "value": 5.1 } }],
                "interpretation": [{ "coding": [{ "code": "H" }] }],
                "note": [{ "text": "haemolysed sample" }]
            },
            {
                "resourceType": "Observation",
                "id": "c",
                "status": "final",
                "code": { "text": "Specimen appearance" },
                "valueCodeableConcept": { "text": "Cloudy" }
            },
            {
                "resourceType": "Observation",
                "id": "e",
                "status": "final",
                "code": { "coding": [{ "system": "http://loinc.org", "code": "33914-3" }] },
                "valueQuantity": { "value": 60, "comparator": ">", "unit": "mL/min" }
            }
        ],
        "identifier": [{ "system": "http://lab.example.org/reports", "value": "R-1" }],
        "basedOn": [{ "identifier": { "value": "ORD-77" } }],
        "status": "preliminary",
        "code": { "coding": [{ "system": "http://loinc.org", "code": "24326-1", "display": "Electrolytes panel" }] },
        "subject": subject,
        "effectiveDateTime": "2025-03-04T08:15:00+02:00",
        "result": [{ "reference": "#k" }, { "reference": "#c" }, { "reference": "#e" }]
    })
}

#[tokio::test]
async fn a_diagnostic_report_with_contained_results_is_created() {
    let h = harness().await;
    let body = contained_report(json!({ "reference": "#p" })).to_string();
    let a = h.post("/fhir/r4/DiagnosticReport", body.clone()).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.json());
    let created = a.json();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(
        a.header("location"),
        format!("{BASE}/fhir/r4/DiagnosticReport/{id}")
    );
    assert_eq!(created["status"], "preliminary");
    assert_eq!(created["identifier"][0]["value"], "ORD-77");
    assert_eq!(created["identifier"][1]["value"], "R-1");
    assert_eq!(created["effectiveDateTime"], "2025-03-04T08:15:00+02:00");
    assert_eq!(
        created,
        h.read(&format!("/fhir/r4/DiagnosticReport/{id}")).await
    );
    let results: Vec<Value> = {
        let mut out = Vec::new();
        for r in created["result"].as_array().unwrap() {
            out.push(
                h.read(&format!("/fhir/r4/{}", r["reference"].as_str().unwrap()))
                    .await,
            );
        }
        out
    };
    assert_eq!(results[0]["status"], "preliminary");
    assert_eq!(results[0]["valueQuantity"]["value"], 6.1);
    assert_eq!(results[0]["referenceRange"][0]["text"], "3.5-5.1");
    assert_eq!(results[0]["referenceRange"][0]["high"]["value"], 5.1);
    assert_eq!(results[0]["interpretation"][0]["coding"][0]["code"], "H");
    assert_eq!(results[0]["note"][0]["text"], "haemolysed sample");
    assert_eq!(results[1]["valueCodeableConcept"]["text"], "Cloudy");
    assert_eq!(results[2]["valueQuantity"]["comparator"], ">");
    assert_eq!(results[2]["valueQuantity"]["value"], 60.0);
    let patient = h
        .read(&format!(
            "/fhir/r4/{}",
            created["subject"]["reference"].as_str().unwrap()
        ))
        .await;
    assert_eq!(patient["name"][0]["given"], json!(["Jane", "Q"]));
    assert_eq!(patient["gender"], "female");
    assert_eq!(patient["birthDate"], "1970-05-06");

    // Re-POST: 200 with the same report.
    let before = h.counts().await;
    let again = h.post("/fhir/r4/DiagnosticReport", body).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["id"], id.as_str());
    assert_eq!(h.counts().await, before);

    // The patient named by identifier, and by its id in the archive.
    let mut by_identifier = contained_report(
        json!({ "identifier": { "system": "urn:oid:1.2.3.4", "value": "C-100" } }),
    );
    by_identifier["identifier"][0]["value"] = json!("R-2");
    let a = h
        .post("/fhir/r4/DiagnosticReport", by_identifier.to_string())
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.json());
    assert_eq!(a.json()["subject"], created["subject"]);
    let mut by_reference = contained_report(created["subject"].clone());
    by_reference["identifier"][0]["value"] = json!("R-3");
    by_reference["subject"] = json!({ "reference": created["subject"]["reference"] });
    let a = h
        .post("/fhir/r4/DiagnosticReport", by_reference.to_string())
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.json());
    assert_eq!(
        a.json()["subject"]["reference"],
        created["subject"]["reference"]
    );
}

/// (method, uri, authorization, content type, accept, body, status, issue code).
type Case = (
    Method,
    &'static str,
    String,
    &'static str,
    &'static str,
    String,
    u16,
    &'static str,
);

#[tokio::test]
async fn bad_requests_are_operation_outcomes_and_store_nothing() {
    let h = harness().await;
    // Something stored, so "unchanged" means something.
    let a = h.post("/fhir/r4", fx::complete_blood_count(2, 0)).await;
    assert_eq!(a.status, StatusCode::OK);
    let before = h.counts().await;

    let mut no_reference = contained_report(json!({ "reference": "#p" }));
    no_reference["result"] = json!([{ "reference": "#k" }, { "reference": "#missing" }]);
    let mut no_patient = contained_report(json!({ "reference": "#p" }));
    no_patient.as_object_mut().unwrap().remove("subject");
    let mut unknown_patient = contained_report(json!({ "reference": "Patient/999999" }));
    unknown_patient["identifier"][0]["value"] = json!("R-9");
    let mut bundle_ref: Value = serde_json::from_slice(&fx::basic_metabolic_panel(2, 1)).unwrap();
    let last = bundle_ref["entry"].as_array().unwrap().len() - 1;
    bundle_ref["entry"][last]["resource"]["result"][0]["reference"] =
        json!("urn:uuid:00000000-0000-4000-8000-000000000000");
    let mut document: Value = serde_json::from_slice(&fx::radiology_report(2, 2)).unwrap();
    document["type"] = json!("document");
    let mut stray: Value = serde_json::from_slice(&fx::radiology_report(2, 2)).unwrap();
    stray["entry"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "fullUrl": "urn:uuid:1", "resource": { "resourceType": "Observation", "status": "final", "code": { "text": "x" } } }));
    let mut bad_status = contained_report(json!({ "reference": "#p" }));
    bad_status["status"] = json!("done");
    let big = format!(
        "{{\"resourceType\":\"Bundle\",\"type\":\"transaction\",\"x\":\"{}\"}}",
        "a".repeat(MAX_BODY as usize)
    );

    let token = format!("Bearer {}", h.token);
    let forged = "Bearer pacs_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned();
    // (method, uri, authorization, content type, accept, body, status, issue code)
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            "/fhir/r4",
            token.clone(),
            FHIR,
            FHIR,
            "{not json".into(),
            400,
            "invalid",
        ),
        (
            Method::POST,
            "/fhir/r4/DiagnosticReport",
            token.clone(),
            FHIR,
            FHIR,
            "[1, 2]".into(),
            400,
            "invalid",
        ),
        (
            Method::POST,
            "/fhir/r4",
            token.clone(),
            FHIR,
            FHIR,
            contained_report(json!({"reference": "#p"})).to_string(),
            400,
            "invalid",
        ),
        (
            Method::POST,
            "/fhir/r4/DiagnosticReport",
            token.clone(),
            FHIR,
            FHIR,
            r#"{"resourceType":"Observation"}"#.into(),
            400,
            "invalid",
        ),
        (
            Method::POST,
            "/fhir/r4/DiagnosticReport",
            token.clone(),
            FHIR,
            FHIR,
            no_reference.to_string(),
            422,
            "processing",
        ),
        (
            Method::POST,
            "/fhir/r4/DiagnosticReport",
            token.clone(),
            FHIR,
            FHIR,
            no_patient.to_string(),
            422,
            "processing",
        ),
        (
            Method::POST,
            "/fhir/r4/DiagnosticReport",
            token.clone(),
            FHIR,
            FHIR,
            unknown_patient.to_string(),
            422,
            "processing",
        ),
        (
            Method::POST,
            "/fhir/r4/DiagnosticReport",
            token.clone(),
            FHIR,
            FHIR,
            bad_status.to_string(),
            400,
            "invalid",
        ),
        (
            Method::POST,
            "/fhir/r4",
            token.clone(),
            FHIR,
            FHIR,
            bundle_ref.to_string(),
            422,
            "processing",
        ),
        (
            Method::POST,
            "/fhir/r4",
            token.clone(),
            FHIR,
            FHIR,
            document.to_string(),
            422,
            "processing",
        ),
        (
            Method::POST,
            "/fhir/r4",
            token.clone(),
            FHIR,
            FHIR,
            stray.to_string(),
            422,
            "processing",
        ),
        (
            Method::POST,
            "/fhir/r4",
            token.clone(),
            FHIR,
            FHIR,
            big,
            413,
            "too-costly",
        ),
        (
            Method::POST,
            "/fhir/r4",
            token.clone(),
            "application/xml",
            FHIR,
            "<Bundle/>".into(),
            415,
            "not-supported",
        ),
        (
            Method::POST,
            "/fhir/r4/Observation",
            token.clone(),
            FHIR,
            FHIR,
            "{}".into(),
            405,
            "not-supported",
        ),
        (
            Method::POST,
            "/fhir/r4/Specimen",
            token.clone(),
            FHIR,
            FHIR,
            "{}".into(),
            404,
            "not-supported",
        ),
        (
            Method::POST,
            "/fhir/r4",
            forged.clone(),
            FHIR,
            FHIR,
            String::from_utf8(fx::radiology_report(2, 2)).unwrap(),
            401,
            "login",
        ),
        (
            Method::POST,
            "/fhir/r4",
            String::new(),
            FHIR,
            FHIR,
            String::from_utf8(fx::radiology_report(2, 2)).unwrap(),
            401,
            "login",
        ),
        (
            Method::GET,
            "/fhir/r4/DiagnosticReport/999999",
            token.clone(),
            "",
            FHIR,
            String::new(),
            404,
            "not-found",
        ),
        (
            Method::GET,
            "/fhir/r4/Observation/abc",
            token.clone(),
            "",
            FHIR,
            String::new(),
            404,
            "not-found",
        ),
        (
            Method::GET,
            "/fhir/r4/Patient/0",
            token.clone(),
            "",
            FHIR,
            String::new(),
            404,
            "not-found",
        ),
        (
            Method::GET,
            "/fhir/r4/Medication/1",
            token.clone(),
            "",
            FHIR,
            String::new(),
            404,
            "not-supported",
        ),
        (
            Method::GET,
            "/fhir/r4/Medication",
            token.clone(),
            "",
            FHIR,
            String::new(),
            404,
            "not-supported",
        ),
        (
            Method::GET,
            "/fhir/r4/DiagnosticReport/1/_history/1",
            token.clone(),
            "",
            FHIR,
            String::new(),
            404,
            "not-found",
        ),
        (
            Method::GET,
            "/fhir/r4/DiagnosticReport",
            forged,
            "",
            FHIR,
            String::new(),
            401,
            "login",
        ),
        (
            Method::GET,
            "/fhir/r4/DiagnosticReport",
            token.clone(),
            "",
            "application/fhir+xml",
            String::new(),
            406,
            "not-supported",
        ),
        (
            Method::GET,
            "/fhir/r4/DiagnosticReport?_format=xml",
            token.clone(),
            "",
            FHIR,
            String::new(),
            406,
            "not-supported",
        ),
        (
            Method::GET,
            "/fhir/r4/DiagnosticReport?date=yesterday",
            token.clone(),
            "",
            FHIR,
            String::new(),
            400,
            "invalid",
        ),
        (
            Method::DELETE,
            "/fhir/r4/DiagnosticReport/1",
            token.clone(),
            "",
            FHIR,
            String::new(),
            405,
            "not-supported",
        ),
    ];
    for (method, uri, authorization, content_type, accept, body, status, code) in cases {
        let mut r = Request::builder()
            .method(method.clone())
            .uri(uri)
            .header(header::ACCEPT, accept);
        if !authorization.is_empty() {
            r = r.header(header::AUTHORIZATION, authorization);
        }
        if !content_type.is_empty() {
            r = r.header(header::CONTENT_TYPE, content_type);
        }
        let a = h.send(r.body(Body::from(body)).unwrap()).await;
        let what = format!("{method} {uri}");
        assert_eq!(
            a.status.as_u16(),
            status,
            "{what}: {}",
            String::from_utf8_lossy(&a.body)
        );
        assert_eq!(a.header("content-type"), FHIR, "{what}");
        let outcome = a.json();
        assert_eq!(outcome["resourceType"], "OperationOutcome", "{what}");
        assert_eq!(outcome["issue"][0]["severity"], "error", "{what}");
        assert_eq!(outcome["issue"][0]["code"], code, "{what}: {outcome}");
        assert!(
            outcome["issue"][0]["diagnostics"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{what}"
        );
        assert_eq!(h.counts().await, before, "{what} stored something");
    }
    // The DICOMweb routes keep their own error form.
    let a = h.get("/dicom-web/nothing").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.json().get("resourceType").is_none());
}

#[tokio::test]
async fn searches_by_patient_code_date_status_with_paging() {
    let h = harness().await;
    for bundle in fx::transaction_bundles(21, 8) {
        let a = h.post("/fhir/r4", bundle).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.json());
    }
    let cbc = h
        .read("/fhir/r4/DiagnosticReport?code=http://loinc.org|58410-2")
        .await;
    assert_eq!(cbc["type"], "searchset");
    // Two blood counts and their corrections.
    assert_eq!(cbc["total"], 4);
    assert_eq!(matches(&cbc).len(), 4);
    for e in entries(&cbc) {
        let id = e["resource"]["id"].as_str().unwrap();
        assert_eq!(
            e["fullUrl"],
            format!("{BASE}/fhir/r4/DiagnosticReport/{id}")
        );
    }
    for form in [
        "LN|58410-2",
        "58410-2",
        "http://loinc.org|58410-2,http://loinc.org|0-0",
    ] {
        let b = h
            .read(&format!(
                "/fhir/r4/DiagnosticReport?code={}",
                urlencode(form)
            ))
            .await;
        assert_eq!(b["total"], 4, "code={form}");
    }
    let none = h.read("/fhir/r4/DiagnosticReport?code=%7C58410-2").await;
    assert_eq!(
        none["total"], 0,
        "|code matches only codes without a system"
    );
    let other = h
        .read("/fhir/r4/DiagnosticReport?code=http://snomed.info/sct|58410-2")
        .await;
    assert_eq!(other["total"], 0);

    let corrected = h.read("/fhir/r4/DiagnosticReport?status=corrected").await;
    assert_eq!(corrected["total"], 2);
    let final_ = h
        .read("/fhir/r4/DiagnosticReport?status=final,preliminary")
        .await;
    assert_eq!(final_["total"], 6);

    // Dates: the radiology report's day, with every prefix.
    let rad: Value = serde_json::from_slice(&fx::radiology_report(21, 2)).unwrap();
    let when = resource_of(&rad, "DiagnosticReport")[0]["effectiveDateTime"]
        .as_str()
        .unwrap()
        .to_owned();
    let day = &when[..10];
    let all = h.read("/fhir/r4/DiagnosticReport?_count=100").await;
    let dates: Vec<String> = matches(&all)
        .iter()
        .map(|r| r["effectiveDateTime"].as_str().unwrap()[..10].to_owned())
        .collect();
    let count = |pred: &dyn Fn(&str) -> bool| dates.iter().filter(|d| pred(d)).count() as i64;
    for (param, expected) in [
        (day.to_owned(), count(&|d| d == day)),
        (format!("eq{day}"), count(&|d| d == day)),
        (format!("ne{day}"), count(&|d| d != day)),
        (format!("ge{day}"), count(&|d| d >= day)),
        (format!("gt{day}"), count(&|d| d > day)),
        (format!("le{day}"), count(&|d| d <= day)),
        (format!("lt{day}"), count(&|d| d < day)),
        (day[..7].to_owned(), count(&|d| d[..7] == day[..7])),
        ("2024".to_owned(), count(&|d| d.starts_with("2024"))),
        (
            format!("ge{}", &when[..19]),
            count(&|d| d >= day) - count(&|d| d == day) + 1,
        ),
    ] {
        let b = h
            .read(&format!(
                "/fhir/r4/DiagnosticReport?date={}",
                urlencode(&param)
            ))
            .await;
        assert_eq!(b["total"], expected, "date={param}");
    }
    let between = h
        .read(&format!(
            "/fhir/r4/DiagnosticReport?date=ge{day}&date=le{day}"
        ))
        .await;
    assert_eq!(between["total"], count(&|d| d == day));
    let empty = h
        .read(&format!(
            "/fhir/r4/DiagnosticReport?date=gt{day}&date=lt{day}"
        ))
        .await;
    assert_eq!(empty["total"], 0);
    assert!(empty.get("entry").is_none());

    // Paging through every current result, 7 at a time.
    let first = h.read("/fhir/r4/Observation?_count=7").await;
    let total = first["total"].as_i64().unwrap();
    // 2 x 6 blood counts, 2 x 9 metabolic panels, 2 x 6 in the
    // corrections, each of which supersedes one haemoglobin.
    assert_eq!(total, 12 + 18 + 12 - 2);
    let mut seen = BTreeSet::new();
    let mut page = first;
    let mut pages = 0;
    loop {
        pages += 1;
        let m = matches(&page);
        assert!(m.len() <= 7);
        for r in m {
            assert!(seen.insert(r["id"].as_str().unwrap().to_owned()));
        }
        match link(&page, "next") {
            Some(next) => page = h.read(&path_of(&next)).await,
            None => break,
        }
    }
    assert_eq!(seen.len() as i64, total);
    assert_eq!(pages, (total + 6) / 7);
    let prev = link(&page, "previous").unwrap();
    let back = h.read(&path_of(&prev)).await;
    assert_eq!(matches(&back).len(), 7);
    let self_link = link(&page, "self").unwrap();
    assert!(self_link.starts_with(&format!("{BASE}/fhir/r4/Observation?")));

    // Unknown parameters: ignored and reported, or refused when strict.
    let lenient = h
        .read("/fhir/r4/Observation?code=718-7&_sort=date&foo=1")
        .await;
    let self_link = link(&lenient, "self").unwrap();
    assert!(self_link.contains("code=718-7"), "{self_link}");
    assert!(!self_link.contains("foo") && !self_link.contains("_sort"));
    let outcome = entries(&lenient)
        .into_iter()
        .find(|e| e["search"]["mode"] == "outcome")
        .unwrap();
    assert!(
        outcome["resource"]["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("foo")
    );
    let strict = h
        .send(
            Request::get("/fhir/r4/Observation?code=718-7&foo=1")
                .header(header::AUTHORIZATION, format!("Bearer {}", h.token))
                .header("prefer", "handling=strict")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(strict.status, StatusCode::BAD_REQUEST);
    assert_eq!(strict.json()["resourceType"], "OperationOutcome");

    // The corrected haemoglobin: current value in searches, the earlier
    // value still readable by id with its stored status.
    let fix: Value = serde_json::from_slice(&fx::corrected_result(21, 0)).unwrap();
    let patient_id = resource_of(&fix, "Patient")[0]["identifier"][0]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    let patients = h
        .read(&format!(
            "/fhir/r4/Patient?identifier={}",
            urlencode(&format!("{}|{patient_id}", fx::PATIENT_SYSTEM))
        ))
        .await;
    assert_eq!(patients["total"], 1);
    let pk = matches(&patients)[0]["id"].as_str().unwrap().to_owned();
    let hgb = h
        .read(&format!(
            "/fhir/r4/Observation?patient=Patient/{pk}&code=718-7"
        ))
        .await;
    assert_eq!(hgb["total"], 1);
    let current = &matches(&hgb)[0];
    assert_eq!(current["status"], "corrected");
    let sent_hgb = resource_of(&fix, "Observation")
        .into_iter()
        .find(|o| o["code"]["coding"][0]["code"] == "718-7")
        .unwrap();
    assert_eq!(
        current["valueQuantity"]["value"],
        sent_hgb["valueQuantity"]["value"]
    );
    assert!(
        current["note"][0]["text"]
            .as_str()
            .unwrap()
            .contains("previously")
    );
    let by_identifier = h
        .read(&format!(
            "/fhir/r4/Observation?patient.identifier={}&code=718-7",
            urlencode(&format!("{}|{patient_id}", fx::PATIENT_SYSTEM))
        ))
        .await;
    assert_eq!(by_identifier["total"], 1);
    let reports = h
        .read(&format!(
            "/fhir/r4/DiagnosticReport?subject={pk}&code=58410-2"
        ))
        .await;
    assert_eq!(reports["total"], 2);
    let original = matches(&reports)
        .into_iter()
        .find(|r| r["status"] == "final")
        .unwrap();
    let mut earlier = None;
    for r in original["result"].as_array().unwrap() {
        let o = h
            .read(&format!("/fhir/r4/{}", r["reference"].as_str().unwrap()))
            .await;
        if o["code"]["coding"][0]["code"] == "718-7" {
            earlier = Some(o);
        }
    }
    let earlier = earlier.unwrap();
    assert_eq!(earlier["status"], "final");
    assert_ne!(
        earlier["valueQuantity"]["value"],
        current["valueQuantity"]["value"]
    );
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn hl7_results_are_readable_as_fhir() {
    let h = harness().await;
    for n in 0..4 {
        h.ingest_oru(hl7::oru_message(5, n)).await;
    }
    let (_, reports, observations) = h.counts().await;
    let all = h.read("/fhir/r4/DiagnosticReport?_count=100").await;
    assert_eq!(all["total"], reports);
    let obs = h.read("/fhir/r4/Observation?_count=0").await;
    // Current results only: the correction supersedes one haemoglobin.
    assert_eq!(obs["total"], observations - 1);
    assert!(obs.get("entry").is_none());

    // HL7's LN is LOINC.
    let cbc = h
        .read("/fhir/r4/DiagnosticReport?code=http://loinc.org|58410-2")
        .await;
    assert_eq!(cbc["total"], 2);
    for r in matches(&cbc) {
        assert_eq!(r["code"]["coding"][0]["system"], "http://loinc.org");
        let o = h
            .read(&format!(
                "/fhir/r4/{}",
                r["result"][0]["reference"].as_str().unwrap()
            ))
            .await;
        assert_eq!(o["code"]["coding"][0]["system"], "http://loinc.org");
        assert!(o["valueQuantity"]["value"].is_number(), "{o}");
        // HL7 times have no zone: written as UTC.
        assert!(o["effectiveDateTime"].as_str().unwrap().ends_with('Z'));
    }
    let statuses: BTreeSet<String> = matches(&cbc)
        .iter()
        .map(|r| r["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses, ["corrected", "final"].map(String::from).into());

    // The radiology report's text.
    let rad = matches(&all)
        .into_iter()
        .find(|r| r.get("conclusion").is_some())
        .expect("a report with text");
    assert!(
        rad["identifier"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["type"]["coding"][0]["code"] == "ACSN")
    );
    let patient = h
        .read(&format!(
            "/fhir/r4/{}",
            rad["subject"]["reference"].as_str().unwrap()
        ))
        .await;
    assert_eq!(patient["identifier"][0]["system"], "HOSP");
    let id = patient["identifier"][0]["value"].as_str().unwrap();
    let by_identifier = h
        .read(&format!(
            "/fhir/r4/DiagnosticReport?patient:identifier=HOSP%7C{id}"
        ))
        .await;
    assert!(by_identifier["total"].as_i64().unwrap() >= 1);
}

#[tokio::test]
async fn a_patient_scoped_principal_sees_only_its_patient() {
    let h0 = harness().await;
    let a = h0.post("/fhir/r4", fx::complete_blood_count(9, 0)).await;
    assert_eq!(a.status, StatusCode::OK);
    // Two patients' results in one archive; the policy allows only the
    // first's.
    let first: Value = serde_json::from_slice(&fx::complete_blood_count(9, 0)).unwrap();
    let first_id = resource_of(&first, "Patient")[0]["identifier"][0]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    let h = Harness {
        app: router(AppState::with_policy(
            h0.archive.clone(),
            StudyIndex::open(&h0._dir.path().join("index2")).unwrap(),
            HttpConfig {
                public_base_url: BASE.into(),
                ..HttpConfig::default()
            },
            Arc::new(OnePatient(first_id.clone())),
        )),
        archive: h0.archive.clone(),
        token: h0.token.clone(),
        _dir: tempfile::tempdir().unwrap(),
    };
    let a = h.post("/fhir/r4", fx::complete_blood_count(9, 1)).await;
    assert_eq!(
        a.status,
        StatusCode::FORBIDDEN,
        "storing for another patient"
    );
    assert_eq!(a.json()["issue"][0]["code"], "forbidden");
    let a = h0.post("/fhir/r4", fx::complete_blood_count(9, 1)).await;
    assert_eq!(a.status, StatusCode::OK);
    let other = a.json()["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["location"].as_str().unwrap().to_owned())
        .find(|l| l.starts_with("DiagnosticReport/"))
        .unwrap();

    let everything = h0.read("/fhir/r4/DiagnosticReport").await;
    assert_eq!(everything["total"], 2);
    let mine = h.read("/fhir/r4/DiagnosticReport").await;
    assert_eq!(mine["total"], 1);
    assert_eq!(
        matches(&mine)[0]["subject"]["identifier"]["value"],
        first_id.as_str()
    );
    let obs = h.read("/fhir/r4/Observation?_count=100").await;
    assert_eq!(obs["total"], 6);
    let a = h.get(&format!("/fhir/r4/{other}")).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.json()["resourceType"], "OperationOutcome");
}

#[tokio::test]
async fn the_capability_statement_names_what_is_supported() {
    let h = harness().await;
    let c = h.read("/fhir/r4/metadata").await;
    assert_eq!(c["resourceType"], "CapabilityStatement");
    assert_eq!(c["fhirVersion"], "4.0.1");
    assert_eq!(c["implementation"]["url"], format!("{BASE}/fhir/r4"));
    let types: Vec<&str> = c["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["DiagnosticReport", "Observation", "Patient"]);
    // JSON negotiation: _format and plain JSON are fine.
    let a = h.get("/fhir/r4/metadata?_format=json").await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn a_radiology_report_keeps_its_text_accession_and_study() {
    let h = harness().await;
    let mut bundle: Value = serde_json::from_slice(&fx::radiology_report(4, 2)).unwrap();
    bundle["type"] = json!("batch");
    let uid = "1.2.826.0.1.3680043.8.498.12345";
    let sent = resource_of(&bundle, "DiagnosticReport")[0].clone();
    let last = bundle["entry"].as_array().unwrap().len() - 1;
    bundle["entry"][last]["resource"]["imagingStudy"] =
        json!([{ "identifier": { "system": "urn:dicom:uid", "value": format!("urn:oid:{uid}") } }]);
    let a = h.post("/fhir/r4", bundle.to_string()).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json());
    let answer = a.json();
    assert_eq!(answer["type"], "batch-response");
    let location = entries(&answer)
        .iter()
        .map(|e| e["response"]["location"].as_str().unwrap().to_owned())
        .find(|l| l.starts_with("DiagnosticReport/"))
        .unwrap();
    let report = h.read(&format!("/fhir/r4/{location}")).await;
    assert_eq!(report["conclusion"], {
        use base64::Engine;
        let text = base64::engine::general_purpose::STANDARD
            .decode(sent["presentedForm"][0]["data"].as_str().unwrap())
            .unwrap();
        json!(String::from_utf8(text).unwrap())
    });
    assert_eq!(
        report["presentedForm"][0]["data"],
        sent["presentedForm"][0]["data"]
    );
    let accession = report["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"]["coding"][0]["code"] == "ACSN")
        .unwrap();
    assert_eq!(accession["value"], sent["identifier"][0]["value"]);
    assert_eq!(
        report["imagingStudy"][0]["identifier"]["value"],
        format!("urn:oid:{uid}")
    );
    assert!(report.get("result").is_none());
    // The study's reports (the JSON API) list it: one model.
    let study = h.get(&format!("/api/studies/{uid}/reports")).await;
    assert_eq!(study.status, StatusCode::OK);
    assert_eq!(study.json()["reports"].as_array().unwrap().len(), 1);
}
