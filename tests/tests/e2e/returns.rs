//! Returns, reversals and refunds arriving in bank files: each finds the payment it undoes, across connectors of the
//! same bank account, and reopens exactly the amount returned by compensating allocations.

use serde_json::{json, Value};

use crate::harness::{cli, import_json, invoice, issue_invoice, one_line, pay, Daemon, Setup};

const OUR_IBAN: &str = "DE89370400440532013000";

fn open_review(d: &Daemon) -> Vec<Value> {
    d.ok("GET", "/v1/review", None)["items"]
        .as_array()
        .unwrap()
        .clone()
}

/// A camt.053 statement of our account holding `entries`.
fn camt(entries: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.08">
  <BkToCstmrStmt>
    <GrpHdr><MsgId>M1</MsgId><CreDtTm>2026-03-10T08:00:00</CreDtTm></GrpHdr>
    <Stmt>
      <Id>S1</Id>
      <Acct><Id><IBAN>{OUR_IBAN}</IBAN></Id><Ccy>EUR</Ccy></Acct>
{entries}
    </Stmt>
  </BkToCstmrStmt>
</Document>
"#
    )
}

/// A booked camt entry with one transaction. `direction` is CRDT or DBIT; `extra` goes after the indicator
/// (`<RvslInd>`), `tx_extra` into the transaction (`<RtrInf>`).
#[allow(clippy::too_many_arguments)] // each argument is one field of the entry
fn camt_entry(
    amount: &str,
    direction: &str,
    extra: &str,
    reference: &str,
    end_to_end: &str,
    rf: &str,
    payer: &str,
    tx_extra: &str,
) -> String {
    format!(
        r#"<Ntry><Amt Ccy="EUR">{amount}</Amt><CdtDbtInd>{direction}</CdtDbtInd>{extra}<Sts><Cd>BOOK</Cd></Sts>
<BookgDt><Dt>2026-03-05</Dt></BookgDt><ValDt><Dt>2026-03-05</Dt></ValDt><AcctSvcrRef>{reference}</AcctSvcrRef>
<NtryDtls><TxDtls><Refs><EndToEndId>{end_to_end}</EndToEndId></Refs>
<RltdPties><Dbtr><Pty><Nm>{payer}</Nm></Pty></Dbtr><DbtrAcct><Id><IBAN>DE02120300000000202051</IBAN></Id></DbtrAcct></RltdPties>
<RmtInf><Strd><CdtrRefInf><Ref>{rf}</Ref></CdtrRefInf></Strd></RmtInf>{tx_extra}</TxDtls></NtryDtls></Ntry>"#
    )
}

/// An MT940 statement of our account with one `:61:`/`:86:` pair.
fn mt940(line: &str, details: &str) -> String {
    format!(
        ":20:STARTUMS\r\n:25:{OUR_IBAN}\r\n:28C:00002/001\r\n:60F:C260309EUR1000,00\r\n\
         :61:{line}\r\n:86:{details}\r\n:62F:C260310EUR640,00\r\n-\r\n"
    )
}

#[test]
fn a_camt_payment_returned_in_an_mt940_file_of_the_same_account_reopens_its_invoice_without_review()
{
    let d = Daemon::start(Setup::default());
    let inv = issue_invoice(&d, "Rueck GmbH", one_line("360.00"));
    let rf = inv["rf_reference"].as_str().unwrap();
    let paid = import_json(
        &d,
        "paid.xml",
        &camt(&camt_entry(
            "360.00",
            "CRDT",
            "",
            "CAMT-REF-1",
            "E2E-RET-1",
            rf,
            "Rueck GmbH",
            "",
        )),
    );
    assert_eq!(paid["new"], 1, "{paid}");
    assert_eq!(invoice(&d, &inv)["payment_status"], "paid");

    // The payer's bank sends the money back: a reversed credit (RC) with return code 159 and the original's EREF.
    let returned = import_json(
        &d,
        "return.sta",
        &mt940(
            "2603100310RC360,00NRTINONREF//RET-1",
            "159?00RUECKUEBERWEISUNG?20EREF+E2E-RET-1?21SVWZ+Konto erloschen?32Rueck GmbH",
        ),
    );
    assert_eq!(returned["reversed"], 1, "{returned}");
    assert_eq!(returned["review"], 0, "{returned}");
    let after = invoice(&d, &inv);
    assert_eq!(after["balance"], "360.00", "{after}");
    assert_eq!(after["payment_status"], "unpaid", "{after}");
    assert!(open_review(&d).is_empty(), "{:?}", open_review(&d));
    // The payment is reversed by a compensating allocation, not edited.
    let allocations = after["allocations"].as_array().unwrap();
    let amounts: Vec<&str> = allocations
        .iter()
        .map(|a| a["amount"].as_str().unwrap())
        .collect();
    assert_eq!(amounts, ["360.00", "-360.00"], "{after}");
    // The same return file again undoes nothing twice.
    let again = import_json(
        &d,
        "return.sta",
        &mt940(
            "2603100310RC360,00NRTINONREF//RET-1",
            "159?00RUECKUEBERWEISUNG?20EREF+E2E-RET-1?21SVWZ+Konto erloschen?32Rueck GmbH",
        ),
    );
    assert_eq!(
        (again["duplicates"].as_u64(), again["reversed"].as_u64()),
        (Some(1), Some(0)),
        "{again}"
    );
    assert_eq!(
        invoice(&d, &inv)["allocations"].as_array().map(Vec::len),
        Some(2)
    );
}

#[test]
fn a_camt_reversal_entry_reopens_the_invoice_its_original_paid() {
    let d = Daemon::start(Setup::default());
    let inv = issue_invoice(&d, "Storno AG", one_line("120.00"));
    let rf = inv["rf_reference"].as_str().unwrap();
    import_json(
        &d,
        "paid.xml",
        &camt(&camt_entry(
            "120.00",
            "CRDT",
            "",
            "CAMT-P-7",
            "E2E-STORNO-7",
            rf,
            "Storno AG",
            "",
        )),
    );
    assert_eq!(invoice(&d, &inv)["payment_status"], "paid");
    let reversal = camt_entry(
        "120.00",
        "DBIT",
        "<RvslInd>true</RvslInd>",
        "CAMT-R-7",
        "E2E-STORNO-7",
        rf,
        "Storno AG",
        "",
    );
    let summary = import_json(&d, "reversal.xml", &camt(&reversal));
    assert_eq!(summary["reversed"], 1, "{summary}");
    let after = invoice(&d, &inv);
    assert_eq!(after["balance"], "120.00", "{after}");
    assert!(open_review(&d).is_empty(), "{:?}", open_review(&d));
}

#[test]
fn a_negative_bank_csv_line_with_the_originals_reference_reopens_the_invoice() {
    let d = Daemon::start(Setup::default());
    let inv = issue_invoice(&d, "Csv Kunde", one_line("80.00"));
    let rf = inv["rf_reference"].as_str().unwrap();
    let header =
        "Date,Amount,Currency,Counterparty,Counterparty Account,Reference,Transaction Id\n";
    import_json(
        &d,
        "paid.csv",
        &format!("{header}2026-03-05,80.00,EUR,Csv Kunde,DE02120300000000202051,{rf},TX-100\n"),
    );
    assert_eq!(invoice(&d, &inv)["payment_status"], "paid");
    let summary = import_json(
        &d,
        "returned.csv",
        &format!("{header}2026-03-09,-80.00,EUR,Csv Kunde,DE02120300000000202051,{rf},TX-101\n"),
    );
    assert_eq!(summary["reversed"], 1, "{summary}");
    let after = invoice(&d, &inv);
    assert_eq!(after["balance"], "80.00", "{after}");
    assert_eq!(after["payment_status"], "unpaid", "{after}");
}

#[test]
fn a_partial_return_of_100_on_a_360_payment_reopens_exactly_100() {
    let d = Daemon::start(Setup::default());
    let inv = issue_invoice(&d, "Teil GmbH", one_line("360.00"));
    let rf = inv["rf_reference"].as_str().unwrap();
    import_json(
        &d,
        "paid.xml",
        &camt(&camt_entry(
            "360.00",
            "CRDT",
            "",
            "CAMT-P-9",
            "E2E-PART-9",
            rf,
            "Teil GmbH",
            "",
        )),
    );
    let partial = camt_entry(
        "100.00",
        "DBIT",
        "",
        "CAMT-R-9",
        "E2E-PART-9",
        rf,
        "Teil GmbH",
        "<RtrInf><Rsn><Cd>AM09</Cd></Rsn></RtrInf>",
    );
    let summary = import_json(&d, "partial.xml", &camt(&partial));
    assert_eq!(summary["reversed"], 1, "{summary}");
    let after = invoice(&d, &inv);
    assert_eq!(after["balance"], "100.00", "{after}");
    assert_eq!(after["amount_paid"], "260.00", "{after}");
    assert_eq!(after["payment_status"], "partially_paid", "{after}");
    assert!(open_review(&d).is_empty(), "{:?}", open_review(&d));
}

#[test]
fn refunds_of_a_payment_over_two_invoices_reopen_newest_first_and_an_excess_waits_in_review() {
    let d = Daemon::start(Setup::default());
    let first = issue_invoice(&d, "Zwei Rechnungen", one_line("200.00"));
    let second = issue_invoice(&d, "Zwei Rechnungen", one_line("160.00"));
    // One bank payment of 360.00 recorded by hand over both invoices, under the bank's transaction id.
    d.ok(
        "POST",
        "/v1/payments",
        Some(json!({"amount": "360.00", "currency": "EUR", "external_id": "BANK-77", "payer": "Zwei Rechnungen",
            "allocations": [{"invoice_id": first["id"], "amount": "200.00"}, {"invoice_id": second["id"], "amount": "160.00"}]})),
    );
    let header = "Date,Amount,Currency,Counterparty,Original Transaction Id,Transaction Id\n";
    // 100.00 back: taken from the newest allocation (the second invoice).
    let summary = import_json(
        &d,
        "refund1.csv",
        &format!("{header}2026-03-09,-100.00,EUR,Zwei Rechnungen,BANK-77,BANK-78\n"),
    );
    assert_eq!(summary["reversed"], 1, "{summary}");
    assert_eq!(invoice(&d, &first)["balance"], "0.00");
    assert_eq!(invoice(&d, &second)["balance"], "100.00");
    // 300.00 back, but only 260.00 of the payment remains: both invoices reopen fully, the 40.00 beyond waits for a person.
    let summary = import_json(
        &d,
        "refund2.csv",
        &format!("{header}2026-03-10,-300.00,EUR,Zwei Rechnungen,BANK-77,BANK-79\n"),
    );
    assert_eq!(summary["reversed"], 1, "{summary}");
    assert_eq!(invoice(&d, &first)["balance"], "200.00");
    assert_eq!(invoice(&d, &second)["balance"], "160.00");
    let review = open_review(&d);
    assert_eq!(review.len(), 1, "{review:?}");
    let payment = d.ok(
        "GET",
        &format!("/v1/payments/{}", review[0]["payment_id"].as_str().unwrap()),
        None,
    );
    assert_eq!(payment["amount"], "-40.00", "{payment}");
}

#[test]
fn a_return_matching_two_payments_equally_waits_in_review_with_both_suggested() {
    let d = Daemon::start(Setup::default());
    let inv = issue_invoice(&d, "Raten KG", one_line("720.00"));
    let rf = inv["rf_reference"].as_str().unwrap();
    // Two instalments of 360.00 with the same reference from the same payer.
    let entries = format!(
        "{}{}",
        camt_entry(
            "360.00",
            "CRDT",
            "",
            "CAMT-I-1",
            "NOTPROVIDED",
            rf,
            "Raten KG",
            ""
        ),
        camt_entry(
            "360.00",
            "CRDT",
            "",
            "CAMT-I-2",
            "NOTPROVIDED",
            rf,
            "Raten KG",
            ""
        )
    );
    import_json(&d, "instalments.xml", &camt(&entries));
    assert_eq!(invoice(&d, &inv)["payment_status"], "paid");
    let returned = import_json(
        &d,
        "return.sta",
        &mt940(
            "2603100310RC360,00NRTINONREF//RET-2",
            &format!("159?00RUECKUEBERWEISUNG?20SVWZ+{rf}?32Raten KG"),
        ),
    );
    assert_eq!(returned["reversed"], 0, "{returned}");
    assert_eq!(returned["review"], 1, "{returned}");
    assert_eq!(invoice(&d, &inv)["payment_status"], "paid");
    let review = open_review(&d);
    assert_eq!(review.len(), 1, "{review:?}");
    let suggested: Vec<&str> = review[0]["suggestions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["payment_id"].as_str())
        .collect();
    assert_eq!(suggested.len(), 2, "{}", review[0]);
    assert_ne!(suggested[0], suggested[1], "{}", review[0]);
}

fn stripe_header(secret: &str, body: &str) -> String {
    use hmac::{Hmac, Mac};
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[test]
fn a_stripe_refund_of_100_on_a_360_payment_reopens_exactly_100() {
    let d = Daemon::start(Setup {
        plugins: vec!["stripe"],
        config: "[[connector]]\nname = \"stripe\"\nplugin = \"stripe\"\nsettings = { secret = \"whsec_test\" }\n".into(),
    });
    let inv = issue_invoice(&d, "Card Buyer", one_line("360.00"));
    let post = |body: Value| {
        let body = body.to_string();
        let resp = d
            .http()
            .post(d.url("/intake/stripe"))
            .header("content-type", "application/json")
            .header("stripe-signature", stripe_header("whsec_test", &body))
            .body(body)
            .send()
            .unwrap();
        assert!(
            resp.status().is_success(),
            "{}",
            resp.text().unwrap_or_default()
        );
    };
    post(
        json!({"id": "evt_pay", "type": "payment_intent.succeeded", "created": 1772000000, "data": {"object": {
        "id": "pi_360", "object": "payment_intent", "amount": 36000, "amount_received": 36000, "currency": "eur",
        "status": "succeeded", "created": 1772000000, "metadata": {"invoice": inv["number"]}}}}),
    );
    assert_eq!(invoice(&d, &inv)["payment_status"], "paid");
    post(
        json!({"id": "evt_refund", "type": "charge.refunded", "created": 1772100000, "data": {
        "object": {"id": "ch_360", "object": "charge", "payment_intent": "pi_360", "amount": 36000,
            "amount_captured": 36000, "amount_refunded": 10000, "currency": "eur", "created": 1772000000,
            "refunds": {"data": [{"id": "re_100", "amount": 10000, "currency": "eur", "status": "succeeded",
                "created": 1772100000}]}},
        "previous_attributes": {"amount_refunded": 0}}}),
    );
    let after = invoice(&d, &inv);
    assert_eq!(after["balance"], "100.00", "{after}");
    assert_eq!(after["amount_paid"], "260.00", "{after}");
    assert_eq!(after["amount_refunded"], "100.00", "{after}");
    assert_eq!(after["payment_status"], "partially_paid", "{after}");
}

#[test]
fn a_return_that_matched_nothing_is_resolved_in_review_by_naming_the_payment_it_reverses() {
    let d = Daemon::start(Setup::default());
    let inv = issue_invoice(&d, "Unbekannt GmbH", one_line("360.00"));
    let payment = pay(&d, &inv, "360.00");
    let payment_id = payment["id"].as_str().unwrap();
    // Returns naming a bank reference nothing was paid under: they wait for a person.
    let header = "Date,Amount,Currency,Counterparty,Original Transaction Id,Transaction Id\n";
    let summary = import_json(
        &d,
        "returns.csv",
        &format!(
            "{header}2026-03-09,-100.00,EUR,Unbekannt GmbH,NOWHERE-1,RET-501\n\
             2026-03-10,-300.00,EUR,Unbekannt GmbH,NOWHERE-2,RET-502\n"
        ),
    );
    assert_eq!(summary["review"], 2, "{summary}");
    let review = open_review(&d);
    let item_of = |amount: &str| {
        review
            .iter()
            .find(|i| {
                d.ok(
                    "GET",
                    &format!("/v1/payments/{}", i["payment_id"].as_str().unwrap()),
                    None,
                )["amount"]
                    == amount
            })
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (small, large) = (item_of("-100.00"), item_of("-300.00"));

    let r = cli(&d, &["review", "reverse", &small, "--payment", payment_id]);
    assert!(r.status.success(), "{r}");
    let after = invoice(&d, &inv);
    assert_eq!(
        (&after["balance"], &after["amount_paid"]),
        (&json!("100.00"), &json!("260.00")),
        "{after}"
    );
    // 300.00 back but only 260.00 of the payment is left: refused by name, nothing changes.
    let (status, body) = d.call(
        "POST",
        &format!("/v1/review/{large}/reverse"),
        Some(json!({"payment_id": payment_id})),
    );
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("payment_id")),
        "{body}"
    );
    assert_eq!(invoice(&d, &inv)["balance"], "100.00");
    let left: Vec<Value> = open_review(&d);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["id"], large.as_str());
}

#[test]
fn two_returns_in_one_file_whose_originals_are_stored_far_apart_lose_no_other_payment() {
    let d = Daemon::start(Setup::default());
    let inv = issue_invoice(&d, "Viele Raten", one_line("1000.00"));
    let rf = inv["rf_reference"].as_str().unwrap();
    // 70 instalments of 10.00 in one file: stored 64 to a block, so the 10th and the 66th are in different blocks.
    let header =
        "Date,Amount,Currency,Counterparty,Counterparty Account,Reference,Transaction Id\n";
    let lines: String = (1..=70)
        .map(|i| format!("2026-03-05,10.00,EUR,Viele Raten,DE02120300000000202051,{rf},RATE-{i}\n"))
        .collect();
    let summary = import_json(&d, "rates.csv", &format!("{header}{lines}"));
    assert_eq!(summary["new"], 70, "{summary}");
    let returns = "Date,Amount,Currency,Counterparty,Original Transaction Id,Transaction Id\n\
         2026-03-09,-10.00,EUR,Viele Raten,RATE-10,BACK-10\n\
         2026-03-09,-10.00,EUR,Viele Raten,RATE-66,BACK-66\n";
    let summary = import_json(&d, "returns.csv", returns);
    assert_eq!(summary["reversed"], 2, "{summary}");
    assert_eq!(invoice(&d, &inv)["amount_paid"], "680.00");
    let listed = d.ok("GET", "/v1/payments?limit=1000", None)["items"]
        .as_array()
        .unwrap()
        .clone();
    let mut ids: Vec<&str> = listed.iter().map(|p| p["id"].as_str().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 70, "each payment once: {ids:?}");
    for id in ids {
        let (status, body) = d.call("GET", &format!("/v1/payments/{id}"), None);
        assert_eq!(status, 200, "{id}: {body}");
    }
}
