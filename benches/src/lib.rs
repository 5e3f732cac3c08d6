//! Helpers the benchmark programs share: ports, the `pacs` binary, CPU
//! time from `/proc`, percentiles.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, ensure};

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// The `pacs` binary to start: `explicit`, or the one built beside this
/// benchmark program.
pub fn pacs_binary(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let pacs = match explicit {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("no parent folder")?
            .join("pacs"),
    };
    ensure!(
        pacs.exists(),
        "{} missing: cargo build --release -p pacs first",
        pacs.display()
    );
    Ok(pacs)
}

/// Whose CPU time [`cpu_seconds`] reads.
#[derive(Debug, Clone, Copy)]
pub enum Cpu {
    /// This process (all threads).
    Own,
    /// Another process.
    Of(u32),
    /// Another process and its children it has reaped (a forking server).
    WithChildren(u32),
}

/// User + system CPU seconds so far, from `/proc/<pid>/stat` (0 when it
/// cannot be read).
pub fn cpu_seconds(who: Cpu) -> f64 {
    let (pid, fields) = match who {
        Cpu::Own => ("self".to_owned(), 11..=12),
        Cpu::Of(pid) => (pid.to_string(), 11..=12),
        Cpu::WithChildren(pid) => (pid.to_string(), 11..=14),
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the parenthesised command name; utime, stime, cutime
    // and cstime are fields 14-17 of stat(5), 11-14 here.
    let after_name = stat.rsplit(')').next().unwrap_or("");
    let values: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields
        .filter_map(|i| values.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    // USER_HZ is 100 on Linux.
    ticks / 100.0
}

/// The `p` quantile (0..=1) of sorted durations, milliseconds (NaN when
/// empty).
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}
