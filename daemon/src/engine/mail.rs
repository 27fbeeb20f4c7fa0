//! Messages from a mailbox: each one's records, its dedupe key and the folder cursor in one write set, so a crash
//! between fetch and commit re-reads the message and never skips it, and a message read twice creates nothing twice.

use serde::Serialize;
use settled_plugin_api::Record;

use super::ingest::{ingest_one, ImportSummary};
use super::{Engine, EngineResult};

/// One message as the mailbox transport hands it over, after the plugin has seen it.
#[derive(Debug, Clone)]
pub struct MailMessage {
    /// Dedupe key within the connector: the Message-ID, else a content hash.
    pub key: String,
    /// Where it came from, for failures and the audit log: `INBOX uid 17`, `new/1700000000.M1.host`.
    pub location: String,
    /// What the plugin made of it.
    pub verdict: MailVerdict,
}

/// What became of one message.
#[derive(Debug, Clone)]
pub enum MailVerdict {
    /// Records to commit.
    Records(Vec<Record>),
    /// The plugin said "not mine" (an auto-reply, a bounce, someone else's mail).
    NotMine,
    /// Not parsed or refused, with the reason; recorded once and never retried.
    Failed(String),
}

/// What one committed batch of messages did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct MailBatchSummary {
    /// Messages whose records were committed.
    pub new: u64,
    /// Messages recognised as already processed (same Message-ID or content).
    pub duplicates: u64,
    /// Messages the plugin declined.
    pub not_mine: u64,
    /// Messages recorded as failed, with where and why.
    pub failed: Vec<(String, String)>,
    /// The records' own summary (leads created, merged, payments matched, ...).
    pub records: ImportSummary,
}

impl Engine {
    /// Commit a batch of messages and, with them, the folder cursor `(source, value)` that covers them: one write set,
    /// durable before this returns. A message whose key was committed before is skipped (counted as a duplicate).
    pub async fn ingest_mail(
        &self,
        connector: &str,
        plugin: &str,
        cursor: Option<(&str, serde_json::Value)>,
        messages: Vec<MailMessage>,
    ) -> EngineResult<MailBatchSummary> {
        let actor = format!("connector:{connector}");
        let mut out = MailBatchSummary {
            records: ImportSummary {
                plugin: connector.to_string(),
                ..ImportSummary::default()
            },
            ..MailBatchSummary::default()
        };
        self.write(|tx| {
            for message in messages {
                let seen_key = format!("mail:{connector}:{}", message.key);
                if tx.seen(&seen_key)?.is_some() {
                    out.duplicates += 1;
                    continue;
                }
                // What the message produced, or why it failed (a failure is recorded once, never retried).
                let outcome = match message.verdict {
                    MailVerdict::Records(records) => {
                        let failed_before = out.records.failed.len();
                        let ids_before = out.records.ids.len();
                        out.records.records_read += records.len() as u64;
                        for (index, record) in (1..).zip(records) {
                            // A record the engine refuses fails its mail; it must not fail the batch.
                            if let Some(failure) = super::refusal(index, &record) {
                                out.records.failed.push(failure);
                                continue;
                            }
                            ingest_one(tx, plugin, &actor, record, &mut out.records)?;
                        }
                        let refused: Vec<String> = out.records.failed[failed_before..]
                            .iter()
                            .map(|f| match &f.field {
                                Some(field) => {
                                    format!("record {} ({field}): {}", f.record, f.reason)
                                }
                                None => format!("record {}: {}", f.record, f.reason),
                            })
                            .collect();
                        if refused.is_empty() {
                            out.new += 1;
                            Ok(serde_json::json!({"ids": out.records.ids[ids_before..]}))
                        } else {
                            Err(format!("records refused: {}", refused.join("; ")))
                        }
                    }
                    MailVerdict::NotMine => {
                        out.not_mine += 1;
                        Ok(serde_json::json!({"not_mine": true}))
                    }
                    MailVerdict::Failed(reason) => Err(reason),
                };
                let produced = match outcome {
                    Ok(produced) => produced,
                    Err(reason) => {
                        mail_failed(
                            tx,
                            &actor,
                            connector,
                            &message.location,
                            &message.key,
                            &reason,
                        );
                        let produced = serde_json::json!({"failed": reason});
                        out.failed.push((message.location, reason));
                        produced
                    }
                };
                tx.ws.seen(&seen_key, &produced);
            }
            if let Some((source, value)) = &cursor {
                tx.ws.cursor(source, value);
            }
            Ok(())
        })
        .await?;
        Ok(out)
    }

    /// A mailbox folder's committed cursor.
    pub fn mail_cursor(&self, source: &str) -> EngineResult<Option<serde_json::Value>> {
        Ok(self.store().cursor(source)?)
    }
}

fn mail_failed(
    tx: &mut super::Tx<'_>,
    actor: &str,
    connector: &str,
    location: &str,
    key: &str,
    reason: &str,
) {
    tx.event(
        actor,
        "mail.failed",
        "mailbox",
        connector,
        serde_json::json!({"location": location, "message": key, "reason": reason}),
        false,
    );
}
