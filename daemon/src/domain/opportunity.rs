//! Opportunities: stages with default probabilities, and activities.

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::money::{check_percent, check_scale, round_money, Currency};
use super::{status_name, DomainError};

/// Sales stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// First contact.
    Prospecting,
    /// Need and budget being checked.
    Qualification,
    /// Quote or proposal out.
    Proposal,
    /// Terms being negotiated.
    Negotiation,
    /// Won.
    ClosedWon,
    /// Lost; may be reopened.
    ClosedLost,
}

impl Stage {
    /// Default win probability in percent.
    pub fn default_probability(self) -> Decimal {
        Decimal::from(match self {
            Stage::Prospecting => 10,
            Stage::Qualification => 20,
            Stage::Proposal => 50,
            Stage::Negotiation => 75,
            Stage::ClosedWon => 100,
            Stage::ClosedLost => 0,
        })
    }

    /// Won or lost.
    pub fn is_closed(self) -> bool {
        matches!(self, Stage::ClosedWon | Stage::ClosedLost)
    }

    /// Whether the stage may change from `self` to `to`: open stages move freely, a lost
    /// opportunity may only be reopened to prospecting, a won one is final.
    pub fn can_move_to(self, to: Stage) -> bool {
        !self.is_closed() || (self == Stage::ClosedLost && to == Stage::Prospecting)
    }
}

/// Kind of sales activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivityKind {
    /// Phone call.
    Call,
    /// Product demo.
    Demo,
    /// Meeting.
    Meeting,
    /// Note.
    Note,
}

/// Something that happened on an opportunity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Activity {
    /// Id assigned by the engine.
    pub id: String,
    /// What kind of activity.
    pub kind: ActivityKind,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What was said or done.
    pub text: String,
    /// Who did it.
    pub by: Option<String>,
}

/// A potential deal with an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Opportunity {
    /// Id assigned by the engine.
    pub id: String,
    /// Deal name.
    pub name: String,
    /// The customer account.
    pub account_id: String,
    /// Main contact.
    pub contact_id: Option<String>,
    /// The lead it was converted from.
    pub lead_id: Option<String>,
    /// Expected deal value.
    #[serde(with = "rust_decimal::serde::str")]
    pub value: Decimal,
    /// Currency of the value.
    pub currency: Currency,
    /// Current stage.
    pub stage: Stage,
    /// Win probability in percent.
    #[serde(with = "rust_decimal::serde::str")]
    pub probability: Decimal,
    /// Expected close date.
    pub expected_close: Option<NaiveDate>,
    /// Activities, oldest first.
    pub activities: Vec<Activity>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// What a conversion or API call supplies to open an opportunity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpportunityInput {
    /// Deal name.
    pub name: String,
    /// Expected value, at most the currency's decimals, not negative.
    #[serde(with = "rust_decimal::serde::str")]
    pub value: Decimal,
    /// Currency.
    pub currency: Currency,
    /// Expected close date.
    pub expected_close: Option<NaiveDate>,
}

/// Opens an opportunity in prospecting; errors name `opportunity.name` / `opportunity.value`.
pub fn new_opportunity(
    id: String,
    input: OpportunityInput,
    account_id: String,
    contact_id: Option<String>,
    lead_id: Option<String>,
    now: DateTime<Utc>,
) -> Result<Opportunity, DomainError> {
    let name = input.name.trim().to_string();
    if name.is_empty() {
        return Err(DomainError::invalid(
            "opportunity.name",
            "must not be empty",
        ));
    }
    if input.value < Decimal::ZERO {
        return Err(DomainError::invalid(
            "opportunity.value",
            "must not be negative",
        ));
    }
    check_scale("opportunity.value", input.value, &input.currency)?;
    Ok(Opportunity {
        id,
        name,
        account_id,
        contact_id,
        lead_id,
        value: round_money(input.value, &input.currency),
        currency: input.currency,
        stage: Stage::Prospecting,
        probability: Stage::Prospecting.default_probability(),
        expected_close: input.expected_close,
        activities: Vec::new(),
        created_at: now,
        updated_at: now,
    })
}

/// Moves the opportunity to `stage`; `probability` (percent) defaults from the stage.
/// The caller sets `updated_at`.
pub fn set_stage(
    opp: &mut Opportunity,
    stage: Stage,
    probability: Option<Decimal>,
) -> Result<(), DomainError> {
    if !opp.stage.can_move_to(stage) {
        let reason = if opp.stage == Stage::ClosedLost {
            "a lost opportunity can only be reopened to prospecting"
        } else {
            "a won opportunity is final"
        };
        return Err(DomainError::transition(
            "opportunity",
            status_name(&opp.stage),
            "change stage of",
            reason,
        ));
    }
    let probability = probability.unwrap_or_else(|| stage.default_probability());
    check_percent("probability", probability)?;
    opp.stage = stage;
    opp.probability = probability;
    Ok(())
}

/// Appends an activity; its text must not be empty.
pub fn add_activity(opp: &mut Opportunity, activity: Activity) -> Result<(), DomainError> {
    if activity.text.trim().is_empty() {
        return Err(DomainError::invalid("text", "must not be empty"));
    }
    opp.updated_at = opp.updated_at.max(activity.at);
    opp.activities.push(activity);
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

    fn opportunity() -> Opportunity {
        let input = OpportunityInput {
            name: "Acme rollout".into(),
            value: dec!(2500),
            currency: Currency::parse("EUR").unwrap_or_else(|e| panic!("{e}")),
            expected_close: None,
        };
        new_opportunity("O1".into(), input, "A1".into(), None, None, now())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    const ALL: [Stage; 6] = [
        Stage::Prospecting,
        Stage::Qualification,
        Stage::Proposal,
        Stage::Negotiation,
        Stage::ClosedWon,
        Stage::ClosedLost,
    ];

    #[test]
    fn stages_have_default_probabilities() {
        let got: Vec<Decimal> = ALL.iter().map(|s| s.default_probability()).collect();
        assert_eq!(
            got,
            [dec!(10), dec!(20), dec!(50), dec!(75), dec!(100), dec!(0)]
        );
        let closed: Vec<bool> = ALL.iter().map(|s| s.is_closed()).collect();
        assert_eq!(closed, [false, false, false, false, true, true]);
    }

    #[test]
    fn every_stage_change_is_allowed_or_refused_as_specified() {
        for from in ALL {
            for to in ALL {
                let expected =
                    !from.is_closed() || (from == Stage::ClosedLost && to == Stage::Prospecting);
                let mut opp = opportunity();
                opp.stage = from;
                let result = set_stage(&mut opp, to, None);
                assert_eq!(result.is_ok(), expected, "{from:?} -> {to:?}");
                if expected {
                    assert_eq!((opp.stage, opp.probability), (to, to.default_probability()));
                } else {
                    assert_eq!(opp.stage, from);
                    assert!(matches!(
                        result,
                        Err(DomainError::Transition {
                            entity: "opportunity",
                            ..
                        })
                    ));
                }
            }
        }
    }

    #[test]
    fn explicit_probability_overrides_and_is_checked() {
        let mut opp = opportunity();
        assert!(set_stage(&mut opp, Stage::Proposal, Some(dec!(35))).is_ok());
        assert_eq!(opp.probability, dec!(35));
        assert_eq!(
            set_stage(&mut opp, Stage::Negotiation, Some(dec!(120))).map_err(|e| e.to_string()),
            Err("invalid probability: 120 is not a percentage between 0 and 100".to_string())
        );
        assert_eq!(opp.stage, Stage::Proposal);
    }

    #[test]
    fn new_opportunity_validates_and_rounds_value() {
        let opp = opportunity();
        assert_eq!(
            (opp.value.to_string(), opp.stage),
            ("2500.00".to_string(), Stage::Prospecting)
        );
        let currency = opp.currency.clone();
        let bad = |name: &str, value: Decimal| OpportunityInput {
            name: name.into(),
            value,
            currency: currency.clone(),
            expected_close: None,
        };
        for (input, field) in [
            (bad(" ", dec!(1)), "opportunity.name"),
            (bad("x", dec!(-1)), "opportunity.value"),
            (bad("x", dec!(1.001)), "opportunity.value"),
        ] {
            match new_opportunity("O".into(), input, "A".into(), None, None, now()) {
                Err(DomainError::Invalid { field: got, .. }) => assert_eq!(got, field),
                other => panic!("expected invalid {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn activities_need_text() {
        let mut opp = opportunity();
        let activity = |text: &str| Activity {
            id: "X".into(),
            kind: ActivityKind::Demo,
            at: now(),
            text: text.into(),
            by: None,
        };
        assert!(add_activity(&mut opp, activity("showed invoicing")).is_ok());
        assert!(add_activity(&mut opp, activity("  ")).is_err());
        assert_eq!(opp.activities.len(), 1);
        assert_eq!(
            serde_json::to_value(ActivityKind::Meeting).ok(),
            Some(serde_json::json!("meeting"))
        );
    }
}
