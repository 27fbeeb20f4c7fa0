//! The HTTP JSON API (`/v1/...`), connector intake (`/intake/{instance}`), `/healthz` and `/metrics`.
//!
//! Every write answers only after the engine made it durable. Errors are `{"error": {"code", "message", "field"?}}`:
//! 400 bad input (naming the field), 401 without a valid token, 404, 409 for a transition the current state refuses.

mod check;
mod errors;
mod imports;
mod intake;
pub mod limits;
pub mod listener;
pub(crate) mod metrics;
mod outbox;
pub mod sync;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

pub use errors::ApiError;
pub use imports::{resume_imports, unfinished_imports};
pub use metrics::Metrics;

use crate::domain::lead::{LeadInput, LeadStatus};
use crate::domain::opportunity::Stage;
use crate::engine::{Engine, ListQuery};
use crate::plugin_host::PluginHost;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    /// The engine.
    pub engine: Engine,
    /// The API bearer token.
    pub token: Arc<String>,
    /// Loaded connector plugins, if plugins are enabled.
    pub host: Option<Arc<PluginHost>>,
    /// Request counters.
    pub metrics: Arc<Metrics>,
    /// Outbox delivery to sink connectors, if plugins are enabled.
    pub outbox: Option<Arc<crate::outbox::Dispatcher>>,
    /// Intake limits: body size and time, rate per sender, intake requests at once.
    pub limits: Arc<limits::Limits>,
}

impl AppState {
    /// The file import pipeline over this state's engine and `host`'s file connectors.
    pub fn pipeline<'a>(&'a self, host: &'a PluginHost) -> crate::import::Pipeline<'a> {
        crate::import::Pipeline {
            engine: &self.engine,
            host,
            ingested: &self.metrics.records_ingested,
        }
    }
}

/// Largest accepted request body (a bank statement upload), 256 MiB.
pub const MAX_BODY: usize = 256 * 1024 * 1024;

/// Build the router.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/leads", post(create_lead).get(list::<LEADS>))
        .route("/v1/leads/:id", get(show::<LEADS>))
        .route("/v1/leads/:id/status", post(lead_status))
        .route("/v1/leads/:id/convert", post(convert_lead))
        .route("/v1/accounts", get(list::<ACCOUNTS>))
        .route("/v1/accounts/:id", get(show::<ACCOUNTS>))
        .route("/v1/contacts", get(list::<CONTACTS>))
        .route("/v1/contacts/:id", get(show::<CONTACTS>))
        .route("/v1/opportunities", get(list::<OPPORTUNITIES>))
        .route("/v1/opportunities/:id", get(show::<OPPORTUNITIES>))
        .route("/v1/opportunities/:id/stage", post(opportunity_stage))
        .route(
            "/v1/opportunities/:id/activities",
            post(opportunity_activity),
        )
        .route("/v1/quotes", post(create_quote).get(list::<QUOTES>))
        .route("/v1/quotes/:id", get(show::<QUOTES>))
        .route("/v1/quotes/:id/:action", post(quote_action))
        .route("/v1/orders", post(create_order).get(list::<ORDERS>))
        .route("/v1/orders/:id", get(show::<ORDERS>))
        .route("/v1/invoices", post(create_invoice).get(list::<INVOICES>))
        .route("/v1/invoices/:id", get(show::<INVOICES>))
        .route("/v1/invoices/:id/:action", post(invoice_action))
        .route("/v1/payments", post(record_payment).get(list::<PAYMENTS>))
        .route("/v1/payments/:id", get(show::<PAYMENTS>))
        .route("/v1/payments/:id/reverse", post(reverse_payment))
        .route("/v1/review", get(list_review))
        .route("/v1/review/:id", get(show::<REVIEW>))
        .route("/v1/review/:id/:action", post(review_action))
        .route("/v1/events", get(events))
        .route("/v1/check", get(check::check))
        .route("/v1/imports", post(imports::import).get(list::<IMPORTS>))
        .route("/v1/imports/:id", get(show::<IMPORTS>))
        .route("/v1/plugins", get(plugins))
        .route("/v1/outbox", get(outbox::status))
        .route("/v1/outbox/:sink/:action", post(outbox::action))
        .route("/v1/outbox/:sink/retry/:event", post(outbox::retry))
        .route("/v1/sync/:connector/check", get(sync::check))
        .route("/metrics", get(metrics::render))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .merge(v1)
        .route("/healthz", get(healthz))
        .route(
            "/intake/:instance",
            post(intake::intake).get(intake::intake),
        )
        .route(
            "/intake/:instance/*rest",
            post(intake::intake).get(intake::intake),
        )
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::count,
        ))
        .with_state(state)
}

async fn require_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(given.as_bytes(), state.token.as_bytes()) {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token: send `Authorization: Bearer <token>` (see `settled init`)",
        )
        .into_response();
    }
    next.run(req).await
}

/// Compares the SHA-256 digests of both in constant time: the time taken says nothing about where they differ,
/// nor whether their lengths do.
fn constant_time_eq(given: &[u8], token: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let same = Sha256::digest(given).ct_eq(&Sha256::digest(token));
    bool::from(same) & !token.is_empty()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// 200 while the store can write; 503 with the reason while it is closed after a failed write (a full disk).
async fn healthz(State(state): State<AppState>) -> Response {
    let store = state.engine.store();
    match store.failure() {
        None => {
            let mut body = json!({"status": "ok", "last_event_id": store.last_event_id()});
            // Whether the last config reload was refused (the details, with the error, are in `/v1/plugins`).
            if let Some(reload) = state.host.as_ref().and_then(|h| h.last_reload()) {
                body["config_reload"] = json!({"outcome": reload.outcome, "at": reload.at});
            }
            Json(body).into_response()
        }
        Some(failure) => {
            let message = format!("the store cannot write: {}", failure.describe());
            let body = json!({
                "status": "unavailable",
                "reason": failure.describe(),
                "since": failure.since,
                "error": {"code": "store_unavailable", "message": message},
            });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

/// Parse a JSON body, naming the field at fault.
pub(crate) fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let text: &[u8] = if body.is_empty() { b"{}" } else { body };
    let de = &mut serde_json::Deserializer::from_slice(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let mut field = if path == "." { None } else { Some(path) };
        // serde reports an unknown field at the object holding it: name the field itself.
        if let Some(name) = inner
            .to_string()
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
        {
            field = Some(match field {
                Some(path) if path == name || path.ends_with(&format!(".{name}")) => path,
                Some(parent) => format!("{parent}.{name}"),
                None => name.to_string(),
            });
        }
        ApiError::bad_request(field, format!("malformed JSON body: {inner}"))
    })
}

const LEADS: u8 = 0;
const ACCOUNTS: u8 = 1;
const CONTACTS: u8 = 2;
const OPPORTUNITIES: u8 = 3;
const QUOTES: u8 = 4;
const ORDERS: u8 = 5;
const INVOICES: u8 = 6;
const PAYMENTS: u8 = 7;
const REVIEW: u8 = 8;
const IMPORTS: u8 = 9;

fn kind(k: u8) -> &'static str {
    match k {
        LEADS => "lead",
        ACCOUNTS => "account",
        CONTACTS => "contact",
        OPPORTUNITIES => "opportunity",
        QUOTES => "quote",
        ORDERS => "order",
        INVOICES => "invoice",
        PAYMENTS => "payment",
        IMPORTS => "import",
        _ => "review",
    }
}

async fn list<const K: u8>(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let items = state.engine.list(kind(K), &q)?;
    Ok(Json(json!({"items": items})))
}

async fn show<const K: u8>(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.engine.show(kind(K), &id)?))
}

async fn list_review(
    State(state): State<AppState>,
    Query(mut q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    if q.status.is_none() {
        q.status = Some("open".into());
    } else if q.status.as_deref() == Some("all") {
        q.status = None;
    }
    let items = state.engine.list("review", &q)?;
    Ok(Json(json!({"items": items})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LeadCreate {
    name: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    company: Option<String>,
    source: Option<String>,
    assigned_to: Option<String>,
    external_id: Option<String>,
    message: Option<String>,
}

async fn create_lead(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let b: LeadCreate = parse_body(&body)?;
    let input = LeadInput {
        name: b.name.unwrap_or_default(),
        email: b.email,
        phone: b.phone,
        company: b.company,
        source: b.source.unwrap_or_default(),
        assigned_to: b.assigned_to,
        external_id: b.external_id,
        message: b.message,
    };
    let (lead, deduplicated) = state.engine.capture_lead(&input, "api").await?;
    let mut v = serde_json::to_value(&lead).unwrap_or_default();
    v["deduplicated"] = json!(deduplicated);
    let status = if deduplicated {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(v)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusBody {
    status: LeadStatus,
}

async fn lead_status(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: StatusBody = parse_body(&body)?;
    let lead = state.engine.set_lead_status(&id, b.status, "api").await?;
    Ok(Json(serde_json::to_value(lead).unwrap_or_default()))
}

async fn convert_lead(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let b = parse_body(&body)?;
    let out = state.engine.convert_lead(&id, b, "api").await?;
    Ok(Json(serde_json::to_value(out).unwrap_or_default()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StageBody {
    stage: Stage,
    #[serde(default)]
    probability: Option<crate::engine::DecimalText>,
}

async fn opportunity_stage(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: StageBody = parse_body(&body)?;
    let probability = b
        .probability
        .map(|p| crate::domain::money::parse_percent("probability", p.as_str()))
        .transpose()
        .map_err(crate::engine::EngineError::from)?;
    let opp = state
        .engine
        .set_stage(&id, b.stage, probability, "api")
        .await?;
    Ok(Json(serde_json::to_value(opp).unwrap_or_default()))
}

async fn opportunity_activity(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let b = parse_body(&body)?;
    let opp = state.engine.add_activity(&id, b, "api").await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::to_value(opp).unwrap_or_default()),
    )
        .into_response())
}

async fn create_quote(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let b = parse_body(&body)?;
    let q = state.engine.create_quote(b, "api").await?;
    let v = state.engine.show("quote", &q.id)?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn quote_action(
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let q = match action.as_str() {
        "send" | "accept" | "reject" => {
            let ReasonInput { reason } = parse_body(&body)?;
            let reason = reason.as_deref();
            state
                .engine
                .quote_action(&id, &action, reason, "api")
                .await?
        }
        "revise" => {
            let b = parse_body(&body)?;
            let q = state.engine.revise_quote(&id, b, "api").await?;
            let v = state.engine.show("quote", &q.id)?;
            return Ok((StatusCode::CREATED, Json(v)).into_response());
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("unknown quote action `{action}`"),
            ))
        }
    };
    Ok(Json(state.engine.show("quote", &q.id)?).into_response())
}

async fn create_order(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let b = parse_body(&body)?;
    let o = state.engine.create_order(b, "api").await?;
    Ok((
        StatusCode::CREATED,
        Json(state.engine.show("order", &o.id)?),
    )
        .into_response())
}

async fn create_invoice(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let b = parse_body(&body)?;
    let inv = state.engine.create_invoice(b, "api").await?;
    Ok((StatusCode::CREATED, Json(state.engine.invoice_view(&inv)?)).into_response())
}

async fn invoice_action(
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let e = &state.engine;
    let inv = match action.as_str() {
        "issue" => e.issue_invoice(&id, parse_body(&body)?, "api").await?,
        "void" => {
            let ReasonInput { reason } = parse_body(&body)?;
            e.void_invoice(&id, reason.as_deref(), "api").await?
        }
        "credit" => {
            let cn = e.credit_invoice(&id, parse_body(&body)?, "api").await?;
            return Ok((StatusCode::CREATED, Json(e.invoice_view(&cn)?)).into_response());
        }
        "apply-credit" => e.apply_credit(&id, parse_body(&body)?, "api").await?,
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("unknown invoice action `{action}`"),
            ))
        }
    };
    Ok(Json(e.invoice_view(&inv)?).into_response())
}

async fn record_payment(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let b = parse_body(&body)?;
    let (p, duplicate) = state.engine.record_payment(b, "api").await?;
    let mut v = state.engine.show("payment", &p.id)?;
    v["deduplicated"] = json!(duplicate);
    let status = if duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(v)).into_response())
}

/// The body of a state change that takes nothing but an optional note: `{"reason": "..."}`, recorded in the audit
/// event. Any other field is refused by name.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonInput {
    #[serde(default)]
    reason: Option<String>,
}

async fn reverse_payment(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let p = state
        .engine
        .reverse_payment(&id, parse_body(&body)?, "api")
        .await?;
    Ok(Json(state.engine.show("payment", &p.id)?))
}

async fn review_action(
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let item = match action.as_str() {
        "allocate" => {
            state
                .engine
                .review_allocate(&id, parse_body(&body)?, "api")
                .await?
        }
        "dismiss" => {
            state
                .engine
                .review_dismiss(&id, parse_body(&body)?, "api")
                .await?
        }
        "reverse" => {
            state
                .engine
                .review_reverse(&id, parse_body(&body)?, "api")
                .await?
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("unknown review action `{action}`"),
            ))
        }
    };
    Ok(Json(serde_json::to_value(item).unwrap_or_default()))
}

#[derive(Deserialize)]
struct EventsQuery {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    limit: Option<usize>,
}

async fn events(
    State(state): State<AppState>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let items = state
        .engine
        .store()
        .events_after(q.after, limit)
        .map_err(crate::engine::EngineError::from)?;
    Ok(Json(
        json!({"items": items, "last_event_id": state.engine.store().last_event_id()}),
    ))
}

async fn plugins(State(state): State<AppState>) -> Json<Value> {
    let status = match &state.host {
        Some(host) => serde_json::to_value(host.status()).unwrap_or_default(),
        None => json!([]),
    };
    let reload = state.host.as_ref().and_then(|h| h.last_reload());
    Json(
        json!({"items": status, "mailboxes": state.metrics.mailboxes.snapshot(),
            "pollers": state.metrics.pollers.snapshot(), "config_reload": reload}),
    )
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn the_token_comparison_wants_exactly_the_token() {
        let token = b"0123456789abcdef0123456789abcdef";
        assert!(constant_time_eq(token, token));
        assert!(!constant_time_eq(&token[..31], token));
        assert!(!constant_time_eq(
            b"0123456789abcdef0123456789abcdef0",
            token
        ));
        assert!(!constant_time_eq(b"", token));
        assert!(!constant_time_eq(b"", b""));
    }
}
