//! `multipart/related` bodies: writing WADO-RS answers (RFC 2046 §5.1,
//! RFC 2387, PS3.18 §8.6.1.2).
//!
//! Wire format, every line ending in CRLF:
//!
//! ```text
//! --<boundary>\r\n
//! Content-Type: <type>[; transfer-syntax=<uid>]\r\n
//! [Content-Location: <url>\r\n]
//! \r\n
//! <bytes>\r\n
//! ... more parts ...
//! --<boundary>--\r\n
//! ```
//!
//! The boundary is 32 random hex characters. [`build`] checks that it occurs
//! in no part and draws another on collision; the streaming writer cannot
//! change it once the head is sent, so it fails the stream instead (with
//! 128 random bits, this does not happen in practice).

use axum::body::Body;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures::{Stream, StreamExt};

use crate::error::ApiError;

/// One body part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The part's full `Content-Type` value, e.g.
    /// `application/dicom; transfer-syntax=1.2.840.10008.1.2.1`.
    pub content_type: String,
    /// Optional `Content-Location` header value (e.g. a bulk data URL).
    pub content_location: Option<String>,
    /// The payload, written as is.
    pub data: Bytes,
}

impl Part {
    /// A part with this content type and payload, no `Content-Location`.
    pub fn new(content_type: impl Into<String>, data: impl Into<Bytes>) -> Self {
        Part {
            content_type: content_type.into(),
            content_location: None,
            data: data.into(),
        }
    }

    /// `media_type` with `; transfer-syntax=<uid>` when a syntax is given.
    pub fn with_syntax(
        media_type: &str,
        transfer_syntax: Option<&str>,
        data: impl Into<Bytes>,
    ) -> Self {
        let content_type = match transfer_syntax {
            Some(uid) => format!("{media_type}; transfer-syntax={uid}"),
            None => media_type.to_string(),
        };
        Part::new(content_type, data)
    }

    /// Sets the `Content-Location` header.
    pub fn location(mut self, content_location: impl Into<String>) -> Self {
        self.content_location = Some(content_location.into());
        self
    }

    /// The media type without parameters, e.g. `application/dicom`.
    pub fn media_type(&self) -> &str {
        self.content_type.split(';').next().unwrap_or("").trim()
    }
}

/// Writes one `multipart/related` body with a fixed boundary and root type.
#[derive(Debug, Clone)]
pub struct MultipartWriter {
    boundary: String,
    part_type: String,
}

impl MultipartWriter {
    /// A writer whose parts are of `part_type` (the `type` parameter of the
    /// response), with a fresh random boundary.
    pub fn new(part_type: &str) -> Self {
        MultipartWriter {
            boundary: random_boundary(),
            part_type: header_safe(part_type),
        }
    }

    /// A writer with a given boundary (tests, reproducible output): 1 to 70
    /// characters of RFC 2046 `bchars`, not ending in a space.
    pub fn with_boundary(part_type: &str, boundary: &str) -> Result<Self, ApiError> {
        let ok = (1..=70).contains(&boundary.len())
            && !boundary.ends_with(' ')
            && boundary
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&b));
        if !ok {
            return Err(ApiError::Internal(format!(
                "invalid multipart boundary {boundary:?}"
            )));
        }
        Ok(MultipartWriter {
            boundary: boundary.to_string(),
            part_type: header_safe(part_type),
        })
    }

    /// The boundary, without the leading `--`.
    pub fn boundary(&self) -> &str {
        &self.boundary
    }

    /// The response `Content-Type` value:
    /// `multipart/related; type="<part type>"; boundary=<boundary>`.
    pub fn content_type(&self) -> String {
        let quoted = self.part_type.replace('\\', "\\\\").replace('"', "\\\"");
        let boundary = if self
            .boundary
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        {
            self.boundary.clone()
        } else {
            format!("\"{}\"", self.boundary)
        };
        format!("multipart/related; type=\"{quoted}\"; boundary={boundary}")
    }

    /// Whether the boundary occurs in `data` (then the part cannot be sent).
    pub fn collides(&self, data: &[u8]) -> bool {
        contains(data, self.boundary.as_bytes())
    }

    /// A part's delimiter line and headers, up to and including the empty line.
    pub fn part_head(&self, part: &Part) -> Bytes {
        let mut b = BytesMut::with_capacity(self.boundary.len() + part.content_type.len() + 64);
        b.put_slice(b"--");
        b.put_slice(self.boundary.as_bytes());
        b.put_slice(b"\r\nContent-Type: ");
        b.put_slice(header_safe(&part.content_type).as_bytes());
        b.put_slice(b"\r\n");
        if let Some(loc) = &part.content_location {
            b.put_slice(b"Content-Location: ");
            b.put_slice(header_safe(loc).as_bytes());
            b.put_slice(b"\r\n");
        }
        b.put_slice(b"\r\n");
        b.freeze()
    }

    /// The closing delimiter line `--<boundary>--\r\n`.
    pub fn closing(&self) -> Bytes {
        Bytes::from(format!("--{}--\r\n", self.boundary))
    }

    /// The whole body in one buffer (the boundary is not checked: see [`build`]).
    pub fn encode(&self, parts: &[Part]) -> Bytes {
        let size: usize = parts
            .iter()
            .map(|p| p.data.len() + p.content_type.len() + 128)
            .sum();
        let mut b = BytesMut::with_capacity(size + self.boundary.len() * (parts.len() + 1));
        for part in parts {
            b.put(self.part_head(part));
            b.put_slice(&part.data);
            b.put_slice(b"\r\n");
        }
        b.put(self.closing());
        b.freeze()
    }

    /// The body as a stream of chunks, parts pulled one at a time: the head,
    /// the payload (not copied) and CRLF of each part, then the closing line.
    /// An error from `parts`, or a part containing the boundary, ends the
    /// stream with that error (the client sees a truncated body, never a
    /// well-formed but wrong one).
    pub fn stream<S>(self, parts: S) -> impl Stream<Item = Result<Bytes, ApiError>> + Send + 'static
    where
        S: Stream<Item = Result<Part, ApiError>> + Send + 'static,
    {
        let parts = parts.boxed();
        futures::stream::unfold(
            (parts, self, Vec::<Bytes>::new(), false),
            |(mut parts, writer, mut pending, done)| async move {
                if let Some(chunk) = pending.pop() {
                    return Some((Ok(chunk), (parts, writer, pending, done)));
                }
                if done {
                    return None;
                }
                match parts.next().await {
                    Some(Ok(part)) => {
                        if writer.collides(&part.data) {
                            let e =
                                ApiError::Internal("multipart boundary occurs in a part".into());
                            return Some((Err(e), (parts, writer, pending, true)));
                        }
                        let head = writer.part_head(&part);
                        // Popped from the end: CRLF last.
                        pending.push(Bytes::from_static(b"\r\n"));
                        if !part.data.is_empty() {
                            pending.push(part.data);
                        }
                        Some((Ok(head), (parts, writer, pending, false)))
                    }
                    Some(Err(e)) => Some((Err(e), (parts, writer, pending, true))),
                    None => {
                        let closing = writer.closing();
                        Some((Ok(closing), (parts, writer, pending, true)))
                    }
                }
            },
        )
    }

    /// [`MultipartWriter::stream`] as an `axum` body.
    pub fn body<S>(self, parts: S) -> Body
    where
        S: Stream<Item = Result<Part, ApiError>> + Send + 'static,
    {
        Body::from_stream(self.stream(parts))
    }

    /// A 200 response with the `Content-Type` header and the streamed body.
    pub fn response<S>(self, parts: S) -> Response
    where
        S: Stream<Item = Result<Part, ApiError>> + Send + 'static,
    {
        let content_type = self.content_type();
        let body = self.body(parts);
        with_content_type(StatusCode::OK, &content_type, body)
    }
}

/// Buffers `parts` into one body; returns (`Content-Type` header value,
/// body). The `type` parameter is the first part's media type (the root part,
/// RFC 2387), `application/dicom` when there is none. A fresh boundary is
/// drawn until it occurs in no part.
pub fn build(parts: Vec<Part>) -> (String, Bytes) {
    let part_type = parts.first().map_or("application/dicom", Part::media_type);
    let mut writer = MultipartWriter::new(part_type);
    while parts.iter().any(|p| writer.collides(&p.data)) {
        writer = MultipartWriter::new(part_type);
    }
    (writer.content_type(), writer.encode(&parts))
}

/// [`build`] as a 200 response.
pub fn build_response(parts: Vec<Part>) -> Response {
    let (content_type, body) = build(parts);
    with_content_type(StatusCode::OK, &content_type, Body::from(body))
}

fn with_content_type(status: StatusCode, content_type: &str, body: Body) -> Response {
    match HeaderValue::from_str(content_type) {
        Ok(v) => (status, [(CONTENT_TYPE, v)], body).into_response(),
        Err(_) => ApiError::Internal(format!("bad Content-Type {content_type:?}")).into_response(),
    }
}

/// 32 lowercase hex characters from the thread RNG.
fn random_boundary() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Control characters (CR, LF...) replaced by spaces, so that a value can
/// never end a header line early.
fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    if haystack.len() < needle.len() {
        return false;
    }
    let last_start = haystack.len() - needle.len();
    haystack[..=last_start]
        .iter()
        .enumerate()
        .filter(|&(_, &b)| b == first)
        .any(|(i, _)| &haystack[i + 1..i + needle.len()] == rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer() -> MultipartWriter {
        MultipartWriter::with_boundary("application/dicom", "0123456789abcdef0123456789abcdef")
            .unwrap()
    }

    #[test]
    fn exact_wire_format() {
        let w = writer();
        let parts = vec![
            Part::with_syntax(
                "application/dicom",
                Some("1.2.840.10008.1.2.1"),
                &b"DICM"[..],
            ),
            Part::new("application/octet-stream", &b"a\r\n--b"[..]).location("/studies/1/series/2"),
        ];
        let body = w.encode(&parts);
        let expected = "--0123456789abcdef0123456789abcdef\r\n\
            Content-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1\r\n\
            \r\n\
            DICM\r\n\
            --0123456789abcdef0123456789abcdef\r\n\
            Content-Type: application/octet-stream\r\n\
            Content-Location: /studies/1/series/2\r\n\
            \r\n\
            a\r\n--b\r\n\
            --0123456789abcdef0123456789abcdef--\r\n";
        assert_eq!(std::str::from_utf8(&body).unwrap(), expected);
        assert_eq!(
            w.content_type(),
            "multipart/related; type=\"application/dicom\"; boundary=0123456789abcdef0123456789abcdef"
        );
    }

    #[test]
    fn header_values_cannot_inject_lines() {
        let w = writer();
        let part = Part::new("image/jpeg\r\nX-Evil: 1", Bytes::new()).location("a\nb");
        let head = w.part_head(&part);
        let text = std::str::from_utf8(&head).unwrap();
        assert_eq!(text.matches("\r\n").count(), 4);
        assert!(!text.contains("\nX-Evil"));
    }

    #[test]
    fn random_boundaries_are_32_hex_and_differ() {
        let a = MultipartWriter::new("application/dicom");
        let b = MultipartWriter::new("application/dicom");
        assert_eq!(a.boundary().len(), 32);
        assert!(a.boundary().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.boundary(), b.boundary());
    }

    #[test]
    fn invalid_boundaries_refused() {
        for b in ["", "a b ", "a\r\nb", &"x".repeat(71), "é"] {
            assert!(
                MultipartWriter::with_boundary("application/dicom", b).is_err(),
                "{b:?}"
            );
        }
    }

    #[test]
    fn build_uses_first_part_type() {
        let (ct, body) = build(vec![Part::new("image/jpeg", &b"x"[..])]);
        assert!(ct.starts_with("multipart/related; type=\"image/jpeg\"; boundary="));
        let boundary = ct.rsplit("boundary=").next().unwrap();
        assert!(body.starts_with(
            format!("--{boundary}\r\nContent-Type: image/jpeg\r\n\r\nx\r\n").as_bytes()
        ));
        assert!(body.ends_with(format!("--{boundary}--\r\n").as_bytes()));
        let (ct, body) = build(Vec::new());
        assert!(ct.starts_with("multipart/related; type=\"application/dicom\"; boundary="));
        assert_eq!(body.len(), 32 + 6);
    }

    #[test]
    fn substring_search() {
        assert!(contains(b"abcdef", b"cde"));
        assert!(contains(b"abcdef", b"abcdef"));
        assert!(!contains(b"abcdef", b"abcdefg"));
        assert!(!contains(b"abcdef", b"ce"));
        assert!(contains(b"xx--aaab", b"aab"));
    }

    #[test]
    fn stream_equals_buffered_and_stops_on_error() {
        let w = writer();
        let parts = vec![
            Part::new("application/dicom", &b"one"[..]),
            Part::new("application/dicom", Bytes::new()),
            Part::new("application/dicom", &b"three"[..]),
        ];
        let expected = w.encode(&parts);
        let chunks: Vec<Result<Bytes, ApiError>> = futures::executor::block_on(
            w.clone()
                .stream(futures::stream::iter(parts.clone().into_iter().map(Ok)))
                .collect(),
        );
        let joined: Vec<u8> = chunks
            .into_iter()
            .flat_map(|c| c.unwrap().to_vec())
            .collect();
        assert_eq!(joined, expected);

        let failing = futures::stream::iter(vec![
            Ok(parts[0].clone()),
            Err(ApiError::Unavailable("store down".into())),
            Ok(parts[2].clone()),
        ]);
        let chunks: Vec<Result<Bytes, ApiError>> =
            futures::executor::block_on(w.clone().stream(failing).collect());
        assert!(matches!(chunks.last(), Some(Err(ApiError::Unavailable(_)))));
        assert_eq!(chunks.iter().filter(|c| c.is_err()).count(), 1);

        let colliding = futures::stream::iter(vec![Ok(Part::new(
            "application/dicom",
            format!("x--{}", w.boundary()),
        ))]);
        let chunks: Vec<Result<Bytes, ApiError>> =
            futures::executor::block_on(w.stream(colliding).collect());
        assert_eq!(chunks.len(), 1);
        assert!(matches!(chunks[0], Err(ApiError::Internal(_))));
    }
}
