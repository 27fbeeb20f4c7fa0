//! End-to-end tests: the real `settled` binary and the real plugins, on loopback, in temp dirs.
//! Run after `cargo build --workspace` (the README's test command does both).

mod api;
mod connectors;
mod crash;
mod credit;
mod csv_footers;
mod cut_references;
mod disk_full;
mod dovecot;
mod edges;
mod exports;
mod hand_allocations;
mod harness;
mod hledger;
mod imports;
mod inbox;
mod journal;
mod large_files;
mod lifecycle;
mod mailbox;
mod outbox;
mod plugin_host;
mod proxy;
mod receiver;
mod refused;
mod reload;
mod returns;
mod sandbox;
mod tryton;
mod tryton_server;
