//! The real router over a real embedded archive and index: STOW-RS in,
//! QIDO-RS and WADO-RS out, tokens, errors and CORS.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use bytes::Bytes;
use pacs_archive::catalog::TokenRole;
use pacs_archive::{Archive, ArchiveConfig};
use pacs_fixtures::{DatasetSpec, FixtureFile};
use pacs_indexer::StudyIndex;
use pacs_viewer_api::{AppState, HttpConfig, auth, router};
use serde_json::Value;
use tower::ServiceExt;

const BASE: &str = "https://pacs.example.org";
const VIEWER: &str = "https://viewer.example.org";

struct Harness {
    _dir: tempfile::TempDir,
    archive: Archive,
    app: Router,
    admin: String,
    clinician: String,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let archive = Archive::open(ArchiveConfig::embedded(dir.path()))
        .await
        .unwrap();
    let index: Arc<StudyIndex> = StudyIndex::open(&dir.path().join("index")).unwrap();
    index.spawn_follower(archive.catalog().clone());
    let config = HttpConfig {
        public_base_url: format!("{BASE}/"),
        cors_allowed_origins: vec![VIEWER.into()],
        max_stow_bytes: 64 << 20,
        ..HttpConfig::default()
    };
    let admin = auth::issue_token(archive.catalog(), "admin", TokenRole::Admin)
        .await
        .unwrap();
    let clinician = auth::issue_token(archive.catalog(), "dr", TokenRole::Clinician)
        .await
        .unwrap();
    let state = AppState::new(archive.clone(), index, config);
    Harness {
        _dir: dir,
        archive,
        app: router(state),
        admin,
        clinician,
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body[..self.body.len().min(300)])
            )
        })
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
}

impl Harness {
    async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, uri: &str, accept: Option<&str>) -> Answer {
        let mut r =
            Request::get(uri).header(header::AUTHORIZATION, format!("Bearer {}", self.admin));
        if let Some(a) = accept {
            r = r.header(header::ACCEPT, a);
        }
        self.send(r.body(Body::empty()).unwrap()).await
    }

    async fn stow(&self, uri: &str, content_type: &str, body: Vec<u8>) -> Answer {
        let r = Request::post(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.clinician))
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .unwrap();
        self.send(r).await
    }

    async fn instance_count(&self) -> i64 {
        self.archive.stats().await.unwrap().instances
    }
}

const DICOM_MULTIPART: &str = "multipart/related; type=\"application/dicom\"; boundary=XyZzY";

fn multipart(parts: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (ct, data) in parts {
        body.extend_from_slice(format!("--XyZzY\r\nContent-Type: {ct}\r\n\r\n").as_bytes());
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"--XyZzY--\r\n");
    body
}

/// Split a multipart answer into (content type, bytes) parts.
async fn parts_of(answer: &Answer) -> Vec<(String, Bytes)> {
    let ct = answer.header("content-type");
    assert!(ct.starts_with("multipart/related"), "{ct}");
    let boundary = ct
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let body = answer.body.clone();
    let stream = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut mp = multer::Multipart::new(stream, boundary);
    let mut out = Vec::new();
    while let Some(field) = mp.next_field().await.unwrap() {
        let ct = field
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        out.push((ct, field.bytes().await.unwrap()));
    }
    out
}

fn string(v: &Value, tag: &str) -> String {
    match &v[tag]["Value"][0] {
        Value::String(s) => s.clone(),
        Value::Object(o) => o["Alphabetic"].as_str().unwrap_or("").to_owned(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

fn small() -> Vec<FixtureFile> {
    DatasetSpec::small().iter().collect()
}

async fn stow_all(h: &Harness, files: &[FixtureFile]) -> Value {
    let parts: Vec<(&str, &[u8])> = files
        .iter()
        .map(|f| ("application/dicom", f.bytes.as_slice()))
        .collect();
    let a = h
        .stow("/dicom-web/studies", DICOM_MULTIPART, multipart(&parts))
        .await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    a.json()
}

#[tokio::test]
async fn every_route_needs_a_valid_token_and_the_right_role() {
    let h = harness().await;
    let no_token = h
        .send(
            Request::get("/dicom-web/studies")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(no_token.status, StatusCode::UNAUTHORIZED);
    assert!(no_token.header("www-authenticate").starts_with("Bearer"));
    assert_eq!(no_token.json()["status"], 401);

    for forged in [
        "Bearer pacs_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "Bearer nonsense",
        "Basic YWRtaW46YWRtaW4=",
        "Bearer",
    ] {
        let a = h
            .send(
                Request::get("/dicom-web/studies/1.2.3/metadata")
                    .header(header::AUTHORIZATION, forged)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{forged}");
    }
    // STOW without a token stores nothing.
    let f = &small()[0];
    let a = h
        .send(
            Request::post("/dicom-web/studies")
                .header(header::CONTENT_TYPE, DICOM_MULTIPART)
                .body(Body::from(multipart(&[("application/dicom", &f.bytes)])))
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(h.instance_count().await, 0);

    // Health is public; metrics are for admins.
    let health = h
        .send(Request::get("/healthz").body(Body::empty()).unwrap())
        .await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = h
        .send(Request::get("/readyz").body(Body::empty()).unwrap())
        .await;
    assert_eq!(ready.status, StatusCode::OK);
    let as_clinician = h
        .send(
            Request::get("/metrics")
                .header(header::AUTHORIZATION, format!("Bearer {}", h.clinician))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(as_clinician.status, StatusCode::FORBIDDEN);
    let metrics = h.get("/metrics", None).await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains("pacs_ingest_stored_total 0"), "{text}");
    assert!(text.contains("pacs_http_requests_total{"), "{text}");
    assert!(text.contains("pacs_index_lag_changes"), "{text}");

    // A known resource with a method it does not take is a JSON 405.
    let a = h
        .send(
            Request::delete("/dicom-web/studies")
                .header(header::AUTHORIZATION, format!("Bearer {}", h.admin))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.json()["status"], 405);

    // An unknown path is a JSON 404.
    let a = h.get("/nothing/here", None).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.json()["status"], 404);
}

#[tokio::test]
async fn stored_by_stow_is_found_by_qido_and_retrieved_by_wado() {
    let h = harness().await;
    let files = small();
    let answer = stow_all(&h, &files).await;
    let referenced = answer["00081199"]["Value"].as_array().unwrap();
    assert_eq!(referenced.len(), files.len());
    assert!(string(&referenced[0], "00081190").starts_with(&format!("{BASE}/dicom-web/studies/")));
    assert_eq!(h.instance_count().await, files.len() as i64);

    let mut per_study: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &files {
        *per_study.entry(&f.study_instance_uid).or_default() += 1;
    }

    // All studies, each with its counts, keys in tag order.
    let a = h.get("/dicom-web/studies", None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("content-type"), "application/dicom+json");
    let studies = a.json();
    let studies = studies.as_array().unwrap();
    assert_eq!(studies.len(), per_study.len());
    for s in studies {
        let keys: Vec<&String> = s.as_object().unwrap().keys().collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
        let uid = string(s, "0020000D");
        assert_eq!(
            string(s, "00201208"),
            per_study[uid.as_str()].to_string(),
            "instances of {uid}"
        );
        assert!(
            s["00080061"]["Value"]
                .as_array()
                .is_some_and(|m| !m.is_empty())
        );
        assert_eq!(
            string(s, "00081190"),
            format!("{BASE}/dicom-web/studies/{uid}")
        );
    }
    // Newest first.
    let dates: Vec<String> = studies.iter().map(|s| string(s, "00080020")).collect();
    let mut sorted = dates.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(dates, sorted);

    // Wildcard on a name, case-insensitive.
    let name = string(&studies[0], "00100010");
    let prefix: String = name.chars().take(3).collect::<String>().to_lowercase();
    let a = h
        .get(
            &format!("/dicom-web/studies?PatientName={}*", urlencode(&prefix)),
            None,
        )
        .await;
    let found = a.json();
    assert!(
        found
            .as_array()
            .unwrap()
            .iter()
            .any(|s| string(s, "00100010") == name),
        "{prefix}* did not find {name}"
    );

    // Date range around one study's date finds it.
    let date = &dates[0];
    let a = h
        .get(&format!("/dicom-web/studies?StudyDate={date}-{date}"), None)
        .await;
    let found = a.json();
    assert!(
        found
            .as_array()
            .unwrap()
            .iter()
            .all(|s| string(s, "00080020") == *date)
    );
    assert!(!found.as_array().unwrap().is_empty());

    // UID lists with commas; paging to the end.
    let uids: Vec<&str> = per_study.keys().copied().take(2).collect();
    let a = h
        .get(
            &format!("/dicom-web/studies?StudyInstanceUID={}", uids.join(",")),
            None,
        )
        .await;
    let got: BTreeSet<String> = a
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| string(s, "0020000D"))
        .collect();
    assert_eq!(got, uids.iter().map(|u| u.to_string()).collect());
    let mut paged = Vec::new();
    for offset in 0.. {
        let a = h
            .get(
                &format!("/dicom-web/studies?limit=2&offset={}", offset * 2),
                None,
            )
            .await;
        let page = a.json().as_array().unwrap().clone();
        if page.is_empty() {
            break;
        }
        paged.extend(page.iter().map(|s| string(s, "0020000D")));
    }
    let all: Vec<String> = studies.iter().map(|s| string(s, "0020000D")).collect();
    assert_eq!(paged, all);

    // Series and instances of a study.
    let ct = files
        .iter()
        .find(|f| f.kind == pacs_fixtures::Kind::Ct)
        .unwrap();
    let a = h
        .get(
            &format!("/dicom-web/studies/{}/series", ct.study_instance_uid),
            None,
        )
        .await;
    let series = a.json();
    let ct_series = series
        .as_array()
        .unwrap()
        .iter()
        .find(|s| string(s, "0020000E") == ct.series_instance_uid)
        .expect("the CT series is listed");
    assert_eq!(string(ct_series, "00080060"), "CT");
    let a = h
        .get(
            &format!(
                "/dicom-web/studies/{}/series/{}/instances?includefield=00280100",
                ct.study_instance_uid, ct.series_instance_uid
            ),
            None,
        )
        .await;
    let instances = a.json();
    let first = instances
        .as_array()
        .unwrap()
        .iter()
        .find(|i| string(i, "00080018") == ct.sop_instance_uid)
        .unwrap();
    assert_eq!(string(first, "00280010"), "512");
    assert_eq!(string(first, "00280100"), "16");

    // The instance back, byte-identical.
    let url = format!(
        "/dicom-web/studies/{}/series/{}/instances/{}",
        ct.study_instance_uid, ct.series_instance_uid, ct.sop_instance_uid
    );
    let a = h
        .get(
            &url,
            Some("multipart/related; type=\"application/dicom\"; transfer-syntax=*"),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let parts = parts_of(&a).await;
    assert_eq!(parts.len(), 1);
    assert!(parts[0].0.starts_with("application/dicom"));
    assert!(
        parts[0]
            .0
            .contains(&format!("transfer-syntax={}", ct.transfer_syntax))
    );
    assert_eq!(parts[0].1.as_ref(), ct.bytes.as_slice());

    // The whole study.
    let a = h
        .get(
            &format!("/dicom-web/studies/{}", ct.study_instance_uid),
            None,
        )
        .await;
    assert_eq!(
        parts_of(&a).await.len(),
        per_study[ct.study_instance_uid.as_str()]
    );

    // Metadata with absolute bulk data URIs from the configured base.
    let a = h
        .get(
            &format!(
                "/dicom-web/studies/{}/series/{}/metadata",
                ct.study_instance_uid, ct.series_instance_uid
            ),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let metadata = a.json();
    let pixel_uri = metadata[0]["7FE00010"]["BulkDataURI"].as_str().unwrap();
    assert!(
        pixel_uri.starts_with(&format!("{BASE}/dicom-web/studies/")),
        "{pixel_uri}"
    );
    let a = h.get(pixel_uri.strip_prefix(BASE).unwrap(), None).await;
    assert_eq!(a.status, StatusCode::OK);

    // Rendered: JPEG by default, PNG when asked, 406 for what cannot be made.
    let a = h.get(&format!("{url}/rendered"), None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("content-type"), "image/jpeg");
    assert_eq!(&a.body[..2], &[0xFF, 0xD8]);
    let a = h
        .get(&format!("{url}/rendered?viewport=64,64"), Some("image/png"))
        .await;
    assert_eq!(a.header("content-type"), "image/png");
    assert_eq!(&a.body[1..4], b"PNG");
    let a = h.get(&format!("{url}/rendered"), Some("image/gif")).await;
    assert_eq!(a.status, StatusCode::NOT_ACCEPTABLE);
    let a = h.get(&format!("{url}/rendered?window=abc"), None).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);

    // Thumbnails: the series one is made once and then served.
    let thumb = format!(
        "/dicom-web/studies/{}/series/{}/thumbnail",
        ct.study_instance_uid, ct.series_instance_uid
    );
    let a = h.get(&thumb, None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(&a.body[..2], &[0xFF, 0xD8]);
    let again = h.get(&thumb, None).await;
    assert_eq!(again.body, a.body);
    let a = h
        .get(
            &format!("/dicom-web/studies/{}/thumbnail", ct.study_instance_uid),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);

    // Unknown UIDs are 404.
    for missing in [
        "/dicom-web/studies/1.2.3.4".to_owned(),
        "/dicom-web/studies/1.2.3.4/metadata".to_owned(),
        format!("{url}9/rendered"),
        format!(
            "/dicom-web/studies/{}/series/1.2.3/thumbnail",
            ct.study_instance_uid
        ),
    ] {
        let a = h.get(&missing, None).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{missing}");
        assert_eq!(a.json()["status"], 404);
    }

    // WADO-URI.
    let a = h
        .get(
            &format!(
                "/wado?requestType=WADO&studyUID={}&seriesUID={}&objectUID={}&contentType=application%2Fdicom",
                ct.study_instance_uid, ct.series_instance_uid, ct.sop_instance_uid
            ),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body.as_ref(), ct.bytes.as_slice());
    let a = h
        .get(
            &format!(
                "/wado?requestType=WADO&studyUID={}&seriesUID={}&objectUID={}&rows=32",
                ct.study_instance_uid, ct.series_instance_uid, ct.sop_instance_uid
            ),
            None,
        )
        .await;
    assert_eq!(a.header("content-type"), "image/jpeg");
    let a = h
        .get(
            "/wado?requestType=WADO&studyUID=1&seriesUID=2&objectUID=3",
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = h.get("/wado?requestType=XYZ", None).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"*?-.^".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn malformed_or_refused_stow_requests_store_nothing() {
    let h = harness().await;
    let files = small();
    let f = &files[0];
    let one = multipart(&[("application/dicom", &f.bytes)]);

    let a = h
        .stow("/dicom-web/studies", "application/json", one.clone())
        .await;
    assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let a = h
        .stow(
            "/dicom-web/studies",
            "multipart/related; type=\"application/dicom\"",
            one.clone(),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "missing boundary");
    // A body cut in the middle of its part.
    let cut = one[..one.len() / 2].to_vec();
    let a = h.stow("/dicom-web/studies", DICOM_MULTIPART, cut).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json()["status"], 400);
    // A body that announces gigabytes but sends a few bytes.
    let r = Request::post("/dicom-web/studies")
        .header(header::AUTHORIZATION, format!("Bearer {}", h.admin))
        .header(header::CONTENT_TYPE, DICOM_MULTIPART)
        .header(header::CONTENT_LENGTH, "5000000000")
        .body(Body::from(one[..100].to_vec()))
        .unwrap();
    let a = h.send(r).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    // A part that is not DICOM, a truncated DICOM file.
    let truncated = &f.bytes[..f.bytes.len() / 3];
    let a = h
        .stow(
            "/dicom-web/studies",
            DICOM_MULTIPART,
            multipart(&[
                ("application/dicom", b"not dicom at all"),
                ("application/dicom", truncated),
            ]),
        )
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    let failed = a.json()["00081198"]["Value"].as_array().unwrap().clone();
    assert_eq!(failed.len(), 2);
    assert_eq!(failed[0]["00081197"]["Value"][0], 0xC000);
    assert!(a.headers.get_all(header::WARNING).iter().count() >= 2);
    assert_eq!(
        h.instance_count().await,
        0,
        "nothing stored after bad requests"
    );

    // Into the wrong study: refused per instance.
    let a = h
        .stow("/dicom-web/studies/1.2.999", DICOM_MULTIPART, one.clone())
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    assert_eq!(
        a.json()["00081198"]["Value"][0]["00081197"]["Value"][0],
        0xC409
    );
    assert_eq!(h.instance_count().await, 0);

    // Stored once; a different object with the same SOP Instance UID is a
    // conflict and the stored one stays.
    let a = h
        .stow("/dicom-web/studies", DICOM_MULTIPART, one.clone())
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let mut forged = f.bytes.clone();
    let last = forged.len() - 1;
    forged[last] ^= 0xFF;
    let a = h
        .stow(
            "/dicom-web/studies",
            DICOM_MULTIPART,
            multipart(&[("application/dicom", &forged)]),
        )
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    assert_eq!(
        a.json()["00081198"]["Value"][0]["00081197"]["Value"][0],
        0x0111
    );
    assert_eq!(
        h.archive
            .retrieve(&f.sop_instance_uid)
            .await
            .unwrap()
            .as_ref(),
        f.bytes.as_slice()
    );
    // Some stored, some failed: 202.
    let a = h
        .stow(
            "/dicom-web/studies",
            DICOM_MULTIPART,
            multipart(&[
                ("application/dicom", &files[1].bytes),
                ("text/plain", b"hello"),
            ]),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(h.instance_count().await, 2);
}

#[tokio::test]
async fn bad_queries_are_400_and_unmet_accept_is_406() {
    let h = harness().await;
    for bad in [
        "/dicom-web/studies?limit=-1",
        "/dicom-web/studies?NotAnAttribute=1",
        "/dicom-web/studies?fuzzymatching=maybe",
        "/dicom-web/studies?includefield=Bogus",
        "/dicom-web/studies/1.2/series/1.3/instances/1.4/frames/0",
    ] {
        let a = h.get(bad, None).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(a.json()["error"].as_str().is_some());
    }
    let a = h.get("/dicom-web/studies", Some("application/xml")).await;
    assert_eq!(a.status, StatusCode::NOT_ACCEPTABLE);
    let a = h.get("/dicom-web/studies", Some("application/json")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("content-type"), "application/json");
    let a = h.get("/dicom-web/studies?PatientAge=040Y", None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.header("warning").contains("00101010"));
}

#[tokio::test]
async fn cors_preflight_and_error_responses_carry_the_headers() {
    let h = harness().await;
    let a = h
        .send(
            Request::builder()
                .method(Method::OPTIONS)
                .uri("/dicom-web/studies")
                .header(header::ORIGIN, VIEWER)
                .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
                .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "authorization")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert!(a.status.is_success(), "{}", a.status);
    assert_eq!(a.header("access-control-allow-origin"), VIEWER);
    let a = h
        .send(
            Request::get("/dicom-web/studies")
                .header(header::ORIGIN, VIEWER)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.header("access-control-allow-origin"), VIEWER);
    let a = h
        .send(
            Request::get("/dicom-web/studies")
                .header(header::ORIGIN, "https://evil.example.com")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(a.header("access-control-allow-origin"), "");
}

#[tokio::test]
async fn a_stored_instance_is_searchable_within_a_second() {
    let h = harness().await;
    let f = &small()[0];
    h.archive
        .ingest_part10(
            Bytes::from(f.bytes.clone()),
            pacs_archive::IngestSource::Other("test".into()),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let a = h
            .get(
                &format!(
                    "/dicom-web/studies?StudyInstanceUID={}",
                    f.study_instance_uid
                ),
                None,
            )
            .await;
        if a.json().as_array().is_some_and(|s| s.len() == 1) {
            break;
        }
        assert!(Instant::now() < deadline, "not searchable after 1 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
