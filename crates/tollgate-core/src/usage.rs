//! Metering vocabulary: the [`UsageRecord`] written for every metered request.

use std::sync::Arc;

/// One metered inference request.
#[derive(Debug, Clone)]
pub struct UsageRecord {
    pub ts: i64,
    pub request_id: Option<Arc<str>>,
    pub tenant_id: Arc<str>,
    pub api_key_id: Option<Arc<str>>,
    pub user_id: Option<Arc<str>>,
    pub subscription_id: Option<Arc<str>>,
    pub end_user: Option<Arc<str>>,
    pub model: Arc<str>,
    pub route: &'static str,
    /// The HTTP status the client received.
    pub status: u16,
    /// `ok`, `client_closed`, `rate_limited`, `quota_exceeded`, `upstream_error`, ...
    pub outcome: &'static str,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub latency_ms: u64,
}

impl UsageRecord {
    /// Whether the request counts against request quotas (answered without an error status).
    pub fn counts(&self) -> bool {
        self.status < 400
    }
}
