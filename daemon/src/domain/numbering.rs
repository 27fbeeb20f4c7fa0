//! Document number series such as `INV-{YYYY}-{SEQ:3}`, with a yearly reset when the pattern
//! contains a year.

use std::fmt;

use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};

use super::DomainError;

/// Default pattern for quote numbers.
pub const QUOTE_PATTERN: &str = "Q-{YYYY}-{SEQ:3}";
/// Default pattern for order numbers.
pub const ORDER_PATTERN: &str = "ORD-{SEQ:5}";
/// Default pattern for invoice numbers.
pub const INVOICE_PATTERN: &str = "INV-{YYYY}-{SEQ:3}";
/// Default pattern for credit note numbers.
pub const CREDIT_NOTE_PATTERN: &str = "CN-{YYYY}-{SEQ:3}";

/// Widest zero padding a `{SEQ:n}` token may ask for.
const MAX_SEQ_WIDTH: usize = 20;

/// A parsed number pattern: literal text plus `{YYYY}`, `{YY}`, `{MM}` and exactly one
/// `{SEQ}` / `{SEQ:n}`. Serialized as the pattern text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SeriesPattern {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Year4,
    Year2,
    Month,
    Seq { width: usize },
}

impl SeriesPattern {
    /// Parses a pattern; errors name the field `pattern` and say what is wrong.
    pub fn parse(pattern: &str) -> Result<SeriesPattern, DomainError> {
        let err =
            |message: String| DomainError::invalid("pattern", format!("{pattern:?}: {message}"));
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = pattern;
        while let Some(c) = rest.chars().next() {
            match c {
                '{' => {
                    let close = rest
                        .find('}')
                        .ok_or_else(|| err("unclosed '{'".to_string()))?;
                    let token = &rest[1..close];
                    let part = match token {
                        "YYYY" => Part::Year4,
                        "YY" => Part::Year2,
                        "MM" => Part::Month,
                        "SEQ" => Part::Seq { width: 1 },
                        _ => match token.strip_prefix("SEQ:") {
                            Some(width) => {
                                let width: usize = width
                                    .parse()
                                    .ok()
                                    .filter(|w| (1..=MAX_SEQ_WIDTH).contains(w))
                                    .ok_or_else(|| {
                                        err(format!("SEQ width must be 1 to {MAX_SEQ_WIDTH}"))
                                    })?;
                                Part::Seq { width }
                            }
                            None => return Err(err(format!("unknown token {{{token}}}"))),
                        },
                    };
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(part);
                    rest = &rest[close + 1..];
                }
                '}' => return Err(err("unmatched '}'".to_string())),
                _ => {
                    literal.push(c);
                    rest = &rest[c.len_utf8()..];
                }
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        let seqs = parts
            .iter()
            .filter(|p| matches!(p, Part::Seq { .. }))
            .count();
        if seqs != 1 {
            return Err(err(format!(
                "needs exactly one {{SEQ}} token, found {seqs}"
            )));
        }
        Ok(SeriesPattern {
            source: pattern.to_string(),
            parts,
        })
    }

    /// The pattern text as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The counter bucket for `date`: the four-digit year when the pattern shows a year (so the
    /// sequence resets yearly), otherwise "" (one sequence forever).
    pub fn period_key(&self, date: NaiveDate) -> String {
        if self
            .parts
            .iter()
            .any(|p| matches!(p, Part::Year4 | Part::Year2))
        {
            format!("{:04}", date.year())
        } else {
            String::new()
        }
    }

    /// The sequence value of a number this pattern rendered (`None` when the number does not have the pattern's
    /// shape). Callers that know the number's date confirm it with [`SeriesPattern::format`].
    pub fn sequence_of(&self, number: &str) -> Option<u64> {
        let mut rest = number;
        let mut seq = None;
        for part in &self.parts {
            let digits = |rest: &str, n: usize| {
                (rest.len() >= n && rest.as_bytes()[..n].iter().all(u8::is_ascii_digit))
                    .then_some(n)
            };
            let taken = match part {
                Part::Literal(text) => rest.starts_with(text.as_str()).then_some(text.len()),
                Part::Year4 => digits(rest, 4),
                Part::Year2 | Part::Month => digits(rest, 2),
                Part::Seq { .. } => {
                    let n = rest.bytes().take_while(u8::is_ascii_digit).count();
                    seq = rest[..n].parse::<u64>().ok();
                    (n > 0).then_some(n)
                }
            }?;
            rest = &rest[taken..];
        }
        if rest.is_empty() {
            seq
        } else {
            None
        }
    }

    /// Renders the number for `date` and sequence value `seq` (1-based; wider values are not cut).
    pub fn format(&self, date: NaiveDate, seq: u64) -> String {
        let mut out = String::with_capacity(self.source.len() + 8);
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Year4 => out.push_str(&format!("{:04}", date.year())),
                Part::Year2 => out.push_str(&format!("{:02}", date.year().rem_euclid(100))),
                Part::Month => out.push_str(&format!("{:02}", date.month())),
                Part::Seq { width } => out.push_str(&format!("{seq:0width$}")),
            }
        }
        out
    }
}

impl fmt::Display for SeriesPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl TryFrom<String> for SeriesPattern {
    type Error = DomainError;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        SeriesPattern::parse(&raw)
    }
}

impl From<SeriesPattern> for String {
    fn from(pattern: SeriesPattern) -> String {
        pattern.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap_or_else(|| panic!("bad test date"))
    }

    #[test]
    fn sequence_of_reads_back_what_format_rendered() {
        for pattern in [
            "INV-{YYYY}-{SEQ:3}",
            "ORD-{SEQ:5}",
            "{YY}{MM}/{SEQ}",
            "R{SEQ:2}x",
        ] {
            let p = SeriesPattern::parse(pattern).unwrap_or_else(|e| panic!("{e}"));
            for seq in [1, 42, 999, 1000, 123_456] {
                let number = p.format(date(2026, 3, 5), seq);
                assert_eq!(p.sequence_of(&number), Some(seq), "{pattern} {number}");
            }
        }
        let p = SeriesPattern::parse("INV-{YYYY}-{SEQ:3}").unwrap_or_else(|e| panic!("{e}"));
        for other in [
            "INV-26-001",
            "CN-2026-001",
            "INV-2026-",
            "INV-2026-001x",
            "INV-20x6-001",
        ] {
            assert_eq!(p.sequence_of(other), None, "{other}");
        }
    }

    fn pattern(raw: &str) -> SeriesPattern {
        SeriesPattern::parse(raw).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn patterns_format_dates_and_padded_sequences() {
        fn check(raw: &str, on: NaiveDate, seq: u64, expected: &str) {
            assert_eq!(pattern(raw).format(on, seq), expected, "{raw}");
        }
        let d = date(2026, 3, 9);
        check(QUOTE_PATTERN, d, 43, "Q-2026-043");
        check(ORDER_PATTERN, d, 7, "ORD-00007");
        check(INVOICE_PATTERN, d, 1, "INV-2026-001");
        check(CREDIT_NOTE_PATTERN, d, 12, "CN-2026-012");
        check(INVOICE_PATTERN, d, 1234, "INV-2026-1234");
        check("{YY}{MM}-{SEQ}", d, 5, "2603-5");
        check("{SEQ:2}/{YYYY}", date(2030, 12, 31), 3, "03/2030");
        check("R\u{e9}f-{SEQ}", d, 1, "R\u{e9}f-1");
    }

    #[test]
    fn period_key_resets_yearly_only_with_a_year_token() {
        fn check(raw: &str, on: NaiveDate, expected: &str) {
            assert_eq!(pattern(raw).period_key(on), expected, "{raw}");
        }
        check(INVOICE_PATTERN, date(2026, 12, 31), "2026");
        check(INVOICE_PATTERN, date(2027, 1, 1), "2027");
        check("{YY}-{SEQ}", date(2026, 6, 1), "2026");
        check(ORDER_PATTERN, date(2026, 6, 1), "");
        check("{MM}-{SEQ}", date(2026, 6, 1), "");
    }

    #[test]
    fn bad_patterns_are_rejected() {
        fn check(raw: &str, fragment: &str) {
            match SeriesPattern::parse(raw) {
                Err(DomainError::Invalid { field, message }) => {
                    assert_eq!(field, "pattern");
                    assert!(message.contains(fragment), "{raw}: {message}");
                }
                other => panic!("{raw}: expected an error, got {other:?}"),
            }
        }
        check("INV-{YYYY}", "exactly one {SEQ}");
        check("{SEQ}-{SEQ:3}", "exactly one {SEQ}");
        check("INV-{SEQ", "unclosed");
        check("INV}-{SEQ}", "unmatched");
        check("{DD}-{SEQ}", "unknown token {DD}");
        check("{SEQ:0}", "SEQ width");
        check("{SEQ:x}", "SEQ width");
        check("{SEQ:99}", "SEQ width");
    }

    #[test]
    fn patterns_round_trip_through_serde_as_text() {
        let p = pattern(INVOICE_PATTERN);
        assert_eq!(
            serde_json::to_string(&p).ok().as_deref(),
            Some("\"INV-{YYYY}-{SEQ:3}\"")
        );
        assert_eq!(
            serde_json::from_str::<SeriesPattern>("\"INV-{YYYY}-{SEQ:3}\"").ok(),
            Some(p)
        );
        assert!(serde_json::from_str::<SeriesPattern>("\"INV\"").is_err());
    }
}
