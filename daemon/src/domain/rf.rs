//! ISO 11649 structured creditor references (`RF` + two check digits + up to 21 alphanumerics).
//!
//! Check digits use ISO 7064 mod 97-10: the reference is rearranged as base + `RF` + check,
//! letters become numbers (A = 10 .. Z = 35) and the whole must leave remainder 1 modulo 97.

/// Longest base (the part after `RF` and the check digits) the standard allows.
const MAX_BASE_LEN: usize = 21;
/// Shortest and longest complete references: `RF` + 2 check digits + 1..=21 characters.
const MIN_REF_LEN: usize = 5;
const MAX_REF_LEN: usize = 4 + MAX_BASE_LEN;

/// The creditor reference for an invoice number such as `INV-2026-007` (-> `RF..INV2026007`).
///
/// Keeps the ASCII alphanumerics, upper-cased; a base longer than 21 characters keeps its last 21
/// (the sequence part of a number is at its end). A base with no alphanumerics at all becomes `0`,
/// so the result is always a valid reference.
pub fn creditor_reference(base: &str) -> String {
    let mut cleaned: String = base
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if cleaned.len() > MAX_BASE_LEN {
        cleaned = cleaned.split_off(cleaned.len() - MAX_BASE_LEN);
    }
    if cleaned.is_empty() {
        cleaned.push('0');
    }
    let remainder = mod97(cleaned.bytes().chain(*b"RF00"));
    let check = 98 - remainder;
    format!("RF{check:02}{cleaned}")
}

/// Whether `reference` is a well-formed RF reference with correct check digits.
/// Whitespace is ignored and letters may be in any case.
pub fn is_valid(reference: &str) -> bool {
    let normalised = normalise(reference);
    is_valid_normalised(normalised.as_bytes())
}

/// The reference as stored and compared: whitespace removed, upper-cased.
pub fn normalise(reference: &str) -> String {
    reference
        .chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_uppercase)
        .collect()
}

/// Every valid RF reference in free text, normalised, in order of appearance.
///
/// A reference may be printed in groups of four (`RF18 5390 0754 7034`) or wrapped over lines.
/// Where several readings starting at the same `RF` are valid, the longest wins; an `RF` with
/// bad check digits is not a reference.
pub fn find_in_text(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut readings = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i + 4 <= bytes.len() {
        readings.clear();
        let end = readings_at(text, i, &mut readings);
        if let Some(longest) = readings.pop() {
            found.push(longest.1);
            i = end;
        } else {
            i += 1;
        }
    }
    found
}

/// The valid readings of a reference starting at byte `start` of `text`, shortest first, as
/// `(end byte, normalised reference)`. Returns the end of the longest reading (or `start`).
///
/// A reading is a run of chunks (alphanumerics) separated by short whitespace: print groups of four
/// (`RF18 5390 0754 7034`), with at most one line break, and at most one cut joining two chunks
/// (a fixed-width line cut, joined by a line break or a space): `RF1` + newline + `8539...` or
/// `RF18 5390 07` + newline + `54 7034`. Used by reconciliation, which tries every reading against
/// the invoices it knows.
pub(crate) fn readings_at(text: &str, start: usize, out: &mut Vec<(usize, String)>) -> usize {
    let bytes = text.as_bytes();
    if !bytes
        .get(start)
        .is_some_and(|b| b.eq_ignore_ascii_case(&b'R'))
        || !bytes
            .get(start + 1)
            .is_some_and(|b| b.eq_ignore_ascii_case(&b'F') || b.is_ascii_whitespace())
        || word_char_before(text, start)
    {
        return start;
    }
    let chunks = chunks_at(text, start);
    let mut buf: Vec<u8> = Vec::with_capacity(MAX_REF_LEN);
    let mut longest_end = start;
    for (k, chunk) in chunks.iter().enumerate() {
        buf.extend(
            bytes[chunk.start..chunk.end]
                .iter()
                .map(u8::to_ascii_uppercase),
        );
        if buf.len() > MAX_REF_LEN {
            break;
        }
        if printed_form(&chunks[..=k]) && is_valid_normalised(&buf) {
            out.push((chunk.end, String::from_utf8_lossy(&buf).into_owned()));
            longest_end = chunk.end;
        }
    }
    longest_end
}

/// A run of alphanumerics in a printed reference, and whether the whitespace before it held a line break.
struct Chunk {
    start: usize,
    end: usize,
    after_newline: bool,
}

/// The chunks from `start`: alphanumeric runs separated by at most three whitespace characters,
/// up to whatever else follows (a chunk glued to a non-ASCII letter ends the run before it).
fn chunks_at(text: &str, start: usize) -> Vec<Chunk> {
    let bytes = text.as_bytes();
    let mut chunks = Vec::new();
    let mut j = start;
    let mut after_newline = false;
    let mut total = 0;
    loop {
        let chunk_start = j;
        while j < bytes.len() && bytes[j].is_ascii_alphanumeric() {
            j += 1;
        }
        if j == chunk_start || word_char_after(text, j) {
            return chunks;
        }
        total += j - chunk_start;
        chunks.push(Chunk {
            start: chunk_start,
            end: j,
            after_newline,
        });
        if total > MAX_REF_LEN {
            return chunks;
        }
        let mut k = j;
        after_newline = false;
        while k < bytes.len() && matches!(bytes[k], b' ' | b'\t' | b'\r' | b'\n') && k - j < 4 {
            after_newline |= bytes[k] == b'\n';
            k += 1;
        }
        if k == j {
            return chunks;
        }
        j = k;
    }
}

/// Whether chunks read as one reference: at most one line break between them, and print groups of
/// four (every group but the last exactly four long) once at most one cut has joined two neighbours.
fn printed_form(chunks: &[Chunk]) -> bool {
    if chunks.iter().filter(|c| c.after_newline).count() > 1 {
        return false;
    }
    let lengths: Vec<usize> = chunks.iter().map(|c| c.end - c.start).collect();
    let grouped = |lengths: &[usize]| {
        lengths
            .split_last()
            .is_some_and(|(_, init)| init.iter().all(|&l| l == 4))
    };
    if grouped(&lengths) {
        return true;
    }
    (1..lengths.len()).any(|cut| {
        let mut joined = lengths.clone();
        let right = joined.remove(cut);
        joined[cut - 1] += right;
        grouped(&joined)
    })
}

fn is_valid_normalised(reference: &[u8]) -> bool {
    if reference.len() < MIN_REF_LEN || reference.len() > MAX_REF_LEN {
        return false;
    }
    if !reference[..2].eq_ignore_ascii_case(b"RF")
        || !reference[2].is_ascii_digit()
        || !reference[3].is_ascii_digit()
        || !reference[4..].iter().all(u8::is_ascii_alphanumeric)
    {
        return false;
    }
    let rearranged = reference[4..].iter().chain(&reference[..4]).copied();
    mod97(rearranged) == 1
}

/// Remainder modulo 97 of the number spelled by alphanumerics (letters count as 10..35).
fn mod97(chars: impl Iterator<Item = u8>) -> u32 {
    chars.fold(0u32, |acc, c| match c {
        b'0'..=b'9' => (acc * 10 + u32::from(c - b'0')) % 97,
        _ => {
            let value = u32::from(c.to_ascii_uppercase().saturating_sub(b'A')) + 10;
            (acc * 100 + value) % 97
        }
    })
}

/// Whether the character just before byte `i` is a letter or digit (so `i` is inside a word).
pub(crate) fn word_char_before(text: &str, i: usize) -> bool {
    text.get(..i)
        .and_then(|head| head.chars().next_back())
        .is_some_and(char::is_alphanumeric)
}

/// Whether the character starting at byte `i` is a letter or digit.
pub(crate) fn word_char_after(text: &str, i: usize) -> bool {
    text.get(i..)
        .and_then(|tail| tail.chars().next())
        .is_some_and(char::is_alphanumeric)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_valid_references_are_valid() {
        for reference in [
            "RF18539007547034",
            "RF712348231",
            "RF18 5390 0754 7034",
            "rf18539007547034",
            "RF18 5390\n0754 7034",
        ] {
            assert!(is_valid(reference), "{reference} should be valid");
        }
    }

    #[test]
    fn wrong_check_digits_or_shape_are_invalid() {
        for reference in [
            "RF19539007547034",
            "RF18539007547035",
            "RF712348232",
            "RF71",
            "RF7",
            "",
            "XX712348231",
            "RFAB2348231",
            "RF71234-8231",
            "RF0012345678901234567890123",
        ] {
            assert!(!is_valid(reference), "{reference} should be invalid");
        }
    }

    #[test]
    fn normalise_strips_whitespace_and_upper_cases() {
        assert_eq!(normalise(" rf18 5390\t0754\n7034 "), "RF18539007547034");
    }

    fn check_reference(base: &str, expected: &str) {
        let reference = creditor_reference(base);
        assert_eq!(reference, expected, "creditor reference for {base:?}");
        assert!(is_valid(&reference), "{reference} must validate");
    }

    #[test]
    fn creditor_reference_reproduces_known_references_and_cleans_numbers() {
        check_reference("539007547034", "RF18539007547034");
        check_reference("2348231", "RF712348231");
        check_reference("2348 2-31", "RF712348231");
        let inv = creditor_reference("INV-2026-007");
        assert!(inv.starts_with("RF") && inv.ends_with("INV2026007"));
        assert_eq!(inv.len(), 14);
        assert!(is_valid(&inv));
        assert_eq!(creditor_reference("inv-2026-007"), inv);
    }

    #[test]
    fn creditor_reference_keeps_the_last_21_characters() {
        let reference = creditor_reference("ABCDEFGHIJ-0123456789-XYZ");
        assert_eq!(&reference[4..], "CDEFGHIJ0123456789XYZ");
        let long = creditor_reference("A1B2C3D4E5F6G7H8I9J0K1L2");
        assert_eq!(&long[4..], "2C3D4E5F6G7H8I9J0K1L2");
        assert!(is_valid(&long));
    }

    #[test]
    fn creditor_reference_of_nothing_is_still_valid() {
        let reference = creditor_reference("--");
        assert!(reference.ends_with('0'));
        assert!(is_valid(&reference));
    }

    fn check_find(text: &str, expected: &[&str]) {
        assert_eq!(find_in_text(text), expected, "references in {text:?}");
    }

    #[test]
    fn find_in_text_finds_references_in_every_printed_form() {
        check_find("RF18539007547034", &["RF18539007547034"]);
        check_find("pay RF18 5390 0754 7034 thanks", &["RF18539007547034"]);
        check_find("ref: rf18539007547034.", &["RF18539007547034"]);
        check_find("RF1853900754\n7034 thank you", &["RF18539007547034"]);
        check_find("RF18 5390 0754\r\n7034", &["RF18539007547034"]);
        check_find("RF18 5390\n0754 7034 ok", &["RF18539007547034"]);
        check_find("ref RF18 5390 07\n54 7034 ok", &["RF18539007547034"]);
        check_find(
            "RF712348231, RF18539007547034",
            &["RF712348231", "RF18539007547034"],
        );
    }

    #[test]
    fn find_in_text_rejects_bad_check_digits_and_embedded_references() {
        check_find("RF19539007547034", &[]);
        check_find("XRF18539007547034", &[]);
        check_find("RF18539007547034X", &[]);
        check_find("RF18539007547034é", &[]);
        check_find("nothing here, RF", &[]);
        check_find("ÄRF712348231", &[]);
    }

    #[test]
    fn find_in_text_does_not_glue_following_words() {
        // "THANKS" is longer than a print group, so it never continues the reference
        check_find("RF18 5390 0754 7034 THANKS", &["RF18539007547034"]);
        check_find("RF712348231 and more", &["RF712348231"]);
    }

    #[test]
    fn a_reference_cut_at_any_position_by_a_space_or_line_break_is_found() {
        for written in ["RF18539007547034", "RF18 5390 0754 7034"] {
            for at in 1..written.len() {
                for cut in [" ", "\n", "\r\n"] {
                    let (head, tail) = written.split_at(at);
                    let text = format!("Zahlung {head}{cut}{tail} danke");
                    let mut readings = Vec::new();
                    readings_at(&text, "Zahlung ".len(), &mut readings);
                    assert!(
                        readings.iter().any(|(_, r)| r == "RF18539007547034"),
                        "{text:?}: {readings:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_generated_reference_is_found_in_text_in_groups_of_four() {
        for number in ["INV-2026-007", "INV-2026-123", "CN-2025-1", "Q-2026-999"] {
            let reference = creditor_reference(number);
            let grouped: Vec<String> = reference
                .as_bytes()
                .chunks(4)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect();
            let text = format!("Payment {} thanks", grouped.join(" "));
            assert_eq!(find_in_text(&text), vec![reference.clone()], "{text}");
        }
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn generated_references_always_validate(base in "[A-Za-z0-9 -]{0,40}") {
                let reference = creditor_reference(&base);
                prop_assert!(is_valid(&reference));
                prop_assert!(reference.len() <= MAX_REF_LEN);
            }

            #[test]
            fn a_changed_check_digit_never_validates(base in "[A-Z0-9]{1,21}", delta in 1u32..10) {
                let reference = creditor_reference(&base);
                let check: u32 = reference[2..4].parse().unwrap_or(0);
                let wrong = format!("RF{:02}{}", (check + delta * 10) % 100, &reference[4..]);
                // mod 97 catches every change of the check digits except +/- 97
                prop_assume!((check + delta * 10) % 100 != check);
                prop_assert!(!is_valid(&wrong));
            }
        }
    }
}
