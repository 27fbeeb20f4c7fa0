//! Payments and their allocations to invoices; planning how a payment is split.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::invoice::{balance, Invoice, InvoiceKind, InvoiceState};
use super::money::{check_scale, Currency};
use super::party::CreditDraw;
use super::{status_name, DomainError};

/// Whether a payment still counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentState {
    /// Received and allocated.
    Recorded,
    /// Taken back; its allocations are reversed.
    Reversed,
}

/// Where allocated money comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllocationKind {
    /// From a payment.
    Payment,
    /// From the customer's credit balance.
    Credit,
    /// Written off.
    WriteOff,
    /// Paid in another system that keeps the invoice (an accounting package): recorded there by a person, read back
    /// by its poll connector. Its payment has that system as its source and is never sent back to it.
    PaidElsewhere,
}

/// Money applied to one invoice, with why (rule, evidence, confidence) for reconciliation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    /// Id assigned by the engine.
    pub id: String,
    /// The payment, for [`AllocationKind::Payment`].
    pub payment_id: Option<String>,
    /// The invoice paid.
    pub invoice_id: String,
    /// Amount applied.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    /// Source of the money.
    pub kind: AllocationKind,
    /// Which rule made it (e.g. `manual`, `rf_reference`).
    pub rule: String,
    /// What the rule matched on.
    pub evidence: String,
    /// 0-100.
    pub confidence: u8,
    /// When it was made.
    pub at: DateTime<Utc>,
    /// Set when the payment was reversed.
    pub reversed: bool,
    /// For a compensating entry (negative amount): the allocation it undoes, in part or in full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensates: Option<String>,
    /// For a credit allocation: the credit lots it drew from (oldest first). Credit an earlier release recorded
    /// without a source is not listed, so these may add up to less than `amount`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credit_sources: Vec<CreditDraw>,
}

/// Money received from a customer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payment {
    /// Id assigned by the engine.
    pub id: String,
    /// Amount received.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    /// Currency received.
    pub currency: Currency,
    /// Value date.
    pub received_on: NaiveDate,
    /// Payer name.
    pub payer: Option<String>,
    /// Payment reference (e.g. an RF creditor reference).
    pub reference: Option<String>,
    /// Id in the bank or payment provider.
    pub external_id: Option<String>,
    /// Where it was recorded from (`api`, a plugin name, ...).
    pub source: String,
    /// Recorded or reversed.
    pub state: PaymentState,
    /// Ids of its allocations.
    pub allocations: Vec<String>,
    /// What went to the customer's credit balance.
    #[serde(with = "rust_decimal::serde::str")]
    pub unallocated: Decimal,
    /// The paying account, when known.
    pub account_id: Option<String>,
    /// Recording time.
    pub created_at: DateTime<Utc>,
    /// Our bank account it was booked on, when the source named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bank_account: Option<String>,
    /// The payer's bank account (IBAN or number), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer_account: Option<String>,
    /// Of `unallocated`, what returns and refunds took back from the customer's credit balance.
    #[serde(default, with = "rust_decimal::serde::str")]
    pub credit_reversed: Decimal,
}

/// One requested allocation; without an amount it takes what the invoice still owes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllocationRequest {
    /// The invoice to pay.
    pub invoice_id: String,
    /// Amount to apply.
    #[serde(default, with = "rust_decimal::serde::str_option")]
    pub amount: Option<Decimal>,
}

/// How a payment splits over invoices, and what is left for the customer's credit.
#[derive(Debug, Clone, PartialEq)]
pub struct AllocationPlan {
    /// `(invoice id, amount)` in request order; no zero parts.
    pub parts: Vec<(String, Decimal)>,
    /// Left over, to the customer's credit balance.
    pub surplus: Decimal,
}

/// Plans a payment's allocations. Each requested invoice must be an issued invoice in the
/// payment's currency. Explicit amounts are reserved first (each `0 < amount <= balance`, all
/// together at most the payment); requests without an amount then take `min(balance, what is
/// left)` in the order given. Errors name `allocations[i].invoice_id` / `allocations[i].amount`.
pub fn plan_allocations(
    amount: Decimal,
    currency: &Currency,
    requests: &[AllocationRequest],
    invoices: &[&Invoice],
    _today: NaiveDate,
) -> Result<AllocationPlan, DomainError> {
    if amount <= Decimal::ZERO {
        return Err(DomainError::invalid("amount", "must be greater than zero"));
    }
    check_scale("amount", amount, currency)?;
    let mut open: BTreeMap<&str, Decimal> = BTreeMap::new();
    for (i, request) in requests.iter().enumerate() {
        let field = format!("allocations[{i}].invoice_id");
        let invoice = invoices
            .iter()
            .find(|inv| inv.id == request.invoice_id)
            .ok_or_else(|| {
                DomainError::invalid(&field, format!("unknown invoice {}", request.invoice_id))
            })?;
        if invoice.kind != InvoiceKind::Invoice {
            return Err(DomainError::invalid(
                &field,
                format!("{} is a credit note", invoice.id),
            ));
        }
        if invoice.state != InvoiceState::Issued {
            let reason = match invoice.state {
                InvoiceState::Draft => "issue it before recording payments",
                _ => "a void invoice cannot be paid",
            };
            return Err(DomainError::transition(
                "invoice",
                status_name(&invoice.state),
                "pay",
                reason,
            ));
        }
        if invoice.currency != *currency {
            return Err(DomainError::CurrencyMismatch {
                expected: invoice.currency.code().to_string(),
                found: currency.code().to_string(),
            });
        }
        open.entry(invoice.id.as_str())
            .or_insert_with(|| balance(invoice).max(Decimal::ZERO));
    }

    let mut left = amount;
    let mut parts: Vec<Option<Decimal>> = vec![None; requests.len()];
    for (i, request) in requests.iter().enumerate() {
        let Some(wanted) = request.amount else {
            continue;
        };
        let field = format!("allocations[{i}].amount");
        if wanted <= Decimal::ZERO {
            return Err(DomainError::invalid(&field, "must be greater than zero"));
        }
        check_scale(&field, wanted, currency)?;
        let owed = open
            .get_mut(request.invoice_id.as_str())
            .ok_or_else(|| DomainError::invalid(&field, "unknown invoice"))?;
        if wanted > *owed {
            return Err(DomainError::invalid(
                &field,
                format!(
                    "{wanted} exceeds the balance {owed} of invoice {}",
                    request.invoice_id
                ),
            ));
        }
        if wanted > left {
            return Err(DomainError::invalid(
                &field,
                format!("allocations add up to more than the payment of {amount} {currency}"),
            ));
        }
        *owed -= wanted;
        left -= wanted;
        parts[i] = Some(wanted);
    }
    for (i, request) in requests.iter().enumerate() {
        if request.amount.is_some() {
            continue;
        }
        let owed = open.get_mut(request.invoice_id.as_str()).ok_or_else(|| {
            DomainError::invalid(format!("allocations[{i}].invoice_id"), "unknown invoice")
        })?;
        let take = (*owed).min(left);
        *owed -= take;
        left -= take;
        parts[i] = Some(take);
    }
    let parts = requests
        .iter()
        .zip(parts)
        .filter_map(|(request, part)| {
            part.filter(|p| *p > Decimal::ZERO)
                .map(|p| (request.invoice_id.clone(), p))
        })
        .collect();
    Ok(AllocationPlan {
        parts,
        surplus: left,
    })
}

/// Marks a recorded payment reversed; the engine reverses its allocations on the invoices.
pub fn reverse(payment: &mut Payment) -> Result<(), DomainError> {
    if payment.state != PaymentState::Recorded {
        return Err(DomainError::transition(
            "payment",
            status_name(&payment.state),
            "reverse",
            "it is already reversed",
        ));
    }
    payment.state = PaymentState::Reversed;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::invoice::{draft_from_order, issue, void};
    use crate::domain::order::tests::{day, line, now, order};
    use rust_decimal_macros::dec;

    fn eur() -> Currency {
        Currency::parse("EUR").unwrap_or_else(|e| panic!("{e}"))
    }

    fn invoice(id: &str, total: Decimal) -> Invoice {
        let o = order(vec![line("A", dec!(1), total, dec!(0))], None);
        let mut inv =
            draft_from_order(&o, id.into(), None, 30, now()).unwrap_or_else(|e| panic!("{e}"));
        issue(&mut inv, format!("INV-{id}"), "RF".into(), day(1), None)
            .unwrap_or_else(|e| panic!("{e}"));
        inv
    }

    fn req(invoice_id: &str, amount: Option<Decimal>) -> AllocationRequest {
        AllocationRequest {
            invoice_id: invoice_id.into(),
            amount,
        }
    }

    fn plan(
        amount: Decimal,
        requests: &[AllocationRequest],
        invoices: &[&Invoice],
    ) -> Result<AllocationPlan, DomainError> {
        plan_allocations(amount, &eur(), requests, invoices, day(1))
    }

    fn parts(p: &AllocationPlan) -> Vec<(&str, Decimal)> {
        p.parts.iter().map(|(id, a)| (id.as_str(), *a)).collect()
    }

    #[test]
    fn plans_split_payments_and_leave_the_surplus() {
        let a = invoice("A", dec!(100.00));
        let b = invoice("B", dec!(50.00));
        fn check(
            result: Result<AllocationPlan, DomainError>,
            expected: &[(&str, Decimal)],
            surplus: Decimal,
        ) {
            let p = result.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!((parts(&p), p.surplus), (expected.to_vec(), surplus));
        }
        check(
            plan(dec!(100.00), &[req("A", None)], &[&a, &b]),
            &[("A", dec!(100.00))],
            dec!(0),
        );
        check(
            plan(dec!(60.00), &[req("A", None)], &[&a]),
            &[("A", dec!(60.00))],
            dec!(0),
        );
        check(
            plan(dec!(180.00), &[req("A", None), req("B", None)], &[&a, &b]),
            &[("A", dec!(100.00)), ("B", dec!(50.00))],
            dec!(30.00),
        );
        check(
            plan(dec!(120.00), &[req("A", None), req("B", None)], &[&a, &b]),
            &[("A", dec!(100.00)), ("B", dec!(20.00))],
            dec!(0),
        );
        // Explicit amounts are reserved before open-ended requests, whatever the order.
        check(
            plan(
                dec!(120.00),
                &[req("A", None), req("B", Some(dec!(50.00)))],
                &[&a, &b],
            ),
            &[("A", dec!(70.00)), ("B", dec!(50.00))],
            dec!(0),
        );
        check(plan(dec!(25.00), &[], &[]), &[], dec!(25.00));
        check(
            plan(
                dec!(10.00),
                &[req("A", Some(dec!(10.00))), req("A", None)],
                &[&a],
            ),
            &[("A", dec!(10.00))],
            dec!(0),
        );
    }

    #[test]
    fn plans_respect_what_was_already_paid() {
        let mut a = invoice("A", dec!(100.00));
        a.amount_paid = dec!(70.00);
        let p = plan(dec!(50.00), &[req("A", None)], &[&a]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (parts(&p), p.surplus),
            (vec![("A", dec!(30.00))], dec!(20.00))
        );
        let err = plan(dec!(50.00), &[req("A", Some(dec!(30.01)))], &[&a]).err();
        assert_eq!(
            err,
            Some(DomainError::invalid(
                "allocations[0].amount",
                "30.01 exceeds the balance 30.00 of invoice A"
            ))
        );
    }

    #[test]
    fn bad_requests_are_refused_naming_the_allocation() {
        let a = invoice("A", dec!(100.00));
        let b = invoice("B", dec!(100.00));
        let mut usd = invoice("U", dec!(10.00));
        usd.currency = Currency::parse("USD").unwrap_or_else(|e| panic!("{e}"));
        let mut voided = invoice("V", dec!(10.00));
        assert_eq!(void(&mut voided), Ok(()));
        let o = order(vec![line("A", dec!(1), dec!(5), dec!(0))], None);
        let drafted =
            draft_from_order(&o, "D".into(), None, 30, now()).unwrap_or_else(|e| panic!("{e}"));
        let all = [&a, &b, &usd, &voided, &drafted];
        fn field_of(r: Result<AllocationPlan, DomainError>) -> String {
            match r {
                Err(DomainError::Invalid { field, .. }) => field,
                Err(DomainError::Transition { from, action, .. }) => format!("{action} {from}"),
                Err(DomainError::CurrencyMismatch { expected, found }) => {
                    format!("{expected}!={found}")
                }
                Ok(p) => panic!("unexpected plan {p:?}"),
            }
        }
        let cases: [(Decimal, Vec<AllocationRequest>, &str); 10] = [
            (dec!(0), vec![], "amount"),
            (dec!(-5), vec![], "amount"),
            (dec!(1.001), vec![], "amount"),
            (
                dec!(10),
                vec![req("A", None), req("X", None)],
                "allocations[1].invoice_id",
            ),
            (
                dec!(10),
                vec![req("A", Some(dec!(0)))],
                "allocations[0].amount",
            ),
            (
                dec!(10),
                vec![req("A", Some(dec!(6))), req("B", Some(dec!(5)))],
                "allocations[1].amount",
            ),
            (
                dec!(10),
                vec![req("A", Some(dec!(0.005)))],
                "allocations[0].amount",
            ),
            (dec!(10), vec![req("U", None)], "USD!=EUR"),
            (dec!(10), vec![req("V", None)], "pay void"),
            (dec!(10), vec![req("D", None)], "pay draft"),
        ];
        for (amount, requests, expected) in cases {
            assert_eq!(
                field_of(plan(amount, &requests, &all)),
                expected,
                "{requests:?}"
            );
        }
    }

    #[test]
    fn payments_reverse_once() {
        let mut payment = Payment {
            id: "P1".into(),
            amount: dec!(10),
            currency: eur(),
            received_on: day(1),
            payer: None,
            reference: None,
            external_id: None,
            source: "api".into(),
            state: PaymentState::Recorded,
            allocations: vec![],
            unallocated: dec!(0),
            account_id: None,
            created_at: now(),
            bank_account: None,
            payer_account: None,
            credit_reversed: dec!(0),
        };
        assert_eq!(reverse(&mut payment), Ok(()));
        assert_eq!(payment.state, PaymentState::Reversed);
        assert_eq!(
            reverse(&mut payment).map_err(|e| e.to_string()),
            Err("cannot reverse payment in status reversed: it is already reversed".into())
        );
        let json = serde_json::to_value(&payment).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (json["amount"].as_str(), json["state"].as_str()),
            (Some("10"), Some("reversed"))
        );
        let request: AllocationRequest =
            serde_json::from_str(r#"{"invoice_id":"A"}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(request.amount, None);
    }

    proptest::proptest! {
        #[test]
        fn plans_never_exceed_the_payment_or_a_balance(
            amount_cents in 1i64..50_000,
            totals in proptest::collection::vec(1i64..20_000, 1..5),
            explicit in proptest::collection::vec(proptest::option::of(1i64..20_000), 1..5),
        ) {
            let invoices: Vec<Invoice> = totals
                .iter()
                .enumerate()
                .map(|(i, cents)| invoice(&format!("I{i}"), Decimal::new(*cents, 2)))
                .collect();
            let refs: Vec<&Invoice> = invoices.iter().collect();
            let requests: Vec<AllocationRequest> = explicit
                .iter()
                .enumerate()
                .map(|(i, cents)| req(&format!("I{}", i % invoices.len()), cents.map(|c| Decimal::new(c, 2))))
                .collect();
            let amount = Decimal::new(amount_cents, 2);
            if let Ok(p) = plan(amount, &requests, &refs) {
                let allocated: Decimal = p.parts.iter().map(|(_, a)| *a).sum();
                proptest::prop_assert_eq!(allocated + p.surplus, amount);
                proptest::prop_assert!(p.surplus >= Decimal::ZERO);
                for inv in &invoices {
                    let to_inv: Decimal = p.parts.iter().filter(|(id, _)| *id == inv.id).map(|(_, a)| *a).sum();
                    proptest::prop_assert!(to_inv <= balance(inv), "{} over-allocated", inv.id);
                }
            }
        }
    }
}
