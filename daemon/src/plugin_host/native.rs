//! Opening a plugin library in the current process and calling through its function table.
//!
//! Used in the daemon for `in-process` instances and in the `plugin-host` child for `process` ones.
//! A library is never closed: `dlclose` after Rust code ran is unsound (thread-locals, leaked callbacks),
//! so each loaded version stays mapped until the process exits.

use std::collections::HashMap;
use std::ffi::c_void;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::thread::Thread;
use std::time::{Duration, Instant};

use libloading::os::unix::{Library, Symbol, RTLD_LOCAL, RTLD_NOW};
use settled_plugin_api::abi::{
    self, HostCallbacks, InitFn, LogFn, OutBuf, PluginHeader, PluginVTable, Status, ABI_MAGIC,
    ABI_MAJOR, ABI_MINOR, MAX_OUTPUT,
};
use settled_plugin_api::{Manifest, PluginError};

/// The outcome of one ABI call, decoded but not yet attributed to an instance.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reply {
    /// `ok` envelope payload.
    Ok(serde_json::Value),
    /// The plugin's own error.
    Err(PluginError),
    /// The plugin panicked; the message.
    Panicked(String),
    /// Malformed output, or a status the host does not know.
    Bad(String),
}

/// Decodes a status and its output buffer.
pub(crate) fn decode(status: Status, bytes: &[u8]) -> Reply {
    match status {
        abi::STATUS_PANICKED => Reply::Panicked(String::from_utf8_lossy(bytes).into_owned()),
        abi::STATUS_INCOMPATIBLE => Reply::Bad(format!(
            "the plugin refused this host: {}",
            String::from_utf8_lossy(bytes)
        )),
        abi::STATUS_OK | abi::STATUS_ERROR => {
            if bytes.len() > MAX_OUTPUT {
                return Reply::Bad(oversized(bytes.len()));
            }
            let text = match std::str::from_utf8(bytes) {
                Ok(text) => text,
                Err(e) => {
                    return Reply::Bad(format!(
                        "output is not utf-8 (invalid byte at offset {})",
                        e.valid_up_to()
                    ))
                }
            };
            let envelope: settled_plugin_api::Envelope = match serde_json::from_str(text) {
                Ok(envelope) => envelope,
                Err(e) => return Reply::Bad(format!("output is not a json envelope: {e}")),
            };
            if envelope.v != settled_plugin_api::ENVELOPE_VERSION {
                return Reply::Bad(format!(
                    "envelope version {}, this host speaks {}",
                    envelope.v,
                    settled_plugin_api::ENVELOPE_VERSION
                ));
            }
            match (status, envelope.op.as_str()) {
                (abi::STATUS_OK, settled_plugin_api::ops::OK) => Reply::Ok(envelope.payload),
                (abi::STATUS_ERROR, settled_plugin_api::ops::ERROR) => {
                    match serde_json::from_value(envelope.payload) {
                        Ok(error) => Reply::Err(error),
                        Err(e) => Reply::Bad(format!("error envelope without a plugin error: {e}")),
                    }
                }
                (_, op) => Reply::Bad(format!("status {status} with an envelope of op `{op}`")),
            }
        }
        other => Reply::Bad(format!("unknown status code {other}")),
    }
}

/// The message for an output over [`MAX_OUTPUT`].
pub(crate) fn oversized(len: usize) -> String {
    format!("output of {len} bytes is over the 64 MiB limit")
}

/// Checks a header read from a library; nothing of the plugin has run yet.
pub(crate) fn check_header(header: &PluginHeader) -> Result<(), String> {
    if header.magic != ABI_MAGIC {
        return Err(format!(
            "wrong magic bytes {:?} in SETTLED_PLUGIN_HEADER: not a settled plugin",
            String::from_utf8_lossy(&header.magic)
        ));
    }
    if header.abi_major != ABI_MAJOR {
        return Err(format!(
            "built for plugin ABI {}.{}, this host speaks {ABI_MAJOR}.{ABI_MINOR}: rebuild it against settled-plugin-api with ABI {ABI_MAJOR}",
            header.abi_major, header.abi_minor
        ));
    }
    let needed = std::mem::size_of::<PluginVTable>();
    if (header.vtable_size as usize) < needed {
        return Err(format!(
            "its function table has {} bytes, ABI {ABI_MAJOR} needs at least {needed}",
            header.vtable_size
        ));
    }
    Ok(())
}

/// A library opened and initialised in this process.
pub(crate) struct NativeLib {
    header: PluginHeader,
    vtable: PluginVTable,
}

impl std::fmt::Debug for NativeLib {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeLib")
            .field("header", &self.header)
            .finish()
    }
}

impl NativeLib {
    /// Opens `path`, checks its header, then runs its init with `log`/`ctx` as the log callback and
    /// `max_level` (an [`abi::level`] number) as the most verbose level wanted.
    /// `ctx` must stay valid for the rest of the process.
    pub(crate) fn open(
        path: &Path,
        log: LogFn,
        ctx: *const c_void,
        max_level: u32,
    ) -> Result<Arc<NativeLib>, String> {
        // SAFETY: opening runs the library's ELF constructors. Only files that passed the pre-open checks
        // get here, and Rust plugins have no constructors of their own.
        let lib = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }
            .map_err(|e| format!("cannot be loaded: {e}"))?;
        // SAFETY: the symbol is a `PluginHeader` static if present; reading it runs no plugin code.
        let header = unsafe { lib.get::<*const PluginHeader>(abi::HEADER_SYMBOL) }
            .map(|sym: Symbol<*const PluginHeader>| *sym)
            .map_err(|_| "has no SETTLED_PLUGIN_HEADER symbol: not a settled plugin (missing export_plugin!?)".to_string())?;
        if header.is_null() {
            return Err("its SETTLED_PLUGIN_HEADER symbol is null".to_string());
        }
        // SAFETY: non-null address of the exported static, which has the ABI's layout for any major
        // (magic and versions first).
        let header = unsafe { std::ptr::read_unaligned(header) };
        check_header(&header)?;
        // SAFETY: the symbol is declared with the ABI's init signature.
        let init: InitFn = unsafe { lib.get::<InitFn>(abi::INIT_SYMBOL) }
            .map(|sym| *sym)
            .map_err(|_| "has no settled_plugin_init symbol".to_string())?;
        // From here on plugin code runs, so the library is never closed.
        std::mem::forget(lib);
        let callbacks: &'static HostCallbacks = Box::leak(Box::new(HostCallbacks {
            abi_major: ABI_MAJOR,
            abi_minor: ABI_MINOR,
            max_level,
            ctx,
            log,
        }));
        // SAFETY: the library passed the header check, so init has the ABI's signature; the callbacks
        // are leaked and outlive it.
        let table = unsafe { init(callbacks) };
        if table.is_null() {
            return Err(
                "settled_plugin_init returned no function table (it refused this host)".to_string(),
            );
        }
        // SAFETY: non-null pointer to a static table of at least `vtable_size` >= size_of::<PluginVTable>() bytes.
        let vtable = unsafe { std::ptr::read_unaligned(table) };
        Ok(Arc::new(NativeLib { header, vtable }))
    }

    /// The ABI version the plugin was built for.
    pub(crate) fn abi(&self) -> (u32, u32) {
        (self.header.abi_major, self.header.abi_minor)
    }

    /// Runs an entry point that fills an [`OutBuf`], decodes the output and frees it.
    fn with_out(&self, f: impl FnOnce(*mut OutBuf) -> Status) -> Reply {
        let mut out = OutBuf::EMPTY;
        let status = f(&mut out);
        let reply = if out.len > MAX_OUTPUT {
            Reply::Bad(oversized(out.len))
        } else {
            // SAFETY: the plugin filled `out` with `len` readable bytes; freed right below.
            decode(status, unsafe { out.as_slice() })
        };
        // SAFETY: `out` was produced by this library and is freed once.
        unsafe { (self.vtable.free)(out) };
        reply
    }

    /// Like [`NativeLib::with_out`] but hands back the raw status and bytes (the child forwards them);
    /// `Err` for an output over [`MAX_OUTPUT`].
    pub(crate) fn raw(
        &self,
        f: impl FnOnce(&PluginVTable, *mut OutBuf) -> Status,
    ) -> Result<(Status, Vec<u8>), String> {
        let mut out = OutBuf::EMPTY;
        let status = f(&self.vtable, &mut out);
        let result = if out.len > MAX_OUTPUT {
            Err(oversized(out.len))
        } else {
            // SAFETY: as in `with_out`.
            Ok((status, unsafe { out.as_slice() }.to_vec()))
        };
        // SAFETY: `out` was produced by this library and is freed once.
        unsafe { (self.vtable.free)(out) };
        result
    }

    /// The plugin's manifest.
    pub(crate) fn manifest(&self) -> Result<Manifest, String> {
        // SAFETY: `out` is a writable slot.
        match self.with_out(|out| unsafe { (self.vtable.manifest)(out) }) {
            Reply::Ok(value) => {
                serde_json::from_value(value).map_err(|e| format!("bad manifest: {e}"))
            }
            Reply::Err(e) => Err(format!("manifest failed: {e}")),
            Reply::Panicked(m) => Err(format!("panicked while giving its manifest: {m}")),
            Reply::Bad(m) => Err(format!("bad manifest: {m}")),
        }
    }

    /// Creates an instance from its JSON settings.
    pub(crate) fn create(self: &Arc<Self>, settings: &[u8]) -> Result<NativeInstance, Reply> {
        let mut handle: *mut c_void = std::ptr::null_mut();
        // SAFETY: `settings` is borrowed for the call; `handle` and `out` are writable slots.
        let reply = self.with_out(|out| unsafe {
            (self.vtable.create)(settings.as_ptr(), settings.len(), &mut handle, out)
        });
        match reply {
            Reply::Ok(_) if !handle.is_null() => Ok(NativeInstance {
                lib: Arc::clone(self),
                handle,
            }),
            Reply::Ok(_) => Err(Reply::Bad(
                "create answered ok without an instance".to_string(),
            )),
            other => Err(other),
        }
    }
}

/// The most verbose level this process's subscriber wants, in [`abi::level`] numbers.
pub(crate) fn max_level() -> u32 {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        LevelFilter::OFF => 0,
        LevelFilter::ERROR => abi::level::ERROR,
        LevelFilter::WARN => abi::level::WARN,
        LevelFilter::INFO => abi::level::INFO,
        LevelFilter::DEBUG => abi::level::DEBUG,
        _ => abi::level::TRACE,
    }
}

/// One plugin instance living in this process. Destroyed when the last reference goes.
pub(crate) struct NativeInstance {
    lib: Arc<NativeLib>,
    handle: *mut c_void,
}

// SAFETY: the plugin type behind `handle` is `Send + Sync` (the SDK's `Plugin` bound), and the ABI allows
// concurrent calls on one instance.
unsafe impl Send for NativeInstance {}
// SAFETY: as above.
unsafe impl Sync for NativeInstance {}

impl NativeInstance {
    /// Runs one operation; blocks for as long as the plugin takes.
    pub(crate) fn call(&self, op: &str, payload: &[u8]) -> Reply {
        let handle = self.handle;
        // SAFETY: `handle` is live until `Drop`; the buffers are borrowed for the call.
        self.lib.with_out(|out| unsafe {
            (self.lib.vtable.call)(
                handle,
                op.as_ptr(),
                op.len(),
                payload.as_ptr(),
                payload.len(),
                out,
            )
        })
    }

    /// Same, with the raw status and output (for the child process).
    pub(crate) fn call_raw(&self, op: &[u8], payload: &[u8]) -> Result<(Status, Vec<u8>), String> {
        let handle = self.handle;
        // SAFETY: as in `call`.
        self.lib.raw(|vt, out| unsafe {
            (vt.call)(
                handle,
                op.as_ptr(),
                op.len(),
                payload.as_ptr(),
                payload.len(),
                out,
            )
        })
    }
}

impl Drop for NativeInstance {
    fn drop(&mut self) {
        // SAFETY: the handle came from `create`; this is the last reference, so no call is running.
        unsafe { (self.lib.vtable.destroy)(self.handle) };
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// How long an idle worker keeps looking for its next call before it sleeps: calls that come back to back find it
/// awake, so handing one over costs no wake-up of a sleeping thread.
const WORKER_SPIN: Duration = Duration::from_micros(100);
/// How long a caller looks for the answer before its task sleeps: a short call is answered without a wake-up.
const CALLER_SPIN: Duration = Duration::from_micros(50);
/// How often the watchdog looks at running calls: a call is reported timed out at most this much after its deadline.
const WATCHDOG_TICK: Duration = Duration::from_millis(10);
/// After this long without a call the watchdog sleeps until the next one.
const WATCHDOG_IDLE: Duration = Duration::from_secs(1);

/// Why a timed job gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoAnswer {
    /// The watchdog found it still running at its deadline; its thread is left to it.
    TimedOut,
    /// It never ran (no thread could be started for it).
    NotRun,
}

/// Threads that run in-process plugin calls, and the watchdog that times them out.
///
/// A call runs on a worker thread, not on the caller's: a plugin call that never returns must leave the caller (and the
/// record it is processing) free to be answered "timed out", which no watchdog can do for a thread stuck in the plugin.
/// What costs time in such a hand-over is waking sleeping threads, so neither side sleeps on short calls: an idle worker
/// keeps looking for its next call for [`WORKER_SPIN`], the caller looks for the answer for [`CALLER_SPIN`] before its
/// task waits, and the deadline is kept by one watchdog thread instead of a runtime timer per call.
///
/// Plain threads, not `spawn_blocking`: a hung plugin call must not keep the runtime from shutting down.
/// A hung thread is simply abandoned; idle threads and the watchdog exit when the pool is dropped.
pub(crate) struct Workers {
    idle: Mutex<Vec<Arc<Worker>>>,
    watchdog: Arc<Watchdog>,
}

impl Default for Workers {
    fn default() -> Self {
        Workers {
            idle: Mutex::new(Vec::new()),
            watchdog: Arc::new(Watchdog::default()),
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for worker in lock(&self.idle).drain(..) {
            worker.closed.store(true, Ordering::SeqCst);
            worker.thread.unpark();
        }
        self.watchdog.close();
    }
}

/// One worker thread and its mailbox.
struct Worker {
    thread: Thread,
    job: Mutex<Option<Job>>,
    has_job: AtomicBool,
    closed: AtomicBool,
}

impl Worker {
    /// The next job: looked for without sleeping for [`WORKER_SPIN`], then parked for. `None` once the pool is gone.
    fn next_job(&self) -> Option<Job> {
        let started = Instant::now();
        let mut spinning = true;
        loop {
            if self.has_job.swap(false, Ordering::Acquire) {
                if let Some(job) = lock(&self.job).take() {
                    return Some(job);
                }
            }
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            if spinning {
                for _ in 0..64 {
                    std::hint::spin_loop();
                }
                spinning = started.elapsed() < WORKER_SPIN;
            } else {
                // Spurious wake-ups and early unparks are fine: the loop looks again.
                std::thread::park();
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Workers {
    /// Runs `job` on an idle worker, or on a new one if all are busy. `false` when no thread could be started for it.
    pub(crate) fn run(self: &Arc<Self>, job: Job) -> bool {
        let idle = lock(&self.idle).pop();
        if let Some(worker) = idle {
            *lock(&worker.job) = Some(job);
            worker.has_job.store(true, Ordering::Release);
            worker.thread.unpark();
            return true;
        }
        let pool = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("settled-plugin-call".to_string())
            .spawn(move || worker_loop(pool, job));
        match spawned {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(error = %e, "cannot start a plugin call thread");
                false
            }
        }
    }

    /// Runs `job` on a worker and waits for its answer until `timeout`, which the watchdog enforces.
    pub(crate) async fn call<T: Send + 'static>(
        self: &Arc<Self>,
        timeout: Duration,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NoAnswer> {
        let (tx, mut rx) = tokio::sync::oneshot::channel::<Option<T>>();
        let answer = Arc::new(Answer(Mutex::new(Some(tx))));
        let watched = Watched {
            watchdog: &self.watchdog,
            id: self
                .watchdog
                .watch(Instant::now() + timeout, Arc::clone(&answer) as _),
        };
        let run = self.run(Box::new(move || {
            let out = job();
            answer.give(Some(out));
        }));
        if !run {
            return Err(NoAnswer::NotRun);
        }
        let started = Instant::now();
        let answered = loop {
            match rx.try_recv() {
                Ok(answered) => break Some(answered),
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => break None,
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
            }
            if started.elapsed() >= CALLER_SPIN {
                break rx.await.ok();
            }
            for _ in 0..64 {
                std::hint::spin_loop();
            }
        };
        drop(watched);
        match answered {
            Some(Some(out)) => Ok(out),
            Some(None) => Err(NoAnswer::TimedOut),
            // Both the job and the watchdog let go of the answer without giving one: the job was dropped unrun.
            None => Err(NoAnswer::NotRun),
        }
    }
}

fn worker_loop(pool: Weak<Workers>, first: Job) {
    let me = Arc::new(Worker {
        thread: std::thread::current(),
        job: Mutex::new(None),
        has_job: AtomicBool::new(false),
        closed: AtomicBool::new(false),
    });
    let mut job = first;
    loop {
        job();
        match pool.upgrade() {
            Some(pool) => lock(&pool.idle).push(Arc::clone(&me)),
            None => return,
        }
        match me.next_job() {
            Some(next) => job = next,
            None => return,
        }
    }
}

/// Where a timed job's answer goes: given once, by the job or (as `None`, timed out) by the watchdog.
struct Answer<T>(Mutex<Option<tokio::sync::oneshot::Sender<Option<T>>>>);

impl<T> Answer<T> {
    fn give(&self, answer: Option<T>) {
        if let Some(tx) = lock(&self.0).take() {
            let _ = tx.send(answer);
        }
    }
}

/// What the watchdog can do to a running call: answer it "timed out".
trait Expire: Send + Sync {
    fn expire(&self);
}

impl<T: Send> Expire for Answer<T> {
    fn expire(&self) {
        self.give(None);
    }
}

/// One thread keeping the deadlines of running calls. It ticks every [`WATCHDOG_TICK`] while calls run and sleeps after
/// [`WATCHDOG_IDLE`] without any, so an idle daemon has no timer waking up.
#[derive(Default)]
struct Watchdog {
    state: Mutex<WatchState>,
    thread: OnceLock<Thread>,
}

#[derive(Default)]
struct WatchState {
    next_id: u64,
    running: HashMap<u64, (Instant, Arc<dyn Expire>)>,
    last_call: Option<Instant>,
    asleep: bool,
    closed: bool,
}

/// A registered call; unregistered when dropped (answered, or the caller gave up waiting).
struct Watched<'a> {
    watchdog: &'a Arc<Watchdog>,
    id: u64,
}

impl Drop for Watched<'_> {
    fn drop(&mut self) {
        lock(&self.watchdog.state).running.remove(&self.id);
    }
}

impl Watchdog {
    fn watch(self: &Arc<Self>, deadline: Instant, call: Arc<dyn Expire>) -> u64 {
        let mut state = lock(&self.state);
        let id = state.next_id;
        state.next_id += 1;
        state.running.insert(id, (deadline, call));
        state.last_call = Some(Instant::now());
        let wake = std::mem::replace(&mut state.asleep, false);
        drop(state);
        let thread = self.thread.get_or_init(|| {
            let watchdog = Arc::downgrade(self);
            std::thread::Builder::new()
                .name("settled-plugin-watchdog".to_string())
                .spawn(move || watchdog_loop(&watchdog))
                .map(|handle| handle.thread().clone())
                // Without a watchdog thread calls are still answered, only not timed out; say so once.
                .unwrap_or_else(|e| {
                    tracing::error!(error = %e, "cannot start the plugin call watchdog: in-process calls will not time out");
                    std::thread::current()
                })
        });
        if wake {
            thread.unpark();
        }
        id
    }

    fn close(&self) {
        lock(&self.state).closed = true;
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }
}

fn watchdog_loop(watchdog: &Weak<Watchdog>) {
    loop {
        let Some(dog) = watchdog.upgrade() else {
            return;
        };
        let now = Instant::now();
        let mut state = lock(&dog.state);
        if state.closed {
            return;
        }
        let overdue: Vec<u64> = state
            .running
            .iter()
            .filter(|(_, (deadline, _))| *deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        let expired: Vec<Arc<dyn Expire>> = overdue
            .iter()
            .filter_map(|id| state.running.remove(id).map(|(_, call)| call))
            .collect();
        let idle = state.running.is_empty()
            && state
                .last_call
                .is_none_or(|last| now.duration_since(last) >= WATCHDOG_IDLE);
        state.asleep = idle;
        drop(state);
        for call in expired {
            call.expire();
        }
        drop(dog);
        if idle {
            std::thread::park();
        } else {
            std::thread::park_timeout(WATCHDOG_TICK);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn check(status: Status, bytes: &[u8], expected: Reply) {
        assert_eq!(
            decode(status, bytes),
            expected,
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }

    #[test]
    fn decode_sorts_replies_into_ok_plugin_error_panic_and_bad_output() {
        check(
            0,
            br#"{"v":1,"op":"ok","payload":[1]}"#,
            Reply::Ok(serde_json::json!([1])),
        );
        check(
            1,
            br#"{"v":1,"op":"error","payload":{"code":"bad_config","message":"missing","location":"url"}}"#,
            Reply::Err(PluginError::bad_config("url", "missing")),
        );
        check(2, b"boom", Reply::Panicked("boom".to_string()));
        check(
            3,
            b"old host",
            Reply::Bad("the plugin refused this host: old host".to_string()),
        );
        check(7, b"", Reply::Bad("unknown status code 7".to_string()));
        check(
            0,
            b"{\"v\":1,\xff}",
            Reply::Bad("output is not utf-8 (invalid byte at offset 7)".to_string()),
        );
        check(
            0,
            br#"{"v":1,"op":"ok","payload":"#,
            Reply::Bad(
                "output is not a json envelope: EOF while parsing a value at line 1 column 27"
                    .to_string(),
            ),
        );
        check(
            0,
            br#"{"v":2,"op":"ok"}"#,
            Reply::Bad("envelope version 2, this host speaks 1".to_string()),
        );
        check(
            0,
            br#"{"v":1,"op":"error","payload":{}}"#,
            Reply::Bad("status 0 with an envelope of op `error`".to_string()),
        );
        check(
            1,
            br#"{"v":1,"op":"error","payload":{"code":7}}"#,
            Reply::Bad("error envelope without a plugin error: invalid type: integer `7`, expected a string".to_string()),
        );
    }

    #[test]
    fn header_check_names_magic_major_and_table_size() {
        let ok = PluginHeader::CURRENT;
        assert_eq!(check_header(&ok), Ok(()));
        let magic = PluginHeader {
            magic: *b"NOTSETL\0",
            ..ok
        };
        assert!(check_header(&magic).is_err_and(|e| e.starts_with("wrong magic bytes")));
        let major = PluginHeader {
            abi_major: ABI_MAJOR + 1,
            abi_minor: 0,
            ..ok
        };
        assert!(check_header(&major).is_err_and(|e| e.starts_with("built for plugin ABI 2.0")));
        let lower_minor = PluginHeader { abi_minor: 0, ..ok };
        assert_eq!(check_header(&lower_minor), Ok(()));
        let small = PluginHeader {
            vtable_size: 8,
            ..ok
        };
        assert!(check_header(&small).is_err_and(|e| e.contains("function table has 8 bytes")));
    }

    #[test]
    fn workers_run_jobs_concurrently_and_reuse_idle_threads() {
        let pool = Arc::new(Workers::default());
        let (tx, rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        // The first job blocks until released; the second must still run on another thread.
        let t1 = tx.clone();
        assert!(pool.run(Box::new(move || {
            let _ = release_rx.recv();
            let _ = t1.send((1, std::thread::current().id()));
        })));
        let t2 = tx.clone();
        assert!(pool.run(Box::new(move || {
            let _ = t2.send((2, std::thread::current().id()));
        })));
        let (second, second_thread) = rx.recv().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(second, 2);
        let _ = release_tx.send(());
        let (first, first_thread) = rx.recv().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first, 1);
        assert_ne!(first_thread, second_thread);
        // Both are idle now: the next job runs on one of them, no third thread.
        while lock(&pool.idle).len() < 2 {
            std::thread::yield_now();
        }
        let t3 = tx.clone();
        assert!(pool.run(Box::new(move || {
            let _ = t3.send((3, std::thread::current().id()));
        })));
        let (third, third_thread) = rx.recv().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(third, 3);
        assert!([first_thread, second_thread].contains(&third_thread));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_watchdog_answers_a_call_that_overruns_its_timeout_and_the_pool_serves_on() {
        let pool = Arc::new(Workers::default());
        assert_eq!(pool.call(Duration::from_secs(10), || 7).await, Ok(7));
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let started = Instant::now();
        let hung = pool
            .call(Duration::from_millis(100), move || {
                let _ = release_rx.recv();
                1
            })
            .await;
        assert_eq!(hung, Err(NoAnswer::TimedOut));
        assert!(started.elapsed() >= Duration::from_millis(100));
        // The hung job keeps its thread; other calls run on another one and answer themselves.
        assert_eq!(pool.call(Duration::from_secs(10), || 8).await, Ok(8));
        assert!(lock(&pool.watchdog.state).running.is_empty());
        let _ = release_tx.send(());
    }
}
