//! The pure domain: plain types and functions for the Lead-to-Invoice pipeline.
//!
//! Nothing here touches the store, the network, plugins or the clock: "today" and "now" are
//! parameters, so every rule can be tested with a table. The engine owns ids, numbering
//! counters and persistence; this module owns the rules.

pub mod invoice;
pub mod lead;
pub mod money;
pub mod numbering;
pub mod opportunity;
pub mod order;
pub mod party;
pub mod payment;
pub mod quote;
pub mod rf;
pub mod totals;

/// Why a domain rule refused an input or an action; the caller is always at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// Bad input; `field` is the API path of the offending value, e.g. `lines[2].quantity`.
    #[error("invalid {field}: {message}")]
    Invalid {
        /// API path of the field at fault.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The entity's current status does not allow the action.
    #[error("cannot {action} {entity} in status {from}: {reason}")]
    Transition {
        /// Entity kind, e.g. `quote`.
        entity: &'static str,
        /// Current status, snake_case.
        from: String,
        /// Attempted action, e.g. `send`.
        action: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// Two documents (or a payment and a document) in different currencies.
    #[error("currency mismatch: expected {expected}, found {found}")]
    CurrencyMismatch {
        /// Currency of the document the action applies to.
        expected: String,
        /// Currency that was supplied.
        found: String,
    },
}

impl DomainError {
    /// Shorthand for [`DomainError::Invalid`].
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        DomainError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Shorthand for [`DomainError::Transition`].
    pub fn transition(
        entity: &'static str,
        from: impl Into<String>,
        action: &'static str,
        reason: impl Into<String>,
    ) -> Self {
        DomainError::Transition {
            entity,
            from: from.into(),
            action,
            reason: reason.into(),
        }
    }
}

/// The snake_case name serde gives a unit enum variant, for error messages.
pub(crate) fn status_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::from("unknown"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_render_as_lowercase_phrases_naming_the_fault() {
        let cases = [
            (
                DomainError::invalid("lines[2].quantity", "must be greater than zero"),
                "invalid lines[2].quantity: must be greater than zero",
            ),
            (
                DomainError::transition("quote", "accepted", "send", "only a draft can be sent"),
                "cannot send quote in status accepted: only a draft can be sent",
            ),
            (
                DomainError::CurrencyMismatch {
                    expected: "EUR".into(),
                    found: "USD".into(),
                },
                "currency mismatch: expected EUR, found USD",
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(error.to_string(), expected);
        }
    }
}
