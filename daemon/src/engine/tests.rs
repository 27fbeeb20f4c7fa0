//! Engine tests: commands against a real sled store in a temp dir, with a clock the test moves.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, TimeZone, Utc};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use serde_json::{json, Value};
use settled_plugin_api::{PaymentRecord, Record};

use super::*;
use crate::domain::invoice::{Invoice, PaymentStatus};
use crate::domain::lead::LeadInput;
use crate::store::StoreOptions;

struct TestClock(Mutex<DateTime<Utc>>);

impl Clock for Arc<TestClock> {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

struct World {
    engine: Engine,
    clock: Arc<TestClock>,
    _dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_path_buf();
        World::open(dir, &data)
    }

    /// A world whose store is at `data` (inside `dir`, which the world keeps).
    fn open(dir: tempfile::TempDir, data: &std::path::Path) -> World {
        let store = Store::open(data, &StoreOptions::default()).unwrap();
        let clock = Arc::new(TestClock(Mutex::new(
            Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap(),
        )));
        let engine = Engine::new(store, Config::default(), Box::new(clock.clone())).unwrap();
        World {
            engine,
            clock,
            _dir: dir,
        }
    }

    /// The process dies and starts again: the overlay of deferred writes is lost, the engine replays the journal.
    fn restart(&mut self) {
        let store = self.engine.store().clone();
        store.clear_deferred();
        self.engine = Engine::new(store, Config::default(), Box::new(self.clock.clone())).unwrap();
    }

    fn advance(&self, days: i64) {
        *self.clock.0.lock().unwrap() += Duration::days(days);
    }

    fn events(&self) -> Vec<String> {
        self.engine
            .store()
            .events_after(0, 10_000)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }

    /// A converted lead's opportunity id.
    async fn opportunity(&self, email: &str) -> String {
        self.opportunity_for(email, None).await
    }

    async fn opportunity_for(&self, email: &str, company: Option<&str>) -> String {
        let (lead, _) = self
            .engine
            .capture_lead(
                &LeadInput {
                    name: "Buyer".into(),
                    email: Some(email.into()),
                    company: company.map(str::to_string),
                    source: "web".into(),
                    ..LeadInput::default()
                },
                "test",
            )
            .await
            .unwrap();
        let input = json!({"opportunity": {"name": "deal", "value": "100.00", "currency": "EUR", "expected_close": null}});
        let conv = self
            .engine
            .convert_lead(&lead.id, serde_json::from_value(input).unwrap(), "test")
            .await
            .unwrap();
        conv.opportunity_id
    }

    /// Lead -> converted -> quote (sent, accepted) -> order; returns the order id.
    async fn order(&self, company: &str, lines: Value) -> String {
        let email = format!("buyer@{}.example", company.to_lowercase().replace(' ', "-"));
        let opportunity_id = self.opportunity_for(&email, Some(company)).await;
        let q = self
            .engine
            .create_quote(
                serde_json::from_value(
                    json!({"opportunity_id": opportunity_id, "currency": "EUR", "lines": lines}),
                )
                .unwrap(),
                "test",
            )
            .await
            .unwrap();
        self.engine
            .quote_action(&q.id, "send", None, "test")
            .await
            .unwrap();
        self.engine
            .quote_action(&q.id, "accept", None, "test")
            .await
            .unwrap();
        let o = self
            .engine
            .create_order(
                serde_json::from_value(json!({"quote_id": q.id})).unwrap(),
                "test",
            )
            .await
            .unwrap();
        o.id
    }

    async fn issued_invoice(&self, company: &str, amount: &str) -> Invoice {
        let order = self
            .order(company, json!([{"description": "work", "quantity": "1", "unit_price": amount, "tax_rate": "0"}]))
            .await;
        let inv = self
            .engine
            .create_invoice(
                serde_json::from_value(json!({"order_id": order})).unwrap(),
                "test",
            )
            .await
            .unwrap();
        self.engine
            .issue_invoice(&inv.id, IssueInput::default(), "test")
            .await
            .unwrap()
    }

    fn invoice(&self, id: &str) -> Value {
        self.engine.show("invoice", id).unwrap()
    }

    async fn pay(&self, body: Value) -> EngineResult<(crate::domain::payment::Payment, bool)> {
        self.engine
            .record_payment(serde_json::from_value(body).unwrap(), "test")
            .await
    }
}

fn status(v: &Value) -> &str {
    v["payment_status"].as_str().unwrap()
}

#[tokio::test]
async fn a_repeated_capture_with_the_same_email_merges_into_the_open_lead() {
    let w = World::new();
    let input = LeadInput {
        name: "Ada".into(),
        email: Some("ada@example.com".into()),
        source: "web".into(),
        ..LeadInput::default()
    };
    let (first, dup1) = w.engine.capture_lead(&input, "test").await.unwrap();
    let mut again = input.clone();
    again.email = Some(" ADA@example.com ".into());
    again.phone = Some("+44 1".into());
    let (second, dup2) = w.engine.capture_lead(&again, "test").await.unwrap();
    assert!(!dup1);
    assert!(dup2);
    assert_eq!(first.id, second.id);
    assert_eq!(second.phone.as_deref(), Some("+44 1"));
    assert_eq!(w.engine.store().count("lead"), 1);
}

#[tokio::test]
async fn conversion_reuses_the_account_with_the_same_company_and_the_contact_with_the_same_email() {
    let w = World::new();
    let mk = |email: &str, company: &str| LeadInput {
        name: "P".into(),
        email: Some(email.into()),
        company: Some(company.into()),
        source: "web".into(),
        ..LeadInput::default()
    };
    let opp = || {
        serde_json::from_value::<ConvertInput>(json!({"opportunity": {"name": "d", "value": "1.00", "currency": "EUR", "expected_close": null}})).unwrap()
    };
    let (a, _) = w
        .engine
        .capture_lead(&mk("a@acme.example", "ACME, Inc."), "t")
        .await
        .unwrap();
    let ca = w.engine.convert_lead(&a.id, opp(), "t").await.unwrap();
    let (b, _) = w
        .engine
        .capture_lead(&mk("b@acme.example", "Acme"), "t")
        .await
        .unwrap();
    let cb = w.engine.convert_lead(&b.id, opp(), "t").await.unwrap();
    assert_eq!(ca.account_id, cb.account_id);
    assert!(cb.account_reused);
    assert_ne!(ca.contact_id, cb.contact_id);
    // A converted lead is final: converting again is a conflict and changes nothing.
    let before = w.events().len();
    let err = w.engine.convert_lead(&a.id, opp(), "t").await.unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::Domain(crate::domain::DomainError::Transition { .. })
        ),
        "{err}"
    );
    assert_eq!(w.events().len(), before);
    assert_eq!(w.engine.store().count("opportunity"), 2);
}

#[tokio::test]
async fn an_order_cannot_be_made_from_a_sent_but_not_accepted_quote() {
    let w = World::new();
    let opportunity_id = w.opportunity("x@x.example").await;
    let q = w
        .engine
        .create_quote(
            serde_json::from_value(json!({"opportunity_id": opportunity_id, "lines": [{"description": "a", "quantity": "3", "unit_price": "33.335", "tax_rate": "0"}]})).unwrap(),
            "t",
        )
        .await
        .unwrap();
    assert_eq!(
        q.totals.total,
        dec!(100.01),
        "3 x 33.335 rounds commercially once per line net"
    );
    w.engine
        .quote_action(&q.id, "send", None, "t")
        .await
        .unwrap();
    let err = w
        .engine
        .create_order(
            serde_json::from_value(json!({"quote_id": q.id})).unwrap(),
            "t",
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("status sent"), "{err}");
    assert_eq!(w.engine.store().count("order"), 0);
}

#[tokio::test]
async fn issuing_twice_is_refused_and_keeps_the_first_number() {
    let w = World::new();
    let inv = w.issued_invoice("Twice", "10.00").await;
    assert_eq!(inv.number.as_deref(), Some("INV-2026-001"));
    assert!(inv
        .rf_reference
        .as_deref()
        .is_some_and(crate::domain::rf::is_valid));
    let err = w
        .engine
        .issue_invoice(&inv.id, IssueInput::default(), "t")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("INV-2026-001"), "{err}");
}

#[tokio::test]
async fn twenty_concurrent_issues_get_twenty_distinct_consecutive_numbers() {
    let w = World::new();
    let order = w
        .order("Many", json!([{"description": "unit", "quantity": "20", "unit_price": "5.00", "tax_rate": "0"}]))
        .await;
    let mut drafts = Vec::new();
    for _ in 0..20 {
        let inv = w
            .engine
            .create_invoice(
                serde_json::from_value(
                    json!({"order_id": order, "lines": [{"line_no": 1, "quantity": "1"}]}),
                )
                .unwrap(),
                "t",
            )
            .await
            .unwrap();
        drafts.push(inv.id);
    }
    let tasks: Vec<_> = drafts
        .into_iter()
        .map(|id| {
            let e = w.engine.clone();
            tokio::spawn(async move {
                e.issue_invoice(&id, IssueInput::default(), "t")
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut numbers = Vec::new();
    for t in tasks {
        numbers.push(t.await.unwrap().number.unwrap());
    }
    numbers.sort();
    let expected: Vec<String> = (1..=20).map(|n| format!("INV-2026-{n:03}")).collect();
    assert_eq!(numbers, expected);
    // Nothing is left to invoice: a 21st invoice is refused.
    assert!(w
        .engine
        .create_invoice(
            serde_json::from_value(json!({"order_id": order})).unwrap(),
            "t"
        )
        .await
        .is_err());
}

#[tokio::test]
async fn partial_payment_then_overpayment_moves_the_surplus_to_the_customer_credit() {
    let w = World::new();
    let inv = w.issued_invoice("Payer", "100.00").await;
    let (_, dup) = w
        .pay(json!({"amount": "40.00", "currency": "EUR", "allocations": [{"invoice_id": inv.id}], "external_id": "p1"}))
        .await
        .unwrap();
    assert!(!dup);
    assert_eq!(status(&w.invoice(&inv.id)), "partially_paid");
    w.pay(json!({"amount": "70.00", "currency": "EUR", "allocations": [{"invoice_id": inv.id}]}))
        .await
        .unwrap();
    let v = w.invoice(&inv.id);
    assert_eq!(status(&v), "paid");
    assert_eq!(v["balance"], "0.00");
    let account = w.engine.show("account", &inv.account_id).unwrap();
    assert_eq!(account["credit_balance"]["EUR"], "10.00");
    // The same external id again is recognised, not counted twice.
    let (_, dup) = w
        .pay(json!({"amount": "40.00", "currency": "EUR", "allocations": [{"invoice_id": inv.id}], "external_id": "p1"}))
        .await
        .unwrap();
    assert!(dup);
    assert_eq!(w.engine.store().count("payment"), 2);
    assert!(w
        .events()
        .contains(&"invoice.payment_status_changed".to_string()));
}

#[tokio::test]
async fn a_payment_in_another_currency_is_refused_and_changes_nothing() {
    let w = World::new();
    let inv = w.issued_invoice("Fx", "100.00").await;
    let before = w.events().len();
    let err = w
        .pay(
            json!({"amount": "100.00", "currency": "USD", "allocations": [{"invoice_id": inv.id}]}),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::Domain(crate::domain::DomainError::CurrencyMismatch { .. })
        ),
        "{err}"
    );
    assert_eq!(w.events().len(), before);
    assert_eq!(status(&w.invoice(&inv.id)), "unpaid");
}

#[tokio::test]
async fn negative_non_numeric_and_over_precise_amounts_are_refused_naming_the_field() {
    let w = World::new();
    for amount in ["-5.00", "abc", "1.001", "0"] {
        let err = w
            .pay(json!({"amount": amount, "currency": "EUR"}))
            .await
            .unwrap_err();
        match err {
            EngineError::Domain(crate::domain::DomainError::Invalid { field, .. }) => {
                assert_eq!(field, "amount", "{amount}")
            }
            other => panic!("{amount}: {other}"),
        }
    }
    assert_eq!(w.engine.store().count("payment"), 0);
}

#[tokio::test]
async fn voiding_an_invoice_gives_its_quantities_back_to_the_order() {
    let w = World::new();
    let order = w
        .order("Reissue", json!([{"description": "work", "quantity": "3", "unit_price": "10.00", "tax_rate": "0"}]))
        .await;
    let create = || {
        w.engine.create_invoice(
            serde_json::from_value(json!({"order_id": order})).unwrap(),
            "test",
        )
    };
    let first = create().await.unwrap();
    assert!(
        create().await.is_err(),
        "the whole order is billed by the first invoice"
    );
    w.engine.void_invoice(&first.id, None, "t").await.unwrap();
    let again = create().await.unwrap();
    assert_eq!(again.totals.total, first.totals.total);
    assert_ne!(again.id, first.id);
}

#[tokio::test]
async fn paying_a_void_invoice_is_a_conflict() {
    let w = World::new();
    let inv = w.issued_invoice("Voided", "10.00").await;
    w.engine.void_invoice(&inv.id, None, "t").await.unwrap();
    assert_eq!(status(&w.invoice(&inv.id)), "void");
    let err = w
        .pay(json!({"amount": "10.00", "currency": "EUR", "allocations": [{"invoice_id": inv.id}]}))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::Domain(crate::domain::DomainError::Transition { .. })
        ),
        "{err}"
    );
}

#[tokio::test]
async fn reversing_a_payment_reopens_the_invoice_by_a_compensating_entry() {
    let w = World::new();
    let inv = w.issued_invoice("Reverse", "50.00").await;
    let (pay, _) = w
        .pay(json!({"amount": "50.00", "currency": "EUR", "allocations": [{"invoice_id": inv.id}]}))
        .await
        .unwrap();
    assert_eq!(status(&w.invoice(&inv.id)), "paid");
    w.engine
        .reverse_payment(&pay.id, Default::default(), "t")
        .await
        .unwrap();
    let v = w.invoice(&inv.id);
    assert_eq!(status(&v), "unpaid");
    let amounts: Vec<&str> = v["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["amount"].as_str().unwrap())
        .collect();
    assert_eq!(
        amounts,
        vec!["50.00", "-50.00"],
        "the original allocation stays, a compensating one undoes it"
    );
    assert!(
        w.engine
            .reverse_payment(&pay.id, Default::default(), "t")
            .await
            .is_err(),
        "a payment is reversed once"
    );
}

#[tokio::test]
async fn quotes_expire_and_invoices_become_overdue_when_time_passes() {
    let w = World::new();
    let inv = w.issued_invoice("Late", "10.00").await;
    let opportunity_id = w.opportunity("q@q.example").await;
    let q = w
        .engine
        .create_quote(
            serde_json::from_value(json!({"opportunity_id": opportunity_id, "valid_until": "2026-03-10", "lines": [{"description": "a", "quantity": "1", "unit_price": "1.00", "tax_rate": "0"}]})).unwrap(),
            "t",
        )
        .await
        .unwrap();
    w.engine
        .quote_action(&q.id, "send", None, "t")
        .await
        .unwrap();
    crate::scheduler::tick(&w.engine).await;
    assert_eq!(w.engine.show("quote", &q.id).unwrap()["status"], "sent");
    assert_eq!(status(&w.invoice(&inv.id)), "unpaid");
    w.advance(31);
    crate::scheduler::tick(&w.engine).await;
    assert_eq!(w.engine.show("quote", &q.id).unwrap()["status"], "expired");
    assert_eq!(status(&w.invoice(&inv.id)), "overdue");
    let events = w.events();
    assert!(events.contains(&"quote.expired".to_string()));
    let overdue_events = w
        .engine
        .store()
        .events_after(0, 10_000)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "invoice.payment_status_changed" && e.data["to"] == "overdue")
        .count();
    assert_eq!(overdue_events, 1);
    // A second tick announces nothing new.
    crate::scheduler::tick(&w.engine).await;
    assert_eq!(w.events().len(), events.len());
}

fn payment_record(id: &str, amount: &str, payer: &str, remittance: &str) -> Record {
    let mut r = PaymentRecord::new(id, amount.parse().unwrap(), "EUR");
    r.remittance = Some(remittance.into());
    r.counterparty_name = Some(payer.into());
    Record::Payment(r)
}

#[tokio::test]
async fn ingested_payments_match_by_invoice_number_and_a_reimport_changes_nothing() {
    let w = World::new();
    let a = w.issued_invoice("Alpha", "120.00").await;
    let b = w.issued_invoice("Beta", "80.00").await;
    let records = vec![
        payment_record("s1", "120.00", "Alpha", "payment for inv 2026/1 thanks"),
        payment_record("s2", "30.00", "Beta", "INV2026002 part one"),
    ];
    let s1 = w
        .engine
        .ingest("bank", "camt", Some("s.xml"), records.clone())
        .await
        .unwrap();
    assert_eq!(s1.new, 2, "{s1:?}");
    assert_eq!(s1.partially_matched, 1, "{s1:?}");
    assert_eq!(status(&w.invoice(&a.id)), "paid");
    assert_eq!(status(&w.invoice(&b.id)), "partially_paid");
    let events = w.events().len();
    let s2 = w
        .engine
        .ingest("bank", "camt", Some("s.xml"), records)
        .await
        .unwrap();
    assert_eq!((s2.new, s2.duplicates), (0, 2));
    assert_eq!(w.events().len(), events);
    assert_eq!(w.invoice(&b.id)["amount_paid"], "30.00");
}

#[tokio::test]
async fn two_open_invoices_with_the_same_amount_and_no_reference_wait_in_review() {
    let w = World::new();
    let a = w.issued_invoice("Twin", "99.00").await;
    let order = w
        .order("Twin", json!([{"description": "more", "quantity": "1", "unit_price": "99.00", "tax_rate": "0"}]))
        .await;
    let b = w
        .engine
        .create_invoice(
            serde_json::from_value(json!({"order_id": order})).unwrap(),
            "t",
        )
        .await
        .unwrap();
    w.engine
        .issue_invoice(&b.id, IssueInput::default(), "t")
        .await
        .unwrap();
    let mut r = PaymentRecord::new("amb-1", dec!(99.00), "EUR");
    r.counterparty_name = Some("Twin".into());
    let summary = w
        .engine
        .ingest("bank", "camt", None, vec![Record::Payment(r)])
        .await
        .unwrap();
    assert_eq!(summary.review, 1);
    assert_eq!(status(&w.invoice(&a.id)), "unpaid");
    assert_eq!(status(&w.invoice(&b.id)), "unpaid");
    let queue = w
        .engine
        .list(
            "review",
            &ListQuery {
                status: Some("open".into()),
                ..ListQuery::default()
            },
        )
        .unwrap();
    assert_eq!(queue.len(), 1);
    assert!(queue[0]["suggestions"].as_array().unwrap().len() >= 2);
    // A person picks one: it is paid, the item closes.
    let id = queue[0]["id"].as_str().unwrap();
    w.engine
        .review_allocate(
            id,
            serde_json::from_value(json!({"allocations": [{"invoice_id": b.id}]})).unwrap(),
            "t",
        )
        .await
        .unwrap();
    assert_eq!(status(&w.invoice(&b.id)), "paid");
    assert_eq!(
        w.engine
            .list(
                "review",
                &ListQuery {
                    status: Some("open".into()),
                    ..ListQuery::default()
                }
            )
            .unwrap()
            .len(),
        0
    );
}

#[tokio::test]
async fn a_refund_of_an_ingested_payment_reopens_what_it_paid() {
    let w = World::new();
    let inv = w.issued_invoice("Refunded", "25.00").await;
    let mut pay = PaymentRecord::new("ch_1", dec!(25.00), "EUR");
    pay.invoice_refs = vec![inv.number.clone().unwrap()];
    w.engine
        .ingest("stripe", "stripe", None, vec![Record::Payment(pay)])
        .await
        .unwrap();
    assert_eq!(status(&w.invoice(&inv.id)), "paid");
    let mut refund = PaymentRecord::new("re_1", dec!(-25.00), "EUR");
    refund.kind = settled_plugin_api::PaymentKind::Refund;
    refund.original_external_id = Some("ch_1".into());
    let s = w
        .engine
        .ingest("stripe", "stripe", None, vec![Record::Payment(refund)])
        .await
        .unwrap();
    assert_eq!(s.reversed, 1);
    assert_eq!(status(&w.invoice(&inv.id)), "refunded");
}

#[tokio::test]
async fn pending_entries_never_mark_anything_paid() {
    let w = World::new();
    let inv = w.issued_invoice("Pending", "10.00").await;
    let mut r = PaymentRecord::new("pend-1", dec!(10.00), "EUR");
    r.status = settled_plugin_api::EntryStatus::Pending;
    r.structured_reference = inv.rf_reference.clone();
    let s = w
        .engine
        .ingest("bank", "camt", None, vec![Record::Payment(r)])
        .await
        .unwrap();
    assert_eq!(s.ignored, 1);
    assert_eq!(status(&w.invoice(&inv.id)), "unpaid");
    assert!(matches!(
        crate::domain::invoice::payment_status(
            &w.engine.get::<Invoice>("invoice", &inv.id).unwrap(),
            w.engine.today()
        ),
        PaymentStatus::Unpaid
    ));
}

#[tokio::test]
async fn an_api_payment_without_allocations_is_reconciled_by_its_reference() {
    let w = World::new();
    let inv = w.issued_invoice("Auto", "42.00").await;
    let (pay, dup) = w
        .pay(json!({"amount": "42.00", "currency": "EUR", "payer": "Auto", "reference": inv.rf_reference, "external_id": "bank-77"}))
        .await
        .unwrap();
    assert!(!dup);
    assert_eq!(pay.allocations.len(), 1);
    assert_eq!(status(&w.invoice(&inv.id)), "paid");
    let (again, dup) = w
        .pay(json!({"amount": "42.00", "currency": "EUR", "payer": "Auto", "reference": inv.rf_reference, "external_id": "bank-77"}))
        .await
        .unwrap();
    assert!(dup);
    assert_eq!(again.id, pay.id);
}

#[tokio::test]
async fn many_payments_to_one_invoice_in_one_chunk_all_count() {
    let w = World::new();
    let inv = w.issued_invoice("Chunky", "10.00").await;
    let number = inv.number.clone().unwrap();
    let records: Vec<Record> = (0..150)
        .map(|i| {
            payment_record(
                &format!("c{i}"),
                "0.10",
                "Chunky",
                &format!("{number} part {i}"),
            )
        })
        .collect();
    let s = w
        .engine
        .ingest("bank", "bank-csv", None, records)
        .await
        .unwrap();
    assert_eq!(s.new, 150, "{s:?}");
    let v = w.invoice(&inv.id);
    assert_eq!(v["payment_status"], "paid", "100 x 0.10 pay it");
    assert_eq!(v["amount_paid"], "10.00");
    assert_eq!(w.engine.store().count("allocation"), 100);
    // The other 50 name an invoice that is already paid: a person decides (refund, or credit).
    assert_eq!(s.review, 50, "{s:?}");
}

#[tokio::test]
async fn a_restarted_engine_rebuilds_the_open_invoice_index_from_the_store() {
    let w = World::new();
    let a = w.issued_invoice("Restart A", "10.00").await;
    let b = w.issued_invoice("Restart B", "20.00").await;
    w.pay(json!({"amount": "20.00", "currency": "EUR", "allocations": [{"invoice_id": b.id}]}))
        .await
        .unwrap();
    assert_eq!(w.engine.open_invoice_count(), 1);
    let restarted = Engine::new(
        w.engine.store().clone(),
        Config::default(),
        Box::new(w.clock.clone()),
    )
    .unwrap();
    assert_eq!(restarted.open_invoice_count(), 1);
    // And it still matches by number after the restart.
    let summary = restarted
        .ingest(
            "bank",
            "camt",
            None,
            vec![payment_record(
                "r1",
                "10.00",
                "Restart A",
                &a.number.clone().unwrap(),
            )],
        )
        .await
        .unwrap();
    assert_eq!(summary.matched.values().sum::<u64>(), 1, "{summary:?}");
}

#[tokio::test]
async fn an_ingested_payment_defers_its_invoice_and_a_restart_replays_it_from_the_journal() {
    let mut w = World::new();
    let inv = w.issued_invoice("Journal", "100.00").await;
    let number = inv.number.clone().unwrap();
    let pay = |id: &str, amount: &str| payment_record(id, amount, "Journal", &number);
    w.engine
        .ingest("bank", "camt", None, vec![pay("j1", "30.00")])
        .await
        .unwrap();
    assert!(
        w.engine.store().deferred_len() >= 2,
        "the invoice and its open-invoice row wait in memory"
    );
    assert_eq!(w.invoice(&inv.id)["amount_paid"], "30.00");
    w.restart();
    assert_eq!(
        w.engine.store().deferred_len(),
        2,
        "replayed: the invoice and its open-invoice row"
    );
    let v = w.invoice(&inv.id);
    assert_eq!(
        (v["amount_paid"].as_str(), status(&v)),
        (Some("30.00"), "partially_paid")
    );
    assert_eq!(w.engine.open_invoice_count(), 1);
    assert!(w.engine.checkpoint().unwrap() >= 2);
    assert_eq!(w.engine.store().deferred_len(), 0);
    // After the checkpoint, a payment that closes the invoice; the process dies before the next one.
    w.engine
        .ingest("bank", "camt", None, vec![pay("j2", "70.00")])
        .await
        .unwrap();
    w.restart();
    let v = w.invoice(&inv.id);
    assert_eq!(
        (v["amount_paid"].as_str(), status(&v)),
        (Some("100.00"), "paid")
    );
    assert_eq!(
        v["allocations"].as_array().unwrap().len(),
        2,
        "each allocation once: {v}"
    );
    assert_eq!(w.engine.open_invoice_count(), 0);
    // A replay over a store whose invoice was written through meanwhile counts nothing twice.
    w.engine.checkpoint().unwrap();
    w.restart();
    w.restart();
    assert_eq!(w.invoice(&inv.id)["amount_paid"], "100.00");
    let paid = w
        .events()
        .iter()
        .filter(|e| e.as_str() == "invoice.payment_status_changed")
        .count();
    assert_eq!(paid, 3, "unpaid, partially paid, paid: each announced once");
}

#[tokio::test]
async fn an_external_id_is_recognised_whether_the_payment_was_allocated_by_hand_or_automatically() {
    let w = World::new();
    let inv = w.issued_invoice("Either Way", "30.00").await;
    let (first, dup) = w
        .pay(json!({"amount": "30.00", "currency": "EUR", "allocations": [{"invoice_id": inv.id}], "external_id": "bank-9"}))
        .await
        .unwrap();
    assert!(!dup);
    let (again, dup) = w
        .pay(json!({"amount": "30.00", "currency": "EUR", "payer": "Either Way", "reference": inv.number, "external_id": "bank-9"}))
        .await
        .unwrap();
    assert!(dup);
    assert_eq!(again.id, first.id);
    assert_eq!(w.engine.store().count("payment"), 1);
}

#[tokio::test]
async fn a_write_set_that_fails_after_linking_a_new_payer_leaves_no_payer_link_in_memory() {
    let w = World::new();
    let failed: EngineResult<()> = w
        .engine
        .write(|tx| {
            tx.link_payer("Fresh Payer GmbH", "acc_00000009");
            Err(EngineError::NotFound {
                entity: "invoice",
                id: "inv_00000099".into(),
            })
        })
        .await;
    assert!(failed.is_err());
    let linked = w
        .engine
        .lock_state()
        .index
        .payer_account("fresh payer gmbh")
        .map(str::to_string);
    assert_eq!(linked, None);
}

#[tokio::test]
async fn a_write_set_that_fails_after_relinking_a_payer_keeps_the_previous_link() {
    let w = World::new();
    w.engine
        .write(|tx| {
            tx.link_payer("Old Payer", "acc_00000001");
            Ok(())
        })
        .await
        .unwrap();
    let failed: EngineResult<()> = w
        .engine
        .write(|tx| {
            tx.link_payer("Old Payer", "acc_00000002");
            Err(EngineError::NotFound {
                entity: "invoice",
                id: "inv_00000099".into(),
            })
        })
        .await;
    assert!(failed.is_err());
    let linked = w
        .engine
        .lock_state()
        .index
        .payer_account("old payer")
        .map(str::to_string);
    assert_eq!(linked.as_deref(), Some("acc_00000001"));
}

#[tokio::test]
async fn a_flush_that_fails_on_a_full_disk_leaves_no_trace_in_the_store_index_counters_or_series() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let Some(mount) = crate::store::full_disk::Tmpfs::mount(&data, "8m") else {
        eprintln!("skipping the full-disk engine test: mounting a small filesystem needs root");
        return;
    };
    let w = World::open(dir, &data);
    let first = w.issued_invoice("Full A", "10.00").await;
    assert_eq!(first.number.as_deref(), Some("INV-2026-001"));
    let mut drafts = Vec::new();
    for n in 0..40 {
        let order = w
            .order(&format!("Full {n}"), json!([{"description": "work", "quantity": "1", "unit_price": "5.00", "tax_rate": "0"}]))
            .await;
        let inv = w
            .engine
            .create_invoice(
                serde_json::from_value(json!({"order_id": order})).unwrap(),
                "test",
            )
            .await
            .unwrap();
        drafts.push(inv.id);
    }

    // sled may put the first writes into file pages it already holds: issue until one fails.
    crate::store::full_disk::fill(&data.join("ballast"));
    let mut issued = 0;
    let failed_id = loop {
        let id = &drafts[issued];
        match w
            .engine
            .issue_invoice(id, IssueInput::default(), "test")
            .await
        {
            Ok(_) => issued += 1,
            Err(e) => {
                assert!(
                    matches!(e, EngineError::Store(StoreError::WriteFailed { .. })),
                    "{e}"
                );
                break id.clone();
            }
        }
        assert!(
            issued < drafts.len(),
            "every issue succeeded on a full disk"
        );
    };
    let failure = w.engine.store().failure().expect("the store closed itself");
    assert!(
        failure
            .reason
            .contains("the disk is full (no space left on device)"),
        "{failure:?}"
    );
    assert!(
        w.engine.lock_state().index.get(&failed_id).is_none(),
        "the failed issue is not in the reconciliation index"
    );
    assert!(matches!(
        w.engine.show("invoice", &failed_id),
        Err(EngineError::Store(StoreError::Unavailable { .. }))
    ));
    let refused = w
        .engine
        .capture_lead(
            &LeadInput {
                name: "Late".into(),
                email: Some("late@full.example".into()),
                source: "web".into(),
                ..LeadInput::default()
            },
            "test",
        )
        .await;
    assert!(matches!(
        refused,
        Err(EngineError::Store(StoreError::Unavailable { .. }))
    ));
    std::fs::remove_file(data.join("ballast")).unwrap();
    if w.engine.store().failure().is_some() {
        assert!(
            w.engine.recover_store().unwrap(),
            "reopened once space returned"
        );
    }
    assert!(w.engine.store().failure().is_none());
    assert_eq!(w.invoice(&failed_id)["state"], "draft");
    assert_eq!(w.engine.open_invoice_count(), 1 + issued);
    assert!(w.engine.lock_state().index.get(&failed_id).is_none());
    let issue_events = w
        .events()
        .iter()
        .filter(|kind| kind.as_str() == "invoice.issued")
        .count();
    assert_eq!(issue_events, 1 + issued, "no event of the failed issue");
    let numbered = w
        .engine
        .issue_invoice(&failed_id, IssueInput::default(), "test")
        .await
        .unwrap();
    assert_eq!(
        numbered.number,
        Some(format!("INV-2026-{:03}", 2 + issued)),
        "the failed issue took no number"
    );
    assert_eq!(w.engine.open_invoice_count(), 2 + issued);
    let last_event = w.engine.store().last_event_id();
    assert_eq!(
        w.engine.store().events_after(0, 100_000).unwrap().len() as u64,
        last_event,
        "event ids have no gap"
    );
    drop(w);
    drop(mount);
}

#[tokio::test]
async fn refused_records_are_skipped_and_listed_with_their_position_across_batches() {
    let w = World::new();
    let mut bad_currency = PaymentRecord::new("p2", dec!(5.00), "XYZ");
    bad_currency.source_position = Some("s.csv#line 3".into());
    let lead = |email: &str| {
        Record::Lead(settled_plugin_api::LeadRecord {
            name: "Ada".into(),
            email: Some(email.into()),
            phone: None,
            company: None,
            source: "web".into(),
            external_id: None,
            message: None,
            assigned_to: None,
            extra: Default::default(),
        })
    };
    let first = vec![
        payment_record("p1", "5.00", "Someone", "ref"),
        Record::Payment(bad_currency),
    ];
    let second = vec![lead("a@b"), lead("ada@example.com")];
    let all: Vec<Record> = first.iter().chain(&second).cloned().collect();
    let checked: Vec<u64> = (1..)
        .zip(&all)
        .filter_map(|(i, r)| refusal(i, r))
        .map(|f| f.record)
        .collect();
    let mut run = w.engine.begin_ingest("bank", "bank-csv", Some("s.csv"));
    run.add(first).unwrap();
    run.add(second).unwrap();
    let summary = run.finish().await.unwrap();
    let failed: Vec<(u64, Option<&str>, Option<&str>)> = summary
        .failed
        .iter()
        .map(|f| (f.record, f.location.as_deref(), f.field.as_deref()))
        .collect();
    assert_eq!(
        failed,
        [
            (2, Some("s.csv#line 3"), Some("currency")),
            (3, None, Some("email"))
        ],
        "{summary:?}"
    );
    assert_eq!(
        checked,
        [2, 3],
        "the pre-check refuses exactly what ingestion skips"
    );
    assert_eq!((summary.records_read, summary.new), (4, 2), "{summary:?}");
    assert_eq!(w.engine.store().count("payment"), 1);
    assert_eq!(w.engine.store().count("lead"), 1);
}

#[tokio::test]
async fn a_partial_reversal_takes_back_the_credit_first_then_the_newest_allocation() {
    let w = World::new();
    let inv = w.issued_invoice("Overpaid", "360.00").await;
    let (pay, _) = w
        .pay(
            json!({"amount": "400.00", "currency": "EUR", "allocations": [{"invoice_id": inv.id}]}),
        )
        .await
        .unwrap();
    assert_eq!(pay.unallocated, dec!(40.00));
    let credit = |w: &World| {
        w.engine.show("account", &inv.account_id).unwrap()["credit_balance"]["EUR"].clone()
    };
    assert_eq!(credit(&w), "40.00");
    let first = w
        .engine
        .write(|tx| super::reversal::reverse(tx, &pay.id, Some(dec!(100.00)), true, "refund", "t"))
        .await
        .unwrap();
    assert_eq!(
        (first.reversed, first.excess, first.payment.credit_reversed),
        (dec!(100.00), dec!(0), dec!(40.00))
    );
    let v = w.invoice(&inv.id);
    assert_eq!(
        (v["balance"].as_str(), v["amount_refunded"].as_str()),
        (Some("60.00"), Some("60.00"))
    );
    assert_eq!(
        credit(&w),
        Value::Null,
        "the overpayment left the credit balance first (emptied, it is dropped)"
    );
    // More than is left: the rest (300.00) is undone, 700.00 is reported as excess, the payment is reversed.
    let second = w
        .engine
        .write(|tx| super::reversal::reverse(tx, &pay.id, Some(dec!(1000.00)), true, "refund", "t"))
        .await
        .unwrap();
    assert_eq!(
        (second.reversed, second.excess),
        (dec!(300.00), dec!(700.00))
    );
    assert_eq!(
        second.payment.state,
        crate::domain::payment::PaymentState::Reversed
    );
    assert_eq!(w.invoice(&inv.id)["balance"], "360.00");
    assert!(w
        .engine
        .reverse_payment(&pay.id, Default::default(), "t")
        .await
        .is_err());
}

#[tokio::test]
async fn invoices_issued_before_the_invoice_ref_index_are_indexed_once_at_start() {
    let w = World::new();
    let inv = w.issued_invoice("Older", "10.00").await;
    // A store as an earlier release left it: the invoice without its `invoice-ref` rows, no marker.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    let mut ws = store.begin();
    ws.put("invoice", &inv.id, &inv);
    store.apply(ws).unwrap();
    let rf_key = crate::domain::rf::normalise(inv.rf_reference.as_deref().unwrap());
    assert_eq!(store.index("invoice-ref", &rf_key).unwrap(), None);
    let engine = Engine::new(store.clone(), Config::default(), Box::new(w.clock.clone())).unwrap();
    assert_eq!(
        engine.store().index("invoice-ref", &rf_key).unwrap(),
        Some(inv.id.clone())
    );
    assert_eq!(
        engine.store().index("invoice-ref", "INV|2026|1").unwrap(),
        Some(inv.id.clone()),
        "the number key too"
    );
}

#[tokio::test]
async fn partial_reversals_over_two_invoices_skip_an_allocation_already_undone() {
    let w = World::new();
    let a = w.issued_invoice("Two", "200.00").await;
    let b = w.issued_invoice("Two", "160.00").await;
    let (pay, _) = w
        .pay(
            json!({"amount": "360.00", "currency": "EUR", "allocations": [
            {"invoice_id": a.id, "amount": "200.00"}, {"invoice_id": b.id, "amount": "160.00"}]}),
        )
        .await
        .unwrap();
    for amount in [dec!(160.00), dec!(50.00)] {
        w.engine
            .write(|tx| super::reversal::reverse(tx, &pay.id, Some(amount), true, "refund", "t"))
            .await
            .unwrap();
    }
    // The newest allocation (b) went first and whole; the second refund comes from a.
    assert_eq!(w.invoice(&b.id)["balance"], "160.00");
    assert_eq!(w.invoice(&a.id)["balance"], "50.00");
    let stored: crate::domain::payment::Payment = w.engine.get("payment", &pay.id).unwrap();
    assert_eq!(stored.state, crate::domain::payment::PaymentState::Recorded);
    assert_eq!(
        stored.allocations.len(),
        4,
        "two allocations and two compensations"
    );
}

/// One step of a random credit history (amounts in cents; `None` = the default amount).
#[derive(Debug, Clone)]
enum CreditStep {
    Pay(usize, i64),
    CreditNote(usize, Option<i64>),
    ApplyCredit(usize, Option<i64>),
    Reverse(usize, Option<i64>),
    /// A bank payment naming the invoice's number: reconciled, its invoice changes deferred to the overlay.
    Ingest(usize, i64),
    Checkpoint,
    /// The process dies: what only the overlay held is lost, and a new engine replays the journal.
    Restart,
}

fn credit_step() -> impl proptest::strategy::Strategy<Value = CreditStep> {
    use proptest::prelude::*;
    let cents = || 1i64..16_000;
    // Mostly the default amount (all that is owed, left or creditable), which is what makes chains of credit.
    let amount = move || proptest::option::weighted(0.3, cents());
    prop_oneof![
        3 => (0usize..3, cents()).prop_map(|(i, c)| CreditStep::Pay(i, c)),
        2 => (0usize..3, amount()).prop_map(|(i, c)| CreditStep::CreditNote(i, c)),
        3 => (0usize..3, amount()).prop_map(|(i, c)| CreditStep::ApplyCredit(i, c)),
        3 => (0usize..4, amount()).prop_map(|(i, c)| CreditStep::Reverse(i, c)),
        3 => (0usize..3, cents()).prop_map(|(i, c)| CreditStep::Ingest(i, c)),
        1 => Just(CreditStep::Checkpoint),
        2 => Just(CreditStep::Restart),
    ]
}

/// The credit and balance invariants after any history: see the `reversal` module doc.
fn check_credit_invariants(w: &World, invoices: &[String], payments: &[String], received: Decimal) {
    use crate::domain::invoice::balance;
    use crate::domain::party::{Account, CreditSource};
    use crate::domain::payment::{Allocation, AllocationKind, Payment};
    let eur = crate::domain::money::Currency::parse("EUR").unwrap();
    let first: Invoice = w.engine.get("invoice", &invoices[0]).unwrap();
    let account: Account = w.engine.get("account", &first.account_id).unwrap();
    let credit = crate::domain::party::credit(&account, &eur);
    assert!(credit >= Decimal::ZERO, "credit {credit}");
    let in_lots: Decimal = account.credit_lots.iter().map(|l| l.unspent()).sum();
    assert_eq!(
        credit, in_lots,
        "credit balance = put on - used: {account:?}"
    );
    for lot in &account.credit_lots {
        assert!(
            lot.unspent() >= Decimal::ZERO && lot.left() >= lot.unspent(),
            "{lot:?}"
        );
        assert!(
            lot.spent
                .iter()
                .all(|s| s.reopened >= Decimal::ZERO && s.reopened <= s.amount),
            "{lot:?}"
        );
    }
    let (mut owed, mut invoiced) = (Decimal::ZERO, Decimal::ZERO);
    for id in invoices {
        let inv: Invoice = w.engine.get("invoice", id).unwrap();
        let mut allocated = Decimal::ZERO;
        for alloc_id in &inv.allocations {
            let alloc: Allocation = w.engine.get("allocation", alloc_id).unwrap();
            if alloc.kind == AllocationKind::Credit && alloc.amount > Decimal::ZERO {
                let drawn: Decimal = alloc.credit_sources.iter().map(|d| d.amount).sum();
                assert_eq!(
                    drawn, alloc.amount,
                    "a credit allocation names its sources: {alloc:?}"
                );
            }
            allocated += alloc.amount;
        }
        // total - payments - credit notes - credit applied + reversals (compensations are negative allocations).
        assert_eq!(inv.amount_paid, allocated, "{id}");
        assert_eq!(
            balance(&inv),
            inv.totals.total - inv.amount_credited - allocated,
            "{id}"
        );
        // A credit note's surplus is on credit exactly while its invoice is overpaid: never counted twice.
        let surplus: Decimal = account
            .credit_lots
            .iter()
            .filter(|l| matches!(&l.source, CreditSource::CreditNote { invoice_id, .. } if invoice_id == id))
            .map(|l| l.left())
            .sum();
        assert_eq!(
            surplus,
            (-balance(&inv)).max(Decimal::ZERO),
            "{id}: {account:?}"
        );
        owed += balance(&inv).max(Decimal::ZERO);
        invoiced += inv.totals.total - inv.amount_credited;
    }
    for id in payments {
        let pay: Payment = w.engine.get("payment", id).unwrap();
        let source = CreditSource::Overpayment {
            payment_id: id.clone(),
        };
        let left = crate::domain::party::lot(&account, &source).map_or(Decimal::ZERO, |l| l.left());
        assert_eq!(left, pay.unallocated - pay.credit_reversed, "{id}");
    }
    // What the customer owes, less their credit, is what was invoiced less what was credited and received.
    assert_eq!(owed - credit, invoiced - received, "{account:?}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]
    #[test]
    fn credit_never_goes_negative_or_counts_twice_over_any_history(
        steps in proptest::collection::vec(credit_step(), 1..16),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let mut w = World::new();
            let mut invoices = Vec::new();
            let mut numbers = Vec::new();
            for amount in ["100.00", "50.00", "30.00"] {
                let inv = w.issued_invoice("Prop Credit", amount).await;
                invoices.push(inv.id);
                numbers.push(inv.number.unwrap());
            }
            let mut lines = 0;
            let mut payments: Vec<String> = Vec::new();
            let mut received = Decimal::ZERO;
            let amount = |c: Option<i64>| c.map(|c| Decimal::new(c, 2).to_string());
            for step in &steps {
                match step {
                    CreditStep::Pay(i, cents) => {
                        let paid = Decimal::new(*cents, 2);
                        let body = json!({"amount": paid.to_string(), "currency": "EUR",
                            "allocations": [{"invoice_id": invoices[*i]}]});
                        if let Ok((pay, _)) = w.pay(body).await {
                            payments.push(pay.id);
                            received += paid;
                        }
                    }
                    CreditStep::CreditNote(i, cents) => {
                        let input = serde_json::from_value(json!({"amount": amount(*cents)})).unwrap();
                        let _ = w.engine.credit_invoice(&invoices[*i], input, "t").await;
                    }
                    CreditStep::ApplyCredit(i, cents) => {
                        let input = serde_json::from_value(json!({"amount": amount(*cents)})).unwrap();
                        let _ = w.engine.apply_credit(&invoices[*i], input, "t").await;
                    }
                    CreditStep::Reverse(i, cents) => {
                        let Some(id) = payments.get(*i).cloned() else { continue };
                        let want = cents.map(|c| Decimal::new(c, 2));
                        let done = w
                            .engine
                            .write(|tx| super::reversal::reverse(tx, &id, want, false, "returned", "t"))
                            .await;
                        if let Ok(r) = done {
                            received -= r.reversed;
                        }
                    }
                    CreditStep::Ingest(i, cents) => {
                        lines += 1;
                        let line = format!("line-{lines}");
                        let paid = Decimal::new(*cents, 2).to_string();
                        let record = payment_record(&line, &paid, "Prop Credit", &numbers[*i]);
                        w.engine.ingest("bank", "camt", None, vec![record]).await.unwrap();
                        let seen = w.engine.store().seen(&format!("pay:camt:{line}")).unwrap().unwrap();
                        if let Some(id) = seen["payment_id"].as_str() {
                            let pay: crate::domain::payment::Payment = w.engine.get("payment", id).unwrap();
                            // What reached an invoice or the customer's credit (not what waits in review).
                            let mut reached = pay.unallocated;
                            for a in &pay.allocations {
                                let a: crate::domain::payment::Allocation = w.engine.get("allocation", a).unwrap();
                                reached += a.amount;
                            }
                            if reached > Decimal::ZERO {
                                payments.push(pay.id);
                                received += reached;
                            }
                        }
                    }
                    CreditStep::Checkpoint => {
                        w.engine.checkpoint().unwrap();
                        assert_eq!(w.engine.store().deferred_len(), 0);
                    }
                    CreditStep::Restart => {
                        let before: Vec<Invoice> = invoices.iter().map(|id| w.engine.get("invoice", id).unwrap()).collect();
                        let open = w.engine.open_invoice_count();
                        w.restart();
                        let after: Vec<Invoice> = invoices.iter().map(|id| w.engine.get("invoice", id).unwrap()).collect();
                        for (b, a) in before.iter().zip(&after) {
                            assert_eq!(
                                (&b.allocations, b.amount_paid, b.amount_credited, b.announced_status),
                                (&a.allocations, a.amount_paid, a.amount_credited, a.announced_status),
                                "{}", b.id
                            );
                        }
                        assert_eq!(w.engine.open_invoice_count(), open);
                    }
                }
                check_credit_invariants(&w, &invoices, &payments, received);
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_waiting_for_a_running_checkpoint_and_a_checkpoint_waiting_for_the_writer_lock_never_deadlock(
) {
    let w = World::new();
    let inv = w.issued_invoice("Deadlock", "100000.00").await;
    let number = inv.number.clone().unwrap();
    // A checkpoint after every deferred write, and a writer that waits for the running one once two keys wait (the
    // invoice and its open-invoice row): the writer waits for checkpoints all the time.
    let mut config = Config::default();
    config.journal.checkpoint_dirty = 1;
    let engine = Engine::new(w.engine.store().clone(), config, Box::new(w.clock.clone())).unwrap();
    // Meanwhile checkpoints asked for from another thread, as the timer and the end of every import do.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checkpoints = {
        let (engine, stop) = (engine.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                engine.checkpoint().unwrap();
            }
        })
    };
    // The writer on a thread of its own, so a deadlock fails the test instead of hanging it.
    let (done, finished) = std::sync::mpsc::channel();
    let writer = {
        let engine = engine.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            for i in 0..300 {
                let record = payment_record(&format!("d{i}"), "0.01", "Deadlock", &number);
                runtime
                    .block_on(engine.ingest("bank", "camt", None, vec![record]))
                    .unwrap();
            }
            let _ = done.send(());
        })
    };
    let finished = finished.recv_timeout(std::time::Duration::from_secs(120));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(
        finished.is_ok(),
        "the writer and the checkpoints deadlocked"
    );
    writer.join().unwrap();
    checkpoints.join().unwrap();
    assert_eq!(
        engine.show("invoice", &inv.id).unwrap()["amount_paid"],
        "3.00"
    );
}

#[tokio::test]
async fn payments_noted_under_a_reference_are_found_from_seen_entries_and_from_the_rows_of_older_stores(
) {
    let w = World::new();
    // A store written before the seen entries: its `i/paid-by/` row (as `index_paid` wrote it then).
    w.engine
        .write(|tx| {
            tx.ws
                .index("paid-by", "ref:t-77/pay_00000001", "pay_00000001");
            Ok(())
        })
        .await
        .unwrap();
    // Two payments under the same reference, one of them in a later write set, one noted twice.
    w.engine
        .write(|tx| {
            super::billing::index_paid(tx, "pay_00000002", Some("T-77"), Some("E2E-1"))?;
            super::billing::index_paid(tx, "pay_00000002", Some("T-77"), None)?;
            Ok(())
        })
        .await
        .unwrap();
    w.engine
        .write(|tx| super::billing::index_paid(tx, "pay_00000003", Some(" t-77 "), None))
        .await
        .unwrap();
    let found = w
        .engine
        .write(|tx| {
            Ok((
                super::billing::paid_by(tx, "ref", "T-77")?,
                super::billing::paid_by(tx, "e2e", "e2e-1")?,
                super::billing::paid_by(tx, "ref", "T-78")?,
            ))
        })
        .await
        .unwrap();
    assert_eq!(
        found.0,
        ["pay_00000002", "pay_00000003", "pay_00000001"],
        "seen entries first, then the old rows, each payment once"
    );
    assert_eq!(found.1, ["pay_00000002"]);
    assert!(found.2.is_empty());
}

/// Forget the payment figures the matching index holds of these invoices (as in a store from before they were kept):
/// their next payment reads and rewrites the invoice.
fn forget_payment_figures(w: &World, ids: &[String]) {
    let mut state = w.engine.lock_state();
    for id in ids {
        if let Some(mut open) = state.index.get(id).cloned() {
            open.payment = None;
            state.index.upsert(open);
        }
    }
}

/// What a history left: every invoice as stored and as served, every index row, allocation and event (its time aside).
fn books(w: &World, ids: &[String]) -> Value {
    let store = w.engine.store();
    let invoices: Vec<Value> = ids
        .iter()
        .map(|id| json!([store.get::<Value>("invoice", id).unwrap(), w.invoice(id)]))
        .collect();
    let rows: Vec<(String, Value)> = store.scan_raw("i/").unwrap();
    let allocations: Vec<Value> = store.scan("allocation").collect::<Result<_, _>>().unwrap();
    let events: Vec<Value> = store
        .events_after(0, 10_000)
        .unwrap()
        .into_iter()
        .map(|e| json!([e.id, e.kind, e.entity, e.entity_id, e.data, e.outbox]))
        .collect();
    json!({"invoices": invoices, "rows": rows, "allocations": allocations, "events": events})
}

#[tokio::test]
async fn a_payment_allocated_from_the_index_leaves_what_reading_and_rewriting_the_invoice_leaves() {
    // One history twice. In `slow` the index holds no payment figures before each import, so every allocation reads
    // the invoice and saves it whole; in `fast` they come from the index and the invoice gets a patch.
    let mut fast = World::new();
    let mut slow = World::new();
    let mut ids = Vec::new();
    let mut numbers = Vec::new();
    for (i, total) in ["100.00", "250.00", "80.00", "40.00", "60.00"]
        .iter()
        .enumerate()
    {
        let a = fast.issued_invoice(&format!("Figures {i}"), total).await;
        let b = slow.issued_invoice(&format!("Figures {i}"), total).await;
        assert_eq!((&a.id, &a.number), (&b.id, &b.number));
        ids.push(a.id);
        numbers.push(a.number.unwrap());
    }
    let pay = |id: &str, amount: &str, n: usize| {
        payment_record(id, amount, &format!("Figures {n}"), &numbers[n])
    };
    let chunks = [
        // Partly, twice in one chunk; exactly; short by 0.01 (written off); the next one two days later.
        vec![
            pay("f1", "30.00", 0),
            pay("f2", "20.00", 0),
            pay("f3", "250.00", 1),
            pay("f4", "79.99", 2),
        ],
        // Overdue meanwhile (announced by the scheduler for one, not for the other); an overpayment.
        vec![
            pay("f5", "10.00", 0),
            pay("f6", "50.00", 3),
            pay("f7", "5.00", 4),
        ],
        // After a checkpoint and a restart: the last of invoice 0, then more than is left of invoice 4.
        vec![pay("f8", "40.00", 0), pay("f9", "60.00", 4)],
    ];
    for (n, chunk) in chunks.into_iter().enumerate() {
        if n == 1 {
            for w in [&fast, &slow] {
                w.advance(40);
                w.engine.publish_overdue("test").await.unwrap();
            }
        }
        if n == 2 {
            for w in [&mut fast, &mut slow] {
                w.engine.checkpoint().unwrap();
                w.restart();
            }
        }
        forget_payment_figures(&slow, &ids);
        for w in [&fast, &slow] {
            w.engine
                .ingest("bank", "camt", None, chunk.clone())
                .await
                .unwrap();
        }
        assert_eq!(books(&fast, &ids), books(&slow, &ids), "after import {n}");
        assert!(
            fast.engine.store().deferred_len() > 0,
            "import {n}: the invoices wait in memory"
        );
    }
    let v = fast.invoice(&ids[0]);
    assert_eq!(
        (v["amount_paid"].as_str(), status(&v)),
        (Some("100.00"), "paid")
    );
    assert_eq!(fast.invoice(&ids[4])["amount_paid"], "60.00");
    let statuses: Vec<Value> = fast
        .engine
        .store()
        .events_after(0, 10_000)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "invoice.payment_status_changed" && e.entity_id == ids[0])
        .map(|e| e.data["to"].clone())
        .collect();
    assert_eq!(statuses, ["unpaid", "partially_paid", "overdue", "paid"]);
    // Replayed from the journal, checkpointed, and checked against the records.
    // (Replay dates a replayed invoice's `updated_at` by its event's wall-clock time, not by the test's clock.)
    fast.restart();
    slow.restart();
    let undated = |mut books: Value| {
        for pair in books["invoices"].as_array_mut().unwrap() {
            for inv in pair.as_array_mut().unwrap() {
                inv["updated_at"] = Value::Null;
            }
        }
        books
    };
    assert_eq!(
        undated(books(&fast, &ids)),
        undated(books(&slow, &ids)),
        "after a restart"
    );
    fast.engine.checkpoint().unwrap();
    let report = crate::check::run(&fast.engine).unwrap();
    assert!(report.differences.is_empty(), "{:?}", report.differences);
}
