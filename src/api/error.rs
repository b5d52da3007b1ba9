//! Error responses: always JSON with `success: false` and a message a person can act on.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;

use crate::Error;

/// A failed request.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    extra: Option<Value>,
}

impl ApiError {
    /// An error with a status and a message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            extra: None,
        }
    }

    /// 400: the request cannot be carried out as sent.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// Adds fields to the JSON body.
    pub fn with(mut self, extra: Value) -> Self {
        self.extra = Some(extra);
        self
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<Error> for ApiError {
    /// Store and runtime failures become a 500 whose body hides the internals; the log keeps them.
    fn from(error: Error) -> Self {
        tracing::error!(kind = error.label(), %error, "request failed");
        if error.is_storage_full() {
            return Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "rsgo's data disk is full, so nothing was stored or changed; retry once an \
                 operator has freed space.",
            );
        }
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "Internal error ({}); the rsgo server log has the details.",
                error.label()
            ),
        )
    }
}

/// The message of an error response, kept with the response for its audit entry.
#[derive(Debug, Clone)]
pub struct ErrorMessage(pub String);

/// An error body: `success` and `message` first, then any further fields.
#[derive(Serialize)]
struct ErrorBody {
    success: bool,
    message: String,
    #[serde(flatten)]
    extra: serde_json::Map<String, Value>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let extra = match self.extra {
            Some(Value::Object(extra)) => extra,
            _ => Default::default(),
        };
        let note = ErrorMessage(self.message.clone());
        let body = ErrorBody {
            success: false,
            message: self.message,
            extra,
        };
        let mut response = (self.status, Json(body)).into_response();
        response.extensions_mut().insert(note);
        response
    }
}
