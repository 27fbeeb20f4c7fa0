//! Lead capture over HTTP with durable acknowledgement: the real daemon in-process, 64 keep-alive clients posting
//! distinct leads to `POST /v1/leads`, against the raw sled insert+flush ceiling of the same disk measured in the same run.
//!
//! Run: `CARGO_TARGET_DIR=/work/target-bench cargo bench -p settled --bench lead_capture`

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use common::{fmt_dur, fmt_int, per_second, summarise, table};
use serde_json::json;
use settled::app::Daemon;
use settled::config::Config;

const CLIENTS: usize = 64;
const WARMUP: Duration = Duration::from_secs(2);
const MEASURE: Duration = Duration::from_secs(10);
const SLED_RUN: Duration = Duration::from_secs(5);

fn main() -> anyhow::Result<()> {
    common::run_bench("lead_capture", run())
}

async fn run() -> anyhow::Result<()> {
    let root = common::bench_tempdir()?;
    let plugins = root.path().join("no-plugins");
    std::fs::create_dir_all(&plugins).context("creating the empty plugin folder")?;
    let mut config = Config {
        data_dir: Some(root.path().join("data")),
        listen: "127.0.0.1:0".parse().context("listen address")?,
        ..Config::default()
    };
    config.plugins.dir = Some(plugins);
    config.plugins.watch = false;

    let daemon = Daemon::start(config).await.context("starting the daemon")?;
    let addr = daemon.local_addr().context("daemon address")?;
    let token = daemon.state.token.as_str().to_string();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(daemon.serve(async move {
        let _ = stop_rx.await;
    }));

    eprintln!("daemon listening on {addr}; driving {CLIENTS} clients");
    let url = format!("http://{addr}/v1/leads");
    let load = common::drive(
        CLIENTS,
        WARMUP,
        MEASURE,
        reqwest::StatusCode::CREATED,
        move |http, task, seq| {
            http.post(&url).bearer_auth(&token).json(&json!({
                "name": format!("Bench Lead {task}-{seq}"),
                "email": format!("lead-{task}-{seq}@bench-{task}.example"),
                "company": format!("Bench Company {task}"),
                "phone": "+44 20 7946 0000",
                "source": "web",
                "message": "We would like a quote for twenty licences and a support contract.",
            }))
        },
    )
    .await;
    eprintln!("load done; stopping the daemon");
    let _ = stop_tx.send(());
    server
        .await
        .context("daemon task")?
        .context("daemon serve")?;

    let mut latencies = load.latencies;
    let s = summarise(&mut latencies);
    eprintln!("daemon stopped; measuring sled");
    let naive = sled_naive(root.path()).await?;
    let group = sled_group(root.path())?;

    println!(
        "daemon: {CLIENTS} clients, {} s warm-up, {} s measured; sled: {} s each\n",
        WARMUP.as_secs(),
        MEASURE.as_secs(),
        SLED_RUN.as_secs()
    );
    table(
        &["what", "records/s", "p50", "p99", "n", "errors"],
        &[
            vec![
                "daemon `POST /v1/leads` (durable ack)".into(),
                fmt_int(per_second(load.ok, load.window)),
                fmt_dur(s.p50),
                fmt_dur(s.p99),
                fmt_int(s.n as u64),
                fmt_int(load.errors),
            ],
            naive.row("sled insert + flush per record, 64 tasks"),
            group.row("sled 64 inserts + 1 flush (group commit; latency per batch)"),
        ],
    );
    if let Some(why) = load.first_error {
        println!("\nfirst error: {why}");
    }
    println!("\nload after the run: {}", common::loadavg());
    Ok(())
}

/// One sled measurement.
struct SledRun {
    records: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl SledRun {
    fn row(mut self, what: &str) -> Vec<String> {
        let s = summarise(&mut self.latencies);
        vec![
            what.into(),
            fmt_int(per_second(self.records, self.elapsed)),
            fmt_dur(s.p50),
            fmt_dur(s.p99),
            fmt_int(self.records),
            "0".into(),
        ]
    }
}

/// A value the size of a stored lead (~500 bytes of JSON).
fn lead_value(n: u64) -> Vec<u8> {
    json!({
        "id": format!("lead_{n:08}"),
        "name": format!("Bench Lead {n}"),
        "email": format!("lead-{n}@bench.example"),
        "phone": "+44 20 7946 0000",
        "company": "Bench Company",
        "source": "web",
        "status": "new",
        "score": 40,
        "message": "We would like a quote for twenty licences and a support contract.",
        "created_at": "2026-11-27T09:00:00Z",
        "updated_at": "2026-11-27T09:00:00Z",
    })
    .to_string()
    .into_bytes()
}

fn open_sled(path: &std::path::Path) -> anyhow::Result<sled::Db> {
    // The daemon's own settings (store/mod.rs), so the ceiling is for the same configuration.
    sled::Config::new()
        .path(path)
        .cache_capacity(64 * 1024 * 1024)
        .mode(sled::Mode::HighThroughput)
        .open()
        .with_context(|| format!("opening sled at {}", path.display()))
}

/// 64 tasks, each inserting one record and flushing before the next: what a store without group commit does.
async fn sled_naive(root: &std::path::Path) -> anyhow::Result<SledRun> {
    let db = open_sled(&root.join("sled-naive"))?;
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let (db, next, stop) = (db.clone(), next.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                db.insert(format!("e/lead/lead_{n:08}"), lead_value(n))?;
                // Blocking flush on the blocking pool, as the daemon's group commit does: sled 0.34's `flush_async`
                // hung here with 64 concurrent callers (all its IO threads parked in `make_stable`).
                let flusher = db.clone();
                tokio::task::spawn_blocking(move || flusher.flush())
                    .await
                    .map_err(|e| sled::Error::Io(std::io::Error::other(e.to_string())))??;
                latencies.push(t.elapsed());
            }
            Ok::<_, sled::Error>(latencies)
        }));
    }
    tokio::time::sleep(SLED_RUN).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.context("sled task")??);
    }
    let elapsed = started.elapsed();
    Ok(SledRun {
        records: latencies.len() as u64,
        elapsed,
        latencies,
    })
}

/// One writer: 64 records in one batch, then one flush; latency is per batch.
fn sled_group(root: &std::path::Path) -> anyhow::Result<SledRun> {
    let db = open_sled(&root.join("sled-group"))?;
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut n = 0u64;
    while started.elapsed() < SLED_RUN {
        let t = Instant::now();
        let mut batch = sled::Batch::default();
        for _ in 0..CLIENTS {
            batch.insert(format!("e/lead/lead_{n:08}").as_bytes(), lead_value(n));
            n += 1;
        }
        db.apply_batch(batch)?;
        db.flush()?;
        latencies.push(t.elapsed());
    }
    Ok(SledRun {
        records: n,
        elapsed: started.elapsed(),
        latencies,
    })
}
