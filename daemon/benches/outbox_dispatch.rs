//! Issue 10's benchmark: the release `settled` binary delivering outbox events through the real `webhook` plugin (process
//! isolation, Standard Webhooks signatures) to a receiver in this process that checks every signature.
//!
//! 1. Commit-to-delivery when idle: one unallocated payment at a time over the API (each a `review.queued` event),
//!    100 ms apart; the delay is the receiver's arrival time minus the event's `at` (the payload's `timestamp`, stamped in the write; same clock).
//! 2. Backlog drain: the sink paused, N bank lines that match nothing imported (N `review.queued` events), then resumed;
//!    events/s from the resume until the receiver holds all N, the daemon's RSS sampled every 500 ms meanwhile.
//!
//! Run: `cargo build --release --workspace && cargo bench -p settled --bench outbox_dispatch`
//! (`-- --events N` for the backlog, default 100000; `--samples N` for the latency run, default 200).
//! Prints a markdown report on stdout.

#![allow(clippy::float_arithmetic)] // seconds for display; no money is computed here

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const TOKEN: &str = "bench-token-0123456789";

/// What the receiver saw: arrival time per webhook-id, the event's `at`, and bad signatures.
#[derive(Default)]
struct Seen {
    arrived: HashMap<
        String,
        (
            Instant,
            chrono::DateTime<chrono::Utc>,
            chrono::DateTime<chrono::Utc>,
        ),
    >,
    bad_signatures: u64,
    duplicates: u64,
}

#[derive(Clone)]
struct Rx {
    key: Arc<Vec<u8>>,
    seen: Arc<Mutex<Seen>>,
}

async fn receive(State(rx): State<Rx>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let now = chrono::Utc::now();
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (id, ts, sig) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(&rx.key).expect("hmac key");
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(&body);
    let b64 = base64::engine::general_purpose::STANDARD;
    let expected = b64.encode(mac.finalize().into_bytes());
    let valid = sig
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|s| s == expected);
    let at = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["timestamp"].as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(now);
    let mut seen = rx.seen.lock().expect("seen");
    if !valid {
        seen.bad_signatures += 1;
    }
    if seen.arrived.insert(id, (Instant::now(), now, at)).is_some() {
        seen.duplicates += 1;
    }
    StatusCode::OK
}

fn main() -> anyhow::Result<()> {
    common::run_bench("Outbox dispatch", bench())
}

struct Settled {
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl Drop for Settled {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Settled {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(TOKEN);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.with_context(|| path.to_string())?;
        let status = resp.status();
        let value: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{path}: {status} {value}");
        }
        Ok(value)
    }

    async fn hook(&self) -> anyhow::Result<Value> {
        let all = self.call(reqwest::Method::GET, "/v1/outbox", None).await?;
        Ok(all["items"][0].clone())
    }
}

fn start_daemon(dir: &Path, receiver: &str) -> anyhow::Result<Settled> {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins)?;
    for lib in [
        "libsettled_plugin_webhook.so",
        "libsettled_plugin_bank_csv.so",
    ] {
        let built = common::built_artifact(lib, "cargo build --release --workspace")?;
        std::fs::copy(&built, plugins.join(lib))?;
    }
    let bin = common::built_artifact("settled", "cargo build --release --workspace")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = dir.join("settled.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{data}\"\nlisten = \"127.0.0.1:{port}\"\n[plugins]\ndir = \"{plugins}\"\n\
             [[connector]]\nname = \"bank-csv\"\nplugin = \"bank-csv\"\n\
             [[connector]]\nname = \"hook\"\nplugin = \"webhook\"\nevents = [\"review.queued\"]\n\
             settings = {{ url = \"{receiver}\", secret = \"{SECRET}\" }}\n",
            data = dir.join("data").display(),
            plugins = plugins.display(),
        ),
    )?;
    let log = std::fs::File::create(dir.join("daemon.log"))?;
    let child = Command::new(&bin)
        .args(["run", "--config"])
        .arg(&config)
        .env("SETTLED_API_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting settled")?;
    Ok(Settled {
        child,
        url: format!("http://127.0.0.1:{port}"),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(3600))
            .build()?,
    })
}

async fn bench() -> anyhow::Result<()> {
    let events = common::arg("--events", 100_000);
    let samples = common::arg("--samples", 200);
    let dir = common::bench_tempdir()?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let rx = Rx {
        key: Arc::new(b64.decode(SECRET.trim_start_matches("whsec_"))?),
        seen: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let receiver = format!("http://{}/hook", listener.local_addr()?);
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(rx.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let d = start_daemon(dir.path(), &receiver)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while d
        .call(reqwest::Method::GET, "/healthz", None)
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!(
                "settled did not start; see {}",
                dir.path().join("daemon.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 1. Commit to delivery when idle.
    println!("### Commit to delivery, idle ({samples} events, one every 100 ms)\n");
    println!("load average at start: {}\n", common::loadavg());
    let mut delays = Vec::with_capacity(samples);
    for i in 0..samples {
        d.call(
            reqwest::Method::POST,
            "/v1/payments",
            Some(json!({"amount": format!("{}.00", 1 + i), "currency": "EUR", "payer": format!("Idle Payer {i}")})),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wait = Instant::now() + Duration::from_secs(60);
    while rx.seen.lock().expect("seen").arrived.len() < samples && Instant::now() < wait {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (_, delivered, at) in rx.seen.lock().expect("seen").arrived.values() {
        delays.push((*delivered - *at).to_std().unwrap_or(Duration::ZERO));
    }
    let s = common::summarise(&mut delays);
    common::table(
        &["events delivered", "p50", "p99", "mean"],
        &[vec![
            s.n.to_string(),
            common::fmt_dur(s.p50),
            common::fmt_dur(s.p99),
            common::fmt_dur(s.mean),
        ]],
    );

    // 2. A paused sink's backlog, drained.
    println!(
        "\n### Backlog of {} events drained\n",
        common::fmt_int(events as u64)
    );
    d.call(
        reqwest::Method::POST,
        "/v1/outbox/hook/pause",
        Some(json!({})),
    )
    .await?;
    let mut csv = String::from("Date,Amount,Currency,Counterparty,Description,Transaction Id\n");
    for i in 0..events {
        csv.push_str(&format!(
            "2026-03-05,{}.{:02},EUR,Payer {i},unknown {i},B{i}\n",
            1 + i % 900,
            i % 100
        ));
    }
    let t = Instant::now();
    let summary = d
        .call_raw_import(csv)
        .await
        .context("importing the backlog")?;
    eprintln!("imported in {:.1} s: {summary}", t.elapsed().as_secs_f64());
    let before = rx.seen.lock().expect("seen").arrived.len();
    // `/v1/outbox` with the whole backlog pending: the first call reads it once, later ones only what is new.
    let mut looks = Vec::new();
    let mut hook = Value::Null;
    for _ in 0..3 {
        let t = Instant::now();
        hook = d.hook().await?;
        looks.push(common::fmt_dur(t.elapsed()));
    }
    println!(
        "`GET /v1/outbox` with {} pending: {} (first call, then two more)\n",
        hook["pending"],
        looks.join(", ")
    );
    let pid = d.child.id();
    println!(
        "pending before resume: {}; daemon RSS before resume: {}; load average at resume: {}\n",
        hook["pending"],
        common::fmt_mib(common::proc_status_kib(pid, "VmRSS").unwrap_or(0)),
        common::loadavg()
    );
    let started = Instant::now();
    d.call(
        reqwest::Method::POST,
        "/v1/outbox/hook/resume",
        Some(json!({})),
    )
    .await?;
    let mut rss = Vec::new();
    let limit = Instant::now() + Duration::from_secs(3600);
    loop {
        let got = rx.seen.lock().expect("seen").arrived.len() - before;
        rss.push((
            started.elapsed(),
            got,
            common::proc_status_kib(pid, "VmRSS").unwrap_or(0),
        ));
        if got >= events || Instant::now() > limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let elapsed = started.elapsed();
    let got = rx.seen.lock().expect("seen").arrived.len() - before;
    let seen = rx.seen.lock().expect("seen");
    common::table(
        &[
            "events",
            "drain time",
            "events/s",
            "bad signatures",
            "duplicates",
            "load average at end",
        ],
        &[vec![
            common::fmt_int(got as u64),
            format!("{:.1} s", elapsed.as_secs_f64()),
            common::fmt_int(common::per_second(got as u64, elapsed)),
            seen.bad_signatures.to_string(),
            seen.duplicates.to_string(),
            common::loadavg(),
        ]],
    );
    drop(seen);
    println!("\nDaemon RSS while draining (every ~10% of the drain):\n");
    let step = (rss.len() / 10).max(1);
    let rows: Vec<Vec<String>> = rss
        .iter()
        .enumerate()
        .filter(|(i, _)| i % step == 0 || *i == rss.len() - 1)
        .map(|(_, (at, got, kib))| {
            vec![
                format!("{:.1} s", at.as_secs_f64()),
                common::fmt_int(*got as u64),
                common::fmt_mib(*kib),
            ]
        })
        .collect();
    common::table(&["since resume", "delivered", "VmRSS"], &rows);
    let kib: Vec<u64> = rss.iter().map(|r| r.2).collect();
    println!(
        "\nVmRSS min {} max {}; daemon peak (VmHWM) {}",
        common::fmt_mib(kib.iter().copied().min().unwrap_or(0)),
        common::fmt_mib(kib.iter().copied().max().unwrap_or(0)),
        common::fmt_mib(common::proc_status_kib(pid, "VmHWM").unwrap_or(0)),
    );
    Ok(())
}

impl Settled {
    /// `POST /v1/imports` of a bank CSV; the import summary.
    async fn call_raw_import(&self, csv: String) -> anyhow::Result<Value> {
        let resp = self
            .http
            .post(format!(
                "{}/v1/imports?name=backlog.csv&plugin=bank-csv",
                self.url
            ))
            .bearer_auth(TOKEN)
            .body(csv)
            .send()
            .await?;
        let status = resp.status();
        let value: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("import: {status} {value}");
        }
        Ok(value)
    }
}
