//! DICOMweb read-path benchmark: QIDO-RS searches, series metadata, cached
//! thumbnails and first renderings, timed one request at a time over one
//! keep-alive connection on loopback.
//!
//! 1. Builds a large archive through the real ingest path (the
//!    `pacs-archive` library, many ingests in flight) from small generated
//!    instances (64x64 CT/MR/CR, 64x48 US, SR and PDF reports; distinct
//!    patients with generated names, dates over ten years, accession numbers,
//!    CT/MR/CR/DX/US studies), plus one series of 500 instances, a series of
//!    512x512 16-bit CT slices and 2048x2500 16-bit CR/DX images; runs
//!    `pacs reindex`, starts `pacs serve`, waits for it to be idle (the
//!    thumbnail worker renders every new series once) and times the
//!    requests against the targets.
//! 2. Side by side on a small set (20 studies of the same fixtures and the
//!    same extras): a fresh `pacs serve` and Orthanc with its DICOMweb plugin
//!    (Debian's `orthanc` and `orthanc-dicomweb`, run by hand on loopback),
//!    loaded with the same files, answer the same requests.
//!
//! Prints tables; asserts nothing about timings.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;
use pacs_archive::{Archive, ArchiveConfig, IngestReceipt, IngestSource};
use pacs_benches::{free_port, pacs_binary};
use pacs_fixtures::{DatasetSpec, FixtureFile, ts};
use rayon::prelude::*;

#[derive(Debug, Parser)]
#[command(
    about = "DICOMweb read benchmark: QIDO, metadata, thumbnails, rendering; pacs vs Orthanc"
)]
struct Args {
    /// Studies in the large archive (plus the extras: a 500-instance series,
    /// the 512x512 CT series and the 2048x2500 CR/DX images).
    #[arg(long, default_value_t = 2_000)]
    studies: usize,
    /// Mean instances per study of the large archive.
    #[arg(long, default_value_t = 10)]
    instances_per_study: usize,
    /// Studies of the side-by-side set (pacs and Orthanc).
    #[arg(long, default_value_t = 20)]
    small_studies: usize,
    /// Timed requests per row.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Timed requests of the 2048x2500 rendering row (slow on Orthanc).
    #[arg(long, default_value_t = 40)]
    cr_requests: usize,
    /// 512x512 CT slices to render (each rendering of one slice uses another
    /// `quality`, so none is a cache hit).
    #[arg(long, default_value_t = 50)]
    ct_slices: usize,
    /// Seed of the generated data.
    #[arg(long, default_value_t = 2026)]
    seed: u64,
    /// Most ingests in flight while building (0 = the archive's default).
    #[arg(long, default_value_t = 0)]
    max_in_flight: usize,
    /// Working folder (on a real disk).
    #[arg(long, default_value = "target/bench-work/dicomweb")]
    work: PathBuf,
    /// Reuse the large archive of an earlier run with the same sizes and seed.
    #[arg(long)]
    reuse: bool,
    /// The `pacs` binary (default: next to this program).
    #[arg(long)]
    pacs: Option<PathBuf>,
    /// Skip the side-by-side run with Orthanc.
    #[arg(long)]
    no_orthanc: bool,
    /// Skip the large archive (only the side-by-side run).
    #[arg(long)]
    no_large: bool,
}

// ---------------------------------------------------------------------------
// Small helpers

/// splitmix64: a deterministic stream of numbers without a crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mix(a: u64, b: u64) -> u64 {
    Rng(a ^ b.wrapping_mul(0xA24B_AED4_963E_E407)).next()
}

/// CPU ticks (1/100 s) a process has used, from /proc.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

/// Wait until a server uses under 5% of a core over 2 s; returns the wait.
fn wait_idle(pid: u32, what: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut last = cpu_ticks(pid);
    loop {
        std::thread::sleep(Duration::from_secs(2));
        let now = cpu_ticks(pid);
        if now.saturating_sub(last) < 10 {
            return started.elapsed();
        }
        if started.elapsed() > limit {
            eprintln!(
                "{what} still busy after {:.0} s: measuring anyway",
                limit.as_secs_f64()
            );
            return started.elapsed();
        }
        last = now;
    }
}

/// The 1-minute load average (other work on the machine skews timings).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

// ---------------------------------------------------------------------------
// The data: fixtures with distinct generated patient names

/// The value of a top-level element in an Explicit VR Little Endian file:
/// (offset of the element, offset of the value, value length).
fn find_explicit(
    bytes: &[u8],
    group: u16,
    element: u16,
    vr: &[u8; 2],
) -> Option<(usize, usize, usize)> {
    let g = group.to_le_bytes();
    let e = element.to_le_bytes();
    let pattern = [g[0], g[1], e[0], e[1], vr[0], vr[1]];
    let at = bytes.windows(6).position(|w| w == pattern)?;
    let len = u16::from_le_bytes([*bytes.get(at + 6)?, *bytes.get(at + 7)?]) as usize;
    (at + 8 + len <= bytes.len()).then_some((at, at + 8, len))
}

fn text_value(bytes: &[u8], group: u16, element: u16, vr: &[u8; 2]) -> String {
    find_explicit(bytes, group, element, vr)
        .map(|(_, v, len)| {
            String::from_utf8_lossy(&bytes[v..v + len])
                .trim_end_matches(['\0', ' '])
                .to_owned()
        })
        .unwrap_or_default()
}

const ONSETS: [&str; 16] = [
    "B", "C", "D", "F", "G", "H", "K", "L", "M", "N", "P", "R", "S", "T", "V", "Z",
];
const VOWELS: [&str; 5] = ["a", "e", "i", "o", "u"];
const ENDINGS: [&str; 8] = ["son", "ner", "ova", "ez", "ski", "berg", "ton", "ler"];
const GIVEN: [&str; 16] = [
    "Anna", "Peter", "Maria", "Lukas", "Sofia", "Jan", "Emma", "Noah", "Eva", "Lars", "Laura",
    "Marco", "Ingrid", "Elias", "Hanna", "Tom",
];

/// A distinct ASCII name for patient `p` (51 200 family names): the fixtures
/// draw names from a pool of 30, too few for realistic name searches.
fn generated_name(seed: u64, p: u64) -> String {
    let h = mix(seed, p);
    let o1 = ONSETS[(h % 16) as usize];
    let v1 = VOWELS[((h >> 4) % 5) as usize];
    let o2 = ONSETS[((h >> 8) % 16) as usize].to_ascii_lowercase();
    let v2 = VOWELS[((h >> 12) % 5) as usize];
    let end = ENDINGS[((h >> 16) % 8) as usize];
    let given = GIVEN[((h >> 20) % 16) as usize];
    format!("{o1}{v1}{o2}{v2}{end}^{given}")
}

/// Replace the PatientName of a generated Explicit VR LE file with a
/// generated distinct one (patients 0..4, the fixtures' deliberately awkward
/// ones, keep theirs).
fn rename_patient(file: &mut FixtureFile, seed: u64) {
    let p: u64 = match file
        .patient_id
        .get(file.patient_id.len().saturating_sub(6)..)
    {
        Some(digits) => match digits.parse::<u64>() {
            Ok(n) => n - 1,
            Err(_) => return,
        },
        None => return,
    };
    if p < 5 {
        return;
    }
    let Some((at, value, len)) = find_explicit(&file.bytes, 0x0010, 0x0010, b"PN") else {
        return;
    };
    let mut name = generated_name(seed, p).into_bytes();
    if name.len() % 2 == 1 {
        name.push(b' ');
    }
    let mut out = Vec::with_capacity(file.bytes.len() + name.len());
    out.extend_from_slice(&file.bytes[..at + 6]);
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(&name);
    out.extend_from_slice(&file.bytes[value + len..]);
    file.bytes = out;
}

#[derive(Debug, Clone, Default)]
struct SeriesInfo {
    /// SOP Instance UIDs in plan order.
    instances: Vec<String>,
}

#[derive(Debug, Clone, Default)]
struct StudyInfo {
    accession: String,
    date: String,
    modality: String,
    name: String,
    series: BTreeMap<String, SeriesInfo>,
}

/// What the benchmark knows about the data it loaded.
#[derive(Debug, Clone, Default)]
struct DataInfo {
    studies: BTreeMap<String, StudyInfo>,
    /// (study, series) of the 500-instance series.
    series500: Option<(String, String)>,
    /// (study, series, instance) of the 512x512 CT slices.
    ct: Vec<(String, String, String)>,
    /// (study, series, instance) of the 2048x2500 CR/DX images.
    cr: Vec<(String, String, String)>,
    instances: usize,
    bytes: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Bulk,
    Series500,
    Ct,
    Cr,
}

impl DataInfo {
    fn add(&mut self, file: &FixtureFile, role: Role) {
        let study = self
            .studies
            .entry(file.study_instance_uid.clone())
            .or_default();
        if study.accession.is_empty() {
            study.accession = text_value(&file.bytes, 0x0008, 0x0050, b"SH");
            study.date = text_value(&file.bytes, 0x0008, 0x0020, b"DA");
            study.name = text_value(&file.bytes, 0x0010, 0x0010, b"PN");
        }
        let modality = text_value(&file.bytes, 0x0008, 0x0060, b"CS");
        if study.modality.is_empty() && !matches!(modality.as_str(), "SR" | "DOC" | "OT") {
            study.modality = modality;
        }
        study
            .series
            .entry(file.series_instance_uid.clone())
            .or_default()
            .instances
            .push(file.sop_instance_uid.clone());
        let triple = || {
            (
                file.study_instance_uid.clone(),
                file.series_instance_uid.clone(),
                file.sop_instance_uid.clone(),
            )
        };
        match role {
            Role::Bulk => {}
            Role::Series500 => {
                self.series500 = Some((
                    file.study_instance_uid.clone(),
                    file.series_instance_uid.clone(),
                ))
            }
            Role::Ct => self.ct.push(triple()),
            Role::Cr => self.cr.push(triple()),
        }
        self.instances += 1;
        self.bytes += file.bytes.len() as u64;
    }

    /// Save for `--reuse` (one line per instance).
    fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        writeln!(out, "#\t{}\t{}", self.instances, self.bytes)?;
        if let Some((st, se)) = &self.series500 {
            writeln!(out, "500\t{st}\t{se}")?;
        }
        for (st, se, i) in &self.ct {
            writeln!(out, "ct\t{st}\t{se}\t{i}")?;
        }
        for (st, se, i) in &self.cr {
            writeln!(out, "cr\t{st}\t{se}\t{i}")?;
        }
        for (uid, s) in &self.studies {
            writeln!(
                out,
                "S\t{uid}\t{}\t{}\t{}\t{}",
                s.accession, s.date, s.modality, s.name
            )?;
            for (se, info) in &s.series {
                writeln!(out, "s\t{se}\t{}", info.instances.join("\t"))?;
            }
        }
        Ok(())
    }

    fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        let mut info = DataInfo::default();
        let mut current = String::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            let triple = || (f[1].to_owned(), f[2].to_owned(), f[3].to_owned());
            match f[0] {
                "#" => {
                    info.instances = f[1].parse()?;
                    info.bytes = f[2].parse()?;
                }
                "500" => info.series500 = Some((f[1].to_owned(), f[2].to_owned())),
                "ct" => info.ct.push(triple()),
                "cr" => info.cr.push(triple()),
                "S" => {
                    current = f[1].to_owned();
                    info.studies.insert(
                        current.clone(),
                        StudyInfo {
                            accession: f[2].to_owned(),
                            date: f[3].to_owned(),
                            modality: f[4].to_owned(),
                            name: f[5].to_owned(),
                            series: BTreeMap::new(),
                        },
                    );
                }
                "s" => {
                    let study = info
                        .studies
                        .get_mut(&current)
                        .context("series before study")?;
                    study.series.insert(
                        f[1].to_owned(),
                        SeriesInfo {
                            instances: f[2..].iter().map(|s| (*s).to_owned()).collect(),
                        },
                    );
                }
                other => bail!("bad line kind {other:?} in {}", path.display()),
            }
        }
        Ok(info)
    }
}

/// Bulk studies of about `per_study` instances each: small images, with
/// reports, all in Explicit VR LE (so names can be rewritten in place).
fn bulk_spec(studies: usize, per_study: usize, seed: u64) -> DatasetSpec {
    // A cycle of 4 studies: CT (2 series + 2 reports), MR (3 + 2), CR (2 + 2),
    // US (1 series of 2 loops + 2): 2c + 3r + 12 = 4 * per_study.
    let rest = (4 * per_study).saturating_sub(12).max(5);
    let mr = (rest / 7).max(1);
    let ct = (rest.saturating_sub(3 * mr) / 2).max(1);
    DatasetSpec {
        seed,
        patients: studies.div_ceil(2).max(1),
        studies_per_patient: 2,
        ct_slices: ct,
        mr_slices: mr,
        us_frames: 2,
        cr_size: (64, 64),
        ct_size: 64,
        mr_size: 64,
        us_size: (64, 48),
        include_cr: true,
        include_us: true,
        include_reports: true,
        transfer_syntax: Some(ts::EXPLICIT_VR_LE),
        max_instances: None,
    }
}

/// The extras: one series of 500 small CT instances, `ct_slices` 512x512
/// 16-bit CT slices, and four 2048x2500 16-bit radiographs (two DX, two CR).
fn extra_specs(seed: u64, ct_slices: usize) -> Vec<(DatasetSpec, Role)> {
    let one = |seed| DatasetSpec {
        seed,
        patients: 1,
        studies_per_patient: 1,
        ct_slices: 0,
        mr_slices: 0,
        include_cr: false,
        include_us: false,
        include_reports: false,
        transfer_syntax: Some(ts::EXPLICIT_VR_LE),
        ..DatasetSpec::default()
    };
    vec![
        (
            DatasetSpec {
                ct_slices: 500,
                ct_size: 64,
                max_instances: Some(500),
                ..one(seed + 1)
            },
            Role::Series500,
        ),
        (
            DatasetSpec {
                ct_slices: ct_slices.max(1),
                ct_size: 512,
                max_instances: Some(ct_slices.max(1)),
                ..one(seed + 2)
            },
            Role::Ct,
        ),
        (
            DatasetSpec {
                patients: 2,
                include_cr: true,
                cr_size: (2048, 2500),
                ..one(seed + 3)
            },
            Role::Cr,
        ),
    ]
}

fn generate(spec: &DatasetSpec, range: std::ops::Range<usize>) -> Vec<FixtureFile> {
    range
        .into_par_iter()
        .map(|i| {
            let mut f = spec.generate(i);
            rename_patient(&mut f, spec.seed);
            f
        })
        .collect()
}

fn check_receipt(receipt: &IngestReceipt) -> anyhow::Result<()> {
    match receipt {
        IngestReceipt::Stored(_) | IngestReceipt::Replaced(_) | IngestReceipt::Duplicate(_) => {
            Ok(())
        }
        IngestReceipt::Refused(r) => bail!("ingest refused: {r:?}"),
    }
}

/// Generate and ingest every spec in chunks; returns what was loaded.
async fn build_archive(
    dir: &Path,
    specs: &[(DatasetSpec, Role)],
    max_in_flight: usize,
    files_out: Option<&mut Vec<Bytes>>,
) -> anyhow::Result<DataInfo> {
    let mut config = ArchiveConfig::embedded(dir);
    config.ingest.max_in_flight = max_in_flight;
    let archive = Archive::open(config).await?;
    let in_flight = archive.config().ingest.effective_max_in_flight();
    let mut info = DataInfo::default();
    let mut keep = files_out;
    let total: usize = specs.iter().map(|(s, _)| s.plan_len()).sum();
    let started = Instant::now();
    let mut last_report = Instant::now();
    for (spec, role) in specs {
        let n = spec.plan_len();
        let chunk = 4096;
        let mut next = {
            let spec = spec.clone();
            let end = chunk.min(n);
            Some(tokio::task::spawn_blocking(move || generate(&spec, 0..end)))
        };
        let mut start = 0;
        while let Some(pending) = next.take() {
            let files = pending.await?;
            let end = start + files.len();
            // Generate the next chunk while this one is ingested.
            if end < n {
                let spec = spec.clone();
                let next_end = (end + chunk).min(n);
                next = Some(tokio::task::spawn_blocking(move || {
                    generate(&spec, end..next_end)
                }));
            }
            let mut blobs = Vec::with_capacity(files.len());
            for f in &files {
                info.add(f, *role);
            }
            for f in files {
                blobs.push(Bytes::from(f.bytes));
            }
            if let Some(out) = keep.as_deref_mut() {
                out.extend(blobs.iter().cloned());
            }
            let mut results = futures::stream::iter(blobs)
                .map(|b| archive.ingest_part10(b, IngestSource::Other("bench".into())))
                .buffer_unordered(in_flight * 2);
            while let Some(receipt) = results.next().await {
                check_receipt(&receipt)?;
            }
            start = end;
            if last_report.elapsed() > Duration::from_secs(30) {
                last_report = Instant::now();
                let secs = started.elapsed().as_secs_f64();
                eprintln!(
                    "  {} / {total} instances in {secs:.0} s ({:.0}/s)",
                    info.instances,
                    info.instances as f64 / secs
                );
            }
        }
    }
    Ok(info)
}

// ---------------------------------------------------------------------------
// A minimal keep-alive HTTP/1.1 client (blocking, one connection)

struct Http {
    port: u16,
    auth: Option<String>,
    conn: Option<BufReader<TcpStream>>,
}

struct Resp {
    status: u16,
    body: Vec<u8>,
}

impl Http {
    fn new(port: u16, token: Option<&str>) -> Self {
        Http {
            port,
            auth: token.map(|t| format!("Bearer {t}")),
            conn: None,
        }
    }

    fn request(
        &mut self,
        method: &str,
        path: &str,
        accept: Option<&str>,
        body: &[u8],
    ) -> anyhow::Result<Resp> {
        let reused = self.conn.is_some();
        match self.try_request(method, path, accept, body) {
            Ok(r) => Ok(r),
            Err(e) if reused => {
                // The server may have closed an idle connection: once more.
                self.conn = None;
                self.try_request(method, path, accept, body)
                    .with_context(|| format!("{method} {path} (after: {e})"))
            }
            Err(e) => Err(e.context(format!("{method} {path}"))),
        }
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        accept: Option<&str>,
        body: &[u8],
    ) -> anyhow::Result<Resp> {
        if self.conn.is_none() {
            let stream = TcpStream::connect(("127.0.0.1", self.port))?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(Duration::from_secs(300)))?;
            self.conn = Some(BufReader::with_capacity(1 << 16, stream));
        }
        let conn = self.conn.as_mut().expect("connected");
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n",
            self.port
        );
        if let Some(a) = &self.auth {
            head.push_str(&format!("Authorization: {a}\r\n"));
        }
        if let Some(a) = accept {
            head.push_str(&format!("Accept: {a}\r\n"));
        }
        if method == "POST" {
            head.push_str("Content-Type: application/dicom\r\n");
        }
        if !body.is_empty() || method == "POST" {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let stream = conn.get_mut();
        stream.write_all(head.as_bytes())?;
        if !body.is_empty() {
            stream.write_all(body)?;
        }
        let mut line = String::new();
        conn.read_line(&mut line)?;
        ensure!(!line.is_empty(), "connection closed");
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let (mut length, mut chunked, mut close) = (None, false, false);
        loop {
            line.clear();
            conn.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                match k.as_str() {
                    "content-length" => length = v.parse::<usize>().ok(),
                    "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                    "connection" => close = v.eq_ignore_ascii_case("close"),
                    _ => {}
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                conn.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .with_context(|| format!("bad chunk size {line:?}"))?;
                if size == 0 {
                    // Trailers, then the empty line.
                    loop {
                        line.clear();
                        conn.read_line(&mut line)?;
                        if line.trim().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let at = body.len();
                body.resize(at + size, 0);
                conn.read_exact(&mut body[at..])?;
                let mut crlf = [0u8; 2];
                conn.read_exact(&mut crlf)?;
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            conn.read_exact(&mut body)?;
        } else if method != "HEAD" && status != 204 && status != 304 {
            conn.read_to_end(&mut body)?;
            close = true;
        }
        if close {
            self.conn = None;
        }
        Ok(Resp { status, body })
    }
}

// ---------------------------------------------------------------------------
// Servers

struct Server {
    name: String,
    child: Child,
    http: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM first (a graceful stop), then SIGKILL.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pacs_cmd(pacs: &Path, data: &Path) -> Command {
    let mut c = Command::new(pacs);
    c.arg("--data-dir").arg(data);
    c.env("PACS_LOG", "warn");
    c
}

fn pacs_token(pacs: &Path, data: &Path) -> anyhow::Result<String> {
    let out = pacs_cmd(pacs, data)
        .args(["token", "issue", "--role", "admin", "--name", "bench"])
        .stderr(Stdio::null())
        .output()
        .context("run pacs token issue")?;
    ensure!(out.status.success(), "pacs token issue failed");
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

fn pacs_reindex(pacs: &Path, data: &Path) -> anyhow::Result<f64> {
    let started = Instant::now();
    let out = pacs_cmd(pacs, data)
        .arg("reindex")
        .output()
        .context("run pacs reindex")?;
    ensure!(
        out.status.success(),
        "pacs reindex failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(started.elapsed().as_secs_f64())
}

fn start_pacs(pacs: &Path, data: &Path) -> anyhow::Result<Server> {
    let mut child = pacs_cmd(pacs, data)
        .args([
            "serve",
            "--dicom-port",
            "0",
            "--http-port",
            "0",
            "--mllp-port",
            "0",
        ])
        .env("PACS_DICOM__ACCEPT_ANY_CALLING_AE", "true")
        .env("PACS_DICOM__LISTEN_ADDRESS", "127.0.0.1")
        .env("PACS_HTTP__LISTEN_ADDRESS", "127.0.0.1")
        .env("PACS_MLLP__LISTEN_ADDRESS", "127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("start pacs serve")?;
    let stderr = child.stderr.take().context("stderr")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(tx) = &tx {
                let _ = tx.send(line.clone());
            }
            if line.starts_with("pacs serve: DICOM on") {
                tx = None;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                if line.starts_with("pacs serve: DICOM on") {
                    let port = line
                        .split("HTTP on ")
                        .nth(1)
                        .and_then(|r| r.split_whitespace().next())
                        .and_then(|a| a.rsplit(':').next())
                        .and_then(|p| p.parse::<u16>().ok())
                        .with_context(|| format!("no HTTP port in {line:?}"))?;
                    return Ok(Server {
                        name: "pacs-lite".into(),
                        child,
                        http: port,
                    });
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

fn ensure_orthanc() -> anyhow::Result<()> {
    let plugin = Path::new("/usr/share/orthanc/plugins/libOrthancDicomWeb.so");
    if Path::new("/usr/sbin/Orthanc").exists() && plugin.exists() {
        return Ok(());
    }
    eprintln!("installing orthanc and orthanc-dicomweb with apt-get ...");
    let _ = Command::new("apt-get").arg("update").status();
    let ok = Command::new("apt-get")
        .args([
            "install",
            "-y",
            "--no-install-recommends",
            "orthanc",
            "orthanc-dicomweb",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?
        .success();
    ensure!(
        ok && plugin.exists(),
        "cannot install orthanc and orthanc-dicomweb"
    );
    Ok(())
}

fn start_orthanc(dir: &Path) -> anyhow::Result<Server> {
    let dicom = free_port();
    let http = free_port();
    let storage = dir.join("orthanc-storage");
    let index = dir.join("orthanc-index");
    std::fs::create_dir_all(&storage)?;
    std::fs::create_dir_all(&index)?;
    let config = format!(
        r#"{{
  "Name": "bench", "StorageDirectory": "{}", "IndexDirectory": "{}",
  "DicomAet": "ORTHANC", "DicomPort": {dicom}, "HttpPort": {http},
  "RemoteAccessAllowed": false, "AuthenticationEnabled": false,
  "DicomAlwaysAllowEcho": true, "DicomAlwaysAllowStore": true,
  "DicomAlwaysAllowFind": true, "DicomAlwaysAllowGet": true, "DicomAlwaysAllowMove": true,
  "DicomCheckCalledAet": false, "StorageCompression": false,
  "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
  "DicomWeb": {{"Enable": true, "Root": "/dicom-web/"}},
  "HttpServerEnabled": true
}}"#,
        storage.display(),
        index.display()
    );
    let config_path = dir.join("orthanc.json");
    std::fs::write(&config_path, config)?;
    let mut child = Command::new("/usr/sbin/Orthanc")
        .env("TCP_NODELAY", "1")
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start Orthanc")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", http)).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("Orthanc exited before listening: {status}");
        }
        ensure!(
            Instant::now() < deadline,
            "Orthanc did not listen on {http}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Server {
        name: "Orthanc".into(),
        child,
        http,
    })
}

/// `"ID" : "..."` of an Orthanc answer to `POST /instances`.
fn orthanc_id(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let at = text.find("\"ID\"")?;
    let rest = &text[at + 4..];
    let open = rest.find('"')?;
    let rest = &rest[open + 1..];
    Some(rest[..rest.find('"')?].to_owned())
}

// ---------------------------------------------------------------------------
// The requests

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Req {
    QidoName,
    QidoDateModality,
    QidoAccession,
    QidoSeries,
    Metadata500,
    Thumbnail,
    RenderCt,
    RenderCr,
}

impl Req {
    const ALL: [Req; 8] = [
        Req::QidoName,
        Req::QidoDateModality,
        Req::QidoAccession,
        Req::QidoSeries,
        Req::Metadata500,
        Req::Thumbnail,
        Req::RenderCt,
        Req::RenderCr,
    ];

    fn label(self) -> &'static str {
        match self {
            Req::QidoName => "QIDO studies PatientName=<3 letters>*",
            Req::QidoDateModality => "QIDO studies StudyDate=<quarter>&ModalitiesInStudy=<mod>",
            Req::QidoAccession => "QIDO studies AccessionNumber=<acc>",
            Req::QidoSeries => "QIDO /studies/{uid}/series",
            Req::Metadata500 => "series /metadata, 500 instances",
            Req::Thumbnail => "cached series /thumbnail",
            Req::RenderCt => "first /rendered 512x512 CT (JPEG)",
            Req::RenderCr => "first /rendered 2048x2500 CR/DX (JPEG)",
        }
    }

    /// Target p99 in ms and what it is measured on.
    fn target_ms(self) -> f64 {
        match self {
            Req::QidoName | Req::QidoDateModality | Req::QidoAccession | Req::QidoSeries => 20.0,
            Req::Metadata500 => 50.0,
            Req::Thumbnail => 3.0,
            Req::RenderCt => 40.0,
            Req::RenderCr => 250.0,
        }
    }

    fn is_study_qido(self) -> bool {
        matches!(
            self,
            Req::QidoName | Req::QidoDateModality | Req::QidoAccession
        )
    }
}

/// The timings of one server, per request kind.
type Timings = BTreeMap<Req, Timing>;

#[derive(Debug, Clone, Default)]
struct Timing {
    samples: Vec<f64>,
    errors: usize,
    first_error: Option<String>,
    matches: usize,
    bytes: usize,
    note: Option<String>,
}

impl Timing {
    fn pct(&self, p: f64) -> Option<f64> {
        if self.samples.is_empty() {
            return None;
        }
        let mut v = self.samples.clone();
        v.sort_by(f64::total_cmp);
        let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
        Some(v[rank - 1])
    }
    fn mean_kb(&self) -> String {
        if self.samples.is_empty() {
            return "-".into();
        }
        format!("{:.1}", self.bytes as f64 / 1e3 / self.samples.len() as f64)
    }
    fn mean_matches(&self) -> f64 {
        self.matches as f64 / self.samples.len().max(1) as f64
    }
}

fn count(body: &[u8], needle: &[u8]) -> usize {
    body.windows(needle.len()).filter(|w| *w == needle).count()
}

/// Quarters (date ranges) of 2015..2024.
fn quarter(rng: &mut Rng) -> String {
    let y = 2015 + rng.below(10);
    let (a, b) = [
        ("0101", "0331"),
        ("0401", "0630"),
        ("0701", "0930"),
        ("1001", "1231"),
    ][rng.below(4)];
    format!("{y}{a}-{y}{b}")
}

enum Flavor {
    Pacs,
    Orthanc(HashMap<String, String>),
}

/// Run every request kind against one server.
fn run_suite(
    server: &Server,
    token: Option<&str>,
    flavor: &Flavor,
    data: &DataInfo,
    args: &Args,
) -> anyhow::Result<BTreeMap<Req, Timing>> {
    let mut http = Http::new(server.http, token);
    let mut results = BTreeMap::new();
    let studies: Vec<(&String, &StudyInfo)> = data.studies.iter().collect();
    let named: Vec<&StudyInfo> = studies
        .iter()
        .map(|(_, s)| *s)
        .filter(|s| s.name.is_ascii() && s.name.len() >= 3 && !s.name.starts_with("Unknown"))
        .collect();
    let modalities = ["CT", "MR", "CR", "DX", "US"];
    let mut rng = Rng(args.seed);
    let n = args.requests;
    let orthanc_ids = match flavor {
        Flavor::Orthanc(ids) => Some(ids),
        Flavor::Pacs => None,
    };

    // Warm the connection and the server's hot paths a little.
    for _ in 0..10 {
        let _ = http.request(
            "GET",
            "/dicom-web/studies?limit=1",
            Some("application/dicom+json"),
            b"",
        )?;
    }

    let time = |http: &mut Http, t: &mut Timing, url: &str, accept: &str| -> anyhow::Result<()> {
        let started = Instant::now();
        let r = http.request("GET", url, Some(accept), b"")?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        if r.status == 200 || r.status == 204 {
            t.samples.push(ms);
            t.bytes += r.body.len();
            t.matches += count(&r.body, b"\"0020000D\"");
        } else {
            t.errors += 1;
            if t.first_error.is_none() {
                t.first_error = Some(format!(
                    "{} {url}: {}",
                    r.status,
                    String::from_utf8_lossy(&r.body[..r.body.len().min(200)])
                ));
            }
        }
        Ok(())
    };
    let json = "application/dicom+json";

    for req in Req::ALL {
        eprintln!("  {} ...", req.label());
        let mut t = Timing::default();
        match req {
            Req::QidoName => {
                for _ in 0..n {
                    let s = named[rng.below(named.len())];
                    let url = format!("/dicom-web/studies?PatientName={}*", &s.name[..3]);
                    time(&mut http, &mut t, &url, json)?;
                }
            }
            Req::QidoDateModality => {
                for _ in 0..n {
                    let url = format!(
                        "/dicom-web/studies?StudyDate={}&ModalitiesInStudy={}",
                        quarter(&mut rng),
                        modalities[rng.below(modalities.len())]
                    );
                    time(&mut http, &mut t, &url, json)?;
                }
            }
            Req::QidoAccession => {
                for _ in 0..n {
                    let s = studies[rng.below(studies.len())].1;
                    let url = format!("/dicom-web/studies?AccessionNumber={}", s.accession);
                    time(&mut http, &mut t, &url, json)?;
                }
            }
            Req::QidoSeries => {
                for _ in 0..n {
                    let uid = studies[rng.below(studies.len())].0;
                    let url = format!("/dicom-web/studies/{uid}/series");
                    time(&mut http, &mut t, &url, json)?;
                }
                // Series answers name the study once per series.
                t.matches = 0;
            }
            Req::Metadata500 => {
                let (st, se) = data.series500.as_ref().context("no 500-instance series")?;
                let url = format!("/dicom-web/studies/{st}/series/{se}/metadata");
                for _ in 0..n {
                    time(&mut http, &mut t, &url, json)?;
                }
                t.matches = 0;
            }
            Req::Thumbnail => {
                // The extras' series and some bulk image series, each
                // requested once untimed first.
                let mut series: Vec<(String, String, String)> = Vec::new();
                let mut push = |st: &str, se: &str, info: &SeriesInfo| {
                    let mid = info.instances[info.instances.len() / 2].clone();
                    series.push((st.to_owned(), se.to_owned(), mid));
                };
                for (st, s) in &studies {
                    for (se, info) in &s.series {
                        let is_extra = data.ct.iter().chain(&data.cr).any(|(_, x, _)| x == se)
                            || data.series500.as_ref().is_some_and(|(_, x)| x == se);
                        if is_extra {
                            push(st, se, info);
                        }
                    }
                }
                for _ in 0..16 {
                    let (st, s) = studies[rng.below(studies.len())];
                    if let Some((se, info)) = s.series.iter().next() {
                        push(st, se, info);
                    }
                }
                let url_of = |(st, se, mid): &(String, String, String), fallback: bool| match (
                    orthanc_ids,
                    fallback,
                ) {
                    (Some(ids), true) => format!(
                        "/instances/{}/preview",
                        ids.get(mid).map_or("?", |s| s.as_str())
                    ),
                    _ => format!("/dicom-web/studies/{st}/series/{se}/thumbnail"),
                };
                let mut fallback = false;
                if orthanc_ids.is_some() {
                    let r =
                        http.request("GET", &url_of(&series[0], false), Some("image/jpeg"), b"")?;
                    if r.status != 200 {
                        fallback = true;
                        t.note = Some(format!(
                            "Orthanc's DICOMweb plugin answers {} to /thumbnail: its /instances/{{id}}/preview (PNG, rendered each time) instead",
                            r.status
                        ));
                    }
                }
                let accept = if fallback { "image/png" } else { "image/jpeg" };
                // Keep only series that have a thumbnail (reports have none).
                let mut ok = Vec::new();
                for s in &series {
                    let r = http.request("GET", &url_of(s, fallback), Some(accept), b"")?;
                    if r.status == 200 {
                        ok.push(s.clone());
                    }
                }
                ensure!(!ok.is_empty(), "no series thumbnail could be made");
                for i in 0..n {
                    time(
                        &mut http,
                        &mut t,
                        &url_of(&ok[i % ok.len()], fallback),
                        accept,
                    )?;
                }
                t.matches = 0;
            }
            Req::RenderCt | Req::RenderCr => {
                let (list, count) = if req == Req::RenderCt {
                    (&data.ct, n)
                } else {
                    (&data.cr, args.cr_requests)
                };
                ensure!(!list.is_empty(), "no images to render");
                let dicomweb = |(st, se, i): &(String, String, String), q: usize| {
                    format!(
                        "/dicom-web/studies/{st}/series/{se}/instances/{i}/rendered?quality={q}"
                    )
                };
                let mut fallback = false;
                if let Some(ids) = orthanc_ids {
                    // Probe with a quality the timed loop never uses.
                    let r = http.request("GET", &dicomweb(&list[0], 5), Some("image/jpeg"), b"")?;
                    if r.status != 200 {
                        fallback = true;
                        t.note = Some(format!(
                            "Orthanc's DICOMweb plugin answers {} to /rendered: its /instances/{{id}}/preview instead",
                            r.status
                        ));
                        ensure!(ids.contains_key(&list[0].2), "no Orthanc id");
                    }
                }
                for k in 0..count {
                    // Each (instance, quality) pair once: never a cache hit.
                    let image = &list[k % list.len()];
                    let quality = 95 - k / list.len();
                    let url = match (orthanc_ids, fallback) {
                        (Some(ids), true) => format!("/instances/{}/preview", ids[&image.2]),
                        _ => dicomweb(image, quality.max(1)),
                    };
                    time(&mut http, &mut t, &url, "image/jpeg")?;
                }
                t.matches = 0;
            }
        }
        if let Some(e) = &t.first_error {
            eprintln!("    {} error(s), first: {e}", t.errors);
        }
        results.insert(req, t);
    }
    Ok(results)
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| {
        if v < 10.0 {
            format!("{v:.2}")
        } else {
            format!("{v:.1}")
        }
    })
}

// ---------------------------------------------------------------------------

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pacs = pacs_binary(args.pacs.clone())?;
    std::fs::create_dir_all(&args.work)?;
    // Absolute: Orthanc resolves relative paths against its config file.
    let work = args.work.canonicalize()?;
    let rt = tokio::runtime::Runtime::new()?;
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let mut notes: Vec<String> = Vec::new();

    // --- 1. The large archive -------------------------------------------
    let mut large: Option<(DataInfo, BTreeMap<Req, Timing>)> = None;
    if !args.no_large {
        let dir = work.join("large");
        let data_dir = dir.join("pacs-data");
        let marker = dir.join("built.txt");
        let info_file = dir.join("data.tsv");
        let key = format!(
            "studies={} per_study={} ct={} seed={}",
            args.studies, args.instances_per_study, args.ct_slices, args.seed
        );
        let reusable =
            args.reuse && std::fs::read_to_string(&marker).is_ok_and(|k| k.trim() == key);
        let info = if reusable {
            eprintln!("reusing the archive in {}", data_dir.display());
            DataInfo::load(&info_file)?
        } else {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            let mut specs = vec![(
                bulk_spec(args.studies, args.instances_per_study, args.seed),
                Role::Bulk,
            )];
            specs.extend(extra_specs(args.seed, args.ct_slices));
            let total: usize = specs.iter().map(|(s, _)| s.plan_len()).sum();
            eprintln!(
                "building the large archive: {total} instances ({} studies + extras) through Archive::ingest_part10 ...",
                args.studies
            );
            let started = Instant::now();
            let info = rt.block_on(build_archive(&data_dir, &specs, args.max_in_flight, None))?;
            let secs = started.elapsed().as_secs_f64();
            let reindex = pacs_reindex(&pacs, &data_dir)?;
            let line = format!(
                "large archive: {} instances, {} studies, {:.0} MB generated; built (generate + ingest) in {secs:.1} s = {:.0} instances/s on {cores} cores; `pacs reindex` {reindex:.1} s",
                info.instances,
                info.studies.len(),
                info.bytes as f64 / 1e6,
                info.instances as f64 / secs,
            );
            eprintln!("{line}");
            std::fs::write(dir.join("build.txt"), &line)?;
            info.save(&info_file)?;
            std::fs::write(&marker, &key)?;
            info
        };
        if let Ok(line) = std::fs::read_to_string(dir.join("build.txt")) {
            notes.push(line);
        }
        let token = pacs_token(&pacs, &data_dir)?;
        let started = Instant::now();
        let server = start_pacs(&pacs, &data_dir)?;
        let up = started.elapsed().as_secs_f64();
        let busy = wait_idle(server.child.id(), "pacs serve", Duration::from_secs(3600));
        notes.push(format!(
            "large archive: `pacs serve` listening after {up:.1} s, then busy for {:.0} s before idle (thumbnail worker)",
            busy.as_secs_f64()
        ));
        eprintln!(
            "timing requests against {} (large archive) ...",
            server.name
        );
        let load_before = loadavg();
        let timings = run_suite(&server, Some(&token), &Flavor::Pacs, &info, &args)?;
        notes.push(format!(
            "machine load average (1 min) before / after timing the large archive: {load_before} / {}",
            loadavg()
        ));
        drop(server);
        large = Some((info, timings));
    }

    // --- 2. Side by side: pacs-lite and Orthanc on a small set -----------
    let mut side: Option<(DataInfo, Timings, Option<Timings>)> = None;
    if args.small_studies > 0 {
        let dir = work.join("small");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let data_dir = dir.join("pacs-data");
        let mut specs = vec![(
            bulk_spec(args.small_studies, args.instances_per_study, args.seed + 4),
            Role::Bulk,
        )];
        specs.extend(extra_specs(args.seed, args.ct_slices));
        let mut files = Vec::new();
        eprintln!("building the side-by-side set ...");
        let info = rt.block_on(build_archive(
            &data_dir,
            &specs,
            args.max_in_flight,
            Some(&mut files),
        ))?;
        pacs_reindex(&pacs, &data_dir)?;
        let token = pacs_token(&pacs, &data_dir)?;
        let server = start_pacs(&pacs, &data_dir)?;
        wait_idle(server.child.id(), "pacs serve", Duration::from_secs(600));
        eprintln!("timing requests against pacs-lite (side-by-side set) ...");
        let load_before = loadavg();
        let ours = run_suite(&server, Some(&token), &Flavor::Pacs, &info, &args)?;
        notes.push(format!(
            "machine load average (1 min) before / after timing pacs-lite on the side-by-side set: {load_before} / {}",
            loadavg()
        ));
        drop(server);

        let mut theirs = None;
        if !args.no_orthanc {
            ensure_orthanc()?;
            let odir = dir.join("orthanc");
            std::fs::create_dir_all(&odir)?;
            let server = start_orthanc(&odir)?;
            let mut http = Http::new(server.http, None);
            eprintln!(
                "loading {} files into Orthanc (POST /instances) ...",
                files.len()
            );
            let started = Instant::now();
            let mut sops = Vec::new();
            for s in info.studies.values() {
                for se in s.series.values() {
                    sops.extend(se.instances.iter().cloned());
                }
            }
            for f in &files {
                let r = http.request("POST", "/instances", None, f)?;
                ensure!(
                    r.status == 200,
                    "Orthanc refused an instance: {} {}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                );
            }
            // Map SOP Instance UIDs to Orthanc ids.
            let mut by_sop = HashMap::new();
            for sop in sops {
                let r = http.request("POST", "/tools/lookup", None, sop.as_bytes())?;
                if let Some(id) = orthanc_id(&r.body) {
                    by_sop.insert(sop, id);
                }
            }
            notes.push(format!(
                "Orthanc: {} files loaded with POST /instances in {:.1} s",
                files.len(),
                started.elapsed().as_secs_f64()
            ));
            wait_idle(server.child.id(), "Orthanc", Duration::from_secs(600));
            eprintln!("timing requests against Orthanc ...");
            theirs = Some(run_suite(
                &server,
                None,
                &Flavor::Orthanc(by_sop),
                &info,
                &args,
            )?);
            drop(server);
        }
        side = Some((info, ours, theirs));
    }

    // --- Tables ------------------------------------------------------------
    println!();
    for n in &notes {
        println!("- {n}");
    }
    if let Some((info, t)) = &large {
        println!();
        println!(
            "pacs-lite, large archive: {} studies, {} instances; {} requests per row ({} for CR), one keep-alive connection, loopback, {cores} cores",
            info.studies.len(),
            info.instances,
            args.requests,
            args.cr_requests
        );
        println!(
            "| request | p50 ms | p99 ms | target p99 | met | mean matches | mean KB | errors |"
        );
        println!("|---|---:|---:|---:|---|---:|---:|---:|");
        for (req, timing) in t {
            let p99 = timing.pct(0.99);
            let met = match p99 {
                Some(v) if timing.errors == 0 && v < req.target_ms() => "met",
                Some(_) => "MISSED",
                None => "no answer",
            };
            let scale = if req.is_study_qido() && info.studies.len() < 100_000 {
                " (target is at 100 000 studies)"
            } else {
                ""
            };
            println!(
                "| {} | {} | {} | < {} ms{scale} | {met} | {} | {} | {} |",
                req.label(),
                ms(timing.pct(0.5)),
                ms(p99),
                req.target_ms(),
                if req.is_study_qido() {
                    format!("{:.1}", timing.mean_matches())
                } else {
                    "-".into()
                },
                timing.mean_kb(),
                timing.errors
            );
        }
    }
    if let Some((info, ours, theirs)) = &side {
        println!();
        println!(
            "side by side, same files in both: {} studies, {} instances ({} small studies + a 500-instance series + {} CT 512x512 + 4 CR/DX 2048x2500)",
            info.studies.len(),
            info.instances,
            args.small_studies,
            args.ct_slices
        );
        println!(
            "| request | pacs p50 ms | pacs p99 ms | Orthanc p50 ms | Orthanc p99 ms | Orthanc p50 / pacs p50 | mean KB pacs/Orthanc | errors pacs/Orthanc |"
        );
        println!("|---|---:|---:|---:|---:|---:|---|---|");
        for (req, t) in ours {
            let o = theirs.as_ref().and_then(|m| m.get(req));
            let ratio = match (t.pct(0.5), o.and_then(|o| o.pct(0.5))) {
                (Some(a), Some(b)) => format!("{:.1}x", b / a),
                _ => "-".into(),
            };
            println!(
                "| {} | {} | {} | {} | {} | {ratio} | {}/{} | {}/{} |",
                req.label(),
                ms(t.pct(0.5)),
                ms(t.pct(0.99)),
                ms(o.and_then(|o| o.pct(0.5))),
                ms(o.and_then(|o| o.pct(0.99))),
                t.mean_kb(),
                o.map_or("-".into(), Timing::mean_kb),
                t.errors,
                o.map_or("-".into(), |o| o.errors.to_string())
            );
        }
        if let Some(theirs) = theirs {
            for t in theirs.values() {
                if let Some(note) = &t.note {
                    println!("- {note}");
                }
            }
            for (req, t) in theirs {
                if let Some(e) = &t.first_error {
                    println!(
                        "- Orthanc, {}: {} error(s), first: {e}",
                        req.label(),
                        t.errors
                    );
                }
            }
        }
        for (req, t) in ours {
            if let Some(e) = &t.first_error {
                println!(
                    "- pacs-lite, {}: {} error(s), first: {e}",
                    req.label(),
                    t.errors
                );
            }
        }
    }
    if let Some((_, t)) = &large {
        for (req, t) in t {
            if let Some(e) = &t.first_error {
                println!(
                    "- pacs-lite large, {}: {} error(s), first: {e}",
                    req.label(),
                    t.errors
                );
            }
        }
    }
    println!();
    println!(
        "Reference (2-core machine, Orthanc with 19 studies): QIDO study search 2.6 ms; listing 100 instances of a series 56 ms; preview 512x512 CT 31 ms; 2048x2500 CR 636 ms."
    );
    Ok(())
}
