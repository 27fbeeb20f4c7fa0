//! Writes of the outbox dispatcher's delivery state (`d/<sink>/...` rows), so that it too goes through the one writer.

use super::{Engine, EngineResult};

impl Engine {
    /// Apply outbox delivery rows in one durable write: `Some(value)` puts a row, `None` removes it. Keys outside
    /// `d/` are ignored: the dispatcher owns no other rows.
    pub async fn write_outbox_rows(
        &self,
        rows: Vec<(String, Option<serde_json::Value>)>,
    ) -> EngineResult<()> {
        self.write(|tx| {
            for (key, value) in rows.into_iter().filter(|(k, _)| k.starts_with("d/")) {
                match value {
                    Some(value) => tx.ws.put_raw(&key, &value),
                    None => tx.ws.remove_raw(&key),
                }
            }
            Ok(())
        })
        .await
    }
}
