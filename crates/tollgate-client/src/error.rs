//! Typed errors: what the gateway said (its `code`, `param`, `message`, the HTTP status and the
//! `x-request-id`), or what went wrong on the way.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// An error from a callback the caller supplies (`get_jwt`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything a call can fail with.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The gateway refused or failed the request (an error response, or an SSE `error` event that
    /// ended a stream).
    Api(Box<ApiError>),
    /// The gateway could not be reached, or the connection broke.
    Transport(reqwest::Error),
    /// The gateway's answer is not what the API promises (not JSON, missing fields).
    Decode {
        message: String,
        request_id: Option<String>,
    },
    /// The `get_jwt` callback failed.
    Token(BoxError),
    /// The OAuth authorization server refused (an RFC 6749 error), or the authorization flow
    /// failed (state mismatch, the user denied access, a timeout).
    OAuth(OAuthError),
    /// Invalid input on the client side: a bad base URL, header value or key.
    Config(String),
    /// An operation finished without a result (`failed` or `cancelled`); `error` is its error.
    Operation {
        id: String,
        status: String,
        error: Option<Box<ApiError>>,
    },
    /// Waiting for something took longer than allowed.
    Timeout(String),
}

impl Error {
    /// The gateway's error, if this is one.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            Error::Api(e) => Some(e),
            Error::Operation { error, .. } => error.as_deref(),
            _ => None,
        }
    }

    /// The gateway's error code, if this is an API error.
    pub fn code(&self) -> Option<Code> {
        self.api().map(ApiError::code)
    }

    pub(crate) fn decode(message: impl Into<String>, request_id: Option<String>) -> Self {
        Error::Decode {
            message: message.into(),
            request_id,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Api(e) => e.fmt(f),
            Error::Transport(e) => write!(f, "transport error: {e}"),
            Error::Decode {
                message,
                request_id,
            } => {
                write!(f, "unexpected response: {message}")?;
                if let Some(id) = request_id {
                    write!(f, " (request {id})")?;
                }
                Ok(())
            }
            Error::Token(e) => write!(f, "get_jwt failed: {e}"),
            Error::OAuth(e) => e.fmt(f),
            Error::Config(m) => write!(f, "invalid client configuration: {m}"),
            Error::Operation { id, status, error } => {
                write!(f, "operation {id} {status}")?;
                if let Some(e) = error {
                    write!(f, ": {e}")?;
                }
                Ok(())
            }
            Error::Timeout(m) => write!(f, "timed out: {m}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Transport(e) => Some(e),
            Error::Token(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}

impl From<ApiError> for Error {
    fn from(e: ApiError) -> Self {
        Error::Api(Box::new(e))
    }
}

impl From<reqwest::Error> for Error {
    fn from(e: reqwest::Error) -> Self {
        Error::Transport(e)
    }
}

/// The gateway's error codes (SPEC §3); `Other` keeps codes this version does not know.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Code {
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
    Conflict,
    PayloadTooLarge,
    ValidationFailed,
    RateLimited,
    QuotaExceeded,
    UpstreamError,
    Unavailable,
    UpstreamTimeout,
    Other(String),
}

const CODES: &[(&str, Code, u16)] = &[
    ("INVALID_REQUEST", Code::InvalidRequest, 400),
    ("AUTH_AMBIGUOUS", Code::AuthAmbiguous, 400),
    ("AUTH_MISSING", Code::AuthMissing, 401),
    ("AUTH_INVALID", Code::AuthInvalid, 401),
    ("AUTH_TOKEN_EXPIRED", Code::AuthTokenExpired, 401),
    ("AUTH_REVOKED", Code::AuthRevoked, 401),
    ("AUTH_REPLAYED", Code::AuthReplayed, 401),
    ("PERMISSION_DENIED", Code::PermissionDenied, 403),
    ("AUTH_BINDING_MISMATCH", Code::AuthBindingMismatch, 403),
    ("SUBSCRIPTION_INACTIVE", Code::SubscriptionInactive, 403),
    ("NOT_FOUND", Code::NotFound, 404),
    ("CONFLICT", Code::Conflict, 409),
    ("PAYLOAD_TOO_LARGE", Code::PayloadTooLarge, 413),
    ("VALIDATION_FAILED", Code::ValidationFailed, 422),
    ("RATE_LIMITED", Code::RateLimited, 429),
    ("QUOTA_EXCEEDED", Code::QuotaExceeded, 429),
    ("UPSTREAM_ERROR", Code::UpstreamError, 502),
    ("UNAVAILABLE", Code::Unavailable, 503),
    ("UPSTREAM_TIMEOUT", Code::UpstreamTimeout, 504),
];

impl Code {
    pub fn parse(s: &str) -> Code {
        CODES
            .iter()
            .find(|(name, _, _)| *name == s)
            .map(|(_, c, _)| c.clone())
            .unwrap_or_else(|| Code::Other(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        match self {
            Code::Other(s) => s,
            known => CODES
                .iter()
                .find(|(_, c, _)| c == known)
                .map(|(name, _, _)| *name)
                .unwrap_or_default(),
        }
    }

    /// The HTTP status the gateway uses for this code (for errors that arrive inside a stream).
    pub fn status(&self) -> Option<u16> {
        CODES.iter().find(|(_, c, _)| c == self).map(|(_, _, s)| *s)
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error the gateway returned, in its OpenAI-shaped body plus the response's metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status (for an error inside a stream: the status the gateway uses for the code).
    pub status: u16,
    /// `error.code`, e.g. `AUTH_TOKEN_EXPIRED` (empty if the body had none).
    pub code: String,
    /// `error.type`, e.g. `authentication_error`.
    pub kind: String,
    /// `error.message`.
    pub message: String,
    /// `error.param`: the field or JSON Pointer the error is about.
    pub param: Option<String>,
    /// The response's `x-request-id`.
    pub request_id: Option<String>,
    /// `Retry-After`, when the gateway sent one.
    pub retry_after: Option<Duration>,
    /// `x-should-retry`, when the gateway sent one.
    pub should_retry: Option<bool>,
    /// `true` when the error arrived as an SSE `error` event after the stream had started.
    pub in_stream: bool,
}

impl ApiError {
    pub fn code(&self) -> Code {
        Code::parse(&self.code)
    }

    /// Builds the error from a response's status, headers and body.
    pub(crate) fn from_parts(
        status: u16,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
    ) -> ApiError {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let mut e = Self::from_body(body).unwrap_or_else(|| ApiError {
            status,
            code: String::new(),
            kind: String::new(),
            message: format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ),
            param: None,
            request_id: None,
            retry_after: None,
            should_retry: None,
            in_stream: false,
        });
        e.status = status;
        e.request_id = header("x-request-id");
        e.retry_after = header("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        e.should_retry = header("x-should-retry").map(|v| v.trim() == "true");
        e
    }

    /// Parses `{"error": {...}}`; `None` if the body is not in that shape.
    pub(crate) fn from_body(body: &[u8]) -> Option<ApiError> {
        #[derive(Deserialize)]
        struct Envelope {
            error: Inner,
        }
        #[derive(Deserialize)]
        struct Inner {
            #[serde(default)]
            message: Option<String>,
            #[serde(default, rename = "type")]
            kind: Option<String>,
            #[serde(default)]
            code: Option<serde_json::Value>,
            #[serde(default)]
            param: Option<String>,
        }
        let env: Envelope = serde_json::from_slice(body).ok()?;
        let code = match env.error.code {
            Some(serde_json::Value::String(s)) => s,
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => String::new(),
        };
        let status = Code::parse(&code).status().unwrap_or(0);
        Some(ApiError {
            status,
            code,
            kind: env.error.kind.unwrap_or_default(),
            message: env.error.message.unwrap_or_default(),
            param: env.error.param,
            request_id: None,
            retry_after: None,
            should_retry: None,
            in_stream: false,
        })
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)?;
        if let Some(p) = &self.param {
            write!(f, " (param {p})")?;
        }
        if let Some(id) = &self.request_id {
            write!(f, " [request {id}]")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

/// An OAuth error (RFC 6749 §5.2), or a failure of the authorization flow itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    /// `error`, e.g. `invalid_grant`; for local failures `state_mismatch`, `access_denied`, …
    pub error: String,
    pub description: Option<String>,
    /// The HTTP status, when the error came from the server.
    pub status: Option<u16>,
}

impl OAuthError {
    pub(crate) fn local(error: &str, description: impl Into<String>) -> Self {
        OAuthError {
            error: error.to_string(),
            description: Some(description.into()),
            status: None,
        }
    }
}

impl fmt::Display for OAuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OAuth error {}", self.error)?;
        if let Some(d) = &self.description {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for OAuthError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for (name, code, status) in CODES {
            assert_eq!(Code::parse(name), *code);
            assert_eq!(code.as_str(), *name);
            assert_eq!(code.status(), Some(*status));
        }
        assert_eq!(Code::parse("NEW_CODE"), Code::Other("NEW_CODE".into()));
        assert_eq!(Code::Other("NEW_CODE".into()).as_str(), "NEW_CODE");
    }

    #[test]
    fn parses_the_gateway_shape_and_headers() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("x-request-id", "req-1".parse().unwrap());
        h.insert("retry-after", "7".parse().unwrap());
        h.insert("x-should-retry", "false".parse().unwrap());
        let body = br#"{"error": {"message": "Too many", "type": "rate_limit_error", "code": "RATE_LIMITED", "param": null}}"#;
        let e = ApiError::from_parts(429, &h, body);
        assert_eq!(e.code(), Code::RateLimited);
        assert_eq!(e.request_id.as_deref(), Some("req-1"));
        assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(e.should_retry, Some(false));
        assert_eq!(e.kind, "rate_limit_error");
        let e = ApiError::from_parts(502, &h, b"<html>");
        assert_eq!(e.code, "");
        assert!(e.message.contains("502"));
    }
}
