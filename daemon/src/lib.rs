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
