use settled_plugin_api::rust_decimal::Decimal;
use settled_plugin_api::{EntryStatus, PaymentKind, PaymentRecord, PluginError, Record};

use super::*;

/// One MT940 message around `lines` (`:61:`/`:86:` fields), with LF line ends.
fn statement(lines: &str) -> String {
    format!(
        ":20:STMT1\n:25:DE02100100100006820101\n:28C:1/1\n:60F:C260301EUR1000,00\n{lines}:62F:C260302EUR1000,00\n-\n"
    )
}

fn parse_ok(text: &str) -> Vec<PaymentRecord> {
    match parse("s.sta", text.as_bytes(), &Settings::default()) {
        Ok(records) => records,
        Err(e) => panic!("expected records, got {e}"),
    }
}

/// Asserts that parsing fails as bad input at `location` with a message containing `fragment`.
fn check_error(bytes: &[u8], location: &str, fragment: &str) {
    let err: PluginError = match parse("s.sta", bytes, &Settings::default()) {
        Ok(records) => panic!("expected an error, got {} records", records.len()),
        Err(e) => e,
    };
    assert_eq!(err.code, "bad_input", "{err}");
    assert_eq!(err.location.as_deref(), Some(location), "{err}");
    assert!(err.message.contains(fragment), "{err}");
}

fn amount(text: &str) -> Decimal {
    text.parse().unwrap_or_default()
}

#[test]
fn a_statement_line_and_its_details_become_one_record() {
    let records = parse_ok(&statement(
        ":61:2603020302CR250,00NTRFNONREF//BANK-1\n:86:166?00GUTSCHRIFT?20EREF+E-77?21SVWZ+INV-2026-007\n?31DE89370400440532013000?32ACME GMBH\n",
    ));
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.external_id, "BANK-1");
    assert_eq!(record.amount, amount("250.00"));
    assert_eq!(record.currency, "EUR");
    assert_eq!(record.status, EntryStatus::Booked);
    assert_eq!(record.remittance.as_deref(), Some("INV-2026-007"));
    assert_eq!(record.end_to_end_id.as_deref(), Some("E-77"));
    assert_eq!(record.counterparty_name.as_deref(), Some("ACME GMBH"));
    assert_eq!(
        record.counterparty_account.as_deref(),
        Some("DE89370400440532013000")
    );
    assert_eq!(record.source_position.as_deref(), Some("s.sta#line 5"));
}

#[test]
fn reversals_are_flagged_and_signed_by_what_they_reverse() {
    let records = parse_ok(&statement(
        ":61:260302RC10,00NTRFNONREF//R1\n:61:260302RD20,00NTRFNONREF//R2\n:61:260302D5,00NCHGNONREF//R3\n",
    ));
    let got: Vec<(Decimal, bool, PaymentKind)> = records
        .iter()
        .map(|r| (r.amount, r.reversal, r.kind))
        .collect();
    assert_eq!(
        got,
        vec![
            (amount("-10.00"), true, PaymentKind::Transfer),
            (amount("20.00"), true, PaymentKind::Transfer),
            (amount("-5.00"), false, PaymentKind::Fee),
        ]
    );
    // Without an entry date the value date is the booking date.
    assert_eq!(records[0].booked_on, records[0].value_date);
}

#[test]
fn a_missing_closing_balance_names_the_message() {
    let text = ":20:OK\n:25:1\n:60F:C260301EUR1,00\n:62F:C260301EUR1,00\n-\n:20:CUT\n:25:1\n:60F:C260301EUR1,00\n:61:260302C1,00NTRFNONREF\n-\n";
    check_error(
        text.as_bytes(),
        "line 6",
        "message at line 6 (:20: CUT) has no closing balance :62F:",
    );
}

#[test]
fn a_missing_opening_balance_or_account_fails() {
    check_error(
        b":20:X\n:25:1\n:61:260302C1,00NTRFNONREF\n:62F:C260301EUR1,00\n",
        "line 1",
        "has no opening balance :60F:",
    );
    check_error(
        b":20:X\n:60F:C260301EUR1,00\n:62F:C260301EUR1,00\n",
        "line 1",
        "has no :25: account",
    );
}

#[test]
fn a_closing_balance_in_another_currency_fails() {
    check_error(
        b":20:X\n:25:1\n:60F:C260301EUR1,00\n:62F:C260301USD1,00\n",
        "line 4",
        "closing balance in USD but the opening balance is in EUR",
    );
}

#[test]
fn an_interim_report_needs_no_balances_and_is_pending() {
    let text = "{1:F01BANKDEFFAXXX0000000000}{2:I942BANKDEFFXXXXN}{4:\r\n:20:INTRA\r\n:25:DE02100100100006820101\r\n:28C:1/1\r\n:34F:EURD0,\r\n:13D:2603021200+0100\r\n:61:2603020302CR99,50NTRFNONREF\r\n:86:incoming\r\n:90C:1EUR99,50\r\n-}";
    let records = parse_ok(text);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].status, EntryStatus::Pending);
    assert_eq!(records[0].currency, "EUR");
    assert_eq!(records[0].amount, amount("99.50"));
    let booked_only = parse(
        "i.942",
        text.as_bytes(),
        &Settings {
            include_pending: false,
            ..Settings::default()
        },
    )
    .unwrap_or_default();
    assert!(booked_only.is_empty());
}

#[test]
fn lines_without_a_bank_reference_get_content_ids_that_survive_a_rename() {
    let line = ":61:260302C7,00NTRFNONREF\n:86:coffee\n";
    let twice = parse_ok(&statement(&format!("{line}{line}")));
    let (hash, occurrence) = twice[0].external_id.split_once(':').unwrap_or_default();
    assert_eq!((hash.len(), occurrence), (64, "0"));
    assert_eq!(twice[1].external_id, format!("{hash}:1"));
    let renamed = parse(
        "other-name.sta",
        statement(line).as_bytes(),
        &Settings::default(),
    )
    .unwrap_or_default();
    assert_eq!(renamed[0].external_id, twice[0].external_id);
    let different = parse_ok(&statement(":61:260302C7,00NTRFNONREF\n:86:tea\n"));
    assert_ne!(different[0].external_id, twice[0].external_id);
}

#[test]
fn dutch_details_are_read() {
    let records = parse_ok(&statement(
        ":61:260302C45,00N078NONREF//NL-1\n:86:/TRTP/SEPA OVERBOEKING/IBAN/NL44RABO0123456789/BIC/RABONL2U/NAME/J\nANSEN BV/REMI/Factuur INV-2026-0\n07/EREF/E2E-99\n",
    ));
    let record = &records[0];
    assert_eq!(record.counterparty_name.as_deref(), Some("JANSEN BV"));
    assert_eq!(record.remittance.as_deref(), Some("Factuur INV-2026-007"));
    assert_eq!(record.end_to_end_id.as_deref(), Some("E2E-99"));
}

#[test]
fn latin1_bytes_are_decoded_as_windows_1252() {
    let mut bytes = statement(":61:260302C1,00NTRFNONREF\n:86:M\u{fc}ller Rechnung\n").into_bytes();
    // Re-encode the one non-ASCII character as a single Latin-1 byte.
    let at = bytes
        .windows(2)
        .position(|w| w == "ü".as_bytes())
        .unwrap_or_default();
    bytes.splice(at..at + 2, [0xfc]);
    let records = parse("l.sta", &bytes, &Settings::default()).unwrap_or_default();
    assert_eq!(records[0].remittance.as_deref(), Some("Müller Rechnung"));
    let strict = Settings {
        encoding: Encoding::Utf8,
        ..Settings::default()
    };
    let err = parse("l.sta", &bytes, &strict).unwrap_err();
    assert_eq!(err.location.as_deref(), Some("line 6"));
}

#[test]
fn bad_lines_fail_the_whole_file_naming_the_line() {
    let good = ":61:260302C1,00NTRFNONREF//G1\n";
    let cases = [
        (
            ":61:260302C1,005NTRFNONREF\n",
            "more decimals than EUR allows",
        ),
        (
            ":61:260230C1,00NTRFNONREF\n",
            "value date `260230` is not a date",
        ),
        (":61:260302C1,00\n", "transaction type"),
    ];
    for (bad, fragment) in cases {
        check_error(
            statement(&format!("{good}{bad}")).as_bytes(),
            "line 6",
            fragment,
        );
    }
    check_error(
        b":20:X\n:25:1\n:60F:C260301EUR1,001\n:62F:C260301EUR1,00\n",
        "line 3",
        "more decimals than EUR allows",
    );
}

#[test]
fn empty_binary_and_foreign_files_fail() {
    check_error(b"", "file", "empty file");
    check_error(
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        "line 3",
        "binary file",
    );
    check_error(
        b"Date;Amount\n2026-03-01;5,00\n",
        "line 1",
        "no mt940 message found",
    );
    check_error(b":25:123\n:20:X\n", "line 1", "outside a message");
}

#[test]
fn sniff_claims_mt940_by_content_and_extension() {
    let check = |name: &str, head: &str, expected: u8| {
        assert_eq!(sniff(name, head.as_bytes()), expected, "{name}: {head}");
    };
    check("a.sta", &statement(""), 95);
    check("export.txt", &statement(""), 85);
    check(
        "export.txt",
        "{1:F01X}{2:I940X}{4:\r\n:20:A\r\n:25:B\r\n",
        85,
    );
    check("a.940", "garbage", 30);
    check("a.xml", "<Document><BkToCstmrStmt>", 0);
    check("a.csv", "x;:20:;:25:", 0);
}

#[test]
fn settings_default_and_bad_keys_are_named() {
    assert_eq!(
        Settings::from_json(serde_json::Value::Null),
        Ok(Settings::default())
    );
    assert_eq!(
        Settings::from_json(serde_json::json!({"encoding": "windows-1252"})),
        Ok(Settings {
            encoding: Encoding::Windows1252,
            include_pending: true
        })
    );
    let unknown = Settings::from_json(serde_json::json!({"charset": "latin1"})).unwrap_err();
    assert_eq!(
        (unknown.code.as_str(), unknown.location.as_deref()),
        ("bad_config", Some("charset"))
    );
    assert!(unknown.message.contains("unknown field"), "{unknown}");
    let bad_value =
        Settings::from_json(serde_json::json!({"include_pending": true, "encoding": "latin1"}))
            .unwrap_err();
    assert_eq!(bad_value.location.as_deref(), Some("encoding"));
}

#[test]
fn the_plugin_parses_through_the_trait() {
    let plugin = Mt940::configure(serde_json::json!({})).unwrap_or_default();
    let records = plugin
        .parse(FileRequest {
            name: "s.sta".into(),
            content: statement(":61:260302C1,00NTRFNONREF//T1\n").into_bytes(),
        })
        .map(|r| r.records)
        .unwrap_or_default();
    assert!(matches!(records.as_slice(), [Record::Payment(p)] if p.external_id == "T1"));
    assert_eq!(Mt940::manifest().roles, vec![Role::File]);
}

#[test]
fn returns_and_charges_set_the_kind_and_statement_level_details_are_not_attached() {
    let records = parse_ok(&statement(
        ":61:260302D3,00NRTINONREF//K1\n:61:260302C4,00NTRFNONREF//K2\n:86:109?00RUECKLASTSCHRIFT?20SVWZ+INV-9\n:61:260302D1,00NCOMNONREF//K3\n:86:?20commission\n:61:260302C2,00NTRFNONREF//K4\n:86:/RTRN/MD06/REMI/INV-4/\n:86:statement summary\n",
    ));
    let kinds: Vec<PaymentKind> = records.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        vec![
            PaymentKind::Refund,
            PaymentKind::Refund,
            PaymentKind::Fee,
            PaymentKind::Refund
        ]
    );
    assert_eq!(records[0].remittance, None);
    assert_eq!(
        records[3].remittance.as_deref(),
        Some("return reason MD06 INV-4")
    );
}

#[test]
fn every_record_names_the_statement_account_it_was_booked_on() {
    let records = parse_ok(&statement(
        ":61:2603020302RC80,00NRTINONREF//RET-1\n:86:159?00RUECKUEBERWEISUNG?20EREF+E-77?32ACME GMBH\n",
    ));
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0].own_account.as_deref(),
        Some("DE02100100100006820101")
    );
    assert_eq!(records[0].end_to_end_id.as_deref(), Some("E-77"));
    assert!(records[0].reversal);
    assert_eq!(records[0].amount, amount("-80.00"));
}
