//! WADO-URI (PS3.18 9): `GET /wado?requestType=WADO&studyUID=..&seriesUID=..
//! &objectUID=..[&contentType=..]`, the single-object retrieval older
//! viewers and reports link to.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::accept::{Offer, negotiate_request};
use super::negotiate::{EXPLICIT_VR_LE, is_native};
use crate::error::ApiError;
use crate::render::{self, ImageFormat, RenderParams, Viewport, VoiFunction, Window};
use crate::state::AppState;

fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

fn number<T: std::str::FromStr>(
    pairs: &[(String, String)],
    name: &str,
) -> Result<Option<T>, ApiError> {
    param(pairs, name)
        .map(|v| {
            v.trim()
                .parse::<T>()
                .map_err(|_| ApiError::BadRequest(format!("{name}={v:?} is not a valid number")))
        })
        .transpose()
}

pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let pairs: Vec<(String, String)> =
        form_urlencoded::parse(raw.as_deref().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    match param(&pairs, "requestType") {
        Some("WADO") => {}
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "requestType={other:?}: only WADO is supported"
            )));
        }
        None => return Err(ApiError::BadRequest("requestType=WADO is required".into())),
    }
    let required = |name: &str| {
        param(&pairs, name).ok_or_else(|| ApiError::BadRequest(format!("{name} is required")))
    };
    let (study, series, object) = (
        required("studyUID")?,
        required("seriesUID")?,
        required("objectUID")?,
    );
    let row = state
        .archive()
        .catalog()
        .instance(object)
        .await?
        .filter(|r| r.study_instance_uid == study && r.series_instance_uid == series)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "instance {object} of series {series} of study {study}"
            ))
        })?;

    // contentType is a list of acceptable types, like an Accept header.
    let content_type = param(&pairs, "contentType").unwrap_or("image/jpeg");
    let offers = [
        Offer::single("image/jpeg"),
        Offer::single("image/png"),
        Offer::single("application/dicom"),
    ];
    let mut query_accept = content_type.to_owned();
    if content_type
        .split(',')
        .any(|t| t.trim() == "application/dicom")
    {
        query_accept = "application/dicom".into();
    }
    let choice = negotiate_request(&headers, Some(&query_accept), &offers)?;
    let bytes = state.archive().retrieve(&row.sop_instance_uid).await?;
    if choice.offer == 2 {
        let wanted = param(&pairs, "transferSyntax").unwrap_or(&row.transfer_syntax_uid);
        let data = if wanted == row.transfer_syntax_uid {
            bytes
        } else if wanted == EXPLICIT_VR_LE && is_native(&row.transfer_syntax_uid) {
            let converted =
                tokio::task::spawn_blocking(move || super::wado::to_explicit_le(&bytes))
                    .await
                    .map_err(|e| ApiError::Internal(format!("transcode task: {e}")))??;
            Bytes::from(converted)
        } else {
            return Err(ApiError::NotAcceptable(format!(
                "transferSyntax {wanted}: the instance is stored as {} and this archive does not transcode it",
                row.transfer_syntax_uid
            )));
        };
        return Ok((
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/dicom"),
            )],
            Body::from(data),
        )
            .into_response());
    }
    let format = if choice.offer == 0 {
        ImageFormat::Jpeg
    } else {
        ImageFormat::Png
    };
    let mut params = RenderParams::new(format);
    if let Some(frame) = number::<u32>(&pairs, "frameNumber")? {
        params.frame = frame.max(1);
    }
    if let Some(q) = number::<u8>(&pairs, "imageQuality")? {
        if !(1..=100).contains(&q) {
            return Err(ApiError::BadRequest("imageQuality must be 1 to 100".into()));
        }
        params.quality = q;
    }
    let (rows, columns) = (
        number::<u32>(&pairs, "rows")?,
        number::<u32>(&pairs, "columns")?,
    );
    if rows.is_some() || columns.is_some() {
        params.viewport = Some(Viewport {
            width: columns
                .unwrap_or(render::MAX_VIEWPORT_SIDE)
                .clamp(1, render::MAX_VIEWPORT_SIDE),
            height: rows
                .unwrap_or(render::MAX_VIEWPORT_SIDE)
                .clamp(1, render::MAX_VIEWPORT_SIDE),
        });
    }
    match (
        number::<f64>(&pairs, "windowCenter")?,
        number::<f64>(&pairs, "windowWidth")?,
    ) {
        (Some(center), Some(width)) if width > 0.0 => {
            params.window = Some(Window {
                center,
                width,
                function: VoiFunction::Linear,
            })
        }
        (None, None) => {}
        _ => {
            return Err(ApiError::BadRequest(
                "windowCenter and windowWidth go together, with a positive width".into(),
            ));
        }
    }
    let image = tokio::task::spawn_blocking(move || render::render(&bytes, &params))
        .await
        .map_err(|e| ApiError::Internal(format!("render task: {e}")))??;
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(format.media_type()),
        )],
        Body::from(image),
    )
        .into_response())
}
