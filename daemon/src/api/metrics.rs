//! `/metrics` in Prometheus text format, and the request counter middleware.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;

/// Request and ingestion counters.
#[derive(Debug, Default)]
pub struct Metrics {
    requests_2xx: AtomicU64,
    requests_4xx: AtomicU64,
    requests_5xx: AtomicU64,
    /// Records committed from connectors.
    pub records_ingested: AtomicU64,
    /// Each mailbox's state and message counters.
    pub mailboxes: crate::mailbox::Mailboxes,
}

pub(super) async fn count(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let counter = match response.status().as_u16() {
        200..=399 => &state.metrics.requests_2xx,
        400..=499 => &state.metrics.requests_4xx,
        _ => &state.metrics.requests_5xx,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    response
}

pub(super) async fn render(State(state): State<AppState>) -> Response {
    let m = &state.metrics;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP settled_http_requests_total HTTP requests answered, by status class."
    );
    let _ = writeln!(out, "# TYPE settled_http_requests_total counter");
    for (class, c) in [
        ("2xx", &m.requests_2xx),
        ("4xx", &m.requests_4xx),
        ("5xx", &m.requests_5xx),
    ] {
        let _ = writeln!(
            out,
            "settled_http_requests_total{{class=\"{class}\"}} {}",
            c.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP settled_records_ingested_total Records committed from connectors."
    );
    let _ = writeln!(out, "# TYPE settled_records_ingested_total counter");
    let _ = writeln!(
        out,
        "settled_records_ingested_total {}",
        m.records_ingested.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP settled_last_event_id Id of the newest audit event."
    );
    let _ = writeln!(out, "# TYPE settled_last_event_id gauge");
    let _ = writeln!(
        out,
        "settled_last_event_id {}",
        state.engine.store().last_event_id()
    );
    let _ = writeln!(
        out,
        "# HELP settled_open_invoices Issued invoices with a balance, as seen by reconciliation."
    );
    let _ = writeln!(out, "# TYPE settled_open_invoices gauge");
    let _ = writeln!(
        out,
        "settled_open_invoices {}",
        state.engine.open_invoice_count()
    );
    m.mailboxes.render_metrics(&mut out);
    if let Some(host) = &state.host {
        let _ = writeln!(
            out,
            "# HELP settled_plugin_calls_total Plugin calls per connector instance."
        );
        let _ = writeln!(out, "# TYPE settled_plugin_calls_total counter");
        let status = serde_json::to_value(host.status()).unwrap_or_default();
        for plugin in status.as_array().into_iter().flatten() {
            for inst in plugin["instances"].as_array().into_iter().flatten() {
                let name = inst["name"].as_str().unwrap_or_default();
                let _ = writeln!(
                    out,
                    "settled_plugin_calls_total{{instance=\"{name}\"}} {}",
                    inst["calls"].as_u64().unwrap_or(0)
                );
                let _ = writeln!(
                    out,
                    "settled_plugin_errors_total{{instance=\"{name}\"}} {}",
                    inst["errors"].as_u64().unwrap_or(0)
                );
            }
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
        .into_response()
}
