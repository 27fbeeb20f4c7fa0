//! Amounts and currencies: decimals parsed from text, checked against the currency's minor units.

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
            Err(fragment) => {
                let message = got.expect_err(text);
                assert!(message.contains(fragment), "{text}: {message}");
            }
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
        check("-5.00", '.', "EUR", Err("not a decimal number"));
        check("1e3", '.', "EUR", Err("not a decimal number"));
        check(",50", ',', "EUR", Err("not a decimal number"));
        check("1.2.3", '.', "EUR", Err("not a decimal number"));
        check("", '.', "EUR", Err("not a decimal number"));
    }
}
