//! The engine: the only writer. Commands validate input, apply domain rules and write state, audit event and outbox rows
//! in one atomic write set; callers get an answer only once that write is durable.
//!
//! Concurrency: one writer lock serialises read-modify-write; flushes are shared between concurrent commands (group commit),
//! so throughput is bounded by CPU, not by fsyncs.

mod billing;
/// For `settled check`: the keys under which payments are noted for returns.
pub(crate) use billing::{paid_by_prefix, PAID_BY_SEEN};
mod external;
mod imports;
mod ingest;
mod journal;
mod leads;
mod mail;
mod outbox;
mod poll;
mod reversal;
mod sales;
mod views;

use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, NaiveDate, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::Config;
use crate::domain::numbering::SeriesPattern;
use crate::domain::DomainError;
use crate::reconcile::MatchIndex;
use crate::store::{CheckpointTurn, CommitTicket, Store, StoreError, WriteSet};

pub use billing::{IssueInput, PaymentInput};
pub use imports::{Import, ImportCounts, ImportJournal, ImportStatus};
pub use ingest::{refusal, Failure, ImportSummary, IngestOutcome, ReviewItem, ReviewStatus};
pub use leads::{ConvertInput, ConvertOutput};
pub use mail::{MailBatchSummary, MailMessage, MailVerdict};
pub use sales::{OrderCreate, QuoteCreate};
pub use views::*;

/// Why a command failed, split by who is at fault.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The caller: bad input or a transition the current state does not allow.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// The caller: no such entity.
    #[error("{entity} {id} not found")]
    NotFound {
        /// Entity kind.
        entity: &'static str,
        /// The id asked for.
        id: String,
    },
    /// The environment or us: the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Result alias for engine commands.
pub type EngineResult<T> = Result<T, EngineError>;

/// Where "now" comes from; tests and the demo move it.
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Number series parsed from the config.
pub(crate) struct Series {
    pub quote: SeriesPattern,
    pub order: SeriesPattern,
    pub invoice: SeriesPattern,
    pub credit_note: SeriesPattern,
}

/// The engine handle. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    config: Config,
    series: Series,
    clock: Box<dyn Clock>,
    state: Mutex<State>,
    /// The id of the newest audit event known to be durable; receivers are woken when a durable write carried an
    /// outbox event (the outbox dispatcher delivers nothing above it).
    durable_events: tokio::sync::watch::Sender<u64>,
    /// A write carried an outbox event and no durable wait announced it yet (bulk writes wait once, on their last ticket).
    outbox_unannounced: std::sync::atomic::AtomicBool,
}

/// In-memory state guarded by the writer lock.
pub(crate) struct State {
    /// Open invoices for reconciliation, kept in step with every invoice write.
    pub index: MatchIndex,
}

impl Engine {
    /// Build the engine over an open store; loads the reconciliation index from the open invoices.
    pub fn new(store: Store, config: Config, clock: Box<dyn Clock>) -> EngineResult<Engine> {
        let parse = |p: &str| SeriesPattern::parse(p).map_err(EngineError::Domain);
        let series = Series {
            quote: parse(&config.numbering.quote)?,
            order: parse(&config.numbering.order)?,
            invoice: parse(&config.numbering.invoice)?,
            credit_note: parse(&config.numbering.credit_note)?,
        };
        journal::replay(&store)?;
        let loading = std::time::Instant::now();
        let index = billing::load_index(&store, &config)?;
        tracing::info!(
            open_invoices = index.len(),
            ms = loading.elapsed().as_millis(),
            "loaded the matching index"
        );
        billing::backfill_invoice_refs(&store, &index)?;
        let (durable_events, _) = tokio::sync::watch::channel(store.last_event_id());
        Ok(Engine {
            inner: Arc::new(Inner {
                store,
                config,
                series,
                clock,
                state: Mutex::new(State { index }),
                durable_events,
                outbox_unannounced: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// The store (read access for views and the API).
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Now, from the engine's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    /// Today (UTC), from the engine's clock.
    pub fn today(&self) -> NaiveDate {
        self.now().date_naive()
    }

    /// Read an entity or fail with NotFound.
    pub fn get<T: DeserializeOwned>(&self, kind: &'static str, id: &str) -> EngineResult<T> {
        self.inner
            .store
            .get(kind, id)?
            .ok_or_else(|| EngineError::NotFound {
                entity: kind,
                id: id.to_string(),
            })
    }

    /// Run `f` under the writer lock with a fresh write set, apply it, and wait until it is durable.
    pub(crate) async fn write<T>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> EngineResult<T>,
    ) -> EngineResult<T> {
        let (out, ticket) = self.write_nowait(f)?;
        if let Some(ticket) = ticket {
            self.durable(&ticket).await?;
        }
        Ok(out)
    }

    /// Follow the durable end of the audit log: the receiver's value is the newest durable event id, and it is
    /// marked changed when a durable write carried an outbox event (the outbox dispatcher's wake-up).
    pub fn watch_durable_events(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.durable_events.subscribe()
    }

    /// Like [`Engine::write`] but without waiting for durability (bulk paths wait once at the end).
    pub(crate) fn write_nowait<T>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> EngineResult<T>,
    ) -> EngineResult<(T, Option<CommitTicket>)> {
        // While the store is closed, answer at once instead of queueing behind a reopening attempt.
        if let Some(failure) = self.inner.store.failure() {
            return Err(StoreError::Unavailable {
                reason: failure.describe(),
            }
            .into());
        }
        let mut state = self.lock_state();
        let now = self.now();
        let mut tx = Tx {
            engine: self,
            store: &self.inner.store,
            ws: self.inner.store.begin(),
            now,
            today: now.date_naive(),
            state: &mut state,
            index_undo: Vec::new(),
            index_reload: false,
            defer_invoices: false,
        };
        let result = f(&mut tx);
        let Tx {
            ws,
            index_undo,
            index_reload,
            ..
        } = tx;
        let out = match result {
            Ok(out) => out,
            Err(e) => {
                let e = match e {
                    EngineError::Store(e) => EngineError::Store(self.inner.store.closed_by(e)),
                    other => other,
                };
                self.forget(&mut state, index_undo, index_reload);
                return Err(e);
            }
        };
        if ws.is_empty() {
            return Ok((out, None));
        }
        match self.inner.store.apply(ws) {
            Ok(ticket) => {
                self.checkpoint_if_full();
                if ticket.outbox {
                    self.inner
                        .outbox_unannounced
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                }
                Ok((out, Some(ticket)))
            }
            Err(e) => {
                self.forget(&mut state, index_undo, index_reload);
                Err(e.into())
            }
        }
    }

    /// Wait until a ticket from [`Engine::write_nowait`] is durable. If it never will be (the store closed), the
    /// in-memory index forgets every change since the last flush: it is emptied now and rebuilt from disk by
    /// [`Engine::recover_store`].
    pub(crate) async fn durable(&self, ticket: &CommitTicket) -> EngineResult<()> {
        let result = self.inner.store.durable(ticket).await;
        if result.is_err() {
            let mut state = self.lock_state();
            if self.inner.store.failure().is_some() {
                state.index = empty_index(&self.inner.config);
            }
        }
        result?;
        // A flush covers everything applied before it, and event ids are taken in apply order, so every event up to
        // this write's last one is durable now.
        if let Some(&last) = ticket.event_ids.last() {
            let announce = self
                .inner
                .outbox_unannounced
                .swap(false, std::sync::atomic::Ordering::SeqCst);
            self.inner.durable_events.send_if_modified(|newest| {
                *newest = (*newest).max(last);
                announce
            });
        }
        Ok(())
    }

    /// Reopen a store that closed after a failed write, and rebuild the in-memory index from what is on disk.
    /// Returns `false` when the store was open.
    pub fn recover_store(&self) -> EngineResult<bool> {
        // A checkpoint still writing belongs to the closed opening: let it stop before the overlay is rebuilt.
        let (mut state, _turn) = self.lock_state_and_checkpoint_turn();
        if !self.inner.store.reopen()? {
            return Ok(false);
        }
        journal::replay(&self.inner.store)?;
        state.index = billing::load_index(&self.inner.store, &self.inner.config)?;
        Ok(true)
    }

    /// Write the deferred invoice payment state back to sled with the journal position it covers (see
    /// `engine/journal.rs`), waiting for a checkpoint already running first. Writers go on while it writes: only its
    /// snapshot of the overlay is taken under the writer lock. Returns the keys written; nothing while the store is
    /// closed, or when nothing is deferred and the checkpoint is at the newest event already.
    pub fn checkpoint(&self) -> EngineResult<usize> {
        let store = &self.inner.store;
        let snapshot = {
            let (_state, turn) = self.lock_state_and_checkpoint_turn();
            if store.failure().is_some() {
                return Ok(0);
            }
            let newest = store.last_event_id();
            if store.deferred_len() == 0 && store.checkpoint()? == Some(newest) {
                return Ok(0);
            }
            store.snapshot_overlay(turn, newest)
        };
        write_snapshot(store, snapshot)
    }

    /// The writer lock and the checkpoint turn, both. Lock order: a holder of the turn never waits for the writer lock
    /// (the turn is taken only by one holding the writer lock, or by the checkpoint thread, which never takes it), so a
    /// writer may wait for a running checkpoint while holding the writer lock ([`Engine::checkpoint_if_full`]). Hence
    /// here: wait for a running checkpoint without the writer lock, then take the turn under it, or try again.
    fn lock_state_and_checkpoint_turn(&self) -> (MutexGuard<'_, State>, CheckpointTurn) {
        loop {
            self.inner.store.wait_for_checkpoint();
            let state = self.lock_state();
            if let Some(turn) = self.inner.store.try_checkpoint_turn() {
                return (state, turn);
            }
        }
    }

    /// Called by a writer (holding the writer lock) after each write set: once `[journal] checkpoint_dirty` writes were
    /// deferred since the last checkpoint's snapshot, a checkpoint starts on its own thread; with twice that many keys
    /// in the overlay while it runs, the writer waits for it, which bounds the overlay's memory. A failure closes the store, which the next write reports.
    fn checkpoint_if_full(&self) {
        let store = &self.inner.store;
        let limit = self.inner.config.journal.checkpoint_dirty;
        if store.deferred_since_snapshot() < limit {
            return;
        }
        match store.try_checkpoint_turn() {
            Some(turn) => {
                let snapshot = store.snapshot_overlay(turn, store.last_event_id());
                let store = store.clone();
                let spawned = std::thread::Builder::new()
                    .name("settled-checkpoint".into())
                    .spawn(move || {
                        if let Err(e) = write_snapshot(&store, snapshot) {
                            tracing::error!(error = %e, "checkpoint failed: the journal still holds every change");
                        }
                    });
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "cannot start a checkpoint thread");
                }
            }
            None if store.deferred_len() >= limit.saturating_mul(2) => store.wait_for_checkpoint(),
            None => {}
        }
    }

    /// Take back the in-memory effects of a write set that was not applied (or whose store closed).
    fn forget(&self, state: &mut State, undo: Vec<billing::IndexUpdate>, reload: bool) {
        for update in undo.into_iter().rev() {
            update.apply(&mut state.index);
        }
        if self.inner.store.failure().is_some() {
            state.index = empty_index(&self.inner.config);
        } else if reload {
            state.index = billing::load_index(&self.inner.store, &self.inner.config)
                .unwrap_or_else(|e| {
                    tracing::error!(error = %e, "cannot reload the reconciliation index after a failed write");
                    empty_index(&self.inner.config)
                });
        }
    }

    /// Run `f` while no command can write (the writer lock is held), with the in-memory reconciliation index: a
    /// consistent view of the store for `settled check`. `f` may read through the engine but must not write.
    pub fn with_writes_paused<T>(&self, f: impl FnOnce(&MatchIndex) -> T) -> T {
        let state = self.lock_state();
        f(&state.index)
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the store half-written (nothing is applied before the batch),
        // so a poisoned lock is safe to take over.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn series(&self) -> &Series {
        &self.inner.series
    }
}

/// One command's view of the world: reads go to the store, writes collect in the write set.
pub(crate) struct Tx<'a> {
    pub engine: &'a Engine,
    pub store: &'a Store,
    pub ws: WriteSet,
    pub now: DateTime<Utc>,
    pub today: NaiveDate,
    pub state: &'a mut State,
    index_undo: Vec<billing::IndexUpdate>,
    /// A change was made that has no undo step (a new payer link): rebuild the index if the write set fails.
    index_reload: bool,
    /// Invoices saved now are deferred writes: the caller's `payment.recorded` event lists the allocations that
    /// changed them, so the journal can rebuild them (see `engine/journal.rs`).
    pub defer_invoices: bool,
}

/// An index with no invoices, for while the store is closed.
fn empty_index(config: &Config) -> MatchIndex {
    let n = &config.numbering;
    MatchIndex::new(crate::reconcile::shapes_from_patterns(&[
        n.invoice.as_str(),
        n.credit_note.as_str(),
    ]))
}

impl Tx<'_> {
    /// Change the in-memory reconciliation index now (later records of the same write set must see it),
    /// remembering how to undo it if the write set is not committed.
    pub(crate) fn index_update(&mut self, update: billing::IndexUpdate) {
        use billing::IndexUpdate::*;
        let undo = match &update {
            Upsert(o) => Some(match self.state.index.get(&o.id).cloned() {
                Some(prev) => Upsert(prev),
                None => Remove(o.id.clone()),
            }),
            Remove(id) => self.state.index.get(id).cloned().map(Upsert),
            LinkPayer(key, _) => match self.state.index.payer_account(key) {
                Some(previous) => Some(LinkPayer(key.clone(), previous.to_string())),
                None => {
                    self.index_reload = true;
                    None
                }
            },
        };
        update.apply(&mut self.state.index);
        if let Some(undo) = undo {
            self.index_undo.push(undo);
        }
    }

    /// Read an entity (as this write set leaves it) or fail with NotFound.
    pub fn get<T: DeserializeOwned>(&self, kind: &'static str, id: &str) -> EngineResult<T> {
        self.get_raw(&format!("e/{kind}/{id}"))?
            .ok_or_else(|| EngineError::NotFound {
                entity: kind,
                id: id.to_string(),
            })
    }

    /// Read any key as this write set leaves it.
    pub fn get_raw<T: DeserializeOwned>(&self, key: &str) -> EngineResult<Option<T>> {
        Ok(self.store.get_in(&self.ws, key)?)
    }

    /// Look an index up, seeing this write set's own index writes.
    pub fn index(&self, index: &str, key: &str) -> EngineResult<Option<String>> {
        self.get_raw(&format!("i/{index}/{key}"))
    }

    /// Every id under an index prefix, seeing this write set's own index writes.
    pub fn index_prefix(&self, index: &str, prefix: &str) -> EngineResult<Vec<String>> {
        Ok(self.store.index_prefix_in(&self.ws, index, prefix)?)
    }

    /// Has this idempotency key been ingested (by the store or earlier in this write set)?
    pub fn seen(&self, key: &str) -> EngineResult<Option<serde_json::Value>> {
        Ok(self.store.seen_in(&self.ws, key)?)
    }

    /// A new id for a kind: `<prefix>_<8-digit sequence>`, so ids sort by creation.
    pub fn new_id(&mut self, kind: &str, prefix: &str) -> EngineResult<String> {
        let n = self
            .store
            .next_counter(&mut self.ws, &format!("id/{kind}"))?;
        Ok(format!("{prefix}_{n:08}"))
    }

    /// Write an entity.
    pub fn put<T: Serialize>(&mut self, kind: &str, id: &str, value: &T) {
        self.ws.put(kind, id, value);
    }

    /// Append an audit event (and an outbox row when `outbox`).
    pub fn event(
        &mut self,
        actor: &str,
        kind: &str,
        entity: &str,
        id: &str,
        data: serde_json::Value,
        outbox: bool,
    ) {
        self.ws.event(actor, kind, entity, id, data, outbox);
    }

    /// The next number of a series for `date`, gap-free: taken inside this write set.
    pub fn next_number(
        &mut self,
        series: &str,
        pattern: &SeriesPattern,
        date: NaiveDate,
    ) -> EngineResult<String> {
        let key = format!("series/{series}/{}", pattern.period_key(date));
        let seq = self.store.next_counter(&mut self.ws, &key)?;
        Ok(pattern.format(date, seq))
    }
}

#[cfg(test)]
mod tests;

/// Write a checkpoint's snapshot, logging how long it took.
fn write_snapshot(
    store: &Store,
    snapshot: crate::store::CheckpointSnapshot,
) -> EngineResult<usize> {
    let started = std::time::Instant::now();
    let position = snapshot.position();
    let written = store.write_snapshot(snapshot)?;
    tracing::debug!(
        written,
        position,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "checkpoint"
    );
    Ok(written)
}
