//! Fixture plugin: panics while the host asks for its manifest.

use settled_plugin_api::serde_json::Value;
use settled_plugin_api::{export_plugin, Manifest, Plugin, PluginError, Role};

/// The fixture's only type.
pub struct Fixture;

impl Plugin for Fixture {
    fn manifest() -> Manifest {
        if std::hint::black_box(true) {
            panic!("manifest exploded");
        }
        Manifest {
            name: "panics-init".into(),
            version: "1.0.0".into(),
            roles: vec![Role::Intake],
            description: "test fixture".into(),
        }
    }

    fn configure(settings: Value) -> Result<Self, PluginError> {
        let _ = settings;
        Ok(Fixture)
    }

    fn custom(&self, op: &str, payload: Value) -> Result<Value, PluginError> {
        match op {
            "echo" => Ok(payload),

            _ => Err(PluginError::unsupported(op)),
        }
    }
}

export_plugin!(Fixture);
