//! `GET /v1/sync/{connector}/check` (`settled sync check <connector>`): settled's invoices kept in another system
//! (an accounting package a `poll` connector reads, such as Tryton) against what that system has now. The plugin reads
//! every invoice through its own poll conversation ([`crate::poll::read_all`], nothing committed), so the session
//! and the IO stay where they are for polls; the answer lists each invoice whose total, balance or payment status
//! differs, and invoices one side has and the other has not.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{json, Value};
use settled_plugin_api::{InvoiceRecord, Record, Role};

use super::{ApiError, AppState};
use crate::domain::invoice::{self, Invoice, InvoiceKind, InvoiceState, PaymentStatus};

/// One way settled and the other system disagree about an invoice.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Difference {
    /// The invoice number (settled's, else the other system's).
    pub invoice: String,
    /// Settled's id, when settled has the invoice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invoice_id: Option<String>,
    /// The other system's id, when it has the invoice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// `total`, `balance`, `status`, or `invoice` (one side does not have it).
    pub field: &'static str,
    /// What settled has.
    pub settled: String,
    /// What the other system has.
    pub other: String,
}

pub(super) async fn check(
    State(state): State<AppState>,
    Path(connector): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let host = state.host.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "plugins are disabled: there is no connector to check",
        )
    })?;
    let instance = host
        .instances()
        .into_iter()
        .find(|i| i.name == connector)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no connector named `{connector}`"),
            )
        })?;
    if !instance.roles.contains(&Role::Poll) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "connector `{connector}` (plugin `{}`) does not read another system (no `poll` role): only the \
                 connector of an accounting package, such as `tryton`, can be checked",
                instance.plugin
            ),
        ));
    }
    let records = crate::poll::read_all(&state, &host, &connector)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "peer_error",
                format!("reading the invoices of `{connector}`: {e}"),
            )
        })?;
    let theirs: Vec<InvoiceRecord> = records
        .into_iter()
        .filter_map(|r| match r {
            Record::Invoice(i) => Some(i),
            _ => None,
        })
        .collect();
    let engine = state.engine.clone();
    let plugin = instance.plugin.clone();
    // Settled's own invoices the other system has, linked or not yet.
    let sent: std::collections::BTreeSet<String> = theirs
        .iter()
        .filter_map(|t| t.host_number.clone())
        .collect();
    let ours = tokio::task::spawn_blocking(move || -> Result<Vec<Invoice>, ApiError> {
        let mut ours = Vec::new();
        for inv in engine.store().scan::<Invoice>("invoice") {
            let inv = inv.map_err(|e| ApiError::from(crate::engine::EngineError::from(e)))?;
            if inv.state == InvoiceState::Issued
                && inv.kind == InvoiceKind::Invoice
                && (inv.external_refs.iter().any(|r| r.system == plugin)
                    || inv.number.as_ref().is_some_and(|n| sent.contains(n)))
            {
                ours.push(inv);
            }
        }
        Ok(ours)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    let differences = compare(&ours, &theirs, &instance.plugin, state.engine.today());
    Ok(Json(json!({
        "connector": connector,
        "plugin": instance.plugin,
        "settled_invoices": ours.len(),
        "other_invoices": theirs.len(),
        "differences": differences,
    })))
}

/// Settled's invoices linked to `plugin`'s system against that system's invoices: each pair is matched by the
/// system's id (or, for settled's own invoice not linked yet, by its number as the other side's `host_number`).
pub fn compare(
    ours: &[Invoice],
    theirs: &[InvoiceRecord],
    plugin: &str,
    today: NaiveDate,
) -> Vec<Difference> {
    let mut out = Vec::new();
    let mut matched = vec![false; theirs.len()];
    for inv in ours {
        let number = inv.number.clone().unwrap_or_else(|| inv.id.clone());
        let link = inv.external_refs.iter().find(|r| r.system == plugin);
        let found = theirs.iter().position(|t| match link {
            Some(link) => t.external_id == link.id,
            None => t.host_number.as_deref() == inv.number.as_deref(),
        });
        let Some(at) = found else {
            out.push(Difference {
                invoice: number,
                invoice_id: Some(inv.id.clone()),
                external_id: link.map(|l| l.id.clone()),
                field: "invoice",
                settled: "issued".into(),
                other: "missing (not posted there, or deleted)".into(),
            });
            continue;
        };
        matched[at] = true;
        let t = &theirs[at];
        let mut differ = |field: &'static str, settled: String, other: String| {
            out.push(Difference {
                invoice: number.clone(),
                invoice_id: Some(inv.id.clone()),
                external_id: Some(t.external_id.clone()),
                field,
                settled,
                other,
            })
        };
        if inv.totals.total != t.total {
            differ("total", inv.totals.total.to_string(), t.total.to_string());
        }
        let balance = invoice::balance(inv);
        if balance != t.amount_due {
            differ("balance", balance.to_string(), t.amount_due.to_string());
        }
        let status = invoice::payment_status(inv, today);
        let paid_here = status == PaymentStatus::Paid;
        let paid_there = t.amount_due <= Decimal::ZERO;
        if paid_here != paid_there {
            differ(
                "status",
                crate::domain::status_name(&status),
                if paid_there { "paid" } else { "open" }.into(),
            );
        }
    }
    for (t, _) in theirs.iter().zip(&matched).filter(|(_, m)| !**m) {
        out.push(Difference {
            invoice: t.number.clone(),
            invoice_id: None,
            external_id: Some(t.external_id.clone()),
            field: "invoice",
            settled: "missing (not polled yet?)".into(),
            other: "posted".into(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::invoice::ExternalRef;
    use crate::domain::money::Currency;
    use crate::domain::totals::Totals;
    use chrono::Utc;

    fn ours(number: &str, total: &str, paid: &str, link: Option<&str>) -> Invoice {
        let total: Decimal = total.parse().unwrap();
        Invoice {
            id: format!("inv_{number}"),
            number: Some(number.into()),
            rf_reference: None,
            kind: InvoiceKind::Invoice,
            credits: None,
            order_id: None,
            account_id: "acc_1".into(),
            currency: Currency::parse("EUR").unwrap(),
            lines: Vec::new(),
            document_discount: None,
            totals: Totals {
                lines_net: total,
                document_discount: Decimal::ZERO,
                subtotal: total,
                taxes: Vec::new(),
                tax_total: Decimal::ZERO,
                total,
            },
            state: InvoiceState::Issued,
            issue_date: NaiveDate::from_ymd_opt(2026, 3, 1),
            due_date: NaiveDate::from_ymd_opt(2026, 3, 31),
            payment_terms_days: 30,
            amount_paid: paid.parse().unwrap(),
            amount_refunded: Decimal::ZERO,
            amount_credited: Decimal::ZERO,
            allocations: Vec::new(),
            announced_status: None,
            external_refs: link
                .map(|id| ExternalRef {
                    system: "tryton".into(),
                    id: id.into(),
                    number: format!("TRY-{id}"),
                    origin: true,
                })
                .into_iter()
                .collect(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn theirs(id: &str, total: &str, due: &str, host_number: Option<&str>) -> InvoiceRecord {
        InvoiceRecord {
            external_id: id.into(),
            number: format!("TRY-{id}"),
            host_number: host_number.map(str::to_string),
            customer: "C".into(),
            customer_email: None,
            customer_tax_id: None,
            currency: "EUR".into(),
            untaxed: total.parse().unwrap(),
            tax: Decimal::ZERO,
            total: total.parse().unwrap(),
            amount_due: due.parse().unwrap(),
            issue_date: NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
            due_date: None,
            lines: Vec::new(),
            taxes: Vec::new(),
            source_position: None,
        }
    }

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 3, 10).unwrap()
    }

    #[test]
    fn invoices_that_agree_give_no_difference() {
        let ours = [
            ours("TRY-1", "100.00", "100.00", Some("1")),
            ours("INV-1", "50.00", "0", None),
        ];
        let theirs = [
            theirs("1", "100.00", "0", None),
            theirs("2", "50.00", "50.00", Some("INV-1")),
        ];
        assert_eq!(compare(&ours, &theirs, "tryton", today()), vec![]);
    }

    #[test]
    fn a_balance_paid_on_one_side_only_names_the_invoice_balance_and_status() {
        let ours = [ours("TRY-1", "100.00", "0", Some("1"))];
        let theirs = [theirs("1", "100.00", "0", None)];
        let diffs = compare(&ours, &theirs, "tryton", today());
        let fields: Vec<_> = diffs
            .iter()
            .map(|d| (d.invoice.as_str(), d.field))
            .collect();
        assert_eq!(fields, [("TRY-1", "balance"), ("TRY-1", "status")]);
        assert_eq!(
            (diffs[0].settled.as_str(), diffs[0].other.as_str()),
            ("100.00", "0")
        );
    }

    #[test]
    fn an_invoice_one_side_lacks_is_a_difference() {
        let ours = [ours("TRY-1", "100.00", "0", Some("1"))];
        let theirs = [theirs("2", "10.00", "10.00", None)];
        let diffs = compare(&ours, &theirs, "tryton", today());
        let fields: Vec<_> = diffs
            .iter()
            .map(|d| (d.invoice.as_str(), d.field))
            .collect();
        assert_eq!(fields, [("TRY-1", "invoice"), ("TRY-2", "invoice")]);
    }
}
