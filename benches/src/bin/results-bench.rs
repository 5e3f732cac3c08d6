//! Lab-result and report benchmark (issue 5).
//!
//! HL7 v2 ingest: starts a real `pacs serve` (release build, fresh data
//! folder, MLLP on loopback), sends generated ORU^R01 messages
//! (`pacs_fixtures::hl7::oru_message`: blood counts, metabolic panels,
//! radiology reports and corrections, every control id distinct) over one
//! MLLP connection and then, against another fresh server, over four at
//! once. Each connection waits for the ACK of a message before it sends the
//! next, and every ACK must be AA for that message's control id. Then the
//! server is killed (SIGKILL: an AA must not depend on a clean stop), the
//! catalog is opened and every acknowledged control id must be there with
//! its raw message readable and matching its SHA-256: a fast run that loses
//! messages fails instead of printing a rate.
//!
//! Before that, a probe times fsync on the work folder: one connection that
//! waits for each ACK is strictly sequential, so its rate is bounded by how
//! long one message takes to become durable.
//!
//! Full-text search latency (the other half of issue 5's benchmark) is
//! `search-bench`.
//!
//! Prints tables; asserts nothing about timings.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use pacs_archive::{Archive, ArchiveConfig};
use pacs_benches::{Cpu, cpu_seconds, pacs_binary, percentile_ms};
use pacs_fixtures::hl7::oru_message;

/// Issue 5's target for acknowledged ORU^R01 per second on 2 cores.
const TARGET_MSG_PER_S: f64 = 2_000.0;

#[derive(Debug, Parser)]
#[command(about = "Results benchmark: HL7 v2 ORU^R01 over MLLP, ACK awaited per message")]
struct Args {
    /// Timed messages per run (each run has its own fresh server).
    #[arg(long, default_value_t = 5_000)]
    messages: usize,
    /// Messages sent before the clock starts (stored and checked too).
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// Concurrent MLLP connections of each run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    connections: Vec<usize>,
    /// Seed of the generated messages.
    #[arg(long, default_value_t = 2026)]
    seed: u64,
    /// Working folder (on a real disk: fsync is what is measured).
    #[arg(long, default_value = "target/bench-work/results")]
    work: PathBuf,
    /// The `pacs` binary (default: next to this program).
    #[arg(long)]
    pacs: Option<PathBuf>,
    /// Keep the data folders of the runs.
    #[arg(long)]
    keep: bool,
}

// ---------------------------------------------------------------------------
// Small helpers

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Mean cost of a few durable-write patterns in `dir`, microseconds.
struct FsyncProbe {
    /// Append 1 KB to a file and fdatasync it (what a WAL commit does).
    append_fdatasync: f64,
    /// Append 1 KB to a file and fsync it.
    append_fsync: f64,
    /// fsync of a directory with nothing new in it.
    dir_fsync: f64,
    /// A new file: create, write 1 KB, fsync, rename, fsync its directory
    /// (what the filesystem object store does per blob).
    new_file: f64,
}

fn fsync_probe(dir: &Path) -> anyhow::Result<FsyncProbe> {
    const N: usize = 200;
    let dir = dir.join("fsync-probe");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let chunk = [b'x'; 1024];
    let time = |f: &mut dyn FnMut(usize) -> std::io::Result<()>| -> anyhow::Result<f64> {
        let started = Instant::now();
        for i in 0..N {
            f(i)?;
        }
        Ok(started.elapsed().as_secs_f64() * 1e6 / N as f64)
    };
    let mut log = std::fs::File::create(dir.join("log"))?;
    let append_fsync = time(&mut |_| {
        log.write_all(&chunk)?;
        log.sync_all()
    })?;
    let append_fdatasync = time(&mut |_| {
        log.write_all(&chunk)?;
        log.sync_data()
    })?;
    let handle = std::fs::File::open(&dir)?;
    let dir_fsync = time(&mut |_| handle.sync_all())?;
    let new_file = time(&mut |i| {
        let tmp = dir.join(format!("{i}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&chunk)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, dir.join(format!("{i}.blob")))?;
        handle.sync_all()
    })?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(FsyncProbe {
        append_fdatasync,
        append_fsync,
        dir_fsync,
        new_file,
    })
}

// ---------------------------------------------------------------------------
// pacs serve

struct Server {
    child: Child,
    mllp: u16,
}

impl Server {
    /// Stop hard: what was acknowledged must already be durable.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_pacs(pacs: &Path, data: &Path) -> anyhow::Result<Server> {
    let mut child = Command::new(pacs)
        .arg("--data-dir")
        .arg(data)
        .args([
            "serve",
            "--dicom-port",
            "0",
            "--http-port",
            "0",
            "--mllp-port",
            "0",
        ])
        .env("PACS_DICOM__LISTEN_ADDRESS", "127.0.0.1")
        .env("PACS_HTTP__LISTEN_ADDRESS", "127.0.0.1")
        .env("PACS_MLLP__LISTEN_ADDRESS", "127.0.0.1")
        .env("PACS_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("start pacs serve")?;
    let stderr = child.stderr.take().context("stderr")?;
    let (tx, rx) = mpsc::channel();
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                if line.starts_with("pacs serve: DICOM on") {
                    let port = line
                        .split("HL7 on ")
                        .nth(1)
                        .and_then(|r| r.split([',', ' ']).next())
                        .and_then(|a| a.rsplit(':').next())
                        .and_then(|p| p.parse::<u16>().ok())
                        .with_context(|| format!("no HL7 port in {line:?}"))?;
                    return Ok(Server { child, mllp: port });
                }
                seen.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("pacs serve stopped: {}", seen.join("\n"))
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!("pacs serve exited ({status}): {}", seen.join("\n"));
        }
        ensure!(Instant::now() < deadline, "pacs serve did not start");
    }
}

// ---------------------------------------------------------------------------
// An MLLP client that waits for each ACK

/// A generated message, framed, with its control id (MSH-10).
struct Outgoing {
    frame: Vec<u8>,
    control_id: String,
}

fn outgoing(seed: u64, n: usize) -> anyhow::Result<Outgoing> {
    let message = oru_message(seed, n);
    let msh = message.split(|&b| b == b'\r').next().unwrap_or_default();
    ensure!(
        msh.len() > 4 && msh.starts_with(b"MSH"),
        "message {n}: no MSH"
    );
    let separator = msh[3];
    // MSH-1 is the separator itself, so MSH-10 is the tenth field when
    // split on it ("MSH" is the first).
    let control_id = msh
        .split(|&b| b == separator)
        .nth(9)
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .filter(|id| !id.is_empty())
        .with_context(|| format!("message {n}: no MSH-10"))?;
    let mut frame = Vec::with_capacity(message.len() + 3);
    frame.push(0x0B);
    frame.extend_from_slice(&message);
    frame.extend_from_slice(&[0x1C, 0x0D]);
    Ok(Outgoing { frame, control_id })
}

/// MSA-1 (acknowledgement code) and MSA-2 (the acknowledged control id).
fn read_msa(ack: &[u8]) -> Option<(String, String)> {
    let text = String::from_utf8_lossy(ack);
    let separator = text.strip_prefix("MSH")?.chars().next()?;
    let msa = text.split(['\r', '\n']).find(|s| s.starts_with("MSA"))?;
    let mut fields = msa.split(separator).skip(1);
    Some((fields.next()?.to_owned(), fields.next()?.to_owned()))
}

/// Send `messages` one at a time on one connection, each after the ACK of
/// the one before; the ACK latency of each.
fn send_awaiting_acks(port: u16, messages: &[Outgoing]) -> anyhow::Result<Vec<Duration>> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).context("connect to MLLP")?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut latencies = Vec::with_capacity(messages.len());
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    for m in messages {
        let sent = Instant::now();
        stream.write_all(&m.frame)?;
        // One ACK per message: read up to its end block + CR.
        let ack = loop {
            if let Some(end) = buf.windows(2).position(|w| w == [0x1C, 0x0D]) {
                let start = buf.iter().position(|&b| b == 0x0B).unwrap_or(0);
                let ack = buf[start + 1..end].to_vec();
                buf.drain(..end + 2);
                break ack;
            }
            let n = stream.read(&mut chunk).context("read ACK")?;
            ensure!(
                n > 0,
                "server closed the connection awaiting the ACK of {}",
                m.control_id
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        latencies.push(sent.elapsed());
        let (code, acknowledged) =
            read_msa(&ack).with_context(|| format!("no MSA in the answer to {}", m.control_id))?;
        ensure!(
            code == "AA" && acknowledged == m.control_id,
            "{} answered {code} for {acknowledged:?}: {}",
            m.control_id,
            String::from_utf8_lossy(&ack).replace('\r', "\n")
        );
    }
    Ok(latencies)
}

/// Send over `connections` connections at once, message `i` on connection
/// `i % connections`; every latency.
fn send_over(
    port: u16,
    messages: &[Outgoing],
    connections: usize,
) -> anyhow::Result<Vec<Duration>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..connections)
            .map(|c| {
                let mine: Vec<&Outgoing> = messages.iter().skip(c).step_by(connections).collect();
                scope.spawn(move || {
                    let owned: Vec<Outgoing> = mine
                        .into_iter()
                        .map(|m| Outgoing {
                            frame: m.frame.clone(),
                            control_id: m.control_id.clone(),
                        })
                        .collect();
                    send_awaiting_acks(port, &owned)
                })
            })
            .collect();
        let mut all = Vec::with_capacity(messages.len());
        for h in handles {
            all.extend(h.join().map_err(|_| anyhow::anyhow!("sender panicked"))??);
        }
        Ok(all)
    })
}

// ---------------------------------------------------------------------------
// What the archive holds afterwards

struct Stored {
    messages: usize,
    reports: u64,
    observations: u64,
}

/// Open the archive of a stopped server: every control id in `expected`
/// must be recorded, and every recorded raw message must read back
/// matching its SHA-256.
async fn check_stored(data: &Path, expected: &HashSet<String>) -> anyhow::Result<Stored> {
    let archive = Archive::open(ArchiveConfig::embedded(data)).await?;
    let catalog = archive.catalog();
    let count = |sql: &'static str| async move {
        let rows = catalog.select_text_rows(sql, &[], 1).await?;
        let n = rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .and_then(|v| v.parse::<u64>().ok())
            .context("no count")?;
        anyhow::Ok(n)
    };
    let ids = catalog
        .select_text_rows("SELECT control_id FROM messages", &[], usize::MAX)
        .await?;
    let recorded: HashSet<String> = ids
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect();
    let missing = expected.difference(&recorded).count();
    ensure!(
        missing == 0,
        "{missing} acknowledged message(s) are not in the catalog"
    );
    let blobs = catalog.message_blobs().await?;
    for at in &blobs {
        archive
            .retrieve_message(at.message_id)
            .await
            .with_context(|| format!("raw message {}", at.message_id))?;
    }
    Ok(Stored {
        messages: blobs.len(),
        reports: count("SELECT CAST(COUNT(*) AS TEXT) FROM reports").await?,
        observations: count("SELECT CAST(COUNT(*) AS TEXT) FROM observations").await?,
    })
}

// ---------------------------------------------------------------------------
// The MLLP section

struct MllpRow {
    connections: usize,
    messages: usize,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    server_cpu_s: f64,
    stored: Stored,
}

impl MllpRow {
    fn rate(&self) -> f64 {
        self.messages as f64 / self.seconds
    }
}

fn run_mllp(
    args: &Args,
    pacs: &Path,
    work: &Path,
    rt: &tokio::runtime::Runtime,
    connections: usize,
) -> anyhow::Result<MllpRow> {
    let connections = connections.max(1);
    let data = work.join(format!("pacs-data-{connections}"));
    let total = args.warmup + args.messages;
    let messages = (0..total)
        .map(|n| outgoing(args.seed, n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let expected: HashSet<String> = messages.iter().map(|m| m.control_id.clone()).collect();
    ensure!(
        expected.len() == total,
        "control ids repeat in the fixtures"
    );
    let (warmup, timed) = messages.split_at(args.warmup);

    let server = start_pacs(pacs, &data)?;
    let pid = server.child.id();
    send_over(server.mllp, warmup, connections).context("warm-up")?;
    let cpu_before = cpu_seconds(Cpu::Of(pid));
    let started = Instant::now();
    let mut latencies = send_over(server.mllp, timed, connections)?;
    let seconds = started.elapsed().as_secs_f64();
    let server_cpu_s = cpu_seconds(Cpu::Of(pid)) - cpu_before;
    server.kill();

    latencies.sort();
    let stored = rt.block_on(check_stored(&data, &expected))?;
    ensure!(
        stored.messages == total,
        "{} messages acknowledged, {} recorded",
        total,
        stored.messages
    );
    Ok(MllpRow {
        connections,
        messages: timed.len(),
        seconds,
        p50_ms: percentile_ms(&latencies, 0.50),
        p99_ms: percentile_ms(&latencies, 0.99),
        server_cpu_s,
        stored,
    })
}

fn print_mllp(rows: &[MllpRow], probe: &FsyncProbe, notes: &[String]) {
    println!();
    println!("## HL7 v2 ORU^R01 over MLLP, ACK awaited per message");
    println!();
    println!(
        "| connections | messages | seconds | msg/s | ACK p50 ms | ACK p99 ms | server CPU ms/msg | stored (checked) | reports | observations | target | |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        let rate = r.rate();
        println!(
            "| {} | {} | {:.2} | {:.0} | {:.2} | {:.2} | {:.3} | {} | {} | {} | >= {:.0} msg/s | {} |",
            r.connections,
            r.messages,
            r.seconds,
            rate,
            r.p50_ms,
            r.p99_ms,
            r.server_cpu_s * 1e3 / r.messages as f64,
            r.stored.messages,
            r.stored.reports,
            r.stored.observations,
            TARGET_MSG_PER_S,
            if rate >= TARGET_MSG_PER_S {
                "met"
            } else {
                "missed"
            }
        );
    }
    println!();
    println!(
        "- fsync on the work folder: append 1 KB + fdatasync {:.0} us, append 1 KB + fsync {:.0} us, directory fsync {:.0} us, new file (create, write 1 KB, fsync, rename, directory fsync) {:.0} us",
        probe.append_fdatasync, probe.append_fsync, probe.dir_fsync, probe.new_file
    );
    println!(
        "- stored = messages in the catalog after SIGKILL of the server, each acknowledged control id present and each raw message read back against its SHA-256 (warm-up messages included)"
    );
    for n in notes {
        println!("- {n}");
    }
}

// ---------------------------------------------------------------------------

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pacs = pacs_binary(args.pacs.clone())?;
    std::fs::create_dir_all(&args.work)?;
    let work = args.work.canonicalize()?;
    for &connections in &args.connections {
        let data = work.join(format!("pacs-data-{}", connections.max(1)));
        ensure!(
            !data.exists(),
            "{} is left from an earlier run (--keep): remove it first",
            data.display()
        );
    }
    let rt = tokio::runtime::Runtime::new()?;
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let mut notes = vec![format!(
        "{cores} cores; client and server on the same machine"
    )];

    // --- 1. HL7 v2 ingest over MLLP --------------------------------------
    let probe = fsync_probe(&work)?;
    let mut rows = Vec::new();
    for &connections in &args.connections {
        eprintln!(
            "MLLP: {} + {} warm-up messages over {connections} connection(s) ...",
            args.messages, args.warmup
        );
        let load_before = loadavg();
        rows.push(run_mllp(&args, &pacs, &work, &rt, connections)?);
        notes.push(format!(
            "{connections} connection(s): load average {load_before} before, {} after",
            loadavg()
        ));
    }
    print_mllp(&rows, &probe, &notes);
    // Removed only now: ext4 allocates new inodes more slowly for minutes
    // after many files were deleted, which would slow the next run.
    if !args.keep {
        for &connections in &args.connections {
            let _ = std::fs::remove_dir_all(work.join(format!("pacs-data-{}", connections.max(1))));
        }
    }

    Ok(())
}
