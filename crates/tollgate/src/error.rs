//! The one HTTP error type. Every failure a client can see is an [`ApiError`]; it maps to a status,
//! an OpenAI-shaped JSON body with the spec's `code`, and (for 401/403) an RFC 6750 challenge.
//! `IntoResponse` has no side effects: logging happens in the request middleware.
//!
//! Retry hints: `429 RATE_LIMITED` carries `Retry-After` only (retrying after it succeeds);
//! `429 QUOTA_EXCEEDED` carries `x-should-retry: false` as well, which the official OpenAI SDKs
//! obey before `Retry-After` (which stays informative: when the period resets). A `413` carries
//! `Connection: close`: its body was not read, so the connection cannot carry another request
//! (the server closes it in stages, see `server.rs`).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The spec's error codes (SPEC §3). Low-cardinality: also used as a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidRequest,
    AuthAmbiguous,
    AuthMissing,
    AuthInvalid,
    AuthTokenExpired,
    AuthRevoked,
    AuthReplayed,
    PermissionDenied,
    AuthBindingMismatch,
    SubscriptionInactive,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PayloadTooLarge,
    ValidationFailed,
    RateLimited,
    QuotaExceeded,
    UpstreamError,
    Unavailable,
    UpstreamTimeout,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "INVALID_REQUEST",
            Self::AuthAmbiguous => "AUTH_AMBIGUOUS",
            Self::AuthMissing => "AUTH_MISSING",
            Self::AuthInvalid => "AUTH_INVALID",
            Self::AuthTokenExpired => "AUTH_TOKEN_EXPIRED",
            Self::AuthRevoked => "AUTH_REVOKED",
            Self::AuthReplayed => "AUTH_REPLAYED",
            Self::PermissionDenied => "PERMISSION_DENIED",
            Self::AuthBindingMismatch => "AUTH_BINDING_MISMATCH",
            Self::SubscriptionInactive => "SUBSCRIPTION_INACTIVE",
            Self::NotFound => "NOT_FOUND",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::Conflict => "CONFLICT",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::ValidationFailed => "VALIDATION_FAILED",
            Self::RateLimited => "RATE_LIMITED",
            Self::QuotaExceeded => "QUOTA_EXCEEDED",
            Self::UpstreamError => "UPSTREAM_ERROR",
            Self::Unavailable => "UNAVAILABLE",
            Self::UpstreamTimeout => "UPSTREAM_TIMEOUT",
            Self::Internal => "INTERNAL_ERROR",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidRequest | Self::AuthAmbiguous => StatusCode::BAD_REQUEST,
            Self::AuthMissing
            | Self::AuthInvalid
            | Self::AuthTokenExpired
            | Self::AuthRevoked
            | Self::AuthReplayed => StatusCode::UNAUTHORIZED,
            Self::PermissionDenied | Self::AuthBindingMismatch | Self::SubscriptionInactive => {
                StatusCode::FORBIDDEN
            }
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::ValidationFailed => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RateLimited | Self::QuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
            Self::UpstreamError => StatusCode::BAD_GATEWAY,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn error_type(self) -> &'static str {
        match self {
            Self::QuotaExceeded => "insufficient_quota",
            Self::RateLimited => "rate_limit_error",
            _ => match self.status().as_u16() {
                401 => "authentication_error",
                403 => "permission_error",
                400..=499 => "invalid_request_error",
                _ => "api_error",
            },
        }
    }
}

/// An error answered to the client. The message is written for the client: it never carries SQL,
/// upstream secrets or stack traces (those go to the log through [`ApiError::internal`]).
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub param: Option<String>,
    /// Seconds for `Retry-After` (429 and 503).
    pub retry_after: Option<u64>,
    /// Extra headers (rate-limit state on 429s).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            param: None,
            retry_after: None,
            headers: Vec::new(),
        }
    }
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }
    pub fn validation(param: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ValidationFailed, message).with_param(param)
    }
    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("No such {what}"))
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }
    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::PermissionDenied, message)
    }
    pub fn auth_missing() -> Self {
        Self::new(ErrorCode::AuthMissing, "No credential was sent")
    }
    pub fn auth_invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::AuthInvalid, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }
    /// An unexpected failure: the cause is logged here, the client sees a generic message.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(ErrorCode::Internal, "Internal error")
    }

    fn challenge(&self) -> Option<String> {
        let realm = "Bearer realm=\"tollgate\"";
        let describe = |error: &str| {
            let desc = self.message.replace(['"', '\\'], "'");
            format!("{realm}, error=\"{error}\", error_description=\"{desc}\"")
        };
        match self.code {
            ErrorCode::AuthMissing => Some(realm.to_string()),
            c if c.status() == StatusCode::UNAUTHORIZED => Some(describe("invalid_token")),
            ErrorCode::PermissionDenied => Some(describe("insufficient_scope")),
            _ => None,
        }
    }

    /// The JSON body in the OpenAI error shape.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.code.error_type(),
            "code": self.code.as_str(),
            "param": self.param,
        }})
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for ApiError {}

/// `x-should-retry`: read by the official OpenAI SDKs before `Retry-After`.
pub const SHOULD_RETRY: header::HeaderName = header::HeaderName::from_static("x-should-retry");

/// Marker placed in response extensions so the access log and metrics can read the error code.
#[derive(Debug, Clone, Copy)]
pub struct ErrorMarker(pub ErrorCode);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.code.status(), axum::Json(self.body())).into_response();
        let headers = res.headers_mut();
        if let Some(challenge) = self.challenge()
            && let Ok(v) = HeaderValue::from_str(&challenge)
        {
            headers.insert(header::WWW_AUTHENTICATE, v);
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        match self.code {
            ErrorCode::QuotaExceeded => {
                headers.insert(SHOULD_RETRY, HeaderValue::from_static("false"));
            }
            ErrorCode::PayloadTooLarge => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        for (k, v) in self.headers {
            headers.insert(k, v);
        }
        res.extensions_mut().insert(ErrorMarker(self.code));
        res
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Store errors become `409` for unique violations, `503` when the store is unreachable, else `500`.
/// A body that misses its app JWT's binding: `403 AUTH_BINDING_MISMATCH` naming the pointer.
impl From<tollgate_core::binding::BindingMismatch> for ApiError {
    fn from(m: tollgate_core::binding::BindingMismatch) -> Self {
        ApiError::new(ErrorCode::AuthBindingMismatch, m.to_string()).with_param(m.pointer)
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match e {
            StoreError::Conflict(what) => ApiError::conflict(what),
            StoreError::NotFound(what) => ApiError::not_found(what),
            StoreError::Unavailable(cause) => {
                tracing::error!(error = %cause, "store unavailable");
                let mut err = ApiError::unavailable("The store is unavailable; retry shortly");
                err.retry_after = Some(1);
                err
            }
            StoreError::Other(cause) => ApiError::internal(cause),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The official SDKs read `x-should-retry` before `Retry-After`: a spent quota must say
    /// `false` (the `openai` Node SDK would otherwise sleep until the period resets), a rate
    /// limit must not (it is worth retrying after `Retry-After`).
    #[test]
    fn retry_hints() {
        let mut quota = ApiError::new(ErrorCode::QuotaExceeded, "spent");
        quota.retry_after = Some(54_000);
        let res = quota.into_response();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()[SHOULD_RETRY], "false");
        assert_eq!(res.headers()[header::RETRY_AFTER], "54000");
        let mut rate = ApiError::new(ErrorCode::RateLimited, "slow down");
        rate.retry_after = Some(3);
        let res = rate.into_response();
        assert!(res.headers().get(SHOULD_RETRY).is_none());
        assert_eq!(res.headers()[header::RETRY_AFTER], "3");
        // A 413's body was not read: the connection cannot carry another request.
        let res = ApiError::new(ErrorCode::PayloadTooLarge, "big").into_response();
        assert_eq!(res.headers()[header::CONNECTION], "close");
        let res = ApiError::validation("n", "bad").into_response();
        assert!(res.headers().get(header::CONNECTION).is_none());
    }
}

#[cfg(test)]
mod binding_tests {
    use serde_json::{Value, json};
    use sha2::{Digest, Sha256};
    use tollgate_core::binding::{Binding, value_sha256};

    use super::{ApiError, ErrorCode};

    /// The binding check as handlers see it (`?` into an `ApiError`).
    fn check(b: &Binding, body: &Value) -> Result<(), ApiError> {
        Ok(b.check(body)?)
    }

    #[test]
    fn exact_and_hashed_bindings() {
        let body = json!({"model": "gpt-4o-mini", "max_tokens": 256, "sku_id": "A-123", "image": "aGVsbG8="});
        let b = Binding {
            exact: vec![
                ("/model".into(), json!("gpt-4o-mini")),
                ("/max_tokens".into(), json!(256)),
            ],
            sha256: vec![("/image".into(), value_sha256(&json!("aGVsbG8=")))],
        };
        assert!(check(&b, &body).is_ok());
        let mut other = body.clone();
        other["max_tokens"] = json!(4096);
        let e = check(&b, &other).unwrap_err();
        assert_eq!(e.code, ErrorCode::AuthBindingMismatch);
        assert_eq!(e.param.as_deref(), Some("/max_tokens"));
        let mut other = body.clone();
        other["image"] = json!("b3RoZXI=");
        assert_eq!(
            check(&b, &other).unwrap_err().param.as_deref(),
            Some("/image")
        );
        let missing = json!({"model": "gpt-4o-mini"});
        assert_eq!(
            check(&b, &missing).unwrap_err().param.as_deref(),
            Some("/max_tokens")
        );
        // Hash of a non-string value is over its compact JSON.
        assert_eq!(
            value_sha256(&json!({"a": 1})),
            hex::encode(Sha256::digest(b"{\"a\":1}"))
        );
    }
}
