//! The delivery state of one sink as stored rows, and the retry schedule.
//!
//! Rows of sink `S` (values JSON):
//! - `d/S/cursor`       every outbox event up to this id is settled for `S` (delivered, ignored, filtered out or dead)
//! - `d/S/done/<id>`    an event above the cursor delivered out of order (another entity's event is still retrying)
//! - `d/S/retry/<id>`   a [`Retry`]: an event whose delivery failed and waits for its next attempt
//! - `d/S/dead/<id>`    a [`DeadLetter`]: an event that failed for good, with every attempt
//! - `d/S/paused`       present while the sink is paused

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreResult};

/// Attempts kept per event; older ones are dropped first (a dead letter retried many times).
const MAX_ATTEMPTS_KEPT: usize = 32;

/// One attempt at delivering an event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Attempt {
    /// When it started.
    pub at: DateTime<Utc>,
    /// The last HTTP status the peer answered, if any answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why it failed; `None` when delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An event waiting for its next attempt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Retry {
    /// The outbox event id.
    pub event_id: u64,
    /// Event type.
    #[serde(rename = "type")]
    pub kind: String,
    /// `<entity>/<id>`: events of one entity are delivered in order.
    pub entity: String,
    /// Failed attempts since the schedule last started over (a retried dead letter starts over).
    pub failures: u32,
    /// Not before.
    pub next_attempt_at: DateTime<Utc>,
    /// Every attempt so far, oldest first.
    pub attempts: Vec<Attempt>,
}

/// An event given up on, kept until a person retries it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeadLetter {
    /// The outbox event id.
    pub event_id: u64,
    /// Event type.
    #[serde(rename = "type")]
    pub kind: String,
    /// `<entity>/<id>`.
    pub entity: String,
    /// When it was given up on.
    pub dead_at: DateTime<Utc>,
    /// Every attempt, oldest first.
    pub attempts: Vec<Attempt>,
}

/// Everything stored for one sink.
#[derive(Debug, Default)]
pub struct SinkRows {
    pub cursor: u64,
    pub paused: bool,
    pub done: BTreeSet<u64>,
    pub retry: BTreeMap<u64, Retry>,
    pub dead: BTreeMap<u64, DeadLetter>,
}

pub fn prefix(sink: &str) -> String {
    format!("d/{sink}/")
}

pub fn cursor_key(sink: &str) -> String {
    format!("d/{sink}/cursor")
}

pub fn paused_key(sink: &str) -> String {
    format!("d/{sink}/paused")
}

pub fn done_key(sink: &str, id: u64) -> String {
    format!("d/{sink}/done/{id:020}")
}

pub fn retry_key(sink: &str, id: u64) -> String {
    format!("d/{sink}/retry/{id:020}")
}

pub fn dead_key(sink: &str, id: u64) -> String {
    format!("d/{sink}/dead/{id:020}")
}

impl SinkRows {
    /// Read a sink's rows.
    pub fn load(store: &Store, sink: &str) -> StoreResult<SinkRows> {
        let mut rows = SinkRows::default();
        let prefix = prefix(sink);
        for (key, value) in store.scan_raw::<serde_json::Value>(&prefix)? {
            let rest = &key[prefix.len()..];
            let corrupt = |source| crate::store::StoreError::Corrupt {
                key: key.clone(),
                source,
            };
            let id_of = |tail: &str| tail.parse::<u64>().ok();
            if rest == "cursor" {
                rows.cursor = serde_json::from_value(value).map_err(corrupt)?;
            } else if rest == "paused" {
                rows.paused = true;
            } else if let Some(id) = rest.strip_prefix("done/").and_then(id_of) {
                rows.done.insert(id);
            } else if let Some(id) = rest.strip_prefix("retry/").and_then(id_of) {
                rows.retry
                    .insert(id, serde_json::from_value(value).map_err(corrupt)?);
            } else if let Some(id) = rest.strip_prefix("dead/").and_then(id_of) {
                rows.dead
                    .insert(id, serde_json::from_value(value).map_err(corrupt)?);
            }
        }
        Ok(rows)
    }

    /// Is this event settled for the sink (delivered, or given up on)?
    pub fn settled(&self, id: u64) -> bool {
        id <= self.cursor || self.done.contains(&id) || self.dead.contains_key(&id)
    }
}

/// Keep the newest attempts only.
pub fn push_attempt(attempts: &mut Vec<Attempt>, attempt: Attempt) {
    attempts.push(attempt);
    if attempts.len() > MAX_ATTEMPTS_KEPT {
        let extra = attempts.len() - MAX_ATTEMPTS_KEPT;
        attempts.drain(..extra);
    }
}

/// The wait before the retry after `failures` failed attempts, with up to 10% jitter either way, or `None` when the
/// schedule is exhausted (the event becomes a dead letter). A peer's `Retry-After` replaces the scheduled wait.
pub fn next_wait(
    schedule_ms: &[u64],
    failures: u32,
    retry_after: Option<Duration>,
) -> Option<Duration> {
    let scheduled = *schedule_ms.get(usize::try_from(failures).ok()?.checked_sub(1)?)?;
    if let Some(after) = retry_after {
        return Some(after);
    }
    let jitter_percent = rand::thread_rng().gen_range(90..=110u64);
    Some(Duration::from_millis(
        scheduled.saturating_mul(jitter_percent) / 100,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_followed_with_bounded_jitter_then_exhausted() {
        let schedule = [1000, 60_000];
        for _ in 0..50 {
            let first = next_wait(&schedule, 1, None).unwrap().as_millis();
            assert!((900..=1100).contains(&first), "{first}");
            let second = next_wait(&schedule, 2, None).unwrap().as_millis();
            assert!((54_000..=66_000).contains(&second), "{second}");
        }
        assert_eq!(next_wait(&schedule, 3, None), None);
        assert_eq!(next_wait(&[], 1, None), None);
    }

    #[test]
    fn retry_after_replaces_the_scheduled_wait_but_not_the_attempt_limit() {
        let schedule = [1000];
        assert_eq!(
            next_wait(&schedule, 1, Some(Duration::from_secs(7))),
            Some(Duration::from_secs(7))
        );
        assert_eq!(next_wait(&schedule, 2, Some(Duration::from_secs(7))), None);
    }

    #[test]
    fn only_the_newest_attempts_are_kept() {
        let mut attempts = Vec::new();
        for n in 0..40u16 {
            push_attempt(
                &mut attempts,
                Attempt {
                    at: Utc::now(),
                    status: Some(n),
                    error: None,
                },
            );
        }
        assert_eq!(attempts.len(), MAX_ATTEMPTS_KEPT);
        assert_eq!(attempts[0].status, Some(8));
    }
}
