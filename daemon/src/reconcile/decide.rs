//! The decision for one payment: allocate, review or ignore.

use std::cell::OnceCell;

use chrono::NaiveDate;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use settled_plugin_api::{EntryStatus, PaymentKind, PaymentRecord};

use super::index::{normalise_party_name, Handle, MatchIndex, Payer};
use super::references::{expected_groups, find_references, truncated_key, FoundReference};
use super::{
    Decision, OpenInvoice, ProposedAllocation, ReviewReason, Rule, Settings, Suggestion,
    MAX_SUGGESTIONS,
};
use crate::domain::rf;

/// Decides what a payment settles. Only booked incoming transfers are matched; reversals, refunds
/// and chargebacks are undone by the engine from `original_external_id`, so they are ignored here.
pub fn decide(payment: &PaymentRecord, index: &MatchIndex, settings: &Settings) -> Decision {
    if let Some(reason) = ignore_reason(payment) {
        return Decision::Ignore {
            reason: reason.to_owned(),
        };
    }
    let (money, fee) = money_and_fee(payment);
    let cx = Context {
        payment,
        index,
        settings,
        money,
        fee,
        payer: index.payer(payment),
        payer_name: OnceCell::new(),
    };
    let references = find_references(payment, &index.shapes);
    let resolved = resolve(&references, index);
    if resolved.is_empty() {
        cx.without_reference()
    } else {
        cx.by_reference(resolved)
    }
}

fn ignore_reason(payment: &PaymentRecord) -> Option<&'static str> {
    if payment.status == EntryStatus::Pending {
        return Some("pending entries never settle invoices");
    }
    if payment.reversal {
        return Some(
            "a reversal undoes the original payment's allocations instead of settling invoices",
        );
    }
    match payment.kind {
        PaymentKind::Transfer => {}
        PaymentKind::Refund => {
            return Some(
                "a refund undoes the original payment's allocations instead of settling invoices",
            )
        }
        PaymentKind::Chargeback => return Some(
            "a chargeback undoes the original payment's allocations instead of settling invoices",
        ),
        PaymentKind::Fee => return Some("a fee line settles no invoice"),
    }
    if payment.amount.is_zero() {
        return Some("a zero amount settles no invoice");
    }
    if payment.amount < Decimal::ZERO {
        return Some("outgoing money settles no invoice");
    }
    None
}

/// The money the payer sent (gross, when a provider deducted a fee) and the fee.
/// `amount` is what reached the account, so it is the net when a fee is known.
fn money_and_fee(payment: &PaymentRecord) -> (Decimal, Decimal) {
    let amount = payment.amount;
    match (payment.gross, payment.fee) {
        (Some(gross), Some(fee)) if gross > Decimal::ZERO && fee >= Decimal::ZERO => (gross, fee),
        (Some(gross), None) if gross > amount => (gross, gross.saturating_sub(amount)),
        (None, Some(fee)) if fee > Decimal::ZERO => (amount.saturating_add(fee), fee),
        _ => (amount, Decimal::ZERO),
    }
}

/// A referenced invoice with the reference that named it.
struct Hit<'a> {
    invoice: &'a OpenInvoice,
    reference: &'a FoundReference,
}

#[derive(Default)]
struct Resolved<'a> {
    open: Vec<Hit<'a>>,
    closed: Vec<Hit<'a>>,
    /// A reference that fits several invoices (series whose numbers collide).
    ambiguous: Vec<Hit<'a>>,
}

impl Resolved<'_> {
    fn is_empty(&self) -> bool {
        self.open.is_empty() && self.closed.is_empty() && self.ambiguous.is_empty()
    }

    fn contains(&self, id: &str) -> bool {
        [&self.open, &self.closed, &self.ambiguous]
            .into_iter()
            .flatten()
            .any(|hit| hit.invoice.id == id)
    }
}

fn resolve<'a>(references: &'a [FoundReference], index: &'a MatchIndex) -> Resolved<'a> {
    let mut resolved = Resolved::default();
    for reference in references {
        let mut named = named_invoices(reference, index);
        if named.len() > 1 {
            // several invoices under one number, or the text reads as one number with a break and
            // as another without it: never a guess
            resolved.ambiguous.append(&mut named);
            continue;
        }
        let Some(hit) = named.pop() else {
            continue;
        };
        if resolved.contains(&hit.invoice.id) {
            continue;
        }
        if hit.invoice.balance > Decimal::ZERO {
            resolved.open.push(hit);
        } else {
            resolved.closed.push(hit);
        }
    }
    resolved
}

/// The invoices a reference names, each with the reading that names it: its own reading, and any
/// reading across a cut that names an invoice exactly.
fn named_invoices<'a>(reference: &'a FoundReference, index: &'a MatchIndex) -> Vec<Hit<'a>> {
    let mut named: Vec<Hit<'a>> = Vec::new();
    let own = if reference.across_cut {
        index.by_number(&reference.key)
    } else {
        lookup(reference, index)
    };
    let joined = reference.joined.iter().flat_map(|reading| {
        index
            .by_number(&reading.key)
            .into_iter()
            .map(move |h| (h, reading))
    });
    for (handle, reading) in own.into_iter().map(|h| (h, reference)).chain(joined) {
        let Some(invoice) = index.invoice(handle) else {
            continue;
        };
        if named.iter().all(|hit| hit.invoice.id != invoice.id) {
            named.push(Hit {
                invoice,
                reference: reading,
            });
        }
    }
    named
}

fn lookup(reference: &FoundReference, index: &MatchIndex) -> Vec<Handle> {
    match reference.how {
        Rule::StructuredReference => index.by_rf(&reference.key),
        Rule::ProviderMetadata => {
            if let Some(handle) = index.handle_of(&reference.raw) {
                return vec![handle];
            }
            if rf::is_valid(&reference.key) {
                index.by_rf(&reference.key)
            } else {
                by_number(&reference.key, index)
            }
        }
        _ => by_number(&reference.key, index),
    }
}

/// By the whole key, else by the key cut to the series' usual groups (`INV-2026-007-2` names
/// `INV-2026-007` when no invoice has the longer number).
fn by_number(key: &str, index: &MatchIndex) -> Vec<Handle> {
    let handles = index.by_number(key);
    if !handles.is_empty() {
        return handles;
    }
    let prefix = key.split('|').next().unwrap_or_default();
    truncated_key(key, expected_groups(prefix, &index.shapes))
        .map_or_else(Vec::new, |shorter| index.by_number(shorter))
}

struct Context<'a> {
    payment: &'a PaymentRecord,
    index: &'a MatchIndex,
    settings: &'a Settings,
    /// What the payer sent: the gross when a provider deducted a fee.
    money: Decimal,
    fee: Decimal,
    payer: Option<Payer<'a>>,
    /// The counterparty's name normalised, computed when first needed.
    payer_name: OnceCell<String>,
}

/// How the payer's name relates to an invoice's customer.
#[derive(Clone, Copy)]
enum NameMatch {
    Payer,
    SameName,
    Similar,
    None,
}

impl Context<'_> {
    fn by_reference(&self, resolved: Resolved<'_>) -> Decision {
        if !resolved.ambiguous.is_empty() {
            let suggestions = resolved
                .ambiguous
                .iter()
                .map(|hit| {
                    let why = format!("{}, which fits several invoices", evidence(hit.reference));
                    self.suggestion(hit.invoice, 50, why)
                })
                .collect();
            return review(ReviewReason::Ambiguous, suggestions);
        }
        if resolved.open.is_empty() {
            let mut suggestions: Vec<Suggestion> = resolved
                .closed
                .iter()
                .map(|hit| {
                    let why = format!("{}, but it is already paid", evidence(hit.reference));
                    self.suggestion(hit.invoice, 0, why)
                })
                .collect();
            suggestions.extend(self.ranked(None));
            return review(ReviewReason::ReferencedInvoiceClosed, suggestions);
        }
        let currency = &self.payment.currency;
        let mismatched: Vec<Suggestion> = resolved
            .open
            .iter()
            .filter(|hit| *hit.invoice.currency != **currency)
            .map(|hit| {
                let why = format!(
                    "{}, but it is invoiced in {} and the payment is in {}",
                    evidence(hit.reference),
                    hit.invoice.currency,
                    currency
                );
                self.suggestion(hit.invoice, 50, why)
            })
            .collect();
        if !mismatched.is_empty() {
            return review(ReviewReason::CurrencyMismatch, mismatched);
        }

        let mut open = resolved.open;
        open.sort_by(|a, b| {
            (a.invoice.issue_date, &a.invoice.number)
                .cmp(&(b.invoice.issue_date, &b.invoice.number))
        });
        let mut remaining = self.money;
        let mut owed = Decimal::ZERO;
        let mut allocations = Vec::with_capacity(open.len());
        for hit in &open {
            owed = owed.saturating_add(hit.invoice.balance);
            let take = hit.invoice.balance.min(remaining);
            if take <= Decimal::ZERO {
                continue;
            }
            remaining = remaining.saturating_sub(take);
            let (confidence, evidence) = self.reference_confidence(hit);
            allocations.push(ProposedAllocation {
                invoice_id: hit.invoice.id.clone(),
                amount: take,
                rule: hit.reference.how,
                evidence,
                confidence,
            });
        }
        let shortfall = owed.saturating_sub(self.money);
        let write_off = open.last().and_then(|last| {
            let within = shortfall > Decimal::ZERO
                && shortfall <= self.settings.writeoff_tolerance
                && shortfall <= last.invoice.balance;
            within.then(|| (last.invoice.id.clone(), shortfall))
        });
        if let Some(last) = allocations.last_mut() {
            for hit in &resolved.closed {
                last.evidence.push_str(&format!(
                    "; {} also names {}, which is already paid, so its share goes to the customer's credit",
                    field_label(hit.reference.field),
                    hit.invoice.number
                ));
            }
        }
        self.allocate_or_review(allocations, write_off, remaining)
    }

    /// The rule's confidence, lowered when the payer is known to be another customer.
    fn reference_confidence(&self, hit: &Hit<'_>) -> (u8, String) {
        let rule = hit.reference.how;
        let mut evidence = evidence(hit.reference);
        let mut confidence = rule.base_confidence();
        if let Some(payer) = self
            .payer
            .as_ref()
            .filter(|p| p.account_id != &*hit.invoice.account_id)
        {
            // a number typed by hand may be a typo; a checked reference or provider id hardly is
            let penalty = if rule == Rule::InvoiceNumberInText {
                35
            } else {
                15
            };
            confidence = confidence.saturating_sub(penalty);
            evidence.push_str(&format!(
                "; but the payer looks like another customer ({})",
                payer
            ));
        }
        (confidence, evidence)
    }

    fn allocate_or_review(
        &self,
        allocations: Vec<ProposedAllocation>,
        write_off: Option<(String, Decimal)>,
        surplus: Decimal,
    ) -> Decision {
        let doubtful = allocations
            .iter()
            .any(|a| a.confidence < self.settings.min_confidence);
        if doubtful {
            let suggestions = allocations
                .into_iter()
                .filter_map(|a| {
                    let invoice = self.index.get(&a.invoice_id)?;
                    Some(Suggestion {
                        invoice_id: a.invoice_id,
                        number: invoice.number.clone(),
                        amount: a.amount,
                        score: a.confidence,
                        why: a.evidence,
                        payment_id: None,
                    })
                })
                .collect();
            return review(ReviewReason::LowConfidence, suggestions);
        }
        Decision::Allocate {
            allocations,
            write_off,
            surplus,
            fee: self.fee,
        }
    }

    fn without_reference(&self) -> Decision {
        let currency = self.payment.currency.as_str();
        let Some(payer) = &self.payer else {
            return self.unknown_payer();
        };
        let account = payer.account_id;
        // a typical payer has a handful of open invoices; a very large account is searched through
        // the amount index instead
        let exact: Vec<&OpenInvoice> = if self.index.open_count_of_payer(payer) <= LARGE_ACCOUNT {
            self.index
                .open_of_payer(payer)
                .filter(|i| &*i.currency == currency && i.balance == self.money)
                .take(MAX_SUGGESTIONS)
                .collect()
        } else {
            self.index
                .open_with_balance(currency, self.money)
                .filter(|i| &*i.account_id == account)
                .take(MAX_SUGGESTIONS)
                .collect()
        };
        match exact.as_slice() {
            [only] => {
                let evidence = format!(
                    "{} {} equals the balance of the payer's only open invoice of that amount ({})",
                    self.money, currency, payer
                );
                let allocation = ProposedAllocation {
                    invoice_id: only.id.clone(),
                    amount: self.money,
                    rule: Rule::ExactAmountSinglePayerInvoice,
                    evidence,
                    confidence: Rule::ExactAmountSinglePayerInvoice.base_confidence(),
                };
                return self.allocate_or_review(vec![allocation], None, Decimal::ZERO);
            }
            [] => {}
            several => {
                let mut suggestions = self.rank(several.iter().copied());
                for suggestion in &mut suggestions {
                    suggestion
                        .why
                        .push_str("; another of the payer's open invoices has the same balance");
                }
                return review(ReviewReason::Ambiguous, suggestions);
            }
        }

        let oldest: Vec<&OpenInvoice> = self
            .index
            .open_of_payer(payer)
            .filter(|i| &*i.currency == currency)
            .take(self.settings.subset_max_invoices)
            .collect();
        let solutions = subset_sums(&oldest, self.money, self.settings.subset_max_size, 3);
        match solutions.as_slice() {
            [] => {}
            [only] => {
                let numbers: Vec<&str> = only.iter().map(|&i| oldest[i].number.as_str()).collect();
                let evidence = format!(
                    "{} = {} {}, the only combination of the payer's oldest open invoices adding up to the payment ({})",
                    numbers.join(" + "),
                    self.money,
                    currency,
                    payer
                );
                let allocations = only
                    .iter()
                    .map(|&i| ProposedAllocation {
                        invoice_id: oldest[i].id.clone(),
                        amount: oldest[i].balance,
                        rule: Rule::SubsetSum,
                        evidence: evidence.clone(),
                        confidence: Rule::SubsetSum.base_confidence(),
                    })
                    .collect();
                return self.allocate_or_review(allocations, None, Decimal::ZERO);
            }
            several => {
                let mut suggestions: Vec<Suggestion> = Vec::new();
                for solution in several {
                    let numbers: Vec<&str> = solution
                        .iter()
                        .map(|&i| oldest[i].number.as_str())
                        .collect();
                    for &i in solution {
                        if suggestions.iter().any(|s| s.invoice_id == oldest[i].id) {
                            continue;
                        }
                        let why = format!(
                            "{} adds up to the payment, but so do other combinations of the payer's invoices",
                            numbers.join(" + ")
                        );
                        suggestions.push(self.suggestion(oldest[i], 50, why));
                    }
                }
                return review(ReviewReason::Ambiguous, suggestions);
            }
        }
        review(ReviewReason::NoMatch, self.ranked(None))
    }

    /// Without a known payer an exact amount is a hint, never enough to allocate.
    fn unknown_payer(&self) -> Decision {
        let currency = self.payment.currency.as_str();
        let mut exact = self.index.open_with_balance(currency, self.money);
        match (exact.next(), exact.next()) {
            (Some(only), None) => {
                let top = self.suggestion(
                    only,
                    self.score(only),
                    format!(
                        "{}; the only open invoice of this amount, but the payer is unknown",
                        self.explain(only)
                    ),
                );
                let others = self.ranked(Some(&only.id));
                review(
                    ReviewReason::LowConfidence,
                    std::iter::once(top).chain(others).collect(),
                )
            }
            (None, _) => review(ReviewReason::NoMatch, self.ranked(None)),
            (Some(_), Some(_)) => {
                let same_amount = self
                    .index
                    .open_with_balance(currency, self.money)
                    .take(SUGGESTION_POOL);
                review(ReviewReason::Ambiguous, self.rank(same_amount))
            }
        }
    }

    /// Candidates ranked by closeness of amount, payer name and age: the payer's oldest open
    /// invoices and the open invoices with the nearest balances.
    fn ranked(&self, except: Option<&str>) -> Vec<Suggestion> {
        let currency = self.payment.currency.as_str();
        let mut pool: Vec<&OpenInvoice> = Vec::with_capacity(SUGGESTION_POOL);
        if let Some(payer) = &self.payer {
            pool.extend(self.index.open_of_payer(payer).take(SUGGESTION_POOL / 2));
        }
        for inv in self
            .index
            .open_near_balance(currency, self.money, SUGGESTION_POOL / 4)
        {
            if !pool.iter().any(|p| p.id == inv.id) {
                pool.push(inv);
            }
        }
        self.rank(
            pool.into_iter()
                .filter(|inv| Some(inv.id.as_str()) != except),
        )
    }

    /// The best [`MAX_SUGGESTIONS`] of the candidates; only those get their reasons written.
    fn rank<'i>(&self, candidates: impl Iterator<Item = &'i OpenInvoice>) -> Vec<Suggestion> {
        let mut scored: Vec<(u8, &OpenInvoice)> =
            candidates.map(|inv| (self.score(inv), inv)).collect();
        scored.sort_by(|a, b| {
            b.0.cmp(&a.0)
                .then_with(|| (a.1.issue_date, &a.1.number).cmp(&(b.1.issue_date, &b.1.number)))
        });
        scored.truncate(MAX_SUGGESTIONS);
        scored
            .into_iter()
            .map(|(score, inv)| self.suggestion(inv, score, self.explain(inv)))
            .collect()
    }

    /// 0..=100: up to 50 for the amount, 30 for the payer, 20 for the age.
    fn score(&self, inv: &OpenInvoice) -> u8 {
        self.amount_points(inv) + self.name_points(inv).0 + self.age_points(inv)
    }

    /// The reasons behind [`Self::score`], in plain words.
    fn explain(&self, inv: &OpenInvoice) -> String {
        let amount = if *inv.currency != *self.payment.currency {
            format!("invoiced in {}", inv.currency)
        } else if inv.balance == self.money {
            format!(
                "balance {} {} equals the payment",
                inv.balance, inv.currency
            )
        } else {
            format!(
                "balance {} {}, payment {}",
                inv.balance, inv.currency, self.money
            )
        };
        let name = match self.name_points(inv).1 {
            NameMatch::Payer => format!("; the payer is {}", inv.account_name),
            NameMatch::SameName => format!("; payer name matches {}", inv.account_name),
            NameMatch::Similar => format!("; payer name resembles {}", inv.account_name),
            NameMatch::None => String::new(),
        };
        let age = match self.paid_on() {
            Some(paid_on) if inv.issue_date > paid_on => {
                format!("; issued {}, after the payment", inv.issue_date)
            }
            _ => format!("; due {}", inv.due_date),
        };
        format!("{amount}{name}{age}")
    }

    fn amount_points(&self, inv: &OpenInvoice) -> u8 {
        if *inv.currency != *self.payment.currency {
            return 0;
        }
        if inv.balance == self.money {
            return 50;
        }
        let larger = inv.balance.max(self.money);
        let difference = (inv.balance - self.money).abs();
        difference
            .checked_div(larger)
            .map(|ratio| (Decimal::ONE - ratio.min(Decimal::ONE)) * Decimal::from(50))
            .and_then(|points| points.round().to_u8())
            .unwrap_or(0)
    }

    fn name_points(&self, inv: &OpenInvoice) -> (u8, NameMatch) {
        if self
            .payer
            .as_ref()
            .is_some_and(|p| p.account_id == &*inv.account_id)
        {
            return (30, NameMatch::Payer);
        }
        let payer = self.payer_name.get_or_init(|| {
            self.payment
                .counterparty_name
                .as_deref()
                .map(normalise_party_name)
                .unwrap_or_default()
        });
        let customer = self.index.normalised_name(inv);
        if payer.is_empty() || customer.is_empty() {
            return (0, NameMatch::None);
        }
        if *payer == customer {
            return (30, NameMatch::SameName);
        }
        let customer_words: Vec<&str> = customer.split(' ').collect();
        let payer_words = payer.split(' ').count();
        let shared = payer
            .split(' ')
            .filter(|w| customer_words.contains(w))
            .count();
        let most = payer_words.max(customer_words.len());
        match (shared * 20).checked_div(most) {
            Some(points) if shared > 0 => (u8::try_from(points).unwrap_or(20), NameMatch::Similar),
            _ => (0, NameMatch::None),
        }
    }

    fn age_points(&self, inv: &OpenInvoice) -> u8 {
        let Some(paid_on) = self.paid_on() else {
            return 10;
        };
        if inv.issue_date > paid_on {
            return 0;
        }
        let days_late = (paid_on - inv.due_date).num_days().max(0);
        // on time scores 20, then one point less per fortnight late
        20u8.saturating_sub(u8::try_from(days_late / 14).unwrap_or(u8::MAX))
    }

    fn paid_on(&self) -> Option<NaiveDate> {
        self.payment.booked_on.or(self.payment.value_date)
    }

    fn suggestion(&self, inv: &OpenInvoice, score: u8, why: String) -> Suggestion {
        let amount = if inv.balance > Decimal::ZERO {
            inv.balance.min(self.money)
        } else {
            self.money
        };
        Suggestion {
            invoice_id: inv.id.clone(),
            number: inv.number.clone(),
            amount,
            score,
            why,
            payment_id: None,
        }
    }
}

/// Above this many open invoices an account's exact-amount match is looked up by amount.
const LARGE_ACCOUNT: usize = 256;

/// How many candidates are scored for suggestions at most.
const SUGGESTION_POOL: usize = 40;

fn review(reason: ReviewReason, mut suggestions: Vec<Suggestion>) -> Decision {
    suggestions.truncate(MAX_SUGGESTIONS);
    Decision::Review {
        reason,
        suggestions,
    }
}

/// Combinations (by index, ascending, two to `max_size` invoices) of `invoices` whose balances add up
/// to exactly `target`; stops after `limit` of them.
fn subset_sums(
    invoices: &[&OpenInvoice],
    target: Decimal,
    max_size: usize,
    limit: usize,
) -> Vec<Vec<usize>> {
    let mut search = SubsetSearch {
        invoices,
        target,
        max_size,
        limit,
        chosen: Vec::with_capacity(max_size),
        found: Vec::new(),
    };
    search.walk(0, Decimal::ZERO);
    search.found
}

struct SubsetSearch<'a, 'b> {
    invoices: &'a [&'b OpenInvoice],
    target: Decimal,
    max_size: usize,
    limit: usize,
    chosen: Vec<usize>,
    found: Vec<Vec<usize>>,
}

impl SubsetSearch<'_, '_> {
    fn walk(&mut self, start: usize, sum: Decimal) {
        for i in start..self.invoices.len() {
            if self.found.len() >= self.limit {
                return;
            }
            // balances are positive, so a sum past the target only grows
            let Some(next) = sum.checked_add(self.invoices[i].balance) else {
                continue;
            };
            if next > self.target {
                continue;
            }
            self.chosen.push(i);
            if next == self.target {
                if self.chosen.len() >= 2 {
                    self.found.push(self.chosen.clone());
                }
            } else if self.chosen.len() < self.max_size {
                self.walk(i + 1, next);
            }
            self.chosen.pop();
        }
    }
}

fn field_label(field: &str) -> &str {
    match field {
        "structured_reference" => "structured reference",
        "end_to_end_id" => "end-to-end id",
        "invoice_refs" => "provider metadata",
        other => other,
    }
}

fn evidence(reference: &FoundReference) -> String {
    let raw = reference
        .raw
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    match reference.how {
        Rule::StructuredReference => format!(
            "{} contains creditor reference '{raw}' (check digits valid)",
            field_label(reference.field)
        ),
        Rule::ProviderMetadata => format!("provider metadata names '{raw}'"),
        _ => format!("{} contains '{raw}'", field_label(reference.field)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::{shapes_from_patterns, NumberShape};
    use chrono::NaiveDate;
    use rust_decimal_macros::dec;

    fn date(month: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, month, day).unwrap_or_default()
    }

    fn shapes() -> Vec<NumberShape> {
        shapes_from_patterns(&["INV-{YYYY}-{SEQ:3}", "CN-{YYYY}-{SEQ:3}"])
    }

    fn inv(
        id: &str,
        number: &str,
        account: &str,
        name: &str,
        balance: Decimal,
        day: u32,
    ) -> OpenInvoice {
        OpenInvoice {
            id: id.into(),
            number: number.into(),
            rf_reference: rf::creditor_reference(number),
            account_id: account.into(),
            account_name: name.into(),
            currency: "EUR".into(),
            balance,
            issue_date: date(1, day),
            due_date: date(1, day) + chrono::Days::new(30),
            payment: None,
        }
    }

    /// Acme (IBAN linked) owes 7, 8, 9 and has paid 3; Globex owes 71; Initech owes 20 in USD;
    /// Umbrella owes two of 45.00; Hooli owes 10, 20, 35; Stark owes 10, 20, 30, 40.
    fn invoices() -> Vec<OpenInvoice> {
        let mut usd = inv(
            "i20",
            "INV-2026-020",
            "initech",
            "Initech",
            dec!(300.00),
            12,
        );
        usd.currency = "USD".into();
        vec![
            inv("i3", "INV-2026-003", "acme", "ACME Ltd", dec!(0), 3),
            inv("i8", "INV-2026-008", "acme", "ACME Ltd", dec!(250.00), 8),
            inv("i7", "INV-2026-007", "acme", "ACME Ltd", dec!(100.00), 7),
            inv("i9", "INV-2026-009", "acme", "ACME Ltd", dec!(60.00), 9),
            inv(
                "i71",
                "INV-2026-071",
                "globex",
                "Globex GmbH",
                dec!(80.00),
                10,
            ),
            usd,
            inv(
                "i21",
                "INV-2026-021",
                "umbrella",
                "Umbrella Corporation",
                dec!(45.00),
                13,
            ),
            inv(
                "i22",
                "INV-2026-022",
                "umbrella",
                "Umbrella Corporation",
                dec!(45.00),
                14,
            ),
            inv("h1", "INV-2026-031", "hooli", "Hooli", dec!(10.00), 15),
            inv("h2", "INV-2026-032", "hooli", "Hooli", dec!(20.00), 16),
            inv("h3", "INV-2026-033", "hooli", "Hooli", dec!(35.00), 17),
            inv(
                "s1",
                "INV-2026-041",
                "stark",
                "Stark Industries",
                dec!(10.00),
                18,
            ),
            inv(
                "s2",
                "INV-2026-042",
                "stark",
                "Stark Industries",
                dec!(20.00),
                19,
            ),
            inv(
                "s3",
                "INV-2026-043",
                "stark",
                "Stark Industries",
                dec!(30.00),
                20,
            ),
            inv(
                "s4",
                "INV-2026-044",
                "stark",
                "Stark Industries",
                dec!(40.00),
                21,
            ),
        ]
    }

    const ACME_IBAN: &str = "DE89 3704 0044 0532 0130 00";

    fn build_index(invoices: &[OpenInvoice]) -> MatchIndex {
        let mut index = MatchIndex::new(shapes());
        for invoice in invoices {
            index.upsert(invoice.clone());
        }
        index.link_payer(ACME_IBAN, "acme");
        index
    }

    fn pay(amount: Decimal) -> PaymentRecord {
        let mut payment = PaymentRecord::new("p1", amount, "EUR");
        payment.booked_on = Some(date(2, 1));
        payment
    }

    fn remit(amount: Decimal, text: &str) -> PaymentRecord {
        let mut payment = pay(amount);
        payment.remittance = Some(text.into());
        payment
    }

    fn from(amount: Decimal, name: &str) -> PaymentRecord {
        let mut payment = pay(amount);
        payment.counterparty_name = Some(name.into());
        payment
    }

    fn from_acme(amount: Decimal) -> PaymentRecord {
        let mut payment = pay(amount);
        payment.counterparty_account = Some(ACME_IBAN.replace(' ', ""));
        payment
    }

    #[derive(Debug)]
    enum Expect {
        Allocate {
            parts: Vec<(&'static str, Decimal, Rule)>,
            write_off: Option<(&'static str, Decimal)>,
            surplus: Decimal,
            fee: Decimal,
        },
        /// The reason and the leading suggestions' invoice ids, best first.
        Review(ReviewReason, Vec<&'static str>),
        /// A phrase of the reason.
        Ignore(&'static str),
    }

    fn allocate(parts: Vec<(&'static str, Decimal, Rule)>) -> Expect {
        Expect::Allocate {
            parts,
            write_off: None,
            surplus: dec!(0),
            fee: dec!(0),
        }
    }

    fn check_with(
        settings: &Settings,
        payment: &PaymentRecord,
        invoices: &[OpenInvoice],
        expected: Expect,
    ) {
        let index = build_index(invoices);
        let decision = decide(payment, &index, settings);
        let context = format!("payment {payment:?}\ndecision {decision:#?}");
        match (&decision, expected) {
            (
                Decision::Allocate {
                    allocations,
                    write_off,
                    surplus,
                    fee,
                },
                Expect::Allocate {
                    parts,
                    write_off: want_write_off,
                    surplus: want_surplus,
                    fee: want_fee,
                },
            ) => {
                let got: Vec<(&str, Decimal, Rule)> = allocations
                    .iter()
                    .map(|a| (a.invoice_id.as_str(), a.amount, a.rule))
                    .collect();
                assert_eq!(got, parts, "{context}");
                let got_write_off = write_off
                    .as_ref()
                    .map(|(id, amount)| (id.as_str(), *amount));
                assert_eq!(got_write_off, want_write_off, "{context}");
                assert_eq!((*surplus, *fee), (want_surplus, want_fee), "{context}");
                for a in allocations {
                    assert!(
                        a.confidence >= settings.min_confidence && !a.evidence.is_empty(),
                        "{context}"
                    );
                }
            }
            (
                Decision::Review {
                    reason,
                    suggestions,
                },
                Expect::Review(want_reason, want_ids),
            ) => {
                assert_eq!(*reason, want_reason, "{context}");
                assert!(suggestions.len() <= MAX_SUGGESTIONS, "{context}");
                let ids: Vec<&str> = suggestions.iter().map(|s| s.invoice_id.as_str()).collect();
                assert!(ids.len() >= want_ids.len(), "{context}");
                assert_eq!(ids[..want_ids.len()], want_ids, "{context}");
                assert!(suggestions.iter().all(|s| !s.why.is_empty()), "{context}");
                if *reason == ReviewReason::NoMatch {
                    let ranked = suggestions.windows(2).all(|w| w[0].score >= w[1].score);
                    assert!(ranked, "suggestions must be best first\n{context}");
                }
            }
            (Decision::Ignore { reason }, Expect::Ignore(phrase)) => {
                assert!(reason.contains(phrase), "{context}");
            }
            (_, expected) => panic!("expected {expected:?}\n{context}"),
        }
    }

    fn check(payment: &PaymentRecord, invoices: &[OpenInvoice], expected: Expect) {
        check_with(&Settings::default(), payment, invoices, expected);
    }

    #[test]
    fn rf_references_allocate_when_their_check_digits_are_valid() {
        let all = invoices();
        let rf7 = rf::creditor_reference("INV-2026-007");
        let mut structured = pay(dec!(100.00));
        structured.structured_reference = Some(rf7.clone());
        check(
            &structured,
            &all,
            allocate(vec![("i7", dec!(100.00), Rule::StructuredReference)]),
        );

        let grouped: Vec<String> = rf7
            .as_bytes()
            .chunks(4)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        let in_text = remit(
            dec!(100.00),
            &format!("Zahlung {} danke", grouped.join(" ")),
        );
        check(
            &in_text,
            &all,
            allocate(vec![("i7", dec!(100.00), Rule::StructuredReference)]),
        );
    }

    #[test]
    fn an_rf_with_bad_check_digits_matches_nothing() {
        let all = invoices();
        let rf7 = rf::creditor_reference("INV-2026-007");
        let check_digits: u32 = rf7[2..4].parse().unwrap_or(0);
        let bad = format!("RF{:02}{}", (check_digits + 1) % 100, &rf7[4..]);
        assert!(!rf::is_valid(&bad));

        let mut unknown_amount = pay(dec!(123.45));
        unknown_amount.structured_reference = Some(bad.clone());
        check(
            &unknown_amount,
            &all,
            Expect::Review(ReviewReason::NoMatch, vec![]),
        );

        // the known payer's exact amount still matches, by amount and not by the bad reference
        let mut acme = from_acme(dec!(250.00));
        acme.remittance = Some(bad);
        check(
            &acme,
            &all,
            allocate(vec![(
                "i8",
                dec!(250.00),
                Rule::ExactAmountSinglePayerInvoice,
            )]),
        );
    }

    #[test]
    fn provider_metadata_names_invoices_by_number_or_id() {
        let all = invoices();
        let mut by_number = pay(dec!(250.00));
        by_number.invoice_refs = vec!["inv-2026-8".into()];
        check(
            &by_number,
            &all,
            allocate(vec![("i8", dec!(250.00), Rule::ProviderMetadata)]),
        );

        let mut by_id = pay(dec!(60.00));
        by_id.invoice_refs = vec!["i9".into()];
        check(
            &by_id,
            &all,
            allocate(vec![("i9", dec!(60.00), Rule::ProviderMetadata)]),
        );
    }

    #[test]
    fn invoice_numbers_match_in_every_written_form() {
        let all = invoices();
        for text in [
            "INV-2026-007",
            "inv 2026/7",
            "INV2026007",
            "Inv-2026-0007",
            "INV 2026 -\n007",
            "INV-2026-00\n7 thanks",
            "Rechnung INV-2026-007 vom 7.1.",
            "INV-2026-007 100.00 EUR",
        ] {
            check(
                &remit(dec!(100.00), text),
                &all,
                allocate(vec![("i7", dec!(100.00), Rule::InvoiceNumberInText)]),
            );
        }
        let mut e2e = pay(dec!(100.00));
        e2e.end_to_end_id = Some("INV2026007".into());
        check(
            &e2e,
            &all,
            allocate(vec![("i7", dec!(100.00), Rule::InvoiceNumberInText)]),
        );
    }

    #[test]
    fn invoice_numbers_do_not_match_inside_longer_numbers_or_words() {
        let all = invoices();
        check(
            &remit(dec!(80.00), "INV-2026-0071"),
            &all,
            allocate(vec![("i71", dec!(80.00), Rule::InvoiceNumberInText)]),
        );
        // not INV-2026-007 and not 71 either: only the exact amount hints at 71, and the payer is unknown
        check(
            &remit(dec!(80.00), "XINV-2026-0071"),
            &all,
            Expect::Review(ReviewReason::LowConfidence, vec!["i71"]),
        );
    }

    #[test]
    fn a_number_cut_in_two_pays_only_an_invoice_its_joined_reading_names_exactly() {
        let all = invoices();
        let mut odd = all.clone();
        odd.push(inv("odd", "INV-20-2671", "odd", "Odd Ltd", dec!(5.00), 2));
        let i71 = || allocate(vec![("i71", dec!(80.00), Rule::InvoiceNumberInText)]);
        let cases: Vec<(&str, &[OpenInvoice], Expect)> = vec![
            // the plain reading names nothing, the joined one names an invoice
            ("INV-2026-0\n71 danke", &all, i71()),
            ("INV-2026-0 71", &all, i71()),
            ("INV-20\r\n26-071", &all, i71()),
            ("IN\nV-2026-071", &all, i71()),
            // the joined reading names no invoice: nothing is invented (only the amount hints at 71)
            (
                "INV-2026-0\n99 danke",
                &all,
                Expect::Review(ReviewReason::LowConfidence, vec!["i71"]),
            ),
            // both readings name an invoice (7 and 71): ambiguous
            (
                "INV-2026-07\n1 danke",
                &all,
                Expect::Review(ReviewReason::Ambiguous, vec!["i7", "i71"]),
            ),
            // two joined readings name different invoices: ambiguous
            (
                "INV-20 26 71",
                &odd,
                Expect::Review(ReviewReason::Ambiguous, vec!["i71", "odd"]),
            ),
        ];
        for (text, invoices, expected) in cases {
            check(&remit(dec!(80.00), text), invoices, expected);
        }
    }

    #[test]
    fn evidence_of_a_joined_number_quotes_it_with_its_cut() {
        let index = build_index(&invoices());
        let decision = decide(
            &remit(dec!(80.00), "Zahlung INV-2026-0\n71"),
            &index,
            &Settings::default(),
        );
        let Decision::Allocate { allocations, .. } = decision else {
            panic!("expected an allocation, got {decision:?}");
        };
        assert_eq!(
            allocations[0].evidence,
            "remittance contains 'INV-2026-0 71'"
        );
    }

    #[test]
    fn evidence_quotes_what_the_payer_wrote() {
        let index = build_index(&invoices());
        let decision = decide(
            &remit(dec!(100.00), "thanks for inv 2026/7"),
            &index,
            &Settings::default(),
        );
        let Decision::Allocate { allocations, .. } = decision else {
            panic!("expected an allocation, got {decision:?}");
        };
        assert_eq!(allocations[0].evidence, "remittance contains 'inv 2026/7'");
        assert_eq!(allocations[0].confidence, 90);
    }

    #[test]
    fn several_invoices_in_one_payment_are_paid_oldest_first() {
        let all = invoices();
        check(
            &remit(dec!(350.00), "INV-2026-008 + INV-2026-007"),
            &all,
            allocate(vec![
                ("i7", dec!(100.00), Rule::InvoiceNumberInText),
                ("i8", dec!(250.00), Rule::InvoiceNumberInText),
            ]),
        );
        // short: the older invoice is paid in full first
        check(
            &remit(dec!(300.00), "INV-2026-008, INV-2026-007"),
            &all,
            allocate(vec![
                ("i7", dec!(100.00), Rule::InvoiceNumberInText),
                ("i8", dec!(200.00), Rule::InvoiceNumberInText),
            ]),
        );
    }

    #[test]
    fn overpayment_goes_to_surplus() {
        check(
            &remit(dec!(130.00), "INV-2026-007"),
            &invoices(),
            Expect::Allocate {
                parts: vec![("i7", dec!(100.00), Rule::InvoiceNumberInText)],
                write_off: None,
                surplus: dec!(30.00),
                fee: dec!(0),
            },
        );
    }

    #[test]
    fn underpayment_within_tolerance_is_written_off_and_beyond_it_stays_open() {
        let all = invoices();
        check(
            &remit(dec!(99.97), "INV-2026-007"),
            &all,
            Expect::Allocate {
                parts: vec![("i7", dec!(99.97), Rule::InvoiceNumberInText)],
                write_off: Some(("i7", dec!(0.03))),
                surplus: dec!(0),
                fee: dec!(0),
            },
        );
        check(
            &remit(dec!(99.95), "INV-2026-007"),
            &all,
            Expect::Allocate {
                parts: vec![("i7", dec!(99.95), Rule::InvoiceNumberInText)],
                write_off: Some(("i7", dec!(0.05))),
                surplus: dec!(0),
                fee: dec!(0),
            },
        );
        check(
            &remit(dec!(99.94), "INV-2026-007"),
            &all,
            allocate(vec![("i7", dec!(99.94), Rule::InvoiceNumberInText)]),
        );
        check(
            &remit(dec!(349.98), "INV-2026-007 INV-2026-008"),
            &all,
            Expect::Allocate {
                parts: vec![
                    ("i7", dec!(100.00), Rule::InvoiceNumberInText),
                    ("i8", dec!(249.98), Rule::InvoiceNumberInText),
                ],
                write_off: Some(("i8", dec!(0.02))),
                surplus: dec!(0),
                fee: dec!(0),
            },
        );
    }

    #[test]
    fn a_provider_fee_is_a_fee_not_an_underpayment() {
        let mut stripe = pay(dec!(96.80));
        stripe.gross = Some(dec!(100.00));
        stripe.fee = Some(dec!(3.20));
        stripe.net = Some(dec!(96.80));
        stripe.invoice_refs = vec!["INV-2026-007".into()];
        check(
            &stripe,
            &invoices(),
            Expect::Allocate {
                parts: vec![("i7", dec!(100.00), Rule::ProviderMetadata)],
                write_off: None,
                surplus: dec!(0),
                fee: dec!(3.20),
            },
        );
        let mut fee_only = pay(dec!(96.80));
        fee_only.fee = Some(dec!(3.20));
        fee_only.remittance = Some("INV-2026-007".into());
        check(
            &fee_only,
            &invoices(),
            Expect::Allocate {
                parts: vec![("i7", dec!(100.00), Rule::InvoiceNumberInText)],
                write_off: None,
                surplus: dec!(0),
                fee: dec!(3.20),
            },
        );
    }

    #[test]
    fn entries_that_are_not_incoming_payments_are_ignored() {
        let all = invoices();
        let mut pending = remit(dec!(100.00), "INV-2026-007");
        pending.status = EntryStatus::Pending;
        check(
            &pending,
            &all,
            Expect::Ignore("pending entries never settle invoices"),
        );
        check(
            &remit(dec!(-100.00), "INV-2026-007"),
            &all,
            Expect::Ignore("outgoing money"),
        );
        check(
            &remit(dec!(0.00), "INV-2026-007"),
            &all,
            Expect::Ignore("zero amount"),
        );
        let mut reversal = remit(dec!(100.00), "INV-2026-007");
        reversal.reversal = true;
        check(&reversal, &all, Expect::Ignore("reversal"));
        for (kind, phrase) in [
            (PaymentKind::Refund, "refund"),
            (PaymentKind::Chargeback, "chargeback"),
            (PaymentKind::Fee, "fee line"),
        ] {
            let mut payment = remit(dec!(100.00), "INV-2026-007");
            payment.kind = kind;
            check(&payment, &all, Expect::Ignore(phrase));
        }
    }

    #[test]
    fn a_reference_to_an_invoice_in_another_currency_goes_to_review() {
        check(
            &remit(dec!(300.00), "INV-2026-020"),
            &invoices(),
            Expect::Review(ReviewReason::CurrencyMismatch, vec!["i20"]),
        );
    }

    #[test]
    fn a_reference_to_a_paid_invoice_is_reviewed_or_becomes_surplus() {
        let all = invoices();
        check(
            &remit(dec!(100.00), "INV-2026-003"),
            &all,
            Expect::Review(ReviewReason::ReferencedInvoiceClosed, vec!["i3"]),
        );
        let both = remit(dec!(160.00), "INV-2026-003 and INV-2026-009");
        check(
            &both,
            &all,
            Expect::Allocate {
                parts: vec![("i9", dec!(60.00), Rule::InvoiceNumberInText)],
                write_off: None,
                surplus: dec!(100.00),
                fee: dec!(0),
            },
        );
        let index = build_index(&all);
        if let Decision::Allocate { allocations, .. } = decide(&both, &index, &Settings::default())
        {
            assert!(allocations[0]
                .evidence
                .contains("INV-2026-003, which is already paid"));
        }
    }

    #[test]
    fn without_reference_the_payers_only_invoice_of_that_amount_is_paid() {
        let all = invoices();
        check(
            &from_acme(dec!(250.00)),
            &all,
            allocate(vec![(
                "i8",
                dec!(250.00),
                Rule::ExactAmountSinglePayerInvoice,
            )]),
        );
        check(
            &from_acme(dec!(250)),
            &all,
            allocate(vec![("i8", dec!(250), Rule::ExactAmountSinglePayerInvoice)]),
        );
        check(
            &from(dec!(80.00), "GLOBEX gmbh."),
            &all,
            allocate(vec![(
                "i71",
                dec!(80.00),
                Rule::ExactAmountSinglePayerInvoice,
            )]),
        );
        // a number that names no invoice does not stop the amount rules
        let mut unknown_number = from_acme(dec!(250.00));
        unknown_number.remittance = Some("INV-2026-999".into());
        check(
            &unknown_number,
            &all,
            allocate(vec![(
                "i8",
                dec!(250.00),
                Rule::ExactAmountSinglePayerInvoice,
            )]),
        );
    }

    #[test]
    fn a_large_accounts_exact_amount_is_found_through_the_amount_index() {
        let mut all = invoices();
        let count = u32::try_from(LARGE_ACCOUNT).unwrap_or(256) + 10;
        for n in 0..count {
            all.push(inv(
                &format!("big{n}"),
                &format!("INV-2025-{n}"),
                "bigco",
                "Big Co",
                Decimal::new(1_000 + i64::from(n), 2),
                1 + n % 28,
            ));
        }
        check(
            &from(dec!(12.34), "BIG CO"),
            &all,
            allocate(vec![(
                "big234",
                dec!(12.34),
                Rule::ExactAmountSinglePayerInvoice,
            )]),
        );
        // another customer's invoice of the same amount does not count for this payer
        all.push(inv(
            "other",
            "INV-2025-999",
            "acme",
            "ACME Ltd",
            dec!(12.34),
            2,
        ));
        check(
            &from(dec!(12.34), "BIG CO"),
            &all,
            allocate(vec![(
                "big234",
                dec!(12.34),
                Rule::ExactAmountSinglePayerInvoice,
            )]),
        );
    }

    #[test]
    fn two_invoices_with_the_same_amount_and_no_reference_are_never_guessed() {
        check(
            &from(dec!(45.00), "Umbrella Corp"),
            &invoices(),
            Expect::Review(ReviewReason::Ambiguous, vec!["i21", "i22"]),
        );
    }

    #[test]
    fn a_unique_subset_sum_of_the_payers_invoices_is_paid() {
        let all = invoices();
        check(
            &from(dec!(55.00), "Hooli Inc."),
            &all,
            allocate(vec![
                ("h2", dec!(20.00), Rule::SubsetSum),
                ("h3", dec!(35.00), Rule::SubsetSum),
            ]),
        );
        check(
            &from(dec!(65.00), "Hooli"),
            &all,
            allocate(vec![
                ("h1", dec!(10.00), Rule::SubsetSum),
                ("h2", dec!(20.00), Rule::SubsetSum),
                ("h3", dec!(35.00), Rule::SubsetSum),
            ]),
        );
        let small = Settings {
            subset_max_size: 2,
            ..Settings::default()
        };
        check_with(
            &small,
            &from(dec!(65.00), "Hooli"),
            &all,
            Expect::Review(ReviewReason::NoMatch, vec![]),
        );
    }

    #[test]
    fn several_subsets_with_the_same_sum_are_ambiguous() {
        // 10 + 40 and 20 + 30
        check(
            &from(dec!(50.00), "Stark Industries"),
            &invoices(),
            Expect::Review(ReviewReason::Ambiguous, vec!["s1", "s4", "s2", "s3"]),
        );
    }

    #[test]
    fn an_unknown_payers_exact_amount_is_only_a_suggestion() {
        let all = invoices();
        check(
            &from(dec!(80.00), "Somebody"),
            &all,
            Expect::Review(ReviewReason::LowConfidence, vec!["i71"]),
        );
        check(
            &pay(dec!(45.00)),
            &all,
            Expect::Review(ReviewReason::Ambiguous, vec!["i21", "i22"]),
        );
    }

    #[test]
    fn nothing_fitting_goes_to_review_with_ranked_suggestions() {
        let all = invoices();
        check(
            &pay(dec!(123.45)),
            &all,
            Expect::Review(ReviewReason::NoMatch, vec!["i7"]),
        );
        check(
            &from_acme(dec!(999.00)),
            &all,
            Expect::Review(ReviewReason::NoMatch, vec!["i8"]),
        );
        check(
            &pay(dec!(1.00)),
            &[],
            Expect::Review(ReviewReason::NoMatch, vec![]),
        );
    }

    #[test]
    fn another_customers_invoice_number_typed_by_hand_is_low_confidence() {
        let payment = {
            let mut p = from(dec!(100.00), "Globex GmbH");
            p.remittance = Some("INV-2026-007".into());
            p
        };
        check(
            &payment,
            &invoices(),
            Expect::Review(ReviewReason::LowConfidence, vec!["i7"]),
        );
        // a checked RF reference is still trusted
        let mut with_rf = from(dec!(100.00), "Globex GmbH");
        with_rf.structured_reference = Some(rf::creditor_reference("INV-2026-007"));
        check(
            &with_rf,
            &invoices(),
            allocate(vec![("i7", dec!(100.00), Rule::StructuredReference)]),
        );
    }

    #[test]
    fn min_confidence_sends_weaker_rules_to_review() {
        let strict = Settings {
            min_confidence: 85,
            ..Settings::default()
        };
        check_with(
            &strict,
            &from_acme(dec!(250.00)),
            &invoices(),
            Expect::Review(ReviewReason::LowConfidence, vec!["i8"]),
        );
        check_with(
            &strict,
            &remit(dec!(250.00), "INV-2026-008"),
            &invoices(),
            allocate(vec![("i8", dec!(250.00), Rule::InvoiceNumberInText)]),
        );
    }

    #[test]
    fn decisions_serialize_with_snake_case_tags_and_string_amounts() {
        let decision = Decision::Review {
            reason: ReviewReason::CurrencyMismatch,
            suggestions: vec![],
        };
        let json = serde_json::to_value(&decision).unwrap_or_default();
        assert_eq!(json["decision"], "review");
        assert_eq!(json["reason"], "currency_mismatch");
        let allocation = ProposedAllocation {
            invoice_id: "i".into(),
            amount: dec!(1.50),
            rule: Rule::ExactAmountSinglePayerInvoice,
            evidence: String::new(),
            confidence: 80,
        };
        let json = serde_json::to_value(&allocation).unwrap_or_default();
        assert_eq!(json["amount"], "1.50");
        assert_eq!(json["rule"], "exact_amount_single_payer_invoice");
        let allocate = Decision::Allocate {
            allocations: vec![],
            write_off: Some(("i7".into(), dec!(0.03))),
            surplus: dec!(1.10),
            fee: dec!(0),
        };
        let json = serde_json::to_value(&allocate).unwrap_or_default();
        assert_eq!(json["decision"], "allocate");
        assert_eq!(json["write_off"], serde_json::json!(["i7", "0.03"]));
        assert_eq!(json["surplus"], "1.10");
        assert_eq!(
            ReviewReason::NoMatch.to_string(),
            "No open invoice matches this payment."
        );
    }

    #[test]
    fn the_index_answers_at_200_000_open_invoices() {
        const COUNT: i64 = 200_000;
        let mut index = MatchIndex::new(shapes());
        for i in 0..COUNT {
            let number = format!("INV-2026-{i:03}");
            index.upsert(OpenInvoice {
                id: format!("id{i}"),
                rf_reference: rf::creditor_reference(&number),
                number,
                account_id: format!("acct{}", i % 50_000).into(),
                account_name: format!("Customer {} Ltd", i % 50_000).into(),
                currency: "EUR".into(),
                // 1000.00 + i cents: every balance is different
                balance: Decimal::new(100_000 + i, 2),
                issue_date: date(1, 1) + chrono::Days::new(u64::try_from(i % 300).unwrap_or(0)),
                due_date: date(12, 31),
                payment: None,
            });
        }
        assert_eq!(index.len(), 200_000);
        let settings = Settings::default();

        let by_text = remit(Decimal::new(100_000 + 123_456, 2), "inv 2026/123456");
        let Decision::Allocate { allocations, .. } = decide(&by_text, &index, &settings) else {
            panic!("number in text must allocate");
        };
        assert_eq!(allocations[0].invoice_id, "id123456");

        let mut by_rf = pay(Decimal::new(100_000 + 199_999, 2));
        by_rf.structured_reference = Some(rf::creditor_reference("INV-2026-199999"));
        let Decision::Allocate { allocations, .. } = decide(&by_rf, &index, &settings) else {
            panic!("rf must allocate");
        };
        assert_eq!(allocations[0].invoice_id, "id199999");

        // account acct7 holds invoices 7, 50007, 100007, 150007
        index.link_payer("NL91ABNA0417164300", "acct7");
        let mut by_payer = pay(Decimal::new(100_000 + 100_007, 2));
        by_payer.counterparty_account = Some("NL91 ABNA 0417 1643 00".into());
        let Decision::Allocate { allocations, .. } = decide(&by_payer, &index, &settings) else {
            panic!("the payer's exact amount must allocate");
        };
        assert_eq!(allocations[0].invoice_id, "id100007");

        let unknown = pay(Decimal::new(100_000 + 42, 2));
        let Decision::Review {
            reason,
            suggestions,
        } = decide(&unknown, &index, &settings)
        else {
            panic!("an unknown payer must go to review");
        };
        assert_eq!(reason, ReviewReason::LowConfidence);
        assert_eq!(suggestions[0].invoice_id, "id42");

        index.remove("id42");
        assert_eq!(index.len(), 199_999);
        let Decision::Review { reason, .. } = decide(&unknown, &index, &settings) else {
            panic!("a removed invoice must not match");
        };
        assert_eq!(reason, ReviewReason::NoMatch);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn reference_allocations_add_up_to_the_payment(
                cents in proptest::collection::vec(1i64..100_000, 1..5),
                paid in 1i64..400_000,
            ) {
                let invoices: Vec<OpenInvoice> = cents
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| inv(&format!("i{i}"), &format!("INV-2026-{}", 500 + i), "a", "A", Decimal::new(c, 2), 1 + u32::try_from(i).unwrap_or(0)))
                    .collect();
                let text: Vec<String> = invoices.iter().map(|i| i.number.clone()).collect();
                let money = Decimal::new(paid, 2);
                let index = build_index(&invoices);
                let decision = decide(&remit(money, &text.join(" ")), &index, &Settings::default());
                let Decision::Allocate { allocations, write_off, surplus, .. } = decision else {
                    return Err(TestCaseError::fail("references must allocate"));
                };
                let allocated: Decimal = allocations.iter().map(|a| a.amount).sum();
                prop_assert_eq!(allocated + surplus, money);
                let owed: Decimal = invoices.iter().map(|i| i.balance).sum();
                prop_assert!(surplus.is_zero() || allocated == owed);
                for a in &allocations {
                    let balance = index.get(&a.invoice_id).map(|i| i.balance).unwrap_or_default();
                    prop_assert!(a.amount > Decimal::ZERO && a.amount <= balance);
                }
                if let Some((_, amount)) = write_off {
                    prop_assert_eq!(allocated + amount, owed);
                    prop_assert!(amount <= dec!(0.05));
                }
            }
        }
    }
}
