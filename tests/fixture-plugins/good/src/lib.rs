//! A well-behaved fixture plugin: echoes, turns intake bodies and file lines into `lead@1` records, logs.

use settled_plugin_api::serde_json::{json, Value};
use settled_plugin_api::{
    export_plugin, FileRequest, IntakeOutcome, IntakeRequest, LeadRecord, Manifest, ParseReply,
    Plugin, PluginError, Record, Role, SniffReply, SniffRequest,
};

/// One configured instance; `greeting` tells instances apart.
pub struct Good {
    greeting: String,
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
        if let Some(table) = settings.as_object() {
            for (key, value) in table {
                match (key.as_str(), value.as_str()) {
                    ("greeting", Some(text)) => greeting = text.to_string(),
                    ("greeting", None) => {
                        return Err(PluginError::bad_config(key, "must be a string"))
                    }
                    _ => return Err(PluginError::bad_config(key, "unknown setting")),
                }
            }
        }
        Ok(Good { greeting })
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

    fn custom(&self, op: &str, payload: Value) -> Result<Value, PluginError> {
        match op {
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
