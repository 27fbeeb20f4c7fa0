//! The record of file uploads (`POST /v1/imports`): one `import` entity per upload, written before its records are
//! committed and updated in the same write set as each chunk of them, so after a crash it says how far the import got.
//! The spooled upload it names is the journal that lets a restart finish it (`api::intake::resume_imports`).

use std::ops::Add;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Engine, EngineResult, ImportSummary, Tx};

/// Where an import is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportStatus {
    /// Being committed.
    Running,
    /// Interrupted by a stop and being finished again after the restart.
    Resumed,
    /// Every record committed and durable.
    Finished,
    /// The file was refused (or could not be finished); `error` says why.
    Failed,
}

/// What an import did so far, counted like [`ImportSummary`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportCounts {
    /// Records committed (read from the file and ingested).
    pub records_read: u64,
    /// New records.
    pub new: u64,
    /// Records recognised as ingested before (by an earlier import).
    pub duplicates: u64,
    /// Payments matched automatically.
    pub matched: u64,
    /// Matched payments that left an invoice partially paid.
    pub partially_matched: u64,
    /// Payments sent to the review queue.
    pub review: u64,
    /// Entries that settle nothing by design.
    pub ignored: u64,
    /// Reversals, refunds and chargebacks.
    pub reversed: u64,
    /// Records refused.
    pub failed: u64,
}

impl From<&ImportSummary> for ImportCounts {
    fn from(s: &ImportSummary) -> ImportCounts {
        ImportCounts {
            records_read: s.records_read,
            new: s.new,
            duplicates: s.duplicates,
            matched: s.matched.values().sum(),
            partially_matched: s.partially_matched,
            review: s.review,
            ignored: s.ignored,
            reversed: s.reversed,
            failed: s.failed.len() as u64,
        }
    }
}

impl Add for ImportCounts {
    type Output = ImportCounts;
    fn add(self, o: ImportCounts) -> ImportCounts {
        ImportCounts {
            records_read: self.records_read + o.records_read,
            new: self.new + o.new,
            duplicates: self.duplicates + o.duplicates,
            matched: self.matched + o.matched,
            partially_matched: self.partially_matched + o.partially_matched,
            review: self.review + o.review,
            ignored: self.ignored + o.ignored,
            reversed: self.reversed + o.reversed,
            failed: self.failed + o.failed,
        }
    }
}

/// One upload and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Import {
    /// Id, `imp_<seq>`.
    pub id: String,
    /// The file's name as uploaded.
    pub file: String,
    /// The connector instance asked for (`?plugin=`), else the one that claimed the file once known.
    #[serde(default)]
    pub connector: Option<String>,
    /// Where it is.
    pub status: ImportStatus,
    /// Counts of the records committed so far; final once `finished`.
    pub counts: ImportCounts,
    /// How many times a restart resumed it.
    #[serde(default)]
    pub resumed: u32,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// The spooled upload (a file name in `<data_dir>/spool`) while the import is unfinished.
    #[serde(default)]
    pub spool: Option<String>,
    /// When the upload was received.
    pub created_at: DateTime<Utc>,
    /// When it finished or failed.
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
}

/// An import's record carried through an ingestion run: rewritten with the run's counts in every chunk's write set.
pub struct ImportJournal {
    import: Import,
    /// Counts committed by earlier attempts.
    base: ImportCounts,
    /// Records at the start of the file that earlier attempts committed: ingested again (they dedupe) but not counted.
    replay: u64,
}

impl ImportJournal {
    /// Journal a run of `import` whose records come from `connector`.
    pub fn new(import: &Import, connector: &str) -> ImportJournal {
        let mut import = import.clone();
        import.connector = Some(connector.to_string());
        ImportJournal {
            base: import.counts,
            replay: import.counts.records_read,
            import,
        }
    }

    /// How many of the next `n` records earlier attempts committed already.
    pub(super) fn take_replay(&mut self, n: usize) -> usize {
        let replayed = self.replay.min(n as u64);
        self.replay -= replayed;
        replayed as usize
    }

    /// Write the import's progress into the chunk's write set.
    pub(super) fn record(&mut self, tx: &mut Tx<'_>, run: &ImportSummary) {
        self.import.counts = self.base + ImportCounts::from(run);
        tx.put("import", &self.import.id, &self.import);
    }
}

impl Engine {
    /// Record an upload spooled to `spool`, before any of its records is committed.
    pub async fn import_started(
        &self,
        file: &str,
        connector: Option<&str>,
        spool: &str,
    ) -> EngineResult<Import> {
        self.write(|tx| {
            let import = Import {
                id: tx.new_id("import", "imp")?,
                file: file.to_string(),
                connector: connector.map(str::to_string),
                status: ImportStatus::Running,
                counts: ImportCounts::default(),
                resumed: 0,
                error: None,
                spool: Some(spool.to_string()),
                created_at: tx.now,
                finished_at: None,
            };
            tx.put("import", &import.id, &import);
            tx.event(
                "api",
                "import.started",
                "import",
                &import.id,
                serde_json::json!({"file": import.file, "connector": import.connector}),
                false,
            );
            Ok(import)
        })
        .await
    }

    /// A restart takes an interrupted import up again.
    pub async fn import_resumed(&self, id: &str) -> EngineResult<Import> {
        self.write(|tx| {
            let mut import: Import = tx.get("import", id)?;
            import.status = ImportStatus::Resumed;
            import.resumed += 1;
            tx.put("import", id, &import);
            tx.event(
                "daemon",
                "import.resumed",
                "import",
                id,
                serde_json::json!({"committed_before": import.counts.records_read}),
                false,
            );
            Ok(import)
        })
        .await
    }

    /// Every record is committed and durable: the import is finished with these counts.
    pub async fn import_finished(&self, id: &str, counts: ImportCounts) -> EngineResult<Import> {
        self.write(|tx| {
            let mut import: Import = tx.get("import", id)?;
            import.status = ImportStatus::Finished;
            import.counts = counts;
            import.spool = None;
            import.finished_at = Some(tx.now);
            tx.put("import", id, &import);
            tx.event(
                "daemon",
                "import.finished",
                "import",
                id,
                serde_json::json!({"counts": counts}),
                false,
            );
            Ok(import)
        })
        .await
    }

    /// The import stops here; `error` says why.
    pub async fn import_failed(&self, id: &str, error: &str) -> EngineResult<Import> {
        self.write(|tx| {
            let mut import: Import = tx.get("import", id)?;
            import.status = ImportStatus::Failed;
            import.error = Some(error.to_string());
            import.spool = None;
            import.finished_at = Some(tx.now);
            tx.put("import", id, &import);
            tx.event(
                "daemon",
                "import.failed",
                "import",
                id,
                serde_json::json!({"error": error}),
                false,
            );
            Ok(import)
        })
        .await
    }

    /// Imports a stop interrupted (running or resumed), oldest first.
    pub fn unfinished_imports(&self) -> EngineResult<Vec<Import>> {
        let mut out = Vec::new();
        for import in self.store().scan::<Import>("import") {
            let import = import?;
            if matches!(import.status, ImportStatus::Running | ImportStatus::Resumed) {
                out.push(import);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;
    use settled_plugin_api::{PaymentRecord, Record};

    use super::*;
    use crate::config::Config;
    use crate::engine::SystemClock;
    use crate::store::{Store, StoreOptions};

    fn records(n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| {
                Record::Payment(PaymentRecord::new(
                    format!("r{i}"),
                    Decimal::new(100 + i as i64, 2),
                    "EUR",
                ))
            })
            .collect()
    }

    #[tokio::test]
    async fn an_interrupted_import_resumed_from_the_start_counts_every_record_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let engine = Engine::new(store, Config::default(), Box::new(SystemClock)).unwrap();
        let import = engine
            .import_started("big.csv", None, "upload-1")
            .await
            .unwrap();
        // The first attempt commits 300 of 600 records, then the process stops.
        let mut first = engine
            .begin_ingest("bank", "bank-csv", Some("big.csv"))
            .with_journal(ImportJournal::new(&import, "bank"));
        first
            .add(records(600).into_iter().take(300).collect())
            .unwrap();
        first.finish().await.unwrap();
        let interrupted = engine.unfinished_imports().unwrap();
        assert_eq!(interrupted.len(), 1);
        assert_eq!(interrupted[0].connector.as_deref(), Some("bank"));
        assert_eq!(
            (
                interrupted[0].counts.records_read,
                interrupted[0].counts.new
            ),
            (300, 300)
        );
        // The restart reads the whole file again.
        let resumed = engine.import_resumed(&import.id).await.unwrap();
        assert_eq!(
            (resumed.status, resumed.resumed),
            (ImportStatus::Resumed, 1)
        );
        let mut second = engine
            .begin_ingest("bank", "bank-csv", Some("big.csv"))
            .with_journal(ImportJournal::new(&resumed, "bank"));
        second.add(records(600)).unwrap();
        let summary = second.finish().await.unwrap();
        assert_eq!(
            (summary.records_read, summary.new, summary.duplicates),
            (300, 300, 0)
        );
        let done = engine
            .import_finished(&import.id, resumed.counts + ImportCounts::from(&summary))
            .await
            .unwrap();
        assert_eq!(done.status, ImportStatus::Finished);
        assert_eq!(
            (
                done.counts.records_read,
                done.counts.new,
                done.counts.duplicates
            ),
            (600, 600, 0)
        );
        assert_eq!(done.spool, None);
        assert!(engine.unfinished_imports().unwrap().is_empty());
        assert_eq!(engine.store().count("payment"), 600);
    }
}
