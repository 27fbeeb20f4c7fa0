//! The settings of one Stripe connector instance and their validation.

use serde::Deserialize;
use settled_plugin_api::settings::settings_from_json;
use settled_plugin_api::PluginError;

/// Settings of one Stripe webhook endpoint (the `[connector.settings]` table).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The endpoint's signing secret (`whsec_...`).
    pub secret: Option<String>,
    /// Name of an environment variable holding the signing secret, instead of `secret`.
    pub secret_env: Option<String>,
    /// How far the signed timestamp may be from the time the request was received, in seconds (Stripe's default: 300).
    pub tolerance_secs: u32,
    /// Metadata keys holding invoice references, in order of preference; every non-empty one is kept.
    pub invoice_keys: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            secret: None,
            secret_env: None,
            tolerance_secs: 300,
            invoice_keys: vec![
                "invoice".to_owned(),
                "invoice_number".to_owned(),
                "order_id".to_owned(),
            ],
        }
    }
}

/// A validated instance configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// The signing secret's bytes.
    pub secret: Vec<u8>,
    /// Signature tolerance in seconds.
    pub tolerance_secs: i64,
    /// Metadata keys holding invoice references.
    pub invoice_keys: Vec<String>,
}

// Hand-written so the secret never ends up in a log line.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("tolerance_secs", &self.tolerance_secs)
            .field("invoice_keys", &self.invoice_keys)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Parse and validate settings; `env` looks up environment variables (for `secret_env`).
    /// Errors name the settings key at fault.
    pub fn from_json(
        settings: serde_json::Value,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, PluginError> {
        let settings: Settings = settings_from_json(settings)?;
        let secret = match (settings.secret, settings.secret_env) {
            (Some(_), Some(_)) => {
                return Err(PluginError::bad_config(
                    "secret_env",
                    "give either `secret` or `secret_env`, not both",
                ))
            }
            (None, None) => {
                return Err(PluginError::bad_config(
                    "secret",
                    "the endpoint's signing secret is required: set `secret` or `secret_env`",
                ))
            }
            (Some(secret), None) => secret,
            (None, Some(name)) => env(&name).ok_or_else(|| {
                PluginError::bad_config(
                    "secret_env",
                    format!("environment variable `{name}` is not set"),
                )
            })?,
        };
        if secret.is_empty() {
            return Err(PluginError::bad_config("secret", "the secret is empty"));
        }
        if settings.tolerance_secs == 0 {
            return Err(PluginError::bad_config(
                "tolerance_secs",
                "must be at least 1 second",
            ));
        }
        if settings.invoice_keys.iter().any(|key| key.is_empty()) {
            return Err(PluginError::bad_config(
                "invoice_keys",
                "a metadata key is empty",
            ));
        }
        Ok(Config {
            secret: secret.into_bytes(),
            tolerance_secs: i64::from(settings.tolerance_secs),
            invoice_keys: settings.invoice_keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn check_bad(settings: serde_json::Value, key: &str, words: &str) {
        let error = match Config::from_json(settings.clone(), no_env) {
            Ok(_) => panic!("settings {settings} were accepted"),
            Err(error) => error,
        };
        assert_eq!(error.code, "bad_config");
        assert_eq!(error.location.as_deref(), Some(key), "{error}");
        assert!(error.message.contains(words), "{error}");
    }

    #[test]
    fn a_secret_alone_gives_the_defaults() {
        let config = Config::from_json(json!({"secret": "whsec_x"}), no_env)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.secret, b"whsec_x".to_vec());
        assert_eq!(config.tolerance_secs, 300);
        assert_eq!(
            config.invoice_keys,
            ["invoice", "invoice_number", "order_id"]
        );
        assert!(!format!("{config:?}").contains("whsec_x"));
    }

    #[test]
    fn secret_env_reads_the_named_variable() {
        let env = |name: &str| (name == "STRIPE_WHSEC").then(|| "whsec_env".to_owned());
        let config = Config::from_json(json!({"secret_env": "STRIPE_WHSEC"}), env)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.secret, b"whsec_env".to_vec());
    }

    #[test]
    fn bad_settings_name_their_key() {
        check_bad(json!({}), "secret", "required");
        check_bad(json!(null), "secret", "required");
        check_bad(json!({"secret": ""}), "secret", "empty");
        check_bad(
            json!({"secret": "a", "secret_env": "B"}),
            "secret_env",
            "not both",
        );
        check_bad(
            json!({"secret_env": "NOT_SET_ANYWHERE"}),
            "secret_env",
            "`NOT_SET_ANYWHERE` is not set",
        );
        check_bad(
            json!({"secret": "a", "tolerance": 5}),
            "tolerance",
            "unknown field `tolerance`",
        );
        check_bad(
            json!({"secret": "a", "tolerance_secs": 0}),
            "tolerance_secs",
            "at least",
        );
        check_bad(
            json!({"secret": "a", "tolerance_secs": "5m"}),
            "tolerance_secs",
            "invalid type",
        );
        check_bad(
            json!({"secret": "a", "invoice_keys": [""]}),
            "invoice_keys",
            "empty",
        );
        check_bad(
            json!({"secret": "a", "invoice_keys": [1]}),
            "invoice_keys[0]",
            "invalid type",
        );
    }
}
