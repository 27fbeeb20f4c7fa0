//! `/v1/outbox`: delivery state of every sink connector, and the commands `pause`, `resume`, `replay`, `retry`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{parse_body, ApiError, AppState};
use crate::outbox::{Dispatcher, OutboxError};

impl From<OutboxError> for ApiError {
    fn from(e: OutboxError) -> Self {
        match e {
            e @ (OutboxError::UnknownSink(_) | OutboxError::NotDead { .. }) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            e @ OutboxError::BadFrom => ApiError::bad_request(Some("from".into()), e.to_string()),
            OutboxError::Engine(e) => e.into(),
        }
    }
}

fn dispatcher(state: &AppState) -> Result<&Dispatcher, ApiError> {
    state.outbox.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no outbox dispatcher: plugins are disabled",
        )
    })
}

pub(super) async fn status(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let items = match &state.outbox {
        Some(outbox) => serde_json::to_value(outbox.status()?).unwrap_or_default(),
        None => json!([]),
    };
    Ok(Json(json!({ "items": items })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    from: u64,
}

pub(super) async fn action(
    State(state): State<AppState>,
    Path((sink, action)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let outbox = dispatcher(&state)?;
    match action.as_str() {
        "pause" => outbox.pause(&sink).await?,
        "resume" => outbox.resume(&sink).await?,
        "replay" => {
            let body: ReplayBody = parse_body(&body)?;
            outbox.replay(&sink, body.from).await?
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("unknown outbox action `{action}` (pause, resume, replay, retry/EVENT)"),
            ))
        }
    }
    Ok(Json(json!({"sink": sink, "done": action})))
}

pub(super) async fn retry(
    State(state): State<AppState>,
    Path((sink, event)): Path<(String, u64)>,
) -> Result<Json<Value>, ApiError> {
    dispatcher(&state)?.retry(&sink, event).await?;
    Ok(Json(
        json!({"sink": sink, "done": "retry", "event_id": event}),
    ))
}
