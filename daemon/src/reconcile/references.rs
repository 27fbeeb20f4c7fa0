//! Finding invoice references in a payment: RF creditor references, provider metadata and
//! invoice numbers written by people in free text.
//!
//! Invoice numbers are compared through a canonical key (`INV|2026|7`): the series prefix,
//! upper-cased, then each numeric group without leading zeros. Separators, case, zero padding and
//! line wraps are not part of the key, so `INV-2026-007`, `inv 2026/7`, `INV2026007` and
//! `Inv-2026-0007` all give the same key. The scanner is hand-written over bytes: it runs for every
//! payment of a million-line import and allocates only for what it finds.
//!
//! A series without letters before its first token (`{YYYY}-{SEQ}`) is matched only through
//! provider metadata: in free text its numbers cannot be told from dates and amounts.
//!
//! Statement formats cut remittance text at fixed widths (camt `Ustrd` at 140 characters, MT940
//! `:86:` lines at 65) and join the parts with a space or a line break, so a number may arrive as
//! `INV-20` + `26-017` or `INV-2026-01` + `7`. Every number therefore also yields its readings with
//! one such break removed ([`FoundReference::joined`]); reconciliation accepts one only where it
//! names an invoice exactly.

use settled_plugin_api::PaymentRecord;

use super::Rule;
use crate::domain::rf;

/// The shape of one invoice number series, enough to recognise its numbers in free text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberShape {
    /// Letters before the first token, upper-cased, e.g. `INV` for `INV-{YYYY}-{SEQ:3}`.
    pub prefix: String,
    /// Whether the numbers start with a year (`{YYYY}` or `{YY}`).
    pub has_year: bool,
}

/// A reference found in a payment, before it is looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundReference {
    /// Lookup key: a normalised RF reference (`RF18539007547034`), a canonical invoice number key
    /// (`INV|2026|7`), or for provider metadata without digits the trimmed value itself.
    pub key: String,
    /// The text as it appeared in the payment, e.g. `inv 2026/7`.
    pub raw: String,
    /// How it was found: [`Rule::StructuredReference`], [`Rule::ProviderMetadata`] or [`Rule::InvoiceNumberInText`].
    pub how: Rule,
    /// The payment field it was found in (`structured_reference`, `remittance`, `end_to_end_id`, `invoice_refs`).
    pub field: &'static str,
    /// Whether this reading removed a break (a space or line break) from the text, as a fixed-width
    /// cut would have put it there (`IN` + newline + `V-2026-7`): it counts only where `key` names an
    /// invoice exactly.
    pub across_cut: bool,
    /// Other readings of the same number with one break inside or right after it removed
    /// (`INV-2026-01` + newline + `7`), each [`across_cut`](Self::across_cut), keys distinct.
    pub joined: Vec<FoundReference>,
}

/// Shapes of the number series from their patterns (`INV-{YYYY}-{SEQ:3}`), one per distinct prefix.
pub fn shapes_from_patterns(patterns: &[&str]) -> Vec<NumberShape> {
    let mut shapes: Vec<NumberShape> = Vec::with_capacity(patterns.len());
    for pattern in patterns {
        let literal = pattern.split('{').next().unwrap_or_default();
        let prefix: String = literal
            .chars()
            .filter(char::is_ascii_alphabetic)
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let has_year = pattern.contains("{YYYY}") || pattern.contains("{YY}");
        if !shapes.iter().any(|s| s.prefix == prefix) {
            shapes.push(NumberShape { prefix, has_year });
        }
    }
    shapes
}

/// The shape of a series seen only in one of its numbers (an invoice kept in another system: `TRY-0007`): its
/// letters, and a year when the first number group is one (`19xx`/`20xx`) followed by another group. `None` for a
/// number without letters in front (free text would be full of false hits).
pub fn shape_of_number(number: &str) -> Option<NumberShape> {
    let trimmed = number.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
    let prefix: String = trimmed
        .chars()
        .take_while(char::is_ascii_alphabetic)
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if prefix.is_empty() {
        return None;
    }
    let mut groups = trimmed[prefix.len()..]
        .split(|c: char| !c.is_ascii_digit())
        .filter(|g| !g.is_empty());
    let first = groups.next()?;
    let has_year = first.len() == 4
        && (first.starts_with("19") || first.starts_with("20"))
        && groups.next().is_some();
    Some(NumberShape { prefix, has_year })
}

/// The canonical key of an invoice number (`INV-2026-007` -> `INV|2026|7`), or `None` when it
/// holds no digits. The same function keys issued numbers and numbers named by payers.
pub fn number_key(number: &str, shapes: &[NumberShape]) -> Option<String> {
    let bytes = number.as_bytes();
    let mut i = 0;
    while i < bytes.len() && !bytes[i].is_ascii_alphanumeric() {
        i += 1;
    }
    let prefix_start = i;
    while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
        i += 1;
    }
    let prefix = &number[prefix_start..i];
    let has_year = shapes
        .iter()
        .find(|s| s.prefix.eq_ignore_ascii_case(prefix))
        .is_none_or(|s| s.has_year);
    while i < bytes.len() && is_separator(bytes[i]) {
        i += 1;
    }
    if i >= bytes.len() || !bytes[i].is_ascii_digit() {
        return None;
    }
    let groups = read_groups(bytes, i, has_year, Joining::Any);
    Some(build_key(prefix, bytes, &groups))
}

/// Every reference in a payment, best evidence first: RF references (structured field, then
/// remittance and end-to-end id), provider metadata, then invoice numbers in free text.
/// A key found twice is reported once, with its best evidence.
pub fn find_references(payment: &PaymentRecord, shapes: &[NumberShape]) -> Vec<FoundReference> {
    let mut found = Vec::new();
    let structured = payment.structured_reference.as_deref().map(str::trim);
    let structured_is_rf = structured.is_some_and(looks_like_rf);
    if let Some(reference) = structured.filter(|r| rf::is_valid(r)) {
        push_unique(
            &mut found,
            FoundReference {
                key: rf::normalise(reference),
                raw: reference.to_owned(),
                how: Rule::StructuredReference,
                field: "structured_reference",
                across_cut: false,
                joined: Vec::new(),
            },
        );
    }
    let texts = [
        ("remittance", payment.remittance.as_deref()),
        ("end_to_end_id", payment.end_to_end_id.as_deref()),
    ];
    for (field, text) in texts {
        if let Some(text) = text {
            rf_in_text(text, field, &mut found);
        }
    }
    for raw in &payment.invoice_refs {
        let raw = raw.trim();
        if raw.is_empty() {
            continue;
        }
        let key = if rf::is_valid(raw) {
            rf::normalise(raw)
        } else {
            number_key(raw, shapes).unwrap_or_else(|| raw.to_owned())
        };
        push_unique(
            &mut found,
            FoundReference {
                key,
                raw: raw.to_owned(),
                how: Rule::ProviderMetadata,
                field: "invoice_refs",
                across_cut: false,
                joined: Vec::new(),
            },
        );
    }
    // a structured field that is not an RF reference often carries the invoice number itself
    if let Some(structured) = structured.filter(|_| !structured_is_rf) {
        numbers_in_text(structured, shapes, "structured_reference", &mut found);
    }
    for (field, text) in texts {
        if let Some(text) = text {
            numbers_in_text(text, shapes, field, &mut found);
        }
    }
    found
}

/// How many numeric groups the numbers of a series have when written without extra parts.
pub(crate) fn expected_groups(prefix: &str, shapes: &[NumberShape]) -> usize {
    let has_year = shapes
        .iter()
        .find(|s| s.prefix == prefix)
        .is_none_or(|s| s.has_year);
    if has_year {
        2
    } else {
        1
    }
}

/// The key cut to its prefix and first `groups` numeric groups, if it has more than that.
pub(crate) fn truncated_key(key: &str, groups: usize) -> Option<&str> {
    let cut = key.match_indices('|').nth(groups).map(|(i, _)| i)?;
    key.get(..cut)
}

/// At most this many numeric groups make up one number.
const MAX_GROUPS: usize = 4;
/// At most this many separator characters between two groups (`" -\n"` in `INV 2026 -\n007`).
const MAX_SEPARATOR_RUN: usize = 4;

/// Which separators may join the next numeric group to a number.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Joining {
    /// An issued number: every group belongs to it.
    Any,
    /// Free text: any separator up to the series' group count, past it only one of `-/._`,
    /// so `INV-2026-007 100.00` stops before the amount.
    UpTo(usize),
}

struct Groups {
    ranges: [(usize, usize); MAX_GROUPS],
    len: usize,
}

impl Groups {
    fn end(&self) -> usize {
        self.len
            .checked_sub(1)
            .map_or(0, |last| self.ranges[last].1)
    }

    fn push(&mut self, range: (usize, usize)) -> bool {
        if self.len == MAX_GROUPS {
            return false;
        }
        self.ranges[self.len] = range;
        self.len += 1;
        true
    }
}

fn is_separator(b: u8) -> bool {
    matches!(
        b,
        b' ' | b'\t' | b'\r' | b'\n' | b'-' | b'/' | b'.' | b'_' | b'#' | b':'
    )
}

fn is_group_separator(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'-' | b'/' | b'.' | b'_')
}

/// Reads numeric groups from `start` (a digit). A leading digit run longer than four that starts
/// like a year (`19..`, `20..`) splits into the year and the rest, so `INV2026007` reads as 2026, 007.
fn read_groups(bytes: &[u8], start: usize, has_year: bool, joining: Joining) -> Groups {
    let mut groups = Groups {
        ranges: [(0, 0); MAX_GROUPS],
        len: 0,
    };
    let mut j = start;
    loop {
        let run_start = j;
        while j < bytes.len() && bytes[j].is_ascii_digit() {
            j += 1;
        }
        let year_shaped = has_year
            && groups.len == 0
            && j - run_start > 4
            && matches!(&bytes[run_start..run_start + 2], b"19" | b"20");
        let pushed = if year_shaped {
            groups.push((run_start, run_start + 4)) && groups.push((run_start + 4, j))
        } else {
            groups.push((run_start, j))
        };
        if !pushed {
            return groups;
        }
        let mut k = j;
        while k < bytes.len() && is_group_separator(bytes[k]) && k - j < MAX_SEPARATOR_RUN {
            k += 1;
        }
        if k == j || k >= bytes.len() || !bytes[k].is_ascii_digit() {
            return groups;
        }
        let joins = match joining {
            Joining::Any => true,
            Joining::UpTo(expected) => {
                groups.len < expected
                    || (k - j == 1 && matches!(bytes[j], b'-' | b'/' | b'.' | b'_'))
            }
        };
        if !joins {
            return groups;
        }
        j = k;
    }
}

fn build_key(prefix: &str, bytes: &[u8], groups: &Groups) -> String {
    let mut key = String::with_capacity(prefix.len() + 12);
    key.extend(prefix.chars().map(|c| c.to_ascii_uppercase()));
    for &(start, end) in &groups.ranges[..groups.len] {
        key.push('|');
        let digits = &bytes[start..end];
        let significant = digits
            .iter()
            .position(|&d| d != b'0')
            .map_or(&digits[digits.len().saturating_sub(1)..], |first| {
                &digits[first..]
            });
        key.extend(significant.iter().map(|&d| char::from(d)));
    }
    key
}

fn looks_like_rf(reference: &str) -> bool {
    let bytes = reference.as_bytes();
    bytes.len() >= 4
        && bytes[..2].eq_ignore_ascii_case(b"RF")
        && bytes[2].is_ascii_digit()
        && bytes[3].is_ascii_digit()
}

fn push_unique(found: &mut Vec<FoundReference>, reference: FoundReference) {
    if !found.iter().any(|f| f.key == reference.key) {
        found.push(reference);
    }
}

fn rf_in_text(text: &str, field: &'static str, found: &mut Vec<FoundReference>) {
    let bytes = text.as_bytes();
    let mut readings = Vec::new();
    let mut i = 0;
    while i + 4 <= bytes.len() {
        if !bytes[i].eq_ignore_ascii_case(&b'R') {
            i += 1;
            continue;
        }
        readings.clear();
        let end = rf::readings_at(text, i, &mut readings);
        // every valid reading is kept (longest first): the index decides which one is ours
        for (reading_end, reference) in readings.drain(..).rev() {
            let raw = text.get(i..reading_end).unwrap_or_default().to_owned();
            push_unique(
                found,
                FoundReference {
                    key: reference,
                    raw,
                    how: Rule::StructuredReference,
                    field,
                    across_cut: false,
                    joined: Vec::new(),
                },
            );
        }
        i = if end > i { end } else { i + 1 };
    }
}

fn numbers_in_text(
    text: &str,
    shapes: &[NumberShape],
    field: &'static str,
    found: &mut Vec<FoundReference>,
) {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_alphabetic() || (i > 0 && bytes[i - 1].is_ascii_alphanumeric()) {
            i += 1;
            continue;
        }
        let whole = shapes
            .iter()
            .find_map(|shape| number_at(text, i, shape, field).map(|found| (shape, found)));
        let reading = match whole {
            Some((shape, (end, mut reference))) => {
                reference.joined = joined_readings(text, i, end, shape, &reference);
                Some((end, reference))
            }
            None => shapes
                .iter()
                .find_map(|shape| number_across_prefix_cut(text, i, shape, field)),
        };
        match reading {
            Some((end, reference)) => {
                push_unique(found, reference);
                i = end.max(i + 1);
            }
            None => i += 1,
        }
    }
}

/// A number of `shape` starting at byte `i` of `text`, with the byte where it ends.
fn number_at(
    text: &str,
    i: usize,
    shape: &NumberShape,
    field: &'static str,
) -> Option<(usize, FoundReference)> {
    let bytes = text.as_bytes();
    let prefix = shape.prefix.as_bytes();
    // a series without letters would match every date and amount in free text
    if prefix.is_empty()
        || !bytes.get(i..i + prefix.len())?.eq_ignore_ascii_case(prefix)
        || rf::word_char_before(text, i)
    {
        return None;
    }
    let mut j = i + prefix.len();
    while j < bytes.len() && is_separator(bytes[j]) && j - i - prefix.len() < MAX_SEPARATOR_RUN {
        j += 1;
    }
    if !bytes.get(j)?.is_ascii_digit() {
        return None;
    }
    let expected = if shape.has_year { 2 } else { 1 };
    let groups = read_groups(bytes, j, shape.has_year, Joining::UpTo(expected));
    let end = groups.end();
    if rf::word_char_after(text, end) {
        return None;
    }
    Some((
        end,
        FoundReference {
            key: build_key(&shape.prefix, bytes, &groups),
            raw: text.get(i..end)?.to_owned(),
            how: Rule::InvoiceNumberInText,
            field,
            across_cut: false,
            joined: Vec::new(),
        },
    ))
}

/// Bytes of text read past a cut to finish a number (more only while a word goes on).
const CUT_LOOKAHEAD: usize = 48;

/// The length of a break a fixed-width cut leaves at byte `at` (a space, or a line break), if any.
fn cut_at(bytes: &[u8], at: usize) -> Option<usize> {
    match bytes.get(at..)? {
        [b'\r', b'\n', ..] => Some(2),
        [b' ' | b'\n' | b'\r', ..] => Some(1),
        _ => None,
    }
}

/// The readings of the number at `i..end` with one break after its prefix (up to and including one
/// right after `end`) removed, whose keys differ from the number's own and from each other.
fn joined_readings(
    text: &str,
    i: usize,
    end: usize,
    shape: &NumberShape,
    number: &FoundReference,
) -> Vec<FoundReference> {
    let bytes = text.as_bytes();
    let mut readings: Vec<FoundReference> = Vec::new();
    let mut at = i + shape.prefix.len();
    while at <= end {
        let Some(len) = cut_at(bytes, at) else {
            at += 1;
            continue;
        };
        if let Some((_, reading)) = reading_across(text, i, at, len, shape, number.field) {
            if reading.key != number.key && readings.iter().all(|r| r.key != reading.key) {
                readings.push(reading);
            }
        }
        at += len;
    }
    readings
}

/// A number starting at `i` whose prefix a break cuts in two (`IN` + newline + `V-2026-017`).
fn number_across_prefix_cut(
    text: &str,
    i: usize,
    shape: &NumberShape,
    field: &'static str,
) -> Option<(usize, FoundReference)> {
    let bytes = text.as_bytes();
    let prefix = shape.prefix.as_bytes();
    if prefix.len() < 2 || rf::word_char_before(text, i) {
        return None;
    }
    for head in 1..prefix.len() {
        if !bytes
            .get(i..i + head)?
            .eq_ignore_ascii_case(&prefix[..head])
        {
            return None;
        }
        let Some(len) = cut_at(bytes, i + head) else {
            continue;
        };
        let rest = i + head + len;
        let rest_matches = bytes
            .get(rest..rest + prefix.len() - head)
            .is_some_and(|r| r.eq_ignore_ascii_case(&prefix[head..]));
        if rest_matches {
            return reading_across(text, i, i + head, len, shape, field);
        }
    }
    None
}

/// The number of `shape` at `i` read with the `len`-byte break at `cut` removed, if that reading
/// goes past the cut; with its end in `text`.
fn reading_across(
    text: &str,
    i: usize,
    cut: usize,
    len: usize,
    shape: &NumberShape,
    field: &'static str,
) -> Option<(usize, FoundReference)> {
    let bytes = text.as_bytes();
    let after = cut + len;
    let mut limit = (after + CUT_LOOKAHEAD).min(bytes.len());
    while limit < bytes.len()
        && (bytes[limit].is_ascii_alphanumeric() || !text.is_char_boundary(limit))
    {
        limit += 1;
    }
    let mut joined = String::with_capacity(limit - i);
    joined.push_str(text.get(i..cut)?);
    joined.push_str(text.get(after..limit)?);
    let (joined_end, reading) = number_at(&joined, 0, shape, field)?;
    if joined_end <= cut - i {
        return None;
    }
    let end = i + joined_end + len;
    Some((
        end,
        FoundReference {
            raw: text.get(i..end)?.to_owned(),
            across_cut: true,
            ..reading
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn shapes() -> Vec<NumberShape> {
        shapes_from_patterns(&["INV-{YYYY}-{SEQ:3}", "CN-{YYYY}-{SEQ:3}", "ORD-{SEQ:5}"])
    }

    #[test]
    fn a_series_seen_in_one_number_has_its_letters_and_a_year_only_when_one_leads() {
        let shape = |n: &str| shape_of_number(n).map(|s| (s.prefix, s.has_year));
        assert_eq!(shape("TRY-0007"), Some(("TRY".into(), false)));
        assert_eq!(shape("re2026-17"), Some(("RE".into(), true)));
        assert_eq!(shape("F-2026"), Some(("F".into(), false)));
        assert_eq!(shape("2026-17"), None);
    }

    #[test]
    fn shapes_come_from_the_literal_prefix_and_year_tokens() {
        let got = shapes_from_patterns(&[
            "INV-{YYYY}-{SEQ:3}",
            "ORD-{SEQ:5}",
            "f{YY}{MM}-{SEQ}",
            "INV/{SEQ}",
        ]);
        let want = [("INV", true), ("ORD", false), ("F", true)];
        assert_eq!(got.len(), want.len());
        for (shape, (prefix, has_year)) in got.iter().zip(want) {
            assert_eq!((shape.prefix.as_str(), shape.has_year), (prefix, has_year));
        }
    }

    fn check_key(number: &str, expected: Option<&str>) {
        assert_eq!(
            number_key(number, &shapes()).as_deref(),
            expected,
            "key of {number:?}"
        );
    }

    #[test]
    fn number_keys_ignore_case_separators_and_zero_padding() {
        check_key("INV-2026-007", Some("INV|2026|7"));
        check_key("inv 2026/7", Some("INV|2026|7"));
        check_key("INV2026007", Some("INV|2026|7"));
        check_key("Inv-2026-0007", Some("INV|2026|7"));
        check_key("INV-2026-0071", Some("INV|2026|71"));
        check_key("INV-2026-000", Some("INV|2026|0"));
        check_key("ORD-00042", Some("ORD|42"));
        check_key("ORD00042", Some("ORD|42"));
        check_key(" 2026-007 ", Some("|2026|7"));
        check_key("INV-", None);
        check_key("in_abc", None);
        check_key("in_123abc", Some("IN|123"));
    }

    fn check_text(text: &str, expected: &[&str]) {
        let mut payment = PaymentRecord::new("p", dec!(1), "EUR");
        payment.remittance = Some(text.to_owned());
        let keys: Vec<String> = find_references(&payment, &shapes())
            .into_iter()
            .map(|r| r.key)
            .collect();
        assert_eq!(keys, expected, "references in {text:?}");
    }

    #[test]
    fn invoice_numbers_are_found_in_every_written_form() {
        for text in [
            "INV-2026-007",
            "payment inv 2026/7 thanks",
            "INV2026007",
            "Inv-2026-0007",
            "INV 2026 -\n007",
            "re: INV_2026.007, cheers",
            "Invoice INV#2026-007",
            "INV-2026-007 100.00 EUR",
        ] {
            check_text(text, &["INV|2026|7"]);
        }
    }

    #[test]
    fn invoice_numbers_are_not_found_inside_longer_words_or_numbers() {
        check_text("XINV-2026-0071", &[]);
        check_text("INV-2026-0071", &["INV|2026|71"]);
        check_text("INV-2026-007abc", &[]);
        check_text("Invoice 2026/7", &[]);
        check_text("ÜINV-2026-007", &[]);
        check_text("2026-007", &[]);
    }

    #[test]
    fn several_numbers_in_one_text_are_all_found_once() {
        check_text(
            "INV-2026-007, inv 2026/8 and INV2026007 again; CN-2026-001",
            &["INV|2026|7", "INV|2026|8", "CN|2026|1"],
        );
        check_text("orders ORD-00042 ORD 43", &["ORD|42", "ORD|43"]);
    }

    /// Every reading of a remittance text: (key, raw, whether it removed a break).
    fn readings(text: &str) -> Vec<(String, String, bool)> {
        let mut payment = PaymentRecord::new("p", dec!(1), "EUR");
        payment.remittance = Some(text.to_owned());
        find_references(&payment, &shapes())
            .into_iter()
            .flat_map(|r| {
                let joined = r.joined.clone();
                std::iter::once(r).chain(joined)
            })
            .map(|r| (r.key, r.raw, r.across_cut))
            .collect()
    }

    /// `written` cut after `at` bytes by `cut` inside a sentence: some reading removes the cut and
    /// gives `key`, quoting the text with the cut.
    fn check(written: &str, at: usize, cut: &str, key: &str) {
        let (head, tail) = written.split_at(at);
        let text = format!("Zahlung {head}{cut}{tail} danke");
        let found = readings(&text);
        let quoted = format!("{head}{cut}{tail}");
        let plain = (key.to_owned(), quoted.clone(), false);
        let joined = (key.to_owned(), quoted, true);
        assert!(
            found.contains(&plain) || found.contains(&joined),
            "{key} not read from {text:?}: {found:?}"
        );
    }

    #[test]
    fn a_number_cut_at_any_position_by_a_space_or_line_break_is_read_whole() {
        for (written, key) in [
            ("INV-2026-017", "INV|2026|17"),
            ("INV2026017", "INV|2026|17"),
            ("inv 2026/17", "INV|2026|17"),
            ("CN-2026-5", "CN|2026|5"),
            ("ORD-00042", "ORD|42"),
        ] {
            for at in 1..written.len() {
                for cut in [" ", "\n", "\r\n"] {
                    check(written, at, cut, key);
                }
            }
        }
    }

    #[test]
    fn readings_across_a_cut_are_marked_and_distinct_from_the_plain_one() {
        let read = |text: &str| -> Vec<(String, bool)> {
            readings(text)
                .into_iter()
                .map(|(k, _, cut)| (k, cut))
                .collect()
        };
        let reading = |key: &str, cut: bool| (key.to_owned(), cut);
        // inside the digits: the plain reading first, then the joined one
        assert_eq!(
            read("INV-2026-01\n7 thanks"),
            [reading("INV|2026|1", false), reading("INV|2026|17", true)]
        );
        // inside the prefix: only the joined reading exists
        assert_eq!(read("I\nNV-2026-017"), [reading("INV|2026|17", true)]);
        // inside the year
        assert_eq!(
            read("INV-20 26-017"),
            [reading("INV|20|26|17", false), reading("INV|2026|17", true)]
        );
        // two breaks give two different joined readings
        assert_eq!(
            read("INV-20 26 17"),
            [
                reading("INV|20|26", false),
                reading("INV|2026|17", true),
                reading("INV|20|2617", true)
            ]
        );
        // a word after the break never continues a number
        assert_eq!(read("INV-2026-017\nDanke"), [reading("INV|2026|17", false)]);
        assert_eq!(read("INV-2026-017 2026x"), [reading("INV|2026|17", false)]);
        // a longer word that merely starts like a prefix is no number
        assert_eq!(read("IN VOICE 2026-017"), []);
    }

    #[test]
    fn extra_groups_joined_tightly_stay_part_of_the_number() {
        check_text("INV-2026-007-2", &["INV|2026|7|2"]);
        assert_eq!(truncated_key("INV|2026|7|2", 2), Some("INV|2026|7"));
        assert_eq!(truncated_key("INV|2026|7", 2), None);
        assert_eq!(expected_groups("INV", &shapes()), 2);
        assert_eq!(expected_groups("ORD", &shapes()), 1);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn arbitrary_text_never_panics_and_keys_are_canonical(
                text in "(\\PC|[\n\r -/.#:_]|INV|inv|RF[0-9]{2}|[0-9]{1,6}|é){0,40}",
            ) {
                let mut payment = PaymentRecord::new("p", dec!(1), "EUR");
                payment.remittance = Some(text.clone());
                payment.structured_reference = Some(text.clone());
                payment.invoice_refs = vec![text.clone()];
                for found in find_references(&payment, &shapes()) {
                    prop_assert!(text.contains(found.raw.trim()) || found.how == Rule::ProviderMetadata);
                    if found.how == Rule::InvoiceNumberInText {
                        prop_assert!(found.key.starts_with("INV|") || found.key.starts_with("CN|") || found.key.starts_with("ORD|"));
                        prop_assert!(found.key.split('|').skip(1).all(|g| g == "0" || !g.starts_with('0')));
                    }
                }
                let _ = number_key(&text, &shapes());
                let _ = rf::find_in_text(&text);
            }

            #[test]
            fn any_written_form_of_a_number_gives_its_key(
                seq in 0u32..100_000,
                padding in 0usize..6,
                upper in any::<bool>(),
                first in prop::sample::select(vec!["", "-", " ", "/", ".", "_", " -\n", "\n"]),
                second in prop::sample::select(vec!["", "-", " ", "/", ".", "_", " -\n", "\n", "\r\n"]),
                before in "[a-z ]{0,10}",
                after in "[ ,.;][a-z ]{0,10}",
            ) {
                let prefix = if upper { "INV" } else { "inv" };
                let written = format!("{prefix}{first}2026{second}{seq:0padding$}");
                let text = format!("{before} {written}{after}");
                let mut payment = PaymentRecord::new("p", dec!(1), "EUR");
                payment.remittance = Some(text.clone());
                let found = find_references(&payment, &shapes());
                let key = format!("INV|2026|{seq}");
                prop_assert!(
                    found.iter().any(|r| r.key == key),
                    "{:?} not found in {:?}: {:?}", key, text, found
                );
                prop_assert_eq!(number_key(&written, &shapes()), Some(key));
            }
        }
    }

    #[test]
    fn references_come_in_priority_order_with_their_field() {
        let mut payment = PaymentRecord::new("p", dec!(1), "EUR");
        payment.structured_reference = Some("RF18 5390 0754 7034".into());
        payment.remittance = Some("INV-2026-007 and RF712348231".into());
        payment.invoice_refs = vec!["in_abc".into(), "INV-2026-9".into()];
        payment.end_to_end_id = Some("INV-2026-007".into());
        let got: Vec<(String, Rule, &str)> = find_references(&payment, &shapes())
            .into_iter()
            .map(|r| (r.key, r.how, r.field))
            .collect();
        let want = vec![
            (
                "RF18539007547034".to_owned(),
                Rule::StructuredReference,
                "structured_reference",
            ),
            (
                "RF712348231".to_owned(),
                Rule::StructuredReference,
                "remittance",
            ),
            ("in_abc".to_owned(), Rule::ProviderMetadata, "invoice_refs"),
            (
                "INV|2026|9".to_owned(),
                Rule::ProviderMetadata,
                "invoice_refs",
            ),
            (
                "INV|2026|7".to_owned(),
                Rule::InvoiceNumberInText,
                "remittance",
            ),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn an_rf_with_bad_check_digits_is_no_reference() {
        let mut payment = PaymentRecord::new("p", dec!(1), "EUR");
        payment.structured_reference = Some("RF19539007547034".into());
        payment.remittance = Some("RF00INV2026007".into());
        assert_eq!(find_references(&payment, &shapes()), vec![]);
    }

    #[test]
    fn a_non_rf_structured_reference_is_read_for_invoice_numbers() {
        let mut payment = PaymentRecord::new("p", dec!(1), "EUR");
        payment.structured_reference = Some("INV2026007".into());
        let found = find_references(&payment, &shapes());
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].key.as_str(), found[0].raw.as_str(), found[0].field),
            ("INV|2026|7", "INV2026007", "structured_reference")
        );
    }
}
