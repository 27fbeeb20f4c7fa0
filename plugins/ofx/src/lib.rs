//! settled connector plugin `ofx`: OFX 1.x (SGML) and 2.x (XML) bank and credit-card statements, and QFX,
//! into `payment@1` records keyed by the account id and `FITID`.

mod stream;
mod tree;

use std::str::FromStr;

use serde::Deserialize;
use settled_plugin_api::chrono::NaiveDate;
use settled_plugin_api::money::{minor_units, rescale_to_currency, uppercase_currency_code};
use settled_plugin_api::rust_decimal::Decimal;
use settled_plugin_api::sdk::payments;
use settled_plugin_api::sdk::StreamParser;
use settled_plugin_api::settings::settings_from_json;
use settled_plugin_api::{
    FileRequest, Manifest, ParseReply, PaymentKind, PaymentRecord, Plugin, PluginError, Role,
    SniffReply, SniffRequest,
};

pub use stream::OfxStream;
pub use tree::Element;

/// Settings of an `ofx` connector instance (all optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Currency for statements without `CURDEF` (which OFX requires; some exporters drop it). Without it such a file fails.
    pub default_currency: Option<String>,
}

impl Settings {
    /// Settings from the connector's JSON (`null` means all defaults).
    pub fn from_json(value: serde_json::Value) -> Result<Self, PluginError> {
        let settings: Settings = settings_from_json(value)?;
        if let Some(c) = &settings.default_currency {
            if uppercase_currency_code(c).is_none() {
                return Err(PluginError::bad_config(
                    "default_currency",
                    format!("`{c}` is not a three-letter iso 4217 code"),
                ));
            }
        }
        Ok(settings)
    }
}

/// The `ofx` plugin.
#[derive(Debug, Clone)]
pub struct Ofx {
    settings: Settings,
}

impl Plugin for Ofx {
    fn manifest() -> Manifest {
        Manifest {
            name: "ofx".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            roles: vec![Role::File],
            description: "OFX 1.x/2.x and QFX bank and credit-card statements".into(),
        }
    }

    fn configure(settings: serde_json::Value) -> Result<Self, PluginError> {
        Ok(Ofx {
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

    fn stream_parser(&self, name: &str) -> Option<Box<dyn StreamParser>> {
        Some(Box::new(OfxStream::new(name, &self.settings)))
    }
}

/// How sure we are that a file is OFX: the `OFXHEADER` header or an `<OFX>` root decide; the extension alone is a hint.
pub fn sniff(name: &str, head: &[u8]) -> u8 {
    let text = String::from_utf8_lossy(head);
    let upper = text.to_ascii_uppercase();
    let has_header = upper
        .trim_start_matches('\u{feff}')
        .trim_start()
        .starts_with("OFXHEADER")
        || upper.contains("<?OFX ");
    let has_root = upper.contains("<OFX>");
    let lower_name = name.to_ascii_lowercase();
    let by_name = [".ofx", ".qfx", ".qbo"]
        .iter()
        .any(|ext| lower_name.ends_with(ext));
    match (has_header || has_root, by_name) {
        (true, true) => 100,
        (true, false) => 90,
        (false, true) => 30,
        (false, false) => 0,
    }
}

/// Parse a whole OFX/QFX file into payment records, in file order. Any bad transaction fails the whole file.
///
/// The same parser as [`OfxStream`], fed the file in one piece.
pub fn parse(
    name: &str,
    bytes: &[u8],
    settings: &Settings,
) -> Result<Vec<PaymentRecord>, PluginError> {
    let mut stream = OfxStream::new(name, settings);
    let mut records = stream.feed_payments(bytes)?;
    records.extend(stream.finish_payments()?);
    Ok(records)
}

/// A whole statement's records (a statement that arrived inside an element that was kept whole).
fn statement(
    file: &str,
    stmt: &Element,
    index: usize,
    settings: &Settings,
    out: &mut Vec<PaymentRecord>,
) -> Result<(), PluginError> {
    let path = format!("{}[{index}]", stmt.name);
    let (account, currency) = header(stmt, &path, settings)?;
    let Some(list) = stmt.child("BANKTRANLIST") else {
        return Ok(());
    };
    for (i, trn) in list
        .children
        .iter()
        .filter(|c| c.name == "STMTTRN")
        .enumerate()
    {
        let trn_path = format!("{path}/STMTTRN[{}]", i + 1);
        out.push(transaction(file, trn, &trn_path, &account, &currency)?);
    }
    Ok(())
}

/// A statement's account id and currency, or the error naming what is missing or wrong.
fn header(
    stmt: &Element,
    path: &str,
    settings: &Settings,
) -> Result<(String, String), PluginError> {
    match header_so_far(stmt, path, settings)? {
        (Some(account), Some(currency)) => Ok((account, currency)),
        (_, None) => Err(PluginError::bad_input(
            format!("{path}, line {}", stmt.line),
            "statement has no CURDEF and no `default_currency` is configured",
        )),
        (None, Some(_)) => Err(PluginError::bad_input(
            format!("{path}, line {}", stmt.line),
            "statement has no BANKACCTFROM/ACCTID or CCACCTFROM/ACCTID",
        )),
    }
}

/// What a statement's elements so far say of its account and currency; an error for a bad `CURDEF`.
fn header_so_far(
    stmt: &Element,
    path: &str,
    settings: &Settings,
) -> Result<(Option<String>, Option<String>), PluginError> {
    let currency = match (stmt.leaf("CURDEF"), &settings.default_currency) {
        (Some(c), _) => Some(currency_code(
            c,
            &format!("{path}/CURDEF, line {}", line_of(stmt, "CURDEF")),
        )?),
        (None, Some(c)) => Some(c.to_ascii_uppercase()),
        (None, None) => None,
    };
    let account = ["BANKACCTFROM", "CCACCTFROM"]
        .iter()
        .find_map(|a| stmt.child(a).and_then(|acct| acct.leaf("ACCTID")))
        .map(str::to_string);
    Ok((account, currency))
}

fn line_of(parent: &Element, name: &str) -> usize {
    parent.child(name).map_or(parent.line, |c| c.line)
}

fn transaction(
    file: &str,
    trn: &Element,
    path: &str,
    account: &str,
    statement_currency: &str,
) -> Result<PaymentRecord, PluginError> {
    let at = |field: &str| format!("{path}/{field}, line {}", line_of(trn, field));
    let required = |field: &str| {
        trn.leaf(field).ok_or_else(|| {
            PluginError::bad_input(
                format!("{path}, line {}", trn.line),
                format!("missing {field}"),
            )
        })
    };

    // A CURRENCY aggregate means the amounts are in that currency rather than CURDEF.
    let currency = match trn.child("CURRENCY").and_then(|c| c.leaf("CURSYM")) {
        Some(c) => currency_code(c, &format!("{path}/CURRENCY/CURSYM"))?,
        None => statement_currency.to_string(),
    };
    let amount = amount(required("TRNAMT")?, &currency)
        .map_err(|m| PluginError::bad_input(at("TRNAMT"), m))?;
    let fitid = required("FITID")?;
    let booked_on =
        date(required("DTPOSTED")?).map_err(|m| PluginError::bad_input(at("DTPOSTED"), m))?;
    let value_date = match trn
        .leaf("DTAVAIL")
        .map(|d| (d, "DTAVAIL"))
        .or(trn.leaf("DTUSER").map(|d| (d, "DTUSER")))
    {
        Some((d, field)) => Some(date(d).map_err(|m| PluginError::bad_input(at(field), m))?),
        None => None,
    };
    let trntype = trn.leaf("TRNTYPE").unwrap_or("").to_ascii_uppercase();
    let kind = match trntype.as_str() {
        "FEE" | "SRVCHG" => PaymentKind::Fee,
        _ => PaymentKind::Transfer,
    };
    let counterparty_name = trn
        .leaf("NAME")
        .or_else(|| trn.child("PAYEE").and_then(|p| p.leaf("NAME")))
        .map(str::to_string);
    let counterparty_account = ["BANKACCTTO", "CCACCTTO"]
        .iter()
        .find_map(|a| trn.child(a).and_then(|acct| acct.leaf("ACCTID")))
        .map(str::to_string);
    // PaymentRecord has no cheque-number field; a real cheque number is the payer's own reference.
    let end_to_end_id = trn
        .leaf("REFNUM")
        .or_else(|| {
            trn.leaf("CHECKNUM")
                .filter(|n| n.chars().any(|c| c.is_ascii_digit() && c != '0'))
        })
        .map(str::to_string);

    let mut record = PaymentRecord::new(format!("{account}:{fitid}"), amount, currency);
    record.booked_on = Some(booked_on);
    record.value_date = value_date;
    record.kind = kind;
    record.counterparty_name = counterparty_name;
    record.counterparty_account = counterparty_account;
    record.remittance = trn.leaf("MEMO").map(str::to_string);
    record.end_to_end_id = end_to_end_id;
    record.source_position = Some(format!("{file}#{path}"));
    Ok(record)
}

fn xml_encoding(head_upper: &str) -> Option<String> {
    let decl_end = head_upper.find("?>")?;
    let decl = &head_upper[..decl_end];
    let start = decl.find("ENCODING=")? + "ENCODING=".len();
    let quoted = &decl[start..];
    let quote = quoted.chars().next()?;
    let value = quoted[1..].split(quote).next()?;
    Some(value.trim().to_string())
}

fn sgml_encoding(head_upper: &str) -> Result<Option<String>, PluginError> {
    let mut encoding = None;
    let mut charset = None;
    for line in head_upper.lines() {
        let line = line.trim();
        if line.starts_with('<') {
            break;
        }
        if let Some(v) = line.strip_prefix("ENCODING:") {
            encoding = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("CHARSET:") {
            charset = Some(v.trim().to_string());
        }
    }
    if matches!(encoding.as_deref(), Some("UTF-8" | "UNICODE")) {
        return Ok(Some("UTF-8".into()));
    }
    Ok(match charset.as_deref() {
        None | Some("NONE" | "") => None,
        Some("1252") => Some("windows-1252".into()),
        Some("8859-1" | "ISO-8859-1" | "ISO8859-1" | "LATIN1" | "LATIN-1") => {
            Some("iso-8859-1".into())
        }
        Some(other) if other.chars().all(|c| c.is_ascii_digit()) => {
            Some(format!("windows-{other}"))
        }
        Some(other) => Some(other.to_string()),
    })
}

/// Where the element body starts, after the SGML header lines or the XML prolog, with its line number.
fn body_start(text: &str) -> Result<(usize, usize), PluginError> {
    let Some(first_tag) = text.find('<') else {
        return Err(PluginError::bad_input(
            "line 1",
            "not an ofx file: no OFXHEADER and no tags",
        ));
    };
    let header = &text[..first_tag];
    for (i, line) in header.lines().enumerate() {
        let line = line.trim().trim_start_matches('\u{feff}');
        let is_header = line.split_once(':').is_some_and(|(k, _)| {
            !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
        if !line.is_empty() && !is_header {
            return Err(PluginError::bad_input(
                format!("line {}", i + 1),
                format!(
                    "not an ofx header line: `{}`",
                    line.chars().take(40).collect::<String>()
                ),
            ));
        }
    }
    if !header.trim().is_empty()
        && !header
            .trim_start_matches('\u{feff}')
            .trim_start()
            .starts_with("OFXHEADER")
    {
        return Err(PluginError::bad_input(
            "line 1",
            "not an ofx file: the header does not start with OFXHEADER",
        ));
    }
    Ok((first_tag, header.matches('\n').count() + 1))
}

/// `YYYYMMDD[HHMMSS[.XXX]][[offset:TZ]]`: the date part is the bank's local booking date.
fn date(raw: &str) -> Result<NaiveDate, String> {
    let bad = || format!("`{raw}` is not an ofx date (YYYYMMDD[HHMMSS[.XXX]][[offset:TZ]])");
    let (stamp, zone) = match raw.find('[') {
        Some(open) => (&raw[..open], Some(&raw[open..])),
        None => (raw, None),
    };
    if let Some(zone) = zone {
        let inner = zone
            .strip_prefix('[')
            .and_then(|z| z.strip_suffix(']'))
            .ok_or_else(bad)?;
        let offset = inner.split(':').next().unwrap_or("");
        let offset = offset.strip_prefix(['+', '-']).unwrap_or(offset);
        let valid = !offset.is_empty()
            && offset.split('.').count() <= 2
            && offset.chars().all(|c| c.is_ascii_digit() || c == '.');
        if !valid {
            return Err(bad());
        }
    }
    let (digits, fraction) = match stamp.split_once('.') {
        Some((d, f)) => (d, Some(f)),
        None => (stamp, None),
    };
    let digits_ok = digits.chars().all(|c| c.is_ascii_digit())
        && matches!(digits.len(), 8 | 12 | 14)
        && fraction.is_none_or(|f| {
            digits.len() == 14 && !f.is_empty() && f.chars().all(|c| c.is_ascii_digit())
        });
    if !digits_ok {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| digits[r].parse::<u32>().map_err(|_| bad());
    let year = i32::try_from(num(0..4)?).map_err(|_| bad())?;
    let date = NaiveDate::from_ymd_opt(year, num(4..6)?, num(6..8)?).ok_or_else(bad)?;
    if digits.len() >= 12
        && (num(8..10)? > 23 || num(10..12)? > 59 || (digits.len() == 14 && num(12..14)? > 60))
    {
        return Err(bad());
    }
    Ok(date)
}

/// A signed amount with at most the currency's minor units, scaled to exactly those units.
fn amount(raw: &str, currency: &str) -> Result<Decimal, String> {
    // Some European producers write `-20,00`.
    let normalised = if raw.contains(',') && !raw.contains('.') {
        raw.replace(',', ".")
    } else {
        raw.to_string()
    };
    let plain = normalised.strip_prefix('+').unwrap_or(&normalised);
    let valid = !plain.is_empty()
        && plain
            .chars()
            .enumerate()
            .all(|(i, c)| c.is_ascii_digit() || c == '.' || (c == '-' && i == 0));
    let parsed = if valid {
        Decimal::from_str(plain).ok()
    } else {
        None
    };
    let Some(value) = parsed else {
        return Err(format!("`{raw}` is not an amount"));
    };
    rescale_to_currency(value, currency).ok_or_else(|| {
        format!(
            "amount `{raw}` has more decimals than {currency} allows ({})",
            minor_units(currency)
        )
    })
}

fn currency_code(raw: &str, location: &str) -> Result<String, PluginError> {
    uppercase_currency_code(raw).ok_or_else(|| {
        PluginError::bad_input(
            location,
            format!("`{raw}` is not an iso 4217 currency code"),
        )
    })
}

settled_plugin_api::export_plugin!(Ofx);

#[cfg(test)]
mod tests;
