//! End-to-end tests: the real `settled` binary and the real plugins, on loopback, in temp dirs.
//! Run after `cargo build --workspace` (the README's test command does both).

mod api;
mod connectors;
mod dovecot;
mod harness;
mod lifecycle;
mod mailbox;
mod plugin_host;
