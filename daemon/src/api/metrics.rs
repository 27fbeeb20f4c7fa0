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
    /// Each poll connector's state and counters.
    pub pollers: crate::poll::Pollers,
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

/// Writes the `# HELP` and `# TYPE` lines of the metric family `name` (`kind`: counter or gauge).
pub(crate) fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes a metric family with one unlabelled sample.
fn scalar(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// Reads one metric's value off a sink's status.
type SinkValue = fn(&crate::outbox::SinkStatus) -> i64;

pub(super) async fn render(State(state): State<AppState>) -> Response {
    let m = &state.metrics;
    let mut out = String::new();
    family(
        &mut out,
        "settled_http_requests_total",
        "counter",
        "HTTP requests answered, by status class.",
    );
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
    scalar(
        &mut out,
        "settled_records_ingested_total",
        "counter",
        "Records committed from connectors.",
        m.records_ingested.load(Ordering::Relaxed),
    );
    scalar(
        &mut out,
        "settled_intake_in_progress",
        "gauge",
        "Intake requests being served (at most http.max_connections - http.api_reserve).",
        state.limits.intake_in_progress(),
    );
    scalar(
        &mut out,
        "settled_last_event_id",
        "gauge",
        "Id of the newest audit event.",
        state.engine.store().last_event_id(),
    );
    scalar(
        &mut out,
        "settled_open_invoices",
        "gauge",
        "Issued invoices with a balance, as seen by reconciliation.",
        state.engine.open_invoice_count(),
    );
    scalar(
        &mut out,
        "settled_store_writable",
        "gauge",
        "1 while the store takes writes, 0 while it is closed after a failed write (see /healthz).",
        u8::from(state.engine.store().failure().is_none()),
    );
    if let Some(Ok(sinks)) = state.outbox.as_ref().map(|o| o.status()) {
        let families: [(&str, &str, &str, SinkValue); 5] = [
            (
                "settled_outbox_delivered_total",
                "counter",
                "Outbox events delivered per sink since start.",
                |s| s.delivered_total as i64,
            ),
            (
                "settled_outbox_failed_attempts_total",
                "counter",
                "Failed outbox delivery attempts per sink since start.",
                |s| s.failed_attempts_total as i64,
            ),
            (
                "settled_outbox_pending",
                "gauge",
                "Outbox events not yet delivered per sink.",
                |s| s.pending as i64,
            ),
            (
                "settled_outbox_lag_seconds",
                "gauge",
                "Age of the oldest undelivered outbox event per sink.",
                |s| s.lag_seconds,
            ),
            (
                "settled_outbox_dead_letters",
                "gauge",
                "Outbox events given up on per sink.",
                |s| s.dead_letters.len() as i64,
            ),
        ];
        for (name, kind, help, value) in families {
            family(&mut out, name, kind, help);
            for sink in &sinks {
                let _ = writeln!(out, "{name}{{sink=\"{}\"}} {}", sink.name, value(sink));
            }
        }
    }
    m.mailboxes.render_metrics(&mut out);
    m.pollers.render_metrics(&mut out);
    if let Some(host) = &state.host {
        family(
            &mut out,
            "settled_plugin_calls_total",
            "counter",
            "Plugin calls per connector instance.",
        );
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
        family(
            &mut out,
            "settled_records_refused_total",
            "counter",
            "Records the engine refused, per connector instance.",
        );
        for plugin in status.as_array().into_iter().flatten() {
            for inst in plugin["instances"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "settled_records_refused_total{{instance=\"{}\"}} {}",
                    inst["name"].as_str().unwrap_or_default(),
                    inst["refused"].as_u64().unwrap_or(0)
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
