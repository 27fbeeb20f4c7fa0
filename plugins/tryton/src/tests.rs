use serde_json::json;
use settled_plugin_api::chrono::NaiveDate;
use settled_plugin_api::rust_decimal::Decimal;
use settled_plugin_api::{HttpResponseSpec, PollResponse, Record, SinkInput, SinkStep};

use super::*;

fn tryton() -> Tryton {
    Tryton::from_settings(Settings {
        url: "http://127.0.0.1:8000/".into(),
        database: "books".into(),
        user: "settled".into(),
        password: "secret".into(),
        ..Settings::default()
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

fn answer(result: serde_json::Value) -> HttpResponseSpec {
    HttpResponseSpec {
        status: 200,
        headers: Vec::new(),
        body: serde_json::to_vec(&json!({"id": 1, "result": result})).unwrap_or_default(),
    }
}

fn body(request: &HttpRequestSpec) -> serde_json::Value {
    serde_json::from_slice(&request.body).unwrap_or_default()
}

#[test]
fn settings_errors_name_the_key() {
    let err = Tryton::from_settings(Settings {
        url: "http://x".into(),
        database: "db".into(),
        user: "u".into(),
        ..Settings::default()
    })
    .err()
    .map(|e| e.location);
    assert_eq!(err, Some(Some("password".into())));
}

#[test]
fn a_poll_logs_in_reads_preferences_then_pages_from_the_cursor() {
    let t = tryton();
    let login = t.poll_request(None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(login.url, "http://127.0.0.1:8000/books/");
    assert_eq!(body(&login)["method"], "common.db.login");
    let reply = t
        .poll_reply(PollResponse {
            cursor: None,
            response: answer(json!([1, "key"])),
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(reply.more && reply.records.is_empty());
    let prefs = t.poll_request(None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(body(&prefs)["method"], "model.res.user.get_preferences");
    t.poll_reply(PollResponse {
        cursor: None,
        response: answer(json!({"company": 1})),
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let page = t
        .poll_request(Some("2026-12-06T22:55:37.193463/2"))
        .unwrap_or_else(|e| panic!("{e}"));
    let sent = body(&page);
    assert_eq!(sent["method"], "model.account.invoice.search_read");
    assert_eq!(sent["params"][5]["company"], 1, "{sent}");
    assert_eq!(sent["params"][0][2][2][1][0], "id", "{sent}");
    let auth = page
        .headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .map(|(_, v)| v.clone());
    assert_eq!(auth.as_deref(), Some("Session c2V0dGxlZDoxOmtleQ=="));
}

#[test]
fn a_polled_invoice_becomes_an_invoice_record_and_moves_the_cursor() {
    let t = tryton();
    t.live().session = Some(Session {
        auth: "Session x".into(),
        context: json!({}),
    });
    t.poll_request(None).unwrap_or_else(|e| panic!("{e}"));
    let d = |s: &str| json!({"__class__": "Decimal", "decimal": s});
    let row = json!({"id": 7, "number": "TRY-0007", "reference": "INV-2026-001",
        "write_date": {"__class__": "datetime", "year": 2026, "month": 12, "day": 6, "hour": 22, "minute": 5, "second": 1, "microsecond": 42},
        "invoice_date": {"__class__": "date", "year": 2026, "month": 12, "day": 6},
        "party.": {"name": "Acme"}, "currency.": {"code": "EUR"},
        "untaxed_amount": d("100.00"), "tax_amount": d("21.00"), "total_amount": d("121.00"), "amount_to_pay": d("121.00"),
        "lines_to_pay.": [{"maturity_date": {"__class__": "date", "year": 2027, "month": 1, "day": 5}}],
        "lines.": [{"description": "work", "quantity": 2.0, "unit_price": d("50.0000"), "amount": d("100.00")}],
        "taxes.": [{"base": d("100.00"), "amount": d("21.00"), "tax.": {"rate": d("0.2100000000")}}]});
    let reply = t
        .poll_reply(PollResponse {
            cursor: None,
            response: answer(json!([row])),
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        reply.cursor.as_deref(),
        Some("2026-12-06T22:05:01.000042/7")
    );
    assert!(!reply.more);
    let Some(Record::Invoice(inv)) = reply.records.first() else {
        panic!("{:?}", reply.records)
    };
    assert_eq!(inv.external_id, "7");
    assert_eq!(inv.host_number.as_deref(), Some("INV-2026-001"));
    assert_eq!(inv.total, Decimal::new(12100, 2));
    assert_eq!(inv.due_date, NaiveDate::from_ymd_opt(2027, 1, 5));
    assert_eq!(inv.lines.len(), 1);
    assert_eq!(
        inv.taxes,
        [InvoiceRecordTax {
            rate: Decimal::new(21, 0),
            base: Decimal::new(10000, 2),
            amount: Decimal::new(2100, 2)
        }]
    );
}

#[test]
fn tax_lines_that_do_not_add_up_to_the_tax_give_no_groups() {
    let d = |s: &str| json!({"__class__": "Decimal", "decimal": s});
    let row = |rate: serde_json::Value| {
        json!({"untaxed_amount": d("100.00"), "tax_amount": d("21.00"),
            "taxes.": [{"base": d("100.00"), "amount": d("20.00"), "tax.": {"rate": rate}}]})
    };
    assert_eq!(tax_groups(&row(d("0.21"))), []);
    // A fixed tax has no rate.
    assert_eq!(tax_groups(&row(json!(null))), []);
}

#[test]
fn an_expired_session_on_a_poll_page_logs_in_again() {
    let t = tryton();
    t.live().session = Some(Session {
        auth: "Session x".into(),
        context: json!({}),
    });
    t.poll_request(None).unwrap_or_else(|e| panic!("{e}"));
    let reply = t
        .poll_reply(PollResponse {
            cursor: Some("c".into()),
            response: HttpResponseSpec {
                status: 401,
                headers: Vec::new(),
                body: Vec::new(),
            },
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(reply.more);
    assert_eq!(reply.cursor.as_deref(), Some("c"));
    let next = t.poll_request(Some("c")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(body(&next)["method"], "common.db.login");
}

#[test]
fn a_reversal_is_a_dead_letter_saying_what_to_do_in_tryton() {
    let step = tryton()
        .step(&SinkInput {
            event: json!({"id": 9, "type": "payment.reversed", "entity": "payment", "entity_id": "pay_1",
                "data": {"amount": "50.00", "currency": "EUR", "allocations": [{"invoice_number": "INV-2026-001"}]}}),
            attempt: 1,
            now: 0,
            state: json!(null),
            response: None,
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let SinkStep::Failed { reason } = step else {
        panic!("{step:?}")
    };
    assert!(
        reason.contains("INV-2026-001") && reason.contains("Unreconcile"),
        "{reason}"
    );
}

#[test]
fn an_invoice_born_in_tryton_is_not_sent_back() {
    let step = tryton()
        .step(&SinkInput {
            event: json!({"id": 3, "type": "invoice.issued", "entity": "invoice", "entity_id": "inv_1",
                "data": {"external_refs": [{"system": "tryton", "id": "7", "number": "TRY-0007", "origin": true}]}}),
            attempt: 1,
            now: 0,
            state: json!(null),
            response: None,
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(step, SinkStep::Ignored);
}

#[test]
fn a_sink_conversation_starts_with_a_login() {
    let step = tryton()
        .step(&SinkInput {
            event: json!({"id": 3, "type": "invoice.issued", "entity": "invoice", "entity_id": "inv_1",
                "data": {"number": "INV-2026-001", "total": "121.00", "currency": "EUR", "customer": "Acme"}}),
            attempt: 1,
            now: 0,
            state: json!(null),
            response: None,
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let SinkStep::Request { request, state } = step else {
        panic!("{step:?}")
    };
    assert_eq!(body(&request)["method"], "common.db.login");
    assert_eq!(state["phase"], "login");
}

/// The methods a first conversation calls until it reaches `until`, answering every call with `[]` (the login with a
/// session, the preferences with `{}`).
fn first_calls(event: serde_json::Value, until: &str) -> Vec<String> {
    let t = tryton();
    let mut calls = Vec::new();
    let mut state = json!(null);
    let mut response = None;
    loop {
        let step = t
            .step(&SinkInput {
                event: event.clone(),
                attempt: 1,
                now: 0,
                state: state.clone(),
                response: response.take(),
            })
            .unwrap_or_else(|e| panic!("{e}"));
        let SinkStep::Request {
            request,
            state: next,
        } = step
        else {
            panic!("{step:?} after {calls:?}")
        };
        let method = body(&request)["method"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        calls.push(method.clone());
        if method == until || calls.len() > 20 {
            return calls;
        }
        response = Some(match method.as_str() {
            "common.db.login" => answer(json!([1, "key"])),
            "model.res.user.get_preferences" => answer(json!({})),
            _ => answer(json!([])),
        });
        state = next;
    }
}

#[test]
fn a_first_conversation_looks_up_only_what_its_event_needs() {
    let invoice = first_calls(
        json!({"id": 3, "type": "invoice.issued", "entity": "invoice", "entity_id": "inv_1",
            "data": {"number": "INV-2026-001", "total": "121.00", "currency": "EUR", "customer": "Acme"}}),
        "model.account.invoice.search_read",
    );
    assert_eq!(
        invoice,
        [
            "common.db.login",
            "model.res.user.get_preferences",
            "model.account.account.search_read",
            "model.account.journal.search_read",
            "model.account.tax.search_read",
            "model.currency.currency.search_read",
            "model.account.invoice.search_read",
        ]
    );
    let payment = first_calls(
        json!({"id": 4, "type": "payment.recorded", "entity": "payment", "entity_id": "pay_1",
            "data": {"amount": "121.00", "currency": "EUR", "allocations": [{"id": "alc_1", "kind": "payment",
                "amount": "121.00", "invoice_number": "INV-2026-001"}]}}),
        "model.account.invoice.search_read",
    );
    assert_eq!(
        payment,
        [
            "common.db.login",
            "model.res.user.get_preferences",
            "model.account.invoice.payment.method.search_read",
            "model.account.invoice.search_read",
        ]
    );
}
