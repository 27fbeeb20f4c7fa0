//! Group commit: many writers, one flush.
//!
//! Every applied batch takes a sequence number. A writer that needs durability waits for the flush lock; whoever holds it
//! flushes everything written so far, so writers that queued behind one flush are all covered by the next one.

use std::sync::atomic::{AtomicU64, Ordering};

use super::StoreResult;

pub(super) struct GroupCommit {
    db: sled::Db,
    written: AtomicU64,
    flushed: AtomicU64,
    flush_lock: tokio::sync::Mutex<()>,
}

impl GroupCommit {
    pub(super) fn new(db: sled::Db) -> Self {
        GroupCommit {
            db,
            written: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            flush_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Call right after a batch was applied; returns its sequence number.
    pub(super) fn written(&self) -> u64 {
        self.written.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub(super) async fn wait(&self, seq: u64) -> StoreResult<()> {
        if self.flushed.load(Ordering::SeqCst) >= seq {
            return Ok(());
        }
        let _guard = self.flush_lock.lock().await;
        if self.flushed.load(Ordering::SeqCst) >= seq {
            return Ok(());
        }
        let target = self.written.load(Ordering::SeqCst);
        let db = self.db.clone();
        match tokio::task::spawn_blocking(move || db.flush()).await {
            Ok(result) => {
                result?;
            }
            Err(join) => {
                return Err(super::StoreError::Io {
                    context: "flushing the store".into(),
                    source: std::io::Error::other(join.to_string()),
                })
            }
        }
        self.flushed.fetch_max(target, Ordering::SeqCst);
        Ok(())
    }
}
