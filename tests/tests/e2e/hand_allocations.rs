//! Hand-made payment changes refuse requests that would move money somewhere the client did not ask for: allocating by
//! hand to an empty list of invoices (money reaching no invoice, credit balance or review queue), or a reversal told an
//! amount the endpoint does not take (the whole payment reversed).

use serde_json::{json, Value};

use crate::harness::{issue_invoice, one_line, Daemon, Setup};

fn items(d: &Daemon, path: &str) -> Vec<Value> {
    d.ok("GET", path, None)["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_payment_with_an_empty_allocation_list_is_refused_and_records_nothing() {
    let d = Daemon::start(Setup {
        plugins: vec![],
        ..Setup::default()
    });
    let (status, body) = d.call(
        "POST",
        "/v1/payments",
        Some(json!({"amount": "50.00", "currency": "EUR", "payer": "Nobody", "allocations": []})),
    );
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("allocations")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no invoice")),
        "{body}"
    );
    assert!(
        items(&d, "/v1/payments").is_empty(),
        "{:?}",
        items(&d, "/v1/payments")
    );

    // Left out, the same payment is reconciled: it matches nothing and waits in review instead of vanishing.
    let (status, body) = d.call(
        "POST",
        "/v1/payments",
        Some(json!({"amount": "50.00", "currency": "EUR", "payer": "Nobody"})),
    );
    assert_eq!(status, 201, "{body}");
    let review = items(&d, "/v1/review");
    assert_eq!(review.len(), 1, "{review:?}");
    assert_eq!(review[0]["payment_id"], body["id"], "{review:?}");
}

#[test]
fn allocating_a_review_item_to_no_invoice_is_refused_and_the_item_stays_open() {
    let d = Daemon::start(Setup {
        plugins: vec![],
        ..Setup::default()
    });
    let invoice = issue_invoice(&d, "Later Co", one_line("50.00"));
    let invoice_id = invoice["id"].as_str().unwrap_or_default().to_string();
    // 75.00 from an unknown payer without a reference matches no invoice.
    let (status, payment) = d.call(
        "POST",
        "/v1/payments",
        Some(json!({"amount": "75.00", "currency": "EUR", "payer": "Someone Else"})),
    );
    assert_eq!(status, 201, "{payment}");
    let review = items(&d, "/v1/review");
    assert_eq!(review.len(), 1, "{review:?}");
    let item_id = review[0]["id"].as_str().unwrap_or_default().to_string();

    let (status, body) = d.call(
        "POST",
        &format!("/v1/review/{item_id}/allocate"),
        Some(json!({"allocations": []})),
    );
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("allocations")),
        "{body}"
    );
    let item = d.ok("GET", &format!("/v1/review/{item_id}"), None);
    assert_eq!(item["status"], "open", "{item}");
    assert_eq!(items(&d, "/v1/review").len(), 1);
    let pay = d.ok(
        "GET",
        &format!(
            "/v1/payments/{}",
            payment["id"].as_str().unwrap_or_default()
        ),
        None,
    );
    assert_eq!(pay["allocations"], json!([]), "{pay}");

    // Naming the invoice still works: 50.00 pays it, the other 25.00 goes to the customer's credit.
    let item = d.ok(
        "POST",
        &format!("/v1/review/{item_id}/allocate"),
        Some(json!({"allocations": [{"invoice_id": invoice_id}]})),
    );
    assert_eq!(item["status"], "allocated", "{item}");
    let paid = d.ok("GET", &format!("/v1/invoices/{invoice_id}"), None);
    assert_eq!(paid["amount_paid"], "50.00", "{paid}");
    let account = d.ok(
        "GET",
        &format!(
            "/v1/accounts/{}",
            paid["account_id"].as_str().unwrap_or_default()
        ),
        None,
    );
    assert_eq!(account["credit_balance"]["EUR"], "25.00", "{account}");
}

#[test]
fn reversing_a_payment_with_fields_it_does_not_take_is_refused_and_reverses_nothing() {
    let d = Daemon::start(Setup {
        plugins: vec![],
        ..Setup::default()
    });
    let invoice = issue_invoice(&d, "Refund Co", one_line("50.00"));
    let invoice_id = invoice["id"].as_str().unwrap_or_default().to_string();
    let payment = d.ok(
        "POST",
        "/v1/payments",
        Some(json!({"amount": "50.00", "currency": "EUR", "allocations": [{"invoice_id": invoice_id}]})),
    );
    let reverse = format!(
        "/v1/payments/{}/reverse",
        payment["id"].as_str().unwrap_or_default()
    );
    // The endpoint takes an `amount` (part of the payment); a misspelt one must be refused, not lose all 50.00.
    let (status, body) = d.call("POST", &reverse, Some(json!({"amout": "30.00"})));
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("amout")),
        "{body}"
    );
    let after = d.ok("GET", &format!("/v1/invoices/{invoice_id}"), None);
    assert_eq!(after["amount_paid"], "50.00", "{after}");
    assert_eq!(
        d.ok(
            "GET",
            &format!(
                "/v1/payments/{}",
                payment["id"].as_str().unwrap_or_default()
            ),
            None
        )["state"],
        "recorded"
    );

    // An empty body (what `settled payments reverse` sends) reverses it.
    let reversed = d.ok("POST", &reverse, Some(json!({})));
    assert_eq!(reversed["state"], "reversed", "{reversed}");
    let after = d.ok("GET", &format!("/v1/invoices/{invoice_id}"), None);
    assert_eq!(after["amount_paid"], "0.00", "{after}");
}
