//! Invoices and credit notes: drafting from orders (whole or partial), issuing, voiding,
//! crediting, and the derived payment status.
//!
//! Sign convention: every amount on a credit note is stored positive, like on an invoice; its
//! `kind` says that it reduces what the customer owes. Issuing one adds its total to the credited
//! invoice's `amount_credited` (see [`record_credit`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Days, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::money::{check_scale, round_money, Currency};
use super::order::{remaining, Order, OrderLine};
use super::totals::{compute, spread, Discount, LineInput, Totals};
use super::{status_name, DomainError};

/// Stored life-cycle state; the payment status is derived from it, see [`payment_status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceState {
    /// Editable, no number yet.
    Draft,
    /// Numbered and sent; never deleted.
    Issued,
    /// Cancelled; kept for the record.
    Void,
}

/// Derived payment status of an invoice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// Not issued yet.
    Draft,
    /// Issued, nothing paid, not yet due.
    Unpaid,
    /// Partly paid, not past due.
    PartiallyPaid,
    /// Nothing left to pay.
    Paid,
    /// Past the due date with a balance left.
    Overdue,
    /// Voided.
    Void,
    /// Was paid, and every payment was refunded.
    Refunded,
}

/// Invoice or credit note.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceKind {
    /// A normal invoice.
    Invoice,
    /// A credit note against an invoice (amounts stored positive).
    CreditNote,
}

/// An invoice line, linked to the order line it bills.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvoiceLine {
    /// 1-based position on the invoice.
    pub line_no: u32,
    /// The order line billed; 0 for credit-note lines that credit an amount rather than a line.
    pub order_line_no: u32,
    /// Description.
    pub description: String,
    /// Quantity billed.
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    /// Price per unit.
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_price: Decimal,
    /// Line discount (amount discounts prorated to the quantity billed).
    pub discount: Option<Discount>,
    /// VAT rate as a percent number.
    #[serde(with = "rust_decimal::serde::str")]
    pub tax_rate: Decimal,
    /// Rounded line net.
    #[serde(with = "rust_decimal::serde::str")]
    pub net: Decimal,
}

/// An invoice or credit note.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invoice {
    /// Id assigned by the engine.
    pub id: String,
    /// Gap-free number, set when issued.
    pub number: Option<String>,
    /// ISO 11649 creditor reference, set when issued.
    pub rf_reference: Option<String>,
    /// Invoice or credit note.
    pub kind: InvoiceKind,
    /// For a credit note: the id of the invoice it credits.
    pub credits: Option<String>,
    /// The order billed.
    pub order_id: Option<String>,
    /// The customer account.
    pub account_id: String,
    /// Document currency.
    pub currency: Currency,
    /// Lines.
    pub lines: Vec<InvoiceLine>,
    /// Document discount.
    pub document_discount: Option<Discount>,
    /// Totals.
    pub totals: Totals,
    /// Life-cycle state.
    pub state: InvoiceState,
    /// Set when issued.
    pub issue_date: Option<NaiveDate>,
    /// Set when issued.
    pub due_date: Option<NaiveDate>,
    /// Days from issue to due date.
    pub payment_terms_days: u32,
    /// Allocated payments minus reversals.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount_paid: Decimal,
    /// Reversed payments that were refunded to the payer.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount_refunded: Decimal,
    /// Totals of issued credit notes against this invoice.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount_credited: Decimal,
    /// Ids of the allocations against it (payments, credit, write-offs, their reversals), oldest first. Kept in the
    /// invoice, which every allocation rewrites anyway, instead of in an index of its own.
    #[serde(default)]
    pub allocations: Vec<String>,
    /// The payment status last announced to outside systems (`invoice.payment_status_changed`), so that a change of the
    /// derived status is announced once. Kept in the invoice, which every change rewrites anyway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announced_status: Option<PaymentStatus>,
    /// The invoice in other systems (an accounting package): its id and number there, and whether it was born there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_refs: Vec<ExternalRef>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// An invoice as another system keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalRef {
    /// The plugin that speaks to the system (`tryton`).
    pub system: String,
    /// The system's id for the invoice.
    pub id: String,
    /// The system's number for it.
    pub number: String,
    /// True when the invoice was created there and read by a poll connector (an invoice of external origin); false
    /// when settled issued it and sent it there.
    pub origin: bool,
}

fn refuse(inv: &Invoice, action: &'static str, reason: impl Into<String>) -> DomainError {
    let entity = match inv.kind {
        InvoiceKind::Invoice => "invoice",
        InvoiceKind::CreditNote => "credit note",
    };
    DomainError::transition(entity, status_name(&inv.state), action, reason)
}

/// Drafts an invoice for an order: everything that remains when `selection` is `None`, else
/// the given `(order line, quantity)` pairs, which may not exceed what remains.
///
/// Line amount discounts and an amount document discount are prorated so that the parts of a
/// fully invoiced order add up to the order's discounts; percent discounts are kept.
/// `payment_terms_days` is resolved by the caller (the order's billing terms, else the
/// configured default). The caller then calls [`record_invoiced`] in the same transaction.
pub fn draft_from_order(
    order: &Order,
    id: String,
    selection: Option<&[(u32, Decimal)]>,
    payment_terms_days: u32,
    now: DateTime<Utc>,
) -> Result<Invoice, DomainError> {
    let mut left = remaining(order);
    let picks: Vec<(u32, Decimal)> = match selection {
        None => {
            let all: Vec<(u32, Decimal)> = left
                .iter()
                .filter(|(_, q)| **q > Decimal::ZERO)
                .map(|(n, q)| (*n, *q))
                .collect();
            if all.is_empty() {
                return Err(DomainError::transition(
                    "order",
                    "fully_invoiced",
                    "invoice",
                    format!("every line of order {} is already invoiced", order.number),
                ));
            }
            all
        }
        Some([]) => {
            return Err(DomainError::invalid(
                "lines",
                "select at least one order line",
            ))
        }
        Some(selection) => {
            for (i, (line_no, quantity)) in selection.iter().enumerate() {
                let Some(open) = left.get_mut(line_no) else {
                    return Err(DomainError::invalid(
                        format!("lines[{i}].order_line_no"),
                        format!("order {} has no line {line_no}", order.number),
                    ));
                };
                if *quantity <= Decimal::ZERO {
                    return Err(DomainError::invalid(
                        format!("lines[{i}].quantity"),
                        "must be greater than zero",
                    ));
                }
                if *quantity > *open {
                    return Err(DomainError::invalid(
                        format!("lines[{i}].quantity"),
                        format!("{quantity} exceeds what remains to invoice on order line {line_no} ({open})"),
                    ));
                }
                *open -= *quantity;
            }
            selection.to_vec()
        }
    };
    let by_no: BTreeMap<u32, &OrderLine> = order.lines.iter().map(|l| (l.line_no, l)).collect();
    let mut done: BTreeMap<u32, Decimal> = order.invoiced.clone();
    let mut inputs = Vec::with_capacity(picks.len());
    for (line_no, quantity) in &picks {
        let line = by_no.get(line_no).ok_or_else(|| {
            DomainError::invalid("lines", format!("order line {line_no} is missing"))
        })?;
        let before = done.get(line_no).copied().unwrap_or(Decimal::ZERO);
        let after = before + *quantity;
        done.insert(*line_no, after);
        let discount = match &line.discount {
            Some(Discount::Amount(total)) => {
                let share = cumulative_share(*total, after, line.quantity, &order.currency)
                    - cumulative_share(*total, before, line.quantity, &order.currency);
                let gross =
                    (*quantity * line.unit_price).trunc_with_scale(order.currency.minor_units());
                Some(Discount::Amount(share.min(gross).max(Decimal::ZERO)))
            }
            other => other.clone(),
        };
        inputs.push(LineInput {
            description: line.description.clone(),
            quantity: *quantity,
            unit_price: line.unit_price,
            discount,
            tax_rate: line.tax_rate,
        });
    }

    let document_discount = match &order.document_discount {
        Some(Discount::Amount(total)) => {
            let (_, plain) = compute(&inputs, None, &order.currency)?;
            let order_net = order.totals.lines_net;
            // Shares of the cumulative invoiced net telescope; at full quantities the cumulative
            // net is the order's lines_net, so a fully invoiced order's parts sum to the total.
            let share_of = |net: Decimal| cumulative_share(*total, net, order_net, &order.currency);
            let before = share_of(invoiced_net(order, &order.invoiced)?);
            let after = share_of(invoiced_net(order, &done)?);
            let share = (after - before).max(Decimal::ZERO).min(plain.lines_net);
            Some(Discount::Amount(round_money(share, &order.currency)))
        }
        other => other.clone(),
    };
    let (doc_lines, totals) = compute(&inputs, document_discount.as_ref(), &order.currency)?;
    let lines = doc_lines
        .into_iter()
        .zip(&picks)
        .map(|(l, (order_line_no, _))| InvoiceLine {
            line_no: l.line_no,
            order_line_no: *order_line_no,
            description: l.description,
            quantity: l.quantity,
            unit_price: l.unit_price,
            discount: l.discount,
            tax_rate: l.tax_rate,
            net: l.net,
        })
        .collect();
    Ok(Invoice {
        id,
        number: None,
        rf_reference: None,
        kind: InvoiceKind::Invoice,
        credits: None,
        order_id: Some(order.id.clone()),
        account_id: order.account_id.clone(),
        currency: order.currency.clone(),
        lines,
        document_discount,
        totals,
        state: InvoiceState::Draft,
        issue_date: None,
        due_date: None,
        payment_terms_days,
        amount_paid: Decimal::ZERO,
        amount_refunded: Decimal::ZERO,
        amount_credited: Decimal::ZERO,
        announced_status: None,
        allocations: Vec::new(),
        external_refs: Vec::new(),
        created_at: now,
        updated_at: now,
    })
}

/// The part of `total` that belongs to `quantity` out of `of`, rounded; telescopes to `total`.
fn cumulative_share(
    total: Decimal,
    quantity: Decimal,
    of: Decimal,
    currency: &Currency,
) -> Decimal {
    if of.is_zero() {
        return Decimal::ZERO;
    }
    let quantity = quantity.min(of);
    // Multiplying first is exact; dividing first cannot overflow, for absurdly large amounts.
    let share = total
        .checked_mul(quantity)
        .and_then(|v| v.checked_div(of))
        .unwrap_or_else(|| total * (quantity / of));
    round_money(share, currency)
}

/// Sum of the order's line nets at the `invoiced` quantities, each line rounded once.
fn invoiced_net(order: &Order, invoiced: &BTreeMap<u32, Decimal>) -> Result<Decimal, DomainError> {
    let mut net = Decimal::ZERO;
    for line in &order.lines {
        let done = invoiced
            .get(&line.line_no)
            .copied()
            .unwrap_or(Decimal::ZERO);
        if done <= Decimal::ZERO {
            continue;
        }
        let gross = done
            .checked_mul(line.unit_price)
            .ok_or_else(|| DomainError::invalid("lines", "amounts are too large"))?;
        let discount = match &line.discount {
            None => Decimal::ZERO,
            Some(Discount::Percent(p)) => (gross / Decimal::ONE_HUNDRED) * *p,
            Some(Discount::Amount(total)) => {
                cumulative_share(*total, done, line.quantity, &order.currency)
            }
        };
        net += round_money(gross - discount, &order.currency);
    }
    Ok(net)
}

/// Adds an invoice's quantities to the order's invoiced quantities (drafts reserve them too).
pub fn record_invoiced(order: &mut Order, invoice: &Invoice) {
    if invoice.kind != InvoiceKind::Invoice
        || invoice.order_id.as_deref() != Some(order.id.as_str())
    {
        return;
    }
    for line in &invoice.lines {
        *order.invoiced.entry(line.order_line_no).or_default() += line.quantity;
    }
}

/// Gives an invoice's quantities back to the order, when the invoice is voided.
pub fn release_invoiced(order: &mut Order, invoice: &Invoice) {
    if invoice.kind != InvoiceKind::Invoice
        || invoice.order_id.as_deref() != Some(order.id.as_str())
    {
        return;
    }
    for line in &invoice.lines {
        if let Some(done) = order.invoiced.get_mut(&line.order_line_no) {
            *done = (*done - line.quantity).max(Decimal::ZERO);
        }
    }
    order.invoiced.retain(|_, q| !q.is_zero());
}

/// Issues a draft: sets number, creditor reference, issue date and due date (default
/// `issue_date + payment_terms_days`). The caller sets `updated_at`.
pub fn issue(
    inv: &mut Invoice,
    number: String,
    rf_reference: String,
    issue_date: NaiveDate,
    due_date: Option<NaiveDate>,
) -> Result<(), DomainError> {
    if inv.state != InvoiceState::Draft {
        return Err(refuse(inv, "issue", "only a draft can be issued"));
    }
    if number.trim().is_empty() {
        return Err(DomainError::invalid("number", "must not be empty"));
    }
    let due = match due_date {
        Some(due) => due,
        None => issue_date
            .checked_add_days(Days::new(u64::from(inv.payment_terms_days)))
            .ok_or_else(|| DomainError::invalid("issue_date", "due date is out of range"))?,
    };
    if due < issue_date {
        return Err(DomainError::invalid(
            "due_date",
            format!("{due} is before the issue date {issue_date}"),
        ));
    }
    inv.number = Some(number);
    inv.rf_reference = Some(rf_reference);
    inv.issue_date = Some(issue_date);
    inv.due_date = Some(due);
    inv.state = InvoiceState::Issued;
    Ok(())
}

/// Voids a draft, or an issued invoice that has no payments and no credit notes. An issued
/// credit note is final. The caller releases order quantities with [`release_invoiced`].
pub fn void(inv: &mut Invoice) -> Result<(), DomainError> {
    match (inv.state, inv.kind) {
        (InvoiceState::Void, _) => return Err(refuse(inv, "void", "it is already void")),
        (InvoiceState::Issued, InvoiceKind::CreditNote) => {
            return Err(refuse(inv, "void", "an issued credit note is final"))
        }
        (InvoiceState::Issued, _) if !inv.amount_paid.is_zero() => {
            return Err(refuse(
                inv,
                "void",
                format!(
                    "{} {} is paid; reverse the payments first or issue a credit note",
                    inv.amount_paid, inv.currency
                ),
            ))
        }
        (InvoiceState::Issued, _) if !inv.amount_credited.is_zero() => {
            return Err(refuse(
                inv,
                "void",
                "it has been partly credited; issue a credit note for the rest",
            ))
        }
        _ => {}
    }
    inv.state = InvoiceState::Void;
    Ok(())
}

/// Drafts a credit note for an issued invoice: the full uncredited amount by default, or
/// `amount` (gross, including VAT) spread over the invoice's VAT rates.
///
/// A first full credit copies the invoice's lines. A partial credit gets one line per VAT rate
/// whose gross is the rate's share of `amount`; when VAT rounding makes the exact gross
/// impossible the credit note comes out one minor unit lower, never higher.
pub fn credit_note(
    inv: &Invoice,
    id: String,
    amount: Option<Decimal>,
    now: DateTime<Utc>,
) -> Result<Invoice, DomainError> {
    if inv.kind != InvoiceKind::Invoice {
        return Err(refuse(inv, "credit", "a credit note cannot be credited"));
    }
    if inv.state != InvoiceState::Issued {
        return Err(refuse(
            inv,
            "credit",
            "only issued invoices can be credited; void a draft instead",
        ));
    }
    let creditable = inv.totals.total - inv.amount_credited;
    if creditable <= Decimal::ZERO {
        return Err(refuse(inv, "credit", "it is already fully credited"));
    }
    if let Some(amount) = amount {
        if amount <= Decimal::ZERO {
            return Err(DomainError::invalid("amount", "must be greater than zero"));
        }
        check_scale("amount", amount, &inv.currency)?;
        if amount > creditable {
            return Err(DomainError::invalid(
                "amount",
                format!("{amount} exceeds what can still be credited ({creditable})"),
            ));
        }
    }
    let number = inv.number.as_deref().unwrap_or(&inv.id);
    let (lines, document_discount, totals) = if amount.is_none() && inv.amount_credited.is_zero() {
        (
            inv.lines.clone(),
            inv.document_discount.clone(),
            inv.totals.clone(),
        )
    } else {
        let target = round_money(amount.unwrap_or(creditable), &inv.currency);
        let weights: Vec<Decimal> = inv.totals.taxes.iter().map(|g| g.base + g.amount).collect();
        let parts = spread(target, &weights, &inv.currency)?;
        let inputs: Vec<LineInput> = inv
            .totals
            .taxes
            .iter()
            .zip(parts)
            .filter(|(_, gross)| *gross > Decimal::ZERO)
            .map(|(group, gross)| LineInput {
                description: format!("Credit for invoice {number} ({}% VAT)", group.rate),
                quantity: Decimal::ONE,
                unit_price: net_for_gross(gross, group.rate, &inv.currency),
                discount: None,
                tax_rate: group.rate,
            })
            .collect();
        let (doc_lines, totals) = compute(&inputs, None, &inv.currency)?;
        let lines = doc_lines
            .into_iter()
            .map(|l| InvoiceLine {
                line_no: l.line_no,
                order_line_no: 0,
                description: l.description,
                quantity: l.quantity,
                unit_price: l.unit_price,
                discount: l.discount,
                tax_rate: l.tax_rate,
                net: l.net,
            })
            .collect();
        (lines, None, totals)
    };
    Ok(Invoice {
        id,
        number: None,
        rf_reference: None,
        kind: InvoiceKind::CreditNote,
        credits: Some(inv.id.clone()),
        order_id: inv.order_id.clone(),
        account_id: inv.account_id.clone(),
        currency: inv.currency.clone(),
        lines,
        document_discount,
        totals,
        state: InvoiceState::Draft,
        issue_date: None,
        due_date: None,
        payment_terms_days: 0,
        amount_paid: Decimal::ZERO,
        amount_refunded: Decimal::ZERO,
        amount_credited: Decimal::ZERO,
        announced_status: None,
        allocations: Vec::new(),
        external_refs: Vec::new(),
        created_at: now,
        updated_at: now,
    })
}

/// The largest net whose net + rounded VAT does not exceed `gross`, and equals it when possible.
fn net_for_gross(gross: Decimal, rate: Decimal, currency: &Currency) -> Decimal {
    let unit = Decimal::new(1, currency.minor_units());
    // Divide before multiplying so that no intermediate exceeds `gross`.
    let with_tax = |net: Decimal| net + round_money(net / Decimal::ONE_HUNDRED * rate, currency);
    let guess = round_money(
        gross / (Decimal::ONE_HUNDRED + rate) * Decimal::ONE_HUNDRED,
        currency,
    );
    [guess + unit, guess, guess - unit]
        .into_iter()
        .find(|net| *net >= Decimal::ZERO && with_tax(*net) <= gross)
        .unwrap_or(Decimal::ZERO)
}

/// Records an issued credit note against the invoice it credits (see [`apply_credit_note`]).
pub fn record_credit(original: &mut Invoice, note: &Invoice) -> Result<(), DomainError> {
    if note.kind != InvoiceKind::CreditNote || note.credits.as_deref() != Some(original.id.as_str())
    {
        return Err(DomainError::invalid(
            "credits",
            format!("this credit note does not credit invoice {}", original.id),
        ));
    }
    apply_credit_note(original, note.totals.total)
}

/// Adds an issued credit note's total to the invoice's `amount_credited`: issued invoices
/// only, `0 < amount <= total - already credited`. If this takes the balance below zero the
/// caller moves the surplus to the customer's credit balance.
pub fn apply_credit_note(inv: &mut Invoice, amount: Decimal) -> Result<(), DomainError> {
    if inv.kind != InvoiceKind::Invoice {
        return Err(refuse(inv, "credit", "a credit note cannot be credited"));
    }
    if inv.state != InvoiceState::Issued {
        return Err(refuse(
            inv,
            "credit",
            "only issued invoices can be credited",
        ));
    }
    if amount <= Decimal::ZERO {
        return Err(DomainError::invalid("amount", "must be greater than zero"));
    }
    let creditable = inv.totals.total - inv.amount_credited;
    if amount > creditable {
        return Err(DomainError::invalid(
            "amount",
            format!("{amount} exceeds what can still be credited ({creditable})"),
        ));
    }
    inv.amount_credited += amount;
    Ok(())
}

/// What the customer still owes: total - credited - paid (negative when overpaid). Zero for
/// credit notes, which are settled by being issued.
pub fn balance(inv: &Invoice) -> Decimal {
    match inv.kind {
        InvoiceKind::Invoice => inv.totals.total - inv.amount_credited - inv.amount_paid,
        InvoiceKind::CreditNote => Decimal::ZERO,
    }
}

/// The derived payment status on `today`.
///
/// Overdue takes precedence over partially paid: a past-due invoice with a balance is overdue
/// whether or not part of it was paid (architecture section 3).
pub fn payment_status(inv: &Invoice, today: NaiveDate) -> PaymentStatus {
    match inv.state {
        InvoiceState::Draft => return PaymentStatus::Draft,
        InvoiceState::Void => return PaymentStatus::Void,
        InvoiceState::Issued => {}
    }
    if inv.kind == InvoiceKind::CreditNote {
        return PaymentStatus::Paid;
    }
    let figures = StatusFigures {
        total: inv.totals.total,
        amount_paid: inv.amount_paid,
        amount_refunded: inv.amount_refunded,
        balance: balance(inv),
        due_date: inv.due_date,
    };
    figures.status(today)
}

/// The figures of an issued invoice (not a credit note) its payment status is derived from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StatusFigures {
    /// Invoice total.
    pub total: Decimal,
    /// Allocated payments minus reversals.
    pub amount_paid: Decimal,
    /// Reversed payments refunded to the payer.
    pub amount_refunded: Decimal,
    /// What is still owed ([`balance`]).
    pub balance: Decimal,
    /// Due date.
    pub due_date: Option<NaiveDate>,
}

impl StatusFigures {
    /// The derived payment status on `today` ([`payment_status`] of an issued invoice).
    pub fn status(&self, today: NaiveDate) -> PaymentStatus {
        if self.amount_refunded > Decimal::ZERO && self.amount_paid.is_zero() {
            PaymentStatus::Refunded
        } else if self.balance <= Decimal::ZERO && self.total > Decimal::ZERO {
            PaymentStatus::Paid
        } else if self.balance > Decimal::ZERO && self.due_date.is_some_and(|due| due < today) {
            PaymentStatus::Overdue
        } else if self.amount_paid > Decimal::ZERO && self.balance > Decimal::ZERO {
            PaymentStatus::PartiallyPaid
        } else {
            PaymentStatus::Unpaid
        }
    }
}

/// Applies an allocated payment (currency checked by the caller): issued invoices only,
/// `0 < amount <= balance`.
pub fn apply_payment(inv: &mut Invoice, amount: Decimal) -> Result<(), DomainError> {
    if inv.state != InvoiceState::Issued || inv.kind != InvoiceKind::Invoice {
        let reason = match inv.state {
            InvoiceState::Draft => "issue it before recording payments",
            _ => "only issued invoices can be paid",
        };
        return Err(refuse(inv, "pay", reason));
    }
    check_payable(amount, balance(inv))?;
    inv.amount_paid += amount;
    Ok(())
}

/// The amount check of [`apply_payment`] against an issued invoice's balance: `0 < amount <= balance`.
pub fn check_payable(amount: Decimal, balance: Decimal) -> Result<(), DomainError> {
    if amount <= Decimal::ZERO {
        return Err(DomainError::invalid("amount", "must be greater than zero"));
    }
    if amount > balance {
        return Err(DomainError::invalid(
            "amount",
            format!("{amount} exceeds the balance {balance} of the invoice"),
        ));
    }
    Ok(())
}

/// Writes off part of the balance (an allocation of kind write-off): same rules as
/// [`apply_payment`], and it counts in `amount_paid`, which sums allocations of every kind.
pub fn write_off(inv: &mut Invoice, amount: Decimal) -> Result<(), DomainError> {
    if inv.state != InvoiceState::Issued || inv.kind != InvoiceKind::Invoice {
        return Err(refuse(
            inv,
            "write off",
            "only issued invoices can be written off",
        ));
    }
    apply_payment(inv, amount)
}

/// Takes back part of what was paid (a payment reversal); `refund` records that the money went
/// back to the payer.
pub fn reverse_payment(
    inv: &mut Invoice,
    amount: Decimal,
    refund: bool,
) -> Result<(), DomainError> {
    if amount <= Decimal::ZERO {
        return Err(DomainError::invalid("amount", "must be greater than zero"));
    }
    if amount > inv.amount_paid {
        return Err(DomainError::invalid(
            "amount",
            format!("{amount} exceeds the amount paid {}", inv.amount_paid),
        ));
    }
    inv.amount_paid -= amount;
    if refund {
        inv.amount_refunded += amount;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::order::tests::{day, line, now, order};
    use proptest::prelude::*;
    use rust_decimal_macros::dec;

    fn std_order() -> Order {
        order(
            vec![
                line("Licence", dec!(10), dec!(100.00), dec!(20)),
                line("Setup", dec!(1), dec!(500.00), dec!(10)),
            ],
            None,
        )
    }

    fn draft(order: &Order, selection: Option<&[(u32, Decimal)]>) -> Invoice {
        draft_from_order(order, "I1".into(), selection, 30, now()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn issued(total: Decimal) -> Invoice {
        let o = order(vec![line("A", dec!(1), total, dec!(0))], None);
        let mut inv = draft(&o, None);
        issue(
            &mut inv,
            "INV-2026-001".into(),
            "RF18INV2026001".into(),
            day(1),
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        inv
    }

    #[test]
    fn whole_order_invoice_matches_the_order_totals() {
        let o = std_order();
        let inv = draft(&o, None);
        assert_eq!(inv.totals, o.totals);
        assert_eq!(
            inv.lines
                .iter()
                .map(|l| l.order_line_no)
                .collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(
            (inv.state, inv.payment_terms_days, inv.number.clone()),
            (InvoiceState::Draft, 30, None)
        );
    }

    #[test]
    fn partial_invoices_never_exceed_the_order() {
        let mut o = std_order();
        let first = draft(&o, Some(&[(1, dec!(4))]));
        assert_eq!(first.totals.total.to_string(), "480.00");
        record_invoiced(&mut o, &first);
        assert_eq!(remaining(&o), BTreeMap::from([(1, dec!(6)), (2, dec!(1))]));

        let too_much = draft_from_order(
            &o,
            "I2".into(),
            Some(&[(2, dec!(1)), (1, dec!(7))]),
            30,
            now(),
        );
        assert_eq!(
            too_much.err(),
            Some(DomainError::invalid(
                "lines[1].quantity",
                "7 exceeds what remains to invoice on order line 1 (6)"
            ))
        );
        let twice = draft_from_order(
            &o,
            "I2".into(),
            Some(&[(1, dec!(4)), (1, dec!(3))]),
            30,
            now(),
        );
        assert!(
            matches!(twice, Err(DomainError::Invalid { ref field, .. }) if field == "lines[1].quantity")
        );
        for (selection, field) in [
            (vec![(3, dec!(1))], "lines[0].order_line_no"),
            (vec![(1, dec!(0))], "lines[0].quantity"),
            (vec![(1, dec!(-1))], "lines[0].quantity"),
            (vec![], "lines"),
        ] {
            match draft_from_order(&o, "I2".into(), Some(&selection), 30, now()) {
                Err(DomainError::Invalid { field: got, .. }) => assert_eq!(got, field),
                other => panic!("expected invalid {field}, got {other:?}"),
            }
        }

        let rest = draft(&o, None);
        assert_eq!(
            rest.lines
                .iter()
                .map(|l| (l.order_line_no, l.quantity))
                .collect::<Vec<_>>(),
            [(1, dec!(6)), (2, dec!(1))]
        );
        record_invoiced(&mut o, &rest);
        assert!(crate::domain::order::fully_invoiced(&o));
        assert_eq!(first.totals.total + rest.totals.total, o.totals.total);
        let none_left = draft_from_order(&o, "I3".into(), None, 30, now());
        assert!(
            matches!(
                none_left,
                Err(DomainError::Transition {
                    entity: "order",
                    ..
                })
            ),
            "{none_left:?}"
        );

        release_invoiced(&mut o, &rest);
        assert_eq!(remaining(&o), BTreeMap::from([(1, dec!(6)), (2, dec!(1))]));
    }

    #[test]
    fn prorated_amount_discounts_add_up_over_partial_invoices() {
        let mut discounted = line("A", dec!(3), dec!(10.00), dec!(20));
        discounted.discount = Some(Discount::Amount(dec!(1.00)));
        let mut o = order(
            vec![discounted, line("B", dec!(1), dec!(7.00), dec!(0))],
            Some(Discount::Amount(dec!(1.00))),
        );
        let mut sum = Decimal::ZERO;
        for selection in [
            vec![(1, dec!(1))],
            vec![(1, dec!(1)), (2, dec!(1))],
            vec![(1, dec!(1))],
        ] {
            let inv = draft(&o, Some(&selection));
            record_invoiced(&mut o, &inv);
            sum += inv.totals.total;
        }
        assert_eq!(sum, o.totals.total);
    }

    #[test]
    fn issue_sets_number_reference_and_due_date() {
        let o = std_order();
        let mut inv = draft(&o, None);
        assert!(
            matches!(issue(&mut inv, "N".into(), "RF".into(), day(10), Some(day(9))),
            Err(DomainError::Invalid { ref field, .. }) if field == "due_date")
        );
        assert_eq!(inv.state, InvoiceState::Draft);
        assert_eq!(
            issue(&mut inv, "INV-2026-001".into(), "RF18".into(), day(1), None),
            Ok(())
        );
        assert_eq!(
            (inv.number.as_deref(), inv.rf_reference.as_deref()),
            (Some("INV-2026-001"), Some("RF18"))
        );
        assert_eq!(
            (inv.issue_date, inv.due_date),
            (Some(day(1)), Some(day(31)))
        );
        assert_eq!(
            issue(&mut inv, "INV-2026-002".into(), "RF".into(), day(2), None)
                .map_err(|e| e.to_string()),
            Err("cannot issue invoice in status issued: only a draft can be issued".into())
        );
        let mut explicit = draft(&o, None);
        assert_eq!(
            issue(&mut explicit, "N".into(), "RF".into(), day(1), Some(day(1))),
            Ok(())
        );
        assert_eq!(explicit.due_date, Some(day(1)));
    }

    #[test]
    fn void_rules() {
        let o = std_order();
        let mut d = draft(&o, None);
        assert_eq!(void(&mut d), Ok(()));
        assert!(void(&mut d).is_err(), "voiding twice");
        let mut unpaid = issued(dec!(100));
        assert_eq!(void(&mut unpaid), Ok(()));
        assert_eq!(payment_status(&unpaid, day(1)), PaymentStatus::Void);
        let mut paid = issued(dec!(100));
        assert_eq!(apply_payment(&mut paid, dec!(10)), Ok(()));
        let message = void(&mut paid)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            message.contains("reverse the payments first or issue a credit note"),
            "{message}"
        );
        assert_eq!(paid.state, InvoiceState::Issued);
    }

    #[test]
    fn full_credit_note_copies_the_invoice() {
        let o = std_order();
        let mut inv = draft(&o, None);
        assert!(
            credit_note(&inv, "C1".into(), None, now()).is_err(),
            "drafts are voided, not credited"
        );
        assert_eq!(
            issue(&mut inv, "INV-1".into(), "RF".into(), day(1), None),
            Ok(())
        );
        let note = credit_note(&inv, "C1".into(), None, now()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (note.kind, note.credits.as_deref(), note.state),
            (InvoiceKind::CreditNote, Some("I1"), InvoiceState::Draft)
        );
        assert_eq!(
            (note.totals.clone(), note.lines.clone()),
            (inv.totals.clone(), inv.lines.clone())
        );
        assert_eq!(record_credit(&mut inv, &note), Ok(()));
        assert_eq!(balance(&inv), Decimal::ZERO);
        assert_eq!(payment_status(&inv, day(1)), PaymentStatus::Paid);
        assert!(
            credit_note(&inv, "C2".into(), None, now()).is_err(),
            "nothing left to credit"
        );
        assert!(
            credit_note(&note, "C3".into(), None, now()).is_err(),
            "credit notes are not credited"
        );
    }

    #[test]
    fn partial_credit_notes_split_over_vat_rates_and_never_over_credit() {
        let mut inv = draft(&std_order(), None);
        assert_eq!(
            issue(&mut inv, "INV-1".into(), "RF".into(), day(1), None),
            Ok(())
        );
        // Groups: 10% base 500 -> 550 gross, 20% base 1000 -> 1200 gross; total 1750.
        let note = credit_note(&inv, "C1".into(), Some(dec!(175.00)), now())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(note.totals.total, dec!(175.00));
        let groups: Vec<(Decimal, Decimal)> = note
            .totals
            .taxes
            .iter()
            .map(|g| (g.rate, g.base + g.amount))
            .collect();
        assert_eq!(groups, [(dec!(10), dec!(55.00)), (dec!(20), dec!(120.00))]);
        assert_eq!(record_credit(&mut inv, &note), Ok(()));
        for (amount, field) in [
            (dec!(0), "amount"),
            (dec!(1575.01), "amount"),
            (dec!(1.001), "amount"),
        ] {
            match credit_note(&inv, "C2".into(), Some(amount), now()) {
                Err(DomainError::Invalid { field: got, .. }) => assert_eq!(got, field, "{amount}"),
                other => panic!("{amount}: expected invalid {field}, got {other:?}"),
            }
        }
        let rest = credit_note(&inv, "C2".into(), None, now()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rest.totals.total, dec!(1575.00));
        assert_eq!(record_credit(&mut inv, &rest), Ok(()));
        assert_eq!(inv.amount_credited, inv.totals.total);
        assert!(
            record_credit(&mut inv, &rest).is_err(),
            "over-crediting is refused"
        );
    }

    #[test]
    fn net_for_gross_finds_an_exact_or_lower_gross() {
        let eur = Currency::parse("EUR").unwrap_or_else(|e| panic!("{e}"));
        for (gross, rate) in [
            (dec!(100.00), dec!(20)),
            (dec!(0.01), dec!(21)),
            (dec!(0.03), dec!(50)),
            (dec!(999.99), dec!(7.7)),
        ] {
            let net = net_for_gross(gross, rate, &eur);
            let back = net + round_money(net * rate / Decimal::ONE_HUNDRED, &eur);
            assert!(
                back <= gross && gross - back <= dec!(0.01),
                "{gross} @ {rate}: net {net} gives {back}"
            );
        }
    }

    #[test]
    fn payment_status_covers_every_branch() {
        struct Case {
            name: &'static str,
            state: InvoiceState,
            kind: InvoiceKind,
            total: Decimal,
            paid: Decimal,
            refunded: Decimal,
            credited: Decimal,
            today: u32,
            expected: PaymentStatus,
        }
        let base = Case {
            name: "",
            state: InvoiceState::Issued,
            kind: InvoiceKind::Invoice,
            total: dec!(100.00),
            paid: dec!(0),
            refunded: dec!(0),
            credited: dec!(0),
            today: 31,
            expected: PaymentStatus::Unpaid,
        };
        use PaymentStatus as P;
        let cases = [
            Case {
                name: "draft",
                state: InvoiceState::Draft,
                expected: P::Draft,
                ..base
            },
            Case {
                name: "void",
                state: InvoiceState::Void,
                expected: P::Void,
                ..base
            },
            Case {
                name: "unpaid on the due date",
                expected: P::Unpaid,
                ..base
            },
            Case {
                name: "overdue the day after",
                today: 32,
                expected: P::Overdue,
                ..base
            },
            Case {
                name: "partially paid",
                paid: dec!(40),
                expected: P::PartiallyPaid,
                ..base
            },
            Case {
                name: "partially paid and past due",
                paid: dec!(40),
                today: 32,
                expected: P::Overdue,
                ..base
            },
            Case {
                name: "paid",
                paid: dec!(100),
                today: 32,
                expected: P::Paid,
                ..base
            },
            Case {
                name: "paid after a partial credit",
                paid: dec!(60),
                credited: dec!(40),
                expected: P::Paid,
                ..base
            },
            Case {
                name: "fully credited",
                credited: dec!(100),
                today: 40,
                expected: P::Paid,
                ..base
            },
            Case {
                name: "refunded",
                refunded: dec!(100),
                expected: P::Refunded,
                ..base
            },
            Case {
                name: "partly refunded",
                paid: dec!(60),
                refunded: dec!(40),
                expected: P::PartiallyPaid,
                ..base
            },
            Case {
                name: "zero total",
                total: dec!(0),
                expected: P::Unpaid,
                ..base
            },
            Case {
                name: "issued credit note",
                kind: InvoiceKind::CreditNote,
                expected: P::Paid,
                ..base
            },
        ];
        for case in cases {
            let mut inv = issued(case.total);
            inv.state = case.state;
            inv.kind = case.kind;
            inv.amount_paid = case.paid;
            inv.amount_refunded = case.refunded;
            inv.amount_credited = case.credited;
            let today = NaiveDate::from_ymd_opt(2026, 3, 1)
                .and_then(|d| d.checked_add_days(Days::new(u64::from(case.today) - 1)));
            let today = today.unwrap_or_else(|| panic!("bad date"));
            assert_eq!(payment_status(&inv, today), case.expected, "{}", case.name);
        }
    }

    #[test]
    fn payments_apply_within_the_balance_and_reverse() {
        let mut inv = issued(dec!(100.00));
        assert_eq!(apply_payment(&mut inv, dec!(60.00)), Ok(()));
        assert_eq!(balance(&inv), dec!(40.00));
        assert_eq!(
            apply_payment(&mut inv, dec!(40.01)),
            Err(DomainError::invalid(
                "amount",
                "40.01 exceeds the balance 40.00 of the invoice"
            ))
        );
        assert!(apply_payment(&mut inv, dec!(0)).is_err());
        assert_eq!(apply_payment(&mut inv, dec!(40.00)), Ok(()));
        assert_eq!(payment_status(&inv, day(1)), PaymentStatus::Paid);
        assert_eq!(reverse_payment(&mut inv, dec!(30.00), false), Ok(()));
        assert_eq!(
            (inv.amount_paid, inv.amount_refunded),
            (dec!(70.00), dec!(0))
        );
        assert!(reverse_payment(&mut inv, dec!(70.01), true).is_err());
        assert_eq!(reverse_payment(&mut inv, dec!(70.00), true), Ok(()));
        assert_eq!(payment_status(&inv, day(1)), PaymentStatus::Refunded);

        let mut draft_inv = draft(&std_order(), None);
        assert_eq!(
            apply_payment(&mut draft_inv, dec!(1)).map_err(|e| e.to_string()),
            Err("cannot pay invoice in status draft: issue it before recording payments".into())
        );
        let mut void_inv = issued(dec!(10));
        assert_eq!(void(&mut void_inv), Ok(()));
        assert!(matches!(
            apply_payment(&mut void_inv, dec!(1)),
            Err(DomainError::Transition { .. })
        ));
    }

    #[test]
    fn write_offs_settle_like_payments_on_issued_invoices_only() {
        let mut inv = issued(dec!(100.00));
        assert_eq!(write_off(&mut inv, dec!(0.50)), Ok(()));
        assert_eq!((inv.amount_paid, balance(&inv)), (dec!(0.50), dec!(99.50)));
        assert!(write_off(&mut inv, dec!(99.51)).is_err());
        let mut d = draft(&std_order(), None);
        assert_eq!(
            write_off(&mut d, dec!(1)).map_err(|e| e.to_string()),
            Err(
                "cannot write off invoice in status draft: only issued invoices can be written off"
                    .into()
            )
        );
    }

    #[test]
    fn applying_credit_checks_state_and_what_is_left() {
        let mut inv = issued(dec!(100.00));
        assert_eq!(apply_payment(&mut inv, dec!(100.00)), Ok(()));
        assert_eq!(apply_credit_note(&mut inv, dec!(30.00)), Ok(()));
        assert_eq!(
            balance(&inv),
            dec!(-30.00),
            "overpaid: the caller moves 30.00 to credit"
        );
        assert_eq!(payment_status(&inv, day(1)), PaymentStatus::Paid);
        for amount in [dec!(0), dec!(70.01)] {
            assert!(
                matches!(
                    apply_credit_note(&mut inv, amount),
                    Err(DomainError::Invalid { .. })
                ),
                "{amount}"
            );
        }
        assert_eq!(apply_credit_note(&mut inv, dec!(70.00)), Ok(()));
        let mut d = draft(&std_order(), None);
        assert!(matches!(
            apply_credit_note(&mut d, dec!(1)),
            Err(DomainError::Transition { .. })
        ));
        let mut other = issued(dec!(10));
        let mut note =
            credit_note(&other, "C9".into(), None, now()).unwrap_or_else(|e| panic!("{e}"));
        note.credits = Some("someone else".into());
        assert!(matches!(
            record_credit(&mut other, &note),
            Err(DomainError::Invalid { .. })
        ));
        assert_eq!(other.amount_credited, Decimal::ZERO);
    }

    #[test]
    fn every_invoice_action_from_every_state_and_kind() {
        use InvoiceKind::{CreditNote, Invoice as Inv};
        use InvoiceState::{Draft, Issued, Void};
        type Act = fn(&mut Invoice) -> Result<(), DomainError>;
        let actions: [(&str, Act); 6] = [
            ("issue", |i| {
                issue(i, "N-1".into(), "RF".into(), day(1), None)
            }),
            ("void", void),
            ("credit", |i| {
                credit_note(i, "C".into(), None, now()).map(|_| ())
            }),
            ("pay", |i| apply_payment(i, dec!(1))),
            ("write off", |i| write_off(i, dec!(1))),
            ("apply credit", |i| apply_credit_note(i, dec!(1))),
        ];
        // (action, state, kind) triples that are allowed; everything else is refused.
        let allowed = [
            ("issue", Draft, Inv),
            ("issue", Draft, CreditNote),
            ("void", Draft, Inv),
            ("void", Draft, CreditNote),
            ("void", Issued, Inv),
            ("credit", Issued, Inv),
            ("pay", Issued, Inv),
            ("write off", Issued, Inv),
            ("apply credit", Issued, Inv),
        ];
        for (name, action) in actions {
            for state in [Draft, Issued, Void] {
                for kind in [Inv, CreditNote] {
                    let mut inv = issued(dec!(100.00));
                    inv.state = state;
                    inv.kind = kind;
                    let before = inv.clone();
                    let result = action(&mut inv);
                    let expected = allowed.contains(&(name, state, kind));
                    assert_eq!(
                        result.is_ok(),
                        expected,
                        "{name} {state:?} {kind:?}: {result:?}"
                    );
                    if !expected {
                        assert_eq!(
                            inv, before,
                            "{name} {state:?} {kind:?} changed a refused invoice"
                        );
                        assert!(
                            matches!(result, Err(DomainError::Transition { .. })),
                            "{name} {state:?} {kind:?}: {result:?}"
                        );
                    }
                }
            }
        }
    }

    proptest! {
        #[test]
        fn random_partial_invoicing_never_exceeds_and_completes_exactly(
            picks in prop::collection::vec((1u32..=3, 1i64..=4), 1..12),
        ) {
            let mut first = line("A", dec!(5), dec!(33.335), dec!(20));
            first.discount = Some(Discount::Amount(dec!(2.00)));
            let mut o = order(
                vec![first, line("B", dec!(3), dec!(19.99), dec!(10)), line("C", dec!(2), dec!(7.5), dec!(0))],
                Some(Discount::Amount(dec!(3.00))),
            );
            let mut discount_sum = Decimal::ZERO;
            for (line_no, qty) in picks {
                let open = remaining(&o).get(&line_no).copied().unwrap_or_default();
                let qty = Decimal::from(qty);
                match draft_from_order(&o, "I".into(), Some(&[(line_no, qty)]), 30, now()) {
                    Ok(inv) => {
                        prop_assert!(qty <= open);
                        discount_sum += inv.totals.document_discount;
                        record_invoiced(&mut o, &inv);
                    }
                    Err(_) => prop_assert!(qty > open),
                }
            }
            if let Ok(rest) = draft_from_order(&o, "I".into(), None, 30, now()) {
                discount_sum += rest.totals.document_discount;
                record_invoiced(&mut o, &rest);
            }
            for line in &o.lines {
                prop_assert_eq!(o.invoiced.get(&line.line_no).copied(), Some(line.quantity));
            }
            prop_assert_eq!(discount_sum, dec!(3.00));
        }
    }
}
