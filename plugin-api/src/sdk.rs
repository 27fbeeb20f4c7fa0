//! The safe side of the SDK: one trait a plugin implements, with a default for every role it does not play.
//!
//! A plugin type is created once per connector instance from that instance's JSON settings
//! ([`Plugin::configure`]); the host may call one instance from several threads at once, so methods take `&self`.

use crate::wire::{
    ops, FileRequest, HttpRequestSpec, IntakeOutcome, IntakeRequest, MailOutcome, MailRequest,
    Manifest, ParseReply, PaymentRecord, PluginError, PollReply, PollResponse, PollStart, Record,
    SinkInput, SinkStep, SniffReply, SniffRequest,
};

/// `file`: an incremental parser for one file, fed in chunks (ABI 1.1 parse sessions).
///
/// The records of all `feed` calls followed by those of `finish` must equal what [`Plugin::parse`] returns
/// for the whole file, whatever the chunk boundaries (a chunk may end inside a line or a multi-byte
/// character). Any bad entry fails the file, as in `parse`; after an error the parser is dropped.
pub trait StreamParser: Send {
    /// The next bytes of the file; returns the records they completed.
    fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Record>, PluginError>;
    /// End of the file: the remaining records, or the error naming the bad line or element.
    fn finish(self: Box<Self>) -> Result<Vec<Record>, PluginError>;
}

/// A connector plugin. Implement the methods of the roles named in [`Plugin::manifest`];
/// the others answer `unsupported`.
pub trait Plugin: Send + Sync + Sized + 'static {
    /// Name, version and roles. Called before any instance exists.
    fn manifest() -> Manifest;

    /// Create an instance from its settings (the `[connector.settings]` table of the host's config as JSON).
    /// Reject bad settings with [`PluginError::bad_config`] naming the key.
    fn configure(settings: serde_json::Value) -> Result<Self, PluginError>;

    /// `intake`: an inbound HTTP request.
    fn intake(&self, request: IntakeRequest) -> Result<IntakeOutcome, PluginError> {
        let _ = request;
        Err(PluginError::unsupported(ops::INTAKE))
    }

    /// `file`: how sure are you that this file is yours (0 = not mine)?
    fn sniff(&self, request: SniffRequest) -> SniffReply {
        let _ = request;
        SniffReply { confidence: 0 }
    }

    /// `file`: parse a whole file. Any bad entry fails the whole file, naming where.
    fn parse(&self, request: FileRequest) -> Result<ParseReply, PluginError> {
        let _ = request;
        Err(PluginError::unsupported(ops::PARSE))
    }

    /// `file`: a chunked parser for the file `name`, for memory-bounded imports of big files.
    /// `None` (the default) makes the SDK buffer the fed bytes and call [`Plugin::parse`] at the end.
    fn stream_parser(&self, name: &str) -> Option<Box<dyn StreamParser>> {
        let _ = name;
        None
    }

    /// `mail`: a raw RFC 822 message.
    fn mail(&self, request: MailRequest) -> Result<MailOutcome, PluginError> {
        let _ = request;
        Err(PluginError::unsupported(ops::MAIL))
    }

    /// `poll`: the request to send, given the last cursor.
    fn poll_start(&self, start: PollStart) -> Result<HttpRequestSpec, PluginError> {
        let _ = start;
        Err(PluginError::unsupported(ops::POLL_START))
    }

    /// `poll`: records from the response.
    fn poll_response(&self, response: PollResponse) -> Result<PollReply, PluginError> {
        let _ = response;
        Err(PluginError::unsupported(ops::POLL_RESPONSE))
    }

    /// `sink`: the next step of delivering an event.
    fn sink_step(&self, input: SinkInput) -> Result<SinkStep, PluginError> {
        let _ = input;
        Ok(SinkStep::Ignored)
    }

    /// Any operation the SDK does not know (a plugin's own diagnostics, or an op added in a later ABI minor).
    fn custom(
        &self,
        op: &str,
        payload: serde_json::Value,
    ) -> Result<serde_json::Value, PluginError> {
        let _ = payload;
        Err(PluginError::unsupported(op))
    }
}

/// `file`: the reply of a plugin whose files hold payments only, records in file order.
pub fn payments(records: Vec<PaymentRecord>) -> ParseReply {
    ParseReply {
        records: records.into_iter().map(Record::Payment).collect(),
    }
}

/// The glue `export_plugin!` expands to: generic `extern "C"` entry points over a [`Plugin`] type.
/// Not a stable API; use the macro.
#[doc(hidden)]
pub mod export {
    use std::any::Any;
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::ffi::c_void;
    use std::fmt::Write as _;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Mutex, OnceLock, PoisonError};

    use serde::de::DeserializeOwned;
    use serde::Serialize;
    use tracing_core::field::{Field, Visit};
    use tracing_core::span::{Attributes, Id, Record};
    use tracing_core::{Event, Level, LevelFilter, Metadata, Subscriber};

    use super::{Plugin, StreamParser};
    use crate::abi::{
        level, HostCallbacks, OutBuf, PluginVTable, Status, ABI_MAJOR, STATUS_ERROR,
        STATUS_INCOMPATIBLE, STATUS_OK, STATUS_PANICKED,
    };
    use crate::wire::{
        ops, Envelope, FileRequest, ParseBegin, ParseFeed, ParseReply, ParseSessionId, PluginError,
        Record as WireRecord, ENVELOPE_VERSION,
    };

    /// The host callbacks this library was initialised with. Each plugin `cdylib` has its own copy of
    /// this crate, hence its own static.
    struct Host(HostCallbacks);
    // SAFETY: the host promises `log` may be called from any thread and `ctx` stays valid for the
    // lifetime of the process (the host never unloads a plugin).
    unsafe impl Send for Host {}
    // SAFETY: as above; the callbacks are only read.
    unsafe impl Sync for Host {}

    static HOST: OnceLock<Host> = OnceLock::new();

    thread_local! {
        static PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
    }

    /// The function table for `P`, built at compile time.
    pub const fn vtable<P: Plugin>() -> PluginVTable {
        PluginVTable {
            manifest: manifest::<P>,
            create: create::<P>,
            call: call::<P>,
            destroy: destroy::<P>,
            free,
        }
    }

    /// `settled_plugin_init`: remembers the host callbacks, installs the log forwarder and a panic hook,
    /// returns the table (null when the host speaks another ABI major).
    ///
    /// # Safety
    /// `host` must be null or point to valid [`HostCallbacks`] whose `ctx` outlives the library.
    pub unsafe fn init(
        host: *const HostCallbacks,
        table: &'static PluginVTable,
    ) -> *const PluginVTable {
        if host.is_null() {
            return std::ptr::null();
        }
        // SAFETY: checked non-null; the caller guarantees it points to HostCallbacks.
        let callbacks = unsafe { *host };
        if callbacks.abi_major != ABI_MAJOR {
            return std::ptr::null();
        }
        let installed = catch_unwind(|| {
            if HOST.set(Host(callbacks)).is_ok() {
                let max = match callbacks.max_level {
                    0 => LevelFilter::OFF,
                    level::ERROR => LevelFilter::ERROR,
                    level::WARN => LevelFilter::WARN,
                    level::INFO => LevelFilter::INFO,
                    level::DEBUG => LevelFilter::DEBUG,
                    _ => LevelFilter::TRACE,
                };
                // Fails only if the plugin installed its own subscriber, which then wins.
                let _ = tracing::subscriber::set_global_default(Forwarder {
                    max,
                    next_span: AtomicU64::new(1),
                });
                // This library has its own copy of std, so the hook only sees this plugin's panics.
                std::panic::set_hook(Box::new(|info| {
                    let location = info
                        .location()
                        .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
                    PANIC_LOCATION.with(|cell| *cell.borrow_mut() = location);
                }));
            }
        });
        match installed {
            Ok(()) => table,
            Err(_) => std::ptr::null(),
        }
    }

    /// Serialize an envelope; serializing a `Value` cannot fail, and if it somehow did the host sees bad output.
    fn envelope(op: &str, payload: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&Envelope {
            v: ENVELOPE_VERSION,
            op: op.to_string(),
            payload,
        })
        .unwrap_or_default()
    }

    fn panic_message(panic: &(dyn Any + Send)) -> String {
        let text = if let Some(s) = panic.downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = panic.downcast_ref::<String>() {
            s.clone()
        } else {
            "panic with a non-string payload".to_string()
        };
        match PANIC_LOCATION.with(|cell| cell.borrow_mut().take()) {
            Some(at) => format!("{text} (at {at})"),
            None => text,
        }
    }

    /// Runs `f` with panics caught and writes the reply (envelope or panic message) to `out`.
    fn guard(
        out: *mut OutBuf,
        f: impl FnOnce() -> Result<serde_json::Value, PluginError>,
    ) -> Status {
        let (status, bytes) = match catch_unwind(AssertUnwindSafe(|| match f() {
            Ok(v) => (STATUS_OK, envelope(ops::OK, v)),
            Err(e) => (
                STATUS_ERROR,
                envelope(ops::ERROR, serde_json::to_value(e).unwrap_or_default()),
            ),
        })) {
            Ok(reply) => reply,
            Err(panic) => (STATUS_PANICKED, panic_message(panic.as_ref()).into_bytes()),
        };
        if !out.is_null() {
            // SAFETY: the host passes a valid, writable OutBuf slot.
            unsafe { out.write(OutBuf::from_vec(bytes)) };
        }
        status
    }

    fn reply<T: Serialize>(value: T) -> Result<serde_json::Value, PluginError> {
        serde_json::to_value(value)
            .map_err(|e| PluginError::new("internal", format!("cannot serialize reply: {e}")))
    }

    fn request<T: DeserializeOwned>(
        op: &str,
        payload: serde_json::Value,
    ) -> Result<T, PluginError> {
        serde_json::from_value(payload)
            .map_err(|e| PluginError::bad_input("payload", format!("bad `{op}` request: {e}")))
    }

    /// # Safety
    /// `ptr` must be null or point to `len` readable bytes.
    unsafe fn borrowed<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
        if ptr.is_null() || len == 0 {
            &[]
        } else {
            // SAFETY: guaranteed by the caller.
            unsafe { std::slice::from_raw_parts(ptr, len) }
        }
    }

    fn json(bytes: &[u8], what: &str) -> Result<serde_json::Value, PluginError> {
        if bytes.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(bytes)
            .map_err(|e| PluginError::bad_input(what, format!("not valid json: {e}")))
    }

    /// Runs one operation on an instance.
    pub fn dispatch<P: Plugin>(
        plugin: &P,
        op: &str,
        payload: serde_json::Value,
    ) -> Result<serde_json::Value, PluginError> {
        match op {
            ops::MANIFEST => reply(P::manifest()),
            ops::INTAKE => reply(plugin.intake(request(op, payload)?)?),
            ops::SNIFF => reply(plugin.sniff(request(op, payload)?)),
            ops::PARSE => reply(plugin.parse(request(op, payload)?)?),
            ops::MAIL => reply(plugin.mail(request(op, payload)?)?),
            ops::POLL_START => reply(plugin.poll_start(request(op, payload)?)?),
            ops::POLL_RESPONSE => reply(plugin.poll_response(request(op, payload)?)?),
            ops::SINK_STEP => reply(plugin.sink_step(request(op, payload)?)?),
            other => plugin.custom(other, payload),
        }
    }

    /// Open parse sessions kept per instance; more than this drops the oldest.
    pub const MAX_SESSIONS: usize = 64;

    /// One open parse session.
    enum Session {
        /// The plugin's own incremental parser.
        Native(Box<dyn StreamParser>),
        /// The plugin has none: the bytes are kept and handed to `parse` at the end.
        Buffered { name: String, bytes: Vec<u8> },
    }

    #[derive(Default)]
    struct Sessions {
        next: u64,
        /// Ordered by id, which is the opening order: the first entry is the oldest.
        open: BTreeMap<u64, Session>,
    }

    /// What a plugin handle points to: the plugin and its open parse sessions.
    pub struct Instance<P> {
        plugin: P,
        sessions: Mutex<Sessions>,
    }

    impl<P: Plugin> Instance<P> {
        /// Wraps a configured plugin.
        pub fn new(plugin: P) -> Self {
            Instance {
                plugin,
                sessions: Mutex::new(Sessions::default()),
            }
        }

        /// The number of open parse sessions.
        pub fn open_sessions(&self) -> usize {
            self.lock().open.len()
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, Sessions> {
            self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
        }

        /// Runs one operation, parse sessions included.
        pub fn dispatch(
            &self,
            op: &str,
            payload: serde_json::Value,
        ) -> Result<serde_json::Value, PluginError> {
            match op {
                ops::PARSE_BEGIN => {
                    let begin: ParseBegin = request(op, payload)?;
                    reply(ParseSessionId {
                        session: self.begin(begin.name),
                    })
                }
                ops::PARSE_FEED => {
                    let feed: ParseFeed = request(op, payload)?;
                    reply(ParseReply {
                        records: self.feed(feed.session, &feed.chunk)?,
                    })
                }
                ops::PARSE_END => {
                    let end: ParseSessionId = request(op, payload)?;
                    reply(ParseReply {
                        records: self.end(end.session)?,
                    })
                }
                ops::PARSE_ABORT => {
                    let abort: ParseSessionId = request(op, payload)?;
                    drop(self.lock().open.remove(&abort.session));
                    Ok(serde_json::json!({}))
                }
                other => dispatch(&self.plugin, other, payload),
            }
        }

        fn begin(&self, name: String) -> u64 {
            // Created outside the lock: a plugin's constructor may be slow.
            let session = match self.plugin.stream_parser(&name) {
                Some(parser) => Session::Native(parser),
                None => Session::Buffered {
                    name,
                    bytes: Vec::new(),
                },
            };
            let mut sessions = self.lock();
            while sessions.open.len() >= MAX_SESSIONS {
                let Some((oldest, _)) = sessions.open.pop_first() else {
                    break;
                };
                tracing::warn!(
                    session = oldest,
                    "more than {MAX_SESSIONS} open parse sessions: the oldest was dropped"
                );
            }
            sessions.next += 1;
            let id = sessions.next;
            sessions.open.insert(id, session);
            id
        }

        /// Takes a session out of the table for the duration of a call, so that other sessions of the
        /// instance are not held up while this one parses.
        fn take(&self, id: u64) -> Result<Session, PluginError> {
            self.lock().open.remove(&id).ok_or_else(|| {
                PluginError::bad_input(
                    "session",
                    format!("no open parse session {id} (never opened, ended, aborted or dropped)"),
                )
            })
        }

        fn feed(&self, id: u64, chunk: &[u8]) -> Result<Vec<WireRecord>, PluginError> {
            let mut session = self.take(id)?;
            let records = match &mut session {
                Session::Native(parser) => parser.feed(chunk)?,
                Session::Buffered { bytes, .. } => {
                    bytes.extend_from_slice(chunk);
                    Vec::new()
                }
            };
            // Only a session that is still good goes back: after an error the file has failed.
            self.lock().open.insert(id, session);
            Ok(records)
        }

        fn end(&self, id: u64) -> Result<Vec<WireRecord>, PluginError> {
            match self.take(id)? {
                Session::Native(parser) => parser.finish(),
                Session::Buffered { name, bytes } => Ok(self
                    .plugin
                    .parse(FileRequest {
                        name,
                        content: bytes,
                    })?
                    .records),
            }
        }
    }

    /// [`PluginVTable::manifest`].
    ///
    /// # Safety
    /// `out` must be null or a writable [`OutBuf`] slot.
    pub unsafe extern "C" fn manifest<P: Plugin>(out: *mut OutBuf) -> Status {
        guard(out, || reply(P::manifest()))
    }

    /// [`PluginVTable::create`].
    ///
    /// # Safety
    /// `config` must point to `config_len` readable bytes; `instance` and `out` must be writable slots.
    pub unsafe extern "C" fn create<P: Plugin>(
        config: *const u8,
        config_len: usize,
        instance: *mut *mut c_void,
        out: *mut OutBuf,
    ) -> Status {
        if HOST.get().is_none() {
            return incompatible(out);
        }
        guard(out, || {
            if instance.is_null() {
                return Err(PluginError::new("internal", "null instance slot"));
            }
            // SAFETY: the host passes a buffer valid for the duration of the call.
            let settings = json(unsafe { borrowed(config, config_len) }, "settings")?;
            let plugin = P::configure(settings)?;
            let handle = Box::into_raw(Box::new(Instance::new(plugin))).cast::<c_void>();
            // SAFETY: checked non-null above; the host passes a writable slot.
            unsafe { instance.write(handle) };
            Ok(serde_json::Value::Null)
        })
    }

    fn incompatible(out: *mut OutBuf) -> Status {
        if !out.is_null() {
            let message = b"plugin was not initialised by a compatible host".to_vec();
            // SAFETY: the host passes a valid, writable OutBuf slot.
            unsafe { out.write(OutBuf::from_vec(message)) };
        }
        STATUS_INCOMPATIBLE
    }

    /// [`PluginVTable::call`].
    ///
    /// # Safety
    /// `instance` must be a live handle from [`create`] for the same `P`; `op` and `payload` must point to
    /// `op_len` and `payload_len` readable bytes; `out` must be a writable slot.
    pub unsafe extern "C" fn call<P: Plugin>(
        instance: *mut c_void,
        op: *const u8,
        op_len: usize,
        payload: *const u8,
        payload_len: usize,
        out: *mut OutBuf,
    ) -> Status {
        guard(out, || {
            if instance.is_null() {
                return Err(PluginError::new("internal", "null instance handle"));
            }
            // SAFETY: a non-null handle is one `create` returned and `destroy` has not consumed.
            let instance = unsafe { &*instance.cast::<Instance<P>>() };
            // SAFETY: the host passes buffers valid for the duration of the call.
            let op = std::str::from_utf8(unsafe { borrowed(op, op_len) })
                .map_err(|_| PluginError::bad_input("op", "operation name is not utf-8"))?;
            // SAFETY: as above.
            let payload = json(unsafe { borrowed(payload, payload_len) }, "payload")?;
            instance.dispatch(op, payload)
        })
    }

    /// [`PluginVTable::destroy`].
    ///
    /// # Safety
    /// `instance` must be a handle from [`create`] for the same `P`, destroyed once, with no call running on it.
    pub unsafe extern "C" fn destroy<P: Plugin>(instance: *mut c_void) {
        if instance.is_null() {
            return;
        }
        // A panicking Drop must not unwind into the host; the instance is gone either way.
        let _ = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: the handle came from `create` and the host destroys it exactly once.
            drop(unsafe { Box::from_raw(instance.cast::<Instance<P>>()) });
        }));
    }

    /// [`PluginVTable::free`].
    ///
    /// # Safety
    /// `buf` must come from this library and be freed once.
    pub unsafe extern "C" fn free(buf: OutBuf) {
        // SAFETY: the host returns buffers this library produced, once each.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { buf.into_vec() })));
    }

    /// Forwards this plugin's `tracing` events to the host's log callback.
    struct Forwarder {
        max: LevelFilter,
        next_span: AtomicU64,
    }

    #[derive(Default)]
    struct Fields {
        message: String,
        rest: String,
    }

    impl Visit for Fields {
        fn record_str(&mut self, field: &Field, value: &str) {
            if field.name() == "message" {
                self.message.push_str(value);
            } else {
                let _ = write!(self.rest, " {}={}", field.name(), value);
            }
        }

        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                let _ = write!(self.message, "{value:?}");
            } else {
                let _ = write!(self.rest, " {}={:?}", field.name(), value);
            }
        }
    }

    fn level_number(level: &Level) -> u32 {
        match *level {
            Level::ERROR => level::ERROR,
            Level::WARN => level::WARN,
            Level::INFO => level::INFO,
            Level::DEBUG => level::DEBUG,
            _ => level::TRACE,
        }
    }

    impl Subscriber for Forwarder {
        fn enabled(&self, metadata: &Metadata<'_>) -> bool {
            self.max >= *metadata.level()
        }

        fn max_level_hint(&self) -> Option<LevelFilter> {
            Some(self.max)
        }

        fn new_span(&self, _span: &Attributes<'_>) -> Id {
            Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed))
        }

        fn record(&self, _span: &Id, _values: &Record<'_>) {}

        fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

        fn event(&self, event: &Event<'_>) {
            let Some(Host(host)) = HOST.get() else {
                return;
            };
            let mut fields = Fields::default();
            event.record(&mut fields);
            let text = format!("{}{}", fields.message, fields.rest);
            let target = event.metadata().target();
            (host.log)(
                host.ctx,
                level_number(event.metadata().level()),
                target.as_ptr(),
                target.len(),
                text.as_ptr(),
                text.len(),
            );
        }

        fn enter(&self, _span: &Id) {}

        fn exit(&self, _span: &Id) {}
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::wire::{LeadRecord, Manifest, Role};
        use serde_json::json;

        struct Echo {
            prefix: String,
        }

        impl Plugin for Echo {
            fn manifest() -> Manifest {
                Manifest {
                    name: "echo".into(),
                    version: "1.0.0".into(),
                    roles: vec![Role::File],
                    description: String::new(),
                }
            }

            fn configure(settings: serde_json::Value) -> Result<Self, PluginError> {
                match settings.get("prefix").and_then(|v| v.as_str()) {
                    Some(p) => Ok(Echo { prefix: p.into() }),
                    None => Err(PluginError::bad_config("prefix", "missing")),
                }
            }

            fn parse(&self, request: FileRequest) -> Result<ParseReply, PluginError> {
                let text = String::from_utf8_lossy(&request.content);
                Ok(ParseReply {
                    records: text.lines().map(lead).collect(),
                })
            }

            fn stream_parser(&self, name: &str) -> Option<Box<dyn StreamParser>> {
                let _ = name;
                (self.prefix == "stream")
                    .then(|| Box::new(Lines::default()) as Box<dyn StreamParser>)
            }

            fn custom(
                &self,
                op: &str,
                payload: serde_json::Value,
            ) -> Result<serde_json::Value, PluginError> {
                match op {
                    "echo" => Ok(json!(format!("{}{}", self.prefix, payload))),
                    "boom" => panic!("boom"),
                    _ => Err(PluginError::unsupported(op)),
                }
            }
        }

        fn lead(name: &str) -> WireRecord {
            WireRecord::Lead(LeadRecord {
                name: name.to_string(),
                ..LeadRecord::default()
            })
        }

        /// A native streamer: one record per complete line; the line `bad` fails the file.
        #[derive(Default)]
        struct Lines {
            tail: Vec<u8>,
        }

        impl Lines {
            fn line(line: &[u8]) -> Result<WireRecord, PluginError> {
                match String::from_utf8_lossy(line).as_ref() {
                    "bad" => Err(PluginError::bad_input("line", "bad line")),
                    text => Ok(lead(text)),
                }
            }
        }

        impl StreamParser for Lines {
            fn feed(&mut self, chunk: &[u8]) -> Result<Vec<WireRecord>, PluginError> {
                self.tail.extend_from_slice(chunk);
                let Some(last) = self.tail.iter().rposition(|b| *b == b'\n') else {
                    return Ok(Vec::new());
                };
                let done: Vec<u8> = self.tail.drain(..=last).collect();
                done.split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .map(Lines::line)
                    .collect()
            }

            fn finish(self: Box<Self>) -> Result<Vec<WireRecord>, PluginError> {
                if self.tail.is_empty() {
                    return Ok(Vec::new());
                }
                Ok(vec![Lines::line(&self.tail)?])
            }
        }

        fn names(records: &[WireRecord]) -> Vec<String> {
            records
                .iter()
                .map(|r| match r {
                    WireRecord::Lead(l) => l.name.clone(),
                    other => format!("{other:?}"),
                })
                .collect()
        }

        fn instance(prefix: &str) -> Instance<Echo> {
            match Echo::configure(json!({ "prefix": prefix })) {
                Ok(echo) => Instance::new(echo),
                Err(e) => panic!("{e}"),
            }
        }

        fn begin(instance: &Instance<Echo>) -> u64 {
            match instance.dispatch(ops::PARSE_BEGIN, json!({"name": "f.txt"})) {
                Ok(v) => v["session"].as_u64().unwrap_or_else(|| panic!("{v}")),
                Err(e) => panic!("{e}"),
            }
        }

        fn feed(
            instance: &Instance<Echo>,
            session: u64,
            chunk: &[u8],
        ) -> Result<Vec<String>, PluginError> {
            let payload = serde_json::to_value(ParseFeed {
                session,
                chunk: chunk.to_vec(),
            })
            .unwrap_or_default();
            let reply: ParseReply =
                serde_json::from_value(instance.dispatch(ops::PARSE_FEED, payload)?)
                    .map_err(|e| PluginError::new("internal", e.to_string()))?;
            Ok(names(&reply.records))
        }

        fn end(instance: &Instance<Echo>, session: u64) -> Result<Vec<String>, PluginError> {
            let reply: ParseReply = serde_json::from_value(
                instance.dispatch(ops::PARSE_END, json!({ "session": session }))?,
            )
            .map_err(|e| PluginError::new("internal", e.to_string()))?;
            Ok(names(&reply.records))
        }

        /// Feeds `chunks` into a new session of an instance with `prefix`; checks what each feed and the
        /// end returned.
        fn check_session(prefix: &str, chunks: &[&str], fed: &[&[&str]], ended: &[&str]) {
            let instance = instance(prefix);
            let session = begin(&instance);
            let got: Vec<Vec<String>> = chunks
                .iter()
                .map(|c| feed(&instance, session, c.as_bytes()).unwrap_or_else(|e| panic!("{e}")))
                .collect();
            let expected: Vec<Vec<String>> = fed
                .iter()
                .map(|f| f.iter().map(|s| s.to_string()).collect())
                .collect();
            assert_eq!(got, expected, "feeds");
            assert_eq!(
                end(&instance, session).unwrap_or_else(|e| panic!("{e}")),
                ended.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                "end"
            );
            assert_eq!(instance.open_sessions(), 0);
        }

        #[test]
        fn native_stream_parser_returns_records_as_lines_complete() {
            check_session(
                "stream",
                &["a\nb", "c\nd\n", "e"],
                &[&["a"], &["bc", "d"], &[]],
                &["e"],
            );
        }

        #[test]
        fn without_a_stream_parser_the_bytes_are_buffered_and_parsed_at_the_end() {
            check_session(
                "plain",
                &["a\nb", "c\nd\n", "e"],
                &[&[], &[], &[]],
                &["a", "bc", "d", "e"],
            );
        }

        #[test]
        fn a_failed_feed_closes_the_session() {
            let instance = instance("stream");
            let session = begin(&instance);
            let failed = feed(&instance, session, b"ok\nbad\n");
            assert_eq!(failed.map_err(|e| e.message), Err("bad line".to_string()));
            assert_eq!(instance.open_sessions(), 0);
            let after = end(&instance, session).map_err(|e| e.location);
            assert_eq!(after, Err(Some("session".to_string())));
        }

        #[test]
        fn parse_abort_frees_the_session() {
            let instance = instance("plain");
            let session = begin(&instance);
            assert!(feed(&instance, session, b"abc").is_ok());
            assert_eq!(instance.open_sessions(), 1);
            let aborted = instance.dispatch(ops::PARSE_ABORT, json!({ "session": session }));
            assert_eq!(aborted.ok(), Some(json!({})));
            assert_eq!(instance.open_sessions(), 0);
            assert!(feed(&instance, session, b"x").is_err());
        }

        #[test]
        fn the_oldest_session_is_dropped_beyond_the_limit() {
            let instance = instance("plain");
            let first = begin(&instance);
            let second = begin(&instance);
            for _ in 2..MAX_SESSIONS {
                begin(&instance);
            }
            assert_eq!(instance.open_sessions(), MAX_SESSIONS);
            let newest = begin(&instance);
            assert_eq!(instance.open_sessions(), MAX_SESSIONS);
            assert!(feed(&instance, first, b"x").is_err());
            assert!(feed(&instance, second, b"x").is_ok());
            assert!(feed(&instance, newest, b"x").is_ok());
        }

        #[test]
        fn parse_ops_work_through_the_c_entry_point() {
            check(
                "parse_begin",
                r#"{"name":"f"}"#,
                STATUS_OK,
                r#"{"v":1,"op":"ok","payload":{"session":1}}"#,
            );
            check(
                "parse_end",
                r#"{"session":9}"#,
                STATUS_ERROR,
                r#"{"v":1,"op":"error","payload":{"code":"bad_input","location":"session","message":"no open parse session 9 (never opened, ended, aborted or dropped)"}}"#,
            );
        }

        fn take(out: OutBuf) -> Vec<u8> {
            // SAFETY: `out` was filled by this crate's entry points.
            unsafe { out.into_vec() }
        }

        fn create_echo(settings: &str) -> (Status, *mut c_void, Vec<u8>) {
            let mut out = OutBuf::EMPTY;
            let mut handle = std::ptr::null_mut();
            // SAFETY: valid buffers and slots.
            let status =
                unsafe { create::<Echo>(settings.as_ptr(), settings.len(), &mut handle, &mut out) };
            (status, handle, take(out))
        }

        /// Calls `op` with `payload` on an `Echo` instance; checks the status and the reply text.
        fn check(op: &str, payload: &str, status: Status, expected: &str) {
            let _ = HOST.set(Host(HostCallbacks {
                abi_major: ABI_MAJOR,
                abi_minor: 0,
                max_level: 0,
                ctx: std::ptr::null(),
                log: noop_log,
            }));
            let (created, handle, _) = create_echo(r#"{"prefix":">"}"#);
            assert_eq!(created, STATUS_OK);
            let mut out = OutBuf::EMPTY;
            // SAFETY: a live handle and valid buffers.
            let got = unsafe {
                call::<Echo>(
                    handle,
                    op.as_ptr(),
                    op.len(),
                    payload.as_ptr(),
                    payload.len(),
                    &mut out,
                )
            };
            let text = String::from_utf8(take(out)).unwrap_or_default();
            // SAFETY: destroyed once, no call running.
            unsafe { destroy::<Echo>(handle) };
            assert_eq!((got, text.as_str()), (status, expected), "op {op}");
        }

        extern "C" fn noop_log(
            _: *const c_void,
            _: u32,
            _: *const u8,
            _: usize,
            _: *const u8,
            _: usize,
        ) {
        }

        #[test]
        fn call_answers_ok_error_and_panic_envelopes() {
            check(
                "echo",
                "7",
                STATUS_OK,
                r#"{"v":1,"op":"ok","payload":">7"}"#,
            );
            check(
                "nope",
                "",
                STATUS_ERROR,
                r#"{"v":1,"op":"error","payload":{"code":"unsupported","message":"this plugin does not implement `nope`"}}"#,
            );
            check(
                "sniff",
                r#"{"name":"a.txt","head":""}"#,
                STATUS_OK,
                r#"{"v":1,"op":"ok","payload":{"confidence":0}}"#,
            );
            check(
                "echo",
                "{bad",
                STATUS_ERROR,
                r#"{"v":1,"op":"error","payload":{"code":"bad_input","location":"payload","message":"not valid json: key must be a string at line 1 column 2"}}"#,
            );
        }

        #[test]
        fn panic_in_call_becomes_panicked_status_with_message() {
            let _ = HOST.set(Host(HostCallbacks {
                abi_major: ABI_MAJOR,
                abi_minor: 0,
                max_level: 0,
                ctx: std::ptr::null(),
                log: noop_log,
            }));
            let (_, handle, _) = create_echo(r#"{"prefix":""}"#);
            let mut out = OutBuf::EMPTY;
            // SAFETY: a live handle and valid buffers.
            let status =
                unsafe { call::<Echo>(handle, b"boom".as_ptr(), 4, std::ptr::null(), 0, &mut out) };
            let text = String::from_utf8(take(out)).unwrap_or_default();
            // SAFETY: destroyed once, no call running.
            unsafe { destroy::<Echo>(handle) };
            assert_eq!(status, STATUS_PANICKED);
            assert!(text.starts_with("boom"), "{text}");
        }

        #[test]
        fn bad_settings_name_the_key() {
            let _ = HOST.set(Host(HostCallbacks {
                abi_major: ABI_MAJOR,
                abi_minor: 0,
                max_level: 0,
                ctx: std::ptr::null(),
                log: noop_log,
            }));
            let (status, handle, reply) = create_echo("{}");
            assert_eq!(status, STATUS_ERROR);
            assert!(handle.is_null());
            assert_eq!(
                String::from_utf8(reply).unwrap_or_default(),
                r#"{"v":1,"op":"error","payload":{"code":"bad_config","location":"prefix","message":"missing"}}"#
            );
        }

        #[test]
        fn manifest_is_an_ok_envelope() {
            let mut out = OutBuf::EMPTY;
            // SAFETY: a writable slot.
            assert_eq!(unsafe { manifest::<Echo>(&mut out) }, STATUS_OK);
            let env: Envelope =
                serde_json::from_slice(&take(out)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(env.payload["name"], "echo");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;

    #[test]
    fn payments_become_payment_records_in_order() {
        let reply = payments(vec![
            PaymentRecord::new("a", Decimal::ONE, "EUR"),
            PaymentRecord::new("b", Decimal::TWO, "EUR"),
        ]);
        let ids: Vec<&str> = reply
            .records
            .iter()
            .map(|record| match record {
                Record::Payment(payment) => payment.external_id.as_str(),
                _ => "not a payment",
            })
            .collect();
        assert_eq!(ids, ["a", "b"]);
    }
}
