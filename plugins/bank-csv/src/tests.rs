use super::*;
use settled_plugin_api::{PaymentKind, Record};

fn settings(json: serde_json::Value) -> Settings {
    match Settings::from_json(json) {
        Ok(s) => s,
        Err(e) => panic!("settings: {e}"),
    }
}

fn parse_ok(bytes: &[u8], settings: &Settings) -> Vec<PaymentRecord> {
    match parse("t.csv", bytes, settings) {
        Ok(records) => records,
        Err(e) => panic!("parse failed: {e}"),
    }
}

/// Asserts that `input` fails with this location and message.
fn check_err(input: &[u8], settings: &Settings, location: &str, message: &str) {
    match parse("t.csv", input, settings) {
        Ok(records) => panic!("expected an error, got {records:?}"),
        Err(e) => {
            assert_eq!(e.code, "bad_input");
            assert_eq!(
                (e.location.as_deref(), e.message.as_str()),
                (Some(location), message)
            );
        }
    }
}

fn dec(s: &str) -> Decimal {
    match Decimal::from_str(s) {
        Ok(d) => d,
        Err(e) => panic!("{s}: {e}"),
    }
}

fn ymd(y: i32, m: u32, d: u32) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(y, m, d)
}

fn de_sepa_settings() -> Settings {
    settings(serde_json::json!({"profile": "de-sepa"}))
}

#[test]
fn windows_1252_fixture_snapshot() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/real/csv/windows-1252.csv"
    );
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => panic!("reading {path}: {e}"),
    };
    let s = settings(serde_json::json!({"profile": "dotted-date", "currency": "EUR"}));
    let records = match parse("windows-1252.csv", &bytes, &s) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].counterparty_name.as_deref(), Some("Café Rémy"));
    assert_eq!(records[0].amount, dec("100.25"));
    assert_eq!(records[0].booked_on, ymd(2025, 12, 4));
    assert_eq!(
        records[1].counterparty_name.as_deref(),
        Some("Boulangerie Müller")
    );
    assert_eq!(records[1].amount, dec("-42.10"));
    assert_eq!(
        records[1].source_position.as_deref(),
        Some("windows-1252.csv#line 3")
    );
    insta::assert_json_snapshot!(records);
}

#[test]
fn amounts_in_every_negative_form() {
    let check = |text: &str, decimal: char, thousands: Option<char>, expected: Option<&str>| {
        let mut scratch = String::new();
        assert_eq!(
            parse_amount(text, decimal, thousands, &mut scratch).ok(),
            expected.map(dec),
            "{text}"
        );
    };
    check("-12.00", '.', None, Some("-12.00"));
    check("(12.00)", '.', None, Some("-12.00"));
    check("12,00-", ',', None, Some("-12.00"));
    check("+5", '.', None, Some("5"));
    check("1,234,567.89", '.', Some(','), Some("1234567.89"));
    check("-1.234,56", ',', Some('.'), Some("-1234.56"));
    check("1.234", ',', Some('.'), Some("1234"));
    check("12.50", ',', Some('.'), None);
    check("1.2345,00", ',', Some('.'), None);
    check("12,5", '.', None, None);
    check("1.2.3", '.', None, None);
    check("", '.', None, None);
    check("-", '.', None, None);
    check("EUR 5", '.', None, None);
}

#[test]
fn de_sepa_with_betrag_column() {
    let csv = "Auftragskonto;Buchungstag;Valutadatum;Verwendungszweck;Beguenstigter/Zahlungspflichtiger;Kontonummer/IBAN;Betrag;Waehrung\n\
               DE1;02.01.24;03.01.24;RE 2024-7 danke;Max Muster;DE89370400440532013000;1.234,50;EUR\n\
               DE1;04.01.2024;;Miete;Vermieter;DE02;-800,00;EUR\n";
    let records = parse_ok(csv.as_bytes(), &de_sepa_settings());
    assert_eq!(records.len(), 2);
    let r = &records[0];
    assert_eq!(r.amount, dec("1234.50"));
    assert_eq!(
        (r.booked_on, r.value_date),
        (ymd(2024, 1, 2), ymd(2024, 1, 3))
    );
    assert_eq!(r.remittance.as_deref(), Some("RE 2024-7 danke"));
    assert_eq!(r.counterparty_name.as_deref(), Some("Max Muster"));
    assert_eq!(
        r.counterparty_account.as_deref(),
        Some("DE89370400440532013000")
    );
    assert_eq!(records[1].amount, dec("-800.00"));
    assert_eq!(records[1].booked_on, ymd(2024, 1, 4));
    assert_eq!(records[1].value_date, None);
}

#[test]
fn de_sepa_with_soll_haben_columns() {
    let csv = "Buchungstag;Verwendungszweck;Soll;Haben\n01.02.2024;A;12,00;\n02.02.2024;B;;7,50\n";
    let records = parse_ok(csv.as_bytes(), &de_sepa_settings());
    let amounts: Vec<Decimal> = records.iter().map(|r| r.amount).collect();
    assert_eq!(amounts, [dec("-12.00"), dec("7.50")]);
    assert_eq!(records[0].currency, "EUR", "fixed currency of the profile");
}

#[test]
fn de_sepa_with_flag_column() {
    let csv =
        "Buchungstag;Umsatz;Soll/Haben\n01.02.2024;12,00;S\n02.02.2024;7,50;h\n03.02.2024;1,00;X\n";
    check_err(
        csv.as_bytes(),
        &de_sepa_settings(),
        "line 4, column \"Soll/Haben\"",
        "`X` is neither a credit (H) nor a debit (S) flag",
    );
    let ok = "Buchungstag;Umsatz;Soll/Haben\n01.02.2024;12,00;S\n02.02.2024;7,50;h\n";
    let amounts: Vec<Decimal> = parse_ok(ok.as_bytes(), &de_sepa_settings())
        .iter()
        .map(|r| r.amount)
        .collect();
    assert_eq!(amounts, [dec("-12.00"), dec("7.50")]);
}

#[test]
fn debit_and_credit_both_filled_or_both_empty_fail() {
    let both = "Buchungstag;Soll;Haben\n01.02.2024;1,00;2,00\n";
    check_err(
        both.as_bytes(),
        &de_sepa_settings(),
        "line 2",
        "both the debit and the credit column hold an amount",
    );
    let none = "Buchungstag;Soll;Haben\n01.02.2024;;\n";
    check_err(
        none.as_bytes(),
        &de_sepa_settings(),
        "line 2",
        "neither the debit nor the credit column holds an amount",
    );
}

#[test]
fn custom_profile_with_everything() {
    let s = settings(serde_json::json!({"profile": {
        "delimiter": "\t",
        "decimal_mark": ",",
        "thousands_separator": " ",
        "date_format": "%d/%m/%Y",
        "skip_rows": 2,
        "currency": "chf",
        "columns": {
            "date": "Datum", "amount": "Betrag", "currency": "Whg",
            "counterparty": ["Gegenpartei", "Name"], "account": "Konto", "remittance": "Text",
            "reference": "Referenz", "end_to_end_id": "E2E", "id": "Trx"
        }
    }}));
    let csv = "Kontoauszug\nKonto 1\nDatum\tBetrag\tWhg\tName\tKonto\tText\tReferenz\tE2E\tTrx\n\
               31/01/2024\t(1 250,5)\t\tA AG\tCH93\tRechnung 7\tRF18539007547034\tE1\tT-1\n\
               01/02/2024\t3\tEUR\t\t\t\t\t\t\n";
    let records = parse_ok(csv.as_bytes(), &s);
    let r = &records[0];
    assert_eq!((r.amount, r.currency.as_str()), (dec("-1250.50"), "CHF"));
    assert_eq!(r.booked_on, ymd(2024, 1, 31));
    assert_eq!(r.external_id, "T-1");
    assert_eq!(r.structured_reference.as_deref(), Some("RF18539007547034"));
    assert_eq!(r.end_to_end_id.as_deref(), Some("E1"));
    assert_eq!(r.counterparty_account.as_deref(), Some("CH93"));
    assert_eq!(r.source_position.as_deref(), Some("t.csv#line 4"));
    assert_eq!(r.kind, PaymentKind::Transfer);
    let second = &records[1];
    assert_eq!(
        (second.amount, second.currency.as_str()),
        (dec("3.00"), "EUR")
    );
    assert_eq!(second.counterparty_name, None);
    assert!(second.external_id.ends_with(":0"), "no id: content hash");
}

#[test]
fn content_ids_are_stable_across_files_and_count_identical_rows() {
    let s = settings(serde_json::json!({"profile": "signed"}));
    let a = "Date,Amount,Currency,Description\n2024-01-02,10.00,EUR,coffee\n2024-01-02,10.00,EUR,coffee\n2024-01-03,5,EUR,tea\n";
    // The same rows in another export: different layout, a skipped column, a different position.
    let b = "Description,Balance,Currency,Amount,Date\ntea,99,EUR,5.00,2024-01-03\ncoffee,1,EUR,10,2024-01-02\n";
    let one = parse_ok(a.as_bytes(), &s);
    let two = match parse("other.csv", b.as_bytes(), &s) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    assert_ne!(one[0].external_id, one[1].external_id);
    assert_eq!(
        one[0].external_id.split(':').next(),
        one[1].external_id.split(':').next()
    );
    assert!(one[1].external_id.ends_with(":1"));
    assert_eq!(two[0].external_id, one[2].external_id);
    assert_eq!(two[1].external_id, one[0].external_id);
    assert_eq!(one[0].external_id.len(), 64 + 2);
}

#[test]
fn encodings_are_detected() {
    let s = settings(serde_json::json!({"profile": "signed"}));
    let text = "Date,Amount,Currency,Payee\n2024-01-02,1.00,EUR,Café\n";
    let mut utf16 = vec![0xFF, 0xFE];
    utf16.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
    let mut utf16be_no_bom = Vec::new();
    utf16be_no_bom.extend(text.encode_utf16().flat_map(u16::to_be_bytes));
    let mut utf8_bom = vec![0xEF, 0xBB, 0xBF];
    utf8_bom.extend_from_slice(text.as_bytes());
    let latin = text.replace('é', "\u{0}").into_bytes();
    let latin: Vec<u8> = latin
        .into_iter()
        .map(|b| if b == 0 { 0xE9 } else { b })
        .collect();
    for (label, bytes) in [
        ("utf-16le bom", utf16),
        ("utf-16be", utf16be_no_bom),
        ("utf-8 bom", utf8_bom),
        ("windows-1252", latin),
        ("utf-8", text.as_bytes().to_vec()),
    ] {
        let records = parse_ok(&bytes, &s);
        assert_eq!(
            records[0].counterparty_name.as_deref(),
            Some("Café"),
            "{label}"
        );
    }
}

#[test]
fn wrong_delimiter_names_the_header_row() {
    check_err(
        b"Date,Amount\n2024-01-02,1.00\n",
        &de_sepa_settings(),
        "line 1",
        "no date column in the header row (looked for `Buchungstag`, `Buchungsdatum`, `Datum`; found `Date,Amount`); the row has a single column: is the delimiter `;` right?",
    );
}

#[test]
fn bad_date_names_row_and_column() {
    check_err(
        "Buchungstag;Betrag\n01.02.2024;1,00\n2024-02-02;2,00\n".as_bytes(),
        &de_sepa_settings(),
        "line 3, column \"Buchungstag\"",
        "`2024-02-02` does not match the date format `%d.%m.%y` or `%d.%m.%Y`",
    );
}

#[test]
fn too_many_decimals_fail_the_whole_file() {
    check_err(
        "Buchungstag;Betrag\n01.02.2024;1,00\n01.02.2024;1,005\n".as_bytes(),
        &de_sepa_settings(),
        "line 3, column \"Betrag\"",
        "amount has more decimals than EUR allows (2)",
    );
}

#[test]
fn missing_currency_is_reported_at_the_header() {
    let s = settings(serde_json::json!({"profile": "dotted-date"}));
    check_err(
        b"Date,Payee,Amount\n2024.01.01,x,1\n",
        &s,
        "line 1",
        "no currency column in the header row (looked for ; found `Date`, `Payee`, `Amount`); set a fixed `currency` in the settings",
    );
}

#[test]
fn short_row_names_the_missing_column() {
    check_err(
        "Buchungstag;Verwendungszweck;Betrag\n01.02.2024;x\n".as_bytes(),
        &de_sepa_settings(),
        "line 2, column \"Betrag\"",
        "the row has 2 fields, the header 3",
    );
}

#[test]
fn empty_binary_and_headerless_files_are_bad_input() {
    let s = Settings::default();
    check_err(b"", &s, "file", "empty file");
    check_err(
        b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR",
        &s,
        "line 2",
        "binary data: this is not a text csv export",
    );
    check_err(
        b"\n\n",
        &s,
        "file",
        "no header row: the file has only blank lines",
    );
}

#[test]
fn blank_rows_are_skipped() {
    let s = settings(serde_json::json!({"currency": "USD"}));
    let records = parse_ok(
        b"Date,Amount\n\n2024-01-02,1\n,\n01/03/2024,\"1,000.00\"\n",
        &s,
    );
    assert_eq!(records.len(), 2);
    assert_eq!(records[1].booked_on, ymd(2024, 1, 3));
    assert_eq!(records[1].amount, dec("1000.00"));
    assert_eq!(records[1].currency, "USD");
}

#[test]
fn settings_errors_name_the_key() {
    let check = |json: serde_json::Value, key: &str| {
        let err = Settings::from_json(json).err();
        assert_eq!(err.and_then(|e| e.location).as_deref(), Some(key));
    };
    check(serde_json::json!({"profil": "signed"}), "profil");
    check(serde_json::json!({"profile": "nope"}), "profile");
    check(serde_json::json!({"profile": 3}), "profile");
    check(serde_json::json!({"currency": "euro"}), "currency");
    check(
        serde_json::json!({"profile": {"columns": {"date": "D", "amount": "A"}, "delimter": ";"}}),
        "profile.delimter",
    );
    check(
        serde_json::json!({"profile": {"columns": {"date": "D"}}}),
        "profile.columns",
    );
    check(
        serde_json::json!({"profile": {"columns": {"date": "D", "amount": "A"}, "date_format": "%Q"}}),
        "profile.date_format",
    );
    check(
        serde_json::json!({"profile": {"columns": {"date": "D", "amount": "A"}, "delimiter": "a"}}),
        "profile.delimiter",
    );
    check(
        serde_json::json!({"profile": {"columns": {"date": "D", "amount": "A"}, "encoding": "klingon"}}),
        "profile.encoding",
    );
    check(
        serde_json::json!({"profile": {"columns": {"date": "D", "amount": "A"}, "decimal_mark": ",", "thousands_separator": ","}}),
        "profile.thousands_separator",
    );
    check(
        serde_json::json!({"profile": {"columns": {"date": "D", "amount": "A"}, "preamble": "lexware"}}),
        "profile.preamble",
    );
    check(
        serde_json::json!({"profile": {"columns": {"date": "D", "amount": "A"}, "preamble": "datev"}}),
        "profile.preamble",
    );
    assert_eq!(
        Settings::from_json(serde_json::Value::Null).ok(),
        Some(Settings::default())
    );
}

#[test]
fn sniff_stays_below_specific_formats() {
    assert_eq!(sniff("a.csv", b"Date,Amount\n2024-01-01,1\n"), 50);
    assert_eq!(sniff("a.txt", b"Date;Amount\n2024-01-01;1\n"), 25);
    assert_eq!(sniff("a.csv", b"\x89PNG\r\n\x1a\n\0\0"), 20);
    assert_eq!(sniff("a.ofx", b"OFXHEADER:100\nDATA:OFXSGML\n"), 0);
}

#[test]
fn header_is_found_after_account_details() {
    let csv = "\"Kontonummer:\";\"DE12 3456\"\n\"Zeitraum:\";\"01.01.2024 - 31.01.2024\"\n\nBuchungstag;Betrag;Info\n02.01.24;-3,00;Umsatz gebucht\n03.01.24;4,00;Umsatz vorgemerkt\n";
    let records = parse_ok(csv.as_bytes(), &de_sepa_settings());
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].source_position.as_deref(), Some("t.csv#line 5"));
    assert_eq!(records[0].status, EntryStatus::Booked);
    assert_eq!(records[1].status, EntryStatus::Pending);
}

#[test]
fn plugin_configures_and_parses_through_the_trait() {
    let plugin = match BankCsv::configure(serde_json::json!({"profile": "de-sepa"})) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    let reply = plugin.parse(FileRequest {
        name: "k.csv".into(),
        content: b"Buchungstag;Betrag\n01.02.2024;1,00\n".to_vec(),
    });
    match reply.map(|r| r.records) {
        Ok(records) => assert!(
            matches!(records.as_slice(), [Record::Payment(p)] if p.amount == dec("1.00")),
            "{records:?}"
        ),
        Err(e) => panic!("{e}"),
    }
    let sniffed = plugin.sniff(SniffRequest {
        name: "k.csv".into(),
        head: b"a;b\n1;2\n".to_vec(),
    });
    assert_eq!(sniffed.confidence, 50);
    assert!(BankCsv::configure(serde_json::json!({"profile": "x"})).is_err());
}

#[test]
fn row_currency_must_be_a_code_or_fall_back_to_the_fixed_one() {
    let s = Settings::default();
    check_err(
        b"Date,Amount,Currency\n2024-01-02,1,EUR\n2024-01-02,1,\n",
        &s,
        "line 3, column \"Currency\"",
        "empty currency and no fixed `currency` in the settings",
    );
    check_err(
        b"Date,Amount,Currency\n2024-01-02,1,Euro\n",
        &s,
        "line 2, column \"Currency\"",
        "`Euro` is not an iso 4217 currency code",
    );
    let with_fixed = settings(serde_json::json!({"currency": "GBP"}));
    let records = parse_ok(b"Date,Amount,Currency\n2024-01-02,1,\n", &with_fixed);
    assert_eq!(records[0].currency, "GBP");
}

#[test]
fn a_negative_line_naming_an_original_transaction_is_a_refund_of_it() {
    let csv = b"Date,Amount,Currency,Original Transaction Id,Transaction Id\n\
        2026-03-09,-100.00,EUR,BANK-77,BANK-78\n\
        2026-03-09,100.00,EUR,BANK-77,BANK-79\n\
        2026-03-09,-20.00,EUR,,BANK-80\n";
    let records = parse_ok(csv, &Settings::default());
    let kinds: Vec<(PaymentKind, Option<&str>)> = records
        .iter()
        .map(|r| (r.kind, r.original_external_id.as_deref()))
        .collect();
    assert_eq!(
        kinds,
        [
            (PaymentKind::Refund, Some("BANK-77")),
            (PaymentKind::Transfer, None),
            (PaymentKind::Transfer, None)
        ]
    );
}

#[test]
fn errors_in_crlf_files_name_the_line_an_editor_shows() {
    for ends in ["\n", "\r\n"] {
        let text = "Konto;DE89\n\nBuchungstag;Betrag\n\n01.02.2024;1,00\n\n\n01.02.2024;x\n"
            .replace('\n', ends);
        check_err(
            text.as_bytes(),
            &de_sepa_settings(),
            "line 8, column \"Betrag\"",
            "`x` is not an amount with decimal mark `,` and thousands separator `.`",
        );
    }
}

/// A Sparkasse-style export: account block, bookings, and balance rows at the end.
const GERMAN_EXPORT: &str = "\"Umsätze Girokonto\";\"Zeitraum: 30 Tage\"\n\
    \"Kontostand vom 01.03.2026:\";\"1.000,00 EUR\"\n\
    \n\
    \"Buchungstag\";\"Verwendungszweck\";\"Betrag\"\n\
    \"05.03.2026\";\"Saldo Ausgleich INV-2026-001\";\"1.250,00\"\n\
    \"06.03.2026\";\"Miete\";\"-800,00\"\n\
    \n\
    \"Saldo\";;\"1.450,00\"\n\
    ;\"Summe\";\"450,00\"\n\
    \"Kontostand vom 31.03.2026:\";;\"1.450,00 EUR\"\n";

#[test]
fn de_sepa_skips_balance_and_total_rows_but_not_bookings_mentioning_them() {
    let records = parse_ok(GERMAN_EXPORT.as_bytes(), &de_sepa_settings());
    let got: Vec<(Decimal, Option<&str>)> = records
        .iter()
        .map(|r| (r.amount, r.remittance.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            (dec("1250.00"), Some("Saldo Ausgleich INV-2026-001")),
            (dec("-800.00"), Some("Miete"))
        ]
    );
    // Volksbank dates its balance rows
    let volksbank = "Buchungstag;Verwendungszweck;Betrag\n\
        01.03.2026;;;Anfangssaldo;1.000,00\n\
        05.03.2026;Rechnung;12,00\n\
        31.03.2026;;;Endsaldo;1.012,00\n";
    assert_eq!(parse_ok(volksbank.as_bytes(), &de_sepa_settings()).len(), 1);
    // a booking whose name or text starts with such a word is kept, even after empty fields
    let named = "Buchungstag;Valuta;Name;Verwendungszweck;Betrag\n\
        05.03.2026;;Summe Versicherung AG;Saldo;12,00\n\
        06.03.2026;;;Saldo Ausgleich;13,00\n";
    assert_eq!(parse_ok(named.as_bytes(), &de_sepa_settings()).len(), 2);
    // the same export without the patterns fails on its first balance row, naming it
    let mut plain = de_sepa_settings();
    plain.profile.skip_rows_matching.clear();
    check_err(
        GERMAN_EXPORT.as_bytes(),
        &plain,
        "line 8, column \"Buchungstag\"",
        "`Saldo` does not match the date format `%d.%m.%y` or `%d.%m.%Y`",
    );
}

fn profile_with(extra: serde_json::Value) -> Settings {
    let mut profile = serde_json::json!({
        "delimiter": ";", "decimal_mark": ",", "thousands_separator": ".", "date_format": "%d.%m.%Y",
        "currency": "EUR",
        "columns": {"date": "Buchungstag", "amount": "Betrag", "remittance": "Verwendungszweck"}
    });
    if let (Some(p), Some(e)) = (profile.as_object_mut(), extra.as_object()) {
        p.extend(e.clone());
    }
    settings(serde_json::json!({ "profile": profile }))
}

#[test]
fn trailing_rows_are_dropped_whatever_they_hold() {
    let s = profile_with(serde_json::json!({"skip_trailing_rows": 3}));
    let records = parse_ok(GERMAN_EXPORT.as_bytes(), &s);
    assert_eq!(records.len(), 2);
    // only the last rows: a bad booking before them still fails the file
    let bad = GERMAN_EXPORT.replace("\"-800,00\"", "\"x\"");
    check_err(
        bad.as_bytes(),
        &s,
        "line 6, column \"Betrag\"",
        "`x` is not an amount with decimal mark `,` and thousands separator `.`",
    );
    let too_many = profile_with(serde_json::json!({"skip_trailing_rows": 5}));
    assert_eq!(parse_ok(GERMAN_EXPORT.as_bytes(), &too_many).len(), 0);
}

#[test]
fn rows_matching_a_pattern_or_without_a_date_are_skipped_when_asked() {
    let matching = profile_with(serde_json::json!({
        "skip_rows_matching": ["^;*Saldo", "^;*Summe", "^Kontostand"]
    }));
    assert_eq!(parse_ok(GERMAN_EXPORT.as_bytes(), &matching).len(), 2);
    let without_date = profile_with(serde_json::json!({
        "skip_rows_without_date": true, "skip_rows_matching": ["^Saldo|^Kontostand"]
    }));
    assert_eq!(parse_ok(GERMAN_EXPORT.as_bytes(), &without_date).len(), 2);
    // without the date rule the `Summe` row (no date) fails, naming its line
    let only_patterns = profile_with(serde_json::json!({
        "skip_rows_matching": ["^Saldo|^Kontostand"]
    }));
    check_err(
        GERMAN_EXPORT.as_bytes(),
        &only_patterns,
        "line 9, column \"Buchungstag\"",
        "empty date",
    );
}

#[test]
fn a_bad_row_pattern_names_the_key_and_the_pattern() {
    match Settings::from_json(serde_json::json!({"profile": {
        "skip_rows_matching": ["(Saldo"],
        "columns": {"date": "Date", "amount": "Amount"}
    }})) {
        Ok(_) => panic!("a bad pattern must be refused"),
        Err(e) => {
            assert_eq!(e.location.as_deref(), Some("profile.skip_rows_matching"));
            assert!(
                e.message
                    .starts_with("`(Saldo` is not a regular expression"),
                "{e}"
            );
        }
    }
}

/// A sample of `tests/fixtures/exports/`.
fn export_fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../../tests/fixtures/exports/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => panic!("reading {path}: {e}"),
    }
}

/// (amount, date, structured reference) of each record.
fn summary(records: &[PaymentRecord]) -> Vec<(Decimal, Option<NaiveDate>, Option<&str>)> {
    records
        .iter()
        .map(|r| (r.amount, r.booked_on, r.structured_reference.as_deref()))
        .collect()
}

#[test]
fn datev_batch_reads_the_customer_payments_from_either_side() {
    let bytes = export_fixture("EXTF_Buchungsstapel.csv");
    // named, and recognised by its header line without a profile
    for s in [
        settings(serde_json::json!({"profile": "datev"})),
        settings(serde_json::json!({})),
    ] {
        let records = parse_ok(&bytes, &s);
        assert_eq!(
            summary(&records),
            vec![
                (dec("1190.00"), ymd(2026, 2, 15), Some("INV-2026-001")),
                (dec("250.00"), ymd(2026, 2, 20), Some("INV-2026-002")),
                (dec("50.00"), ymd(2026, 3, 25), Some("INV-2026-003")),
            ],
            "the invoice row and the supplier payment credit no customer"
        );
        assert!(records.iter().all(|r| r.currency == "EUR"));
        assert_eq!(
            records[1].remittance.as_deref(),
            Some("Zahlung Schön & Söhne"),
            "windows-1252"
        );
        assert_eq!(records[0].source_position.as_deref(), Some("t.csv#line 4"));
    }
    assert_eq!(sniff("EXTF_Buchungsstapel.csv", &bytes), 50);
}

#[test]
fn datev_errors_name_the_header_field_or_the_row_and_column() {
    let s = settings(serde_json::json!({"profile": "datev"}));
    let bytes = export_fixture("EXTF_Buchungsstapel.csv");
    let text = encoding_rs::WINDOWS_1252.decode(&bytes).0.into_owned();
    let encode = |t: &str| encoding_rs::WINDOWS_1252.encode(t).0.into_owned();
    check_err(
        &encode(&text.replacen("\"S\"", "\"X\"", 1)),
        &s,
        "line 3, column \"Soll/Haben-Kennzeichen\"",
        "`X` is neither a credit (H) nor a debit (S) flag",
    );
    check_err(
        &encode(&text.replace(";1502;", ";3004;")),
        &s,
        "line 4, column \"Belegdatum\"",
        "`3004` is no day TTMM within the batch's period 2026-01-01 to 2026-03-31 (DATEV header fields 15 and 16)",
    );
    check_err(
        &encode(&text.replace("250,00;", "250.00;")),
        &s,
        "line 5, column \"Umsatz (ohne Soll/Haben-Kz)\"",
        "`250.00` is not an amount with decimal mark `,`",
    );
    check_err(
        &encode(&text.replace(";70001;", ";7000l;")),
        &s,
        "line 6, column \"Konto\"",
        "`7000l` is not an account number (1 to 9 digits)",
    );
    check_err(
        &encode(&text.replace(";20260331;", ";2026-03-31;")),
        &s,
        "line 1, DATEV header field 16 (Datum bis)",
        "`2026-03-31` is not a date JJJJMMTT",
    );
    check_err(
        &encode(&text.replace("\"EXTF\";700;21;", "\"EXTF\";700;16;")),
        &s,
        "line 1, DATEV header field 3 (Datenkategorie)",
        "`16` is not 21: this DATEV file is not a Buchungsstapel (booking batch)",
    );
    check_err(
        b"Umsatz;Konto\n1,00;1200\n",
        &s,
        "line 1",
        "no DATEV header: a DATEV-Format file opens with `\"EXTF\";` or `\"DTVF\";` (profile `datev`)",
    );
    // a custom profile with the DATEV preamble needs the flag column
    let mut no_flag = datev();
    no_flag.columns.dc_flag = None;
    let e = no_flag.validate().map(|_| ()).unwrap_err();
    assert_eq!(e.location.as_deref(), Some("profile.preamble"), "{e}");
}

#[test]
fn xero_statement_is_read_named_or_recognised() {
    let bytes = export_fixture("xero-statement.csv");
    for s in [
        settings(serde_json::json!({"profile": "xero", "currency": "EUR"})),
        settings(serde_json::json!({"currency": "EUR"})),
    ] {
        let records = parse_ok(&bytes, &s);
        assert_eq!(
            summary(&records),
            vec![
                (dec("1190.00"), ymd(2026, 2, 3), Some("INV-2026-001")),
                (dec("-45.00"), ymd(2026, 2, 5), None),
                (dec("250.00"), ymd(2026, 2, 10), None),
                (dec("50.00"), ymd(2026, 2, 28), Some("INV-2026-003")),
            ]
        );
        assert_eq!(
            records[2].counterparty_name.as_deref(),
            Some("Schön & Söhne")
        );
        assert_eq!(
            records[2].remittance.as_deref(),
            Some("Invoice INV-2026-002, thank you")
        );
    }
    // Xero statements carry no currency
    check_err(
        &bytes,
        &settings(serde_json::json!({"profile": "xero"})),
        "line 1",
        "no currency column in the header row (looked for ; found `*Date`, `*Amount`, `Payee`, `Description`, `Reference`, `Cheque Number`); set a fixed `currency` in the settings",
    );
    check_err(
        b"*Date,*Amount,Payee\n31/02/2026,1.00,x\n",
        &settings(serde_json::json!({"profile": "xero", "currency": "EUR"})),
        "line 2, column \"*Date\"",
        "`31/02/2026` does not match the date format `%d/%m/%Y` or `%Y-%m-%d`",
    );
}

#[test]
fn quickbooks_four_column_file_is_read_named_or_recognised() {
    let bytes = export_fixture("quickbooks-4-column.csv");
    for s in [
        settings(serde_json::json!({"profile": "quickbooks", "currency": "EUR"})),
        settings(serde_json::json!({"currency": "EUR"})),
    ] {
        let records = parse_ok(&bytes, &s);
        let amounts: Vec<_> = records.iter().map(|r| (r.amount, r.booked_on)).collect();
        assert_eq!(
            amounts,
            vec![
                (dec("1190.00"), ymd(2026, 2, 3)),
                (dec("-45.00"), ymd(2026, 2, 5)),
                (dec("250.00"), ymd(2026, 2, 10)),
                (dec("50.00"), ymd(2026, 2, 28)),
            ]
        );
        assert_eq!(
            records[0].remittance.as_deref(),
            Some("Müller GmbH INV-2026-001")
        );
    }
    // the 3-column layout, signed
    let s = settings(serde_json::json!({"profile": "quickbooks", "currency": "USD"}));
    let records = parse_ok(b"Date,Description,Amount\n01/15/2026,Payout,1280.45\n", &s);
    assert_eq!(records[0].amount, dec("1280.45"));
    check_err(
        b"Date,Description,Credit,Debit\n01/15/2026,both,1.00,2.00\n",
        &s,
        "line 2",
        "both the debit and the credit column hold an amount",
    );
}

#[test]
fn only_an_instance_without_a_profile_recognises_exports() {
    assert_eq!(
        recognise("\"EXTF\";700;21;\"Buchungsstapel\";13\r\nUmsatz;x\r\n"),
        Some("datev")
    );
    assert_eq!(recognise("DTVF;700;21\n"), Some("datev"));
    assert_eq!(recognise("Konto: 1\n*Date,*Amount\n"), Some("xero"));
    assert_eq!(
        recognise("\"Date\",\"Description\",\"Credit\",\"Debit\"\n"),
        Some("quickbooks")
    );
    assert_eq!(recognise("Date,Description,Amount\n"), None);
    assert_eq!(recognise("Date,Amount,Payee\n"), None);
    let named = settings(serde_json::json!({"profile": "signed", "currency": "EUR"}));
    assert_eq!(named.for_file(b"*Date,*Amount\n"), None);
    let unnamed = settings(serde_json::json!({"currency": "eur"}));
    let chosen = unnamed.for_file(b"*Date,*Amount\n").map(|s| s.profile);
    assert_eq!(
        chosen,
        Some(Profile {
            currency: Some("EUR".into()),
            ..xero()
        })
    );
}
