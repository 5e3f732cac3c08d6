//! The command line: `pacs serve | import | export | verify | stats | reindex | token`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use pacs_archive::catalog::TokenRole;
use pacs_archive::{Archive, IngestReceipt, IngestSource};
use pacs_dicom_gateway::{Gateway, GatewayConfig};
use pacs_hl7_gateway::{ArchiveSink, MllpConfig, MllpServer};
use pacs_indexer::{DocKind, StudyIndex, TextSearch};
use pacs_viewer_api::metrics::Sample;
use pacs_viewer_api::{AppState, HttpConfig};

use crate::config::PacsConfig;

#[derive(Debug, Parser)]
#[command(
    name = "pacs",
    version,
    about = "pacs-lite: a medical imaging and lab-result archive"
)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct GlobalArgs {
    /// Data directory (catalog, objects, index); overrides `data_dir` of the config file.
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Configuration file (TOML); see pacs.example.toml.
    #[arg(long, global = true, value_name = "FILE", env = "PACS_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the archive's network services (the DICOM gateway and the HTTP
    /// API) until SIGINT/SIGTERM, then shut down gracefully.
    Serve {
        /// DICOM (DIMSE) port [default: dicom.port of the config, 11112]; 0 picks a free port.
        #[arg(long, value_name = "PORT")]
        dicom_port: Option<u16>,
        /// HTTP port of the viewer API [default: http.port of the config, 8080]; 0 picks a free port.
        #[arg(long, value_name = "PORT")]
        http_port: Option<u16>,
        /// Our AE title [default: dicom.ae_title of the config, PACS].
        #[arg(long, value_name = "AE")]
        ae_title: Option<String>,
        /// HL7 v2 (MLLP) port [default: mllp.port of the config, 2575]; 0 picks a free port.
        #[arg(long, value_name = "PORT")]
        mllp_port: Option<u16>,
    },
    /// Import every file under DIR (recursively, in parallel).
    Import {
        /// Folder (or single file) to import.
        path: PathBuf,
        /// Print one line per file (stored / duplicate / refused), not only refusals.
        #[arg(long)]
        list: bool,
    },
    /// Write stored instances back as Part-10 files named <SOPInstanceUID>.dcm.
    Export {
        /// Output folder (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Only this study.
        #[arg(long, value_name = "STUDY_INSTANCE_UID")]
        study: Option<String>,
    },
    /// Re-hash every stored blob against the catalog; exit 1 if anything is damaged.
    Verify,
    /// Counts of patients, studies, series, instances and bytes.
    Stats,
    /// Rebuild the search index from the catalog (while `pacs serve` is
    /// stopped).
    Reindex,
    /// Full-text search of studies, reports and lab results (the search
    /// index; works while `pacs serve` runs).
    Search(SearchArgs),
    /// Bearer tokens of the HTTP API.
    Token {
        #[command(subcommand)]
        action: TokenCommand,
    },
}

#[derive(Debug, Args)]
struct SearchArgs {
    /// Words to find (all of them), "a phrase", OR, -word; empty: the
    /// newest records that pass the filters.
    #[arg(default_value = "")]
    query: String,
    /// Only this Patient ID.
    #[arg(long)]
    patient: Option<String>,
    /// From this date (YYYY-MM-DD or YYYYMMDD), inclusive.
    #[arg(long)]
    from: Option<String>,
    /// Up to this date, inclusive.
    #[arg(long)]
    to: Option<String>,
    /// Only studies of (or reports on studies of) this modality.
    #[arg(long)]
    modality: Option<String>,
    /// study, report or lab (repeat or comma-separate for several).
    #[arg(long, value_delimiter = ',')]
    kind: Vec<String>,
    /// Most hits to print.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Print the hits as JSON (one object per line).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token and print it (once: only its hash is kept).
    Issue {
        /// admin (everything) or clinician (search, read, store).
        #[arg(long, value_parser = ["admin", "clinician"])]
        role: String,
        /// Who or what holds the token (a person, a viewer, a script).
        #[arg(long)]
        name: String,
    },
    /// List tokens (names, roles, dates; never the secrets).
    List,
    /// Revoke every live token with this name.
    Revoke {
        #[arg(long)]
        name: String,
    },
}

impl Cli {
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            // A server's log is its operator's view of what happens.
            Command::Serve { .. } => "info",
            _ => "warn",
        }
    }

    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let config = PacsConfig::load(
            self.global.config.as_deref(),
            self.global.data_dir.as_deref(),
        )?;
        let archive = Archive::open(config.archive())
            .await
            .with_context(|| format!("cannot open the archive in {}", config.data_dir.display()))?;
        match self.command {
            Command::Serve {
                dicom_port,
                http_port,
                ae_title,
                mllp_port,
            } => {
                let mut dicom = config.dicom.clone();
                if let Some(port) = dicom_port {
                    dicom.port = port;
                }
                if let Some(ae) = ae_title {
                    dicom.ae_title = ae;
                }
                let mut http = config.http.clone();
                if let Some(port) = http_port {
                    http.port = port;
                }
                let mut mllp = config.mllp.clone();
                if let Some(port) = mllp_port {
                    mllp.port = port;
                }
                serve(archive, dicom, http, mllp).await
            }
            Command::Reindex => reindex(&archive).await,
            Command::Search(args) => search(&archive, args).await,
            Command::Token { action } => token(&archive, action).await,
            Command::Import { path, list } => import(&archive, &path, list).await,
            Command::Export { out, study } => export(&archive, &out, study.as_deref()).await,
            Command::Verify => verify(&archive).await,
            Command::Stats => stats(&archive).await,
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM");
            None
        }
    };
    let term = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}

/// Where the search index lives.
fn index_dir(archive: &Archive) -> PathBuf {
    archive.config().data_dir.join("index")
}

async fn serve(
    archive: Archive,
    dicom: GatewayConfig,
    http: HttpConfig,
    mllp: MllpConfig,
) -> anyhow::Result<ExitCode> {
    let address = std::net::SocketAddr::new(dicom.listen_address, dicom.port);
    let dicom_listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen for DICOM on {address}"))?;
    let dicom_bound = dicom_listener.local_addr()?;
    let http_address = std::net::SocketAddr::new(http.listen_address, http.port);
    let http_listener = tokio::net::TcpListener::bind(http_address)
        .await
        .with_context(|| format!("cannot listen for HTTP on {http_address}"))?;
    let http_bound = http_listener.local_addr()?;
    let mllp_address = std::net::SocketAddr::new(mllp.listen_address, mllp.port);
    let mllp_listener = tokio::net::TcpListener::bind(mllp_address)
        .await
        .with_context(|| format!("cannot listen for HL7 (MLLP) on {mllp_address}"))?;
    let mllp_bound = mllp_listener.local_addr()?;

    let index = StudyIndex::open(&index_dir(&archive)).context("cannot open the search index")?;
    let applied = index
        .catch_up(archive.catalog())
        .await
        .context("cannot bring the search index up to date")?;
    if applied > 0 {
        tracing::info!(changes = applied, "search index caught up");
    }
    let follower = index.spawn_follower(archive.catalog().clone());

    let mut http = http;
    // With port 0 the public URL must name the port actually bound.
    if http.port == 0 {
        http.port = http_bound.port();
    }
    let state = AppState::new(archive.clone(), index.clone(), http);
    let thumbnails = pacs_viewer_api::thumbnails::spawn_worker(state.clone());

    // One line on stderr for operators and scripts, whatever the log level.
    eprintln!(
        "pacs serve: DICOM on {dicom_bound} (AE title {}), HTTP on {http_bound} ({}), HL7 on {mllp_bound}, data in {}",
        dicom.ae_title,
        state.base_url(),
        archive.config().data_dir.display()
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let hl7 = tokio::spawn(
        MllpServer::new(ArchiveSink::new(archive.clone()), mllp)
            .serve(mllp_listener, stopped(stop_rx.clone())),
    );
    let gateway = Gateway::new(archive.clone(), dicom).with_index(index.clone());
    let counters = gateway.counters();
    let reported = counters.clone();
    state.metrics().register_source(move || {
        let c = reported.snapshot();
        let counter = |name, help, value| Sample {
            name,
            help,
            value,
            gauge: false,
        };
        vec![
            counter(
                "pacs_dicom_associations_accepted",
                "DICOM associations accepted",
                c.associations_accepted,
            ),
            counter(
                "pacs_dicom_associations_rejected",
                "DICOM associations rejected",
                c.associations_rejected,
            ),
            counter(
                "pacs_dicom_associations_aborted",
                "DICOM associations aborted",
                c.associations_aborted,
            ),
            Sample {
                name: "pacs_dicom_associations_active",
                help: "DICOM associations open now",
                value: c.associations_active,
                gauge: true,
            },
            counter("pacs_dicom_echoes", "C-ECHO requests answered", c.echoes),
            counter(
                "pacs_dicom_instances_stored",
                "Instances stored through C-STORE",
                c.instances_stored,
            ),
            counter(
                "pacs_dicom_instances_duplicate",
                "Identical instances received again through C-STORE",
                c.instances_duplicate,
            ),
            counter(
                "pacs_dicom_store_failures",
                "C-STOREs answered with a failure status",
                c.store_failures,
            ),
            counter(
                "pacs_dicom_received_bytes",
                "Data set bytes received through C-STORE",
                c.bytes_received,
            ),
        ]
    });
    let api = tokio::spawn(pacs_viewer_api::serve(
        state,
        http_listener,
        stopped(stop_rx.clone()),
    ));
    gateway.serve(dicom_listener, stopped(stop_rx)).await?;
    match api.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "HTTP API stopped with an error"),
        Err(e) => tracing::error!(error = %e, "HTTP API task failed"),
    }
    match hl7.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "HL7 listener stopped with an error"),
        Err(e) => tracing::error!(error = %e, "HL7 listener task failed"),
    }
    follower.abort();
    thumbnails.abort();
    // Raw messages acknowledged from the outbox go to the object store now
    // rather than at the next start (they are durable either way).
    if let Err(e) = archive.flush_outbox().await {
        tracing::warn!(error = %e, "raw messages stay in the catalog's outbox until the next start");
    }
    let c = counters.snapshot();
    eprintln!(
        "pacs serve: stopped after {} associations, {} instances stored, {} failures",
        c.associations_accepted, c.instances_stored, c.store_failures
    );
    Ok(ExitCode::SUCCESS)
}

async fn reindex(archive: &Archive) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let index = StudyIndex::open(&index_dir(archive)).context("cannot open the search index")?;
    let bar = progress_bar(0, "reindex");
    let progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let documents = index
        .rebuild(archive.catalog(), &progress)
        .await
        .context("reindex failed")?;
    bar.finish_and_clear();
    eprintln!(
        "reindex: {documents} documents indexed ({} studies, {} reports, {} lab panels) in {:.1} s",
        index.count(DocKind::Study),
        index.count(DocKind::Report),
        index.count(DocKind::Lab),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// The search index for a search: opened for writing and caught up with
/// the catalog when no `pacs serve` holds it, read-only otherwise (the
/// server keeps it current).
async fn index_for_search(archive: &Archive) -> anyhow::Result<std::sync::Arc<StudyIndex>> {
    let dir = index_dir(archive);
    match StudyIndex::open(&dir) {
        Ok(index) => {
            index
                .catch_up(archive.catalog())
                .await
                .context("cannot bring the search index up to date")?;
            Ok(index)
        }
        Err(pacs_indexer::IndexError::Tantivy(pacs_indexer::TantivyError::LockFailure(..))) => {
            StudyIndex::open_read_only(&dir).context("cannot open the search index")
        }
        Err(e) => Err(e).context("cannot open the search index"),
    }
}

/// `<b>word</b>` highlighting and HTML escapes of a snippet as plain text
/// with the matched words in `*`.
fn plain_snippet(html: &str) -> String {
    html.replace("<b>", "*")
        .replace("</b>", "*")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&amp;", "&")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

async fn search(archive: &Archive, args: SearchArgs) -> anyhow::Result<ExitCode> {
    let date = |name: &str, value: Option<String>| -> anyhow::Result<Option<String>> {
        value
            .map(|v| pacs_viewer_api::search::date_param(name, &v).map_err(anyhow::Error::msg))
            .transpose()
    };
    let mut kinds = Vec::new();
    for k in &args.kind {
        kinds.push(
            DocKind::parse(k.trim())
                .with_context(|| format!("--kind {k:?}: expected study, report or lab"))?,
        );
    }
    let query = TextSearch {
        q: args.query,
        kinds,
        patient_ids: args.patient.map(|p| vec![p]),
        date_from: date("--from", args.from)?,
        date_to: date("--to", args.to)?,
        modality: args.modality.map(|m| m.to_uppercase()),
        limit: args.limit.max(1),
        offset: 0,
    };
    let index = index_for_search(archive).await?;
    let page = index.search_text(&query).context("search failed")?;
    for hit in &page.hits {
        if args.json {
            println!("{}", serde_json::to_string(hit)?);
            continue;
        }
        let (date, patient, what) = match (&hit.study, &hit.report) {
            (Some(s), _) => (
                s.study_date.clone(),
                s.patient_id.clone(),
                format!(
                    "{} [{}] {}",
                    s.study_description.as_deref().unwrap_or("(no description)"),
                    s.modalities.join(","),
                    s.study_instance_uid
                ),
            ),
            (None, Some(r)) => (
                r.observed_at.as_ref().map(|d| d.chars().take(8).collect()),
                r.patient_id.clone(),
                format!(
                    "{} (report {})",
                    r.title.as_deref().unwrap_or("(untitled)"),
                    r.report_id
                ),
            ),
            (None, None) => (None, None, String::new()),
        };
        println!(
            "{:<6} {:<8} {:<14} {}",
            hit.kind.name(),
            date.unwrap_or_default(),
            patient.unwrap_or_default(),
            what
        );
        let snippet = plain_snippet(&hit.snippet);
        if !snippet.is_empty() {
            println!("       {snippet}");
        }
    }
    eprintln!("{} of {} matches", page.hits.len(), page.total);
    Ok(ExitCode::SUCCESS)
}

async fn token(archive: &Archive, action: TokenCommand) -> anyhow::Result<ExitCode> {
    let catalog = archive.catalog();
    match action {
        TokenCommand::Issue { role, name } => {
            let role = TokenRole::parse(&role).context("role must be admin or clinician")?;
            let token = pacs_viewer_api::auth::issue_token(catalog, &name, role).await?;
            // The token on stdout alone, so scripts can capture it.
            println!("{token}");
            eprintln!(
                "token for {name:?} ({}) issued; it is shown only this once",
                role.name()
            );
        }
        TokenCommand::List => {
            for t in catalog.api_tokens().await? {
                println!(
                    "{}\t{}\t{}\t{}",
                    t.name,
                    t.role.name(),
                    t.created_at,
                    t.revoked_at
                        .as_deref()
                        .map_or("live".to_owned(), |r| format!("revoked {r}"))
                );
            }
        }
        TokenCommand::Revoke { name } => {
            let n = catalog.revoke_api_tokens(&name).await?;
            eprintln!("{n} token(s) named {name:?} revoked");
            if n == 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn progress_bar(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what} {{wide_bar}} {{pos}}/{{len}} ({{per_sec}}, eta {{eta}})"
        ))
        .expect("static template"),
    );
    bar
}

fn files_under(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if root.is_file() {
        return Ok(vec![root.to_path_buf()]);
    }
    if !root.is_dir() {
        anyhow::bail!("{} is neither a file nor a folder", root.display());
    }
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(root).sort_by_file_name() {
        let entry = entry.with_context(|| format!("cannot read {}", root.display()))?;
        if entry.file_type().is_file() {
            files.push(entry.into_path());
        }
    }
    Ok(files)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1_000_000.0
}

async fn import(archive: &Archive, root: &Path, list: bool) -> anyhow::Result<ExitCode> {
    let files = files_under(root)?;
    let bar = progress_bar(files.len() as u64, "importing");
    let started = Instant::now();
    let (mut stored, mut duplicate, mut refused, mut skipped) = (0u64, 0u64, 0u64, 0u64);
    let (mut bytes_in, mut bytes_stored) = (0u64, 0u64);
    let concurrency = archive.config().ingest.effective_max_in_flight();
    let mut results = futures::stream::iter(files)
        .map(|path| async move {
            let display = path.display().to_string();
            if path.file_name().is_some_and(|n| n == "DICOMDIR") {
                return (display, None);
            }
            let receipt = match tokio::fs::read(&path).await {
                Ok(bytes) => {
                    archive
                        .ingest_part10(
                            Bytes::from(bytes),
                            IngestSource::Import {
                                path: display.clone(),
                            },
                        )
                        .await
                }
                Err(e) => IngestReceipt::Refused(pacs_archive::Refusal {
                    reason: pacs_archive::RefusalReason::NotDicom(format!(
                        "cannot read the file: {e}"
                    )),
                    sop_class_uid: None,
                    sop_instance_uid: None,
                }),
            };
            (display, Some(receipt))
        })
        .buffer_unordered(concurrency);
    while let Some((path, receipt)) = results.next().await {
        bar.inc(1);
        let Some(receipt) = receipt else {
            skipped += 1;
            if list {
                println!("skipped\t{path}\tDICOMDIR is a media directory, not an instance");
            }
            continue;
        };
        match &receipt {
            IngestReceipt::Stored(i) | IngestReceipt::Replaced(i) => {
                stored += 1;
                bytes_in += i.original_size;
                bytes_stored += i.stored_size;
                if list {
                    println!("{}\t{}\t{path}", receipt.label(), i.sop_instance_uid);
                }
            }
            IngestReceipt::Duplicate(i) => {
                duplicate += 1;
                if list {
                    println!("duplicate\t{}\t{path}", i.sop_instance_uid);
                }
            }
            IngestReceipt::Refused(r) => {
                refused += 1;
                bar.suspend(|| println!("refused\t{path}\t{}", r.reason));
            }
        }
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "imported from {}: {stored} stored, {duplicate} duplicate, {refused} refused{} in {secs:.1} s; \
         {:.1} MB received, {:.1} MB stored ({:.0}%)",
        root.display(),
        if skipped > 0 {
            format!(", {skipped} skipped")
        } else {
            String::new()
        },
        mb(bytes_in),
        mb(bytes_stored),
        if bytes_in > 0 {
            100.0 * bytes_stored as f64 / bytes_in as f64
        } else {
            0.0
        },
    );
    Ok(if refused == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn export(archive: &Archive, out: &Path, study: Option<&str>) -> anyhow::Result<ExitCode> {
    let rows = archive.catalog().instances(study).await?;
    if rows.is_empty() {
        match study {
            Some(s) => anyhow::bail!("no study with Study Instance UID {s}"),
            None => eprintln!("the archive is empty"),
        }
    }
    tokio::fs::create_dir_all(out)
        .await
        .with_context(|| format!("cannot create {}", out.display()))?;
    let bar = progress_bar(rows.len() as u64, "exporting");
    let concurrency = archive.config().ingest.effective_max_in_flight();
    let mut failures = 0u64;
    let mut written = 0u64;
    let mut results = futures::stream::iter(rows)
        .map(|row| async move {
            let uid = row.sop_instance_uid;
            let result = match archive.retrieve(&uid).await {
                Ok(bytes) => tokio::fs::write(out.join(format!("{uid}.dcm")), &bytes)
                    .await
                    .map_err(anyhow::Error::from),
                Err(e) => Err(e.into()),
            };
            (uid, result)
        })
        .buffer_unordered(concurrency);
    while let Some((uid, result)) = results.next().await {
        bar.inc(1);
        match result {
            Ok(()) => written += 1,
            Err(e) => {
                failures += 1;
                bar.suspend(|| println!("failed\t{uid}\t{e:#}"));
            }
        }
    }
    bar.finish_and_clear();
    eprintln!(
        "exported {written} instances to {}, {failures} failed",
        out.display()
    );
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn verify(archive: &Archive) -> anyhow::Result<ExitCode> {
    let total = archive.stats().await?.instances as u64;
    let bar = progress_bar(total, "verifying");
    let report = archive.verify(|n| bar.set_position(n)).await?;
    bar.finish_and_clear();
    for (uid, detail) in &report.damaged {
        println!("damaged\t{uid}\t{detail}");
    }
    println!(
        "verified {} instances and {} messages: {} intact, {} damaged",
        report.checked,
        report.messages_checked,
        report.checked + report.messages_checked - report.damaged.len() as u64,
        report.damaged.len()
    );
    Ok(if report.damaged.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn stats(archive: &Archive) -> anyhow::Result<ExitCode> {
    let s = archive.stats().await?;
    println!("patients        {}", s.patients);
    println!("studies         {}", s.studies);
    println!("series          {}", s.series);
    println!("instances       {}", s.instances);
    println!("blobs           {}", s.blobs);
    println!("original bytes  {}", s.original_bytes);
    println!("stored bytes    {}", s.stored_bytes);
    if s.original_bytes > 0 {
        println!(
            "stored/original {:.1}%",
            100.0 * s.stored_bytes as f64 / s.original_bytes as f64
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
