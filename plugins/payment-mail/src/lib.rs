//! settled connector plugin `payment-mail`: payment notices and mailed bank statements.
//!
//! Payment notices in the message text (a provider's "you received a payment" mail) become `payment@1` records through
//! notice patterns: the built-in ones (`paypal`) and those in the settings, each matching a message by sender and subject
//! and reading amount, currency, payer, reference and transaction id from the text with named regex groups.
//! Attachments that look like statements (camt/ISO 20022 XML, MT940, OFX/QFX, CSV, BAI2, QIF by name) are handed back
//! to the host as `MailAttachment`s; the host sniffs and parses each with the file plugins and reconciles the payments
//! as for a dropped file. A message that is neither is not this plugin's.

mod notices;

use mail_parser::{MessageParser, MimeHeaders};
use serde::Deserialize;
use settled_plugin_api::settings::settings_from_json;
use settled_plugin_api::{
    MailAttachment, MailOutcome, MailRequest, Manifest, Plugin, PluginError, Record, Role,
};

pub use notices::{builtin, Notice, NoticeSettings, BUILTIN};

/// File name endings taken for statements.
const STATEMENT_ENDINGS: &[&str] = &[
    ".xml", ".camt", ".053", ".054", ".sta", ".mt940", ".940", ".ofx", ".qfx", ".csv", ".bai",
    ".bai2", ".qif",
];

/// The instance's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The file connector instance that parses the attachments; without it the host picks one by sniffing.
    pub file_connector: Option<String>,
    /// Built-in notice patterns to use (default `["paypal"]`; `[]` turns them off).
    pub builtin_notices: Vec<String>,
    /// Notice patterns of your own (`[[connector.settings.notices]]`), tried after the built-in ones.
    pub notices: Vec<NoticeSettings>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            file_connector: None,
            builtin_notices: BUILTIN.iter().map(|s| s.to_string()).collect(),
            notices: Vec::new(),
        }
    }
}

/// The configured instance: settings and compiled notice patterns.
#[derive(Debug)]
pub struct Config {
    file_connector: Option<String>,
    notices: Vec<Notice>,
}

impl Config {
    /// Check the settings and compile the notice patterns; errors name the key at fault.
    pub fn new(settings: Settings) -> Result<Config, PluginError> {
        let mut notices = Vec::new();
        for (i, name) in settings.builtin_notices.iter().enumerate() {
            let at = format!("builtin_notices[{i}]");
            let set = builtin(name).ok_or_else(|| {
                PluginError::bad_config(
                    &at,
                    format!(
                        "no built-in notice patterns named `{name}`; there are: {}",
                        BUILTIN.join(", ")
                    ),
                )
            })?;
            notices.push(Notice::compile(set, &at)?);
        }
        for (i, set) in settings.notices.into_iter().enumerate() {
            notices.push(Notice::compile(set, &format!("notices[{i}]"))?);
        }
        Ok(Config {
            file_connector: settings.file_connector,
            notices,
        })
    }
}

/// The plugin: one instance per mailbox.
#[derive(Debug)]
pub struct PaymentMail {
    config: Config,
}

impl Plugin for PaymentMail {
    fn manifest() -> Manifest {
        Manifest {
            name: "payment-mail".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            roles: vec![Role::Mail],
            description: "statements mailed as attachments to the file pipeline".into(),
        }
    }

    fn configure(settings: serde_json::Value) -> Result<Self, PluginError> {
        Ok(PaymentMail {
            config: Config::new(settings_from_json(settings)?)?,
        })
    }

    fn mail(&self, request: MailRequest) -> Result<MailOutcome, PluginError> {
        mail(&self.config, &request.raw)
    }
}

/// The payment a notice reports and the statement attachments of one message, or "not mine".
pub fn mail(config: &Config, raw: &[u8]) -> Result<MailOutcome, PluginError> {
    let message = MessageParser::default()
        .parse(raw)
        .filter(|m| !m.headers().is_empty())
        .ok_or_else(|| {
            PluginError::bad_input("message", "not an rfc 822 message: no header block")
        })?;
    let attachments: Vec<MailAttachment> = message
        .attachments()
        .filter_map(|part| {
            let name = part.attachment_name()?.trim().to_string();
            let lower = name.to_ascii_lowercase();
            let statement = STATEMENT_ENDINGS.iter().any(|e| lower.ends_with(e));
            (statement && !part.contents().is_empty()).then(|| MailAttachment {
                name,
                content: part.contents().to_vec(),
                connector: config.file_connector.clone(),
            })
        })
        .collect();
    let from = message
        .from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .unwrap_or_default();
    let subject = message.subject().unwrap_or_default();
    let mut records = Vec::new();
    if let Some(notice) = config.notices.iter().find(|n| n.claims(from, subject)) {
        let text = message.body_text(0).unwrap_or_default();
        records.push(Record::Payment(notice.payment(&message, &text)?));
    }
    if attachments.is_empty() && records.is_empty() {
        return Ok(MailOutcome::NotMine);
    }
    Ok(MailOutcome::Records {
        records,
        attachments,
    })
}

settled_plugin_api::export_plugin!(PaymentMail);

#[cfg(test)]
mod tests;

#[cfg(test)]
mod attachment_tests {
    use super::tests::config;
    use super::*;

    #[test]
    fn statement_attachments_are_routed_and_other_mail_is_not_mine() {
        let raw = "From: bank@example.org\r\nSubject: statement\r\nMIME-Version: 1.0\r\n\
                   Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nattached\r\n\
                   --b\r\nContent-Type: application/xml\r\nContent-Disposition: attachment; filename=\"camt053.xml\"\r\n\
                   Content-Transfer-Encoding: base64\r\n\r\nPERvY3VtZW50Lz4=\r\n\
                   --b\r\nContent-Type: image/png\r\nContent-Disposition: attachment; filename=\"logo.png\"\r\n\r\nxx\r\n--b--\r\n";
        match mail(&config(serde_json::json!({})), raw.as_bytes()) {
            Ok(MailOutcome::Records {
                records,
                attachments,
            }) => {
                assert!(records.is_empty());
                assert_eq!(attachments.len(), 1, "{attachments:?}");
                assert_eq!(attachments[0].name, "camt053.xml");
                assert_eq!(attachments[0].content, b"<Document/>");
            }
            other => panic!("expected the statement, got {other:?}"),
        }
        let plain = "From: a@example.org\r\nSubject: hi\r\n\r\nhello\r\n";
        assert_eq!(
            mail(&config(serde_json::json!({})), plain.as_bytes()),
            Ok(MailOutcome::NotMine)
        );
    }
}
