//! Fixture: the ABI written by hand so calls can return malformed output
//! (`bad_utf8`, `bad_json`, `wrong_version`, `oversized`); `echo` answers properly.

use std::ffi::c_void;

use settled_plugin_api::abi::{
    HostCallbacks, OutBuf, PluginHeader, PluginVTable, Status, MAX_OUTPUT, STATUS_OK,
};

/// A valid header.
#[no_mangle]
pub static SETTLED_PLUGIN_HEADER: PluginHeader = PluginHeader::CURRENT;

static VTABLE: PluginVTable = PluginVTable {
    manifest,
    create,
    call,
    destroy,
    free,
};

/// Returns the hand-written table.
///
/// # Safety
/// None needed; it ignores `host`.
#[no_mangle]
pub unsafe extern "C" fn settled_plugin_init(host: *const HostCallbacks) -> *const PluginVTable {
    let _ = host;
    &VTABLE
}

fn reply(out: *mut OutBuf, bytes: Vec<u8>) -> Status {
    if !out.is_null() {
        // SAFETY: the host passes a writable slot.
        unsafe { out.write(OutBuf::from_vec(bytes)) };
    }
    STATUS_OK
}

extern "C" fn manifest(out: *mut OutBuf) -> Status {
    let text =
        r#"{"v":1,"op":"ok","payload":{"name":"bad-output","version":"1.0.0","roles":["intake"]}}"#;
    reply(out, text.as_bytes().to_vec())
}

extern "C" fn create(
    _: *const u8,
    _: usize,
    instance: *mut *mut c_void,
    out: *mut OutBuf,
) -> Status {
    if !instance.is_null() {
        // SAFETY: the host passes a writable slot; the handle is never dereferenced.
        unsafe { instance.write(std::ptr::NonNull::<c_void>::dangling().as_ptr()) };
    }
    reply(out, br#"{"v":1,"op":"ok","payload":null}"#.to_vec())
}

extern "C" fn call(
    _: *mut c_void,
    op: *const u8,
    op_len: usize,
    payload: *const u8,
    payload_len: usize,
    out: *mut OutBuf,
) -> Status {
    // SAFETY: the host passes buffers valid for the call.
    let op = unsafe { std::slice::from_raw_parts(op, op_len) };
    let bytes = match op {
        b"bad_utf8" => b"{\"v\":1,\"op\":\"ok\",\"payload\":\"\xff\xfe\"}".to_vec(),
        b"bad_json" => br#"{"v":1,"op":"ok","payload":"#.to_vec(),
        b"wrong_version" => br#"{"v":2,"op":"ok","payload":null}"#.to_vec(),
        b"oversized" => vec![b' '; MAX_OUTPUT + 1],
        _ => {
            let mut ok = br#"{"v":1,"op":"ok","payload":"#.to_vec();
            if payload.is_null() || payload_len == 0 {
                ok.extend_from_slice(b"null");
            } else {
                // SAFETY: as above.
                ok.extend_from_slice(unsafe { std::slice::from_raw_parts(payload, payload_len) });
            }
            ok.push(b'}');
            ok
        }
    };
    reply(out, bytes)
}

extern "C" fn destroy(_: *mut c_void) {}

extern "C" fn free(buf: OutBuf) {
    // SAFETY: the host returns buffers made by `reply`, once each.
    drop(unsafe { buf.into_vec() });
}
