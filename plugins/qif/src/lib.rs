//! settled connector plugin `qif`: Quicken Interchange Format bank, cash and credit-card registers
//! into `payment@1` records. QIF carries no currency and no transaction id: the currency comes from the
//! settings and the id is a content hash.

use std::collections::HashMap;
use std::str::FromStr;

use serde::Deserialize;
use settled_plugin_api::chrono::NaiveDate;
use settled_plugin_api::money::{minor_units, rescale_to_currency, uppercase_currency_code};
use settled_plugin_api::rust_decimal::Decimal;
use settled_plugin_api::sdk::payments;
use settled_plugin_api::settings::settings_from_json;
use settled_plugin_api::{
    FileRequest, Manifest, ParseReply, PaymentRecord, Plugin, PluginError, Role, SniffReply,
    SniffRequest,
};
use sha2::{Digest, Sha256};

/// Order of day, month and year in `D` dates with two-digit components.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DateOrder {
    /// `01/23/2019`, `1/23'19` (US Quicken; the default).
    #[default]
    Mdy,
    /// `23/01/2019`, `23.01.19`.
    Dmy,
    /// `2019-01-23`.
    Ymd,
}

/// Settings of a `qif` instance.
///
/// `currency` is required: QIF files do not say which currency they are in, and guessing USD would
/// silently book foreign amounts as dollars. Everything else has a default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// ISO 4217 code of the account's currency (no default).
    pub currency: String,
    /// How to read dates whose year is not written first (default `mdy`). A four-digit first part is always a year.
    pub date_order: DateOrder,
    /// Decimal mark of amounts (default `.`); the other of `.`/`,` is taken as a thousands separator.
    pub decimal_mark: char,
}

/// [`Settings`] as written in the connector's config; `currency` may be left out here only so that
/// leaving it out gets its own message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSettings {
    currency: Option<String>,
    date_order: DateOrder,
    decimal_mark: char,
}

impl Default for RawSettings {
    fn default() -> Self {
        RawSettings {
            currency: None,
            date_order: DateOrder::default(),
            decimal_mark: '.',
        }
    }
}

impl Settings {
    /// Settings for this currency with every other field at its default.
    pub fn new(currency: &str) -> Self {
        Settings {
            currency: currency.to_ascii_uppercase(),
            date_order: DateOrder::default(),
            decimal_mark: '.',
        }
    }

    /// Settings from the connector's JSON.
    pub fn from_json(value: serde_json::Value) -> Result<Self, PluginError> {
        let raw: RawSettings = settings_from_json(value)?;
        let Some(written) = raw.currency else {
            return Err(PluginError::bad_config(
                "currency",
                "missing: qif files carry no currency, so set it (e.g. \"USD\")",
            ));
        };
        let Some(currency) = uppercase_currency_code(&written) else {
            return Err(PluginError::bad_config(
                "currency",
                format!("`{written}` is not a three-letter iso 4217 code"),
            ));
        };
        if !matches!(raw.decimal_mark, '.' | ',') {
            return Err(PluginError::bad_config(
                "decimal_mark",
                format!("`{}` must be `.` or `,`", raw.decimal_mark),
            ));
        }
        Ok(Settings {
            currency,
            date_order: raw.date_order,
            decimal_mark: raw.decimal_mark,
        })
    }
}

/// The `qif` plugin.
#[derive(Debug, Clone)]
pub struct Qif {
    settings: Settings,
}

impl Plugin for Qif {
    fn manifest() -> Manifest {
        Manifest {
            name: "qif".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            roles: vec![Role::File],
            description: "QIF bank, cash and credit-card registers".into(),
        }
    }

    fn configure(settings: serde_json::Value) -> Result<Self, PluginError> {
        Ok(Qif {
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

/// A `!Type:` header at the start decides; the `.qif` extension alone is a hint.
pub fn sniff(name: &str, head: &[u8]) -> u8 {
    let text = String::from_utf8_lossy(head);
    let first = text
        .trim_start_matches('\u{feff}')
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let header = first.starts_with("!Type:")
        || first.starts_with("!Account")
        || first.starts_with("!Option:");
    let by_name = name.to_ascii_lowercase().ends_with(".qif");
    match (header, by_name) {
        (true, true) => 100,
        (true, false) => 90,
        (false, true) => 30,
        (false, false) => 0,
    }
}

/// Registers that hold money movements; other sections (categories, classes, memorized, investments) are skipped or refused.
const CASH_TYPES: &[&str] = &["bank", "ccard", "cash", "oth a", "oth l"];

/// Parse a whole QIF file into payment records, in file order. Any bad record fails the whole file.
pub fn parse(
    name: &str,
    bytes: &[u8],
    settings: &Settings,
) -> Result<Vec<PaymentRecord>, PluginError> {
    if bytes.is_empty() {
        return Err(PluginError::bad_input("file", "empty file"));
    }
    let text = decode(bytes);
    let mut section = Section::None;
    let mut account = String::new();
    let mut entry = Entry::default();
    let mut records = Vec::new();
    let mut seen: HashMap<[u8; 32], u32> = HashMap::new();

    for (index, raw_line) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = raw_line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        if let Some(c) = line.chars().find(|c| c.is_control() && *c != '\t') {
            return Err(PluginError::bad_input(
                format!("line {line_no}"),
                format!("binary data (character U+{:04X}): not a qif file", c as u32),
            ));
        }
        if let Some(header) = line.strip_prefix('!') {
            if entry.started() {
                return Err(PluginError::bad_input(
                    format!("line {line_no}"),
                    format!(
                        "`!{header}` inside a record: the record from line {} has no `^` end",
                        entry.line
                    ),
                ));
            }
            section = Section::from_header(header.trim(), line_no)?;
            continue;
        }
        if section == Section::None {
            return Err(PluginError::bad_input(
                format!("line {line_no}"),
                "not a qif file: no `!Type:` header before the first record",
            ));
        }
        let (code, value) = line.split_at(line.chars().next().map_or(0, char::len_utf8));
        if code == "^" {
            match &section {
                Section::Cash(kind) => {
                    let record = entry.finish(name, &account, kind, settings, &mut seen)?;
                    records.push(record);
                }
                Section::Account => {
                    if let Some(n) = &entry.account_name {
                        account.clone_from(n);
                    }
                }
                Section::Skipped | Section::None => {}
            }
            entry = Entry::default();
            continue;
        }
        if !entry.started() {
            entry.line = line_no;
        }
        match section {
            Section::Cash(_) => entry.field(code, value.trim(), line_no)?,
            Section::Account if code == "N" => entry.account_name = Some(value.trim().to_string()),
            _ => {}
        }
    }
    if entry.started() && entry.has_fields() {
        if let Section::Cash(kind) = &section {
            // The last record may lack its `^` (no trailing newline, hand-edited files).
            let record = entry.finish(name, &account, kind, settings, &mut seen)?;
            records.push(record);
        }
    }
    if section == Section::None {
        return Err(PluginError::bad_input(
            "line 1",
            "not a qif file: no `!Type:` header",
        ));
    }
    Ok(records)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Section {
    None,
    /// A money register, with its lower-case type.
    Cash(String),
    /// `!Account`: names the account the next register belongs to.
    Account,
    Skipped,
}

impl Section {
    fn from_header(header: &str, line_no: usize) -> Result<Section, PluginError> {
        let lower = header.to_ascii_lowercase();
        if let Some(kind) = lower.strip_prefix("type:") {
            let kind = kind.trim();
            if CASH_TYPES.contains(&kind) {
                return Ok(Section::Cash(kind.to_string()));
            }
            if matches!(kind, "cat" | "class" | "memorized" | "prices" | "security") {
                return Ok(Section::Skipped);
            }
            return Err(PluginError::bad_input(
                format!("line {line_no}"),
                format!("unsupported register `!{header}`: only Bank, CCard, Cash, Oth A and Oth L hold payments"),
            ));
        }
        if lower == "account" {
            return Ok(Section::Account);
        }
        if lower.starts_with("option:") || lower.starts_with("clear:") {
            return Ok(Section::Skipped);
        }
        Err(PluginError::bad_input(
            format!("line {line_no}"),
            format!("unknown qif header `!{header}`"),
        ))
    }
}

#[derive(Debug, Default)]
struct Entry {
    /// Line of the record's first field.
    line: usize,
    date: Option<(String, usize)>,
    amount: Option<(String, usize)>,
    payee: Option<String>,
    memo: Option<String>,
    number: Option<String>,
    account_name: Option<String>,
    fields: usize,
}

impl Entry {
    fn started(&self) -> bool {
        self.line != 0
    }

    fn has_fields(&self) -> bool {
        self.fields > 0
    }

    fn field(&mut self, code: &str, value: &str, line_no: usize) -> Result<(), PluginError> {
        self.fields += 1;
        let value_owned = || Some(value.to_string()).filter(|v| !v.is_empty());
        match code {
            "D" => self.date = Some((value.to_string(), line_no)),
            // `U` repeats `T` (newer Quicken, more digits); the first one given is kept.
            "T" | "U" => {
                if self.amount.is_none() {
                    self.amount = Some((value.to_string(), line_no));
                }
            }
            "P" => self.payee = value_owned(),
            "M" => self.memo = value_owned(),
            "N" => self.number = value_owned(),
            // Cleared flag, address, category, splits, reimbursable flag: nothing a payment record holds.
            "C" | "A" | "L" | "S" | "E" | "$" | "%" | "F" | "B" | "X" => {}
            _ => {
                return Err(PluginError::bad_input(
                    format!("line {line_no}"),
                    format!("unknown qif field code `{code}`"),
                ))
            }
        }
        Ok(())
    }

    fn finish(
        &self,
        file: &str,
        account: &str,
        kind: &str,
        settings: &Settings,
        seen: &mut HashMap<[u8; 32], u32>,
    ) -> Result<PaymentRecord, PluginError> {
        let record_at = format!("line {}", self.line);
        let (date_text, date_line) = self
            .date
            .as_ref()
            .ok_or_else(|| PluginError::bad_input(&record_at, "record has no `D` date"))?;
        let booked_on = parse_date(date_text, settings.date_order)
            .map_err(|m| PluginError::bad_input(format!("line {date_line}"), m))?;
        let (amount_text, amount_line) = self
            .amount
            .as_ref()
            .ok_or_else(|| PluginError::bad_input(&record_at, "record has no `T` amount"))?;
        let amount = parse_amount(amount_text, settings.decimal_mark, &settings.currency)
            .map_err(|m| PluginError::bad_input(format!("line {amount_line}"), m))?;

        let mut hasher = Sha256::new();
        for part in [
            account,
            kind,
            &booked_on.to_string(),
            &amount.to_string(),
            &settings.currency,
            self.payee.as_deref().unwrap_or(""),
            self.memo.as_deref().unwrap_or(""),
            self.number.as_deref().unwrap_or(""),
        ] {
            hasher.update(part.as_bytes());
            hasher.update([0x1f]);
        }
        let digest: [u8; 32] = hasher.finalize().into();
        let occurrence = seen.entry(digest).or_insert(0);
        let external_id = format!("{}:{occurrence}", hex::encode(digest));
        *occurrence += 1;

        let mut record = PaymentRecord::new(external_id, amount, settings.currency.clone());
        record.booked_on = Some(booked_on);
        record.counterparty_name = self.payee.clone();
        record.remittance = self.memo.clone();
        // A cheque number is the payer's own reference; `N` also holds words like `ATM` or `DEP`, which are not.
        record.end_to_end_id = self
            .number
            .clone()
            .filter(|n| n.chars().any(|c| c.is_ascii_digit()));
        record.source_position = Some(format!("{file}#line {}", self.line));
        Ok(record)
    }
}

/// UTF-8 when valid (with or without BOM), else Windows-1252, which older Quicken versions write.
fn decode(bytes: &[u8]) -> String {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_string(),
        Err(_) => bytes.iter().map(|&b| windows_1252(b)).collect(),
    }
}

fn windows_1252(b: u8) -> char {
    const HIGH: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž',
        '\u{8f}', '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}',
        'ž', 'Ÿ',
    ];
    match b {
        0x80..=0x9f => HIGH[usize::from(b - 0x80)],
        _ => char::from(b),
    }
}

/// `01/23/2019`, `1/23/19`, `1/23'19`, ` 1/ 3'05`, `01-23-2019`, `23.01.2019`, `2019-01-23`.
fn parse_date(raw: &str, order: DateOrder) -> Result<NaiveDate, String> {
    let bad = || format!("`{raw}` is not a qif date");
    let apostrophe = raw.contains('\'');
    let parts: Vec<&str> = raw.split(['/', '-', '.', '\'']).map(str::trim).collect();
    if parts.len() != 3
        || parts
            .iter()
            .any(|p| p.is_empty() || p.len() > 4 || !p.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(bad());
    }
    let num = |s: &str| s.parse::<u32>().map_err(|_| bad());
    let (year_text, month, day) = if parts[0].len() == 4 || order == DateOrder::Ymd {
        (parts[0], num(parts[1])?, num(parts[2])?)
    } else if order == DateOrder::Dmy {
        (parts[2], num(parts[1])?, num(parts[0])?)
    } else {
        (parts[2], num(parts[0])?, num(parts[1])?)
    };
    let short = num(year_text)?;
    let year = match year_text.len() {
        4 => short,
        // Quicken writes `'` for years from 2000 on; elsewhere a two-digit year pivots at 70.
        1 | 2 if apostrophe => 2000 + short,
        1 | 2 if short < 70 => 2000 + short,
        1 | 2 => 1900 + short,
        _ => return Err(bad()),
    };
    let year = i32::try_from(year).map_err(|_| bad())?;
    NaiveDate::from_ymd_opt(year, month, day).ok_or_else(bad)
}

/// `-1,234.56` (or `-1.234,56` with a `,` decimal mark), scaled to the currency's minor units.
fn parse_amount(raw: &str, decimal_mark: char, currency: &str) -> Result<Decimal, String> {
    let thousands = if decimal_mark == '.' { ',' } else { '.' };
    let mut text: String = raw.trim().chars().filter(|c| *c != thousands).collect();
    if decimal_mark == ',' {
        text = text.replace(',', ".");
    }
    let body = text.strip_prefix(['-', '+']).unwrap_or(&text);
    let valid = !body.is_empty()
        && body.chars().all(|c| c.is_ascii_digit() || c == '.')
        && body.chars().any(|c| c.is_ascii_digit());
    let value = if valid {
        Decimal::from_str(text.strip_prefix('+').unwrap_or(&text)).ok()
    } else {
        None
    };
    let Some(value) = value else {
        return Err(format!("`{raw}` is not an amount"));
    };
    rescale_to_currency(value, currency).ok_or_else(|| {
        format!(
            "amount `{raw}` has more decimals than {currency} allows ({})",
            minor_units(currency)
        )
    })
}

settled_plugin_api::export_plugin!(Qif);

#[cfg(test)]
mod tests;
