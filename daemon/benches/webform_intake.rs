//! Web-form intake through the whole daemon: 64 keep-alive clients posting urlencoded forms to `/intake/<instance>`,
//! served by the release webform plugin, once through an in-process instance and once through a process-mode one.
//! The daemon runs in this process, so its plugin children are this binary re-executed as `BENCH plugin-host ...`.
//!
//! Needs `cargo build --release -p settled-plugin-webform` in the same target dir, then
//! `cargo bench -p settled --bench webform_intake`.

mod common;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use common::{fmt_dur, fmt_int, per_second, summarise, table};
use serde_json::json;
use settled::app::Daemon;
use settled::config::Config;
use settled::plugin_host::{ConnectorConfig, Isolation};

const CLIENTS: usize = 64;
const WARMUP: Duration = Duration::from_secs(2);
const MEASURE: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    if let Some(code) = common::plugin_host_child() {
        return code;
    }
    let result = common::run_bench("webform_intake", run());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let lib = common::built_artifact(
        "libsettled_plugin_webform.so",
        "cargo build --release -p settled-plugin-webform",
    )?;
    let root = common::bench_tempdir()?;
    let plugins = root.path().join("plugins");
    std::fs::create_dir_all(&plugins).context("creating the plugin folder")?;
    std::fs::copy(&lib, plugins.join("libsettled_plugin_webform.so"))
        .context("copying the webform plugin")?;
    let connector = |name: &str, isolation| ConnectorConfig {
        name: name.into(),
        plugin: "webform".into(),
        isolation,
        settings: json!({}),
        ..ConnectorConfig::default()
    };
    let mut config = Config {
        data_dir: Some(root.path().join("data")),
        listen: "127.0.0.1:0".parse().context("listen address")?,
        connectors: vec![
            connector("web-inproc", Isolation::InProcess),
            connector("web-proc", Isolation::Process),
        ],
        ..Config::default()
    };
    config.plugins.dir = Some(plugins);
    config.plugins.watch = false;

    let daemon = Daemon::start(config).await.context("starting the daemon")?;
    let addr = daemon.local_addr().context("daemon address")?;
    let running: Vec<String> = daemon
        .state
        .host
        .as_ref()
        .map(|h| {
            h.instances()
                .into_iter()
                .filter(|i| i.running)
                .map(|i| i.name)
                .collect()
        })
        .unwrap_or_default();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(daemon.serve(async move {
        let _ = stop_rx.await;
    }));

    let mut rows = Vec::new();
    let mut first_error = None;
    for (instance, mode) in [("web-inproc", "in-process"), ("web-proc", "process")] {
        if !running.iter().any(|r| r == instance) {
            anyhow::bail!("connector instance `{instance}` is not running (running: {running:?})");
        }
        println!("{mode}: load before the run {}", common::loadavg());
        let url = format!("http://{addr}/intake/{instance}");
        let tag = instance.to_string();
        let load = common::drive(
            CLIENTS,
            WARMUP,
            MEASURE,
            reqwest::StatusCode::OK,
            move |http, task, seq| {
                http.post(&url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(format!(
                        "name=Ada+Lovelace+{task}-{seq}&email=ada-{tag}-{task}-{seq}%40analytical-engines.example\
                         &company=Analytical+Engines+Ltd&phone=%2B44+20+7946+0000\
                         &message=We+need+a+quote+for+20+licences"
                    ))
            },
        )
        .await;
        let mut latencies = load.latencies;
        let s = summarise(&mut latencies);
        rows.push(vec![
            format!("`POST /intake/{instance}` ({mode})"),
            fmt_int(per_second(load.ok, load.window)),
            fmt_dur(s.p50),
            fmt_dur(s.p99),
            fmt_int(s.n as u64),
            fmt_int(load.errors),
        ]);
        if first_error.is_none() {
            first_error = load.first_error;
        }
    }
    let _ = stop_tx.send(());
    server
        .await
        .context("daemon task")?
        .context("daemon serve")?;

    println!(
        "\n{CLIENTS} clients, {} s warm-up, {} s measured per instance\n",
        WARMUP.as_secs(),
        MEASURE.as_secs()
    );
    table(&["what", "leads/s", "p50", "p99", "n", "errors"], &rows);
    if let Some(why) = first_error {
        println!("\nfirst error: {why}");
    }
    println!("\nload after the run: {}", common::loadavg());
    Ok(())
}
