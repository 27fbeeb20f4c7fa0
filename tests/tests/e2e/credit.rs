//! Customer credit and reversals: credit that a reversed payment or a credit note put on an account is taken back
//! whole, and what it already paid is reopened by compensating allocations.

use serde_json::{json, Value};

use crate::harness::{cli, invoice, issue_invoice, one_line, pay, Daemon, Setup};

fn credit_of(d: &Daemon, inv: &Value) -> Value {
    let account = d.ok(
        "GET",
        &format!("/v1/accounts/{}", inv["account_id"].as_str().unwrap()),
        None,
    );
    account["credit_balance"]["EUR"].clone()
}

fn apply_credit(d: &Daemon, inv: &Value) -> Value {
    d.ok(
        "POST",
        &format!("/v1/invoices/{}/apply-credit", inv["id"].as_str().unwrap()),
        Some(json!({})),
    )
}

fn reverse(d: &Daemon, payment: &Value) -> Value {
    d.ok(
        "POST",
        &format!("/v1/payments/{}/reverse", payment["id"].as_str().unwrap()),
        Some(json!({})),
    )
}

/// The payment statuses announced for `inv`, oldest first.
fn announced(d: &Daemon, inv: &Value) -> Vec<String> {
    let events = d.ok("GET", "/v1/events?limit=10000", None);
    events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "invoice.payment_status_changed" && e["entity_id"] == inv["id"])
        .map(|e| e["data"]["to"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn reversing_an_overpayment_whose_credit_paid_another_invoice_reopens_that_invoice() {
    let d = Daemon::start(Setup::default());
    let a = issue_invoice(&d, "Kredit Kette", one_line("100.00"));
    let b = issue_invoice(&d, "Kredit Kette", one_line("50.00"));
    assert_eq!(a["account_id"], b["account_id"]);
    // 150.00 on A: 100.00 pays it, 50.00 goes to the customer's credit, which then pays B.
    let p = pay(&d, &a, "150.00");
    assert_eq!(credit_of(&d, &a), "50.00");
    assert_eq!(apply_credit(&d, &b)["payment_status"], "paid");
    assert_eq!(credit_of(&d, &a), Value::Null);

    reverse(&d, &p);
    let a_after = invoice(&d, &a);
    let b_after = invoice(&d, &b);
    assert_eq!(
        (&a_after["balance"], &a_after["payment_status"]),
        (&json!("100.00"), &json!("unpaid")),
        "{a_after}"
    );
    assert_eq!(
        (&b_after["balance"], &b_after["payment_status"]),
        (&json!("50.00"), &json!("unpaid")),
        "the credit that paid B came from the reversed payment: {b_after}"
    );
    assert_eq!(credit_of(&d, &a), Value::Null, "no credit appears or stays");
    // B's credit allocation is compensated, not edited.
    let amounts: Vec<&str> = b_after["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["amount"].as_str().unwrap())
        .collect();
    assert_eq!(amounts, ["50.00", "-50.00"], "{b_after}");
    assert_eq!(announced(&d, &b), ["unpaid", "paid", "unpaid"]);
}

#[test]
fn a_credit_note_beyond_what_was_owed_covers_its_invoice_again_when_the_payment_is_reversed() {
    let d = Daemon::start(Setup::default());
    let a = issue_invoice(&d, "Gutschrift Kunde", one_line("100.00"));
    let b = issue_invoice(&d, "Gutschrift Kunde", one_line("30.00"));
    let p = pay(&d, &a, "100.00");
    // A is paid in full, so the whole credit note goes to the customer's credit; 30.00 of it pays B.
    d.ok(
        "POST",
        &format!("/v1/invoices/{}/credit", a["id"].as_str().unwrap()),
        Some(json!({})),
    );
    assert_eq!(credit_of(&d, &a), "100.00");
    assert_eq!(apply_credit(&d, &b)["payment_status"], "paid");
    assert_eq!(credit_of(&d, &a), "70.00");

    // The payment goes back: the credit note covers A again, so what it put on credit comes back: 70.00 not spent
    // and the 30.00 that paid B (B reopens).
    reverse(&d, &p);
    let a_after = invoice(&d, &a);
    assert_eq!(a_after["balance"], "0.00", "{a_after}");
    assert_eq!(credit_of(&d, &a), Value::Null);
    let b_after = invoice(&d, &b);
    assert_eq!(
        (&b_after["balance"], &b_after["payment_status"]),
        (&json!("30.00"), &json!("unpaid")),
        "{b_after}"
    );
    assert_eq!(announced(&d, &b), ["unpaid", "paid", "unpaid"]);
}

#[test]
fn payments_reverse_with_an_amount_undoes_that_much_credit_first_and_refuses_more_than_is_left() {
    let d = Daemon::start(Setup::default());
    let a = issue_invoice(&d, "Teilweise", one_line("100.00"));
    let p = pay(&d, &a, "150.00");
    let id = p["id"].as_str().unwrap();
    // 70.00 of 150.00: the 50.00 it left on credit first, then 20.00 of its allocation to A.
    let r = cli(&d, &["payments", "reverse", id, "--amount", "70.00"]);
    assert!(r.status.success(), "{r}");
    assert_eq!(credit_of(&d, &a), Value::Null);
    assert_eq!(invoice(&d, &a)["balance"], "20.00");
    let (status, body) = d.call(
        "POST",
        &format!("/v1/payments/{id}/reverse"),
        Some(json!({"amount": "80.01"})),
    );
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("amount")),
        "{body}"
    );
    assert_eq!(
        invoice(&d, &a)["balance"],
        "20.00",
        "a refused reversal changes nothing"
    );
    let r = cli(&d, &["payments", "reverse", id]);
    assert!(r.status.success(), "{r}");
    assert_eq!(invoice(&d, &a)["balance"], "100.00");
    assert_eq!(
        d.ok("GET", &format!("/v1/payments/{id}"), None)["state"],
        "reversed"
    );
}
