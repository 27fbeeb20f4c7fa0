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
    /// Customer credit per currency code (from overpayments and credit notes); amounts as strings.
    pub credit_balance: BTreeMap<String, Decimal>,
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

/// Adds (positive) credit in `currency`.
pub fn add_credit(
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
        assert!(add_credit(&mut account, &eur, dec!(10.00)).is_ok());
        assert!(add_credit(&mut account, &eur, dec!(0)).is_err());
        assert!(use_credit(&mut account, &eur, dec!(10.01)).is_err());
        assert!(use_credit(&mut account, &eur, dec!(4.00)).is_ok());
        assert_eq!(credit(&account, &eur), dec!(6.00));
        let json = serde_json::to_value(&account).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(json["credit_balance"]["EUR"], "6.00");
        assert!(use_credit(&mut account, &eur, dec!(6.00)).is_ok());
        assert!(account.credit_balance.is_empty());
    }
}
