//! Read models for the API: stored records plus their derived fields (totals at the top level, balances,
//! derived payment status, allocations). Derived values are computed here on every read, never stored.

use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

use super::{Engine, EngineResult};
use crate::domain::invoice::{self, Invoice, PaymentStatus};
use crate::domain::money::round_money;
use crate::domain::order::{self, Order};
use crate::domain::payment::Allocation;
use crate::domain::quote::Quote;

/// A decimal number as the API receives it: a JSON string (`"12.50"`) or an integer. Floats are refused so that
/// no amount ever passes through binary floating point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecimalText(String);

impl DecimalText {
    /// The text, to be parsed by the domain with the field's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for DecimalText {
    fn from(s: &str) -> Self {
        DecimalText(s.to_string())
    }
}

impl<'de> Deserialize<'de> for DecimalText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(DecimalText(s)),
            Value::Number(n) if n.is_i64() || n.is_u64() => Ok(DecimalText(n.to_string())),
            Value::Number(n) => Err(serde::de::Error::custom(format!(
                "{n} is a JSON float; send amounts as decimal strings like \"{n}\""
            ))),
            other => Err(serde::de::Error::custom(format!(
                "expected a decimal string like \"12.50\", found {other}"
            ))),
        }
    }
}

/// Paging and filters of list endpoints.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ListQuery {
    /// Only ids greater than this.
    #[serde(default)]
    pub after: Option<String>,
    /// At most this many (default 100, at most 1000).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Status filter (`status` for leads and quotes, `payment_status` for invoices).
    #[serde(default)]
    pub status: Option<String>,
    /// Invoice payment status filter.
    #[serde(default)]
    pub payment_status: Option<String>,
    /// Only this account's documents.
    #[serde(default)]
    pub account_id: Option<String>,
}

impl ListQuery {
    fn limit(&self) -> usize {
        self.limit.unwrap_or(100).clamp(1, 1000)
    }
}

fn status_of(v: &Value, field: &str) -> String {
    v.get(field)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

impl Engine {
    /// A list of entities of one kind as views, filtered and paged by id.
    pub fn list(&self, kind: &'static str, q: &ListQuery) -> EngineResult<Vec<Value>> {
        let mut out = Vec::new();
        for item in self.store().scan::<Value>(kind) {
            let raw = item?;
            let id = status_of(&raw, "id");
            if q.after.as_deref().is_some_and(|after| id.as_str() <= after) {
                continue;
            }
            let view = self.view(kind, raw)?;
            if let Some(s) = &q.status {
                if &status_of(&view, "status") != s && &status_of(&view, "payment_status") != s {
                    continue;
                }
            }
            if let Some(s) = &q.payment_status {
                if &status_of(&view, "payment_status") != s {
                    continue;
                }
            }
            if let Some(a) = &q.account_id {
                if &status_of(&view, "account_id") != a {
                    continue;
                }
            }
            out.push(view);
            if out.len() >= q.limit() {
                break;
            }
        }
        Ok(out)
    }

    /// One entity as a view.
    pub fn show(&self, kind: &'static str, id: &str) -> EngineResult<Value> {
        let raw: Value = self.get(kind, id)?;
        self.view(kind, raw)
    }

    fn view(&self, kind: &str, raw: Value) -> EngineResult<Value> {
        match kind {
            "invoice" => {
                let inv: Invoice = serde_json::from_value(raw).map_err(|e| corrupt(kind, e))?;
                self.invoice_view(&inv)
            }
            "quote" => {
                let q: Quote = serde_json::from_value(raw).map_err(|e| corrupt(kind, e))?;
                Ok(quote_view(&q))
            }
            "order" => {
                let o: Order = serde_json::from_value(raw).map_err(|e| corrupt(kind, e))?;
                Ok(order_view(&o))
            }
            _ => Ok(raw),
        }
    }

    /// An invoice with its derived payment status, balance and allocations.
    pub fn invoice_view(&self, inv: &Invoice) -> EngineResult<Value> {
        let mut allocations = Vec::new();
        for id in &inv.allocations {
            if let Some(a) = self.store().get::<Allocation>("allocation", id)? {
                allocations.push(a);
            }
        }
        let status: PaymentStatus = invoice::payment_status(inv, self.today());
        let mut v = serde_json::to_value(inv).unwrap_or_default();
        if let Value::Object(map) = &mut v {
            let money = |d: rust_decimal::Decimal| json!(round_money(d, &inv.currency));
            map.insert("payment_status".into(), json!(status));
            map.insert("balance".into(), money(invoice::balance(inv)));
            map.insert("amount_paid".into(), money(inv.amount_paid));
            map.insert("amount_refunded".into(), money(inv.amount_refunded));
            map.insert("amount_credited".into(), money(inv.amount_credited));
            map.insert("subtotal".into(), json!(inv.totals.subtotal));
            map.insert("tax_total".into(), json!(inv.totals.tax_total));
            map.insert("total".into(), json!(inv.totals.total));
            map.insert("taxes".into(), json!(inv.totals.taxes));
            map.insert("allocations".into(), json!(allocations));
        }
        Ok(v)
    }
}

fn quote_view(q: &Quote) -> Value {
    let mut v = serde_json::to_value(q).unwrap_or_default();
    if let Value::Object(map) = &mut v {
        map.insert("number".into(), json!(q.display_number()));
        map.insert("subtotal".into(), json!(q.totals.subtotal));
        map.insert("tax_total".into(), json!(q.totals.tax_total));
        map.insert("total".into(), json!(q.totals.total));
        map.insert("taxes".into(), json!(q.totals.taxes));
    }
    v
}

fn order_view(o: &Order) -> Value {
    let mut v = serde_json::to_value(o).unwrap_or_default();
    if let Value::Object(map) = &mut v {
        let remaining: serde_json::Map<String, Value> = order::remaining(o)
            .into_iter()
            .map(|(line, qty)| (line.to_string(), json!(qty)))
            .collect();
        map.insert("remaining_to_invoice".into(), Value::Object(remaining));
        map.insert("total".into(), json!(o.totals.total));
        map.insert("taxes".into(), json!(o.totals.taxes));
    }
    v
}

fn corrupt(kind: &str, e: serde_json::Error) -> super::EngineError {
    super::EngineError::Store(crate::store::StoreError::Corrupt {
        key: kind.to_string(),
        source: e,
    })
}
