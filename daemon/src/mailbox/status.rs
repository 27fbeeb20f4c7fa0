//! Each mailbox's state as `settled plugins`, `/v1/plugins` and `/metrics` show it.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use crate::engine::MailBatchSummary;

/// The state of every configured mailbox, by connector name.
#[derive(Debug, Clone, Default)]
pub struct Mailboxes(Arc<Mutex<BTreeMap<String, MailboxStatus>>>);

/// One mailbox's state.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct MailboxStatus {
    /// The connector instance that owns it.
    pub connector: String,
    /// `imap` or `maildir`.
    pub kind: String,
    /// `imap://user@host:port` or the Maildir folder.
    pub target: String,
    /// `connecting`, `connected`, `idle` (IMAP IDLE), `polling`, `backing_off`, `watching` (Maildir) or `stopped`.
    pub state: String,
    /// The last connection or processing error, kept until the next success.
    pub last_error: Option<String>,
    /// Per IMAP folder: its UIDVALIDITY and the last UID committed.
    pub folders: BTreeMap<String, FolderCursor>,
    /// Messages whose records were committed.
    pub seen: u64,
    /// Messages recognised as processed before.
    pub duplicates: u64,
    /// Messages the plugin declined.
    pub not_mine: u64,
    /// Messages recorded as failed.
    pub failed: u64,
    /// The newest failure, `location: reason`.
    pub last_failure: Option<String>,
    /// Connection attempts that failed or connections that broke.
    pub reconnects: u64,
}

/// An IMAP folder's committed position.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct FolderCursor {
    /// The folder's UIDVALIDITY.
    pub uid_validity: u32,
    /// The highest UID whose message is committed.
    pub last_uid: u32,
}

impl Mailboxes {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, MailboxStatus>> {
        // Plain counters: a panic while holding the lock cannot leave them inconsistent in a harmful way.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a mailbox.
    pub fn add(&self, connector: &str, kind: &str, target: String) {
        self.lock().insert(
            connector.to_string(),
            MailboxStatus {
                connector: connector.to_string(),
                kind: kind.to_string(),
                target,
                state: "connecting".into(),
                ..MailboxStatus::default()
            },
        );
    }

    /// Change a mailbox's state; a state other than `backing_off` clears the last error.
    pub fn set_state(&self, connector: &str, state: &str) {
        if let Some(s) = self.lock().get_mut(connector) {
            s.state = state.to_string();
            if state != "backing_off" && state != "connecting" {
                s.last_error = None;
            }
        }
    }

    /// The connection failed or broke: back off, showing why.
    pub fn backing_off(&self, connector: &str, error: &str) {
        if let Some(s) = self.lock().get_mut(connector) {
            s.state = "backing_off".into();
            s.last_error = Some(error.to_string());
            s.reconnects += 1;
        }
    }

    /// A folder's committed cursor.
    pub fn folder(&self, connector: &str, folder: &str, cursor: FolderCursor) {
        if let Some(s) = self.lock().get_mut(connector) {
            s.folders.insert(folder.to_string(), cursor);
        }
    }

    /// Count a committed batch.
    pub fn committed(&self, connector: &str, batch: &MailBatchSummary) {
        if let Some(s) = self.lock().get_mut(connector) {
            s.seen += batch.new;
            s.duplicates += batch.duplicates;
            s.not_mine += batch.not_mine;
            s.failed += batch.failed.len() as u64;
            if let Some((location, reason)) = batch.failed.last() {
                s.last_failure = Some(format!("{location}: {reason}"));
            }
        }
    }

    /// Every mailbox, by connector name.
    pub fn snapshot(&self) -> Vec<MailboxStatus> {
        self.lock().values().cloned().collect()
    }

    /// Prometheus lines for `/metrics`.
    pub fn render_metrics(&self, out: &mut String) {
        let all = self.snapshot();
        if all.is_empty() {
            return;
        }
        crate::api::metrics::family(
            out,
            "settled_mailbox_messages_total",
            "counter",
            "Mailbox messages processed, by outcome.",
        );
        for m in &all {
            for (outcome, n) in [
                ("new", m.seen),
                ("duplicate", m.duplicates),
                ("not_mine", m.not_mine),
                ("failed", m.failed),
            ] {
                let _ = writeln!(
                    out,
                    "settled_mailbox_messages_total{{connector=\"{}\",outcome=\"{outcome}\"}} {n}",
                    m.connector
                );
            }
        }
        crate::api::metrics::family(
            out,
            "settled_mailbox_reconnects_total",
            "counter",
            "Failed or broken mailbox connections.",
        );
        for m in &all {
            let _ = writeln!(
                out,
                "settled_mailbox_reconnects_total{{connector=\"{}\"}} {}",
                m.connector, m.reconnects
            );
        }
        crate::api::metrics::family(
            out,
            "settled_mailbox_up",
            "gauge",
            "1 while a mailbox is connected (or a Maildir watched), 0 while backing off.",
        );
        for m in &all {
            let up = u8::from(!matches!(
                m.state.as_str(),
                "backing_off" | "connecting" | "stopped"
            ));
            let _ = writeln!(
                out,
                "settled_mailbox_up{{connector=\"{}\"}} {up}",
                m.connector
            );
        }
    }
}
