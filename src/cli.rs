//! The command line: `pacs serve | import | export | verify | stats`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use pacs_archive::{Archive, IngestReceipt, IngestSource};
use pacs_dicom_gateway::{Gateway, GatewayConfig};

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
    /// Run the archive's network services (the DICOM gateway) until
    /// SIGINT/SIGTERM, then shut down gracefully.
    Serve {
        /// DICOM (DIMSE) port [default: dicom.port of the config, 11112]; 0 picks a free port.
        #[arg(long, value_name = "PORT")]
        dicom_port: Option<u16>,
        /// HTTP port of the viewer API (accepted; the HTTP API is not built yet).
        #[arg(long, value_name = "PORT", default_value_t = 8080)]
        http_port: u16,
        /// Our AE title [default: dicom.ae_title of the config, PACS].
        #[arg(long, value_name = "AE")]
        ae_title: Option<String>,
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
            } => {
                let mut dicom = config.dicom.clone();
                if let Some(port) = dicom_port {
                    dicom.port = port;
                }
                if let Some(ae) = ae_title {
                    dicom.ae_title = ae;
                }
                serve(archive, dicom, http_port).await
            }
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

async fn serve(archive: Archive, dicom: GatewayConfig, http_port: u16) -> anyhow::Result<ExitCode> {
    let address = std::net::SocketAddr::new(dicom.listen_address, dicom.port);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen for DICOM on {address}"))?;
    let bound = listener.local_addr()?;
    tracing::debug!(
        http_port,
        "the HTTP API is not part of this build yet; --http-port is accepted"
    );
    // One line on stderr for operators and scripts, whatever the log level.
    eprintln!(
        "pacs serve: DICOM on {bound} (AE title {}), data in {}",
        dicom.ae_title,
        archive.config().data_dir.display()
    );
    let gateway = Gateway::new(archive, dicom);
    let counters = gateway.counters();
    gateway.serve(listener, shutdown_signal()).await?;
    let c = counters.snapshot();
    eprintln!(
        "pacs serve: stopped after {} associations, {} instances stored, {} failures",
        c.associations_accepted, c.instances_stored, c.store_failures
    );
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
        "verified {} instances: {} intact, {} damaged",
        report.checked,
        report.checked - report.damaged.len() as u64,
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
