//! CSV layouts: the profile a user configures, and the built-in ones.

use serde::Deserialize;
use settled_plugin_api::chrono::format::StrftimeItems;
use settled_plugin_api::money::uppercase_currency_code;
use settled_plugin_api::PluginError;

/// One header name, or several alternatives (the first one present in the file is used).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Names {
    /// A single header name.
    One(String),
    /// Alternatives, tried in order.
    Many(Vec<String>),
}

impl Names {
    /// The alternatives as a slice.
    pub fn as_slice(&self) -> &[String] {
        match self {
            Names::One(name) => std::slice::from_ref(name),
            Names::Many(names) => names,
        }
    }
}

pub(crate) fn names(list: &[&str]) -> Names {
    Names::Many(list.iter().map(|s| s.to_string()).collect())
}

/// A debit/credit indicator column next to an unsigned amount.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DcFlag {
    /// Header of the flag column.
    pub column: Names,
    /// Values meaning money in (compared case-insensitively), e.g. `["H", "CR"]`.
    pub credit: Vec<String>,
    /// Values meaning money out, e.g. `["S", "DR"]`.
    pub debit: Vec<String>,
}

/// A booking-status column: rows whose value is one of `pending` are pending (never settle invoices).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusColumn {
    /// Header of the status column.
    pub column: Names,
    /// Values meaning not yet booked (compared case-insensitively), e.g. `["Umsatz vorgemerkt"]`.
    pub pending: Vec<String>,
}

/// Which header holds what. Only `date` and one way of giving the amount are required.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Columns {
    /// Booking date.
    pub date: Names,
    /// Value date.
    #[serde(default)]
    pub value_date: Option<Names>,
    /// Signed amount (or unsigned, with `dc_flag`).
    #[serde(default)]
    pub amount: Option<Names>,
    /// Debit amount column (used when no `amount` column is present); its values are money out.
    #[serde(default)]
    pub debit: Option<Names>,
    /// Credit amount column, money in.
    #[serde(default)]
    pub credit: Option<Names>,
    /// Debit/credit flag for an unsigned `amount`; used when the file has that column.
    #[serde(default)]
    pub dc_flag: Option<DcFlag>,
    /// ISO 4217 currency per row.
    #[serde(default)]
    pub currency: Option<Names>,
    /// The other party's name.
    #[serde(default)]
    pub counterparty: Option<Names>,
    /// The other party's IBAN or account number.
    #[serde(default)]
    pub account: Option<Names>,
    /// Free-text remittance information.
    #[serde(default)]
    pub remittance: Option<Names>,
    /// A payment reference (becomes `structured_reference`).
    #[serde(default)]
    pub reference: Option<Names>,
    /// The payer's end-to-end id.
    #[serde(default)]
    pub end_to_end_id: Option<Names>,
    /// The bank's transaction id; the dedupe key when present.
    #[serde(default)]
    pub id: Option<Names>,
    /// On a return or refund line: the transaction id of the payment it returns. A negative line with a value here
    /// becomes a `refund` naming that payment as its original.
    #[serde(default)]
    pub original_id: Option<Names>,
    /// Booked vs pending.
    #[serde(default)]
    pub status: Option<StatusColumn>,
}

/// The format of an export: how to read its text, numbers and dates, and its columns.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Field delimiter (one ASCII character; `"\t"` for tabs). Default `,`.
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
    /// Decimal mark in amounts. Default `.`.
    #[serde(default = "default_decimal_mark")]
    pub decimal_mark: char,
    /// Thousands separator in amounts, if the export uses one. Checked against digit groups of three.
    #[serde(default)]
    pub thousands_separator: Option<char>,
    /// chrono strftime format(s) of the dates, tried in order. Default `%Y-%m-%d`.
    #[serde(default = "default_date_format")]
    pub date_format: Names,
    /// `auto` (BOM, UTF-16, UTF-8, else Windows-1252) or an encoding label (`utf-8`, `windows-1252`, `utf-16le`, ...).
    #[serde(default = "default_encoding")]
    pub encoding: String,
    /// Lines before the header row to ignore (account summaries and the like).
    #[serde(default)]
    pub skip_rows: usize,
    /// Rows at the end of the file to ignore whatever they hold (balance and total footers): the last
    /// this many non-blank rows after the header.
    #[serde(default)]
    pub skip_trailing_rows: usize,
    /// Rows after the header to ignore when one of these regular expressions matches them, as their
    /// fields (unquoted) joined by the delimiter, e.g. `^;*Saldo` for `;;"Saldo";"1.234,56"`.
    #[serde(default)]
    pub skip_rows_matching: Vec<String>,
    /// Ignore rows after the header whose date field is empty (footers) instead of failing on them.
    #[serde(default)]
    pub skip_rows_without_date: bool,
    /// Where to find each field.
    pub columns: Columns,
    /// Currency of every row, used when there is no currency column (or it is empty).
    #[serde(default)]
    pub currency: Option<String>,
    /// A line before the column header that is part of the format: `none`, or `datev` (see [`Preamble`]).
    #[serde(default)]
    pub preamble: Preamble,
}

/// A format line before the column header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preamble {
    /// The header row is the first row that fits the columns.
    #[default]
    None,
    /// A DATEV-Format file: line 1 is the DATEV header (`"EXTF";700;21;"Buchungsstapel";...`, or `"DTVF"`),
    /// checked and skipped. Its `Datum vom`/`Datum bis` (fields 15 and 16) give the year of `TTMM` dates,
    /// its `WKZ` (field 22) the currency of rows without one, its `Sachkontenlänge` (field 14) which account
    /// numbers are customers (debitors: one digit longer, starting 1 to 6). Rows are read from the customer's
    /// side: a row pays in when it credits a customer account (`Konto` a debitor and `H`, or `Gegenkonto`
    /// a debitor and `S`); rows that credit no customer account are dropped.
    Datev,
}

fn default_delimiter() -> char {
    ','
}

fn default_decimal_mark() -> char {
    '.'
}

fn default_date_format() -> Names {
    Names::One("%Y-%m-%d".into())
}

fn default_encoding() -> String {
    "auto".into()
}

/// Names of the built-in profiles.
pub const BUILT_IN: &[&str] = &[
    "signed",
    "de-sepa",
    "dotted-date",
    "datev",
    "xero",
    "quickbooks",
];

/// A built-in profile by name.
pub fn built_in(name: &str) -> Option<Profile> {
    match name {
        "signed" => Some(signed()),
        "de-sepa" => Some(de_sepa()),
        "dotted-date" => Some(dotted_date()),
        "datev" => Some(datev()),
        "xero" => Some(xero()),
        "quickbooks" => Some(quickbooks()),
        _ => None,
    }
}

fn no_columns() -> Columns {
    Columns {
        date: names(&[]),
        value_date: None,
        amount: None,
        debit: None,
        credit: None,
        dc_flag: None,
        currency: None,
        counterparty: None,
        account: None,
        remittance: None,
        reference: None,
        end_to_end_id: None,
        id: None,
        original_id: None,
        status: None,
    }
}

fn base() -> Profile {
    Profile {
        delimiter: ',',
        decimal_mark: '.',
        thousands_separator: None,
        date_format: default_date_format(),
        encoding: default_encoding(),
        skip_rows: 0,
        skip_trailing_rows: 0,
        skip_rows_matching: Vec::new(),
        skip_rows_without_date: false,
        columns: no_columns(),
        currency: None,
        preamble: Preamble::None,
    }
}

/// `signed`: a generic English export with one signed amount column; the default profile.
pub fn signed() -> Profile {
    Profile {
        thousands_separator: Some(','),
        date_format: names(&["%Y-%m-%d", "%m/%d/%Y"]),
        // a row whose first non-empty field is just a balance or total label; a booking opens with its date
        skip_rows_matching: vec![
            r"(?i)^,*(total|totals|balance|opening balance|closing balance|ending balance|available balance)\s*:?\s*(,|$)"
                .into(),
        ],
        columns: Columns {
            date: names(&["Date", "Booking Date", "Posted Date", "Transaction Date"]),
            value_date: Some(names(&["Value Date"])),
            amount: Some(names(&["Amount"])),
            currency: Some(names(&["Currency"])),
            counterparty: Some(names(&["Counterparty", "Payee", "Name"])),
            account: Some(names(&["Counterparty Account", "IBAN", "Account"])),
            remittance: Some(names(&["Description", "Memo", "Details"])),
            reference: Some(names(&["Reference"])),
            end_to_end_id: Some(names(&["End To End Id", "EndToEndId"])),
            id: Some(names(&["Transaction Id", "Id"])),
            original_id: Some(names(&["Original Transaction Id", "Original Id"])),
            ..no_columns()
        },
        ..base()
    }
}

/// `de-sepa`: German online-banking exports (Sparkasse CSV-CAMT, Volksbank, DKB...): `;`, `1.234,56`,
/// `Betrag` (optionally with an `S`/`H` flag column) or `Soll`/`Haben` columns, EUR unless a currency column says otherwise.
pub fn de_sepa() -> Profile {
    Profile {
        delimiter: ';',
        decimal_mark: ',',
        thousands_separator: Some('.'),
        // %y first: it rejects four-digit years, while %Y would read `24` as the year 24.
        date_format: names(&["%d.%m.%y", "%d.%m.%Y"]),
        currency: Some("EUR".into()),
        // balance and total rows: `"Saldo";;;"1.234,56"`, `Kontostand vom 31.03.2026:;...`, and
        // Volksbank's dated `01.03.2026;;;;;Anfangssaldo;EUR;1.000,00;H`: the label is a whole field, the
        // first non-empty one or the first after the date, which a booking's name or text never is alone
        skip_rows_matching: vec![
            format!(r"(?i)^;*{BALANCE_LABEL}"),
            format!(r"(?i)^[0-9./-]+;;+{BALANCE_LABEL}"),
        ],
        columns: Columns {
            date: names(&["Buchungstag", "Buchungsdatum", "Datum"]),
            value_date: Some(names(&["Valutadatum", "Wertstellung", "Valuta"])),
            amount: Some(names(&["Betrag", "Umsatz", "Betrag (EUR)", "Betrag (€)"])),
            debit: Some(names(&["Soll"])),
            credit: Some(names(&["Haben"])),
            dc_flag: Some(DcFlag {
                column: names(&["Soll/Haben", "S/H"]),
                credit: vec!["H".into()],
                debit: vec!["S".into()],
            }),
            currency: Some(names(&["Waehrung", "Währung", "WKZ"])),
            counterparty: Some(names(&[
                "Beguenstigter/Zahlungspflichtiger",
                "Begünstigter/Zahlungspflichtiger",
                "Name Zahlungsbeteiligter",
                "Auftraggeber / Begünstigter",
                "Zahlungsempfänger*in",
            ])),
            account: Some(names(&[
                "Kontonummer/IBAN",
                "IBAN Zahlungsbeteiligter",
                "IBAN",
                "Kontonummer",
            ])),
            remittance: Some(names(&["Verwendungszweck"])),
            end_to_end_id: Some(names(&["Kundenreferenz (End-to-End)", "Kundenreferenz"])),
            status: Some(StatusColumn {
                column: names(&["Info", "Status"]),
                pending: vec!["Umsatz vorgemerkt".into(), "Vorgemerkt".into()],
            }),
            ..no_columns()
        },
        ..base()
    }
}

/// A field holding only a German balance or total label (`Saldo`, `Kontostand vom 31.03.2026:`).
const BALANCE_LABEL: &str = r"(anfangssaldo|endsaldo|saldo|alter kontostand|neuer kontostand|kontostand|summe|umsatzsumme)( (vom|am|per) [0-9./-]+)?\s*:?\s*(;|$)";

/// `dotted-date`: `"Date","Payee","Amount"` with `YYYY.MM.DD` dates and a signed amount, no currency column
/// (set `currency` in the settings).
pub fn dotted_date() -> Profile {
    Profile {
        date_format: names(&["%Y.%m.%d"]),
        columns: Columns {
            date: names(&["Date"]),
            amount: Some(names(&["Amount"])),
            counterparty: Some(names(&["Payee"])),
            remittance: Some(names(&["Memo", "Notes"])),
            ..no_columns()
        },
        ..base()
    }
}

/// `datev`: a DATEV-Format Buchungsstapel (booking batch), as DATEV and the programs exporting to it
/// write it: line 1 the DATEV header, line 2 the column names, `;`, amounts `1234,56` without thousands
/// separator and always positive, the side in `Soll/Haben-Kennzeichen` (`S`/`H`, relative to `Konto`),
/// `Belegdatum` as `TTMM` (the year from the header's period) or `TTMMJJJJ`, Windows-1252. `Belegfeld 1`
/// (the invoice number, which DATEV's open-item clearing matches) becomes the structured reference,
/// `Buchungstext` the remittance text; the batch has no booking id, so rows are deduplicated by content.
/// Layout: <https://developer.datev.de/datev/platform/de/dtvf/formate/buchungsstapel> (columns) and
/// <https://developer.datev.de/datev/platform/en/dtvf> (file structure, header line, example).
pub fn datev() -> Profile {
    Profile {
        delimiter: ';',
        decimal_mark: ',',
        date_format: names(&["%d%m%Y"]),
        encoding: "windows-1252".into(),
        preamble: Preamble::Datev,
        columns: Columns {
            date: names(&["Belegdatum"]),
            amount: Some(names(&["Umsatz (ohne Soll/Haben-Kz)", "Umsatz"])),
            dc_flag: Some(DcFlag {
                column: names(&["Soll/Haben-Kennzeichen", "Soll-/Haben-Kennzeichen"]),
                credit: vec!["H".into()],
                debit: vec!["S".into()],
            }),
            currency: Some(names(&["WKZ Umsatz"])),
            remittance: Some(names(&["Buchungstext"])),
            reference: Some(names(&["Belegfeld 1"])),
            ..no_columns()
        },
        ..base()
    }
}

/// `xero`: Xero's bank statement CSV (`*Date,*Amount,Payee,Description,Reference,Cheque Number`, the
/// asterisks marking required columns in Xero's template, often left out): `,`, a signed amount with `.`
/// and no thousands separator, dates `DD/MM/YYYY` (or ISO), UTF-8, no currency column (set `currency`).
/// Layout: Xero's statement template, described at
/// <https://taxhelp.theaccountancycloud.com/support/solutions/articles/22000180105-import-a-csv-bank-statement-file-into-xero>.
pub fn xero() -> Profile {
    Profile {
        date_format: names(&["%d/%m/%Y", "%Y-%m-%d"]),
        columns: Columns {
            date: names(&["*Date", "Date"]),
            amount: Some(names(&["*Amount", "Amount"])),
            counterparty: Some(names(&["Payee"])),
            remittance: Some(names(&["Description"])),
            reference: Some(names(&["Reference"])),
            ..no_columns()
        },
        ..base()
    }
}

/// `quickbooks`: QuickBooks Online's bank-transaction CSV, in its 3-column (`Date,Description,Amount`,
/// signed) or 4-column (`Date,Description,Credit,Debit`, both positive, one filled) layout: `,`, `.`
/// decimals without thousands separators, dates `MM/DD/YYYY`, no currency column (set `currency`).
/// Layout: <https://exactstatement.com/blog/qbo-3-vs-4-column>.
pub fn quickbooks() -> Profile {
    Profile {
        date_format: names(&["%m/%d/%Y"]),
        columns: Columns {
            date: names(&["Date"]),
            amount: Some(names(&["Amount"])),
            credit: Some(names(&["Credit"])),
            debit: Some(names(&["Debit"])),
            remittance: Some(names(&["Description"])),
            ..no_columns()
        },
        ..base()
    }
}

/// The built-in profile a file's first lines name, for an instance configured without a profile: a DATEV
/// header line means `datev`, a header row with Xero's `*Date` and `*Amount` means `xero`, and
/// `Date,Description,Credit,Debit` means `quickbooks` (its 3-column layout is read alike by `signed`).
pub fn recognise(head: &str) -> Option<&'static str> {
    let mut lines = head
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(HEADER_ROWS);
    let first = lines.clone().next()?;
    if is_datev_header(first) {
        return Some("datev");
    }
    lines.find_map(|line| {
        let fields: Vec<String> = line
            .split(',')
            .map(|f| f.trim().trim_matches('"').trim().to_ascii_lowercase())
            .collect();
        let has = |name: &str| fields.iter().any(|f| f == name);
        if has("*date") && has("*amount") {
            Some("xero")
        } else if fields == ["date", "description", "credit", "debit"] {
            Some("quickbooks")
        } else {
            None
        }
    })
}

/// Rows looked at for a header by [`recognise`].
const HEADER_ROWS: usize = 20;

/// Whether a line opens a DATEV-Format file: `"EXTF";` or `"DTVF";` (the quotes may be missing).
pub fn is_datev_header(line: &str) -> bool {
    let first = line
        .trim_start_matches('\u{feff}')
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .trim_matches('"');
    line.contains(';') && (first == "EXTF" || first == "DTVF")
}

impl Profile {
    /// Check what can be checked before seeing a file; errors name the key (`profile.delimiter`, ...).
    pub fn validate(&self) -> Result<(), PluginError> {
        let bad =
            |key: &str, message: String| PluginError::bad_config(format!("profile.{key}"), message);
        if !self.delimiter.is_ascii() || self.delimiter.is_ascii_alphanumeric() {
            return Err(bad(
                "delimiter",
                format!(
                    "`{}` cannot be a delimiter: use one ascii punctuation or whitespace character",
                    self.delimiter
                ),
            ));
        }
        if self.decimal_mark.is_ascii_digit() || self.decimal_mark == '-' {
            return Err(bad(
                "decimal_mark",
                format!("`{}` cannot be a decimal mark", self.decimal_mark),
            ));
        }
        if let Some(t) = self.thousands_separator {
            if t == self.decimal_mark || t.is_ascii_digit() || t == '-' {
                return Err(bad(
                    "thousands_separator",
                    format!(
                        "`{t}` cannot be the thousands separator with decimal mark `{}`",
                        self.decimal_mark
                    ),
                ));
            }
        }
        for format in self.date_format.as_slice() {
            let valid = StrftimeItems::new(format).parse().is_ok();
            if !valid || !format.contains('%') {
                return Err(bad(
                    "date_format",
                    format!("`{format}` is not a chrono strftime date format"),
                ));
            }
        }
        if self.date_format.as_slice().is_empty() {
            return Err(bad(
                "date_format",
                "at least one date format is needed".into(),
            ));
        }
        for pattern in &self.skip_rows_matching {
            if let Err(e) = regex::Regex::new(pattern) {
                let why = e
                    .to_string()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                return Err(bad(
                    "skip_rows_matching",
                    format!("`{pattern}` is not a regular expression: {why}"),
                ));
            }
        }
        if self.encoding != "auto"
            && encoding_rs::Encoding::for_label(self.encoding.as_bytes()).is_none()
        {
            return Err(bad(
                "encoding",
                format!("unknown encoding `{}`", self.encoding),
            ));
        }
        let c = &self.columns;
        if c.amount.is_none() && c.debit.is_none() && c.credit.is_none() {
            return Err(bad(
                "columns",
                "no amount column: set `amount`, or `debit` and `credit`".into(),
            ));
        }
        if c.dc_flag
            .as_ref()
            .is_some_and(|f| f.credit.is_empty() || f.debit.is_empty())
        {
            return Err(bad(
                "columns.dc_flag",
                "both `credit` and `debit` flag values are needed".into(),
            ));
        }
        if self.preamble == Preamble::Datev && c.dc_flag.is_none() {
            return Err(bad(
                "preamble",
                "`datev` reads the side from the Soll/Haben column: set `columns.dc_flag`".into(),
            ));
        }
        if let Some(currency) = &self.currency {
            if uppercase_currency_code(currency).is_none() {
                return Err(bad(
                    "currency",
                    format!("`{currency}` is not a three-letter iso 4217 code"),
                ));
            }
        }
        Ok(())
    }
}
