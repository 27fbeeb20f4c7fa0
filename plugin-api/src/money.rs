//! Amounts and currencies for plugins: ISO 4217 minor units, currency code checks and a strict amount parser.

use rust_decimal::Decimal;

/// Decimal places ISO 4217 allows for a currency (2 for codes not listed as different).
pub fn minor_units(currency: &str) -> u32 {
    match currency {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        "CLF" | "UYW" => 4,
        _ => 2,
    }
}

/// True for a syntactically valid ISO 4217 code (three upper-case letters).
pub fn is_currency_code(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase())
}

/// The code in upper case when `raw` is three ASCII letters in any case (`eur` gives `EUR`), else `None`.
///
/// For formats and settings that write codes in lower case; [`is_currency_code`] is the strict check.
pub fn uppercase_currency_code(raw: &str) -> Option<String> {
    let upper = raw.to_ascii_uppercase();
    is_currency_code(&upper).then_some(upper)
}

/// `amount` at exactly the currency's scale, or `None` when it has more significant decimals than the
/// currency allows (trailing zeros do not count: `12.500` EUR is `12.50`).
pub fn rescale_to_currency(amount: Decimal, currency: &str) -> Option<Decimal> {
    let allowed = minor_units(currency);
    let mut amount = amount.normalize();
    if amount.scale() > allowed {
        return None;
    }
    amount.rescale(allowed);
    Some(amount)
}

/// Parses an unsigned amount written with `decimal_mark` (digits, at most one mark, nothing else),
/// rejects more significant decimals than the currency allows, and returns it at the currency's scale.
pub fn parse_amount(text: &str, decimal_mark: char, currency: &str) -> Result<Decimal, String> {
    let text = text.trim();
    let (int_part, frac_part) = match text.split_once(decimal_mark) {
        Some((i, f)) => (i, f),
        None => (text, ""),
    };
    let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int_part.is_empty() || !digits_only(int_part) || !digits_only(frac_part) {
        return Err(format!("amount `{text}` is not a decimal number"));
    }
    // Counted on the text rather than after parsing, so digits beyond what a Decimal holds are not rounded away.
    let significant = frac_part.trim_end_matches('0');
    let allowed = minor_units(currency);
    if significant.len() > allowed as usize {
        return Err(format!(
            "amount `{text}` has more decimals than {currency} allows ({allowed})"
        ));
    }
    let canonical = if significant.is_empty() {
        int_part.to_string()
    } else {
        format!("{int_part}.{significant}")
    };
    let mut amount: Decimal = canonical
        .parse()
        .map_err(|e| format!("amount `{text}` is out of range: {e}"))?;
    amount.rescale(allowed);
    Ok(amount)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, mark: char, currency: &str, expected: Result<&str, &str>) {
        let got = parse_amount(text, mark, currency);
        match expected {
            Ok(want) => assert_eq!(got.map(|d| d.to_string()), Ok(want.to_string()), "{text}"),
            Err(fragment) => match got {
                Ok(amount) => panic!("{text} parsed as {amount}"),
                Err(message) => assert!(message.contains(fragment), "{text}: {message}"),
            },
        }
    }

    #[test]
    fn amounts_are_parsed_at_the_currency_scale() {
        check("8.85", '.', "EUR", Ok("8.85"));
        check("3.1", '.', "CHF", Ok("3.10"));
        check("15000,", ',', "EUR", Ok("15000.00"));
        check("0,08", ',', "EUR", Ok("0.08"));
        check("2700", '.', "JPY", Ok("2700"));
        check("1.250", '.', "KWD", Ok("1.250"));
        check("12.500", '.', "EUR", Ok("12.50"));
        check("0.1234", '.', "CLF", Ok("0.1234"));
    }

    #[test]
    fn amounts_with_too_many_decimals_or_junk_are_rejected() {
        check(
            "1.005",
            '.',
            "EUR",
            Err("more decimals than EUR allows (2)"),
        );
        check(
            "100.5",
            '.',
            "JPY",
            Err("more decimals than JPY allows (0)"),
        );
        check(
            "0.000000000000000000000000000001",
            '.',
            "EUR",
            Err("more decimals than EUR allows (2)"),
        );
        check("-5.00", '.', "EUR", Err("not a decimal number"));
        check("1e3", '.', "EUR", Err("not a decimal number"));
        check(",50", ',', "EUR", Err("not a decimal number"));
        check("1.2.3", '.', "EUR", Err("not a decimal number"));
        check("", '.', "EUR", Err("not a decimal number"));
    }

    #[test]
    fn minor_units_follow_iso_4217() {
        let units: Vec<u32> = [
            "EUR", "USD", "JPY", "KRW", "KWD", "BHD", "CLF", "UYW", "XYZ",
        ]
        .iter()
        .map(|c| minor_units(c))
        .collect();
        assert_eq!(units, [2, 2, 0, 0, 3, 3, 4, 4, 2]);
    }

    #[test]
    fn currency_codes_are_three_letters() {
        let strict: Vec<bool> = ["EUR", "eur", "EU", "EURO", "E1R", "ÉUR"]
            .iter()
            .map(|c| is_currency_code(c))
            .collect();
        assert_eq!(strict, [true, false, false, false, false, false]);
        let any_case: Vec<Option<String>> = ["EUR", "eur", "Chf", "EURO", "e1r", "ÉU"]
            .iter()
            .map(|c| uppercase_currency_code(c))
            .collect();
        assert_eq!(
            any_case,
            [
                Some("EUR".to_string()),
                Some("EUR".to_string()),
                Some("CHF".to_string()),
                None,
                None,
                None
            ]
        );
    }

    #[test]
    fn rescaling_keeps_allowed_decimals_and_refuses_more() {
        let rescaled = |text: &str, currency: &str| {
            let amount: Decimal = text.parse().unwrap_or_default();
            rescale_to_currency(amount, currency).map(|d| d.to_string())
        };
        assert_eq!(rescaled("-12.5", "EUR").as_deref(), Some("-12.50"));
        assert_eq!(rescaled("12.500", "EUR").as_deref(), Some("12.50"));
        assert_eq!(rescaled("2700.00", "JPY").as_deref(), Some("2700"));
        assert_eq!(rescaled("1.005", "EUR"), None);
        assert_eq!(rescaled("0.5", "JPY"), None);
    }
}
