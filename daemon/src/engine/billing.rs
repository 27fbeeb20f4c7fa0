//! Invoices (draft, issue with a gap-free number, void, credit), payments and allocations, customer credit,
//! and the announcement of derived payment-status changes.

use std::sync::Arc;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::Deserialize;

use super::sales::field_not_found;
use super::views::DecimalText;
use super::{Engine, EngineResult, Tx};
use crate::config::Config;
use crate::domain::invoice::{
    self, ExternalRef, Invoice, InvoiceKind, InvoiceState, PaymentStatus,
};
use crate::domain::money::{parse_positive_amount, Currency};
use crate::domain::order::Order;
use crate::domain::party::{self, Account, CreditSource, Reopen};
use crate::domain::payment::{
    self, Allocation, AllocationKind, AllocationRequest, Payment, PaymentState,
};
use crate::domain::{rf, DomainError};
use crate::reconcile::{MatchIndex, OpenInvoice, PaymentFigures};
use crate::store::{Patch, Store};

/// `POST /v1/invoices` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvoiceCreate {
    /// The order to invoice.
    pub order_id: String,
    /// Partial invoicing: order line numbers and quantities; omitted = everything that remains.
    #[serde(default)]
    pub lines: Option<Vec<InvoiceLineSelection>>,
}

/// One order line to invoice.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvoiceLineSelection {
    /// Order line number.
    pub line_no: u32,
    /// Quantity to invoice now.
    pub quantity: DecimalText,
}

/// `POST /v1/invoices/{id}/issue` body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueInput {
    /// Default today.
    #[serde(default)]
    pub issue_date: Option<NaiveDate>,
    /// Default issue date + payment terms.
    #[serde(default)]
    pub due_date: Option<NaiveDate>,
}

/// `POST /v1/payments` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentInput {
    /// Amount received (positive).
    pub amount: DecimalText,
    /// ISO 4217 currency.
    pub currency: String,
    /// Day the money arrived; default today.
    #[serde(default)]
    pub received_on: Option<NaiveDate>,
    /// Who paid.
    #[serde(default)]
    pub payer: Option<String>,
    /// Reference given by the payer.
    #[serde(default)]
    pub reference: Option<String>,
    /// Id in the system the payment came from (dedupe key).
    #[serde(default)]
    pub external_id: Option<String>,
    /// Explicit allocations, naming at least one invoice; without them the payment is reconciled automatically.
    #[serde(default)]
    pub allocations: Option<Vec<AllocationJson>>,
}

/// One explicit allocation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocationJson {
    /// The invoice.
    pub invoice_id: String,
    /// Amount; default what the invoice still owes (up to what is left of the payment).
    #[serde(default)]
    pub amount: Option<DecimalText>,
}

/// `POST /v1/invoices/{id}/credit` and `/apply-credit` bodies.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmountInput {
    /// Amount; default the whole remaining amount.
    #[serde(default)]
    pub amount: Option<DecimalText>,
}

/// What a new payment is made of.
pub(crate) struct PaymentDraft<'a> {
    pub amount: Decimal,
    pub currency: Currency,
    pub received_on: NaiveDate,
    pub payer: Option<String>,
    pub reference: Option<String>,
    pub external_id: Option<String>,
    pub source: &'a str,
    pub bank_account: Option<String>,
    pub payer_account: Option<String>,
}

/// Announce a recorded payment (`payment.recorded`, an outbox event) with what every such event carries: amount,
/// currency, the allocations made with their audit trail ([`allocations_json`]), what went to credit and the day it was
/// received; `extra` (a JSON object) adds what the caller knows besides. `known`: invoices the caller holds as saved
/// (read again from the write set otherwise).
pub(crate) fn payment_recorded(
    tx: &mut Tx<'_>,
    actor: &str,
    pay: &Payment,
    made: &[Allocation],
    known: &[Named],
    extra: serde_json::Value,
) {
    let mut body = serde_json::json!({"amount": pay.amount, "currency": pay.currency,
        "allocations": allocations_json(tx, made, known), "to_credit": pay.unallocated, "received_on": pay.received_on});
    if let (Some(body), serde_json::Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    tx.event(actor, "payment.recorded", "payment", &pay.id, body, true);
}

/// The allocations of a payment as its `payment.recorded` event carries them: each with its rule, evidence and
/// confidence, so the audit log explains every allocation without an event of its own.
/// Each also names the invoice's number and, when it is kept in other systems too, its ids there
/// (`invoice_external_refs`), so a sink that keeps invoices (an accounting package) finds its own. An invoice in
/// `known` (as saved in this write set) is not read again.
pub(crate) fn allocations_json(
    tx: &Tx<'_>,
    made: &[Allocation],
    known: &[Named],
) -> serde_json::Value {
    made.iter()
        .map(|a| {
            let read;
            let inv = match known.iter().find(|i| i.id == a.invoice_id) {
                Some(inv) => Some(inv),
                None => {
                    read = tx
                        .get::<Invoice>("invoice", &a.invoice_id)
                        .ok()
                        .map(|inv| Named::from(&inv));
                    read.as_ref()
                }
            };
            let mut json = serde_json::json!({"id": a.id, "invoice_id": a.invoice_id, "amount": a.amount, "kind": a.kind,
                "rule": a.rule, "evidence": a.evidence, "confidence": a.confidence,
                "invoice_number": inv.and_then(|i| i.number.clone())});
            if let Some(refs) = inv.map(|i| &i.external_refs).filter(|r| !r.is_empty()) {
                json["invoice_external_refs"] = serde_json::json!(refs);
            }
            json
        })
        .collect()
}

/// What a `payment.recorded` event names of an invoice a payment paid.
pub(crate) struct Named {
    pub id: String,
    pub number: Option<String>,
    pub external_refs: Vec<ExternalRef>,
}

impl From<&Invoice> for Named {
    fn from(inv: &Invoice) -> Named {
        Named {
            id: inv.id.clone(),
            number: inv.number.clone(),
            external_refs: inv.external_refs.clone(),
        }
    }
}

/// What an allocation of a payment records besides the payment and the invoice: how much, and why.
pub(crate) struct Allocating<'a> {
    pub amount: Decimal,
    pub kind: AllocationKind,
    pub rule: &'a str,
    pub evidence: &'a str,
    pub confidence: u8,
}

/// An allocation [`Tx::allocate_open`] made, and what the caller needs of its invoice.
pub(crate) struct Allocated {
    pub allocation: Allocation,
    pub named: Named,
    pub account_id: String,
    /// The invoice's balance after it.
    pub balance: Decimal,
}

/// A change of an invoice's derived payment status, as `invoice.payment_status_changed` announces it.
struct StatusChange<'a> {
    id: &'a str,
    number: Option<&'a str>,
    from: Option<PaymentStatus>,
    to: PaymentStatus,
    total: Decimal,
    amount_paid: Decimal,
    balance: Decimal,
    currency: &'a str,
    issue_date: Option<NaiveDate>,
    due_date: Option<NaiveDate>,
}

/// The `why` of an `account.credit_changed` event for credit from `source`.
fn credit_why(source: &CreditSource) -> String {
    match source {
        CreditSource::Overpayment { payment_id } => format!("overpayment {payment_id}"),
        CreditSource::CreditNote { credit_note_id, .. } => format!("credit note {credit_note_id}"),
    }
}

/// A change to the in-memory reconciliation index (undone if its write set does not commit).
pub(crate) enum IndexUpdate {
    Upsert(OpenInvoice),
    Remove(String),
    LinkPayer(String, String),
}

impl IndexUpdate {
    pub(crate) fn apply(self, index: &mut MatchIndex) {
        match self {
            IndexUpdate::Upsert(inv) => index.upsert(inv),
            IndexUpdate::Remove(id) => index.remove(&id),
            IndexUpdate::LinkPayer(key, account) => index.link_payer(&key, &account),
        }
    }
}

/// Build the reconciliation index from the store's open invoices.
/// Open-invoice rows handed from the reading thread to the indexing one at a time.
const LOAD_BATCH: usize = 1024;

pub(crate) fn load_index(store: &Store, config: &Config) -> EngineResult<MatchIndex> {
    let n = &config.numbering;
    let shapes =
        crate::reconcile::shapes_from_patterns(&[n.invoice.as_str(), n.credit_note.as_str()]);
    let mut index = MatchIndex::new(shapes);
    // The `open-invoice` index holds each open invoice's matching fields, so start-up is one prefix scan. One thread
    // reads and decodes the rows while this one indexes them: on two cores start-up takes the longer of the two.
    std::thread::scope(|scope| -> EngineResult<()> {
        let (send, receive) = std::sync::mpsc::sync_channel::<Vec<OpenInvoice>>(8);
        let reader = scope.spawn(move || -> EngineResult<()> {
            let mut batch = Vec::with_capacity(LOAD_BATCH);
            for open in store.index_values_iter::<OpenInvoice>("open-invoice")? {
                batch.push(open?);
                if batch.len() == LOAD_BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(LOAD_BATCH));
                    if send.send(full).is_err() {
                        return Ok(());
                    }
                }
            }
            let _ = send.send(batch);
            Ok(())
        });
        for batch in receive {
            for open in batch {
                index.upsert(open);
            }
        }
        reader
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })?;
    for item in store.index_prefix("payer", "")? {
        // Values are `payer-key\taccount-id`, keeping the key readable in backups.
        if let Some((key, account)) = item.split_once('\t') {
            index.link_payer(key, account);
        }
    }
    index.shrink_to_fit();
    Ok(index)
}

/// The invoice's `i/open-due/` key (under its due date, so the overdue filter is a range scan).
pub(super) fn due_key(inv: &Invoice) -> String {
    due_row(inv.due_date, &inv.id)
}

/// The key of an invoice's `i/open-due/` row under `i/open-due/`: its due date, then its id.
fn due_row(due_date: Option<NaiveDate>, id: &str) -> String {
    let due = due_date.map(|d| d.to_string()).unwrap_or_default();
    format!("{due}/{id}")
}

pub(super) fn open_invoice(inv: &Invoice, account_name: &str) -> Option<OpenInvoice> {
    if inv.state != InvoiceState::Issued || inv.kind != InvoiceKind::Invoice {
        return None;
    }
    Some(OpenInvoice {
        id: inv.id.clone(),
        number: inv.number.clone()?,
        rf_reference: inv.rf_reference.clone().unwrap_or_default(),
        account_id: inv.account_id.as_str().into(),
        account_name: account_name.into(),
        currency: inv.currency.code().into(),
        balance: invoice::balance(inv),
        issue_date: inv.issue_date?,
        due_date: inv.due_date?,
        payment: Some(PaymentFigures {
            total: inv.totals.total,
            amount_paid: inv.amount_paid,
            amount_refunded: inv.amount_refunded,
            announced_status: inv.announced_status,
            external_refs: inv.external_refs.clone(),
        }),
    })
}

impl Tx<'_> {
    /// Save an invoice, keep the open-invoice indexes in step and announce a changed payment status. While
    /// [`Tx::defer_invoices`] is set (an ingested payment's allocations, which its `payment.recorded` event lists), the
    /// invoice and its open-invoice rows are deferred writes: the journal rebuilds them (`engine/journal.rs`).
    pub(crate) fn save_invoice(&mut self, inv: &mut Invoice, actor: &str) -> EngineResult<()> {
        self.publish_status(inv, actor);
        self.store_invoice(inv)
    }

    /// [`Tx::save_invoice`] without announcing a status: for a change that announced it already, or that changes no
    /// payment figure.
    pub(crate) fn store_invoice(&mut self, inv: &Invoice) -> EngineResult<()> {
        let defer = self.defer_invoices;
        let invoice_key = format!("e/invoice/{}", inv.id);
        let open_key = format!("i/open-invoice/{}", inv.id);
        if defer {
            self.ws.put_deferred(&invoice_key, Some(inv));
        } else {
            self.ws.put_raw(&invoice_key, inv);
        }
        let open = inv.state == InvoiceState::Issued
            && inv.kind == InvoiceKind::Invoice
            && invoice::balance(inv) > Decimal::ZERO;
        let due_key = format!("i/open-due/{}", due_key(inv));
        if open {
            let before = self.state.index.get(&inv.id);
            // A payment that leaves the invoice open does not move it in the due-date index: no write.
            let indexed = before
                .is_some_and(|o| o.balance > Decimal::ZERO && Some(o.due_date) == inv.due_date);
            if !indexed {
                match defer {
                    true => self.ws.put_deferred(&due_key, Some(&inv.id)),
                    false => self.ws.put_raw(&due_key, &inv.id),
                }
            }
            // The index already knows the customer's name for invoices it has seen; the store is the fallback.
            let known = before.map(|o| o.account_name.clone());
            let name: Arc<str> = match known {
                Some(name) => name,
                None => self
                    .get_raw::<Account>(&format!("e/account/{}", inv.account_id))?
                    .map(|a| a.name.into())
                    .unwrap_or_default(),
            };
            if let Some(o) = open_invoice(inv, &name) {
                match defer {
                    true => self.ws.put_deferred(&open_key, Some(&o)),
                    false => self.ws.put_raw(&open_key, &o),
                }
                self.index_update(IndexUpdate::Upsert(o));
            }
        } else {
            if defer {
                self.ws.put_deferred::<()>(&open_key, None);
                self.ws.put_deferred::<()>(&due_key, None);
            } else {
                self.ws.remove_raw(&open_key);
                self.ws.remove_raw(&due_key);
            }
            self.index_update(IndexUpdate::Remove(inv.id.clone()));
        }
        Ok(())
    }

    /// Announce the invoice's derived payment status when it differs from the last one announced, and note it in the
    /// invoice (the caller saves it). True when it changed.
    pub(crate) fn publish_status(&mut self, inv: &mut Invoice, actor: &str) -> bool {
        let status = invoice::payment_status(inv, self.today);
        let last = inv.announced_status;
        if last == Some(status) {
            return false;
        }
        inv.announced_status = Some(status);
        if status == PaymentStatus::Draft {
            return true;
        }
        self.announce(
            actor,
            &StatusChange {
                id: &inv.id,
                number: inv.number.as_deref(),
                from: last,
                to: status,
                total: inv.totals.total,
                amount_paid: inv.amount_paid,
                balance: invoice::balance(inv),
                currency: inv.currency.code(),
                issue_date: inv.issue_date,
                due_date: inv.due_date,
            },
        );
        true
    }

    /// The `invoice.payment_status_changed` event of a change.
    fn announce(&mut self, actor: &str, change: &StatusChange<'_>) {
        self.event(
            actor,
            "invoice.payment_status_changed",
            "invoice",
            change.id,
            serde_json::json!({
                "number": change.number, "from": change.from, "to": change.to,
                "total": change.total, "amount_paid": change.amount_paid,
                "balance": change.balance, "currency": change.currency,
                "issue_date": change.issue_date, "due_date": change.due_date,
            }),
            true,
        );
    }

    /// [`Tx::allocate`] of an ingested payment to an open invoice without reading the invoice (the import's hot path):
    /// the figures a payment changes are in the matching index, and the invoice record gets a [`Patch`] in the
    /// overlay (amount paid, the allocation's id, announced status, `updated_at`), which the journal rebuilds after a
    /// crash like any deferred write. The same checks, figures, events and rows as reading the invoice, allocating
    /// and saving it. `None` when the index holds no figures for it (an invoice of a store from before they were
    /// kept, or not open): the caller takes the usual way.
    pub(crate) fn allocate_open(
        &mut self,
        payment: &Payment,
        invoice_id: &str,
        what: &Allocating<'_>,
        actor: &str,
    ) -> EngineResult<Option<Allocated>> {
        debug_assert!(self.defer_invoices, "only a journaled payment patches");
        let Some(mut open) = self.state.index.get(invoice_id).cloned() else {
            return Ok(None);
        };
        let Some(figures) = open.payment.as_mut() else {
            return Ok(None);
        };
        invoice::check_payable(what.amount, open.balance)?;
        // As `invoice::apply_payment` and `invoice::balance` compute them (exact decimal sums, same scale).
        figures.amount_paid += what.amount;
        open.balance -= what.amount;
        let now = self.now;
        let allocation = self.new_allocation(payment, invoice_id, what)?;
        self.put("allocation", &allocation.id, &allocation);
        let mut patch = Patch::new();
        patch
            .set(
                "amount_paid",
                serde_json::json!(figures.amount_paid.to_string()),
            )
            .append("allocations", &allocation.id)
            .set("updated_at", serde_json::json!(now));
        let status = invoice::StatusFigures {
            total: figures.total,
            amount_paid: figures.amount_paid,
            amount_refunded: figures.amount_refunded,
            balance: open.balance,
            due_date: Some(open.due_date),
        }
        .status(self.today);
        if figures.announced_status != Some(status) {
            let change = StatusChange {
                id: invoice_id,
                number: Some(&open.number),
                from: figures.announced_status,
                to: status,
                total: figures.total,
                amount_paid: figures.amount_paid,
                balance: open.balance,
                currency: &open.currency,
                issue_date: Some(open.issue_date),
                due_date: Some(open.due_date),
            };
            self.announce(actor, &change);
            figures.announced_status = Some(status);
            patch.set("announced_status", serde_json::json!(status));
        }
        self.ws
            .put_patch(&format!("e/invoice/{invoice_id}"), patch)?;
        let allocated = Allocated {
            allocation,
            named: Named {
                id: invoice_id.to_string(),
                number: Some(open.number.clone()),
                external_refs: figures.external_refs.clone(),
            },
            account_id: open.account_id.to_string(),
            balance: open.balance,
        };
        let open_key = format!("i/open-invoice/{invoice_id}");
        if open.balance > Decimal::ZERO {
            // Still open, due on the same day: its `i/open-due/` row stays.
            self.ws.put_deferred(&open_key, Some(&open));
            self.index_update(IndexUpdate::Upsert(open));
        } else {
            let due_key = format!("i/open-due/{}", due_row(Some(open.due_date), invoice_id));
            self.ws.put_deferred::<()>(&open_key, None);
            self.ws.put_deferred::<()>(&due_key, None);
            self.index_update(IndexUpdate::Remove(invoice_id.to_string()));
        }
        Ok(Some(allocated))
    }

    pub(crate) fn link_payer(&mut self, key: &str, account_id: &str) {
        let key = key.trim().to_lowercase();
        if key.is_empty() || self.state.index.payer_account(&key) == Some(account_id) {
            return;
        }
        self.ws
            .index("payer", &key, &format!("{key}\t{account_id}"));
        self.index_update(IndexUpdate::LinkPayer(key, account_id.to_string()));
    }

    /// Allocate part of a payment to an invoice, recording why.
    pub(crate) fn allocate(
        &mut self,
        payment: &Payment,
        inv: &mut Invoice,
        what: &Allocating<'_>,
        actor: &str,
    ) -> EngineResult<Allocation> {
        match what.kind {
            AllocationKind::WriteOff => invoice::write_off(inv, what.amount)?,
            _ => invoice::apply_payment(inv, what.amount)?,
        }
        inv.updated_at = self.now;
        let allocation = self.new_allocation(payment, &inv.id, what)?;
        // The payment and the invoice both list the allocation. Its audit trail (rule, evidence, confidence) is the
        // caller's `payment.recorded` event, see [`allocations_json`].
        self.record_allocation(inv, &allocation);
        self.save_invoice(inv, actor)?;
        Ok(allocation)
    }

    /// A new allocation of `payment` to `invoice_id` (not stored yet).
    fn new_allocation(
        &mut self,
        payment: &Payment,
        invoice_id: &str,
        what: &Allocating<'_>,
    ) -> EngineResult<Allocation> {
        Ok(Allocation {
            id: self.new_id("allocation", "alc")?,
            payment_id: Some(payment.id.clone()),
            invoice_id: invoice_id.to_string(),
            amount: what.amount,
            kind: what.kind,
            rule: what.rule.to_string(),
            evidence: what.evidence.to_string(),
            confidence: what.confidence,
            at: self.now,
            reversed: false,
            compensates: None,
            credit_sources: Vec::new(),
        })
    }

    /// Store an allocation and list it on its invoice (the caller saves the invoice).
    pub(crate) fn record_allocation(&mut self, inv: &mut Invoice, allocation: &Allocation) {
        self.put("allocation", &allocation.id, allocation);
        inv.allocations.push(allocation.id.clone());
    }

    /// Put money on the account's credit balance, as a lot from `source`.
    pub(crate) fn add_credit(
        &mut self,
        account_id: &str,
        currency: &Currency,
        amount: Decimal,
        source: CreditSource,
        actor: &str,
    ) -> EngineResult<()> {
        let mut account: Account = self.get("account", account_id)?;
        let why = credit_why(&source);
        party::add_credit(&mut account, currency, amount, source)?;
        self.put("account", &account.id, &account);
        self.event(
            actor,
            "account.credit_changed",
            "account",
            &account.id,
            serde_json::json!({"added": amount, "currency": currency, "why": why,
                "credit_balance": party::credit(&account, currency)}),
            true,
        );
        Ok(())
    }

    /// Take back up to `amount` of the credit `source` put on the account ([`party::take_back`]): returns how much
    /// was taken back and the credit allocation parts the caller must reopen (they were paid with it).
    pub(crate) fn take_back_credit(
        &mut self,
        account_id: &str,
        source: &CreditSource,
        amount: Decimal,
        why: &str,
        actor: &str,
    ) -> EngineResult<(Decimal, Vec<Reopen>)> {
        let mut account: Account = self.get("account", account_id)?;
        let Some(currency) = party::lot(&account, source).map(|l| l.currency.clone()) else {
            return Ok((Decimal::ZERO, Vec::new()));
        };
        let (unspent, reopen) = party::take_back(&mut account, source, amount)?;
        let taken = unspent + reopen.iter().map(|r| r.amount).sum::<Decimal>();
        if taken <= Decimal::ZERO {
            return Ok((Decimal::ZERO, reopen));
        }
        self.put("account", &account.id, &account);
        self.event(
            actor,
            "account.credit_changed",
            "account",
            &account.id,
            serde_json::json!({"taken_back": taken, "from_balance": unspent, "reopened": reopen.iter().map(|r|
                serde_json::json!({"allocation_id": r.allocation_id, "invoice_id": r.invoice_id, "amount": r.amount}))
                .collect::<Vec<_>>(), "currency": currency, "source": source, "why": why,
                "credit_balance": account.credit_balance.get(&currency).copied().unwrap_or_default()}),
            true,
        );
        Ok((taken, reopen))
    }

    /// A new payment entity with a fresh id (allocations are added by the caller).
    pub(crate) fn new_payment(&mut self, draft: PaymentDraft<'_>) -> EngineResult<Payment> {
        let id = self.new_id("payment", "pay")?;
        Ok(Payment {
            id,
            amount: draft.amount,
            currency: draft.currency,
            received_on: draft.received_on,
            payer: draft.payer,
            reference: draft.reference,
            external_id: draft.external_id,
            source: draft.source.to_string(),
            state: PaymentState::Recorded,
            allocations: Vec::new(),
            unallocated: Decimal::ZERO,
            account_id: None,
            created_at: self.now,
            bank_account: draft.bank_account,
            payer_account: draft.payer_account,
            credit_reversed: Decimal::ZERO,
        })
    }
}

impl Engine {
    /// Announce every open invoice whose due date passed as overdue (once). Returns how many changed.
    pub async fn publish_overdue(&self, actor: &str) -> EngineResult<usize> {
        let today = self.today();
        let mut due = Vec::new();
        for id in self.store().index_prefix("open-due", "")? {
            let Some(inv) = self.store().get::<Invoice>("invoice", &id)? else {
                continue;
            };
            if inv.due_date.is_some_and(|d| d >= today) {
                // The index is ordered by due date: nothing later is overdue.
                break;
            }
            if inv.announced_status != Some(invoice::payment_status(&inv, today)) {
                due.push(id);
            }
        }
        if due.is_empty() {
            return Ok(0);
        }
        self.write(|tx| {
            let mut n = 0;
            for id in &due {
                let mut inv: Invoice = tx.get("invoice", id)?;
                if tx.publish_status(&mut inv, actor) {
                    // Through `store_invoice`: the open-invoice row keeps the status announced.
                    tx.store_invoice(&inv)?;
                    n += 1;
                }
            }
            Ok(n)
        })
        .await
    }

    /// Open invoices known to reconciliation.
    pub fn open_invoice_count(&self) -> usize {
        self.lock_state().index.len()
    }

    /// Draft an invoice from an order, whole or partial.
    pub async fn create_invoice(&self, input: InvoiceCreate, actor: &str) -> EngineResult<Invoice> {
        let selection: Option<Vec<(u32, Decimal)>> = match &input.lines {
            None => None,
            Some(lines) => Some(
                lines
                    .iter()
                    .enumerate()
                    .map(|(i, l)| {
                        crate::domain::money::parse_decimal(
                            &format!("lines[{i}].quantity"),
                            l.quantity.as_str(),
                        )
                        .map(|q| (l.line_no, q))
                    })
                    .collect::<Result<_, _>>()?,
            ),
        };
        self.write(|tx| {
            let mut order: Order = tx
                .get("order", &input.order_id)
                .map_err(|e| field_not_found(e, "order_id"))?;
            let id = tx.new_id("invoice", "inv")?;
            let terms = order
                .billing
                .payment_terms_days
                .unwrap_or(tx.engine.config().invoicing.payment_terms_days);
            let inv = invoice::draft_from_order(&order, id, selection.as_deref(), terms, tx.now)?;
            invoice::record_invoiced(&mut order, &inv);
            tx.put("order", &order.id, &order);
            tx.put("invoice", &inv.id, &inv);
            tx.event(
                actor,
                "invoice.drafted",
                "invoice",
                &inv.id,
                serde_json::json!({"order_id": order.id, "total": inv.totals.total, "currency": inv.currency}),
                false,
            );
            Ok(inv)
        })
        .await
    }

    /// Issue a draft invoice: it gets the next number of its series inside this write (gap-free, unique) and its RF reference.
    pub async fn issue_invoice(
        &self,
        id: &str,
        input: IssueInput,
        actor: &str,
    ) -> EngineResult<Invoice> {
        self.write(|tx| issue_in(tx, id, input, actor)).await
    }

    /// Void an invoice with nothing paid; `reason` goes into the audit event.
    pub async fn void_invoice(
        &self,
        id: &str,
        reason: Option<&str>,
        actor: &str,
    ) -> EngineResult<Invoice> {
        self.write(|tx| {
            let mut inv: Invoice = tx.get("invoice", id)?;
            let from = inv.state;
            invoice::void(&mut inv)?;
            inv.updated_at = tx.now;
            // What the invoice billed can be invoiced again.
            if let Some(order_id) = inv.order_id.clone() {
                let mut order: Order = tx.get("order", &order_id)?;
                invoice::release_invoiced(&mut order, &inv);
                tx.put("order", &order.id, &order);
            }
            tx.event(
                actor,
                "invoice.voided",
                "invoice",
                &inv.id,
                serde_json::json!({"number": inv.number, "from": from, "reason": reason}),
                true,
            );
            tx.save_invoice(&mut inv, actor)?;
            Ok(inv)
        })
        .await
    }

    /// Credit an issued invoice (whole, or `amount`): a credit note is created and issued at once. Whatever the credit
    /// covers beyond what is still owed goes to the customer's credit balance.
    pub async fn credit_invoice(
        &self,
        id: &str,
        input: AmountInput,
        actor: &str,
    ) -> EngineResult<Invoice> {
        self.write(|tx| {
            let mut inv: Invoice = tx.get("invoice", id)?;
            let amount = input
                .amount
                .as_ref()
                .map(|a| parse_positive_amount("amount", a.as_str(), &inv.currency))
                .transpose()?;
            let cn_id = tx.new_id("invoice", "inv")?;
            let cn = invoice::credit_note(&inv, cn_id, amount, tx.now)?;
            tx.put("invoice", &cn.id, &cn);
            let cn = issue_in(tx, &cn.id, IssueInput::default(), actor)?;
            let credited = cn.totals.total.abs();
            let owed = invoice::balance(&inv).max(Decimal::ZERO);
            invoice::apply_credit_note(&mut inv, credited)?;
            inv.updated_at = tx.now;
            let surplus = credited - credited.min(owed);
            if surplus > Decimal::ZERO {
                let currency = inv.currency.clone();
                let source = CreditSource::CreditNote { credit_note_id: cn.id.clone(), invoice_id: inv.id.clone() };
                tx.add_credit(&inv.account_id, &currency, surplus, source, actor)?;
            }
            tx.event(
                actor,
                "invoice.credited",
                "invoice",
                &inv.id,
                serde_json::json!({"credit_note_id": cn.id, "credit_note": cn.number, "amount": credited}),
                true,
            );
            tx.save_invoice(&mut inv, actor)?;
            Ok(cn)
        })
        .await
    }

    /// Pay an invoice from the customer's credit balance (all of what it owes, or `amount`).
    pub async fn apply_credit(
        &self,
        id: &str,
        input: AmountInput,
        actor: &str,
    ) -> EngineResult<Invoice> {
        self.write(|tx| {
            let mut inv: Invoice = tx.get("invoice", id)?;
            let mut account: Account = tx.get("account", &inv.account_id)?;
            let available = party::credit(&account, &inv.currency);
            let owed = invoice::balance(&inv);
            let amount = match &input.amount {
                Some(a) => parse_positive_amount("amount", a.as_str(), &inv.currency)?,
                None => available.min(owed),
            };
            if amount <= Decimal::ZERO {
                return Err(DomainError::invalid(
                    "amount",
                    format!(
                        "nothing to apply: credit {available} {}, owed {owed}",
                        inv.currency.code()
                    ),
                )
                .into());
            }
            let alloc_id = tx.new_id("allocation", "alc")?;
            let credit_sources =
                party::spend_credit(&mut account, &inv.currency, amount, &alloc_id, &inv.id)?;
            invoice::apply_payment(&mut inv, amount)?;
            inv.updated_at = tx.now;
            tx.put("account", &account.id, &account);
            let allocation = Allocation {
                id: alloc_id,
                payment_id: None,
                invoice_id: inv.id.clone(),
                amount,
                kind: AllocationKind::Credit,
                rule: "customer_credit".into(),
                evidence: "applied from the customer's credit balance".into(),
                confidence: 100,
                at: tx.now,
                reversed: false,
                compensates: None,
                credit_sources,
            };
            tx.record_allocation(&mut inv, &allocation);
            tx.event(
                actor,
                "invoice.credit_applied",
                "invoice",
                &inv.id,
                serde_json::json!({"amount": amount, "allocation_id": allocation.id,
                    "credit_balance": party::credit(&account, &inv.currency)}),
                true,
            );
            tx.save_invoice(&mut inv, actor)?;
            Ok(inv)
        })
        .await
    }

    /// Record a payment with explicit allocations, applied as given (rule `manual`). A repeated `external_id`
    /// returns the first payment unchanged. Without allocations, see [`Engine::record_payment`].
    pub(crate) async fn record_allocated_payment(
        &self,
        input: PaymentInput,
        currency: Currency,
        amount: Decimal,
        actor: &str,
    ) -> EngineResult<(Payment, bool)> {
        let requests: Vec<AllocationRequest> = input
            .allocations
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, a)| {
                Ok(AllocationRequest {
                    invoice_id: a.invoice_id.clone(),
                    amount: a
                        .amount
                        .as_ref()
                        .map(|x| {
                            parse_positive_amount(
                                &format!("allocations[{i}].amount"),
                                x.as_str(),
                                &currency,
                            )
                        })
                        .transpose()?,
                })
            })
            .collect::<Result<_, DomainError>>()?;
        self.write(|tx| {
            // The same idempotency key as API payments reconciled automatically (`ingest`), so an external id
            // is recognised whichever way the payment was first recorded.
            let seen_key = input
                .external_id
                .as_ref()
                .map(|ext| format!("pay:api:{ext}"));
            if let Some(key) = &seen_key {
                if let Some(existing) = tx.seen(key)? {
                    if let Some(id) = existing["payment_id"].as_str() {
                        return Ok((tx.get("payment", id)?, true));
                    }
                }
            }
            let mut invoices = Vec::with_capacity(requests.len());
            for (i, r) in requests.iter().enumerate() {
                let inv: Invoice = tx
                    .get("invoice", &r.invoice_id)
                    .map_err(|e| field_not_found(e, &format!("allocations[{i}].invoice_id")))?;
                invoices.push(inv);
            }
            let refs: Vec<&Invoice> = invoices.iter().collect();
            let plan = payment::plan_allocations(amount, &currency, &requests, &refs, tx.today)?;
            let received_on = input.received_on.unwrap_or(tx.today);
            let mut pay = tx.new_payment(PaymentDraft {
                amount,
                currency: currency.clone(),
                received_on,
                payer: input.payer.clone(),
                reference: input.reference.clone(),
                external_id: input.external_id.clone(),
                source: "api",
                bank_account: None,
                payer_account: None,
            })?;
            pay.account_id = invoices.first().map(|i| i.account_id.clone());
            let mut made = Vec::with_capacity(plan.parts.len());
            for (invoice_id, part) in &plan.parts {
                let Some(inv) = invoices.iter_mut().find(|i| &i.id == invoice_id) else {
                    continue;
                };
                let what = Allocating {
                    amount: *part,
                    kind: AllocationKind::Payment,
                    rule: "manual",
                    evidence: "allocated by hand",
                    confidence: 100,
                };
                made.push(tx.allocate(&pay, inv, &what, actor)?);
            }
            pay.allocations.extend(made.iter().map(|a| a.id.clone()));
            if plan.surplus > Decimal::ZERO {
                if let Some(account) = pay.account_id.clone() {
                    tx.add_credit(
                        &account,
                        &currency,
                        plan.surplus,
                        CreditSource::Overpayment {
                            payment_id: pay.id.clone(),
                        },
                        actor,
                    )?;
                    pay.unallocated = plan.surplus;
                }
            }
            if let Some(key) = &seen_key {
                tx.ws.seen(key, &serde_json::json!({"payment_id": pay.id}));
            }
            if !made.is_empty() {
                index_paid(tx, &pay.id, input.external_id.as_deref(), None)?;
            }
            tx.put("payment", &pay.id, &pay);
            payment_recorded(
                tx,
                actor,
                &pay,
                &made,
                &[],
                serde_json::json!({"payer": pay.payer}),
            );
            Ok((pay, false))
        })
        .await
    }
}

pub(crate) fn issue_in(
    tx: &mut Tx<'_>,
    id: &str,
    input: IssueInput,
    actor: &str,
) -> EngineResult<Invoice> {
    let mut inv: Invoice = tx.get("invoice", id)?;
    if inv.state != InvoiceState::Draft {
        return Err(DomainError::transition(
            "invoice",
            crate::domain::status_name(&inv.state),
            "issue",
            format!(
                "it was issued already as {}",
                inv.number.clone().unwrap_or_default()
            ),
        )
        .into());
    }
    let issue_date = input.issue_date.unwrap_or(tx.today);
    let (series, pattern) = match inv.kind {
        InvoiceKind::Invoice => ("invoice", &tx.engine.series().invoice),
        InvoiceKind::CreditNote => ("credit_note", &tx.engine.series().credit_note),
    };
    let number = tx.next_number(series, pattern, issue_date)?;
    let reference = rf::creditor_reference(&number);
    invoice::issue(
        &mut inv,
        number.clone(),
        reference,
        issue_date,
        input.due_date,
    )?;
    inv.updated_at = tx.now;
    tx.ws.index("invoice-number", &number, &inv.id);
    index_invoice_refs(tx, &inv);
    // Sinks that keep books (hledger) need the customer's name and the VAT per rate; sinks that keep invoices
    // (an accounting package) need the lines: each line's net and VAT rate, after every discount.
    let customer: Account = tx.get("account", &inv.account_id)?;
    let lines: Vec<serde_json::Value> = inv
        .lines
        .iter()
        .map(|l| {
            serde_json::json!({"description": l.description, "quantity": l.quantity, "unit_price": l.unit_price,
                "tax_rate": l.tax_rate, "net": l.net})
        })
        .collect();
    tx.event(
        actor,
        "invoice.issued",
        "invoice",
        &inv.id,
        serde_json::json!({"number": number, "kind": inv.kind, "rf_reference": inv.rf_reference, "total": inv.totals.total,
            "currency": inv.currency, "issue_date": inv.issue_date, "due_date": inv.due_date, "account_id": inv.account_id,
            "customer": customer.name, "subtotal": inv.totals.subtotal, "taxes": inv.totals.taxes,
            "tax_total": inv.totals.tax_total, "document_discount": inv.totals.document_discount, "lines": lines}),
        true,
    );
    tx.save_invoice(&mut inv, actor)?;
    Ok(inv)
}

/// Note a payment that pays something under its bank reference and end-to-end id, so that a return arriving through
/// any connector finds it (see `reversal`). The note is a `seen` entry `paid-by:<kind>:<reference>/` listing the
/// payments (appended with the write set's other seen keys, not a key of its own per payment); stores written before
/// it keep their `i/paid-by/<key>/<payment id>` rows, which [`paid_by`] reads too. Content-hash ids (sources without
/// a reference) are left out: no other file repeats them.
pub(crate) fn index_paid(
    tx: &mut Tx<'_>,
    payment_id: &str,
    external_id: Option<&str>,
    end_to_end_id: Option<&str>,
) -> EngineResult<()> {
    let references = [
        ("ref", external_id.filter(|r| !is_content_hash(r))),
        ("e2e", end_to_end_id.filter(|id| !id.trim().is_empty())),
    ];
    for (kind, reference) in references {
        let Some(reference) = reference else {
            continue;
        };
        let key = paid_by_seen_key(kind, reference);
        let mut payments = paid_by_listed(tx.seen(&key)?);
        if !payments.iter().any(|p| p == payment_id) {
            payments.push(payment_id.to_string());
            tx.ws
                .seen(&key, &serde_json::json!({ "payments": payments }));
        }
    }
    Ok(())
}

/// The payments noted under a reference ([`index_paid`]): the `seen` entry's list, then the rows of older stores.
pub(crate) fn paid_by(tx: &Tx<'_>, kind: &str, reference: &str) -> EngineResult<Vec<String>> {
    let mut payments = paid_by_listed(tx.seen(&paid_by_seen_key(kind, reference))?);
    for id in tx.index_prefix("paid-by", &paid_by_prefix(kind, reference))? {
        if !payments.contains(&id) {
            payments.push(id);
        }
    }
    Ok(payments)
}

/// The prefix of every `seen` entry [`index_paid`] writes.
pub(crate) const PAID_BY_SEEN: &str = "paid-by:";

fn paid_by_seen_key(kind: &str, reference: &str) -> String {
    format!("{PAID_BY_SEEN}{}", paid_by_prefix(kind, reference))
}

fn paid_by_listed(entry: Option<serde_json::Value>) -> Vec<String> {
    entry
        .and_then(|e| serde_json::from_value(e["payments"].clone()).ok())
        .unwrap_or_default()
}

/// The `paid-by` index prefix of one reference: `<kind>:<reference, lower case, escaped>/`.
pub(crate) fn paid_by_prefix(kind: &str, reference: &str) -> String {
    format!("{kind}:{}/", escape_key(&reference.trim().to_lowercase()))
}

/// Note an issued invoice under its RF reference and number key (`i/invoice-ref/<key>`), so a return naming it finds
/// the payments that paid it after it left the open-invoice index.
pub(super) fn index_invoice_refs(tx: &mut Tx<'_>, inv: &Invoice) {
    for key in invoice_ref_keys(inv, &tx.state.index.shapes) {
        tx.ws.index("invoice-ref", &key, &inv.id);
    }
}

fn invoice_ref_keys(inv: &Invoice, shapes: &[crate::reconcile::NumberShape]) -> Vec<String> {
    let rf_key = inv.rf_reference.as_deref().map(rf::normalise);
    let number_key = inv
        .number
        .as_deref()
        .and_then(|n| crate::reconcile::number_key(n, shapes));
    rf_key
        .into_iter()
        .chain(number_key)
        .map(|k| invoice_ref_key(&k))
        .collect()
}

/// Marks a store whose issued invoices all have their `invoice-ref` rows.
const INVOICE_REFS_DONE: &str = "m/invoice-ref-index";

/// Write the `invoice-ref` rows of invoices issued before this index existed, once per store (then a marker key
/// says it is done). Idempotent, so a crash before the marker is flushed only repeats it at the next start.
pub(crate) fn backfill_invoice_refs(store: &Store, index: &MatchIndex) -> EngineResult<()> {
    if store.get_raw::<u64>(INVOICE_REFS_DONE)?.is_some() {
        return Ok(());
    }
    let mut ws = store.begin();
    let mut rows = 0usize;
    for inv in store.scan::<Invoice>("invoice") {
        let inv = inv?;
        for key in invoice_ref_keys(&inv, &index.shapes) {
            ws.index("invoice-ref", &key, &inv.id);
            rows += 1;
        }
        if rows >= 10_000 {
            store.apply(std::mem::replace(&mut ws, store.begin()))?;
            rows = 0;
        }
    }
    ws.put_raw(INVOICE_REFS_DONE, &1u64);
    store.apply(ws)?;
    Ok(())
}

/// The `invoice-ref` index key of a reference key as `reconcile::find_references` reports it.
pub(crate) fn invoice_ref_key(key: &str) -> String {
    escape_key(key)
}

/// `sha256 hex:occurrence`, the id plugins give entries without a bank reference.
pub(crate) fn is_content_hash(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() > 65 && b[64] == b':' && b[..64].iter().all(u8::is_ascii_hexdigit)
}

/// Index keys hold references as written; `/` separates a reference from what follows it, so it is escaped.
fn escape_key(text: &str) -> String {
    text.replace('%', "%25").replace('/', "%2F")
}
