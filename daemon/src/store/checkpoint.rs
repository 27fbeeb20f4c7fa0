//! Checkpoints: the overlay of deferred writes written back to sled while writers go on.
//!
//! A checkpoint takes a snapshot of the overlay under the engine's writer lock (so it covers exactly the events up
//! to one position), then writes it to sled in key order without that lock, on its own thread when a bulk import
//! triggers it: on two cores the import's writer and its checkpoint run side by side. Three rules keep it exact:
//!
//! - One checkpoint at a time ([`Store::checkpoint_turn`]). The next starts once as many writes were deferred since the
//!   last snapshot as the limit says ([`Store::deferred_since_snapshot`]; the overlay's size would not do, as what
//!   changed while a checkpoint wrote stays in it); a writer that finds the overlay twice over the limit while one runs
//!   waits for it, which bounds the overlay's memory.
//! - A writer that writes a key through (a reversal rewriting an invoice the overlay holds) records the key under the
//!   same lock the checkpoint holds while it filters and applies a batch, and the checkpoint skips recorded keys: its
//!   older value never lands after the newer one.
//! - When it is done, the checkpoint drops from the overlay only the entries still holding the value it wrote; later
//!   deferred writes stay, and the journal after its position rebuilds them after a crash. An overlay cleared
//!   meanwhile (the store reopened) is left alone.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex, MutexGuard};

use super::{
    encode, Deferred, Store, StoreError, StoreResult, ABORT_CHECKPOINT_ENV, CHECKPOINT_KEY,
};

/// Keys per sled batch of a checkpoint. sled 0.34 applies a batch under a lock that excludes every other read and
/// write of the store, so a checkpoint's batches are kept short: the import writing beside it waits less each time.
const CHECKPOINT_BATCH: usize = 128;

/// The store's checkpoint state.
#[derive(Default)]
pub(super) struct Checkpoints {
    /// Whether a checkpoint holds the turn.
    running: Mutex<bool>,
    /// Signalled when the turn is given back.
    done: Condvar,
    /// Keys written through since the running checkpoint's snapshot; its batches skip them.
    through: Mutex<HashSet<String>>,
}

impl Checkpoints {
    fn lock_running(&self) -> MutexGuard<'_, bool> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn lock_through(&self) -> MutexGuard<'_, HashSet<String>> {
        self.through.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The right to write a checkpoint; given back when dropped (also by a panicking checkpoint thread).
pub struct CheckpointTurn {
    store: Store,
}

impl Drop for CheckpointTurn {
    fn drop(&mut self) {
        *self.store.inner.checkpoints.lock_running() = false;
        self.store.inner.checkpoints.done.notify_all();
    }
}

/// The overlay as one checkpoint writes it back.
pub struct CheckpointSnapshot {
    turn: CheckpointTurn,
    position: u64,
    epoch: u64,
    entries: Vec<(String, Deferred)>,
}

impl CheckpointSnapshot {
    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds no key.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The newest audit event it covers.
    pub fn position(&self) -> u64 {
        self.position
    }
}

impl Store {
    /// Take the checkpoint turn, waiting for a running checkpoint. A caller holding the engine's writer lock may wait,
    /// as long as no holder of the turn waits for that lock: the engine takes the turn only under the writer lock (and
    /// `Engine::checkpoint` waits for a running checkpoint before it takes the writer lock), and a checkpoint's thread
    /// never takes it.
    pub fn checkpoint_turn(&self) -> CheckpointTurn {
        let checkpoints = &self.inner.checkpoints;
        let mut running = checkpoints.lock_running();
        while *running {
            running = checkpoints
                .done
                .wait(running)
                .unwrap_or_else(|p| p.into_inner());
        }
        *running = true;
        CheckpointTurn {
            store: self.clone(),
        }
    }

    /// Take the checkpoint turn unless a checkpoint runs.
    pub fn try_checkpoint_turn(&self) -> Option<CheckpointTurn> {
        let mut running = self.inner.checkpoints.lock_running();
        if *running {
            return None;
        }
        *running = true;
        Some(CheckpointTurn {
            store: self.clone(),
        })
    }

    /// Wait until no checkpoint runs.
    pub fn wait_for_checkpoint(&self) {
        drop(self.checkpoint_turn());
    }

    /// Copy the overlay for a checkpoint covering the events up to `position`. The caller holds the engine's writer
    /// lock, so the overlay is exactly the deferred writes up to `position`.
    pub fn snapshot_overlay(&self, turn: CheckpointTurn, position: u64) -> CheckpointSnapshot {
        self.inner.checkpoints.lock_through().clear();
        let overlay = self.read_overlay();
        self.inner
            .deferred_since_snapshot
            .store(0, Ordering::SeqCst);
        CheckpointSnapshot {
            turn,
            position,
            epoch: self.inner.overlay_epoch.load(Ordering::SeqCst),
            entries: overlay
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// Write a snapshot back to sled in key order, flush, then note its position in `m/checkpoint` and drop from the
    /// overlay what it wrote. A crash halfway leaves the previous `m/checkpoint`: the engine replays the journal after
    /// it, and its replay is idempotent (an allocation already listed on the invoice is not counted again). Returns the
    /// keys written.
    ///
    /// Test-only: with `SETTLED_TEST_ABORT_CHECKPOINT_AFTER=N` in the environment, the process aborts once N keys of
    /// a checkpoint are written and flushed (a checkpoint cut short by a crash).
    pub fn write_snapshot(&self, mut snapshot: CheckpointSnapshot) -> StoreResult<usize> {
        let open = self.open_handle()?;
        // Key order (the overlay is a hash map), sorted here rather than under the writer lock the snapshot was taken in.
        snapshot.entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let abort_after = std::env::var(ABORT_CHECKPOINT_ENV)
            .ok()
            .and_then(|n| n.parse::<usize>().ok());
        let fail = |source: sled::Error| {
            self.close(open.generation, &source);
            StoreError::WriteFailed {
                path: self.inner.path.clone(),
                source,
            }
        };
        let mut written = 0usize;
        for part in snapshot.entries.chunks(CHECKPOINT_BATCH) {
            let part = match abort_after {
                Some(n) => &part[..part.len().min(n.saturating_sub(written))],
                None => part,
            };
            // Stop when the store was closed (a writer's failure) or reopened since: the journal has everything.
            if self.open_handle()?.generation != open.generation {
                return Err(StoreError::Unavailable {
                    reason: "the store was reopened during a checkpoint".into(),
                });
            }
            // A patch goes over the value in sled, read here in key order. A writer that writes the key through
            // after this read records it first, and it is skipped below.
            let mut values = Vec::with_capacity(part.len());
            for (key, deferred) in part {
                let value = match deferred {
                    Deferred::Value(value) => {
                        // Read first (a shared lock), so sled has the key's page in its cache and the batch below,
                        // under its exclusive lock, does not read it from the log file: in a large store most of a
                        // checkpoint's keys are on pages the cache no longer holds.
                        open.tree.get(key.as_bytes()).map_err(fail)?;
                        value.clone()
                    }
                    patch => match open.tree.get(key.as_bytes()).map_err(fail)? {
                        None => continue,
                        base => patch.over(key, base)?,
                    },
                };
                values.push((key, value));
            }
            {
                let through = self.inner.checkpoints.lock_through();
                let mut batch = sled::Batch::default();
                for (key, value) in values {
                    if through.contains(key) {
                        continue;
                    }
                    match value {
                        Some(bytes) => batch.insert(key.as_bytes(), bytes),
                        None => batch.remove(key.as_bytes()),
                    }
                }
                open.tree.apply_batch(batch).map_err(fail)?;
            }
            written += part.len();
            if abort_after.is_some_and(|n| written >= n) {
                let _ = open.db.flush();
                tracing::error!(
                    written,
                    "{ABORT_CHECKPOINT_ENV}: aborting in the middle of a checkpoint"
                );
                std::process::abort();
            }
        }
        // The marker must not reach the disk before what it covers.
        open.db.flush().map_err(fail)?;
        open.tree
            .insert(CHECKPOINT_KEY, encode(&snapshot.position))
            .map_err(fail)?;
        let mut overlay = self.write_overlay();
        if self.inner.overlay_epoch.load(Ordering::SeqCst) == snapshot.epoch {
            for (key, value) in &snapshot.entries {
                if overlay.get(key) == Some(value) {
                    overlay.remove(key);
                }
            }
        }
        drop(overlay);
        drop(snapshot.turn);
        Ok(written)
    }
}
