//! Accounts (companies) and contacts (people), and the rules for reusing them on conversion.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::lead::{email_domain, is_free_mail, normalise_company, normalise_email};
use super::money::Currency;
use super::DomainError;

/// A customer company.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    /// Id assigned by the engine.
    pub id: String,
    /// Display name.
    pub name: String,
    /// [`normalise_company`] of the name, the key for reuse.
    pub normalised_name: String,
    /// Business email domain, if known.
    pub domain: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Customer credit per currency code (from overpayments and credit notes); amounts as strings. Always the sum of
    /// what is left of `credit_lots`, plus credit an earlier release recorded without lots.
    pub credit_balance: BTreeMap<String, Decimal>,
    /// Where the credit came from and what became of it, oldest first (see [`CreditLot`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credit_lots: Vec<CreditLot>,
}

/// What put money on a customer's credit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CreditSource {
    /// What a payment paid beyond the invoices it was allocated to.
    Overpayment {
        /// The payment.
        payment_id: String,
    },
    /// What a credit note credited beyond what its invoice still owed.
    CreditNote {
        /// The credit note.
        credit_note_id: String,
        /// The invoice it credits.
        invoice_id: String,
    },
}

/// One amount put on an account's credit, and what became of it. Credit is spent oldest lot first (FIFO); a lot is
/// taken back (its payment reversed, or its credit note's invoice owing again) from what is left unspent first, then
/// by reopening the credit allocations it paid, newest first. Left of a lot: `amount - taken_back - spent + reopened`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreditLot {
    /// Where it came from.
    pub source: CreditSource,
    /// Currency code.
    pub currency: String,
    /// Amount put on credit.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    /// Taken back, unspent or by reopening what it paid.
    #[serde(default, with = "rust_decimal::serde::str")]
    pub taken_back: Decimal,
    /// The credit allocations it paid, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spent: Vec<CreditSpend>,
}

/// Part of a lot that paid an invoice (a `customer_credit` allocation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreditSpend {
    /// The credit allocation.
    pub allocation_id: String,
    /// The invoice it paid.
    pub invoice_id: String,
    /// How much of the allocation this lot paid.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    /// Of that, what was reopened when the lot was taken back.
    #[serde(default, with = "rust_decimal::serde::str")]
    pub reopened: Decimal,
}

/// The part of a credit allocation one lot paid, as the allocation records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreditDraw {
    /// The lot's source.
    pub source: CreditSource,
    /// Amount drawn from it.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
}

/// A credit allocation part to reopen because the lot that paid it was taken back.
#[derive(Debug, Clone, PartialEq)]
pub struct Reopen {
    /// The credit allocation.
    pub allocation_id: String,
    /// Its invoice.
    pub invoice_id: String,
    /// Amount to reopen.
    pub amount: Decimal,
}

impl CreditLot {
    /// What is left on credit of this lot.
    pub fn unspent(&self) -> Decimal {
        let spent: Decimal = self.spent.iter().map(|s| s.amount - s.reopened).sum();
        self.amount - self.taken_back - spent
    }

    /// What can still be taken back: everything not taken back yet, spent or not.
    pub fn left(&self) -> Decimal {
        self.amount - self.taken_back
    }
}

/// A person at an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contact {
    /// Id assigned by the engine.
    pub id: String,
    /// The account this person belongs to.
    pub account_id: String,
    /// Person's name.
    pub name: String,
    /// Normalised email.
    pub email: Option<String>,
    /// Phone number.
    pub phone: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// Builds an account; `domain` is kept only when it is a business (not free-mail) domain.
pub fn new_account(id: String, name: &str, email: Option<&str>, now: DateTime<Utc>) -> Account {
    let name = name.trim().to_string();
    Account {
        id,
        normalised_name: normalise_company(&name),
        name,
        domain: business_domain(email),
        created_at: now,
        credit_balance: BTreeMap::new(),
        credit_lots: Vec::new(),
    }
}

/// The email's domain when it identifies a company (not a free mail provider).
pub fn business_domain(email: Option<&str>) -> Option<String> {
    email.and_then(email_domain).filter(|d| !is_free_mail(d))
}

/// Whether an existing account should be reused for a company name and/or email: same
/// normalised company name, or same business email domain.
pub fn account_matches(account: &Account, company: Option<&str>, email: Option<&str>) -> bool {
    let by_name = company
        .map(normalise_company)
        .is_some_and(|n| !n.is_empty() && n == account.normalised_name);
    let by_domain = business_domain(email).is_some_and(|d| account.domain.as_deref() == Some(&d));
    by_name || by_domain
}

/// Whether an existing contact is the person with this email.
pub fn contact_matches(contact: &Contact, email: Option<&str>) -> bool {
    match (&contact.email, email) {
        (Some(a), Some(b)) => normalise_email(a) == normalise_email(b),
        _ => false,
    }
}

/// The account's credit in `currency` (zero when it has none).
pub fn credit(account: &Account, currency: &Currency) -> Decimal {
    account
        .credit_balance
        .get(currency.code())
        .copied()
        .unwrap_or(Decimal::ZERO)
}

/// Adds (positive) credit in `currency` as a new lot from `source`.
pub fn add_credit(
    account: &mut Account,
    currency: &Currency,
    amount: Decimal,
    source: CreditSource,
) -> Result<(), DomainError> {
    add_to_balance(account, currency, amount)?;
    account.credit_lots.push(CreditLot {
        source,
        currency: currency.code().to_string(),
        amount,
        taken_back: Decimal::ZERO,
        spent: Vec::new(),
    });
    Ok(())
}

fn add_to_balance(
    account: &mut Account,
    currency: &Currency,
    amount: Decimal,
) -> Result<(), DomainError> {
    if amount <= Decimal::ZERO {
        return Err(DomainError::invalid(
            "amount",
            "credit to add must be greater than zero",
        ));
    }
    let entry = account
        .credit_balance
        .entry(currency.code().to_string())
        .or_default();
    *entry = entry
        .checked_add(amount)
        .ok_or_else(|| DomainError::invalid("amount", "too large"))?;
    Ok(())
}

/// Spends `amount` of the account's credit on credit allocation `allocation_id` of invoice `invoice_id`: the oldest
/// credit first, credit recorded without lots (by an earlier release) before any lot. Returns the lots drawn from.
pub fn spend_credit(
    account: &mut Account,
    currency: &Currency,
    amount: Decimal,
    allocation_id: &str,
    invoice_id: &str,
) -> Result<Vec<CreditDraw>, DomainError> {
    let unattributed = unattributed(account, currency);
    use_credit(account, currency, amount)?;
    let mut want = amount - amount.min(unattributed);
    let mut draws = Vec::new();
    for lot in account
        .credit_lots
        .iter_mut()
        .filter(|l| l.currency == currency.code())
    {
        if want <= Decimal::ZERO {
            break;
        }
        let take = want.min(lot.unspent());
        if take <= Decimal::ZERO {
            continue;
        }
        lot.spent.push(CreditSpend {
            allocation_id: allocation_id.to_string(),
            invoice_id: invoice_id.to_string(),
            amount: take,
            reopened: Decimal::ZERO,
        });
        draws.push(CreditDraw {
            source: lot.source.clone(),
            amount: take,
        });
        want -= take;
    }
    Ok(draws)
}

/// Credit an earlier release recorded without lots (so without a source): the balance beyond what lots have left.
pub fn unattributed(account: &Account, currency: &Currency) -> Decimal {
    let in_lots: Decimal = account
        .credit_lots
        .iter()
        .filter(|l| l.currency == currency.code())
        .map(CreditLot::unspent)
        .sum();
    (credit(account, currency) - in_lots).max(Decimal::ZERO)
}

/// The lot `source` put on credit, if any.
pub fn lot<'a>(account: &'a Account, source: &CreditSource) -> Option<&'a CreditLot> {
    account.credit_lots.iter().find(|l| &l.source == source)
}

/// Takes back up to `amount` of the lot `source` put on credit: first what is left of it unspent (off the balance),
/// then what it paid, newest allocation first. Returns what was taken off the balance and the allocation parts the
/// caller must reopen. Taking back more than the lot has left takes back what it has.
pub fn take_back(
    account: &mut Account,
    source: &CreditSource,
    amount: Decimal,
) -> Result<(Decimal, Vec<Reopen>), DomainError> {
    let Some(index) = account.credit_lots.iter().position(|l| &l.source == source) else {
        return Ok((Decimal::ZERO, Vec::new()));
    };
    let lot = &mut account.credit_lots[index];
    let mut want = amount.min(lot.left());
    let unspent = want.min(lot.unspent());
    want -= unspent;
    lot.taken_back += unspent;
    let mut reopen = Vec::new();
    for spend in lot.spent.iter_mut().rev() {
        if want <= Decimal::ZERO {
            break;
        }
        let take = want.min(spend.amount - spend.reopened);
        if take <= Decimal::ZERO {
            continue;
        }
        spend.reopened += take;
        lot.taken_back += take;
        want -= take;
        reopen.push(Reopen {
            allocation_id: spend.allocation_id.clone(),
            invoice_id: spend.invoice_id.clone(),
            amount: take,
        });
    }
    let currency = Currency::parse(&lot.currency)?;
    if unspent > Decimal::ZERO {
        use_credit(account, &currency, unspent)?;
    }
    Ok((unspent, reopen))
}

/// Uses `amount` of the account's credit; refuses to go below zero.
pub fn use_credit(
    account: &mut Account,
    currency: &Currency,
    amount: Decimal,
) -> Result<(), DomainError> {
    let available = credit(account, currency);
    if amount <= Decimal::ZERO {
        return Err(DomainError::invalid(
            "amount",
            "credit to use must be greater than zero",
        ));
    }
    if amount > available {
        return Err(DomainError::invalid(
            "amount",
            format!("{amount} exceeds the available credit of {available} {currency}"),
        ));
    }
    let left = available - amount;
    if left.is_zero() {
        account.credit_balance.remove(currency.code());
    } else {
        account
            .credit_balance
            .insert(currency.code().to_string(), left);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use rust_decimal_macros::dec;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
            .single()
            .unwrap_or_else(|| panic!("bad time"))
    }

    #[test]
    fn accounts_are_reused_by_company_name_or_business_domain() {
        let acme = new_account("A1".into(), "ACME, Inc.", Some("jane@acme.com"), now());
        let gmail = new_account("A2".into(), "Joe's Shop", Some("joe@gmail.com"), now());
        assert_eq!(
            gmail.domain, None,
            "free-mail domains are not company domains"
        );
        fn check(account: &Account, company: Option<&str>, email: Option<&str>, expected: bool) {
            assert_eq!(
                account_matches(account, company, email),
                expected,
                "{company:?} {email:?}"
            );
        }
        check(&acme, Some("Acme"), None, true);
        check(&acme, Some("acme ltd"), None, true);
        check(&acme, None, Some("BOB@Acme.com"), true);
        check(&acme, Some("Initech"), Some("bob@initech.com"), false);
        check(&acme, None, None, false);
        check(&gmail, None, Some("other@gmail.com"), false);
        check(&gmail, Some("Joes Shop"), Some("other@gmail.com"), true);
    }

    #[test]
    fn contacts_match_by_normalised_email() {
        let contact = Contact {
            id: "C1".into(),
            account_id: "A1".into(),
            name: "Jane".into(),
            email: Some("jane@acme.com".into()),
            phone: None,
            created_at: now(),
        };
        assert!(contact_matches(&contact, Some(" Jane@ACME.com")));
        assert!(!contact_matches(&contact, Some("joe@acme.com")));
        assert!(!contact_matches(&contact, None));
    }

    #[test]
    fn credit_balance_adds_uses_and_never_goes_negative() {
        let eur = Currency::parse("EUR").unwrap_or_else(|e| panic!("{e}"));
        let mut account = new_account("A1".into(), "Acme", None, now());
        assert_eq!(credit(&account, &eur), Decimal::ZERO);
        let pay = |id: &str| CreditSource::Overpayment {
            payment_id: id.into(),
        };
        assert!(add_credit(&mut account, &eur, dec!(10.00), pay("P1")).is_ok());
        assert!(add_credit(&mut account, &eur, dec!(0), pay("P2")).is_err());
        assert_eq!(account.credit_lots.len(), 1, "a refused amount adds no lot");
        assert!(use_credit(&mut account, &eur, dec!(10.01)).is_err());
        assert!(use_credit(&mut account, &eur, dec!(4.00)).is_ok());
        assert_eq!(credit(&account, &eur), dec!(6.00));
        let json = serde_json::to_value(&account).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(json["credit_balance"]["EUR"], "6.00");
        assert!(use_credit(&mut account, &eur, dec!(6.00)).is_ok());
        assert!(account.credit_balance.is_empty());
    }

    #[test]
    fn credit_is_spent_oldest_first_and_taken_back_unspent_first_then_newest_spend_first() {
        let eur = Currency::parse("EUR").unwrap_or_else(|e| panic!("{e}"));
        let mut account = new_account("A1".into(), "Acme", None, now());
        // 5.00 from an earlier release, recorded without a lot.
        account.credit_balance.insert("EUR".into(), dec!(5.00));
        let p1 = CreditSource::Overpayment {
            payment_id: "P1".into(),
        };
        let cn = CreditSource::CreditNote {
            credit_note_id: "C1".into(),
            invoice_id: "I1".into(),
        };
        let ok = |r: Result<(), DomainError>| r.unwrap_or_else(|e| panic!("{e}"));
        ok(add_credit(&mut account, &eur, dec!(20.00), p1.clone()));
        ok(add_credit(&mut account, &eur, dec!(30.00), cn.clone()));
        let spend = |account: &mut Account, amount, id: &str| {
            spend_credit(account, &eur, amount, id, "I9").unwrap_or_else(|e| panic!("{e}"))
        };
        let drew =
            |draws: Vec<CreditDraw>| -> Vec<Decimal> { draws.iter().map(|d| d.amount).collect() };
        assert_eq!(
            drew(spend(&mut account, dec!(15.00), "L1")),
            [dec!(10.00)],
            "5.00 unattributed first"
        );
        assert_eq!(
            drew(spend(&mut account, dec!(15.00), "L2")),
            [dec!(10.00), dec!(5.00)]
        );
        assert_eq!(credit(&account, &eur), dec!(25.00));
        assert!(spend_credit(&mut account, &eur, dec!(25.01), "L3", "I9").is_err());
        // Taking back P1 whole: nothing of it is unspent, so L2's part (newest) then L1's part are reopened.
        let (unspent, reopen) =
            take_back(&mut account, &p1, dec!(50.00)).unwrap_or_else(|e| panic!("{e}"));
        let parts: Vec<(&str, Decimal)> = reopen
            .iter()
            .map(|r| (r.allocation_id.as_str(), r.amount))
            .collect();
        assert_eq!(
            (unspent, parts),
            (dec!(0), vec![("L2", dec!(10.00)), ("L1", dec!(10.00))])
        );
        assert_eq!(
            credit(&account, &eur),
            dec!(25.00),
            "spent credit was not on the balance"
        );
        // The credit note's lot: 25.00 unspent comes off the balance first, then 3.00 of L2.
        let (unspent, reopen) =
            take_back(&mut account, &cn, dec!(28.00)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (unspent, reopen.len(), reopen[0].amount),
            (dec!(25.00), 1, dec!(3.00))
        );
        assert_eq!(credit(&account, &eur), dec!(0));
        assert_eq!(lot(&account, &cn).map(CreditLot::left), Some(dec!(2.00)));
        assert_eq!(
            take_back(&mut account, &p1, dec!(1)),
            Ok((dec!(0), vec![])),
            "nothing left"
        );
    }
}
