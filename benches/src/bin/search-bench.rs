//! Full-text search benchmark over reports and lab results.
//!
//! 1. Builds an archive through the real results path: generated ORU^R01
//!    messages (radiology reports with findings and impression text; blood
//!    counts and metabolic panels with LOINC-coded results) are parsed by
//!    the HL7 gateway's parser and recorded with `Archive::ingest_message`
//!    (raw message content-addressed in the object store, results in the
//!    catalog, one durable transaction each), many in flight, until the
//!    catalog holds the asked numbers of report texts and observations.
//! 2. Brings the search index up to date from the change feed (timed).
//! 3. Times searches one at a time, per query class: through the index
//!    (`StudyIndex::search_text`) and through the whole HTTP stack in
//!    process (`GET /api/search` on the viewer API's router: token check,
//!    authorisation, audit hook, JSON), and prints p50/p99 against the
//!    target (p99 < 30 ms).
//!
//! Prints tables; asserts nothing about timings.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, ensure};
use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;
use pacs_archive::catalog::TokenRole;
use pacs_archive::results::MessageReceipt;
use pacs_archive::{Archive, ArchiveConfig, IngestSource};
use pacs_benches::percentile_ms;
use pacs_hl7_gateway::{OruMessage, ReceivedMessage, to_result_message};
use pacs_indexer::{DocKind, StudyIndex, TextSearch};
use pacs_viewer_api::{AppState, HttpConfig, auth, router};
use tower::ServiceExt;

#[derive(Debug, Parser)]
#[command(about = "Full-text search latency over report texts and lab observations")]
struct Args {
    /// Radiology report texts to build.
    #[arg(long, default_value_t = 100_000)]
    reports: usize,
    /// Lab observations to build (blood counts and metabolic panels).
    #[arg(long, default_value_t = 1_000_000)]
    observations: usize,
    /// Timed searches per query class and path.
    #[arg(long, default_value_t = 300)]
    requests: usize,
    /// Messages recorded concurrently while building.
    #[arg(long, default_value_t = 32)]
    in_flight: usize,
    /// Seed of the generated messages.
    #[arg(long, default_value_t = 2026)]
    seed: u64,
    /// Working folder (on a real disk).
    #[arg(long, default_value = "target/bench-work/search")]
    work: PathBuf,
    /// Reuse the archive of an earlier run with the same sizes and seed.
    #[arg(long)]
    reuse: bool,
}

/// Message `n` of the generated stream: a radiology report or a lab panel.
fn message(seed: u64, n: usize, reports: usize) -> Vec<u8> {
    use pacs_fixtures::hl7;
    // Reports and panels interleaved while both last.
    if n.is_multiple_of(2) && n / 2 < reports {
        hl7::radiology_report(seed, n / 2)
    } else if n % 4 < 2 {
        hl7::complete_blood_count(seed, n)
    } else {
        hl7::basic_metabolic_panel(seed, n)
    }
}

fn received(raw: Vec<u8>) -> anyhow::Result<ReceivedMessage> {
    let header = pacs_hl7_gateway::parse::read_header(&raw)?;
    let message = OruMessage::parse(&raw)?;
    Ok(ReceivedMessage {
        key: header.key(),
        raw: Bytes::from(raw),
        message,
        peer: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
    })
}

/// Counts in the catalog: (report texts, observations).
async fn counts(archive: &Archive) -> anyhow::Result<(usize, usize)> {
    let rows = archive
        .catalog()
        .select_text_rows(
            "SELECT CAST((SELECT COUNT(*) FROM reports WHERE report_text IS NOT NULL) AS TEXT), \
             CAST((SELECT COUNT(*) FROM observations) AS TEXT)",
            &[],
            1,
        )
        .await?;
    let get = |i: usize| -> usize {
        rows[0][i]
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((get(0), get(1)))
}

async fn build(archive: &Archive, args: &Args) -> anyhow::Result<(usize, f64)> {
    let started = Instant::now();
    let mut n = 0usize;
    let mut sent = 0usize;
    loop {
        let (reports, observations) = counts(archive).await?;
        if reports >= args.reports && observations >= args.observations {
            break;
        }
        // The next batch: enough for what is missing (a panel holds 6-9).
        let batch = ((args.reports.saturating_sub(reports)) * 2)
            .max((args.observations.saturating_sub(observations)) / 5)
            .clamp(1, 20_000);
        let first = n;
        n += batch;
        let seed = args.seed;
        let wanted_reports = args.reports;
        let results: Vec<anyhow::Result<()>> = futures::stream::iter(first..n)
            .map(|i| async move {
                let raw =
                    tokio::task::spawn_blocking(move || received(message(seed, i, wanted_reports)))
                        .await??;
                let result = to_result_message(&raw);
                let receipt = archive
                    .ingest_message(
                        Bytes::copy_from_slice(raw.content()),
                        result,
                        IngestSource::Other("search-bench".into()),
                    )
                    .await;
                ensure!(
                    matches!(
                        receipt,
                        MessageReceipt::Stored { .. } | MessageReceipt::Duplicate { .. }
                    ),
                    "message {i}: {receipt}"
                );
                Ok(())
            })
            .buffer_unordered(args.in_flight)
            .collect()
            .await;
        for r in results {
            r?;
        }
        sent += batch;
        let (reports, observations) = counts(archive).await?;
        eprintln!(
            "  {sent} messages: {reports} report texts, {observations} observations ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
    }
    Ok((sent, started.elapsed().as_secs_f64()))
}

/// Words of the report texts by how many reports hold them.
async fn vocabulary(archive: &Archive) -> anyhow::Result<Vec<(String, usize)>> {
    let rows = archive
        .catalog()
        .select_text_rows(
            "SELECT report_text FROM reports WHERE report_text IS NOT NULL LIMIT 5000",
            &[],
            5000,
        )
        .await?;
    let mut df: HashMap<String, usize> = HashMap::new();
    for row in rows {
        let Some(text) = &row[0] else { continue };
        let mut words: Vec<String> = text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| w.len() >= 5 && w.chars().all(char::is_alphabetic))
            .map(str::to_lowercase)
            .collect();
        words.sort_unstable();
        words.dedup();
        for w in words {
            *df.entry(w).or_default() += 1;
        }
    }
    let mut words: Vec<(String, usize)> = df.into_iter().collect();
    words.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(words)
}

/// One query class: a name and the searches to cycle through.
struct Class {
    name: String,
    searches: Vec<TextSearch>,
}

fn text(q: &str) -> TextSearch {
    TextSearch {
        q: q.into(),
        limit: 20,
        ..TextSearch::default()
    }
}

fn url(s: &TextSearch) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("q", &s.q);
    if let Some(p) = s.patient_ids.as_ref().and_then(|p| p.first()) {
        query.append_pair("patient", p);
    }
    if let Some(d) = &s.date_from {
        query.append_pair("from", d);
    }
    if let Some(d) = &s.date_to {
        query.append_pair("to", d);
    }
    if !s.kinds.is_empty() {
        let kinds: Vec<&str> = s.kinds.iter().map(|k| k.name()).collect();
        query.append_pair("kind", &kinds.join(","));
    }
    query.append_pair("limit", &s.limit.to_string());
    format!("/api/search?{}", query.finish())
}

/// The middle third of the reports' observation dates (`YYYYMMDD`).
async fn middle_dates(archive: &Archive) -> anyhow::Result<(String, String)> {
    let rows = archive
        .catalog()
        .select_text_rows(
            "SELECT MIN(substr(observed_at, 1, 8)), MAX(substr(observed_at, 1, 8)) FROM reports",
            &[],
            1,
        )
        .await?;
    let day = |v: &Option<String>| -> anyhow::Result<i64> {
        let v = v.as_deref().context("no observation dates")?;
        let (y, m, d): (i64, i64, i64) = (v[..4].parse()?, v[4..6].parse()?, v[6..8].parse()?);
        Ok(y * 372 + (m - 1) * 31 + (d - 1))
    };
    let (lo, hi) = (day(&rows[0][0])?, day(&rows[0][1])?);
    // A day every month has (the API refuses impossible dates).
    let date = |n: i64| {
        format!(
            "{:04}{:02}{:02}",
            n / 372,
            (n % 372) / 31 + 1,
            (n % 31 + 1).min(28)
        )
    };
    let third = (hi - lo) / 3;
    Ok((date(lo + third), date(hi - third)))
}

fn classes(words: &[(String, usize)], patients: &[String], dates: &(String, String)) -> Vec<Class> {
    let at = |frac: f64| -> Vec<String> {
        let i = ((words.len() as f64) * frac) as usize;
        words
            .iter()
            .skip(i.min(words.len().saturating_sub(5)))
            .take(5)
            .map(|(w, _)| w.clone())
            .collect()
    };
    let common = at(0.0);
    let middle = at(0.5);
    let rare = at(0.95);
    let mut out = vec![
        Class {
            name: format!("one common word ({})", common[0]),
            searches: common.iter().map(|w| text(w)).collect(),
        },
        Class {
            name: format!("one mid-frequency word ({})", middle[0]),
            searches: middle.iter().map(|w| text(w)).collect(),
        },
        Class {
            name: format!("one rare word ({})", rare[0]),
            searches: rare.iter().map(|w| text(w)).collect(),
        },
        Class {
            name: "two words, both required".into(),
            searches: common
                .iter()
                .zip(&middle)
                .map(|(a, b)| text(&format!("{a} {b}")))
                .collect(),
        },
        Class {
            name: "phrase (\"lower lobe\")".into(),
            searches: vec![text("\"lower lobe\""), text("\"upper lobe\"")],
        },
        Class {
            name: "lab test name (hemoglobin, glucose)".into(),
            searches: ["hemoglobin", "glucose", "creatinine", "platelets"]
                .iter()
                .map(|w| TextSearch {
                    kinds: vec![DocKind::Lab],
                    ..text(w)
                })
                .collect(),
        },
        Class {
            name: "LOINC code (718-7, 2345-7)".into(),
            searches: ["718-7", "2345-7", "2160-0", "777-3"]
                .iter()
                .map(|w| text(w))
                .collect(),
        },
        Class {
            name: format!("common word + date range ({}-{}) + kind", dates.0, dates.1),
            searches: common
                .iter()
                .map(|w| TextSearch {
                    kinds: vec![DocKind::Report],
                    date_from: Some(dates.0.clone()),
                    date_to: Some(dates.1.clone()),
                    ..text(w)
                })
                .collect(),
        },
    ];
    if !patients.is_empty() {
        out.push(Class {
            name: "one patient's records, newest first (no text)".into(),
            searches: patients
                .iter()
                .map(|p| TextSearch {
                    patient_ids: Some(vec![p.clone()]),
                    ..text("")
                })
                .collect(),
        });
        out.push(Class {
            name: "common word within one patient".into(),
            searches: patients
                .iter()
                .zip(common.iter().cycle())
                .map(|(p, w)| TextSearch {
                    patient_ids: Some(vec![p.clone()]),
                    ..text(w)
                })
                .collect(),
        });
    }
    out
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.work)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let data = args.work.join("pacs-data");
    let marker = args.work.join("built.txt");
    let key = format!(
        "reports={} observations={} seed={}",
        args.reports, args.observations, args.seed
    );
    let reuse = args.reuse && std::fs::read_to_string(&marker).is_ok_and(|k| k.trim() == key);
    let mut notes = Vec::new();
    if !reuse {
        let _ = std::fs::remove_dir_all(&data);
        let _ = std::fs::remove_file(&marker);
    }
    let archive = Archive::open(ArchiveConfig::embedded(&data))
        .await
        .context("cannot open the archive")?;
    if !reuse {
        eprintln!(
            "building: {} report texts and {} observations through ingest_message ...",
            args.reports, args.observations
        );
        let (messages, secs) = build(&archive, &args).await?;
        notes.push(format!(
            "built: {messages} ORU^R01 messages parsed and recorded in {secs:.0} s = {:.0} messages/s ({} in flight, no network)",
            messages as f64 / secs,
            args.in_flight
        ));
        std::fs::write(&marker, &key)?;
    }
    let (reports, observations) = counts(&archive).await?;
    let index_dir = data.join("index");
    let index = StudyIndex::open(&index_dir).context("cannot open the index")?;
    let started = Instant::now();
    let applied = index.catch_up(archive.catalog()).await?;
    let secs = started.elapsed().as_secs_f64();
    if applied > 0 {
        notes.push(format!(
            "indexed: {applied} changes in {secs:.1} s ({} report and {} lab documents)",
            index.count(DocKind::Report),
            index.count(DocKind::Lab)
        ));
    }
    let words = vocabulary(&archive).await?;
    ensure!(words.len() >= 20, "too few distinct words in the reports");
    let patients: Vec<String> = archive
        .catalog()
        .select_text_rows(
            "SELECT patient_id FROM patients WHERE patient_id IS NOT NULL ORDER BY id LIMIT 50",
            &[],
            50,
        )
        .await?
        .into_iter()
        .filter_map(|r| r[0].clone())
        .collect();
    let token = auth::issue_token(archive.catalog(), "search-bench", TokenRole::Clinician).await?;
    let app = router(AppState::new(
        archive.clone(),
        index.clone(),
        HttpConfig::default(),
    ));
    let dates = middle_dates(&archive).await?;
    let classes = classes(&words, &patients, &dates);

    println!();
    println!(
        "Full-text search: {reports} report texts, {observations} observations ({} report + {} lab + {} study documents); {} searches per row, one at a time",
        index.count(DocKind::Report),
        index.count(DocKind::Lab),
        index.count(DocKind::Study),
        args.requests
    );
    println!();
    println!(
        "| query | matches | index p50 ms | index p99 ms | HTTP p50 ms | HTTP p99 ms | target p99 | met |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    for class in &classes {
        // Warm up once per search.
        for s in &class.searches {
            index.search_text(s)?;
        }
        let mut direct = Vec::with_capacity(args.requests);
        let mut matches = 0;
        for i in 0..args.requests {
            let s = &class.searches[i % class.searches.len()];
            let t = Instant::now();
            let page = index.search_text(s)?;
            direct.push(t.elapsed());
            if i < class.searches.len() {
                matches += page.total;
            }
        }
        let mut http = Vec::with_capacity(args.requests);
        for i in 0..args.requests {
            let s = &class.searches[i % class.searches.len()];
            let request = axum::http::Request::get(url(s))
                .header("authorization", format!("Bearer {token}"))
                .body(axum::body::Body::empty())?;
            let t = Instant::now();
            let response = app.clone().oneshot(request).await?;
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX).await?;
            http.push(t.elapsed());
            ensure!(
                status.is_success(),
                "{}: {status} {}",
                url(s),
                String::from_utf8_lossy(&body)
            );
        }
        direct.sort_unstable();
        http.sort_unstable();
        let p99 = percentile_ms(&http, 0.99).max(percentile_ms(&direct, 0.99));
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | 30 | {} |",
            class.name,
            matches / class.searches.len().min(args.requests).max(1),
            percentile_ms(&direct, 0.5),
            percentile_ms(&direct, 0.99),
            percentile_ms(&http, 0.5),
            percentile_ms(&http, 0.99),
            if p99 < 30.0 { "yes" } else { "no" }
        );
    }
    println!();
    for note in notes {
        println!("- {note}");
    }
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    println!(
        "- {cores} cores; matches = mean hits per search of the row; HTTP = GET /api/search through the viewer API's router in process (token, authorisation, audit, JSON), without the socket"
    );
    Ok(())
}
