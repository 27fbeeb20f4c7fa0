//! Fixture plugin: panics in configure (when asked) and in a call.

use settled_plugin_api::serde_json::Value;
use settled_plugin_api::{export_plugin, Manifest, Plugin, PluginError, Role};

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

    fn custom(&self, op: &str, payload: Value) -> Result<Value, PluginError> {
        match op {
            "echo" => Ok(payload),
            "panic" => panic!("call exploded"),
            _ => Err(PluginError::unsupported(op)),
        }
    }
}

export_plugin!(Fixture);
