//! settled: the Lead-to-Invoice sync daemon. See ARCHITECTURE.md for a map of this crate.

pub mod api;
pub mod app;
pub mod check;
pub mod cli;
pub mod config;
pub mod config_watch;
pub mod demo;
pub mod domain;
pub mod engine;
pub mod import;
pub mod inbox;
pub mod mailbox;
pub mod outbox;
pub mod plugin_host;
pub mod poll;
pub mod reconcile;
pub mod scheduler;
pub mod store;

/// jemalloc's options for the `settled` binary (its `malloc_conf`, set by [`jemalloc_options!`] in `main.rs`; the benches
/// that measure memory set the same). The `_RJEM_MALLOC_CONF` environment variable, read after it, overrides any of them.
///
/// - `background_thread`, `dirty_decay_ms:1000`, `muzzy_decay_ms:0`: freed pages go back to the system after about a
///   second, on jemalloc's own thread. By default jemalloc keeps them 10 s and purges on the threads that allocate; a bulk
///   import frees and allocates tens of megabytes a second, and that delay held ~40-80 MiB of its peak.
/// - `narenas:1`: one arena instead of four per core. With eight, the import's threads (the writer, the event encoder,
///   checkpoints, sled's) each kept partly used pages of their own, and resident memory grew all through a 1M-line
///   import to 511-533 MiB; with one it stays flat near 400 MiB, at the same speed within the machine's spread (the
///   engine's writes are serial under its writer lock, and each thread's cache serves most allocations without the
///   arena's lock). Measured in BENCHMARKS.md; on a many-core machine with heavy intake, `narenas:N` may serve better.
pub const JEMALLOC_CONF: &std::ffi::CStr =
    c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:1";

/// Make [`JEMALLOC_CONF`] jemalloc's `malloc_conf` in the executable that calls it (once, at its crate root, beside its
/// jemalloc `#[global_allocator]`): `settled::jemalloc_options!();`. jemalloc's symbols carry the `_rjem_` prefix.
#[macro_export]
macro_rules! jemalloc_options {
    () => {
        #[export_name = "_rjem_malloc_conf"]
        #[allow(non_upper_case_globals)]
        static malloc_conf: Option<&'static std::ffi::c_char> = Some(
            // SAFETY: the first byte of a static NUL-terminated string, which jemalloc only reads.
            unsafe { &*$crate::JEMALLOC_CONF.as_ptr() },
        );
    };
}
