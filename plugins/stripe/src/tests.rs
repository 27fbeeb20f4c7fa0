//! Webhook deliveries end to end through [`intake`](crate::intake): signature, event, records.

use serde_json::{json, Value};
use settled_plugin_api::chrono::NaiveDate;
use settled_plugin_api::rust_decimal::Decimal;
use settled_plugin_api::{
    EntryStatus, IntakeOutcome, IntakeRequest, PaymentKind, PaymentRecord, Plugin, Record,
};

use crate::event::money;
use crate::settings::Config;
use crate::signature::sign;
use crate::{intake, Stripe};

const SECRET: &str = "whsec_2Qv8pLr4Xs9TnB7cK1mZ0aYd";
const NOW: i64 = 1_795_000_000;

fn config() -> Config {
    Config::from_json(json!({ "secret": SECRET }), |_| None).unwrap_or_else(|e| panic!("{e}"))
}

fn request(body: &[u8], signature: Option<String>) -> IntakeRequest {
    let mut headers = vec![(
        "content-type".to_owned(),
        "application/json; charset=utf-8".to_owned(),
    )];
    headers.extend(signature.map(|value| ("stripe-signature".to_owned(), value)));
    IntakeRequest {
        method: "POST".to_owned(),
        path: "/".to_owned(),
        query: String::new(),
        headers,
        body: body.to_vec(),
        remote_addr: "3.18.12.63:443".to_owned(),
        received_at: NOW,
    }
}

/// A delivery signed the way Stripe signs it, a few seconds before it arrived.
fn signed(body: &[u8]) -> IntakeRequest {
    let sent = NOW - 2;
    request(
        body,
        Some(format!("t={sent},v1={}", sign(SECRET, sent, body))),
    )
}

fn event(id: &str, kind: &str, object: Value, previous: Option<Value>) -> Value {
    let mut data = json!({ "object": object });
    if let Some(previous) = previous {
        data["previous_attributes"] = previous;
    }
    json!({
        "id": id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": NOW - 5,
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "type": kind,
        "data": data
    })
}

/// The records of an accepted delivery.
fn deliver(event: &Value) -> Vec<PaymentRecord> {
    match intake(&config(), &signed(event.to_string().as_bytes())) {
        IntakeOutcome::Accept { records, reply } => {
            assert_eq!(reply, None);
            records
                .into_iter()
                .map(|record| match record {
                    Record::Payment(payment) => payment,
                    other => panic!("not a payment: {other:?}"),
                })
                .collect()
        }
        IntakeOutcome::Reject { status, reason } => panic!("rejected {status}: {reason}"),
    }
}

fn check_reject(outcome: IntakeOutcome, status: u16, words: &str) {
    match outcome {
        IntakeOutcome::Reject {
            status: got,
            reason,
        } => {
            assert_eq!(got, status, "{reason}");
            assert!(reason.contains(words), "`{reason}` lacks `{words}`");
        }
        accepted => panic!("expected a {status} rejection, got {accepted:?}"),
    }
}

fn decimal(text: &str) -> Decimal {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn day(text: &str) -> Option<NaiveDate> {
    Some(text.parse().unwrap_or_else(|e| panic!("{text}: {e}")))
}

fn check_money(minor: i64, currency: &str, expected: &str) {
    assert_eq!(
        money(minor, currency).to_string(),
        expected,
        "{minor} {currency}"
    );
}

#[test]
fn minor_units_follow_the_currency() {
    check_money(1500, "USD", "15.00");
    check_money(1500, "EUR", "15.00");
    check_money(1500, "JPY", "1500");
    check_money(1500, "KRW", "1500");
    check_money(1500, "KWD", "1.500");
    check_money(1505, "BHD", "1.505");
    check_money(1500, "ISK", "15.00");
    check_money(7, "USD", "0.07");
}

/// The pay-rails fixture is only the `data` of an event; the envelope is added here as Stripe would send it.
fn fixture_event(previous: Option<Value>) -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/real/stripe/charge.refunded.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let mut data: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    if let Some(previous) = previous {
        data["previous_attributes"] = previous;
    }
    json!({
        "id": "evt_3LQOJoKXBGcbgpbZ1bWSkn6N",
        "object": "event",
        "api_version": "2020-08-27",
        "created": 1_658_982_466,
        "type": "charge.refunded",
        "data": data
    })
}

#[test]
fn the_real_charge_refunded_fixture_gives_one_partial_refund() {
    let records = deliver(&fixture_event(None));
    insta::assert_json_snapshot!("charge_refunded_fixture", records);
    assert_eq!(records.len(), 1);
    let refund = &records[0];
    assert_eq!(refund.external_id, "re_3LQOJoKXBGcbgpbZ10i9Mg75");
    assert_eq!(refund.amount, decimal("-5.00"));
    assert_eq!(refund.currency, "USD");
    assert_eq!(refund.kind, PaymentKind::Refund);
    // The charge names `pm_1234` as its payment intent, so that is the payment record's id.
    assert_eq!(refund.original_external_id.as_deref(), Some("pm_1234"));
    assert_eq!(refund.booked_on, day("2022-07-28"));
}

#[test]
fn the_fixture_with_previous_attributes_gives_the_same_refund() {
    let with_previous = deliver(&fixture_event(Some(
        json!({"amount_refunded": 0, "refunded": false}),
    )));
    assert_eq!(with_previous, deliver(&fixture_event(None)));
    let nothing_new = deliver(&fixture_event(Some(json!({"amount_refunded": 500}))));
    assert_eq!(nothing_new, Vec::new());
}

fn charge_with_refunds(refunded: i64, refunds: Option<Value>) -> Value {
    let mut charge = json!({
        "id": "ch_3PzQaLKXBGcbgpbZ0m1y2k3L",
        "object": "charge",
        "amount": 1500,
        "amount_captured": 1500,
        "amount_refunded": refunded,
        "currency": "eur",
        "created": 1_794_000_000,
        "description": "Order ORD-00042",
        "metadata": {"invoice": "INV-2026-007"},
        "payment_intent": "pi_3PzQaLKXBGcbgpbZ0Yh7s9Kd",
        "billing_details": {"name": "Ada Lovelace", "email": "ada@analytical.example"},
        "captured": true,
        "paid": true,
        "refunded": refunded == 1500
    });
    if let Some(refunds) = refunds {
        charge["refunds"] = json!({"object": "list", "data": refunds, "has_more": false});
    }
    charge
}

fn refund(id: &str, amount: i64, created: i64, status: &str) -> Value {
    json!({"id": id, "object": "refund", "amount": amount, "currency": "eur", "created": created,
           "status": status, "charge": "ch_3PzQaLKXBGcbgpbZ0m1y2k3L", "reason": "requested_by_customer"})
}

#[test]
fn a_second_partial_refund_records_only_the_increment() {
    let refunds = json!([
        refund("re_second", 300, 1_794_100_000, "succeeded"),
        refund("re_failed", 999, 1_794_050_000, "failed"),
        refund("re_first", 500, 1_794_000_500, "succeeded"),
    ]);
    let records = deliver(&event(
        "evt_refund_2",
        "charge.refunded",
        charge_with_refunds(800, Some(refunds)),
        Some(json!({"amount_refunded": 500})),
    ));
    assert_eq!(records.len(), 1, "{records:?}");
    let refund = &records[0];
    assert_eq!(refund.external_id, "re_second");
    assert_eq!(refund.amount, decimal("-3.00"));
    assert_eq!(refund.currency, "EUR");
    assert_eq!(
        refund.original_external_id.as_deref(),
        Some("pi_3PzQaLKXBGcbgpbZ0Yh7s9Kd")
    );
    assert_eq!(refund.invoice_refs, vec!["INV-2026-007".to_owned()]);
    assert_eq!(refund.counterparty_name.as_deref(), Some("Ada Lovelace"));
    assert_eq!(refund.status, EntryStatus::Booked);
    assert_eq!(
        refund.source_position.as_deref(),
        Some("evt_refund_2#charge.refunded/refunds/data/0")
    );
}

#[test]
fn a_refund_without_the_list_is_keyed_by_the_cumulative_total() {
    let records = deliver(&event(
        "evt_refund_3",
        "charge.refunded",
        charge_with_refunds(800, None),
        Some(json!({"amount_refunded": 500, "refunded": false})),
    ));
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        records[0].external_id,
        "ch_3PzQaLKXBGcbgpbZ0m1y2k3L:refunded:800"
    );
    assert_eq!(records[0].amount, decimal("-3.00"));
    assert_eq!(records[0].kind, PaymentKind::Refund);
}

#[test]
fn a_pending_refund_is_pending() {
    let records = deliver(&event(
        "evt_refund_4",
        "charge.refunded",
        charge_with_refunds(
            1500,
            Some(json!([refund("re_full", 1500, 1_794_100_000, "pending")])),
        ),
        Some(json!({"amount_refunded": 0})),
    ));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].status, EntryStatus::Pending);
    assert_eq!(records[0].amount, decimal("-15.00"));
}

#[test]
fn a_refund_that_cannot_be_told_apart_is_rejected() {
    let body = event(
        "evt_refund_5",
        "charge.refunded",
        charge_with_refunds(800, None),
        None,
    )
    .to_string();
    check_reject(
        intake(&config(), &signed(body.as_bytes())),
        400,
        "data.previous_attributes.amount_refunded: cannot tell the new refund",
    );
}

fn payment_intent(charge: Value) -> Value {
    json!({
        "id": "pi_3PzQaLKXBGcbgpbZ0Yh7s9Kd",
        "object": "payment_intent",
        "amount": 250000,
        "amount_received": 250000,
        "currency": "eur",
        "created": 1_794_999_000,
        "customer": "cus_QkP0l3dFv2aB9x",
        "description": "Invoice INV-2026-007",
        "metadata": {"invoice": "INV-2026-007", "order_id": "ORD-00042", "invoice_number": "INV-2026-007"},
        "latest_charge": charge,
        "status": "succeeded"
    })
}

fn expanded_charge() -> Value {
    json!({
        "id": "ch_3PzQaLKXBGcbgpbZ0m1y2k3L",
        "object": "charge",
        "amount": 250000,
        "currency": "eur",
        "payment_intent": "pi_3PzQaLKXBGcbgpbZ0Yh7s9Kd",
        "billing_details": {"name": "Analytical Engines Ltd"},
        "captured": true,
        "description": "Invoice INV-2026-007",
        "metadata": {"invoice": "INV-2026-007"},
        "balance_transaction": {
            "id": "txn_3PzQaLKXBGcbgpbZ0c8Vb2Qe", "object": "balance_transaction",
            "amount": 250000, "fee": 3525, "net": 246475, "currency": "eur",
            "available_on": 1_795_219_200, "type": "charge"
        }
    })
}

#[test]
fn payment_intent_succeeded_gives_gross_fee_and_net() {
    let records = deliver(&event(
        "evt_pi_1",
        "payment_intent.succeeded",
        payment_intent(expanded_charge()),
        None,
    ));
    let mut expected = PaymentRecord::new("pi_3PzQaLKXBGcbgpbZ0Yh7s9Kd", decimal("2500.00"), "EUR");
    expected.booked_on = day("2026-11-18");
    expected.value_date = day("2026-11-21");
    expected.counterparty_name = Some("Analytical Engines Ltd".to_owned());
    expected.remittance = Some("Invoice INV-2026-007".to_owned());
    expected.invoice_refs = vec!["INV-2026-007".to_owned(), "ORD-00042".to_owned()];
    expected.gross = Some(decimal("2500.00"));
    expected.fee = Some(decimal("35.25"));
    expected.net = Some(decimal("2464.75"));
    expected.source_position = Some("evt_pi_1#payment_intent.succeeded".to_owned());
    assert_eq!(records, vec![expected]);
}

#[test]
fn charge_and_payment_intent_events_of_one_payment_share_the_external_id() {
    let from_intent = deliver(&event(
        "evt_pi_1",
        "payment_intent.succeeded",
        payment_intent(json!("ch_3PzQaLKXBGcbgpbZ0m1y2k3L")),
        None,
    ));
    let from_charge = deliver(&event(
        "evt_ch_1",
        "charge.succeeded",
        expanded_charge(),
        None,
    ));
    assert_eq!(from_intent.len(), 1);
    assert_eq!(from_charge.len(), 1);
    assert_eq!(from_intent[0].external_id, from_charge[0].external_id);
    assert_eq!(from_charge[0].amount, decimal("2500.00"));
    assert_eq!(from_charge[0].fee, Some(decimal("35.25")));
    assert_eq!(from_charge[0].invoice_refs, vec!["INV-2026-007".to_owned()]);
    // Without the expanded charge nothing is known about fees.
    assert_eq!(from_intent[0].fee, None);
}

#[test]
fn a_legacy_charge_without_payment_intent_is_keyed_by_the_charge() {
    let mut charge = expanded_charge();
    charge["payment_intent"] = Value::Null;
    charge["currency"] = json!("jpy");
    charge["amount"] = json!(15000);
    charge["balance_transaction"] = json!("txn_3PzQaLKXBGcbgpbZ0c8Vb2Qe");
    let records = deliver(&event("evt_ch_2", "charge.succeeded", charge, None));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].external_id, "ch_3PzQaLKXBGcbgpbZ0m1y2k3L");
    assert_eq!(records[0].amount, decimal("15000"));
    assert_eq!(records[0].currency, "JPY");
    assert_eq!(records[0].gross, None);
}

#[test]
fn a_settlement_in_another_currency_leaves_fees_out() {
    let mut charge = expanded_charge();
    charge["balance_transaction"]["currency"] = json!("usd");
    let records = deliver(&event("evt_ch_3", "charge.succeeded", charge, None));
    assert_eq!(
        (records[0].gross, records[0].fee, records[0].net),
        (None, None, None)
    );
}

#[test]
fn an_uncaptured_charge_records_nothing_yet() {
    let mut charge = expanded_charge();
    charge["captured"] = json!(false);
    assert_eq!(
        deliver(&event("evt_ch_4", "charge.succeeded", charge, None)),
        Vec::new()
    );
}

#[test]
fn a_dispute_is_a_negative_chargeback_of_the_payment() {
    let dispute = json!({
        "id": "dp_1PzQbcKXBGcbgpbZ0Qw3rTyU",
        "object": "dispute",
        "amount": 250000,
        "currency": "eur",
        "charge": "ch_3PzQaLKXBGcbgpbZ0m1y2k3L",
        "payment_intent": "pi_3PzQaLKXBGcbgpbZ0Yh7s9Kd",
        "created": 1_794_999_500,
        "reason": "fraudulent",
        "status": "needs_response",
        "metadata": {},
        "balance_transactions": [
            {"id": "txn_dispute", "object": "balance_transaction", "amount": -250000, "fee": 1500,
             "net": -251500, "currency": "eur", "type": "adjustment"}
        ]
    });
    let records = deliver(&event(
        "evt_dp_1",
        "charge.dispute.created",
        dispute.clone(),
        None,
    ));
    assert_eq!(records.len(), 1);
    let chargeback = &records[0];
    assert_eq!(chargeback.external_id, "dp_1PzQbcKXBGcbgpbZ0Qw3rTyU");
    assert_eq!(chargeback.amount, decimal("-2500.00"));
    assert_eq!(chargeback.kind, PaymentKind::Chargeback);
    assert_eq!(chargeback.status, EntryStatus::Booked);
    assert_eq!(
        chargeback.original_external_id.as_deref(),
        Some("pi_3PzQaLKXBGcbgpbZ0Yh7s9Kd")
    );
    assert_eq!(chargeback.fee, Some(decimal("15.00")));
    assert_eq!(
        chargeback.remittance.as_deref(),
        Some("dispute: fraudulent")
    );

    let mut inquiry = dispute;
    inquiry["status"] = json!("warning_needs_response");
    inquiry["payment_intent"] = Value::Null;
    let records = deliver(&event("evt_dp_2", "charge.dispute.created", inquiry, None));
    assert_eq!(records[0].status, EntryStatus::Pending);
    assert_eq!(
        records[0].original_external_id.as_deref(),
        Some("ch_3PzQaLKXBGcbgpbZ0m1y2k3L")
    );
}

fn stripe_invoice() -> Value {
    json!({
        "id": "in_1PzQ9xKXBGcbgpbZ0hJ4kL2m",
        "object": "invoice",
        "number": "A1B2C3D4-0007",
        "amount_due": 11900,
        "amount_paid": 11900,
        "amount_remaining": 0,
        "currency": "eur",
        "customer": "cus_QkP0l3dFv2aB9x",
        "customer_name": "Orbit Analytics GmbH",
        "customer_email": "billing@orbit.example",
        "description": null,
        "metadata": {"invoice_number": "INV-2026-011"},
        "payment_intent": "pi_3PzQ9yKXBGcbgpbZ1aB2cD3e",
        "charge": "ch_3PzQ9yKXBGcbgpbZ1fG4hI5j",
        "status": "paid",
        "status_transitions": {"finalized_at": 1_794_500_000, "paid_at": 1_794_913_200}
    })
}

#[test]
fn invoice_paid_is_keyed_by_its_payment_intent_and_carries_the_reference() {
    let records = deliver(&event("evt_in_1", "invoice.paid", stripe_invoice(), None));
    let mut expected = PaymentRecord::new("pi_3PzQ9yKXBGcbgpbZ1aB2cD3e", decimal("119.00"), "EUR");
    expected.booked_on = day("2026-11-17");
    expected.counterparty_name = Some("Orbit Analytics GmbH".to_owned());
    expected.remittance = Some("stripe invoice A1B2C3D4-0007".to_owned());
    expected.invoice_refs = vec!["INV-2026-011".to_owned()];
    expected.source_position = Some("evt_in_1#invoice.paid".to_owned());
    assert_eq!(records, vec![expected]);
}

#[test]
fn invoice_paid_on_newer_api_versions_uses_the_payments_list() {
    let mut invoice = stripe_invoice();
    let object = invoice
        .as_object_mut()
        .unwrap_or_else(|| panic!("not an object"));
    object.remove("payment_intent");
    object.remove("charge");
    invoice["payments"] = json!({"object": "list", "data": [
        {"id": "inpay_1", "object": "invoice_payment",
         "payment": {"type": "payment_intent", "payment_intent": "pi_3PzQ9yKXBGcbgpbZ1aB2cD3e"}}
    ]});
    let records = deliver(&event("evt_in_2", "invoice.paid", invoice.clone(), None));
    assert_eq!(records[0].external_id, "pi_3PzQ9yKXBGcbgpbZ1aB2cD3e");
    invoice["payments"] = json!({"object": "list", "data": []});
    invoice["amount_paid"] = json!(0);
    assert_eq!(
        deliver(&event("evt_in_3", "invoice.paid", invoice, None)),
        Vec::new()
    );
}

#[test]
fn invoice_keys_are_configurable() {
    let config = Config::from_json(
        json!({"secret": SECRET, "invoice_keys": ["order_id"]}),
        |_| None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let body = event(
        "evt_pi_2",
        "payment_intent.succeeded",
        payment_intent(Value::Null),
        None,
    )
    .to_string();
    let IntakeOutcome::Accept { records, .. } = intake(&config, &signed(body.as_bytes())) else {
        panic!("rejected");
    };
    let Some(Record::Payment(payment)) = records.first() else {
        panic!("no payment in {records:?}");
    };
    assert_eq!(payment.invoice_refs, vec!["ORD-00042".to_owned()]);
}

#[test]
fn unknown_event_types_are_accepted_with_no_records() {
    for kind in ["customer.created", "payout.paid", "payment_intent.created"] {
        let records = deliver(&event(
            "evt_other",
            kind,
            json!({"id": "x", "object": "thing"}),
            None,
        ));
        assert_eq!(records, Vec::new(), "{kind}");
    }
}

#[test]
fn bad_or_stale_signatures_record_nothing() {
    let body = event(
        "evt_pi_1",
        "payment_intent.succeeded",
        payment_intent(Value::Null),
        None,
    )
    .to_string();
    let body = body.as_bytes();
    let stale = NOW - 301;
    let cases = [
        (None, "stripe signature header missing"),
        (
            Some(format!("t={stale},v1={}", sign(SECRET, stale, body))),
            "stripe signature timestamp is outside",
        ),
        (
            Some(format!("t={NOW},v1={}", sign("whsec_wrong", NOW, body))),
            "stripe signature does not match",
        ),
        (
            Some("garbage".to_owned()),
            "stripe signature header has no timestamp",
        ),
    ];
    for (header, words) in cases {
        check_reject(intake(&config(), &request(body, header)), 401, words);
    }
    let tampered = String::from_utf8_lossy(body).replace("250000", "1");
    let header = format!("t={NOW},v1={}", sign(SECRET, NOW, body));
    check_reject(
        intake(&config(), &request(tampered.as_bytes(), Some(header))),
        401,
        "does not match",
    );
}

fn check_bad_event(event: Value, words: &str) {
    check_reject(
        intake(&config(), &signed(event.to_string().as_bytes())),
        400,
        words,
    );
}

#[test]
fn malformed_events_are_rejected_naming_the_field() {
    let mut float_amount = payment_intent(Value::Null);
    float_amount["amount_received"] = json!(15.5);
    check_bad_event(
        event("evt_b1", "payment_intent.succeeded", float_amount, None),
        "data.object.amount_received: is not a whole number",
    );
    let mut negative = payment_intent(Value::Null);
    negative["amount_received"] = json!(-100);
    check_bad_event(
        event("evt_b2", "payment_intent.succeeded", negative, None),
        "amount_received: is negative",
    );
    let mut currency = payment_intent(Value::Null);
    currency["currency"] = json!("euro");
    check_bad_event(
        event("evt_b3", "payment_intent.succeeded", currency, None),
        "data.object.currency: `euro` is not a currency code",
    );
    let mut fee = expanded_charge();
    fee["balance_transaction"]["fee"] = json!("35.25");
    check_bad_event(
        event("evt_b4", "charge.succeeded", fee, None),
        "data.object.balance_transaction.fee: is not a whole number",
    );
    check_bad_event(
        json!({"id": "evt_b5", "type": "charge.succeeded"}),
        "stripe event data: is missing",
    );
    check_bad_event(
        json!({"type": "charge.succeeded", "data": {"object": {}}}),
        "stripe event id: is missing",
    );
    check_bad_event(json!([1, 2]), "stripe event id: is missing");
    let not_json = b"{\"id\": \"evt_";
    check_reject(
        intake(&config(), &signed(not_json)),
        400,
        "stripe event is not valid json",
    );
}

#[test]
fn the_plugin_trait_configures_and_answers_intake() {
    assert_eq!(Stripe::manifest().name, "stripe");
    let error = Stripe::configure(json!({"secret": SECRET, "tolerance": 10})).err();
    assert_eq!(
        error.and_then(|error| error.location),
        Some("tolerance".to_owned())
    );
    let plugin = Stripe::configure(json!({"secret": SECRET})).unwrap_or_else(|e| panic!("{e}"));
    let mut get = signed(b"{}");
    get.method = "GET".to_owned();
    let outcome = plugin.intake(get).unwrap_or_else(|e| panic!("{e}"));
    check_reject(outcome, 405, "method GET is not allowed");
    let body = fixture_event(None).to_string();
    let outcome = plugin
        .intake(signed(body.as_bytes()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(outcome, IntakeOutcome::Accept { records, .. } if records.len() == 1));
}
