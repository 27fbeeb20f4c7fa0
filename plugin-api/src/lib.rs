//! The plugin contract of settled.
//!
//! A connector plugin is a `cdylib` that depends on this crate alone, implements [`sdk::Plugin`] and invokes
//! [`export_plugin!`]. Plugins are sans-IO translators: the host owns every socket, file and timeout;
//! a plugin turns bytes into canonical [`wire::Record`]s and events into outbound requests.
//! See `README.md` beside this crate for a plugin author's guide.
#![deny(missing_docs)]

pub mod sdk;
pub mod wire;

pub use sdk::Plugin;
pub use wire::*;

// Re-exported so plugins and the export macro need no direct dependency on them.
pub use chrono;
pub use rust_decimal;
pub use serde_json;

/// Export a [`Plugin`] implementation from a `cdylib`: generates the ABI header and entry points.
///
/// PLACEHOLDER until the ABI lands: expands to nothing so plugin crates can be written against the trait.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {};
}
