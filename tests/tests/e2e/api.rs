//! The HTTP API of a real daemon: the pipeline end to end, and the error contract.

use serde_json::{json, Value};

use crate::harness::{cli, invoice, issue_invoice, one_line, sent_quote, Daemon, Setup, TOKEN};

#[test]
fn a_lead_becomes_a_paid_invoice_over_http() {
    let d = Daemon::start(Setup {
        plugins: vec![],
        ..Setup::default()
    });
    let (status, lead) = d.call("POST", "/v1/leads", Some(json!({"name": "Grace", "email": "grace@navy.example", "company": "Navy", "source": "referral"})));
    assert_eq!(status, 201, "{lead}");
    assert_eq!(lead["status"], "new");
    let (status, again) = d.call(
        "POST",
        "/v1/leads",
        Some(json!({"name": "Grace", "email": "grace@navy.example", "source": "referral"})),
    );
    assert_eq!(status, 200);
    assert_eq!(again["deduplicated"], true);
    assert_eq!(again["id"], lead["id"]);

    let inv = issue_invoice(
        &d,
        "Navy",
        json!([
            {"description": "Licence", "quantity": "3", "unit_price": "33.335", "tax_rate": "20"},
            {"description": "Support", "quantity": "1", "unit_price": "50.00", "discount_percent": "10", "tax_rate": "10"}
        ]),
    );
    assert_eq!(
        inv["number"],
        "INV-2026-001".replace("2026", &chrono_year())
    );
    assert_eq!(inv["subtotal"], "145.01");
    assert_eq!(
        inv["tax_total"], "24.50",
        "20% of 100.01 = 20.00 plus 10% of 45.00 = 4.50"
    );
    assert_eq!(inv["total"], "169.51");
    assert_eq!(inv["payment_status"], "unpaid");
    assert!(inv["rf_reference"].as_str().unwrap().starts_with("RF"));

    let (status, pay) = d.call(
        "POST",
        "/v1/payments",
        Some(json!({"amount": "200.00", "currency": "EUR", "payer": "Navy", "allocations": [{"invoice_id": inv["id"]}]})),
    );
    assert_eq!(status, 201, "{pay}");
    let paid = d.ok(
        "GET",
        &format!("/v1/invoices/{}", inv["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(paid["payment_status"], "paid");
    assert_eq!(paid["balance"], "0.00");
    assert_eq!(paid["allocations"][0]["amount"], "169.51");
    let account = d.ok(
        "GET",
        &format!("/v1/accounts/{}", inv["account_id"].as_str().unwrap()),
        None,
    );
    assert_eq!(account["credit_balance"]["EUR"], "30.49");

    let events = d.ok("GET", "/v1/events?after=0&limit=1000", None);
    let kinds: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    for expected in [
        "lead.captured",
        "lead.converted",
        "quote.sent",
        "quote.accepted",
        "order.created",
        "invoice.issued",
        "payment.recorded",
        "invoice.payment_status_changed",
    ] {
        assert!(
            kinds.contains(&expected),
            "{expected} missing from {kinds:?}"
        );
    }
    let ids: Vec<u64> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "events are in order without gaps: {ids:?}"
    );

    let metrics = d.metrics().expect("GET /metrics");
    assert!(
        metrics.contains("settled_http_requests_total{class=\"2xx\"}"),
        "{metrics}"
    );
    let overdue = d.ok("GET", "/v1/invoices?payment_status=paid", None);
    assert_eq!(overdue["items"].as_array().unwrap().len(), 1);
}

fn chrono_year() -> String {
    // The daemon numbers invoices by the issue date's year; tests run on any date.
    let out = std::process::Command::new("date")
        .arg("+%Y")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn errors_name_the_field_and_the_state_and_change_nothing() {
    let d = Daemon::start(Setup {
        plugins: vec![],
        ..Setup::default()
    });
    // 401 without a token.
    let resp = d.http().get(d.url("/v1/leads")).send().unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let body: serde_json::Value = resp.json().unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    // Health needs no token.
    assert_eq!(
        d.http()
            .get(d.url("/healthz"))
            .send()
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    // Malformed JSON.
    let resp = d
        .http()
        .post(d.url("/v1/leads"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    // Unknown field is named.
    let (status, body) = d.call(
        "POST",
        "/v1/leads",
        Some(json!({"name": "A", "emial": "a@b.example"})),
    );
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("emial"),
        "{body}"
    );
    // Bad email names the field.
    let (status, body) = d.call(
        "POST",
        "/v1/leads",
        Some(json!({"name": "A", "email": "not an email"})),
    );
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("email")),
        "{body}"
    );
    // A float amount is refused: money is decimal strings.
    let inv = issue_invoice(&d, "Errs", one_line("10.00"));
    let id = inv["id"].as_str().unwrap();
    let (status, body) = d.call(
        "POST",
        "/v1/payments",
        Some(json!({"amount": 10.5, "currency": "EUR", "allocations": [{"invoice_id": id}]})),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "amount");
    // Negative and non-numeric amounts.
    for amount in ["-1.00", "ten", "1.234"] {
        let (status, body) = d.call(
            "POST",
            "/v1/payments",
            Some(json!({"amount": amount, "currency": "EUR", "allocations": [{"invoice_id": id}]})),
        );
        assert_eq!(
            (status, body["error"]["field"].as_str()),
            (400, Some("amount")),
            "{amount}: {body}"
        );
    }
    // Currency mismatch.
    let (status, body) = d.call(
        "POST",
        "/v1/payments",
        Some(json!({"amount": "10.00", "currency": "USD", "allocations": [{"invoice_id": id}]})),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("currency"),
        "{body}"
    );
    // Issuing twice: 409 saying which state.
    let (status, body) = d.call("POST", &format!("/v1/invoices/{id}/issue"), Some(json!({})));
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("issued"),
        "{body}"
    );
    // 404.
    let (status, _) = d.call("GET", "/v1/invoices/inv_99999999", None);
    assert_eq!(status, 404);
    // None of the refused requests changed anything.
    let after = d.ok("GET", &format!("/v1/invoices/{id}"), None);
    assert_eq!(after["amount_paid"], "0.00");
    assert_eq!(
        d.ok("GET", "/v1/payments", None)["items"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    // Void, then paying it is a conflict.
    d.ok("POST", &format!("/v1/invoices/{id}/void"), None);
    let (status, body) = d.call(
        "POST",
        "/v1/payments",
        Some(json!({"amount": "10.00", "currency": "EUR", "allocations": [{"invoice_id": id}]})),
    );
    assert_eq!(status, 409, "{body}");
}

#[test]
fn void_and_quote_actions_keep_their_reason_in_the_audit_log_and_refuse_unknown_fields() {
    let d = Daemon::start(Setup {
        plugins: vec![],
        ..Setup::default()
    });
    let reason_of = |kind: &str, id: &Value| {
        let events = d.ok("GET", "/v1/events?limit=10000", None);
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"] == kind && e["entity_id"] == *id)
            .map(|e| e["data"]["reason"].clone())
    };
    let inv = issue_invoice(&d, "Void Reason", one_line("10.00"));
    let void_path = format!("/v1/invoices/{}/void", inv["id"].as_str().unwrap());
    let (status, body) = d.call("POST", &void_path, Some(json!({"reasn": "typo"})));
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("reasn")),
        "{body}"
    );
    assert_eq!(
        invoice(&d, &inv)["state"],
        "issued",
        "a refused body changes nothing"
    );
    let r = cli(
        &d,
        &[
            "invoices",
            "void",
            inv["id"].as_str().unwrap(),
            "--reason",
            "ordered twice",
        ],
    );
    assert!(r.status.success(), "{r}");
    assert_eq!(invoice(&d, &inv)["state"], "void");
    assert_eq!(
        reason_of("invoice.voided", &inv["id"]),
        Some(json!("ordered twice"))
    );

    let q = sent_quote(&d, "Quote Reason", one_line("20.00"));
    let qid = q["id"].as_str().unwrap();
    let (status, body) = d.call(
        "POST",
        &format!("/v1/quotes/{qid}/reject"),
        Some(json!({"reason": "too dear", "by": "Ann"})),
    );
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("by")),
        "{body}"
    );
    assert_eq!(
        d.ok("GET", &format!("/v1/quotes/{qid}"), None)["status"],
        "sent"
    );
    let r = cli(&d, &["quotes", "reject", qid, "--reason", "too dear"]);
    assert!(r.status.success(), "{r}");
    assert_eq!(
        reason_of("quote.rejected", &q["id"]),
        Some(json!("too dear"))
    );
    assert_eq!(
        reason_of("quote.sent", &q["id"]),
        Some(Value::Null),
        "no reason given, none recorded"
    );
}
