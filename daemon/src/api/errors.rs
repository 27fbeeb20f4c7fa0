//! API errors: one JSON shape, status codes by who is at fault.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::domain::DomainError;
use crate::engine::EngineError;
use crate::store::StoreError;

/// An error answer: `{"error": {"code", "message", "field"?, "summary"?}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
    summary: Option<serde_json::Value>,
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a status, a machine code and a message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            summary: None,
            retry_after: None,
        }
    }

    /// The same error with a `Retry-After` header (seconds), for 429 and 503.
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// The same error naming the field at fault.
    pub fn with_field(mut self, field: Option<String>) -> Self {
        self.field = field;
        self
    }

    /// The same error carrying the import summary of a refused file (its refused records, with positions).
    pub fn with_summary(mut self, summary: serde_json::Value) -> Self {
        self.summary = Some(summary);
        self
    }

    /// The import summary, for a file refused because of its records.
    pub fn summary(&self) -> Option<&serde_json::Value> {
        self.summary.as_ref()
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
            summary: None,
            retry_after: None,
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
            EngineError::Store(
                s @ (StoreError::WriteFailed { .. } | StoreError::Unavailable { .. }),
            ) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                s.to_string(),
            ),
            // sled 0.34 fails reads too once a flush failed: the environment, not a bug (the next write closes the store).
            EngineError::Store(s @ StoreError::Sled(sled::Error::Io(_))) => {
                tracing::error!(error = %s, "the store cannot read or write");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    s.to_string(),
                )
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
        if let Some(summary) = self.summary {
            error["summary"] = summary;
        }
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}
