use std::fmt::Write as _;

use super::*;
use crate::parse;

fn settings(json: serde_json::Value) -> Settings {
    match Settings::from_json(json) {
        Ok(s) => s,
        Err(e) => panic!("settings: {e}"),
    }
}

fn signed() -> Settings {
    settings(serde_json::json!({"profile": "signed"}))
}

/// Streams `bytes` cut at `cuts` (ascending offsets) and returns all records, or the first error.
fn stream(bytes: &[u8], settings: &Settings, cuts: &[usize]) -> Result<Vec<Record>, PluginError> {
    let mut parser: Box<dyn StreamParser> = Box::new(CsvStream::new("t.csv", settings));
    let mut out = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
        out.extend(parser.feed(&bytes[start..cut])?);
        start = cut;
    }
    out.extend(parser.finish()?);
    Ok(out)
}

fn whole(bytes: &[u8], settings: &Settings) -> Result<Vec<Record>, PluginError> {
    parse("t.csv", bytes, settings).map(|r| r.into_iter().map(Record::Payment).collect())
}

/// Streaming `bytes` split in two at every offset, and fed one byte at a time, gives what `parse` gives.
fn check(bytes: &[u8], settings: &Settings) {
    let expected = whole(bytes, settings);
    for cut in 0..=bytes.len() {
        assert_eq!(stream(bytes, settings, &[cut]), expected, "split at {cut}");
    }
    let every: Vec<usize> = (1..bytes.len()).collect();
    assert_eq!(stream(bytes, settings, &every), expected, "byte by byte");
}

#[test]
fn the_real_windows_1252_fixture_streams_identically_at_every_split() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/real/csv/windows-1252.csv"
    );
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let s = settings(serde_json::json!({"profile": "dotted-date", "currency": "EUR"}));
    assert!(whole(&bytes, &s).is_ok_and(|r| !r.is_empty()));
    check(&bytes, &s);
}

const SIGNED: &str = "Date,Amount,Currency,Counterparty,IBAN,Description\n\
    2026-01-02,10.00,EUR,Müller GmbH,DE89,\"INV-1, thanks\"\n\
    2026-01-02,10.00,EUR,Müller GmbH,DE89,\"INV-1, thanks\"\n\
    \n\
    2026-01-03,-5.5,EUR,\"Quote \"\"q\"\"\",,\"two\nlines\"\n\
    2026-01-02,10.00,EUR,Müller GmbH,DE89,\"INV-1, thanks\"\n";

#[test]
fn utf8_quotes_blank_lines_and_duplicates_stream_identically() {
    check(SIGNED.as_bytes(), &signed());
}

#[test]
fn crlf_line_ends_stream_identically() {
    check(SIGNED.replace('\n', "\r\n").as_bytes(), &signed());
}

#[test]
fn leading_account_lines_and_skip_rows_stream_identically() {
    let text = format!("Account;DE89\nExport of 2026\n\n{SIGNED}");
    check(text.as_bytes(), &signed());
    let skipping = settings(serde_json::json!({"profile": {
        "skip_rows": 2, "date_format": "%Y-%m-%d",
        "columns": {"date": "Date", "amount": "Amount", "currency": "Currency"}
    }}));
    check(text.as_bytes(), &skipping);
}

#[test]
fn boms_utf16_and_windows_1252_stream_identically() {
    let mut bom = b"\xef\xbb\xbf".to_vec();
    bom.extend_from_slice(SIGNED.as_bytes());
    check(&bom, &signed());
    let mut utf16 = vec![0xff, 0xfe];
    for unit in SIGNED.encode_utf16() {
        utf16.extend_from_slice(&unit.to_le_bytes());
    }
    check(&utf16, &signed());
    let no_bom_be: Vec<u8> = SIGNED
        .replace('ü', "u")
        .encode_utf16()
        .flat_map(u16::to_be_bytes)
        .collect();
    check(&no_bom_be, &signed());
    // ASCII first, a Windows-1252 byte late: `parse` reads the whole file as Windows-1252.
    let mut latin = SIGNED.replace('ü', "u").into_bytes();
    latin.extend_from_slice(b"2026-01-04,1.00,EUR,Caf\xe9,,x\n");
    check(&latin, &signed());
}

#[test]
fn a_named_encoding_streams_identically_and_bad_bytes_fail_alike() {
    let s = settings(serde_json::json!({"profile": {
        "encoding": "utf-8", "date_format": "%Y-%m-%d",
        "columns": {"date": "Date", "amount": "Amount", "currency": "Currency"}
    }}));
    check(SIGNED.as_bytes(), &s);
    let mut bad = SIGNED.as_bytes().to_vec();
    bad.extend_from_slice(b"2026-01-04,1.00,EUR,Caf\xe9,,x\n");
    assert!(whole(&bad, &s).is_err());
    check(&bad, &s);
}

#[test]
fn bad_rows_fail_with_the_same_error_at_every_split() {
    let text = format!("{SIGNED}2026-01-05,12.5x,EUR,,,\n2026-01-06,1,EUR,,,\n");
    let expected = whole(text.as_bytes(), &signed());
    assert!(
        expected
            .as_ref()
            .is_err_and(|e| e.location.as_deref() == Some("line 8, column \"Amount\"")),
        "{expected:?}"
    );
    check(text.as_bytes(), &signed());
    check(b"\n\n  \n", &signed());
    check(b"Foo,Bar\n1,2\n", &signed());
    check(b"Date,Amount,Currency\n2026-01-01,1,EUR,\x01\n", &signed());
}

#[test]
fn invalid_utf8_after_non_ascii_utf8_fails_instead_of_rereading_earlier_rows() {
    // `parse` would read this whole file as Windows-1252 (mangling `Müller`); a stream has already
    // returned that row as UTF-8, so it refuses the file, naming the line, rather than differ silently.
    let mut mixed = SIGNED.as_bytes().to_vec();
    mixed.extend_from_slice(b"2026-01-04,1.00,EUR,Caf\xe9,,x\n");
    let failed = stream(&mixed, &signed(), &[SIGNED.len()]).map_err(|e| e.location);
    assert_eq!(failed, Err(Some("line 8".to_string())));
    assert!(whole(&mixed, &signed()).is_ok());
}

#[test]
fn an_empty_stream_is_an_empty_file() {
    assert_eq!(
        stream(b"", &signed(), &[]).map_err(|e| e.message),
        Err("empty file".to_string())
    );
}

/// A generated export with duplicate rows, quoted fields with newlines and non-ASCII text.
fn generated(lines: usize) -> String {
    let mut csv = String::from("Date,Amount,Currency,Counterparty,IBAN,Description\r\n");
    for i in 0..lines {
        let _ = write!(
            csv,
            "2026-{:02}-{:02},{}.{:02},EUR,Kunde {} ä,DE{:06},\"Payment INV-{:06}\n{}\"\r\n",
            i % 12 + 1,
            i % 28 + 1,
            i % 500,
            i % 100,
            i % 7,
            i % 2000,
            i % 3000,
            i % 11
        );
    }
    csv
}

#[test]
fn a_10000_line_file_streams_identically_at_random_splits() {
    let text = generated(10_000);
    let bytes = text.as_bytes();
    let expected = whole(bytes, &signed());
    assert!(expected.as_ref().is_ok_and(|r| r.len() == 10_000));
    // A fixed linear congruential sequence: random-looking cuts, the same on every run.
    let mut seed: u64 = 0x5eed;
    for round in 0..20 {
        let mut cuts = Vec::new();
        let mut at = 0usize;
        loop {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let step = usize::try_from(seed >> 33).unwrap_or(1) % (4096 * (round + 1)) + 1;
            at += step;
            if at >= bytes.len() {
                break;
            }
            cuts.push(at);
        }
        assert_eq!(stream(bytes, &signed(), &cuts), expected, "round {round}");
    }
}

#[test]
fn the_unconsumed_text_never_holds_more_than_the_unfinished_row() {
    let text = generated(2_000);
    let mut parser = CsvStream::new("t.csv", &signed());
    let mut emitted = 0;
    for chunk in text.as_bytes().chunks(8192) {
        emitted += parser.feed(chunk).map(|r| r.len()).unwrap_or(0);
        assert!(
            parser.text.len() < 8192 + 200,
            "{} bytes kept",
            parser.text.len()
        );
    }
    assert!(emitted > 1_900);
}

#[test]
fn trailing_and_skipped_rows_stream_identically() {
    let text = "Konto;DE89\r\n\r\nBuchungstag;Verwendungszweck;Betrag\r\n\
        05.03.2026;eins;1,00\r\n06.03.2026;zwei;2,00\r\n\r\n\
        Saldo;;3,00\r\n;Summe;3,00\r\n";
    check(
        text.as_bytes(),
        &settings(serde_json::json!({"profile": "de-sepa"})),
    );
    let trailing = settings(serde_json::json!({"profile": {
        "delimiter": ";", "decimal_mark": ",", "date_format": "%d.%m.%Y", "currency": "EUR",
        "skip_trailing_rows": 2,
        "columns": {"date": "Buchungstag", "amount": "Betrag"}
    }}));
    assert!(whole(text.as_bytes(), &trailing).is_ok_and(|r| r.len() == 2));
    check(text.as_bytes(), &trailing);
    // a bad row before the trailing ones fails alike at every split, on its own line
    let bad = text.replace("zwei;2,00", "zwei;x");
    let err = whole(bad.as_bytes(), &trailing).err();
    assert_eq!(
        err.and_then(|e| e.location),
        Some("line 5, column \"Betrag\"".to_string())
    );
    check(bad.as_bytes(), &trailing);
}

#[test]
fn accounting_exports_stream_identically_named_or_recognised() {
    for (name, profile) in [
        ("EXTF_Buchungsstapel.csv", "datev"),
        ("xero-statement.csv", "xero"),
        ("quickbooks-4-column.csv", "quickbooks"),
    ] {
        let path = format!(
            "{}/../../tests/fixtures/exports/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        check(
            &bytes,
            &settings(serde_json::json!({"profile": profile, "currency": "EUR"})),
        );
        check(&bytes, &settings(serde_json::json!({"currency": "EUR"})));
        assert!(
            !whole(&bytes, &settings(serde_json::json!({"currency": "EUR"})))
                .unwrap_or_default()
                .is_empty()
        );
    }
}
