//! Config reload while running: the config file is re-read when it changes (checked every [`POLL`], applied once it
//! stayed the same for one more check, so a half-written file is not read) and on SIGHUP.
//!
//! What a reload applies: the `[[connector]]` tables and `[plugins] defaults` ([`PluginHost::apply_connectors`]).
//! Other keys are compared with the file the daemon started with and listed as needing a restart. A file that
//! does not parse or validate is refused whole: the running config stays, and the error is logged and kept in
//! [`PluginHost::last_reload`] (shown by `/v1/plugins` and `/healthz`).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::plugin_host::{ConnectorConfig, PluginHost, ReloadReport};

/// How often the config file's size, modification time and inode are compared.
pub const POLL: Duration = Duration::from_millis(500);

type Stamp = Option<(u64, SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?, meta.ino()))
}

/// The file as a TOML table, for comparing what changed; `None` when it cannot be read or parsed.
fn table(path: &Path) -> Option<toml::Table> {
    toml::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Watch `file` and apply its connector changes to `host` until cancelled.
pub async fn run(file: PathBuf, host: Arc<PluginHost>, cancel: CancellationToken) {
    let started_with = table(&file).unwrap_or_default();
    // Transports are set up from the connectors the daemon started with.
    let started_connectors = Config::load(&file)
        .map(|c| c.connectors)
        .unwrap_or_default();
    let mut hangup =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP; config changes are still picked up from the file");
                None
            }
        };
    let mut seen = stamp(&file);
    let mut changed: Option<Stamp> = None;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let trigger = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = async {
                match hangup.as_mut() {
                    Some(signal) => { signal.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => "SIGHUP",
            _ = tick.tick() => {
                let now = stamp(&file);
                if now != seen {
                    // Changed: read it once it stayed like this for one more check.
                    seen = now;
                    changed = Some(now);
                    continue;
                }
                if changed.take().is_none() {
                    continue;
                }
                "file changed"
            }
        };
        changed = None;
        seen = stamp(&file);
        let report = reload(&file, (&started_with, &started_connectors), &host, trigger).await;
        host.record_reload(report);
    }
}

async fn reload(
    file: &Path,
    (started_with, started_connectors): (&toml::Table, &[ConnectorConfig]),
    host: &PluginHost,
    trigger: &str,
) -> ReloadReport {
    let mut report = ReloadReport {
        file: file.to_path_buf(),
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        trigger: trigger.to_string(),
        outcome: "refused".to_string(),
        error: None,
        changes: Vec::new(),
        restart_needed: Vec::new(),
    };
    let config = match Config::load(file) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(%error, trigger, "config reload refused; the running config stays");
            report.error = Some(error.to_string());
            return report;
        }
    };
    match host
        .apply_connectors(config.connectors.clone(), config.plugins.defaults)
        .await
    {
        Ok(changes) => {
            report.outcome = "applied".to_string();
            report.changes = changes;
        }
        Err(error) => {
            tracing::error!(%error, trigger, "config reload refused; the running config stays");
            report.error = Some(format!("config {}: {error}", file.display()));
            return report;
        }
    }
    report.restart_needed = table(file)
        .map(|now| restart_needed(started_with, &now))
        .unwrap_or_default();
    // Transports set up at start: a connector's own inbox folder, mailbox and outbox delivery.
    for c in &config.connectors {
        let same = started_connectors.iter().any(|b| {
            b.name == c.name && b.inbox == c.inbox && b.mailbox == c.mailbox && b.events == c.events
        });
        if same {
            continue;
        }
        for (what, set) in [
            ("inbox folder", c.inbox.is_some()),
            ("mailbox", c.mailbox.is_some()),
            ("outbox delivery (`events`)", c.events.is_some()),
        ] {
            if set {
                report.restart_needed.push(format!(
                    "connector `{}`: its {what} is set up at the next restart",
                    c.name
                ));
            }
        }
    }
    for note in &report.restart_needed {
        tracing::warn!(note = %note, "config reload: takes effect at the next restart");
    }
    tracing::info!(
        trigger,
        changes = report.changes.len(),
        "config reloaded"
    );
    report
}

/// Keys outside `[[connector]]` and `[plugins] defaults` whose value differs between two versions of the file.
fn restart_needed(before: &toml::Table, now: &toml::Table) -> Vec<String> {
    let mut keys: Vec<&String> = before.keys().chain(now.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut out = Vec::new();
    for key in keys {
        match key.as_str() {
            "connector" => {}
            "plugins" => {
                let plugins = |t: &toml::Table| {
                    let mut p = t
                        .get("plugins")
                        .and_then(toml::Value::as_table)
                        .cloned()
                        .unwrap_or_default();
                    p.remove("defaults");
                    p
                };
                let (b, n) = (plugins(before), plugins(now));
                let mut sub: Vec<&String> = b.keys().chain(n.keys()).collect();
                sub.sort();
                sub.dedup();
                for k in sub {
                    if b.get(k) != n.get(k) {
                        out.push(format!("`plugins.{k}` changed: takes effect at the next restart"));
                    }
                }
            }
            _ if before.get(key) != now.get(key) => {
                out.push(format!("`{key}` changed: takes effect at the next restart"))
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn only_keys_a_reload_cannot_apply_need_a_restart() {
        let before = parse(
            "listen = \"127.0.0.1:1\"\n[plugins]\nwatch = true\n[[connector]]\nname = \"a\"\nplugin = \"camt\"\n",
        );
        let now = parse(
            "listen = \"127.0.0.1:2\"\n[plugins]\nwatch = true\ndefaults = false\n[invoicing]\npayment_terms_days = 14\n",
        );
        assert_eq!(
            restart_needed(&before, &now),
            vec![
                "`invoicing` changed: takes effect at the next restart".to_string(),
                "`listen` changed: takes effect at the next restart".to_string(),
            ]
        );
        let plugins_dir = parse("[plugins]\ndir = \"/x\"\n");
        assert_eq!(
            restart_needed(&before, &plugins_dir),
            vec![
                "`listen` changed: takes effect at the next restart".to_string(),
                "`plugins.dir` changed: takes effect at the next restart".to_string(),
                "`plugins.watch` changed: takes effect at the next restart".to_string(),
            ]
        );
    }
}
