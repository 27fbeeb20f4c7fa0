//! settled connector plugin `webform`: leads (`lead@1`) from web forms through HTTP intake.
//!
//! Accepts plain HTML form posts (urlencoded and multipart) and JSON webhooks (Typeform `form_response`
//! payloads and flat JSON objects), maps fields through [`settings::FieldMap`], optionally verifies an HMAC
//! signature, drops honeypot hits silently, and can redirect browsers after a post.
//! Everything runs in [`intake`], a pure function of the request and the instance's [`settings::Config`].

pub mod body;
pub mod settings;
pub mod signature;

use std::collections::BTreeMap;

use settled_plugin_api::{
    HttpReply, IntakeOutcome, IntakeRequest, LeadRecord, Manifest, Plugin, PluginError, Record,
    Role,
};

use crate::body::{scalar_text, Submission};
use crate::settings::Config;

/// The web-form connector: one instance per configured form.
#[derive(Debug)]
pub struct Webform {
    config: Config,
}

impl Plugin for Webform {
    fn manifest() -> Manifest {
        Manifest {
            name: "webform".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            roles: vec![Role::Intake],
            description: "leads from html form posts and form webhooks (typeform, json)".to_owned(),
        }
    }

    fn configure(settings: serde_json::Value) -> Result<Self, PluginError> {
        let config = Config::from_json(settings, |name| std::env::var(name).ok())?;
        Ok(Webform { config })
    }

    fn intake(&self, request: IntakeRequest) -> Result<IntakeOutcome, PluginError> {
        Ok(intake(&self.config, &request))
    }
}

/// Turn one inbound request into a lead, a silent drop (honeypot) or a rejection.
pub fn intake(config: &Config, request: &IntakeRequest) -> IntakeOutcome {
    if !request.method.eq_ignore_ascii_case("POST") {
        return reject(
            405,
            format!("method {} is not allowed, use post", request.method),
        );
    }
    if let Some(verifier) = &config.verifier {
        if let Err(reason) = signature::verify(verifier, request) {
            return reject(401, reason);
        }
    }
    let submission = match body::decode(request.header("content-type"), &request.body) {
        Ok(submission) => submission,
        Err(error) => return reject(error.status, error.reason),
    };
    let redirect = config
        .redirect
        .as_ref()
        .filter(|_| submission.kind.is_html_form())
        .map(|location| HttpReply {
            status: 303,
            headers: vec![("location".to_owned(), location.clone())],
            body: String::new(),
        });
    if let Some(honeypot) = &config.honeypot {
        if lookup(&submission, std::slice::from_ref(honeypot)).is_some() {
            // The bot must not learn it was caught: it gets what a person would get, minus the lead.
            let reply = redirect.unwrap_or_else(|| HttpReply {
                status: 200,
                headers: vec![("content-type".to_owned(), "application/json".to_owned())],
                body: r#"{"status":"ok"}"#.to_owned(),
            });
            return IntakeOutcome::Accept {
                records: Vec::new(),
                reply: Some(reply),
            };
        }
    }
    match lead(config, request, &submission) {
        Ok(lead) => IntakeOutcome::Accept {
            records: vec![Record::Lead(lead)],
            reply: redirect,
        },
        Err(reason) => reject(422, reason),
    }
}

fn reject(status: u16, reason: impl Into<String>) -> IntakeOutcome {
    IntakeOutcome::Reject {
        status,
        reason: reason.into(),
    }
}

/// A value found for a lead field, and the form field it came from.
struct Found {
    key: String,
    value: String,
}

/// The first non-empty value among `places` (form field names, case-insensitive, or JSON pointers).
fn lookup(submission: &Submission, places: &[String]) -> Option<Found> {
    places.iter().find_map(|place| {
        let value = if place.starts_with('/') {
            submission
                .json
                .as_ref()
                .and_then(|json| json.pointer(place))
                .and_then(scalar_text)
        } else {
            submission
                .fields
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(place))
                .map(|(_, value)| value.clone())
        }?;
        let value = value.trim();
        (!value.is_empty()).then(|| Found {
            key: place.clone(),
            value: value.to_owned(),
        })
    })
}

/// A Typeform answer of this type, for forms whose mapping names no field.
fn typed(submission: &Submission, kind: &str) -> Option<Found> {
    submission
        .typed_answers
        .iter()
        .find(|(answer_kind, _, value)| answer_kind == kind && !value.trim().is_empty())
        .map(|(_, key, value)| Found {
            key: key.clone(),
            value: value.trim().to_owned(),
        })
}

fn lead(
    config: &Config,
    request: &IntakeRequest,
    submission: &Submission,
) -> Result<LeadRecord, String> {
    let fields = &config.fields;
    let mut used: Vec<String> = Vec::new();
    let mut take = |found: Option<Found>| {
        found.map(|found| {
            used.push(found.key);
            found.value
        })
    };
    let email = take(lookup(submission, &fields.email).or_else(|| typed(submission, "email")));
    let phone =
        take(lookup(submission, &fields.phone).or_else(|| typed(submission, "phone_number")));
    let full_name = take(lookup(submission, &fields.name));
    let first_name = take(lookup(submission, &fields.first_name));
    let last_name = take(lookup(submission, &fields.last_name));
    let company = take(lookup(submission, &fields.company));
    let message = take(lookup(submission, &fields.message));

    if email.is_none() && phone.is_none() {
        return Err(format!(
            "missing email and phone: none of the fields {} or {} is filled",
            fields.email.join(", "),
            fields.phone.join(", ")
        ));
    }
    if let Some(email) = &email {
        if !looks_like_email(email) {
            return Err(format!("email `{email}` is not an e-mail address"));
        }
    }
    let joined_name = match (first_name, last_name) {
        (Some(first), Some(last)) => Some(format!("{first} {last}")),
        (first, last) => first.or(last),
    };
    // A lead needs a name; the address or number it can be reached at is the best stand-in.
    let name = full_name
        .or(joined_name)
        .or_else(|| email.clone())
        .or_else(|| phone.clone())
        .unwrap_or_default();

    let honeypot = config.honeypot.as_deref().unwrap_or("");
    let mut extra: BTreeMap<String, String> = submission
        .fields
        .iter()
        .filter(|(key, value)| {
            !value.trim().is_empty()
                && !key.eq_ignore_ascii_case(honeypot)
                && !used.iter().any(|used| used.eq_ignore_ascii_case(key))
        })
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    for (field, description) in &submission.files {
        extra.insert(
            format!("file:{field}"),
            format!("ignored upload {description}"),
        );
    }
    for (key, value) in &submission.meta {
        extra.insert(key.clone(), value.clone());
    }

    Ok(LeadRecord {
        name,
        email,
        phone,
        company,
        source: config.source.clone(),
        external_id: event_id(config, request, submission),
        message,
        assigned_to: None,
        extra,
    })
}

/// The provider's event id: the configured pointer, a top-level `event_id` (Typeform), or the `webhook-id` header.
fn event_id(config: &Config, request: &IntakeRequest, submission: &Submission) -> Option<String> {
    let json = submission.json.as_ref();
    config
        .event_id
        .as_deref()
        .and_then(|pointer| json?.pointer(pointer))
        .or_else(|| json?.get("event_id"))
        .and_then(scalar_text)
        .or_else(|| request.header("webhook-id").map(str::to_owned))
        .map(|id| id.trim().to_owned())
        .filter(|id| !id.is_empty())
}

/// Deliberately loose: one `@` with text on both sides and no spaces. Real validation is sending mail.
fn looks_like_email(text: &str) -> bool {
    match text.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !text.contains(char::is_whitespace)
        }
        None => false,
    }
}

settled_plugin_api::export_plugin!(Webform);

#[cfg(test)]
mod tests;
