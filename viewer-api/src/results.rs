//! JSON reads of reports and lab results: a study's reports, a patient's
//! results, and one test's history for a patient (for trend charts). The
//! routes pass the same authorisation layer as DICOMweb; the patient in the
//! path is the policy's target, so per-patient rules apply without code here.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::state::AppState;

fn params(raw: Option<&str>) -> HashMap<String, String> {
    form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// `GET /api/studies/{study}/reports`.
pub async fn study_reports(
    State(state): State<AppState>,
    Path(study): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let reports = state.archive().catalog().study_reports(&study).await?;
    Ok(Json(json!({ "study": study, "reports": reports })))
}

/// `GET /api/patients/{patient}/results[?issuer=..&all=true]`: the
/// patient's current results (corrected ones left out unless `all=true`).
pub async fn patient_results(
    State(state): State<AppState>,
    Path(patient): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let p = params(raw.as_deref());
    let all = match p.get("all").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "all={other:?}: expected true or false"
            )));
        }
    };
    let mut results = state
        .archive()
        .catalog()
        .patient_observations(&patient, p.get("issuer").map(String::as_str), None)
        .await?;
    if !all {
        results.retain(|o| o.superseded_by.is_none());
    }
    Ok(Json(json!({ "patient": patient, "results": results })))
}

/// `GET /api/patients/{patient}/results/{code}`: every value of one test
/// over time, corrections included and marked, oldest first.
pub async fn test_history(
    State(state): State<AppState>,
    Path((patient, code)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let p = params(raw.as_deref());
    let history = state
        .archive()
        .catalog()
        .patient_observations(&patient, p.get("issuer").map(String::as_str), Some(&code))
        .await?;
    let points: Vec<Value> = history
        .iter()
        .map(|o| {
            let v = &o.observation;
            json!({
                "id": o.id,
                "observed_at": v.observed_at,
                "value": v.value,
                "numeric_value": v.numeric_value,
                "units": v.units,
                "reference_range": v.reference_range,
                "abnormal_flags": v.abnormal_flags,
                "status": v.status,
                "superseded_by": o.superseded_by,
            })
        })
        .collect();
    let name = history
        .iter()
        .rev()
        .find_map(|o| o.observation.code.display.clone());
    Ok(Json(
        json!({ "patient": patient, "code": code, "name": name, "points": points }),
    ))
}
