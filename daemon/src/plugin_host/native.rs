//! Opening a plugin library in the current process and calling through its function table.
//!
//! Used in the daemon for `in-process` instances and in the `plugin-host` child for `process` ones.
//! A library is never closed: `dlclose` after Rust code ran is unsound (thread-locals, leaked callbacks),
//! so each loaded version stays mapped until the process exits.

use std::ffi::c_void;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex, PoisonError, Weak};

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

/// Threads that run in-process plugin calls so that the async runtime can time them out.
///
/// Plain threads, not `spawn_blocking`: a hung plugin call must not keep the runtime from shutting down.
/// A hung thread is simply abandoned; idle threads exit when the pool is dropped.
#[derive(Default)]
pub(crate) struct Workers {
    idle: Mutex<Vec<mpsc::Sender<Job>>>,
}

impl Workers {
    /// Runs `job` on an idle worker, or on a new one if all are busy.
    pub(crate) fn run(self: &Arc<Self>, job: Job) {
        let mut job = job;
        loop {
            let idle = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            match idle {
                Some(worker) => match worker.send(job) {
                    Ok(()) => return,
                    Err(mpsc::SendError(back)) => job = back,
                },
                None => break,
            }
        }
        let pool = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("settled-plugin-call".to_string())
            .spawn(move || worker_loop(pool, job));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a plugin call thread");
        }
    }
}

fn worker_loop(pool: Weak<Workers>, first: Job) {
    let mut job = first;
    loop {
        job();
        // A fresh channel each round: when the pool is dropped, its senders go and `recv` ends the thread.
        let (tx, rx) = mpsc::channel::<Job>();
        match pool.upgrade() {
            Some(pool) => pool
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(tx),
            None => return,
        }
        match rx.recv() {
            Ok(next) => job = next,
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        pool.run(Box::new(move || {
            let _ = release_rx.recv();
            let _ = t1.send(1);
        }));
        let t2 = tx.clone();
        pool.run(Box::new(move || {
            let _ = t2.send(2);
        }));
        assert_eq!(rx.recv().ok(), Some(2));
        let _ = release_tx.send(());
        assert_eq!(rx.recv().ok(), Some(1));
    }
}
