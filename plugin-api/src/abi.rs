//! The C ABI between the host and a plugin `cdylib`.
//!
//! The host and a plugin may be built by different rustc versions, so nothing Rust-specific crosses this
//! boundary: only `#[repr(C)]` structs, `extern "C"` functions and byte buffers holding JSON.
//!
//! Loading sequence:
//! 1. The host reads the static [`PluginHeader`] exported as [`HEADER_SYMBOL`] and checks the magic bytes and
//!    the ABI major version. No plugin code has run yet; a mismatch rejects the file.
//! 2. The host calls [`INIT_SYMBOL`] (`settled_plugin_init`) with its [`HostCallbacks`] and gets a
//!    [`PluginVTable`].
//! 3. [`PluginVTable::manifest`], then [`PluginVTable::create`] once per connector instance, then
//!    [`PluginVTable::call`] for every operation.
//!
//! Buffers: input is borrowed `(ptr, len)`, valid only during the call. Output is an [`OutBuf`] the plugin
//! allocates and the host returns through [`PluginVTable::free`], so each side frees only its own memory.
//! Every output is a JSON [`Envelope`](crate::wire::Envelope) except after [`STATUS_PANICKED`], where it
//! is the panic message as UTF-8 text.
//!
//! Compatibility: within one [`ABI_MAJOR`] the table and the header only grow at the end; the host checks
//! [`PluginHeader::vtable_size`] before using a field added in a later minor version.

use std::ffi::c_void;

/// The first bytes of [`PluginHeader`]: identifies a settled plugin.
pub const ABI_MAGIC: [u8; 8] = *b"SETTLED\0";
/// ABI major version: a plugin built for another major is refused before any of its code runs.
pub const ABI_MAJOR: u32 = 1;
/// ABI minor version: additions only; the host accepts plugins with a lower minor.
///
/// - 1.0: the first release.
/// - 1.1: chunked parse sessions (`parse_begin`, `parse_feed`, `parse_end`, `parse_abort`); the function
///   table is unchanged, the new operations travel through [`PluginVTable::call`].
/// - 1.2: the host runs the `sink` role (outbox delivery); [`SinkInput`](crate::SinkInput) gains `attempt` and `now`.
///   The table is unchanged.
///   `mail` replies may list attachments for the file pipeline (`MailAttachment`).
/// - 1.3: the host runs the `poll` role on a schedule; the record kind `invoice@1` (an invoice kept in another
///   system). The table is unchanged.
/// - 1.4: `invoice@1` records may carry their tax per rate (`taxes`); a host before 1.4 refuses records that do.
///   The table is unchanged.
pub const ABI_MINOR: u32 = 4;
/// Name of the exported header static, NUL-terminated for `dlsym`.
pub const HEADER_SYMBOL: &[u8] = b"SETTLED_PLUGIN_HEADER\0";
/// Name of the exported init function, NUL-terminated for `dlsym`.
pub const INIT_SYMBOL: &[u8] = b"settled_plugin_init\0";
/// The largest output the host accepts from one call (64 MiB); larger outputs are reported as bad output.
pub const MAX_OUTPUT: usize = 64 * 1024 * 1024;

/// Status of an ABI call.
pub type Status = i32;
/// The call succeeded; the output is an `ok` envelope.
pub const STATUS_OK: Status = 0;
/// The plugin reports an error; the output is an `error` envelope holding a [`PluginError`](crate::PluginError).
pub const STATUS_ERROR: Status = 1;
/// The plugin panicked; the output is the panic message as UTF-8 text.
pub const STATUS_PANICKED: Status = 2;
/// The plugin cannot serve this host (it was initialised with another ABI major); the output is a message.
pub const STATUS_INCOMPATIBLE: Status = 3;

/// Log levels passed to [`HostCallbacks::log`].
pub mod level {
    /// `ERROR`.
    pub const ERROR: u32 = 1;
    /// `WARN`.
    pub const WARN: u32 = 2;
    /// `INFO`.
    pub const INFO: u32 = 3;
    /// `DEBUG`.
    pub const DEBUG: u32 = 4;
    /// `TRACE`.
    pub const TRACE: u32 = 5;
}

/// The static every plugin exports as `SETTLED_PLUGIN_HEADER`. Read by the host before any plugin code runs.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginHeader {
    /// Always [`ABI_MAGIC`].
    pub magic: [u8; 8],
    /// The ABI major version the plugin was built for.
    pub abi_major: u32,
    /// The ABI minor version the plugin was built for.
    pub abi_minor: u32,
    /// `size_of::<PluginVTable>()` as the plugin knows it; later minors append fields.
    pub vtable_size: u32,
}

impl PluginHeader {
    /// The header of a plugin built against this crate.
    pub const CURRENT: PluginHeader = PluginHeader {
        magic: ABI_MAGIC,
        abi_major: ABI_MAJOR,
        abi_minor: ABI_MINOR,
        vtable_size: std::mem::size_of::<PluginVTable>() as u32,
    };
}

/// The log callback: `(ctx, level, target ptr, target len, message ptr, message len)`; strings are UTF-8.
pub type LogFn = extern "C" fn(*const c_void, u32, *const u8, usize, *const u8, usize);

/// What the host gives a plugin at init.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct HostCallbacks {
    /// The host's ABI major version.
    pub abi_major: u32,
    /// The host's ABI minor version.
    pub abi_minor: u32,
    /// The most verbose [`level`] the host wants; events above it are not sent.
    pub max_level: u32,
    /// Opaque host pointer passed back as the first argument of `log`.
    pub ctx: *const c_void,
    /// Receives the plugin's `tracing` events. May be called from any thread.
    pub log: LogFn,
}

/// A plugin-owned output buffer. The host reads `len` bytes at `ptr`, then hands it back to
/// [`PluginVTable::free`]. `cap` is private to the plugin.
#[repr(C)]
#[derive(Debug)]
pub struct OutBuf {
    /// Start of the bytes; null when empty.
    pub ptr: *mut u8,
    /// Number of bytes.
    pub len: usize,
    /// The allocation's capacity, for the plugin's `free`.
    pub cap: usize,
}

impl OutBuf {
    /// An empty buffer (nothing to free).
    pub const EMPTY: OutBuf = OutBuf {
        ptr: std::ptr::null_mut(),
        len: 0,
        cap: 0,
    };

    /// Hand a vector's allocation over to the host.
    pub fn from_vec(bytes: Vec<u8>) -> OutBuf {
        let mut bytes = std::mem::ManuallyDrop::new(bytes);
        OutBuf {
            ptr: bytes.as_mut_ptr(),
            len: bytes.len(),
            cap: bytes.capacity(),
        }
    }

    /// Take the allocation back (plugin side, in `free`).
    ///
    /// # Safety
    /// `self` must come from [`OutBuf::from_vec`] in this same library and not have been freed before.
    pub unsafe fn into_vec(self) -> Vec<u8> {
        if self.ptr.is_null() {
            return Vec::new();
        }
        // SAFETY: the caller guarantees ptr/len/cap describe a Vec allocation made by this library's allocator.
        unsafe { Vec::from_raw_parts(self.ptr, self.len, self.cap) }
    }

    /// The bytes (host side), valid until the buffer is freed.
    ///
    /// # Safety
    /// `ptr` must point to `len` readable bytes, as a plugin's [`PluginVTable`] functions guarantee.
    pub unsafe fn as_slice(&self) -> &[u8] {
        if self.ptr.is_null() || self.len == 0 {
            return &[];
        }
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// The function table returned by `settled_plugin_init`. Every function catches panics itself.
///
/// The functions are `unsafe` to call: pointers must be valid as described on each field, and an instance
/// handle must come from `create` of the same table and not have been destroyed.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PluginVTable {
    /// Writes the plugin's [`Manifest`](crate::Manifest) in an `ok` envelope to `out`.
    pub manifest: unsafe extern "C" fn(out: *mut OutBuf) -> Status,
    /// Creates an instance from its JSON settings (borrowed `ptr, len`). On [`STATUS_OK`] the handle is
    /// written to `instance`; otherwise `out` says why (`error` envelope or panic message).
    pub create: unsafe extern "C" fn(
        config: *const u8,
        config_len: usize,
        instance: *mut *mut c_void,
        out: *mut OutBuf,
    ) -> Status,
    /// Runs operation `op` (UTF-8) with a JSON payload on an instance; the reply envelope goes to `out`.
    /// May be called from several threads at once on the same instance.
    pub call: unsafe extern "C" fn(
        instance: *mut c_void,
        op: *const u8,
        op_len: usize,
        payload: *const u8,
        payload_len: usize,
        out: *mut OutBuf,
    ) -> Status,
    /// Drops an instance. The host calls it once, after the last call on the instance returned.
    pub destroy: unsafe extern "C" fn(instance: *mut c_void),
    /// Frees an output buffer produced by this plugin.
    pub free: unsafe extern "C" fn(buf: OutBuf),
}

/// The signature of `settled_plugin_init`: returns the table, or null when the plugin refuses this host.
pub type InitFn = unsafe extern "C" fn(host: *const HostCallbacks) -> *const PluginVTable;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_buf_round_trips_a_vec() {
        let buf = OutBuf::from_vec(b"hello".to_vec());
        // SAFETY: buf comes from from_vec just above.
        let seen = unsafe { buf.as_slice() }.to_vec();
        // SAFETY: same buffer, freed once.
        let back = unsafe { buf.into_vec() };
        assert_eq!(seen, b"hello");
        assert_eq!(back, b"hello");
    }

    #[test]
    fn empty_out_buf_is_an_empty_slice() {
        // SAFETY: EMPTY has a null pointer, which as_slice handles.
        assert!(unsafe { OutBuf::EMPTY.as_slice() }.is_empty());
    }

    #[test]
    fn current_header_names_this_crates_abi() {
        let h = PluginHeader::CURRENT;
        assert_eq!(&h.magic, b"SETTLED\0");
        assert_eq!((h.abi_major, h.abi_minor), (ABI_MAJOR, ABI_MINOR));
        assert_eq!(h.vtable_size as usize, std::mem::size_of::<PluginVTable>());
    }
}
