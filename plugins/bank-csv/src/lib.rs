//! settled connector plugin `bank-csv`: bank and accounting-package CSV exports, read through a profile
//! (built in or configured) into `payment@1` records.

mod profile;
mod stream;

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};
use std::str::FromStr;

use serde::Deserialize;
use settled_plugin_api::chrono::format::{Item, Parsed, StrftimeItems};
use settled_plugin_api::chrono::{Datelike, NaiveDate};
use settled_plugin_api::money::{minor_units, rescale_to_currency, uppercase_currency_code};
use settled_plugin_api::rust_decimal::Decimal;
use settled_plugin_api::sdk::{payments, StreamParser};
use settled_plugin_api::settings::{settings_from_json, settings_part};
use settled_plugin_api::{
    EntryStatus, FileRequest, Manifest, ParseReply, PaymentKind, PaymentRecord, Plugin,
    PluginError, Role, SniffReply, SniffRequest,
};
use sha2::{Digest, Sha256};

pub use profile::{
    built_in, datev, de_sepa, dotted_date, is_datev_header, quickbooks, recognise, signed, xero,
    Columns, DcFlag, Names, Preamble, Profile, BUILT_IN,
};
pub use stream::CsvStream;

/// Settings as written in the connector's config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSettings {
    /// A built-in profile name or a profile object.
    profile: Option<serde_json::Value>,
    /// Overrides the profile's fixed `currency`.
    currency: Option<String>,
}

/// Settings of a `bank-csv` instance: `{"profile": "<built-in name>"}` or `{"profile": {...}}`, plus an optional
/// `currency` that overrides the profile's fixed currency. Without `profile`, a file whose first lines name a
/// built-in profile ([`recognise`]: DATEV, Xero, QuickBooks) is read with it, any other with `signed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The resolved, validated profile.
    pub profile: Profile,
    /// No profile was configured: the profile is chosen per file by [`recognise`].
    pub recognise: bool,
    /// The connector's `currency` setting, kept for a recognised profile.
    pub currency: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            profile: profile::signed(),
            recognise: true,
            currency: None,
        }
    }
}

impl Settings {
    /// Settings from the connector's JSON (`null` means all defaults).
    pub fn from_json(value: serde_json::Value) -> Result<Self, PluginError> {
        let raw: RawSettings = settings_from_json(value)?;
        let recognise = raw.profile.is_none();
        let mut profile = match raw.profile {
            None => Settings::default().profile,
            Some(serde_json::Value::String(name)) => built_in(&name).ok_or_else(|| {
                PluginError::bad_config(
                    "profile",
                    format!(
                        "no built-in profile `{name}` (built-in: {})",
                        BUILT_IN.join(", ")
                    ),
                )
            })?,
            Some(object @ serde_json::Value::Object(_)) => settings_part(object, "profile")?,
            Some(_) => {
                return Err(PluginError::bad_config(
                    "profile",
                    "expected a built-in profile name or a profile object",
                ))
            }
        };
        let currency = match raw.currency {
            Some(currency) => Some(uppercase_currency_code(&currency).ok_or_else(|| {
                PluginError::bad_config(
                    "currency",
                    format!("`{currency}` is not a three-letter iso 4217 code"),
                )
            })?),
            None => None,
        };
        if currency.is_some() {
            profile.currency.clone_from(&currency);
        }
        profile.validate()?;
        if let Some(c) = &mut profile.currency {
            *c = c.to_ascii_uppercase();
        }
        Ok(Settings {
            profile,
            recognise,
            currency,
        })
    }

    /// The settings for a file starting with `head`, when no profile was configured and its first lines
    /// name a built-in one; `None` means these settings as they are.
    pub fn for_file(&self, head: &[u8]) -> Option<Settings> {
        if !self.recognise {
            return None;
        }
        let head = &head[..head.len().min(RECOGNISE_BYTES)];
        let mut profile = built_in(recognise(&decode_auto(head))?)?;
        if self.currency.is_some() {
            profile.currency.clone_from(&self.currency);
        }
        Some(Settings {
            profile,
            recognise: false,
            currency: self.currency.clone(),
        })
    }
}

/// Bytes of a file's start that [`Settings::for_file`] looks at.
pub const RECOGNISE_BYTES: usize = 4096;

/// What a DATEV-Format header line (line 1) tells about the rows below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatevHeader {
    /// `Datum vom` and `Datum bis`: the period of the batch, which gives `TTMM` dates their year.
    pub from: NaiveDate,
    /// End of the period.
    pub to: NaiveDate,
    /// `WKZ`: the currency of rows that name none.
    pub currency: Option<String>,
    /// `Sachkontenlänge`: ledger accounts have this many digits, customer and supplier accounts one more.
    pub ledger_digits: usize,
}

impl DatevHeader {
    /// Reads line 1 of a DATEV-Format file; errors name line 1 and the header field.
    pub fn read(line: &str) -> Result<DatevHeader, PluginError> {
        let bad = |field: &str, message: String| {
            PluginError::bad_input(format!("line 1, DATEV header field {field}"), message)
        };
        if !is_datev_header(line) {
            return Err(PluginError::bad_input(
                "line 1",
                "no DATEV header: a DATEV-Format file opens with `\"EXTF\";` or `\"DTVF\";` (profile `datev`)",
            ));
        }
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(b';')
            .has_headers(false)
            .flexible(true)
            .from_reader(line.as_bytes());
        let mut record = csv::StringRecord::new();
        if !reader
            .read_record(&mut record)
            .map_err(|e| csv_error(&e, 1))?
        {
            return Err(PluginError::bad_input("line 1", "empty DATEV header"));
        }
        let field = |n: usize| record.get(n - 1).map_or("", str::trim);
        if field(3) != "21" {
            return Err(bad(
                "3 (Datenkategorie)",
                format!(
                    "`{}` is not 21: this DATEV file is not a Buchungsstapel (booking batch)",
                    field(3)
                ),
            ));
        }
        let date = |n: usize, name: &str| {
            NaiveDate::parse_from_str(field(n), "%Y%m%d").map_err(|_| {
                bad(
                    &format!("{n} ({name})"),
                    format!("`{}` is not a date JJJJMMTT", field(n)),
                )
            })
        };
        let from = date(15, "Datum vom")?;
        let to = date(16, "Datum bis")?;
        if to < from {
            return Err(bad(
                "16 (Datum bis)",
                format!("the period ends ({to}) before it starts ({from})"),
            ));
        }
        let ledger_digits = match field(14).parse::<usize>() {
            Ok(n) if (4..=8).contains(&n) => n,
            _ => {
                return Err(bad(
                    "14 (Sachkontenlänge)",
                    format!("`{}` is not an account length from 4 to 8", field(14)),
                ))
            }
        };
        let currency = match field(22) {
            "" => None,
            text => Some(uppercase_currency_code(text).ok_or_else(|| {
                bad(
                    "22 (WKZ)",
                    format!("`{text}` is not an iso 4217 currency code"),
                )
            })?),
        };
        Ok(DatevHeader {
            from,
            to,
            currency,
            ledger_digits,
        })
    }

    /// Whether `account` is a customer (debitor) account: one digit longer than ledger accounts, 1 to 6 first.
    fn is_customer(&self, account: &str) -> bool {
        account.len() == self.ledger_digits + 1
            && account.bytes().all(|b| b.is_ascii_digit())
            && matches!(account.as_bytes()[0], b'1'..=b'6')
    }

    /// The day of a `TTMM` date within the batch's period.
    fn day(&self, text: &str) -> Option<NaiveDate> {
        if text.len() != 4 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let day = text[..2].parse().ok()?;
        let month = text[2..].parse().ok()?;
        (self.from.year()..=self.to.year())
            .filter_map(|year| NaiveDate::from_ymd_opt(year, month, day))
            .find(|d| (self.from..=self.to).contains(d))
    }
}

/// The first line of `text`, without its line end.
fn first_line(text: &str) -> &str {
    text.split('\n')
        .next()
        .unwrap_or_default()
        .trim_end_matches('\r')
}

/// The `bank-csv` plugin.
#[derive(Debug, Clone)]
pub struct BankCsv {
    settings: Settings,
}

impl Plugin for BankCsv {
    fn manifest() -> Manifest {
        Manifest {
            name: "bank-csv".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            roles: vec![Role::File],
            description: "bank and accounting CSV exports through configurable profiles".into(),
        }
    }

    fn configure(settings: serde_json::Value) -> Result<Self, PluginError> {
        Ok(BankCsv {
            settings: Settings::from_json(settings)?,
        })
    }

    fn sniff(&self, request: SniffRequest) -> SniffReply {
        SniffReply {
            confidence: sniff(&request.name, &request.head),
        }
    }

    fn stream_parser(&self, name: &str) -> Option<Box<dyn StreamParser>> {
        Some(Box::new(CsvStream::new(name, &self.settings)))
    }

    fn parse(&self, request: FileRequest) -> Result<ParseReply, PluginError> {
        parse(&request.name, &request.content, &self.settings).map(payments)
    }
}

/// How likely a file is a delimited export. Always below the specific formats: plenty of files are CSV-shaped.
pub fn sniff(name: &str, head: &[u8]) -> u8 {
    let lower = name.to_ascii_lowercase();
    let by_name = lower.ends_with(".csv") || lower.ends_with(".tsv");
    let text = decode_auto(head);
    if text.lines().next().is_some_and(is_datev_header) {
        // a DATEV-Format file: its header line has fewer fields than the column row below it
        return 50;
    }
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(5)
        .collect();
    let delimited = [',', ';', '\t', '|'].iter().any(|d| {
        let counts: Vec<usize> = lines.iter().map(|l| l.matches(*d).count()).collect();
        counts.len() >= 2 && counts[0] >= 1 && counts.iter().all(|c| *c == counts[0])
    });
    let binary = text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\r' | '\n'));
    match (by_name, delimited && !binary) {
        (true, true) => 50,
        (true, false) => 20,
        (false, true) => 25,
        (false, false) => 0,
    }
}

/// How many non-blank rows (after `skip_rows`) may precede the header row.
const HEADER_SEARCH_ROWS: usize = 20;

/// Parse a whole export into payment records, in file order. Any bad row fails the whole file,
/// naming the line and the column header.
pub fn parse(
    name: &str,
    bytes: &[u8],
    settings: &Settings,
) -> Result<Vec<PaymentRecord>, PluginError> {
    let recognised = settings.for_file(bytes);
    let settings = recognised.as_ref().unwrap_or(settings);
    if bytes.is_empty() {
        return Err(PluginError::bad_input("file", "empty file"));
    }
    let text = decode(bytes, &settings.profile.encoding)?;
    reject_binary(&text)?;
    let (profile, datev) = with_preamble(&settings.profile, first_line(&text))?;
    let profile = profile.as_ref();
    let preamble_lines = usize::from(datev.is_some());
    let (body, skipped) = skip_lines(&text, profile.skip_rows + preamble_lines);
    let date_formats = compile_dates(profile)?;

    let mut reader = csv::ReaderBuilder::new()
        .delimiter(profile.delimiter as u8)
        .has_headers(false)
        .flexible(true)
        .from_reader(body.as_bytes());
    let mut record = csv::ByteRecord::new();
    let mut lines = LineCounter::default();
    let mut line_of = |position: Option<&csv::Position>| {
        lines
            .line(body.as_bytes(), position.map_or(0, csv::Position::byte))
            .saturating_add(skipped)
    };
    // Exports often open with a few lines of account details: the header is the first row that fits the profile.
    let mut first_error = None;
    let mut candidates = 0;
    let layout = loop {
        let more = reader
            .read_byte_record(&mut record)
            .map_err(|e| csv_error(&e, line_of(e.position())))?;
        if !more {
            return Err(first_error.unwrap_or_else(|| {
                PluginError::bad_input("file", "no header row: the file has only blank lines")
            }));
        }
        if is_blank(&record) {
            continue;
        }
        match Layout::from_header(&record, profile, line_of(record.position())) {
            Ok(layout) => break layout,
            Err(e) => {
                candidates += 1;
                let first = first_error.get_or_insert(e);
                if candidates >= HEADER_SEARCH_ROWS {
                    return Err(first.clone());
                }
            }
        }
    };
    let mut gate = RowGate::new(profile, &layout)?;
    // Sizing the outputs up front avoids rehashing and copying them as a million-row file grows.
    let rows_estimate = body.bytes().filter(|b| *b == b'\n').count() + 1;

    let mut state = RowState {
        seen: HashMap::with_capacity_and_hasher(rows_estimate, BuildHasherDefault::default()),
        ..RowState::default()
    };
    let mut rows = RowParser {
        file: name,
        profile,
        layout: &layout,
        date_formats: &date_formats,
        datev: datev.as_ref(),
        state: &mut state,
    };
    let mut out = Vec::with_capacity(rows_estimate);
    loop {
        let more = reader
            .read_byte_record(&mut record)
            .map_err(|e| csv_error(&e, line_of(e.position())))?;
        if !more {
            break;
        }
        if is_blank(&record) {
            continue;
        }
        gate.admit(&record, line_of(record.position()), |row, line| {
            out.extend(rows.row(row, line)?);
            Ok(())
        })?;
    }
    Ok(out)
}

/// The profile for a file whose first line is `line`, and its DATEV header when the profile has one: the
/// header's currency becomes the fixed currency unless the settings name one.
fn with_preamble<'a>(
    profile: &'a Profile,
    line: &str,
) -> Result<(Cow<'a, Profile>, Option<DatevHeader>), PluginError> {
    match profile.preamble {
        Preamble::None => Ok((Cow::Borrowed(profile), None)),
        Preamble::Datev => {
            let header = DatevHeader::read(line)?;
            let mut profile = Cow::Borrowed(profile);
            if profile.currency.is_none() && header.currency.is_some() {
                profile.to_mut().currency.clone_from(&header.currency);
            }
            Ok((profile, Some(header)))
        }
    }
}

/// Line numbers (from 1) of rows in a text read front to back. A row's csv position is where the
/// reader started looking for it: before the blank lines above it, and in a CRLF file at the `\n` that
/// ends the line above, so the csv line number named a line too low.
#[derive(Default)]
struct LineCounter {
    byte: usize,
    newlines: usize,
}

impl LineCounter {
    /// The line of the first character at or after byte `byte` of `text` that is not a line end;
    /// offsets asked for should not go backwards (that recounts).
    fn line(&mut self, text: &[u8], byte: u64) -> usize {
        let mut byte = usize::try_from(byte).unwrap_or(usize::MAX).min(text.len());
        while text.get(byte).is_some_and(|b| matches!(b, b'\r' | b'\n')) {
            byte += 1;
        }
        if byte < self.byte {
            *self = LineCounter::default();
        }
        self.newlines += count_newlines(&text[self.byte..byte]);
        self.byte = byte;
        self.newlines + 1
    }
}

fn count_newlines(text: &[u8]) -> usize {
    text.iter().filter(|b| **b == b'\n').count()
}

fn csv_error(error: &csv::Error, line: usize) -> PluginError {
    PluginError::bad_input(format!("line {line}"), format!("unreadable csv: {error}"))
}

/// The rows after the header on their way to the row parser: rows the profile says are no bookings
/// (`skip_rows_matching`, `skip_rows_without_date`) are dropped, and the last `skip_trailing_rows` are
/// held back, since only the end of the file shows which rows are the last.
struct RowGate {
    patterns: Option<regex::RegexSet>,
    without_date: bool,
    date: usize,
    delimiter: char,
    trailing: usize,
    held: VecDeque<(csv::ByteRecord, usize)>,
    /// The row's fields joined by the delimiter, for the patterns.
    text: String,
}

impl RowGate {
    fn new(profile: &Profile, layout: &Layout) -> Result<RowGate, PluginError> {
        let patterns = if profile.skip_rows_matching.is_empty() {
            None
        } else {
            let set = regex::RegexSet::new(&profile.skip_rows_matching).map_err(|e| {
                PluginError::bad_config(
                    "profile.skip_rows_matching",
                    format!("not a regular expression: {e}"),
                )
            })?;
            Some(set)
        };
        Ok(RowGate {
            patterns,
            without_date: profile.skip_rows_without_date,
            date: layout.date,
            delimiter: profile.delimiter,
            trailing: profile.skip_trailing_rows,
            held: VecDeque::with_capacity(profile.skip_trailing_rows + 1),
            text: String::new(),
        })
    }

    /// Takes the next non-blank row and passes on, to `parse`, the row (maybe an earlier one) now known
    /// to be neither trailing nor skipped.
    fn admit(
        &mut self,
        record: &csv::ByteRecord,
        line: usize,
        mut parse: impl FnMut(&csv::ByteRecord, usize) -> Result<(), PluginError>,
    ) -> Result<(), PluginError> {
        if self.trailing == 0 {
            if !self.skips(record) {
                parse(record, line)?;
            }
            return Ok(());
        }
        self.held.push_back((record.clone(), line));
        if self.held.len() > self.trailing {
            if let Some((row, line)) = self.held.pop_front() {
                if !self.skips(&row) {
                    parse(&row, line)?;
                }
            }
        }
        Ok(())
    }

    fn skips(&mut self, record: &csv::ByteRecord) -> bool {
        let no_date = record
            .get(self.date)
            .is_none_or(|f| f.iter().all(u8::is_ascii_whitespace));
        if self.without_date && no_date {
            return true;
        }
        let Some(patterns) = &self.patterns else {
            return false;
        };
        self.text.clear();
        for (i, field) in record.iter().enumerate() {
            if i > 0 {
                self.text.push(self.delimiter);
            }
            self.text.push_str(&String::from_utf8_lossy(field));
        }
        patterns.is_match(&self.text)
    }
}

fn is_blank(record: &csv::ByteRecord) -> bool {
    record.iter().all(|f| f.iter().all(u8::is_ascii_whitespace))
}

/// Column indexes of one file, resolved from its header row.
struct Layout {
    headers: Vec<String>,
    date: usize,
    value_date: Option<usize>,
    amount: AmountColumns,
    currency: Option<usize>,
    counterparty: Option<usize>,
    account: Option<usize>,
    remittance: Option<usize>,
    reference: Option<usize>,
    end_to_end_id: Option<usize>,
    id: Option<usize>,
    original_id: Option<usize>,
    /// The status column and its values meaning pending.
    status: Option<(usize, Vec<String>)>,
    /// DATEV: the `Konto` and `Gegenkonto` columns, which say whose side the Soll/Haben flag is.
    accounts: Option<(usize, usize)>,
}

enum AmountColumns {
    Signed(usize),
    Flagged {
        amount: usize,
        flag: usize,
        credit: Vec<String>,
        debit: Vec<String>,
    },
    DebitCredit {
        debit: Option<usize>,
        credit: Option<usize>,
    },
}

impl Layout {
    fn from_header(
        record: &csv::ByteRecord,
        profile: &Profile,
        line: usize,
    ) -> Result<Layout, PluginError> {
        let headers: Vec<String> = record
            .iter()
            .map(|h| {
                String::from_utf8_lossy(h)
                    .trim()
                    .trim_start_matches('\u{feff}')
                    .trim()
                    .to_string()
            })
            .collect();
        let find = |names: &Names| {
            names.as_slice().iter().find_map(|n| {
                headers.iter().position(|h| {
                    h.eq_ignore_ascii_case(n.trim()) || h.to_lowercase() == n.trim().to_lowercase()
                })
            })
        };
        let find_opt = |names: &Option<Names>| names.as_ref().and_then(&find);
        let missing = |what: &str, names: &[&Names]| {
            let wanted: Vec<String> = names
                .iter()
                .flat_map(|n| n.as_slice())
                .map(|n| format!("`{n}`"))
                .collect();
            let mut message = format!(
                "no {what} column in the header row (looked for {}; found {})",
                wanted.join(", "),
                headers
                    .iter()
                    .map(|h| format!("`{h}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if headers.len() == 1 {
                let _ = write!(
                    message,
                    "; the row has a single column: is the delimiter `{}` right?",
                    profile.delimiter.escape_default()
                );
            }
            PluginError::bad_input(format!("line {line}"), message)
        };
        let c = &profile.columns;
        let date = find(&c.date).ok_or_else(|| missing("date", &[&c.date]))?;
        let amount = match find_opt(&c.amount) {
            Some(amount) => match c
                .dc_flag
                .as_ref()
                .and_then(|f| find(&f.column).map(|i| (f, i)))
            {
                Some((flag, index)) => AmountColumns::Flagged {
                    amount,
                    flag: index,
                    credit: flag.credit.iter().map(|v| v.trim().to_string()).collect(),
                    debit: flag.debit.iter().map(|v| v.trim().to_string()).collect(),
                },
                None => AmountColumns::Signed(amount),
            },
            None => {
                let debit = find_opt(&c.debit);
                let credit = find_opt(&c.credit);
                if debit.is_none() && credit.is_none() {
                    let all: Vec<&Names> = [&c.amount, &c.debit, &c.credit]
                        .into_iter()
                        .flatten()
                        .collect();
                    return Err(missing("amount", &all));
                }
                AmountColumns::DebitCredit { debit, credit }
            }
        };
        let currency = find_opt(&c.currency);
        if currency.is_none() && profile.currency.is_none() {
            let wanted: Vec<&Names> = c.currency.iter().collect();
            return Err(PluginError::bad_input(
                format!("line {line}"),
                format!(
                    "{}; set a fixed `currency` in the settings",
                    missing("currency", &wanted).message
                ),
            ));
        }
        let accounts = match profile.preamble {
            Preamble::None => None,
            Preamble::Datev => {
                let konto = profile::names(&["Konto"]);
                let gegenkonto = profile::names(&["Gegenkonto (ohne BU-Schlüssel)", "Gegenkonto"]);
                let k = find(&konto).ok_or_else(|| missing("Konto", &[&konto]))?;
                let g = find(&gegenkonto).ok_or_else(|| missing("Gegenkonto", &[&gegenkonto]))?;
                if !matches!(amount, AmountColumns::Flagged { .. }) {
                    let flag: Vec<&Names> = c.dc_flag.iter().map(|f| &f.column).collect();
                    return Err(missing("Soll/Haben-Kennzeichen", &flag));
                }
                Some((k, g))
            }
        };
        Ok(Layout {
            accounts,
            date,
            value_date: find_opt(&c.value_date),
            amount,
            currency,
            counterparty: find_opt(&c.counterparty),
            account: find_opt(&c.account),
            remittance: find_opt(&c.remittance),
            reference: find_opt(&c.reference),
            end_to_end_id: find_opt(&c.end_to_end_id),
            id: find_opt(&c.id),
            original_id: find_opt(&c.original_id),
            status: c.status.as_ref().and_then(|st| {
                find(&st.column)
                    .map(|i| (i, st.pending.iter().map(|v| v.trim().to_string()).collect()))
            }),
            headers,
        })
    }
}

/// Occurrence counts keyed by a prefix of a SHA-256 digest, which is already uniformly distributed.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// What row parsing carries from one row to the next (and, when streaming, from one chunk to the next).
#[derive(Default)]
struct RowState {
    /// Exports list many rows per day: the last date text and its parse are reused.
    last_date: (String, Option<NaiveDate>),
    scratch: String,
    /// Occurrences of each content hash so far, for the ids of identical rows.
    seen: HashMap<u64, u32, BuildHasherDefault<DigestHasher>>,
}

struct RowParser<'a> {
    file: &'a str,
    profile: &'a Profile,
    layout: &'a Layout,
    date_formats: &'a [Vec<Item<'a>>],
    /// The DATEV header of the file, with the profile's `datev` preamble.
    datev: Option<&'a DatevHeader>,
    state: &'a mut RowState,
}

impl RowParser<'_> {
    /// The payment of one row, or none for a row the profile drops (DATEV rows that credit no customer).
    fn row(
        &mut self,
        record: &csv::ByteRecord,
        line: usize,
    ) -> Result<Option<PaymentRecord>, PluginError> {
        let layout = self.layout;
        let profile = self.profile;
        let at = |column: usize| {
            let header = layout.headers.get(column).map_or("", String::as_str);
            format!("line {line}, column \"{header}\"")
        };
        let field = |column: usize| -> Result<&str, PluginError> {
            let raw = record.get(column).ok_or_else(|| {
                PluginError::bad_input(
                    at(column),
                    format!(
                        "the row has {} fields, the header {}",
                        record.len(),
                        layout.headers.len()
                    ),
                )
            })?;
            std::str::from_utf8(raw)
                .map(str::trim)
                .map_err(|_| PluginError::bad_input(at(column), "invalid text encoding"))
        };
        let optional = |column: Option<usize>| -> Result<Option<&str>, PluginError> {
            match column {
                Some(c) => Ok(Some(field(c)?).filter(|v| !v.is_empty())),
                None => Ok(None),
            }
        };

        let date_text = field(layout.date)?;
        if date_text.is_empty() {
            return Err(PluginError::bad_input(at(layout.date), "empty date"));
        }
        let booked_on = self
            .date(date_text)
            .map_err(|m| PluginError::bad_input(at(layout.date), m))?;
        let value_date = match layout.value_date {
            Some(c) => match field(c)? {
                "" => None,
                text => Some(
                    self.date(text)
                        .map_err(|m| PluginError::bad_input(at(c), m))?,
                ),
            },
            None => None,
        };

        let currency = match layout.currency.map(|c| (c, field(c))) {
            Some((c, Ok(text))) if !text.is_empty() => {
                uppercase_currency_code(text).ok_or_else(|| {
                    PluginError::bad_input(
                        at(c),
                        format!("`{text}` is not an iso 4217 currency code"),
                    )
                })?
            }
            Some((_, Err(e))) => return Err(e),
            column => match &profile.currency {
                Some(fixed) => fixed.clone(),
                None => {
                    let location = match column {
                        Some((c, _)) => at(c),
                        None => format!("line {line}"),
                    };
                    return Err(PluginError::bad_input(
                        location,
                        "empty currency and no fixed `currency` in the settings",
                    ));
                }
            },
        };

        let (amount, amount_column) = match &layout.amount {
            AmountColumns::Signed(c) => (
                self.amount(field(*c)?)
                    .map_err(|m| PluginError::bad_input(at(*c), m))?,
                *c,
            ),
            AmountColumns::Flagged {
                amount,
                flag,
                credit,
                debit,
            } => {
                let value = self
                    .amount(field(*amount)?)
                    .map_err(|m| PluginError::bad_input(at(*amount), m))?
                    .abs();
                let flag_text = field(*flag)?;
                let value = if credit.iter().any(|v| v.eq_ignore_ascii_case(flag_text)) {
                    value
                } else if debit.iter().any(|v| v.eq_ignore_ascii_case(flag_text)) {
                    -value
                } else {
                    return Err(PluginError::bad_input(
                        at(*flag),
                        format!(
                            "`{flag_text}` is neither a credit ({}) nor a debit ({}) flag",
                            credit.join(", "),
                            debit.join(", ")
                        ),
                    ));
                };
                (value, *amount)
            }
            AmountColumns::DebitCredit { debit, credit } => {
                let mut filled = false;
                let mut side = |column: Option<usize>| -> Result<Option<Decimal>, PluginError> {
                    match column {
                        Some(c) => match field(c)? {
                            "" => Ok(None),
                            text => {
                                filled = true;
                                let value = self
                                    .amount(text)
                                    .map_err(|m| PluginError::bad_input(at(c), m))?;
                                Ok(Some(value.abs()).filter(|v| !v.is_zero()))
                            }
                        },
                        None => Ok(None),
                    }
                };
                let d = side(*debit)?;
                let c = side(*credit)?;
                let first = debit.or(*credit).unwrap_or(0);
                match (d, c) {
                    (Some(d), None) => (-d, debit.unwrap_or(first)),
                    (None, Some(c)) => (c, credit.unwrap_or(first)),
                    (None, None) if filled => (Decimal::ZERO, first),
                    (None, None) => {
                        return Err(PluginError::bad_input(
                            format!("line {line}"),
                            "neither the debit nor the credit column holds an amount",
                        ))
                    }
                    (Some(_), Some(_)) => {
                        return Err(PluginError::bad_input(
                            format!("line {line}"),
                            "both the debit and the credit column hold an amount",
                        ))
                    }
                }
            }
        };
        let amount = match (self.datev, layout.accounts) {
            (Some(header), Some((konto, gegenkonto))) => {
                // the flag is Konto's side: `H` (positive here) credits Konto, `S` credits Gegenkonto
                for column in [konto, gegenkonto] {
                    let number = field(column)?;
                    if number.is_empty()
                        || number.len() > 9
                        || !number.bytes().all(|b| b.is_ascii_digit())
                    {
                        return Err(PluginError::bad_input(
                            at(column),
                            format!("`{number}` is not an account number (1 to 9 digits)"),
                        ));
                    }
                }
                let credited = if amount > Decimal::ZERO {
                    konto
                } else {
                    gegenkonto
                };
                if !header.is_customer(field(credited)?) {
                    return Ok(None);
                }
                amount.abs()
            }
            _ => amount,
        };
        let Some(amount) = rescale_to_currency(amount, &currency) else {
            return Err(PluginError::bad_input(
                at(amount_column),
                format!(
                    "amount has more decimals than {currency} allows ({})",
                    minor_units(&currency)
                ),
            ));
        };

        let counterparty_name = optional(layout.counterparty)?;
        let counterparty_account = optional(layout.account)?;
        let remittance = optional(layout.remittance)?;
        let reference = optional(layout.reference)?;
        let end_to_end_id = optional(layout.end_to_end_id)?;
        let external_id = match optional(layout.id)? {
            Some(id) => id.to_string(),
            None => {
                self.state.scratch.clear();
                let _ = write!(
                    self.state.scratch,
                    "{booked_on}\u{1f}{}\u{1f}{amount}\u{1f}{currency}",
                    value_date.map(|d| d.to_string()).unwrap_or_default()
                );
                let mut hasher = Sha256::new();
                hasher.update(self.state.scratch.as_bytes());
                for part in [
                    counterparty_name,
                    counterparty_account,
                    remittance,
                    reference,
                    end_to_end_id,
                ] {
                    hasher.update([0x1f]);
                    hasher.update(part.unwrap_or("").as_bytes());
                }
                let digest = hasher.finalize();
                let mut prefix = [0u8; 8];
                prefix.copy_from_slice(&digest[..8]);
                let occurrence = self
                    .state
                    .seen
                    .entry(u64::from_be_bytes(prefix))
                    .or_insert(0);
                let id = content_id(&digest, *occurrence);
                *occurrence += 1;
                id
            }
        };

        let mut out = PaymentRecord::new(external_id, amount, currency);
        out.booked_on = Some(booked_on);
        out.value_date = value_date;
        out.counterparty_name = counterparty_name.map(str::to_string);
        out.counterparty_account = counterparty_account.map(str::to_string);
        out.remittance = remittance.map(str::to_string);
        out.structured_reference = reference.map(str::to_string);
        out.end_to_end_id = end_to_end_id.map(str::to_string);
        if let Some(original) = optional(layout.original_id)?.filter(|_| amount < Decimal::ZERO) {
            out.kind = PaymentKind::Refund;
            out.original_external_id = Some(original.to_string());
        }
        if let Some((column, pending)) = &layout.status {
            let value = field(*column)?;
            if pending.iter().any(|p| p.eq_ignore_ascii_case(value)) {
                out.status = EntryStatus::Pending;
            }
        }
        out.source_position = Some(format!("{}#line {line}", self.file));
        Ok(Some(out))
    }

    fn date(&mut self, text: &str) -> Result<NaiveDate, String> {
        if self.state.last_date.0 == text {
            if let Some(date) = self.state.last_date.1 {
                return Ok(date);
            }
        }
        if let Some(header) = self.datev {
            if text.len() == 4 {
                return header.day(text).ok_or_else(|| {
                    format!(
                        "`{text}` is no day TTMM within the batch's period {} to {} (DATEV header fields 15 and 16)",
                        header.from, header.to
                    )
                });
            }
        }
        let parsed = self.date_formats.iter().find_map(|items| {
            let mut parsed = Parsed::new();
            settled_plugin_api::chrono::format::parse(&mut parsed, text, items.iter()).ok()?;
            parsed.to_naive_date().ok()
        });
        match parsed {
            Some(date) => {
                self.state.last_date.0.clear();
                self.state.last_date.0.push_str(text);
                self.state.last_date.1 = Some(date);
                Ok(date)
            }
            None => Err(format!(
                "`{text}` does not match the date format {}",
                self.profile
                    .date_format
                    .as_slice()
                    .iter()
                    .map(|f| format!("`{f}`"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            )),
        }
    }

    fn amount(&mut self, text: &str) -> Result<Decimal, String> {
        parse_amount(
            text,
            self.profile.decimal_mark,
            self.profile.thousands_separator,
            &mut self.state.scratch,
        )
    }
}

/// `<hex sha256>:<occurrence>`, written straight into one allocation (this runs once per row).
fn content_id(digest: &[u8], occurrence: u32) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(digest.len() * 2 + 11);
    for b in digest {
        id.push(char::from(HEX[usize::from(b >> 4)]));
        id.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    let _ = write!(id, ":{occurrence}");
    id
}

/// Parse `-1.234,56`, `(12.00)`, `12,00-`, `+5` with the profile's marks, into `scratch` then a Decimal.
fn parse_amount(
    text: &str,
    decimal_mark: char,
    thousands: Option<char>,
    scratch: &mut String,
) -> Result<Decimal, String> {
    let bad = || {
        let mut m = format!("`{text}` is not an amount with decimal mark `{decimal_mark}`");
        if let Some(t) = thousands {
            let _ = write!(m, " and thousands separator `{t}`");
        }
        m
    };
    let mut body = text.trim();
    let mut negative = false;
    if let Some(inner) = body.strip_prefix('(').and_then(|b| b.strip_suffix(')')) {
        negative = true;
        body = inner.trim();
    } else if let Some(inner) = body.strip_suffix('-') {
        negative = true;
        body = inner.trim_end();
    } else if let Some(inner) = body.strip_prefix('-') {
        negative = true;
        body = inner.trim_start();
    } else if let Some(inner) = body.strip_prefix('+') {
        body = inner.trim_start();
    }
    scratch.clear();
    if negative {
        scratch.push('-');
    }
    let mut seen_decimal = false;
    let mut digits_in_group = 0usize;
    let mut seen_thousands = false;
    let mut digits = 0usize;
    for c in body.chars() {
        if c.is_ascii_digit() {
            scratch.push(c);
            digits += 1;
            digits_in_group += 1;
        } else if c == decimal_mark && !seen_decimal {
            if seen_thousands && digits_in_group != 3 {
                return Err(bad());
            }
            seen_decimal = true;
            scratch.push('.');
        } else if Some(c) == thousands && !seen_decimal {
            // Groups after the first are exactly three digits: `12.50` is not 1250 with `.` as a separator.
            if digits_in_group == 0
                || (seen_thousands && digits_in_group != 3)
                || digits_in_group > 3
            {
                return Err(bad());
            }
            seen_thousands = true;
            digits_in_group = 0;
        } else {
            return Err(bad());
        }
    }
    if digits == 0 || (seen_thousands && !seen_decimal && digits_in_group != 3) {
        return Err(bad());
    }
    Decimal::from_str(scratch).map_err(|_| bad())
}

fn compile_dates(profile: &Profile) -> Result<Vec<Vec<Item<'_>>>, PluginError> {
    profile
        .date_format
        .as_slice()
        .iter()
        .map(|f| {
            StrftimeItems::new(f).parse().map_err(|_| {
                PluginError::bad_config(
                    "profile.date_format",
                    format!("`{f}` is not a chrono strftime date format"),
                )
            })
        })
        .collect()
}

fn skip_lines(text: &str, count: usize) -> (&str, usize) {
    let mut rest = text;
    let mut skipped = 0;
    while skipped < count {
        match rest.find('\n') {
            Some(nl) => rest = &rest[nl + 1..],
            None => rest = "",
        }
        skipped += 1;
    }
    (rest, skipped)
}

/// Control characters other than tab, CR, LF and form feed mean this is not a text export.
fn reject_binary(text: &str) -> Result<(), PluginError> {
    let position = text
        .bytes()
        .position(|b| b < 0x20 && !matches!(b, b'\t' | b'\r' | b'\n' | 0x0c));
    match position {
        Some(p) => {
            let line = text.as_bytes()[..p].iter().filter(|b| **b == b'\n').count() + 1;
            Err(PluginError::bad_input(
                format!("line {line}"),
                "binary data: this is not a text csv export",
            ))
        }
        None => Ok(()),
    }
}

/// Decode by the profile's encoding, or detect: BOM, UTF-16 without BOM, valid UTF-8, else Windows-1252.
fn decode<'a>(bytes: &'a [u8], encoding: &str) -> Result<Cow<'a, str>, PluginError> {
    if encoding.eq_ignore_ascii_case("auto") {
        return Ok(decode_auto(bytes));
    }
    let Some(encoding) = encoding_rs::Encoding::for_label(encoding.as_bytes()) else {
        return Err(PluginError::bad_config(
            "profile.encoding",
            format!("unknown encoding `{encoding}`"),
        ));
    };
    let (text, _, malformed) = encoding.decode(bytes);
    if malformed {
        let valid = match std::str::from_utf8(bytes) {
            Err(e) if encoding == encoding_rs::UTF_8 => e.valid_up_to(),
            _ => 0,
        };
        let line = bytes[..valid].iter().filter(|b| **b == b'\n').count() + 1;
        return Err(PluginError::bad_input(
            format!("line {line}"),
            format!("bytes that are not {}", encoding.name()),
        ));
    }
    Ok(text)
}

fn decode_auto(bytes: &[u8]) -> Cow<'_, str> {
    match detect(bytes) {
        Detected::Bom(encoding, bom) => encoding.decode_without_bom_handling(&bytes[bom..]).0,
        Detected::Utf16(encoding) => encoding.decode_without_bom_handling(bytes).0,
        Detected::Utf8OrWindows1252 => match std::str::from_utf8(bytes) {
            Ok(text) => Cow::Borrowed(text),
            Err(_) => {
                encoding_rs::WINDOWS_1252
                    .decode_without_bom_handling(bytes)
                    .0
            }
        },
    }
}

/// What automatic detection makes of a file from its first bytes.
enum Detected {
    /// A byte order mark of this many bytes names the encoding.
    Bom(&'static encoding_rs::Encoding, usize),
    /// UTF-16 without a BOM.
    Utf16(&'static encoding_rs::Encoding),
    /// UTF-8 if the whole file is valid UTF-8, else Windows-1252.
    Utf8OrWindows1252,
}

/// Looks at the BOM and at most the first 128 bytes.
fn detect(bytes: &[u8]) -> Detected {
    if let Some((encoding, bom)) = encoding_rs::Encoding::for_bom(bytes) {
        return Detected::Bom(encoding, bom);
    }
    // UTF-16 without a BOM: ASCII text has a zero in every other byte.
    if bytes.len() >= 4 {
        let even_zeros = bytes
            .iter()
            .step_by(2)
            .take(64)
            .filter(|b| **b == 0)
            .count();
        let odd_zeros = bytes
            .iter()
            .skip(1)
            .step_by(2)
            .take(64)
            .filter(|b| **b == 0)
            .count();
        let pairs = (bytes.len() / 2).min(64);
        if odd_zeros * 10 >= pairs * 9 && even_zeros == 0 {
            return Detected::Utf16(encoding_rs::UTF_16LE);
        }
        if even_zeros * 10 >= pairs * 9 && odd_zeros == 0 {
            return Detected::Utf16(encoding_rs::UTF_16BE);
        }
    }
    Detected::Utf8OrWindows1252
}

settled_plugin_api::export_plugin!(BankCsv);

#[cfg(test)]
mod tests;
