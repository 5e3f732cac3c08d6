//! The FHIR handlers. Writes are mapped whole before anything is stored,
//! then recorded through `Archive::ingest_message` in one catalog
//! transaction; reads and searches come from the catalog. The
//! authorisation layer has already checked the route's action; reads
//! check the patient of what they found as the target, searches apply
//! the principal's scope.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::Extension;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use pacs_archive::IngestSource;
use pacs_archive::results::{MessageReceipt, ResultPatient};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::error::{FhirError, fhir_json};
use super::resources::{
    self, EntryTarget, Posted, observation_resource, patient_resource, report_resource,
};
use super::search::{self, Query, SearchType};
use crate::auth::{Action, AuditTarget, Principal, Scope, Target};
use crate::error::ApiError;
use crate::state::AppState;

fn fhir_base(state: &AppState) -> String {
    format!("{}/fhir/r4", state.base_url())
}

fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn is_json_type(media: &str) -> bool {
    matches!(
        media,
        "application/fhir+json" | "application/json" | "application/json+fhir" | "json"
    )
}

/// The answer must be FHIR JSON: `_format` (json, or a JSON media type)
/// wins over `Accept`; an `Accept` without JSON, `*/*` or `application/*`
/// is a 406.
fn negotiate(headers: &HeaderMap, pairs: &[(String, String)]) -> Result<(), FhirError> {
    if let Some((_, format)) = pairs.iter().find(|(k, _)| k == "_format") {
        let media = format
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        return if is_json_type(&media) {
            Ok(())
        } else {
            Err(ApiError::NotAcceptable(format!(
                "_format={format}: this server answers FHIR JSON only"
            ))
            .into())
        };
    }
    let accept: Vec<String> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|m| {
            m.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|m| !m.is_empty())
        .collect();
    if accept.is_empty()
        || accept
            .iter()
            .any(|m| is_json_type(m) || m == "*/*" || m == "application/*")
    {
        Ok(())
    } else {
        Err(ApiError::NotAcceptable(format!(
            "Accept: {}: this server answers application/fhir+json (or application/json)",
            accept.join(", ")
        ))
        .into())
    }
}

fn check_content_type(headers: &HeaderMap) -> Result<(), FhirError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if is_json_type(&media) && media != "json" {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {ct:?}: send application/fhir+json"
        ))
        .into())
    }
}

async fn read_body(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Bytes, FhirError> {
    let limit = state.config().max_fhir_bytes;
    let too_large = || {
        FhirError::from(ApiError::PayloadTooLarge(format!(
            "this archive takes FHIR requests of at most {limit} bytes"
        )))
    };
    if headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|len| len > limit)
    {
        return Err(too_large());
    }
    axum::body::to_bytes(body, usize::try_from(limit).unwrap_or(usize::MAX))
        .await
        .map_err(|e| {
            if std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            {
                too_large()
            } else {
                ApiError::BadRequest(format!("the body could not be read whole: {e}")).into()
            }
        })
}

/// The control id a resource's `identifier` gives (`system|value`, or
/// `value`), if it has one.
fn identifier_key(resource: &Value) -> Option<String> {
    let id = match resource.get("identifier")? {
        Value::Array(ids) => ids
            .iter()
            .find(|i| i.get("value").and_then(Value::as_str).is_some())?,
        other => other,
    };
    let value = id.get("value")?.as_str()?.trim();
    if value.is_empty() {
        return None;
    }
    Some(match id.get("system").and_then(Value::as_str) {
        Some(system) if !system.trim().is_empty() => format!("{}|{value}", system.trim()),
        _ => value.to_owned(),
    })
}

/// Parse the body off the async runtime; its SHA-256 along.
async fn parse_json(body: Bytes) -> Result<(Value, String), FhirError> {
    pacs_archive::on_rayon(move || {
        let sha = hex::encode(Sha256::digest(&body));
        serde_json::from_slice::<Value>(&body)
            .map(|v| (v, sha))
            .map_err(|e| FhirError::Invalid(format!("the body is not JSON: {e}")))
    })
    .await
}

fn expect_type(resource: &Value, expected: &str) -> Result<(), FhirError> {
    match resource.get("resourceType").and_then(Value::as_str) {
        Some(t) if t == expected => Ok(()),
        Some(t) => Err(FhirError::Invalid(format!(
            "resourceType is {t:?}; this endpoint takes a {expected}"
        ))),
        None => Err(FhirError::Invalid(format!(
            "the body is not a FHIR resource (no resourceType); this endpoint takes a {expected}"
        ))),
    }
}

/// The posted resources: a Bundle's entries, or the DiagnosticReport.
fn posted_resources<'a>(
    resource: &'a Value,
    expected: &str,
) -> Result<Vec<(&'a Value, Option<String>)>, FhirError> {
    if expected == "Bundle" {
        resources::bundle_entries(resource)
    } else {
        Ok(vec![(resource, None)])
    }
}

/// The archive's patients that posted reports reference as
/// `Patient/{id}`.
async fn archive_patients(
    state: &AppState,
    refs: Vec<i64>,
) -> Result<HashMap<i64, ResultPatient>, FhirError> {
    let mut found = HashMap::new();
    for pk in refs {
        if let Some(p) = state.archive().catalog().fhir_patient(pk).await?
            && let Some(id) = p.patient_id
        {
            found.insert(
                pk,
                ResultPatient {
                    id,
                    issuer: p.issuer,
                    name: p.name,
                    birth_date: p.birth_date,
                    sex: p.sex,
                },
            );
        }
    }
    Ok(found)
}

/// What a stored message became, per posted entry: `Type/id`.
struct Recorded {
    /// A batch (not a transaction) Bundle.
    batch: bool,
    created: bool,
    locations: Vec<String>,
    reports: Vec<pacs_archive::catalog::fhir::ReportRecord>,
}

/// Map, authorise and record a posted Bundle (`expected` = "Bundle") or
/// DiagnosticReport.
async fn record(
    state: &AppState,
    principal: &Principal,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    body: Body,
    expected: &str,
) -> Result<Recorded, FhirError> {
    check_content_type(headers)?;
    let raw = read_body(state, headers, body).await?;
    let (resource, sha) = parse_json(raw.clone()).await?;
    expect_type(&resource, expected)?;
    let control_id = identifier_key(&resource).unwrap_or(sha);
    let batch = resource.get("type").and_then(Value::as_str) == Some("batch");
    let refs = {
        let posted = posted_resources(&resource, expected)?;
        let reports: Vec<&Value> = posted.iter().map(|(r, _)| *r).collect();
        resources::archive_patient_refs(&reports)
    };
    let known = archive_patients(state, refs).await?;
    let sender = format!("fhir:{}", principal.name);
    let kind = expected.to_owned();
    // Mapping walks the whole body: off the async runtime too.
    let Posted { message, entries } = pacs_archive::on_rayon(move || {
        let posted = posted_resources(&resource, &kind)?;
        resources::message_from(&posted, &known, sender, control_id, &kind)
    })
    .await?;
    // Reports are numbered through the groups: where each group starts.
    let first_report_of_group: Vec<usize> = message
        .patients
        .iter()
        .scan(0, |n, g| {
            let first = *n;
            *n += g.reports.len();
            Some(first)
        })
        .collect();
    for group in &message.patients {
        state
            .policy()
            .decide(
                principal,
                Action::Store,
                &Target {
                    study: None,
                    patient: Some(group.patient.id.clone()),
                },
            )
            .map_err(ApiError::Forbidden)?;
    }
    let source = IngestSource::Other(format!(
        "fhir:{}",
        peer.map(|p| p.to_string())
            .unwrap_or_else(|| "unknown".into())
    ));
    let (created, message_id) = match state.archive().ingest_message(raw, message, source).await {
        MessageReceipt::Stored { message_id, .. } => (true, message_id),
        MessageReceipt::Duplicate { message_id } => (false, message_id),
        MessageReceipt::Refused(r) => return Err(r.into()),
    };
    let reports = state
        .archive()
        .catalog()
        .fhir_message_reports(message_id)
        .await?;
    let internal = || {
        FhirError::from(ApiError::Internal(format!(
            "message {message_id}: its stored reports do not match the request"
        )))
    };
    let mut locations = Vec::new();
    for target in entries {
        locations.push(match target {
            EntryTarget::Report(n) => {
                format!(
                    "DiagnosticReport/{}",
                    reports.get(n).ok_or_else(internal)?.report.id
                )
            }
            EntryTarget::Observation(n, m) => format!(
                "Observation/{}",
                reports
                    .get(n)
                    .and_then(|r| r.result_ids.get(m))
                    .ok_or_else(internal)?
            ),
            EntryTarget::Patient(g) => {
                let first = *first_report_of_group.get(g).ok_or_else(internal)?;
                format!(
                    "Patient/{}",
                    reports.get(first).ok_or_else(internal)?.patient_pk
                )
            }
        });
    }
    Ok(Recorded {
        batch,
        created,
        locations,
        reports,
    })
}

/// `POST /fhir/r4`: a transaction or batch Bundle of Patient,
/// DiagnosticReport and Observation entries, recorded as one message (all
/// or nothing, a batch too). Answered with a transaction-response (or
/// batch-response) Bundle.
pub async fn transaction(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, FhirError> {
    negotiate(&headers, &query_pairs(raw.as_deref()))?;
    let rec = record(
        &state,
        &principal,
        peer.map(|p| p.0.0),
        &headers,
        body,
        "Bundle",
    )
    .await?;
    let base = fhir_base(&state);
    let status = if rec.created { "201 Created" } else { "200 OK" };
    let entries: Vec<Value> = rec
        .locations
        .iter()
        .map(|l| {
            json!({
                "fullUrl": format!("{base}/{l}"),
                "response": { "status": status, "location": l },
            })
        })
        .collect();
    let kind = if rec.batch {
        "batch-response"
    } else {
        "transaction-response"
    };
    let bundle = json!({
        "resourceType": "Bundle",
        "type": kind,
        "entry": entries,
    });
    Ok(fhir_json(StatusCode::OK, &bundle))
}

/// `POST /fhir/r4/{type}`: a DiagnosticReport with its Observations
/// contained (or referenced as `#id`).
pub async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(kind): Path<String>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, FhirError> {
    match kind.as_str() {
        "DiagnosticReport" => {}
        "Observation" | "Patient" => {
            return Err(ApiError::MethodNotAllowed(format!(
                "{kind} resources are recorded as parts of a DiagnosticReport: POST the \
                 report (with its {kind} contained) or a transaction Bundle"
            ))
            .into());
        }
        other => return Err(unknown_type(other)),
    }
    negotiate(&headers, &query_pairs(raw.as_deref()))?;
    let rec = record(
        &state,
        &principal,
        peer.map(|p| p.0.0),
        &headers,
        body,
        "DiagnosticReport",
    )
    .await?;
    let report = rec.reports.first().ok_or_else(|| {
        FhirError::from(ApiError::Internal(
            "a recorded message without a report".into(),
        ))
    })?;
    let mut response = fhir_json(
        if rec.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        &report_resource(report),
    );
    let location = format!(
        "{}/DiagnosticReport/{}",
        fhir_base(&state),
        report.report.id
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v.clone());
        response.headers_mut().insert(header::CONTENT_LOCATION, v);
    }
    Ok(response)
}

fn unknown_type(kind: &str) -> FhirError {
    FhirError::UnknownType(format!(
        "resource type {kind:?} is not supported here (DiagnosticReport, Observation and \
         Patient are)"
    ))
}

fn not_found(kind: &str, id: &str) -> FhirError {
    FhirError::NotFound(format!("{kind}/{id} is not known"))
}

/// Reads check the patient of what they found.
fn may_read(
    state: &AppState,
    principal: &Principal,
    patient: Option<&str>,
) -> Result<(), FhirError> {
    state
        .policy()
        .decide(
            principal,
            Action::Read,
            &Target {
                study: None,
                patient: patient.map(str::to_owned),
            },
        )
        .map_err(|e| ApiError::Forbidden(e).into())
}

/// `GET /fhir/r4/{type}/{id}`.
pub async fn read(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((kind, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    if !matches!(
        kind.as_str(),
        "DiagnosticReport" | "Observation" | "Patient"
    ) {
        return Err(unknown_type(&kind));
    }
    negotiate(&headers, &query_pairs(raw.as_deref()))?;
    let Ok(pk) = id.parse::<i64>() else {
        return Err(not_found(&kind, &id));
    };
    let catalog = state.archive().catalog();
    let (resource, patient) = match kind.as_str() {
        "DiagnosticReport" => {
            let r = catalog
                .fhir_report(pk)
                .await?
                .ok_or_else(|| not_found(&kind, &id))?;
            may_read(&state, &principal, r.report.patient_id.as_deref())?;
            (report_resource(&r), r.report.patient_id.clone())
        }
        "Observation" => {
            let o = catalog
                .fhir_observation(pk)
                .await?
                .ok_or_else(|| not_found(&kind, &id))?;
            may_read(&state, &principal, o.patient_id.as_deref())?;
            (observation_resource(&o), o.patient_id.clone())
        }
        _ => {
            let p = catalog
                .fhir_patient(pk)
                .await?
                .ok_or_else(|| not_found(&kind, &id))?;
            may_read(&state, &principal, p.patient_id.as_deref())?;
            (patient_resource(&p), p.patient_id.clone())
        }
    };
    let mut response = fhir_json(StatusCode::OK, &resource);
    // The audit event names the patient the id turned out to belong to.
    response.extensions_mut().insert(AuditTarget(Target {
        study: None,
        patient,
    }));
    Ok(response)
}

/// `GET /fhir/r4/{type}?...`.
pub async fn search(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(kind): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    let kind = match kind.as_str() {
        "DiagnosticReport" => SearchType::DiagnosticReport,
        "Observation" => SearchType::Observation,
        "Patient" => SearchType::Patient,
        other => return Err(unknown_type(other)),
    };
    let pairs = query_pairs(raw.as_deref());
    negotiate(&headers, &pairs)?;
    let strict = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .any(|p| p.trim().eq_ignore_ascii_case("handling=strict"));
    let scope = match state.policy().scope(&principal) {
        Scope::All => None,
        Scope::Patients(ids) => Some(ids),
    };
    let req = search::parse(kind, &pairs, strict, scope)?;
    let catalog = state.archive().catalog();
    let base = fhir_base(&state);
    let bundle = match (&req.query, kind) {
        (Query::Results(s), SearchType::DiagnosticReport) => {
            let page = catalog.fhir_reports(s).await?;
            let resources = page
                .items
                .iter()
                .map(|r| {
                    (
                        format!("DiagnosticReport/{}", r.report.id),
                        report_resource(r),
                    )
                })
                .collect();
            search::bundle(&base, &req, &page, resources)
        }
        (Query::Results(s), _) => {
            let page = catalog.fhir_observations(s).await?;
            let resources = page
                .items
                .iter()
                .map(|o| {
                    (
                        format!("Observation/{}", o.observation.id),
                        observation_resource(o),
                    )
                })
                .collect();
            search::bundle(&base, &req, &page, resources)
        }
        (Query::Patients(s), _) => {
            let page = catalog.fhir_patients(s).await?;
            let resources = page
                .items
                .iter()
                .map(|p| (format!("Patient/{}", p.pk), patient_resource(p)))
                .collect();
            search::bundle(&base, &req, &page, resources)
        }
    };
    Ok(fhir_json(StatusCode::OK, &bundle))
}

/// Today (FHIR requires a date on a CapabilityStatement; this one is made
/// afresh for every request).
fn capability_date() -> String {
    let today = time::OffsetDateTime::now_utc().date();
    format!(
        "{:04}-{:02}-{:02}",
        today.year(),
        today.month() as u8,
        today.day()
    )
}

/// `GET /fhir/r4/metadata`: what this server does, as a
/// CapabilityStatement.
pub async fn metadata(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    negotiate(&headers, &query_pairs(raw.as_deref()))?;
    let search_params = |kind: SearchType| -> Vec<Value> {
        kind.parameters()
            .iter()
            .map(|name| {
                let kind = match *name {
                    "date" => "date",
                    "patient" | "subject" => "reference",
                    _ => "token",
                };
                json!({ "name": name, "type": kind })
            })
            .collect()
    };
    let resource = |kind: SearchType, create: bool| {
        let mut interactions = vec![json!({ "code": "read" }), json!({ "code": "search-type" })];
        if create {
            interactions.push(json!({ "code": "create" }));
        }
        json!({
            "type": kind.name(),
            "interaction": interactions,
            "searchParam": search_params(kind),
        })
    };
    let statement = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": capability_date(),
        "kind": "instance",
        "software": { "name": "pacs-lite", "version": env!("CARGO_PKG_VERSION") },
        "implementation": {
            "description": "pacs-lite lab results and reports",
            "url": fhir_base(&state),
        },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "security": {
                "description": "Authorization: Bearer <token issued by `pacs token issue`>"
            },
            "resource": [
                resource(SearchType::DiagnosticReport, true),
                resource(SearchType::Observation, false),
                resource(SearchType::Patient, false),
            ],
            "interaction": [{ "code": "transaction" }, { "code": "batch" }],
        }],
    });
    Ok(fhir_json(StatusCode::OK, &statement))
}
