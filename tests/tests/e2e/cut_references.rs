//! Statement formats cut remittance text at fixed widths (camt `Ustrd` at 140 characters, MT940 `:86:` at 65,
//! older exports at 27 or 35); an invoice number cut in two still pays its invoice, and a cut that would
//! form a number no invoice has goes to review.

use serde_json::Value;

use crate::harness::{import_json, invoice, issue_invoice, one_line, Daemon, Setup};

/// Asserts the invoice is paid by one allocation of the invoice-number rule whose evidence quotes `quoted`.
fn assert_paid_by_number(d: &Daemon, inv: &Value, quoted: &str) {
    let after = invoice(d, inv);
    assert_eq!(after["payment_status"], "paid", "{after}");
    let allocation = &after["allocations"][0];
    assert_eq!(allocation["rule"], "invoice_number_in_text", "{after}");
    let evidence = allocation["evidence"].as_str().unwrap_or_default();
    assert!(evidence.contains(quoted), "{evidence}");
}

/// The open review items' payment records, by their external id.
fn reviewed_external_ids(d: &Daemon) -> Vec<String> {
    d.ok("GET", "/v1/review?limit=100", None)["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|item| item["record"]["external_id"].as_str().map(str::to_string))
        .collect()
}

fn camt_entry(reference: &str, amount: &str, ustrd: &[&str]) -> String {
    let parts: String = ustrd
        .iter()
        .map(|part| format!("<Ustrd>{part}</Ustrd>"))
        .collect();
    format!(
        r#"<Ntry><Amt Ccy="EUR">{amount}</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts><Cd>BOOK</Cd></Sts>
<BookgDt><Dt>2026-03-02</Dt></BookgDt><ValDt><Dt>2026-03-03</Dt></ValDt><AcctSvcrRef>{reference}</AcctSvcrRef>
<NtryDtls><TxDtls><RmtInf>{parts}</RmtInf></TxDtls></NtryDtls></Ntry>
"#
    )
}

#[test]
fn a_camt_ustrd_split_inside_an_invoice_number_pays_it_and_a_split_naming_no_invoice_goes_to_review(
) {
    let d = Daemon::start(Setup::default());
    let first = issue_invoice(&d, "First Buyer", one_line("10.00"));
    let second = issue_invoice(&d, "Second Buyer", one_line("250.00"));
    let third = issue_invoice(&d, "Third Buyer", one_line("80.00"));
    let number = |v: &Value| v["number"].as_str().unwrap().to_string();
    let (second_no, third_no) = (number(&second), number(&third));
    let year = &second_no[4..8];
    // 35-character lines (as many banks fill Ustrd), cut inside the year of the number
    let cut = 6;
    let line_1 = format!("{:<29}{}", "Zahlung Rechnung", &second_no[..cut]);
    let line_2 = format!("{} vielen Dank", &second_no[cut..]);
    // a full 140-character Ustrd that ends exactly with the number, and the next starts a word
    let full = format!("{:>140}", format!("Rechnung {third_no}"));
    assert_eq!(full.chars().count(), 140);
    // cut inside the digits, but the joined number (…-0 + 99) is no invoice
    let nowhere = [format!("Rechnung INV-{year}-0"), "99 danke".to_string()];
    let entries = [
        camt_entry("CUT-1", "250.00", &[&line_1, &line_2]),
        camt_entry("CUT-2", "80.00", &[&full, "Danke"]),
        camt_entry("CUT-3", "33.00", &[&nowhere[0], &nowhere[1]]),
    ]
    .concat();
    let xml = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.08">
  <BkToCstmrStmt>
    <GrpHdr><MsgId>M1</MsgId><CreDtTm>2026-03-02T08:00:00</CreDtTm></GrpHdr>
    <Stmt>
      <Id>S1</Id>
      <Acct><Id><IBAN>DE02100100100006820101</IBAN></Id><Ccy>EUR</Ccy></Acct>
{entries}
    </Stmt>
  </BkToCstmrStmt>
</Document>
"#
    );
    let summary = import_json(&d, "cut.camt053.xml", &xml);
    assert_eq!(summary["new"], 3, "{summary}");
    assert_paid_by_number(
        &d,
        &second,
        &format!("{} {}", &second_no[..cut], &second_no[cut..]),
    );
    assert_paid_by_number(&d, &third, &third_no);
    assert_eq!(invoice(&d, &first)["payment_status"], "unpaid");
    let reviewed = reviewed_external_ids(&d);
    assert_eq!(reviewed.len(), 1, "{reviewed:?}");
    assert!(reviewed[0].contains("CUT-3"), "{reviewed:?}");
}

#[test]
fn an_mt940_86_line_cut_at_65_characters_inside_an_invoice_number_pays_it() {
    let d = Daemon::start(Setup::default());
    let first = issue_invoice(&d, "Erste Kundin", one_line("120.00"));
    let second = issue_invoice(&d, "Zweiter Kunde", one_line("75.00"));
    let (first_no, second_no) = (
        first["number"].as_str().unwrap().to_string(),
        second["number"].as_str().unwrap().to_string(),
    );
    let year = &first_no[4..8];
    // `:86:` + 61 characters fills the 65-character line: the first ends with a whole number and the
    // next line starts a word; the second cuts the number inside its digits
    let whole = format!(":86:{:>61}", format!("Zahlung {first_no}"));
    let (head, tail) = second_no.split_at(second_no.len() - 1);
    let cut = format!(":86:{:>61}", format!("Zahlung {head}"));
    // and a cut that would form a number no invoice has
    let nowhere = format!(":86:{:>61}", format!("Zahlung INV-{year}-0"));
    for line in [&whole, &cut, &nowhere] {
        assert_eq!(line.chars().count(), 65, "{line}");
    }
    let statement = format!(
        ":20:STARTUMS\r\n:25:DE89370400440532013000\r\n:28C:00001/001\r\n:60F:C260301EUR1000,00\r\n\
         :61:2603050305CR120,00NTRFNONREF//BANKREF1\r\n{whole}\r\nDanke schoen\r\n\
         :61:2603050305CR75,00NTRFNONREF//BANKREF2\r\n{cut}\r\n{last} danke\r\n\
         :61:2603050305CR33,00NTRFNONREF//BANKREF3\r\n{nowhere}\r\n99 danke\r\n\
         :62F:C260305EUR1228,00\r\n-\r\n",
        last = &second_no[second_no.len() - 1..],
    );
    let summary = import_json(&d, "cut.sta", &statement);
    assert_eq!(summary["new"], 3, "{summary}");
    assert_paid_by_number(&d, &first, &first_no);
    assert_paid_by_number(&d, &second, &format!("{head} {tail}"));
    let reviewed = reviewed_external_ids(&d);
    assert_eq!(reviewed.len(), 1, "{reviewed:?}");
    assert!(reviewed[0].contains("BANKREF3"), "{reviewed:?}");
}

#[test]
fn a_german_mt940_purpose_piece_ending_with_the_invoice_number_pays_it() {
    let d = Daemon::start(Setup::default());
    let inv = issue_invoice(&d, "Sepa Kunde GmbH", one_line("250.00"));
    let number = inv["number"].as_str().unwrap();
    // `?2x` purpose pieces are cut at 27 characters; this one ends with the number, the next starts a word
    let statement = format!(
        ":20:STARTUMS\r\n:25:DE89370400440532013000\r\n:28C:00001/001\r\n:60F:C260301EUR1000,00\r\n\
         :61:2603050305CR250,00NTRFNONREF//BANKREF1\r\n\
         :86:166?00GUTSCHRIFT?20EREF+E2E-1?21SVWZ+Rechnung {number}?22Danke und Gruss?32Sepa Kunde GmbH\r\n\
         :62F:C260305EUR1250,00\r\n-\r\n"
    );
    let summary = import_json(&d, "umsatz.sta", &statement);
    assert_eq!(summary["new"], 1, "{summary}");
    assert_paid_by_number(&d, &inv, number);
}
