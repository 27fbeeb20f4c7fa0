//! settled: the Lead-to-Invoice sync daemon. See ARCHITECTURE.md for a map of this crate.

pub mod store;
