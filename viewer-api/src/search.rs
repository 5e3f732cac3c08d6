//! `GET /api/search`: full-text search over studies, reports and lab
//! panels (the search index), with filters for patient, date range,
//! modality and kind. A patient-scoped caller only ever sees its own
//! patients' records.

use axum::Json;
use axum::extract::Extension;
use axum::extract::{RawQuery, State};
use pacs_indexer::{DocKind, TextSearch};
use serde_json::{Value, json};

use crate::auth::{Principal, Scope};
use crate::error::ApiError;
use crate::state::AppState;

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;

/// `YYYYMMDD` from `YYYYMMDD` or `YYYY-MM-DD`; the error names `name`.
pub fn date_param(name: &str, value: &str) -> Result<String, String> {
    let digits: String = value.trim().chars().filter(|c| *c != '-').collect();
    let valid = digits.len() == 8 && digits.bytes().all(|b| b.is_ascii_digit()) && {
        let year: u32 = digits[..4].parse().unwrap_or(0);
        let month: u32 = digits[4..6].parse().unwrap_or(0);
        let day: u32 = digits[6..].parse().unwrap_or(0);
        let leap =
            year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400));
        let days = match month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if leap => 29,
            2 => 28,
            _ => 0,
        };
        (1..=days).contains(&day)
    };
    if !valid {
        return Err(format!(
            "{name}={value:?}: expected a date as YYYY-MM-DD or YYYYMMDD"
        ));
    }
    Ok(digits)
}

fn date(name: &str, value: &str) -> Result<String, ApiError> {
    date_param(name, value).map_err(ApiError::BadRequest)
}

fn number(name: &str, value: &str) -> Result<usize, ApiError> {
    value
        .trim()
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("{name}={value:?}: expected a whole number")))
}

/// Read the query parameters.
fn parse(raw: Option<&str>) -> Result<TextSearch, ApiError> {
    let mut search = TextSearch {
        limit: DEFAULT_LIMIT,
        ..TextSearch::default()
    };
    for (name, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match name.as_ref() {
            "q" => search.q = value.into_owned(),
            "patient" => search.patient_ids = Some(vec![value.into_owned()]),
            "from" => search.date_from = Some(date("from", &value)?),
            "to" => search.date_to = Some(date("to", &value)?),
            "modality" => search.modality = Some(value.trim().to_uppercase()),
            "kind" => {
                for k in value.split(',').map(str::trim).filter(|k| !k.is_empty()) {
                    let kind = DocKind::parse(k).ok_or_else(|| {
                        ApiError::BadRequest(format!("kind={k:?}: expected study, report or lab"))
                    })?;
                    if !search.kinds.contains(&kind) {
                        search.kinds.push(kind);
                    }
                }
            }
            "limit" => search.limit = number("limit", &value)?.clamp(1, MAX_LIMIT),
            "offset" => search.offset = number("offset", &value)?,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "{other:?} is not a search parameter (q, patient, from, to, modality, kind, limit, offset)"
                )));
            }
        }
    }
    if search.q.chars().count() > pacs_indexer::text::MAX_QUERY_CHARS {
        return Err(ApiError::BadRequest(format!(
            "q is longer than {} characters",
            pacs_indexer::text::MAX_QUERY_CHARS
        )));
    }
    if let (Some(from), Some(to)) = (&search.date_from, &search.date_to)
        && from > to
    {
        return Err(ApiError::BadRequest(format!(
            "from={from} is after to={to}"
        )));
    }
    Ok(search)
}

/// `GET /api/search?q=..&patient=..&from=..&to=..&modality=..&kind=..`.
pub async fn search(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let mut search = parse(raw.as_deref())?;
    if let Scope::Patients(allowed) = state.policy().scope(&who) {
        search.patient_ids = Some(match search.patient_ids.take() {
            Some(wanted) => wanted.into_iter().filter(|p| allowed.contains(p)).collect(),
            None => allowed,
        });
    }
    let index = state.index().clone();
    let query = search.clone();
    let page = tokio::task::spawn_blocking(move || index.search_text(&query))
        .await
        .map_err(|e| ApiError::Internal(format!("search task: {e}")))??;
    Ok(Json(json!({
        "q": search.q,
        "total": page.total,
        "offset": search.offset,
        "limit": search.limit,
        "hits": page.hits,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_read_and_bad_ones_refused() {
        let s = parse(Some(
            "q=pneumothorax%20right&patient=P1&from=2024-01-01&to=20241231&modality=ct&kind=report,lab&limit=5000&offset=10",
        ))
        .unwrap();
        assert_eq!(s.q, "pneumothorax right");
        assert_eq!(s.patient_ids, Some(vec!["P1".to_owned()]));
        assert_eq!(s.date_from.as_deref(), Some("20240101"));
        assert_eq!(s.date_to.as_deref(), Some("20241231"));
        assert_eq!(s.modality.as_deref(), Some("CT"));
        assert_eq!(s.kinds, [DocKind::Report, DocKind::Lab]);
        assert_eq!((s.limit, s.offset), (MAX_LIMIT, 10));
        for bad in [
            "from=2024-13-01",
            "from=2023-02-29",
            "to=yesterday",
            "kind=image",
            "limit=-1",
            "sort=date",
            "from=20240201&to=20240101",
        ] {
            assert!(
                matches!(parse(Some(bad)), Err(ApiError::BadRequest(_))),
                "{bad}"
            );
        }
        let long = format!("q={}", "a".repeat(pacs_indexer::text::MAX_QUERY_CHARS + 1));
        assert!(parse(Some(&long)).is_err());
    }
}
