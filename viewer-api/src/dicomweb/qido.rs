//! QIDO-RS (PS3.18 10.6): study, series and instance searches.
//!
//! Parameters are read into the archive's one query model
//! ([`pacs_archive::query::Query`]). Study searches go to the tantivy index
//! (falling back to the catalog for keys the index does not hold); series
//! and instance searches go to the catalog.

use std::collections::HashMap;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_dictionary_std::StandardDataDictionary;
use pacs_archive::query::{Attribute, Level, MatchKind, Matcher, Query};
use pacs_indexer::StudyDoc;
use serde_json::Value;

use super::json::{DicomJson, element_from_text, element_number, element_strings, tag_key};
use crate::auth::{Principal, Scope};
use crate::error::ApiError;
use crate::state::AppState;

const SPECIFIC_CHARACTER_SET: u32 = 0x0008_0005;
const INSTANCE_AVAILABILITY: u32 = 0x0008_0056;
const RETRIEVE_URL: u32 = 0x0008_1190;

/// What to return besides the required attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Include {
    /// Only the required attributes (and matched keys).
    Required,
    /// `includefield=all`.
    All,
    /// These tags.
    Tags(Vec<u32>),
}

/// A parsed QIDO-RS request.
#[derive(Debug, Clone)]
pub struct QidoRequest {
    pub query: Query,
    pub limit: usize,
    pub offset: usize,
    /// Whether the client set `limit` (without it, more matches than the
    /// default limit earn a Warning).
    pub limit_given: bool,
    pub include: Include,
    /// Keys the archive cannot match on (answered with a Warning header).
    pub unsupported: Vec<String>,
}

/// Resolve a QIDO key: a keyword or 8 hex digits. `Ok(None)` for a known
/// DICOM attribute the archive does not match on; an error for nonsense.
fn resolve_key(key: &str) -> Result<(u32, Option<&'static Attribute>), ApiError> {
    let tag = if let Some(tag) = super::json::parse_tag_key(key) {
        tag
    } else if let Some(a) = Attribute::by_keyword(key) {
        a.tag
    } else if let Some(entry) = StandardDataDictionary.by_name(key) {
        let t = entry.tag();
        (u32::from(t.group()) << 16) | u32::from(t.element())
    } else {
        return Err(ApiError::BadRequest(format!(
            "{key:?} is neither a DICOM attribute keyword nor an 8-digit hex tag"
        )));
    };
    Ok((tag, Attribute::by_tag(tag)))
}

fn parse_number(name: &str, value: &str) -> Result<usize, ApiError> {
    value.trim().parse::<usize>().map_err(|_| {
        ApiError::BadRequest(format!("{name}={value:?}: expected a non-negative integer"))
    })
}

/// Read the query parameters of a search at `level`.
pub fn parse_request(
    pairs: &[(String, String)],
    level: Level,
    default_limit: usize,
    max_limit: usize,
) -> Result<QidoRequest, ApiError> {
    let mut query = Query::new(level);
    let mut limit = None;
    let mut offset = 0;
    let mut include = Include::Required;
    let mut unsupported = Vec::new();
    for (name, value) in pairs {
        match name.as_str() {
            "limit" => limit = Some(parse_number("limit", value)?),
            "offset" => offset = parse_number("offset", value)?,
            "fuzzymatching" => match value.trim() {
                "true" => query.fuzzy = true,
                "false" => query.fuzzy = false,
                other => {
                    return Err(ApiError::BadRequest(format!(
                        "fuzzymatching={other:?}: expected true or false"
                    )));
                }
            },
            // Not a PS3.18 key: words the study's reports must hold
            // (full text, answered by the search index).
            "reporttext" if level == Level::Study => {
                let text = value.trim();
                if !text.is_empty() {
                    query.report_text = Some(text.to_owned());
                }
            }
            "reporttext" => {
                return Err(ApiError::BadRequest(
                    "reporttext applies to study searches only".into(),
                ));
            }
            "includefield" => {
                for field in value.split(',').map(str::trim).filter(|f| !f.is_empty()) {
                    if field == "all" {
                        include = Include::All;
                        continue;
                    }
                    let (tag, _) = resolve_key(field)?;
                    match &mut include {
                        Include::All => {}
                        Include::Required => include = Include::Tags(vec![tag]),
                        Include::Tags(tags) => tags.push(tag),
                    }
                }
            }
            // Parameters of other services that clients send along.
            "accept" | "charset" => {}
            key => {
                let (tag, attribute) = resolve_key(key)?;
                let Some(mut attribute) = attribute else {
                    unsupported.push(tag_key(tag));
                    continue;
                };
                // A study search by modality means "modalities in study".
                if level == Level::Study && attribute.keyword == "Modality" {
                    attribute = Attribute::by_keyword("ModalitiesInStudy")
                        .expect("ModalitiesInStudy is in the table");
                }
                if attribute.kind == MatchKind::Computed || attribute.level > level {
                    unsupported.push(attribute.keyword.to_owned());
                    continue;
                }
                query.push(attribute, Matcher::parse(attribute.kind, value, true));
            }
        }
    }
    let limit_given = limit.is_some();
    let limit = limit.unwrap_or(default_limit).min(max_limit);
    Ok(QidoRequest {
        query,
        limit,
        offset,
        limit_given,
        include,
        unsupported,
    })
}

/// The attributes returned at each level (PS3.18 tables 10.6.3-3 to -5),
/// as keywords of the archive's attribute table.
const STUDY_RETURN: &[&str] = &[
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ModalitiesInStudy",
    "ReferringPhysicianName",
    "StudyDescription",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
];
const SERIES_RETURN: &[&str] = &[
    "Modality",
    "SeriesDescription",
    "BodyPartExamined",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "NumberOfSeriesRelatedInstances",
];
const INSTANCE_RETURN: &[&str] = &[
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "InstanceNumber",
    "Rows",
    "Columns",
    "NumberOfFrames",
];
/// Instance attributes read from the stored metadata.
const INSTANCE_FROM_METADATA: &[u32] = &[
    0x0008_0016, // SOPClassUID
    0x0008_0018,
    0x0020_0013,
    0x0028_0008,
    0x0028_0010,
    0x0028_0011,
    0x0028_0100, // BitsAllocated
    0x0008_0201, // TimezoneOffsetFromUTC
];

/// Where a search is confined by its path.
#[derive(Debug, Clone, Default)]
pub struct PathScope {
    pub study: Option<String>,
    pub series: Option<String>,
}

fn attribute(keyword: &str) -> &'static Attribute {
    Attribute::by_keyword(keyword).expect("return keys are in the attribute table")
}

/// The attributes a search at `level` returns as catalog columns.
fn return_attributes(
    level: Level,
    scope: &PathScope,
    include: &Include,
) -> Vec<&'static Attribute> {
    let mut keywords: Vec<&str> = Vec::new();
    match level {
        Level::Patient | Level::Study => keywords.extend(STUDY_RETURN),
        Level::Series => {
            keywords.extend(SERIES_RETURN);
            if scope.study.is_none() || *include == Include::All {
                keywords.extend(STUDY_RETURN);
            }
        }
        Level::Image => {
            keywords.extend(INSTANCE_RETURN);
            if scope.series.is_none() || *include == Include::All {
                keywords.extend(SERIES_RETURN);
            }
            if scope.study.is_none() || *include == Include::All {
                keywords.extend(STUDY_RETURN);
            }
        }
    }
    let mut attrs: Vec<&'static Attribute> = keywords.into_iter().map(attribute).collect();
    if let Include::Tags(tags) = include {
        for tag in tags {
            if let Some(a) = Attribute::by_tag(*tag)
                && a.level <= level
            {
                attrs.push(a);
            }
        }
    }
    attrs.sort_by_key(|a| a.tag);
    attrs.dedup_by_key(|a| a.tag);
    attrs
}

/// The SQL of a catalog search and its binds.
fn catalog_sql(
    level: Level,
    query: &Query,
    attrs: &[&'static Attribute],
    limit: usize,
    offset: usize,
) -> (String, Vec<String>) {
    let mut binds = Vec::new();
    let mut columns: Vec<String> = attrs
        .iter()
        .map(|a| format!("CAST({} AS TEXT)", a.column))
        .collect();
    if level == Level::Image {
        columns.push("i.metadata".to_owned());
    }
    let (from, order) = match level {
        Level::Patient | Level::Study => (
            "studies st JOIN patients p ON p.id = st.patient_pk",
            "st.study_date DESC, st.study_time DESC, st.study_instance_uid",
        ),
        Level::Series => (
            "series se JOIN studies st ON st.study_instance_uid = se.study_instance_uid \
             JOIN patients p ON p.id = st.patient_pk",
            "st.study_date DESC, st.study_instance_uid, se.series_number, se.series_instance_uid",
        ),
        Level::Image => (
            "instances i JOIN series se ON se.series_instance_uid = i.series_instance_uid \
             JOIN studies st ON st.study_instance_uid = se.study_instance_uid \
             JOIN patients p ON p.id = st.patient_pk",
            "st.study_instance_uid, se.series_number, se.series_instance_uid, i.instance_number, i.sop_instance_uid",
        ),
    };
    let mut sql = format!("SELECT {} FROM {from}", columns.join(", "));
    if let Some(cond) = query.sql_where(&mut binds) {
        sql.push_str(" WHERE ");
        sql.push_str(&cond);
    }
    sql.push_str(&format!(" ORDER BY {order} LIMIT {limit} OFFSET {offset}"));
    (sql, binds)
}

/// The JSON of one study from the index.
fn study_json(doc: &StudyDoc, base: &str) -> DicomJson {
    let mut o = DicomJson::new();
    fn text(v: &Option<String>) -> Option<&str> {
        v.as_deref()
    }
    let put = |o: &mut DicomJson, keyword: &str, raw: Option<&str>| {
        let a = attribute(keyword);
        o.set(a.tag, element_from_text(a.vr, raw));
    };
    put(&mut o, "StudyDate", text(&doc.study_date));
    put(&mut o, "StudyTime", text(&doc.study_time));
    put(&mut o, "AccessionNumber", text(&doc.accession_number));
    o.set(0x0008_0061, element_strings("CS", &doc.modalities));
    put(
        &mut o,
        "ReferringPhysicianName",
        text(&doc.referring_physician_name),
    );
    if doc.study_description.is_some() {
        put(&mut o, "StudyDescription", text(&doc.study_description));
    }
    put(&mut o, "PatientName", text(&doc.patient_name));
    put(&mut o, "PatientID", text(&doc.patient_id));
    if doc.issuer_of_patient_id.is_some() {
        put(&mut o, "IssuerOfPatientID", text(&doc.issuer_of_patient_id));
    }
    put(&mut o, "PatientBirthDate", text(&doc.patient_birth_date));
    put(&mut o, "PatientSex", text(&doc.patient_sex));
    put(&mut o, "StudyInstanceUID", Some(&doc.study_instance_uid));
    put(&mut o, "StudyID", text(&doc.study_id));
    o.set(0x0020_1206, element_number("IS", doc.number_of_series));
    o.set(0x0020_1208, element_number("IS", doc.number_of_instances));
    common(&mut o, format!("{base}/studies/{}", doc.study_instance_uid));
    o
}

fn common(o: &mut DicomJson, retrieve_url: String) {
    o.set(
        SPECIFIC_CHARACTER_SET,
        element_strings("CS", &["ISO_IR 192"]),
    );
    o.set(INSTANCE_AVAILABILITY, element_strings("CS", &["ONLINE"]));
    o.set(RETRIEVE_URL, element_strings("UR", &[retrieve_url]));
}

/// The JSON of one catalog row.
fn row_json(
    level: Level,
    attrs: &[&'static Attribute],
    row: &[Option<String>],
    include: &Include,
    base: &str,
) -> DicomJson {
    let mut o = DicomJson::new();
    for (a, value) in attrs.iter().zip(row) {
        let value = value.as_deref();
        if a.keyword == "ModalitiesInStudy" {
            let list: Vec<&str> = value
                .unwrap_or("")
                .split(',')
                .filter(|m| !m.is_empty())
                .collect();
            o.set(a.tag, element_strings("CS", &list));
        } else {
            o.set(a.tag, element_from_text(a.vr, value));
        }
    }
    let get = |keyword: &str| {
        attrs
            .iter()
            .position(|a| a.keyword == keyword)
            .and_then(|i| row[i].clone())
            .unwrap_or_default()
    };
    let study = get("StudyInstanceUID");
    let url = match level {
        Level::Patient | Level::Study => format!("{base}/studies/{study}"),
        Level::Series => format!("{base}/studies/{study}/series/{}", get("SeriesInstanceUID")),
        Level::Image => format!(
            "{base}/studies/{study}/series/{}/instances/{}",
            get("SeriesInstanceUID"),
            get("SOPInstanceUID")
        ),
    };
    if level == Level::Image
        && let Some(Some(metadata)) = row.get(attrs.len())
        && let Ok(Value::Object(stored)) = serde_json::from_str::<Value>(metadata)
    {
        for (key, value) in stored {
            let Some(tag) = super::json::parse_tag_key(&key) else {
                continue;
            };
            let wanted = INSTANCE_FROM_METADATA.contains(&tag)
                || match include {
                    Include::All => true,
                    Include::Tags(tags) => tags.contains(&tag),
                    Include::Required => false,
                };
            // Bulk data placeholders (no value) are for /metadata, not QIDO.
            let bulk = value.get("Value").is_none()
                && matches!(
                    value.get("vr").and_then(Value::as_str),
                    Some("OB" | "OW" | "OF" | "OD" | "OL" | "OV" | "UN")
                );
            if wanted && !bulk {
                o.set(tag, value);
            }
        }
    }
    common(&mut o, url);
    o
}

/// Run a search; the answer and the warnings for the response.
pub async fn search(
    state: &AppState,
    who: &Principal,
    level: Level,
    scope: PathScope,
    pairs: &[(String, String)],
) -> Result<(Vec<Value>, Vec<String>), ApiError> {
    let config = state.config();
    let mut request = parse_request(
        pairs,
        level,
        config.qido_default_limit,
        config.qido_max_limit,
    )?;
    if let Some(study) = &scope.study {
        request.query.push(
            attribute("StudyInstanceUID"),
            Matcher::Single(study.clone()),
        );
    }
    if let Some(series) = &scope.series {
        request.query.push(
            attribute("SeriesInstanceUID"),
            Matcher::Single(series.clone()),
        );
    }
    if let Scope::Patients(ids) = state.policy().scope(who) {
        request
            .query
            .push(attribute("PatientID"), Matcher::UidList(ids));
    }
    let mut warnings: Vec<String> = request
        .unsupported
        .iter()
        .map(|k| format!("299 pacs \"{k}: unsupported query key, ignored\""))
        .collect();
    let base = state.dicomweb_url();
    let (answers, more) = if level <= Level::Study && pacs_indexer::can_answer(&request.query) {
        let index = state.index().clone();
        let query = request.query.clone();
        let (limit, offset) = (request.limit, request.offset);
        let page = tokio::task::spawn_blocking(move || index.search(&query, limit, offset))
            .await
            .map_err(|e| ApiError::Internal(format!("search task: {e}")))??;
        let more = page.total > request.offset + page.studies.len();
        let answers = page
            .studies
            .iter()
            .map(|doc| study_json(doc, &base).finish())
            .collect::<Vec<_>>();
        (answers, more)
    } else {
        if request.query.fuzzy {
            warnings.push(
                "299 pacs \"The fuzzymatching parameter is not supported for this search. Only literal matching has been performed.\"".to_owned(),
            );
        }
        let attrs = return_attributes(level, &scope, &request.include);
        // One row more than asked tells whether there are more.
        let (sql, binds) = catalog_sql(
            level,
            &request.query,
            &attrs,
            request.limit + 1,
            request.offset,
        );
        let mut rows = state
            .archive()
            .catalog()
            .select_text_rows(&sql, &binds, request.limit + 1)
            .await?;
        let more = rows.len() > request.limit;
        rows.truncate(request.limit);
        let answers = rows
            .iter()
            .map(|row| row_json(level, &attrs, row, &request.include, &base).finish())
            .collect();
        (answers, more)
    };
    if more && !request.limit_given {
        warnings.push("299 pacs \"There are additional results that can be requested\"".to_owned());
    }
    Ok((answers, warnings))
}

fn pairs(raw: Option<String>) -> Vec<(String, String)> {
    raw.map(|q| {
        form_urlencoded::parse(q.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    })
    .unwrap_or_default()
}

fn answer(
    headers: &HeaderMap,
    raw_query: Option<&str>,
    result: (Vec<Value>, Vec<String>),
) -> Result<Response, ApiError> {
    let media = super::negotiate::json(headers, raw_query)?;
    let (answers, warnings) = result;
    let mut response = Json(answers).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(media));
    for w in warnings {
        if let Ok(v) = HeaderValue::from_str(&w) {
            response.headers_mut().append(header::WARNING, v);
        }
    }
    Ok(response)
}

async fn run(
    state: AppState,
    who: Principal,
    headers: HeaderMap,
    raw: Option<String>,
    level: Level,
    scope: PathScope,
) -> Result<Response, ApiError> {
    let params = pairs(raw.clone());
    let result = search(&state, &who, level, scope, &params).await?;
    answer(&headers, raw.as_deref(), result)
}

/// The study and series UIDs of a search's path, if any.
fn path_scope(path: Option<Path<HashMap<String, String>>>) -> PathScope {
    let mut p = path.map(|Path(p)| p).unwrap_or_default();
    PathScope {
        study: p.remove("study"),
        series: p.remove("series"),
    }
}

/// `/studies`.
pub async fn studies(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    run(state, who, headers, raw, Level::Study, PathScope::default()).await
}

/// `/series` and `/studies/{study}/series`.
pub async fn series(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    path: Option<Path<HashMap<String, String>>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    run(state, who, headers, raw, Level::Series, path_scope(path)).await
}

/// `/instances`, `/studies/{study}/instances` and
/// `/studies/{study}/series/{series}/instances`.
pub async fn instances(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    path: Option<Path<HashMap<String, String>>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    run(state, who, headers, raw, Level::Image, path_scope(path)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parameters_become_a_query() {
        let r = parse_request(
            &p(&[
                ("PatientName", "doe*"),
                ("00080020", "20200101-"),
                ("StudyInstanceUID", "1.2,1.3"),
                ("includefield", "00081030,PatientAge"),
                ("includefield", "StudyID"),
                ("limit", "10"),
                ("offset", "20"),
                ("fuzzymatching", "true"),
                ("Modality", "CT"),
            ]),
            Level::Study,
            100,
            1000,
        )
        .unwrap();
        assert_eq!(r.limit, 10);
        assert_eq!(r.offset, 20);
        assert!(r.query.fuzzy);
        assert_eq!(
            r.query.condition(0x0020_000D),
            Some(&Matcher::UidList(vec!["1.2".into(), "1.3".into()]))
        );
        assert_eq!(
            r.query.condition(0x0008_0061),
            Some(&Matcher::Single("CT".into()))
        );
        assert_eq!(
            r.include,
            Include::Tags(vec![0x0008_1030, 0x0010_1010, 0x0020_0010])
        );
    }

    #[test]
    fn bad_parameters_are_refused() {
        for bad in [
            ("limit", "-1"),
            ("offset", "x"),
            ("fuzzymatching", "yes"),
            ("NoSuchKeyword", "1"),
            ("includefield", "Nope"),
        ] {
            let err = parse_request(&p(&[bad]), Level::Study, 100, 1000).unwrap_err();
            assert!(matches!(err, ApiError::BadRequest(_)), "{bad:?}: {err}");
        }
    }

    #[test]
    fn unsupported_keys_are_reported_not_refused() {
        let r = parse_request(&p(&[("PatientAge", "040Y")]), Level::Study, 100, 1000).unwrap();
        assert_eq!(r.unsupported, ["00101010"]);
        assert!(r.query.conditions.is_empty());
    }

    #[test]
    fn limit_is_capped() {
        let r = parse_request(&p(&[("limit", "999999")]), Level::Study, 100, 1000).unwrap();
        assert_eq!(r.limit, 1000);
        assert!(r.limit_given);
    }
}
