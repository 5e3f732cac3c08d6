//! STOW-RS (PS3.18 10.5): `POST /studies` and `/studies/{study}` with a
//! `multipart/related; type="application/dicom"` body.
//!
//! The whole body is read (up to `http.max_stow_bytes`) and split into parts
//! before anything is stored, so a malformed or cut request stores nothing.
//! Each part then goes through the archive's one ingest path, as C-STORE
//! does; the answer lists what was stored and what failed, and why.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use pacs_archive::{IngestReceipt, IngestSource, RefusalReason};
use serde_json::{Value, json};

use super::accept::parse_accept;
use crate::error::ApiError;
use crate::state::AppState;

/// PS3.4 / PS3.18 failure reasons.
const DUPLICATE_SOP_INSTANCE: u16 = 0x0111;
const OUT_OF_RESOURCES: u16 = 0xA700;
const DATA_SET_DOES_NOT_MATCH_SOP_CLASS: u16 = 0xA900;
const CANNOT_UNDERSTAND: u16 = 0xC000;
const TRANSFER_SYNTAX_NOT_SUPPORTED: u16 = 0xC122;
const STUDY_UID_MISMATCH: u16 = 0xC409;

/// The failure reason (0008,1197) of a refusal.
pub fn failure_reason(reason: &RefusalReason) -> u16 {
    match reason {
        RefusalReason::Conflict { .. } => DUPLICATE_SOP_INSTANCE,
        RefusalReason::MissingAttribute(_) | RefusalReason::MalformedUid { .. } => {
            DATA_SET_DOES_NOT_MATCH_SOP_CLASS
        }
        RefusalReason::Empty | RefusalReason::NotDicom(_) | RefusalReason::Unparseable(_) => {
            CANNOT_UNDERSTAND
        }
        RefusalReason::UnknownTransferSyntax(_) => TRANSFER_SYNTAX_NOT_SUPPORTED,
        RefusalReason::WrongStudy { .. } => STUDY_UID_MISMATCH,
        RefusalReason::StoreUnavailable(_) | RefusalReason::CatalogUnavailable(_) => {
            OUT_OF_RESOURCES
        }
    }
}

/// The boundary of a STOW request, or why the request is refused.
pub fn request_boundary(headers: &HeaderMap) -> Result<String, ApiError> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .ok_or_else(|| {
            ApiError::UnsupportedMediaType(
                "no Content-Type; expected multipart/related; type=\"application/dicom\"".into(),
            )
        })?
        .to_str()
        .map_err(|_| ApiError::BadRequest("the Content-Type header is not text".into()))?;
    // The Accept grammar is the media-type grammar, with q as a parameter.
    let range = parse_accept(&[value])
        .ok()
        .and_then(|r| r.into_iter().next())
        .ok_or_else(|| ApiError::BadRequest(format!("Content-Type {value:?} is malformed")))?;
    if !(range.type_ == "multipart" && range.subtype == "related") {
        return Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {value:?}: STOW-RS takes multipart/related; type=\"application/dicom\""
        )));
    }
    if let Some(t) = range.param("type")
        && !t.eq_ignore_ascii_case("application/dicom")
    {
        return Err(ApiError::UnsupportedMediaType(format!(
            "multipart/related of {t:?}: this archive stores application/dicom parts (metadata and bulk data STOW is not supported)"
        )));
    }
    let boundary = range
        .param("boundary")
        .filter(|b| !b.is_empty() && b.len() <= 200)
        .ok_or_else(|| ApiError::BadRequest("multipart/related without a boundary".into()))?;
    Ok(boundary.to_owned())
}

/// One part of the request: its bytes, or why it is not a DICOM object.
enum Received {
    Dicom(Bytes),
    NotDicom(String),
}

/// Split a whole body into its parts; any structural fault refuses the
/// whole request.
async fn split(body: Bytes, boundary: &str) -> Result<Vec<Received>, ApiError> {
    let stream = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut parts = Vec::new();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                return Err(ApiError::BadRequest(format!(
                    "the multipart body is malformed: {e}"
                )));
            }
        };
        let media = field
            .content_type()
            .map(|m| m.essence_str().to_ascii_lowercase());
        let data = field
            .bytes()
            .await
            .map_err(|e| ApiError::BadRequest(format!("the multipart body is malformed: {e}")))?;
        parts.push(match media.as_deref() {
            Some("application/dicom") | None => Received::Dicom(data),
            Some(other) => {
                Received::NotDicom(format!("part of type {other}, expected application/dicom"))
            }
        });
    }
    if parts.is_empty() {
        return Err(ApiError::BadRequest(
            "the multipart body has no parts".into(),
        ));
    }
    Ok(parts)
}

fn uid_element(vr: &str, value: Option<&str>) -> Value {
    match value {
        Some(v) => json!({ "vr": vr, "Value": [v] }),
        None => json!({ "vr": vr }),
    }
}

async fn store_into(
    state: AppState,
    study: Option<String>,
    peer: Option<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let boundary = request_boundary(&headers)?;
    let limit = state.config().max_stow_bytes;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit
    {
        return Err(ApiError::PayloadTooLarge(format!(
            "the body announces {len} bytes; this archive takes at most {limit} per STOW-RS request"
        )));
    }
    let body = axum::body::to_bytes(body, usize::try_from(limit).unwrap_or(usize::MAX))
        .await
        .map_err(|e| {
            if std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            {
                ApiError::PayloadTooLarge(format!(
                    "the body is over {limit} bytes, the most this archive takes per STOW-RS request"
                ))
            } else {
                ApiError::BadRequest(format!("the body could not be read whole: {e}"))
            }
        })?;
    let parts = split(body, &boundary).await?;

    let source = IngestSource::Stow {
        peer: peer
            .map(|p| p.to_string())
            .unwrap_or_else(|| "unknown".into()),
    };
    let archive = state.archive().clone();
    let results: Vec<(Result<IngestReceipt, String>, usize)> =
        futures::stream::iter(parts.into_iter().enumerate())
            .map(|(i, part)| {
                let archive = archive.clone();
                let source = source.clone();
                let study = study.clone();
                async move {
                    let r = match part {
                        Received::Dicom(bytes) => Ok(archive
                            .ingest_part10_into(bytes, source, study.as_deref())
                            .await),
                        Received::NotDicom(why) => Err(why),
                    };
                    (r, i)
                }
            })
            .buffered(4)
            .collect()
            .await;

    let base = state.dicomweb_url();
    let mut referenced = Vec::new();
    let mut failed = Vec::new();
    let mut warnings = Vec::new();
    let mut newest_seq = 0;
    let mut study_of_answer = study.clone();
    for (result, index) in results {
        match result {
            Ok(receipt) => match &receipt {
                IngestReceipt::Refused(refusal) => {
                    warnings.push(format!("part {}: {}", index + 1, refusal.reason));
                    failed.push(json!({
                        "00081150": uid_element("UI", refusal.sop_class_uid.as_deref()),
                        "00081155": uid_element("UI", refusal.sop_instance_uid.as_deref()),
                        "00081197": { "vr": "US", "Value": [failure_reason(&refusal.reason)] },
                    }));
                }
                _ => {
                    let i = receipt
                        .instance()
                        .expect("success receipts name the instance");
                    newest_seq = newest_seq.max(i.change_seq.unwrap_or(0));
                    study_of_answer.get_or_insert_with(|| i.study_instance_uid.clone());
                    referenced.push(json!({
                        "00081150": uid_element("UI", Some(&i.sop_class_uid)),
                        "00081155": uid_element("UI", Some(&i.sop_instance_uid)),
                        "00081190": { "vr": "UR", "Value": [format!(
                            "{base}/studies/{}/series/{}/instances/{}",
                            i.study_instance_uid, i.series_instance_uid, i.sop_instance_uid
                        )] },
                    }));
                }
            },
            Err(why) => {
                warnings.push(format!("part {}: {why}", index + 1));
                failed.push(json!({
                    "00081150": { "vr": "UI" },
                    "00081155": { "vr": "UI" },
                    "00081197": { "vr": "US", "Value": [CANNOT_UNDERSTAND] },
                }));
            }
        }
    }

    // What was stored is searchable when the client gets the answer.
    if newest_seq > 0 {
        let deadline = Instant::now() + Duration::from_secs(2);
        while state.index().indexed_seq() < newest_seq && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    let status = if failed.is_empty() {
        StatusCode::OK
    } else if referenced.is_empty() {
        StatusCode::CONFLICT
    } else {
        StatusCode::ACCEPTED
    };
    let mut answer = serde_json::Map::new();
    if let Some(study) = &study_of_answer {
        answer.insert(
            "00081190".into(),
            json!({ "vr": "UR", "Value": [format!("{base}/studies/{study}")] }),
        );
    }
    if !failed.is_empty() {
        answer.insert("00081198".into(), json!({ "vr": "SQ", "Value": failed }));
    }
    if !referenced.is_empty() {
        answer.insert(
            "00081199".into(),
            json!({ "vr": "SQ", "Value": referenced }),
        );
    }
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "application/dicom+json")],
        Value::Object(answer).to_string(),
    )
        .into_response();
    for w in warnings.iter().take(50) {
        let text: String = w
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .filter(|c| *c != '"')
            .take(300)
            .collect();
        if let Ok(v) = HeaderValue::from_str(&format!("299 pacs \"{text}\"")) {
            response.headers_mut().append(header::WARNING, v);
        }
    }
    Ok(response)
}

/// `POST /studies` and `POST /studies/{study}`.
pub async fn store(
    State(state): State<AppState>,
    path: Option<Path<HashMap<String, String>>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let study = path.and_then(|Path(mut p)| p.remove("study"));
    store_into(state, study, peer.map(|p| p.0.0), headers, body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        h
    }

    #[test]
    fn content_types() {
        assert_eq!(
            request_boundary(&headers(
                "multipart/related; type=\"application/dicom\"; boundary=abc"
            ))
            .unwrap(),
            "abc"
        );
        assert_eq!(
            request_boundary(&headers("multipart/related; boundary=\"a b\"")).unwrap(),
            "a b"
        );
        assert!(matches!(
            request_boundary(&headers("multipart/related; type=application/dicom")),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            request_boundary(&headers("application/dicom")),
            Err(ApiError::UnsupportedMediaType(_))
        ));
        assert!(matches!(
            request_boundary(&headers(
                "multipart/related; type=\"application/dicom+json\"; boundary=x"
            )),
            Err(ApiError::UnsupportedMediaType(_))
        ));
        assert!(matches!(
            request_boundary(&HeaderMap::new()),
            Err(ApiError::UnsupportedMediaType(_))
        ));
    }

    #[tokio::test]
    async fn bodies_are_split_or_refused_whole() {
        let body = Bytes::from_static(
            b"--b\r\nContent-Type: application/dicom\r\n\r\nAAA\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b--\r\n",
        );
        let parts = split(body, "b").await.unwrap();
        assert_eq!(parts.len(), 2);
        assert!(matches!(&parts[0], Received::Dicom(b) if &b[..] == b"AAA"));
        assert!(matches!(&parts[1], Received::NotDicom(_)));
        // Cut before the closing boundary.
        let cut = Bytes::from_static(b"--b\r\nContent-Type: application/dicom\r\n\r\nAAA");
        assert!(matches!(
            split(cut, "b").await,
            Err(ApiError::BadRequest(_))
        ));
        // No parts at all.
        assert!(matches!(
            split(Bytes::from_static(b"garbage"), "b").await,
            Err(ApiError::BadRequest(_))
        ));
    }
}
