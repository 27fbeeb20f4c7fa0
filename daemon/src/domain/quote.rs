//! Quotes: creation with computed totals, the send/accept/reject/expire life cycle, revisions.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::money::Currency;
use super::totals::{compute, Discount, DocumentLine, LineInput, Totals};
use super::{status_name, DomainError};

/// Quote status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuoteStatus {
    /// Being prepared.
    Draft,
    /// With the customer.
    Sent,
    /// Accepted by the customer; an order may be made from it.
    Accepted,
    /// Declined by the customer.
    Rejected,
    /// Not accepted before `valid_until`.
    Expired,
    /// Replaced by a newer revision.
    Superseded,
}

/// A priced offer to a customer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quote {
    /// Id assigned by the engine.
    pub id: String,
    /// Series number, shared by all revisions (see [`Quote::display_number`]).
    pub number: String,
    /// 1 for the first version, +1 per revision.
    pub revision: u32,
    /// The opportunity quoted.
    pub opportunity_id: String,
    /// The customer account.
    pub account_id: String,
    /// Document currency.
    pub currency: Currency,
    /// Last day the quote can be accepted.
    pub valid_until: NaiveDate,
    /// Priced lines.
    pub lines: Vec<DocumentLine>,
    /// Discount on the whole document.
    pub document_discount: Option<Discount>,
    /// Computed totals.
    pub totals: Totals,
    /// Current status.
    pub status: QuoteStatus,
    /// Id of the revision this one replaces.
    pub supersedes: Option<String>,
    /// Id of the revision that replaced this one.
    pub superseded_by: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// What the API supplies to create a quote.
#[derive(Debug, Clone, PartialEq)]
pub struct QuoteInput {
    /// The opportunity quoted.
    pub opportunity_id: String,
    /// The customer account (the opportunity's).
    pub account_id: String,
    /// Document currency.
    pub currency: Currency,
    /// Last day the quote can be accepted; not before today.
    pub valid_until: NaiveDate,
    /// Lines as entered.
    pub lines: Vec<LineInput>,
    /// Discount on the whole document.
    pub document_discount: Option<Discount>,
}

/// Changes for a new revision; `None` keeps the old value.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QuoteRevision {
    /// New lines.
    pub lines: Option<Vec<LineInput>>,
    /// New document discount (`Some(None)` removes it).
    pub document_discount: Option<Option<Discount>>,
    /// New validity.
    pub valid_until: Option<NaiveDate>,
}

impl Quote {
    /// The number as shown to people: `Q-2026-001`, then `Q-2026-001-R2` for later revisions.
    pub fn display_number(&self) -> String {
        if self.revision <= 1 {
            self.number.clone()
        } else {
            format!("{}-R{}", self.number, self.revision)
        }
    }
}

/// Creates a draft quote; `valid_until` may not be before `today`.
pub fn new_quote(
    id: String,
    number: String,
    input: QuoteInput,
    today: NaiveDate,
    now: DateTime<Utc>,
) -> Result<Quote, DomainError> {
    check_valid_until(input.valid_until, today)?;
    let (lines, totals) = compute(
        &input.lines,
        input.document_discount.as_ref(),
        &input.currency,
    )?;
    Ok(Quote {
        id,
        number,
        revision: 1,
        opportunity_id: input.opportunity_id,
        account_id: input.account_id,
        currency: input.currency,
        valid_until: input.valid_until,
        lines,
        document_discount: input.document_discount,
        totals,
        status: QuoteStatus::Draft,
        supersedes: None,
        superseded_by: None,
        created_at: now,
        updated_at: now,
    })
}

fn check_valid_until(valid_until: NaiveDate, today: NaiveDate) -> Result<(), DomainError> {
    if valid_until < today {
        return Err(DomainError::invalid(
            "valid_until",
            format!("{valid_until} is in the past (today is {today})"),
        ));
    }
    Ok(())
}

fn refuse(quote: &Quote, action: &'static str, reason: impl Into<String>) -> DomainError {
    DomainError::transition("quote", status_name(&quote.status), action, reason)
}

/// Draft -> Sent, while still valid. The caller sets `updated_at` on every change.
pub fn send(quote: &mut Quote, today: NaiveDate) -> Result<(), DomainError> {
    if quote.status != QuoteStatus::Draft {
        return Err(refuse(quote, "send", "only a draft can be sent"));
    }
    if quote.valid_until < today {
        return Err(refuse(
            quote,
            "send",
            format!(
                "quote expired on {}; revise it with a new valid_until",
                quote.valid_until
            ),
        ));
    }
    quote.status = QuoteStatus::Sent;
    Ok(())
}

/// Sent -> Accepted, on or before `valid_until`.
pub fn accept(quote: &mut Quote, today: NaiveDate) -> Result<(), DomainError> {
    if quote.status != QuoteStatus::Sent {
        return Err(refuse(quote, "accept", "only a sent quote can be accepted"));
    }
    if quote.valid_until < today {
        return Err(refuse(
            quote,
            "accept",
            format!("quote expired on {}", quote.valid_until),
        ));
    }
    quote.status = QuoteStatus::Accepted;
    Ok(())
}

/// Sent -> Rejected.
pub fn reject(quote: &mut Quote, _today: NaiveDate) -> Result<(), DomainError> {
    if quote.status != QuoteStatus::Sent {
        return Err(refuse(quote, "reject", "only a sent quote can be rejected"));
    }
    quote.status = QuoteStatus::Rejected;
    Ok(())
}

/// Draft or Sent past `valid_until` -> Expired; returns whether the quote changed.
pub fn expire_if_due(quote: &mut Quote, today: NaiveDate) -> bool {
    let due =
        matches!(quote.status, QuoteStatus::Draft | QuoteStatus::Sent) && quote.valid_until < today;
    if due {
        quote.status = QuoteStatus::Expired;
    }
    due
}

/// Makes a new draft revision (same number, `revision + 1`) and marks `old` superseded.
///
/// Allowed from draft, sent, rejected and expired. The new revision must be valid today, so
/// reviving an expired quote needs a new `valid_until`. Nothing changes on error.
pub fn revise(
    old: &mut Quote,
    new_id: String,
    changes: QuoteRevision,
    today: NaiveDate,
    now: DateTime<Utc>,
) -> Result<Quote, DomainError> {
    if !matches!(
        old.status,
        QuoteStatus::Draft | QuoteStatus::Sent | QuoteStatus::Rejected | QuoteStatus::Expired
    ) {
        return Err(refuse(
            old,
            "revise",
            "only draft, sent, rejected or expired quotes can be revised",
        ));
    }
    let valid_until = changes.valid_until.unwrap_or(old.valid_until);
    check_valid_until(valid_until, today)?;
    let lines: Vec<LineInput> = match changes.lines {
        Some(lines) => lines,
        None => old.lines.iter().map(LineInput::from).collect(),
    };
    let document_discount = changes
        .document_discount
        .unwrap_or_else(|| old.document_discount.clone());
    let (lines, totals) = compute(&lines, document_discount.as_ref(), &old.currency)?;
    let revision = old
        .revision
        .checked_add(1)
        .ok_or_else(|| refuse(old, "revise", "too many revisions"))?;
    let new = Quote {
        id: new_id,
        number: old.number.clone(),
        revision,
        opportunity_id: old.opportunity_id.clone(),
        account_id: old.account_id.clone(),
        currency: old.currency.clone(),
        valid_until,
        lines,
        document_discount,
        totals,
        status: QuoteStatus::Draft,
        supersedes: Some(old.id.clone()),
        superseded_by: None,
        created_at: now,
        updated_at: now,
    };
    old.status = QuoteStatus::Superseded;
    old.superseded_by = Some(new.id.clone());
    old.updated_at = now;
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use rust_decimal_macros::dec;

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 3, d).unwrap_or_else(|| panic!("bad test date"))
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
            .single()
            .unwrap_or_else(|| panic!("bad time"))
    }

    fn quote() -> Quote {
        let input = QuoteInput {
            opportunity_id: "O1".into(),
            account_id: "A1".into(),
            currency: Currency::parse("EUR").unwrap_or_else(|e| panic!("{e}")),
            valid_until: day(10),
            lines: vec![LineInput {
                description: "Licence".into(),
                quantity: dec!(2),
                unit_price: dec!(100),
                discount: None,
                tax_rate: dec!(20),
            }],
            document_discount: None,
        };
        new_quote("Q1".into(), "Q-2026-001".into(), input, day(1), now())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    const ALL: [QuoteStatus; 6] = [
        QuoteStatus::Draft,
        QuoteStatus::Sent,
        QuoteStatus::Accepted,
        QuoteStatus::Rejected,
        QuoteStatus::Expired,
        QuoteStatus::Superseded,
    ];

    type Action = fn(&mut Quote, NaiveDate) -> Result<(), DomainError>;

    #[test]
    fn every_action_from_every_status_on_a_valid_day() {
        use QuoteStatus::*;
        let actions: [(&str, Action, &[QuoteStatus], QuoteStatus); 3] = [
            ("send", send, &[Draft], Sent),
            ("accept", accept, &[Sent], Accepted),
            ("reject", reject, &[Sent], Rejected),
        ];
        for (name, action, allowed_from, to) in actions {
            for from in ALL {
                let mut q = quote();
                q.status = from;
                let result = action(&mut q, day(5));
                if allowed_from.contains(&from) {
                    assert_eq!(result, Ok(()), "{name} from {from:?}");
                    assert_eq!(q.status, to);
                } else {
                    assert_eq!(q.status, from, "{name} from {from:?} changed the status");
                    let message = result.err().map(|e| e.to_string()).unwrap_or_default();
                    assert!(
                        message.starts_with(&format!(
                            "cannot {name} quote in status {}",
                            status_name(&from)
                        )),
                        "{message}"
                    );
                }
            }
        }
    }

    #[test]
    fn sending_and_accepting_after_valid_until_is_refused() {
        let mut q = quote();
        assert_eq!(
            send(&mut q, day(11)).map_err(|e| e.to_string()),
            Err("cannot send quote in status draft: quote expired on 2026-03-10; revise it with a new valid_until".into())
        );
        assert!(
            send(&mut q, day(10)).is_ok(),
            "valid_until is the last valid day"
        );
        assert_eq!(
            accept(&mut q, day(11)).map_err(|e| e.to_string()),
            Err("cannot accept quote in status sent: quote expired on 2026-03-10".into())
        );
        assert_eq!(q.status, QuoteStatus::Sent);
        assert!(accept(&mut q, day(10)).is_ok());
    }

    #[test]
    fn expiry_applies_to_draft_and_sent_quotes_past_valid_until() {
        for from in ALL {
            for (today, past) in [(day(10), false), (day(11), true)] {
                let mut q = quote();
                q.status = from;
                let should = past && matches!(from, QuoteStatus::Draft | QuoteStatus::Sent);
                assert_eq!(expire_if_due(&mut q, today), should, "{from:?} on {today}");
                assert_eq!(q.status, if should { QuoteStatus::Expired } else { from });
            }
        }
    }

    #[test]
    fn revising_supersedes_the_old_quote_from_allowed_statuses_only() {
        use QuoteStatus::*;
        for from in ALL {
            let mut old = quote();
            old.status = from;
            let allowed = matches!(from, Draft | Sent | Rejected | Expired);
            let result = revise(
                &mut old,
                "Q2".into(),
                QuoteRevision::default(),
                day(5),
                now(),
            );
            assert_eq!(result.is_ok(), allowed, "{from:?}");
            match result {
                Ok(new) => {
                    assert_eq!(
                        (old.status, old.superseded_by.as_deref()),
                        (Superseded, Some("Q2"))
                    );
                    assert_eq!(
                        (new.status, new.revision, new.number.as_str()),
                        (Draft, 2, "Q-2026-001")
                    );
                    assert_eq!(new.supersedes.as_deref(), Some("Q1"));
                    assert_eq!(
                        (new.lines.clone(), new.totals.clone()),
                        (old.lines.clone(), old.totals.clone())
                    );
                    assert_eq!(new.display_number(), "Q-2026-001-R2");
                }
                Err(_) => assert_eq!((old.status, old.superseded_by.clone()), (from, None)),
            }
        }
    }

    #[test]
    fn revision_recomputes_and_needs_a_current_valid_until() {
        let mut old = quote();
        old.status = QuoteStatus::Expired;
        let stale = revise(
            &mut old,
            "Q2".into(),
            QuoteRevision::default(),
            day(20),
            now(),
        );
        assert!(
            matches!(stale, Err(DomainError::Invalid { ref field, .. }) if field == "valid_until"),
            "{stale:?}"
        );
        assert_eq!(
            old.status,
            QuoteStatus::Expired,
            "a failed revision changes nothing"
        );
        let changes = QuoteRevision {
            document_discount: Some(Some(Discount::Percent(dec!(10)))),
            valid_until: Some(day(31)),
            ..QuoteRevision::default()
        };
        let new = revise(&mut old, "Q2".into(), changes, day(20), now())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(new.totals.total.to_string(), "216.00");
        assert_eq!(new.valid_until, day(31));
        let bad_lines = QuoteRevision {
            lines: Some(vec![]),
            valid_until: Some(day(31)),
            ..QuoteRevision::default()
        };
        let mut other = quote();
        assert!(revise(&mut other, "Q3".into(), bad_lines, day(1), now()).is_err());
        assert_eq!(other.status, QuoteStatus::Draft);
    }

    #[test]
    fn new_quotes_are_drafts_valid_from_today() {
        let q = quote();
        assert_eq!(
            (q.status, q.revision, q.display_number()),
            (QuoteStatus::Draft, 1, "Q-2026-001".to_string())
        );
        assert_eq!(q.totals.total.to_string(), "240.00");
        let mut input = QuoteInput {
            opportunity_id: "O".into(),
            account_id: "A".into(),
            currency: q.currency.clone(),
            valid_until: day(1),
            lines: q.lines.iter().map(LineInput::from).collect(),
            document_discount: None,
        };
        assert!(new_quote("Q".into(), "N".into(), input.clone(), day(2), now()).is_err());
        input.valid_until = day(2);
        assert!(new_quote("Q".into(), "N".into(), input, day(2), now()).is_ok());
        let json = serde_json::to_value(&q).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (json["status"].as_str(), json["totals"]["total"].as_str()),
            (Some("draft"), Some("240.00"))
        );
    }
}
