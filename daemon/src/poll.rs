//! The `poll` runner: every connector whose plugin has the `poll` role is polled on its own schedule
//! (`poll_every_secs`). One poll is a conversation like a sink's: the plugin returns the request to send from its
//! committed cursor (`poll_start`), the host performs it with the outbox's HTTP client and hands back the answer
//! (`poll_response`), and the records the plugin made of it are committed with the new cursor in one write set
//! ([`Engine::ingest_poll`]). A poll that says `more` is followed at once by the next one, up to [`MAX_PAGES`].
//! Anything that fails (the peer, the plugin, a record the engine refuses) commits nothing and is tried again at the
//! next tick, with the error shown in `settled plugins`, `/v1/plugins` and `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use settled_plugin_api::{PollResponse, PollStart, Record, Role};
use tokio_util::sync::CancellationToken;

use crate::api::AppState;
use crate::engine::Failure;
use crate::outbox::deliver;
use crate::plugin_host::PluginHost;

/// Seconds between two polls when the connector does not say.
pub const DEFAULT_EVERY_SECS: u64 = 60;
/// Pages one tick may read when the plugin keeps saying `more` (a bound on a plugin that never stops).
pub const MAX_PAGES: usize = 100;

/// Pages [`read_all`] may read (50 invoices a page with the `tryton` plugin's default: 100,000 invoices).
pub const READ_ALL_PAGES: usize = 2000;

/// The state of every poll connector, by connector name, and each connector's turn: one conversation with its
/// plugin at a time (the scheduled poll or a [`read_all`]), since a plugin keeps where a poll stands in its instance.
#[derive(Debug, Clone, Default)]
pub struct Pollers(
    Arc<Mutex<BTreeMap<String, PollStatus>>>,
    Arc<Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>>,
);

/// One poll connector as `settled plugins` and `/v1/plugins` show it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PollStatus {
    /// The connector instance.
    pub connector: String,
    /// Seconds between polls.
    pub every_secs: u64,
    /// `waiting` (for the next tick), `polling`, or `error` (the last poll failed; see `last_error`).
    pub state: String,
    /// The committed cursor, as the plugin wrote it.
    pub cursor: Option<String>,
    /// When the last poll started.
    pub last_poll_at: Option<DateTime<Utc>>,
    /// When a poll last committed.
    pub last_success_at: Option<DateTime<Utc>>,
    /// Why the last poll failed, kept until one succeeds.
    pub last_error: Option<String>,
    /// Pages committed.
    pub pages: u64,
    /// Records committed (new ones).
    pub records: u64,
    /// Records recognised as committed before.
    pub duplicates: u64,
    /// Polls that failed.
    pub failures: u64,
}

impl Pollers {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, PollStatus>> {
        // Plain counters: a panic while holding the lock cannot leave them inconsistent in a harmful way.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lock a conversation with `connector`'s poll holds.
    fn turn(&self, connector: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut turns = self.1.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(turns.entry(connector.to_string()).or_default())
    }

    fn update(&self, connector: &str, f: impl FnOnce(&mut PollStatus)) {
        if let Some(s) = self.lock().get_mut(connector) {
            f(s);
        }
    }

    /// Every poll connector, by name.
    pub fn snapshot(&self) -> Vec<PollStatus> {
        self.lock().values().cloned().collect()
    }

    /// Prometheus lines for `/metrics`.
    pub fn render_metrics(&self, out: &mut String) {
        let all = self.snapshot();
        if all.is_empty() {
            return;
        }
        type Value = fn(&PollStatus) -> u64;
        let families: [(&str, &str, &str, Value); 4] = [
            (
                "settled_poll_pages_total",
                "counter",
                "Poll pages committed per connector.",
                |s| s.pages,
            ),
            (
                "settled_poll_records_total",
                "counter",
                "New records committed from polls per connector.",
                |s| s.records,
            ),
            (
                "settled_poll_failures_total",
                "counter",
                "Polls that failed per connector.",
                |s| s.failures,
            ),
            (
                "settled_poll_last_success_timestamp_seconds",
                "gauge",
                "Unix time of the last poll that committed, per connector (0: none yet).",
                |s| {
                    s.last_success_at
                        .map_or(0, |t| u64::try_from(t.timestamp()).unwrap_or(0))
                },
            ),
        ];
        for (name, kind, help, value) in families {
            crate::api::metrics::family(out, name, kind, help);
            for s in &all {
                let _ = writeln!(out, "{name}{{connector=\"{}\"}} {}", s.connector, value(s));
            }
        }
    }
}

/// The HTTP client polls use and the largest answer handed to a plugin (`[outbox] max_response_mib` in bytes).
fn http(state: &AppState) -> Result<(reqwest::Client, usize), String> {
    let outbox = &state.engine.config().outbox;
    let max_body =
        usize::try_from(outbox.max_response_mib.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX);
    let http = deliver::http_client(outbox.request_timeout_ms).map_err(|e| e.to_string())?;
    Ok((http, max_body))
}

/// Read everything `connector`'s poll gives from the beginning (no cursor), page after page, committing nothing:
/// what the remote system has now, for `settled sync check`. Waits for the connector's turn, so it never mixes with
/// the scheduled poll's conversation.
pub async fn read_all(
    state: &AppState,
    host: &PluginHost,
    connector: &str,
) -> Result<Vec<Record>, String> {
    let (http, max_body) = http(state)?;
    let turn = state.metrics.pollers.turn(connector);
    let _turn = turn.lock().await;
    let mut cursor: Option<String> = None;
    let mut records = Vec::new();
    for _ in 0..READ_ALL_PAGES {
        let request = host
            .poll_start(
                connector,
                PollStart {
                    cursor: cursor.clone(),
                },
            )
            .await
            .map_err(|e| format!("plugin poll_start: {e}"))?;
        let response = deliver::perform(&http, &request, max_body).await?;
        let reply = host
            .poll_response(
                connector,
                PollResponse {
                    cursor: cursor.clone(),
                    response,
                },
            )
            .await
            .map_err(|e| format!("plugin poll_response: {e}"))?;
        records.extend(reply.records);
        if !reply.more {
            return Ok(records);
        }
        cursor = reply.cursor;
    }
    Err(format!(
        "the poll of `{connector}` still had more after {READ_ALL_PAGES} pages"
    ))
}

/// Poll every `poll` connector until `cancel` fires.
pub async fn run(state: AppState, host: Arc<PluginHost>, cancel: CancellationToken) {
    let (http, max_body) = match http(&state) {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "poll connectors not started");
            return;
        }
    };
    let polling: Vec<(String, String)> = host
        .instances()
        .into_iter()
        .filter(|i| i.roles.contains(&Role::Poll))
        .map(|i| (i.name, i.plugin))
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (connector, plugin) in polling {
        let every = state
            .engine
            .config()
            .connectors
            .iter()
            .find(|c| c.name == connector)
            .and_then(|c| c.poll_every_secs)
            .unwrap_or(DEFAULT_EVERY_SECS)
            .max(1);
        let cursor = state.engine.poll_cursor(&connector).ok().flatten();
        state.metrics.pollers.lock().insert(
            connector.clone(),
            PollStatus {
                connector: connector.clone(),
                every_secs: every,
                state: "waiting".into(),
                cursor,
                ..PollStatus::default()
            },
        );
        tracing::info!(%connector, %plugin, every_secs = every, "poll connector started");
        let poller = Poller {
            state: state.clone(),
            host: Arc::clone(&host),
            http: http.clone(),
            max_body,
            connector,
            plugin,
        };
        let cancel = cancel.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = poller.tick() => {}
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(every)) => {}
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "poll task ended abnormally");
        }
    }
}

struct Poller {
    state: AppState,
    host: Arc<PluginHost>,
    http: reqwest::Client,
    /// `[outbox] max_response_mib` in bytes: the largest answer handed to the plugin.
    max_body: usize,
    connector: String,
    plugin: String,
}

impl Poller {
    fn status(&self) -> &Pollers {
        &self.state.metrics.pollers
    }

    /// Poll until the plugin has no more pages (or [`MAX_PAGES`]); a failure ends the tick.
    async fn tick(&self) {
        for _ in 0..MAX_PAGES {
            self.status().update(&self.connector, |s| {
                s.state = "polling".into();
                s.last_poll_at = Some(Utc::now());
            });
            match self.page().await {
                Ok(more) => {
                    self.status().update(&self.connector, |s| {
                        s.state = "waiting".into();
                        s.last_error = None;
                        s.last_success_at = Some(Utc::now());
                    });
                    if !more {
                        return;
                    }
                }
                Err(error) => {
                    tracing::warn!(connector = %self.connector, %error, "poll failed; tried again at the next tick");
                    self.status().update(&self.connector, |s| {
                        s.state = "error".into();
                        s.failures += 1;
                        s.last_error = Some(error);
                    });
                    return;
                }
            }
        }
        tracing::warn!(connector = %self.connector, pages = MAX_PAGES, "poll still has more pages; the rest waits for the next tick");
    }

    /// One request and its commit. True when the plugin asks to be polled again at once.
    async fn page(&self) -> Result<bool, String> {
        let turn = self.status().turn(&self.connector);
        let _turn = turn.lock().await;
        let engine = &self.state.engine;
        let cursor = engine
            .poll_cursor(&self.connector)
            .map_err(|e| format!("reading the cursor: {e}"))?;
        let request = self
            .host
            .poll_start(
                &self.connector,
                PollStart {
                    cursor: cursor.clone(),
                },
            )
            .await
            .map_err(|e| format!("plugin poll_start: {e}"))?;
        let response = deliver::perform(&self.http, &request, self.max_body).await?;
        let reply = self
            .host
            .poll_response(
                &self.connector,
                PollResponse {
                    cursor: cursor.clone(),
                    response,
                },
            )
            .await
            .map_err(|e| format!("plugin poll_response: {e}"))?;
        let more = reply.more;
        let new_cursor = reply.cursor.clone();
        let summary = engine
            .ingest_poll(&self.connector, &self.plugin, reply.cursor, reply.records)
            .await
            .map_err(|e| format!("committing the poll: {e}"))?
            .map_err(|refused| {
                self.host
                    .count_refused(&self.connector, refused.len() as u64);
                format!(
                    "records refused, nothing committed: {}",
                    describe_refused(&refused)
                )
            })?;
        self.state
            .metrics
            .records_ingested
            .fetch_add(summary.new, std::sync::atomic::Ordering::Relaxed);
        self.status().update(&self.connector, |s| {
            s.pages += 1;
            s.records += summary.new;
            s.duplicates += summary.duplicates;
            if new_cursor.is_some() {
                s.cursor = new_cursor;
            }
        });
        Ok(more)
    }
}

fn describe_refused(refused: &[Failure]) -> String {
    refused
        .iter()
        .map(|f| {
            let at = f
                .location
                .as_deref()
                .map_or(format!("record {}", f.record), |l| {
                    format!("record {} ({l})", f.record)
                });
            match &f.field {
                Some(field) => format!("{at}, field {field}: {}", f.reason),
                None => format!("{at}: {}", f.reason),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}
