//! Stripe events to `payment@1` records.
//!
//! Dedupe keys (`external_id`), chosen so one movement of money gets one id whichever event reports it:
//! - a payment is keyed by its PaymentIntent id (`pi_...`), which `payment_intent.succeeded`, `charge.succeeded`
//!   (its `payment_intent`) and `invoice.paid` (its `payment_intent`) all name; a charge made without a
//!   PaymentIntent (the legacy Charges API) is keyed by its charge id (`ch_...`), and an invoice paid without
//!   either by its invoice id (`in_...`). The first event to arrive wins; later ones are recognised duplicates.
//! - a refund by its refund id (`re_...`); when the event does not list the refunds, by
//!   `<charge id>:refunded:<cumulative amount_refunded>`, which is unique per increment.
//! - a dispute by its dispute id (`dp_...`).
//!
//! The event id (`evt_...`) goes into `source_position` as `<event id>#<event type>`.

use serde_json::Value;
use settled_plugin_api::chrono::{DateTime, NaiveDate};
use settled_plugin_api::rust_decimal::Decimal;
use settled_plugin_api::{EntryStatus, PaymentKind, PaymentRecord, PluginError};

use crate::settings::Config;

/// The records one event yields: none for event types that move no money this plugin tracks.
/// A malformed event fails with a [`PluginError::bad_input`] whose location is the JSON path at fault.
pub fn records(event: &Value, config: &Config) -> Result<Vec<PaymentRecord>, PluginError> {
    let event = Node::root(event);
    let event_id = event.str("id")?;
    let kind = event.str("type")?;
    let object = event.node("data")?.node("object")?;
    let context = Context {
        position: format!("{event_id}#{kind}"),
        created: event.opt_i64("created")?,
        config,
    };
    match kind {
        "payment_intent.succeeded" => payment_intent(&object, &context),
        "charge.succeeded" => charge(&object, &context),
        "charge.refunded" => {
            let previous = event
                .node("data")?
                .opt_node("previous_attributes")
                .map(|previous| previous.opt_i64("amount_refunded"))
                .transpose()?
                .flatten();
            refunds(&object, previous, &context)
        }
        "charge.dispute.created" => dispute(&object, &context),
        "invoice.paid" => invoice(&object, &context),
        _ => Ok(Vec::new()),
    }
}

struct Context<'a> {
    position: String,
    created: Option<i64>,
    config: &'a Config,
}

/// A JSON value with its path, so every error names where it is.
struct Node<'a> {
    value: &'a Value,
    path: String,
}

impl<'a> Node<'a> {
    fn root(value: &'a Value) -> Node<'a> {
        Node {
            value,
            path: String::new(),
        }
    }

    fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn error(&self, key: &str, message: &str) -> PluginError {
        PluginError::bad_input(self.child_path(key), message)
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.value.get(key).filter(|value| !value.is_null())
    }

    fn node(&self, key: &str) -> Result<Node<'a>, PluginError> {
        match self.get(key) {
            Some(value) if value.is_object() => Ok(Node {
                value,
                path: self.child_path(key),
            }),
            Some(_) => Err(self.error(key, "is not an object")),
            None => Err(self.error(key, "is missing")),
        }
    }

    fn opt_node(&self, key: &str) -> Option<Node<'a>> {
        self.get(key)
            .filter(|value| value.is_object())
            .map(|value| Node {
                value,
                path: self.child_path(key),
            })
    }

    fn str(&self, key: &str) -> Result<&'a str, PluginError> {
        match self.get(key) {
            Some(Value::String(text)) if !text.is_empty() => Ok(text),
            Some(Value::String(_)) => Err(self.error(key, "is empty")),
            Some(_) => Err(self.error(key, "is not a string")),
            None => Err(self.error(key, "is missing")),
        }
    }

    fn opt_str(&self, key: &str) -> Option<&'a str> {
        self.get(key)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|text| !text.is_empty())
    }

    fn opt_i64(&self, key: &str) -> Result<Option<i64>, PluginError> {
        match self.get(key) {
            None => Ok(None),
            Some(value) => value
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.error(key, "is not a whole number")),
        }
    }

    /// A non-negative amount in minor units.
    fn minor(&self, key: &str) -> Result<i64, PluginError> {
        match self.opt_i64(key)? {
            Some(amount) if amount >= 0 => Ok(amount),
            Some(_) => Err(self.error(key, "is negative")),
            None => Err(self.error(key, "is missing")),
        }
    }

    /// The id of a field that is either an id string or an expanded object.
    fn id(&self, key: &str) -> Option<&'a str> {
        match self.get(key)? {
            Value::String(id) => Some(id.as_str()),
            Value::Object(object) => object.get("id").and_then(Value::as_str),
            _ => None,
        }
        .filter(|id| !id.is_empty())
    }

    /// ISO 4217 code, upper case.
    fn currency(&self, key: &str) -> Result<String, PluginError> {
        let code = self.str(key)?;
        if code.len() == 3 && code.bytes().all(|byte| byte.is_ascii_alphabetic()) {
            Ok(code.to_ascii_uppercase())
        } else {
            Err(self.error(key, &format!("`{code}` is not a currency code")))
        }
    }
}

/// Digits after the decimal point in Stripe's minor units for a currency (Stripe's own table, which differs
/// from ISO 4217 for a few currencies such as ISK, HUF and TWD, sent with two).
pub fn minor_unit_digits(currency: &str) -> u32 {
    const ZERO: [&str; 16] = [
        "BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND", "VUV",
        "XAF", "XOF", "XPF",
    ];
    const THREE: [&str; 5] = ["BHD", "JOD", "KWD", "OMR", "TND"];
    if ZERO.contains(&currency) {
        0
    } else if THREE.contains(&currency) {
        3
    } else {
        2
    }
}

/// An amount in minor units as a decimal of the currency.
pub fn money(minor: i64, currency: &str) -> Decimal {
    Decimal::new(minor, minor_unit_digits(currency))
}

fn date(unix: Option<i64>) -> Option<NaiveDate> {
    unix.and_then(|seconds| DateTime::from_timestamp(seconds, 0))
        .map(|moment| moment.date_naive())
}

fn invoice_refs(object: &Node<'_>, config: &Config) -> Vec<String> {
    let mut refs: Vec<String> = Vec::new();
    if let Some(metadata) = object.opt_node("metadata") {
        for key in &config.invoice_keys {
            if let Some(reference) = metadata.opt_str(key) {
                if !refs.iter().any(|seen| seen == reference) {
                    refs.push(reference.to_owned());
                }
            }
        }
    }
    refs
}

/// A record with what every event type shares.
fn base(
    external_id: &str,
    amount: Decimal,
    currency: &str,
    object: &Node<'_>,
    context: &Context<'_>,
) -> PaymentRecord {
    let mut record = PaymentRecord::new(external_id, amount, currency);
    record.booked_on = date(context.created);
    record.remittance = object.opt_str("description").map(str::to_owned);
    record.invoice_refs = invoice_refs(object, context.config);
    record.source_position = Some(context.position.clone());
    record
}

/// Fee, net and availability date from an expanded balance transaction in the payment's currency.
/// A balance transaction in another (settlement) currency is left out: its figures are not in this record's currency.
fn apply_balance_transaction(
    record: &mut PaymentRecord,
    charge: &Node<'_>,
) -> Result<(), PluginError> {
    let Some(transaction) = charge.opt_node("balance_transaction") else {
        return Ok(());
    };
    let currency = transaction.currency("currency")?;
    if currency != record.currency {
        return Ok(());
    }
    record.gross = Some(money(transaction.minor("amount")?, &currency));
    record.fee = Some(money(transaction.minor("fee")?, &currency));
    let net = transaction
        .opt_i64("net")?
        .ok_or_else(|| transaction.error("net", "is missing"))?;
    record.net = Some(money(net, &currency));
    record.value_date = date(transaction.opt_i64("available_on")?);
    Ok(())
}

fn payment_intent(
    intent: &Node<'_>,
    context: &Context<'_>,
) -> Result<Vec<PaymentRecord>, PluginError> {
    let id = intent.str("id")?;
    let currency = intent.currency("currency")?;
    let received = intent.minor("amount_received")?;
    if received == 0 {
        return Ok(Vec::new());
    }
    let mut record = base(id, money(received, &currency), &currency, intent, context);
    if record.booked_on.is_none() {
        record.booked_on = date(intent.opt_i64("created")?);
    }
    // The charge is only there when expanded (`latest_charge`) or on API versions before 2022-11-15 (`charges`).
    let charge = intent.opt_node("latest_charge").or_else(|| {
        intent
            .get("charges")
            .and_then(|charges| charges.pointer("/data/0"))
            .filter(|charge| charge.is_object())
            .map(|value| Node {
                value,
                path: "data.object.charges.data.0".to_owned(),
            })
    });
    if let Some(charge) = charge {
        apply_balance_transaction(&mut record, &charge)?;
        record.counterparty_name = billing_name(&charge);
    }
    if record.counterparty_name.is_none() {
        record.counterparty_name = intent
            .opt_node("shipping")
            .and_then(|shipping| shipping.opt_str("name"))
            .map(str::to_owned);
    }
    Ok(vec![record])
}

fn billing_name(charge: &Node<'_>) -> Option<String> {
    charge
        .opt_node("billing_details")
        .and_then(|details| details.opt_str("name"))
        .map(str::to_owned)
}

/// The id of the payment record a charge belongs to (see the module doc).
fn payment_id<'a>(charge: &Node<'a>) -> Result<&'a str, PluginError> {
    match charge.id("payment_intent") {
        Some(intent) => Ok(intent),
        None => charge.str("id"),
    }
}

fn charge(charge: &Node<'_>, context: &Context<'_>) -> Result<Vec<PaymentRecord>, PluginError> {
    // An authorisation moves no money yet; `payment_intent.succeeded` reports the capture under the same id.
    if charge.get("captured").and_then(Value::as_bool) == Some(false) {
        return Ok(Vec::new());
    }
    let currency = charge.currency("currency")?;
    let amount = charge.minor("amount")?;
    let mut record = base(
        payment_id(charge)?,
        money(amount, &currency),
        &currency,
        charge,
        context,
    );
    if record.booked_on.is_none() {
        record.booked_on = date(charge.opt_i64("created")?);
    }
    record.counterparty_name = billing_name(charge);
    apply_balance_transaction(&mut record, charge)?;
    Ok(vec![record])
}

/// A refund listed on the charge.
struct Refund<'a> {
    id: &'a str,
    amount: i64,
    currency: Option<String>,
    created: Option<i64>,
    pending: bool,
    index: usize,
}

fn refunds(
    charge: &Node<'_>,
    previous_refunded: Option<i64>,
    context: &Context<'_>,
) -> Result<Vec<PaymentRecord>, PluginError> {
    let charge_id = charge.str("id")?;
    let currency = charge.currency("currency")?;
    let total = charge.minor("amount_refunded")?;
    let original = payment_id(charge)?.to_owned();
    let listed = listed_refunds(charge)?;

    let record = |external_id: &str,
                  amount: i64,
                  currency: &str,
                  created: Option<i64>,
                  position_suffix: String| {
        let mut record = base(
            external_id,
            -money(amount, currency),
            currency,
            charge,
            context,
        );
        record.kind = PaymentKind::Refund;
        record.original_external_id = Some(original.clone());
        record.counterparty_name = billing_name(charge);
        if created.is_some() {
            record.booked_on = date(created);
        }
        record.source_position = Some(format!("{}{position_suffix}", context.position));
        record
    };
    let from_list = |chosen: &[&Refund<'_>]| {
        chosen
            .iter()
            .map(|refund| {
                let currency = refund.currency.as_deref().unwrap_or(&currency);
                let mut record = record(
                    refund.id,
                    refund.amount,
                    currency,
                    refund.created,
                    format!("/refunds/data/{}", refund.index),
                );
                if refund.pending {
                    record.status = EntryStatus::Pending;
                }
                record
            })
            .collect::<Vec<_>>()
    };

    match previous_refunded {
        Some(previous) => {
            let increment = total.checked_sub(previous).ok_or_else(|| {
                PluginError::bad_input(
                    "data.previous_attributes.amount_refunded",
                    "is out of range",
                )
            })?;
            if increment <= 0 {
                return Ok(Vec::new());
            }
            // The new refunds are the newest ones adding up to the increment.
            let mut newest: Vec<&Refund<'_>> = listed.iter().collect();
            newest.sort_by_key(|refund| std::cmp::Reverse(refund.created));
            let mut sum = 0;
            let chosen: Vec<&Refund<'_>> = newest
                .into_iter()
                .take_while(|refund| {
                    let take = sum < increment;
                    sum = sum.saturating_add(refund.amount);
                    take
                })
                .collect();
            let chosen_sum = chosen
                .iter()
                .fold(0_i64, |sum, refund| sum.saturating_add(refund.amount));
            if chosen_sum == increment {
                Ok(from_list(&chosen))
            } else {
                let id = format!("{charge_id}:refunded:{total}");
                Ok(vec![record(&id, increment, &currency, None, String::new())])
            }
        }
        None if !listed.is_empty() => {
            // Without the previous total the new refund cannot be told apart; every listed refund is
            // emitted under its own id and the ones already recorded are recognised as duplicates.
            let all: Vec<&Refund<'_>> = listed.iter().collect();
            Ok(from_list(&all))
        }
        None => Err(PluginError::bad_input(
            "data.previous_attributes.amount_refunded",
            "cannot tell the new refund: the event has neither the previous amount_refunded nor the refunds list",
        )),
    }
}

/// Refunds listed on a charge (API versions before 2022-11-15, or when expanded), failed and canceled ones left out.
fn listed_refunds<'a>(charge: &Node<'a>) -> Result<Vec<Refund<'a>>, PluginError> {
    let Some(Value::Array(items)) = charge
        .get("refunds")
        .and_then(|refunds| refunds.get("data"))
    else {
        return Ok(Vec::new());
    };
    let mut listed = Vec::new();
    for (index, value) in items.iter().enumerate() {
        let refund = Node {
            value,
            path: format!("data.object.refunds.data.{index}"),
        };
        let status = refund.opt_str("status").unwrap_or("succeeded");
        if matches!(status, "failed" | "canceled") {
            continue;
        }
        listed.push(Refund {
            id: refund.str("id")?,
            amount: refund.minor("amount")?,
            currency: refund
                .get("currency")
                .map(|_| refund.currency("currency"))
                .transpose()?,
            created: refund.opt_i64("created")?,
            pending: matches!(status, "pending" | "requires_action"),
            index,
        });
    }
    Ok(listed)
}

fn dispute(dispute: &Node<'_>, context: &Context<'_>) -> Result<Vec<PaymentRecord>, PluginError> {
    let id = dispute.str("id")?;
    let currency = dispute.currency("currency")?;
    let amount = dispute.minor("amount")?;
    let mut record = base(id, -money(amount, &currency), &currency, dispute, context);
    record.kind = PaymentKind::Chargeback;
    record.original_external_id = match dispute.id("payment_intent") {
        Some(intent) => Some(intent.to_owned()),
        None => dispute.id("charge").map(str::to_owned),
    };
    if let Some(reason) = dispute.opt_str("reason") {
        record.remittance = Some(format!("dispute: {reason}"));
    }
    // An inquiry (`warning_*`) withdraws nothing until it turns into a dispute.
    if dispute
        .opt_str("status")
        .is_some_and(|status| status.starts_with("warning_"))
    {
        record.status = EntryStatus::Pending;
    }
    if record.booked_on.is_none() {
        record.booked_on = date(dispute.opt_i64("created")?);
    }
    if let Some(Value::Array(transactions)) = dispute.get("balance_transactions") {
        let mut fee = 0;
        for (index, value) in transactions.iter().enumerate() {
            if !value.is_object() {
                continue;
            }
            let transaction = Node {
                value,
                path: format!("data.object.balance_transactions.{index}"),
            };
            if transaction.currency("currency")? == currency {
                fee = transaction.minor("fee")?.saturating_add(fee);
            }
        }
        if fee > 0 {
            record.fee = Some(money(fee, &currency));
        }
    }
    Ok(vec![record])
}

fn invoice(invoice: &Node<'_>, context: &Context<'_>) -> Result<Vec<PaymentRecord>, PluginError> {
    let invoice_id = invoice.str("id")?;
    let currency = invoice.currency("currency")?;
    let paid = invoice.minor("amount_paid")?;
    if paid == 0 {
        return Ok(Vec::new());
    }
    // API versions since 2025-03-31 list payments instead of naming the PaymentIntent on the invoice.
    let listed_intent = invoice
        .get("payments")
        .and_then(|payments| payments.pointer("/data/0/payment/payment_intent"))
        .and_then(|intent| match intent {
            Value::String(id) => Some(id.as_str()),
            other => other.get("id").and_then(Value::as_str),
        });
    let external_id = invoice
        .id("payment_intent")
        .or(listed_intent)
        .or_else(|| invoice.id("charge"))
        .unwrap_or(invoice_id);
    let mut record = base(
        external_id,
        money(paid, &currency),
        &currency,
        invoice,
        context,
    );
    if let Some(paid_at) = invoice
        .opt_node("status_transitions")
        .map(|transitions| transitions.opt_i64("paid_at"))
        .transpose()?
        .flatten()
    {
        record.booked_on = date(Some(paid_at));
    }
    record.counterparty_name = invoice.opt_str("customer_name").map(str::to_owned);
    let number = invoice
        .opt_str("number")
        .map(|number| format!("stripe invoice {number}"));
    record.remittance = match (record.remittance.take(), number) {
        (Some(description), Some(number)) => Some(format!("{description} ({number})")),
        (description, number) => description.or(number),
    };
    Ok(vec![record])
}
