//! WADO-RS (PS3.18 10.4): instances, metadata, frames, bulk data, rendered
//! images and thumbnails at study, series, instance and frame level.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;

use super::json::parse_tag_key;
use super::multipart::{MultipartWriter, Part};
use super::negotiate::{self, EXPLICIT_VR_LE};
use crate::error::ApiError;
use crate::frames::{self, FrameWant};
use crate::render::{self, ImageFormat, RenderParams};
use crate::state::AppState;

/// The instances a WADO-RS path names.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub study: String,
    pub series: Option<String>,
    pub instance: Option<String>,
}

impl Selection {
    fn describe(&self) -> String {
        match (&self.series, &self.instance) {
            (_, Some(i)) => format!("instance {i}"),
            (Some(s), None) => format!("series {s}"),
            (None, None) => format!("study {}", self.study),
        }
    }
}

/// One stored instance as WADO needs it.
#[derive(Debug, Clone)]
pub struct Selected {
    pub sop_instance_uid: String,
    pub series_instance_uid: String,
    pub transfer_syntax_uid: String,
    pub metadata: Option<String>,
}

/// The instances of a selection, in series/instance order; NotFound when
/// there are none.
pub async fn select(
    state: &AppState,
    sel: &Selection,
    with_metadata: bool,
) -> Result<Vec<Selected>, ApiError> {
    let mut sql = format!(
        "SELECT i.sop_instance_uid, i.series_instance_uid, i.transfer_syntax_uid{} \
         FROM instances i JOIN series se ON se.series_instance_uid = i.series_instance_uid \
         WHERE i.study_instance_uid = $1",
        if with_metadata { ", i.metadata" } else { "" }
    );
    let mut binds = vec![sel.study.clone()];
    if let Some(series) = &sel.series {
        binds.push(series.clone());
        sql.push_str(&format!(" AND i.series_instance_uid = ${}", binds.len()));
    }
    if let Some(instance) = &sel.instance {
        binds.push(instance.clone());
        sql.push_str(&format!(" AND i.sop_instance_uid = ${}", binds.len()));
    }
    sql.push_str(
        " ORDER BY se.series_number, se.series_instance_uid, i.instance_number, i.sop_instance_uid",
    );
    let rows = state
        .archive()
        .catalog()
        .select_text_rows(&sql, &binds, usize::MAX)
        .await?;
    if rows.is_empty() {
        return Err(ApiError::NotFound(sel.describe()));
    }
    Ok(rows
        .into_iter()
        .map(|mut r| Selected {
            metadata: if with_metadata {
                r.pop().flatten()
            } else {
                None
            },
            transfer_syntax_uid: r[2].clone().unwrap_or_default(),
            series_instance_uid: r[1].clone().unwrap_or_default(),
            sop_instance_uid: r[0].clone().unwrap_or_default(),
        })
        .collect())
}

/// Rewrite a native-syntax Part-10 object as Explicit VR Little Endian.
pub(crate) fn to_explicit_le(part10: &[u8]) -> Result<Vec<u8>, ApiError> {
    let start = if part10.len() >= 132 && &part10[128..132] == b"DICM" {
        128
    } else {
        0
    };
    let mut obj = dicom_object::OpenFileOptions::new()
        .read_preamble(dicom_object::file::ReadPreamble::Never)
        .from_reader(&part10[start..])
        .map_err(|e| ApiError::Internal(format!("cannot re-read a stored object: {e}")))?;
    let ts = dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased();
    obj.meta_mut().set_transfer_syntax(&ts);
    let mut out = Vec::with_capacity(part10.len() + 64);
    obj.write_all(&mut out).map_err(|e| {
        ApiError::Internal(format!(
            "cannot transcode to Explicit VR Little Endian: {e}"
        ))
    })?;
    Ok(out)
}

/// Instances as `multipart/related; type="application/dicom"`, streamed
/// (a few instances read ahead).
async fn retrieve(
    state: AppState,
    sel: Selection,
    headers: HeaderMap,
    raw: Option<String>,
) -> Result<Response, ApiError> {
    let rows = select(&state, &sel, false).await?;
    let syntaxes: Vec<String> = rows.iter().map(|r| r.transfer_syntax_uid.clone()).collect();
    let choice = negotiate::dicom(&headers, raw.as_deref(), &syntaxes)?;
    let transcode = choice.transfer_syntax.is_some();
    let writer = MultipartWriter::new("application/dicom");
    let archive = state.archive().clone();
    let parts = futures::stream::iter(rows)
        .map(move |row| {
            let archive = archive.clone();
            async move {
                let bytes = archive.retrieve(&row.sop_instance_uid).await?;
                let (bytes, ts) = if transcode && row.transfer_syntax_uid != EXPLICIT_VR_LE {
                    let converted = tokio::task::spawn_blocking(move || to_explicit_le(&bytes))
                        .await
                        .map_err(|e| ApiError::Internal(format!("transcode task: {e}")))??;
                    (Bytes::from(converted), EXPLICIT_VR_LE.to_owned())
                } else {
                    (bytes, row.transfer_syntax_uid.clone())
                };
                Ok(Part::with_syntax("application/dicom", Some(&ts), bytes))
            }
        })
        .buffered(4);
    // Fetch the first part before answering, so that a missing blob is an
    // error status rather than a cut body.
    let mut parts = Box::pin(parts);
    let first = parts.next().await.transpose()?;
    let rest = futures::stream::iter(first.map(Ok)).chain(parts);
    Ok(writer.response(rest))
}

/// VRs whose values the stored metadata leaves out as bulk data.
fn bulk_vr(vr: &str) -> bool {
    matches!(vr, "OB" | "OW" | "OF" | "OD" | "OL" | "OV" | "UN")
}

/// Write one instance's stored DICOM JSON to `out` with its keys in tag
/// order and an absolute BulkDataURI on each bulk element (one left without
/// a value). Elements are copied as stored, not re-encoded: a 500-instance
/// series is a few MB of JSON.
fn write_with_bulk_uris(
    out: &mut Vec<u8>,
    metadata: &str,
    instance_url: &str,
) -> Result<(), ApiError> {
    use serde_json::value::RawValue;
    let bad =
        |e: serde_json::Error| ApiError::Internal(format!("stored metadata is not JSON: {e}"));
    // Keys are 8 hex digits, so they borrow; a BTreeMap orders them by tag.
    let elements: std::collections::BTreeMap<&str, &RawValue> =
        serde_json::from_str(metadata).map_err(bad)?;
    out.push(b'{');
    for (i, (key, element)) in elements.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        let raw = element.get();
        // A bulk element is stored as exactly {"vr":"XX"}.
        let bulk = raw.len() == 11
            && raw.starts_with("{\"vr\":\"")
            && raw.ends_with("\"}")
            && bulk_vr(&raw[7..9]);
        if bulk {
            out.extend_from_slice(&raw.as_bytes()[..10]);
            out.extend_from_slice(b",\"BulkDataURI\":");
            serde_json::to_writer(&mut *out, &format!("{instance_url}/bulkdata/{key}"))
                .map_err(bad)?;
            out.push(b'}');
        } else {
            out.extend_from_slice(raw.as_bytes());
        }
    }
    out.push(b'}');
    Ok(())
}

async fn metadata(
    state: AppState,
    sel: Selection,
    headers: HeaderMap,
    raw: Option<String>,
) -> Result<Response, ApiError> {
    let media = negotiate::json(&headers, raw.as_deref())?;
    let rows = select(&state, &sel, true).await?;
    let base = state.dicomweb_url();
    let study = sel.study.clone();
    let body = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, ApiError> {
        let mut out = Vec::with_capacity(rows.len() * 4096);
        out.push(b'[');
        for (i, row) in rows.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let url = format!(
                "{base}/studies/{study}/series/{}/instances/{}",
                row.series_instance_uid, row.sop_instance_uid
            );
            write_with_bulk_uris(&mut out, row.metadata.as_deref().unwrap_or("{}"), &url)?;
        }
        out.push(b']');
        Ok(out)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("metadata task: {e}")))??;
    Ok(([(header::CONTENT_TYPE, media)], body).into_response())
}

/// Parse a frame list `1,2,5` (1-based).
pub fn parse_frame_list(list: &str) -> Result<Vec<u32>, ApiError> {
    let numbers: Result<Vec<u32>, _> = list.split(',').map(|n| n.trim().parse::<u32>()).collect();
    match numbers {
        Ok(n) if !n.is_empty() && n.iter().all(|&f| f >= 1) && n.len() <= 10_000 => Ok(n),
        _ => Err(ApiError::BadRequest(format!(
            "frame list {list:?}: expected comma-separated frame numbers from 1"
        ))),
    }
}

/// The media type of frames stored in `ts`.
fn stored_frame_media_type(ts: &str) -> &'static str {
    match ts {
        "1.2.840.10008.1.2.4.50"
        | "1.2.840.10008.1.2.4.51"
        | "1.2.840.10008.1.2.4.57"
        | "1.2.840.10008.1.2.4.70" => "image/jpeg",
        "1.2.840.10008.1.2.4.80" | "1.2.840.10008.1.2.4.81" => "image/jls",
        "1.2.840.10008.1.2.4.90" | "1.2.840.10008.1.2.4.91" => "image/jp2",
        "1.2.840.10008.1.2.4.92" | "1.2.840.10008.1.2.4.93" => "image/jpx",
        "1.2.840.10008.1.2.4.201" | "1.2.840.10008.1.2.4.202" | "1.2.840.10008.1.2.4.203" => {
            "image/jphc"
        }
        "1.2.840.10008.1.2.5" => "image/x-dicom-rle",
        _ => "application/octet-stream",
    }
}

async fn retrieve_frames(
    state: AppState,
    sel: Selection,
    list: String,
    headers: HeaderMap,
    raw: Option<String>,
) -> Result<Response, ApiError> {
    let numbers = parse_frame_list(&list)?;
    let row = select(&state, &sel, false).await?.remove(0);
    let ts = row.transfer_syntax_uid.clone();
    let uncompressed = negotiate::frames(
        &headers,
        raw.as_deref(),
        &ts,
        stored_frame_media_type(&ts),
        frames::can_decode(&ts),
    )?;
    let want = if uncompressed && !negotiate::is_native(&ts) {
        FrameWant::Uncompressed
    } else {
        FrameWant::Original
    };
    let bytes = state.archive().retrieve(&row.sop_instance_uid).await?;
    let extracted =
        tokio::task::spawn_blocking(move || frames::extract_frames(&bytes, &numbers, want))
            .await
            .map_err(|e| ApiError::Internal(format!("frames task: {e}")))??;
    let part_type = extracted
        .first()
        .map(|f| f.media_type)
        .unwrap_or("application/octet-stream");
    let parts: Vec<Part> = extracted
        .into_iter()
        .map(|f| Part::with_syntax(f.media_type, f.transfer_syntax.as_deref(), f.data))
        .collect();
    let writer = MultipartWriter::new(part_type);
    Ok(writer.response(futures::stream::iter(parts.into_iter().map(Ok))))
}

async fn retrieve_bulkdata(
    state: AppState,
    sel: Selection,
    tag: String,
) -> Result<Response, ApiError> {
    let tag = parse_tag_key(&tag)
        .ok_or_else(|| ApiError::BadRequest(format!("{tag:?} is not an 8-digit hex tag")))?;
    let row = select(&state, &sel, false).await?.remove(0);
    let bytes = state.archive().retrieve(&row.sop_instance_uid).await?;
    let (value, count) = tokio::task::spawn_blocking(move || element_bytes(&bytes, tag))
        .await
        .map_err(|e| ApiError::Internal(format!("bulk data task: {e}")))??;
    let value = match value {
        Some(v) => v,
        // Encapsulated pixel data: its frames, as stored.
        None => {
            let list = (1..=count)
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(",");
            return retrieve_frames(state, sel, list, HeaderMap::new(), None).await;
        }
    };
    let writer = MultipartWriter::new("application/octet-stream");
    let part = Part::with_syntax("application/octet-stream", Some(EXPLICIT_VR_LE), value);
    Ok(writer.response(futures::stream::iter([Ok(part)])))
}

/// The value of a top-level element as little-endian bytes, or `None` for
/// encapsulated pixel data (served as frames); and the number of frames.
fn element_bytes(part10: &[u8], tag: u32) -> Result<(Option<Bytes>, u32), ApiError> {
    let start = if part10.len() >= 132 && &part10[128..132] == b"DICM" {
        128
    } else {
        0
    };
    let obj = dicom_object::OpenFileOptions::new()
        .read_preamble(dicom_object::file::ReadPreamble::Never)
        .from_reader(&part10[start..])
        .map_err(|e| ApiError::Internal(format!("cannot re-read a stored object: {e}")))?;
    let frames = obj
        .element_opt(dicom_dictionary_std::tags::NUMBER_OF_FRAMES)
        .ok()
        .flatten()
        .and_then(|e| e.to_int::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    let tag = dicom_core::Tag((tag >> 16) as u16, (tag & 0xFFFF) as u16);
    let element = obj
        .element_opt(tag)
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or_else(|| ApiError::NotFound(format!("no element {tag} in this instance")))?;
    match element.value() {
        dicom_core::DicomValue::Primitive(p) => {
            Ok((Some(Bytes::from(p.to_bytes().into_owned())), frames))
        }
        dicom_core::DicomValue::PixelSequence(_) => Ok((None, frames)),
        dicom_core::DicomValue::Sequence(_) => Err(ApiError::BadRequest(format!(
            "element {tag} is a sequence, not bulk data"
        ))),
    }
}

fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn image_response(format: ImageFormat, data: Bytes) -> Response {
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(format.media_type()),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=3600"),
            ),
        ],
        Body::from(data),
    )
        .into_response()
}

/// The instance a rendering of a selection shows: the instance itself, or
/// the middle instance of a series, or of the study's first series.
async fn representative(state: &AppState, sel: &Selection) -> Result<Selected, ApiError> {
    let mut rows = select(state, sel, false).await?;
    if sel.instance.is_some() {
        return Ok(rows.remove(0));
    }
    let first_series = rows[0].series_instance_uid.clone();
    let series: Vec<Selected> = rows
        .into_iter()
        .filter(|r| r.series_instance_uid == first_series)
        .collect();
    let middle = series.len() / 2;
    Ok(series
        .into_iter()
        .nth(middle)
        .expect("a series has an instance"))
}

async fn rendered(
    state: AppState,
    sel: Selection,
    frame: Option<String>,
    headers: HeaderMap,
    raw: Option<String>,
) -> Result<Response, ApiError> {
    let format = negotiate::image(&headers, raw.as_deref())?;
    let mut params = RenderParams::from_query(&query_pairs(raw.as_deref()), format)?;
    if let Some(list) = &frame {
        params.frame = parse_frame_list(list)?[0];
    }
    let row = representative(&state, &sel).await?;
    let key = format!(
        "rendered/{}/{}/{:?}/{}",
        row.sop_instance_uid,
        params.frame,
        format,
        raw.as_deref().unwrap_or("")
    );
    if let Some(hit) = state.renders().get(&key) {
        return Ok(image_response(format, hit));
    }
    let bytes = state.archive().retrieve(&row.sop_instance_uid).await?;
    let image = tokio::task::spawn_blocking(move || render::render(&bytes, &params))
        .await
        .map_err(|e| ApiError::Internal(format!("render task: {e}")))??;
    let image = Bytes::from(image);
    state.renders().put(key, image.clone());
    Ok(image_response(format, image))
}

async fn thumbnail(
    state: AppState,
    sel: Selection,
    frame: Option<String>,
    headers: HeaderMap,
    raw: Option<String>,
) -> Result<Response, ApiError> {
    let format = negotiate::image(&headers, raw.as_deref())?;
    let size = state.config().thumbnail_size;
    // Series and study thumbnails are the series thumbnails the worker
    // made (or makes now, once).
    if sel.instance.is_none() && frame.is_none() {
        let series = match &sel.series {
            Some(s) => s.clone(),
            None => representative(&state, &sel).await?.series_instance_uid,
        };
        let image =
            crate::thumbnails::series_thumbnail(&state, &sel.study, &series, format).await?;
        return Ok(image_response(format, image));
    }
    let row = representative(&state, &sel).await?;
    let frame_number = match &frame {
        Some(list) => parse_frame_list(list)?[0],
        None => 0,
    };
    let key = format!(
        "thumbnail/{}/{frame_number}/{format:?}",
        row.sop_instance_uid
    );
    if let Some(hit) = state.renders().get(&key) {
        return Ok(image_response(format, hit));
    }
    let bytes = state.archive().retrieve(&row.sop_instance_uid).await?;
    let image = tokio::task::spawn_blocking(move || {
        if frame_number == 0 {
            render::thumbnail(&bytes, size, format)
        } else {
            let mut params = RenderParams::new(format);
            params.frame = frame_number;
            params.viewport = Some(render::Viewport {
                width: size,
                height: size,
            });
            render::render(&bytes, &params)
        }
    })
    .await
    .map_err(|e| ApiError::Internal(format!("thumbnail task: {e}")))??;
    let image = Bytes::from(image);
    state.renders().put(key, image.clone());
    Ok(image_response(format, image))
}

// Route handlers: one per operation, for every level its routes name.

/// The parameters of a WADO-RS path: the selection and, where the route
/// has them, the frame list and the bulk data tag.
pub struct WadoPath {
    pub selection: Selection,
    pub frames: Option<String>,
    pub tag: Option<String>,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for WadoPath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        let Path(mut p) =
            Path::<std::collections::HashMap<String, String>>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::BadRequest(format!("path: {e}")))?;
        Ok(WadoPath {
            selection: Selection {
                study: p.remove("study").unwrap_or_default(),
                series: p.remove("series"),
                instance: p.remove("instance"),
            },
            frames: p.remove("frames"),
            tag: p.remove("tag"),
        })
    }
}

/// Instances of a study, series or one instance.
pub async fn instances(
    State(s): State<AppState>,
    p: WadoPath,
    h: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    retrieve(s, p.selection, h, q).await
}

/// `/metadata` of a study, series or instance.
pub async fn metadata_of(
    State(s): State<AppState>,
    p: WadoPath,
    h: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    metadata(s, p.selection, h, q).await
}

/// `/frames/{frames}` of an instance.
pub async fn frames(
    State(s): State<AppState>,
    p: WadoPath,
    h: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let list = p.frames.unwrap_or_default();
    retrieve_frames(s, p.selection, list, h, q).await
}

/// `/bulkdata/{tag}` of an instance.
pub async fn bulkdata(State(s): State<AppState>, p: WadoPath) -> Result<Response, ApiError> {
    retrieve_bulkdata(s, p.selection, p.tag.unwrap_or_default()).await
}

/// `/rendered` at every level, frames included.
pub async fn rendered_of(
    State(s): State<AppState>,
    p: WadoPath,
    h: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    rendered(s, p.selection, p.frames, h, q).await
}

/// `/thumbnail` at every level, frames included.
pub async fn thumbnail_of(
    State(s): State<AppState>,
    p: WadoPath,
    h: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    thumbnail(s, p.selection, p.frames, h, q).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn frame_lists() {
        assert_eq!(parse_frame_list("1,3, 2").unwrap(), [1, 3, 2]);
        for bad in ["", "0", "1,,2", "a", "-1"] {
            assert!(parse_frame_list(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bulk_data_gets_absolute_uris() {
        let mut out = Vec::new();
        write_with_bulk_uris(
            &mut out,
            r#"{"7FE00010":{"vr":"OW"},"00100010":{"vr":"PN","Value":[{"Alphabetic":"A"}]},"00281201":{"vr":"OW"},"00091001":{"vr":"OB","InlineBinary":"AAAA"}}"#,
            "http://h/dicom-web/studies/1/series/2/instances/3",
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["00091001", "00100010", "00281201", "7FE00010"]);
        assert!(v["00091001"].get("BulkDataURI").is_none());
        assert_eq!(v["7FE00010"]["vr"], "OW");
        assert_eq!(
            v["7FE00010"]["BulkDataURI"],
            "http://h/dicom-web/studies/1/series/2/instances/3/bulkdata/7FE00010"
        );
        assert_eq!(
            v["00281201"]["BulkDataURI"],
            "http://h/dicom-web/studies/1/series/2/instances/3/bulkdata/00281201"
        );
        assert!(v["00100010"].get("BulkDataURI").is_none());
    }
}
