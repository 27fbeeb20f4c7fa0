//! The sled store: one tree, records under key prefixes, every write one atomic batch, durability by group commit.
//!
//! Key layout (all keys UTF-8, all values JSON, so a backup is a plain JSON-lines dump):
//! - `e/<kind>/<id>`      entity records (`lead`, `account`, `contact`, `opportunity`, `quote`, `order`, `invoice`,
//!   `import`)
//! - `b/<kind>/<20-digit n>` blocks of up to 64 `payment`, `allocation` and `review` records, read and written as if
//!   each were its own `e/<kind>/<id>` key (see [`blocks`])
//! - `i/<index>/<key>`    secondary indexes, value = entity id
//! - `v/<20-digit seq>`   the append-only audit log (`events`), in blocks of up to 64 consecutive events keyed by the
//!   first one's id; events flagged `outbox` are also the outbox for sink plugins, which read it with a cursor of their
//!   own ([`Store::outbox_after`]), so a change costs no key of its own
//! - `S/<20-digit n>`     idempotency keys of everything ingested (`seen`), appended as blocks of `[key, produced]`
//!   pairs, one per write set, and found through an in-memory fingerprint index built at open (see [`seen`]); schema 2
//!   kept one `s/<key>` each
//! - `c/<source>`         per-source cursors
//! - `d/<sink>/...`       outbox delivery state per sink instance (cursor, done above it, retries, dead letters, pause;
//!   see `outbox`)
//! - `n/<series>/<period>` number-series counters, `n/id/<kind>` id counters
//! - `m/schema`           schema version; `m/invoice-ref-index` marks the `invoice-ref` index as filled for older invoices;
//!   `m/checkpoint` the audit event id up to which deferred writes are in sled (see below)
//!
//! Deferred writes ([`WriteSet::put_deferred`]): the payment state an ingested payment gives its invoice (the invoice,
//! its `i/open-invoice/` and `i/open-due/` rows) goes to an in-memory overlay instead of sled. Every read looks at the
//! overlay first. The journal (allocation records and `payment.recorded` events, which are written through) is the
//! truth: [`Store::write_snapshot`] writes the overlay to sled in key order with the event id it covers (`m/checkpoint`),
//! and after a crash the engine replays the events after it into the overlay (`engine/journal.rs`).
//!
//! Only the engine writes. It holds one writer lock, reads, then applies one [`WriteSet`] as a sled `Batch` (atomic within the tree),
//! and answers the caller only after [`Store::durable`] saw a flush that covers the write.
//!
//! A write that fails (a full disk) closes the store: sled keeps a batch whose flush failed in its page cache, where readers
//! would see what is not on disk, and refuses every later write until it is reopened. While closed, every read and write
//! fails with [`StoreError::Unavailable`] and [`Store::failure`] says why; [`Store::reopen`] reads the store back from
//! disk, so only what was flushed remains.

mod backup;
mod blocks;
mod checkpoint;
mod commit;
mod migrate;
mod patch;
mod seen;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use backup::{backup_to, restore_from};
pub use checkpoint::{CheckpointSnapshot, CheckpointTurn};
use commit::GroupCommit;
pub use patch::Patch;

/// The schema version this build writes and understands (2: payments, allocations, review items and events in
/// blocks; 3: `seen` keys in blocks too; 4: blocks may be LZ4-packed). Stores and backups of schemas 1 to 3 are
/// converted when opened or restored.
pub const SCHEMA_VERSION: u64 = 4;

/// Errors of the store, split by who is at fault.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the data directory.
    #[error("data directory {path} is locked by another running settled (pid {pid}); stop it first or use another --data-dir")]
    Locked {
        /// The data directory.
        path: PathBuf,
        /// The pid written in the lock file, if readable.
        pid: String,
    },
    /// The store was written by a schema this build does not know.
    #[error("store at {path} has schema version {found}, this settled understands up to {SCHEMA_VERSION}; upgrade settled, or restore a backup with `settled restore FILE`")]
    UnknownSchema {
        /// The data directory.
        path: PathBuf,
        /// The version found.
        found: String,
    },
    /// sled failed to open the store: possibly corruption after an unclean stop.
    #[error("cannot open the store at {path}: {source}; if it is damaged, move it aside and run `settled restore BACKUP --data-dir {path}`")]
    Open {
        /// The data directory.
        path: PathBuf,
        /// sled's error.
        source: sled::Error,
    },
    /// An IO error with context.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// sled failed during operation.
    #[error("store error: {0}")]
    Sled(#[from] sled::Error),
    /// The environment: writing to the disk failed (a full disk); the store closed itself, see [`Store::failure`].
    #[error("cannot write to the store at {path}: {}; the change is not confirmed and the store is closed until it can write again (see /healthz)", write_error(source))]
    WriteFailed {
        /// The data directory.
        path: PathBuf,
        /// sled's error.
        source: sled::Error,
    },
    /// The store closed itself after a failed write and is not yet reopened.
    #[error("the store is closed after a failed write ({reason}); it reopens once it can write again (see /healthz)")]
    Unavailable {
        /// Why it closed, and the last reopening attempt's error.
        reason: String,
    },
    /// A stored record does not decode: corruption or a bug. Please report.
    #[error("stored record {key} does not decode ({source}); this is a bug or corruption, please report it")]
    Corrupt {
        /// The key.
        key: String,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A stored block is packed but does not unpack: corruption or a bug. Please report.
    #[error("stored block {key} does not unpack ({reason}); this is a bug or corruption, please report it")]
    Unpack {
        /// The key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Result alias for store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// One audit-log entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Monotonic id, starting at 1.
    pub id: u64,
    /// When it happened (RFC 3339, UTC).
    pub at: chrono::DateTime<chrono::Utc>,
    /// Who: `api`, `cli`, `scheduler`, `connector:<name>`, `reconcile`.
    pub actor: String,
    /// Event type, e.g. `lead.captured`, `invoice.issued`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The entity kind and id it concerns.
    pub entity: String,
    /// Entity id.
    pub entity_id: String,
    /// A summary of the change (what changed, from what to what).
    pub data: serde_json::Value,
    /// Outside systems care about it: it is in the outbox for sink plugins.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub outbox: bool,
}

/// The key of the event block holding the first event after `after` (or the first block there is).
fn event_blocks_start(tree: &sled::Tree, after: u64) -> Vec<u8> {
    let first = seq_key("v/", after.saturating_add(1));
    match tree.range("v/".as_bytes()..=first.as_bytes()).next_back() {
        Some(Ok((k, _))) => k.to_vec(),
        _ => b"v/".to_vec(),
    }
}

/// A stored block of events ([`Store::event_blocks_from`]).
pub(crate) struct EventBlock {
    key: sled::IVec,
    value: sled::IVec,
    after: u64,
}

impl EventBlock {
    /// Its events after the id asked for, decoded as `T` (any type that reads the fields it needs of an [`Event`];
    /// `id` gives its event id).
    pub(crate) fn events<T: DeserializeOwned>(
        &self,
        id: impl Fn(&T) -> u64,
    ) -> StoreResult<Vec<T>> {
        let mut events = blocks::records::<T>(Ok((self.key.clone(), self.value.clone())))
            .into_iter()
            .collect::<StoreResult<Vec<T>>>()?;
        events.retain(|event| id(event) > self.after);
        Ok(events)
    }
}

/// An outbox row: an event an outside system cares about, to be delivered by sink plugins. It is a view of an audit
/// event flagged `outbox`, not a record of its own.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OutboxRow {
    /// Position in the outbox: the event's id (increasing, with gaps where events are not for the outbox).
    pub id: u64,
    /// The audit event id it came from.
    pub event_id: u64,
    /// Event type.
    #[serde(rename = "type")]
    pub kind: String,
    /// When.
    pub at: chrono::DateTime<chrono::Utc>,
    /// Payload for sinks.
    pub data: serde_json::Value,
}

/// The store handle. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    options: StoreOptions,
    handle: RwLock<Handle>,
    /// Deferred writes not yet in sled, key -> latest value (`None`: removed); see [`WriteSet::put_deferred`].
    overlay: RwLock<Overlay>,
    /// Bumped whenever the overlay is emptied for a replay, so a checkpoint that ran meanwhile leaves it alone.
    overlay_epoch: AtomicU64,
    /// Deferred writes since the last checkpoint's snapshot (a key written twice counts twice): what starts the next one.
    /// The overlay's size would not do: entries changed while a checkpoint writes stay in it.
    deferred_since_snapshot: AtomicUsize,
    /// The running checkpoint, if any (`checkpoint.rs`).
    checkpoints: checkpoint::Checkpoints,
    /// How the seen index reduces a key to 64 bits (tests inject one that collides).
    fingerprint: seen::Fingerprint,
    _lock: File,
}

/// The overlay of deferred writes. A hash map: a bulk import looks up and inserts a few keys per line in an overlay of
/// hundreds of thousands, where a B-tree of strings spent ~9% of the import comparing key prefixes; the rare ordered
/// reads (a scan, a checkpoint's snapshot) sort what they take.
type Overlay = HashMap<String, Deferred>;

/// A deferred write, as the overlay and a write set hold it.
#[derive(Debug, Clone, PartialEq)]
enum Deferred {
    /// The whole value (`None`: removed).
    Value(Option<sled::IVec>),
    /// A few fields of the value in sled ([`Patch`]).
    Patch(Arc<Patch>),
}

impl Deferred {
    /// This write followed by a later one of the same key.
    fn then(self, key: &str, later: Deferred) -> StoreResult<Deferred> {
        Ok(match (self, later) {
            (_, Deferred::Value(value)) => Deferred::Value(value),
            (Deferred::Value(None), Deferred::Patch(_)) => Deferred::Value(None),
            (Deferred::Value(Some(bytes)), Deferred::Patch(p)) => {
                Deferred::Value(Some(p.apply(key, &bytes)?.into()))
            }
            (Deferred::Patch(mut first), Deferred::Patch(p)) => {
                Arc::make_mut(&mut first).then(&p);
                Deferred::Patch(first)
            }
        })
    }

    /// The value it leaves over `base`, the key's value in sled (a patch of nothing leaves nothing).
    fn over(&self, key: &str, base: Option<sled::IVec>) -> StoreResult<Option<sled::IVec>> {
        match (self, base) {
            (Deferred::Value(value), _) => Ok(value.clone()),
            (Deferred::Patch(p), Some(base)) => Ok(Some(p.apply(key, &base)?.into())),
            (Deferred::Patch(_), None) => Ok(None),
        }
    }
}

/// Where a test asks a checkpoint to abort the process (see [`Store::write_snapshot`]).
const ABORT_CHECKPOINT_ENV: &str = "SETTLED_TEST_ABORT_CHECKPOINT_AFTER";

/// The key holding the audit event id up to which every deferred write is in sled.
const CHECKPOINT_KEY: &str = "m/checkpoint";

/// The sled database while it can be used, or why it was closed.
enum Handle {
    Open(Arc<Open>),
    Closed(Failure),
}

/// One opening of the sled database. Dropping the last clone releases sled's files, so it can be opened again.
struct Open {
    db: sled::Db,
    tree: sled::Tree,
    next_event: AtomicU64,
    commit: GroupCommit,
    /// Which opening this is (1 for the first): a commit ticket only counts for the opening that applied it.
    generation: u64,
    /// Where each `seen` key is, read from the blocks at open and kept in step by [`Store::apply`].
    seen: RwLock<seen::SeenIndex>,
}

/// Why the store is closed.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// The write error that closed it.
    pub reason: String,
    /// When it closed.
    pub since: chrono::DateTime<chrono::Utc>,
    /// The error of the last attempt to reopen it, if any.
    pub reopen_error: Option<String>,
    /// The opening that failed.
    #[serde(skip)]
    generation: u64,
}

impl Failure {
    /// The reason, with the last reopening attempt's error.
    pub fn describe(&self) -> String {
        match &self.reopen_error {
            None => self.reason.clone(),
            Some(e) => format!("{}; reopening failed: {e}", self.reason),
        }
    }
}

/// sled's page cache by default, in MiB. sled counts its pages smaller than they are in memory (this cache holds
/// ~30-50 MiB under a bulk import); 64 MiB held ~50 MiB more and bought no speed (BENCHMARKS.md, issue 14).
pub const DEFAULT_CACHE_MIB: u64 = 16;

/// Options for opening a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// sled page cache in bytes (default [`DEFAULT_CACHE_MIB`]: bounds resident memory).
    pub cache_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_bytes: DEFAULT_CACHE_MIB * 1024 * 1024,
        }
    }
}

impl Store {
    /// Open (or create) the store in `dir`, taking an exclusive lock on it and checking the schema version.
    pub fn open(dir: &Path, options: &StoreOptions) -> StoreResult<Store> {
        Store::open_with(dir, options, seen::fingerprint)
    }

    /// [`Store::open`] with the seen index's fingerprint function chosen (tests make keys collide with it).
    pub(crate) fn open_with(
        dir: &Path,
        options: &StoreOptions,
        fingerprint: seen::Fingerprint,
    ) -> StoreResult<Store> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            context: format!("creating data directory {}", dir.display()),
            source,
        })?;
        let lock = lock_dir(dir)?;
        let open = open_sled(dir, options, 1, fingerprint)?;
        Ok(Store {
            inner: Arc::new(Inner {
                path: dir.to_path_buf(),
                options: options.clone(),
                handle: RwLock::new(Handle::Open(Arc::new(open))),
                overlay: RwLock::new(Overlay::new()),
                overlay_epoch: AtomicU64::new(0),
                deferred_since_snapshot: AtomicUsize::new(0),
                checkpoints: checkpoint::Checkpoints::default(),
                fingerprint,
                _lock: lock,
            }),
        })
    }

    /// Why the store is closed, or `None` while it is open.
    pub fn failure(&self) -> Option<Failure> {
        match &*self.read_handle() {
            Handle::Open(_) => None,
            Handle::Closed(failure) => Some(failure.clone()),
        }
    }

    /// Reopen a store closed by a failed write: sled reads it back from disk (so nothing unflushed remains), and a probe
    /// write must reach the disk. Returns `false` when the store was open. The caller holds the engine's writer lock.
    pub fn reopen(&self) -> StoreResult<bool> {
        let generation = match &*self.read_handle() {
            Handle::Open(_) => return Ok(false),
            Handle::Closed(failure) => failure.generation,
        };
        match open_sled(
            &self.inner.path,
            &self.inner.options,
            generation + 1,
            self.inner.fingerprint,
        )
        .and_then(|open| probe_write(&open).map(|()| open))
        {
            Ok(open) => {
                // Deferred writes may come from batches that never reached the disk: the engine replays the journal.
                self.clear_deferred();
                *self.write_handle() = Handle::Open(Arc::new(open));
                Ok(true)
            }
            Err(e) => {
                if let Handle::Closed(failure) = &mut *self.write_handle() {
                    failure.reopen_error = Some(e.to_string());
                }
                Err(e)
            }
        }
    }

    /// A sled IO error met anywhere in a command (sled 0.34 also fails reads once a flush failed) closes the store like a
    /// failed write, and is answered as one; any other error is returned as it is.
    pub fn closed_by(&self, error: StoreError) -> StoreError {
        match error {
            StoreError::Sled(source @ sled::Error::Io(_)) => {
                if let Ok(open) = self.open_handle() {
                    self.close(open.generation, &source);
                }
                StoreError::WriteFailed {
                    path: self.inner.path.clone(),
                    source,
                }
            }
            other => other,
        }
    }

    /// Close the store after the opening `generation` failed to write (a later opening is left alone).
    fn close(&self, generation: u64, error: &sled::Error) {
        let mut handle = self.write_handle();
        if let Handle::Open(open) = &*handle {
            if open.generation != generation {
                return;
            }
            tracing::error!(
                data_dir = %self.inner.path.display(),
                %error,
                "the store cannot write; closing it until it can (reads and writes answer 503, /healthz says why)"
            );
            *handle = Handle::Closed(Failure {
                reason: format!(
                    "writing to {}: {}",
                    self.inner.path.display(),
                    write_error(error)
                ),
                since: chrono::Utc::now(),
                reopen_error: None,
                generation,
            });
        }
    }

    /// The open database, or [`StoreError::Unavailable`] while closed.
    fn open_handle(&self) -> StoreResult<Arc<Open>> {
        match &*self.read_handle() {
            Handle::Open(open) => Ok(open.clone()),
            Handle::Closed(failure) => Err(StoreError::Unavailable {
                reason: failure.describe(),
            }),
        }
    }

    fn read_handle(&self) -> std::sync::RwLockReadGuard<'_, Handle> {
        // The handle is replaced whole, never left half-written, so a poisoned lock is safe to take over.
        self.inner
            .handle
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read_overlay(&self) -> std::sync::RwLockReadGuard<'_, Overlay> {
        // The overlay is changed by whole inserts and removals, never left half-written.
        self.inner
            .overlay
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_overlay(&self) -> std::sync::RwLockWriteGuard<'_, Overlay> {
        self.inner
            .overlay
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The keys under `prefix` in key order, the overlay's deferred writes merged over sled's.
    fn scan_merged(
        &self,
        prefix: &str,
    ) -> StoreResult<impl Iterator<Item = StoreResult<(String, sled::IVec)>>> {
        let tree = self.tree()?;
        let mut pending: Vec<(String, Deferred)> = self
            .read_overlay()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        pending.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(MergedScan {
            sled: tree.scan_prefix(prefix.as_bytes()).peekable(),
            overlay: pending.into_iter().peekable(),
        })
    }

    /// How many deferred writes wait in the overlay.
    pub fn deferred_len(&self) -> usize {
        self.read_overlay().len()
    }

    /// Deferred writes made since the last checkpoint took its snapshot.
    pub fn deferred_since_snapshot(&self) -> usize {
        self.inner.deferred_since_snapshot.load(Ordering::SeqCst)
    }

    /// The audit event id up to which every deferred write is in sled (`None`: a store that never deferred).
    pub fn checkpoint(&self) -> StoreResult<Option<u64>> {
        let tree = self.tree()?;
        match tree.get(CHECKPOINT_KEY)? {
            None => Ok(None),
            Some(v) => decode(CHECKPOINT_KEY, &v).map(Some),
        }
    }

    /// Note that everything up to the newest event is in sled, unless a checkpoint is noted already (a store of the
    /// layout before deferred writes has every invoice written through).
    pub fn init_checkpoint(&self) -> StoreResult<()> {
        let open = self.open_handle()?;
        let position = open.next_event.load(Ordering::SeqCst) - 1;
        let _ = open.tree.compare_and_swap(
            CHECKPOINT_KEY,
            None as Option<&[u8]>,
            Some(encode(&position)),
        )?;
        Ok(())
    }

    /// Put a value into the overlay without a write set: the engine's replay of the journal after a restart.
    pub(crate) fn replay_deferred<T: Serialize>(&self, key: &str, value: Option<&T>) {
        let value = value.map(|v| sled::IVec::from(encode(v)));
        self.write_overlay()
            .insert(key.to_string(), Deferred::Value(value));
        self.inner
            .deferred_since_snapshot
            .fetch_add(1, Ordering::SeqCst);
    }

    /// Forget every deferred write (the engine replays the journal into an empty overlay).
    pub(crate) fn clear_deferred(&self) {
        let mut overlay = self.write_overlay();
        overlay.clear();
        self.inner.overlay_epoch.fetch_add(1, Ordering::SeqCst);
        self.inner
            .deferred_since_snapshot
            .store(0, Ordering::SeqCst);
    }

    fn write_handle(&self) -> std::sync::RwLockWriteGuard<'_, Handle> {
        self.inner
            .handle
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Read an entity.
    pub fn get<T: DeserializeOwned>(&self, kind: &str, id: &str) -> StoreResult<Option<T>> {
        self.get_raw(&entity_key(kind, id))
    }

    /// Read and decode any key (a blocked record's key is read from its block).
    pub fn get_raw<T: DeserializeOwned>(&self, key: &str) -> StoreResult<Option<T>> {
        let open = self.open_handle()?;
        if let Some((kind, id, n)) = blocks::blocked_key(key) {
            return match blocks::get(&open.tree, kind, id, n)? {
                None => Ok(None),
                Some(raw) => decode(key, raw.get().as_bytes()).map(Some),
            };
        }
        match self.read_bytes(&open, key)? {
            None => Ok(None),
            Some(v) => decode(key, &v).map(Some),
        }
    }

    /// The value of a key that is not in a block: the overlay's deferred write over sled's value.
    fn read_bytes(&self, open: &Open, key: &str) -> StoreResult<Option<sled::IVec>> {
        let deferred = self.read_overlay().get(key).cloned();
        match deferred {
            Some(Deferred::Value(value)) => Ok(value),
            Some(patch) => patch.over(key, open.tree.get(key.as_bytes())?),
            None => Ok(open.tree.get(key.as_bytes())?),
        }
    }

    /// Look an index up.
    pub fn index(&self, index: &str, key: &str) -> StoreResult<Option<String>> {
        self.get_raw(&index_key(index, key))
    }

    /// Every id under an index prefix (e.g. all `invoice-by-account/<account>/` rows).
    pub fn index_prefix(&self, index: &str, prefix: &str) -> StoreResult<Vec<String>> {
        let key = index_key(index, prefix);
        let mut out = Vec::new();
        for item in self.scan_merged(&key)? {
            let (k, v) = item?;
            out.push(decode(&k, &v)?);
        }
        Ok(out)
    }

    /// Every value under an index, decoded (for indexes whose values are records rather than ids).
    pub fn index_values<T: DeserializeOwned>(&self, index: &str) -> StoreResult<Vec<T>> {
        self.index_values_iter(index)?.collect()
    }

    /// [`Store::index_values`] one value at a time.
    pub fn index_values_iter<T: DeserializeOwned>(
        &self,
        index: &str,
    ) -> StoreResult<impl Iterator<Item = StoreResult<T>>> {
        let key = index_key(index, "");
        Ok(self
            .scan_merged(&key)?
            .map(|item| item.and_then(|(k, v)| decode(&k, &v))))
    }

    /// Has this idempotency key been ingested? Returns what it produced (when recorded more than once, the last).
    pub fn seen(&self, key: &str) -> StoreResult<Option<serde_json::Value>> {
        let open = self.open_handle()?;
        let index = open.seen.read().unwrap_or_else(|p| p.into_inner());
        match index.get(&open.tree, key)? {
            None => Ok(None),
            Some(raw) => decode(&format!("seen {key}"), raw.get().as_bytes())
                .map(|value| Some(expand_seen(value))),
        }
    }

    /// [`Store::seen`] as the write set will leave it: its own seen keys first, then the store.
    pub fn seen_in(&self, ws: &WriteSet, key: &str) -> StoreResult<Option<serde_json::Value>> {
        match ws.seen.get(key) {
            Some(bytes) => {
                decode(&format!("seen {key}"), bytes).map(|value| Some(expand_seen(value)))
            }
            None => self.seen(key),
        }
    }

    /// Compare the in-memory seen index with the seen blocks on disk (and look for keys left in the schema 2 layout):
    /// every difference in words, none when they agree. For `settled check`.
    pub fn verify_seen(&self) -> StoreResult<Vec<String>> {
        let open = self.open_handle()?;
        let index = open.seen.read().unwrap_or_else(|p| p.into_inner());
        index.differences(&open.tree)
    }

    /// Every seen entry whose key starts with `prefix`, as [`Store::seen`] answers for it (the last recorded wins), in
    /// key order. Reads every seen block: for `settled check`, not for hot paths.
    pub fn seen_entries(&self, prefix: &str) -> StoreResult<BTreeMap<String, serde_json::Value>> {
        let tree = self.tree()?;
        let mut out = BTreeMap::new();
        // Blocks in number order are write order, so a later entry of a key replaces an earlier one.
        for item in tree.scan_prefix(seen::PREFIX.as_bytes()) {
            let (k, v) = item?;
            let block_key = String::from_utf8_lossy(&k);
            let block: seen::Block = decode(&block_key, &v)?;
            for (key, raw) in block {
                if key.starts_with(prefix) {
                    let value = decode(&format!("seen {key}"), raw.get().as_bytes())?;
                    out.insert(key, expand_seen(value));
                }
            }
        }
        Ok(out)
    }

    /// The seen index: keys it holds (a key recorded twice counts twice) and the bytes it takes on the heap.
    pub fn seen_index_size(&self) -> StoreResult<(usize, usize)> {
        let open = self.open_handle()?;
        let index = open.seen.read().unwrap_or_else(|p| p.into_inner());
        Ok((index.len(), index.heap_bytes()))
    }

    /// Build the seen index again from disk (after a restore wrote the tree directly).
    fn reload_seen(&self) -> StoreResult<()> {
        let open = self.open_handle()?;
        let fresh = seen::SeenIndex::load(&open.tree, self.inner.fingerprint)?;
        *open.seen.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// Every `(key, value)` under a raw key prefix, in key order (the outbox's `d/<sink>/` rows).
    pub fn scan_raw<T: DeserializeOwned>(&self, prefix: &str) -> StoreResult<Vec<(String, T)>> {
        let mut out = Vec::new();
        for item in self.scan_merged(prefix)? {
            let (key, v) = item?;
            let value = decode(&key, &v)?;
            out.push((key, value));
        }
        Ok(out)
    }

    /// A source's cursor.
    pub fn cursor(&self, source: &str) -> StoreResult<Option<serde_json::Value>> {
        self.get_raw(&format!("c/{source}"))
    }

    /// All entities of a kind, in id order (ids sort by creation).
    pub fn scan<T: DeserializeOwned + 'static>(
        &self,
        kind: &str,
    ) -> Box<dyn Iterator<Item = StoreResult<T>> + '_> {
        let prefix = format!("e/{kind}/");
        let (tree, merged) = match self
            .tree()
            .and_then(|t| Ok((t, self.scan_merged(&prefix)?)))
        {
            Ok(both) => both,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        let own_keys = merged.map(|item| -> StoreResult<T> {
            let (k, v) = item?;
            decode(&k, &v)
        });
        if !blocks::BLOCKED.contains(&kind) {
            return Box::new(own_keys);
        }
        let kind = kind.to_string();
        let in_blocks = blocks::scan(&tree, &kind).map(move |item| -> StoreResult<T> {
            let (id, raw) = item?;
            decode(&format!("e/{kind}/{id}"), raw.get().as_bytes())
        });
        Box::new(in_blocks.chain(own_keys))
    }

    /// Audit events with id > `after`, at most `limit`.
    pub fn events_after(&self, after: u64, limit: usize) -> StoreResult<Vec<Event>> {
        self.events_from(after)?.take(limit).collect()
    }

    /// Outbox rows with id > `after`, at most `limit`: the audit events flagged `outbox`, in order.
    pub fn outbox_after(&self, after: u64, limit: usize) -> StoreResult<Vec<OutboxRow>> {
        let mut out = Vec::new();
        for event in self.events_from(after)? {
            if out.len() >= limit {
                break;
            }
            let event = event?;
            if event.outbox {
                out.push(OutboxRow {
                    id: event.id,
                    event_id: event.id,
                    kind: event.kind,
                    at: event.at,
                    data: serde_json::json!({"entity": event.entity, "id": event.entity_id, "data": event.data}),
                });
            }
        }
        Ok(out)
    }

    /// Audit events with id > `after`, in order, read lazily: from the block holding `after + 1` on.
    pub fn events_from(&self, after: u64) -> StoreResult<impl Iterator<Item = StoreResult<Event>>> {
        let tree = self.tree()?;
        let start = event_blocks_start(&tree, after);
        Ok(tree
            .range(start..b"v/~".to_vec())
            .flat_map(blocks::records::<Event>)
            .filter(move |event| !matches!(event, Ok(e) if e.id <= after)))
    }

    /// The stored blocks holding the events after `after`, undecoded (a block may also hold earlier ones: see
    /// [`EventBlock::events`]). For a reader that decodes them on several threads, in a type of its own.
    pub(crate) fn event_blocks_from(&self, after: u64) -> StoreResult<Vec<EventBlock>> {
        let tree = self.tree()?;
        let start = event_blocks_start(&tree, after);
        tree.range(start..b"v/~".to_vec())
            .map(|item| {
                let (key, value) = item?;
                // Copied: a value sled hands out may keep its whole page alive.
                let (key, value) = (key.as_ref().into(), value.as_ref().into());
                Ok(EventBlock { key, value, after })
            })
            .collect()
    }

    /// The id of the newest audit event (0 when none, and while the store is closed).
    pub fn last_event_id(&self) -> u64 {
        self.open_handle()
            .map_or(0, |open| open.next_event.load(Ordering::SeqCst) - 1)
    }

    /// Start a write set. Callers must hold the engine's writer lock from their reads until [`Store::apply`].
    pub fn begin(&self) -> WriteSet {
        WriteSet {
            pending: HashMap::new(),
            deferred: HashMap::new(),
            seen: HashMap::new(),
            events: Vec::new(),
        }
    }

    /// Every id under an index prefix as the write set will leave it (its own index writes and removals included),
    /// in key order. For rare look-ups: it goes through all of the write set's pending keys.
    pub fn index_prefix_in(
        &self,
        ws: &WriteSet,
        index: &str,
        prefix: &str,
    ) -> StoreResult<Vec<String>> {
        let start = index_key(index, prefix);
        let mut rows: BTreeMap<String, String> = BTreeMap::new();
        for item in self.scan_merged(&start)? {
            let (key, v) = item?;
            let id = decode(&key, &v)?;
            rows.insert(key, id);
        }
        let own_deferred = ws.deferred.keys();
        for key in own_deferred.filter(|k| k.starts_with(&start)) {
            match self.get_in::<String>(ws, key)? {
                Some(id) => rows.insert(key.clone(), id),
                None => rows.remove(key),
            };
        }
        for (key, value) in ws.pending.iter().filter(|(k, _)| k.starts_with(&start)) {
            match value {
                Some(bytes) => {
                    rows.insert(key.clone(), decode(key, bytes)?);
                }
                None => {
                    rows.remove(key);
                }
            }
        }
        Ok(rows.into_values().collect())
    }

    /// Read a key as the write set will leave it: its own pending writes first, then the store.
    pub fn get_in<T: DeserializeOwned>(&self, ws: &WriteSet, key: &str) -> StoreResult<Option<T>> {
        if let Some(through) = ws.pending.get(key) {
            return through.as_ref().map(|bytes| decode(key, bytes)).transpose();
        }
        match ws.deferred.get(key) {
            Some(Deferred::Value(value)) => value.as_ref().map(|v| decode(key, v)).transpose(),
            Some(patch) => {
                let below = self.read_bytes(&*self.open_handle()?, key)?;
                let value = patch.over(key, below)?;
                value.as_ref().map(|v| decode(key, v)).transpose()
            }
            None => self.get_raw(key),
        }
    }

    /// Next value of a counter (`n/...`) as seen by this write set (counters are read from the store and the set).
    pub fn next_counter(&self, ws: &mut WriteSet, name: &str) -> StoreResult<u64> {
        let key = format!("n/{name}");
        let next = self.get_in::<u64>(ws, &key)?.unwrap_or(0) + 1;
        ws.pending.insert(key, Some(next.to_string().into_bytes()));
        Ok(next)
    }

    /// Apply a write set atomically (one sled batch). Returns a commit ticket for [`Store::durable`].
    /// Callers hold the engine's writer lock, so event ids are taken without a race.
    pub fn apply(&self, mut ws: WriteSet) -> StoreResult<CommitTicket> {
        let open = self.open_handle()?;
        let outbox = ws.has_outbox();
        let first_event = open.next_event.load(Ordering::SeqCst);
        let events = std::mem::take(&mut ws.events);
        let event_ids: Vec<u64> = (first_event..).take(events.len()).collect();
        // A bulk write set's events (a few hundred) are encoded and packed on a helper thread while this one builds
        // the rest of the batch: in a bulk import they were a tenth of this thread's time, and the other core had time.
        std::thread::scope(|scope| {
            let events = if events.len() >= PARALLEL_EVENTS {
                EventBlocks::Helper(scope.spawn(move || event_blocks(first_event, events)))
            } else {
                EventBlocks::Here(first_event, events)
            };
            self.apply_with(&open, ws, events, event_ids, outbox)
        })
    }

    /// [`Store::apply`] once its events are being encoded.
    fn apply_with(
        &self,
        open: &Open,
        ws: WriteSet,
        events: EventBlocks<'_>,
        event_ids: Vec<u64>,
        outbox: bool,
    ) -> StoreResult<CommitTicket> {
        // The deferred writes as the overlay will hold them: a patch of a key the overlay holds goes on top of it.
        // (Only writers change the overlay's entries, and they are serialised; a checkpoint only drops an entry
        // it wrote to sled, which a patch over it then finds there.)
        let mut deferred = Vec::with_capacity(ws.deferred.len());
        if !ws.deferred.is_empty() {
            let overlay = self.read_overlay();
            for (key, value) in ws.deferred {
                let value = match (overlay.get(&key), value) {
                    (Some(below), Deferred::Patch(p)) => {
                        below.clone().then(&key, Deferred::Patch(p))?
                    }
                    (_, value) => value,
                };
                deferred.push((key, value));
            }
        }
        let mut batch = sled::Batch::default();
        let mut blocked: BTreeMap<String, Vec<blocks::Change>> = BTreeMap::new();
        // Keys written through that the overlay holds an older deferred value of: dropped from it once applied.
        let mut superseded = Vec::new();
        let overlay_empty = self.read_overlay().is_empty();
        if !overlay_empty {
            let overlay = self.read_overlay();
            superseded.extend(
                ws.pending
                    .keys()
                    .filter(|k| overlay.contains_key(*k))
                    .cloned(),
            );
        }
        for (key, value) in ws.pending {
            if let Some((kind, id, n)) = blocks::blocked_key(&key) {
                blocked
                    .entry(kind.to_string())
                    .or_default()
                    .push((n, id.to_string(), value));
                continue;
            }
            match value {
                Some(bytes) => batch.insert(key.as_bytes(), bytes),
                None => batch.remove(key.as_bytes()),
            }
        }
        for (kind, changes) in blocked {
            blocks::write(&open.tree, &kind, changes, &mut batch)?;
        }
        // Seen keys in key order, so a write set always makes the same blocks. The index stays locked from numbering
        // the blocks until it records them, so no other write can take the same numbers.
        let mut seen: Vec<(String, Vec<u8>)> = ws.seen.into_iter().collect();
        seen.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut seen_index = None;
        if !seen.is_empty() {
            let index = open.seen.write().unwrap_or_else(|p| p.into_inner());
            for (n, block) in index.blocks_for(&seen)? {
                batch.insert(seen::block_key(n).as_bytes(), block);
            }
            seen_index = Some(index);
        }
        for (key, block) in events.blocks() {
            batch.insert(key.as_bytes(), block);
        }
        if !superseded.is_empty() {
            // A checkpoint writing its snapshot beside us must not put its older value of these keys after ours.
            self.inner
                .checkpoints
                .lock_through()
                .extend(superseded.iter().cloned());
        }
        if let Err(source) = open.tree.apply_batch(batch) {
            // sled may hold part of the batch in its page cache: only reopening drops it.
            self.close(open.generation, &source);
            return Err(StoreError::WriteFailed {
                path: self.inner.path.clone(),
                source,
            });
        }
        if let Some(last) = event_ids.last() {
            open.next_event.store(last + 1, Ordering::SeqCst);
        }
        if !superseded.is_empty() || !deferred.is_empty() {
            let mut overlay = self.write_overlay();
            for key in superseded {
                overlay.remove(&key);
            }
            self.inner
                .deferred_since_snapshot
                .fetch_add(deferred.len(), Ordering::SeqCst);
            overlay.extend(deferred);
        }
        if let Some(mut index) = seen_index {
            index.record(&seen);
        }
        Ok(CommitTicket {
            seq: open.commit.written(),
            generation: open.generation,
            event_ids,
            outbox,
        })
    }

    /// Wait until everything up to `ticket` is flushed to disk (group commit: one flush serves many writers).
    /// A failed flush closes the store; a ticket of an opening that was closed is never durable.
    pub async fn durable(&self, ticket: &CommitTicket) -> StoreResult<()> {
        let open = self.open_handle()?;
        if open.generation != ticket.generation {
            return Err(StoreError::Unavailable {
                reason: "the store was closed after a failed write and reopened from disk since this change was applied".into(),
            });
        }
        match open.commit.wait(ticket.seq).await {
            Ok(()) => Ok(()),
            Err(StoreError::Sled(source)) => {
                self.close(open.generation, &source);
                Err(StoreError::WriteFailed {
                    path: self.inner.path.clone(),
                    source,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Flush now (blocking). A closed store has nothing to flush: every write it confirmed was flushed.
    pub fn flush(&self) -> StoreResult<()> {
        match self.open_handle() {
            Ok(open) => {
                open.db.flush()?;
                Ok(())
            }
            Err(StoreError::Unavailable { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Count the entities of a kind (a scan; used by metrics and status, not on hot paths; 0 while closed).
    pub fn count(&self, kind: &str) -> usize {
        let Ok(tree) = self.tree() else {
            return 0;
        };
        let prefix = format!("e/{kind}/");
        let own_keys = tree.scan_prefix(prefix.as_bytes()).keys().count();
        if !blocks::BLOCKED.contains(&kind) {
            return own_keys;
        }
        own_keys + blocks::scan(&tree, kind).count()
    }

    fn tree(&self) -> StoreResult<sled::Tree> {
        Ok(self.open_handle()?.tree.clone())
    }
}

/// Open sled in `dir` (waiting for a just-dropped handle of this process to let go of its files), check the schema,
/// migrate an older one, and find the last event id.
fn open_sled(
    dir: &Path,
    options: &StoreOptions,
    generation: u64,
    fingerprint: seen::Fingerprint,
) -> StoreResult<Open> {
    let config = sled::Config::new()
        .path(dir.join("db"))
        .cache_capacity(options.cache_bytes)
        .mode(sled::Mode::HighThroughput);
    // Our LOCK file is held, so no other settled has the directory. sled's own file lock can still be held for a
    // moment by the background threads of a handle this process just dropped (a restore, a test, a closed opening).
    let mut attempts = 0;
    let db = loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if attempts < 100 && e.to_string().contains("could not acquire lock") =>
            {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            // A full disk is not damage: do not send the user to `settled restore` for it.
            Err(sled::Error::Io(source)) if source.kind() == std::io::ErrorKind::StorageFull => {
                return Err(StoreError::Io {
                    context: format!(
                        "opening the store at {} (the disk is full: free space on it)",
                        dir.display()
                    ),
                    source,
                })
            }
            other => {
                break other.map_err(|source| StoreError::Open {
                    path: dir.to_path_buf(),
                    source,
                })?
            }
        }
    };
    let tree = db.open_tree("settled")?;
    match tree.get(b"m/schema")? {
        None => {
            tree.insert(b"m/schema", SCHEMA_VERSION.to_string().as_bytes())?;
            db.flush()?;
        }
        Some(v) => {
            let found = String::from_utf8_lossy(&v).to_string();
            match found.parse::<u64>().ok() {
                Some(SCHEMA_VERSION) => {}
                Some(from @ 1..SCHEMA_VERSION) => migrate::upgrade(&tree, from)?,
                _ => {
                    return Err(StoreError::UnknownSchema {
                        path: dir.to_path_buf(),
                        found,
                    })
                }
            }
        }
    }
    let next_event = last_event(&tree)? + 1;
    let seen = RwLock::new(seen::SeenIndex::load(&tree, fingerprint)?);
    let commit = GroupCommit::new(db.clone());
    Ok(Open {
        db,
        tree,
        next_event: AtomicU64::new(next_event),
        commit,
        generation,
        seen,
    })
}

/// A write error in plain words: sled reports a full disk as a debug dump of the OS error.
fn write_error(error: &sled::Error) -> String {
    match error {
        sled::Error::Io(e) if e.kind() == std::io::ErrorKind::StorageFull => {
            "the disk is full (no space left on device)".to_string()
        }
        other => other.to_string(),
    }
}

/// Check that the disk takes writes again: write a key, remove it, flush both.
fn probe_write(open: &Open) -> StoreResult<()> {
    open.tree.insert(b"m/probe", b"1".as_slice())?;
    open.tree.remove(b"m/probe")?;
    open.db.flush()?;
    Ok(())
}

/// Proof that a write set was applied; pass it to [`Store::durable`].
#[derive(Debug, Clone)]
pub struct CommitTicket {
    seq: u64,
    generation: u64,
    /// Ids of the audit events the write appended, in order.
    pub event_ids: Vec<u64>,
    /// Whether one of them is flagged for the outbox.
    pub outbox: bool,
}

/// Everything one command writes, applied as one atomic batch. Reads through [`Store::get_in`] see these writes,
/// so a command (or a bulk chunk of many records) reads its own writes.
pub struct WriteSet {
    /// key -> new value (`None`: removed); the last write of a key wins.
    pending: HashMap<String, Option<Vec<u8>>>,
    /// key -> new value for the overlay, not sled ([`WriteSet::put_deferred`], [`WriteSet::put_patch`]).
    deferred: HashMap<String, Deferred>,
    /// seen key -> what it produced, encoded; the last write of a key wins.
    seen: HashMap<String, Vec<u8>>,
    events: Vec<Event>,
}

impl WriteSet {
    /// Write an entity.
    pub fn put<T: Serialize>(&mut self, kind: &str, id: &str, value: &T) {
        self.through(entity_key(kind, id), Some(encode(value)));
    }

    /// Write any key (cursors, published statuses).
    pub fn put_raw<T: Serialize>(&mut self, key: &str, value: &T) {
        self.through(key.to_string(), Some(encode(value)));
    }

    /// Remove any key (outbox delivery rows).
    pub fn remove_raw(&mut self, key: &str) {
        self.through(key.to_string(), None);
    }

    /// A write to sled; it supersedes a deferred write of the key in this set.
    fn through(&mut self, key: String, value: Option<Vec<u8>>) {
        if !self.deferred.is_empty() {
            self.deferred.remove(&key);
        }
        self.pending.insert(key, value);
    }

    /// Write (`Some`) or remove (`None`) a key in the store's in-memory overlay instead of sled, for state the journal
    /// can rebuild (an invoice's payment state after an ingested payment, see `engine/journal.rs`): every read sees
    /// it at once, sled gets it at the next checkpoint ([`Store::write_snapshot`]). A key this set writes through stays
    /// written through, so nothing the journal cannot rebuild is left to the overlay.
    pub fn put_deferred<T: Serialize>(&mut self, key: &str, value: Option<&T>) {
        let value = value.map(encode);
        match self.pending.get_mut(key) {
            Some(through) => *through = value,
            None => {
                let value = Deferred::Value(value.map(sled::IVec::from));
                self.deferred.insert(key.to_string(), value);
            }
        }
    }

    /// [`WriteSet::put_deferred`] of a few fields of the key's value ([`Patch`]), without reading it. Over a value this
    /// set holds already (written through or deferred) the patch is applied to it at once.
    pub fn put_patch(&mut self, key: &str, patch: Patch) -> StoreResult<()> {
        if let Some(through) = self.pending.get_mut(key) {
            if let Some(bytes) = through {
                *bytes = patch.apply(key, bytes)?;
            }
            return Ok(());
        }
        let patch = Deferred::Patch(Arc::new(patch));
        let value = match self.deferred.remove(key) {
            Some(earlier) => earlier.then(key, patch)?,
            None => patch,
        };
        self.deferred.insert(key.to_string(), value);
        Ok(())
    }

    /// True when an event of this set is flagged for the outbox.
    pub fn has_outbox(&self) -> bool {
        self.events.iter().any(|e| e.outbox)
    }

    /// Point an index entry at an id.
    pub fn index(&mut self, index: &str, key: &str, id: &str) {
        self.through(index_key(index, key), Some(encode(&id)));
    }

    /// Remove an index entry.
    pub fn unindex(&mut self, index: &str, key: &str) {
        self.through(index_key(index, key), None);
    }

    /// Record an idempotency key with what it produced. The common `{"payment_id": id}` is stored as the bare id (a
    /// million-line import writes a million of these); [`expand_seen`] turns it back.
    pub fn seen(&mut self, key: &str, produced: &serde_json::Value) {
        let value = match produced.as_object() {
            Some(map) if map.len() == 1 && map.get("payment_id").is_some_and(|v| v.is_string()) => {
                encode(&map["payment_id"])
            }
            _ => encode(produced),
        };
        self.seen.insert(key.to_string(), value);
    }

    /// Commit a source's cursor with the records it covers.
    pub fn cursor(&mut self, source: &str, cursor: &serde_json::Value) {
        self.pending
            .insert(format!("c/{source}"), Some(encode(cursor)));
    }

    /// Append an audit event; with `outbox`, also queue it for sink plugins.
    pub fn event(
        &mut self,
        actor: &str,
        kind: &str,
        entity: &str,
        entity_id: &str,
        data: serde_json::Value,
        outbox: bool,
    ) {
        self.events.push(Event {
            id: 0,
            at: chrono::Utc::now(),
            actor: actor.to_string(),
            kind: kind.to_string(),
            entity: entity.to_string(),
            entity_id: entity_id.to_string(),
            data,
            outbox,
        });
    }

    /// True when nothing but counters was written.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.deferred.is_empty()
            && self.seen.is_empty()
            && self.pending.keys().all(|k| k.starts_with("n/"))
    }
}

/// A prefix scan of sled with the overlay's deferred writes merged in (an overlay value wins; `None` hides the key).
struct MergedScan<S: Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> {
    sled: std::iter::Peekable<S>,
    overlay: std::iter::Peekable<std::vec::IntoIter<(String, Deferred)>>,
}

impl<S: Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> Iterator for MergedScan<S> {
    type Item = StoreResult<(String, sled::IVec)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let order = match (self.sled.peek(), self.overlay.peek()) {
                (None, None) => return None,
                (Some(Err(_)), _) => return self.sled.next().map(|r| Err(r.unwrap_err().into())),
                (Some(Ok(_)), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(Ok((k, _))), Some((o, _))) => k.as_ref().cmp(o.as_bytes()),
            };
            let mut base = None;
            if order != std::cmp::Ordering::Greater {
                let Some(Ok((k, v))) = self.sled.next() else {
                    continue;
                };
                if order == std::cmp::Ordering::Less {
                    return Some(Ok((String::from_utf8_lossy(&k).into_owned(), v)));
                }
                base = Some(v);
            }
            // The overlay's value of this key (over sled's, taken above when equal).
            if let Some((key, deferred)) = self.overlay.next() {
                match deferred.over(&key, base) {
                    Ok(Some(value)) => return Some(Ok((key, value))),
                    Ok(None) => {}
                    Err(e) => return Some(Err(e)),
                }
            }
        }
    }
}

/// A stored `seen` value as written: a bare string is the id of the payment the key produced.
pub fn expand_seen(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::String(id) => serde_json::json!({ "payment_id": id }),
        other => other,
    }
}

fn entity_key(kind: &str, id: &str) -> String {
    format!("e/{kind}/{id}")
}

fn index_key(index: &str, key: &str) -> String {
    format!("i/{index}/{key}")
}

fn seq_key(prefix: &str, seq: u64) -> String {
    format!("{prefix}{seq:020}")
}

/// Events in a write set from which [`Store::apply`] encodes them on a helper thread.
const PARALLEL_EVENTS: usize = 2 * blocks::MAX_BLOCK;

/// A write set's events on their way into blocks: still to be encoded, or being encoded by a helper thread.
enum EventBlocks<'scope> {
    /// The first event's id, and the events.
    Here(u64, Vec<Event>),
    Helper(std::thread::ScopedJoinHandle<'scope, Vec<(String, Vec<u8>)>>),
}

impl EventBlocks<'_> {
    /// The `v/` blocks: `(key, packed block)`.
    fn blocks(self) -> Vec<(String, Vec<u8>)> {
        match self {
            EventBlocks::Here(first_id, events) => event_blocks(first_id, events),
            EventBlocks::Helper(helper) => helper
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
        }
    }
}

/// Events numbered from `first_id`, as the `v/` blocks that hold them: `(key, packed block)`.
fn event_blocks(first_id: u64, events: Vec<Event>) -> Vec<(String, Vec<u8>)> {
    let encoded: Vec<Vec<u8>> = (first_id..)
        .zip(events)
        .map(|(id, mut event)| {
            event.id = id;
            encode(&event)
        })
        .collect();
    encoded
        .chunks(blocks::MAX_BLOCK)
        .zip((first_id..).step_by(blocks::MAX_BLOCK))
        .map(|(block, first)| {
            (
                seq_key("v/", first),
                blocks::pack(blocks::encode_events(block.iter().map(Vec::as_slice))),
            )
        })
        .collect()
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Serializing our own plain structs to a Vec cannot fail (no maps with non-string keys, no IO).
    serde_json::to_vec(value).unwrap_or_default()
}

/// The JSON of a stored block value, packed or not: for tools that read sled directly, like the benchmarks.
pub fn block_json<'a>(key: &str, bytes: &'a [u8]) -> StoreResult<std::borrow::Cow<'a, [u8]>> {
    blocks::unpack(key, bytes)
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> StoreResult<T> {
    let bytes = blocks::unpack(key, bytes)?;
    serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
        key: key.to_string(),
        source,
    })
}

/// The id of the last audit event: the last one of the last block.
fn last_event(tree: &sled::Tree) -> StoreResult<u64> {
    match tree.scan_prefix(b"v/").next_back() {
        None => Ok(0),
        Some(item) => {
            let (k, v) = item?;
            let block: Vec<Event> = decode(&String::from_utf8_lossy(&k), &v)?;
            Ok(block.last().map_or(0, |e| e.id))
        }
    }
}

fn lock_dir(dir: &Path) -> StoreResult<File> {
    use std::io::{Read, Seek, Write};
    let path = dir.join("LOCK");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|source| StoreError::Io {
            context: format!("opening lock file {}", path.display()),
            source,
        })?;
    if file.try_lock().is_err() {
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        return Err(StoreError::Locked {
            path: dir.to_path_buf(),
            pid: pid.trim().to_string(),
        });
    }
    let io = |source| StoreError::Io {
        context: format!("writing lock file {}", path.display()),
        source,
    };
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    write!(file, "{}", std::process::id()).map_err(io)?;
    Ok(file)
}

#[cfg(test)]
pub(crate) mod full_disk;
#[cfg(test)]
mod tests;
