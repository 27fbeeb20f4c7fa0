//! `GET /v1/check`: `settled check` inside the running daemon, on a consistent view (no command writes meanwhile).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::Value;

use super::{ApiError, AppState};

/// Run every check of [`crate::check`] and answer the report (200 whether or not it found differences).
pub(super) async fn check(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let engine = state.engine.clone();
    let report = tokio::task::spawn_blocking(move || crate::check::run(&engine))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("the check stopped: {e}"),
            )
        })??;
    Ok(Json(serde_json::to_value(report).unwrap_or_default()))
}
