//! settled connector plugin `bai2`: BAI Version 2 cash-management balance reports (`01/02/03/16/88/49/98/99`
//! records) into `payment@1` records, one per `16` transaction detail.

use std::collections::HashMap;

use serde::Deserialize;
use settled_plugin_api::chrono::NaiveDate;
use settled_plugin_api::money::{minor_units, uppercase_currency_code};
use settled_plugin_api::rust_decimal::Decimal;
use settled_plugin_api::sdk::payments;
use settled_plugin_api::settings::settings_from_json;
use settled_plugin_api::{
    EntryStatus, FileRequest, Manifest, ParseReply, PaymentKind, PaymentRecord, Plugin,
    PluginError, Role, SniffReply, SniffRequest,
};
use sha2::{Digest, Sha256};

/// Settings of a `bai2` instance.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Currency when neither the `03` account record nor the `02` group header names one (BAI2 says USD).
    pub default_currency: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            default_currency: "USD".into(),
        }
    }
}

impl Settings {
    /// Settings from the connector's JSON (`null` means all defaults).
    pub fn from_json(value: serde_json::Value) -> Result<Self, PluginError> {
        let mut settings: Settings = settings_from_json(value)?;
        let Some(code) = uppercase_currency_code(&settings.default_currency) else {
            return Err(PluginError::bad_config(
                "default_currency",
                format!(
                    "`{}` is not a three-letter iso 4217 code",
                    settings.default_currency
                ),
            ));
        };
        settings.default_currency = code;
        Ok(settings)
    }
}

/// The `bai2` plugin.
#[derive(Debug, Clone)]
pub struct Bai2 {
    settings: Settings,
}

impl Plugin for Bai2 {
    fn manifest() -> Manifest {
        Manifest {
            name: "bai2".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            roles: vec![Role::File],
            description: "BAI2 cash-management balance reports".into(),
        }
    }

    fn configure(settings: serde_json::Value) -> Result<Self, PluginError> {
        Ok(Bai2 {
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

/// A file starting with a `01,` header whose next record is a `02,` group header is BAI2.
pub fn sniff(name: &str, head: &[u8]) -> u8 {
    let text = String::from_utf8_lossy(head);
    let mut lines = text
        .trim_start_matches('\u{feff}')
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("");
    let second = lines.next().unwrap_or("");
    let lower = name.to_ascii_lowercase();
    let by_name = lower.ends_with(".bai") || lower.ends_with(".bai2");
    let header = first.starts_with("01,") && first.split(',').count() >= 9;
    match (header, second.starts_with("02,"), by_name) {
        (true, true, _) => 95,
        (true, false, _) => 70,
        (false, _, true) => 30,
        _ => 0,
    }
}

/// Parse a whole BAI2 file into one payment record per `16` record, in file order. Any bad record,
/// a control total or record count that does not add up, or a missing trailer fails the whole file.
pub fn parse(
    name: &str,
    bytes: &[u8],
    settings: &Settings,
) -> Result<Vec<PaymentRecord>, PluginError> {
    if bytes.is_empty() {
        return Err(PluginError::bad_input("file", "empty file"));
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Err(PluginError::bad_input(
            "file",
            "binary data: a bai2 file is plain ascii text",
        ));
    };
    let records = logical_records(text)?;
    let mut state = State {
        file: name,
        settings,
        physical_length: None,
        group: None,
        account: None,
        file_total: 0,
        file_groups: 0,
        file_records: 0,
        saw_trailer: false,
        seen: HashMap::new(),
        out: Vec::new(),
    };
    for record in &records {
        if state.saw_trailer {
            return Err(PluginError::bad_input(
                format!("line {}", record.line),
                "record after the 99 file trailer",
            ));
        }
        state.record(record)?;
    }
    if !state.saw_trailer {
        let last = records.last().map_or(1, |r| r.line);
        return Err(PluginError::bad_input(
            format!("line {last}"),
            "truncated file: no 99 file trailer",
        ));
    }
    Ok(state.out)
}

/// A record with its `88` continuations.
struct Logical<'a> {
    code: &'a str,
    line: usize,
    /// The record's physical lines: the first one whole, continuations without their `88,`.
    parts: Vec<&'a str>,
}

fn logical_records(text: &str) -> Result<Vec<Logical<'_>>, PluginError> {
    let mut out: Vec<Logical> = Vec::new();
    for (index, raw) in text.trim_start_matches('\u{feff}').lines().enumerate() {
        let line = index + 1;
        let physical = raw.trim_end_matches('\r');
        if physical.trim().is_empty() {
            continue;
        }
        if let Some(c) = physical.chars().find(|c| c.is_control()) {
            return Err(PluginError::bad_input(
                format!("line {line}"),
                format!(
                    "binary data (character U+{:04X}): not a bai2 file",
                    c as u32
                ),
            ));
        }
        let code = physical.split([',', '/']).next().unwrap_or("").trim();
        if out.is_empty() && code != "01" {
            return Err(PluginError::bad_input(
                format!("line {line}"),
                "not a bai2 file: it does not start with a 01 file header",
            ));
        }
        if code == "88" {
            let Some(previous) = out.last_mut() else {
                continue;
            };
            previous
                .parts
                .push(physical.trim_start().get(3..).unwrap_or(""));
            continue;
        }
        if !matches!(code, "01" | "02" | "03" | "16" | "49" | "98" | "99") {
            return Err(PluginError::bad_input(
                format!("line {line}"),
                format!("unknown bai2 record code `{code}`"),
            ));
        }
        out.push(Logical {
            code,
            line,
            parts: vec![physical],
        });
    }
    Ok(out)
}

impl Logical<'_> {
    fn physical_count(&self) -> i64 {
        i64::try_from(self.parts.len()).unwrap_or(i64::MAX)
    }

    /// Fields of a record without free text: continuation fields follow on, the `/` ends each part.
    fn fields(&self) -> Vec<&str> {
        let mut fields = Vec::new();
        for (i, part) in self.parts.iter().enumerate() {
            let body = part.trim_end();
            let body = body.strip_suffix('/').unwrap_or(body);
            let mut split = body.split(',');
            if i == 0 {
                split.next();
            }
            fields.extend(split.map(str::trim));
        }
        fields
    }
}

struct Group {
    line: usize,
    currency: Option<String>,
    as_of: NaiveDate,
    pending: bool,
    total: i128,
    accounts: i64,
    records: i64,
}

struct Account {
    line: usize,
    number: String,
    currency: String,
    total: i128,
    records: i64,
}

struct State<'a> {
    file: &'a str,
    settings: &'a Settings,
    /// Physical record length from the 01 header: a continuation of a line this long split text mid-word.
    physical_length: Option<usize>,
    group: Option<Group>,
    account: Option<Account>,
    file_total: i128,
    file_groups: i64,
    file_records: i64,
    saw_trailer: bool,
    seen: HashMap<[u8; 32], u32>,
    out: Vec<PaymentRecord>,
}

impl State<'_> {
    fn record(&mut self, record: &Logical) -> Result<(), PluginError> {
        let at = format!("line {}", record.line);
        let bad = |message: String| PluginError::bad_input(at.clone(), message);
        self.file_records += record.physical_count();
        if let Some(group) = &mut self.group {
            group.records += record.physical_count();
        }
        if let Some(account) = &mut self.account {
            account.records += record.physical_count();
        }
        match record.code {
            "01" => {
                let fields = record.fields();
                if self.file_records != record.physical_count() {
                    return Err(bad("a second 01 file header".into()));
                }
                if fields.get(7).is_some_and(|v| *v != "2") {
                    return Err(bad(format!(
                        "version `{}` is not bai2 (2)",
                        fields.get(7).unwrap_or(&"")
                    )));
                }
                self.physical_length = fields.get(5).and_then(|v| v.parse().ok());
            }
            "02" => {
                if self.group.is_some() {
                    return Err(bad(
                        "02 group header before the previous group's 98 trailer".into(),
                    ));
                }
                let fields = record.fields();
                let as_of = fields
                    .get(3)
                    .ok_or_else(|| bad("02 group header has no as-of date".into()))?;
                let as_of = yymmdd(as_of).map_err(bad)?;
                let currency = optional_currency(fields.get(5).copied()).map_err(bad)?;
                self.group = Some(Group {
                    line: record.line,
                    currency,
                    as_of,
                    // As-of-date modifier 3: interim same-day data, entries not final yet.
                    pending: fields.get(6).is_some_and(|m| *m == "3"),
                    total: 0,
                    accounts: 0,
                    records: record.physical_count(),
                });
            }
            "03" => {
                if self.account.is_some() {
                    return Err(bad(
                        "03 account record before the previous account's 49 trailer".into(),
                    ));
                }
                let group = self
                    .group
                    .as_ref()
                    .ok_or_else(|| bad("03 account record outside a 02 group".into()))?;
                let fields = record.fields();
                let number = fields.first().copied().unwrap_or("");
                if number.is_empty() {
                    return Err(bad("03 account record has no account number".into()));
                }
                let currency = optional_currency(fields.get(1).copied())
                    .map_err(bad)?
                    .or_else(|| group.currency.clone())
                    .unwrap_or_else(|| self.settings.default_currency.clone());
                let total = summary_total(&fields[2.min(fields.len())..]).map_err(bad)?;
                self.account = Some(Account {
                    line: record.line,
                    number: number.to_string(),
                    currency,
                    total,
                    records: record.physical_count(),
                });
            }
            "16" => {
                if let Some(payment) = self.detail(record)? {
                    self.out.push(payment);
                }
            }
            "49" => {
                let account = self
                    .account
                    .take()
                    .ok_or_else(|| bad("49 account trailer without a 03 account record".into()))?;
                let fields = record.fields();
                check_trailer(
                    &fields,
                    account.total,
                    account.records,
                    "account",
                    account.line,
                )
                .map_err(bad)?;
                if let Some(group) = &mut self.group {
                    group.total += account.total;
                    group.accounts += 1;
                }
            }
            "98" => {
                if let Some(account) = &self.account {
                    return Err(bad(format!(
                        "98 group trailer while the account from line {} has no 49 trailer",
                        account.line
                    )));
                }
                let group = self
                    .group
                    .take()
                    .ok_or_else(|| bad("98 group trailer without a 02 group header".into()))?;
                let fields = record.fields();
                check_trailer(&fields, group.total, group.records, "group", group.line)
                    .map_err(bad)?;
                check_count(&fields, 1, group.accounts, "accounts").map_err(bad)?;
                self.file_total += group.total;
                self.file_groups += 1;
            }
            "99" => {
                if let Some(group) = &self.group {
                    return Err(bad(format!(
                        "99 file trailer while the group from line {} has no 98 trailer",
                        group.line
                    )));
                }
                let fields = record.fields();
                check_trailer(&fields, self.file_total, self.file_records, "file", 1)
                    .map_err(bad)?;
                check_count(&fields, 1, self.file_groups, "groups").map_err(bad)?;
                self.saw_trailer = true;
            }
            _ => {}
        }
        Ok(())
    }

    fn detail(&mut self, record: &Logical) -> Result<Option<PaymentRecord>, PluginError> {
        let at = format!("line {}", record.line);
        let bad = |message: String| PluginError::bad_input(at.clone(), message);
        let (Some(group), Some(account)) = (&self.group, &mut self.account) else {
            return Err(bad("16 transaction detail outside a 03 account".into()));
        };
        let mut cursor = FieldCursor::new(record.parts[0]);
        cursor.next();
        let type_code = cursor.next();
        let amount_text = cursor.next();
        let funds_type = cursor.next();
        let mut value_date = None;
        let mut funds_fields = Vec::new();
        match funds_type {
            "V" => {
                let date = cursor.next();
                funds_fields.push(date);
                funds_fields.push(cursor.next());
                value_date = Some(yymmdd(date).map_err(bad)?);
            }
            "S" => (0..3).for_each(|_| funds_fields.push(cursor.next())),
            "D" => {
                let count = cursor.next();
                funds_fields.push(count);
                let n: usize = count
                    .parse()
                    .map_err(|_| bad(format!("distribution count `{count}` is not a number")))?;
                (0..n.min(64) * 2).for_each(|_| funds_fields.push(cursor.next()));
            }
            "" | "0" | "1" | "2" | "Z" => {}
            other => return Err(bad(format!("unknown funds type `{other}`"))),
        }
        let bank_reference = cursor.next();
        let customer_reference = cursor.next();
        let mut text = cursor.rest().to_string();
        for (i, continuation) in record.parts.iter().enumerate().skip(1) {
            let piece = strip_terminator(continuation);
            let previous = record.parts[i - 1];
            let split_mid_word = self
                .physical_length
                .is_some_and(|len| previous.len() >= len);
            if !text.is_empty() && !split_mid_word && !piece.is_empty() {
                text.push(' ');
            }
            text.push_str(piece);
        }
        let text = text.trim();

        let code: u16 = type_code
            .parse()
            .map_err(|_| bad(format!("type code `{type_code}` is not a number")))?;
        let cents = unsigned_amount(amount_text).map_err(bad)?;
        account.total += cents;
        let credit = match code {
            100..=399 | 721..=728 => true,
            400..=699 => false,
            // Contains non-monetary information: counted in the totals, no movement.
            890 => return Ok(None),
            _ => {
                return Err(bad(format!(
                    "type code {code} is neither a credit (100-399) nor a debit (400-699) detail"
                )))
            }
        };
        let units = minor_units(&account.currency);
        let magnitude = Decimal::from_i128_with_scale(cents, units);
        let amount = if credit { magnitude } else { -magnitude };

        let external_id = if bank_reference.is_empty() {
            let mut hasher = Sha256::new();
            for part in [
                account.number.as_str(),
                &account.currency,
                &group.as_of.to_string(),
                type_code,
                amount_text,
                funds_type,
                &funds_fields.join(","),
                customer_reference,
                text,
            ] {
                hasher.update(part.as_bytes());
                hasher.update([0x1f]);
            }
            let digest: [u8; 32] = hasher.finalize().into();
            let occurrence = self.seen.entry(digest).or_insert(0);
            let id = format!("{}:{occurrence}", hex::encode(digest));
            *occurrence += 1;
            id
        } else {
            format!("{}:{bank_reference}", account.number)
        };

        let mut payment = PaymentRecord::new(external_id, amount, account.currency.clone());
        payment.booked_on = Some(group.as_of);
        payment.value_date = value_date;
        payment.status = if group.pending {
            EntryStatus::Pending
        } else {
            EntryStatus::Booked
        };
        (payment.kind, payment.reversal) = kind(code);
        payment.remittance = Some(text.to_string()).filter(|t| !t.is_empty());
        payment.end_to_end_id = Some(customer_reference.to_string()).filter(|r| !r.is_empty());
        payment.source_position = Some(format!("{}#line {}", self.file, record.line));
        Ok(Some(payment))
    }
}

/// What a detail type code (BAI2 appendix A) says about the movement beyond its direction.
fn kind(code: u16) -> (PaymentKind, bool) {
    match code {
        // Debit Reversal, ACH Reversal Credit, Check Reversal, Credit Reversal, ACH Reversal Debit, Deposit Reversal.
        252 | 258 | 395 | 552 | 558 | 694 => (PaymentKind::Transfer, true),
        // ACH return items, return items, deposited item returned.
        257 | 266 | 555 | 557 | 566 => (PaymentKind::Refund, false),
        // Overdraft fee, return item fee, account analysis fee, miscellaneous fees.
        564 | 567 | 661 | 698 => (PaymentKind::Fee, false),
        _ => (PaymentKind::Transfer, false),
    }
}

fn strip_terminator(part: &str) -> &str {
    let trimmed = part.trim_end();
    trimmed.strip_suffix('/').unwrap_or(trimmed).trim_end()
}

/// Reads comma-separated fields of a `16` record up to its free text; a `/` ends the fields early.
struct FieldCursor<'a> {
    rest: &'a str,
    ended: bool,
}

impl<'a> FieldCursor<'a> {
    fn new(line: &'a str) -> Self {
        FieldCursor {
            rest: line,
            ended: false,
        }
    }

    fn next(&mut self) -> &'a str {
        if self.ended {
            return "";
        }
        match self.rest.find([',', '/']) {
            Some(i) => {
                let field = &self.rest[..i];
                if self.rest.as_bytes()[i] == b'/' {
                    self.ended = true;
                }
                self.rest = &self.rest[i + 1..];
                field.trim()
            }
            None => {
                self.ended = true;
                std::mem::take(&mut self.rest).trim()
            }
        }
    }

    /// The free text: everything left, without the record's `/` terminator.
    fn rest(&self) -> &'a str {
        if self.ended {
            ""
        } else {
            strip_terminator(self.rest)
        }
    }
}

/// Sum of the amounts in an `03` record's summary groups (type code, amount, item count, funds type + its fields).
fn summary_total(fields: &[&str]) -> Result<i128, String> {
    let mut total = 0i128;
    let mut i = 0;
    while i < fields.len() {
        let type_code = fields[i];
        if type_code.is_empty() && fields[i..].iter().all(|f| f.is_empty()) {
            break;
        }
        let amount = fields.get(i + 1).copied().unwrap_or("");
        if !amount.is_empty() {
            total += signed_amount(amount)?;
        }
        let funds = fields.get(i + 3).copied().unwrap_or("");
        i += 4;
        i += match funds {
            "V" => 2,
            "S" => 3,
            "D" => {
                let n: usize = fields.get(i).and_then(|c| c.parse().ok()).ok_or_else(|| {
                    format!("summary {type_code}: distribution count is not a number")
                })?;
                1 + 2 * n
            }
            _ => 0,
        };
    }
    Ok(total)
}

fn check_trailer(
    fields: &[&str],
    total: i128,
    records: i64,
    what: &str,
    opened: usize,
) -> Result<(), String> {
    let control = fields.first().copied().unwrap_or("");
    let control = signed_amount(control).map_err(|e| format!("{what} control total: {e}"))?;
    if control != total {
        return Err(format!(
            "{what} control total {control} does not match the sum of its amounts {total} (opened on line {opened})"
        ));
    }
    let count_index = if what == "account" { 1 } else { 2 };
    check_count(fields, count_index, records, "records")
}

fn check_count(fields: &[&str], index: usize, actual: i64, what: &str) -> Result<(), String> {
    let text = fields.get(index).copied().unwrap_or("");
    let stated: i64 = text
        .parse()
        .map_err(|_| format!("number of {what} `{text}` is not a number"))?;
    if stated != actual {
        return Err(format!(
            "trailer says {stated} {what}, the file has {actual}: truncated or edited file"
        ));
    }
    Ok(())
}

/// An amount field in the currency's minor units: digits, unsigned.
fn unsigned_amount(text: &str) -> Result<i128, String> {
    if text.is_empty() || text.len() > 18 || !text.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "amount `{text}` is not a whole number of minor units"
        ));
    }
    text.parse()
        .map_err(|_| format!("amount `{text}` is not a number"))
}

/// A summary or control amount: optional sign, then minor units.
fn signed_amount(text: &str) -> Result<i128, String> {
    match text.strip_prefix('-') {
        Some(digits) => unsigned_amount(digits).map(|v| -v),
        None => unsigned_amount(text.strip_prefix('+').unwrap_or(text)),
    }
}

fn yymmdd(text: &str) -> Result<NaiveDate, String> {
    let bad = || format!("`{text}` is not a YYMMDD date");
    if text.len() != 6 || !text.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| text[r].parse::<u32>().map_err(|_| bad());
    let yy = num(0..2)?;
    // BAI2 dates from 1970 to 2069.
    let year = if yy < 70 { 2000 + yy } else { 1900 + yy };
    let year = i32::try_from(year).map_err(|_| bad())?;
    NaiveDate::from_ymd_opt(year, num(2..4)?, num(4..6)?).ok_or_else(bad)
}

fn optional_currency(field: Option<&str>) -> Result<Option<String>, String> {
    match field {
        None | Some("") => Ok(None),
        Some(c) => uppercase_currency_code(c)
            .map(Some)
            .ok_or_else(|| format!("`{c}` is not an iso 4217 currency code")),
    }
}

settled_plugin_api::export_plugin!(Bai2);

#[cfg(test)]
mod tests;
