//! A page of records from a `poll` connector, committed together with the connector's new cursor in one write set:
//! a crash before the commit polls the same page again (its records dedupe), a crash after it starts from the new
//! cursor, so a poll never skips and never double-counts.

use settled_plugin_api::Record;

use super::ingest::{ingest_one, refusal, Failure, ImportSummary};
use super::{Engine, EngineResult};

/// The key under which a poll connector's cursor is stored (`c/poll:<connector>`).
pub fn poll_cursor_source(connector: &str) -> String {
    format!("poll:{connector}")
}

impl Engine {
    /// Commit one poll page: its records and the connector's new cursor, durable before this returns. When the engine
    /// refuses any record, nothing is committed (not the cursor either) and the refusals are returned as `Err`, so the
    /// same page is read again after the plugin or the peer's data is fixed.
    pub async fn ingest_poll(
        &self,
        connector: &str,
        plugin: &str,
        cursor: Option<String>,
        records: Vec<Record>,
    ) -> EngineResult<Result<ImportSummary, Vec<Failure>>> {
        let refused: Vec<Failure> = (1..)
            .zip(&records)
            .filter_map(|(index, record)| refusal(index, record))
            .collect();
        if !refused.is_empty() {
            return Ok(Err(refused));
        }
        let actor = format!("connector:{connector}");
        let mut summary = ImportSummary {
            plugin: connector.to_string(),
            records_read: records.len() as u64,
            ..ImportSummary::default()
        };
        let source = poll_cursor_source(connector);
        self.write(|tx| {
            for record in records {
                ingest_one(tx, plugin, &actor, record, &mut summary)?;
            }
            if let Some(cursor) = &cursor {
                tx.ws.cursor(&source, &serde_json::json!(cursor));
            }
            Ok(())
        })
        .await?;
        Ok(Ok(summary))
    }

    /// A poll connector's committed cursor.
    pub fn poll_cursor(&self, connector: &str) -> EngineResult<Option<String>> {
        Ok(self
            .store()
            .cursor(&poll_cursor_source(connector))?
            .and_then(|v| v.as_str().map(str::to_string)))
    }
}
