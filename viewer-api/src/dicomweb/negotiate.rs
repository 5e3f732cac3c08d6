//! The negotiations the DICOMweb routes make, on top of [`super::accept`].

use axum::http::HeaderMap;

use super::accept::{Choice, Offer, negotiate_request};
use crate::error::ApiError;
use crate::render::ImageFormat;

/// Explicit VR Little Endian.
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

/// The `accept` query parameter, if any.
pub fn query_accept(raw_query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(raw_query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == "accept")
        .map(|(_, v)| v.into_owned())
}

/// JSON answers (QIDO-RS, metadata): `application/dicom+json` or
/// `application/json`.
pub fn json(headers: &HeaderMap, raw_query: Option<&str>) -> Result<&'static str, ApiError> {
    let offers = [
        Offer::single("application/dicom+json"),
        Offer::single("application/json"),
    ];
    let choice = negotiate_request(headers, query_accept(raw_query).as_deref(), &offers)?;
    Ok(if choice.offer == 0 {
        "application/dicom+json"
    } else {
        "application/json"
    })
}

/// Native (uncompressed) transfer syntaxes this archive can rewrite as
/// Explicit VR Little Endian without decoding pixels.
pub fn is_native(ts: &str) -> bool {
    matches!(
        ts,
        "1.2.840.10008.1.2"
            | "1.2.840.10008.1.2.1"
            | "1.2.840.10008.1.2.2"
            | "1.2.840.10008.1.2.1.99"
    )
}

/// Instances as `multipart/related; type="application/dicom"`: as stored
/// (`Choice::transfer_syntax` None) or, when every stored syntax is native,
/// as Explicit VR Little Endian.
pub fn dicom(
    headers: &HeaderMap,
    raw_query: Option<&str>,
    stored_syntaxes: &[String],
) -> Result<Choice, ApiError> {
    let mut offer = Offer::multipart("application/dicom");
    let mut distinct: Vec<&str> = stored_syntaxes.iter().map(String::as_str).collect();
    distinct.sort_unstable();
    distinct.dedup();
    if let [only] = distinct[..] {
        offer = offer.original(only);
    } else {
        // Mixed syntaxes: "as stored" is a syntax of its own.
        offer = offer.original("*");
    }
    if distinct.iter().all(|ts| is_native(ts)) && distinct != [EXPLICIT_VR_LE] {
        offer = offer.transcode(EXPLICIT_VR_LE);
    }
    negotiate_request(headers, query_accept(raw_query).as_deref(), &[offer])
}

/// Rendered images: JPEG (the default) or PNG.
pub fn image(headers: &HeaderMap, raw_query: Option<&str>) -> Result<ImageFormat, ApiError> {
    let offers = [Offer::single("image/jpeg"), Offer::single("image/png")];
    let choice = negotiate_request(headers, query_accept(raw_query).as_deref(), &offers)?;
    Ok(if choice.offer == 0 {
        ImageFormat::Jpeg
    } else {
        ImageFormat::Png
    })
}

/// Frames: as stored (`media_type` of the stored syntax, multipart) or
/// uncompressed octet-stream. Returns whether uncompressed was chosen.
pub fn frames(
    headers: &HeaderMap,
    raw_query: Option<&str>,
    stored_syntax: &str,
    stored_media_type: &str,
    can_decode: bool,
) -> Result<bool, ApiError> {
    let mut offers = Vec::new();
    if is_native(stored_syntax) {
        offers.push(Offer::multipart("application/octet-stream").original(EXPLICIT_VR_LE));
    } else {
        offers.push(Offer::multipart(stored_media_type).original(stored_syntax));
        if can_decode {
            offers.push(
                Offer::multipart("application/octet-stream")
                    .transcode(EXPLICIT_VR_LE)
                    .lenient_default_syntax(false),
            );
        }
    }
    let choice = negotiate_request(headers, query_accept(raw_query).as_deref(), &offers)?;
    Ok(choice.media_type == "application/octet-stream")
}
