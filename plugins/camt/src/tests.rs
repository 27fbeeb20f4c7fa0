use settled_plugin_api::rust_decimal::Decimal;
use settled_plugin_api::{EntryStatus, PaymentKind, PaymentRecord, PluginError, Record};

use super::*;

const NS053: &str = "urn:iso:std:iso:20022:tech:xsd:camt.053.001.08";
const NS054: &str = "urn:iso:std:iso:20022:tech:xsd:camt.054.001.08";

/// A one-statement document of the given message kind holding `entries`.
fn document(namespace: &str, root: &str, section: &str, extra: &str, entries: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Document xmlns="{namespace}">
  <{root}>
    <GrpHdr><MsgId>M1</MsgId><CreDtTm>2026-03-02T08:00:00</CreDtTm></GrpHdr>
    <{section}>
      <Id>S1</Id>{extra}
      <Acct><Id><IBAN>DE02100100100006820101</IBAN></Id><Ccy>EUR</Ccy></Acct>
{entries}
    </{section}>
  </{root}>
</Document>
"#
    )
}

fn statement(entries: &str) -> String {
    document(NS053, "BkToCstmrStmt", "Stmt", "", entries)
}

/// A booked entry of `amount` (`CRDT`/`DBIT`), with `extra` elements after `ValDt` and optional `NtryDtls` content.
fn entry(amount: &str, direction: &str, extra: &str, details: &str) -> String {
    let details = if details.is_empty() {
        String::new()
    } else {
        format!("<NtryDtls>{details}</NtryDtls>")
    };
    format!(
        r#"<Ntry><Amt Ccy="EUR">{amount}</Amt><CdtDbtInd>{direction}</CdtDbtInd><Sts><Cd>BOOK</Cd></Sts>
<BookgDt><Dt>2026-03-02</Dt></BookgDt><ValDt><Dt>2026-03-03</Dt></ValDt>{extra}{details}</Ntry>"#
    )
}

fn parse_ok(xml: &str) -> Vec<PaymentRecord> {
    match parse("statement.xml", xml.as_bytes(), &Settings::default()) {
        Ok(records) => records,
        Err(e) => panic!("expected records, got {e}"),
    }
}

/// Asserts that parsing fails as bad input at `location` with a message containing `fragment`.
fn check_error(bytes: &[u8], location: &str, fragment: &str) {
    let err: PluginError = match parse("statement.xml", bytes, &Settings::default()) {
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
fn a_credit_takes_the_debtor_as_counterparty_and_a_debit_the_creditor() {
    let parties = r#"<TxDtls><RltdPties>
        <Dbtr><Pty><Nm>Payer GmbH</Nm></Pty></Dbtr><DbtrAcct><Id><IBAN>DE89370400440532013000</IBAN></Id></DbtrAcct>
        <Cdtr><Nm>Payee Ltd</Nm></Cdtr><CdtrAcct><Id><Othr><Id>12345678</Id></Othr></Id></CdtrAcct>
      </RltdPties></TxDtls>"#;
    let records = parse_ok(&statement(&format!(
        "{}{}",
        entry("10.00", "CRDT", "<AcctSvcrRef>A1</AcctSvcrRef>", parties),
        entry("20.00", "DBIT", "<AcctSvcrRef>A2</AcctSvcrRef>", parties)
    )));
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].amount, amount("10.00"));
    assert_eq!(records[0].counterparty_name.as_deref(), Some("Payer GmbH"));
    assert_eq!(
        records[0].counterparty_account.as_deref(),
        Some("DE89370400440532013000")
    );
    assert_eq!(records[1].amount, amount("-20.00"));
    assert_eq!(records[1].counterparty_name.as_deref(), Some("Payee Ltd"));
    assert_eq!(records[1].counterparty_account.as_deref(), Some("12345678"));
    assert_eq!(
        records[1].source_position.as_deref(),
        Some("statement.xml#Stmt[1]/Ntry[2]/TxDtls[1]")
    );
}

#[test]
fn the_ultimate_debtor_names_the_payer_when_the_debtor_is_missing() {
    let tx =
        r#"<TxDtls><RltdPties><UltmtDbtr><Nm>Real Customer</Nm></UltmtDbtr></RltdPties></TxDtls>"#;
    let records = parse_ok(&statement(&entry("1.00", "CRDT", "", tx)));
    assert_eq!(
        records[0].counterparty_name.as_deref(),
        Some("Real Customer")
    );
}

#[test]
fn remittance_references_and_end_to_end_id_are_taken_from_the_transaction() {
    // The first part fills all 140 characters, cut inside "Invoice": the cut stays visible as a line break.
    let padding = "x".repeat(136);
    let tx = format!(
        r#"<TxDtls><Refs><EndToEndId>E2E-7</EndToEndId></Refs><RmtInf>
        <Ustrd>{padding}Invo</Ustrd><Ustrd>ice 2026-007</Ustrd><Ustrd>thanks</Ustrd>
        <Strd><RfrdDocInf><Nb>INV-2026-007</Nb></RfrdDocInf><CdtrRefInf><Ref>RF18539007547034</Ref></CdtrRefInf></Strd>
        </RmtInf></TxDtls>"#
    );
    let records = parse_ok(&statement(&entry("5.00", "CRDT", "", &tx)));
    let record = &records[0];
    assert_eq!(
        record.remittance.as_deref(),
        Some(format!("{padding}Invo\nice 2026-007 thanks").as_str())
    );
    assert_eq!(
        record.structured_reference.as_deref(),
        Some("RF18539007547034")
    );
    assert_eq!(record.invoice_refs, vec!["INV-2026-007".to_string()]);
    assert_eq!(record.end_to_end_id.as_deref(), Some("E2E-7"));
}

#[test]
fn notprovided_is_not_an_end_to_end_id() {
    let tx = "<TxDtls><Refs><EndToEndId>NOTPROVIDED</EndToEndId></Refs></TxDtls>";
    let records = parse_ok(&statement(&entry("5.00", "CRDT", "", tx)));
    assert_eq!(records[0].end_to_end_id, None);
}

#[test]
fn a_batch_gives_one_record_per_transaction_with_its_own_amount_and_sign() {
    let details = r#"
      <TxDtls><Refs><AcctSvcrRef>T-1</AcctSvcrRef></Refs><AmtDtls><TxAmt><Amt Ccy="EUR">70.00</Amt></TxAmt></AmtDtls></TxDtls>
      <TxDtls><Amt Ccy="EUR">40.00</Amt><CdtDbtInd>CRDT</CdtDbtInd></TxDtls>
      <TxDtls><Amt Ccy="EUR">10.00</Amt><CdtDbtInd>DBIT</CdtDbtInd></TxDtls>"#;
    let records = parse_ok(&statement(&entry(
        "100.00",
        "CRDT",
        "<AcctSvcrRef>B-9</AcctSvcrRef>",
        details,
    )));
    let got: Vec<(String, Decimal)> = records
        .iter()
        .map(|r| (r.external_id.clone(), r.amount))
        .collect();
    assert_eq!(
        got,
        vec![
            ("T-1".to_string(), amount("70.00")),
            ("B-9:2".to_string(), amount("40.00")),
            ("B-9:3".to_string(), amount("-10.00")),
        ]
    );
}

#[test]
fn one_batch_transaction_without_an_amount_takes_the_rest_of_the_entry() {
    let details = r#"<TxDtls><Amt Ccy="EUR">60.00</Amt></TxDtls><TxDtls></TxDtls>"#;
    let records = parse_ok(&statement(&entry("100.00", "CRDT", "", details)));
    assert_eq!(records[1].amount, amount("40.00"));
}

#[test]
fn a_batch_with_two_transactions_without_amounts_fails() {
    let details = "<TxDtls></TxDtls><TxDtls></TxDtls><TxDtls></TxDtls>";
    check_error(
        statement(&entry("100.00", "CRDT", "", details)).as_bytes(),
        "Stmt[1]/Ntry[1]/TxDtls[2]",
        "cannot split the entry amount",
    );
}

#[test]
fn copied_entries_in_a_batch_of_the_entry_reference_fall_back_to_the_index() {
    let details = "<TxDtls><Refs><AcctSvcrRef>B-9</AcctSvcrRef></Refs><Amt Ccy=\"EUR\">1.00</Amt></TxDtls>\
                   <TxDtls><Refs><AcctSvcrRef>B-9</AcctSvcrRef></Refs><Amt Ccy=\"EUR\">2.00</Amt></TxDtls>";
    let records = parse_ok(&statement(&entry(
        "3.00",
        "CRDT",
        "<AcctSvcrRef>B-9</AcctSvcrRef>",
        details,
    )));
    assert_eq!(records[0].external_id, "B-9:1");
    assert_eq!(records[1].external_id, "B-9:2");
}

#[test]
fn a_payment_in_a_statement_and_a_notification_gets_the_same_id() {
    let tx = "<TxDtls><Refs><EndToEndId>E1</EndToEndId></Refs></TxDtls>";
    let in_statement = parse_ok(&statement(&entry(
        "5.00",
        "CRDT",
        "<AcctSvcrRef>BANK-42</AcctSvcrRef>",
        "",
    )));
    let in_notice = parse_ok(&document(
        NS054,
        "BkToCstmrDbtCdtNtfctn",
        "Ntfctn",
        "",
        &entry("5.00", "CRDT", "<AcctSvcrRef>BANK-42</AcctSvcrRef>", tx),
    ));
    assert_eq!(in_statement[0].external_id, "BANK-42");
    assert_eq!(in_notice[0].external_id, "BANK-42");
}

#[test]
fn a_duplicate_statement_gets_the_ids_of_its_original() {
    let entries = format!(
        "{}{}",
        entry("5.00", "CRDT", "<AcctSvcrRef>R1</AcctSvcrRef>", ""),
        entry(
            "7.00",
            "CRDT",
            "",
            "<TxDtls><RmtInf><Ustrd>no ref</Ustrd></RmtInf></TxDtls>"
        )
    );
    let original = parse_ok(&statement(&entries));
    let duplicate = parse(
        "copy-of-statement.xml",
        document(
            NS053,
            "BkToCstmrStmt",
            "Stmt",
            "<CpyDplctInd>DUPL</CpyDplctInd>",
            &entries,
        )
        .as_bytes(),
        &Settings::default(),
    )
    .unwrap_or_default();
    let ids = |records: &[PaymentRecord]| -> Vec<String> {
        records.iter().map(|r| r.external_id.clone()).collect()
    };
    assert_eq!(duplicate.len(), 2);
    assert_eq!(ids(&original), ids(&duplicate));
}

#[test]
fn identical_entries_without_references_get_distinct_stable_ids() {
    let same = entry(
        "9.99",
        "CRDT",
        "",
        "<TxDtls><RmtInf><Ustrd>coffee</Ustrd></RmtInf></TxDtls>",
    );
    let first = parse_ok(&statement(&format!("{same}{same}")));
    let (hash, occurrence) = first[0].external_id.split_once(':').unwrap_or_default();
    assert_eq!(hash.len(), 64);
    assert_eq!(occurrence, "0");
    assert_eq!(first[1].external_id, format!("{hash}:1"));
    // An overlapping statement holding the line once recognises it as the first occurrence.
    let again = parse_ok(&statement(&same));
    assert_eq!(again[0].external_id, first[0].external_id);
}

#[test]
fn pending_and_information_entries_are_pending_and_can_be_left_out() {
    let pending_v2 =
        r#"<Ntry><Amt Ccy="EUR">1.00</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts>PDNG</Sts></Ntry>"#;
    let info_v8 = r#"<Ntry><Amt Ccy="EUR">2.00</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts><Cd>INFO</Cd></Sts></Ntry>"#;
    let booked = entry("3.00", "CRDT", "", "");
    let xml = statement(&format!("{pending_v2}{info_v8}{booked}"));
    let statuses: Vec<EntryStatus> = parse_ok(&xml).iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        vec![
            EntryStatus::Pending,
            EntryStatus::Pending,
            EntryStatus::Booked
        ]
    );
    let booked_only = parse(
        "s.xml",
        xml.as_bytes(),
        &Settings {
            include_pending: false,
        },
    )
    .unwrap_or_default();
    assert_eq!(booked_only.len(), 1);
    assert_eq!(booked_only[0].amount, amount("3.00"));
}

#[test]
fn a_reversal_keeps_kind_transfer_and_its_booked_direction() {
    let records = parse_ok(&statement(&entry(
        "25.00",
        "DBIT",
        "<RvslInd>true</RvslInd>",
        "",
    )));
    assert!(records[0].reversal);
    assert_eq!(records[0].kind, PaymentKind::Transfer);
    assert_eq!(records[0].amount, amount("-25.00"));
}

#[test]
fn a_returned_payment_is_a_refund_with_the_reason_in_the_remittance() {
    let tx = r#"<TxDtls><RmtInf><Ustrd>INV-1</Ustrd></RmtInf>
        <RtrInf><Rsn><Cd>AC04</Cd></Rsn><AddtlInf>account closed</AddtlInf></RtrInf></TxDtls>"#;
    let records = parse_ok(&statement(&entry("25.00", "DBIT", "", tx)));
    assert_eq!(records[0].kind, PaymentKind::Refund);
    assert_eq!(
        records[0].remittance.as_deref(),
        Some("return reason AC04: account closed INV-1")
    );
}

#[test]
fn a_charges_transaction_code_gives_kind_fee() {
    let code = "<BkTxCd><Domn><Cd>ACMT</Cd><Fmly><Cd>MDOP</Cd><SubFmlyCd>CHRG</SubFmlyCd></Fmly></Domn></BkTxCd>";
    let records = parse_ok(&statement(&entry("1.50", "DBIT", code, "")));
    assert_eq!(records[0].kind, PaymentKind::Fee);
}

#[test]
fn an_account_report_with_prefixed_elements_is_read() {
    let xml = r#"<?xml version="1.0"?>
<c:Document xmlns:c="urn:iso:std:iso:20022:tech:xsd:camt.052.001.02"><c:BkToCstmrAcctRpt><c:Rpt>
<c:Acct><c:Id><c:IBAN>DE02100100100006820101</c:IBAN></c:Id></c:Acct>
<c:Ntry><c:Amt Ccy="EUR">4.00</c:Amt><c:CdtDbtInd>CRDT</c:CdtDbtInd><c:Sts>BOOK</c:Sts>
<c:BookgDt><c:DtTm>2026-03-02T23:30:00+01:00</c:DtTm></c:BookgDt><c:NtryRef>N-1</c:NtryRef></c:Ntry>
</c:Rpt></c:BkToCstmrAcctRpt></c:Document>"#;
    let records = parse_ok(xml);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].external_id, "N-1");
    assert_eq!(
        records[0].booked_on.map(|d| d.to_string()).as_deref(),
        Some("2026-03-02")
    );
    assert_eq!(
        records[0].source_position.as_deref(),
        Some("statement.xml#Rpt[1]/Ntry[1]")
    );
}

#[test]
fn the_account_currency_is_used_when_an_amount_has_none() {
    let xml =
        statement(r#"<Ntry><Amt>4.00</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts>BOOK</Sts></Ntry>"#);
    assert_eq!(parse_ok(&xml)[0].currency, "EUR");
}

#[test]
fn truncated_xml_fails() {
    let xml = statement(&entry("5.00", "CRDT", "", ""));
    let cut = &xml.as_bytes()[..xml.len() / 2];
    let err = parse("s.xml", cut, &Settings::default()).unwrap_err();
    assert_eq!(err.code, "bad_input");
    assert!(err.message.contains("truncated xml"), "{err}");
}

#[test]
fn an_unknown_camt_version_fails() {
    let xml = document(
        "urn:iso:std:iso:20022:tech:xsd:camt.099.001.01",
        "BkToCstmrStmt",
        "Stmt",
        "",
        "",
    );
    check_error(
        xml.as_bytes(),
        "Document",
        "unsupported camt message version camt.099.001.01",
    );
}

#[test]
fn a_namespace_of_another_camt_message_than_the_root_fails() {
    let xml = document(NS054, "BkToCstmrStmt", "Stmt", "", "");
    check_error(xml.as_bytes(), "Document", "namespace says camt.054.001.08");
}

#[test]
fn an_unknown_root_fails() {
    let xml = document(NS053, "FIToFICstmrCdtTrf", "Stmt", "", "");
    check_error(xml.as_bytes(), "FIToFICstmrCdtTrf", "unknown camt message");
}

#[test]
fn empty_binary_and_non_xml_files_fail() {
    check_error(b"", "file", "empty file");
    check_error(
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        "file",
        "binary file",
    );
    check_error(b"<Document>\n\xff\xfe</Document>", "line 2", "not utf-8");
    check_error(
        b"Date;Amount\n2026-01-01;5",
        "line 1",
        "not an xml document",
    );
}

#[test]
fn bad_entries_fail_the_whole_file_naming_the_element() {
    let good = entry("1.00", "CRDT", "", "");
    let cases: [(String, &str, &str); 6] = [
        (entry("1.005", "CRDT", "", ""), "Stmt[1]/Ntry[2]/Amt", "more decimals than EUR allows"),
        (entry("1.00", "XXXX", "", ""), "Stmt[1]/Ntry[2]/CdtDbtInd", "not CRDT or DBIT"),
        (
            r#"<Ntry><Amt Ccy="EUR">1.00</Amt><CdtDbtInd>CRDT</CdtDbtInd></Ntry>"#.to_string(),
            "Stmt[1]/Ntry[2]/Sts",
            "missing entry status",
        ),
        (
            r#"<Ntry><Amt Ccy="EUR">1.00</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts>BOOK</Sts><ValDt><Dt>2026-02-30</Dt></ValDt></Ntry>"#.to_string(),
            "Stmt[1]/Ntry[2]/ValDt/Dt",
            "not a date",
        ),
        (
            r#"<Ntry><CdtDbtInd>CRDT</CdtDbtInd><Sts>BOOK</Sts></Ntry>"#.to_string(),
            "Stmt[1]/Ntry[2]/Amt",
            "missing entry amount",
        ),
        (
            r#"<Ntry><Amt Ccy="euro">1.00</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts>BOOK</Sts></Ntry>"#.to_string(),
            "Stmt[1]/Ntry[2]/Amt",
            "not an iso 4217 code",
        ),
    ];
    for (bad, location, fragment) in cases {
        check_error(
            statement(&format!("{good}{bad}")).as_bytes(),
            location,
            fragment,
        );
    }
}

#[test]
fn sniff_claims_camt_xml_only() {
    let check = |name: &str, head: &str, expected: u8| {
        assert_eq!(sniff(name, head.as_bytes()), expected, "{name}: {head}");
    };
    check("a.xml", &statement(""), 95);
    check("a.XML", "<?xml?><Document><BkToCstmrDbtCdtNtfctn>", 95);
    check("export", &statement(""), 80);
    check("a.xml", "<?xml?><OFX><BANKMSGSRSV1>", 0);
    check("a.sta", ":20:STARTUMSE\n:25:1/2", 0);
}

#[test]
fn settings_default_and_bad_keys_are_named() {
    assert_eq!(
        Settings::from_json(serde_json::Value::Null),
        Ok(Settings::default())
    );
    assert_eq!(
        Settings::from_json(serde_json::json!({"include_pending": false})),
        Ok(Settings {
            include_pending: false
        })
    );
    let unknown = Settings::from_json(serde_json::json!({"include_pendng": true})).unwrap_err();
    assert_eq!(unknown.code, "bad_config");
    assert_eq!(unknown.location.as_deref(), Some("include_pendng"));
    assert!(unknown.message.contains("unknown field"), "{unknown}");
    let wrong_type =
        Settings::from_json(serde_json::json!({"include_pending": "yes"})).unwrap_err();
    assert_eq!(wrong_type.location.as_deref(), Some("include_pending"));
    let not_a_table = Settings::from_json(serde_json::json!([1])).unwrap_err();
    assert_eq!(not_a_table.location.as_deref(), Some("settings"));
}

#[test]
fn the_plugin_parses_through_the_trait() {
    let plugin = Camt::configure(serde_json::json!({})).unwrap_or_default();
    let reply = plugin
        .parse(settled_plugin_api::FileRequest {
            name: "s.xml".into(),
            content: statement(&entry("5.00", "CRDT", "<AcctSvcrRef>R1</AcctSvcrRef>", ""))
                .into_bytes(),
        })
        .map(|r| r.records)
        .unwrap_or_default();
    assert!(matches!(reply.as_slice(), [Record::Payment(p)] if p.external_id == "R1"));
    assert_eq!(Camt::manifest().roles, vec![Role::File]);
}

#[test]
fn charges_deducted_from_a_credit_give_gross_fee_and_net() {
    let deducted = r#"<TxDtls><Chrgs><Rcrd><Amt Ccy="EUR">1.50</Amt><CdtDbtInd>DBIT</CdtDbtInd>
        <ChrgInclInd>true</ChrgInclInd></Rcrd></Chrgs></TxDtls>"#;
    let record = &parse_ok(&statement(&entry("98.50", "CRDT", "", deducted)))[0];
    assert_eq!(
        (record.gross, record.fee, record.net),
        (
            Some(amount("100.00")),
            Some(amount("1.50")),
            Some(amount("98.50"))
        )
    );
    let informational = r#"<TxDtls><Chrgs><Rcrd><Amt Ccy="EUR">1.50</Amt></Rcrd></Chrgs></TxDtls>"#;
    let record = &parse_ok(&statement(&entry("98.50", "CRDT", "", informational)))[0];
    assert_eq!((record.gross, record.fee, record.net), (None, None, None));
    let too_precise = r#"<TxDtls><Chrgs><Rcrd><Amt Ccy="EUR">1.505</Amt><ChrgInclInd>true</ChrgInclInd></Rcrd></Chrgs></TxDtls>"#;
    check_error(
        statement(&entry("98.50", "CRDT", "", too_precise)).as_bytes(),
        "Stmt[1]/Ntry[1]/TxDtls[1]/Chrgs[1]/Rcrd[1]/Amt",
        "more decimals",
    );
}

#[test]
fn additional_information_is_the_remittance_when_there_is_no_other() {
    let info = "<AddtlNtryInf>SEPA GUTSCHRIFT INV-2026-011</AddtlNtryInf>";
    let without_details = parse_ok(&statement(&entry("1.00", "CRDT", info, "")));
    assert_eq!(
        without_details[0].remittance.as_deref(),
        Some("SEPA GUTSCHRIFT INV-2026-011")
    );
    let tx = "<TxDtls><AddtlTxInf>Rechnung 12</AddtlTxInf></TxDtls>";
    let with_details = parse_ok(&statement(&entry("1.00", "CRDT", info, tx)));
    assert_eq!(with_details[0].remittance.as_deref(), Some("Rechnung 12"));
}

#[test]
fn a_returned_credit_names_the_original_payer_and_every_record_its_account() {
    let tx = r#"<TxDtls><Refs><EndToEndId>E2E-9</EndToEndId></Refs>
        <RltdPties><Dbtr><Pty><Nm>Payer GmbH</Nm></Pty></Dbtr><DbtrAcct><Id><IBAN>DE89370400440532013000</IBAN></Id></DbtrAcct></RltdPties>
        <RtrInf><Rsn><Cd>AC04</Cd></Rsn></RtrInf></TxDtls>"#;
    let records = parse_ok(&statement(&format!(
        "{}{}",
        entry("100.00", "DBIT", "<AcctSvcrRef>R1</AcctSvcrRef>", tx),
        entry("5.00", "DBIT", "<AcctSvcrRef>R2</AcctSvcrRef>", "")
    )));
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].kind, PaymentKind::Refund);
    assert_eq!(records[0].counterparty_name.as_deref(), Some("Payer GmbH"));
    assert_eq!(
        records[0].counterparty_account.as_deref(),
        Some("DE89370400440532013000")
    );
    assert_eq!(records[0].end_to_end_id.as_deref(), Some("E2E-9"));
    for record in &records {
        assert_eq!(
            record.own_account.as_deref(),
            Some("DE02100100100006820101")
        );
    }
}

/// Feeds `bytes` to a [`CamtStream`] in the given pieces; the records of every feed and of the end.
fn stream(bytes: &[u8], cuts: &[usize]) -> Result<Vec<Record>, PluginError> {
    let mut parser: Box<dyn StreamParser> =
        Box::new(CamtStream::new("statement.xml", &Settings::default()));
    let mut records = Vec::new();
    let mut from = 0;
    for &cut in cuts.iter().chain([&bytes.len()]) {
        records.extend(parser.feed(&bytes[from..cut])?);
        from = cut;
    }
    records.extend(parser.finish()?);
    Ok(records)
}

fn json(records: &Result<Vec<Record>, PluginError>) -> String {
    match records {
        Ok(records) => serde_json::to_string(records).unwrap_or_default(),
        Err(e) => format!("error: {e}"),
    }
}

#[test]
fn any_split_of_a_file_gives_the_records_and_errors_of_the_whole_file() {
    let details = "<TxDtls><RmtInf><Ustrd>Rechnung INV-1 &amp; Grüße</Ustrd></RmtInf>\
        <AddtlTxInf><![CDATA[a <b> c]]></AddtlTxInf></TxDtls>";
    let xml = format!(
        "\u{feff}{}",
        statement(&format!(
            "<!-- a comment > with a bracket -->{}\n{}",
            entry("10.00", "CRDT", "<AcctSvcrRef>A1</AcctSvcrRef>", ""),
            entry("20.00", "DBIT", "", details),
        ))
    );
    let bytes = xml.as_bytes();
    let whole = stream(bytes, &[]);
    assert_eq!(
        whole.as_ref().map(Vec::len).ok(),
        Some(2),
        "{}",
        json(&whole)
    );
    let expected = json(&whole);
    for cut in 0..=bytes.len() {
        assert_eq!(
            json(&stream(bytes, &[cut])),
            expected,
            "split at byte {cut}"
        );
    }
    let every_byte: Vec<usize> = (1..bytes.len()).collect();
    assert_eq!(
        json(&stream(bytes, &every_byte)),
        expected,
        "one byte at a time"
    );
    let parsed = parse_ok(&xml);
    assert_eq!(
        serde_json::to_string(&payments(parsed).records).unwrap_or_default(),
        expected
    );

    // A file that is cut short fails the same way, however it arrives.
    let truncated = &bytes[..bytes.len() - 40];
    let whole = json(&stream(truncated, &[]));
    assert!(whole.contains("truncated xml"), "{whole}");
    for cut in (0..truncated.len()).step_by(7) {
        assert_eq!(
            json(&stream(truncated, &[cut])),
            whole,
            "split at byte {cut}"
        );
    }
}

#[test]
fn a_deeply_nested_document_is_refused_naming_the_line_without_overflowing_the_stack() {
    let depth = 200_000;
    let mut xml = String::from("<?xml version=\"1.0\"?>\n<Document>\n");
    xml.push_str(&"<a>".repeat(depth));
    xml.push_str(&"</a>".repeat(depth));
    xml.push_str("\n</Document>\n");
    check_error(
        xml.as_bytes(),
        "line 3",
        "xml nested deeper than 64 elements",
    );
    let cuts: Vec<usize> = (4096..xml.len()).step_by(4096).collect();
    let streamed = json(&stream(xml.as_bytes(), &cuts));
    assert!(streamed.contains("nested deeper than 64"), "{streamed}");
}

#[test]
fn an_endless_tag_is_refused_before_it_fills_memory() {
    let mut parser = CamtStream::new("statement.xml", &Settings::default());
    let mut fed = parser.feed_payments(b"<Document>\n<Stmt attr=\"");
    let chunk = vec![b'x'; 1024 * 1024];
    let mut sent = 0;
    while fed.is_ok() && sent <= tree::MAX_TOKEN + chunk.len() {
        fed = parser.feed_payments(&chunk);
        sent += chunk.len();
    }
    let err = fed
        .err()
        .unwrap_or_else(|| panic!("no error after {sent} bytes"));
    assert_eq!(err.location.as_deref(), Some("line 2"), "{err}");
    assert!(err.message.contains("longer than 16 MiB"), "{err}");
}
