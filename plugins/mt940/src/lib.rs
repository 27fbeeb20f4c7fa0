//! settled connector plugin `mt940`: SWIFT MT940 statements and MT942 interim reports into `payment@1` records.
//!
//! Decisions worth knowing:
//! - One record per `:61:` line, with the `:86:` that follows it. The sign follows the mark: `C` and `RD`
//!   (a reversed debit) are money in, `D` and `RC` (a reversed credit) money out; `RC`/`RD` set `reversal`.
//! - kind `refund` for returned payments (German transaction codes 109/159, a Dutch `/RTRN/`, type `NRTI`),
//!   `fee` for types `NCHG`/`NCOM`/`NBRF`, else `transfer`.
//! - `:86:` is read as German `?NN` subfields (purpose `?20`-`?29`/`?60`-`?63` joined without separator, then
//!   split at SEPA keywords: `SVWZ+` is the remittance, `EREF+` the end-to-end id; `?32`+`?33` the name,
//!   `?38` or `?31` the account), as Dutch `/KEY/value` pairs, or as free text whose full 65-character
//!   lines continue without a space.
//! - `booked_on` is the `:61:` entry date, or the value date when the bank leaves the entry date out;
//!   `own_account` is the `:25:` account.
//! - MT942 entries are `pending`: interim reports list items that the next MT940 books, and a pending
//!   record never marks an invoice paid. An MT942 has no balances; its currency comes from `:34F:`/`:90D:`.
//! - Every MT940 message must have its opening and closing balance; a missing `:62F:` fails the file,
//!   because it is the sign of a truncated or hand-edited statement.
//! - `external_id`: the `//bank reference` of `:61:` unless absent or `NONREF`; else
//!   `sha256(account, status, :61: and :86: text):<occurrence among identical lines in the file>`.
//! - Text is UTF-8 when it decodes as such, else Windows-1252 (which covers Latin-1 exports).

mod details;
mod statement_line;
mod swift;

use std::collections::HashMap;

use serde::Deserialize;
use settled_plugin_api::sdk::payments;
use settled_plugin_api::settings::settings_from_json;
use settled_plugin_api::{
    EntryStatus, FileRequest, Manifest, ParseReply, PaymentKind, Plugin, PluginError, Role,
    SniffReply, SniffRequest,
};
use sha2::{Digest, Sha256};

pub use settled_plugin_api::PaymentRecord;

/// Text encoding of the statement files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Encoding {
    /// UTF-8 when the file decodes as UTF-8, else Windows-1252.
    #[default]
    #[serde(rename = "auto")]
    Auto,
    /// UTF-8 only; other bytes are an error.
    #[serde(rename = "utf-8")]
    Utf8,
    /// Windows-1252 (a superset of the printable Latin-1 characters).
    #[serde(rename = "windows-1252")]
    Windows1252,
}

/// Settings of an `mt940` connector instance (`[connector.settings]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `auto` (default), `utf-8` or `windows-1252`.
    pub encoding: Encoding,
    /// Emit MT942 interim entries as `pending` records (default true); false leaves them out.
    pub include_pending: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            encoding: Encoding::Auto,
            include_pending: true,
        }
    }
}

impl Settings {
    /// Reads settings from JSON (`null` means all defaults); a bad key is an error naming it.
    pub fn from_json(value: serde_json::Value) -> Result<Self, PluginError> {
        settings_from_json(value)
    }
}

/// The `mt940` plugin: one instance per configured connector.
#[derive(Debug, Clone, Default)]
pub struct Mt940 {
    settings: Settings,
}

impl Plugin for Mt940 {
    fn manifest() -> Manifest {
        Manifest {
            name: "mt940".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            roles: vec![Role::File],
            description: "SWIFT MT940 statements and MT942 interim reports".into(),
        }
    }

    fn configure(settings: serde_json::Value) -> Result<Self, PluginError> {
        Ok(Mt940 {
            settings: Settings::from_json(settings)?,
        })
    }

    fn sniff(&self, request: SniffRequest) -> SniffReply {
        SniffReply {
            confidence: sniff(&request.name, &request.head),
        }
    }

    fn parse(&self, request: FileRequest) -> Result<ParseReply, PluginError> {
        parse(&request.name, &request.content, &self.settings).map(payments)
    }
}

/// How sure we are that a file is MT940/MT942: 0 = not ours.
pub fn sniff(name: &str, head: &[u8]) -> u8 {
    let text = String::from_utf8_lossy(head);
    let at_line_start = |tag: &str| text.starts_with(tag) || text.contains(&format!("\n{tag}"));
    let content = at_line_start(":20:") && (at_line_start(":61:") || at_line_start(":25:"));
    let lower = name.to_ascii_lowercase();
    let extension = [".sta", ".940", ".942", ".mt940", ".mt942"]
        .iter()
        .any(|e| lower.ends_with(e));
    match (content, extension) {
        (true, true) => 95,
        (true, false) => 85,
        (false, true) => 30,
        (false, false) => 0,
    }
}

/// Parses a whole MT940/MT942 file into payment records, in file order. Any bad line fails the whole file.
pub fn parse(
    name: &str,
    bytes: &[u8],
    settings: &Settings,
) -> Result<Vec<PaymentRecord>, PluginError> {
    let text = decode(bytes, settings.encoding)?;
    let messages = swift::split_messages(&text)?;
    if messages.is_empty() {
        return Err(PluginError::bad_input(
            "line 1",
            "no mt940 message found: no line starts with :20:",
        ));
    }
    let mut records = Vec::new();
    let mut occurrences: HashMap<String, usize> = HashMap::new();
    for message in &messages {
        read_message(message, name, &mut occurrences, &mut records)?;
    }
    if !settings.include_pending {
        records.retain(|r| r.status == EntryStatus::Booked);
    }
    Ok(records)
}

fn read_message(
    message: &swift::Message,
    file_name: &str,
    occurrences: &mut HashMap<String, usize>,
    out: &mut Vec<PaymentRecord>,
) -> Result<(), PluginError> {
    let missing = |what: &str| {
        PluginError::bad_input(
            format!("line {}", message.line),
            format!(
                "message at line {} (:20: {}) has no {what}",
                message.line,
                message.reference()
            ),
        )
    };
    let account = message
        .field(&["25"])
        .and_then(|f| f.lines.first())
        .map(|l| l.trim().to_string())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| missing(":25: account"))?;
    let opening = message.field(&["60F", "60M"]);
    let interim = message.block_type == Some(942)
        || (opening.is_none() && message.field(&["34F", "13D", "90D", "90C"]).is_some());
    let (currency, status) = if interim {
        let currency = message
            .fields
            .iter()
            .filter(|f| ["34F", "90D", "90C"].contains(&f.tag.as_str()))
            .find_map(statement_line::report_currency)
            .ok_or_else(|| missing("currency (:34F: floor limit or :90D:/:90C: totals)"))?;
        (currency, EntryStatus::Pending)
    } else {
        let opening = statement_line::parse_balance(
            opening.ok_or_else(|| missing("opening balance :60F:"))?,
        )?;
        let closing_field = message
            .field(&["62F", "62M"])
            .ok_or_else(|| missing("closing balance :62F:"))?;
        let closing = statement_line::parse_balance(closing_field)?;
        if closing.currency != opening.currency {
            return Err(PluginError::bad_input(
                format!("line {}", closing_field.line),
                format!(
                    ":{}: closing balance in {} but the opening balance is in {}",
                    closing_field.tag, closing.currency, opening.currency
                ),
            ));
        }
        (opening.currency, EntryStatus::Booked)
    };
    for (i, field) in message.fields.iter().enumerate() {
        if field.tag != "61" {
            continue;
        }
        let line = statement_line::parse_statement_line(field, &currency)?;
        let info = message.fields.get(i + 1).filter(|f| f.tag == "86");
        let details = info.map(details::parse_details).unwrap_or_default();
        let mut record = PaymentRecord::new(String::new(), line.signed_amount(), currency.clone());
        record.booked_on = line.entry_date.or(Some(line.value_date));
        record.value_date = Some(line.value_date);
        record.status = status;
        record.reversal = line.is_reversal();
        let type_code = line.transaction_type.get(1..).unwrap_or_default();
        record.kind = if details.is_return || type_code == "RTI" {
            PaymentKind::Refund
        } else if ["CHG", "COM", "BRF"].contains(&type_code) {
            PaymentKind::Fee
        } else {
            PaymentKind::Transfer
        };
        record.counterparty_name = details.counterparty_name;
        record.counterparty_account = details.counterparty_account;
        record.remittance = details.remittance;
        record.structured_reference = details.structured_reference;
        record.end_to_end_id = details.end_to_end_id;
        record.external_id = match line
            .bank_reference
            .as_deref()
            .filter(|r| !r.eq_ignore_ascii_case("NONREF"))
        {
            Some(reference) => reference.to_string(),
            None => content_id(&account, status, field, info, occurrences),
        };
        record.source_position = Some(format!("{file_name}#line {}", field.line));
        record.own_account = Some(account.clone());
        out.push(record);
    }
    Ok(())
}

/// `sha256(account, status, :61: and :86: as written):occurrence` for lines without a bank reference.
fn content_id(
    account: &str,
    status: EntryStatus,
    line: &swift::Field,
    info: Option<&swift::Field>,
    occurrences: &mut HashMap<String, usize>,
) -> String {
    let mut hasher = Sha256::new();
    hasher.update(account.as_bytes());
    hasher.update(if status == EntryStatus::Booked {
        "\nbooked"
    } else {
        "\npending"
    });
    for field in std::iter::once(line).chain(info) {
        hasher.update(format!("\n:{}:", field.tag).as_bytes());
        for text in &field.lines {
            hasher.update(text.trim_end().as_bytes());
            hasher.update(b"\n");
        }
    }
    let hash = hex::encode(hasher.finalize());
    let seen = occurrences.entry(hash.clone()).or_insert(0);
    let id = format!("{hash}:{seen}");
    *seen += 1;
    id
}

fn decode(bytes: &[u8], encoding: Encoding) -> Result<String, PluginError> {
    if bytes.is_empty() {
        return Err(PluginError::bad_input("file", "empty file: 0 bytes"));
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let line_at = |offset: usize| {
        let line = bytes[..offset].iter().filter(|&&b| b == b'\n').count() + 1;
        format!("line {line}")
    };
    let control = bytes
        .iter()
        .position(|&b| (b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r' | 0x1a)) || b == 0x7f);
    if let Some(at) = control {
        return Err(PluginError::bad_input(
            line_at(at),
            format!(
                "binary file: control byte 0x{:02x} where mt940 text was expected",
                bytes[at]
            ),
        ));
    }
    let utf8 = std::str::from_utf8(bytes);
    match (encoding, utf8) {
        (Encoding::Auto | Encoding::Utf8, Ok(text)) => Ok(text.to_string()),
        (Encoding::Utf8, Err(e)) => Err(PluginError::bad_input(
            line_at(e.valid_up_to()),
            "not utf-8 text (setting `encoding` is utf-8)",
        )),
        (Encoding::Auto, Err(_)) | (Encoding::Windows1252, _) => Ok(encoding_rs::WINDOWS_1252
            .decode_without_bom_handling(bytes)
            .0
            .into_owned()),
    }
}

settled_plugin_api::export_plugin!(Mt940);

#[cfg(test)]
mod tests;
