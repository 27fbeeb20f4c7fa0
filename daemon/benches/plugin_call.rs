//! Round-trip cost of one plugin call with a 1 KiB JSON payload (`echo` on the `good` fixture plugin): a direct Rust
//! call, the same call through `PluginHost` in-process, and in process mode (a `settled plugin-host` child).
//!
//! Needs the fixture and the `settled` binary in the same target dir:
//! `cargo build --release -p settled-fixture-good && cargo build --release -p settled --bin settled`, then
//! `cargo bench -p settled --bench plugin_call`.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::Context;
use common::{fmt_dur, fmt_int, summarise, table};
use serde_json::{json, Value};
use settled::plugin_host::{ConnectorConfig, HostConfig, Isolation, PluginHost};

const CALLS: usize = 20_000;
const WARMUP_CALLS: usize = 1_000;

/// What the fixture's `echo` does, as a plain function.
#[inline(never)]
fn direct(payload: &Value) -> Value {
    payload.clone()
}

/// The direct call plus the JSON encode/decode every plugin call pays on each side of the boundary.
#[inline(never)]
fn direct_json(payload: &Value) -> serde_json::Result<Value> {
    let bytes = serde_json::to_vec(payload)?;
    let inside: Value = serde_json::from_slice(&bytes)?;
    let out = serde_json::to_vec(&direct(&inside))?;
    serde_json::from_slice(&out)
}

fn main() -> anyhow::Result<()> {
    common::run_bench("plugin_call", run())
}

async fn run() -> anyhow::Result<()> {
    let lib = common::built_artifact(
        "libsettled_fixture_good.so",
        "cargo build --release -p settled-fixture-good",
    )?;
    let host_exe =
        common::built_artifact("settled", "cargo build --release -p settled --bin settled")?;
    let root = common::bench_tempdir()?;
    let plugins = root.path().join("plugins");
    std::fs::create_dir_all(&plugins).context("creating the plugin folder")?;
    std::fs::copy(&lib, plugins.join("libsettled_plugin_good.so"))
        .context("copying the fixture plugin")?;
    let connector = |name: &str, isolation| ConnectorConfig {
        name: name.into(),
        plugin: "good".into(),
        isolation,
        settings: Value::Null,
        ..ConnectorConfig::default()
    };
    let host = PluginHost::start(HostConfig {
        plugin_dir: plugins,
        cache_dir: root.path().join("cache"),
        allowlist: None,
        connectors: vec![
            connector("in-process", Isolation::InProcess),
            connector("process", Isolation::Process),
        ],
        host_exe,
        call_timeout: Duration::from_secs(10),
        quarantine_after: 5,
        watch: false,
        defaults: false,
        require_sandbox: false,
    })
    .await
    .context("starting the plugin host")?;

    let payload = json!("x".repeat(1024 - 2));
    let size = serde_json::to_vec(&payload)?.len();
    let mut rows = Vec::new();

    let mut samples = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let t = Instant::now();
        black_box(direct(black_box(&payload)));
        samples.push(t.elapsed());
    }
    rows.push(row("direct Rust call (clone)", &mut samples));

    samples.clear();
    for _ in 0..CALLS {
        let t = Instant::now();
        black_box(direct_json(black_box(&payload))?);
        samples.push(t.elapsed());
    }
    rows.push(row("direct + JSON encode/decode both ways", &mut samples));

    for instance in ["in-process", "process"] {
        for _ in 0..WARMUP_CALLS {
            host.call(instance, "echo", payload.clone())
                .await
                .with_context(|| format!("warm-up call on `{instance}`"))?;
        }
        samples.clear();
        for _ in 0..CALLS {
            let p = payload.clone();
            let t = Instant::now();
            let out = host
                .call(instance, "echo", p)
                .await
                .with_context(|| format!("call on `{instance}`"))?;
            samples.push(t.elapsed());
            black_box(out);
        }
        rows.push(row(&format!("PluginHost::call, {instance}"), &mut samples));
    }
    host.shutdown().await;

    println!("payload: a JSON string of {size} bytes; {CALLS} sequential calls each after {WARMUP_CALLS} warm-up calls\n");
    table(&["what", "n", "p50", "p99", "mean"], &rows);
    println!("\nload after the run: {}", common::loadavg());
    Ok(())
}

fn row(what: &str, samples: &mut [Duration]) -> Vec<String> {
    let s = summarise(samples);
    vec![
        what.into(),
        fmt_int(s.n as u64),
        fmt_dur(s.p50),
        fmt_dur(s.p99),
        fmt_dur(s.mean),
    ]
}
