//! The settings of one web-form connector instance, as the host hands them over (JSON), and their validation.

use serde::Deserialize;
use settled_plugin_api::settings::settings_from_json;
use settled_plugin_api::PluginError;

/// Settings of one web-form connector instance (the `[connector.settings]` table).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Where each lead field is looked up; see [`FieldMap`].
    pub fields: FieldMap,
    /// `source` of the leads created, `web` by default.
    pub source: String,
    /// Name of a hidden form field people leave empty: when it is filled the request is from a bot,
    /// which gets a success answer while nothing is recorded.
    pub honeypot: Option<String>,
    /// Signature verification of the raw body; none by default.
    pub signature: Option<SignatureSettings>,
    /// JSON pointer (`/data/id`) to the provider's event id in JSON bodies, used as the lead's `external_id`.
    /// Without it, a top-level `event_id` (Typeform) or the `webhook-id` header is used.
    pub event_id: Option<String>,
    /// Where a browser goes after a plain HTML form post (answered `303 See Other`); JSON posts are not redirected.
    pub redirect: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            fields: FieldMap::default(),
            source: "web".to_owned(),
            honeypot: None,
            signature: None,
            event_id: None,
            redirect: None,
        }
    }
}

/// For each lead field, the places to look, in order; the first non-empty value wins.
///
/// A place is a form field name (compared case-insensitively; for Typeform webhooks an answer's `field.ref`
/// or a hidden field) or, when it starts with `/`, a JSON pointer into a JSON body
/// (`/form_response/answers/0/email`). A key left out keeps its default list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FieldMap {
    /// Full name.
    pub name: Vec<String>,
    /// Given name, joined with `last_name` when no full name is found.
    pub first_name: Vec<String>,
    /// Family name.
    pub last_name: Vec<String>,
    /// E-mail address.
    pub email: Vec<String>,
    /// Phone number.
    pub phone: Vec<String>,
    /// Company name.
    pub company: Vec<String>,
    /// The enquiry text.
    pub message: Vec<String>,
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|name| (*name).to_owned()).collect()
}

impl Default for FieldMap {
    fn default() -> Self {
        FieldMap {
            name: names(&["name", "full_name", "fullname", "your-name", "your_name"]),
            first_name: names(&[
                "first_name",
                "firstname",
                "first-name",
                "given_name",
                "fname",
            ]),
            last_name: names(&[
                "last_name",
                "lastname",
                "last-name",
                "family_name",
                "surname",
                "lname",
            ]),
            email: names(&["email", "e-mail", "email_address", "your-email", "mail"]),
            phone: names(&[
                "phone",
                "phone_number",
                "tel",
                "telephone",
                "mobile",
                "your-phone",
            ]),
            company: names(&[
                "company",
                "company_name",
                "organization",
                "organisation",
                "your-company",
            ]),
            message: names(&[
                "message",
                "comments",
                "comment",
                "enquiry",
                "inquiry",
                "your-message",
            ]),
        }
    }
}

impl FieldMap {
    /// Every configured list with its settings key, for validation and messages.
    pub fn lists(&self) -> [(&'static str, &[String]); 7] {
        [
            ("name", &self.name),
            ("first_name", &self.first_name),
            ("last_name", &self.last_name),
            ("email", &self.email),
            ("phone", &self.phone),
            ("company", &self.company),
            ("message", &self.message),
        ]
    }
}

/// How requests are signed. Keys other than `style`, `secret` and `secret_env` apply to the `hex` style only.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureSettings {
    /// `typeform` or `hex`.
    pub style: SignatureStyle,
    /// The shared secret.
    #[serde(default)]
    pub secret: Option<String>,
    /// Name of an environment variable holding the secret, instead of `secret`.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// `hex`: header holding the hex signature (an optional `sha256=` prefix is accepted), default `X-Signature`.
    #[serde(default)]
    pub header: Option<String>,
    /// `hex`: header holding the Unix timestamp in seconds, default `X-Timestamp`;
    /// `null` signs the body alone and disables replay protection.
    #[serde(default, deserialize_with = "present")]
    pub timestamp_header: Option<Option<String>>,
    /// `hex`: how far the timestamp may be from the time the request was received, in seconds, default 300.
    #[serde(default)]
    pub tolerance_secs: Option<u32>,
}

/// The signature styles real providers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureStyle {
    /// Typeform: header `Typeform-Signature: sha256=<base64 HMAC-SHA256 of the raw body>`.
    Typeform,
    /// A hex HMAC-SHA256 header over `timestamp + "." + body`, with a replay window on the timestamp.
    Hex,
}

/// Tells an explicit `null` (`Some(None)`) from a missing key (`None`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// A signature check ready to run: the secret is resolved.
#[derive(Clone, PartialEq, Eq)]
pub enum Verifier {
    /// See [`SignatureSettings::Typeform`].
    Typeform {
        /// The shared secret's bytes.
        secret: Vec<u8>,
    },
    /// See [`SignatureSettings::Hex`].
    Hex {
        /// Signature header name.
        header: String,
        /// Timestamp header name, if the timestamp is signed.
        timestamp_header: Option<String>,
        /// The shared secret's bytes.
        secret: Vec<u8>,
        /// Replay window in seconds.
        tolerance_secs: i64,
    },
}

// Hand-written so a secret never ends up in a log line.
impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verifier::Typeform { .. } => f.write_str("Verifier::Typeform"),
            Verifier::Hex { header, .. } => write!(f, "Verifier::Hex({header})"),
        }
    }
}

/// A validated instance configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Field lookup lists.
    pub fields: FieldMap,
    /// Lead source.
    pub source: String,
    /// Honeypot field name.
    pub honeypot: Option<String>,
    /// Signature check, if any.
    pub verifier: Option<Verifier>,
    /// JSON pointer to the event id.
    pub event_id: Option<String>,
    /// Redirect target for plain HTML forms.
    pub redirect: Option<String>,
}

impl Config {
    /// Parse and validate settings; `env` looks up environment variables (for `secret_env`).
    /// Errors name the settings key at fault.
    pub fn from_json(
        settings: serde_json::Value,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, PluginError> {
        let settings: Settings = settings_from_json(settings)?;
        Config::from_settings(settings, env)
    }

    /// Validate already deserialized settings.
    pub fn from_settings(
        settings: Settings,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, PluginError> {
        for (key, list) in settings.fields.lists() {
            if list.iter().any(|name| name.trim().is_empty()) {
                return Err(PluginError::bad_config(
                    format!("fields.{key}"),
                    "a field name is empty",
                ));
            }
        }
        if settings.source.trim().is_empty() {
            return Err(PluginError::bad_config("source", "must not be empty"));
        }
        if matches!(&settings.honeypot, Some(name) if name.trim().is_empty()) {
            return Err(PluginError::bad_config("honeypot", "must not be empty"));
        }
        if let Some(pointer) = &settings.event_id {
            if !pointer.starts_with('/') {
                return Err(PluginError::bad_config(
                    "event_id",
                    format!("`{pointer}` is not a json pointer (it must start with `/`)"),
                ));
            }
        }
        if let Some(target) = &settings.redirect {
            let target = target.trim();
            let absolute = target.starts_with("https://") || target.starts_with("http://");
            if !(absolute || target.starts_with('/')) || target.contains(['\r', '\n']) {
                return Err(PluginError::bad_config(
                    "redirect",
                    format!("`{target}` is neither an http(s) url nor a path starting with `/`"),
                ));
            }
        }
        let verifier = settings
            .signature
            .map(|signature| verifier(signature, &env))
            .transpose()?;
        Ok(Config {
            fields: settings.fields,
            source: settings.source,
            honeypot: settings.honeypot,
            verifier,
            event_id: settings.event_id,
            redirect: settings.redirect.map(|target| target.trim().to_owned()),
        })
    }
}

fn verifier(
    signature: SignatureSettings,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Verifier, PluginError> {
    let secret = resolve_secret(signature.secret, signature.secret_env, env)?;
    match signature.style {
        SignatureStyle::Typeform => {
            let hex_only = [
                ("header", signature.header.is_some()),
                ("timestamp_header", signature.timestamp_header.is_some()),
                ("tolerance_secs", signature.tolerance_secs.is_some()),
            ];
            if let Some((key, _)) = hex_only.iter().find(|(_, given)| *given) {
                return Err(PluginError::bad_config(
                    format!("signature.{key}"),
                    "only the hex style takes this key",
                ));
            }
            Ok(Verifier::Typeform { secret })
        }
        SignatureStyle::Hex => {
            let header = signature.header.unwrap_or_else(|| "X-Signature".to_owned());
            if header.trim().is_empty() {
                return Err(PluginError::bad_config(
                    "signature.header",
                    "must not be empty",
                ));
            }
            let timestamp_header = signature
                .timestamp_header
                .unwrap_or_else(|| Some("X-Timestamp".to_owned()));
            if matches!(&timestamp_header, Some(name) if name.trim().is_empty()) {
                return Err(PluginError::bad_config(
                    "signature.timestamp_header",
                    "must not be empty (use null to sign the body alone)",
                ));
            }
            let tolerance_secs = signature.tolerance_secs.unwrap_or(300);
            if tolerance_secs == 0 {
                return Err(PluginError::bad_config(
                    "signature.tolerance_secs",
                    "must be at least 1 second",
                ));
            }
            Ok(Verifier::Hex {
                header,
                timestamp_header,
                secret,
                tolerance_secs: i64::from(tolerance_secs),
            })
        }
    }
}

/// The secret from exactly one of `secret` and `secret_env`.
fn resolve_secret(
    secret: Option<String>,
    secret_env: Option<String>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Vec<u8>, PluginError> {
    let secret = match (secret, secret_env) {
        (Some(_), Some(_)) => {
            return Err(PluginError::bad_config(
                "signature.secret_env",
                "give either `secret` or `secret_env`, not both",
            ))
        }
        (None, None) => {
            return Err(PluginError::bad_config(
                "signature.secret",
                "a secret is required: set `secret` or `secret_env`",
            ))
        }
        (Some(secret), None) => secret,
        (None, Some(name)) => env(&name).ok_or_else(|| {
            PluginError::bad_config(
                "signature.secret_env",
                format!("environment variable `{name}` is not set"),
            )
        })?,
    };
    if secret.is_empty() {
        return Err(PluginError::bad_config(
            "signature.secret",
            "the secret is empty",
        ));
    }
    Ok(secret.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    /// Asserts the settings fail naming `key`, with `words` in the message.
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
    fn empty_and_null_settings_give_the_defaults() {
        let from_empty = Config::from_json(json!({}), no_env).map_err(|e| e.to_string());
        let from_null =
            Config::from_json(serde_json::Value::Null, no_env).map_err(|e| e.to_string());
        assert_eq!(from_empty, from_null);
        let config = from_empty.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.source, "web");
        assert_eq!(config.fields, FieldMap::default());
        assert!(config.verifier.is_none());
        assert!(config.fields.name.contains(&"your-name".to_owned()));
    }

    #[test]
    fn a_partial_field_map_keeps_the_other_defaults() {
        let config = Config::from_json(json!({"fields": {"email": ["mail_addr"]}}), no_env)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.fields.email, vec!["mail_addr".to_owned()]);
        assert_eq!(config.fields.phone, FieldMap::default().phone);
    }

    #[test]
    fn bad_settings_name_their_key() {
        check_bad(json!({"sourse": "web"}), "sourse", "unknown field `sourse`");
        check_bad(
            json!({"fields": {"mail": ["x"]}}),
            "fields.mail",
            "unknown field `mail`",
        );
        check_bad(
            json!({"fields": {"email": "x"}}),
            "fields.email",
            "expected a sequence",
        );
        check_bad(json!({"fields": {"email": [""]}}), "fields.email", "empty");
        check_bad(json!({"source": " "}), "source", "empty");
        check_bad(json!({"honeypot": ""}), "honeypot", "empty");
        check_bad(json!({"event_id": "event_id"}), "event_id", "json pointer");
        check_bad(json!({"redirect": "thanks.html"}), "redirect", "neither");
        check_bad(
            json!({"signature": {"style": "md5", "secret": "s"}}),
            "signature.style",
            "unknown variant `md5`",
        );
        check_bad(
            json!({"signature": {"style": "typeform", "secret": "s", "header": "x"}}),
            "signature.header",
            "only the hex style",
        );
        check_bad(
            json!({"signature": {"style": "hex", "secret": "s", "algorithm": "sha1"}}),
            "signature.algorithm",
            "unknown field `algorithm`",
        );
        check_bad(
            json!({"signature": {"style": "typeform"}}),
            "signature.secret",
            "required",
        );
        check_bad(
            json!({"signature": {"style": "typeform", "secret": ""}}),
            "signature.secret",
            "empty",
        );
        check_bad(
            json!({"signature": {"style": "hex", "secret": "s", "secret_env": "S"}}),
            "signature.secret_env",
            "not both",
        );
        check_bad(
            json!({"signature": {"style": "hex", "secret_env": "WEBFORM_SECRET"}}),
            "signature.secret_env",
            "`WEBFORM_SECRET` is not set",
        );
        check_bad(
            json!({"signature": {"style": "hex", "secret": "s", "tolerance_secs": 0}}),
            "signature.tolerance_secs",
            "at least",
        );
        check_bad(
            json!({"signature": {"style": "hex", "secret": "s", "tolerance_secs": -5}}),
            "signature.tolerance_secs",
            "invalid value: integer `-5`",
        );
    }

    #[test]
    fn secret_env_reads_the_named_variable() {
        let env = |name: &str| (name == "FORM_SECRET").then(|| "from-env".to_owned());
        let config = Config::from_json(
            json!({"signature": {"style": "hex", "secret_env": "FORM_SECRET", "timestamp_header": null}}),
            env,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.verifier,
            Some(Verifier::Hex {
                header: "X-Signature".to_owned(),
                timestamp_header: None,
                secret: b"from-env".to_vec(),
                tolerance_secs: 300,
            })
        );
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let verifier = Verifier::Typeform {
            secret: b"hunter2".to_vec(),
        };
        assert!(!format!("{verifier:?}").contains("hunter2"));
    }
}
