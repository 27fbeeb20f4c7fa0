//! Helpers shared by the benchmark binaries: machine description, latency percentiles, integer rates, markdown output,
//! and the `plugin-host` re-exec entry point (a daemon started in-process spawns `current_exe() plugin-host ...`).
//!
//! Rates and durations are computed in integers: the workspace denies float arithmetic and none is needed here.

// Each bench uses a different subset of these helpers.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

/// The number after `name` on the command line (`--lines 1000`), or `default`.
pub fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Run a benchmark on a multi-threaded tokio runtime, after printing its markdown heading and the machine it runs on.
pub fn run_bench(
    name: &str,
    bench: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    println!("## {name}\n");
    println!("machine: {}\n", machine());
    runtime.block_on(bench)
}

/// When this process was started as a plugin child (`BENCH plugin-host --library ...`), serve it and return the exit code.
pub fn plugin_host_child() -> Option<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("plugin-host") {
        return Some(settled::plugin_host::child_main(args));
    }
    None
}

/// The cargo profile directory (`target/release`) this bench binary was built into (`target/release/deps/NAME-HASH`).
pub fn profile_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the bench executable")?;
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .context("bench executable has no target/<profile>/deps parent")
}

/// A file built into the profile dir, e.g. `libsettled_plugin_webform.so`; the error says how to build it.
pub fn built_artifact(name: &str, build_hint: &str) -> anyhow::Result<PathBuf> {
    let path = profile_dir()?.join(name);
    if !path.is_file() {
        anyhow::bail!(
            "{} is missing: build it first with `{build_hint}` (same CARGO_TARGET_DIR)",
            path.display()
        );
    }
    Ok(path)
}

/// One line describing the machine and its load right now.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("nproc {nproc}, CPU `{cpu}`, load average {}", loadavg())
}

/// The 1/5/15-minute load averages from /proc/loadavg.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// A field of /proc/self/status in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(field: &str) -> Option<u64> {
    proc_status_kib("self", field)
}

/// The same for another process (`pid`), e.g. a daemon the bench started.
pub fn proc_status_kib(pid: impl std::fmt::Display, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Events per second, rounded down.
pub fn per_second(count: u64, elapsed: Duration) -> u64 {
    let nanos = elapsed.as_nanos().max(1);
    u64::try_from(u128::from(count) * 1_000_000_000 / nanos).unwrap_or(u64::MAX)
}

/// The nearest-rank percentile `p` (0-100) of sorted samples; zero for none.
pub fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (sorted.len() * p).div_ceil(100).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Median, 99th percentile and mean of samples (sorted in place).
pub struct Summary {
    /// How many samples.
    pub n: usize,
    /// 50th percentile.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Arithmetic mean.
    pub mean: Duration,
}

/// Summarise latency samples.
pub fn summarise(samples: &mut [Duration]) -> Summary {
    samples.sort_unstable();
    let total: Duration = samples.iter().sum();
    let n = samples.len();
    let mean = match u32::try_from(n) {
        Ok(0) | Err(_) => Duration::ZERO,
        Ok(k) => total / k,
    };
    Summary {
        n,
        p50: percentile(samples, 50),
        p99: percentile(samples, 99),
        mean,
    }
}

/// A duration in microseconds with two decimals (`12.34 µs`), or milliseconds with two decimals from 1 ms on.
pub fn fmt_dur(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos >= 1_000_000 {
        let hundredths = nanos / 10_000;
        format!("{}.{:02} ms", hundredths / 100, hundredths % 100)
    } else {
        let hundredths = nanos / 10;
        format!("{}.{:02} µs", hundredths / 100, hundredths % 100)
    }
}

/// A whole number with thin thousands separators (`12,345`).
pub fn fmt_int(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// KiB as MiB with one decimal.
pub fn fmt_mib(kib: u64) -> String {
    let tenths = kib * 10 / 1024;
    format!("{}.{} MiB", tenths / 10, tenths % 10)
}

/// Print a markdown table.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    println!("| {} |", header.join(" | "));
    println!(
        "|{}",
        header.iter().map(|_| "---|").collect::<Vec<_>>().concat()
    );
    for row in rows {
        println!("| {} |", row.join(" | "));
    }
}

/// Disk usage of a directory tree in bytes (apparent size).
pub fn dir_bytes(path: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// What a closed-loop HTTP load run measured (only requests started after the warm-up and finished before the end).
pub struct Load {
    /// Successful requests in the window.
    pub ok: u64,
    /// Failed requests (any status but the expected one, or a transport error) over the whole run.
    pub errors: u64,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
    /// Latencies of the successful requests in the window.
    pub latencies: Vec<Duration>,
    /// Length of the measurement window.
    pub window: Duration,
}

/// `clients` tasks share one keep-alive client and each sends requests back to back (`request(task, seq)`) for
/// `warmup + measure`; a request counts when it started after the warm-up, finished inside the window and got `expect`.
pub async fn drive<F>(
    clients: usize,
    warmup: Duration,
    measure: Duration,
    expect: reqwest::StatusCode,
    request: F,
) -> Load
where
    F: Fn(&reqwest::Client, usize, u64) -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap_or_default();
    let request = std::sync::Arc::new(request);
    let start = tokio::time::Instant::now();
    let from = start + warmup;
    let until = from + measure;
    let mut tasks = Vec::with_capacity(clients);
    for task in 0..clients {
        let http = http.clone();
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let (mut errors, mut first_error) = (0u64, None);
            let mut seq = 0u64;
            loop {
                let sent = tokio::time::Instant::now();
                if sent >= until {
                    break;
                }
                let outcome = request(&http, task, seq).send().await;
                seq += 1;
                let done = tokio::time::Instant::now();
                let failure = match outcome {
                    Ok(resp) if resp.status() == expect => {
                        // Read the body so the connection goes back to the pool.
                        let _ = resp.bytes().await;
                        None
                    }
                    Ok(resp) => {
                        let status = resp.status();
                        let body = resp.text().await.unwrap_or_default();
                        Some(format!("status {status}: {body}"))
                    }
                    Err(e) => Some(format!("transport: {e}")),
                };
                match failure {
                    None if sent >= from && done <= until => latencies.push(done - sent),
                    None => {}
                    Some(why) => {
                        errors += 1;
                        first_error.get_or_insert(why);
                    }
                }
            }
            (latencies, errors, first_error)
        }));
    }
    let mut load = Load {
        ok: 0,
        errors: 0,
        first_error: None,
        latencies: Vec::new(),
        window: measure,
    };
    for task in tasks {
        match task.await {
            Ok((latencies, errors, first_error)) => {
                load.ok += latencies.len() as u64;
                load.latencies.extend(latencies);
                load.errors += errors;
                if load.first_error.is_none() {
                    load.first_error = first_error;
                }
            }
            Err(e) => {
                load.errors += 1;
                load.first_error.get_or_insert(format!("client task: {e}"));
            }
        }
    }
    load
}

/// Prefix of the temporary directories benches make: `settled-bench-<pid>-...` in the system's temp dir.
const TEMP_PREFIX: &str = "settled-bench-";

/// A temporary directory for a bench, named after this process. Removed when dropped, and, since a bench stopped by
/// a signal never drops it (the reconcile_import stores take gigabytes), by the next bench that starts: it first
/// removes every bench directory whose process is gone.
pub fn bench_tempdir() -> anyhow::Result<tempfile::TempDir> {
    let temp = std::env::temp_dir();
    if let Ok(entries) = std::fs::read_dir(&temp) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(TEMP_PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                eprintln!(
                    "removing {}, left by a bench that was stopped",
                    entry.path().display()
                );
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    tempfile::Builder::new()
        .prefix(&format!("{TEMP_PREFIX}{}-", std::process::id()))
        .tempdir()
        .context("creating the bench temp dir")
}
