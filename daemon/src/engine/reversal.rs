//! Returns, reversals, refunds and chargebacks: finding the payment one undoes, across connectors of the same bank
//! account, and undoing exactly the amount it returned by compensating allocations (allocations are never edited).
//!
//! Finding the original: every payment that pays something is noted under its bank reference and end-to-end id
//! (a `seen` entry `paid-by:<key>`, or in older stores `i/paid-by/<key>/<payment id>`; `billing::index_paid`); every
//! issued invoice under its RF reference and number key (`i/invoice-ref/<key>`, written when it is issued). A return
//! is looked up by the original's bank reference, its end-to-end id and the RF or invoice references in its text; the
//! candidates are scored on that evidence plus amount and counterparty. One best candidate is the original; two
//! equally good ones are never guessed between.
//!
//! Undoing part of a payment: newest first. What the payment left on the customer's credit balance counts as its
//! newest part and is taken back first, then its allocations from the newest to the oldest. A write-off that came
//! with the payment is undone only when nothing else of the payment is left.
//!
//! Credit is traced to its source (`party::CreditLot`): taking back a payment's credit takes what is left unspent and
//! reopens the `customer_credit` allocations it paid, newest first. An invoice whose balance rises while it is
//! overpaid (a credit note went beyond what it owed) gets its credit notes' cover back: their surplus is taken back
//! the same way. Every reopening is a compensating allocation; reopening may cascade, and ends because every step
//! takes back part of a lot for good.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use settled_plugin_api::{PaymentKind, PaymentRecord};

use serde::Deserialize;

use super::billing::{allocations_json, invoice_ref_key, paid_by};
use super::views::DecimalText;
use super::{Engine, EngineResult, Tx};
use crate::domain::invoice::{self, Invoice};
use crate::domain::money::parse_positive_amount;
use crate::domain::party::{self, Account, CreditSource, Reopen};
use crate::domain::payment::{Allocation, AllocationKind, Payment, PaymentState};
use crate::domain::DomainError;
use crate::reconcile::{self, Suggestion, MAX_SUGGESTIONS};

/// Evidence points of a candidate original. A bank reference the return names is decisive; an end-to-end id nearly
/// so; an invoice reference, the amount and the counterparty only tell candidates apart.
const BY_BANK_REFERENCE: u32 = 100;
const BY_END_TO_END_ID: u32 = 50;
const BY_INVOICE_REFERENCE: u32 = 20;
const BY_AMOUNT: u32 = 10;
const BY_COUNTERPARTY: u32 = 5;

/// What the search for a return's original payment found.
#[derive(Debug)]
pub(crate) enum Original {
    /// One payment is clearly the original.
    Found {
        /// Its id.
        payment_id: String,
        /// Why it was chosen, for the audit log.
        evidence: String,
    },
    /// Several payments are equally good: a person decides. Best first, at most [`MAX_SUGGESTIONS`].
    Ambiguous(Vec<Suggestion>),
    /// Nothing the return names was paid by a payment that still has something to undo.
    Unknown,
}

/// What one reversal undid.
#[derive(Debug)]
pub(crate) struct Reversal {
    /// The original payment as the reversal leaves it.
    pub payment: Payment,
    /// How much of it was undone now (allocations compensated plus credit taken back).
    pub reversed: Decimal,
    /// Of the amount asked for, what exceeded everything left of the payment.
    pub excess: Decimal,
}

/// `POST /v1/payments/{id}/reverse` body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReverseInput {
    /// Undo only this much, newest part first; default everything left of the payment.
    #[serde(default)]
    pub amount: Option<DecimalText>,
}

impl Engine {
    /// Reverse a payment by hand: everything still left of it (or `amount` of it, newest part first) is undone by
    /// compensating entries, credit it created is taken back. An amount beyond what is left is refused.
    pub async fn reverse_payment(
        &self,
        id: &str,
        input: ReverseInput,
        actor: &str,
    ) -> EngineResult<Payment> {
        self.write(|tx| {
            let pay: Payment = tx.get("payment", id)?;
            let amount = input
                .amount
                .as_ref()
                .map(|a| parse_positive_amount("amount", a.as_str(), &pay.currency))
                .transpose()?;
            if let Some(amount) = amount {
                refuse_beyond_left(tx, &pay, amount, "amount")?;
            }
            Ok(reverse(tx, id, amount, false, "reversed by hand", actor)?.payment)
        })
        .await
    }
}

/// Refuse undoing `amount` of a payment that has less left (`field` names the input at fault).
pub(crate) fn refuse_beyond_left(
    tx: &Tx<'_>,
    pay: &Payment,
    amount: Decimal,
    field: &str,
) -> EngineResult<()> {
    let left = left_to_reverse(tx, pay)?.total();
    if pay.state != PaymentState::Reversed && amount > left {
        return Err(DomainError::invalid(
            field,
            format!(
                "{amount} {} is more than is left of payment {} to undo ({left})",
                pay.currency.code(),
                pay.id
            ),
        )
        .into());
    }
    Ok(())
}

/// Does a return give the money back to the payer (a refund or chargeback) rather than undo the credit (a bank
/// reversal, which leaves the invoice owed again)?
pub(crate) fn is_refund(record: &PaymentRecord) -> bool {
    record.kind != PaymentKind::Transfer && !record.reversal
}

/// Is this record money going back out for something received earlier, as the source marks it?
pub(crate) fn is_marked_return(record: &PaymentRecord) -> bool {
    record.amount < Decimal::ZERO
        && (record.reversal
            || matches!(record.kind, PaymentKind::Refund | PaymentKind::Chargeback)
            || record.original_external_id.is_some())
}

/// Find the payment a return (a negative record) undoes. `plugin` is the connector plugin it came through; the
/// original may have come through any other. With `marked` false (a plain outgoing transfer that may be a return),
/// only strong evidence counts: a bank reference, an end-to-end id, or an invoice reference from the same payer.
pub(crate) fn find_original(
    tx: &Tx<'_>,
    plugin: &str,
    record: &PaymentRecord,
    marked: bool,
) -> EngineResult<Original> {
    let mut evidence: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    let mut note = |id: &str, why: &'static str| {
        let list = evidence.entry(id.to_string()).or_default();
        if !list.contains(&why) {
            list.push(why);
        }
    };
    if let Some(original) = record
        .original_external_id
        .as_deref()
        .map(str::trim)
        .filter(|o| !o.is_empty())
    {
        if let Some(seen) = tx.seen(&format!("pay:{plugin}:{original}"))? {
            if let Some(id) = seen["payment_id"].as_str() {
                note(id, "bank reference");
            }
        }
        for id in paid_by(tx, "ref", original)? {
            note(&id, "bank reference");
        }
    }
    if let Some(end_to_end) = record
        .end_to_end_id
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        for id in paid_by(tx, "e2e", end_to_end)? {
            note(&id, "end-to-end id");
        }
    }
    for found in reconcile::find_references(record, &tx.state.index.shapes) {
        let keys = std::iter::once(found.key).chain(found.joined.into_iter().map(|j| j.key));
        for key in keys {
            let Some(invoice_id) = tx.index("invoice-ref", &invoice_ref_key(&key))? else {
                continue;
            };
            let Some(inv) = tx.get_raw::<Invoice>(&format!("e/invoice/{invoice_id}"))? else {
                continue;
            };
            for alloc_id in &inv.allocations {
                let Some(alloc) = tx.get_raw::<Allocation>(&format!("e/allocation/{alloc_id}"))?
                else {
                    continue;
                };
                if let (Some(id), true) = (&alloc.payment_id, alloc.amount > Decimal::ZERO) {
                    note(id, "invoice reference");
                }
            }
        }
    }

    let wanted = record.amount.abs();
    let mut scored: Vec<(u32, Payment, Decimal, Vec<&'static str>)> = Vec::new();
    for (id, mut why) in evidence {
        let Some(pay) = tx.get_raw::<Payment>(&format!("e/payment/{id}"))? else {
            continue;
        };
        if pay.state == PaymentState::Reversed
            || pay.amount <= Decimal::ZERO
            || pay.currency.code() != record.currency.trim().to_uppercase()
            || different_accounts(pay.bank_account.as_deref(), record.own_account.as_deref())
        {
            continue;
        }
        let left = left_to_reverse(tx, &pay)?.total();
        if left <= Decimal::ZERO {
            continue;
        }
        let mut score: u32 = why
            .iter()
            .map(|w| match *w {
                "bank reference" => BY_BANK_REFERENCE,
                "end-to-end id" => BY_END_TO_END_ID,
                _ => BY_INVOICE_REFERENCE,
            })
            .sum();
        if pay.amount == wanted || left == wanted {
            score += BY_AMOUNT;
            why.push("amount");
        }
        let same_payer = same_counterparty(&pay, record);
        if same_payer {
            score += BY_COUNTERPARTY;
            why.push("counterparty");
        }
        let strong = why
            .iter()
            .any(|w| matches!(*w, "bank reference" | "end-to-end id"));
        if !marked && !strong && !same_payer {
            continue;
        }
        scored.push((score, pay, left, why));
    }
    scored.sort_by_key(|s| std::cmp::Reverse(s.0));
    let Some(best) = scored.first().map(|s| s.0) else {
        return Ok(Original::Unknown);
    };
    let tied: Vec<_> = scored.iter().filter(|s| s.0 == best).collect();
    if let [(_, pay, _, why)] = tied.as_slice() {
        return Ok(Original::Found {
            payment_id: pay.id.clone(),
            evidence: why.join(", "),
        });
    }
    let mut suggestions = Vec::with_capacity(tied.len().min(MAX_SUGGESTIONS));
    for (score, pay, left, why) in tied.into_iter().take(MAX_SUGGESTIONS) {
        let paid = newest_invoice_paid(tx, pay)?;
        suggestions.push(Suggestion {
            invoice_id: paid.as_ref().map(|i| i.id.clone()).unwrap_or_default(),
            number: paid.and_then(|i| i.number).unwrap_or_default(),
            amount: *left,
            score: u8::try_from(*score).unwrap_or(u8::MAX).min(100),
            why: format!(
                "payment {} of {} {} received {} may be the original ({})",
                pay.id,
                pay.amount,
                pay.currency.code(),
                pay.received_on,
                why.join(", ")
            ),
            payment_id: Some(pay.id.clone()),
        });
    }
    Ok(Original::Ambiguous(suggestions))
}

/// Undo `amount` of a payment (all that is left with `None`), newest part first; see the module doc. `refund` marks
/// the money as returned to the payer. Undoing more than is left undoes everything and reports the rest as `excess`.
pub(crate) fn reverse(
    tx: &mut Tx<'_>,
    id: &str,
    amount: Option<Decimal>,
    refund: bool,
    why: &str,
    actor: &str,
) -> EngineResult<Reversal> {
    let mut pay: Payment = tx.get("payment", id)?;
    if pay.state == PaymentState::Reversed {
        return Err(DomainError::transition(
            "payment",
            "reversed",
            "reverse",
            "it was reversed already",
        )
        .into());
    }
    let left = left_to_reverse(tx, &pay)?;
    let mut want = amount.unwrap_or_else(|| left.total());
    let asked = want;
    let mut undone = Undone::default();

    // The credit the payment left is its newest part. What the customer spent of it is reopened on the invoices it
    // paid (newest first): the payment that funded them is gone.
    let mut credit_taken = Decimal::ZERO;
    if left.credit > Decimal::ZERO && want > Decimal::ZERO {
        if let Some(account_id) = pay.account_id.clone() {
            let take = want.min(left.credit);
            let source = CreditSource::Overpayment {
                payment_id: pay.id.clone(),
            };
            let account: Account = tx.get("account", &account_id)?;
            let taken = if party::lot(&account, &source).is_some() {
                let (taken, reopen) =
                    tx.take_back_credit(&account_id, &source, take, why, actor)?;
                for part in &reopen {
                    reopen_credit(tx, part, &pay.id, why, actor, &mut undone)?;
                }
                taken
            } else {
                // Credit an earlier release recorded without its source: only what is still on the balance.
                take_back_unattributed(tx, account, &pay.currency, take)?
            };
            pay.credit_reversed += taken;
            credit_taken = taken;
            want -= taken;
        }
    }

    let mut made = Vec::new();
    for (alloc, remaining) in left.allocations.iter().rev() {
        if want <= Decimal::ZERO {
            break;
        }
        if alloc.kind == AllocationKind::WriteOff || *remaining <= Decimal::ZERO {
            continue;
        }
        let take = want.min(*remaining);
        made.push(compensate(
            tx,
            alloc,
            take,
            refund,
            why,
            actor,
            &mut undone,
        )?);
        want -= take;
    }
    let reversed = asked - want;
    let payment_left = left.total() - reversed;
    if payment_left <= Decimal::ZERO || amount.is_none() {
        // Nothing of the payment is left: a write-off that came with it goes too.
        for (alloc, remaining) in left.allocations.iter().rev() {
            if alloc.kind == AllocationKind::WriteOff && *remaining > Decimal::ZERO {
                made.push(compensate(
                    tx,
                    alloc,
                    *remaining,
                    refund,
                    why,
                    actor,
                    &mut undone,
                )?);
            }
        }
        pay.state = PaymentState::Reversed;
    }
    pay.allocations.extend(made.iter().map(|a| a.id.clone()));
    tx.put("payment", &pay.id, &pay);
    // `allocations` and `credit_taken_back` are the payment's own money (what a ledger books back); `credit_reopened`
    // are invoices its credit had paid, and `credit_notes_taken_back` credit-note surplus that covers its invoice again.
    tx.event(
        actor,
        "payment.reversed",
        "payment",
        &pay.id,
        serde_json::json!({"amount": reversed, "currency": pay.currency, "payment_amount": pay.amount, "why": why,
            "refund": refund, "allocations": allocations_json(tx, &made, &[]), "credit_taken_back": credit_taken,
            "credit_reopened": allocations_json(tx, &undone.reopened, &[]), "credit_notes_taken_back": undone.credit_notes,
            "fully_reversed": pay.state == PaymentState::Reversed, "excess": want.max(Decimal::ZERO)}),
        true,
    );
    Ok(Reversal {
        payment: pay,
        reversed,
        excess: want.max(Decimal::ZERO),
    })
}

/// What undoing part of a payment changed beyond the payment's own allocations and credit.
#[derive(Default)]
struct Undone {
    /// Compensations of credit allocations whose credit was taken back.
    reopened: Vec<Allocation>,
    /// Credit-note surplus taken back because its invoice owes again.
    credit_notes: Decimal,
}

/// Take back up to `amount` of credit recorded without a source (an earlier release), as far as the balance has it.
fn take_back_unattributed(
    tx: &mut Tx<'_>,
    mut account: Account,
    currency: &crate::domain::money::Currency,
    amount: Decimal,
) -> EngineResult<Decimal> {
    let take = amount.min(party::unattributed(&account, currency));
    if take > Decimal::ZERO {
        party::use_credit(&mut account, currency, take)?;
        tx.put("account", &account.id, &account);
    }
    Ok(take)
}

/// Reopen part of a credit allocation whose credit was taken back (payment `cause` reversed, or a credit note covering
/// its own invoice again).
fn reopen_credit(
    tx: &mut Tx<'_>,
    part: &Reopen,
    cause: &str,
    why: &str,
    actor: &str,
    undone: &mut Undone,
) -> EngineResult<()> {
    let alloc: Allocation = tx.get("allocation", &part.allocation_id)?;
    let why = format!("{why}; the credit that paid it is gone ({cause})");
    let made = compensate(tx, &alloc, part.amount, false, &why, actor, undone)?;
    undone.reopened.push(made);
    Ok(())
}

/// After an invoice's balance rose from `before`: what its credit notes put on credit beyond what it owed is no longer
/// beyond, by as much as the invoice went from overpaid towards owing. That credit-note surplus is taken back (newest
/// credit note first), reopening what it paid.
fn restore_credit_note_cover(
    tx: &mut Tx<'_>,
    inv: &Invoice,
    before: Decimal,
    why: &str,
    actor: &str,
    undone: &mut Undone,
) -> EngineResult<()> {
    let overpaid = |balance: Decimal| (-balance).max(Decimal::ZERO);
    let mut due = overpaid(before) - overpaid(invoice::balance(inv));
    if due <= Decimal::ZERO {
        return Ok(());
    }
    let account: Account = tx.get("account", &inv.account_id)?;
    let sources: Vec<CreditSource> = account
        .credit_lots
        .iter()
        .rev()
        .filter(|l| {
            l.left() > Decimal::ZERO
                && matches!(&l.source, CreditSource::CreditNote { invoice_id, .. } if invoice_id == &inv.id)
        })
        .map(|l| l.source.clone())
        .collect();
    let cause = format!(
        "invoice {} owes again",
        inv.number.as_deref().unwrap_or(&inv.id)
    );
    for source in sources {
        if due <= Decimal::ZERO {
            break;
        }
        let (taken, reopen) = tx.take_back_credit(&inv.account_id, &source, due, &cause, actor)?;
        due -= taken;
        undone.credit_notes += taken;
        for part in &reopen {
            reopen_credit(tx, part, &cause, why, actor, undone)?;
        }
    }
    Ok(())
}

/// What is left of a payment to undo: each allocation with what its compensations left of it, and credit.
struct Left {
    allocations: Vec<(Allocation, Decimal)>,
    credit: Decimal,
}

impl Left {
    /// Money left: allocations and credit, write-offs not counted (they are not money received).
    fn total(&self) -> Decimal {
        self.allocations
            .iter()
            .filter(|(a, _)| a.kind != AllocationKind::WriteOff)
            .map(|(_, left)| *left)
            .sum::<Decimal>()
            + self.credit
    }
}

fn left_to_reverse(tx: &Tx<'_>, pay: &Payment) -> EngineResult<Left> {
    let mut all = Vec::with_capacity(pay.allocations.len());
    for alloc_id in &pay.allocations {
        all.push(tx.get::<Allocation>("allocation", alloc_id)?);
    }
    let allocations = all
        .iter()
        .filter(|a| a.amount > Decimal::ZERO)
        .map(|a| {
            let undone: Decimal = all
                .iter()
                .filter(|c| c.compensates.as_deref() == Some(a.id.as_str()))
                .map(|c| -c.amount)
                .sum();
            (a.clone(), (a.amount - undone).max(Decimal::ZERO))
        })
        .collect();
    Ok(Left {
        allocations,
        credit: (pay.unallocated - pay.credit_reversed).max(Decimal::ZERO),
    })
}

/// Undo `amount` of an allocation by a compensating one (same payment, kind and invoice, negative amount), then
/// restore the cover of the invoice's credit notes if it was overpaid.
fn compensate(
    tx: &mut Tx<'_>,
    alloc: &Allocation,
    amount: Decimal,
    refund: bool,
    why: &str,
    actor: &str,
    undone: &mut Undone,
) -> EngineResult<Allocation> {
    let mut inv: Invoice = tx.get("invoice", &alloc.invoice_id)?;
    let before = invoice::balance(&inv);
    invoice::reverse_payment(&mut inv, amount, refund)?;
    inv.updated_at = tx.now;
    let id = tx.new_id("allocation", "alc")?;
    let compensation = Allocation {
        id,
        payment_id: alloc.payment_id.clone(),
        invoice_id: inv.id.clone(),
        amount: -amount,
        kind: alloc.kind,
        rule: "reversal".into(),
        evidence: format!("{why}; compensates {}", alloc.id),
        confidence: 100,
        at: tx.now,
        reversed: false,
        compensates: Some(alloc.id.clone()),
        credit_sources: Vec::new(),
    };
    tx.record_allocation(&mut inv, &compensation);
    tx.save_invoice(&mut inv, actor)?;
    restore_credit_note_cover(tx, &inv, before, why, actor, undone)?;
    Ok(compensation)
}

fn newest_invoice_paid(tx: &Tx<'_>, pay: &Payment) -> EngineResult<Option<Invoice>> {
    for alloc_id in pay.allocations.iter().rev() {
        let alloc: Allocation = tx.get("allocation", alloc_id)?;
        if alloc.amount > Decimal::ZERO {
            return tx.get_raw(&format!("e/invoice/{}", alloc.invoice_id));
        }
    }
    Ok(None)
}

fn same_counterparty(pay: &Payment, record: &PaymentRecord) -> bool {
    let account = |a: &str| a.replace(' ', "").to_uppercase();
    if let (Some(a), Some(b)) = (&pay.payer_account, &record.counterparty_account) {
        if account(a) == account(b) {
            return true;
        }
    }
    match (&pay.payer, &record.counterparty_name) {
        (Some(a), Some(b)) => {
            let a = reconcile::normalise_party_name(a);
            !a.is_empty() && a == reconcile::normalise_party_name(b)
        }
        _ => false,
    }
}

/// Two statements' own accounts differ only when both are IBANs that differ: `DE89 3704 ...` and `37040044/0532...`
/// may well be the same account written two ways.
fn different_accounts(a: Option<&str>, b: Option<&str>) -> bool {
    let iban = |s: &str| {
        let s = s.replace(' ', "").to_uppercase();
        let b = s.as_bytes();
        let looks = b.len() >= 15
            && b[..2].iter().all(u8::is_ascii_alphabetic)
            && b[2..4].iter().all(u8::is_ascii_digit)
            && b.iter().all(u8::is_ascii_alphanumeric);
        looks.then_some(s)
    };
    match (a.and_then(iban), b.and_then(iban)) {
        (Some(a), Some(b)) => a != b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_two_different_ibans_are_different_accounts() {
        assert!(different_accounts(
            Some("DE89370400440532013000"),
            Some("DE02120300000000202051")
        ));
        assert!(!different_accounts(
            Some("DE89 3704 0044 0532 0130 00"),
            Some("de89370400440532013000")
        ));
        assert!(!different_accounts(
            Some("37040044/0532013000"),
            Some("DE89370400440532013000")
        ));
        assert!(!different_accounts(None, Some("DE89370400440532013000")));
    }
}
