//! Issue 4's benchmark: a generated bank CSV of 1,000,000 lines against 200,000 open invoices, imported, reconciled and
//! committed by the real release daemon through `settled import`, side by side with what users run instead.
//!
//! Run: `cargo build --release --workspace && cargo bench -p settled --bench reconcile_import`
//! (`-- --lines N --invoices M` to scale; needs `hledger` and `ledger` on PATH for the comparison rows, else they are skipped;
//! `SETTLED_BENCH_SEED_CACHE=DIR` keeps the seeded store in DIR for later runs; `--settled-only` skips hledger and ledger;
//! `--cache-mib N` sets the daemon's sled cache; `--checkpoint-dirty N` its `[journal] checkpoint_dirty`; `--skip-hledger`
//! leaves hledger out).
//! Prints a markdown report on stdout.

#![allow(clippy::float_arithmetic)] // timings and throughput rates; no money is computed here

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use settled::config::Config;
use settled::engine::{Engine, SystemClock};
use settled::store::{Store, StoreOptions};

const INVOICES_PER_ACCOUNT: usize = 10;

/// The daemon refuses API tokens shorter than 32 bytes.
const BENCH_TOKEN: &str = "reconcile-import-bench-token-0123456789abcdef";

// The daemon's allocator and its options, so that the sled floors run in this process (and its children) allocate
// as the daemon does.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

settled::jemalloc_options!();

fn release_dir() -> PathBuf {
    common::profile_dir().expect("locating target/release")
}

/// An invoice as the generator needs it.
struct Issued {
    number: String,
    rf: String,
    customer: String,
    total: String,
}

/// The child that measures sled alone opening a store: `reconcile_import --sled-open-floor DIR`.
const OPEN_FLOOR_ARG: &str = "--sled-open-floor";

/// The child that runs one sled floor of the import's writes, so that its peak resident memory is sled's alone:
/// `reconcile_import --sled-write-floor LAYOUT LINES INVOICES SIZES...` ([`sled_write_child`]).
const WRITE_FLOOR_ARG: &str = "--sled-write-floor";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == OPEN_FLOOR_ARG) {
        sled_open_child(Path::new(&args[at + 1]));
        return;
    }
    if let Some(at) = args.iter().position(|a| a == WRITE_FLOOR_ARG) {
        sled_write_child(&args[at + 1..]);
        return;
    }
    let lines = common::arg("--lines", 1_000_000);
    let invoices = common::arg("--invoices", 200_000);
    let dir = common::bench_tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    eprintln!("seeding {invoices} open invoices...");
    let seed_start = Instant::now();
    let (issued, from_cache) = seeded(&runtime, &data, invoices);
    let seed_secs = seed_start.elapsed().as_secs_f64();

    eprintln!("generating {lines} CSV lines...");
    let csv_path = dir.path().join("bank.csv");
    let ledger_csv = dir.path().join("bank-ledger.csv");
    generate(&csv_path, &ledger_csv, &issued, lines);
    let size_mb = std::fs::metadata(&csv_path).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;

    // (a) the floor: the csv crate merely parsing the file.
    let t = Instant::now();
    let mut reader = csv::ReaderBuilder::new()
        .from_path(&csv_path)
        .expect("open csv");
    let mut record = csv::ByteRecord::new();
    let mut n = 0u64;
    while reader.read_byte_record(&mut record).expect("csv row") {
        n += 1;
    }
    let floor = t.elapsed().as_secs_f64();
    assert_eq!(n as usize, lines);

    // settled: the release daemon, bank-csv in process isolation, `settled import`.
    eprintln!("importing through settled...");
    let load_before = common::loadavg();
    let (settled_secs, settled_rss, summary) = import_with_daemon(dir.path(), &data, &csv_path);
    let load_after = common::loadavg();
    // The floor of that start, on a copy of the same store: sled alone opening it and reading the open-invoice rows.
    let open_floor = sled_open_floor(dir.path(), &data);
    // Cold start of the store the import left (it ended with a checkpoint, then the daemon was killed).
    let restart = restart_daemon(dir.path());

    // (b) hledger and (c) ledger, when installed.
    let rules = dir.path().join("bank.rules");
    std::fs::write(
        &rules,
        "skip 1\nfields date, amount, currency, payee, description, code\ndate-format %Y-%m-%d\naccount1 assets:bank\naccount2 income:sales\n",
    )
    .expect("rules");
    let others = !std::env::args().any(|a| a == "--settled-only");
    eprintln!("settled import took {settled_secs:.1} s, peak RSS {settled_rss} MiB");
    eprintln!("hledger...");
    // `--skip-hledger`: hledger takes about 5 minutes on the full file; its figure changes little between runs.
    let hledger = (others && !std::env::args().any(|a| a == "--skip-hledger"))
        .then(|| {
            timed(
                Command::new("hledger")
                    .arg("-f")
                    .arg(&csv_path)
                    .arg("--rules-file")
                    .arg(&rules)
                    .arg("print"),
            )
        })
        .flatten();
    eprintln!("ledger...");
    let load_ledger = common::loadavg();
    let ledger = others
        .then(|| {
            timed(
                Command::new("ledger")
                    .args(["-f", "/dev/null", "convert"])
                    .arg(&ledger_csv)
                    .args([
                        "--input-date-format",
                        "%Y-%m-%d",
                        "--account",
                        "Assets:Bank",
                    ]),
            )
        })
        .flatten();

    let rate = |secs: f64| format!("{:.0}", lines as f64 / secs);
    println!("### Import and reconcile {lines} CSV lines against {invoices} open invoices\n");
    println!("Command: `cargo build --release --workspace && cargo bench -p settled --bench reconcile_import -- --lines {lines} --invoices {invoices}`\n");
    if from_cache {
        println!("File: {size_mb:.1} MB; the store seeded with {invoices} invoices came from SETTLED_BENCH_SEED_CACHE ({seed_secs:.1} s, not counted; seeding it the first time takes minutes).\n");
    } else {
        println!("File: {size_mb:.1} MB; seeding the {invoices} invoices through the engine took {seed_secs:.1} s (not counted).\n");
    }
    println!("| what | seconds | lines/s | peak RSS MiB | vs settled |");
    println!("|---|---|---|---|---|");
    println!("| settled import (parse + reconcile + durable commit) | {settled_secs:.1} | {} | {settled_rss} | 1.0x |", rate(settled_secs));
    println!(
        "| (a) csv crate, parse only (floor) | {floor:.2} | {} | - | {:.2}x |",
        rate(floor),
        settled_secs / floor
    );
    for (name, r) in [
        ("(b) hledger print (rules file)", hledger),
        ("(c) ledger convert", ledger),
    ] {
        match r {
            Some((secs, rss)) if secs >= settled_secs => println!(
                "| {name} | {secs:.1} | {} | {rss} | {:.1}x slower |",
                rate(secs),
                secs / settled_secs
            ),
            Some((secs, rss)) => println!(
                "| {name} | {secs:.1} | {} | {rss} | {:.1}x faster |",
                rate(secs),
                settled_secs / secs
            ),
            None if !others => println!("| {name} | skipped (--settled-only) | - | - | - |"),
            None if name.contains("hledger") && std::env::args().any(|a| a == "--skip-hledger") => {
                println!("| {name} | skipped (--skip-hledger) | - | - | - |")
            }
            None => println!("| {name} | not installed | - | - | - |"),
        }
    }
    println!(
        "\nLoad average (1/5/15 min): {load_before} before the settled import, {load_after} after it, {load_ledger} before ledger.\n"
    );
    println!(
        "Cold start of the store the import left (killed after the import's final checkpoint, started again): ready_ms={}, \
         resident memory at ready {} MiB.\n",
        restart.0, restart.1
    );
    println!(
        "Its floor, measured first on a copy of the same store: sled alone ({} MiB cache, a fresh process) opened it in \
         {} ms with {} MiB resident, and held {} MiB after reading its {} open-invoice rows (what the daemon loads its \
         matching index from, before building that index).\n",
        settled::store::DEFAULT_CACHE_MIB,
        open_floor.open_ms,
        open_floor.rss_open_mib,
        open_floor.rss_rows_mib,
        open_floor.rows
    );
    println!("\nImport summary: {summary}\n");
    sled_floor(&data, lines, invoices, settled_secs, settled_rss);
    matching_scaling(&runtime);
}

/// Accounts with INVOICES_PER_ACCOUNT issued invoices each, through the real engine commands.
/// Seed the store, or copy a seeded one from `$SETTLED_BENCH_SEED_CACHE` (seeding 200k invoices through the engine takes
/// minutes; the cache lets repeated runs skip it). The cache is filled on the first run.
fn seeded(runtime: &tokio::runtime::Runtime, data: &Path, invoices: usize) -> (Vec<Issued>, bool) {
    let cache = std::env::var_os("SETTLED_BENCH_SEED_CACHE")
        .map(|d| PathBuf::from(d).join(format!("seed-{invoices}")));
    let copy = |from: &Path, to: &Path| {
        let ok = Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(to)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "copying {} to {}", from.display(), to.display());
    };
    if let Some(cache) = &cache {
        if let Ok(text) = std::fs::read_to_string(cache.join("issued.tsv")) {
            eprintln!("(seeded store copied from {})", cache.display());
            copy(&cache.join("data"), data);
            let issued = text
                .lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split('\t').collect();
                    Some(Issued {
                        number: f.first()?.to_string(),
                        rf: f.get(1)?.to_string(),
                        customer: f.get(2)?.to_string(),
                        total: f.get(3)?.to_string(),
                    })
                })
                .collect();
            return (issued, true);
        }
    }
    let issued = runtime.block_on(seed(data, invoices));
    if let Some(cache) = &cache {
        std::fs::create_dir_all(cache).expect("seed cache dir");
        copy(data, &cache.join("data"));
        let text: String = issued
            .iter()
            .map(|i| format!("{}\t{}\t{}\t{}\n", i.number, i.rf, i.customer, i.total))
            .collect();
        std::fs::write(cache.join("issued.tsv"), text).expect("seed cache list");
    }
    (issued, false)
}

async fn seed(data: &Path, invoices: usize) -> Vec<Issued> {
    let store = Store::open(data, &StoreOptions::default()).expect("store");
    let engine = Engine::new(store, Config::default(), Box::new(SystemClock)).expect("engine");
    let accounts = invoices.div_ceil(INVOICES_PER_ACCOUNT);
    let mut tasks = Vec::new();
    let workers = 32;
    for w in 0..workers {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for a in (w..accounts).step_by(workers) {
                out.extend(seed_account(&engine, a).await);
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("seed task"));
    }
    all.truncate(invoices);
    // As a daemon's clean stop does: the next start replays nothing of the seeding.
    engine.checkpoint().expect("checkpoint");
    engine.store().flush().expect("flush");
    all
}

async fn seed_account(engine: &Engine, a: usize) -> Vec<Issued> {
    let company = format!("Customer {a:06} Ltd");
    let lead = json!({"name": "Buyer", "email": format!("ap@customer{a:06}.example"), "company": company, "source": "import"});
    let (lead, _) = engine
        .capture_lead(&serde_json::from_value(lead).expect("lead"), "bench")
        .await
        .expect("capture");
    let conv = engine
        .convert_lead(
            &lead.id,
            serde_json::from_value(
                json!({"opportunity": {"name": "deal", "value": "1000.00", "currency": "EUR"}}),
            )
            .expect("opp"),
            "bench",
        )
        .await
        .expect("convert");
    let lines: Vec<_> = (0..INVOICES_PER_ACCOUNT)
        .map(|i| json!({"description": format!("item {i}"), "quantity": "1", "unit_price": format!("{}.{:02}", 50 + (a * 7 + i * 13) % 900, (a + i) % 100), "tax_rate": "0"}))
        .collect();
    let q = engine
        .create_quote(
            serde_json::from_value(
                json!({"opportunity_id": conv.opportunity_id, "currency": "EUR", "lines": lines}),
            )
            .expect("quote"),
            "bench",
        )
        .await
        .expect("quote");
    engine
        .quote_action(&q.id, "send", None, "bench")
        .await
        .expect("send");
    engine
        .quote_action(&q.id, "accept", None, "bench")
        .await
        .expect("accept");
    let order = engine
        .create_order(
            serde_json::from_value(json!({"quote_id": q.id})).expect("order"),
            "bench",
        )
        .await
        .expect("order");
    let mut out = Vec::new();
    for line in 1..=INVOICES_PER_ACCOUNT {
        let draft = engine
            .create_invoice(
                serde_json::from_value(
                    json!({"order_id": order.id, "lines": [{"line_no": line, "quantity": "1"}]}),
                )
                .expect("inv"),
                "bench",
            )
            .await
            .expect("invoice");
        let inv = engine
            .issue_invoice(
                &draft.id,
                serde_json::from_value(json!({})).expect("issue"),
                "bench",
            )
            .await
            .expect("issue");
        out.push(Issued {
            number: inv.number.clone().unwrap_or_default(),
            rf: inv.rf_reference.clone().unwrap_or_default(),
            customer: company.clone(),
            total: inv.totals.total.to_string(),
        });
    }
    out
}

/// A deterministic pseudo-random sequence (no external crate, same file every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// About 70% of lines reference an invoice (number in varied forms, or its RF reference), paying part of it;
/// the rest are payments from unknown payers with no reference.
fn generate(path: &Path, ledger_path: &Path, issued: &[Issued], lines: usize) {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("csv"));
    let mut ledger =
        std::io::BufWriter::new(std::fs::File::create(ledger_path).expect("ledger csv"));
    writeln!(
        out,
        "Date,Amount,Currency,Counterparty,Description,Transaction Id"
    )
    .expect("write");
    writeln!(ledger, "date,amount,currency,payee,note,code").expect("write");
    let mut rng = Lcg(42);
    for i in 0..lines {
        let r = rng.next();
        let (amount, payer, text) = if r % 10 < 7 {
            let inv = &issued[(rng.next() as usize) % issued.len()];
            let cents = 100 + rng.next() % 2000;
            let amount = format!("{}.{:02}", cents / 100, cents % 100);
            let seq = inv
                .number
                .rsplit('-')
                .next()
                .unwrap_or("0")
                .trim_start_matches('0')
                .to_string();
            let year = inv.number.split('-').nth(1).unwrap_or("2026");
            let text = match r % 5 {
                0 => format!("Invoice {}", inv.number),
                1 => format!("inv {year}/{seq} thanks"),
                2 => format!("payment INV{year}{seq:0>3}"),
                3 => inv.rf.clone(),
                _ => format!("ref {} part", inv.number.to_lowercase()),
            };
            let _ = &inv.total;
            (amount, inv.customer.clone(), text)
        } else {
            let cents = 100 + rng.next() % 500_000;
            (
                format!("{}.{:02}", cents / 100, cents % 100),
                format!("Unknown Payer {}", rng.next() % 50_000),
                "transfer".to_string(),
            )
        };
        let day = 1 + (i % 28);
        writeln!(out, "2026-03-{day:02},{amount},EUR,{payer},{text},T{i}").expect("write");
        writeln!(ledger, "2026-03-{day:02},{amount},EUR,{payer},{text},T{i}").expect("write");
    }
    out.flush().expect("flush");
    ledger.flush().expect("flush");
}

fn import_with_daemon(dir: &Path, data: &Path, csv: &Path) -> (f64, u64, String) {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugins");
    let lib = release_dir().join("libsettled_plugin_bank_csv.so");
    std::fs::copy(&lib, plugins.join("libsettled_plugin_bank_csv.so")).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run `cargo build --release --workspace` first",
            lib.display()
        )
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let config = dir.join("settled.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\nlisten = \"127.0.0.1:{port}\"\n{}[plugins]\ndir = \"{}\"\n{}",
            data.display(),
            match common::arg("--cache-mib", 0) {
                0 => String::new(),
                mib => format!("cache_mib = {mib}\n"),
            },
            plugins.display(),
            match common::arg("--checkpoint-dirty", 0) {
                0 => String::new(),
                n => format!("[journal]\ncheckpoint_dirty = {n}\n"),
            },
        ),
    )
    .expect("config");
    let bin = release_dir().join("settled");
    let mut daemon = spawn_daemon(&config, &dir.join("daemon.log"));
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "daemon did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let t = Instant::now();
    let out = Command::new(&bin)
        .args(["import", "--json", "--plugin", "bank-csv", "--url", &url])
        .arg(csv)
        .env("SETTLED_API_TOKEN", BENCH_TOKEN)
        .output()
        .expect("settled import");
    let secs = t.elapsed().as_secs_f64();
    let rss = common::proc_status_kib(daemon.id(), "VmHWM").unwrap_or(0) / 1024;
    let _ = daemon.kill();
    let _ = daemon.wait();
    let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
    for line in log
        .lines()
        .filter(|l| l.contains("file imported") || l.contains("settled ready"))
    {
        eprintln!("daemon: {line}");
    }
    let summary = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (secs, rss, summary)
}

/// `settled run --config CONFIG`, the release binary, logging to `log`.
fn spawn_daemon(config: &Path, log: &Path) -> std::process::Child {
    let log = std::fs::File::create(log).expect("log");
    Command::new(release_dir().join("settled"))
        .args(["run", "--config"])
        .arg(config)
        .env("SETTLED_API_TOKEN", BENCH_TOKEN)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start settled")
}

/// What a child run of this bench's executable printed: `name=value` words.
struct ChildReport {
    what: &'static str,
    text: String,
}

impl ChildReport {
    /// Run the bench's own executable with `args` and keep what it printed; a failed child fails the bench, naming `what`.
    fn run(
        what: &'static str,
        args: impl IntoIterator<Item = impl AsRef<std::ffi::OsStr>>,
    ) -> ChildReport {
        let out = Command::new(std::env::current_exe().expect("bench exe"))
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{what} child: {e}"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{what} child failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        ChildReport { what, text }
    }

    /// The value printed as `name=value`.
    fn field<T: std::str::FromStr>(&self, name: &str) -> T {
        self.text
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            .unwrap_or_else(|| panic!("{} child printed no {name}: {}", self.what, self.text))
    }
}

/// What sled alone costs to open a store: the floor of the daemon's start.
struct OpenFloor {
    open_ms: u64,
    rss_open_mib: u64,
    rss_rows_mib: u64,
    rows: u64,
}

/// Copy the store the import left (as the daemon's restart will find it) and let a fresh process open the copy with
/// sled alone: sled recovers the log written since its last open, as the daemon's start does.
fn sled_open_floor(dir: &Path, data: &Path) -> OpenFloor {
    let copy = dir.join("open-floor");
    let status = Command::new("cp")
        .arg("-a")
        .arg(data.join("db"))
        .arg(&copy)
        .status()
        .expect("cp");
    assert!(status.success(), "copying the store for the open floor");
    // The copy's pages written back first, so that the kernel's write-back does not slow the child's reads.
    let _ = Command::new("sync").status();
    let report = ChildReport::run(
        "open-floor",
        [std::ffi::OsStr::new(OPEN_FLOOR_ARG), copy.as_os_str()],
    );
    let _ = std::fs::remove_dir_all(&copy);
    let mib = |name: &str| report.field::<u64>(name) / 1024;
    OpenFloor {
        open_ms: report.field("open_ms"),
        rss_open_mib: mib("rss_open_kib"),
        rss_rows_mib: mib("rss_rows_kib"),
        rows: report.field("rows"),
    }
}

/// The child of [`sled_open_floor`]: open `db` with the daemon's default cache, then read every open-invoice row.
fn sled_open_child(db: &Path) {
    let t = Instant::now();
    let db = sled::Config::new()
        .path(db)
        .cache_capacity(StoreOptions::default().cache_bytes)
        .open()
        .expect("sled opens the copy");
    let tree = db.open_tree("settled").expect("tree");
    let open_ms = t.elapsed().as_millis();
    let rss_open = common::status_kib("VmRSS").unwrap_or(0);
    let mut rows = 0u64;
    for item in tree.scan_prefix(b"i/open-invoice/") {
        item.expect("row");
        rows += 1;
    }
    let rss_rows = common::status_kib("VmRSS").unwrap_or(0);
    println!("open_ms={open_ms} rss_open_kib={rss_open} rss_rows_kib={rss_rows} rows={rows}");
}

/// Start the daemon again on the store `import_with_daemon` left: (the `ready_ms` it logs, resident MiB at ready).
fn restart_daemon(dir: &Path) -> (u64, u64) {
    let log_path = dir.join("daemon-restart.log");
    let mut daemon = spawn_daemon(&dir.join("settled.toml"), &log_path);
    let deadline = Instant::now() + Duration::from_secs(300);
    let ready_ms = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("settled ready")) {
            let plain: String = strip_ansi(line);
            eprintln!("daemon (restart): {plain}");
            break plain
                .split("ready_ms=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
        assert!(Instant::now() < deadline, "the daemon did not start again");
        std::thread::sleep(Duration::from_millis(20));
    };
    let rss = common::proc_status_kib(daemon.id(), "VmRSS").unwrap_or(0) / 1024;
    let _ = daemon.kill();
    let _ = daemon.wait();
    (ready_ms, rss)
}

/// A log line without its colour codes.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// (seconds, peak RSS MiB) of an external command, or None when it is not installed.
fn timed(cmd: &mut Command) -> Option<(f64, u64)> {
    let program = cmd.get_program().to_string_lossy().to_string();
    if Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        return None;
    }
    let mut wrapped = Command::new("/usr/bin/time");
    wrapped
        .arg("-v")
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdout(Stdio::null());
    let t = Instant::now();
    let out = wrapped.output().ok()?;
    let secs = t.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let rss = stderr
        .lines()
        .find(|l| l.contains("Maximum resident set size"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0)
        / 1024;
    if !out.status.success() {
        eprintln!(
            "{program} failed: {}",
            stderr.lines().take(5).collect::<Vec<_>>().join(" | ")
        );
        return None;
    }
    Some((secs, rss))
}

/// Matching must not slow down as open invoices grow: `decide` throughput at 20k, 200k and 2M open invoices.
fn matching_scaling(_runtime: &tokio::runtime::Runtime) {
    use settled::reconcile::{decide, shapes_from_patterns, MatchIndex, OpenInvoice, Settings};
    use settled_plugin_api::PaymentRecord;
    println!("### Matching cost as open invoices grow\n");
    println!("Same command; `decide` on 200,000 payments (70% with a reference in varied forms) against an in-memory index.\n");
    println!("| open invoices | index build s | payments/s | µs per payment |");
    println!("|---|---|---|---|");
    for size in [20_000usize, 200_000, 2_000_000] {
        let t = Instant::now();
        let mut index = MatchIndex::new(shapes_from_patterns(&["INV-{YYYY}-{SEQ:3}"]));
        let date = chrono::NaiveDate::from_ymd_opt(2026, 3, 1).expect("date");
        for i in 0..size {
            let number = format!("INV-2026-{:03}", i + 1);
            index.upsert(OpenInvoice {
                id: format!("inv_{i:08}"),
                rf_reference: settled::domain::rf::creditor_reference(&number),
                number,
                account_id: format!("acc_{:08}", i / 10).into(),
                account_name: format!("Customer {:06} Ltd", i / 10).into(),
                currency: "EUR".into(),
                balance: rust_decimal::Decimal::new(10_000 + (i as i64 % 90_000), 2),
                issue_date: date,
                due_date: date,
                payment: None,
            });
        }
        let build = t.elapsed().as_secs_f64();
        let mut rng = Lcg(7);
        let payments: Vec<PaymentRecord> = (0..200_000)
            .map(|i| {
                let mut p = PaymentRecord::new(
                    format!("p{i}"),
                    rust_decimal::Decimal::new(500 + (rng.next() % 5000) as i64, 2),
                    "EUR",
                );
                if rng.next() % 10 < 7 {
                    let n = 1 + rng.next() as usize % size;
                    p.remittance = Some(if n.is_multiple_of(2) {
                        format!("inv 2026/{n}")
                    } else {
                        format!("INV2026{n:03}")
                    });
                    p.counterparty_name = Some(format!("Customer {:06} Ltd", (n - 1) / 10));
                } else {
                    p.counterparty_name = Some(format!("Unknown {}", rng.next() % 1000));
                }
                p
            })
            .collect();
        let settings = Settings::default();
        let t = Instant::now();
        let mut allocated = 0usize;
        for p in &payments {
            if matches!(
                decide(p, &index, &settings),
                settled::reconcile::Decision::Allocate { .. }
            ) {
                allocated += 1;
            }
        }
        let secs = t.elapsed().as_secs_f64();
        assert!(
            allocated > payments.len() / 2,
            "most referenced payments allocate ({allocated})"
        );
        println!(
            "| {size} | {build:.1} | {:.0} | {:.1} |",
            payments.len() as f64 / secs,
            secs * 1e6 / payments.len() as f64
        );
    }
    println!();
}

/// Average size of one record under `prefix` (at most `sample` keys, from the end: the newest), where a value holds
/// `records(value)` records.
fn mean_record_len(
    tree: &sled::Tree,
    prefix: &str,
    sample: usize,
    records: impl Fn(&[u8]) -> usize,
) -> usize {
    let (mut n, mut bytes) = (0usize, 0usize);
    for item in tree.scan_prefix(prefix.as_bytes()).rev().take(sample) {
        let (_, v) = item.expect("scan");
        n += records(&v);
        bytes += v.len();
    }
    bytes.checked_div(n).unwrap_or(0)
}

/// Records in a block (a JSON array, stored packed or not).
fn block_len(value: &[u8]) -> usize {
    let json = settled::store::block_json("block", value).expect("a block unpacks");
    let block: Vec<serde::de::IgnoredAny> =
        serde_json::from_slice(&json).expect("a block is a JSON array");
    block.len()
}

/// Which writes a floor run makes for each line.
#[derive(Clone, Copy, PartialEq)]
enum FloorLayout {
    /// Before issue 14: the invoice and its open-invoice row rewritten on every line that pays it, a `seen` key a line.
    PerLine,
    /// The journal alone: payment, allocation or review item, audit events and `seen` pairs appended in blocks; no
    /// invoice written. What any layout must make durable for a line.
    JournalOnly,
    /// The journal plus checkpoints: the invoices paid since the last checkpoint and their open-invoice rows written
    /// back in key order once `[journal] checkpoint_dirty` keys wait (the daemon's default, [`checkpoint_dirty`]). Today's
    /// layout.
    Checkpointed,
}

/// The floor sled sets for this import: the keys the daemon writes for each line, with the value sizes it wrote, applied to
/// a fresh sled store (same cache and mode as the daemon) holding the same number of invoices, in write sets of 250 lines,
/// with no parsing, matching or JSON at all, for each [`FloorLayout`]. 70% of lines settle an invoice (payment, allocation
/// and audit event; on an invoice's first payment a status event), the other 30% go to review (payment, review item, audit
/// event, an open-review row).
fn sled_floor(data: &Path, lines: usize, invoices: usize, settled_secs: f64, settled_rss: u64) {
    let sizes = {
        let db = sled::Config::new()
            .path(data.join("db"))
            .open()
            .expect("open the daemon's store");
        let tree = db.open_tree("settled").expect("tree");
        let size = |prefix: &str| mean_record_len(&tree, prefix, 2_000, |_| 1);
        let record = |prefix: &str| mean_record_len(&tree, prefix, 200, block_len);
        FloorSizes {
            payment: record("b/payment/"),
            allocation: record("b/allocation/"),
            event: record("v/"),
            seen: record("S/"),
            invoice: size("e/invoice/"),
            open_row: size("i/open-invoice/"),
            review: record("b/review/"),
        }
    };
    println!("### sled floor for the same writes\n");
    println!("Record sizes read back from the daemon's store after the import (bytes, a block's share for blocked records): \
              payment {}, allocation {}, audit event {}, seen pair {}, invoice {}, open-invoice row {}, review item {}.\n",
        sizes.payment, sizes.allocation, sizes.event, sizes.seen, sizes.invoice, sizes.open_row, sizes.review);
    println!("Each floor runs in a fresh process (the bench's own executable), so its peak resident memory is what sled \
              alone holds for those writes with the daemon's default cache ({} MiB) and allocator options.\n",
              settled::store::DEFAULT_CACHE_MIB);
    println!("| sled alone, the daemon's keys and value sizes for {lines} lines, 250 lines per batch | seconds | lines/s | keys written | keys per line | µs per key | peak RSS MiB | load average before |");
    println!("|---|---|---|---|---|---|---|---|");
    let checkpointed = format!(
        "journal + checkpoints of the invoices paid, every {} keys (today's layout)",
        checkpoint_dirty()
    );
    for (layout, what) in [
        (FloorLayout::PerLine, "before issue 14: invoice and open-invoice row rewritten per line, a `seen` key per line"),
        (FloorLayout::JournalOnly, "journal only: payment, allocation or review item, events and `seen` pairs appended in blocks"),
        (FloorLayout::Checkpointed, checkpointed.as_str()),
    ] {
        let load = common::loadavg();
        let run = floor_child(layout, &sizes, lines, invoices);
        println!(
            "| {what} | {:.1} | {:.0} | {} | {:.1} | {:.1} | {} | {load} |",
            run.secs,
            lines as f64 / run.secs,
            run.keys,
            run.keys as f64 / lines as f64,
            run.secs * 1e6 / run.keys as f64,
            run.hwm_kib / 1024
        );
    }
    println!(
        "| settled import (above), for comparison | {settled_secs:.1} | {:.0} | - | - | - | {settled_rss} | - |\n",
        lines as f64 / settled_secs
    );
}

impl FloorLayout {
    const ALL: [(FloorLayout, &'static str); 3] = [
        (FloorLayout::PerLine, "per-line"),
        (FloorLayout::JournalOnly, "journal"),
        (FloorLayout::Checkpointed, "checkpointed"),
    ];

    fn name(self) -> &'static str {
        FloorLayout::ALL
            .iter()
            .find(|(l, _)| *l == self)
            .map_or("?", |(_, name)| name)
    }

    fn named(name: &str) -> FloorLayout {
        FloorLayout::ALL
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(l, _)| *l)
            .unwrap_or_else(|| panic!("unknown floor layout {name}"))
    }
}

/// What one floor child measured.
struct FloorRun {
    secs: f64,
    keys: u64,
    hwm_kib: u64,
}

/// Run [`floor_run`] in a fresh process ([`sled_write_child`]) and read what it printed.
fn floor_child(layout: FloorLayout, sizes: &FloorSizes, lines: usize, invoices: usize) -> FloorRun {
    let mut args = vec![WRITE_FLOOR_ARG.to_string(), layout.name().to_string()];
    args.extend(
        [lines, invoices]
            .iter()
            .chain(&sizes.to_array())
            .map(|n| n.to_string()),
    );
    let report = ChildReport::run("write-floor", &args);
    FloorRun {
        secs: report.field("secs"),
        keys: report.field("keys"),
        hwm_kib: report.field("hwm_kib"),
    }
}

/// The child of [`floor_child`]: `LAYOUT LINES INVOICES` and the seven sizes of [`FloorSizes::to_array`].
fn sled_write_child(args: &[String]) {
    let number = |i: usize| -> usize {
        args.get(i).and_then(|a| a.parse().ok()).unwrap_or_else(|| {
            panic!("write-floor child: argument {i} missing or not a number: {args:?}")
        })
    };
    let layout = FloorLayout::named(args.first().map_or("", String::as_str));
    let sizes = FloorSizes::from_array(std::array::from_fn(|i| number(3 + i)));
    let (secs, keys) = floor_run(layout, &sizes, number(1), number(2));
    let hwm = common::status_kib("VmHWM").unwrap_or(0);
    println!("secs={secs} keys={keys} hwm_kib={hwm}");
}

/// The daemon's default `[journal] checkpoint_dirty`: the keys that wait before a checkpoint starts.
fn checkpoint_dirty() -> usize {
    settled::config::Journal::default().checkpoint_dirty
}

/// Mean sizes of what the daemon wrote, in bytes.
struct FloorSizes {
    payment: usize,
    allocation: usize,
    event: usize,
    seen: usize,
    invoice: usize,
    open_row: usize,
    review: usize,
}

impl FloorSizes {
    /// The sizes in field order, as a floor child takes them on its command line.
    fn to_array(&self) -> [usize; 7] {
        [
            self.payment,
            self.allocation,
            self.event,
            self.seen,
            self.invoice,
            self.open_row,
            self.review,
        ]
    }

    fn from_array(
        [payment, allocation, event, seen, invoice, open_row, review]: [usize; 7],
    ) -> FloorSizes {
        FloorSizes {
            payment,
            allocation,
            event,
            seen,
            invoice,
            open_row,
            review,
        }
    }
}

/// One floor run: (seconds, keys written), the final flush included.
fn floor_run(layout: FloorLayout, sizes: &FloorSizes, lines: usize, invoices: usize) -> (f64, u64) {
    let dir = common::bench_tempdir().expect("tempdir");
    let db = sled::Config::new()
        .path(dir.path().join("db"))
        .cache_capacity(StoreOptions::default().cache_bytes)
        .mode(sled::Mode::HighThroughput)
        .open()
        .expect("sled");
    let tree = db.open_tree("settled").expect("tree");
    let value = |len: usize| vec![b'x'; len];
    let invoice_key = |i: usize| format!("e/invoice/inv_{i:08}");
    let open_key = |i: usize| format!("i/open-invoice/inv_{i:08}");
    let mut batch = sled::Batch::default();
    for i in 0..invoices {
        batch.insert(invoice_key(i).as_bytes(), value(sizes.invoice));
        batch.insert(open_key(i).as_bytes(), value(sizes.open_row));
        if i % 250 == 249 {
            tree.apply_batch(std::mem::take(&mut batch)).expect("seed");
        }
    }
    tree.apply_batch(std::mem::take(&mut batch)).expect("seed");
    db.flush().expect("flush");
    let mut rng = Lcg(7);
    let mut paid_once = vec![false; invoices];
    let mut dirty = std::collections::BTreeSet::new();
    let mut w = FloorWriter::default();
    let t = Instant::now();
    for line in 0..lines {
        w.record("b/payment/", sizes.payment, 64);
        w.record("v/", sizes.event, 64);
        if layout == FloorLayout::PerLine {
            // Distinct, scattered like the hashes of real external ids (an odd multiplier is a bijection on u64).
            let seen_key = format!(
                "s/pay:bank-csv:{:016x}",
                (line as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            );
            // The layout before the seen blocks looked the key up before writing it.
            assert!(tree.get(seen_key.as_bytes()).expect("get").is_none());
            w.put(&seen_key, sizes.seen);
        } else {
            w.record("S/", sizes.seen, 512);
        }
        if rng.next() % 10 < 7 {
            let inv = (rng.next() as usize) % invoices.max(1);
            w.record("b/allocation/", sizes.allocation, 64);
            match layout {
                FloorLayout::PerLine => {
                    w.put(&invoice_key(inv), sizes.invoice);
                    w.put(&open_key(inv), sizes.open_row);
                }
                FloorLayout::JournalOnly => {}
                FloorLayout::Checkpointed => {
                    dirty.insert(inv);
                }
            }
            if !std::mem::replace(&mut paid_once[inv], true) {
                w.record("v/", sizes.event, 64);
            }
        } else {
            w.record("b/review/", sizes.review, 64);
            w.append("i/open-review/", 16);
        }
        if line % 250 == 249 {
            tree.apply_batch(w.take()).expect("apply");
        }
        if dirty.len() * 2 >= checkpoint_dirty() {
            for part in std::mem::take(&mut dirty)
                .into_iter()
                .collect::<Vec<_>>()
                .chunks(256)
            {
                let mut batch = sled::Batch::default();
                for &inv in part {
                    batch.insert(invoice_key(inv).as_bytes(), value(sizes.invoice));
                    batch.insert(open_key(inv).as_bytes(), value(sizes.open_row));
                    w.keys += 2;
                }
                tree.apply_batch(batch).expect("checkpoint");
            }
        }
    }
    tree.apply_batch(w.take()).expect("apply");
    db.flush().expect("flush");
    (t.elapsed().as_secs_f64(), w.keys)
}

#[derive(Default)]
struct FloorWriter {
    batch: sled::Batch,
    seq: u64,
    keys: u64,
    /// Blocked records of the current batch, per prefix: (count, bytes, records per block).
    blocked: std::collections::BTreeMap<&'static str, (usize, usize, usize)>,
}

impl FloorWriter {
    fn put(&mut self, key: &str, len: usize) {
        self.keys += 1;
        self.batch.insert(key.as_bytes(), vec![b'x'; len]);
    }

    fn append(&mut self, prefix: &str, len: usize) {
        self.seq += 1;
        let key = format!("{prefix}{:020}", self.seq);
        self.put(&key, len);
    }

    /// A record the daemon stores in a block of up to `per_block`.
    fn record(&mut self, prefix: &'static str, len: usize, per_block: usize) {
        let entry = self.blocked.entry(prefix).or_insert((0, 0, per_block));
        entry.0 += 1;
        entry.1 += len;
    }

    /// The batch, with this batch's blocked records written as blocks.
    fn take(&mut self) -> sled::Batch {
        for (prefix, (count, bytes, per_block)) in std::mem::take(&mut self.blocked) {
            let each = bytes / count.max(1);
            let mut left = count;
            while left > 0 {
                let n = left.min(per_block);
                self.append(prefix, n * each);
                left -= n;
            }
        }
        std::mem::take(&mut self.batch)
    }
}
