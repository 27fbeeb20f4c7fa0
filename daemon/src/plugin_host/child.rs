//! Process isolation: the `settled plugin-host --library PATH` child and the daemon's side of its pipe.
//!
//! Frames on stdin/stdout are `[u32 LE length][u8 tag][body]`, the length counting tag and body:
//! - host -> child: `CONFIGURE` (body: `[u64 LE id][settings JSON]`), `CALL` (body:
//!   `[u64 LE id][u32 LE op length][op][payload JSON]`);
//! - child -> host: `READY` (body: `{"abi":[major,minor],"manifest":{..},"sandbox":{..}}`, once, after the
//!   header check and init), `FATAL` (body: why the library cannot be served), `REPLY` (body:
//!   `[u64 LE id][i32 LE status][output]`, the plugin's envelope untouched), `LOG` (body:
//!   `[u32 LE level][u32 LE target length][target][message]`), `BAD` (body: `[u64 LE id][why an output
//!   was not forwarded, e.g. over 64 MiB]`).
//!
//! Every reply carries the id of its request; a reply with another id is garbage and the child is killed.
//! The daemon holds at most one frame from a child besides the one it is reading (the channel has room for
//! one), refuses a log frame above [`MAX_LOG_FRAME`], and forwards at most [`LOG_LINES_PER_CALL`] lines and
//! [`LOG_BYTES_PER_CALL`] bytes of log per call, counting what it dropped.
//!
//! The child runs in a sandbox (`sandbox.rs`): empty environment, `no_new_privs`, Landlock and seccomp.
//!
//! One child serves one connector instance and one call at a time, so a crash or hang costs only that instance.

use std::ffi::c_void;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use settled_plugin_api::abi::{self, Status, MAX_OUTPUT};
use settled_plugin_api::Manifest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::native::{self, NativeInstance, NativeLib, Reply};
use super::sandbox::{Sandbox, SandboxReport};

const CONFIGURE: u8 = 1;
const CALL: u8 = 2;
const READY: u8 = 10;
const FATAL: u8 = 11;
const REPLY: u8 = 12;
const LOG: u8 = 13;
const BAD: u8 = 14;

/// Frames larger than this are a broken child, not a big answer.
const MAX_FRAME: usize = MAX_OUTPUT + 64 * 1024;
/// Starting a child and loading the library is the host's cost, not the plugin's: it gets its own bound,
/// generous because a loaded machine can take seconds to spawn and map a large debug build.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest log target or message a child sends, in bytes; the child cuts longer ones and says so.
const MAX_LOG_PART: usize = 16 * 1024;
/// A log frame above this (level, target length, target, message, and the tag) is garbage: the child is killed.
const MAX_LOG_FRAME: usize = 1 + 8 + 2 * (MAX_LOG_PART + CUT_NOTE_MAX);
/// Room for the note a child appends to a cut log line.
const CUT_NOTE_MAX: usize = 64;
/// Log lines forwarded per call (and per handshake); the rest are counted and dropped.
pub(crate) const LOG_LINES_PER_CALL: usize = 1000;
/// Log bytes (targets and messages) forwarded per call; the rest are counted and dropped.
pub(crate) const LOG_BYTES_PER_CALL: usize = 1024 * 1024;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

fn frame(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    out.push(tag);
    for part in parts {
        out.extend_from_slice(part);
    }
    out
}

fn call_body(op: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(4 + op.len() + payload.len());
    body.extend_from_slice(&u32::try_from(op.len()).unwrap_or(u32::MAX).to_le_bytes());
    body.extend_from_slice(op.as_bytes());
    body.extend_from_slice(payload);
    body
}

fn split_call_body(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let op_len = usize::try_from(u32::from_le_bytes(body.get(..4)?.try_into().ok()?)).ok()?;
    let op = body.get(4..4usize.checked_add(op_len)?)?;
    Some((op, body.get(4 + op_len..)?))
}

fn u32_prefix(body: &[u8]) -> Option<(u32, &[u8])> {
    Some((
        u32::from_le_bytes(body.get(..4)?.try_into().ok()?),
        body.get(4..)?,
    ))
}

// ---------------------------------------------------------------------------------------------------------
// The child.

/// The pipe frames go out on. Fd 1 itself is pointed at stderr so that a plugin's stray `println!`
/// cannot corrupt the stream.
static OUT: OnceLock<Mutex<std::fs::File>> = OnceLock::new();

fn send(tag: u8, parts: &[&[u8]]) -> bool {
    let Some(out) = OUT.get() else {
        return false;
    };
    let bytes = frame(tag, parts);
    let mut out = out.lock().unwrap_or_else(PoisonError::into_inner);
    out.write_all(&bytes).and_then(|()| out.flush()).is_ok()
}

extern "C" fn child_log(
    _ctx: *const c_void,
    level: u32,
    target: *const u8,
    target_len: usize,
    message: *const u8,
    message_len: usize,
) {
    let bytes = |ptr: *const u8, len: usize| -> &[u8] {
        if ptr.is_null() || len == 0 {
            &[]
        } else {
            // SAFETY: the plugin passes `len` readable bytes valid for this call.
            unsafe { std::slice::from_raw_parts(ptr, len) }
        }
    };
    let _ = std::panic::catch_unwind(|| {
        let target = clip_log_part(bytes(target, target_len));
        let message = clip_log_part(bytes(message, message_len));
        let target_len = u32::try_from(target.len()).unwrap_or(0).to_le_bytes();
        send(LOG, &[&level.to_le_bytes(), &target_len, &target, &message]);
    });
}

/// Log lines share the pipe with replies: a part above [`MAX_LOG_PART`] is cut, and says how much was cut.
fn clip_log_part(part: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if part.len() <= MAX_LOG_PART {
        return std::borrow::Cow::Borrowed(part);
    }
    let mut cut = part[..MAX_LOG_PART].to_vec();
    let note = format!(
        " [{} more bytes cut by the plugin host]",
        part.len() - MAX_LOG_PART
    );
    cut.extend_from_slice(&note.as_bytes()[..note.len().min(CUT_NOTE_MAX)]);
    std::borrow::Cow::Owned(cut)
}

fn redirect_stdout() -> std::io::Result<std::fs::File> {
    // SAFETY: dup/dup2 on the process's own standard descriptors; no Rust object owns fd 1 exclusively.
    unsafe {
        let frames = libc::dup(1);
        if frames < 0 || libc::dup2(2, 1) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(std::fs::File::from_raw_fd(frames))
    }
}

fn read_frame(input: &mut impl Read) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(std::io::Error::other(format!("bad frame length {len}")));
    }
    let mut body = vec![0u8; len];
    input.read_exact(&mut body)?;
    let tag = body.remove(0);
    Ok(Some((tag, body)))
}

fn reply_frame(id: u64, reply: Reply) {
    let id = id.to_le_bytes();
    let sent = match reply {
        Reply::Ok(value) => envelope_reply(id, abi::STATUS_OK, settled_plugin_api::ops::OK, value),
        Reply::Err(error) => envelope_reply(
            id,
            abi::STATUS_ERROR,
            settled_plugin_api::ops::ERROR,
            serde_json::to_value(error).unwrap_or_default(),
        ),
        Reply::Panicked(message) => send(
            REPLY,
            &[&id, &abi::STATUS_PANICKED.to_le_bytes(), message.as_bytes()],
        ),
        Reply::Bad(message) => send(BAD, &[&id, message.as_bytes()]),
    };
    let _ = sent;
}

fn envelope_reply(id: [u8; 8], status: Status, op: &str, payload: serde_json::Value) -> bool {
    let bytes = serde_json::to_vec(&settled_plugin_api::Envelope {
        v: settled_plugin_api::ENVELOPE_VERSION,
        op: op.to_string(),
        payload,
    })
    .unwrap_or_default();
    send(REPLY, &[&id, &status.to_le_bytes(), &bytes])
}

/// Splits a request body into its id and the rest.
fn split_id(body: &[u8]) -> Option<(u64, &[u8])> {
    Some((
        u64::from_le_bytes(body.get(..8)?.try_into().ok()?),
        body.get(8..)?,
    ))
}

/// `settled plugin-host --library PATH [--max-level N] [--require-sandbox]`: sandboxes itself, loads one
/// plugin library and serves frames on stdin/stdout until stdin closes. `args` may start with `plugin-host`;
/// `N` is the most verbose plugin log level forwarded (1 = error .. 5 = trace, default 3); with
/// `--require-sandbox` it refuses to load the library unless the whole sandbox is in force.
pub fn child_main(args: Vec<String>) -> ExitCode {
    let library = args
        .iter()
        .position(|a| a == "--library")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    let Some(library) = library else {
        eprintln!("settled plugin-host: missing --library PATH");
        return ExitCode::from(2);
    };
    match redirect_stdout() {
        Ok(file) => {
            let _ = OUT.set(Mutex::new(file));
        }
        Err(e) => {
            eprintln!("settled plugin-host: cannot set up the frame pipe: {e}");
            return ExitCode::from(2);
        }
    }
    let max_level = args
        .iter()
        .position(|a| a == "--max-level")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(abi::level::INFO);
    let require_sandbox = args.iter().any(|a| a == "--require-sandbox");
    let sandbox = Sandbox::before_load(&library);
    let lib = match NativeLib::open(&library, child_log, std::ptr::null(), max_level) {
        Ok(lib) => lib,
        Err(why) => {
            send(FATAL, &[why.as_bytes()]);
            return ExitCode::from(3);
        }
    };
    let manifest = match lib.manifest() {
        Ok(manifest) => manifest,
        Err(why) => {
            send(FATAL, &[why.as_bytes()]);
            return ExitCode::from(3);
        }
    };
    let sandbox = sandbox.after_load();
    if require_sandbox && !sandbox.complete() {
        let why = format!(
            "the plugin sandbox is required ([plugins] require_sandbox) but is not complete here: {}",
            sandbox.summary()
        );
        send(FATAL, &[why.as_bytes()]);
        return ExitCode::from(3);
    }
    let (major, minor) = lib.abi();
    let ready =
        serde_json::json!({ "abi": [major, minor], "manifest": manifest, "sandbox": sandbox });
    if !send(READY, &[ready.to_string().as_bytes()]) {
        return ExitCode::from(4);
    }
    serve(&lib)
}

fn serve(lib: &std::sync::Arc<NativeLib>) -> ExitCode {
    let stdin = std::io::stdin();
    let mut input = std::io::BufReader::new(stdin.lock());
    let mut instance: Option<NativeInstance> = None;
    loop {
        let (tag, body) = match read_frame(&mut input) {
            Ok(Some(frame)) => frame,
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("settled plugin-host: reading stdin: {e}");
                return ExitCode::from(4);
            }
        };
        let Some((id, body)) = split_id(&body) else {
            reply_frame(0, Reply::Bad(format!("frame {tag} without a request id")));
            continue;
        };
        match (tag, &instance) {
            (CONFIGURE, _) => match lib.create(body) {
                Ok(created) => {
                    instance = Some(created);
                    reply_frame(id, Reply::Ok(serde_json::Value::Null));
                }
                Err(reply) => reply_frame(id, reply),
            },
            (CALL, Some(instance)) => match split_call_body(body) {
                Some((op, payload)) => match instance.call_raw(op, payload) {
                    Ok((status, output)) => {
                        send(REPLY, &[&id.to_le_bytes(), &status.to_le_bytes(), &output]);
                    }
                    Err(why) => reply_frame(id, Reply::Bad(why)),
                },
                None => reply_frame(id, Reply::Bad("malformed call frame".to_string())),
            },
            (CALL, None) => reply_frame(id, Reply::Bad("call before configure".to_string())),
            (other, _) => reply_frame(id, Reply::Bad(format!("unknown frame tag {other}"))),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The daemon's side.

/// What the daemon learned from a child's handshake.
#[derive(Debug, Clone)]
pub(crate) struct Ready {
    pub abi: (u32, u32),
    pub manifest: Manifest,
    /// What the child's sandbox enforces.
    pub sandbox: SandboxReport,
}

/// Why a request to a child did not produce a reply.
#[derive(Debug)]
pub(crate) enum ChildFailure {
    /// No reply in time; the child was killed.
    Timeout,
    /// The child died or could not be (re)started.
    Crashed(String),
    /// The child sent garbage; it was killed.
    Bad(String),
    /// The child refused to forward an output (e.g. over 64 MiB) and is still healthy.
    Refused(String),
    /// A call pinned to one child found it restarted (see [`ProcInstance::call_in`]); nothing was sent.
    Restarted,
    /// Earlier calls held the child until this call's time ran out; nothing was sent.
    Busy,
}

enum Incoming {
    Frame(u8, Vec<u8>),
    Closed(String),
}

/// A running child and its pipes. Dropping it kills the child.
pub(crate) struct ChildConn {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    incoming: mpsc::Receiver<Incoming>,
    /// The id of the last request sent.
    last_id: u64,
}

/// How the daemon starts a child.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    /// The binary spawned as `host_exe plugin-host ...`.
    pub host_exe: PathBuf,
    /// Pass `--require-sandbox`: the child refuses to load a library without its whole sandbox.
    pub require_sandbox: bool,
    /// The only environment the child gets (a connector's `env`); empty for most.
    pub env: Vec<(String, std::ffi::OsString)>,
}

impl ChildConn {
    /// Spawns `host_exe plugin-host --library library` with an empty environment and waits for its handshake.
    pub(crate) async fn spawn(
        launch: &Launch,
        library: &Path,
        plugin: &str,
        timeout: Duration,
    ) -> Result<(ChildConn, Ready), String> {
        let host_exe = &launch.host_exe;
        let mut command = tokio::process::Command::new(host_exe);
        command
            .arg("plugin-host")
            .arg("--library")
            .arg(library)
            .arg("--max-level")
            .arg(native::max_level().to_string());
        if launch.require_sandbox {
            command.arg("--require-sandbox");
        }
        // Nothing of the daemon's environment (the API token above all) reaches plugin code.
        let mut child = command
            .env_clear()
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start `{} plugin-host`: {e}", host_exe.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("child started without pipes".to_string());
        };
        // Room for one frame: with the one being read and the one being handled, the daemon holds at most
        // three frames of a child, however fast it writes.
        let (tx, incoming) = mpsc::channel(1);
        tokio::spawn(read_frames(stdout, tx, plugin.to_string()));
        let mut conn = ChildConn {
            child,
            stdin,
            incoming,
            last_id: 0,
        };
        let first = tokio::time::timeout(timeout, conn.incoming.recv()).await;
        match first {
            Err(_) => Err(format!(
                "no handshake from the plugin host within {timeout:?}"
            )),
            Ok(Some(Incoming::Frame(READY, body))) => {
                #[derive(serde::Deserialize)]
                struct ReadyBody {
                    abi: (u32, u32),
                    manifest: Manifest,
                    sandbox: SandboxReport,
                }
                let ready: ReadyBody = serde_json::from_slice(&body)
                    .map_err(|e| format!("bad handshake from the plugin host: {e}"))?;
                Ok((
                    conn,
                    Ready {
                        abi: ready.abi,
                        manifest: ready.manifest,
                        sandbox: ready.sandbox,
                    },
                ))
            }
            Ok(Some(Incoming::Frame(FATAL, body))) => {
                Err(String::from_utf8_lossy(&body).into_owned())
            }
            Ok(Some(Incoming::Frame(tag, _))) => {
                Err(format!("unexpected frame {tag} before the handshake"))
            }
            Ok(Some(Incoming::Closed(_))) | Ok(None) => {
                let status = conn.exit_detail().await;
                Err(format!(
                    "the plugin host died during the handshake ({status})"
                ))
            }
        }
    }

    async fn exit_detail(&mut self) -> String {
        match tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await {
            Ok(Ok(status)) => describe_exit(status),
            Ok(Err(e)) => format!("cannot get its exit status: {e}"),
            Err(_) => {
                let _ = self.child.start_kill();
                "its output closed but it did not exit; killed".to_string()
            }
        }
    }

    /// Sends one frame with a fresh request id and waits for the reply carrying it; kills the child on a
    /// timeout or garbage (a reply to another request among it).
    pub(crate) async fn request(
        &mut self,
        tag: u8,
        body: &[u8],
        timeout: Duration,
    ) -> Result<(Status, Vec<u8>), ChildFailure> {
        let deadline = Instant::now() + timeout;
        self.last_id += 1;
        let id = self.last_id;
        let bytes = frame(tag, &[&id.to_le_bytes(), body]);
        let written = tokio::time::timeout(timeout, async {
            self.stdin.write_all(&bytes).await?;
            self.stdin.flush().await
        })
        .await;
        match written {
            Err(_) => {
                let _ = self.child.start_kill();
                return Err(ChildFailure::Timeout);
            }
            Ok(Err(e)) => {
                let detail = self.exit_detail().await;
                return Err(ChildFailure::Crashed(format!(
                    "writing to it failed ({e}); {detail}"
                )));
            }
            Ok(Ok(())) => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.incoming.recv()).await {
            Err(_) => {
                let _ = self.child.start_kill();
                Err(ChildFailure::Timeout)
            }
            Ok(Some(Incoming::Frame(tag, body))) => {
                let answer = check_reply(id, tag, body);
                if matches!(answer, Err(ChildFailure::Bad(_))) {
                    let _ = self.child.start_kill();
                }
                answer
            }
            Ok(Some(Incoming::Closed(why))) => {
                if !why.is_empty() {
                    // Garbage on its output: it gets no chance to send more.
                    let _ = self.child.start_kill();
                }
                let detail = self.exit_detail().await;
                Err(ChildFailure::Crashed(if why.is_empty() {
                    detail
                } else {
                    format!("{detail}; {why}")
                }))
            }
            Ok(None) => {
                let detail = self.exit_detail().await;
                Err(ChildFailure::Crashed(detail))
            }
        }
    }
}

/// The answer to request `id` in a frame from the child: the reply, the child's refusal, or garbage.
fn check_reply(id: u64, tag: u8, mut body: Vec<u8>) -> Result<(Status, Vec<u8>), ChildFailure> {
    if tag != REPLY && tag != BAD {
        return Err(ChildFailure::Bad(format!(
            "unexpected frame {tag} while waiting for the reply to request {id}"
        )));
    }
    let Some((got, rest)) = split_id(&body) else {
        return Err(ChildFailure::Bad(format!(
            "a reply frame without a request id ({} bytes)",
            body.len()
        )));
    };
    if got != id {
        return Err(ChildFailure::Bad(format!(
            "a reply to request {got} while waiting for the reply to request {id}"
        )));
    }
    if tag == BAD {
        return Err(ChildFailure::Refused(
            String::from_utf8_lossy(rest).into_owned(),
        ));
    }
    let Some((status, _)) = u32_prefix(rest) else {
        return Err(ChildFailure::Bad("short reply frame".to_string()));
    };
    // The output stays in the buffer it arrived in: no copy of up to 64 MiB.
    body.drain(..12);
    Ok((status as Status, body))
}

/// How much of a child's log the daemon forwards per call: [`LOG_LINES_PER_CALL`] lines and
/// [`LOG_BYTES_PER_CALL`] bytes; the rest is counted and reported once, when the call ends.
#[derive(Debug, Default)]
struct LogBudget {
    lines: usize,
    bytes: usize,
    dropped_lines: usize,
    dropped_bytes: usize,
}

impl LogBudget {
    /// Whether a line of `len` bytes is forwarded.
    fn take(&mut self, len: usize) -> bool {
        if self.lines < LOG_LINES_PER_CALL && self.bytes.saturating_add(len) <= LOG_BYTES_PER_CALL {
            self.lines += 1;
            self.bytes += len;
            true
        } else {
            self.dropped_lines += 1;
            self.dropped_bytes = self.dropped_bytes.saturating_add(len);
            false
        }
    }

    /// Ends a call: what was dropped in it, if anything, and a fresh budget for the next.
    fn end_call(&mut self) -> Option<(usize, usize)> {
        let dropped = (self.dropped_lines > 0).then_some((self.dropped_lines, self.dropped_bytes));
        *self = LogBudget::default();
        dropped
    }
}

async fn read_frames(
    mut stdout: tokio::process::ChildStdout,
    tx: mpsc::Sender<Incoming>,
    plugin: String,
) {
    let mut reader = tokio::io::BufReader::with_capacity(64 * 1024, &mut stdout);
    let mut budget = LogBudget::default();
    loop {
        let mut len = [0u8; 4];
        if let Err(e) = reader.read_exact(&mut len).await {
            let why = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                String::new()
            } else {
                format!("reading its output: {e}")
            };
            let _ = tx.send(Incoming::Closed(why)).await;
            return;
        }
        let len = u32::from_le_bytes(len) as usize;
        if len == 0 || len > MAX_FRAME {
            let _ = tx
                .send(Incoming::Closed(format!("it sent a frame of {len} bytes")))
                .await;
            return;
        }
        let mut tag = [0u8; 1];
        if let Err(e) = reader.read_exact(&mut tag).await {
            let _ = tx
                .send(Incoming::Closed(format!("reading its output: {e}")))
                .await;
            return;
        }
        let tag = tag[0];
        if tag == LOG && len > MAX_LOG_FRAME {
            let why = format!("it sent a log frame of {len} bytes (at most {MAX_LOG_FRAME})");
            let _ = tx.send(Incoming::Closed(why)).await;
            return;
        }
        let mut body = vec![0u8; len - 1];
        if let Err(e) = reader.read_exact(&mut body).await {
            let _ = tx
                .send(Incoming::Closed(format!("reading its output: {e}")))
                .await;
            return;
        }
        if tag == LOG {
            if budget.take(body.len()) {
                emit_log_frame(&plugin, &body);
            }
            continue;
        }
        if let Some((lines, bytes)) = budget.end_call() {
            tracing::warn!(
                plugin = %plugin,
                "dropped {lines} log lines ({bytes} bytes) of one call: the host forwards at most \
                 {LOG_LINES_PER_CALL} lines and {LOG_BYTES_PER_CALL} bytes of a plugin's log per call"
            );
        }
        if tx.send(Incoming::Frame(tag, body)).await.is_err() {
            return;
        }
    }
}

fn emit_log_frame(plugin: &str, body: &[u8]) {
    let Some((level, rest)) = u32_prefix(body) else {
        return;
    };
    let Some((target_len, rest)) = u32_prefix(rest) else {
        return;
    };
    let target_len = target_len as usize;
    let (Some(target), Some(message)) = (rest.get(..target_len), rest.get(target_len..)) else {
        return;
    };
    super::emit_plugin_log(
        plugin,
        level,
        &String::from_utf8_lossy(target),
        &String::from_utf8_lossy(message),
    );
}

/// A readable account of how a child ended.
fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(signal) = status.signal() {
        let name = match signal {
            libc::SIGSEGV => " (SIGSEGV)",
            libc::SIGABRT => " (SIGABRT)",
            libc::SIGKILL => " (SIGKILL)",
            libc::SIGBUS => " (SIGBUS)",
            libc::SIGILL => " (SIGILL)",
            libc::SIGFPE => " (SIGFPE)",
            libc::SIGSYS => " (SIGSYS: a system call the plugin sandbox forbids)",
            _ => "",
        };
        return format!("the plugin host was killed by signal {signal}{name}");
    }
    match status.code() {
        Some(code) => format!("the plugin host exited with status {code}"),
        None => "the plugin host exited".to_string(),
    }
}

/// A process-isolated connector instance: one child, restarted with backoff after a crash or hang.
pub(crate) struct ProcInstance {
    launch: Launch,
    library: PathBuf,
    plugin: String,
    settings: Vec<u8>,
    state: tokio::sync::Mutex<ProcState>,
}

struct ProcState {
    conn: Option<ChildConn>,
    /// Counts the children started; a parse session lives in one of them.
    generation: u64,
    failures: u32,
    next_start: Instant,
}

/// The result of a process-mode call.
pub(crate) enum ProcOutcome {
    Reply(Reply),
    Failed(ChildFailure),
}

impl ProcInstance {
    /// Starts the child and configures the instance; the error says why it could not.
    pub(crate) async fn start(
        launch: &Launch,
        library: &Path,
        plugin: &str,
        settings: Vec<u8>,
        timeout: Duration,
    ) -> Result<ProcInstance, Reply> {
        let conn = Self::connect(launch, library, plugin, &settings, timeout).await?;
        Ok(ProcInstance {
            launch: launch.clone(),
            library: library.to_path_buf(),
            plugin: plugin.to_string(),
            settings,
            state: tokio::sync::Mutex::new(ProcState {
                conn: Some(conn),
                generation: 1,
                failures: 0,
                next_start: Instant::now(),
            }),
        })
    }

    async fn connect(
        launch: &Launch,
        library: &Path,
        plugin: &str,
        settings: &[u8],
        timeout: Duration,
    ) -> Result<ChildConn, Reply> {
        let (mut conn, _) = ChildConn::spawn(launch, library, plugin, HANDSHAKE_TIMEOUT)
            .await
            .map_err(Reply::Bad)?;
        match conn.request(CONFIGURE, settings, timeout).await {
            Ok((status, output)) => match native::decode(status, &output) {
                Reply::Ok(_) => Ok(conn),
                other => Err(other),
            },
            Err(ChildFailure::Timeout) => Err(Reply::Bad(format!(
                "configure did not answer within {timeout:?}"
            ))),
            Err(ChildFailure::Crashed(why)) => {
                Err(Reply::Bad(format!("crashed in configure: {why}")))
            }
            Err(ChildFailure::Bad(why)) | Err(ChildFailure::Refused(why)) => Err(Reply::Bad(why)),
            Err(ChildFailure::Restarted) | Err(ChildFailure::Busy) => Err(Reply::Bad(
                "the plugin host restarted during configure".to_string(),
            )),
        }
    }

    /// Runs one operation in the child, (re)starting it first if needed.
    ///
    /// `timeout` bounds the wait for earlier calls on this instance and then the call itself; a restart
    /// in between is bounded separately ([`HANDSHAKE_TIMEOUT`]).
    /// Also says which child generation served the call. With `pinned`, the call
    /// only goes to that generation: when the child it names has died or been replaced, nothing is sent
    /// and the result is [`ChildFailure::Restarted`] (the plugin state the caller relies on is gone).
    pub(crate) async fn call_in(
        &self,
        op: &str,
        payload: &[u8],
        timeout: Duration,
        pinned: Option<u64>,
    ) -> (ProcOutcome, u64) {
        let Ok(mut state) = tokio::time::timeout(timeout, self.state.lock()).await else {
            return (ProcOutcome::Failed(ChildFailure::Busy), 0);
        };
        if let Some(generation) = pinned {
            if state.conn.is_none() || state.generation != generation {
                return (
                    ProcOutcome::Failed(ChildFailure::Restarted),
                    state.generation,
                );
            }
        }
        let outcome = self.call_locked(&mut state, op, payload, timeout).await;
        (outcome, state.generation)
    }

    async fn call_locked(
        &self,
        state: &mut ProcState,
        op: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> ProcOutcome {
        if state.conn.is_none() {
            if state.next_start > Instant::now() + timeout {
                let wait = state.next_start.saturating_duration_since(Instant::now());
                return ProcOutcome::Failed(ChildFailure::Crashed(format!(
                    "the plugin host is restarting in {} ms after {} crash(es)",
                    wait.as_millis(),
                    state.failures
                )));
            }
            tokio::time::sleep_until(state.next_start.into()).await;
            match Self::connect(
                &self.launch,
                &self.library,
                &self.plugin,
                &self.settings,
                timeout,
            )
            .await
            {
                Ok(conn) => {
                    tracing::info!(plugin = %self.plugin, restarts = state.failures, "plugin host restarted");
                    state.conn = Some(conn);
                    state.generation += 1;
                }
                Err(reply) => {
                    Self::backoff(state);
                    let why = match reply {
                        Reply::Bad(why) | Reply::Panicked(why) => why,
                        Reply::Err(e) => e.to_string(),
                        Reply::Ok(_) => String::new(),
                    };
                    return ProcOutcome::Failed(ChildFailure::Crashed(format!(
                        "restart failed: {why}"
                    )));
                }
            }
        }
        let Some(conn) = state.conn.as_mut() else {
            return ProcOutcome::Failed(ChildFailure::Crashed("no plugin host".to_string()));
        };
        match conn.request(CALL, &call_body(op, payload), timeout).await {
            Ok((status, output)) => {
                state.failures = 0;
                ProcOutcome::Reply(native::decode(status, &output))
            }
            Err(ChildFailure::Refused(why)) => ProcOutcome::Reply(Reply::Bad(why)),
            Err(failure) => {
                state.conn = None;
                Self::backoff(state);
                ProcOutcome::Failed(failure)
            }
        }
    }

    fn backoff(state: &mut ProcState) {
        let shift = state.failures.min(16);
        let delay = FIRST_BACKOFF.saturating_mul(1 << shift).min(MAX_BACKOFF);
        state.failures = state.failures.saturating_add(1);
        state.next_start = Instant::now()
            + if state.failures == 1 {
                Duration::ZERO
            } else {
                delay
            };
    }
}

/// Asks a child for a library's manifest and ABI without creating an instance: the handshake every
/// new file goes through, so that a process-mode plugin's code never runs inside the daemon.
pub(crate) async fn probe(
    launch: &Launch,
    library: &Path,
    plugin: &str,
    timeout: Duration,
) -> Result<Ready, String> {
    let (conn, ready) = ChildConn::spawn(launch, library, plugin, timeout).await?;
    drop(conn);
    Ok(ready)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_body_round_trips() {
        let body = call_body("intake", b"{\"a\":1}");
        assert_eq!(
            split_call_body(&body),
            Some((&b"intake"[..], &b"{\"a\":1}"[..]))
        );
        assert_eq!(split_call_body(&body[..3]), None);
        assert_eq!(split_call_body(&[9, 0, 0, 0, b'x']), None);
    }

    #[test]
    fn frames_read_back_as_written_and_eof_ends_cleanly() {
        let mut bytes = frame(CALL, &[b"ab", b"c"]);
        bytes.extend(frame(CONFIGURE, &[]));
        let mut input = std::io::Cursor::new(bytes);
        assert_eq!(
            read_frame(&mut input).ok().flatten(),
            Some((CALL, b"abc".to_vec()))
        );
        assert_eq!(
            read_frame(&mut input).ok().flatten(),
            Some((CONFIGURE, Vec::new()))
        );
        assert!(matches!(read_frame(&mut input), Ok(None)));
    }

    #[test]
    fn a_zero_length_frame_is_an_error() {
        let mut input = std::io::Cursor::new(vec![0, 0, 0, 0]);
        assert!(read_frame(&mut input).is_err());
    }

    fn id_bytes(id: u64) -> [u8; 8] {
        id.to_le_bytes()
    }

    #[test]
    fn a_reply_must_carry_the_id_of_its_request() {
        let ok = check_reply(
            7,
            REPLY,
            [&id_bytes(7)[..], &0i32.to_le_bytes(), b"out"].concat(),
        );
        assert!(matches!(ok, Ok((0, ref out)) if out == b"out"), "{ok:?}");
        let other = check_reply(
            7,
            REPLY,
            [&id_bytes(6)[..], &0i32.to_le_bytes(), b"out"].concat(),
        );
        assert!(
            matches!(other, Err(ChildFailure::Bad(ref why))
                if why == "a reply to request 6 while waiting for the reply to request 7"),
            "{other:?}"
        );
        let refused = check_reply(7, BAD, [&id_bytes(7)[..], b"too big"].concat());
        assert!(
            matches!(refused, Err(ChildFailure::Refused(ref why)) if why == "too big"),
            "{refused:?}"
        );
        let stale_refusal = check_reply(7, BAD, [&id_bytes(3)[..], b"too big"].concat());
        assert!(
            matches!(stale_refusal, Err(ChildFailure::Bad(_))),
            "{stale_refusal:?}"
        );
        let no_id = check_reply(7, REPLY, vec![7, 0, 0]);
        assert!(matches!(no_id, Err(ChildFailure::Bad(_))), "{no_id:?}");
        let no_status = check_reply(7, REPLY, id_bytes(7).to_vec());
        assert!(
            matches!(no_status, Err(ChildFailure::Bad(ref why)) if why == "short reply frame"),
            "{no_status:?}"
        );
        let not_a_reply = check_reply(7, READY, id_bytes(7).to_vec());
        assert!(
            matches!(not_a_reply, Err(ChildFailure::Bad(_))),
            "{not_a_reply:?}"
        );
    }

    #[test]
    fn requests_read_back_with_their_id() {
        let body = [&id_bytes(42)[..], b"settings"].concat();
        assert_eq!(split_id(&body), Some((42, &b"settings"[..])));
        assert_eq!(split_id(&body[..7]), None);
    }

    #[test]
    fn the_log_budget_forwards_the_per_call_limit_and_counts_the_rest() {
        let mut budget = LogBudget::default();
        let forwarded = (0..LOG_LINES_PER_CALL + 5)
            .filter(|_| budget.take(10))
            .count();
        assert_eq!(forwarded, LOG_LINES_PER_CALL);
        assert_eq!(budget.end_call(), Some((5, 50)));
        assert_eq!(budget.end_call(), None, "a fresh budget after the call");
        assert!(budget.take(LOG_BYTES_PER_CALL - 1));
        assert!(!budget.take(2), "the bytes limit counts too");
        assert!(budget.take(1));
        assert_eq!(budget.end_call(), Some((1, 2)));
    }

    #[test]
    fn long_log_parts_are_cut_and_say_so() {
        let short = vec![b'a'; MAX_LOG_PART];
        assert_eq!(clip_log_part(&short).len(), MAX_LOG_PART);
        let long = vec![b'a'; MAX_LOG_PART + 1000];
        let cut = clip_log_part(&long);
        assert!(cut.len() <= MAX_LOG_PART + CUT_NOTE_MAX);
        assert!(cut.ends_with(b" [1000 more bytes cut by the plugin host]"));
        // Both parts of the longest line fit a log frame.
        assert!(1 + 8 + 2 * cut.len() <= MAX_LOG_FRAME);
    }

    /// A stand-in for `settled plugin-host`: a shell script that writes `frames`, then reads its input until
    /// it closes.
    fn fake_child(dir: &Path, frames: &[u8]) -> Launch {
        use std::os::unix::fs::PermissionsExt;
        let data = dir.join("frames");
        std::fs::write(&data, frames).expect("frames");
        let script = dir.join("fake-plugin-host");
        let text = format!(
            "#!/bin/sh\n/bin/cat '{}'\nexec /bin/cat >/dev/null\n",
            data.display()
        );
        std::fs::write(&script, text).expect("script");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Launch {
            host_exe: script,
            require_sandbox: false,
            env: Vec::new(),
        }
    }

    fn ready_frame() -> Vec<u8> {
        let manifest = Manifest {
            name: "fake".into(),
            version: "1.0.0".into(),
            roles: Vec::new(),
            description: String::new(),
        };
        let body = serde_json::json!({
            "abi": [1, 0], "manifest": manifest, "sandbox": SandboxReport::default()
        });
        frame(READY, &[body.to_string().as_bytes()])
    }

    async fn spawn_fake(launch: &Launch) -> ChildConn {
        match ChildConn::spawn(launch, Path::new("/none"), "fake", HANDSHAKE_TIMEOUT).await {
            Ok((conn, _)) => conn,
            Err(why) => panic!("the fake child did not handshake: {why}"),
        }
    }

    #[tokio::test]
    async fn a_child_answering_another_request_is_killed_as_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let stray = frame(REPLY, &[&id_bytes(99), &0i32.to_le_bytes(), b"{}"]);
        let launch = fake_child(dir.path(), &[ready_frame(), stray].concat());
        let mut conn = spawn_fake(&launch).await;
        let answer = conn
            .request(CALL, &call_body("echo", b"{}"), Duration::from_secs(30))
            .await;
        assert!(
            matches!(answer, Err(ChildFailure::Bad(ref why))
                if why == "a reply to request 99 while waiting for the reply to request 1"),
            "{answer:?}"
        );
        assert!(conn.exit_detail().await.contains("SIGKILL"));
    }

    #[tokio::test]
    async fn a_log_frame_over_the_limit_kills_the_child() {
        let dir = tempfile::tempdir().expect("tempdir");
        let huge = frame(LOG, &[&vec![b'x'; MAX_LOG_FRAME]]);
        let launch = fake_child(dir.path(), &[ready_frame(), huge].concat());
        let mut conn = spawn_fake(&launch).await;
        let answer = conn
            .request(CALL, &call_body("echo", b"{}"), Duration::from_secs(30))
            .await;
        let expected = format!(
            "the plugin host was killed by signal 9 (SIGKILL); it sent a log frame of {} bytes (at most {MAX_LOG_FRAME})",
            MAX_LOG_FRAME + 1
        );
        assert!(
            matches!(answer, Err(ChildFailure::Crashed(ref why)) if *why == expected),
            "{answer:?}"
        );
    }

    #[test]
    fn exit_descriptions_name_the_signal() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            describe_exit(ExitStatus::from_raw(libc::SIGSEGV)),
            "the plugin host was killed by signal 11 (SIGSEGV)"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(3 << 8)),
            "the plugin host exited with status 3"
        );
    }
}
