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

/// jemalloc's options for the `settled` binary (its `malloc_conf`, set in `main.rs`; the benches that measure memory set
/// the same). The `_RJEM_MALLOC_CONF` environment variable, read after it, overrides any of them.
///
/// By default jemalloc keeps freed pages for 10 s before giving them back, on the threads that allocate. A bulk import
/// frees and allocates tens of megabytes a second (records parsed, blocks encoded, checkpoint batches), so that delay
/// alone held about 80 MiB of a 400,000-line import's peak resident memory (BENCHMARKS.md). With these options freed
/// pages go back after about a second, on jemalloc's own background thread rather than the importing one.
pub const JEMALLOC_CONF: &std::ffi::CStr =
    c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0";
