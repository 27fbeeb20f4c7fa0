//! Invoices kept in another system (`invoice@1` records from a `poll` connector, e.g. Tryton): an invoice born there
//! becomes an issued invoice of external origin here, reconciled like settled's own; an invoice settled issued and
//! sent there comes back with settled's number (`host_number`) and is only linked to its id there.
//!
//! Every time the poll reads such an invoice again (its write date moved there), what the other system says is left
//! to pay is compared with settled's balance: when less is left there, the difference was paid there (a person
//! entered a payment in the accounting package) and becomes a payment of that system's origin with one allocation of
//! kind `paid_elsewhere` ([`paid_elsewhere`]). Nothing is edited, so re-reading the same state records nothing more.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use settled_plugin_api::{InvoiceRecord, InvoiceRecordTax};

use super::billing::{payment_recorded, Allocating, Named, PaymentDraft};
use super::ingest::ImportSummary;
use super::{EngineResult, Tx};
use crate::domain::invoice::{self, ExternalRef, Invoice, InvoiceKind, InvoiceLine, InvoiceState};
use crate::domain::money::{check_scale, Currency};
use crate::domain::payment::AllocationKind;
use crate::domain::totals::{TaxGroup, Totals};
use crate::domain::DomainError;

/// The dedupe key of an external invoice: `inv:<plugin>:<its id there>`.
fn seen_key(plugin: &str, external_id: &str) -> String {
    format!("inv:{plugin}:{external_id}")
}

/// Why the engine refuses an `invoice@1` record (reads nothing).
pub(super) fn invoice_refusal(r: &InvoiceRecord) -> Option<DomainError> {
    let currency = match Currency::parse(&r.currency) {
        Ok(c) => c,
        Err(e) => return Some(e),
    };
    if r.external_id.trim().is_empty() {
        return Some(DomainError::invalid("external_id", "must not be empty"));
    }
    if r.number.trim().is_empty() {
        return Some(DomainError::invalid("number", "must not be empty"));
    }
    if r.customer.trim().is_empty() {
        return Some(DomainError::invalid("customer", "must not be empty"));
    }
    for (field, amount) in [
        ("untaxed", r.untaxed),
        ("tax", r.tax),
        ("total", r.total),
        ("amount_due", r.amount_due),
    ] {
        if amount < Decimal::ZERO {
            return Some(DomainError::invalid(field, format!("{amount} is negative")));
        }
        if let Err(e) = check_scale(field, amount, &currency) {
            return Some(e);
        }
    }
    if r.untaxed + r.tax != r.total {
        return Some(DomainError::invalid(
            "total",
            format!("{} is not untaxed {} + tax {}", r.total, r.untaxed, r.tax),
        ));
    }
    if r.amount_due > r.total {
        return Some(DomainError::invalid(
            "amount_due",
            format!("{} is more than the total {}", r.amount_due, r.total),
        ));
    }
    if !r.taxes.is_empty() {
        for (i, t) in r.taxes.iter().enumerate() {
            let field = format!("taxes[{i}]");
            if t.rate < Decimal::ZERO || t.base < Decimal::ZERO || t.amount < Decimal::ZERO {
                return Some(DomainError::invalid(
                    field,
                    "rate, base and amount must not be negative",
                ));
            }
            for amount in [t.base, t.amount] {
                if let Err(e) = check_scale(&field, amount, &currency) {
                    return Some(e);
                }
            }
        }
        let (bases, amounts) = r
            .taxes
            .iter()
            .fold((Decimal::ZERO, Decimal::ZERO), |(b, a), t| {
                (b + t.base, a + t.amount)
            });
        if amounts != r.tax {
            return Some(DomainError::invalid(
                "taxes",
                format!(
                    "the tax amounts add up to {amounts}, not to the tax {}",
                    r.tax
                ),
            ));
        }
        if bases > r.untaxed {
            return Some(DomainError::invalid(
                "taxes",
                format!(
                    "the tax bases add up to {bases}, more than untaxed {}",
                    r.untaxed
                ),
            ));
        }
    }
    if r.due_date.is_some_and(|due| due < r.issue_date) {
        return Some(DomainError::invalid(
            "due_date",
            "is before the issue date".to_string(),
        ));
    }
    None
}

/// Commit one `invoice@1` record (already checked by [`invoice_refusal`]).
pub(super) fn ingest_invoice(
    tx: &mut Tx<'_>,
    plugin: &str,
    actor: &str,
    r: InvoiceRecord,
    summary: &mut ImportSummary,
) -> EngineResult<()> {
    let key = seen_key(plugin, &r.external_id);
    if let Some(produced) = tx.seen(&key)? {
        summary.duplicates += 1;
        if let Some(id) = produced["invoice_id"].as_str() {
            paid_elsewhere(tx, plugin, actor, id, &r)?;
            summary.ids.push(id.to_string());
        }
        return Ok(());
    }
    let external = |origin| ExternalRef {
        system: plugin.to_string(),
        id: r.external_id.clone(),
        number: r.number.clone(),
        origin,
    };
    // Settled's own invoice, sent there by a sink: link it, create nothing.
    if let Some(host_number) = &r.host_number {
        if let Some(id) = tx.index("invoice-number", host_number)? {
            let mut inv: Invoice = tx.get("invoice", &id)?;
            if !inv.external_refs.iter().any(|e| e.system == plugin) {
                inv.external_refs.push(external(false));
                inv.updated_at = tx.now;
                // With its open-invoice row: a payment's event names the invoice's ids in other systems from it.
                tx.store_invoice(&inv)?;
                tx.event(
                    actor,
                    "invoice.linked",
                    "invoice",
                    &inv.id,
                    serde_json::json!({"system": plugin, "external_id": r.external_id, "external_number": r.number}),
                    false,
                );
            }
            tx.ws.seen(&key, &serde_json::json!({"invoice_id": inv.id}));
            paid_elsewhere(tx, plugin, actor, &inv.id, &r)?;
            summary.duplicates += 1;
            summary.ids.push(inv.id);
            return Ok(());
        }
    }
    if let Some(other) = tx.index("invoice-number", &r.number)? {
        summary.failed.push(super::Failure {
            record: 0,
            location: r.source_position.clone(),
            field: Some("number".into()),
            reason: format!(
                "invoice number {} is already settled's invoice {other}",
                r.number
            ),
        });
        return Ok(());
    }
    let currency = Currency::parse(&r.currency)?;
    let (account, _) =
        super::leads::find_or_create_account(tx, &r.customer, r.customer_email.as_deref())?;
    let id = tx.new_id("invoice", "inv")?;
    let due = r.due_date.unwrap_or(r.issue_date);
    let lines = r
        .lines
        .iter()
        .zip(1..)
        .map(|(l, line_no)| InvoiceLine {
            line_no,
            order_line_no: 0,
            description: l.description.clone(),
            quantity: l.quantity,
            unit_price: l.unit_price,
            discount: None,
            tax_rate: Decimal::ZERO,
            net: l.net,
        })
        .collect();
    let mut inv = Invoice {
        id: id.clone(),
        number: Some(r.number.clone()),
        rf_reference: None,
        kind: InvoiceKind::Invoice,
        credits: None,
        order_id: None,
        account_id: account.id.clone(),
        currency,
        lines,
        document_discount: None,
        totals: Totals {
            lines_net: r.untaxed,
            document_discount: Decimal::ZERO,
            subtotal: r.untaxed,
            taxes: tax_groups(r.untaxed, &r.taxes),
            tax_total: r.tax,
            total: r.total,
        },
        state: InvoiceState::Issued,
        issue_date: Some(r.issue_date),
        due_date: Some(due),
        payment_terms_days: u32::try_from((due - r.issue_date).num_days()).unwrap_or(0),
        amount_paid: Decimal::ZERO,
        amount_refunded: Decimal::ZERO,
        amount_credited: Decimal::ZERO,
        allocations: Vec::new(),
        announced_status: None,
        external_refs: vec![external(true)],
        created_at: tx.now,
        updated_at: tx.now,
    };
    tx.ws.index("invoice-number", &r.number, &id);
    // Its series (`TRY-`) becomes one the matcher looks for in payment texts.
    tx.state.index.learn_series(&r.number);
    super::billing::index_invoice_refs(tx, &inv);
    tx.event(
        actor,
        "invoice.issued",
        "invoice",
        &id,
        serde_json::json!({"number": r.number, "kind": inv.kind, "rf_reference": null, "total": inv.totals.total,
            "currency": inv.currency, "issue_date": inv.issue_date, "due_date": inv.due_date, "account_id": inv.account_id,
            "customer": account.name, "subtotal": inv.totals.subtotal, "taxes": inv.totals.taxes,
            "tax_total": inv.totals.tax_total, "external_refs": inv.external_refs, "source": r.source_position}),
        true,
    );
    tx.save_invoice(&mut inv, actor)?;
    tx.ws.seen(&key, &serde_json::json!({"invoice_id": id}));
    // Polled when it was already (partly) paid there.
    paid_elsewhere(tx, plugin, actor, &id, &r)?;
    summary.new += 1;
    summary.ids.push(id);
    Ok(())
}

/// The VAT groups of an external invoice, by ascending rate: the record's groups merged per rate, and what of
/// `untaxed` no group covers as a 0 % group, so the groups' bases add up to `untaxed` (checked not to exceed it by
/// [`invoice_refusal`]). None when the record has none.
fn tax_groups(untaxed: Decimal, taxes: &[InvoiceRecordTax]) -> Vec<TaxGroup> {
    if taxes.is_empty() {
        return Vec::new();
    }
    let mut by_rate: BTreeMap<Decimal, (Decimal, Decimal)> = BTreeMap::new();
    for t in taxes {
        let group = by_rate.entry(t.rate.normalize()).or_default();
        group.0 += t.base;
        group.1 += t.amount;
    }
    let uncovered = untaxed - taxes.iter().map(|t| t.base).sum::<Decimal>();
    if uncovered > Decimal::ZERO {
        by_rate.entry(Decimal::ZERO).or_default().0 += uncovered;
    }
    by_rate
        .into_iter()
        .map(|(rate, (base, amount))| TaxGroup { rate, base, amount })
        .collect()
}

/// When the other system has less left to pay on invoice `invoice_id` than settled, the difference was paid there:
/// record it as a payment of that system's origin (source `plugin`, reference its invoice number) with one
/// allocation of kind [`AllocationKind::PaidElsewhere`], announced as `payment.recorded` like any payment. Sinks of
/// that system recognise the kind and do not send it back. Nothing happens when settled knows as much or more
/// (its own payment not delivered there yet), so reading the same invoice again records nothing.
fn paid_elsewhere(
    tx: &mut Tx<'_>,
    plugin: &str,
    actor: &str,
    invoice_id: &str,
    r: &InvoiceRecord,
) -> EngineResult<()> {
    let mut inv: Invoice = tx.get("invoice", invoice_id)?;
    if inv.state != InvoiceState::Issued
        || inv.kind != InvoiceKind::Invoice
        || inv.currency.code() != r.currency
    {
        return Ok(());
    }
    let amount = invoice::balance(&inv) - r.amount_due;
    if amount <= Decimal::ZERO {
        return Ok(());
    }
    let paid_there = r.total - r.amount_due;
    let mut pay = tx.new_payment(PaymentDraft {
        amount,
        currency: inv.currency.clone(),
        received_on: tx.today,
        payer: Some(r.customer.clone()),
        reference: Some(r.number.clone()),
        external_id: Some(format!("{}:paid:{paid_there}", r.external_id)),
        source: plugin,
        bank_account: None,
        payer_account: None,
    })?;
    pay.account_id = Some(inv.account_id.clone());
    let evidence = format!(
        "{plugin} has {} {} left to pay on invoice {} (id {}), settled had {}",
        r.amount_due,
        r.currency,
        r.number,
        r.external_id,
        invoice::balance(&inv)
    );
    let what = Allocating {
        amount,
        kind: AllocationKind::PaidElsewhere,
        rule: "paid_elsewhere",
        evidence: &evidence,
        confidence: 100,
    };
    let made = tx.allocate(&pay, &mut inv, &what, actor)?;
    pay.allocations.push(made.id.clone());
    tx.put("payment", &pay.id, &pay);
    let extra = serde_json::json!({"payer": pay.payer,
        "paid_elsewhere": {"system": plugin, "external_id": r.external_id, "number": r.number}});
    payment_recorded(tx, actor, &pay, &[made], &[Named::from(&inv)], extra);
    Ok(())
}
