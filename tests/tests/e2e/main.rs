//! End-to-end tests: the real `settled` binary and the real plugins, on loopback, in temp dirs.
//! Run after `cargo build --workspace` (the README's test command does both).

mod api;
mod connectors;
mod csv_footers;
mod cut_references;
mod disk_full;
mod dovecot;
mod hand_allocations;
mod harness;
mod hledger;
mod imports;
mod inbox;
mod lifecycle;
mod mailbox;
mod outbox;
mod plugin_host;
mod receiver;
mod refused;
mod returns;
mod tryton;
mod tryton_server;
