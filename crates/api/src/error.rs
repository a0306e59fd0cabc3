//! The API's error answer: a status and
//! `{"error": {"code": …, "message": …, "field": <name or null>}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tidal_auth::{AuthError, KeyStoreError};
use tidal_store::client::ClientError;
use tidal_types::{InvalidSettings, InvalidSpec};

/// An error answer. `field` names the JSON field (or path parameter) at
/// fault, when one is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable code, e.g. `not_found`, `invalid_field`.
    pub code: &'static str,
    /// A sentence that names the thing and the fix.
    pub message: String,
    /// The field at fault, if any.
    pub field: Option<String>,
}

impl HttpError {
    /// An error without a field.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// The same error, naming `field`.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// 400: a field's value is wrong.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_field", message).with_field(field)
    }

    /// 400: the body as a whole is wrong.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404: the named thing does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409: the thing's state forbids this.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 409: the thing to create exists already.
    pub fn already_exists(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "already_exists", message)
    }

    /// 502: a node the API relies on did not answer.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "bad_gateway", message)
    }

    /// 500: a stored record cannot be read.
    pub fn corrupt(what: impl std::fmt::Display, reason: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "corrupt_record",
            format!("the stored record of {what} cannot be read: {reason}"),
        )
    }

    /// 400 for settings that were refused: the first field at fault, and
    /// every problem in the message. `prefix` is the object they are in
    /// (`autoscaling_settings.`), or empty.
    pub fn settings(e: &InvalidSettings, prefix: &str) -> Self {
        let field = e.fields().next().map(|f| format!("{prefix}{f}"));
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_field",
            message: e.to_string(),
            field,
        }
    }

    /// 400 for a refused deployment spec: the first field path at fault,
    /// and every problem in the message.
    pub fn spec(e: &InvalidSpec) -> Self {
        let field = e
            .fields()
            .next()
            .filter(|f| !f.is_empty())
            .map(str::to_owned);
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_spec",
            message: e.to_string(),
            field,
        }
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), code = self.code, message = %self.message, "api error");
        }
        let body = serde_json::json!({
            "error": { "code": self.code, "message": self.message, "field": self.field }
        });
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<ClientError> for HttpError {
    fn from(e: ClientError) -> Self {
        let status = match e {
            ClientError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_GATEWAY,
        };
        Self::new(status, "store_unavailable", format!("store: {e}"))
    }
}

impl From<AuthError> for HttpError {
    fn from(e: AuthError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
        Self::new(status, e.code(), e.to_string())
    }
}

impl From<KeyStoreError> for HttpError {
    fn from(e: KeyStoreError) -> Self {
        match e {
            KeyStoreError::Store(e) => e.into(),
            KeyStoreError::NotFound(_) => Self::not_found(e.to_string()),
            KeyStoreError::InvalidName(_) => Self::invalid("name", e.to_string()),
            KeyStoreError::NoScopes => Self::invalid("scopes", e.to_string()),
            KeyStoreError::Contended(_) => Self::conflict(e.to_string()),
            other => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "key_store",
                other.to_string(),
            ),
        }
    }
}
