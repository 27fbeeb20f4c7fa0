//! Fixture: a header the host must refuse. `settled_plugin_init` writes the file named by
//! `SETTLED_FIXTURE_MARKER`, so a test can prove the host never ran it.

use settled_plugin_api::abi::{HostCallbacks, PluginHeader, PluginVTable, ABI_MAJOR, ABI_MINOR};

/// The refused header.
#[no_mangle]
pub static SETTLED_PLUGIN_HEADER: PluginHeader = PluginHeader {
    magic: *b"NOTSETL\0",
    abi_major: ABI_MAJOR,
    abi_minor: ABI_MINOR,
    vtable_size: std::mem::size_of::<PluginVTable>() as u32,
};

/// Must never run: leaves the marker file.
///
/// # Safety
/// None needed; it ignores `host`.
#[no_mangle]
pub unsafe extern "C" fn settled_plugin_init(host: *const HostCallbacks) -> *const PluginVTable {
    let _ = host;
    if let Some(path) = std::env::var_os("SETTLED_FIXTURE_MARKER") {
        let _ = std::fs::write(path, b"init ran");
    }
    std::ptr::null()
}
