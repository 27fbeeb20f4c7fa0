//! Reconciliation: which open invoices a payment settles, and why.
//!
//! Pure functions over an in-memory [`MatchIndex`]: no store, no IO, no clock. The engine keeps the
//! index up to date as invoices are issued, paid and voided, calls [`decide`] for every booked
//! payment and applies the [`Decision`] in one store transaction. Every proposed allocation carries
//! its rule, the evidence (what in the payment pointed at the invoice) and a confidence.
//!
//! Pipeline of [`decide`]: references (RF creditor references, provider metadata, invoice numbers
//! in free text) -> allocation to referenced invoices, oldest first -> without references, an exact
//! amount among the payer's open invoices, then small subset sums -> otherwise the review queue with
//! ranked suggestions. Nothing is ever guessed: two equally good candidates go to review.
//!
//! Code map: `references.rs` finds references in a payment (hand-written scanner, canonical
//! number keys), `index.rs` holds [`MatchIndex`], `decide.rs` runs the pipeline and ranks
//! suggestions. Invariants: nothing here scans all invoices; an exact amount from an unknown
//! payer is never allocated; a reference with bad RF check digits is never a match.

mod decide;
mod index;
mod references;

use std::fmt;
use std::sync::Arc;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::domain::invoice::{ExternalRef, PaymentStatus};

pub use decide::decide;
pub use index::{normalise_party_name, MatchIndex};
pub use references::{
    find_references, number_key, shapes_from_patterns, FoundReference, NumberShape,
};

/// An issued invoice as reconciliation sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenInvoice {
    /// Invoice id.
    pub id: String,
    /// Issued number, e.g. `INV-2026-007`.
    pub number: String,
    /// Its ISO 11649 creditor reference, e.g. `RF..INV2026007`.
    pub rf_reference: String,
    /// The customer account billed (shared by the index between the invoices of one account).
    pub account_id: Arc<str>,
    /// The customer's name as invoiced (shared like `account_id`).
    pub account_name: Arc<str>,
    /// ISO 4217 code (shared like `account_id`).
    pub currency: Arc<str>,
    /// What is still owed; zero or less means settled.
    #[serde(with = "rust_decimal::serde::str")]
    pub balance: Decimal,
    /// Issue date.
    pub issue_date: NaiveDate,
    /// Due date.
    pub due_date: NaiveDate,
    /// What a payment changes on the invoice besides its balance, so that the engine allocates without reading the
    /// invoice. `None` in rows of stores from before it was kept: such an invoice is read at its next payment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment: Option<PaymentFigures>,
}

/// An open invoice's payment figures as its record holds them (the engine keeps both in step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentFigures {
    /// Invoice total.
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
    /// Allocated payments minus reversals.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount_paid: Decimal,
    /// Reversed payments refunded to the payer.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount_refunded: Decimal,
    /// The payment status last announced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announced_status: Option<PaymentStatus>,
    /// The invoice in other systems, named by the `payment.recorded` event of a payment of it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_refs: Vec<ExternalRef>,
}

/// Tunable limits of the matcher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Largest shortfall (absolute, in the payment's currency) written off on a referenced invoice.
    #[serde(with = "rust_decimal::serde::str")]
    pub writeoff_tolerance: Decimal,
    /// Subset sums look at this many of the payer's oldest open invoices.
    pub subset_max_invoices: usize,
    /// Subset sums combine at most this many invoices.
    pub subset_max_size: usize,
    /// Allocations less confident than this (0..=100) go to review instead.
    pub min_confidence: u8,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            writeoff_tolerance: Decimal::new(5, 2),
            subset_max_invoices: 12,
            subset_max_size: 3,
            min_confidence: 60,
        }
    }
}

/// The rule that tied a payment to an invoice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// A verified ISO 11649 RF creditor reference.
    StructuredReference,
    /// The payment provider's metadata named the invoice.
    ProviderMetadata,
    /// The invoice number appears in the remittance text or end-to-end id.
    InvoiceNumberInText,
    /// The payer's only open invoice of exactly this amount.
    ExactAmountSinglePayerInvoice,
    /// The only combination of the payer's open invoices adding up to the payment.
    SubsetSum,
    /// A person allocated it from the review queue.
    Manual,
}

impl Rule {
    /// Confidence (0..=100) of an allocation made by this rule when nothing argues against it.
    pub fn base_confidence(self) -> u8 {
        match self {
            Rule::StructuredReference | Rule::Manual => 100,
            Rule::ProviderMetadata => 95,
            Rule::InvoiceNumberInText => 90,
            Rule::ExactAmountSinglePayerInvoice => 80,
            Rule::SubsetSum => 70,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rule::StructuredReference => "structured creditor reference",
            Rule::ProviderMetadata => "payment provider metadata",
            Rule::InvoiceNumberInText => "invoice number in the payment text",
            Rule::ExactAmountSinglePayerInvoice => {
                "exact amount of the payer's only matching invoice"
            }
            Rule::SubsetSum => "sum of several of the payer's invoices",
            Rule::Manual => "allocated by hand",
        })
    }
}

/// One part of a payment going to one invoice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProposedAllocation {
    /// Invoice id.
    pub invoice_id: String,
    /// Amount applied to the invoice (positive, at most its balance).
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    /// Rule that matched.
    pub rule: Rule,
    /// What in the payment pointed at the invoice, e.g. `remittance contains 'inv 2026/7'`.
    pub evidence: String,
    /// 0..=100.
    pub confidence: u8,
}

/// A candidate invoice offered to the person reviewing a payment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suggestion {
    /// Invoice id.
    pub invoice_id: String,
    /// Invoice number.
    pub number: String,
    /// Suggested amount to allocate.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    /// 0..=100, higher is better.
    pub score: u8,
    /// Why it is suggested, in plain words.
    pub why: String,
    /// For a return whose original is unclear: the candidate original payment (the invoice is the newest one it paid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
}

/// What to do with a payment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Apply these allocations (in one transaction).
    Allocate {
        /// Allocations, oldest invoice first.
        allocations: Vec<ProposedAllocation>,
        /// A shortfall within tolerance to write off: (invoice id, amount).
        write_off: Option<(String, Decimal)>,
        /// Money left over after every matched invoice is paid: goes to the customer's credit balance.
        surplus: Decimal,
        /// Provider fee deducted from the gross (recorded as a fee, not as underpayment).
        fee: Decimal,
    },
    /// Put the payment in the review queue.
    Review {
        /// Why no allocation was made.
        reason: ReviewReason,
        /// Ranked candidates, best first, at most [`MAX_SUGGESTIONS`].
        suggestions: Vec<Suggestion>,
    },
    /// Not a payment of an invoice (pending, outgoing, zero, a fee or a reversal line).
    Ignore {
        /// Why, in plain words.
        reason: String,
    },
}

/// At most this many suggestions accompany a review item.
pub const MAX_SUGGESTIONS: usize = 5;

/// Why a payment waits for a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewReason {
    /// No invoice fits.
    NoMatch,
    /// Several invoices fit equally well.
    Ambiguous,
    /// The referenced invoice is in another currency.
    CurrencyMismatch,
    /// A candidate exists but the evidence is too weak to act on.
    LowConfidence,
    /// The payment names an invoice that is already paid.
    ReferencedInvoiceClosed,
}

impl fmt::Display for ReviewReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReviewReason::NoMatch => "No open invoice matches this payment.",
            ReviewReason::Ambiguous => {
                "Several open invoices match this payment equally well, so none was chosen."
            }
            ReviewReason::CurrencyMismatch => {
                "The payment names an invoice issued in a different currency."
            }
            ReviewReason::LowConfidence => {
                "A likely invoice was found, but the evidence is too weak to allocate automatically."
            }
            ReviewReason::ReferencedInvoiceClosed => {
                "The payment names an invoice that is already fully paid."
            }
        })
    }
}
