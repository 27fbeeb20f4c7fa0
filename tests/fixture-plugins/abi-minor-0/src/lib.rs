//! Fixture: a file plugin as built for ABI 1.0, before parse sessions existed. Its header says minor 0
//! and its `call` refuses the session operations the way a 1.0 SDK did (`unsupported`), so a host that
//! sent them anyway would fail; `parse` turns lines into `lead@1` records.

use std::ffi::c_void;

use settled_plugin_api::abi::{
    HostCallbacks, OutBuf, PluginHeader, PluginVTable, Status, ABI_MAGIC, ABI_MAJOR, STATUS_ERROR,
};
use settled_plugin_api::sdk::export;
use settled_plugin_api::serde_json::Value;
use settled_plugin_api::{
    Envelope, FileRequest, LeadRecord, Manifest, ParseReply, Plugin, PluginError, Record, Role,
    ENVELOPE_VERSION,
};

/// The fixture's only type.
pub struct Legacy;

impl Plugin for Legacy {
    fn manifest() -> Manifest {
        Manifest {
            name: "abi-minor-0".into(),
            version: "1.0.0".into(),
            roles: vec![Role::File],
            description: "test fixture".into(),
        }
    }

    fn configure(settings: Value) -> Result<Self, PluginError> {
        let _ = settings;
        Ok(Legacy)
    }

    fn parse(&self, request: FileRequest) -> Result<ParseReply, PluginError> {
        let text = String::from_utf8_lossy(&request.content);
        Ok(ParseReply {
            records: text
                .lines()
                .map(|line| {
                    Record::Lead(LeadRecord {
                        name: line.to_string(),
                        source: "import".to_string(),
                        ..LeadRecord::default()
                    })
                })
                .collect(),
        })
    }
}

/// An ABI 1.0 header.
#[no_mangle]
pub static SETTLED_PLUGIN_HEADER: PluginHeader = PluginHeader {
    magic: ABI_MAGIC,
    abi_major: ABI_MAJOR,
    abi_minor: 0,
    vtable_size: std::mem::size_of::<PluginVTable>() as u32,
};

static VTABLE: PluginVTable = PluginVTable {
    call: legacy_call,
    ..export::vtable::<Legacy>()
};

/// The SDK's init with this fixture's table.
///
/// # Safety
/// As [`export::init`].
#[no_mangle]
pub unsafe extern "C" fn settled_plugin_init(host: *const HostCallbacks) -> *const PluginVTable {
    // SAFETY: forwarded from the host, which guarantees it.
    unsafe { export::init(host, &VTABLE) }
}

/// The SDK's `call`, except for the operations ABI 1.0 did not have.
///
/// # Safety
/// As [`export::call`].
unsafe extern "C" fn legacy_call(
    instance: *mut c_void,
    op: *const u8,
    op_len: usize,
    payload: *const u8,
    payload_len: usize,
    out: *mut OutBuf,
) -> Status {
    // SAFETY: the host passes `op_len` readable bytes.
    let name = unsafe { std::slice::from_raw_parts(op, op_len) };
    if name.starts_with(b"parse_") && !out.is_null() {
        let error = PluginError::unsupported(&String::from_utf8_lossy(name));
        let bytes = settled_plugin_api::serde_json::to_vec(&Envelope {
            v: ENVELOPE_VERSION,
            op: "error".to_string(),
            payload: settled_plugin_api::serde_json::to_value(error).unwrap_or_default(),
        })
        .unwrap_or_default();
        // SAFETY: the host passes a writable slot; the buffer is freed by this library's `free`.
        unsafe { out.write(OutBuf::from_vec(bytes)) };
        return STATUS_ERROR;
    }
    // SAFETY: forwarded unchanged.
    unsafe { export::call::<Legacy>(instance, op, op_len, payload, payload_len, out) }
}
