use super::*;
use settled_plugin_api::Record;

fn usd() -> Settings {
    Settings::new("USD")
}

fn parse_ok(text: &str, settings: &Settings) -> Vec<PaymentRecord> {
    match parse("t.qif", text.as_bytes(), settings) {
        Ok(records) => records,
        Err(e) => panic!("parse failed: {e}"),
    }
}

/// Asserts that `input` fails with this location and message.
fn check_err(input: &[u8], location: &str, message: &str) {
    match parse("t.qif", input, &usd()) {
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

#[test]
fn payee_memo_fixture_snapshot() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/real/qif/data-payee-memo.qif"
    );
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => panic!("reading {path}: {e}"),
    };
    let records = match parse("data-payee-memo.qif", &bytes, &usd()) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(records.len(), 4);
    let amounts: Vec<Decimal> = records.iter().map(|r| r.amount).collect();
    assert_eq!(
        amounts,
        [dec("-10.00"), dec("-20.00"), dec("-30.00"), dec("-40.00")]
    );
    assert!(records.iter().all(|r| r.booked_on == ymd(2019, 1, 23)));
    assert_eq!(records[0].counterparty_name.as_deref(), Some("Payee Name"));
    assert_eq!(records[0].remittance.as_deref(), Some("Note Text"));
    assert_eq!(records[1].remittance, None);
    assert_eq!(records[2].counterparty_name, None);
    assert_eq!(records[2].remittance.as_deref(), Some("Note Only Text"));
    assert_eq!(
        records[3].source_position.as_deref(),
        Some("data-payee-memo.qif#line 15")
    );
    insta::assert_json_snapshot!(records);
}

#[test]
fn dates_in_quicken_and_other_forms() {
    let check = |raw: &str, order: DateOrder, expected: Option<NaiveDate>| {
        assert_eq!(parse_date(raw, order).ok(), expected, "{raw}")
    };
    check("01/23/2019", DateOrder::Mdy, ymd(2019, 1, 23));
    check("1/23/19", DateOrder::Mdy, ymd(2019, 1, 23));
    check("1/23/98", DateOrder::Mdy, ymd(1998, 1, 23));
    check("1/23'05", DateOrder::Mdy, ymd(2005, 1, 23));
    check(" 1/ 3'05", DateOrder::Mdy, ymd(2005, 1, 3));
    check("01-23-2019", DateOrder::Mdy, ymd(2019, 1, 23));
    check("23.01.2019", DateOrder::Dmy, ymd(2019, 1, 23));
    check("23/01/19", DateOrder::Dmy, ymd(2019, 1, 23));
    check("2019-01-23", DateOrder::Mdy, ymd(2019, 1, 23));
    check("19-01-23", DateOrder::Ymd, ymd(2019, 1, 23));
    check("23/01/2019", DateOrder::Mdy, None);
    check("2019/13/01", DateOrder::Mdy, None);
    check("Jan 23 2019", DateOrder::Mdy, None);
    check("1/23", DateOrder::Mdy, None);
}

#[test]
fn amounts_with_thousands_and_decimal_marks() {
    let check = |raw: &str, mark: char, currency: &str, expected: Option<&str>| {
        assert_eq!(
            parse_amount(raw, mark, currency).ok(),
            expected.map(dec),
            "{raw}"
        )
    };
    check("-1,234.56", '.', "USD", Some("-1234.56"));
    check("1.234,5", ',', "EUR", Some("1234.50"));
    check("+7", '.', "USD", Some("7.00"));
    check("12.345", '.', "USD", None);
    check("12.345", '.', "KWD", Some("12.345"));
    check("12.5", '.', "JPY", None);
    check("abc", '.', "USD", None);
    check("-", '.', "USD", None);
}

#[test]
fn credit_card_register_with_number_and_splits() {
    let text = "!Type:CCard\nD3/4'24\nU-1,500.00\nT-1,500.00\nN1042\nCX\nPAcme\nLOffice\nSOffice\n$-1000.00\nSTravel\n$-500.00\n^\nD3/5'24\nT25\nNATM\n^\n";
    let records = parse_ok(text, &usd());
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].amount, dec("-1500.00"));
    assert_eq!(records[0].booked_on, ymd(2024, 3, 4));
    assert_eq!(records[0].end_to_end_id.as_deref(), Some("1042"));
    assert_eq!(records[1].end_to_end_id, None, "ATM is not a reference");
}

#[test]
fn ids_are_stable_and_count_identical_records() {
    let record = "D01/02/2024\nT-5.00\nPShop\n^\n";
    let first = parse_ok(&format!("!Type:Bank\n{record}{record}"), &usd());
    let again = parse_ok(&format!("!Type:Bank\n\n\n{record}"), &usd());
    assert_eq!(first[0].external_id, again[0].external_id);
    assert!(first[0].external_id.ends_with(":0"));
    assert!(first[1].external_id.ends_with(":1"));
    assert_eq!(first[0].external_id[..64], first[1].external_id[..64]);
}

#[test]
fn account_block_names_the_account_in_the_id() {
    let record = "!Type:Bank\nD01/02/2024\nT-5.00\n^\n";
    let a = parse_ok(&format!("!Account\nNChecking\nTBank\n^\n{record}"), &usd());
    let b = parse_ok(&format!("!Account\nNSavings\nTBank\n^\n{record}"), &usd());
    assert_ne!(a[0].external_id, b[0].external_id);
}

#[test]
fn last_record_without_caret_is_kept() {
    let records = parse_ok("!Type:Bank\nD01/02/2024\nT1\n^\nD01/03/2024\nT2", &usd());
    assert_eq!(records.len(), 2);
}

#[test]
fn bad_records_fail_the_whole_file() {
    check_err(
        b"!Type:Bank\nD01/02/2024\nT1\n^\nD13/45/2024\nT1\n^\n",
        "line 5",
        "`13/45/2024` is not a qif date",
    );
    check_err(
        b"!Type:Bank\nD01/02/2024\nT1.005\n^\n",
        "line 3",
        "amount `1.005` has more decimals than USD allows (2)",
    );
    check_err(
        b"!Type:Bank\nPx\nT1\n^\n",
        "line 2",
        "record has no `D` date",
    );
    check_err(
        b"!Type:Bank\nD01/02/2024\n^\n",
        "line 2",
        "record has no `T` amount",
    );
    check_err(
        b"!Type:Bank\nD01/02/2024\nQ5\n^\n",
        "line 3",
        "unknown qif field code `Q`",
    );
    check_err(
        b"!Type:Invst\nD01/02/2024\n^\n",
        "line 1",
        "unsupported register `!Type:Invst`: only Bank, CCard, Cash, Oth A and Oth L hold payments",
    );
}

#[test]
fn empty_binary_and_headerless_files_are_bad_input() {
    check_err(b"", "file", "empty file");
    check_err(
        b"\x89PNG\r\n\x1a\n\0\0",
        "line 1",
        "not a qif file: no `!Type:` header before the first record",
    );
    check_err(
        b"!Type:Bank\nD1/2/24\n\0\x01\x02",
        "line 3",
        "binary data (character U+0000): not a qif file",
    );
    check_err(
        b"D01/02/2024\nT1\n^\n",
        "line 1",
        "not a qif file: no `!Type:` header before the first record",
    );
    check_err(b"\n\n", "line 1", "not a qif file: no `!Type:` header");
}

#[test]
fn windows_1252_text_is_decoded() {
    let mut bytes = b"!Type:Bank\nD01/02/2024\nT1\nPCaf".to_vec();
    bytes.extend_from_slice(&[0xE9, 0x80, b'\n', b'^', b'\n']);
    let records = match parse("t.qif", &bytes, &usd()) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(records[0].counterparty_name.as_deref(), Some("Café€"));
}

#[test]
fn settings_require_a_currency() {
    let err = Settings::from_json(serde_json::json!({})).err();
    assert_eq!(
        err.map(|e| (e.location, e.message)),
        Some((
            Some("currency".to_string()),
            "missing: qif files carry no currency, so set it (e.g. \"USD\")".to_string()
        ))
    );
    let key = |json| Settings::from_json(json).err().and_then(|e| e.location);
    assert_eq!(
        key(serde_json::json!({"currency": "EURO"})).as_deref(),
        Some("currency")
    );
    assert_eq!(
        key(serde_json::json!({"currency": "EUR", "order": "dmy"})).as_deref(),
        Some("order")
    );
    assert_eq!(
        key(serde_json::json!({"currency": "EUR", "date_order": "ydm"})).as_deref(),
        Some("date_order")
    );
    assert_eq!(
        key(serde_json::json!({"currency": "EUR", "decimal_mark": ";"})).as_deref(),
        Some("decimal_mark")
    );
    let ok = Settings::from_json(serde_json::json!({"currency": "eur", "date_order": "dmy"})).ok();
    assert_eq!(
        ok.map(|s| (s.currency, s.date_order)),
        Some(("EUR".to_string(), DateOrder::Dmy))
    );
}

#[test]
fn sniff_needs_a_header() {
    assert_eq!(sniff("a.qif", b"!Type:Bank\nD1/1/24\n"), 100);
    assert_eq!(sniff("a.txt", b"\n!Type:CCard\n"), 90);
    assert_eq!(sniff("a.qif", b"hello"), 30);
    assert_eq!(sniff("a.csv", b"Date,Amount\n"), 0);
}

#[test]
fn plugin_configures_and_parses_through_the_trait() {
    assert!(
        Qif::configure(serde_json::Value::Null).is_err(),
        "currency is required"
    );
    let plugin = match Qif::configure(serde_json::json!({"currency": "CAD"})) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    let reply = plugin.parse(FileRequest {
        name: "a.qif".into(),
        content: b"!Type:Bank\nD1/2/24\nT3\n^\n".to_vec(),
    });
    match reply.map(|r| r.records) {
        Ok(records) => assert!(
            matches!(records.as_slice(), [Record::Payment(p)] if p.currency == "CAD" && p.amount == dec("3.00")),
            "{records:?}"
        ),
        Err(e) => panic!("{e}"),
    }
}
