//! `multipart/related` bodies read back by an independent parser (multer).

use std::convert::Infallible;

use bytes::Bytes;
use futures::executor::block_on;
use futures::stream;
use pacs_viewer_api::ApiError;
use pacs_viewer_api::dicomweb::multipart::{MultipartWriter, Part, build, build_response};
use proptest::prelude::*;
use proptest::test_runner::Config;

/// (content type, content location, data) of each part, as multer sees them.
type Parsed = Vec<(String, Option<String>, Vec<u8>)>;

/// The `boundary` parameter of a `multipart/related` Content-Type
/// (`multer::parse_boundary` only takes `multipart/form-data`).
fn boundary_of(content_type: &str) -> String {
    assert!(
        content_type.starts_with("multipart/related;"),
        "{content_type}"
    );
    let b = content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))
        .expect("boundary parameter");
    b.trim_matches('"').to_string()
}

/// Parses `body` fed in chunks of `chunk` bytes (0: one chunk).
fn parse(content_type: &str, body: &Bytes, chunk: usize) -> Parsed {
    let boundary = boundary_of(content_type);
    let chunks: Vec<Result<Bytes, Infallible>> = if chunk == 0 {
        vec![Ok(body.clone())]
    } else {
        (0..body.len())
            .step_by(chunk)
            .map(|i| Ok(body.slice(i..(i + chunk).min(body.len()))))
            .collect()
    };
    let mut multipart = multer::Multipart::new(stream::iter(chunks), boundary);
    block_on(async {
        let mut out = Vec::new();
        while let Some(field) = multipart.next_field().await.expect("well-formed multipart") {
            let header = |name: &str| {
                field
                    .headers()
                    .get(name)
                    .map(|v| v.to_str().expect("ASCII header").to_string())
            };
            let ct = header("content-type").expect("every part has a Content-Type");
            let loc = header("content-location");
            let data = field.bytes().await.expect("part data");
            out.push((ct, loc, data.to_vec()));
        }
        out
    })
}

fn expected(parts: &[Part]) -> Parsed {
    parts
        .iter()
        .map(|p| {
            (
                p.content_type.clone(),
                p.content_location.clone(),
                p.data.to_vec(),
            )
        })
        .collect()
}

fn sample_parts() -> Vec<Part> {
    vec![
        Part::with_syntax(
            "application/dicom",
            Some("1.2.840.10008.1.2.1"),
            Bytes::from_static(b"DICM\0\x01\x02"),
        ),
        Part::with_syntax(
            "application/dicom",
            None,
            Bytes::from_static(b"\r\n--\r\n--x--\r\n"),
        )
        .location("http://localhost/studies/1.2/series/3.4/instances/5.6"),
        Part::new("application/dicom", Bytes::new()),
    ]
}

#[test]
fn buffered_body_round_trips_through_multer() {
    let parts = sample_parts();
    let (content_type, body) = build(parts.clone());
    assert!(content_type.starts_with("multipart/related; type=\"application/dicom\"; boundary="));
    for chunk in [0, 1, 7, 64] {
        assert_eq!(
            parse(&content_type, &body, chunk),
            expected(&parts),
            "chunk {chunk}"
        );
    }
}

#[test]
fn exact_bytes_of_a_small_body() {
    let w = MultipartWriter::with_boundary("application/dicom", "b0b0").unwrap();
    let body = w.encode(&[
        Part::with_syntax(
            "application/dicom",
            Some("1.2.840.10008.1.2.4.50"),
            Bytes::from_static(b"AB"),
        ),
        Part::new("application/dicom", Bytes::from_static(b"C")).location("/x"),
    ]);
    assert_eq!(
        &body[..],
        b"--b0b0\r\nContent-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.4.50\r\n\r\nAB\r\n\
          --b0b0\r\nContent-Type: application/dicom\r\nContent-Location: /x\r\n\r\nC\r\n\
          --b0b0--\r\n"
    );
    // Every line of the head ends in CRLF: no bare LF or CR anywhere here.
    for (i, &b) in body.iter().enumerate() {
        if b == b'\n' {
            assert_eq!(body[i - 1], b'\r', "bare LF at {i}");
        }
        if b == b'\r' {
            assert_eq!(body[i + 1], b'\n', "bare CR at {i}");
        }
    }
    assert_eq!(
        w.content_type(),
        "multipart/related; type=\"application/dicom\"; boundary=b0b0"
    );
}

#[test]
fn streamed_body_round_trips_through_multer() {
    let parts = sample_parts();
    let writer = MultipartWriter::new("application/dicom");
    let content_type = writer.content_type();
    let body = writer.body(stream::iter(
        parts.clone().into_iter().map(Ok::<_, ApiError>),
    ));
    let bytes = block_on(axum::body::to_bytes(body, usize::MAX)).unwrap();
    assert_eq!(parse(&content_type, &bytes, 5), expected(&parts));
}

#[test]
fn streamed_response_has_the_content_type() {
    let writer = MultipartWriter::new("application/octet-stream");
    let boundary = writer.boundary().to_string();
    let response = writer.response(stream::iter(vec![Ok(Part::new(
        "application/octet-stream",
        Bytes::from_static(b"frame"),
    ))]));
    assert_eq!(response.status(), 200);
    let ct = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        ct,
        format!("multipart/related; type=\"application/octet-stream\"; boundary={boundary}")
    );
    let bytes = block_on(axum::body::to_bytes(response.into_body(), usize::MAX)).unwrap();
    let parsed = parse(&ct, &bytes, 0);
    assert_eq!(
        parsed,
        vec![("application/octet-stream".into(), None, b"frame".to_vec())]
    );
}

#[test]
fn buffered_response() {
    let response = build_response(sample_parts());
    let ct = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    let bytes = block_on(axum::body::to_bytes(response.into_body(), usize::MAX)).unwrap();
    assert_eq!(parse(&ct, &bytes, 0), expected(&sample_parts()));
}

#[test]
fn a_failing_part_fails_the_body() {
    let writer = MultipartWriter::new("application/dicom");
    let body = writer.body(stream::iter(vec![
        Ok(Part::new("application/dicom", Bytes::from_static(b"one"))),
        Err(ApiError::Unavailable("object store".into())),
    ]));
    assert!(block_on(axum::body::to_bytes(body, usize::MAX)).is_err());
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        // Dense in the bytes that matter to a multipart parser.
        proptest::collection::vec(
            prop_oneof![Just(b'-'), Just(b'\r'), Just(b'\n'), Just(b'a'), Just(b' ')],
            0..300
        ),
        // Fragments of the closing and part delimiters.
        proptest::collection::vec(
            prop_oneof![
                Just(&b"\r\n--"[..]),
                Just(&b"--\r\n"[..]),
                Just(&b"\r\n\r\n"[..]),
                Just(&b"Content-Type: x\r\n"[..])
            ],
            0..20
        )
        .prop_map(|v| v.concat()),
    ]
}

proptest! {
    #![proptest_config(Config { cases: 256, failure_persistence: None, ..Config::default() })]

    #[test]
    fn arbitrary_payloads_come_back_intact(
        payloads in proptest::collection::vec(payload(), 1..6),
        chunk in prop_oneof![Just(0usize), 1usize..50],
        with_location in any::<bool>(),
    ) {
        let parts: Vec<Part> = payloads
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let part = Part::with_syntax("application/dicom", Some("1.2.840.10008.1.2.1"), p);
                if with_location { part.location(format!("/instances/{i}")) } else { part }
            })
            .collect();
        let (content_type, body) = build(parts.clone());
        prop_assert_eq!(parse(&content_type, &body, chunk), expected(&parts));

        // The streamed body is the same format (another boundary).
        let writer = MultipartWriter::new("application/dicom");
        let ct = writer.content_type();
        if parts.iter().all(|p| !writer.collides(&p.data)) {
            let streamed = block_on(axum::body::to_bytes(
                writer.body(stream::iter(parts.clone().into_iter().map(Ok::<_, ApiError>))),
                usize::MAX,
            ))
            .unwrap();
            prop_assert_eq!(parse(&ct, &streamed, chunk), expected(&parts));
        }
    }
}
