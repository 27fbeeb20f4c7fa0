//! Chunked parse sessions (plugin ABI 1.1): a big file goes to its plugin in chunks and its records come
//! back as they complete, so that neither side ever holds the whole file or all of its records.
//!
//! A session stays with the instance version it began on (a hot reload does not move it) and, in process
//! mode, with the child it began in: if that child died or was replaced, the session's remaining calls
//! fail instead of sending the rest of the file to a plugin that never saw its beginning.
//! Plugins built for ABI 1.0 have no session operations: for them the host buffers the chunks and makes
//! one `parse` call at the end (no memory saving, same records).

use serde::Serialize;
use settled_plugin_api::{
    base64_bytes, ops, FileRequest, ParseBegin, ParseReply, ParseSessionId, Record,
};

use super::{CallError, PluginHost, Target};

/// An open parse session on one instance; see [`PluginHost::parse_begin`].
///
/// Dropping a session that was neither finished nor aborted aborts it in the background.
pub struct ParseSession {
    target: Target,
    mode: Mode,
    /// The plugin may still hold state for this session.
    open: bool,
}

enum Mode {
    /// The plugin keeps the session; `generation` is the child it lives in (process mode).
    Remote {
        session: u64,
        generation: Option<u64>,
    },
    /// A plugin built for ABI 1.0: the bytes are kept here and parsed at the end.
    Buffered { name: String, bytes: Vec<u8> },
}

impl std::fmt::Debug for ParseSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = f.debug_struct("ParseSession");
        out.field("instance", &self.target.slot.config.name);
        match &self.mode {
            Mode::Remote {
                session,
                generation,
            } => out
                .field("session", session)
                .field("generation", generation),
            Mode::Buffered { bytes, .. } => out.field("buffered_bytes", &bytes.len()),
        };
        out.finish()
    }
}

/// `parse_feed` request, borrowing the chunk instead of copying it.
#[derive(Serialize)]
struct FeedRequest<'a> {
    session: u64,
    #[serde(serialize_with = "base64_bytes::serialize")]
    chunk: &'a [u8],
}

impl PluginHost {
    /// `file`: opens a chunked parse session for the file `name` on `instance`. Feed the file with
    /// [`ParseSession::feed`] and close it with [`ParseSession::finish`] (or [`ParseSession::abort`]).
    pub async fn parse_begin(&self, instance: &str, name: &str) -> Result<ParseSession, CallError> {
        let target = self.target(instance)?;
        if target.live.plugin.abi.1 < 1 {
            return Ok(ParseSession {
                target,
                mode: Mode::Buffered {
                    name: name.to_string(),
                    bytes: Vec::new(),
                },
                open: false,
            });
        }
        let payload = encode(
            &target,
            ops::PARSE_BEGIN,
            &ParseBegin {
                name: name.to_string(),
            },
        )?;
        let (reply, generation) = target.call(ops::PARSE_BEGIN, payload, None).await;
        let id: ParseSessionId = decode(&target, ops::PARSE_BEGIN, reply?)?;
        Ok(ParseSession {
            target,
            mode: Mode::Remote {
                session: id.session,
                generation,
            },
            open: true,
        })
    }
}

impl ParseSession {
    /// The next bytes of the file (any size; the import path uses 256 KiB). Returns the records these bytes
    /// completed. After an error the session is over: the file was not imported.
    pub async fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Record>, CallError> {
        let (session, generation) = match &mut self.mode {
            Mode::Buffered { bytes, .. } => {
                bytes.extend_from_slice(chunk);
                return Ok(Vec::new());
            }
            Mode::Remote {
                session,
                generation,
            } => (*session, *generation),
        };
        let payload = encode(
            &self.target,
            ops::PARSE_FEED,
            &FeedRequest { session, chunk },
        )?;
        let (reply, _) = self.target.call(ops::PARSE_FEED, payload, generation).await;
        let records = reply.and_then(|v| decode::<ParseReply>(&self.target, ops::PARSE_FEED, v));
        if records.is_err() {
            // A plugin error or a failed call has already ended the session on the plugin's side.
            self.open = false;
        }
        records.map(|r| r.records)
    }

    /// End of the file: the remaining records, or the error naming the bad line or element.
    pub async fn finish(mut self) -> Result<Vec<Record>, CallError> {
        self.open = false;
        let (op, payload, pinned) = match &mut self.mode {
            Mode::Buffered { name, bytes } => {
                let request = FileRequest {
                    name: std::mem::take(name),
                    content: std::mem::take(bytes),
                };
                (
                    ops::PARSE,
                    encode(&self.target, ops::PARSE, &request)?,
                    None,
                )
            }
            Mode::Remote {
                session,
                generation,
            } => {
                let request = ParseSessionId { session: *session };
                (
                    ops::PARSE_END,
                    encode(&self.target, ops::PARSE_END, &request)?,
                    *generation,
                )
            }
        };
        let (reply, _) = self.target.call(op, payload, pinned).await;
        Ok(decode::<ParseReply>(&self.target, op, reply?)?.records)
    }

    /// Drops the session's state in the plugin. Best effort: errors are only logged.
    pub async fn abort(mut self) {
        if let Some(call) = self.abort_call() {
            call.await;
        }
    }

    /// The `parse_abort` call this session still owes the plugin, if any.
    fn abort_call(&mut self) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let Mode::Remote {
            session,
            generation,
        } = self.mode
        else {
            return None;
        };
        if !std::mem::replace(&mut self.open, false) {
            return None;
        }
        let target = self.target.clone();
        Some(async move {
            let payload = serde_json::to_vec(&ParseSessionId { session }).unwrap_or_default();
            let (reply, _) = target.call(ops::PARSE_ABORT, payload, generation).await;
            if let Err(e) = reply {
                tracing::debug!(instance = %target.slot.config.name, session, error = %e, "parse_abort failed");
            }
        })
    }
}

impl Drop for ParseSession {
    fn drop(&mut self) {
        if let Some(call) = self.abort_call() {
            // Outside a runtime the plugin drops the session itself once 64 newer ones are open.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(call);
            }
        }
    }
}

fn encode<T: Serialize>(target: &Target, op: &str, request: &T) -> Result<Vec<u8>, CallError> {
    serde_json::to_vec(request).map_err(|e| CallError::BadOutput {
        instance: target.slot.config.name.clone(),
        plugin: target.slot.config.plugin.clone(),
        detail: format!("cannot encode the `{op}` request: {e}"),
    })
}

fn decode<T: serde::de::DeserializeOwned>(
    target: &Target,
    op: &str,
    reply: serde_json::Value,
) -> Result<T, CallError> {
    serde_json::from_value(reply).map_err(|e| CallError::BadOutput {
        instance: target.slot.config.name.clone(),
        plugin: target.slot.config.plugin.clone(),
        detail: format!("the `{op}` reply does not match the contract: {e}"),
    })
}
