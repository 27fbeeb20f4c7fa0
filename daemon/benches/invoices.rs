//! The engine alone: issue 100,000 invoices (create + issue, each a durable write) from 64 concurrent tasks, then fill
//! the store to 1,000,000 documents and measure a cold start (`Store::open` + `Engine::new`) and its resident memory in
//! a fresh child process.
//!
//! Run: `CARGO_TARGET_DIR=/work/target-bench cargo bench -p settled --bench invoices`
//!
//! The bench uses jemalloc, the daemon's allocator, so resident memory is what the daemon would hold.
//! `SETTLED_BENCH_STORE=DIR` keeps the filled store in `DIR` (it is several GiB): a later run that finds a store there
//! skips filling and only measures the cold starts. `SETTLED_BENCH_CACHE_MIB=N` opens the store in the cold-start
//! children with an N MiB sled cache instead of the daemon's default.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use common::{fmt_dur, fmt_int, fmt_mib, per_second, summarise, table};
use serde_json::json;
use settled::config::Config;
use settled::domain::lead::LeadInput;
use settled::engine::{Engine, IssueInput, SystemClock};
use settled::store::{Store, StoreOptions};
use settled_plugin_api::{LeadRecord, Record};

const INVOICES: u64 = 100_000;
const DOCUMENTS: u64 = 1_000_000;
const TASKS: u64 = 64;
const INGEST_BATCH: u64 = 10_000;
const COLD_STARTS: usize = 3;
const CHILD_ARG: &str = "cold-start";

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(CHILD_ARG) {
        let dir = args.get(2).context("cold-start needs the data dir")?;
        return cold_start(Path::new(dir));
    }
    common::run_bench("invoices", run())
}

async fn run() -> anyhow::Result<()> {
    let root = common::bench_tempdir()?;
    let data = match std::env::var_os("SETTLED_BENCH_STORE") {
        Some(dir) => PathBuf::from(dir),
        None => root.path().join("data"),
    };
    if data.join("db").exists() {
        println!(
            "store: reusing {} ({} on disk)\n",
            data.display(),
            fmt_mib(common::dir_bytes(&data) / 1024)
        );
    } else {
        fill(&data).await?;
    }
    let cache =
        std::env::var("SETTLED_BENCH_CACHE_MIB").unwrap_or_else(|_| "64 (the default)".into());
    println!("cold-start children: sled cache {cache} MiB\n");
    let mut rows = Vec::new();
    let mut readies = Vec::new();
    // The last child returns freed memory to the system at once (jemalloc's decay off): the difference to the others
    // is memory sled and the engine freed during start-up that jemalloc still holds (it gives it back after ~10 s).
    for run in 1..=COLD_STARTS + 1 {
        let no_decay = run > COLD_STARTS;
        let cold = spawn_cold_start(&data, no_decay)?;
        if !no_decay {
            readies.push(cold.ready);
        }
        rows.push(vec![
            if no_decay {
                format!("{run} (jemalloc decay off)")
            } else {
                run.to_string()
            },
            fmt_dur(cold.ready),
            fmt_dur(cold.open),
            fmt_mib(cold.rss_before_kib),
            format!(
                "{} ({} anon)",
                fmt_mib(cold.rss_store_kib),
                fmt_mib(cold.anon_store_kib)
            ),
            format!(
                "{} ({} anon)",
                fmt_mib(cold.rss_kib),
                fmt_mib(cold.anon_kib)
            ),
            fmt_mib(cold.hwm_kib),
            fmt_int(cold.open_invoices),
        ]);
    }
    table(
        &[
            "cold start",
            "Store::open + Engine::new",
            "of which Store::open",
            "VmRSS before",
            "VmRSS after Store::open",
            "VmRSS after Engine::new",
            "VmHWM",
            "open invoices loaded",
        ],
        &rows,
    );
    readies.sort_unstable();
    println!(
        "\nmedian ready time {} (OS page cache warm: the files were just written)",
        fmt_dur(readies[readies.len() / 2])
    );
    println!("load after the run: {}", common::loadavg());
    Ok(())
}

/// Issue the invoices and fill the store to `DOCUMENTS` documents, printing what it took.
async fn fill(data: &Path) -> anyhow::Result<()> {
    let store = Store::open(data, &StoreOptions::default()).context("opening the store")?;
    let engine = Engine::new(store, Config::default(), Box::new(SystemClock))
        .context("building the engine")?;

    let order = order(&engine).await?;
    let started = Instant::now();
    let mut latencies = issue_invoices(&engine, &order).await?;
    let issue_time = started.elapsed();
    let issued = summarise(&mut latencies);

    // Everything so far: the invoices plus the lead, account, contact, opportunity, quote and order behind them.
    let have = INVOICES + 6;
    let started = Instant::now();
    let ingested = fill_with_leads(&engine, DOCUMENTS - have).await?;
    let ingest_time = started.elapsed();
    let leads = engine.store().count("lead") as u64;
    let invoices = engine.store().count("invoice") as u64;
    let open_invoices = engine.open_invoice_count();
    engine.store().flush().context("flushing the store")?;
    drop(engine);
    let disk = common::dir_bytes(data);

    println!(
        "issue: {TASKS} concurrent tasks, each invoice = create_invoice + issue_invoice (two durable writes)\n"
    );
    table(
        &["what", "count", "time", "per second", "p50", "p99"],
        &[
            vec![
                "issue invoices (create + issue)".into(),
                fmt_int(issued.n as u64),
                fmt_dur(issue_time),
                fmt_int(per_second(issued.n as u64, issue_time)),
                fmt_dur(issued.p50),
                fmt_dur(issued.p99),
            ],
            vec![
                format!("bulk-ingest leads (batches of {INGEST_BATCH})"),
                fmt_int(ingested),
                fmt_dur(ingest_time),
                fmt_int(per_second(ingested, ingest_time)),
                "-".into(),
                "-".into(),
            ],
        ],
    );
    println!(
        "\nstore: {} leads + {} invoices + 5 others = {} documents, {} open invoices, {} on disk\n",
        fmt_int(leads),
        fmt_int(invoices),
        fmt_int(leads + invoices + 5),
        fmt_int(open_invoices as u64),
        fmt_mib(disk / 1024)
    );

    Ok(())
}

/// Lead -> account/opportunity -> quote (sent, accepted) -> one order line of `INVOICES` units to invoice one at a time.
async fn order(engine: &Engine) -> anyhow::Result<(String, u32)> {
    let (lead, _) = engine
        .capture_lead(
            &LeadInput {
                name: "Bench Buyer".into(),
                email: Some("buyer@bench-buyer.example".into()),
                company: Some("Bench Buyer Ltd".into()),
                source: "web".into(),
                ..LeadInput::default()
            },
            "bench",
        )
        .await?;
    let converted = engine
        .convert_lead(
            &lead.id,
            serde_json::from_value(json!({"opportunity": {"name": "bench deal", "value": "1000000.00", "currency": "EUR", "expected_close": null}}))?,
            "bench",
        )
        .await?;
    let quote = engine
        .create_quote(
            serde_json::from_value(json!({
                "opportunity_id": converted.opportunity_id,
                "currency": "EUR",
                "lines": [{"description": "licence", "quantity": INVOICES.to_string(), "unit_price": "10.00", "tax_rate": "20"}],
            }))?,
            "bench",
        )
        .await?;
    engine
        .quote_action(&quote.id, "send", None, "bench")
        .await?;
    engine
        .quote_action(&quote.id, "accept", None, "bench")
        .await?;
    let order = engine
        .create_order(
            serde_json::from_value(json!({"quote_id": quote.id}))?,
            "bench",
        )
        .await?;
    let line = order
        .lines
        .first()
        .map(|l| l.line_no)
        .context("the bench order has no line")?;
    Ok((order.id, line))
}

/// `TASKS` tasks take invoice numbers from a shared counter until `INVOICES` are issued; returns per-invoice latencies.
async fn issue_invoices(engine: &Engine, order: &(String, u32)) -> anyhow::Result<Vec<Duration>> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (engine, next, order) = (engine.clone(), next.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < INVOICES {
                let t = Instant::now();
                let draft = engine
                    .create_invoice(
                        serde_json::from_value(json!({"order_id": order.0, "lines": [{"line_no": order.1, "quantity": "1"}]}))?,
                        "bench",
                    )
                    .await?;
                engine
                    .issue_invoice(&draft.id, IssueInput::default(), "bench")
                    .await?;
                latencies.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.context("invoice task")??);
    }
    Ok(latencies)
}

/// Ingest `count` distinct leads through the engine's bulk path (one durable wait per batch).
async fn fill_with_leads(engine: &Engine, count: u64) -> anyhow::Result<u64> {
    let mut done = 0;
    while done < count {
        let n = INGEST_BATCH.min(count - done);
        let records = (done..done + n)
            .map(|i| {
                Record::Lead(LeadRecord {
                    name: format!("Imported Lead {i}"),
                    email: Some(format!("lead-{i}@import-{}.example", i % 5000)),
                    company: Some(format!("Import Company {}", i % 5000)),
                    source: "import".into(),
                    external_id: Some(format!("bench-{i}")),
                    message: Some("Met at the trade fair; wants a call back next week.".into()),
                    ..LeadRecord::default()
                })
            })
            .collect();
        let mut run = engine.begin_ingest("bench-import", "bench", None);
        run.add(records)?;
        let summary = run.finish().await?;
        if summary.new != n {
            bail!(
                "ingest batch at {done}: {} of {n} leads were new",
                summary.new
            );
        }
        done += n;
    }
    Ok(done)
}

struct Cold {
    ready: Duration,
    open: Duration,
    rss_before_kib: u64,
    rss_store_kib: u64,
    rss_kib: u64,
    anon_store_kib: u64,
    anon_kib: u64,
    hwm_kib: u64,
    open_invoices: u64,
}

fn spawn_cold_start(data: &Path, no_decay: bool) -> anyhow::Result<Cold> {
    let exe: PathBuf = std::env::current_exe().context("locating the bench executable")?;
    let mut child = std::process::Command::new(exe);
    child.arg(CHILD_ARG).arg(data);
    if no_decay {
        // tikv-jemallocator's jemalloc reads its options from this variable (its symbols carry the `_rjem_` prefix).
        child.env("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0");
    }
    let out = child.output().context("running the cold-start child")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "cold-start child failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let field = |name: &str| -> anyhow::Result<u64> {
        stdout
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("cold-start child output lacks `{name}`: {stdout}"))
    };
    Ok(Cold {
        ready: Duration::from_nanos(field("ready_ns")?),
        open: Duration::from_nanos(field("open_ns")?),
        rss_before_kib: field("rss_before_kib")?,
        rss_store_kib: field("rss_store_kib")?,
        anon_store_kib: field("anon_store_kib")?,
        rss_kib: field("rss_kib")?,
        anon_kib: field("anon_kib")?,
        hwm_kib: field("hwm_kib")?,
        open_invoices: field("open_invoices")?,
    })
}

/// The child: open the store and build the engine as the daemon does, then report time and memory on one line.
fn cold_start(dir: &Path) -> anyhow::Result<()> {
    let rss_before = common::status_kib("VmRSS").unwrap_or(0);
    let mut options = StoreOptions::default();
    if let Some(mib) = std::env::var("SETTLED_BENCH_CACHE_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        options.cache_bytes = mib * 1024 * 1024;
    }
    let t = Instant::now();
    let store = Store::open(dir, &options).context("opening the store")?;
    let opened = t.elapsed();
    let rss_store = common::status_kib("VmRSS").unwrap_or(0);
    let anon_store = common::status_kib("RssAnon").unwrap_or(0);
    let engine = Engine::new(store, Config::default(), Box::new(SystemClock))
        .context("building the engine")?;
    let ready = t.elapsed();
    println!(
        "ready_ns={} open_ns={} rss_before_kib={rss_before} rss_store_kib={rss_store} anon_store_kib={anon_store} rss_kib={} anon_kib={} hwm_kib={} open_invoices={}",
        ready.as_nanos(),
        opened.as_nanos(),
        common::status_kib("VmRSS").unwrap_or(0),
        common::status_kib("RssAnon").unwrap_or(0),
        common::status_kib("VmHWM").unwrap_or(0),
        engine.open_invoice_count()
    );
    Ok(())
}
