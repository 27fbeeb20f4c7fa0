use super::*;
use std::str::FromStr;

fn fixture() -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/real/bai2/sample1.txt"
    );
    match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => panic!("reading {path}: {e}"),
    }
}

fn parse_ok(text: &str) -> Vec<PaymentRecord> {
    match parse("t.bai", text.as_bytes(), &Settings::default()) {
        Ok(records) => records,
        Err(e) => panic!("parse failed: {e}"),
    }
}

/// Asserts that `input` fails with this location and message.
fn check_err(input: &str, location: &str, message: &str) {
    match parse("t.bai", input.as_bytes(), &Settings::default()) {
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

/// A one-account file around these `16`/`88` lines, with correct totals and counts.
fn file_with(details: &[&str], currency: &str, modifier: &str) -> String {
    let mut total: i128 = 0;
    for d in details.iter().filter(|d| d.starts_with("16,")) {
        let amount = d.split(',').nth(2).unwrap_or("0");
        total += amount.parse::<i128>().unwrap_or(0);
    }
    let account_records = details.len() + 2;
    format!(
        "01,SENDER,RECEIVER,240105,0800,1,,,2/\n02,RECEIVER,BANK,1,240104,,{currency},{modifier}/\n03,ACCT9,,/\n{}\n49,{total},{account_records}/\n98,{total},1,{}/\n99,{total},1,{}/",
        details.join("\n"),
        account_records + 2,
        account_records + 4
    )
}

#[test]
fn sample1_snapshot() {
    let records = match parse("sample1.txt", &fixture(), &Settings::default()) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(records.len(), 17);
    assert!(records.iter().all(|r| r.currency == "CAD"));
    assert_eq!(records[0].amount, dec("-25.00"));
    assert_eq!(records[0].remittance.as_deref(), Some("RETURNED CHEQUE"));
    assert_eq!(records[0].booked_on, ymd(2006, 3, 17));
    assert_eq!(records[0].value_date, ymd(2006, 3, 16));
    assert_eq!(records[3].amount, dec("2035.00"));
    assert_eq!(records[3].remittance.as_deref(), Some("TFR 1020 0345678"));
    assert_eq!(records[16].amount, dec("-5.00"));
    assert_eq!(
        records[16].source_position.as_deref(),
        Some("sample1.txt#line 24")
    );
    let credits: Decimal = records
        .iter()
        .map(|r| r.amount)
        .filter(|a| a.is_sign_positive())
        .sum();
    assert_eq!(
        credits,
        dec("3200.00"),
        "credits of both 03 blocks: 2085.00 + 1115.00"
    );
    insta::assert_json_snapshot!(records);
}

#[test]
fn bank_reference_is_the_id_and_customer_reference_the_end_to_end_id() {
    let records = parse_ok(&file_with(
        &["16,195,150000,0,BR-77,INV-2024-0042,WIRE FROM ACME/"],
        "USD",
        "2",
    ));
    let r = &records[0];
    assert_eq!(r.external_id, "ACCT9:BR-77");
    assert_eq!(r.end_to_end_id.as_deref(), Some("INV-2024-0042"));
    assert_eq!((r.amount, r.currency.as_str()), (dec("1500.00"), "USD"));
    assert_eq!(r.status, EntryStatus::Booked);
    assert_eq!(r.value_date, None);
}

#[test]
fn continuation_text_is_joined_and_commas_stay_in_text() {
    let records = parse_ok(&file_with(
        &[
            "16,142,100,Z,,,PAYMENT, THANK YOU",
            "88,FOR INVOICE 7/",
            "88,AND 8/",
        ],
        "USD",
        "2",
    ));
    assert_eq!(
        records[0].remittance.as_deref(),
        Some("PAYMENT, THANK YOU FOR INVOICE 7 AND 8")
    );
}

#[test]
fn fixed_length_records_join_without_a_space() {
    // Physical record length 20: a full line was cut, so the next one continues the word.
    let text = "01,S,R,240105,0800,1,20,,2/\n02,R,B,1,240104,,USD,2/\n03,A,,/\n16,108,100,,,,INVOIC\n88,E 7/\n49,100,4/\n98,100,1,6/\n99,100,1,8/";
    let records = parse_ok(text);
    assert_eq!(records[0].remittance.as_deref(), Some("INVOICE 7"));
}

#[test]
fn funds_types_are_skipped_over_to_the_references() {
    let records = parse_ok(&file_with(
        &[
            "16,115,100,S,50,30,20,B1,C1,TEXT S/",
            "16,115,100,D,2,0,60,1,40,B2,C2,TEXT D/",
            "16,475,100,V,240103,1200,B3,C3,TEXT V/",
        ],
        "USD",
        "2",
    ));
    let ids: Vec<&str> = records.iter().map(|r| r.external_id.as_str()).collect();
    assert_eq!(ids, ["ACCT9:B1", "ACCT9:B2", "ACCT9:B3"]);
    assert_eq!(records[1].remittance.as_deref(), Some("TEXT D"));
    assert_eq!(records[2].value_date, ymd(2024, 1, 3));
    assert_eq!(records[2].amount, dec("-1.00"));
}

#[test]
fn type_codes_set_kind_and_reversal() {
    let records = parse_ok(&file_with(
        &[
            "16,698,100,,,,/",
            "16,555,100,,,,/",
            "16,552,100,,,,/",
            "16,890,0,,,,NOTE/",
        ],
        "USD",
        "2",
    ));
    assert_eq!(records.len(), 3, "890 carries no movement");
    assert_eq!(
        (records[0].kind, records[0].reversal),
        (PaymentKind::Fee, false)
    );
    assert_eq!(
        (records[1].kind, records[1].reversal),
        (PaymentKind::Refund, false)
    );
    assert_eq!(
        (records[2].kind, records[2].reversal),
        (PaymentKind::Transfer, true)
    );
}

#[test]
fn currency_decides_the_implied_decimals_and_defaults_to_usd() {
    let jpy = parse_ok(&file_with(&["16,108,1500,,,,/"], "JPY", "2"));
    assert_eq!(
        (jpy[0].amount, jpy[0].currency.as_str()),
        (dec("1500"), "JPY")
    );
    let none = parse_ok(&file_with(&["16,108,1500,,,,/"], "", "2"));
    assert_eq!(
        (none[0].amount, none[0].currency.as_str()),
        (dec("15.00"), "USD")
    );
}

#[test]
fn interim_same_day_reports_are_pending() {
    let records = parse_ok(&file_with(&["16,108,1500,,,,/"], "USD", "3"));
    assert_eq!(records[0].status, EntryStatus::Pending);
}

#[test]
fn identical_details_without_bank_reference_get_counted_ids() {
    let records = parse_ok(&file_with(
        &["16,108,1500,,,,X/", "16,108,1500,,,,X/"],
        "USD",
        "2",
    ));
    assert!(records[0].external_id.ends_with(":0"));
    assert!(records[1].external_id.ends_with(":1"));
    assert_eq!(records[0].external_id[..64], records[1].external_id[..64]);
    let again = parse_ok(&file_with(&["16,108,1500,,,,X/"], "USD", "2"));
    assert_eq!(again[0].external_id, records[0].external_id);
}

#[test]
fn truncated_file_is_rejected() {
    let text = String::from_utf8_lossy(&fixture()).to_string();
    let cut: String = text.lines().take(20).collect::<Vec<_>>().join("\n");
    check_err(&cut, "line 20", "truncated file: no 99 file trailer");
}

#[test]
fn totals_and_counts_must_add_up() {
    let text = String::from_utf8_lossy(&fixture()).replace(
        "16,108,000000000002500,V,060316,,,,MACLEOD",
        "16,108,000000000002600,V,060316,,,,MACLEOD",
    );
    check_err(&text, "line 16", "account control total 834000 does not match the sum of its amounts 834100 (opened on line 3)");
    let mut lines: Vec<String> = String::from_utf8_lossy(&fixture())
        .lines()
        .map(str::to_string)
        .collect();
    lines[25] = "98,+00000000001280000,2,24/".into();
    check_err(
        &lines.join("\n"),
        "line 26",
        "trailer says 24 records, the file has 25: truncated or edited file",
    );
}

#[test]
fn bad_fields_fail_the_whole_file() {
    check_err(
        &file_with(&["16,108,15.00,,,,/"], "USD", "2"),
        "line 4",
        "amount `15.00` is not a whole number of minor units",
    );
    check_err(
        &file_with(&["16,108,100,V,241340,,,,/"], "USD", "2"),
        "line 4",
        "`241340` is not a YYMMDD date",
    );
    check_err(
        &file_with(&["16,950,100,,,,/"], "USD", "2"),
        "line 4",
        "type code 950 is neither a credit (100-399) nor a debit (400-699) detail",
    );
    check_err(
        &file_with(&["16,108,100,Q,,,/"], "USD", "2"),
        "line 4",
        "unknown funds type `Q`",
    );
    check_err(
        &file_with(&["17,108,100,,,,/"], "USD", "2"),
        "line 4",
        "unknown bai2 record code `17`",
    );
}

#[test]
fn empty_binary_and_foreign_files_are_bad_input() {
    check_err("", "file", "empty file");
    match parse("x", b"\xff\xfe\x00garbage", &Settings::default()) {
        Err(e) => assert_eq!(e.message, "binary data: a bai2 file is plain ascii text"),
        Ok(r) => panic!("{r:?}"),
    }
    check_err(
        "01,a\u{1}b",
        "line 1",
        "binary data (character U+0001): not a bai2 file",
    );
    check_err(
        "Date,Amount\n",
        "line 1",
        "not a bai2 file: it does not start with a 01 file header",
    );
}

#[test]
fn sniff_wants_the_header_records() {
    assert_eq!(sniff("x.txt", &fixture()), 95);
    assert_eq!(sniff("x.bai", b"01,a,b,c,d,e,f,g,2/\n"), 70);
    assert_eq!(sniff("x.bai2", b"hello"), 30);
    assert_eq!(sniff("x.csv", b"Date,Amount\n"), 0);
}

#[test]
fn settings_validate_the_default_currency() {
    let key = |json| Settings::from_json(json).err().and_then(|e| e.location);
    assert_eq!(
        key(serde_json::json!({"currency": "EUR"})).as_deref(),
        Some("currency")
    );
    assert_eq!(
        key(serde_json::json!({"default_currency": "EURO"})).as_deref(),
        Some("default_currency")
    );
    let ok = Settings::from_json(serde_json::json!({"default_currency": "eur"})).ok();
    assert_eq!(ok.map(|s| s.default_currency), Some("EUR".to_string()));
}

#[test]
fn plugin_configures_and_parses_through_the_trait() {
    let plugin = match Bai2::configure(serde_json::json!({})) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    let reply = plugin.parse(FileRequest {
        name: "sample1.txt".into(),
        content: fixture(),
    });
    assert_eq!(reply.map(|r| r.records.len()).ok(), Some(17));
    let sniffed = plugin.sniff(SniffRequest {
        name: "sample1.txt".into(),
        head: fixture(),
    });
    assert_eq!(sniffed.confidence, 95);
}
