//! The plugin contract of settled.
//!
//! A connector plugin is a `cdylib` that depends on this crate alone, implements [`sdk::Plugin`] and invokes
//! [`export_plugin!`]. Plugins are sans-IO translators: the host owns every socket, file and timeout;
//! a plugin turns bytes into canonical [`wire::Record`]s and events into outbound requests.
//! See `README.md` beside this crate for a plugin author's guide.
#![deny(missing_docs)]

pub mod abi;
pub mod money;
pub mod sdk;
pub mod settings;
pub mod wire;

pub use sdk::Plugin;
pub use wire::*;

// Re-exported so plugins and the export macro need no direct dependency on them.
pub use chrono;
pub use rust_decimal;
pub use serde_json;

/// Export a [`Plugin`] implementation from a `cdylib`: generates the ABI header and every entry point.
///
/// Use it once per plugin crate, at the crate root:
/// ```text
/// settled_plugin_api::export_plugin!(MyPlugin);
/// ```
/// It defines the `SETTLED_PLUGIN_HEADER` static and `settled_plugin_init` (see [`abi`]); each entry point
/// catches panics, and the plugin's `tracing` events are forwarded to the host's log.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[no_mangle]
        #[doc(hidden)]
        pub static SETTLED_PLUGIN_HEADER: $crate::abi::PluginHeader =
            $crate::abi::PluginHeader::CURRENT;

        #[no_mangle]
        #[doc(hidden)]
        pub unsafe extern "C" fn settled_plugin_init(
            host: *const $crate::abi::HostCallbacks,
        ) -> *const $crate::abi::PluginVTable {
            static VTABLE: $crate::abi::PluginVTable = $crate::sdk::export::vtable::<$plugin>();
            // SAFETY: the host passes null or valid callbacks that outlive this library.
            unsafe { $crate::sdk::export::init(host, &VTABLE) }
        }
    };
}
