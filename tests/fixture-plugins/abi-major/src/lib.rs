//! Fixture: a header the host must refuse. `settled_plugin_init` aborts the process that calls it, so a host that ran
//! it would report a dead child (or die) instead of the header's refusal. (It cannot leave a file behind: the sandboxed
//! plugin child may not write files.)

use settled_plugin_api::abi::{
    HostCallbacks, PluginHeader, PluginVTable, ABI_MAGIC, ABI_MAJOR, ABI_MINOR,
};

/// The refused header.
#[no_mangle]
pub static SETTLED_PLUGIN_HEADER: PluginHeader = PluginHeader {
    magic: ABI_MAGIC,
    abi_major: ABI_MAJOR + 98,
    abi_minor: ABI_MINOR,
    vtable_size: std::mem::size_of::<PluginVTable>() as u32,
};

/// Must never run: aborts.
///
/// # Safety
/// None needed; it ignores `host`.
#[no_mangle]
pub unsafe extern "C" fn settled_plugin_init(host: *const HostCallbacks) -> *const PluginVTable {
    let _ = host;
    std::process::abort()
}
