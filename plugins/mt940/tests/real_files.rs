//! Every real MT940 sample in `tests/fixtures/real/mt940/` parses; its normalised records are snapshotted.

use settled_plugin_api::rust_decimal::Decimal;
use settled_plugin_api::{EntryStatus, PaymentKind, PaymentRecord};
use settled_plugin_mt940::{parse, Settings};

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/real/mt940"
);

fn records(file: &str) -> Vec<PaymentRecord> {
    let bytes = std::fs::read(format!("{DIR}/{file}")).unwrap();
    parse(file, &bytes, &Settings::default()).unwrap()
}

fn amount(text: &str) -> Decimal {
    text.parse().unwrap()
}

#[test]
fn every_real_mt940_file_parses_to_its_snapshot() {
    let mut names: Vec<String> = std::fs::read_dir(DIR)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "a new sample needs a snapshot: {names:?}");
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
fn sparkasse_export_has_three_debits_with_free_text_and_umlauts() {
    let records = records("buxtehude.sta");
    let amounts: Vec<Decimal> = records.iter().map(|r| r.amount).collect();
    assert_eq!(
        amounts,
        vec![amount("-119.35"), amount("-16.69"), amount("-5.00")]
    );
    assert_eq!(
        records[0].remittance.as_deref(),
        Some("basically some information here lots of information then some")
    );
    // Full 65-character lines were cut at the width: the cut stays a line break (`takimat` + `a sanctus`).
    assert!(records[1]
        .remittance
        .as_deref()
        .is_some_and(|r| r.contains("no sea takimat\na sanctus est")));
    assert!(records[2]
        .remittance
        .as_deref()
        .is_some_and(|r| r.contains("ümläuté and öther stüff")));
    // NONREF lines are identified by content.
    assert!(records.iter().all(|r| r.external_id.len() == 66));
}

#[test]
fn sepa_snippet_reads_german_structured_details_across_two_messages() {
    let records = records("sepa_snippet.sta");
    assert_eq!(records.len(), 11);
    let first = &records[0];
    assert_eq!(first.external_id, "0724710333343453");
    assert_eq!(first.amount, amount("50990.05"));
    assert_eq!(
        first.booked_on.map(|d| d.to_string()).as_deref(),
        Some("2007-09-04")
    );
    assert_eq!(
        first.value_date.map(|d| d.to_string()).as_deref(),
        Some("2007-09-07")
    );
    assert_eq!(
        first.end_to_end_id.as_deref(),
        Some("EndToEndId TFNR 22 004 00001")
    );
    assert_eq!(first.counterparty_name.as_deref(), Some("KARL KAUFMANN"));
    assert_eq!(
        records[1].remittance.as_deref(),
        Some("Strukturierter Verwendungszweck 30030004 DE")
    );
    let returns: Vec<&str> = records
        .iter()
        .filter(|r| r.kind == PaymentKind::Refund)
        .map(|r| r.external_id.as_str())
        .collect();
    assert_eq!(
        returns,
        vec![
            "0724710345316116",
            "0724710351063401",
            "0724710345316110",
            "R724710351063405"
        ]
    );
    assert_eq!(records[4].amount, amount("-0.08"));
    assert_eq!(records[6].amount, amount("15000.00"));
    assert!(records
        .iter()
        .all(|r| r.status == EntryStatus::Booked && !r.reversal));
    assert_eq!(
        records[10].source_position.as_deref(),
        Some("sepa_snippet.sta#line 53")
    );
}

#[test]
fn a_real_file_cut_before_its_closing_balance_fails_cleanly() {
    for file in ["buxtehude.sta", "sepa_snippet.sta"] {
        let bytes = std::fs::read(format!("{DIR}/{file}")).unwrap();
        let end = String::from_utf8_lossy(&bytes).find(":62F:").unwrap();
        for cut in 0..end {
            let result = parse(file, &bytes[..cut], &Settings::default());
            assert!(result.is_err(), "{file} cut at byte {cut} parsed");
        }
    }
}
