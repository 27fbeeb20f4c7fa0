//! settled connector plugin `webhook`: delivers outbox events as JSON to a URL, signed per Standard Webhooks.
//!
//! Each event is one `POST` with the headers `webhook-id` (`evt_<event id>`, the receiver's idempotency key: a
//! redelivery carries the same one), `webhook-timestamp` (Unix seconds) and `webhook-signature`
//! (`v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`, one per configured secret, space separated, so a
//! receiver can rotate its secret). The body is `{"type", "timestamp", "data"}`; `data` holds the event's own fields
//! (for invoices: number, status, amounts, balance, currency, dates), plus `event_id`, `entity` and `entity_id`.
//!
//! Answers: 2xx is delivered; 429 and 503 are retried after their `Retry-After` (seconds), other 5xx, 408, 425 and
//! transport errors on the host's schedule; any other answer (400, 401, 403, 404, 410, 422, a redirect) refuses the
//! event for good: it becomes a dead letter and the sink shows an error, since retrying cannot fix credentials.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use settled_plugin_api::settings::settings_from_json;
use settled_plugin_api::{
    HttpRequestSpec, HttpResponseSpec, Manifest, Plugin, PluginError, Role, SinkInput, SinkStep,
};
use sha2::Sha256;

/// Settings of one webhook endpoint (the `[connector.settings]` table).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The receiver's URL (`http` or `https`).
    pub url: String,
    /// The signing secret, `whsec_` followed by base64 of 24 to 64 random bytes.
    pub secret: Option<String>,
    /// Several signing secrets during a rotation: every one signs each delivery (instead of `secret`).
    pub secrets: Vec<String>,
}

/// A configured endpoint.
pub struct Webhook {
    url: String,
    keys: Vec<Vec<u8>>,
}

// Hand-written so no key ends up in a log line.
impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// Validate settings; errors name the key at fault.
    pub fn from_settings(settings: Settings) -> Result<Webhook, PluginError> {
        let url = settings.url.trim().to_string();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(PluginError::bad_config(
                "url",
                "the receiver's url is required and must start with http:// or https://",
            ));
        }
        let (key, secrets) = match (settings.secret, settings.secrets.is_empty()) {
            (Some(_), false) => {
                return Err(PluginError::bad_config(
                    "secrets",
                    "give either `secret` or `secrets`, not both",
                ))
            }
            (None, true) => {
                return Err(PluginError::bad_config(
                    "secret",
                    "a signing secret (`whsec_...`) is required",
                ))
            }
            (Some(secret), true) => ("secret", vec![secret]),
            (None, false) => ("secrets", settings.secrets),
        };
        let keys = secrets
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let at = if key == "secret" {
                    key.to_string()
                } else {
                    format!("secrets[{i}]")
                };
                decode_secret(s).map_err(|why| PluginError::bad_config(at, why))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Webhook { url, keys })
    }

    /// The `webhook-signature` header value for one message.
    pub fn signature(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        self.keys
            .iter()
            // HMAC takes keys of any length, so no key is skipped.
            .filter_map(|key| Hmac::<Sha256>::new_from_slice(key).ok())
            .map(|mut mac| {
                mac.update(format!("{id}.{timestamp}.").as_bytes());
                mac.update(body);
                let tag = mac.finalize().into_bytes();
                format!(
                    "v1,{}",
                    base64::engine::general_purpose::STANDARD.encode(tag)
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// One step of delivering an event: the request first, then the verdict on its response.
    pub fn step(&self, input: &SinkInput) -> Result<SinkStep, PluginError> {
        match &input.response {
            None => self.request(input),
            Some(response) => Ok(verdict(response)),
        }
    }

    fn request(&self, input: &SinkInput) -> Result<SinkStep, PluginError> {
        let event = &input.event;
        let event_id = event["id"]
            .as_u64()
            .ok_or_else(|| PluginError::bad_input("event.id", "the event has no numeric id"))?;
        let kind = event["type"].as_str().unwrap_or_default();
        let mut data = match &event["data"] {
            serde_json::Value::Object(map) => map.clone(),
            other => {
                let mut map = serde_json::Map::new();
                map.insert("value".into(), other.clone());
                map
            }
        };
        data.insert("event_id".into(), event_id.into());
        data.insert("entity".into(), event["entity"].clone());
        data.insert("entity_id".into(), event["entity_id"].clone());
        let body = serde_json::to_vec(&serde_json::json!({
            "type": kind, "timestamp": event["at"], "data": data,
        }))
        .map_err(|e| PluginError::new("internal", format!("encoding the payload: {e}")))?;
        let id = format!("evt_{event_id}");
        let signature = self.signature(&id, input.now, &body);
        Ok(SinkStep::Request {
            request: HttpRequestSpec {
                method: "POST".into(),
                url: self.url.clone(),
                headers: vec![
                    ("content-type".into(), "application/json".into()),
                    ("webhook-id".into(), id),
                    ("webhook-timestamp".into(), input.now.to_string()),
                    ("webhook-signature".into(), signature),
                ],
                body,
            },
            state: serde_json::Value::Null,
        })
    }
}

/// What a receiver's answer means for the delivery.
fn verdict(response: &HttpResponseSpec) -> SinkStep {
    let status = response.status;
    let said = || {
        let text = String::from_utf8_lossy(&response.body);
        let text = text.trim();
        if text.is_empty() {
            format!("receiver answered {status}")
        } else {
            let short: String = text.chars().take(200).collect();
            format!("receiver answered {status}: {short}")
        }
    };
    match status {
        200..=299 => SinkStep::Done,
        429 | 503 => SinkStep::RetryLater {
            after_secs: retry_after(response).unwrap_or(0),
            reason: said(),
        },
        408 | 425 | 500..=599 => SinkStep::RetryLater {
            after_secs: 0,
            reason: said(),
        },
        401 | 403 => SinkStep::Failed {
            reason: format!(
                "{} (check the receiver's signing secret and credentials)",
                said()
            ),
        },
        _ => SinkStep::Failed { reason: said() },
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by webhook receivers in practice and falls back to the
/// schedule).
fn retry_after(response: &HttpResponseSpec) -> Option<u64> {
    response
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
        .and_then(|(_, v)| v.trim().parse::<u64>().ok())
}

fn decode_secret(secret: &str) -> Result<Vec<u8>, String> {
    let raw = secret.trim();
    let b64 = raw.strip_prefix("whsec_").unwrap_or(raw);
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("the secret is not `whsec_` followed by base64: {e}"))?;
    if !(24..=64).contains(&key.len()) {
        return Err(format!(
            "the secret decodes to {} bytes; Standard Webhooks secrets are 24 to 64 bytes",
            key.len()
        ));
    }
    Ok(key)
}

impl Plugin for Webhook {
    fn manifest() -> Manifest {
        Manifest {
            name: "webhook".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            roles: vec![Role::Sink],
            description: "outbox events as signed json posts (standard webhooks)".to_owned(),
        }
    }

    fn configure(settings: serde_json::Value) -> Result<Self, PluginError> {
        Webhook::from_settings(settings_from_json(settings)?)
    }

    fn sink_step(&self, input: SinkInput) -> Result<SinkStep, PluginError> {
        self.step(&input)
    }
}

settled_plugin_api::export_plugin!(Webhook);

#[cfg(test)]
mod tests;
