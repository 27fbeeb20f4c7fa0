//! A well-behaved fixture plugin: echoes, turns intake bodies and file lines into `lead@1` records, logs.
//! File lines also stream through a native parse session, unless the setting `stream` is false (then the
//! SDK's fallback buffers the chunks and calls `parse`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use settled_plugin_api::sdk::StreamParser;
use settled_plugin_api::serde_json::{json, Value};
use settled_plugin_api::{
    export_plugin, FileRequest, IntakeOutcome, IntakeRequest, LeadRecord, Manifest, ParseReply,
    Plugin, PluginError, Record, Role, SniffReply, SniffRequest,
};

/// One configured instance; `greeting` tells instances apart.
pub struct Good {
    greeting: String,
    stream: bool,
    /// Native parsers of this instance still alive (the `live_parsers` op), to show sessions are freed.
    live: Arc<AtomicUsize>,
}

/// The native stream parser: one lead per complete line, as `parse` gives.
struct Lines {
    name: String,
    tail: Vec<u8>,
    line: usize,
    live: Arc<AtomicUsize>,
}

impl Lines {
    /// `ended`: the line ended with `\n`, so a `\r` before it is part of the line end (as `str::lines`).
    fn lead(&mut self, raw: &[u8], ended: bool) -> Result<Record, PluginError> {
        self.line += 1;
        let raw = match raw.strip_suffix(b"\r") {
            Some(stripped) if ended => stripped,
            _ => raw,
        };
        let text = std::str::from_utf8(raw).map_err(|_| {
            PluginError::bad_input(format!("{} line {}", self.name, self.line), "not utf-8")
        })?;
        Ok(lead(text, None))
    }
}

impl StreamParser for Lines {
    fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Record>, PluginError> {
        self.tail.extend_from_slice(chunk);
        let Some(last) = self.tail.iter().rposition(|b| *b == b'\n') else {
            return Ok(Vec::new());
        };
        let done: Vec<u8> = self.tail.drain(..=last).collect();
        done[..last]
            .split(|b| *b == b'\n')
            .map(|line| self.lead(line, true))
            .collect()
    }

    fn finish(mut self: Box<Self>) -> Result<Vec<Record>, PluginError> {
        if self.tail.is_empty() {
            return Ok(Vec::new());
        }
        let rest = std::mem::take(&mut self.tail);
        Ok(vec![self.lead(&rest, false)?])
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

fn lead(name: &str, external_id: Option<String>) -> Record {
    Record::Lead(LeadRecord {
        name: name.to_string(),
        source: "web".to_string(),
        external_id,
        ..LeadRecord::default()
    })
}

impl Plugin for Good {
    fn manifest() -> Manifest {
        Manifest {
            name: "good".into(),
            version: "1.0.0".into(),
            roles: vec![Role::Intake, Role::File],
            description: "test fixture".into(),
        }
    }

    fn configure(settings: Value) -> Result<Self, PluginError> {
        let mut greeting = "hello".to_string();
        let mut stream = true;
        if let Some(table) = settings.as_object() {
            for (key, value) in table {
                match (key.as_str(), value) {
                    ("greeting", Value::String(text)) => greeting = text.to_string(),
                    ("greeting", _) => {
                        return Err(PluginError::bad_config(key, "must be a string"))
                    }
                    ("stream", Value::Bool(on)) => stream = *on,
                    ("stream", _) => return Err(PluginError::bad_config(key, "must be a boolean")),
                    _ => return Err(PluginError::bad_config(key, "unknown setting")),
                }
            }
        }
        Ok(Good {
            greeting,
            stream,
            live: Arc::new(AtomicUsize::new(0)),
        })
    }

    fn intake(&self, request: IntakeRequest) -> Result<IntakeOutcome, PluginError> {
        tracing::info!(path = %request.path, "intake received");
        let name = String::from_utf8_lossy(&request.body).into_owned();
        let id = request.header("x-id").map(str::to_string);
        Ok(IntakeOutcome::Accept {
            records: vec![lead(&name, id)],
            reply: None,
        })
    }

    fn sniff(&self, request: SniffRequest) -> SniffReply {
        let confidence = if request.name.ends_with(".good") {
            90
        } else {
            0
        };
        SniffReply { confidence }
    }

    fn parse(&self, request: FileRequest) -> Result<ParseReply, PluginError> {
        let text = std::str::from_utf8(&request.content)
            .map_err(|_| PluginError::bad_input(&request.name, "not utf-8"))?;
        Ok(ParseReply {
            records: text.lines().map(|line| lead(line, None)).collect(),
        })
    }

    fn stream_parser(&self, name: &str) -> Option<Box<dyn StreamParser>> {
        if !self.stream {
            return None;
        }
        self.live.fetch_add(1, Ordering::SeqCst);
        Some(Box::new(Lines {
            name: name.to_string(),
            tail: Vec::new(),
            line: 0,
            live: Arc::clone(&self.live),
        }))
    }

    fn custom(&self, op: &str, payload: Value) -> Result<Value, PluginError> {
        match op {
            "live_parsers" => Ok(json!(self.live.load(Ordering::SeqCst))),
            "echo" => Ok(payload),
            "whoami" => Ok(json!({ "greeting": self.greeting })),
            "log" => {
                tracing::warn!(marker = %payload, "log line from the good plugin");
                Ok(Value::Null)
            }
            _ => Err(PluginError::unsupported(op)),
        }
    }
}

export_plugin!(Good);
