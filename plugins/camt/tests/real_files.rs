//! Every real camt sample in `tests/fixtures/real/camt/` parses; its normalised records are snapshotted.

use settled_plugin_api::rust_decimal::Decimal;
use settled_plugin_api::{EntryStatus, PaymentKind, PaymentRecord};
use settled_plugin_camt::{parse, Settings};

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/real/camt"
);

fn records(file: &str) -> Vec<PaymentRecord> {
    let bytes = std::fs::read(format!("{DIR}/{file}")).unwrap();
    parse(file, &bytes, &Settings::default()).unwrap()
}

fn amount(text: &str) -> Decimal {
    text.parse().unwrap()
}

#[test]
fn every_real_camt_file_parses_to_its_snapshot() {
    let mut names: Vec<String> = std::fs::read_dir(DIR)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 3, "a new sample needs a snapshot: {names:?}");
    // An absolute snapshot path keeps insta independent of `cargo metadata` on the whole workspace.
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/snapshots"));
    settings.bind(|| {
        for name in names {
            insta::assert_json_snapshot!(name.clone(), records(&name));
        }
    });
}

#[test]
fn statement_v2_has_one_credit_and_one_debit_in_two_statements() {
    let records = records("camt053.v2.multi.statement.xml");
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].amount, amount("8.85"));
    assert_eq!(
        records[0].remittance.as_deref(),
        Some("Transaction Description 1")
    );
    assert_eq!(records[1].amount, amount("-7.00"));
    assert_eq!(
        records[1].counterparty_name.as_deref(),
        Some("Company Name 2")
    );
    assert_eq!(
        records[1].source_position.as_deref(),
        Some("camt053.v2.multi.statement.xml#Stmt[2]/Ntry[1]/TxDtls[1]")
    );
    assert!(records
        .iter()
        .all(|r| r.status == EntryStatus::Booked && !r.reversal));
}

#[test]
fn statement_v8_keeps_the_entry_amount_and_the_structured_reference() {
    let records = records("camt053.v8.xml");
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.external_id, "AAAASESS-FP-CN_98765/01");
    // The lone TxDtls says `SEK 0`; what was booked on the account is the entry's EUR 8.85.
    assert_eq!(
        (record.amount, record.currency.as_str()),
        (amount("8.85"), "EUR")
    );
    assert_eq!(
        record.booked_on.map(|d| d.to_string()).as_deref(),
        Some("2014-12-31")
    );
    assert_eq!(
        record.structured_reference.as_deref(),
        Some("4654654654654654")
    );
    assert_eq!(record.end_to_end_id.as_deref(), Some("MUELL/FINP/RA12345"));
    assert_eq!(record.counterparty_name.as_deref(), Some("NAME NAME"));
}

#[test]
fn notification_v8_batch_gives_one_record_per_transaction() {
    let records = records("camt054.v8.xml");
    let got: Vec<(&str, Decimal, &str)> = records
        .iter()
        .map(|r| (r.external_id.as_str(), r.amount, r.currency.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("ACSR160617103200001:1", amount("3.10"), "CHF"),
            ("ACSR160617103200001:2", amount("3.20"), "CHF"),
            ("ACSR160617103200001:3", amount("3.20"), "CHF"),
        ]
    );
    assert_eq!(
        records[2].structured_reference.as_deref(),
        Some("Ref number V3 block 1")
    );
    assert!(records[2].remittance.as_deref().is_some_and(
        |r| r.starts_with("Unstructured Remittance Information V3 block 1 Unstructured")
    ));
    assert!(records.iter().all(|r| r.kind == PaymentKind::Transfer));
}

#[test]
fn a_real_file_cut_anywhere_before_its_end_fails_cleanly() {
    for file in ["camt053.v8.xml", "camt054.v8.xml"] {
        let bytes = std::fs::read(format!("{DIR}/{file}")).unwrap();
        let end = String::from_utf8_lossy(&bytes)
            .rfind("</Document>")
            .unwrap();
        // Every 29th byte keeps the debug-build run short while landing in tags, text and attributes.
        for cut in (0..end).step_by(29) {
            let result = parse(file, &bytes[..cut], &Settings::default());
            assert!(result.is_err(), "{file} cut at byte {cut} parsed");
        }
    }
}
