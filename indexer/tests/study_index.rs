//! The study index against a real embedded archive filled with fixtures:
//! every matcher kind, person-name folding and fuzzy matching, counts,
//! paging, resume, rebuild and the follower. Where the catalog's SQL
//! translation of the same query applies (ASCII values), its answer (and
//! order) is the oracle.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pacs_archive::catalog::Catalog;
use pacs_archive::query::{Attribute, Condition, Level, Matcher, Query};
use pacs_archive::{Archive, ArchiveConfig, IngestReceipt, IngestSource};
use pacs_fixtures::{DatasetSpec, FixtureFile, Kind, ts};
use pacs_indexer::{DocKind, IndexError, StudyDoc, StudyIndex, can_answer};

const STUDIES: usize = 36;

/// 12 patients (the first five are the fixtures' showcases: Müller,
/// Øvergård, Yamada, Papadopoulou, unidentified) with 3 studies each, tiny
/// images and both report kinds.
fn spec(seed: u64) -> DatasetSpec {
    DatasetSpec {
        seed,
        patients: 12,
        studies_per_patient: 3,
        ct_slices: 2,
        mr_slices: 1,
        us_frames: 1,
        cr_size: (64, 64),
        ct_size: 32,
        mr_size: 32,
        us_size: (64, 48),
        transfer_syntax: Some(ts::EXPLICIT_VR_LE),
        ..DatasetSpec::default()
    }
}

/// The change-feed entries that ingesting `files` appends: one per
/// instance, and one per report an SR or PDF holds.
fn changes_of(files: &[FixtureFile]) -> usize {
    files.len()
        + files
            .iter()
            .filter(|f| matches!(f.kind, Kind::Sr | Kind::Pdf))
            .count()
}

struct Setup {
    _dir: tempfile::TempDir,
    archive: Archive,
    index: Arc<StudyIndex>,
    files: Vec<FixtureFile>,
}

impl Setup {
    fn catalog(&self) -> &Catalog {
        self.archive.catalog()
    }
}

async fn ingest(archive: &Archive, file: &FixtureFile) {
    let receipt = archive
        .ingest_part10(
            Bytes::from(file.bytes.clone()),
            IngestSource::Other("indexer-test".into()),
        )
        .await;
    assert!(
        matches!(receipt, IngestReceipt::Stored(_)),
        "{} not stored: {receipt:?}",
        file.file_name
    );
}

async fn setup(spec: DatasetSpec) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let archive = Archive::open(ArchiveConfig::embedded(&dir.path().join("data")))
        .await
        .unwrap();
    let files: Vec<FixtureFile> = spec.iter().collect();
    for file in &files {
        ingest(&archive, file).await;
    }
    let index = StudyIndex::open(&dir.path().join("index")).unwrap();
    Setup {
        _dir: dir,
        archive,
        index,
        files,
    }
}

fn attr(keyword: &str) -> &'static Attribute {
    Attribute::by_keyword(keyword).unwrap()
}

/// A study-level query of `(keyword, match value)` pairs, read as a
/// C-FIND identifier would be.
fn query(keys: &[(&str, &str)]) -> Query {
    let mut q = Query::new(Level::Study);
    for (keyword, value) in keys {
        let a = attr(keyword);
        q.push(a, Matcher::parse(a.kind, value, false));
    }
    q
}

fn fuzzy(keys: &[(&str, &str)]) -> Query {
    let mut q = query(keys);
    q.fuzzy = true;
    q
}

fn search_all(index: &StudyIndex, q: &Query) -> Vec<StudyDoc> {
    let page = index.search(q, 10_000, 0).unwrap();
    assert_eq!(page.total, page.studies.len(), "total counts every match");
    page.studies
}

fn uids(docs: &[StudyDoc]) -> Vec<String> {
    docs.iter().map(|d| d.study_instance_uid.clone()).collect()
}

fn uid_set(docs: &[StudyDoc]) -> BTreeSet<String> {
    docs.iter().map(|d| d.study_instance_uid.clone()).collect()
}

/// The catalog's answer to `q` (its SQL translation), newest first.
async fn oracle(catalog: &Catalog, q: &Query) -> Vec<String> {
    let mut binds = Vec::new();
    let filter = q
        .sql_where(&mut binds)
        .map(|w| format!("WHERE {w}"))
        .unwrap_or_default();
    let sql = format!(
        "SELECT st.study_instance_uid FROM studies st JOIN patients p ON p.id = st.patient_pk \
         {filter} ORDER BY st.study_date DESC, st.study_time DESC, st.study_instance_uid ASC"
    );
    catalog
        .select_text_rows(&sql, &binds, 100_000)
        .await
        .unwrap()
        .into_iter()
        .map(|row| row[0].clone().unwrap())
        .collect()
}

/// The index and the catalog agree on `q` (same studies, same order), and
/// the answer is not empty (a vacuous agreement proves nothing).
async fn agrees(s: &Setup, q: &Query) -> Vec<StudyDoc> {
    let docs = search_all(&s.index, q);
    let expected = oracle(s.catalog(), q).await;
    assert_eq!(uids(&docs), expected, "index and catalog differ on {q:?}");
    assert!(!docs.is_empty(), "{q:?} selects nothing");
    docs
}

/// Studies of the fixture files of patient `p` (by Patient ID).
fn studies_of_patient(files: &[FixtureFile], patient_id: &str) -> BTreeSet<String> {
    files
        .iter()
        .filter(|f| f.patient_id == patient_id)
        .map(|f| f.study_instance_uid.clone())
        .collect()
}

#[tokio::test]
async fn every_matcher_kind_matches_like_the_catalog() {
    let s = setup(spec(42)).await;
    let applied = s.index.catch_up(s.catalog()).await.unwrap();
    assert_eq!(applied as usize, changes_of(&s.files));
    assert_eq!(
        s.index.indexed_seq(),
        s.catalog().last_change_seq().await.unwrap()
    );

    // Universal: no condition, and an explicit universal condition.
    let all = agrees(&s, &query(&[])).await;
    assert_eq!(all.len(), STUDIES);
    let mut q = Query::new(Level::Study);
    q.conditions.push(Condition {
        attribute: attr("PatientName"),
        matcher: Matcher::Universal,
    });
    assert_eq!(search_all(&s.index, &q).len(), STUDIES);
    assert_eq!(
        search_all(&s.index, &query(&[("StudyDescription", "*")])).len(),
        STUDIES
    );

    // Single values, exact and case-sensitive for text.
    let pid = &s
        .files
        .iter()
        .find(|f| !f.patient_id.is_empty())
        .unwrap()
        .patient_id;
    let docs = agrees(&s, &query(&[("PatientID", pid)])).await;
    assert_eq!(uid_set(&docs), studies_of_patient(&s.files, pid));
    assert_eq!(docs.len(), 3);
    let acc = all[5].accession_number.clone().unwrap();
    let docs = agrees(&s, &query(&[("AccessionNumber", &acc)])).await;
    assert_eq!(docs.len(), 1);
    assert!(
        search_all(
            &s.index,
            &query(&[("AccessionNumber", &acc.to_lowercase())])
        )
        .is_empty()
    );
    assert!(
        search_all(
            &s.index,
            &query(&[("AccessionNumber", &acc[..acc.len() - 1])])
        )
        .is_empty()
    );
    agrees(&s, &query(&[("StudyDescription", "MR BRAIN WO CONTRAST")])).await;
    agrees(&s, &query(&[("PatientSex", "F")])).await;
    agrees(&s, &query(&[("IssuerOfPatientID", "SGH")])).await;
    let study_id = all[3].study_id.clone().unwrap();
    assert_eq!(agrees(&s, &query(&[("StudyID", &study_id)])).await.len(), 1);

    // Wildcards: `*` and `?`, regex metacharacters taken literally.
    agrees(&s, &query(&[("StudyDescription", "CT THORAX*")])).await;
    agrees(&s, &query(&[("StudyDescription", "*CONTRAST")])).await;
    let mut pattern: Vec<char> = acc.chars().collect();
    pattern[1] = '?';
    pattern[4] = '?';
    let last = pattern.len() - 1;
    pattern[last] = '*';
    let pattern: String = pattern.into_iter().collect();
    let docs = agrees(&s, &query(&[("AccessionNumber", &pattern)])).await;
    assert!(
        docs.iter()
            .any(|d| d.accession_number.as_deref() == Some(acc.as_str()))
    );
    assert!(search_all(&s.index, &query(&[("StudyDescription", "CT.THORAX*")])).is_empty());
    let uid = all[0].study_instance_uid.clone();
    let uid_prefix = format!("{}*", &uid[..uid.rfind('.').unwrap() + 1]);
    // Built by hand (UID match values are never read as wildcards).
    assert_eq!(
        search_all(
            &s.index,
            &Query::new(Level::Study).with(attr("StudyInstanceUID"), Matcher::Wildcard(uid_prefix))
        )
        .len(),
        STUDIES
    );

    // Date ranges: closed, open at either end; inclusive bounds.
    let mut dates: Vec<String> = all.iter().filter_map(|d| d.study_date.clone()).collect();
    dates.sort();
    let (lo, mid, hi) = (&dates[5], &dates[dates.len() / 2], &dates[dates.len() - 6]);
    let docs = agrees(&s, &query(&[("StudyDate", &format!("{mid}-"))])).await;
    assert!(
        docs.iter()
            .all(|d| d.study_date.as_deref().unwrap() >= mid.as_str())
    );
    assert!(
        docs.iter()
            .any(|d| d.study_date.as_deref() == Some(mid.as_str()))
    );
    let docs = agrees(&s, &query(&[("StudyDate", &format!("-{mid}"))])).await;
    assert!(
        docs.iter()
            .all(|d| d.study_date.as_deref().unwrap() <= mid.as_str())
    );
    assert!(
        docs.iter()
            .any(|d| d.study_date.as_deref() == Some(mid.as_str()))
    );
    let docs = agrees(&s, &query(&[("StudyDate", &format!("{lo}-{hi}"))])).await;
    assert!(docs.len() < STUDIES);
    agrees(&s, &query(&[("StudyDate", mid)])).await;
    // Dates with separators (ACR-NEMA style) match too.
    let dotted = format!("{}.{}.{}", &mid[..4], &mid[4..6], &mid[6..]);
    assert_eq!(
        uid_set(&search_all(&s.index, &query(&[("StudyDate", &dotted)]))),
        uid_set(&search_all(&s.index, &query(&[("StudyDate", mid)])))
    );
    agrees(&s, &query(&[("PatientBirthDate", "19500101-19800101")])).await;

    // Time ranges: an upper end without seconds includes the whole minute.
    let with_seconds = all
        .iter()
        .find(|d| d.study_time.as_deref().is_some_and(|t| !t.ends_with("00")))
        .unwrap();
    let t = with_seconds.study_time.clone().unwrap();
    let hhmm = &t[..4];
    for value in [
        format!("-{hhmm}"),
        format!("{hhmm}-{hhmm}"),
        format!("{hhmm}-"),
    ] {
        let docs = agrees(&s, &query(&[("StudyTime", &value)])).await;
        assert!(
            uid_set(&docs).contains(&with_seconds.study_instance_uid),
            "{value} must include {t}"
        );
    }
    let before = format!("-{}", &t[..4]);
    let minute_earlier = {
        let hh: u32 = t[..2].parse().unwrap();
        let mm: u32 = t[2..4].parse().unwrap();
        let m = hh * 60 + mm - 1;
        format!("-{:02}{:02}", m / 60, m % 60)
    };
    let docs = search_all(&s.index, &query(&[("StudyTime", &minute_earlier)]));
    assert!(!uid_set(&docs).contains(&with_seconds.study_instance_uid));
    assert!(search_all(&s.index, &query(&[("StudyTime", &before)])).len() > docs.len());

    // UID lists.
    let list = format!(
        "{}\\{}\\1.2.3.4.5",
        all[1].study_instance_uid, all[7].study_instance_uid
    );
    let docs = agrees(&s, &query(&[("StudyInstanceUID", &list)])).await;
    assert_eq!(docs.len(), 2);
    let docs = agrees(
        &s,
        &query(&[("StudyInstanceUID", &all[4].study_instance_uid)]),
    )
    .await;
    assert_eq!(docs[0], all[4]);

    // ModalitiesInStudy: any series, single, list, wildcard; with a range.
    let ct = agrees(&s, &query(&[("ModalitiesInStudy", "CT")])).await;
    assert!(ct.iter().all(|d| d.modalities.iter().any(|m| m == "CT")));
    let ct_mr = agrees(&s, &query(&[("ModalitiesInStudy", "CT\\MR")])).await;
    assert!(ct_mr.len() > ct.len());
    agrees(&s, &query(&[("ModalitiesInStudy", "?R")])).await;
    agrees(
        &s,
        &query(&[
            ("ModalitiesInStudy", "MR"),
            ("StudyDate", &format!("{lo}-")),
        ]),
    )
    .await;
    assert!(search_all(&s.index, &query(&[("ModalitiesInStudy", "XA")])).is_empty());

    // Referring physician: case-insensitive person name.
    let kovacs = agrees(&s, &query(&[("ReferringPhysicianName", "kovacs*")])).await;
    assert!(kovacs.iter().all(|d| {
        d.referring_physician_name
            .as_deref()
            .unwrap()
            .starts_with("Kovacs")
    }));
    assert_eq!(
        uid_set(&search_all(
            &s.index,
            &query(&[("ReferringPhysicianName", "KOVACS^EVA^^DR.")])
        )),
        uid_set(&kovacs)
    );

    // Combined conditions are all required.
    let combined = agrees(
        &s,
        &query(&[("PatientID", pid), ("ModalitiesInStudy", "CT\\MR\\CR")]),
    )
    .await;
    assert!(combined.len() <= 3);

    // Not answerable: a series-level key; and not a study-level query.
    let q = query(&[("Modality", "CT")]);
    assert!(!can_answer(&q));
    assert!(matches!(
        s.index.search(&q, 10, 0),
        Err(IndexError::Query(_))
    ));
    assert!(can_answer(&query(&[
        ("PatientName", "x*"),
        ("StudyDate", "2020-")
    ])));
    let mut q = query(&[]);
    q.level = Level::Series;
    assert!(matches!(
        s.index.search(&q, 10, 0),
        Err(IndexError::Query(_))
    ));
}

#[tokio::test]
async fn person_names_fold_case_and_accents_and_match_fuzzily() {
    let s = setup(spec(42)).await;
    s.index.catch_up(s.catalog()).await.unwrap();
    let all = search_all(&s.index, &query(&[]));
    let studies_named = |name: &str| -> BTreeSet<String> {
        all.iter()
            .filter(|d| d.patient_name.as_deref() == Some(name))
            .map(|d| d.study_instance_uid.clone())
            .collect()
    };
    let muller = studies_named("Müller^Jürgen");
    assert_eq!(muller.len(), 3, "the fixtures' first patient has 3 studies");
    let names = |q: &Query| uid_set(&search_all(&s.index, q));

    for value in [
        "muller*",
        "MÜLLER*",
        "Müller^Jürgen",
        "MULLER^JURGEN",
        "m?ller^j?rgen",
        "*ller^J*",
    ] {
        assert_eq!(names(&query(&[("PatientName", value)])), muller, "{value}");
    }
    // Single value matching is of the whole name.
    assert!(names(&query(&[("PatientName", "Müller")])).is_empty());
    assert_eq!(
        names(&query(&[("PatientName", "*vergard*")])),
        studies_named("Øvergård^Åse")
    );
    assert_eq!(
        names(&query(&[("PatientName", "øVERGÅRD^åse")])),
        studies_named("Øvergård^Åse")
    );
    assert_eq!(
        names(&query(&[("PatientName", "Overgard^Ase")])),
        studies_named("Øvergård^Åse")
    );
    assert_eq!(
        names(&query(&[("PatientName", "OVERG?RD*")])),
        studies_named("Øvergård^Åse")
    );
    let greek = studies_named("Παπαδοπούλου^Ελένη");
    assert_eq!(greek.len(), 3);
    assert_eq!(names(&query(&[("PatientName", "ΠΑΠΑΔΟΠΟΥΛΟΥ*")])), greek);
    assert_eq!(
        names(&query(&[("PatientName", "παπαδοπουλου^ελενη")])),
        greek
    );
    // Multi-group names: each component group is a whole value too.
    let yamada = studies_named("Yamada^Tarou=山田^太郎=やまだ^たろう");
    assert_eq!(yamada.len(), 3);
    assert_eq!(names(&query(&[("PatientName", "YAMADA^TAROU")])), yamada);
    assert_eq!(names(&query(&[("PatientName", "山田*")])), yamada);
    assert_eq!(names(&query(&[("PatientName", "yamada*")])), yamada);

    // Fuzzy matching only when asked.
    for value in [
        "Mueller^Jurgen",
        "Muler",
        "Mueller",
        "MILLER^Juergen",
        "jurgen",
    ] {
        assert!(
            names(&query(&[("PatientName", value)])).is_empty(),
            "{value} without fuzzy"
        );
        assert_eq!(
            names(&fuzzy(&[("PatientName", value)])),
            muller,
            "fuzzy {value}"
        );
    }
    // Exact and wildcard matches still match when fuzzy is set.
    assert_eq!(names(&fuzzy(&[("PatientName", "muller*")])), muller);
    assert_eq!(names(&fuzzy(&[("PatientName", "Müller^Jürgen")])), muller);
    // Too far is not a match; short tokens must be exact.
    assert!(names(&fuzzy(&[("PatientName", "Mailand")])).is_empty());
    assert!(!names(&fuzzy(&[("PatientName", "Mxller")])).is_empty());
    assert!(names(&fuzzy(&[("PatientName", "Mxxxer")])).is_disjoint(&muller));
    // Fuzzy on the referring physician too.
    let kovacs = names(&query(&[("ReferringPhysicianName", "Kovacs*")]));
    assert!(!kovacs.is_empty());
    assert_eq!(
        names(&fuzzy(&[("ReferringPhysicianName", "Kovach")])),
        kovacs
    );
}

#[tokio::test]
async fn counts_and_stored_documents_match_the_fixtures() {
    let s = setup(spec(42)).await;
    s.index.catch_up(s.catalog()).await.unwrap();
    let mut expected: BTreeMap<String, (BTreeSet<String>, u64)> = BTreeMap::new();
    for f in &s.files {
        let e = expected.entry(f.study_instance_uid.clone()).or_default();
        e.0.insert(f.series_instance_uid.clone());
        e.1 += 1;
    }
    assert_eq!(expected.len(), STUDIES);
    for (uid, (series, instances)) in &expected {
        let doc = s.index.study(uid).unwrap().expect("every study is indexed");
        assert_eq!(doc.number_of_series as usize, series.len(), "{uid}");
        assert_eq!(doc.number_of_instances, *instances, "{uid}");
        let modalities: Vec<String> = s
            .catalog()
            .select_text_rows(
                "SELECT DISTINCT modality FROM series WHERE study_instance_uid = $1 ORDER BY modality",
                std::slice::from_ref(uid),
                100,
            )
            .await
            .unwrap()
            .into_iter()
            .map(|r| r[0].clone().unwrap())
            .collect();
        assert_eq!(doc.modalities, modalities);
        assert!(doc.study_date.is_some() && doc.study_time.is_some() && doc.patient_name.is_some());
    }
    assert!(s.index.study("1.2.3.4.5.6").unwrap().is_none());
    // The unidentified patient keeps no Patient ID and no birth date.
    let unknown = search_all(&s.index, &query(&[("PatientName", "Unknown^Trauma*")]));
    assert_eq!(unknown.len(), 3);
    assert!(
        unknown
            .iter()
            .all(|d| d.patient_id.is_none() && d.patient_birth_date.is_none())
    );
}

#[tokio::test]
async fn pages_cover_every_match_once_in_a_stable_order() {
    let s = setup(spec(42)).await;
    s.index.catch_up(s.catalog()).await.unwrap();
    for q in [
        query(&[]),
        query(&[("ModalitiesInStudy", "SR")]),
        query(&[("StudyDescription", "*A*")]),
    ] {
        let expected = oracle(s.catalog(), &q).await;
        assert!(expected.len() > 10);
        for limit in [1usize, 7, 10] {
            let mut seen = Vec::new();
            let mut offset = 0;
            loop {
                let page = s.index.search(&q, limit, offset).unwrap();
                assert_eq!(page.total, expected.len());
                assert!(page.studies.len() <= limit);
                if page.studies.is_empty() {
                    break;
                }
                offset += page.studies.len();
                seen.extend(uids(&page.studies));
            }
            assert_eq!(seen, expected, "limit {limit}");
        }
        // A limit of 0 still counts.
        let page = s.index.search(&q, 0, 0).unwrap();
        assert_eq!((page.total, page.studies.len()), (expected.len(), 0));
        // Past the end: empty page, same total.
        let page = s.index.search(&q, 5, expected.len() + 3).unwrap();
        assert_eq!((page.total, page.studies.len()), (expected.len(), 0));
    }
    // Newest first.
    let all = search_all(&s.index, &query(&[]));
    assert!(all.windows(2).all(|w| {
        (w[0].study_date.clone(), w[0].study_time.clone())
            >= (w[1].study_date.clone(), w[1].study_time.clone())
    }));
}

#[tokio::test]
async fn resumes_after_reopen_rebuilds_and_recreates_on_schema_change() {
    let s = setup(spec(7)).await;
    let files = changes_of(&s.files) as u64;
    assert_eq!(s.index.indexed_seq(), 0);
    assert_eq!(s.index.catch_up(s.catalog()).await.unwrap(), files);
    assert_eq!(s.index.catch_up(s.catalog()).await.unwrap(), 0);
    let seq = s.index.indexed_seq();
    assert_eq!(seq, s.catalog().last_change_seq().await.unwrap());
    let queries = [
        query(&[]),
        query(&[("PatientName", "m*")]),
        query(&[("ModalitiesInStudy", "CT\\US")]),
        fuzzy(&[("PatientName", "Mueller")]),
    ];
    let before: Vec<Vec<StudyDoc>> = queries.iter().map(|q| search_all(&s.index, q)).collect();
    assert!(before.iter().all(|r| !r.is_empty()));

    // Reopen: the committed seq persists and nothing is applied again.
    let Setup {
        _dir,
        archive,
        index,
        files: fixture_files,
    } = s;
    drop(index);
    let dir = _dir.path().join("index");
    let index = StudyIndex::open(&dir).unwrap();
    assert_eq!(index.indexed_seq(), seq);
    assert_eq!(index.catch_up(archive.catalog()).await.unwrap(), 0);
    for (q, b) in queries.iter().zip(&before) {
        assert_eq!(&search_all(&index, q), b);
    }

    // New instances of a new study are applied on top.
    let extra: Vec<FixtureFile> = spec(8).iter().take(3).collect();
    for f in &extra {
        ingest(&archive, f).await;
    }
    assert_eq!(index.catch_up(archive.catalog()).await.unwrap(), 3);
    assert_eq!(index.num_studies() as usize, STUDIES + 1);

    // Rebuild gives the same answers, with progress up to the total.
    let last = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let (l, c) = (last.clone(), calls.clone());
    let progress = move |done: u64, total: u64| {
        assert!(done <= total);
        l.store(done, Ordering::SeqCst);
        c.fetch_add(1, Ordering::SeqCst);
    };
    let answers: Vec<Vec<StudyDoc>> = queries.iter().map(|q| search_all(&index, q)).collect();
    let rebuilt = index.rebuild(archive.catalog(), &progress).await.unwrap();
    // Every study, and the report of each SR and PDF.
    let reports = fixture_files
        .iter()
        .filter(|f| matches!(f.kind, Kind::Sr | Kind::Pdf))
        .count() as u64;
    assert_eq!(rebuilt, STUDIES as u64 + 1 + reports);
    assert_eq!(index.count(DocKind::Report), reports);
    assert_eq!(last.load(Ordering::SeqCst), rebuilt);
    assert!(calls.load(Ordering::SeqCst) >= 2);
    assert_eq!(
        index.indexed_seq(),
        archive.catalog().last_change_seq().await.unwrap()
    );
    assert_eq!(index.num_studies(), STUDIES as u64 + 1);
    for (q, a) in queries.iter().zip(&answers) {
        assert_eq!(&search_all(&index, q), a, "{q:?} after rebuild");
    }
    assert_eq!(index.catch_up(archive.catalog()).await.unwrap(), 0);
    let extra_study = index.study(&extra[0].study_instance_uid).unwrap().unwrap();
    assert_eq!(extra_study.number_of_instances, 3);
    assert_eq!(
        index
            .study(&fixture_files[0].study_instance_uid)
            .unwrap()
            .unwrap()
            .study_instance_uid,
        fixture_files[0].study_instance_uid
    );

    // An index written with another schema version is recreated empty and
    // filled again by the next catch-up.
    drop(index);
    let meta_path = dir.join("meta.json");
    let meta = std::fs::read_to_string(&meta_path).unwrap();
    let tampered = meta.replace("schema_version\\\":", "schema_version\\\":9");
    assert_ne!(
        meta, tampered,
        "the payload carries the schema version: {meta}"
    );
    std::fs::write(&meta_path, tampered).unwrap();
    let index = StudyIndex::open(&dir).unwrap();
    assert_eq!(index.indexed_seq(), 0);
    assert_eq!(index.num_studies(), 0);
    assert!(search_all(&index, &query(&[])).is_empty());
    let all_changes = archive.catalog().last_change_seq().await.unwrap() as u64;
    assert_eq!(
        index.catch_up(archive.catalog()).await.unwrap(),
        all_changes
    );
    for (q, a) in queries.iter().zip(&answers) {
        assert_eq!(&search_all(&index, q), a, "{q:?} after recreation");
    }
}

#[tokio::test]
async fn the_follower_makes_an_acknowledged_instance_searchable_within_a_second() {
    let small = DatasetSpec {
        patients: 2,
        studies_per_patient: 1,
        ..spec(11)
    };
    let s = setup(small).await;
    let follower = s.index.spawn_follower(s.catalog().clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.index.indexed_seq() < s.catalog().last_change_seq().await.unwrap() {
        assert!(Instant::now() < deadline, "the follower never caught up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(s.index.num_studies(), 2);

    // A new study, then one more instance of it.
    let new: Vec<FixtureFile> = spec(12).iter().take(2).collect();
    assert_eq!(new[0].study_instance_uid, new[1].study_instance_uid);
    for (n, file) in new.iter().enumerate() {
        ingest(&s.archive, file).await;
        let acknowledged = Instant::now();
        let q = query(&[("StudyInstanceUID", &file.study_instance_uid)]);
        loop {
            let page = s.index.search(&q, 1, 0).unwrap();
            if page
                .studies
                .first()
                .is_some_and(|d| d.number_of_instances == n as u64 + 1)
            {
                break;
            }
            assert!(
                acknowledged.elapsed() < Duration::from_secs(1),
                "instance {n} not searchable within 1 s of its acknowledgement"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert!(!follower.is_finished(), "the follower keeps running");
    follower.abort();
    let _ = follower.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_commits_once_while_changes_keep_arriving() {
    let s = setup(DatasetSpec {
        patients: 1,
        studies_per_patient: 1,
        ..spec(21)
    })
    .await;
    // Instances keep arriving, one after another, while the index catches
    // up again and again: each catch-up stops at the end of the feed it
    // finds and commits once (a commit per trickling change would write a
    // segment per instance).
    let stream: Vec<FixtureFile> = spec(22).iter().take(120).collect();
    let archive = s.archive.clone();
    let sender = tokio::spawn(async move {
        for file in &stream {
            ingest(&archive, file).await;
        }
    });
    let before = s.index.commits();
    let mut calls = 0u64;
    while !sender.is_finished() {
        s.index.catch_up(s.catalog()).await.unwrap();
        calls += 1;
    }
    sender.await.unwrap();
    s.index.catch_up(s.catalog()).await.unwrap();
    calls += 1;
    assert_eq!(
        s.index.indexed_seq(),
        s.catalog().last_change_seq().await.unwrap()
    );
    let commits = s.index.commits() - before;
    assert!(commits <= calls, "{commits} commits in {calls} catch-ups");
}
