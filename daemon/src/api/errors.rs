//! API errors: one JSON shape, status codes by who is at fault.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::domain::DomainError;
use crate::engine::EngineError;

/// An error answer: `{"error": {"code", "message", "field"?}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
}

impl ApiError {
    /// An error with a status, a machine code and a message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// 400 naming the field at fault.
    pub fn bad_request(field: Option<String>, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.into(),
            field,
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Domain(DomainError::Invalid { field, message }) => {
                let text = format!("invalid {field}: {message}");
                ApiError::bad_request(Some(field), text)
            }
            EngineError::Domain(d @ DomainError::CurrencyMismatch { .. }) => {
                ApiError::bad_request(Some("currency".into()), d.to_string())
            }
            EngineError::Domain(d @ DomainError::Transition { .. }) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", d.to_string())
            }
            e @ EngineError::NotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            EngineError::Store(s) => {
                tracing::error!(error = %s, "store error while serving a request");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", s.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(field) = self.field {
            error["field"] = json!(field);
        }
        (self.status, Json(json!({ "error": error }))).into_response()
    }
}
