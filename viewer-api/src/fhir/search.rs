//! FHIR search parameters into the catalog's plain conditions, and
//! `searchset` Bundles with paging links.
//!
//! - `patient` / `subject`: `Patient/{id}`, `{id}` or an absolute URL
//!   ending in `Patient/{id}`; `patient.identifier` / `patient:identifier`:
//!   `system|value` or `value`.
//! - `code`: `system|code`, `|code` (no system) or `code` (any system);
//!   LOINC matches as `http://loinc.org` and as HL7's `LN`.
//! - `date`: prefixes `eq` (default), `ne`, `gt`, `lt`, `ge`, `le`, `sa`,
//!   `eb` (and DSTU1's `>=`, `<=`, `>`, `<`) at year, month, day or second precision; repeated `date`
//!   parameters all apply. The value's range `[from, until)` is compared
//!   with the stored time (as an instant, its wall-clock digits; a zone in
//!   the parameter is not applied).
//! - `status`: FHIR codes, matched through the stored HL7 letters.
//! - Comma-separated values of one parameter are alternatives.
//! - `_count` (default 50, at most 1000; 0 gives only `total`), `_offset`.
//! - Unknown parameters are ignored, left out of the `self` link and named
//!   in an OperationOutcome entry (search mode `outcome`); with `Prefer:
//!   handling=strict` they are a 400.

use pacs_archive::catalog::fhir::{
    CodeCondition, Page, PatientSearch, ResultSearch, TimeCondition,
};
use serde_json::{Value, json};

use super::error::{FhirError, operation_outcome};
use super::resources::{
    observation_status_to_fhir, parse_fhir_time, report_status_to_fhir, stored_statuses,
    system_names,
};

const DEFAULT_COUNT: i64 = 50;
const MAX_COUNT: i64 = 1000;

/// The resource types that can be searched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchType {
    DiagnosticReport,
    Observation,
    Patient,
}

impl SearchType {
    pub fn name(self) -> &'static str {
        match self {
            SearchType::DiagnosticReport => "DiagnosticReport",
            SearchType::Observation => "Observation",
            SearchType::Patient => "Patient",
        }
    }

    /// The parameters of this type (besides `_count`, `_offset`,
    /// `_format`).
    pub fn parameters(self) -> &'static [&'static str] {
        match self {
            SearchType::DiagnosticReport => &[
                "_id",
                "patient",
                "subject",
                "patient.identifier",
                "patient:identifier",
                "code",
                "date",
                "status",
            ],
            SearchType::Observation => &[
                "_id",
                "patient",
                "subject",
                "patient.identifier",
                "patient:identifier",
                "code",
                "date",
                "status",
            ],
            SearchType::Patient => &["_id", "identifier"],
        }
    }
}

/// A parsed search.
#[derive(Debug, Clone)]
pub enum Query {
    Results(ResultSearch),
    Patients(PatientSearch),
}

/// A search request as understood.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub kind: SearchType,
    pub query: Query,
    /// The parameters used, as given, for the `self` link.
    pub used: Vec<(String, String)>,
    /// The names of the parameters ignored.
    pub ignored: Vec<String>,
    pub count: i64,
    pub offset: i64,
}

fn bad(why: String) -> FhirError {
    FhirError::BadRequest(why)
}

fn alternatives(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|v| !v.is_empty())
}

/// A patient reference's row id; `-1` (no patient) when it is not one of
/// ours.
fn patient_pk(reference: &str) -> i64 {
    let r = reference.trim_end_matches('/');
    let id = match r.rfind("Patient/") {
        Some(i) => &r[i + "Patient/".len()..],
        None => r,
    };
    id.parse().unwrap_or(-1)
}

/// `system|value` or `value` as (issuer, Patient ID).
fn identifier(value: &str) -> (Option<String>, String) {
    match value.split_once('|') {
        Some((system, v)) if !system.is_empty() => (Some(system.to_owned()), v.to_owned()),
        Some((_, v)) => (None, v.to_owned()),
        None => (None, value.to_owned()),
    }
}

fn code(value: &str) -> CodeCondition {
    match value.split_once('|') {
        Some(("", c)) => CodeCondition {
            code: c.to_owned(),
            systems: Some(Vec::new()),
        },
        Some((s, c)) => CodeCondition {
            code: c.to_owned(),
            systems: Some(system_names(s)),
        },
        None => CodeCondition {
            code: value.to_owned(),
            systems: None,
        },
    }
}

/// `[from, until)` of a date parameter's value, as `YYYYMMDDHHMMSS`.
fn range(value: &str) -> Result<(String, String), FhirError> {
    use time::{Date, Month, PrimitiveDateTime, Time};
    let t = parse_fhir_time(value)
        .ok_or_else(|| bad(format!("date {value:?} is not a FHIR date or dateTime")))?;
    let d = &t.digits;
    let n = |from: usize, len: usize| d[from..from + len].parse::<u32>().unwrap_or(0);
    let invalid = || bad(format!("date {value:?} is not a calendar date"));
    let month = |m: u32| Month::try_from(m as u8).map_err(|_| invalid());
    let date = |y: u32, m: u32, day: u32| {
        Date::from_calendar_date(y as i32, month(m)?, day as u8).map_err(|_| invalid())
    };
    let fmt = |dt: PrimitiveDateTime| {
        format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}",
            dt.year(),
            dt.month() as u8,
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second()
        )
    };
    let midnight = |d: Date| PrimitiveDateTime::new(d, Time::MIDNIGHT);
    let (from, until) = match d.len() {
        4 => {
            let y = n(0, 4);
            (midnight(date(y, 1, 1)?), midnight(date(y + 1, 1, 1)?))
        }
        6 => {
            let (y, m) = (n(0, 4), n(4, 2));
            let next = if m == 12 {
                date(y + 1, 1, 1)?
            } else {
                date(y, m + 1, 1)?
            };
            (midnight(date(y, m, 1)?), midnight(next))
        }
        8 => {
            let day = date(n(0, 4), n(4, 2), n(6, 2))?;
            let next = day.next_day().ok_or_else(invalid)?;
            (midnight(day), midnight(next))
        }
        _ => {
            let day = date(n(0, 4), n(4, 2), n(6, 2))?;
            let at = Time::from_hms(n(8, 2) as u8, n(10, 2) as u8, n(12, 2) as u8)
                .map_err(|_| invalid())?;
            let from = PrimitiveDateTime::new(day, at);
            (from, from + time::Duration::seconds(1))
        }
    };
    Ok((fmt(from), fmt(until)))
}

fn date_condition(value: &str) -> Result<TimeCondition, FhirError> {
    // The comparison operators of DSTU1 (still sent by some clients, e.g.
    // fhirclient's `$gte`) mean the prefixes.
    let operators = [(">=", "ge"), ("<=", "le"), (">", "gt"), ("<", "lt")];
    let (prefix, rest) = match operators.iter().find(|(op, _)| value.starts_with(op)) {
        Some((op, prefix)) => (*prefix, &value[op.len()..]),
        None => match value.get(..2) {
            Some(p) if p.bytes().all(|b| b.is_ascii_lowercase()) => (p, &value[2..]),
            _ => ("eq", value),
        },
    };
    let (from, until) = range(rest)?;
    Ok(match prefix {
        "eq" => TimeCondition::Within { from, until },
        "ne" => TimeCondition::Outside { from, until },
        "gt" | "sa" => TimeCondition::AtOrAfter(until),
        "ge" => TimeCondition::AtOrAfter(from),
        "lt" | "eb" => TimeCondition::Before(from),
        "le" => TimeCondition::Before(until),
        other => {
            return Err(bad(format!(
                "date prefix {other:?} is not supported (eq, ne, gt, ge, lt, le, sa, eb are)"
            )));
        }
    })
}

/// Parse the query string of a search on `kind`. `strict`: `Prefer:
/// handling=strict` was sent.
pub fn parse(
    kind: SearchType,
    pairs: &[(String, String)],
    strict: bool,
    scope: Option<Vec<String>>,
) -> Result<SearchRequest, FhirError> {
    let mut results = ResultSearch {
        scope: scope.clone(),
        current_only: kind == SearchType::Observation,
        ..ResultSearch::default()
    };
    let mut patients = PatientSearch {
        scope,
        ..PatientSearch::default()
    };
    let (mut count, mut offset) = (DEFAULT_COUNT, 0i64);
    let mut used = Vec::new();
    let mut ignored = Vec::new();
    let mut statuses_given = false;
    for (name, value) in pairs {
        let value = value.trim();
        match name.as_str() {
            "_format" => continue,
            "_count" => {
                count = value
                    .parse::<i64>()
                    .ok()
                    .filter(|c| *c >= 0)
                    .ok_or_else(|| bad(format!("_count={value:?}: expected a count")))?
                    .min(MAX_COUNT);
                continue;
            }
            "_offset" => {
                offset = value
                    .parse::<i64>()
                    .ok()
                    .filter(|c| *c >= 0)
                    .ok_or_else(|| bad(format!("_offset={value:?}: expected an offset")))?;
                continue;
            }
            _ => {}
        }
        if !kind.parameters().contains(&name.as_str()) {
            if strict {
                return Err(bad(format!(
                    "search parameter {name:?} is not supported on {} (supported: {})",
                    kind.name(),
                    kind.parameters().join(", ")
                )));
            }
            ignored.push(name.clone());
            continue;
        }
        if value.is_empty() {
            continue;
        }
        used.push((name.clone(), value.to_owned()));
        match (kind, name.as_str()) {
            (SearchType::Patient, "_id") => {
                patients
                    .ids
                    .extend(alternatives(value).map(|v| v.parse().unwrap_or(-1)));
            }
            (SearchType::Patient, "identifier") => {
                patients
                    .identifiers
                    .extend(alternatives(value).map(identifier));
            }
            (_, "_id") => {
                results
                    .ids
                    .extend(alternatives(value).map(|v| v.parse().unwrap_or(-1)));
                results.current_only = false;
            }
            (_, "patient" | "subject") => {
                results.patients.extend(alternatives(value).map(patient_pk));
            }
            (_, "patient.identifier" | "patient:identifier") => {
                results
                    .patient_identifiers
                    .extend(alternatives(value).map(identifier));
            }
            (_, "code") => results.codes.extend(alternatives(value).map(code)),
            (_, "date") => results.times.push(date_condition(value)?),
            (_, "status") => {
                statuses_given = true;
                let to_fhir = if kind == SearchType::Observation {
                    observation_status_to_fhir
                } else {
                    report_status_to_fhir
                };
                for s in alternatives(value) {
                    results.statuses.extend(stored_statuses(s, to_fhir));
                }
            }
            _ => {}
        }
    }
    if statuses_given && results.statuses.is_empty() {
        // Only statuses nothing is stored under: no match.
        results.statuses.push(String::new());
    }
    results.limit = count;
    results.offset = offset;
    patients.limit = count;
    patients.offset = offset;
    Ok(SearchRequest {
        kind,
        query: if kind == SearchType::Patient {
            Query::Patients(patients)
        } else {
            Query::Results(results)
        },
        used,
        ignored,
        count,
        offset,
    })
}

fn link(fhir_base: &str, req: &SearchRequest, offset: i64) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &req.used {
        q.append_pair(k, v);
    }
    q.append_pair("_count", &req.count.to_string());
    if offset > 0 {
        q.append_pair("_offset", &offset.to_string());
    }
    format!("{fhir_base}/{}?{}", req.kind.name(), q.finish())
}

/// The `searchset` Bundle of one page; `resources` are
/// `(type, id, resource)`.
pub fn bundle<T>(
    fhir_base: &str,
    req: &SearchRequest,
    page: &Page<T>,
    resources: Vec<(String, Value)>,
) -> Value {
    let mut links = vec![json!({ "relation": "self", "url": link(fhir_base, req, req.offset) })];
    if req.count > 0 && req.offset + req.count < page.total {
        links.push(
            json!({ "relation": "next", "url": link(fhir_base, req, req.offset + req.count) }),
        );
    }
    if req.offset > 0 {
        let previous = (req.offset - req.count.max(1)).max(0);
        links.push(json!({ "relation": "previous", "url": link(fhir_base, req, previous) }));
    }
    let mut entries: Vec<Value> = resources
        .into_iter()
        .map(|(path, resource)| {
            json!({
                "fullUrl": format!("{fhir_base}/{path}"),
                "resource": resource,
                "search": { "mode": "match" },
            })
        })
        .collect();
    if !req.ignored.is_empty() {
        entries.push(json!({
            "resource": operation_outcome(
                "warning",
                "not-supported",
                &format!("search parameters ignored: {}", req.ignored.join(", ")),
            ),
            "search": { "mode": "outcome" },
        }));
    }
    let mut b = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": page.total,
        "link": links,
    });
    if !entries.is_empty() {
        b["entry"] = json!(entries);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(v: &str) -> TimeCondition {
        date_condition(v).unwrap()
    }

    #[test]
    fn date_prefixes_at_every_precision() {
        assert_eq!(
            cond("2024"),
            TimeCondition::Within {
                from: "20240101000000".into(),
                until: "20250101000000".into()
            }
        );
        assert_eq!(
            cond("ge2024-12"),
            TimeCondition::AtOrAfter("20241201000000".into())
        );
        assert_eq!(
            cond("gt2024-12"),
            TimeCondition::AtOrAfter("20250101000000".into())
        );
        assert_eq!(
            cond("lt2024-02-29"),
            TimeCondition::Before("20240229000000".into())
        );
        assert_eq!(
            cond("le2024-02-29"),
            TimeCondition::Before("20240301000000".into())
        );
        assert_eq!(
            cond("eq2024-01-15T10:30:00Z"),
            TimeCondition::Within {
                from: "20240115103000".into(),
                until: "20240115103001".into()
            }
        );
        assert!(matches!(cond("ne2024"), TimeCondition::Outside { .. }));
        assert_eq!(cond(">=2024-12"), cond("ge2024-12"));
        assert_eq!(cond("<2024-12"), cond("lt2024-12"));
        assert!(date_condition("ap2024").is_err());
        assert!(date_condition("2024-13").is_err());
        assert!(date_condition("2023-02-29").is_err());
        assert!(date_condition("yesterday").is_err());
    }

    #[test]
    fn code_forms_and_loinc_names() {
        let c = code("http://loinc.org|718-7");
        assert_eq!(c.code, "718-7");
        assert!(c.systems.as_ref().unwrap().contains(&"LN".to_string()));
        let c = code("LN|718-7");
        assert!(
            c.systems
                .as_ref()
                .unwrap()
                .contains(&"http://loinc.org".to_string())
        );
        assert_eq!(code("|718-7").systems, Some(vec![]));
        assert_eq!(code("718-7").systems, None);
    }

    #[test]
    fn patient_references() {
        assert_eq!(patient_pk("Patient/12"), 12);
        assert_eq!(patient_pk("12"), 12);
        assert_eq!(patient_pk("https://x.org/fhir/r4/Patient/7"), 7);
        assert_eq!(patient_pk("Patient/abc"), -1);
    }

    #[test]
    fn unknown_parameters_are_ignored_or_refused() {
        let pairs = vec![
            ("code".to_string(), "718-7".to_string()),
            ("_sort".to_string(), "date".to_string()),
        ];
        let r = parse(SearchType::Observation, &pairs, false, None).unwrap();
        assert_eq!(r.ignored, vec!["_sort".to_string()]);
        assert_eq!(r.used.len(), 1);
        assert!(parse(SearchType::Observation, &pairs, true, None).is_err());
    }
}
