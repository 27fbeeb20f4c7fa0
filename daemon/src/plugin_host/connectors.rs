//! Which instances run: the `[[connector]]` tables, plus (with `[plugins] defaults = true`) one default instance of
//! every loaded plugin no connector names; and applying a reloaded config to the running host.
//!
//! A default instance is named after its plugin and gets [`default_instance_settings`]. It appears when its plugin
//! loads (also a plugin dropped in while the daemon runs) and goes when the file is removed or a `[[connector]]`
//! starts naming the plugin. Plugins in [`NEEDS_SETTINGS`] never get one: they cannot work without settings.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use super::{lock, read, validate_connectors, write, ConnectorConfig, HostError, Loaded};
use super::{PluginHost, Slot};

/// What the config asks for.
#[derive(Debug, Clone)]
pub(super) struct Wanted {
    /// The `[[connector]]` tables.
    pub connectors: Vec<ConnectorConfig>,
    /// Whether loaded plugins no connector names get a default instance.
    pub defaults: bool,
}

/// Bundled plugins that cannot work without settings of their own (a webhook signing secret, a receiver URL).
const NEEDS_SETTINGS: &[&str] = &["hledger", "stripe", "webhook"];

/// Settings of a plugin's default instance: what makes a bundled plugin usable out of the box, else `{}`.
fn default_instance_settings(plugin: &str) -> serde_json::Value {
    match plugin {
        "qif" => serde_json::json!({"currency": "USD"}),
        _ => serde_json::json!({}),
    }
}

/// The outcome of one config reload, shown by `/v1/plugins` and `/healthz` until the next one.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    /// The config file that was read.
    pub file: PathBuf,
    /// When (RFC 3339, UTC).
    pub at: String,
    /// What triggered it: `SIGHUP` or `file changed`.
    pub trigger: String,
    /// `applied` or `refused`.
    pub outcome: String,
    /// Why the file was refused (the running config stays in force).
    pub error: Option<String>,
    /// What changed in the running instances (`added connector `x` (plugin camt)`, ...).
    pub changes: Vec<String>,
    /// Changes that were read but take effect only at the next restart.
    pub restart_needed: Vec<String>,
}

fn default_connector(plugin: &str) -> ConnectorConfig {
    ConnectorConfig {
        name: plugin.to_string(),
        plugin: plugin.to_string(),
        settings: default_instance_settings(plugin),
        ..ConnectorConfig::default()
    }
}

/// Whether `plugin` gets a default instance under `wanted`, given the instance names the connectors take.
fn wants_default(wanted: &Wanted, plugin: &str) -> bool {
    let usable_name = !plugin.is_empty()
        && plugin
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_');
    wanted.defaults
        && usable_name
        && !NEEDS_SETTINGS.contains(&plugin)
        && !wanted
            .connectors
            .iter()
            .any(|c| c.plugin == plugin || c.name == plugin)
}

impl PluginHost {
    /// Every instance slot, by name.
    pub(super) fn all_slots(&self) -> Vec<Arc<Slot>> {
        read(&self.slots).values().cloned().collect()
    }

    pub(super) fn slot(&self, name: &str) -> Option<Arc<Slot>> {
        read(&self.slots).get(name).cloned()
    }

    /// The slots of one plugin.
    pub(super) fn slots_of(&self, plugin: &str) -> Vec<Arc<Slot>> {
        read(&self.slots)
            .values()
            .filter(|s| s.config.plugin == plugin)
            .cloned()
            .collect()
    }

    /// Adds the default instance slot of `plugin` when the config wants one and it is missing. Under the reload lock.
    pub(super) fn add_default_slot(&self, plugin: &str) {
        let wanted = lock(&self.wanted).clone();
        if !wants_default(&wanted, plugin) {
            return;
        }
        let mut slots = write(&self.slots);
        if !slots.contains_key(plugin) {
            tracing::info!(plugin, "starting the plugin's default instance");
            let slot = Slot::new(default_connector(plugin), true);
            slots.insert(plugin.to_string(), Arc::new(slot));
        }
    }

    /// Makes the running instances what `connectors` and `defaults` ask for: new connectors start, removed ones
    /// stop, changed ones restart with their new settings, unchanged ones keep running (and their counters).
    /// Returns what changed. An inconsistent list (a duplicate or unusable name) changes nothing.
    pub async fn apply_connectors(
        &self,
        connectors: Vec<ConnectorConfig>,
        defaults: bool,
    ) -> Result<Vec<String>, HostError> {
        validate_connectors(&connectors)?;
        let _one_at_a_time = self.reload.lock().await;
        let wanted = Wanted {
            connectors,
            defaults,
        };
        let loaded: BTreeMap<String, Arc<Loaded>> = lock(&self.files)
            .values()
            .filter_map(|e| e.current.clone())
            .map(|l| (l.manifest.name.clone(), l))
            .collect();
        let mut next: Vec<(ConnectorConfig, bool)> = wanted
            .connectors
            .iter()
            .map(|c| (c.clone(), false))
            .collect();
        next.extend(
            loaded
                .keys()
                .filter(|plugin| wants_default(&wanted, plugin))
                .map(|plugin| (default_connector(plugin), true)),
        );
        let current = read(&self.slots).clone();
        let mut changes = Vec::new();
        let mut slots = BTreeMap::new();
        for (config, default) in next {
            let kind = if default {
                "default instance"
            } else {
                "connector"
            };
            let old = current.get(&config.name);
            if let Some(old) = old.filter(|o| o.config == config && o.default == default) {
                slots.insert(config.name.clone(), Arc::clone(old));
                continue;
            }
            changes.push(format!(
                "{} {kind} `{}` (plugin {})",
                if old.is_some() { "changed" } else { "added" },
                config.name,
                config.plugin
            ));
            let slot = Arc::new(Slot::new(config, default));
            if let Some(plugin) = loaded.get(&slot.config.plugin) {
                match self.create_instance(plugin, &slot.config).await {
                    Ok(instance) => *write(&slot.live) = Some(instance),
                    Err(why) => {
                        let why = format!("instance `{}`: {why}", slot.config.name);
                        tracing::warn!(instance = %slot.config.name, plugin = %slot.config.plugin, reason = %why, "connector instance not started");
                        *lock(&slot.failed) = Some(why);
                    }
                }
            }
            slots.insert(slot.config.name.clone(), slot);
        }
        for (name, old) in &current {
            if !slots.contains_key(name) {
                let kind = if old.default {
                    "default instance"
                } else {
                    "connector"
                };
                changes.push(format!(
                    "removed {kind} `{name}` (plugin {})",
                    old.config.plugin
                ));
                *write(&old.live) = None;
                *lock(&old.failed) = Some("removed from the config".to_string());
            }
        }
        *write(&self.slots) = slots;
        *lock(&self.wanted) = wanted;
        for change in &changes {
            tracing::info!(change = %change, "config reload");
        }
        Ok(changes)
    }

    /// Remembers the outcome of a config reload for [`PluginHost::last_reload`].
    pub fn record_reload(&self, report: ReloadReport) {
        *lock(&self.reloaded) = Some(report);
    }

    /// The outcome of the last config reload, if any happened.
    pub fn last_reload(&self) -> Option<ReloadReport> {
        lock(&self.reloaded).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configured(name: &str, plugin: &str) -> ConnectorConfig {
        ConnectorConfig {
            name: name.to_string(),
            ..default_connector(plugin)
        }
    }

    #[test]
    fn a_default_instance_runs_only_for_plugins_no_connector_names_or_takes_the_name_of() {
        let wanted = Wanted {
            connectors: vec![configured("bank", "camt"), configured("ofx", "mt940")],
            defaults: true,
        };
        assert!(!wants_default(&wanted, "camt"), "named by `bank`");
        assert!(!wants_default(&wanted, "mt940"), "named by `ofx`");
        assert!(!wants_default(&wanted, "ofx"), "its name is taken");
        assert!(wants_default(&wanted, "bank-csv"));
        assert!(!wants_default(&wanted, "stripe"), "needs settings");
        assert!(
            !wants_default(&wanted, "odd name"),
            "not a usable instance name"
        );
        let off = Wanted {
            defaults: false,
            ..wanted
        };
        assert!(!wants_default(&off, "bank-csv"));
    }
}
