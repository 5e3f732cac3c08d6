//! C-STORE ingest benchmark, side by side: `pacs serve`, DCMTK's `storescp`
//! and Orthanc (compression off and on) receive the same generated files
//! from DCMTK's `storescu` (TCP_NODELAY=1), over one association and over
//! four at once. Prints wall time, instances/s, MB/s, stored bytes, the
//! server's peak RSS and pacs-lite's ratio to each peer.
//!
//! Needs DCMTK (`dcmtk`) and Orthanc (`orthanc`) from Debian's packages; a
//! missing peer is reported and skipped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use pacs_benches::{Cpu, cpu_seconds, free_port, pacs_binary};
use pacs_fixtures::DatasetSpec;

#[derive(Debug, Parser)]
#[command(about = "C-STORE benchmark: pacs serve vs storescp vs Orthanc")]
struct Args {
    /// Size of the generated mixed data set, MB.
    #[arg(long, default_value_t = 500)]
    size_mb: u64,
    /// Seed of the data set.
    #[arg(long, default_value_t = 2026)]
    seed: u64,
    /// Working folder (on a real disk).
    #[arg(long, default_value = "target/bench-work/gateway")]
    work: PathBuf,
    /// The `pacs` binary (default: next to this program).
    #[arg(long)]
    pacs: Option<PathBuf>,
    /// Skip Orthanc.
    #[arg(long)]
    no_orthanc: bool,
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited before listening: {status}");
        }
        ensure!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Peak resident set of a process, from /proc (kB -> bytes).
fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn du(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                total += du(&entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

struct Server {
    name: String,
    child: Child,
    port: u16,
    ae: String,
    storage: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Row {
    server: String,
    associations: usize,
    seconds: f64,
    stored: u64,
    rss: u64,
    cpu: f64,
}

/// Send `files` split over `associations` concurrent storescu runs.
fn send(server: &Server, files: &[PathBuf], associations: usize) -> anyhow::Result<f64> {
    let chunk = files.len().div_ceil(associations);
    let started = Instant::now();
    let mut children = Vec::new();
    for part in files.chunks(chunk) {
        let child = Command::new("/usr/bin/storescu")
            .env("TCP_NODELAY", "1")
            .args(["-R", "-aet", "BENCH", "-aec", &server.ae, "127.0.0.1"])
            .arg(server.port.to_string())
            .args(part)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("start storescu")?;
        children.push(child);
    }
    for child in children {
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "storescu to {} failed: {}",
            server.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(started.elapsed().as_secs_f64())
}

fn start_pacs(binary: &Path, dir: &Path) -> anyhow::Result<Server> {
    let port = free_port();
    let data = dir.join("pacs-data");
    let mut child = Command::new(binary)
        .args(["--data-dir"])
        .arg(&data)
        .args([
            "serve",
            "--dicom-port",
            &port.to_string(),
            "--http-port",
            "0",
            "--mllp-port",
            "0",
            "--ae-title",
            "PACS",
        ])
        .env("PACS_DICOM__LISTEN_ADDRESS", "127.0.0.1")
        .env("PACS_HTTP__LISTEN_ADDRESS", "127.0.0.1")
        .env("PACS_MLLP__LISTEN_ADDRESS", "127.0.0.1")
        .env("PACS_DICOM__ACCEPT_ANY_CALLING_AE", "true")
        .env("PACS_DICOM__MAX_ASSOCIATIONS", "16")
        .env("PACS_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start pacs serve")?;
    wait_for_port(port, &mut child, "pacs serve")?;
    Ok(Server {
        name: "pacs-lite".into(),
        child,
        port,
        ae: "PACS".into(),
        storage: data,
    })
}

fn start_storescp(dir: &Path) -> anyhow::Result<Server> {
    let port = free_port();
    let out = dir.join("storescp");
    std::fs::create_dir_all(&out)?;
    let mut child = Command::new("/usr/bin/storescp")
        .env("TCP_NODELAY", "1")
        .args(["--fork", "-aet", "STORESCP", "--output-directory"])
        .arg(&out)
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start storescp")?;
    wait_for_port(port, &mut child, "storescp")?;
    Ok(Server {
        name: "DCMTK storescp".into(),
        child,
        port,
        ae: "STORESCP".into(),
        storage: out,
    })
}

fn start_orthanc(dir: &Path, compression: bool) -> anyhow::Result<Server> {
    let port = free_port();
    let http = free_port();
    let storage = dir.join("orthanc-storage");
    let index = dir.join("orthanc-index");
    std::fs::create_dir_all(&storage)?;
    std::fs::create_dir_all(&index)?;
    let config = format!(
        r#"{{
  "Name": "bench", "StorageDirectory": "{}", "IndexDirectory": "{}",
  "DicomAet": "ORTHANC", "DicomPort": {port}, "HttpPort": {http},
  "RemoteAccessAllowed": false, "AuthenticationEnabled": false,
  "DicomAlwaysAllowEcho": true, "DicomAlwaysAllowStore": true,
  "DicomCheckCalledAet": false, "StorageCompression": {compression},
  "Plugins": [], "HttpServerEnabled": true
}}"#,
        storage.display(),
        index.display()
    );
    let config_path = dir.join("orthanc.json");
    std::fs::write(&config_path, config)?;
    // Orthanc's DICOM layer is DCMTK's: without TCP_NODELAY=1 every C-STORE
    // waits for a delayed ACK.
    let mut child = Command::new("/usr/sbin/Orthanc")
        .env("TCP_NODELAY", "1")
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start Orthanc")?;
    wait_for_port(port, &mut child, "Orthanc")?;
    Ok(Server {
        name: format!(
            "Orthanc ({})",
            if compression {
                "compression on"
            } else {
                "compression off"
            }
        ),
        child,
        port,
        ae: "ORTHANC".into(),
        storage,
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        Path::new("/usr/bin/storescu").exists(),
        "DCMTK is missing: apt-get install dcmtk"
    );
    let pacs = pacs_binary(args.pacs.clone())?;

    // storescu sends uncompressed data sets; generate what modalities send.
    let mut spec = DatasetSpec::mixed_of_size(args.size_mb * 1_000_000, args.seed);
    spec.transfer_syntax = Some(pacs_fixtures::ts::EXPLICIT_VR_LE);
    // An earlier run's folder is moved aside and deleted after this run's
    // measurements, not before them (see the note printed at the end).
    let stale = args.work.with_extension("old");
    if args.work.exists() {
        let _ = std::fs::remove_dir_all(&stale);
        std::fs::rename(&args.work, &stale)?;
    }
    std::fs::create_dir_all(&args.work)?;
    // Absolute: Orthanc resolves relative paths against its config file.
    let work = args.work.canonicalize()?;
    let input = work.join("input");
    eprintln!("generating ~{} MB ...", args.size_mb);
    let summary = pacs_fixtures::write_dir(&spec, &input)?;
    let mut files: Vec<PathBuf> = Vec::new();
    let mut stack = vec![input.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    let total_bytes = summary.bytes;

    type Starter = Box<dyn Fn(&Path) -> anyhow::Result<Server>>;
    let mut servers: Vec<(String, Starter)> = vec![
        (
            "pacs-lite".into(),
            Box::new(move |d: &Path| start_pacs(&pacs, d)),
        ),
        ("storescp".into(), Box::new(start_storescp)),
    ];
    if !args.no_orthanc {
        if Path::new("/usr/sbin/Orthanc").exists() {
            servers.push((
                "orthanc".into(),
                Box::new(|d: &Path| start_orthanc(d, false)),
            ));
            servers.push((
                "orthanc-z".into(),
                Box::new(|d: &Path| start_orthanc(d, true)),
            ));
        } else {
            eprintln!("Orthanc is missing (apt-get install orthanc): skipped");
        }
    }

    let mut rows = Vec::new();
    for associations in [1usize, 4] {
        for (key, start) in &servers {
            let dir = work.join(format!("{key}-{associations}"));
            std::fs::create_dir_all(&dir)?;
            // Every run starts with nothing of the runs before it still
            // being written back to disk.
            let _ = Command::new("sync").status();
            let server = start(&dir)?;
            eprintln!("{} over {associations} association(s) ...", server.name);
            let seconds = send(&server, &files, associations)?;
            let rss = peak_rss(server.child.id());
            let cpu = cpu_seconds(Cpu::WithChildren(server.child.id()));
            let stored = du(&server.storage);
            rows.push(Row {
                server: server.name.clone(),
                associations,
                seconds,
                stored,
                rss,
                cpu,
            });
            // Stopped, its data kept until the end: deleting a thousand
            // files makes the next server's file creations slower for
            // minutes (ext4 skips recently freed inodes), which would
            // penalise whoever runs next.
            drop(server);
        }
    }

    println!();
    println!(
        "C-STORE benchmark: {} instances, {:.1} MB (CT/MR/CR/US, Explicit VR LE), storescu with TCP_NODELAY=1, {} cores",
        files.len(),
        total_bytes as f64 / 1e6,
        std::thread::available_parallelism().map_or(1, |c| c.get())
    );
    println!(
        "| server | associations | wall s | instances/s | MB/s | stored MB | stored % | peak RSS MB | server CPU s | pacs-lite MB/s ratio |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        let mbps = total_bytes as f64 / 1e6 / row.seconds;
        let ours = rows
            .iter()
            .find(|r| r.server == "pacs-lite" && r.associations == row.associations)
            .map(|r| total_bytes as f64 / 1e6 / r.seconds);
        println!(
            "| {} | {} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1}% | {:.0} | {:.2} | {} |",
            row.server,
            row.associations,
            row.seconds,
            files.len() as f64 / row.seconds,
            mbps,
            row.stored as f64 / 1e6,
            100.0 * row.stored as f64 / total_bytes as f64,
            row.rss as f64 / 1e6,
            row.cpu,
            ours.map_or("-".into(), |o| format!("{:.2}x", o / mbps)),
        );
    }
    println!();
    println!(
        "storescp runs with --fork (one child per association): its peak RSS is the listening parent's."
    );
    println!(
        "Every server's data is kept until all runs are done (deleting files slows the next run's file creations); `sync` before each run."
    );
    let _ = std::fs::remove_dir_all(&args.work);
    let _ = std::fs::remove_dir_all(&stale);
    Ok(())
}
