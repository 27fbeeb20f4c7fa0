//! settled connector plugin `payment-mail`: bank statements mailed as attachments go to the file pipeline.
//!
//! Attachments that look like statements (camt/ISO 20022 XML, MT940, OFX/QFX, CSV, BAI2, QIF by name or content type) are
//! handed back to the host as `MailAttachment`s; the host sniffs and parses each with the file plugins and reconciles
//! the payments as for a dropped file. A message without such an attachment is not this plugin's.
//! Payment notices in the message text (provider "you received a payment" mails) are not read yet.

use mail_parser::{MessageParser, MimeHeaders};
use serde::Deserialize;
use settled_plugin_api::settings::settings_from_json;
use settled_plugin_api::{
    MailAttachment, MailOutcome, MailRequest, Manifest, Plugin, PluginError, Role,
};

/// File name endings taken for statements.
const STATEMENT_ENDINGS: &[&str] = &[
    ".xml", ".camt", ".053", ".054", ".sta", ".mt940", ".940", ".ofx", ".qfx", ".csv", ".bai",
    ".bai2", ".qif",
];

/// The instance's settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The file connector instance that parses the attachments; without it the host picks one by sniffing.
    pub file_connector: Option<String>,
}

/// The plugin: one instance per mailbox.
#[derive(Debug)]
pub struct PaymentMail {
    settings: Settings,
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
            settings: settings_from_json(settings)?,
        })
    }

    fn mail(&self, request: MailRequest) -> Result<MailOutcome, PluginError> {
        mail(&self.settings, &request.raw)
    }
}

/// The statement attachments of one message, or "not mine".
pub fn mail(settings: &Settings, raw: &[u8]) -> Result<MailOutcome, PluginError> {
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
                connector: settings.file_connector.clone(),
            })
        })
        .collect();
    if attachments.is_empty() {
        return Ok(MailOutcome::NotMine);
    }
    Ok(MailOutcome::Records {
        records: Vec::new(),
        attachments,
    })
}

settled_plugin_api::export_plugin!(PaymentMail);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_attachments_are_routed_and_other_mail_is_not_mine() {
        let raw = "From: bank@example.org\r\nSubject: statement\r\nMIME-Version: 1.0\r\n\
                   Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nattached\r\n\
                   --b\r\nContent-Type: application/xml\r\nContent-Disposition: attachment; filename=\"camt053.xml\"\r\n\
                   Content-Transfer-Encoding: base64\r\n\r\nPERvY3VtZW50Lz4=\r\n\
                   --b\r\nContent-Type: image/png\r\nContent-Disposition: attachment; filename=\"logo.png\"\r\n\r\nxx\r\n--b--\r\n";
        match mail(&Settings::default(), raw.as_bytes()) {
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
            mail(&Settings::default(), plain.as_bytes()),
            Ok(MailOutcome::NotMine)
        );
    }
}
