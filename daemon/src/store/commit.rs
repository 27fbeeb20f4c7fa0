//! Group commit: many writers, one flush.
//!
//! Every applied batch takes a sequence number. A writer that needs durability and finds no flush running starts one:
//! it flushes everything written so far. Writers that find a flush running wait for it to end (all woken at once), and
//! those it did not cover start the next one, so writers that queued behind one flush are all covered by the next.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::StoreResult;

pub(super) struct GroupCommit {
    db: sled::Db,
    written: AtomicU64,
    /// The highest sequence number a finished flush covers; every end of a flush (done, failed or abandoned) is
    /// announced through it, so waiters look again.
    flushed: tokio::sync::watch::Sender<u64>,
    flushing: AtomicBool,
}

/// The running flush of one writer: when it ends in any way (including the writer's future being dropped), the flag is
/// cleared and the waiters are woken, so that one of them takes over if they are not covered.
struct Flushing<'a>(&'a GroupCommit);

impl Drop for Flushing<'_> {
    fn drop(&mut self) {
        self.0.flushing.store(false, Ordering::SeqCst);
        self.0.flushed.send_modify(|_| {});
    }
}

impl GroupCommit {
    pub(super) fn new(db: sled::Db) -> Self {
        GroupCommit {
            db,
            written: AtomicU64::new(0),
            flushed: tokio::sync::watch::Sender::new(0),
            flushing: AtomicBool::new(false),
        }
    }

    /// Call right after a batch was applied; returns its sequence number.
    pub(super) fn written(&self) -> u64 {
        self.written.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub(super) async fn wait(&self, seq: u64) -> StoreResult<()> {
        let mut flushed = self.flushed.subscribe();
        loop {
            if *flushed.borrow_and_update() >= seq {
                return Ok(());
            }
            if self
                .flushing
                .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                let _flushing = Flushing(self);
                // A flush may have ended between the look above and taking the flag.
                if *self.flushed.borrow() >= seq {
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
                self.flushed
                    .send_modify(|flushed| *flushed = (*flushed).max(target));
                return Ok(());
            }
            // The sender lives as long as `self`, so `changed` only returns once a flush ended.
            let _ = flushed.changed().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn group(dir: &tempfile::TempDir) -> Arc<GroupCommit> {
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .unwrap_or_else(|e| panic!("{e}"));
        Arc::new(GroupCommit::new(db))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sixty_four_concurrent_writers_are_all_covered() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let commit = group(&dir);
        let waits: Vec<_> = (0..64)
            .map(|n| {
                let commit = Arc::clone(&commit);
                tokio::spawn(async move {
                    commit
                        .db
                        .insert(format!("k{n}"), b"v".as_slice())
                        .unwrap_or_else(|e| panic!("{e}"));
                    let seq = commit.written();
                    commit.wait(seq).await
                })
            })
            .collect();
        for wait in waits {
            assert!(matches!(wait.await, Ok(Ok(()))));
        }
        assert_eq!(*commit.flushed.borrow(), 64);
        assert!(!commit.flushing.load(Ordering::SeqCst));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flush_whose_writer_went_away_is_taken_over_by_the_next_writer() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let commit = group(&dir);
        let seq = commit.written();
        // A writer took the flag and went away without flushing (its future dropped mid-flush, as when a client hangs
        // up mid-request): only its guard's drop says so. Set up by hand, so no race decides what is tested.
        assert!(commit
            .flushing
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok());
        let abandoned = Flushing(&commit);
        let next = {
            let commit = Arc::clone(&commit);
            tokio::spawn(async move { commit.wait(seq).await })
        };
        tokio::task::yield_now().await;
        assert_eq!(
            *commit.flushed.borrow(),
            0,
            "nothing flushed while the flag is held"
        );
        drop(abandoned);
        // A hang guard, not a timing assertion: without the take-over this would wait forever.
        let next = tokio::time::timeout(Duration::from_secs(30), next).await;
        assert!(matches!(next, Ok(Ok(Ok(())))), "{next:?}");
        assert!(!commit.flushing.load(Ordering::SeqCst));
        assert!(*commit.flushed.borrow() >= seq);
    }
}
