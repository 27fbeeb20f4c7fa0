//! The in-memory index reconciliation matches against, updated one invoice at a time.
//!
//! Every question [`decide`](super::decide) asks is a map lookup or a short ordered range: by
//! canonical number key, by RF reference, by account (oldest first) and by (currency, balance).
//! Nothing scans all invoices, so matching does not slow down as open invoices grow.

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::ops::Bound;
use std::sync::Arc;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use settled_plugin_api::PaymentRecord;

use super::references::{number_key, NumberShape};
use super::OpenInvoice;
use crate::domain::rf;

/// Position of an invoice in the index's slab; secondary indexes hold these instead of strings,
/// which keeps 200,000 invoices in a few tens of megabytes.
pub(crate) type Handle = u32;
/// Interned account id.
type AccountNo = u32;

/// What the index knows about invoices, payers and customer names.
#[derive(Debug, Default)]
pub struct MatchIndex {
    pub(crate) shapes: Vec<NumberShape>,
    /// Every known invoice (open or settled); `None` marks a free slot.
    slots: Vec<Option<Slot>>,
    free: Vec<Handle>,
    // The three maps below are keyed by a 64-bit hash of the key and every hit is checked against
    // the invoice itself: storing the strings a second time would double the index's memory.
    /// Hash of the invoice id -> invoice.
    by_id: HashMulti,
    open_count: usize,
    /// Hash of the canonical number key -> known invoices (a paid one is still recognised).
    by_number: HashMulti,
    /// Hash of the normalised RF reference -> known invoices.
    by_rf: HashMulti,
    /// Account ids, interned: every invoice of an account shares its id, as it shares the strings in `texts`.
    accounts: HashMap<Arc<str>, AccountNo>,
    account_ids: Vec<Arc<str>>,
    /// Customer names as invoiced and currency codes: one copy each, shared by the invoices carrying them.
    texts: HashSet<Arc<str>>,
    /// Open invoices per account.
    account_open: Vec<usize>,
    /// (account, issue date, handle): an account's open invoices, oldest first.
    by_account: BTreeSet<(AccountNo, NaiveDate, Handle)>,
    /// Currency -> (balance, handle) of open invoices.
    by_amount: HashMap<Arc<str>, BTreeSet<(Decimal, Handle)>>,
    /// Normalised payer key (account number or name) -> account.
    payers: HashMap<String, AccountNo>,
    /// Normalised customer name -> its number in `names`.
    name_numbers: HashMap<Arc<str>, NameNo>,
    /// Normalised customer names, each with the one account carrying it (`None` when several do).
    names: Vec<(Arc<str>, Option<AccountNo>)>,
}

/// Interned normalised customer name.
type NameNo = u32;

#[derive(Debug)]
struct Slot {
    invoice: OpenInvoice,
    account: AccountNo,
    /// Its customer name normalised (`None`: nothing left of it), worked out once, not for every payment ranked.
    name: Option<NameNo>,
}

impl Slot {
    fn is_open(&self) -> bool {
        self.invoice.balance > Decimal::ZERO
    }
}

/// Hash -> handles. Almost every hash has one invoice, kept in a compact map; the rare second
/// and later ones (colliding keys, or a number reused across series) go to `more`.
#[derive(Debug, Default)]
struct HashMulti {
    first: HashMap<u64, Handle>,
    more: HashMap<u64, Vec<Handle>>,
}

impl HashMulti {
    fn insert(&mut self, hash: u64, handle: Handle) {
        match self.first.entry(hash) {
            Entry::Occupied(_) => self.more.entry(hash).or_default().push(handle),
            Entry::Vacant(place) => {
                place.insert(handle);
            }
        }
    }

    fn remove(&mut self, hash: u64, handle: Handle) {
        if self.first.get(&hash) == Some(&handle) {
            match self.more.get_mut(&hash).and_then(Vec::pop) {
                Some(next) => {
                    self.first.insert(hash, next);
                }
                None => {
                    self.first.remove(&hash);
                }
            }
        } else if let Some(more) = self.more.get_mut(&hash) {
            more.retain(|&h| h != handle);
        }
        if self.more.get(&hash).is_some_and(Vec::is_empty) {
            self.more.remove(&hash);
        }
    }

    fn get(&self, hash: u64) -> impl Iterator<Item = Handle> + '_ {
        self.first
            .get(&hash)
            .into_iter()
            .chain(self.more.get(&hash).into_iter().flatten())
            .copied()
    }
}

/// The customer a payment came from, and how it was recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Payer<'a> {
    pub account_id: &'a str,
    account: AccountNo,
    via: PayerVia<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PayerVia<'a> {
    LinkedAccount(&'a str),
    LinkedName(&'a str),
    SameName(&'a str),
}

/// Plain words for evidence, e.g. `counterparty account DE89... paid this customer before`.
impl fmt::Display for Payer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.via {
            PayerVia::LinkedAccount(number) => {
                write!(
                    f,
                    "counterparty account {} paid this customer before",
                    number.trim()
                )
            }
            PayerVia::LinkedName(name) => {
                write!(
                    f,
                    "counterparty '{}' paid this customer before",
                    name.trim()
                )
            }
            PayerVia::SameName(name) => {
                write!(
                    f,
                    "counterparty name '{}' is the customer's name",
                    name.trim()
                )
            }
        }
    }
}

/// Fixed keys: the hashes only need to be stable within one process, and the keys are our own
/// invoice ids and numbers.
fn key_hash(key: &str) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(key)
}

impl MatchIndex {
    /// An empty index recognising invoice numbers of these series.
    pub fn new(shapes: Vec<NumberShape>) -> Self {
        MatchIndex {
            shapes,
            ..MatchIndex::default()
        }
    }

    /// Learns the series of `number` when its prefix is new (an invoice kept in another system), so numbers of it are
    /// found in payment texts. Series once learnt stay until the index is rebuilt (from the invoices, which learn
    /// them again).
    pub fn learn_series(&mut self, number: &str) {
        if let Some(shape) = super::references::shape_of_number(number) {
            if !self.shapes.iter().any(|s| s.prefix == shape.prefix) {
                self.shapes.push(shape);
            }
        }
    }

    /// Adds or replaces an invoice. With a balance of zero or less it stays known (so a payment
    /// naming it is recognised as naming a paid invoice) but is no longer open.
    pub fn upsert(&mut self, inv: OpenInvoice) {
        let Some(mut inv) = self.update_balance(inv) else {
            return;
        };
        self.remove(&inv.id);
        let account = self.intern_account(&inv.account_id);
        if let Some(id) = self.account_ids.get(account as usize) {
            inv.account_id = id.clone();
        }
        inv.account_name = self.intern_text(&inv.account_name);
        inv.currency = self.intern_text(&inv.currency);
        let handle = match self.free.pop() {
            Some(handle) => handle,
            None => {
                self.slots.push(None);
                Handle::try_from(self.slots.len() - 1).unwrap_or(Handle::MAX)
            }
        };
        self.learn_series(&inv.number);
        if let Some(key) = number_key(&inv.number, &self.shapes) {
            self.by_number.insert(key_hash(&key), handle);
        }
        let reference = rf::normalise(&inv.rf_reference);
        if !reference.is_empty() {
            self.by_rf.insert(key_hash(&reference), handle);
        }
        let name = self.intern_name(&inv.account_name, account);
        let slot = Slot {
            invoice: inv,
            account,
            name,
        };
        if slot.is_open() {
            self.list_open(&slot, handle);
        }
        self.by_id.insert(key_hash(&slot.invoice.id), handle);
        if let Some(place) = self.slots.get_mut(handle as usize) {
            *place = Some(slot);
        }
    }

    /// What a payment changes: an invoice known under the same id, number, reference, customer, currency and dates
    /// gets its new balance, moved only in the indexes of open invoices (amounts, customers, counts). Gives the invoice
    /// back when anything else differs (or it is new), for the full re-index.
    fn update_balance(&mut self, inv: OpenInvoice) -> Option<OpenInvoice> {
        let Some(handle) = self.handle_of(&inv.id) else {
            return Some(inv);
        };
        let same = self.invoice(handle).is_some_and(|old| {
            old.id == inv.id
                && old.number == inv.number
                && old.rf_reference == inv.rf_reference
                && old.account_id == inv.account_id
                && old.account_name == inv.account_name
                && old.currency == inv.currency
                && old.issue_date == inv.issue_date
                && old.due_date == inv.due_date
        });
        let Some(old) = self
            .slots
            .get_mut(handle as usize)
            .and_then(|place| place.take_if(|_| same))
        else {
            return Some(inv);
        };
        // The same strings: keep the shared copies, not the new ones.
        let slot = Slot {
            invoice: OpenInvoice {
                account_id: old.invoice.account_id.clone(),
                account_name: old.invoice.account_name.clone(),
                currency: old.invoice.currency.clone(),
                ..inv
            },
            account: old.account,
            name: old.name,
        };
        match (old.is_open(), slot.is_open()) {
            // Still open: same customer and issue date, so only its place among the balances moves.
            (true, true) => {
                if old.invoice.balance != slot.invoice.balance {
                    if let Some(amounts) = self.by_amount.get_mut(&*slot.invoice.currency) {
                        amounts.remove(&(old.invoice.balance, handle));
                    }
                    self.list_amount(&slot.invoice.currency, (slot.invoice.balance, handle));
                }
            }
            (true, false) => self.unlist_open(&old, handle),
            (false, true) => self.list_open(&slot, handle),
            (false, false) => {}
        }
        if let Some(place) = self.slots.get_mut(handle as usize) {
            *place = Some(slot);
        }
        None
    }

    /// Enter an open invoice in the indexes of open invoices: by customer and issue date, by balance, and the counts.
    fn list_open(&mut self, slot: &Slot, handle: Handle) {
        self.open_count += 1;
        if let Some(count) = self.account_open.get_mut(slot.account as usize) {
            *count += 1;
        }
        self.by_account
            .insert((slot.account, slot.invoice.issue_date, handle));
        self.list_amount(&slot.invoice.currency, (slot.invoice.balance, handle));
    }

    /// Enter `(balance, handle)` among the open balances in `currency` (its currency string copied only when new).
    fn list_amount(&mut self, currency: &Arc<str>, entry: (Decimal, Handle)) {
        match self.by_amount.get_mut(&**currency) {
            Some(amounts) => {
                amounts.insert(entry);
            }
            None => {
                self.by_amount
                    .insert(currency.clone(), BTreeSet::from([entry]));
            }
        }
    }

    /// Take an invoice out of the indexes of open invoices ([`MatchIndex::list_open`]).
    fn unlist_open(&mut self, slot: &Slot, handle: Handle) {
        let inv = &slot.invoice;
        self.open_count -= 1;
        if let Some(count) = self.account_open.get_mut(slot.account as usize) {
            *count = count.saturating_sub(1);
        }
        self.by_account
            .remove(&(slot.account, inv.issue_date, handle));
        if let Some(amounts) = self.by_amount.get_mut(&*inv.currency) {
            amounts.remove(&(inv.balance, handle));
            if amounts.is_empty() {
                self.by_amount.remove(&*inv.currency);
            }
        }
    }

    /// Forgets an invoice entirely (voided).
    pub fn remove(&mut self, invoice_id: &str) {
        let Some(handle) = self.handle_of(invoice_id) else {
            return;
        };
        let Some(slot) = self.slots.get_mut(handle as usize).and_then(Option::take) else {
            return;
        };
        self.free.push(handle);
        let inv = &slot.invoice;
        self.by_id.remove(key_hash(invoice_id), handle);
        if let Some(key) = number_key(&inv.number, &self.shapes) {
            self.by_number.remove(key_hash(&key), handle);
        }
        self.by_rf
            .remove(key_hash(&rf::normalise(&inv.rf_reference)), handle);
        if slot.is_open() {
            self.unlist_open(&slot, handle);
        }
        for text in [&inv.account_name, &inv.currency] {
            // Held by `texts` and this invoice only (the open balances' key of a currency has gone with its last
            // open invoice): its last user goes. A copy someone else still holds only keeps it a while longer.
            if Arc::strong_count(text) == 2 {
                self.texts.remove(text);
            }
        }
    }

    /// A known invoice, open or settled.
    pub fn get(&self, invoice_id: &str) -> Option<&OpenInvoice> {
        self.handle_of(invoice_id).and_then(|h| self.invoice(h))
    }

    /// Remembers that this counterparty (an IBAN/account number or a name) paid this account, so
    /// its later payments without a reference can be matched among that account's invoices.
    pub fn link_payer(&mut self, payer_key: &str, account_id: &str) {
        let key = normalise_payer_key(payer_key);
        if !key.is_empty() {
            let account = self.intern_account(account_id);
            self.payers.insert(key, account);
        }
    }

    /// The account this payer key is linked to, if any (so an unchanged link is not written again).
    pub fn payer_account(&self, payer_key: &str) -> Option<&str> {
        let key = normalise_payer_key(payer_key);
        self.payers
            .get(&key)
            .and_then(|&account| usize::try_from(account).ok())
            .and_then(|i| self.account_ids.get(i))
            .map(|id| &**id)
    }

    /// Give back the room the index's tables grew into while it was loaded (a vector grown by doubling holds up to
    /// twice what it needs: ~15 MiB of the slab alone for 200,000 invoices). Later invoices grow them again as needed.
    pub fn shrink_to_fit(&mut self) {
        self.slots.shrink_to_fit();
        self.free.shrink_to_fit();
        for map in [&mut self.by_id, &mut self.by_number, &mut self.by_rf] {
            map.first.shrink_to_fit();
            map.more.shrink_to_fit();
        }
        self.accounts.shrink_to_fit();
        self.texts.shrink_to_fit();
        self.account_ids.shrink_to_fit();
        self.account_open.shrink_to_fit();
        self.payers.shrink_to_fit();
        self.name_numbers.shrink_to_fit();
        self.names.shrink_to_fit();
    }

    /// Number of open invoices (balance above zero).
    pub fn len(&self) -> usize {
        self.open_count
    }

    /// Whether no invoice is open.
    pub fn is_empty(&self) -> bool {
        self.open_count == 0
    }

    fn intern_account(&mut self, account_id: &str) -> AccountNo {
        if let Some(&account) = self.accounts.get(account_id) {
            return account;
        }
        let account = AccountNo::try_from(self.account_ids.len()).unwrap_or(AccountNo::MAX);
        let id: Arc<str> = account_id.into();
        self.accounts.insert(id.clone(), account);
        self.account_ids.push(id);
        self.account_open.push(0);
        account
    }

    /// The one shared copy of a customer name or currency code.
    fn intern_text(&mut self, text: &Arc<str>) -> Arc<str> {
        match self.texts.get(text) {
            Some(shared) => shared.clone(),
            None => {
                self.texts.insert(text.clone());
                text.clone()
            }
        }
    }

    /// The number of a customer name (normalised), noting that `account` carries it.
    fn intern_name(&mut self, account_name: &str, account: AccountNo) -> Option<NameNo> {
        let name = normalise_party_name(account_name);
        if name.is_empty() {
            return None;
        }
        if let Some(&number) = self.name_numbers.get(name.as_str()) {
            if let Some((_, owner)) = self.names.get_mut(number as usize) {
                if *owner != Some(account) {
                    *owner = None;
                }
            }
            return Some(number);
        }
        let number = NameNo::try_from(self.names.len()).unwrap_or(NameNo::MAX);
        let name: Arc<str> = name.into();
        self.name_numbers.insert(name.clone(), number);
        self.names.push((name, Some(account)));
        Some(number)
    }

    /// `normalise_party_name(&inv.account_name)` of an invoice this index holds, without working it out again (for
    /// any other invoice it is worked out).
    pub(crate) fn normalised_name<'a>(&'a self, inv: &'a OpenInvoice) -> Cow<'a, str> {
        let slot = self
            .handle_of(&inv.id)
            .and_then(|handle| self.slots.get(handle as usize))
            .and_then(Option::as_ref)
            .filter(|slot| std::ptr::eq(&slot.invoice, inv));
        match slot {
            Some(slot) => match slot.name.and_then(|n| self.names.get(n as usize)) {
                Some((name, _)) => Cow::Borrowed(name),
                None => Cow::Borrowed(""),
            },
            None => Cow::Owned(normalise_party_name(&inv.account_name)),
        }
    }

    /// The invoice in a slot.
    pub(crate) fn invoice(&self, handle: Handle) -> Option<&OpenInvoice> {
        self.slots
            .get(handle as usize)
            .and_then(Option::as_ref)
            .map(|slot| &slot.invoice)
    }

    /// The invoice with this id, as a handle.
    pub(crate) fn handle_of(&self, invoice_id: &str) -> Option<Handle> {
        self.find(&self.by_id, invoice_id, |inv| inv.id == invoice_id)
            .next()
    }

    /// Invoices known under a canonical number key.
    pub(crate) fn by_number(&self, key: &str) -> Vec<Handle> {
        self.find(&self.by_number, key, |inv| {
            number_key(&inv.number, &self.shapes).as_deref() == Some(key)
        })
        .collect()
    }

    /// Invoices known under a normalised RF reference.
    pub(crate) fn by_rf(&self, reference: &str) -> Vec<Handle> {
        self.find(&self.by_rf, reference, |inv| {
            same_normalised(&inv.rf_reference, reference)
        })
        .collect()
    }

    fn find<'a>(
        &'a self,
        map: &'a HashMulti,
        key: &str,
        is_it: impl Fn(&OpenInvoice) -> bool + 'a,
    ) -> impl Iterator<Item = Handle> + 'a {
        map.get(key_hash(key))
            .filter(move |&h| self.invoice(h).is_some_and(&is_it))
    }

    /// The payer's open invoices, oldest first.
    pub(crate) fn open_of_payer<'a>(
        &'a self,
        payer: &Payer<'_>,
    ) -> impl Iterator<Item = &'a OpenInvoice> + 'a {
        let account = payer.account;
        self.by_account
            .range((account, NaiveDate::MIN, 0)..=(account, NaiveDate::MAX, Handle::MAX))
            .filter_map(|&(_, _, handle)| self.invoice(handle))
    }

    /// How many open invoices the payer has.
    pub(crate) fn open_count_of_payer(&self, payer: &Payer<'_>) -> usize {
        self.account_open
            .get(payer.account as usize)
            .copied()
            .unwrap_or(0)
    }

    /// Open invoices with exactly this balance in this currency.
    pub(crate) fn open_with_balance<'a>(
        &'a self,
        currency: &str,
        balance: Decimal,
    ) -> impl Iterator<Item = &'a OpenInvoice> + 'a {
        self.by_amount
            .get(currency)
            .into_iter()
            .flat_map(move |amounts| amounts.range((balance, 0)..=(balance, Handle::MAX)))
            .filter_map(|&(_, handle)| self.invoice(handle))
    }

    /// Up to `per_side` open invoices with the balances nearest below and above `amount`.
    pub(crate) fn open_near_balance(
        &self,
        currency: &str,
        amount: Decimal,
        per_side: usize,
    ) -> Vec<&OpenInvoice> {
        let Some(amounts) = self.by_amount.get(currency) else {
            return Vec::new();
        };
        let below = amounts.range(..=(amount, Handle::MAX)).rev().take(per_side);
        let above = amounts
            .range((Bound::Excluded((amount, Handle::MAX)), Bound::Unbounded))
            .take(per_side);
        below
            .chain(above)
            .filter_map(|&(_, handle)| self.invoice(handle))
            .collect()
    }

    /// The customer who made this payment: by a counterparty account or name linked before, else
    /// by the counterparty name equal to exactly one customer's name.
    pub(crate) fn payer<'a>(&'a self, payment: &'a PaymentRecord) -> Option<Payer<'a>> {
        let found = |account: AccountNo, via: PayerVia<'a>| {
            let account_id = self.account_ids.get(account as usize)?;
            let account_id = &**account_id;
            Some(Payer {
                account_id,
                account,
                via,
            })
        };
        if let Some(number) = payment.counterparty_account.as_deref() {
            if let Some(&account) = self.payers.get(&normalise_payer_key(number)) {
                return found(account, PayerVia::LinkedAccount(number));
            }
        }
        let name = payment.counterparty_name.as_deref()?;
        let normalised = normalise_party_name(name);
        let key_is_name = !name.bytes().any(|b| b.is_ascii_digit());
        let linked = if key_is_name {
            self.payers.get(&normalised)
        } else {
            self.payers.get(&normalise_payer_key(name))
        };
        if let Some(&account) = linked {
            return found(account, PayerVia::LinkedName(name));
        }
        let number = *self.name_numbers.get(normalised.as_str())?;
        let account = self.names.get(number as usize)?.1?;
        found(account, PayerVia::SameName(name))
    }
}

/// Whether `raw` normalises (whitespace dropped, upper-cased) to `normalised`, without allocating.
fn same_normalised(raw: &str, normalised: &str) -> bool {
    raw.chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_uppercase)
        .eq(normalised.chars())
}

/// Legal-form words that do not distinguish one customer from another.
const LEGAL_FORMS: &[&str] = &[
    "ab",
    "ag",
    "aps",
    "as",
    "bv",
    "co",
    "company",
    "corp",
    "corporation",
    "gmbh",
    "inc",
    "incorporated",
    "kg",
    "limited",
    "llc",
    "llp",
    "ltd",
    "nv",
    "oy",
    "oyj",
    "plc",
    "pty",
    "sa",
    "sarl",
    "sas",
    "spa",
    "srl",
];

/// A customer or payer name reduced for comparison: lower case, punctuation and legal forms
/// dropped, single spaces. `ACME, Inc.`, `Acme Inc` and `acme` all become `acme`.
pub fn normalise_party_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let words = || {
        name.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
    };
    for word in words() {
        let before = out.len();
        push_word(&mut out, word);
        let pushed = out[before..].trim_start();
        if LEGAL_FORMS.contains(&pushed) {
            out.truncate(before);
        }
    }
    if out.is_empty() {
        // a name made only of legal-form words ("AB Co") is kept whole rather than emptied
        for word in words() {
            push_word(&mut out, word);
        }
    }
    out
}

fn push_word(out: &mut String, word: &str) {
    if !out.is_empty() {
        out.push(' ');
    }
    out.extend(word.chars().flat_map(char::to_lowercase));
}

/// Account numbers compare without spaces and case; names as customer names.
fn normalise_payer_key(raw: &str) -> String {
    if raw.bytes().any(|b| b.is_ascii_digit()) {
        raw.chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_uppercase())
            .collect()
    } else {
        normalise_party_name(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::shapes_from_patterns;
    use rust_decimal_macros::dec;

    fn date(day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 1, day.clamp(1, 28)).unwrap_or_default()
    }

    fn invoice(id: &str, number: &str, account: &str, balance: Decimal) -> OpenInvoice {
        OpenInvoice {
            id: id.into(),
            number: number.into(),
            rf_reference: rf::creditor_reference(number),
            account_id: account.into(),
            account_name: format!("Customer {account} Ltd").into(),
            currency: "EUR".into(),
            balance,
            issue_date: date(1),
            due_date: date(28),
            payment: None,
        }
    }

    fn ids<'a>(idx: &'a MatchIndex, handles: &[Handle]) -> Vec<&'a str> {
        handles
            .iter()
            .filter_map(|&h| idx.invoice(h))
            .map(|i| i.id.as_str())
            .collect()
    }

    /// Open invoices of the customer paying under this name, oldest first.
    fn open_of<'a>(idx: &'a MatchIndex, name: &str) -> Vec<&'a str> {
        let mut payment = PaymentRecord::new("p", dec!(1), "EUR");
        payment.counterparty_name = Some(name.into());
        idx.payer(&payment)
            .map(|payer| idx.open_of_payer(&payer).map(|i| i.id.as_str()).collect())
            .unwrap_or_default()
    }

    fn index() -> MatchIndex {
        MatchIndex::new(shapes_from_patterns(&["INV-{YYYY}-{SEQ:3}"]))
    }

    #[test]
    fn party_names_compare_without_case_punctuation_and_legal_forms() {
        for (name, expected) in [
            ("ACME, Inc.", "acme"),
            ("Acme Inc", "acme"),
            ("acme", "acme"),
            ("Müller GmbH & Co. KG", "müller"),
            ("AB Volvo", "volvo"),
            ("  Blue   Sky  Ltd ", "blue sky"),
            ("AB Co", "ab co"),
        ] {
            assert_eq!(normalise_party_name(name), expected, "{name}");
        }
    }

    #[test]
    fn upsert_indexes_and_paying_off_closes_but_keeps_the_invoice_known() {
        let mut idx = index();
        idx.upsert(invoice("i1", "INV-2026-001", "a1", dec!(100)));
        assert_eq!(idx.len(), 1);
        assert_eq!(ids(&idx, &idx.by_number("INV|2026|1")), ["i1"]);
        assert_eq!(idx.open_with_balance("EUR", dec!(100.00)).count(), 1);
        assert_eq!(open_of(&idx, "Customer a1"), ["i1"]);

        idx.upsert(invoice("i1", "INV-2026-001", "a1", dec!(40)));
        assert_eq!(idx.open_with_balance("EUR", dec!(100)).count(), 0);
        assert_eq!(idx.open_with_balance("EUR", dec!(40)).count(), 1);

        idx.upsert(invoice("i1", "INV-2026-001", "a1", dec!(0)));
        assert_eq!(idx.len(), 0);
        assert!(idx.is_empty());
        assert_eq!(idx.get("i1").map(|i| i.balance), Some(dec!(0)));
        assert_eq!(ids(&idx, &idx.by_number("INV|2026|1")), ["i1"]);
        assert!(open_of(&idx, "Customer a1").is_empty());
        assert_eq!(idx.open_with_balance("EUR", dec!(40)).count(), 0);
    }

    /// Open invoices by (currency, balance, id) and by (account, id), how many are open, and per account.
    type View = (
        Vec<(Arc<str>, Decimal, String)>,
        Vec<(Arc<str>, String)>,
        usize,
        Vec<(Arc<str>, usize)>,
    );

    /// The index as its queries see it, by invoice id (handles differ between two indexes of the same invoices).
    fn by_ids(idx: &MatchIndex) -> View {
        let id = |h: &Handle| idx.invoice(*h).map(|i| i.id.clone()).unwrap_or_default();
        let mut amounts: Vec<_> = idx
            .by_amount
            .iter()
            .flat_map(|(currency, set)| set.iter().map(move |(b, h)| (currency.clone(), *b, h)))
            .map(|(currency, balance, h)| (currency, balance, id(h)))
            .collect();
        amounts.sort();
        let mut accounts: Vec<_> = idx
            .by_account
            .iter()
            .map(|(a, _, h)| (idx.account_ids[*a as usize].clone(), id(h)))
            .collect();
        accounts.sort();
        let mut open: Vec<_> = idx
            .account_ids
            .iter()
            .cloned()
            .zip(idx.account_open.iter().copied())
            .filter(|(_, n)| *n > 0)
            .collect();
        open.sort();
        (amounts, accounts, idx.len(), open)
    }

    #[test]
    fn shrink_to_fit_gives_back_the_slab_s_spare_room_and_every_lookup_still_answers() {
        let mut idx = index();
        for n in 0..1_100u32 {
            idx.upsert(invoice(
                &format!("i{n}"),
                &format!("INV-2026-{n:03}"),
                &format!("a{}", n % 7),
                dec!(10),
            ));
        }
        assert!(idx.slots.capacity() > idx.slots.len(), "grown by doubling");
        idx.shrink_to_fit();
        assert_eq!(idx.slots.capacity(), idx.slots.len());
        assert_eq!(idx.len(), 1_100);
        for n in [0u32, 517, 1_099] {
            let number = format!("INV-2026-{n:03}");
            let id = format!("i{n}");
            assert_eq!(
                idx.get(&id).map(|i| i.number.as_str()),
                Some(number.as_str())
            );
            let key = number_key(&number, &idx.shapes).unwrap_or_default();
            assert_eq!(ids(&idx, &idx.by_number(&key)), vec![id.as_str()]);
            let rf = rf::creditor_reference(&number);
            assert_eq!(
                ids(&idx, &idx.by_rf(&rf::normalise(&rf))),
                vec![id.as_str()]
            );
        }
        assert_eq!(open_of(&idx, "Customer a3 Ltd").len(), 157);
        // It grows again for the next invoice.
        idx.upsert(invoice("i-new", "INV-2026-2000", "a1", dec!(5)));
        assert_eq!(idx.get("i-new").map(|i| i.balance), Some(dec!(5)));
        assert_eq!(idx.len(), 1_101);
    }

    #[test]
    fn invoices_of_one_customer_share_one_copy_of_its_id_name_and_currency_until_the_last_goes() {
        let mut idx = index();
        idx.upsert(invoice("i1", "INV-2026-001", "a1", dec!(10)));
        idx.upsert(invoice("i2", "INV-2026-002", "a1", dec!(20)));
        // A payment's new balance (the engine's copy of the invoice carries strings of its own).
        idx.upsert(invoice("i2", "INV-2026-002", "a1", dec!(5)));
        idx.upsert(invoice("i3", "INV-2026-003", "a2", dec!(30)));
        let (one, two) = (idx.get("i1").unwrap(), idx.get("i2").unwrap());
        assert_eq!(two.balance, dec!(5));
        assert!(Arc::ptr_eq(&one.account_id, &two.account_id));
        assert!(Arc::ptr_eq(&one.account_name, &two.account_name));
        assert!(Arc::ptr_eq(&one.currency, &two.currency));
        let other = idx.get("i3").unwrap();
        assert!(Arc::ptr_eq(&one.currency, &other.currency));
        assert!(!Arc::ptr_eq(&one.account_name, &other.account_name));
        assert_eq!(idx.texts.len(), 3, "two names and one currency");
        // The last invoice carrying a name takes it out; the currency stays while another invoice has it.
        idx.remove("i3");
        assert!(!idx.texts.contains("Customer a2 Ltd"));
        assert!(idx.texts.contains("EUR"));
        idx.remove("i1");
        idx.remove("i2");
        assert!(idx.texts.is_empty());
    }

    #[test]
    fn a_new_balance_moves_the_invoice_as_a_fresh_index_of_the_same_invoices_holds_it() {
        let mut idx = index();
        let mut last = std::collections::BTreeMap::new();
        let mut seed = 7u64;
        for step in 0..2_000u32 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let n = (seed >> 33) % 12;
            let balance = Decimal::from((seed >> 20) % 4) * dec!(25);
            // Now and then something else changes too (a new due date), which takes the full re-index.
            let mut inv = invoice(
                &format!("i{n}"),
                &format!("INV-2026-{n:03}"),
                &format!("a{}", n % 3),
                balance,
            );
            if step % 97 == 0 {
                inv.due_date = date(20);
            }
            last.insert(inv.id.clone(), inv.clone());
            idx.upsert(inv);
            let mut fresh = index();
            for inv in last.values() {
                fresh.upsert(inv.clone());
            }
            assert_eq!(by_ids(&idx), by_ids(&fresh), "after step {step}");
            for (id, inv) in &last {
                assert_eq!(idx.get(id), Some(inv), "after step {step}");
            }
        }
    }

    #[test]
    fn remove_forgets_the_invoice_everywhere() {
        let mut idx = index();
        let inv = invoice("i1", "INV-2026-001", "a1", dec!(100));
        let reference = rf::normalise(&inv.rf_reference);
        idx.upsert(inv);
        idx.remove("i1");
        idx.remove("never-seen");
        assert_eq!(idx.len(), 0);
        assert!(idx.get("i1").is_none());
        assert!(idx.by_number("INV|2026|1").is_empty());
        assert!(idx.by_rf(&reference).is_empty());
        assert_eq!(idx.open_with_balance("EUR", dec!(100)).count(), 0);
        // the freed slot is reused without mixing up the indexes
        idx.upsert(invoice("i2", "INV-2026-002", "a1", dec!(5)));
        assert_eq!(ids(&idx, &idx.by_number("INV|2026|2")), ["i2"]);
        assert_eq!(open_of(&idx, "Customer a1"), ["i2"]);
    }

    #[test]
    fn colliding_hashes_keep_every_handle_until_removed() {
        let mut multi = HashMulti::default();
        for handle in [1, 2, 3] {
            multi.insert(7, handle);
        }
        multi.insert(8, 4);
        assert_eq!(multi.get(7).collect::<Vec<_>>(), [1, 2, 3]);
        multi.remove(7, 1);
        let mut left: Vec<Handle> = multi.get(7).collect();
        left.sort_unstable();
        assert_eq!(left, [2, 3]);
        multi.remove(7, 3);
        multi.remove(7, 9);
        assert_eq!(multi.get(7).collect::<Vec<_>>(), [2]);
        multi.remove(7, 2);
        assert_eq!(multi.get(7).count(), 0);
        assert!(multi.more.is_empty());
        assert_eq!(multi.get(8).collect::<Vec<_>>(), [4]);
    }

    #[test]
    fn nearest_balances_come_from_both_sides() {
        let mut idx = index();
        for (i, amount) in [dec!(10), dec!(90), dec!(99), dec!(101), dec!(500)]
            .into_iter()
            .enumerate()
        {
            idx.upsert(invoice(
                &format!("i{i}"),
                &format!("INV-2026-{i}"),
                "a",
                amount,
            ));
        }
        let mut near: Vec<Decimal> = idx
            .open_near_balance("EUR", dec!(100), 2)
            .into_iter()
            .map(|i| i.balance)
            .collect();
        near.sort();
        assert_eq!(near, vec![dec!(90), dec!(99), dec!(101), dec!(500)]);
        assert!(idx.open_near_balance("USD", dec!(100), 2).is_empty());
    }

    #[test]
    fn payer_is_found_by_linked_account_linked_name_or_unique_customer_name() {
        let mut idx = index();
        idx.upsert(invoice("i1", "INV-2026-001", "a1", dec!(100)));
        idx.upsert(invoice("i2", "INV-2026-002", "a2", dec!(100)));
        idx.link_payer("DE89 3704 0044 0532 0130 00", "a2");
        idx.link_payer("Jane Roe", "a1");

        let mut payment = PaymentRecord::new("p", dec!(1), "EUR");
        payment.counterparty_account = Some("de89370400440532013000".into());
        assert_eq!(idx.payer(&payment).map(|p| p.account_id), Some("a2"));

        payment.counterparty_account = None;
        payment.counterparty_name = Some("JANE ROE".into());
        assert_eq!(idx.payer(&payment).map(|p| p.account_id), Some("a1"));

        payment.counterparty_name = Some("customer A2 limited".into());
        assert_eq!(idx.payer(&payment).map(|p| p.account_id), Some("a2"));

        payment.counterparty_name = Some("Somebody Else".into());
        assert_eq!(idx.payer(&payment), None);
    }

    #[test]
    fn a_name_shared_by_two_customers_identifies_nobody() {
        let mut idx = index();
        let mut first = invoice("i1", "INV-2026-001", "a1", dec!(100));
        first.account_name = "Acme".into();
        let mut second = invoice("i2", "INV-2026-002", "a2", dec!(100));
        second.account_name = "ACME Inc.".into();
        idx.upsert(first);
        idx.upsert(second);
        let mut payment = PaymentRecord::new("p", dec!(1), "EUR");
        payment.counterparty_name = Some("acme".into());
        assert_eq!(idx.payer(&payment), None);
    }
}
