//! Orders, made only from accepted quotes, and what remains to invoice on them.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::money::Currency;
use super::quote::{Quote, QuoteStatus};
use super::totals::{Discount, Totals};
use super::{status_name, DomainError};

/// Provisioning (delivery) progress of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProvisioningStatus {
    /// Not started.
    Pending,
    /// Being delivered.
    InProgress,
    /// Delivered.
    Provisioned,
    /// Will not be delivered.
    Cancelled,
}

impl ProvisioningStatus {
    /// Pending -> InProgress -> Provisioned, and Pending/InProgress -> Cancelled.
    pub fn can_move_to(self, to: ProvisioningStatus) -> bool {
        use ProvisioningStatus::*;
        matches!(
            (self, to),
            (Pending, InProgress | Provisioned | Cancelled) | (InProgress, Provisioned | Cancelled)
        )
    }
}

/// An order line, linked to the quote line it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderLine {
    /// 1-based position on the order.
    pub line_no: u32,
    /// The quote line it was copied from.
    pub quote_line_no: u32,
    /// Description.
    pub description: String,
    /// Ordered quantity.
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    /// Price per unit.
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_price: Decimal,
    /// Line discount.
    pub discount: Option<Discount>,
    /// VAT rate as a percent number.
    #[serde(with = "rust_decimal::serde::str")]
    pub tax_rate: Decimal,
    /// Rounded line net.
    #[serde(with = "rust_decimal::serde::str")]
    pub net: Decimal,
}

/// Who is billed and how.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BillingInfo {
    /// Billing name.
    #[serde(default)]
    pub name: Option<String>,
    /// Postal address.
    #[serde(default)]
    pub address: Option<String>,
    /// Where invoices go.
    #[serde(default)]
    pub email: Option<String>,
    /// Customer VAT id.
    #[serde(default)]
    pub vat_id: Option<String>,
    /// Days from issue to due date.
    #[serde(default)]
    pub payment_terms_days: Option<u32>,
}

/// A confirmed order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    /// Id assigned by the engine.
    pub id: String,
    /// Series number.
    pub number: String,
    /// The accepted quote it came from.
    pub quote_id: String,
    /// The customer account.
    pub account_id: String,
    /// Document currency.
    pub currency: Currency,
    /// Lines copied from the quote.
    pub lines: Vec<OrderLine>,
    /// Document discount copied from the quote.
    pub document_discount: Option<Discount>,
    /// Totals copied from the quote.
    pub totals: Totals,
    /// Billing details.
    pub billing: BillingInfo,
    /// Delivery terms.
    pub delivery_terms: Option<String>,
    /// Delivery progress.
    pub provisioning: ProvisioningStatus,
    /// Order date.
    pub order_date: NaiveDate,
    /// Internal notes.
    pub notes: Option<String>,
    /// Quantity invoiced so far per order line number (drafts included).
    pub invoiced: BTreeMap<u32, Decimal>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// What the API supplies besides the quote.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct OrderInput {
    /// Billing details.
    #[serde(default)]
    pub billing: BillingInfo,
    /// Delivery terms.
    #[serde(default)]
    pub delivery_terms: Option<String>,
    /// Order date; today when absent.
    #[serde(default)]
    pub order_date: Option<NaiveDate>,
    /// Internal notes.
    #[serde(default)]
    pub notes: Option<String>,
}

/// Longest payment term accepted, in days.
const MAX_PAYMENT_TERMS_DAYS: u32 = 365;

/// Makes an order from an accepted quote, copying its lines with their quote line numbers.
pub fn order_from_quote(
    quote: &Quote,
    id: String,
    number: String,
    input: OrderInput,
    today: NaiveDate,
    now: DateTime<Utc>,
) -> Result<Order, DomainError> {
    if quote.status != QuoteStatus::Accepted {
        return Err(DomainError::transition(
            "quote",
            status_name(&quote.status),
            "order",
            "orders are made only from accepted quotes",
        ));
    }
    let trimmed = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    let billing = BillingInfo {
        name: trimmed(input.billing.name),
        address: trimmed(input.billing.address),
        email: trimmed(input.billing.email).map(|e| e.to_lowercase()),
        vat_id: trimmed(input.billing.vat_id),
        payment_terms_days: input.billing.payment_terms_days,
    };
    if let Some(email) = &billing.email {
        let ok = email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.contains('@')
                && !email.contains(char::is_whitespace)
        });
        if !ok {
            return Err(DomainError::invalid(
                "billing.email",
                format!("{email:?} is not an email address"),
            ));
        }
    }
    if billing
        .payment_terms_days
        .is_some_and(|d| d > MAX_PAYMENT_TERMS_DAYS)
    {
        return Err(DomainError::invalid(
            "billing.payment_terms_days",
            format!("must be at most {MAX_PAYMENT_TERMS_DAYS}"),
        ));
    }
    let lines = quote
        .lines
        .iter()
        .map(|l| OrderLine {
            line_no: l.line_no,
            quote_line_no: l.line_no,
            description: l.description.clone(),
            quantity: l.quantity,
            unit_price: l.unit_price,
            discount: l.discount.clone(),
            tax_rate: l.tax_rate,
            net: l.net,
        })
        .collect();
    Ok(Order {
        id,
        number,
        quote_id: quote.id.clone(),
        account_id: quote.account_id.clone(),
        currency: quote.currency.clone(),
        lines,
        document_discount: quote.document_discount.clone(),
        totals: quote.totals.clone(),
        billing,
        delivery_terms: trimmed(input.delivery_terms),
        provisioning: ProvisioningStatus::Pending,
        order_date: input.order_date.unwrap_or(today),
        notes: trimmed(input.notes),
        invoiced: BTreeMap::new(),
        created_at: now,
    })
}

/// Quantity left to invoice per order line number (zero for fully invoiced lines).
pub fn remaining(order: &Order) -> BTreeMap<u32, Decimal> {
    order
        .lines
        .iter()
        .map(|l| {
            let done = order
                .invoiced
                .get(&l.line_no)
                .copied()
                .unwrap_or(Decimal::ZERO);
            (l.line_no, (l.quantity - done).max(Decimal::ZERO))
        })
        .collect()
}

/// Whether every line has been invoiced in full.
pub fn fully_invoiced(order: &Order) -> bool {
    remaining(order).values().all(|q| q.is_zero())
}

/// Changes the provisioning status along the allowed path.
pub fn set_provisioning(order: &mut Order, to: ProvisioningStatus) -> Result<(), DomainError> {
    if !order.provisioning.can_move_to(to) {
        return Err(DomainError::transition(
            "order",
            status_name(&order.provisioning),
            "change provisioning of",
            format!("cannot move to {}", status_name(&to)),
        ));
    }
    order.provisioning = to;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::quote::{new_quote, QuoteInput};
    use crate::domain::totals::LineInput;
    use chrono::TimeZone;
    use rust_decimal_macros::dec;

    pub(crate) fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
            .single()
            .unwrap_or_else(|| panic!("bad time"))
    }

    pub(crate) fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 3, d).unwrap_or_else(|| panic!("bad test date"))
    }

    pub(crate) fn accepted_quote(lines: Vec<LineInput>, discount: Option<Discount>) -> Quote {
        let input = QuoteInput {
            opportunity_id: "O1".into(),
            account_id: "A1".into(),
            currency: Currency::parse("EUR").unwrap_or_else(|e| panic!("{e}")),
            valid_until: day(31),
            lines,
            document_discount: discount,
        };
        let mut quote = new_quote("Q1".into(), "Q-2026-001".into(), input, day(1), now())
            .unwrap_or_else(|e| panic!("{e}"));
        quote.status = QuoteStatus::Accepted;
        quote
    }

    pub(crate) fn line(
        description: &str,
        quantity: Decimal,
        unit_price: Decimal,
        tax_rate: Decimal,
    ) -> LineInput {
        LineInput {
            description: description.into(),
            quantity,
            unit_price,
            discount: None,
            tax_rate,
        }
    }

    pub(crate) fn order(lines: Vec<LineInput>, discount: Option<Discount>) -> Order {
        let quote = accepted_quote(lines, discount);
        order_from_quote(
            &quote,
            "R1".into(),
            "ORD-00001".into(),
            OrderInput::default(),
            day(2),
            now(),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn orders_only_come_from_accepted_quotes() {
        use QuoteStatus::*;
        for status in [Draft, Sent, Accepted, Rejected, Expired, Superseded] {
            let mut quote = accepted_quote(vec![line("A", dec!(1), dec!(10), dec!(20))], None);
            quote.status = status;
            let result = order_from_quote(
                &quote,
                "R1".into(),
                "ORD-00001".into(),
                OrderInput::default(),
                day(2),
                now(),
            );
            match (status, result) {
                (Accepted, Ok(_)) => {}
                (_, Err(e)) => assert_eq!(
                    e.to_string(),
                    format!("cannot order quote in status {}: orders are made only from accepted quotes", status_name(&status))
                ),
                (status, Ok(_)) => panic!("order made from a {status:?} quote"),
            }
        }
    }

    #[test]
    fn order_copies_lines_with_links_and_totals() {
        let quote = accepted_quote(
            vec![
                line("A", dec!(2), dec!(10), dec!(20)),
                line("B", dec!(1), dec!(5), dec!(10)),
            ],
            Some(Discount::Percent(dec!(10))),
        );
        let input = OrderInput {
            billing: BillingInfo {
                email: Some(" Billing@Acme.com ".into()),
                payment_terms_days: Some(14),
                ..BillingInfo::default()
            },
            delivery_terms: Some("  ".into()),
            order_date: None,
            notes: Some("rush".into()),
        };
        let order = order_from_quote(
            &quote,
            "R1".into(),
            "ORD-00001".into(),
            input,
            day(2),
            now(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let links: Vec<(u32, u32, &str)> = order
            .lines
            .iter()
            .map(|l| (l.line_no, l.quote_line_no, l.description.as_str()))
            .collect();
        assert_eq!(links, [(1, 1, "A"), (2, 2, "B")]);
        assert_eq!(order.totals, quote.totals);
        assert_eq!(order.billing.email.as_deref(), Some("billing@acme.com"));
        assert_eq!(
            (order.delivery_terms.as_deref(), order.notes.as_deref()),
            (None, Some("rush"))
        );
        assert_eq!(
            (order.order_date, order.provisioning),
            (day(2), ProvisioningStatus::Pending)
        );
        assert_eq!(
            remaining(&order),
            BTreeMap::from([(1, dec!(2)), (2, dec!(1))])
        );
    }

    #[test]
    fn bad_billing_info_is_rejected() {
        let quote = accepted_quote(vec![line("A", dec!(1), dec!(10), dec!(20))], None);
        for (billing, field) in [
            (
                BillingInfo {
                    email: Some("nope".into()),
                    ..BillingInfo::default()
                },
                "billing.email",
            ),
            (
                BillingInfo {
                    payment_terms_days: Some(400),
                    ..BillingInfo::default()
                },
                "billing.payment_terms_days",
            ),
        ] {
            let input = OrderInput {
                billing,
                ..OrderInput::default()
            };
            match order_from_quote(&quote, "R".into(), "N".into(), input, day(2), now()) {
                Err(DomainError::Invalid { field: got, .. }) => assert_eq!(got, field),
                other => panic!("expected invalid {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn provisioning_moves_forward_only() {
        use ProvisioningStatus::*;
        let all = [Pending, InProgress, Provisioned, Cancelled];
        let allowed = [
            (Pending, InProgress),
            (Pending, Provisioned),
            (Pending, Cancelled),
            (InProgress, Provisioned),
            (InProgress, Cancelled),
        ];
        for from in all {
            for to in all {
                let mut o = order(vec![line("A", dec!(1), dec!(10), dec!(20))], None);
                o.provisioning = from;
                let ok = set_provisioning(&mut o, to).is_ok();
                assert_eq!(ok, allowed.contains(&(from, to)), "{from:?} -> {to:?}");
                assert_eq!(o.provisioning, if ok { to } else { from });
            }
        }
    }
}
