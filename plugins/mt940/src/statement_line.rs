//! The `:61:` statement line and the `:60F:`/`:62F:` balances.

use chrono::{Datelike, NaiveDate};
use rust_decimal::Decimal;
use settled_plugin_api::money;
use settled_plugin_api::PluginError;

use crate::swift::Field;

/// The debit/credit mark of a statement line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// `C`: money in.
    Credit,
    /// `D`: money out.
    Debit,
    /// `RC`: reversal of a credit, so money out.
    ReversalOfCredit,
    /// `RD`: reversal of a debit, so money in.
    ReversalOfDebit,
}

/// A parsed `:61:` field.
#[derive(Debug, Clone, PartialEq)]
pub struct StatementLine {
    /// Value date (subfield 1).
    pub value_date: NaiveDate,
    /// Entry (booking) date (subfield 2), when given.
    pub entry_date: Option<NaiveDate>,
    /// Debit/credit mark.
    pub mark: Mark,
    /// Unsigned amount at the currency's scale.
    pub amount: Decimal,
    /// Transaction type identification: `NTRF`, `NDDT`, `N033`, ...
    pub transaction_type: String,
    /// Reference for the account owner (`NONREF` when none).
    pub customer_reference: String,
    /// The bank's reference after `//`, when given.
    pub bank_reference: Option<String>,
    /// Supplementary details (the line after the first), when given.
    pub supplementary: Option<String>,
}

impl StatementLine {
    /// The amount in the account's view: credits and reversed debits positive.
    pub fn signed_amount(&self) -> Decimal {
        match self.mark {
            Mark::Credit | Mark::ReversalOfDebit => self.amount,
            Mark::Debit | Mark::ReversalOfCredit => -self.amount,
        }
    }

    /// True for `RC`/`RD`.
    pub fn is_reversal(&self) -> bool {
        matches!(self.mark, Mark::ReversalOfCredit | Mark::ReversalOfDebit)
    }
}

/// Parses a `:61:` field in `currency`.
pub fn parse_statement_line(field: &Field, currency: &str) -> Result<StatementLine, PluginError> {
    let at = || format!("line {}", field.line);
    let fail = |message: String| PluginError::bad_input(at(), format!(":61: {message}"));
    let first = field.lines.first().map_or("", |l| l.trim_end());
    let mut cursor = Cursor {
        text: first,
        pos: 0,
    };

    let value_text = cursor.take_while_max(|c| c.is_ascii_digit(), 6);
    let value_date = yymmdd(value_text)
        .ok_or_else(|| fail(format!("value date `{value_text}` is not a date (YYMMDD)")))?;
    let entry_date = if cursor.peek().is_some_and(|c| c.is_ascii_digit()) {
        let mmdd = cursor.take_while_max(|c| c.is_ascii_digit(), 4);
        Some(
            entry_date_near(mmdd, value_date)
                .ok_or_else(|| fail(format!("entry date `{mmdd}` is not a date (MMDD)")))?,
        )
    } else {
        None
    };
    let mark = if cursor.eat("RC") {
        Mark::ReversalOfCredit
    } else if cursor.eat("RD") {
        Mark::ReversalOfDebit
    } else if cursor.eat("C") {
        Mark::Credit
    } else if cursor.eat("D") {
        Mark::Debit
    } else {
        return Err(fail(format!(
            "debit/credit mark missing after the dates in `{first}` (expected C, D, RC or RD)"
        )));
    };
    // The optional funds code is the third letter of the currency code, e.g. `R` for EUR.
    if cursor.peek().is_some_and(|c| c.is_ascii_alphabetic()) {
        cursor.pos += 1;
    }
    let amount_text = cursor.take_while_max(|c| c.is_ascii_digit() || c == ',', 15);
    if !amount_text.contains(',') {
        return Err(fail(format!("amount `{amount_text}` has no decimal comma")));
    }
    let amount = money::parse_amount(amount_text, ',', currency).map_err(fail)?;
    let type_text = cursor.take_max(4);
    let valid_type = type_text.len() == 4
        && matches!(type_text.as_bytes()[0], b'N' | b'F' | b'S')
        && type_text[1..].bytes().all(|b| b.is_ascii_alphanumeric());
    if !valid_type {
        return Err(fail(format!(
            "transaction type `{type_text}` is not N/F/S followed by three characters"
        )));
    }
    let references = cursor.rest();
    let (customer_reference, bank_reference) = match references.split_once("//") {
        Some((customer, bank)) => (customer, Some(bank.trim())),
        None => (references, None),
    };
    let supplementary = field
        .lines
        .get(1..)
        .map(|rest| rest.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty());
    Ok(StatementLine {
        value_date,
        entry_date,
        mark,
        amount,
        transaction_type: type_text.to_string(),
        customer_reference: customer_reference.trim().to_string(),
        bank_reference: bank_reference.filter(|b| !b.is_empty()).map(str::to_string),
        supplementary,
    })
}

/// An opening or closing balance: `C181126EUR13564,13`.
#[derive(Debug, Clone, PartialEq)]
pub struct Balance {
    /// Balance date.
    pub date: NaiveDate,
    /// ISO currency code.
    pub currency: String,
    /// Signed balance.
    pub amount: Decimal,
}

/// Parses a `:60F:`/`:60M:`/`:62F:`/`:62M:` field.
pub fn parse_balance(field: &Field) -> Result<Balance, PluginError> {
    let text = field.lines.first().map_or("", |l| l.trim());
    let fail = |message: String| {
        PluginError::bad_input(
            format!("line {}", field.line),
            format!(":{}: {message}", field.tag),
        )
    };
    let credit = match text.get(..1) {
        Some("C") => true,
        Some("D") => false,
        _ => return Err(fail(format!("balance `{text}` does not start with C or D"))),
    };
    let date_text = text.get(1..7).unwrap_or_default();
    let date = yymmdd(date_text)
        .ok_or_else(|| fail(format!("balance date `{date_text}` is not a date (YYMMDD)")))?;
    let currency = text.get(7..10).unwrap_or_default();
    if !money::is_currency_code(currency) {
        return Err(fail(format!(
            "`{currency}` is not an iso 4217 currency code"
        )));
    }
    let amount =
        money::parse_amount(text.get(10..).unwrap_or_default(), ',', currency).map_err(fail)?;
    Ok(Balance {
        date,
        currency: currency.to_string(),
        amount: if credit { amount } else { -amount },
    })
}

/// The currency of an MT942 report: `:34F:EURD20,00` (floor limit) or `:90D:5EUR1234,56` (totals).
pub fn report_currency(field: &Field) -> Option<String> {
    let text = field.lines.first()?.trim();
    let text = if field.tag.starts_with("90") {
        text.trim_start_matches(|c: char| c.is_ascii_digit())
    } else {
        text
    };
    text.get(..3)
        .filter(|c| money::is_currency_code(c))
        .map(str::to_string)
}

/// `YYMMDD` with SWIFT's two-digit years: 00-79 are 20xx, 80-99 are 19xx.
pub fn yymmdd(text: &str) -> Option<NaiveDate> {
    if text.len() != 6 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let yy: i32 = text[..2].parse().ok()?;
    let month: u32 = text[2..4].parse().ok()?;
    let day: u32 = text[4..].parse().ok()?;
    let year = if yy < 80 { 2000 + yy } else { 1900 + yy };
    NaiveDate::from_ymd_opt(year, month, day)
}

/// The entry date `MMDD` in the year that puts it nearest the value date (entries can cross New Year).
fn entry_date_near(mmdd: &str, value_date: NaiveDate) -> Option<NaiveDate> {
    if mmdd.len() != 4 {
        return None;
    }
    let month: u32 = mmdd[..2].parse().ok()?;
    let day: u32 = mmdd[2..].parse().ok()?;
    let year = value_date.year();
    [year - 1, year, year + 1]
        .into_iter()
        .filter_map(|y| NaiveDate::from_ymd_opt(y, month, day))
        .min_by_key(|d| (*d - value_date).num_days().abs())
}

struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn eat(&mut self, prefix: &str) -> bool {
        let found = self.text[self.pos..].starts_with(prefix);
        if found {
            self.pos += prefix.len();
        }
        found
    }

    fn take_while_max(&mut self, keep: impl Fn(char) -> bool, max: usize) -> &'a str {
        let rest = &self.text[self.pos..];
        let len: usize = rest
            .chars()
            .take_while(|c| keep(*c))
            .take(max)
            .map(char::len_utf8)
            .sum();
        self.pos += len;
        &rest[..len]
    }

    fn take_max(&mut self, max: usize) -> &'a str {
        self.take_while_max(|_| true, max)
    }

    fn rest(&mut self) -> &'a str {
        let rest = &self.text[self.pos..];
        self.pos = self.text.len();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(lines: &[&str]) -> Field {
        Field {
            tag: "61".into(),
            line: 7,
            lines: lines.iter().map(|l| l.to_string()).collect(),
        }
    }

    fn date(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap_or_default()
    }

    fn check(lines: &[&str], expected: (&str, Option<&str>, &str, &str, &str, Option<&str>)) {
        let line = parse_statement_line(&field(lines), "EUR").unwrap();
        let (value, entry, signed, kind, customer, bank) = expected;
        assert_eq!(line.value_date, date(value), "{lines:?}");
        assert_eq!(line.entry_date, entry.map(date), "{lines:?}");
        assert_eq!(line.signed_amount().to_string(), signed, "{lines:?}");
        assert_eq!(line.transaction_type, kind, "{lines:?}");
        assert_eq!(line.customer_reference, customer, "{lines:?}");
        assert_eq!(line.bank_reference.as_deref(), bank, "{lines:?}");
    }

    #[test]
    fn statement_lines_are_split_into_their_subfields() {
        check(
            &["1811271127DR119,35NDDTNONREF"],
            (
                "2018-11-27",
                Some("2018-11-27"),
                "-119.35",
                "NDDT",
                "NONREF",
                None,
            ),
        );
        check(
            &["0709070904CR50990,05NTRFNONREF//0724710333343453"],
            (
                "2007-09-07",
                Some("2007-09-04"),
                "50990.05",
                "NTRF",
                "NONREF",
                Some("0724710333343453"),
            ),
        );
        check(
            &["0709040904DR1500,00NTRFKREF+//536D80EFEC56ACF8"],
            (
                "2007-09-04",
                Some("2007-09-04"),
                "-1500.00",
                "NTRF",
                "KREF+",
                Some("536D80EFEC56ACF8"),
            ),
        );
        check(
            &["0709040904CR15000,NTRFTFNr 40001 MSGID//0724710345316110"],
            (
                "2007-09-04",
                Some("2007-09-04"),
                "15000.00",
                "NTRF",
                "TFNr 40001 MSGID",
                Some("0724710345316110"),
            ),
        );
        check(
            &["260105C5,00N033NONREF"],
            ("2026-01-05", None, "5.00", "N033", "NONREF", None),
        );
    }

    #[test]
    fn reversal_marks_flip_the_sign_of_what_they_reverse() {
        let credit_reversed =
            parse_statement_line(&field(&["2601050105RC12,00NTRFNONREF"]), "EUR").unwrap();
        assert!(credit_reversed.is_reversal());
        assert_eq!(credit_reversed.signed_amount().to_string(), "-12.00");
        let debit_reversed =
            parse_statement_line(&field(&["2601050105RDR12,00NTRFNONREF"]), "EUR").unwrap();
        assert!(debit_reversed.is_reversal());
        assert_eq!(debit_reversed.signed_amount().to_string(), "12.00");
    }

    #[test]
    fn an_entry_date_across_new_year_takes_the_nearest_year() {
        let line = parse_statement_line(&field(&["2601021231D1,00NTRFNONREF"]), "EUR").unwrap();
        assert_eq!(line.entry_date, Some(date("2025-12-31")));
        let line = parse_statement_line(&field(&["9912310103D1,00NTRFNONREF"]), "EUR").unwrap();
        assert_eq!(line.value_date, date("1999-12-31"));
        assert_eq!(line.entry_date, Some(date("2000-01-03")));
    }

    #[test]
    fn the_second_line_is_supplementary_details() {
        let line =
            parse_statement_line(&field(&["260105C5,00NTRFNONREF", "/OCMT/EUR5,00/"]), "EUR")
                .unwrap();
        assert_eq!(line.supplementary.as_deref(), Some("/OCMT/EUR5,00/"));
    }

    #[test]
    fn malformed_statement_lines_name_the_problem() {
        let cases = [
            ("261305C5,00NTRFNONREF", "value date `261305` is not a date"),
            (
                "2601051340C5,00NTRFNONREF",
                "entry date `1340` is not a date",
            ),
            ("260105X5,00NTRFNONREF", "debit/credit mark missing"),
            ("260105C5.00NTRFNONREF", "has no decimal comma"),
            ("260105C5,001NTRFNONREF", "more decimals than EUR allows"),
            ("260105C5,00", "transaction type `` is not"),
        ];
        for (text, fragment) in cases {
            let err = parse_statement_line(&field(&[text]), "EUR").unwrap_err();
            assert_eq!(err.location.as_deref(), Some("line 7"), "{text}");
            assert!(err.message.contains(fragment), "{text}: {err}");
        }
    }

    #[test]
    fn balances_carry_date_currency_and_sign() {
        let balance = |text: &str| {
            parse_balance(&Field {
                tag: "60F".into(),
                line: 4,
                lines: vec![text.into()],
            })
        };
        let opening = balance("D070903EUR1970431,87").unwrap();
        assert_eq!(
            (
                opening.date,
                opening.currency.as_str(),
                opening.amount.to_string()
            ),
            (date("2007-09-03"), "EUR", "-1970431.87".to_string())
        );
        assert!(balance("C0709EUR1,00").is_err());
        assert!(balance("C070903eur1,00").is_err());
    }
}
