//! settled connector plugin `mail-lead`: enquiry mails become leads (`lead@1`, source `email`).
//!
//! MIME decoding (RFC 2047 headers, quoted-printable and base64 bodies, UTF-8, ISO-8859-1 and Windows-1252 text,
//! HTML-only mail turned into text) is `mail-parser`'s. Auto-replies, bounces and delivery reports (`Auto-Submitted`,
//! `X-Autoreply`, `multipart/report`, mail from `mailer-daemon`) and, unless configured otherwise, mailing-list
//! traffic (`List-Id`) make nothing. A reply to an earlier enquiry (`In-Reply-To`/`References`) carries the same
//! sender address, so the engine merges it into that open lead, appending its text.

use std::collections::BTreeMap;

use mail_parser::{HeaderValue, Message, MessageParser, MimeHeaders};
use serde::Deserialize;
use settled_plugin_api::settings::settings_from_json;
use settled_plugin_api::{
    LeadRecord, MailOutcome, MailRequest, Manifest, Plugin, PluginError, Record, Role,
};

/// Longest message text handed on (the engine refuses lead messages over 10,000 characters).
const MAX_MESSAGE_CHARS: usize = 9_000;

/// The instance's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The leads' source (default `email`).
    pub source: String,
    /// Make nothing from mailing-list traffic (messages with `List-Id`), default true.
    pub ignore_lists: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            source: "email".into(),
            ignore_lists: true,
        }
    }
}

/// The plugin: one instance per mailbox.
#[derive(Debug)]
pub struct MailLead {
    settings: Settings,
}

impl Plugin for MailLead {
    fn manifest() -> Manifest {
        Manifest {
            name: "mail-lead".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            roles: vec![Role::Mail],
            description: "enquiry mails to leads".into(),
        }
    }

    fn configure(settings: serde_json::Value) -> Result<Self, PluginError> {
        let settings: Settings = if settings.is_null() {
            Settings::default()
        } else {
            settings_from_json(settings)?
        };
        if settings.source.trim().is_empty() {
            return Err(PluginError::bad_config("source", "must not be empty"));
        }
        Ok(MailLead { settings })
    }

    fn mail(&self, request: MailRequest) -> Result<MailOutcome, PluginError> {
        mail(&self.settings, &request.raw)
    }
}

/// Turn one raw message into a lead, or "not mine".
pub fn mail(settings: &Settings, raw: &[u8]) -> Result<MailOutcome, PluginError> {
    let message = MessageParser::default()
        .parse(raw)
        .filter(|m| !m.headers().is_empty())
        .ok_or_else(|| {
            PluginError::bad_input("message", "not an rfc 822 message: no header block")
        })?;
    if let Some(why) = automatic(&message, settings) {
        tracing::debug!(reason = why, "not an enquiry");
        return Ok(MailOutcome::NotMine);
    }
    let from = message
        .from()
        .and_then(|a| a.first())
        .ok_or_else(|| PluginError::bad_input("From", "the message has no sender (From header)"))?;
    let email = from
        .address()
        .map(str::trim)
        .filter(|a| a.contains('@'))
        .ok_or_else(|| PluginError::bad_input("From", "the sender has no e-mail address"))?;
    if is_mailer_daemon(email) {
        return Ok(MailOutcome::NotMine);
    }
    let name = from.name().map(str::trim).unwrap_or_default().to_string();
    let subject = message.subject().map(str::trim).unwrap_or_default();
    let body = message
        .body_text(0)
        .map(|b| b.trim().to_string())
        .unwrap_or_default();
    let mut text = match (subject.is_empty(), body.is_empty()) {
        (false, false) => format!("{subject}\n\n{body}"),
        (false, true) => subject.to_string(),
        (true, _) => body.clone(),
    };
    if text.chars().count() > MAX_MESSAGE_CHARS {
        text = text.chars().take(MAX_MESSAGE_CHARS).collect::<String>() + " [...]";
    }
    let mut extra = BTreeMap::new();
    if let Some(parent) =
        first_text(message.in_reply_to()).or_else(|| first_text(message.references()))
    {
        extra.insert("in_reply_to".to_string(), parent);
    }
    let lead = LeadRecord {
        name,
        email: Some(email.to_string()),
        phone: labelled(&body, &["phone", "tel", "telephone", "mobile", "mob"]),
        company: labelled(&body, &["company", "firma", "organisation", "organization"]),
        source: settings.source.clone(),
        external_id: message
            .message_id()
            .map(|id| id.trim().to_string())
            .filter(|id| !id.is_empty()),
        message: (!text.is_empty()).then_some(text),
        extra,
        ..LeadRecord::default()
    };
    Ok(MailOutcome::Records {
        records: vec![Record::Lead(lead)],
        attachments: Vec::new(),
    })
}

/// Why a message was sent by a machine rather than a person, if it was.
fn automatic(message: &Message<'_>, settings: &Settings) -> Option<&'static str> {
    let header = |name: &str| {
        message
            .header_raw(name)
            .map(|v| v.trim().to_ascii_lowercase())
    };
    if header("Auto-Submitted").is_some_and(|v| !v.starts_with("no")) {
        return Some("auto-submitted");
    }
    if header("X-Autoreply").is_some() || header("X-Autorespond").is_some() {
        return Some("auto-reply");
    }
    if header("Precedence").is_some_and(|v| {
        v.starts_with("auto_reply") || v.starts_with("bulk") || v.starts_with("junk")
    }) {
        return Some("bulk or auto-reply precedence");
    }
    if let Some(ct) = message.content_type() {
        if ct.ctype().eq_ignore_ascii_case("multipart")
            && ct
                .subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case("report"))
        {
            return Some("delivery report");
        }
    }
    if settings.ignore_lists && header("List-Id").is_some() {
        return Some("mailing list");
    }
    None
}

fn is_mailer_daemon(email: &str) -> bool {
    let local = email
        .split('@')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    local == "mailer-daemon" || local == "postmaster"
}

fn first_text(value: &HeaderValue<'_>) -> Option<String> {
    match value {
        HeaderValue::Text(t) => Some(t.to_string()),
        HeaderValue::TextList(list) => list.first().map(|t| t.to_string()),
        _ => None,
    }
}

/// The value of a `Label: value` line (a signature's `Phone: +49 ...`), for the first label found.
fn labelled(body: &str, labels: &[&str]) -> Option<String> {
    body.lines().find_map(|line| {
        let (label, value) = line.split_once(':')?;
        let label = label
            .trim()
            .trim_start_matches(['>', ' '])
            .to_ascii_lowercase();
        let value = value.trim();
        (labels.contains(&label.as_str()) && !value.is_empty() && value.chars().count() <= 100)
            .then(|| value.to_string())
    })
}

settled_plugin_api::export_plugin!(MailLead);

#[cfg(test)]
mod tests;
