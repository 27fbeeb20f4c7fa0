//! settled connector plugin `stripe`: Stripe webhook events through HTTP intake, as `payment@1` records.
//!
//! Every request must carry a valid `Stripe-Signature` (see [`signature`]); events become records in [`event`],
//! whose module doc explains the dedupe keys. Event types that move no money tracked here are accepted with
//! no records, so Stripe stops retrying them.

pub mod event;
pub mod settings;
pub mod signature;

use settled_plugin_api::{
    IntakeOutcome, IntakeRequest, Manifest, Plugin, PluginError, Record, Role,
};

use crate::settings::Config;

/// The Stripe connector: one instance per webhook endpoint (signing secret).
#[derive(Debug)]
pub struct Stripe {
    config: Config,
}

impl Plugin for Stripe {
    fn manifest() -> Manifest {
        Manifest {
            name: "stripe".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            roles: vec![Role::Intake],
            description: "payments, refunds and disputes from stripe webhook events".to_owned(),
        }
    }

    fn configure(settings: serde_json::Value) -> Result<Self, PluginError> {
        let config = Config::from_json(settings, |name| std::env::var(name).ok())?;
        Ok(Stripe { config })
    }

    fn intake(&self, request: IntakeRequest) -> Result<IntakeOutcome, PluginError> {
        Ok(intake(&self.config, &request))
    }
}

/// Verify, then translate one webhook delivery.
pub fn intake(config: &Config, request: &IntakeRequest) -> IntakeOutcome {
    if !request.method.eq_ignore_ascii_case("POST") {
        return reject(
            405,
            format!("method {} is not allowed, use post", request.method),
        );
    }
    if let Err(reason) = signature::verify(
        request.header("stripe-signature"),
        &request.body,
        &config.secret,
        request.received_at,
        config.tolerance_secs,
    ) {
        return reject(401, reason);
    }
    let event: serde_json::Value = match serde_json::from_slice(&request.body) {
        Ok(event) => event,
        Err(error) => return reject(400, format!("stripe event is not valid json: {error}")),
    };
    match event::records(&event, config) {
        Ok(records) => IntakeOutcome::Accept {
            records: records.into_iter().map(Record::Payment).collect(),
            reply: None,
        },
        Err(error) => reject(
            400,
            format!(
                "stripe event {}: {}",
                error.location.as_deref().unwrap_or("body"),
                error.message
            ),
        ),
    }
}

fn reject(status: u16, reason: String) -> IntakeOutcome {
    IntakeOutcome::Reject { status, reason }
}

settled_plugin_api::export_plugin!(Stripe);

#[cfg(test)]
mod tests;
