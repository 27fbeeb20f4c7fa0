//! Leads: capture validation, deduplication keys, merging, status transitions and scoring.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{status_name, DomainError};

/// Lead status; `Converted` is reached only through conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeadStatus {
    /// Just captured.
    New,
    /// A rep has reached out.
    Contacted,
    /// Worth an opportunity.
    Qualified,
    /// Turned into account, contact and opportunity.
    Converted,
    /// Not a prospect; may be reopened.
    Disqualified,
}

impl LeadStatus {
    /// Whether a status change from `self` to `to` is allowed through [`transition`].
    pub fn can_transition(self, to: LeadStatus) -> bool {
        use LeadStatus::*;
        matches!(
            (self, to),
            (New, Contacted | Qualified | Disqualified)
                | (Contacted, Qualified | Disqualified)
                | (Qualified, Disqualified)
                | (Disqualified, New)
        )
    }

    /// New, contacted or qualified: still being worked, so captures merge into it.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            LeadStatus::New | LeadStatus::Contacted | LeadStatus::Qualified
        )
    }
}

/// Lead capture input, as received from a form, connector or import.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LeadInput {
    /// Person's name; derived from the email when empty.
    #[serde(default)]
    pub name: String,
    /// Email address.
    #[serde(default)]
    pub email: Option<String>,
    /// Phone number, free form.
    #[serde(default)]
    pub phone: Option<String>,
    /// Company name.
    #[serde(default)]
    pub company: Option<String>,
    /// Where the lead came from (web, email, ad, referral, import, ...).
    #[serde(default)]
    pub source: String,
    /// Assigned sales rep.
    #[serde(default)]
    pub assigned_to: Option<String>,
    /// Id in the system the lead came from.
    #[serde(default)]
    pub external_id: Option<String>,
    /// Free-text message from the lead.
    #[serde(default)]
    pub message: Option<String>,
}

/// A captured lead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lead {
    /// Id assigned by the engine.
    pub id: String,
    /// Person's name.
    pub name: String,
    /// Normalised (lower-case) email.
    pub email: Option<String>,
    /// Phone number.
    pub phone: Option<String>,
    /// Company name as entered.
    pub company: Option<String>,
    /// Lower-case source.
    pub source: String,
    /// Assigned sales rep.
    pub assigned_to: Option<String>,
    /// Id in the originating system.
    pub external_id: Option<String>,
    /// Messages, merged captures separated by a blank line.
    pub message: Option<String>,
    /// Current status.
    pub status: LeadStatus,
    /// Rule-based score, see [`score`].
    pub score: i32,
    /// Why the score is what it is, one reason per rule that applied.
    pub score_reasons: Vec<String>,
    /// Capture time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Account created or reused on conversion.
    pub account_id: Option<String>,
    /// Contact created or reused on conversion.
    pub contact_id: Option<String>,
    /// Opportunity created on conversion.
    pub opportunity_id: Option<String>,
    /// How many later captures were merged into this lead.
    pub merged_count: u32,
}

/// Longest accepted text for short fields (names, emails, ...).
const MAX_FIELD_CHARS: usize = 320;
/// Longest accepted message.
const MAX_MESSAGE_CHARS: usize = 10_000;

/// Trims and checks capture input; returns the cleaned input.
///
/// Empty optional fields become `None`, the email is normalised, the source lower-cased
/// (defaulting to `web`), and a missing name is derived from the email's local part.
pub fn validate(input: &LeadInput) -> Result<LeadInput, DomainError> {
    let clean =
        |field: &str, value: &Option<String>, max: usize| -> Result<Option<String>, DomainError> {
            match value.as_deref().map(str::trim) {
                None | Some("") => Ok(None),
                Some(text) if text.chars().count() > max => Err(DomainError::invalid(
                    field,
                    format!("is longer than {max} characters"),
                )),
                Some(text) => Ok(Some(text.to_string())),
            }
        };
    let email = clean("email", &input.email, MAX_FIELD_CHARS)?.map(|e| normalise_email(&e));
    if let Some(email) = &email {
        check_email(email)?;
    }
    let phone = clean("phone", &input.phone, MAX_FIELD_CHARS)?;
    if let Some(phone) = &phone {
        if !phone.chars().any(|c| c.is_ascii_digit()) {
            return Err(DomainError::invalid("phone", "must contain digits"));
        }
    }
    let name = match clean("name", &Some(input.name.clone()), MAX_FIELD_CHARS)? {
        Some(name) => name,
        None => match &email {
            Some(email) => name_from_email(email),
            None => {
                return Err(DomainError::invalid(
                    "name",
                    "a name or an email is required",
                ))
            }
        },
    };
    let source = input.source.trim().to_lowercase();
    let source = if source.is_empty() {
        "web".to_string()
    } else {
        source
    };
    if source.chars().count() > 64
        || !source
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'))
    {
        return Err(DomainError::invalid(
            "source",
            "must be a short word of letters, digits, '-', '_' or '.'",
        ));
    }
    Ok(LeadInput {
        name,
        email,
        phone,
        company: clean("company", &input.company, MAX_FIELD_CHARS)?,
        source,
        assigned_to: clean("assigned_to", &input.assigned_to, MAX_FIELD_CHARS)?,
        external_id: clean("external_id", &input.external_id, MAX_FIELD_CHARS)?,
        message: clean("message", &input.message, MAX_MESSAGE_CHARS)?,
    })
}

fn check_email(email: &str) -> Result<(), DomainError> {
    let bad = |why: &str| Err(DomainError::invalid("email", format!("{email:?} {why}")));
    if email.chars().any(char::is_whitespace) {
        return bad("contains spaces");
    }
    let Some((local, domain)) = email.split_once('@') else {
        return bad("has no '@'");
    };
    if domain.contains('@') {
        return bad("has more than one '@'");
    }
    if local.is_empty() {
        return bad("has nothing before the '@'");
    }
    if !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
        || domain.contains("..")
    {
        return bad("does not have a valid domain");
    }
    Ok(())
}

/// "jane.doe+x@acme.com" -> "Jane Doe".
fn name_from_email(email: &str) -> String {
    let local = email.split('@').next().unwrap_or(email);
    let local = local.split('+').next().unwrap_or(local);
    let words: Vec<String> = local
        .split(['.', '_', '-'])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut chars = w.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect(),
                None => String::new(),
            }
        })
        .collect();
    if words.is_empty() {
        local.to_string()
    } else {
        words.join(" ")
    }
}

/// Trims and lower-cases an email, the key for deduplication.
pub fn normalise_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// The normalised domain after the last `@`, if there is one.
pub fn email_domain(email: &str) -> Option<String> {
    let email = normalise_email(email);
    let (_, domain) = email.rsplit_once('@')?;
    (!domain.is_empty()).then(|| domain.to_string())
}

/// Whether `domain` belongs to a free mail provider (so it says nothing about the company).
pub fn is_free_mail(domain: &str) -> bool {
    const EXACT: &[&str] = &[
        "gmail.com",
        "googlemail.com",
        "outlook.com",
        "live.com",
        "icloud.com",
        "me.com",
        "aol.com",
        "web.de",
        "proton.me",
        "protonmail.com",
        "mail.com",
    ];
    const ANY_TLD: &[&str] = &["yahoo.", "hotmail.", "gmx.", "yandex."];
    let domain = domain.trim().to_lowercase();
    EXACT.contains(&domain.as_str())
        || ANY_TLD.iter().any(|prefix| {
            domain
                .strip_prefix(prefix)
                .is_some_and(|tld| !tld.is_empty())
        })
}

/// Legal-form words dropped from the end of company names.
const LEGAL_SUFFIXES: &[&str] = &[
    "inc",
    "incorporated",
    "ltd",
    "llc",
    "llp",
    "gmbh",
    "ag",
    "kg",
    "sa",
    "sas",
    "sarl",
    "srl",
    "spa",
    "bv",
    "nv",
    "plc",
    "co",
    "corp",
    "corporation",
    "company",
    "limited",
    "oy",
    "oyj",
    "ab",
    "as",
    "aps",
    "pty",
    "kk",
];

/// A company name reduced for matching: lower-case, punctuation removed, trailing legal forms
/// dropped, spaces collapsed; "ACME, Inc." and "Acme Inc" both become "acme".
pub fn normalise_company(name: &str) -> String {
    let cleaned: String = name
        .to_lowercase()
        .chars()
        // Dots and apostrophes join ("S.A." -> "sa"); other punctuation separates.
        .filter(|c| !matches!(c, '.' | '\'' | '\u{2019}'))
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect();
    let mut words: Vec<&str> = cleaned.split_whitespace().collect();
    while words.len() > 1 && words.last().is_some_and(|w| LEGAL_SUFFIXES.contains(w)) {
        words.pop();
    }
    words.join(" ")
}

/// Whether a (validated) capture is the same person as an existing lead: an open lead with the
/// same email, or any lead with the same source and external id.
pub fn is_duplicate(existing: &Lead, input: &LeadInput) -> bool {
    let same_email = existing.status.is_open()
        && matches!((&existing.email, &input.email), (Some(a), Some(b)) if normalise_email(a) == normalise_email(b));
    let same_external = existing.source == input.source
        && matches!((&existing.external_id, &input.external_id), (Some(a), Some(b)) if a == b);
    same_email || same_external
}

/// Builds a new lead from validated input and scores it.
pub fn new_lead(id: String, input: LeadInput, weights: &ScoreWeights, now: DateTime<Utc>) -> Lead {
    let mut lead = Lead {
        id,
        name: input.name,
        email: input.email,
        phone: input.phone,
        company: input.company,
        source: input.source,
        assigned_to: input.assigned_to,
        external_id: input.external_id,
        message: input.message,
        status: LeadStatus::New,
        score: 0,
        score_reasons: Vec::new(),
        created_at: now,
        updated_at: now,
        account_id: None,
        contact_id: None,
        opportunity_id: None,
        merged_count: 0,
    };
    rescore(&mut lead, weights);
    lead
}

/// Merges a repeated capture into an existing lead: fills missing fields, keeps the ones it
/// has, appends a new message. The caller re-scores with [`rescore`].
pub fn merge(existing: &mut Lead, input: &LeadInput, now: DateTime<Utc>) {
    fn fill(slot: &mut Option<String>, value: &Option<String>) {
        if slot.as_deref().is_none_or(|s| s.trim().is_empty()) {
            if let Some(value) = value.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
                *slot = Some(value.to_string());
            }
        }
    }
    if existing.name.trim().is_empty() && !input.name.trim().is_empty() {
        existing.name = input.name.trim().to_string();
    }
    fill(&mut existing.email, &input.email);
    fill(&mut existing.phone, &input.phone);
    fill(&mut existing.company, &input.company);
    fill(&mut existing.assigned_to, &input.assigned_to);
    fill(&mut existing.external_id, &input.external_id);
    if let Some(new) = input
        .message
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        existing.message = match existing.message.take() {
            Some(old) if old.contains(new) => Some(old),
            Some(old) if !old.trim().is_empty() => Some(format!("{old}\n\n{new}")),
            _ => Some(new.to_string()),
        };
    }
    existing.merged_count = existing.merged_count.saturating_add(1);
    existing.updated_at = now;
}

/// Changes the status by hand; conversion goes through [`mark_converted`] instead.
/// The caller sets `updated_at`.
pub fn transition(lead: &mut Lead, to: LeadStatus) -> Result<(), DomainError> {
    let action = match to {
        LeadStatus::New => "reopen",
        LeadStatus::Contacted => "mark contacted",
        LeadStatus::Qualified => "qualify",
        LeadStatus::Converted => "convert",
        LeadStatus::Disqualified => "disqualify",
    };
    if !lead.status.can_transition(to) {
        let reason = match (lead.status, to) {
            (_, LeadStatus::Converted) => "a lead is converted only through conversion".to_string(),
            (LeadStatus::Converted, _) => "a converted lead is final".to_string(),
            (from, to) if from == to => format!("the lead is already {}", status_name(&to)),
            (from, _) => format!(
                "allowed from {} only: {}",
                status_name(&from),
                allowed_targets(from)
            ),
        };
        return Err(DomainError::transition(
            "lead",
            status_name(&lead.status),
            action,
            reason,
        ));
    }
    lead.status = to;
    Ok(())
}

fn allowed_targets(from: LeadStatus) -> String {
    use LeadStatus::*;
    let targets: Vec<String> = [New, Contacted, Qualified, Converted, Disqualified]
        .into_iter()
        .filter(|to| from.can_transition(*to))
        .map(|to| status_name(&to))
        .collect();
    if targets.is_empty() {
        "none".to_string()
    } else {
        targets.join(", ")
    }
}

/// Marks an open lead converted and links what the conversion created or reused.
pub fn mark_converted(
    lead: &mut Lead,
    account_id: String,
    contact_id: String,
    opportunity_id: String,
    now: DateTime<Utc>,
) -> Result<(), DomainError> {
    if !lead.status.is_open() {
        return Err(DomainError::transition(
            "lead",
            status_name(&lead.status),
            "convert",
            "only new, contacted or qualified leads can be converted",
        ));
    }
    lead.status = LeadStatus::Converted;
    lead.account_id = Some(account_id);
    lead.contact_id = Some(contact_id);
    lead.opportunity_id = Some(opportunity_id);
    lead.updated_at = now;
    Ok(())
}

/// Weights of the lead scoring rules (configurable; unknown keys are rejected).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreWeights {
    /// Points per source; unknown sources score 0.
    pub source: BTreeMap<String, i32>,
    /// The lead gave an email.
    pub has_email: i32,
    /// The lead gave a phone number.
    pub has_phone: i32,
    /// The lead gave a company.
    pub has_company: i32,
    /// The email is on a company domain.
    pub business_domain: i32,
    /// The email is on a free mail domain.
    pub free_mail: i32,
    /// The lead left a message.
    pub has_message: i32,
}

impl Default for ScoreWeights {
    fn default() -> Self {
        let source = [
            ("web", 10),
            ("referral", 30),
            ("email", 10),
            ("ad", 5),
            ("import", 0),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        ScoreWeights {
            source,
            has_email: 10,
            has_phone: 10,
            has_company: 10,
            business_domain: 20,
            free_mail: -10,
            has_message: 5,
        }
    }
}

/// Scores a lead and explains each contribution, e.g. "source referral +30".
pub fn score(lead: &Lead, weights: &ScoreWeights) -> (i32, Vec<String>) {
    let mut total: i32 = 0;
    let mut reasons = Vec::new();
    let mut add = |points: i32, reason: String| {
        total = total.saturating_add(points);
        reasons.push(format!("{reason} {points:+}"));
    };
    let source_points = weights.source.get(&lead.source).copied().unwrap_or(0);
    add(source_points, format!("source {}", lead.source));
    let present = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.trim().is_empty());
    if present(&lead.email) {
        add(weights.has_email, "has email".to_string());
        if let Some(domain) = lead.email.as_deref().and_then(email_domain) {
            if is_free_mail(&domain) {
                add(weights.free_mail, format!("free-mail domain {domain}"));
            } else {
                add(weights.business_domain, format!("business domain {domain}"));
            }
        }
    }
    if present(&lead.phone) {
        add(weights.has_phone, "has phone".to_string());
    }
    if present(&lead.company) {
        add(weights.has_company, "has company".to_string());
    }
    if present(&lead.message) {
        add(weights.has_message, "has message".to_string());
    }
    (total, reasons)
}

/// Recomputes and stores the lead's score and reasons.
pub fn rescore(lead: &mut Lead, weights: &ScoreWeights) {
    let (points, reasons) = score(lead, weights);
    lead.score = points;
    lead.score_reasons = reasons;
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
            .single()
            .unwrap_or_else(|| panic!("bad time"))
    }

    fn input(name: &str, email: Option<&str>) -> LeadInput {
        LeadInput {
            name: name.into(),
            email: email.map(String::from),
            source: "web".into(),
            ..LeadInput::default()
        }
    }

    fn lead_from(input: LeadInput) -> Lead {
        let clean = validate(&input).unwrap_or_else(|e| panic!("{e}"));
        new_lead("L1".into(), clean, &ScoreWeights::default(), now())
    }

    const ALL: [LeadStatus; 5] = [
        LeadStatus::New,
        LeadStatus::Contacted,
        LeadStatus::Qualified,
        LeadStatus::Converted,
        LeadStatus::Disqualified,
    ];

    #[test]
    fn every_status_transition_is_allowed_or_refused_as_specified() {
        use LeadStatus::*;
        let allowed = [
            (New, Contacted),
            (New, Qualified),
            (New, Disqualified),
            (Contacted, Qualified),
            (Contacted, Disqualified),
            (Qualified, Disqualified),
            (Disqualified, New),
        ];
        for from in ALL {
            for to in ALL {
                let expected = allowed.contains(&(from, to));
                assert_eq!(from.can_transition(to), expected, "{from:?} -> {to:?}");
                let mut lead = lead_from(input("Jane", None));
                lead.status = from;
                let result = transition(&mut lead, to);
                assert_eq!(result.is_ok(), expected, "{from:?} -> {to:?}: {result:?}");
                assert_eq!(lead.status, if expected { to } else { from });
                if let Err(e) = result {
                    assert!(
                        matches!(e, DomainError::Transition { entity: "lead", .. }),
                        "{e:?}"
                    );
                    assert!(
                        e.to_string()
                            .contains(&format!("in status {}", status_name(&from))),
                        "{e}"
                    );
                }
            }
        }
    }

    #[test]
    fn open_statuses() {
        let open: Vec<bool> = ALL.iter().map(|s| s.is_open()).collect();
        assert_eq!(open, [true, true, true, false, false]);
    }

    #[test]
    fn conversion_only_from_open_leads_and_links_ids() {
        for from in ALL {
            let mut lead = lead_from(input("Jane", None));
            lead.status = from;
            let result = mark_converted(&mut lead, "A".into(), "C".into(), "O".into(), now());
            assert_eq!(result.is_ok(), from.is_open(), "{from:?}");
            if from.is_open() {
                assert_eq!(lead.status, LeadStatus::Converted);
                assert_eq!(
                    (
                        lead.account_id.as_deref(),
                        lead.contact_id.as_deref(),
                        lead.opportunity_id.as_deref()
                    ),
                    (Some("A"), Some("C"), Some("O"))
                );
            }
        }
    }

    #[test]
    fn validate_cleans_input_and_names_bad_fields() {
        let raw = LeadInput {
            name: "  ".into(),
            email: Some("  Jane.Doe+promo@Acme.COM ".into()),
            phone: Some(" ".into()),
            company: Some(" Acme ".into()),
            source: " Referral ".into(),
            assigned_to: None,
            external_id: Some("".into()),
            message: Some(" hi ".into()),
        };
        let clean = validate(&raw).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(clean.name, "Jane Doe");
        assert_eq!(clean.email.as_deref(), Some("jane.doe+promo@acme.com"));
        assert_eq!(clean.phone, None);
        assert_eq!(clean.company.as_deref(), Some("Acme"));
        assert_eq!(clean.source, "referral");
        assert_eq!(clean.external_id, None);
        assert_eq!(clean.message.as_deref(), Some("hi"));
        assert_eq!(
            validate(&input("Jane", None))
                .map(|i| i.source)
                .ok()
                .as_deref(),
            Some("web")
        );
        let mut no_source = input("Jane", None);
        no_source.source = String::new();
        assert_eq!(
            validate(&no_source).map(|i| i.source).ok().as_deref(),
            Some("web")
        );

        fn check(edit: fn(&mut LeadInput), field: &str) {
            let mut bad = input("Jane", Some("jane@acme.com"));
            edit(&mut bad);
            match validate(&bad) {
                Err(DomainError::Invalid { field: got, .. }) => assert_eq!(got, field),
                other => panic!("expected invalid {field}, got {other:?}"),
            }
        }
        check(|i| i.email = Some("jane.acme.com".into()), "email");
        check(|i| i.email = Some("jane@@acme.com".into()), "email");
        check(|i| i.email = Some("ja@ne@acme.com".into()), "email");
        check(|i| i.email = Some("jane@acme".into()), "email");
        check(|i| i.email = Some("jane@.com".into()), "email");
        check(|i| i.email = Some("@acme.com".into()), "email");
        check(|i| i.email = Some("ja ne@acme.com".into()), "email");
        check(
            |i| {
                i.name = String::new();
                i.email = None;
            },
            "name",
        );
        check(|i| i.source = "web form".into(), "source");
        check(|i| i.phone = Some("call me".into()), "phone");
        check(|i| i.name = "x".repeat(400), "name");
    }

    #[test]
    fn email_normalisation_makes_duplicates_match() {
        assert_eq!(normalise_email("  Jane@ACME.com "), "jane@acme.com");
        assert_eq!(email_domain("Jane@ACME.com").as_deref(), Some("acme.com"));
        assert_eq!(email_domain("no-at-sign"), None);
        assert_eq!(email_domain("jane@"), None);
        let existing = lead_from(input("Jane", Some("jane@acme.com")));
        let again = validate(&input("", Some(" JANE@Acme.com"))).unwrap_or_else(|e| panic!("{e}"));
        assert!(is_duplicate(&existing, &again));
        let mut closed = existing.clone();
        closed.status = LeadStatus::Disqualified;
        assert!(
            !is_duplicate(&closed, &again),
            "closed leads do not absorb captures by email"
        );
        let other = validate(&input("", Some("joe@acme.com"))).unwrap_or_else(|e| panic!("{e}"));
        assert!(!is_duplicate(&existing, &other));
    }

    #[test]
    fn same_source_and_external_id_is_a_duplicate_even_when_closed() {
        let mut first = input("Jane", None);
        first.external_id = Some("hub-1".into());
        let mut existing = lead_from(first.clone());
        existing.status = LeadStatus::Converted;
        let again = validate(&first).unwrap_or_else(|e| panic!("{e}"));
        assert!(is_duplicate(&existing, &again));
        let mut other_source = again.clone();
        other_source.source = "import".into();
        assert!(!is_duplicate(&existing, &other_source));
    }

    #[test]
    fn free_mail_domains() {
        fn check(domain: &str, expected: bool) {
            assert_eq!(is_free_mail(domain), expected, "{domain}");
        }
        for free in [
            "gmail.com",
            "googlemail.com",
            "yahoo.com",
            "yahoo.co.uk",
            "hotmail.fr",
            "outlook.com",
            "live.com",
            "icloud.com",
            "me.com",
            "aol.com",
            "gmx.de",
            "gmx.net",
            "web.de",
            "proton.me",
            "protonmail.com",
            "mail.com",
            "yandex.ru",
            "GMAIL.COM",
        ] {
            check(free, true);
        }
        for business in [
            "acme.com",
            "yahoo",
            "mygmail.com",
            "gmail.com.evil.io",
            "acme.de",
        ] {
            check(business, false);
        }
    }

    #[test]
    fn company_names_normalise_to_one_key() {
        fn check(raw: &str, expected: &str) {
            assert_eq!(normalise_company(raw), expected, "{raw}");
        }
        check("ACME, Inc.", "acme");
        check("Acme Inc", "acme");
        check("acme", "acme");
        check("  Acme   Widgets  Ltd ", "acme widgets");
        check("Müller GmbH & Co. KG", "müller");
        check("Société Générale S.A.", "société générale");
        check("Acme-Corp", "acme");
        check("Co-op Bank plc", "co op bank");
        check("AG", "ag");
        check("O'Reilly Media, LLC", "oreilly media");
        check("", "");
    }

    #[test]
    fn merge_fills_gaps_keeps_values_and_appends_messages() {
        let mut first = input("Jane", Some("jane@acme.com"));
        first.company = Some("Acme".into());
        first.message = Some("pricing?".into());
        let mut lead = lead_from(first);
        let later = now() + chrono::Duration::hours(1);
        let mut second = input("J. Doe", Some("jane@acme.com"));
        second.company = Some("Other Co".into());
        second.phone = Some("+44 20 1234".into());
        second.message = Some("call me".into());
        merge(&mut lead, &second, later);
        assert_eq!(lead.name, "Jane");
        assert_eq!(lead.company.as_deref(), Some("Acme"));
        assert_eq!(lead.phone.as_deref(), Some("+44 20 1234"));
        assert_eq!(lead.message.as_deref(), Some("pricing?\n\ncall me"));
        assert_eq!((lead.merged_count, lead.updated_at), (1, later));
        merge(&mut lead, &second, later);
        assert_eq!(
            lead.message.as_deref(),
            Some("pricing?\n\ncall me"),
            "same message is not repeated"
        );
        assert_eq!(lead.merged_count, 2);
    }

    #[test]
    fn scoring_is_explained_rule_by_rule() {
        fn check(lead: LeadInput, expected_score: i32, expected: &[&str]) {
            let lead = lead_from(lead);
            let (points, reasons) = score(&lead, &ScoreWeights::default());
            assert_eq!(reasons, expected);
            assert_eq!(points, expected_score);
            assert_eq!((lead.score, &lead.score_reasons), (points, &reasons));
        }
        let mut referral = input("Jane", Some("jane@acme.com"));
        referral.source = "referral".into();
        referral.phone = Some("+1 555 0100".into());
        referral.company = Some("Acme".into());
        referral.message = Some("hi".into());
        check(
            referral,
            85,
            &[
                "source referral +30",
                "has email +10",
                "business domain acme.com +20",
                "has phone +10",
                "has company +10",
                "has message +5",
            ],
        );
        check(
            input("Joe", Some("joe@gmail.com")),
            10,
            &[
                "source web +10",
                "has email +10",
                "free-mail domain gmail.com -10",
            ],
        );
        let mut unknown = input("Ann", None);
        unknown.source = "fax".into();
        check(unknown, 0, &["source fax +0"]);
    }

    #[test]
    fn score_weights_come_from_config_with_defaults_and_reject_unknown_keys() {
        let w: ScoreWeights =
            serde_json::from_str(r#"{"free_mail": -25}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(w.free_mail, -25);
        assert_eq!(w.business_domain, 20);
        assert_eq!(w.source.get("referral"), Some(&30));
        let err = serde_json::from_str::<ScoreWeights>(r#"{"has_fax": 3}"#)
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("has_fax")));
    }
}
