use super::*;

fn sink() -> Hledger {
    Hledger::from_settings(Settings {
        url: "http://127.0.0.1:5000/".into(),
        ..Settings::default()
    })
    .unwrap()
}

fn issued() -> Value {
    json!({"id": 7, "type": "invoice.issued", "at": "2026-03-02T10:00:00Z", "entity": "invoice", "entity_id": "inv_1",
        "data": {"number": "INV-1", "kind": "invoice", "total": "121.00", "currency": "EUR", "issue_date": "2026-03-01",
                 "customer": "Acme: Ltd", "subtotal": "100.00",
                 "taxes": [{"rate": "21.00", "base": "100.00", "amount": "21.00"}]}})
}

fn posted(entry: &Entry) -> Vec<(String, String)> {
    entry
        .postings
        .iter()
        .map(|(a, v)| (a.clone(), v.to_string()))
        .collect()
}

fn pair(a: &str, v: &str) -> (String, String) {
    (a.to_string(), v.to_string())
}

#[test]
fn an_issued_invoice_posts_receivable_against_revenue_and_vat_per_rate() {
    let entry = sink().entry(&issued(), &[]).unwrap().unwrap();
    assert_eq!(entry.date, "2026-03-01");
    assert_eq!(
        posted(&entry),
        [
            pair("assets:receivable:Acme Ltd", "121.00"),
            pair("revenue", "-100.00"),
            pair("liabilities:vat:21", "-21.00")
        ]
    );
    let tx = transaction_json(&entry, 7).unwrap();
    assert_eq!(tx["tcomment"], "settled-event:7, settled-invoice:inv_1");
    assert_eq!(
        tx["tpostings"][0]["pamount"][0]["aquantity"]["decimalMantissa"],
        12100
    );
    assert_eq!(tx["tpostings"][0]["pamount"][0]["astyle"]["asprecision"], 2);
    assert_eq!(tx["tsourcepos"].as_array().map(Vec::len), Some(2));
}

#[test]
fn a_payment_waits_for_its_invoice_then_posts_bank_against_that_receivable() {
    let payment = json!({"id": 9, "type": "payment.recorded", "at": "2026-03-05T10:00:00Z", "entity": "payment",
        "entity_id": "pay_1", "data": {"amount": "50.50", "currency": "EUR", "to_credit": "0",
        "allocations": [{"invoice_id": "inv_1", "amount": "50.50", "kind": "payment"}]}});
    assert!(sink().entry(&payment, &[]).is_err());
    let journal = [
        json!({"ttags": [["settled-event", "7"], ["settled-invoice", "inv_1"]],
        "tpostings": [{"paccount": "assets:receivable:Acme Ltd"}]}),
    ];
    let entry = sink().entry(&payment, &journal).unwrap().unwrap();
    assert_eq!(entry.date, "2026-03-05");
    assert_eq!(
        posted(&entry),
        [
            pair("assets:bank", "50.50"),
            pair("assets:receivable:Acme Ltd", "-50.50")
        ]
    );
}

#[test]
fn a_redelivered_event_found_in_the_journal_is_done_without_writing() {
    let read = sink()
        .step(&SinkInput {
            event: issued(),
            attempt: 2,
            now: 0,
            state: json!({"phase": "read"}),
            response: Some(HttpResponseSpec {
                status: 200,
                headers: vec![],
                body: br#"[{"ttags": [["settled-event", "7"]], "tpostings": []}]"#.to_vec(),
            }),
        })
        .unwrap();
    assert_eq!(read, SinkStep::Done);
}

#[test]
fn a_missing_url_or_a_bad_account_name_is_refused_naming_the_key() {
    let no_url = Hledger::from_settings(Settings::default()).unwrap_err();
    assert_eq!(no_url.location.as_deref(), Some("url"));
    let bad = Hledger::from_settings(Settings {
        url: "http://x".into(),
        bank: "assets:  bank".into(),
        ..Settings::default()
    })
    .unwrap_err();
    assert_eq!(bad.location.as_deref(), Some("bank"));
}

fn answer(state: Value, body: &[u8]) -> SinkStep {
    sink()
        .step(&SinkInput {
            event: issued(),
            attempt: 1,
            now: 0,
            state,
            response: Some(HttpResponseSpec {
                status: 200,
                headers: vec![],
                body: body.to_vec(),
            }),
        })
        .unwrap()
}

#[test]
fn a_new_event_is_written_after_a_pause_and_a_stale_read_after_the_write_appends_a_marker() {
    let SinkStep::Wait { millis, state } = answer(json!({"phase": "read"}), b"[]") else {
        panic!("no pause before the write");
    };
    assert!(millis >= 20, "{millis}");
    assert_eq!(state["phase"], "write");
    assert_eq!(
        state["body"]["tcomment"],
        "settled-event:7, settled-invoice:inv_1"
    );
    let SinkStep::Wait { state, .. } = answer(json!({"phase": "verify", "tries": 0}), b"[]") else {
        panic!("a stale read after the write did not lead to a marker");
    };
    assert_eq!(state["phase"], "mark");
    assert!(matches!(
        answer(json!({"phase": "verify", "tries": MARKER_TRIES}), b"[]"),
        SinkStep::RetryLater { .. }
    ));
    assert_eq!(
        answer(
            json!({"phase": "verify", "tries": 0}),
            br#"[{"ttags": [["settled-event", "7"]]}]"#
        ),
        SinkStep::Done
    );
}

#[test]
fn a_payment_net_of_a_provider_fee_posts_the_fee_as_an_expense_and_balances() {
    let payment = json!({"id": 9, "type": "payment.recorded", "at": "2026-03-05T10:00:00Z", "entity": "payment",
        "entity_id": "pay_1", "data": {"amount": "97.10", "fee": "2.90", "currency": "EUR", "to_credit": "0",
        "allocations": [{"invoice_id": "inv_1", "amount": "100.00", "kind": "payment"}]}});
    let journal = [
        json!({"ttags": [["settled-event", "7"], ["settled-invoice", "inv_1"]],
        "tpostings": [{"paccount": "assets:receivable:Acme"}]}),
    ];
    let entry = sink().entry(&payment, &journal).unwrap().unwrap();
    assert_eq!(
        posted(&entry),
        [
            pair("assets:bank", "97.10"),
            pair("assets:receivable:Acme", "-100.00"),
            pair("expenses:fees", "2.90")
        ]
    );
    assert!(check_balanced(&entry, 9).is_ok());
}
