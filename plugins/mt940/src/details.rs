//! The `:86:` information to the account owner, in its three common shapes:
//! German structured (`166?00GUTSCHRIFT?20EREF+...?21SVWZ+...?32name`), Dutch/slash keyed
//! (`/TRTP/.../IBAN/.../NAME/.../REMI/.../EREF/...`) and free text.

use crate::swift::Field;

/// The SWIFT line width: a line this long was cut there, maybe mid-word.
const LINE_WIDTH: usize = 65;

/// SEPA keywords of the German `?2x` purpose lines (DK "Datenformate", SEPA-Verwendungszweck).
const SEPA_KEYWORDS: [&str; 12] = [
    "EREF", "KREF", "MREF", "CRED", "DEBT", "SVWZ", "ABWA", "ABWE", "IBAN", "BIC", "COAM", "OAMT",
];

/// Keys of the Dutch/slash `:86:` format (Rabobank, ING, ABN AMRO and others).
const SLASH_KEYS: [&str; 30] = [
    "TRTP",
    "CSID",
    "MARF",
    "EREF",
    "PREF",
    "KREF",
    "ORDP",
    "BENM",
    "NAME",
    "IBAN",
    "BIC",
    "ID",
    "ADDR",
    "REMI",
    "CDTRREF",
    "CDTRREFTP",
    "CD",
    "ISSR",
    "RTRN",
    "PURP",
    "ULTC",
    "ULTD",
    "ULTB",
    "ISDT",
    "CNTP",
    "EXCH",
    "OCMT",
    "CHGS",
    "SVCL",
    "ACCW",
];

/// German transaction codes (Geschäftsvorfallcodes) for returned payments.
const RETURN_CODES: [&str; 2] = ["109", "159"];

/// What a `:86:` field says about a statement line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Details {
    /// Remittance text.
    pub remittance: Option<String>,
    /// End-to-end id (`EREF`), unless `NOTPROVIDED`.
    pub end_to_end_id: Option<String>,
    /// Counterparty name.
    pub counterparty_name: Option<String>,
    /// Counterparty account.
    pub counterparty_account: Option<String>,
    /// A creditor reference the format marks as structured.
    pub structured_reference: Option<String>,
    /// The details mark the line as a returned payment.
    pub is_return: bool,
}

/// Reads a `:86:` field.
pub fn parse_details(field: &Field) -> Details {
    // Structured shapes are one stream cut into lines at the width; undo the cut first.
    let stream: String = field.lines.concat();
    if is_german_structured(&stream) {
        german(&stream)
    } else if is_slash_keyed(&stream) {
        slash_keyed(&stream)
    } else {
        Details {
            remittance: non_empty(join_free_text(&field.lines)),
            ..Details::default()
        }
    }
}

/// Joins free-text lines with a space, except after a line that fills the width (counting the `:86:` tag):
/// that one was cut at the width, maybe inside a word or a number, so a line break keeps the cut visible to
/// the matcher, which reads a number across it only where the joined number names an invoice.
fn join_free_text(lines: &[String]) -> String {
    let mut out = String::new();
    let mut continues = false;
    for (i, line) in lines.iter().enumerate() {
        if continues {
            out.push('\n');
            out.push_str(line);
        } else {
            let kept = out.trim_end().len();
            out.truncate(kept);
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(line.trim_start());
        }
        let tag_width = if i == 0 { ":86:".len() } else { 0 };
        continues = line.chars().count() + tag_width >= LINE_WIDTH;
    }
    out.trim().to_string()
}

fn is_german_structured(stream: &str) -> bool {
    let bytes = stream.as_bytes();
    bytes.len() >= 4 && bytes[..3].iter().all(u8::is_ascii_digit) && bytes[3] == b'?'
}

fn is_slash_keyed(stream: &str) -> bool {
    stream.starts_with('/')
        && SLASH_KEYS
            .iter()
            .any(|key| stream.contains(&format!("/{key}/")))
}

/// `GVC?00text?10nnn?20...`: subfields by their two-digit number, in order. A `?` not followed by
/// two digits is text.
fn subfields(stream: &str) -> Vec<(u8, String)> {
    let bytes = stream.as_bytes();
    let markers: Vec<(usize, u8)> = (0..bytes.len())
        .filter(|&i| bytes[i] == b'?')
        .filter_map(|i| {
            let digits = bytes.get(i + 1..i + 3)?;
            let number = digits
                .iter()
                .try_fold(0u8, |n, d| d.is_ascii_digit().then(|| n * 10 + (d - b'0')))?;
            Some((i, number))
        })
        .collect();
    markers
        .iter()
        .enumerate()
        .map(|(k, &(at, number))| {
            let end = markers.get(k + 1).map_or(stream.len(), |next| next.0);
            (number, stream[at + 3..end].to_string())
        })
        .collect()
}

fn german(stream: &str) -> Details {
    let code = &stream[..3];
    let fields = subfields(stream);
    let text_of = |numbers: &[u8]| -> String {
        fields
            .iter()
            .filter(|(n, _)| numbers.contains(n))
            .map(|(_, t)| t.as_str())
            .collect()
    };
    // ?20-?29 and ?60-?63 are 27-character pieces of one purpose text, cut without regard to words.
    let purpose_parts: Vec<&str> = fields
        .iter()
        .filter(|(n, _)| (20..=29).contains(n) || (60..=63).contains(n))
        .map(|(_, t)| t.as_str())
        .collect();
    let segments = sepa_segments(&purpose_parts);
    let keyed = |key: &str| {
        segments
            .iter()
            .find(|s| s.key.as_deref() == Some(key))
            .map(|s| s.text.trim().to_string())
            .filter(|t| !t.is_empty())
    };
    let remittance = keyed("SVWZ").or_else(|| {
        // Without SVWZ+ the purpose is whatever is not an identifier: untagged text or a bank's own label.
        let loose: Vec<String> = segments
            .iter()
            .filter(|s| s.key.as_deref().is_none_or(|k| !SEPA_KEYWORDS.contains(&k)))
            .map(|s| match &s.key {
                Some(key) => format!("{key}{}", s.text),
                None => s.text.clone(),
            })
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect();
        non_empty(loose.join(" "))
    });
    let account = non_empty(text_of(&[38]).trim().to_string())
        .or_else(|| non_empty(text_of(&[31]).trim().to_string()));
    Details {
        remittance,
        end_to_end_id: keyed("EREF").filter(|e| e != "NOTPROVIDED"),
        counterparty_name: non_empty(collapse_spaces(&text_of(&[32, 33]))),
        counterparty_account: account,
        structured_reference: None,
        is_return: RETURN_CODES.contains(&code),
    }
}

/// A run of purpose text under one keyword (`SVWZ`), or untagged (`None`).
#[derive(Debug)]
struct Segment {
    key: Option<String>,
    text: String,
}

/// Splits the purpose pieces into keyword segments. A SEPA keyword (`EREF+`) starts a segment at the start
/// of a piece or after a space; a bank's own 4-letter label (`MTLG:`) starts one only at the start of a
/// piece following an identifier (so it cannot cut a free-text SVWZ+ in two).
fn sepa_segments(parts: &[&str]) -> Vec<Segment> {
    let mut segments: Vec<Segment> = Vec::new();
    for part in parts {
        let own_label = label_at_start(part);
        let after_identifier = segments
            .last()
            .and_then(|s| s.key.as_deref())
            .is_some_and(|k| k != "SVWZ" && SEPA_KEYWORDS.contains(&k));
        let mut rest: &str = part;
        let mut continues_piece = true;
        match (sepa_keyword_at_start(part), own_label) {
            (Some(key), _) => {
                segments.push(Segment {
                    key: Some(key.to_string()),
                    text: String::new(),
                });
                rest = &part[key.len() + 1..];
                continues_piece = false;
            }
            (None, Some(label)) if after_identifier => {
                segments.push(Segment {
                    key: Some(label.to_string()),
                    text: String::new(),
                });
                rest = &part[label.len()..];
                continues_piece = false;
            }
            _ => {}
        }
        // Keywords inside a piece, after a space: `EREF+123 SVWZ+Invoice 7`.
        loop {
            let inner = SEPA_KEYWORDS
                .iter()
                .filter_map(|k| rest.find(&format!(" {k}+")).map(|at| (at, *k)))
                .min();
            let Some((at, key)) = inner else { break };
            append(&mut segments, &rest[..at], continues_piece);
            continues_piece = false;
            segments.push(Segment {
                key: Some(key.to_string()),
                text: String::new(),
            });
            rest = &rest[at + key.len() + 2..];
        }
        append(&mut segments, rest, continues_piece);
    }
    segments
}

/// Appends text to the last segment. Pieces are cut at 27 characters without regard to words and are
/// glued back, except where a free-text piece (`SVWZ+` or untagged) ends with a digit and the next starts
/// with a letter: a number may end at the cut, and a line break keeps it from being glued to the next
/// word (`INV-2026-017` + `Danke`).
fn append(segments: &mut Vec<Segment>, text: &str, continues_piece: bool) {
    match segments.last_mut() {
        Some(segment) => {
            let identifier = segment
                .key
                .as_deref()
                .is_some_and(|k| k != "SVWZ" && SEPA_KEYWORDS.contains(&k));
            let number_at_cut = segment.text.ends_with(|c: char| c.is_ascii_digit())
                && text.starts_with(|c: char| c.is_ascii_alphabetic());
            if continues_piece && !identifier && number_at_cut {
                segment.text.push('\n');
            }
            segment.text.push_str(text);
        }
        None => segments.push(Segment {
            key: None,
            text: text.to_string(),
        }),
    }
}

fn sepa_keyword_at_start(part: &str) -> Option<&'static str> {
    SEPA_KEYWORDS
        .iter()
        .copied()
        .find(|k| part.strip_prefix(k).is_some_and(|r| r.starts_with('+')))
}

/// `MTLG:` -> `MTLG:`: four upper-case letters and a colon, a label some banks put in the purpose.
fn label_at_start(part: &str) -> Option<&str> {
    let label = part.get(..5)?;
    let bytes = label.as_bytes();
    (bytes[..4].iter().all(u8::is_ascii_uppercase) && bytes[4] == b':').then_some(label)
}

fn slash_keyed(stream: &str) -> Details {
    let mut values: Vec<(&str, String)> = Vec::new();
    for token in stream.split('/').skip(1) {
        match (SLASH_KEYS.contains(&token), values.last_mut()) {
            // A key directly after a key with no value yet (`/ORDP//NAME/`) still starts a new key.
            (true, _) => values.push((slash_key(token), String::new())),
            (false, Some((_, value))) => {
                if !value.is_empty() || token.is_empty() {
                    value.push('/');
                }
                value.push_str(token);
            }
            (false, None) => {}
        }
    }
    let value = |key: &str| {
        values
            .iter()
            .find(|(k, v)| *k == key && !v.trim_matches('/').trim().is_empty())
            .map(|(_, v)| v.trim_matches('/').trim().to_string())
    };
    let mut details = Details {
        end_to_end_id: value("EREF").filter(|e| e != "NOTPROVIDED"),
        counterparty_name: value("NAME"),
        counterparty_account: value("IBAN"),
        structured_reference: value("CDTRREF"),
        is_return: value("RTRN").is_some(),
        ..Details::default()
    };
    if let Some(remittance) = value("REMI") {
        // ING writes `/REMI/USTD//text/` and `/REMI/STRD/CUR/RF.../`.
        if let Some(reference) = remittance.strip_prefix("STRD/CUR/") {
            details.structured_reference = Some(reference.trim_matches('/').to_string());
        } else {
            let text = remittance.strip_prefix("USTD").unwrap_or(&remittance);
            details.remittance = non_empty(text.trim_matches('/').trim().to_string());
        }
    }
    if let Some(counterparty) = value("CNTP") {
        // `/CNTP/account/bic/name/city/`
        let parts: Vec<&str> = counterparty.split('/').collect();
        let part = |i: usize| {
            parts
                .get(i)
                .map(|p| p.trim())
                .filter(|p| !p.is_empty())
                .map(str::to_string)
        };
        details.counterparty_account = details.counterparty_account.or_else(|| part(0));
        details.counterparty_name = details.counterparty_name.or_else(|| part(2));
    }
    if let Some(reason) = value("RTRN") {
        let text = match details.remittance.take() {
            Some(remittance) => format!("return reason {reason} {remittance}"),
            None => format!("return reason {reason}"),
        };
        details.remittance = Some(text);
    }
    details
}

fn slash_key(token: &str) -> &'static str {
    SLASH_KEYS
        .iter()
        .copied()
        .find(|k| *k == token)
        .unwrap_or("")
}

fn collapse_spaces(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn non_empty(text: String) -> Option<String> {
    Some(text).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn details(lines: &[&str]) -> Details {
        parse_details(&Field {
            tag: "86".into(),
            line: 1,
            lines: lines.iter().map(|l| l.to_string()).collect(),
        })
    }

    #[test]
    fn german_fields_give_purpose_end_to_end_id_and_counterparty() {
        let got = details(&[
            "166?00GUTSCHRIFT?100399?20EREF+TFNR 0300300004?21SVWZ+Strukturier",
            "ter Verwend?22ungszweck 30030004 DE?30DRESDEFF508?31DE03508800500",
            "194791600?32Quentin Quast?70Empfaenger bei DRESDE mit 7?710 Zeich",
            "en Empfaenger bei DR",
        ]);
        assert_eq!(
            got,
            Details {
                remittance: Some("Strukturierter Verwendungszweck 30030004 DE".into()),
                end_to_end_id: Some("TFNR 0300300004".into()),
                counterparty_name: Some("Quentin Quast".into()),
                counterparty_account: Some("DE03508800500194791600".into()),
                structured_reference: None,
                is_return: false,
            }
        );
    }

    #[test]
    fn a_purpose_piece_ending_with_an_invoice_number_is_not_glued_to_the_next_word() {
        let got =
            details(&["166?00GUTSCHRIFT?20SVWZ+Rechnung INV-2026-017?21Danke und Gruss?32Kunde"]);
        assert_eq!(
            got.remittance.as_deref(),
            Some("Rechnung INV-2026-017\nDanke und Gruss")
        );
    }

    #[test]
    fn german_name_pieces_join_and_keyword_continuations_stay_with_their_keyword() {
        let got = details(&[
            "166?00GUTSCHRIFT?100399?20EREF+EndToEndId TFNR 22 004?21 00001?22",
            "SVWZ+Verw CTSc-01 BC-PPP TF?23Nr 22 004?30DRESDEFF508?31DE1450880",
            "0500194785000?32KARL?33        KAUFMANN",
        ]);
        assert_eq!(
            got.end_to_end_id.as_deref(),
            Some("EndToEndId TFNR 22 004 00001")
        );
        assert_eq!(
            got.remittance.as_deref(),
            Some("Verw CTSc-01 BC-PPP TFNr 22 004")
        );
        assert_eq!(got.counterparty_name.as_deref(), Some("KARL KAUFMANN"));
    }

    #[test]
    fn a_german_return_without_svwz_keeps_the_bank_text_as_remittance() {
        let got = details(&[
            "159?00RETOURE?100399?20EREF+TFNR 40001 00005?21MTLG:Grund nicht s",
            "pezifizie?22rt Reject aus SEPA-Ueberwei?23sungsauftrag?34914",
        ]);
        assert!(got.is_return);
        assert_eq!(got.end_to_end_id.as_deref(), Some("TFNR 40001 00005"));
        assert_eq!(
            got.remittance.as_deref(),
            Some("MTLG:Grund nicht spezifiziert Reject aus SEPA-Ueberweisungsauftrag")
        );
    }

    #[test]
    fn german_keywords_inside_a_piece_and_plain_purpose_lines() {
        let got = details(&["166?20EREF+E-1 SVWZ+Invoice INV-7?21 paid?32ACME"]);
        assert_eq!(got.end_to_end_id.as_deref(), Some("E-1"));
        assert_eq!(got.remittance.as_deref(), Some("Invoice INV-7 paid"));
        let plain = details(&["020?00UEBERWEISUNG?20RECHNUNG 2026-0?2107 KUNDE 4?32Muster"]);
        assert_eq!(
            plain.remittance.as_deref(),
            Some("RECHNUNG 2026-007 KUNDE 4")
        );
        let notprovided = details(&["166?20EREF+NOTPROVIDED?21SVWZ+x"]);
        assert_eq!(notprovided.end_to_end_id, None);
    }

    #[test]
    fn dutch_slash_fields_are_read_by_key() {
        let got = details(&[
            "/TRTP/SEPA OVERBOEKING/IBAN/NL44RABO0123456789/BIC/RABONL2U/NAME/J",
            "ANSEN BV/REMI/Factuur 2026/7 en 2026/8/EREF/E2E-99",
        ]);
        assert_eq!(
            got.counterparty_account.as_deref(),
            Some("NL44RABO0123456789")
        );
        assert_eq!(got.counterparty_name.as_deref(), Some("JANSEN BV"));
        assert_eq!(got.remittance.as_deref(), Some("Factuur 2026/7 en 2026/8"));
        assert_eq!(got.end_to_end_id.as_deref(), Some("E2E-99"));
    }

    #[test]
    fn ing_counterparty_and_structured_remittance() {
        let got = details(&[
            "/EREF/NOTPROVIDED//CNTP/NL91ABNA0417164300/ABNANL2A/Klant B.V./AMS",
            "TERDAM//REMI/STRD/CUR/RF18539007547034//",
        ]);
        assert_eq!(got.end_to_end_id, None);
        assert_eq!(
            got.counterparty_account.as_deref(),
            Some("NL91ABNA0417164300")
        );
        assert_eq!(got.counterparty_name.as_deref(), Some("Klant B.V."));
        assert_eq!(
            got.structured_reference.as_deref(),
            Some("RF18539007547034")
        );
        assert_eq!(got.remittance, None);
        let unstructured = details(&["/REMI/USTD//Invoice 2026-007/"]);
        assert_eq!(unstructured.remittance.as_deref(), Some("Invoice 2026-007"));
        let returned = details(&["/RTRN/AC04/REMI/Invoice 9/"]);
        assert!(returned.is_return);
        assert_eq!(
            returned.remittance.as_deref(),
            Some("return reason AC04 Invoice 9")
        );
    }

    #[test]
    fn free_text_joins_full_width_lines_with_a_line_break_others_with_a_space() {
        let full = format!("{}Rech", "a".repeat(57));
        let got = details(&[&full, "nung 12", "second line"]);
        assert_eq!(
            got.remittance.as_deref(),
            Some(format!("{}Rech\nnung 12 second line", "a".repeat(57)).as_str())
        );
    }
}
