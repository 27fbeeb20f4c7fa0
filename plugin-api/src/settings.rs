//! Connector settings from the host's JSON, with errors that name the key at fault.

use serde::de::DeserializeOwned;

use crate::wire::PluginError;

/// Reads a plugin's settings from the JSON the host passes to [`crate::Plugin::configure`]; `null` (no
/// `[connector.settings]` table) means all defaults.
///
/// Errors are `bad_config` located at the key at fault, by its path for nested keys (`signature.secret`,
/// `invoice_keys[0]`), or at `settings` when the value is not a table or the table as a whole is wrong.
pub fn settings_from_json<T: DeserializeOwned + Default>(
    value: serde_json::Value,
) -> Result<T, PluginError> {
    if value.is_null() {
        return Ok(T::default());
    }
    if !value.is_object() {
        return Err(PluginError::bad_config(
            "settings",
            "settings must be a table of keys",
        ));
    }
    deserialize(value, "")
}

/// Reads one part of the settings, the value under `key`, for settings that are read in steps (a value
/// that is either a name or a table, say). Errors name keys below it as `key.inner`, or `key` itself.
pub fn settings_part<T: DeserializeOwned>(
    value: serde_json::Value,
    key: &str,
) -> Result<T, PluginError> {
    deserialize(value, key)
}

fn deserialize<T: DeserializeOwned>(value: serde_json::Value, key: &str) -> Result<T, PluginError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        PluginError::bad_config(key_at(key, &path), error.into_inner().to_string())
    })
}

/// Joins the settings key a value was read from with a path inside it (`.` is the value itself).
fn key_at(key: &str, path: &str) -> String {
    match (key, path) {
        ("", ".") => "settings".to_string(),
        ("", inner) => inner.to_string(),
        (key, ".") => key.to_string(),
        (key, inner) if inner.starts_with('[') => format!("{key}{inner}"),
        (key, inner) => format!("{key}.{inner}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Settings {
        enabled: bool,
        names: Vec<String>,
        inner: Inner,
    }

    #[derive(Debug, Default, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        limit: u32,
    }

    impl Default for Settings {
        fn default() -> Self {
            Settings {
                enabled: true,
                names: vec!["a".to_string()],
                inner: Inner::default(),
            }
        }
    }

    /// Reads `input` as `Settings`; checks the location and a fragment of the message of the error.
    fn check(input: serde_json::Value, location: &str, fragment: &str) {
        match settings_from_json::<Settings>(input.clone()) {
            Ok(settings) => panic!("{input} was accepted as {settings:?}"),
            Err(error) => {
                assert_eq!(error.code, "bad_config", "{input}");
                assert_eq!(error.location.as_deref(), Some(location), "{input}");
                assert!(error.message.contains(fragment), "{input}: {error}");
            }
        }
    }

    #[test]
    fn null_or_an_empty_table_gives_the_defaults() {
        assert_eq!(
            settings_from_json(json!(null)).ok(),
            Some(Settings::default())
        );
        assert_eq!(
            settings_from_json(json!({})).ok(),
            Some(Settings::default())
        );
    }

    #[test]
    fn keys_that_are_given_override_the_defaults() {
        let settings =
            settings_from_json::<Settings>(json!({"enabled": false, "inner": {"limit": 3}}));
        assert_eq!(
            settings.ok(),
            Some(Settings {
                enabled: false,
                names: vec!["a".to_string()],
                inner: Inner { limit: 3 },
            })
        );
    }

    #[test]
    fn errors_name_the_key_at_fault() {
        check(json!({"enabld": true}), "enabld", "unknown field `enabld`");
        check(json!({"enabled": "yes"}), "enabled", "invalid type");
        check(json!({"names": ["b", 2]}), "names[1]", "invalid type");
        check(
            json!({"inner": {"limit": -1}}),
            "inner.limit",
            "invalid value",
        );
        check(
            json!({"inner": {"limt": 1}}),
            "inner.limt",
            "unknown field `limt`",
        );
        check(json!({"inner": {}}), "inner", "missing field `limit`");
        check(json!([1]), "settings", "settings must be a table of keys");
        check(json!("x"), "settings", "settings must be a table of keys");
    }

    #[test]
    fn a_settings_part_names_keys_below_its_own() {
        let key = |value: serde_json::Value| {
            settings_part::<Inner>(value, "profile")
                .err()
                .and_then(|e| e.location)
        };
        assert_eq!(key(json!({"limit": "3"})).as_deref(), Some("profile.limit"));
        assert_eq!(key(json!({"limt": 3})).as_deref(), Some("profile.limt"));
        assert_eq!(key(json!({})).as_deref(), Some("profile"));
        assert_eq!(key(json!(7)).as_deref(), Some("profile"));
        let names = settings_part::<Vec<u32>>(json!([1, "x"]), "limits").err();
        assert_eq!(names.and_then(|e| e.location).as_deref(), Some("limits[1]"));
        assert_eq!(
            settings_part::<Inner>(json!({"limit": 9}), "profile").ok(),
            Some(Inner { limit: 9 })
        );
    }
}
