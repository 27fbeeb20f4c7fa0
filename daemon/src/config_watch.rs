//! Config reload while running: the config file is re-read when it changes (checked every [`POLL`], applied once it
//! stayed the same for one more check, so a half-written file is not read) and on SIGHUP.
//!
//! What a reload applies: the `[[connector]]` tables and `[plugins] defaults` ([`PluginHost::apply_connectors`]).
//! Other keys are compared with the file the daemon started with and listed as needing a restart. A file that
//! does not parse or validate is refused whole: the running config stays, and the error is logged and kept in
//! [`PluginHost::last_reload`] (shown by `/v1/plugins` and `/healthz`).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::mailbox::MailboxConfig;
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
    // Mailboxes and outbox delivery are set up from what the daemon started with.
    let started = Started::of(
        &Config::load(&file)
            .map(|c| c.connectors)
            .unwrap_or_default(),
        &host,
    );
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
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
        let report = reload(&file, (&started_with, &started), &host, trigger).await;
        host.record_reload(report);
    }
}

async fn reload(
    file: &Path,
    (started_with, started): (&toml::Table, &Started),
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
    report
        .restart_needed
        .extend(started.differences(&Started::of(&config.connectors, host)));
    for note in &report.restart_needed {
        tracing::warn!(note = %note, "config reload: takes effect at the next restart");
    }
    tracing::info!(trigger, changes = report.changes.len(), "config reloaded");
    report
}

/// The transports set up once at start: connectors with a mailbox (and its settings), and sinks (with their `events`).
#[derive(Debug, Default)]
struct Started {
    mailboxes: BTreeMap<String, Option<MailboxConfig>>,
    sinks: BTreeMap<String, Option<Vec<String>>>,
}

impl Started {
    fn of(connectors: &[ConnectorConfig], host: &PluginHost) -> Started {
        let sink_roles: BTreeSet<String> = host
            .instances()
            .into_iter()
            .filter(|i| i.roles.contains(&settled_plugin_api::Role::Sink))
            .map(|i| i.name)
            .collect();
        Started {
            mailboxes: connectors
                .iter()
                .filter(|c| c.mailbox.is_some())
                .map(|c| (c.name.clone(), c.mailbox.clone()))
                .collect(),
            sinks: connectors
                .iter()
                .filter(|c| c.events.is_some() || sink_roles.contains(&c.name))
                .map(|c| (c.name.clone(), c.events.clone()))
                .collect(),
        }
    }

    /// What differs in `now`, as notes of what waits for a restart.
    fn differences(&self, now: &Started) -> Vec<String> {
        let mut out = Vec::new();
        changed("mailbox", &self.mailboxes, &now.mailboxes, &mut out);
        changed("outbox delivery", &self.sinks, &now.sinks, &mut out);
        out
    }
}

fn changed<T: PartialEq>(
    what: &str,
    before: &BTreeMap<String, T>,
    after: &BTreeMap<String, T>,
    out: &mut Vec<String>,
) {
    let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for name in names {
        if before.get(name) != after.get(name) {
            out.push(format!(
                "connector `{name}`: its {what} keeps the config of the last start until the next restart"
            ));
        }
    }
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
                        out.push(format!(
                            "`plugins.{k}` changed: takes effect at the next restart"
                        ));
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
