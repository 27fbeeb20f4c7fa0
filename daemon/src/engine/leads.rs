//! Lead capture (with dedupe), status changes and conversion into account + contact + opportunity.

use serde::{Deserialize, Serialize};

use super::{Engine, EngineResult, Tx};
use crate::domain::lead::{self, Lead, LeadInput, LeadStatus};
use crate::domain::opportunity::{self, OpportunityInput};
use crate::domain::party::{self, Account, Contact};
use crate::domain::DomainError;

/// `POST /v1/leads/{id}/convert` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvertInput {
    /// The opportunity to open.
    pub opportunity: OpportunityInput,
}

/// What a conversion created or reused.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ConvertOutput {
    /// The account (new or reused).
    pub account_id: String,
    /// The contact (new or reused).
    pub contact_id: String,
    /// The new opportunity.
    pub opportunity_id: String,
    /// Whether the account existed already.
    pub account_reused: bool,
    /// Whether the contact existed already.
    pub contact_reused: bool,
}

const LEAD: &str = "lead";

impl Engine {
    /// Capture a lead. A lead with the same email among open leads, or the same source + external id, is merged into
    /// instead of duplicated; returns the lead and whether it was a duplicate.
    pub async fn capture_lead(&self, input: &LeadInput, actor: &str) -> EngineResult<(Lead, bool)> {
        let input = lead::validate(input)?;
        self.write(|tx| capture_in(tx, input, actor)).await
    }

    /// Change a lead's status by hand (conversion has its own command).
    pub async fn set_lead_status(
        &self,
        id: &str,
        to: LeadStatus,
        actor: &str,
    ) -> EngineResult<Lead> {
        self.write(|tx| {
            let mut lead: Lead = tx.get(LEAD, id)?;
            let from = lead.status;
            lead::transition(&mut lead, to)?;
            lead.updated_at = tx.now;
            if let Some(email) = &lead.email {
                // A disqualified lead no longer absorbs new captures; a reopened one does again.
                if lead.status.is_open() {
                    tx.ws.index("lead-email", email, &lead.id);
                } else {
                    tx.ws.unindex("lead-email", email);
                }
            }
            tx.put(LEAD, &lead.id, &lead);
            tx.event(
                actor,
                "lead.status_changed",
                LEAD,
                &lead.id,
                serde_json::json!({"from": from, "to": lead.status}),
                true,
            );
            Ok(lead)
        })
        .await
    }

    /// Convert an open lead into an account, a contact and an opportunity in one atomic step, reusing an account with the
    /// same normalised company name or business email domain and a contact with the same email.
    pub async fn convert_lead(
        &self,
        id: &str,
        input: ConvertInput,
        actor: &str,
    ) -> EngineResult<ConvertOutput> {
        self.write(|tx| {
            let mut lead: Lead = tx.get(LEAD, id)?;
            if !lead.status.is_open() {
                // Let the domain produce the precise transition error.
                lead::mark_converted(&mut lead, String::new(), String::new(), String::new(), tx.now)?;
            }
            let company = lead.company.clone().unwrap_or_else(|| lead.name.clone());
            let (account, account_reused) = find_or_create_account(tx, &company, lead.email.as_deref())?;
            let (contact, contact_reused) = find_or_create_contact(tx, &account, &lead)?;
            let opp_id = tx.new_id("opportunity", "opp")?;
            let opp = opportunity::new_opportunity(
                opp_id,
                input.opportunity,
                account.id.clone(),
                Some(contact.id.clone()),
                Some(lead.id.clone()),
                tx.now,
            )?;
            lead::mark_converted(&mut lead, account.id.clone(), contact.id.clone(), opp.id.clone(), tx.now)?;
            if let Some(email) = &lead.email {
                tx.ws.unindex("lead-email", email);
            }
            tx.put(LEAD, &lead.id, &lead);
            tx.put("opportunity", &opp.id, &opp);
            let out = ConvertOutput {
                account_id: account.id,
                contact_id: contact.id,
                opportunity_id: opp.id.clone(),
                account_reused,
                contact_reused,
            };
            tx.event(actor, "lead.converted", LEAD, &lead.id, serde_json::to_value(&out).unwrap_or_default(), true);
            tx.event(
                actor,
                "opportunity.created",
                "opportunity",
                &opp.id,
                serde_json::json!({"name": opp.name, "value": opp.value, "currency": opp.currency, "stage": opp.stage}),
                true,
            );
            Ok(out)
        })
        .await
    }
}

/// Capture inside an open write set (shared by the API and connector ingestion).
pub(crate) fn capture_in(
    tx: &mut Tx<'_>,
    input: LeadInput,
    actor: &str,
) -> EngineResult<(Lead, bool)> {
    let existing_id = match &input.external_id {
        Some(ext) => tx
            .store
            .index("lead-ext", &format!("{}/{}", input.source, ext))?,
        None => None,
    };
    let existing_id = match (existing_id, &input.email) {
        (Some(id), _) => Some(id),
        (None, Some(email)) => tx.index("lead-email", email)?,
        (None, None) => None,
    };
    if let Some(id) = existing_id {
        let mut existing: Lead = tx.get(LEAD, &id)?;
        let replay = input.external_id.is_some()
            && existing.external_id == input.external_id
            && existing.source == input.source;
        if replay {
            // The same submission again: recognised, nothing changes.
            return Ok((existing, true));
        }
        if lead::is_duplicate(&existing, &input) {
            let before = existing.clone();
            lead::merge(&mut existing, &input, tx.now);
            lead::rescore(&mut existing, &tx.engine.config().scoring);
            if let Some(ext) = &input.external_id {
                tx.ws.index(
                    "lead-ext",
                    &format!("{}/{}", input.source, ext),
                    &existing.id,
                );
            }
            tx.put(LEAD, &existing.id, &existing);
            tx.event(
                actor,
                "lead.merged",
                LEAD,
                &existing.id,
                serde_json::json!({"merged_count": existing.merged_count, "score_before": before.score, "score": existing.score}),
                false,
            );
            return Ok((existing, true));
        }
    }
    let id = tx.new_id(LEAD, "lead")?;
    let new = lead::new_lead(id, input, &tx.engine.config().scoring, tx.now);
    if let Some(email) = &new.email {
        tx.ws.index("lead-email", email, &new.id);
    }
    if let Some(ext) = &new.external_id {
        tx.ws
            .index("lead-ext", &format!("{}/{}", new.source, ext), &new.id);
    }
    tx.put(LEAD, &new.id, &new);
    tx.event(
        actor,
        "lead.captured",
        LEAD,
        &new.id,
        serde_json::json!({"name": new.name, "email": new.email, "company": new.company, "source": new.source, "score": new.score}),
        true,
    );
    Ok((new, false))
}

pub(super) fn find_or_create_account(
    tx: &mut Tx<'_>,
    company: &str,
    email: Option<&str>,
) -> EngineResult<(Account, bool)> {
    let by_name = lead::normalise_company(company);
    if by_name.is_empty() {
        return Err(DomainError::invalid(
            "company",
            "the lead has no company or name to name an account after",
        )
        .into());
    }
    let mut found = tx.index("account-name", &by_name)?;
    if found.is_none() {
        if let Some(domain) = party::business_domain(email) {
            found = tx.index("account-domain", &domain)?;
        }
    }
    if let Some(id) = found {
        let account: Account = tx.get("account", &id)?;
        return Ok((account, true));
    }
    let id = tx.new_id("account", "acc")?;
    let account = party::new_account(id, company, email, tx.now);
    tx.ws
        .index("account-name", &account.normalised_name, &account.id);
    if let Some(domain) = &account.domain {
        tx.ws.index("account-domain", domain, &account.id);
    }
    tx.put("account", &account.id, &account);
    tx.event(
        "engine",
        "account.created",
        "account",
        &account.id,
        serde_json::json!({"name": account.name}),
        true,
    );
    Ok((account, false))
}

fn find_or_create_contact(
    tx: &mut Tx<'_>,
    account: &Account,
    lead: &Lead,
) -> EngineResult<(Contact, bool)> {
    if let Some(email) = &lead.email {
        if let Some(id) = tx.index("contact-email", email)? {
            let contact: Contact = tx.get("contact", &id)?;
            return Ok((contact, true));
        }
    }
    let id = tx.new_id("contact", "con")?;
    let contact = Contact {
        id,
        account_id: account.id.clone(),
        name: lead.name.clone(),
        email: lead.email.clone(),
        phone: lead.phone.clone(),
        created_at: tx.now,
    };
    if let Some(email) = &contact.email {
        tx.ws.index("contact-email", email, &contact.id);
    }
    tx.put("contact", &contact.id, &contact);
    tx.event(
        "engine",
        "contact.created",
        "contact",
        &contact.id,
        serde_json::json!({"name": contact.name, "account_id": contact.account_id}),
        true,
    );
    Ok((contact, false))
}
