use super::*;
use settled_plugin_api::Record;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../../tests/fixtures/real/ofx/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) => panic!("reading {path}: {e}"),
    }
}

fn parse_ok(name: &str, bytes: &[u8]) -> Vec<PaymentRecord> {
    match parse(name, bytes, &Settings::default()) {
        Ok(records) => records,
        Err(e) => panic!("{name} failed: {e}"),
    }
}

fn parse_fixture(name: &str) -> Vec<PaymentRecord> {
    parse_ok(name, &fixture(name))
}

/// Asserts that `input` fails with this location and message.
fn check_err(input: &[u8], location: &str, message: &str) {
    match parse("t.ofx", input, &Settings::default()) {
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

const SGML_HEAD: &str = "OFXHEADER:100\nDATA:OFXSGML\nVERSION:102\nCHARSET:1252\n\n";

fn sgml(transactions: &str) -> Vec<u8> {
    format!(
        "{SGML_HEAD}<OFX><BANKMSGSRSV1><STMTTRNRS><STMTRS><CURDEF>EUR\n<BANKACCTFROM><ACCTID>A1</BANKACCTFROM>\n<BANKTRANLIST>\n{transactions}\n</BANKTRANLIST></STMTRS></STMTTRNRS></BANKMSGSRSV1></OFX>\n"
    )
    .into_bytes()
}

#[test]
fn bank_medium_sgml_snapshot() {
    let records = parse_fixture("bank_medium.ofx");
    assert_eq!(records.len(), 3);
    assert_eq!(
        records[0].external_id,
        "12300 000012345678:0000123456782009040100001"
    );
    assert_eq!(records[0].amount, dec("-6.60"));
    assert_eq!(records[0].currency, "CAD");
    assert_eq!(records[0].booked_on, ymd(2009, 4, 1));
    assert_eq!(
        records[1].counterparty_name.as_deref(),
        Some("Joe's Bald Hairstyles")
    );
    assert_eq!(records[1].end_to_end_id, None, "CHECKNUM 0 is no reference");
    assert_eq!(records[2].amount, dec("-22.00"));
    insta::assert_json_snapshot!(records);
}

#[test]
fn suncorp_xml_snapshot() {
    let records = parse_fixture("suncorp.ofx");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].external_id, "123456789:1");
    assert_eq!(records[0].amount, dec("-16.85"));
    assert_eq!(records[0].currency, "AUD");
    assert_eq!(
        records[0].counterparty_name.as_deref(),
        Some("EFTPOS WDL HANDYWAY ALDI STORE")
    );
    insta::assert_json_snapshot!(records);
}

#[test]
fn anz_credit_card_snapshot() {
    let records = parse_fixture("anzcc.ofx");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].external_id, "1234123412341234:201705080001");
    assert_eq!(records[0].amount, dec("-5.50"));
    assert_eq!(records[0].value_date, ymd(2017, 5, 8));
    assert_eq!(
        records[0].source_position.as_deref(),
        Some("anzcc.ofx#CCSTMTRS[1]/STMTTRN[1]")
    );
    insta::assert_json_snapshot!(records);
}

#[test]
fn latin1_qfx_snapshot() {
    let records = parse_fixture("8859-1.qfx");
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0].counterparty_name.as_deref(),
        Some("Paiement facture/Carte prépayée")
    );
    assert_eq!(records[0].external_id, "999-12345-0055666-EOP:wSoKuCS77");
    insta::assert_json_snapshot!(records);
}

#[test]
fn fitid_is_prefixed_by_account_so_accounts_do_not_collide() {
    let trn = "<STMTTRN><TRNTYPE>CREDIT<DTPOSTED>20240102<TRNAMT>10.00<FITID>1</STMTTRN>";
    let one = parse_ok("a.ofx", &sgml(trn));
    let other = String::from_utf8_lossy(&sgml(trn)).replace("<ACCTID>A1", "<ACCTID>B2");
    let two = parse_ok("b.ofx", other.as_bytes());
    assert_eq!(one[0].external_id, "A1:1");
    assert_eq!(two[0].external_id, "B2:1");
}

#[test]
fn fields_map_to_the_record() {
    let trn = "<STMTTRN><TRNTYPE>SRVCHG<DTPOSTED>20240102120000.000[-5:EST]<DTUSER>20240101<DTAVAIL>20240103<TRNAMT>-1.5<FITID>F9<REFNUM>E2E-7<PAYEE><NAME>Bank &amp; Co</PAYEE><BANKACCTTO><ACCTID>DE02</BANKACCTTO><MEMO>INV-2024-7</STMTTRN>";
    let r = &parse_ok("t.ofx", &sgml(trn))[0];
    assert_eq!(r.kind, PaymentKind::Fee);
    assert_eq!(r.amount, dec("-1.50"));
    assert_eq!(r.booked_on, ymd(2024, 1, 2));
    assert_eq!(r.value_date, ymd(2024, 1, 3), "DTAVAIL wins over DTUSER");
    assert_eq!(r.end_to_end_id.as_deref(), Some("E2E-7"));
    assert_eq!(r.counterparty_name.as_deref(), Some("Bank & Co"));
    assert_eq!(r.counterparty_account.as_deref(), Some("DE02"));
    assert_eq!(r.remittance.as_deref(), Some("INV-2024-7"));
}

#[test]
fn transaction_currency_overrides_curdef() {
    let trn = "<STMTTRN><TRNTYPE>CREDIT<DTPOSTED>20240102<TRNAMT>1000<FITID>1<CURRENCY><CURRATE>1.0<CURSYM>JPY</CURRENCY></STMTTRN>";
    let r = &parse_ok("t.ofx", &sgml(trn))[0];
    assert_eq!((r.currency.as_str(), r.amount), ("JPY", dec("1000")));
}

#[test]
fn dates_in_every_ofx_form() {
    let check =
        |raw: &str, expected: Option<NaiveDate>| assert_eq!(date(raw).ok(), expected, "{raw}");
    check("20240229", ymd(2024, 2, 29));
    check("202402291230", ymd(2024, 2, 29));
    check("20240229123000", ymd(2024, 2, 29));
    check("20240229123000.123", ymd(2024, 2, 29));
    check("20240229123000.123[-5:EST]", ymd(2024, 2, 29));
    check("20240229123000[+5.30:IST]", ymd(2024, 2, 29));
    check("20240229123000[0]", ymd(2024, 2, 29));
    check("20230229", None);
    check("2024022", None);
    check("20240229[EST]", None);
    check("20240229.5", None);
    check("20240229246000", None);
}

#[test]
fn amounts_are_scaled_to_currency_units() {
    let check = |raw: &str, currency: &str, expected: Option<&str>| {
        assert_eq!(
            amount(raw, currency).ok(),
            expected.map(dec),
            "{raw} {currency}"
        )
    };
    check("-5.5", "USD", Some("-5.50"));
    check("+12", "USD", Some("12.00"));
    check("-20,00", "EUR", Some("-20.00"));
    check("1.230", "EUR", Some("1.23"));
    check("1.234", "EUR", None);
    check("1.5", "JPY", None);
    check("1.234", "KWD", Some("1.234"));
    check("1e3", "USD", None);
    check("", "USD", None);
    check("--1", "USD", None);
}

#[test]
fn garbage_between_tags_names_the_position() {
    let trn = "<STMTTRN><TRNTYPE>CREDIT<DTPOSTED>20240102<TRNAMT>10.00<FITID>1</STMTTRN>xx junk";
    check_err(
        &sgml(trn),
        "line 9, column 74",
        "unexpected text `xx junk` after </STMTTRN>",
    );
}

#[test]
fn too_many_decimals_fail_the_whole_file() {
    let trns = "<STMTTRN><TRNTYPE>CREDIT<DTPOSTED>20240102<TRNAMT>10.00<FITID>1</STMTTRN>\n<STMTTRN><TRNTYPE>CREDIT<DTPOSTED>20240102<TRNAMT>10.001<FITID>2</STMTTRN>";
    check_err(
        &sgml(trns),
        "STMTRS[1]/STMTTRN[2]/TRNAMT, line 10",
        "amount `10.001` has more decimals than EUR allows (2)",
    );
}

#[test]
fn bad_date_and_missing_fitid_are_named() {
    let bad_date = "<STMTTRN><TRNTYPE>CREDIT<DTPOSTED>2024-01-02<TRNAMT>1<FITID>1</STMTTRN>";
    check_err(
        &sgml(bad_date),
        "STMTRS[1]/STMTTRN[1]/DTPOSTED, line 9",
        "`2024-01-02` is not an ofx date (YYYYMMDD[HHMMSS[.XXX]][[offset:TZ]])",
    );
    let no_fitid = "<STMTTRN><TRNTYPE>CREDIT<DTPOSTED>20240102<TRNAMT>1</STMTTRN>";
    check_err(
        &sgml(no_fitid),
        "STMTRS[1]/STMTTRN[1], line 9",
        "missing FITID",
    );
}

#[test]
fn truncated_file_is_rejected() {
    let bytes = fixture("suncorp.ofx");
    let cut = &bytes[..bytes.len() / 2];
    let err = parse("suncorp.ofx", cut, &Settings::default()).err();
    assert!(
        err.as_ref()
            .is_some_and(|e| e.message.starts_with("truncated file")),
        "{err:?}"
    );
}

#[test]
fn empty_and_binary_files_are_bad_input() {
    check_err(b"", "file", "empty file");
    check_err(
        b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR",
        "line 1",
        "not an ofx file: no OFXHEADER and no tags",
    );
    check_err(
        b"\x7fELF\x02\x01\x01\0\0\0<\0\0\x01",
        "line 1",
        "not an ofx header line: `\u{7f}ELF\u{2}\u{1}\u{1}\0\0\0`",
    );
}

#[test]
fn file_without_statement_is_rejected() {
    check_err(
        format!("{SGML_HEAD}<OFX><SIGNONMSGSRSV1><SONRS><STATUS><CODE>0</STATUS></SONRS></SIGNONMSGSRSV1></OFX>").as_bytes(),
        "OFX",
        "no bank (STMTRS) or credit-card (CCSTMTRS) statement in the file",
    );
}

#[test]
fn utf8_declared_xml_with_latin1_bytes_is_rejected() {
    let mut bytes = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<OFX><NAME>caf".to_vec();
    bytes.push(0xE9);
    bytes.extend_from_slice(b"</NAME></OFX>");
    check_err(
        &bytes,
        "line 2",
        "invalid utf-8 byte sequence (binary data or a wrong charset header)",
    );
}

#[test]
fn sniff_prefers_content_over_extension() {
    assert_eq!(sniff("x.ofx", SGML_HEAD.as_bytes()), 100);
    assert_eq!(sniff("x.txt", SGML_HEAD.as_bytes()), 90);
    assert_eq!(sniff("x.qfx", b"garbage"), 30);
    assert_eq!(sniff("x.csv", b"a,b,c\n1,2,3"), 0);
    assert_eq!(sniff("x", &fixture("suncorp.ofx")), 90);
}

#[test]
fn settings_reject_unknown_keys_and_bad_currency() {
    let err = Settings::from_json(serde_json::json!({"currency": "EUR"})).err();
    assert_eq!(err.and_then(|e| e.location), Some("currency".to_string()));
    let err = Settings::from_json(serde_json::json!({"default_currency": "EURO"})).err();
    assert_eq!(
        err.and_then(|e| e.location),
        Some("default_currency".to_string())
    );
    assert_eq!(
        Settings::from_json(serde_json::Value::Null).ok(),
        Some(Settings::default())
    );
}

#[test]
fn plugin_configures_and_parses_through_the_trait() {
    let plugin = match Ofx::configure(serde_json::Value::Null) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    let reply = plugin.parse(FileRequest {
        name: "anzcc.ofx".into(),
        content: fixture("anzcc.ofx"),
    });
    match reply.map(|r| r.records) {
        Ok(records) => assert!(
            matches!(records.as_slice(), [Record::Payment(p)] if p.amount == dec("-5.50")),
            "{records:?}"
        ),
        Err(e) => panic!("{e}"),
    }
    assert_eq!(Ofx::manifest().roles, vec![Role::File]);
}

/// The records (or error) of a file fed to a parse session in pieces of `size` bytes.
fn streamed(name: &str, bytes: &[u8], size: usize) -> Result<Vec<PaymentRecord>, PluginError> {
    let mut stream = OfxStream::new(name, &Settings::default());
    let mut records = Vec::new();
    for piece in bytes.chunks(size) {
        records.extend(stream.feed_payments(piece)?);
    }
    records.extend(stream.finish_payments()?);
    Ok(records)
}

fn outcome(r: Result<Vec<PaymentRecord>, PluginError>) -> String {
    match r {
        Ok(records) => format!("{records:?}"),
        Err(e) => format!("{:?}: {}", e.location, e.message),
    }
}

#[test]
fn every_fixture_gives_the_same_records_in_pieces_of_any_size() {
    for name in ["bank_medium.ofx", "suncorp.ofx", "anzcc.ofx", "8859-1.qfx"] {
        let bytes = fixture(name);
        let whole = outcome(parse(name, &bytes, &Settings::default()));
        for size in [1, 2, 7, 100, 1023, 1024, 4096] {
            assert_eq!(
                outcome(streamed(name, &bytes, size)),
                whole,
                "{name} in pieces of {size}"
            );
        }
    }
}

#[test]
fn transactions_come_out_as_they_arrive() {
    let trns: String = (1..=100)
        .map(|i| {
            format!(
                "<STMTTRN><TRNTYPE>CREDIT<DTPOSTED>20240102<TRNAMT>{i}.00<FITID>{i}</STMTTRN>\n"
            )
        })
        .collect();
    let file = sgml(&trns);
    let mut stream = OfxStream::new("t.ofx", &Settings::default());
    // Records handed out by each feed of 256 bytes (a transaction is about 75).
    let mut per_feed = Vec::new();
    for piece in file.chunks(256) {
        match stream.feed_payments(piece) {
            Ok(records) => per_feed.push(records.len()),
            Err(e) => panic!("{e}"),
        }
    }
    let at_end = stream
        .finish_payments()
        .map(|r| r.len())
        .unwrap_or_default();
    let before_end: usize = per_feed.iter().sum();
    assert_eq!(before_end + at_end, 100);
    assert!(at_end <= 1, "{at_end} records were held until the end");
    // The first 1 KiB waits for the character set; after that no feed holds back more than its own transactions.
    assert!(per_feed.iter().all(|n| *n <= 14), "{per_feed:?}");
}

#[test]
fn statements_out_of_order_or_behind_empty_leaves_give_the_same_records() {
    let trns = "<STMTTRN><TRNTYPE>CREDIT<DTPOSTED>20240102<TRNAMT>1.00<FITID>1</STMTTRN>\n<STMTTRN><TRNTYPE>DEBIT<DTPOSTED>20240103<TRNAMT>-2.00<FITID>2<MEMO></STMTTRN>";
    let files = [
        // CURDEF and the account after the transactions: kept until the statement closes.
        format!("{SGML_HEAD}<OFX><BANKMSGSRSV1><STMTTRNRS><STMTRS><BANKTRANLIST>{trns}</BANKTRANLIST><BANKACCTFROM><ACCTID>A1</BANKACCTFROM><CURDEF>EUR</STMTRS></STMTTRNRS></BANKMSGSRSV1></OFX>"),
        // An empty SGML leaf before the list holds the list until the statement closes and shows it was a leaf.
        format!("{SGML_HEAD}<OFX><BANKMSGSRSV1><STMTTRNRS><STMTRS><CURDEF>EUR<BANKACCTFROM><ACCTID>A1</BANKACCTFROM><MKTGINFO><BANKTRANLIST>{trns}</BANKTRANLIST></STMTRS></STMTTRNRS></BANKMSGSRSV1></OFX>"),
        // An unknown aggregate closed by its end tag hides the list: no transactions.
        format!("<?xml version=\"1.0\"?><OFX><BANKMSGSRSV1><STMTTRNRS><STMTRS><CURDEF>EUR</CURDEF><BANKACCTFROM><ACCTID>A1</ACCTID></BANKACCTFROM><X><BANKTRANLIST>{trns}</BANKTRANLIST></X></STMTRS></STMTTRNRS></BANKMSGSRSV1></OFX>"),
        // Two statements, the second a credit card.
        format!("{SGML_HEAD}<OFX><BANKMSGSRSV1><STMTTRNRS><STMTRS><CURDEF>EUR<BANKACCTFROM><ACCTID>A1</BANKACCTFROM><BANKTRANLIST>{trns}</BANKTRANLIST></STMTRS></STMTTRNRS></BANKMSGSRSV1><CREDITCARDMSGSRSV1><CCSTMTTRNRS><CCSTMTRS><CURDEF>USD<CCACCTFROM><ACCTID>C9</CCACCTFROM><BANKTRANLIST>{trns}</BANKTRANLIST></CCSTMTRS></CCSTMTTRNRS></CREDITCARDMSGSRSV1></OFX>"),
    ];
    let counts: Vec<usize> = files
        .iter()
        .map(|file| {
            let whole = parse_ok("t.ofx", file.as_bytes());
            for size in [1, 5, 64] {
                assert_eq!(
                    outcome(streamed("t.ofx", file.as_bytes(), size)),
                    format!("{whole:?}"),
                    "{file} in pieces of {size}"
                );
            }
            whole.len()
        })
        .collect();
    assert_eq!(counts, [2, 2, 0, 4]);
}

#[test]
fn a_syntax_error_after_a_bad_transaction_is_the_error_reported() {
    let trns = "<STMTTRN><TRNTYPE>CREDIT<DTPOSTED>20240102<TRNAMT>1.001<FITID>1</STMTTRN>\n<STMTTRN>junk</STMTTRN>";
    check_err(
        &sgml(trns),
        "line 10, column 10",
        "unexpected text `junk` inside <STMTTRN>",
    );
    let only_bad_amount =
        "<STMTTRN><TRNTYPE>CREDIT<DTPOSTED>20240102<TRNAMT>1.001<FITID>1</STMTTRN>";
    check_err(
        &sgml(only_bad_amount),
        "STMTRS[1]/STMTTRN[1]/TRNAMT, line 9",
        "amount `1.001` has more decimals than EUR allows (2)",
    );
}

#[test]
fn utf16_with_a_byte_order_mark_streams() {
    let text = String::from_utf8_lossy(&sgml(
        "<STMTTRN><TRNTYPE>CREDIT<DTPOSTED>20240102<TRNAMT>1.00<FITID>1<NAME>Café</STMTTRN>",
    ))
    .replace("CHARSET:1252", "CHARSET:NONE");
    let mut bytes = vec![0xFF, 0xFE];
    bytes.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
    let whole = parse_ok("t.ofx", &bytes);
    assert_eq!(whole[0].counterparty_name.as_deref(), Some("Café"));
    assert_eq!(outcome(streamed("t.ofx", &bytes, 3)), format!("{whole:?}"));
}
