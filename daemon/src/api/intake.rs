//! Connector intake over HTTP (`/intake/{instance}`).
//!
//! The raw request goes to the instance's plugin; its records are committed through the engine; only then does the
//! sender get its 2xx. A rejection records nothing, and neither does a record the engine refuses: the sender gets a 422
//! naming the record and field. File imports (`POST /v1/imports`) are in `imports.rs`.

use std::sync::atomic::Ordering;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use settled_plugin_api::{IntakeOutcome, IntakeRequest, Role};

use super::{ApiError, AppState};
use crate::import::{refusals, report_refused};
use crate::plugin_host::{CallError, PluginHost};

pub(super) async fn intake(
    State(state): State<AppState>,
    Path(params): Path<Vec<(String, String)>>,
    req: Request,
) -> Result<Response, ApiError> {
    let host = host(&state)?;
    let instance = params
        .iter()
        .find(|(k, _)| k == "instance")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let rest = params
        .iter()
        .find(|(k, _)| k == "rest")
        .map(|(_, v)| format!("/{v}"));
    let info = host
        .instances()
        .into_iter()
        .find(|i| i.name == instance && i.roles.contains(&Role::Intake))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no intake connector named `{instance}`"),
            )
        })?;
    let peer = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    let remote_addr = peer.map(|p| p.to_string()).unwrap_or_default();
    // The sender's limits before anything of its body is read or any plugin called.
    let limits = state.limits.connector(&instance);
    if let Some(peer) = peer {
        limits.check_rate(&instance, peer.ip())?;
    }
    let _slot = state.limits.intake_slot(&instance)?;
    let (parts, body) = req.into_parts();
    let body = limits.read_body(&instance, &parts.headers, body).await?;
    let request = IntakeRequest {
        method: parts.method.to_string(),
        path: rest.unwrap_or_else(|| "/".into()),
        query: parts.uri.query().unwrap_or_default().to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).to_string(),
                )
            })
            .collect(),
        body: body.to_vec(),
        remote_addr,
        received_at: state.engine.now().timestamp(),
    };
    let outcome = host
        .intake(&instance, request)
        .await
        .map_err(plugin_error)?;
    match outcome {
        IntakeOutcome::Reject { status, reason } => {
            tracing::info!(connector = %instance, %status, %reason, "intake rejected");
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            Err(ApiError::new(status, "rejected", reason))
        }
        IntakeOutcome::Accept { records, reply } => {
            let refused = refusals(1, &records);
            if let Some(first) = refused.first() {
                report_refused(host, &instance, &info.plugin, None, &refused);
                let message = match records.len() {
                    1 => format!("connector `{instance}`: the record was refused, nothing was recorded: {}", first.reason),
                    n => format!(
                        "connector `{instance}`: {} of {n} records refused, nothing was recorded; the first, record {}: {}",
                        refused.len(),
                        first.record,
                        first.reason
                    ),
                };
                return Err(
                    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "refused", message)
                        .with_field(first.field.clone()),
                );
            }
            let n = records.len() as u64;
            let summary = state
                .engine
                .ingest(&instance, &info.plugin, None, records)
                .await?;
            state
                .metrics
                .records_ingested
                .fetch_add(n, Ordering::Relaxed);
            match reply {
                Some(reply) => {
                    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
                    let mut response = (status, reply.body).into_response();
                    for (k, v) in reply.headers {
                        if let (Ok(k), Ok(v)) = (
                            HeaderName::try_from(k.as_str()),
                            HeaderValue::try_from(v.as_str()),
                        ) {
                            response.headers_mut().insert(k, v);
                        }
                    }
                    Ok(response)
                }
                None => Ok(Json(json!({
                    "accepted": summary.records_read,
                    "new": summary.new,
                    "duplicates": summary.duplicates,
                    "ids": summary.ids,
                }))
                .into_response()),
            }
        }
    }
}

pub(super) fn host(state: &AppState) -> Result<&PluginHost, ApiError> {
    state.host.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "plugins_disabled",
            "plugins are not loaded",
        )
    })
}

pub(super) fn plugin_error(e: CallError) -> ApiError {
    match e {
        CallError::Plugin(p) => {
            let message = match &p.location {
                Some(loc) => format!("{loc}: {}", p.message),
                None => p.message.clone(),
            };
            match p.code.as_str() {
                "bad_signature" => {
                    ApiError::new(StatusCode::UNAUTHORIZED, "bad_signature", message)
                }
                "unsupported" => ApiError::new(StatusCode::NOT_FOUND, "unsupported", message),
                _ => ApiError::bad_request(p.location.clone(), message),
            }
        }
        CallError::UnknownInstance(name) => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no connector named `{name}`"),
        ),
        e @ CallError::TooLarge { .. } => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
        }
        e @ CallError::Busy { .. } => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", e.to_string())
                .with_retry_after(1)
        }
        other => {
            tracing::warn!(error = %other, "plugin call failed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "plugin_unavailable",
                other.to_string(),
            )
        }
    }
}
