//! Opportunities, quotes and orders.

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::Deserialize;

use super::views::DecimalText;
use super::{Engine, EngineResult};
use crate::domain::money::{parse_decimal, parse_percent, Currency};
use crate::domain::opportunity::{self, Activity, ActivityKind, Opportunity, Stage};
use crate::domain::order::{self, BillingInfo, Order, OrderInput};
use crate::domain::quote::{self, Quote, QuoteInput, QuoteRevision, QuoteStatus};
use crate::domain::totals::{Discount, LineInput};
use crate::domain::DomainError;

/// A document line as the API receives it: numbers as decimal strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineJson {
    /// What is sold.
    pub description: String,
    /// Quantity.
    pub quantity: DecimalText,
    /// Price per unit, net of VAT.
    pub unit_price: DecimalText,
    /// Line discount in percent.
    #[serde(default)]
    pub discount_percent: Option<DecimalText>,
    /// Line discount as an amount.
    #[serde(default)]
    pub discount_amount: Option<DecimalText>,
    /// VAT rate in percent (`"20"`).
    pub tax_rate: DecimalText,
}

/// `POST /v1/quotes` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuoteCreate {
    /// The opportunity quoted for.
    pub opportunity_id: String,
    /// ISO 4217 currency; defaults to the opportunity's.
    #[serde(default)]
    pub currency: Option<String>,
    /// Last day the offer holds; default 30 days from today.
    #[serde(default)]
    pub valid_until: Option<NaiveDate>,
    /// Lines.
    pub lines: Vec<LineJson>,
    /// Document discount in percent.
    #[serde(default)]
    pub discount_percent: Option<DecimalText>,
    /// Document discount as an amount.
    #[serde(default)]
    pub discount_amount: Option<DecimalText>,
}

/// `POST /v1/quotes/{id}/revise` body: anything omitted is copied from the revised quote.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuoteRevise {
    /// New lines.
    #[serde(default)]
    pub lines: Option<Vec<LineJson>>,
    /// New validity.
    #[serde(default)]
    pub valid_until: Option<NaiveDate>,
    /// New document discount in percent.
    #[serde(default)]
    pub discount_percent: Option<DecimalText>,
    /// New document discount as an amount.
    #[serde(default)]
    pub discount_amount: Option<DecimalText>,
}

/// `POST /v1/orders` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderCreate {
    /// An accepted quote.
    pub quote_id: String,
    /// Billing details.
    #[serde(default)]
    pub billing: Option<BillingInfo>,
    /// Delivery terms (Incoterms, shipping notes).
    #[serde(default)]
    pub delivery_terms: Option<String>,
    /// Internal notes.
    #[serde(default)]
    pub notes: Option<String>,
    /// Order date; default today.
    #[serde(default)]
    pub order_date: Option<NaiveDate>,
}

/// `POST /v1/opportunities/{id}/activities` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivityCreate {
    /// call, demo, meeting or note.
    pub kind: ActivityKind,
    /// What happened.
    pub text: String,
    /// When; default now.
    #[serde(default)]
    pub at: Option<chrono::DateTime<chrono::Utc>>,
    /// Who.
    #[serde(default)]
    pub by: Option<String>,
}

fn parse_lines(lines: &[LineJson]) -> Result<Vec<LineInput>, DomainError> {
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let field = |name: &str| format!("lines[{i}].{name}");
            let discount = parse_discount(
                &field("discount_percent"),
                l.discount_percent.as_ref(),
                &field("discount_amount"),
                l.discount_amount.as_ref(),
            )?;
            Ok(LineInput {
                description: l.description.clone(),
                quantity: parse_decimal(&field("quantity"), l.quantity.as_str())?,
                unit_price: parse_decimal(&field("unit_price"), l.unit_price.as_str())?,
                discount,
                tax_rate: parse_percent(&field("tax_rate"), l.tax_rate.as_str())?,
            })
        })
        .collect()
}

fn parse_discount(
    percent_field: &str,
    percent: Option<&DecimalText>,
    amount_field: &str,
    amount: Option<&DecimalText>,
) -> Result<Option<Discount>, DomainError> {
    match (percent, amount) {
        (Some(_), Some(_)) => Err(DomainError::invalid(
            amount_field,
            format!("give either {percent_field} or {amount_field}, not both"),
        )),
        (Some(p), None) => Ok(Some(Discount::Percent(parse_percent(
            percent_field,
            p.as_str(),
        )?))),
        (None, Some(a)) => Ok(Some(Discount::Amount(parse_decimal(
            amount_field,
            a.as_str(),
        )?))),
        (None, None) => Ok(None),
    }
}

impl Engine {
    /// Move an opportunity to a stage (probability defaults from the stage).
    pub async fn set_stage(
        &self,
        id: &str,
        stage: Stage,
        probability: Option<Decimal>,
        actor: &str,
    ) -> EngineResult<Opportunity> {
        self.write(|tx| {
            let mut opp: Opportunity = tx.get("opportunity", id)?;
            let from = opp.stage;
            opportunity::set_stage(&mut opp, stage, probability)?;
            opp.updated_at = tx.now;
            tx.put("opportunity", &opp.id, &opp);
            tx.event(
                actor,
                "opportunity.stage_changed",
                "opportunity",
                &opp.id,
                serde_json::json!({"from": from, "to": opp.stage, "probability": opp.probability}),
                true,
            );
            Ok(opp)
        })
        .await
    }

    /// Log an activity on an opportunity.
    pub async fn add_activity(
        &self,
        id: &str,
        input: ActivityCreate,
        actor: &str,
    ) -> EngineResult<Opportunity> {
        self.write(|tx| {
            let mut opp: Opportunity = tx.get("opportunity", id)?;
            let activity_id = tx.new_id("activity", "act")?;
            let activity = Activity {
                id: activity_id.clone(),
                kind: input.kind,
                at: input.at.unwrap_or(tx.now),
                text: input.text.trim().to_string(),
                by: input.by,
            };
            opportunity::add_activity(&mut opp, activity)?;
            tx.put("opportunity", &opp.id, &opp);
            tx.event(
                actor,
                "opportunity.activity_added",
                "opportunity",
                &opp.id,
                serde_json::json!({"activity_id": activity_id, "kind": input.kind}),
                false,
            );
            Ok(opp)
        })
        .await
    }

    /// Create a draft quote for an opportunity.
    pub async fn create_quote(&self, input: QuoteCreate, actor: &str) -> EngineResult<Quote> {
        let lines = parse_lines(&input.lines)?;
        let discount = parse_discount(
            "discount_percent",
            input.discount_percent.as_ref(),
            "discount_amount",
            input.discount_amount.as_ref(),
        )?;
        self.write(|tx| {
            let opp: Opportunity = tx.get("opportunity", &input.opportunity_id).map_err(|e| {
                field_not_found(e, "opportunity_id")
            })?;
            let currency = match &input.currency {
                Some(c) => Currency::parse(c).map_err(|e| rename_field(e, "currency"))?,
                None => opp.currency.clone(),
            };
            let valid_until = input
                .valid_until
                .unwrap_or(tx.today + chrono::Duration::days(30));
            let id = tx.new_id("quote", "quo")?;
            let number = tx.next_number("quote", &tx.engine.series().quote, tx.today)?;
            let quote = quote::new_quote(
                id,
                number,
                QuoteInput {
                    opportunity_id: opp.id.clone(),
                    account_id: opp.account_id.clone(),
                    currency,
                    valid_until,
                    lines,
                    document_discount: discount,
                },
                tx.today,
                tx.now,
            )?;
            tx.put("quote", &quote.id, &quote);
            tx.event(
                actor,
                "quote.created",
                "quote",
                &quote.id,
                serde_json::json!({"number": quote.display_number(), "total": quote.totals.total, "currency": quote.currency}),
                false,
            );
            Ok(quote)
        })
        .await
    }

    /// send, accept or reject a quote.
    pub async fn quote_action(
        &self,
        id: &str,
        action: &str,
        reason: Option<&str>,
        actor: &str,
    ) -> EngineResult<Quote> {
        self.write(|tx| {
            let mut q: Quote = tx.get("quote", id)?;
            let from = q.status;
            match action {
                "send" => quote::send(&mut q, tx.today)?,
                "accept" => quote::accept(&mut q, tx.today)?,
                "reject" => quote::reject(&mut q, tx.today)?,
                other => return Err(DomainError::invalid("action", format!("unknown quote action `{other}`")).into()),
            }
            q.updated_at = tx.now;
            tx.put("quote", &q.id, &q);
            tx.event(
                actor,
                &format!("quote.{}", crate::domain::status_name(&q.status)),
                "quote",
                &q.id,
                serde_json::json!({"number": q.display_number(), "from": from, "to": q.status, "total": q.totals.total, "currency": q.currency,
                    "reason": reason}),
                true,
            );
            Ok(q)
        })
        .await
    }

    /// Revise a quote: the old one is superseded, a new draft revision takes its place.
    pub async fn revise_quote(
        &self,
        id: &str,
        input: QuoteRevise,
        actor: &str,
    ) -> EngineResult<Quote> {
        let lines = input.lines.as_deref().map(parse_lines).transpose()?;
        let discount = parse_discount(
            "discount_percent",
            input.discount_percent.as_ref(),
            "discount_amount",
            input.discount_amount.as_ref(),
        )?;
        self.write(|tx| {
            let mut old: Quote = tx.get("quote", id)?;
            let new_id = tx.new_id("quote", "quo")?;
            let changes = QuoteRevision {
                lines,
                document_discount: discount.map(Some),
                valid_until: input.valid_until,
            };
            let new = quote::revise(&mut old, new_id, changes, tx.today, tx.now)?;
            tx.put("quote", &old.id, &old);
            tx.put("quote", &new.id, &new);
            tx.event(
                actor,
                "quote.revised",
                "quote",
                &new.id,
                serde_json::json!({"number": new.display_number(), "revision": new.revision, "supersedes": old.id}),
                true,
            );
            Ok(new)
        })
        .await
    }

    /// Create an order from an accepted quote.
    pub async fn create_order(&self, input: OrderCreate, actor: &str) -> EngineResult<Order> {
        self.write(|tx| {
            let q: Quote = tx
                .get("quote", &input.quote_id)
                .map_err(|e| field_not_found(e, "quote_id"))?;
            if let Some(existing) = tx.index("order-by-quote", &q.id)? {
                return Err(DomainError::transition(
                    "quote",
                    crate::domain::status_name(&q.status),
                    "order",
                    format!("order {existing} was already created from this quote"),
                )
                .into());
            }
            let id = tx.new_id("order", "ord")?;
            let number = tx.next_number("order", &tx.engine.series().order, tx.today)?;
            let order = order::order_from_quote(
                &q,
                id,
                number,
                OrderInput {
                    billing: input.billing.unwrap_or_default(),
                    delivery_terms: input.delivery_terms,
                    notes: input.notes,
                    order_date: input.order_date,
                },
                tx.today,
                tx.now,
            )?;
            tx.ws.index("order-by-quote", &q.id, &order.id);
            tx.put("order", &order.id, &order);
            tx.event(
                actor,
                "order.created",
                "order",
                &order.id,
                serde_json::json!({"number": order.number, "quote_id": q.id, "total": order.totals.total, "currency": order.currency}),
                true,
            );
            Ok(order)
        })
        .await
    }

    /// Expire every sent or draft quote whose validity passed. Returns how many expired.
    pub async fn expire_quotes(&self, actor: &str) -> EngineResult<usize> {
        let today = self.today();
        /// The fields of a quote this pass looks at: the rest (lines, totals) is skipped, not decoded, every tick.
        #[derive(Deserialize)]
        struct Due {
            id: String,
            status: QuoteStatus,
            valid_until: NaiveDate,
        }
        let due: Vec<Due> = self
            .store()
            .scan::<Due>("quote")
            .filter_map(Result::ok)
            .filter(|q| {
                matches!(q.status, QuoteStatus::Sent | QuoteStatus::Draft) && q.valid_until < today
            })
            .collect();
        if due.is_empty() {
            return Ok(0);
        }
        self.write(|tx| {
            let mut n = 0;
            for q in due {
                // Re-read under the lock: it may have changed since the scan.
                let mut q: Quote = tx.get("quote", &q.id)?;
                let from = q.status;
                if quote::expire_if_due(&mut q, tx.today) {
                    q.updated_at = tx.now;
                    tx.put("quote", &q.id, &q);
                    tx.event(
                        actor,
                        "quote.expired",
                        "quote",
                        &q.id,
                        serde_json::json!({"number": q.number, "from": from, "valid_until": q.valid_until}),
                        true,
                    );
                    n += 1;
                }
            }
            Ok(n)
        })
        .await
    }
}

/// A referenced entity that does not exist is the caller's bad input, naming the field.
pub(crate) fn field_not_found(e: super::EngineError, field: &str) -> super::EngineError {
    match e {
        super::EngineError::NotFound { entity, id } => {
            DomainError::invalid(field, format!("no {entity} with id `{id}`")).into()
        }
        other => other,
    }
}

pub(crate) fn rename_field(e: DomainError, field: &str) -> DomainError {
    match e {
        DomainError::Invalid { message, .. } => DomainError::invalid(field, message),
        other => other,
    }
}
