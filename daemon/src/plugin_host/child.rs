//! Process isolation: the `settled plugin-host --library PATH` child and the daemon's side of its pipe.
//!
//! Frames on stdin/stdout are `[u32 LE length][u8 tag][body]`, the length counting tag and body:
//! - host -> child: `CONFIGURE` (body: settings JSON), `CALL` (body: `[u32 LE op length][op][payload JSON]`);
//! - child -> host: `READY` (body: `{"abi":[major,minor],"manifest":{..}}`, once, after the header check
//!   and init), `FATAL` (body: why the library cannot be served), `REPLY` (body: `[i32 LE status][output]`,
//!   the plugin's envelope untouched), `LOG` (body: `[u32 LE level][u32 LE target length][target][message]`),
//!   `BAD` (body: why an output was not forwarded, e.g. over 64 MiB).
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
/// Longest log target or message forwarded from a child, in bytes.
const MAX_LOG_PART: usize = 64 * 1024;
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
    // Log lines share the pipe with replies: keep them far below the frame limit.
    let clip = |b: &[u8]| -> usize { b.len().min(MAX_LOG_PART) };
    let target = bytes(target, target_len);
    let target = &target[..clip(target)];
    let message = bytes(message, message_len);
    let message = &message[..clip(message)];
    let target_len = u32::try_from(target.len()).unwrap_or(0).to_le_bytes();
    let _ = std::panic::catch_unwind(|| {
        send(LOG, &[&level.to_le_bytes(), &target_len, target, message]);
    });
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

fn reply_frame(reply: Reply) {
    let sent = match reply {
        Reply::Ok(value) => envelope_reply(abi::STATUS_OK, settled_plugin_api::ops::OK, value),
        Reply::Err(error) => envelope_reply(
            abi::STATUS_ERROR,
            settled_plugin_api::ops::ERROR,
            serde_json::to_value(error).unwrap_or_default(),
        ),
        Reply::Panicked(message) => send(
            REPLY,
            &[&abi::STATUS_PANICKED.to_le_bytes(), message.as_bytes()],
        ),
        Reply::Bad(message) => send(BAD, &[message.as_bytes()]),
    };
    let _ = sent;
}

fn envelope_reply(status: Status, op: &str, payload: serde_json::Value) -> bool {
    let bytes = serde_json::to_vec(&settled_plugin_api::Envelope {
        v: settled_plugin_api::ENVELOPE_VERSION,
        op: op.to_string(),
        payload,
    })
    .unwrap_or_default();
    send(REPLY, &[&status.to_le_bytes(), &bytes])
}

/// `settled plugin-host --library PATH [--max-level N]`: loads one plugin library and serves frames on
/// stdin/stdout until stdin closes. `args` may start with `plugin-host`; `N` is the most verbose plugin log
/// level forwarded (1 = error .. 5 = trace, default 3).
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
    let (major, minor) = lib.abi();
    let ready = serde_json::json!({ "abi": [major, minor], "manifest": manifest });
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
        match (tag, &instance) {
            (CONFIGURE, _) => match lib.create(&body) {
                Ok(created) => {
                    instance = Some(created);
                    reply_frame(Reply::Ok(serde_json::Value::Null));
                }
                Err(reply) => reply_frame(reply),
            },
            (CALL, Some(instance)) => match split_call_body(&body) {
                Some((op, payload)) => match instance.call_raw(op, payload) {
                    Ok((status, output)) => {
                        send(REPLY, &[&status.to_le_bytes(), &output]);
                    }
                    Err(why) => reply_frame(Reply::Bad(why)),
                },
                None => reply_frame(Reply::Bad("malformed call frame".to_string())),
            },
            (CALL, None) => reply_frame(Reply::Bad("call before configure".to_string())),
            (other, _) => reply_frame(Reply::Bad(format!("unknown frame tag {other}"))),
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
}

impl ChildConn {
    /// Spawns `host_exe plugin-host --library library` and waits for its handshake.
    pub(crate) async fn spawn(
        host_exe: &Path,
        library: &Path,
        plugin: &str,
        timeout: Duration,
    ) -> Result<(ChildConn, Ready), String> {
        let mut child = tokio::process::Command::new(host_exe)
            .arg("plugin-host")
            .arg("--library")
            .arg(library)
            .arg("--max-level")
            .arg(native::max_level().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start `{} plugin-host`: {e}", host_exe.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("child started without pipes".to_string());
        };
        let (tx, incoming) = mpsc::channel(16);
        tokio::spawn(read_frames(stdout, tx, plugin.to_string()));
        let mut conn = ChildConn {
            child,
            stdin,
            incoming,
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
                }
                let ready: ReadyBody = serde_json::from_slice(&body)
                    .map_err(|e| format!("bad handshake from the plugin host: {e}"))?;
                Ok((
                    conn,
                    Ready {
                        abi: ready.abi,
                        manifest: ready.manifest,
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

    /// Sends one frame and waits for the reply; kills the child on a timeout or garbage.
    pub(crate) async fn request(
        &mut self,
        tag: u8,
        body: &[u8],
        timeout: Duration,
    ) -> Result<(Status, Vec<u8>), ChildFailure> {
        let deadline = Instant::now() + timeout;
        let mut bytes = Vec::with_capacity(5 + body.len());
        bytes.extend_from_slice(
            &u32::try_from(1 + body.len())
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        bytes.push(tag);
        bytes.extend_from_slice(body);
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
            Ok(Some(Incoming::Frame(REPLY, body))) => {
                let Some((status, output)) = u32_prefix(&body) else {
                    let _ = self.child.start_kill();
                    return Err(ChildFailure::Bad("short reply frame".to_string()));
                };
                Ok((status as Status, output.to_vec()))
            }
            Ok(Some(Incoming::Frame(BAD, body))) => Err(ChildFailure::Refused(
                String::from_utf8_lossy(&body).into_owned(),
            )),
            Ok(Some(Incoming::Frame(other, _))) => {
                let _ = self.child.start_kill();
                Err(ChildFailure::Bad(format!("unexpected frame {other}")))
            }
            Ok(Some(Incoming::Closed(why))) => {
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

async fn read_frames(
    mut stdout: tokio::process::ChildStdout,
    tx: mpsc::Sender<Incoming>,
    plugin: String,
) {
    let mut reader = tokio::io::BufReader::with_capacity(64 * 1024, &mut stdout);
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
        let mut body = vec![0u8; len];
        if let Err(e) = reader.read_exact(&mut body).await {
            let _ = tx
                .send(Incoming::Closed(format!("reading its output: {e}")))
                .await;
            return;
        }
        let tag = body.remove(0);
        if tag == LOG {
            emit_log_frame(&plugin, &body);
            continue;
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
    host_exe: PathBuf,
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
        host_exe: &Path,
        library: &Path,
        plugin: &str,
        settings: Vec<u8>,
        timeout: Duration,
    ) -> Result<ProcInstance, Reply> {
        let conn = Self::connect(host_exe, library, plugin, &settings, timeout).await?;
        Ok(ProcInstance {
            host_exe: host_exe.to_path_buf(),
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
        host_exe: &Path,
        library: &Path,
        plugin: &str,
        settings: &[u8],
        timeout: Duration,
    ) -> Result<ChildConn, Reply> {
        let (mut conn, _) = ChildConn::spawn(host_exe, library, plugin, HANDSHAKE_TIMEOUT)
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
                &self.host_exe,
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
    host_exe: &Path,
    library: &Path,
    plugin: &str,
    timeout: Duration,
) -> Result<Ready, String> {
    let (conn, ready) = ChildConn::spawn(host_exe, library, plugin, timeout).await?;
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
