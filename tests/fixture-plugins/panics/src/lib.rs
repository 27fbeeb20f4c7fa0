//! Fixture plugin: panics in configure (when asked), in a call, and in every `sink_step`.

use settled_plugin_api::serde_json::Value;
use settled_plugin_api::{export_plugin, Manifest, Plugin, PluginError, Role, SinkInput, SinkStep};

/// The fixture's only type.
pub struct Fixture;

impl Plugin for Fixture {
    fn manifest() -> Manifest {
        Manifest {
            name: "panics".into(),
            version: "1.0.0".into(),
            roles: vec![Role::Intake],
            description: "test fixture".into(),
        }
    }

    fn configure(settings: Value) -> Result<Self, PluginError> {
        if settings.get("panic_in").and_then(Value::as_str) == Some("configure") {
            panic!("configure exploded");
        }
        let _ = settings;
        Ok(Fixture)
    }

    fn sink_step(&self, _input: SinkInput) -> Result<SinkStep, PluginError> {
        panic!("sink exploded")
    }

    fn custom(&self, op: &str, payload: Value) -> Result<Value, PluginError> {
        match op {
            "echo" => Ok(payload),
            "panic" => panic!("call exploded"),
            _ => Err(PluginError::unsupported(op)),
        }
    }
}

export_plugin!(Fixture);
