//! Search latency of the study index at scale.
//!
//! Fills a temporary SQLite catalog with N synthetic studies (one instance
//! each, recorded through the catalog's group-committing writer; no object
//! store involved), catches the index up, then times typical study-level
//! searches and prints p50/p99.
//!
//! `cargo run --release -p pacs-indexer --example search_bench -- [studies]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use pacs_archive::catalog::{BlobRecord, Catalog};
use pacs_archive::model::{IngestSource, InstanceAttributes};
use pacs_archive::query::{Attribute, Level, Matcher, Query};
use pacs_indexer::StudyIndex;

const FAMILY: [&str; 16] = [
    "Smith",
    "Johnson",
    "Schmidt",
    "Müller",
    "García",
    "Dubois",
    "Nowak",
    "Jensen",
    "Novák",
    "Sørensen",
    "Horváth",
    "Lefèvre",
    "O'Brien",
    "Andersson",
    "Rossi",
    "Wilson",
];
const GIVEN: [&str; 12] = [
    "Peter", "Anna", "José", "Élodie", "Jörg", "Zoë", "Lars", "Maria", "Chloé", "Noah", "Léa",
    "Thomas",
];
const MODALITIES: [&str; 6] = ["CT", "MR", "CR", "US", "DX", "MG"];

/// A small deterministic generator (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn attributes(i: u64) -> InstanceAttributes {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (i + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
    for _ in 0..4 {
        rng.next();
    }
    let patient = rng.below(40_000);
    let mut prng = Rng(patient * 7919 + 17);
    for _ in 0..4 {
        prng.next();
    }
    let days = rng.below(3650);
    let (y, m, d) = (
        2015 + days / 365,
        1 + (days % 365) / 31,
        1 + (days % 31).min(27),
    );
    let secs = 7 * 3600 + rng.below(12 * 3600);
    InstanceAttributes {
        sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
        sop_instance_uid: format!("1.2.826.0.1.3680043.10.9.3.{i}"),
        study_instance_uid: format!("1.2.826.0.1.3680043.10.9.1.{i}"),
        series_instance_uid: format!("1.2.826.0.1.3680043.10.9.2.{i}"),
        transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
        specific_character_set: Some("ISO_IR 192".into()),
        patient_id: Some(format!("PID{patient:07}")),
        issuer_of_patient_id: Some("SGH".into()),
        patient_name: Some(format!(
            "{}^{}",
            FAMILY[prng.below(16) as usize],
            GIVEN[prng.below(12) as usize]
        )),
        patient_birth_date: Some(format!(
            "19{:02}0{}1{}",
            30 + prng.below(70),
            1 + prng.below(9),
            prng.below(10)
        )),
        patient_sex: Some(if prng.below(2) == 0 { "F" } else { "M" }.into()),
        study_date: Some(format!("{y:04}{m:02}{d:02}")),
        study_time: Some(format!(
            "{:02}{:02}{:02}",
            secs / 3600,
            (secs / 60) % 60,
            secs % 60
        )),
        accession_number: Some(format!("ACC{i:09}")),
        study_id: Some(format!("{}", 1000 + i)),
        study_description: Some("SYNTHETIC STUDY".into()),
        referring_physician_name: Some("Kovacs^Eva^^Dr.".into()),
        modality: Some(MODALITIES[rng.below(6) as usize].into()),
        series_number: Some(1),
        series_description: None,
        body_part_examined: None,
        series_date: None,
        instance_number: Some(1),
        content_date: None,
        rows: None,
        columns: None,
        number_of_frames: None,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let studies: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile_dir();
    let url = format!("sqlite://{}", dir.join("catalog.sqlite").display());
    let catalog = Catalog::open(&url).await.expect("catalog");
    let started = Instant::now();
    let blob = BlobRecord {
        sha256: "0".repeat(64),
        blob_key: "blobs/sha256/00/00/0".into(),
        original_size: 1,
        stored_size: 1,
        compression: "zstd",
    };
    let source = IngestSource::Other("bench".into());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..studies {
        let (catalog, blob, source) = (catalog.clone(), blob.clone(), source.clone());
        tasks.spawn(async move {
            catalog
                .record_instance(&attributes(i), &blob, &source, "{}", false)
                .await
                .expect("record");
        });
        if tasks.len() >= 1024 {
            tasks.join_next().await;
        }
    }
    while tasks.join_next().await.is_some() {}
    println!("catalog: {studies} studies in {:?}", started.elapsed());

    let index = StudyIndex::open(&dir.join("index")).expect("index");
    let started = Instant::now();
    let applied = index.catch_up(&catalog).await.expect("catch up");
    println!("catch-up: {applied} changes in {:?}", started.elapsed());
    let started = Instant::now();
    let rebuilt = index.rebuild(&catalog, &|_, _| {}).await.expect("rebuild");
    println!("rebuild: {rebuilt} studies in {:?}", started.elapsed());
    bench(&index);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pacs-search-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn bench(index: &Arc<StudyIndex>) {
    let a = |k: &str| Attribute::by_keyword(k).expect("attribute");
    let q = |keys: &[(&str, &str)], fuzzy: bool| {
        let mut q = Query::new(Level::Study);
        for (k, v) in keys {
            q.push(a(k), Matcher::parse(a(k).kind, v, false));
        }
        q.fuzzy = fuzzy;
        q
    };
    let cases = [
        ("all, first page", q(&[], false), 0),
        ("all, page 50", q(&[], false), 1000),
        (
            "name wildcard smi*",
            q(&[("PatientName", "smi*")], false),
            0,
        ),
        (
            "name wildcard *ller*",
            q(&[("PatientName", "*ller*")], false),
            0,
        ),
        (
            "name muller^j*",
            q(&[("PatientName", "MÜLLER^J*")], false),
            0,
        ),
        (
            "name fuzzy Mueller",
            q(&[("PatientName", "Mueller")], true),
            0,
        ),
        (
            "date range + modality",
            q(
                &[
                    ("StudyDate", "20180101-20191231"),
                    ("ModalitiesInStudy", "CT"),
                ],
                false,
            ),
            0,
        ),
        (
            "open date range + modalities",
            q(
                &[("StudyDate", "20230601-"), ("ModalitiesInStudy", "CT\\MR")],
                false,
            ),
            0,
        ),
        ("patient id", q(&[("PatientID", "PID0012345")], false), 0),
        (
            "accession",
            q(&[("AccessionNumber", "ACC000054321")], false),
            0,
        ),
    ];
    for (name, query, offset) in &cases {
        let mut times = Vec::with_capacity(300);
        let mut total = 0;
        for _ in 0..300 {
            let t = Instant::now();
            let page = index.search(query, 20, *offset).expect("search");
            times.push(t.elapsed());
            total = page.total;
        }
        times.sort();
        println!(
            "{name:32} matches {total:7}  p50 {:>9.3?}  p99 {:>9.3?}  max {:>9.3?}",
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            times[times.len() - 1]
        );
    }
}
