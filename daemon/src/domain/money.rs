//! Currencies, commercial rounding and parsing of money and percentages.

use std::fmt;
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use super::DomainError;

/// An ISO 4217 currency code from the known list, upper-case; serialized as the plain code.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency(String);

/// Known currencies and their minor units (digits after the decimal point).
const CURRENCIES: &[(&str, u32)] = &[
    ("AED", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("BGN", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EGP", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("IQD", 3),
    ("ISK", 0),
    ("JOD", 3),
    ("JPY", 0),
    ("KES", 2),
    ("KRW", 0),
    ("KWD", 3),
    ("LYD", 3),
    ("MAD", 2),
    ("MXN", 2),
    ("MYR", 2),
    ("NGN", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PHP", 2),
    ("PKR", 2),
    ("PLN", 2),
    ("QAR", 2),
    ("RON", 2),
    ("RSD", 2),
    ("SAR", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("THB", 2),
    ("TND", 3),
    ("TRY", 2),
    ("TWD", 2),
    ("UAH", 2),
    ("USD", 2),
    ("VND", 0),
    ("XAF", 0),
    ("XOF", 0),
    ("ZAR", 2),
];

impl Currency {
    /// Parses a known ISO 4217 code; lower-case input and surrounding spaces are accepted.
    pub fn parse(raw: &str) -> Result<Currency, DomainError> {
        let code = raw.trim().to_ascii_uppercase();
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(DomainError::invalid(
                "currency",
                format!("{raw:?} is not a three-letter ISO 4217 code"),
            ));
        }
        if !CURRENCIES.iter().any(|(known, _)| *known == code) {
            return Err(DomainError::invalid(
                "currency",
                format!("unknown currency {code}"),
            ));
        }
        Ok(Currency(code))
    }

    /// The upper-case ISO 4217 code.
    pub fn code(&self) -> &str {
        &self.0
    }

    /// Digits after the decimal point of the currency's minor unit.
    pub fn minor_units(&self) -> u32 {
        CURRENCIES
            .iter()
            .find(|(code, _)| *code == self.0)
            .map_or(2, |(_, units)| *units)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Currency {
    type Error = DomainError;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Currency::parse(&raw)
    }
}

impl From<Currency> for String {
    fn from(currency: Currency) -> String {
        currency.0
    }
}

/// Rounds half away from zero to the currency's minor unit, with exactly that scale ("100.00").
pub fn round_money(amount: Decimal, currency: &Currency) -> Decimal {
    round_to(amount, currency.minor_units())
}

/// Rounds half away from zero to `scale` digits and fixes the scale to exactly that.
pub(crate) fn round_to(amount: Decimal, scale: u32) -> Decimal {
    let mut rounded = amount.round_dp_with_strategy(scale, RoundingStrategy::MidpointAwayFromZero);
    rounded.rescale(scale);
    rounded
}

/// Parses a plain decimal number (`-12.50`, `3`); no exponents, separators or signs other than `-`.
/// Used for quantities and unit prices, which may carry more digits than the currency.
pub fn parse_decimal(field: &str, raw: &str) -> Result<Decimal, DomainError> {
    let text = raw.trim();
    let digits = text.strip_prefix('-').unwrap_or(text);
    let (int_part, frac_part) = match digits.split_once('.') {
        Some((int_part, frac_part)) => (int_part, Some(frac_part)),
        None => (digits, None),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let well_formed = !int_part.is_empty()
        && all_digits(int_part)
        && frac_part.is_none_or(|f| !f.is_empty() && all_digits(f));
    if !well_formed {
        return Err(DomainError::invalid(
            field,
            format!("{raw:?} is not a decimal number"),
        ));
    }
    Decimal::from_str_exact(text)
        .map_err(|_| DomainError::invalid(field, format!("{raw:?} is out of range")))
}

/// Parses an amount of money in `currency`, rejecting more decimals than its minor unit allows
/// (trailing zeros are fine); the result has exactly the currency's scale.
pub fn parse_amount(field: &str, raw: &str, currency: &Currency) -> Result<Decimal, DomainError> {
    let value = parse_decimal(field, raw)?;
    check_scale(field, value, currency)?;
    Ok(round_money(value, currency))
}

/// Like [`parse_amount`], but also rejects zero and negative amounts.
pub fn parse_positive_amount(
    field: &str,
    raw: &str,
    currency: &Currency,
) -> Result<Decimal, DomainError> {
    let value = parse_amount(field, raw, currency)?;
    if value <= Decimal::ZERO {
        return Err(DomainError::invalid(field, "must be greater than zero"));
    }
    Ok(value)
}

/// Parses a percentage given as a percent number ("20" is 20%), between 0 and 100 inclusive.
pub fn parse_percent(field: &str, raw: &str) -> Result<Decimal, DomainError> {
    let value = parse_decimal(field, raw)?;
    check_percent(field, value)?;
    Ok(value)
}

/// Checks that a percentage lies in 0..=100.
pub fn check_percent(field: &str, value: Decimal) -> Result<(), DomainError> {
    if value < Decimal::ZERO || value > Decimal::ONE_HUNDRED {
        return Err(DomainError::invalid(
            field,
            format!("{value} is not a percentage between 0 and 100"),
        ));
    }
    Ok(())
}

/// Checks that an amount has no more significant decimals than the currency's minor unit.
pub fn check_scale(field: &str, value: Decimal, currency: &Currency) -> Result<(), DomainError> {
    if value.normalize().scale() > currency.minor_units() {
        return Err(DomainError::invalid(
            field,
            format!(
                "{value} has more than {} decimals for {currency}",
                currency.minor_units()
            ),
        ));
    }
    Ok(())
}

impl FromStr for Currency {
    type Err = DomainError;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Currency::parse(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn currency(code: &str) -> Currency {
        Currency::parse(code).unwrap_or_else(|e| panic!("test currency {code}: {e}"))
    }

    #[test]
    fn currency_parse_accepts_known_codes_and_rejects_the_rest() {
        fn check(raw: &str, expected: Option<&str>) {
            assert_eq!(
                Currency::parse(raw).ok().as_ref().map(Currency::code),
                expected,
                "{raw}"
            );
        }
        for code in [
            "EUR", "USD", "GBP", "CHF", "JPY", "SEK", "NOK", "DKK", "PLN", "CZK", "HUF", "AUD",
            "CAD", "NZD", "SGD", "HKD", "CNY", "INR", "BRL", "MXN", "ZAR", "KWD", "BHD", "JOD",
            "OMR", "TND", "ISK", "KRW",
        ] {
            check(code, Some(code));
        }
        check(" eur ", Some("EUR"));
        check("EU", None);
        check("EURO", None);
        check("XXX", None);
        check("E1R", None);
        check("", None);
    }

    #[test]
    fn minor_units_follow_iso_4217() {
        for (code, units) in [
            ("JPY", 0),
            ("KRW", 0),
            ("ISK", 0),
            ("KWD", 3),
            ("BHD", 3),
            ("JOD", 3),
            ("OMR", 3),
            ("TND", 3),
            ("EUR", 2),
            ("USD", 2),
            ("CHF", 2),
        ] {
            assert_eq!(currency(code).minor_units(), units, "{code}");
        }
    }

    #[test]
    fn currency_serializes_as_plain_code_and_validates_on_read() {
        assert_eq!(
            serde_json::to_string(&currency("EUR")).ok().as_deref(),
            Some("\"EUR\"")
        );
        assert_eq!(
            serde_json::from_str::<Currency>("\"usd\"").ok(),
            Some(currency("USD"))
        );
        assert!(serde_json::from_str::<Currency>("\"ABC\"").is_err());
    }

    #[test]
    fn round_money_rounds_half_away_from_zero_at_the_currency_scale() {
        fn check(amount: Decimal, code: &str, expected: &str) {
            assert_eq!(
                round_money(amount, &currency(code)).to_string(),
                expected,
                "{amount} {code}"
            );
        }
        check(dec!(33.335), "EUR", "33.34");
        check(dec!(-33.335), "EUR", "-33.34");
        check(dec!(0.125), "EUR", "0.13");
        check(dec!(2.5), "JPY", "3");
        check(dec!(-2.5), "JPY", "-3");
        check(dec!(3.5), "JPY", "4");
        check(dec!(100), "EUR", "100.00");
        check(dec!(1.0005), "KWD", "1.001");
        check(dec!(1.2344), "EUR", "1.23");
    }

    #[test]
    fn parse_amount_rejects_bad_numbers_and_extra_decimals() {
        fn check(raw: &str, code: &str, expected: Result<&str, &str>) {
            let got = parse_amount("amount", raw, &currency(code));
            match (got, expected) {
                (Ok(v), Ok(e)) => assert_eq!(v.to_string(), e, "{raw}"),
                (Err(DomainError::Invalid { field, message }), Err(fragment)) => {
                    assert_eq!(field, "amount");
                    assert!(message.contains(fragment), "{raw}: {message}");
                }
                (got, expected) => panic!("{raw}: got {got:?}, expected {expected:?}"),
            }
        }
        check("12.5", "EUR", Ok("12.50"));
        check(" 100 ", "EUR", Ok("100.00"));
        check("-3.10", "EUR", Ok("-3.10"));
        check("1.500", "EUR", Ok("1.50"));
        check("1.234", "KWD", Ok("1.234"));
        check("1.005", "EUR", Err("more than 2 decimals"));
        check("1.5", "JPY", Err("more than 0 decimals"));
        check("abc", "EUR", Err("not a decimal number"));
        check("1e5", "EUR", Err("not a decimal number"));
        check("1,50", "EUR", Err("not a decimal number"));
        check("", "EUR", Err("not a decimal number"));
        check(".5", "EUR", Err("not a decimal number"));
        check("5.", "EUR", Err("not a decimal number"));
        check("+5", "EUR", Err("not a decimal number"));
        check(
            "99999999999999999999999999999999",
            "EUR",
            Err("out of range"),
        );
    }

    #[test]
    fn parse_positive_amount_rejects_zero_and_negatives() {
        let eur = currency("EUR");
        assert_eq!(
            parse_positive_amount("payment.amount", "0.01", &eur),
            Ok(dec!(0.01))
        );
        for raw in ["0", "0.00", "-1"] {
            assert_eq!(
                parse_positive_amount("payment.amount", raw, &eur),
                Err(DomainError::invalid(
                    "payment.amount",
                    "must be greater than zero"
                )),
                "{raw}"
            );
        }
    }

    #[test]
    fn parse_percent_accepts_zero_to_one_hundred() {
        fn check(raw: &str, expected: Option<Decimal>) {
            assert_eq!(parse_percent("tax_rate", raw).ok(), expected, "{raw}");
        }
        check("20", Some(dec!(20)));
        check("0", Some(dec!(0)));
        check("100", Some(dec!(100)));
        check("7.7", Some(dec!(7.7)));
        check("100.01", None);
        check("-1", None);
        check("20%", None);
    }
}
