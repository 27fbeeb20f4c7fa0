//! Payment notices in the message text: a notice pattern matches a message by its sender and subject, and its body
//! patterns (regular expressions with named groups) give the payment: `amount` (required), `currency`, `payer`,
//! `reference` and `id` (the provider's transaction id, the dedupe key).

use mail_parser::Message;
use regex::Regex;
use serde::Deserialize;
use settled_plugin_api::chrono::NaiveDate;
use settled_plugin_api::money::{parse_amount, uppercase_currency_code};
use settled_plugin_api::{PaymentRecord, PluginError};

/// One notice pattern as written in the settings (`[[connector.settings.notices]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoticeSettings {
    /// The provider's name: the first part of the payments' external ids (`<name>:<id>`).
    pub name: String,
    /// Regular expression the sender's address must match (searched, case-insensitive).
    #[serde(default)]
    pub from: Option<String>,
    /// Regular expression the subject must match (searched, case-insensitive). A notice needs `from`, `subject` or both.
    #[serde(default)]
    pub subject: Option<String>,
    /// Regular expressions searched in the plain text (HTML mail turned into text). Every one that matches adds its named
    /// groups (the first match of a group wins): `amount` (required), `currency`, `payer`, `reference`, `id`.
    pub body: Vec<String>,
    /// The currency when no `currency` group matches.
    #[serde(default)]
    pub currency: Option<String>,
    /// The decimal mark of amounts, `.` (default) or `,`; the other one, spaces and `'` are taken as thousands separators.
    #[serde(default = "default_mark")]
    pub decimal_mark: char,
}

fn default_mark() -> char {
    '.'
}

/// A compiled notice pattern.
#[derive(Debug, Clone)]
pub struct Notice {
    name: String,
    from: Option<Regex>,
    subject: Option<Regex>,
    body: Vec<Regex>,
    currency: Option<String>,
    decimal_mark: char,
}

/// The built-in pattern sets, by name.
pub const BUILTIN: &[&str] = &["paypal"];

/// A built-in pattern set: `paypal` reads PayPal's "You've got money" / "You received a payment" notices (sent from
/// `paypal.<tld>`): "<payer> sent you <symbol><amount> <CODE>", the payer's note as the reference, "Transaction ID".
pub fn builtin(name: &str) -> Option<NoticeSettings> {
    match name {
        "paypal" => Some(NoticeSettings {
            name: "paypal".into(),
            from: Some(r"@(?:[a-z0-9-]+\.)*paypal\.(?:com|[a-z]{2}|co\.[a-z]{2}|com\.[a-z]{2})$".into()),
            subject: Some(
                r"you[’']ve got money|you received a payment|notification of payment received|payment received from"
                    .into(),
            ),
            body: vec![
                r"(?m)^\s*(?P<payer>\S[^\n]*?) sent you [^\d\n]{0,4}(?P<amount>\d[\d,]*(?:\.\d+)?)\s*(?P<currency>[A-Z]{3})"
                    .into(),
                r"received a payment (?:of|for) [^\d\n]{0,4}(?P<amount>\d[\d,]*(?:\.\d+)?)\s*(?P<currency>[A-Z]{3}) from (?P<payer>[^\n(]+?)\s*(?:\(|\.?\s*$)"
                    .into(),
                r"(?m)^\s*Note from [^\n]*:\s*\n\s*(?P<reference>\S[^\n]*?)\s*$".into(),
                // HTML turned into text may run the id into the next cell's text: exactly 17 characters, no boundary needed.
                r"Transaction ID:?\s*(?P<id>[A-Z0-9]{17})".into(),
            ],
            currency: None,
            decimal_mark: '.',
        }),
        _ => None,
    }
}

impl Notice {
    /// Compile a pattern; errors name the key at `at` (`notices[2].body[0]`, `builtin_notices[0]`).
    pub fn compile(settings: NoticeSettings, at: &str) -> Result<Notice, PluginError> {
        let compile = |key: String, pattern: &str, ignore_case: bool| {
            regex::RegexBuilder::new(pattern)
                .case_insensitive(ignore_case)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| {
                    PluginError::bad_config(key, format!("not a valid regular expression: {e}"))
                })
        };
        if settings.name.trim().is_empty() {
            return Err(PluginError::bad_config(
                format!("{at}.name"),
                "must not be empty",
            ));
        }
        if settings.from.is_none() && settings.subject.is_none() {
            return Err(PluginError::bad_config(
                at,
                "give `from`, `subject` or both: which messages are this provider's notices",
            ));
        }
        let from = settings
            .from
            .as_deref()
            .map(|p| compile(format!("{at}.from"), p, true))
            .transpose()?;
        let subject = settings
            .subject
            .as_deref()
            .map(|p| compile(format!("{at}.subject"), p, true))
            .transpose()?;
        let body = settings
            .body
            .iter()
            .enumerate()
            .map(|(i, p)| compile(format!("{at}.body[{i}]"), p, false))
            .collect::<Result<Vec<_>, _>>()?;
        const GROUPS: &[&str] = &["amount", "currency", "payer", "reference", "id"];
        for (i, re) in body.iter().enumerate() {
            if let Some(unknown) = re.capture_names().flatten().find(|n| !GROUPS.contains(n)) {
                return Err(PluginError::bad_config(
                    format!("{at}.body[{i}]"),
                    format!(
                        "unknown group `{unknown}`; the groups read are {}",
                        GROUPS.join(", ")
                    ),
                ));
            }
        }
        if !body
            .iter()
            .any(|re| re.capture_names().flatten().any(|n| n == "amount"))
        {
            return Err(PluginError::bad_config(
                format!("{at}.body"),
                "no pattern has an `amount` group",
            ));
        }
        let currency = match settings.currency.as_deref() {
            None => None,
            Some(c) => Some(uppercase_currency_code(c).ok_or_else(|| {
                PluginError::bad_config(
                    format!("{at}.currency"),
                    format!("`{c}` is not an ISO 4217 code"),
                )
            })?),
        };
        if settings.decimal_mark != '.' && settings.decimal_mark != ',' {
            return Err(PluginError::bad_config(
                format!("{at}.decimal_mark"),
                "must be `.` or `,`",
            ));
        }
        Ok(Notice {
            name: settings.name,
            from,
            subject,
            body,
            currency,
            decimal_mark: settings.decimal_mark,
        })
    }

    /// The pattern's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether a message with this sender address and subject is one of this provider's notices.
    pub fn claims(&self, from: &str, subject: &str) -> bool {
        self.from.as_ref().is_none_or(|re| re.is_match(from))
            && self.subject.as_ref().is_none_or(|re| re.is_match(subject))
    }

    /// The payment a claimed notice reports; an error says what the text lacks.
    pub fn payment(&self, message: &Message<'_>, text: &str) -> Result<PaymentRecord, PluginError> {
        let mut found = Found::default();
        for re in &self.body {
            if let Some(caps) = re.captures(text) {
                for (slot, group) in [
                    (&mut found.amount, "amount"),
                    (&mut found.currency, "currency"),
                    (&mut found.payer, "payer"),
                    (&mut found.reference, "reference"),
                    (&mut found.id, "id"),
                ] {
                    if slot.is_none() {
                        *slot = caps
                            .name(group)
                            .map(|m| m.as_str().trim().to_string())
                            .filter(|s| !s.is_empty());
                    }
                }
            }
        }
        let location = |what: &str| format!("notice {} {what}", self.name);
        let amount_text = found.amount.ok_or_else(|| {
            PluginError::bad_input(
                location("body"),
                format!(
                    "the message looks like a {} payment notice (sender and subject match) but no body pattern found an amount",
                    self.name
                ),
            )
        })?;
        let currency = match found.currency.as_deref() {
            Some(c) => uppercase_currency_code(c).ok_or_else(|| {
                PluginError::bad_input(
                    location("currency"),
                    format!("`{c}` is not an ISO 4217 code"),
                )
            })?,
            None => self.currency.clone().ok_or_else(|| {
                PluginError::bad_input(
                    location("currency"),
                    "no currency in the text and no `currency` setting for this notice",
                )
            })?,
        };
        let separators: &[char] = if self.decimal_mark == '.' {
            &[',', ' ', '\u{a0}', '\'']
        } else {
            &['.', ' ', '\u{a0}', '\'']
        };
        let digits: String = amount_text
            .chars()
            .filter(|c| !separators.contains(c))
            .collect();
        let amount = parse_amount(&digits, self.decimal_mark, &currency)
            .map_err(|e| PluginError::bad_input(location("amount"), e))?;
        // Without a transaction id the Message-ID stands in: a notice delivered twice is still one payment.
        let id = found
            .id
            .or_else(|| message.message_id().map(|m| format!("message:{m}")))
            .ok_or_else(|| {
                PluginError::bad_input(
                    location("id"),
                    "no transaction id in the text and no Message-ID to stand in for it",
                )
            })?;
        let mut payment = PaymentRecord::new(format!("{}:{id}", self.name), amount, currency);
        payment.booked_on = message.date().and_then(|d| {
            NaiveDate::from_ymd_opt(i32::from(d.year), u32::from(d.month), u32::from(d.day))
        });
        payment.counterparty_name = found.payer;
        payment.remittance = found.reference;
        payment.source_position = message.message_id().map(|m| format!("Message-ID <{m}>"));
        Ok(payment)
    }
}

#[derive(Default)]
struct Found {
    amount: Option<String>,
    currency: Option<String>,
    payer: Option<String>,
    reference: Option<String>,
    id: Option<String>,
}
