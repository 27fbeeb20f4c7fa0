//! The outbox dispatcher: delivers outbox events (audit events flagged `outbox`) to sink connectors.
//!
//! Each sink instance has its own cursor over the log, advanced in the store only after the sink said `done`, so a
//! restart or a crash resumes where delivery stood: at least once, with the event id as the sink's idempotency key.
//! Events of one entity (an invoice, a payment) go out in order; an entity whose event is waiting for a retry holds
//! back only its own later events, and each sink runs on its own task. Failed attempts are retried on a schedule
//! (`[outbox] retry_schedule_ms`) or after the peer's `Retry-After`; after the last one the event becomes a dead
//! letter with every attempt kept, until `retry`. A dead letter no longer holds back its entity's later events.
//!
//! The dispatcher wakes when a durable write carried an outbox event ([`Engine::watch_durable_events`]) and never
//! delivers an event that is not yet durable.

pub(crate) mod deliver;
mod rows;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::{Engine, EngineError};
use crate::plugin_host::PluginHost;
use crate::store::Event;
use rows::{next_wait, push_attempt, SinkRows};
pub use rows::{Attempt, DeadLetter, Retry};

/// Events looked at past a sink's cursor in one pass (bounds the work while one entity holds the cursor back).
const SCAN_LIMIT: usize = 10_000;
/// Deliveries started at once per sink and pass, at most one per entity.
const WINDOW: usize = 64;
/// Pause after the store failed during a pass, or while a sink's plugin is not running.
const STORE_RETRY: Duration = Duration::from_secs(5);
/// The cursor is written when an outcome is, or when it moved this far over events the sink does not take.
const CURSOR_WRITE_STRIDE: u64 = 1024;

/// Why an outbox command was refused.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// No sink connector has this name.
    #[error("no sink connector named `{0}`")]
    UnknownSink(String),
    /// `retry` of an event that is not a dead letter of the sink.
    #[error("event {event} is not a dead letter of sink `{sink}`")]
    NotDead {
        /// The sink.
        sink: String,
        /// The event id asked for.
        event: u64,
    },
    /// `replay --from 0`.
    #[error("replay needs an event id of 1 or more")]
    BadFrom,
    /// The store failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// One sink as `settled outbox` and `/v1/outbox` show it.
#[derive(Debug, Clone, Serialize)]
pub struct SinkStatus {
    /// Connector instance name.
    pub name: String,
    /// Plugin name.
    pub plugin: String,
    /// Event types it receives; `None` = every outbox event.
    pub events: Option<Vec<String>>,
    /// `paused`, `retrying` (some events wait for a retry), `error` (the last attempt failed for good, or dead letters
    /// wait for a person), or `ok`.
    pub state: &'static str,
    /// Every outbox event up to this id is settled for the sink.
    pub cursor: u64,
    /// Events for the sink not delivered yet (including retrying ones).
    pub pending: usize,
    /// Age in seconds of the oldest pending event (0 when none).
    pub lag_seconds: i64,
    /// Events waiting for their next attempt.
    pub retrying: Vec<RetryStatus>,
    /// Events given up on; `settled outbox retry` sends one again.
    pub dead_letters: Vec<DeadLetter>,
    /// Deliveries since the daemon started.
    pub delivered_total: u64,
    /// Failed attempts since the daemon started.
    pub failed_attempts_total: u64,
    /// The last failed attempt's error, cleared by the next delivery.
    pub last_error: Option<String>,
    /// When the last delivery succeeded.
    pub last_delivered_at: Option<DateTime<Utc>>,
}

/// A retrying event in [`SinkStatus`].
#[derive(Debug, Clone, Serialize)]
pub struct RetryStatus {
    /// The outbox event id.
    pub event_id: u64,
    /// Event type.
    #[serde(rename = "type")]
    pub kind: String,
    /// `<entity>/<id>`.
    pub entity: String,
    /// Attempts so far.
    pub attempts: usize,
    /// Not before.
    pub next_attempt_at: DateTime<Utc>,
    /// The last attempt's HTTP status, if the peer answered.
    pub last_status: Option<u16>,
    /// The last attempt's error.
    pub last_error: Option<String>,
}

/// Delivers outbox events to every sink connector.
pub struct Dispatcher {
    engine: Engine,
    host: Arc<PluginHost>,
    http: reqwest::Client,
    schedule_ms: Vec<u64>,
    /// `[outbox] max_response_mib` in bytes.
    max_body: usize,
    sinks: BTreeMap<String, Arc<Sink>>,
}

struct Sink {
    name: String,
    plugin: String,
    events: Option<Vec<String>>,
    /// Held while a pass commits and by commands, so their row changes do not interleave.
    lock: tokio::sync::Mutex<()>,
    /// Bumped by `replay`: a pass that started before drops its results (they are delivered again).
    epoch: AtomicU64,
    wake: Notify,
    delivered: AtomicU64,
    failed_attempts: AtomicU64,
    live: Mutex<Live>,
    /// What `status` counted last time, so that it reads only the events that came since.
    backlog: Mutex<Backlog>,
}

/// The sink's events above its cursor (id, time), kept up to date by [`Sink::backlog`]: `settled outbox`, `/v1/outbox`
/// and `/metrics` read only the events that came since the last look and drop what the cursor passed, instead of
/// going over the whole backlog each time.
#[derive(Debug, Default)]
struct Backlog {
    /// The replay epoch it was built in (a replay moves the cursor back: start over).
    epoch: u64,
    /// Events up to this id have been looked at.
    seen_to: u64,
    events: std::collections::VecDeque<(u64, DateTime<Utc>)>,
}

#[derive(Debug, Default, Clone)]
struct Live {
    last_error: Option<String>,
    last_delivered_at: Option<DateTime<Utc>>,
}

enum Wake {
    /// More work is ready.
    Now,
    /// Nothing to do until a new event, a command, or this time (the next retry).
    Idle(Option<DateTime<Utc>>),
}

struct Work {
    event: Event,
    entity: String,
    retry: Option<Retry>,
}

impl Sink {
    fn wants(&self, kind: &str) -> bool {
        self.events
            .as_ref()
            .is_none_or(|kinds| kinds.iter().any(|k| k == kind))
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Events not delivered yet (retrying ones included) and the time of the oldest, reading only the events that
    /// came since the last call.
    fn backlog(
        &self,
        store: &crate::store::Store,
        rows: &SinkRows,
        horizon: u64,
    ) -> Result<(usize, Option<DateTime<Utc>>), EngineError> {
        let mut backlog = self
            .backlog
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let epoch = self.epoch.load(Ordering::SeqCst);
        if backlog.epoch != epoch {
            *backlog = Backlog {
                epoch,
                seen_to: rows.cursor,
                events: std::collections::VecDeque::new(),
            };
        }
        while backlog
            .events
            .front()
            .is_some_and(|(id, _)| *id <= rows.cursor)
        {
            backlog.events.pop_front();
        }
        if backlog.seen_to < rows.cursor {
            backlog.seen_to = rows.cursor;
        }
        if backlog.seen_to < horizon {
            for event in store.events_from(backlog.seen_to)? {
                let event = event?;
                if event.id > horizon {
                    break;
                }
                backlog.seen_to = event.id;
                if event.outbox && self.wants(&event.kind) {
                    backlog.events.push_back((event.id, event.at));
                }
            }
        }
        let seen_to = backlog.seen_to;
        let settled_above = rows
            .done
            .range(rows.cursor + 1..)
            .take_while(|id| **id <= seen_to)
            .count()
            + rows
                .dead
                .range(rows.cursor + 1..)
                .take_while(|(id, _)| **id <= seen_to)
                .count();
        // Dead letters sent again by `retry` may sit below the cursor.
        let retried_below = rows.retry.range(..=rows.cursor).count();
        let pending = backlog.events.len().saturating_sub(settled_above) + retried_below;
        let oldest = backlog
            .events
            .iter()
            .find(|(id, _)| !rows.settled(*id))
            .map(|(_, at)| *at);
        Ok((pending, oldest))
    }
}

fn entity_of(event: &Event) -> String {
    format!("{}/{}", event.entity, event.entity_id)
}

/// The event as a sink plugin sees it.
fn event_json(event: &Event) -> serde_json::Value {
    serde_json::json!({
        "id": event.id, "type": event.kind, "at": event.at,
        "entity": event.entity, "entity_id": event.entity_id, "data": event.data,
    })
}

impl Dispatcher {
    /// The dispatcher for every configured connector whose plugin has the `sink` role or that names `events`.
    pub fn new(engine: Engine, host: Arc<PluginHost>) -> anyhow::Result<Dispatcher> {
        let config = engine.config().clone();
        let roles: BTreeMap<String, bool> = host
            .instances()
            .into_iter()
            .map(|i| (i.name, i.roles.contains(&settled_plugin_api::Role::Sink)))
            .collect();
        let sinks = config
            .connectors
            .iter()
            .filter(|c| c.events.is_some() || roles.get(&c.name).copied().unwrap_or(false))
            .map(|c| {
                let sink = Sink {
                    name: c.name.clone(),
                    plugin: c.plugin.clone(),
                    events: c.events.clone(),
                    lock: tokio::sync::Mutex::new(()),
                    epoch: AtomicU64::new(0),
                    wake: Notify::new(),
                    delivered: AtomicU64::new(0),
                    failed_attempts: AtomicU64::new(0),
                    live: Mutex::new(Live::default()),
                    backlog: Mutex::new(Backlog::default()),
                };
                (c.name.clone(), Arc::new(sink))
            })
            .collect();
        let http = deliver::http_client(config.outbox.request_timeout_ms)?;
        Ok(Dispatcher {
            engine,
            host,
            http,
            schedule_ms: config.outbox.retry_schedule_ms.clone(),
            max_body: usize::try_from(config.outbox.max_response_mib.saturating_mul(1024 * 1024))
                .unwrap_or(usize::MAX),
            sinks,
        })
    }

    /// Start one delivery task per sink on `tasks`; they stop when `cancel` fires (an attempt cut short is
    /// delivered again after the restart).
    pub fn spawn(self: &Arc<Self>, tasks: &TaskTracker, cancel: &CancellationToken) {
        for sink in self.sinks.values() {
            tracing::info!(sink = %sink.name, plugin = %sink.plugin, "outbox delivery started");
            tasks.spawn(Arc::clone(self).run_sink(Arc::clone(sink), cancel.clone()));
        }
    }

    async fn run_sink(self: Arc<Self>, sink: Arc<Sink>, cancel: CancellationToken) {
        let mut durable = self.engine.watch_durable_events();
        loop {
            let wake = tokio::select! {
                _ = cancel.cancelled() => return,
                result = self.pass(&sink, &durable) => result,
            };
            let until = match wake {
                Ok(Wake::Now) => {
                    tokio::task::yield_now().await;
                    continue;
                }
                Ok(Wake::Idle(until)) => until,
                Err(e) => {
                    tracing::warn!(sink = %sink.name, error = %e, "outbox pass failed; trying again shortly");
                    Some(Utc::now() + STORE_RETRY)
                }
            };
            let sleep = match until {
                Some(at) => (at - Utc::now()).to_std().unwrap_or(Duration::ZERO),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = durable.changed() => {
                    if changed.is_err() {
                        cancel.cancelled().await;
                        return;
                    }
                }
                _ = sink.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// One round: pick what is due (at most one event per entity), attempt it, record the outcomes.
    async fn pass(
        &self,
        sink: &Arc<Sink>,
        durable: &watch::Receiver<u64>,
    ) -> Result<Wake, EngineError> {
        let store = self.engine.store();
        let epoch = sink.epoch.load(Ordering::SeqCst);
        let horizon = *durable.borrow();
        let rows = SinkRows::load(store, &sink.name)?;
        if rows.paused {
            return Ok(Wake::Idle(None));
        }
        let now = Utc::now();
        let mut busy = HashSet::new();
        let mut work = Vec::new();
        let mut next_due: Option<DateTime<Utc>> = None;
        for retry in rows.retry.values() {
            if !busy.insert(retry.entity.clone()) {
                continue;
            }
            if retry.next_attempt_at > now {
                next_due =
                    Some(next_due.map_or(retry.next_attempt_at, |d| d.min(retry.next_attempt_at)));
                continue;
            }
            if work.len() >= WINDOW {
                break;
            }
            let Some(event) = store
                .events_after(retry.event_id.saturating_sub(1), 1)?
                .into_iter()
                .find(|e| e.id == retry.event_id)
            else {
                continue;
            };
            work.push(Work {
                entity: retry.entity.clone(),
                event,
                retry: Some(retry.clone()),
            });
        }
        for event in store.events_from(rows.cursor)?.take(SCAN_LIMIT) {
            let event = event?;
            if event.id > horizon || work.len() >= WINDOW {
                break;
            }
            if !event.outbox
                || !sink.wants(&event.kind)
                || rows.settled(event.id)
                || rows.retry.contains_key(&event.id)
            {
                continue;
            }
            let entity = entity_of(&event);
            if busy.insert(entity.clone()) {
                work.push(Work {
                    entity,
                    event,
                    retry: None,
                });
            }
        }
        let mut running = tokio::task::JoinSet::new();
        for item in work {
            let host = Arc::clone(&self.host);
            let http = self.http.clone();
            let name = sink.name.clone();
            let max_body = self.max_body;
            running.spawn(async move {
                let attempt_no = item.retry.as_ref().map_or(1, |r| {
                    u32::try_from(r.attempts.len())
                        .unwrap_or(u32::MAX)
                        .saturating_add(1)
                });
                let at = Utc::now();
                let attempted = deliver::attempt(
                    &host,
                    &http,
                    &name,
                    event_json(&item.event),
                    attempt_no,
                    max_body,
                )
                .await;
                (item, at, attempted)
            });
        }
        let mut results = Vec::new();
        while let Some(joined) = running.join_next().await {
            match joined {
                Ok(result) => results.push(result),
                Err(e) => {
                    tracing::error!(sink = %sink.name, error = %e, "outbox delivery task failed; please report")
                }
            }
        }
        let unavailable = results
            .iter()
            .any(|(_, _, a)| matches!(a.outcome, deliver::Outcome::Unavailable { .. }));
        let worked = results
            .iter()
            .any(|(_, _, a)| !matches!(a.outcome, deliver::Outcome::Unavailable { .. }));
        let advanced = self.commit(sink, epoch, horizon, results).await?;
        if unavailable {
            let later = Utc::now() + STORE_RETRY;
            return Ok(Wake::Idle(Some(next_due.map_or(later, |d| d.min(later)))));
        }
        Ok(if worked || advanced {
            Wake::Now
        } else {
            Wake::Idle(next_due)
        })
    }

    /// Record a pass's outcomes and move the cursor over every settled event. True when the cursor moved.
    async fn commit(
        &self,
        sink: &Sink,
        epoch: u64,
        horizon: u64,
        results: Vec<(Work, DateTime<Utc>, deliver::Attempted)>,
    ) -> Result<bool, EngineError> {
        let store = self.engine.store();
        let _guard = sink.lock.lock().await;
        if sink.epoch.load(Ordering::SeqCst) != epoch {
            return Ok(true);
        }
        let mut rows = SinkRows::load(store, &sink.name)?;
        let mut changes: Vec<(String, Option<serde_json::Value>)> = Vec::new();
        let name = &sink.name;
        for (work, at, attempted) in results {
            let id = work.event.id;
            let mut attempts = work
                .retry
                .as_ref()
                .map(|r| r.attempts.clone())
                .unwrap_or_default();
            let failures = work.retry.as_ref().map_or(0, |r| r.failures);
            let (error, after, final_failure) = match attempted.outcome {
                deliver::Outcome::Done => {
                    sink.delivered.fetch_add(1, Ordering::Relaxed);
                    let mut live = sink.live();
                    live.last_error = None;
                    live.last_delivered_at = Some(Utc::now());
                    drop(live);
                    if rows.retry.remove(&id).is_some() {
                        changes.push((rows::retry_key(name, id), None));
                    }
                    rows.done.insert(id);
                    changes.push((rows::done_key(name, id), Some(serde_json::json!(true))));
                    continue;
                }
                deliver::Outcome::Retry { error, after } => (error, after, false),
                deliver::Outcome::Failed { error } => (error, None, true),
                deliver::Outcome::Unavailable { error } => {
                    tracing::warn!(sink = %name, event = id, %error, "outbox sink unavailable; its events wait");
                    sink.live().last_error = Some(error);
                    continue;
                }
            };
            sink.failed_attempts.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(sink = %name, event = id, r#type = %work.event.kind, status = ?attempted.status, %error, "outbox delivery failed");
            sink.live().last_error = Some(format!("event {id}: {error}"));
            push_attempt(
                &mut attempts,
                Attempt {
                    at,
                    status: attempted.status,
                    error: Some(error),
                },
            );
            let failures = failures.saturating_add(1);
            let wait = if final_failure {
                None
            } else {
                next_wait(&self.schedule_ms, failures, after)
            };
            match wait {
                Some(wait) => {
                    let retry = Retry {
                        event_id: id,
                        kind: work.event.kind.clone(),
                        entity: work.entity,
                        failures,
                        next_attempt_at: Utc::now()
                            + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX),
                        attempts,
                    };
                    changes.push((rows::retry_key(name, id), serde_json::to_value(&retry).ok()));
                    rows.retry.insert(id, retry);
                }
                None => {
                    let dead = DeadLetter {
                        event_id: id,
                        kind: work.event.kind.clone(),
                        entity: work.entity,
                        dead_at: Utc::now(),
                        attempts,
                    };
                    tracing::error!(sink = %name, event = id, r#type = %dead.kind, "outbox event is a dead letter; `settled outbox retry {name} {id}` sends it again");
                    if rows.retry.remove(&id).is_some() {
                        changes.push((rows::retry_key(name, id), None));
                    }
                    changes.push((rows::dead_key(name, id), serde_json::to_value(&dead).ok()));
                    rows.dead.insert(id, dead);
                }
            }
        }
        let mut cursor = rows.cursor;
        for event in store.events_from(rows.cursor)?.take(SCAN_LIMIT) {
            let event = event?;
            if event.id > horizon {
                break;
            }
            let settled = !event.outbox
                || !sink.wants(&event.kind)
                || rows.done.contains(&event.id)
                || rows.dead.contains_key(&event.id);
            if !settled || rows.retry.contains_key(&event.id) {
                break;
            }
            cursor = event.id;
        }
        for id in rows.done.range(..=cursor) {
            changes.push((rows::done_key(name, *id), None));
        }
        // Moving over events the sink does not take is not worth a write each time: the next pass finds them again.
        let moved = cursor != rows.cursor
            && (!changes.is_empty() || cursor - rows.cursor >= CURSOR_WRITE_STRIDE);
        if moved {
            changes.push((rows::cursor_key(name), Some(serde_json::json!(cursor))));
        }
        if !changes.is_empty() {
            self.engine.write_outbox_rows(changes).await?;
        }
        Ok(moved)
    }

    fn sink(&self, name: &str) -> Result<&Arc<Sink>, OutboxError> {
        self.sinks
            .get(name)
            .ok_or_else(|| OutboxError::UnknownSink(name.to_string()))
    }

    /// Stop delivering to a sink (an attempt under way finishes); events keep queueing.
    pub async fn pause(&self, name: &str) -> Result<(), OutboxError> {
        let sink = self.sink(name)?;
        let _guard = sink.lock.lock().await;
        self.engine
            .write_outbox_rows(vec![(
                rows::paused_key(name),
                Some(serde_json::json!(true)),
            )])
            .await?;
        tracing::info!(sink = %name, "outbox sink paused");
        Ok(())
    }

    /// Deliver to a paused sink again, from where it stood.
    pub async fn resume(&self, name: &str) -> Result<(), OutboxError> {
        let sink = self.sink(name)?;
        {
            let _guard = sink.lock.lock().await;
            self.engine
                .write_outbox_rows(vec![(rows::paused_key(name), None)])
                .await?;
        }
        tracing::info!(sink = %name, "outbox sink resumed");
        sink.wake.notify_one();
        Ok(())
    }

    /// Send a dead letter again, now, with a fresh retry schedule (its attempts are kept).
    pub async fn retry(&self, name: &str, event: u64) -> Result<(), OutboxError> {
        let sink = self.sink(name)?;
        {
            let _guard = sink.lock.lock().await;
            let store = self.engine.store();
            let rows = SinkRows::load(store, name).map_err(EngineError::from)?;
            let Some(dead) = rows.dead.get(&event) else {
                return Err(OutboxError::NotDead {
                    sink: name.to_string(),
                    event,
                });
            };
            let retry = Retry {
                event_id: event,
                kind: dead.kind.clone(),
                entity: dead.entity.clone(),
                failures: 0,
                next_attempt_at: Utc::now(),
                attempts: dead.attempts.clone(),
            };
            self.engine
                .write_outbox_rows(vec![
                    (rows::dead_key(name, event), None),
                    (
                        rows::retry_key(name, event),
                        serde_json::to_value(&retry).ok(),
                    ),
                ])
                .await?;
        }
        tracing::info!(sink = %name, event, "outbox dead letter queued again");
        sink.wake.notify_one();
        Ok(())
    }

    /// Deliver every event from `from` on again (dead letters among them included); retries under way continue.
    pub async fn replay(&self, name: &str, from: u64) -> Result<(), OutboxError> {
        if from == 0 {
            return Err(OutboxError::BadFrom);
        }
        let sink = self.sink(name)?;
        {
            let _guard = sink.lock.lock().await;
            sink.epoch.fetch_add(1, Ordering::SeqCst);
            let rows = SinkRows::load(self.engine.store(), name).map_err(EngineError::from)?;
            let mut changes = vec![(rows::cursor_key(name), Some(serde_json::json!(from - 1)))];
            changes.extend(rows.done.iter().map(|id| (rows::done_key(name, *id), None)));
            changes.extend(
                rows.dead
                    .range(from..)
                    .map(|(id, _)| (rows::dead_key(name, *id), None)),
            );
            self.engine.write_outbox_rows(changes).await?;
        }
        tracing::info!(sink = %name, from, "outbox replay requested");
        sink.wake.notify_one();
        Ok(())
    }

    /// Every sink's state, pending work, retries and dead letters.
    pub fn status(&self) -> Result<Vec<SinkStatus>, OutboxError> {
        let store = self.engine.store();
        let horizon = *self.engine.watch_durable_events().borrow();
        let now = Utc::now();
        let mut out = Vec::new();
        for sink in self.sinks.values() {
            let rows = SinkRows::load(store, &sink.name).map_err(EngineError::from)?;
            let (pending, oldest) = sink.backlog(store, &rows, horizon)?;
            let live = sink.live().clone();
            let retrying: Vec<RetryStatus> = rows
                .retry
                .values()
                .map(|r| RetryStatus {
                    event_id: r.event_id,
                    kind: r.kind.clone(),
                    entity: r.entity.clone(),
                    attempts: r.attempts.len(),
                    next_attempt_at: r.next_attempt_at,
                    last_status: r.attempts.last().and_then(|a| a.status),
                    last_error: r.attempts.last().and_then(|a| a.error.clone()),
                })
                .collect();
            let state = if rows.paused {
                "paused"
            } else if !retrying.is_empty() {
                "retrying"
            } else if live.last_error.is_some() || !rows.dead.is_empty() {
                "error"
            } else {
                "ok"
            };
            out.push(SinkStatus {
                name: sink.name.clone(),
                plugin: sink.plugin.clone(),
                events: sink.events.clone(),
                state,
                cursor: rows.cursor,
                pending,
                lag_seconds: oldest.map_or(0, |at| (now - at).num_seconds().max(0)),
                retrying,
                dead_letters: rows.dead.into_values().collect(),
                delivered_total: sink.delivered.load(Ordering::Relaxed),
                failed_attempts_total: sink.failed_attempts.load(Ordering::Relaxed),
                last_error: live.last_error,
                last_delivered_at: live.last_delivered_at,
            });
        }
        Ok(out)
    }
}
