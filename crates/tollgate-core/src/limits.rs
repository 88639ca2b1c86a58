//! The limits vocabulary (SPEC §7): a scope's [`LimitSet`], what a limit counts ([`Dim`]), whose
//! limit it is ([`ScopeRef`]), one [`Check`] of a request and its state after a decision, and the
//! pure arithmetic of [`gcra`]. The limiters themselves (local and Redis) live in the binary crate.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub mod gcra;

/// The tenant ceilings for requests and tokens per minute when `[limits.tenant]` (or the tenant's
/// own table) sets none: every tenant has a per-minute limit of each kind, so every inference
/// response can carry the rate-limit headers (SPEC §7). An explicit `0` removes a ceiling.
pub const DEFAULT_TENANT_REQUESTS_PER_MINUTE: u64 = 10_000_000;
pub const DEFAULT_TENANT_TOKENS_PER_MINUTE: u64 = 10_000_000_000;

/// The largest limit or cost a decision works with (2^53 - 1): larger configured limits count as
/// this (in effect unlimited). Every value then fits an `i64` with room to add, and is exact in
/// the `f64` arithmetic of GCRA and of the Redis script (Lua numbers are doubles).
pub const MAX_UNITS: u64 = (1 << 53) - 1;

/// A set of limits for one scope. Absent or 0 = unlimited. The same shape serves a plan's
/// `limits` (SPEC §4.2), a key's `rate_limit`, and the `[limits.*]` configuration tables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSet {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrent_requests: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_day: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_month: Option<u64>,
}

/// A plan's limits, carried by the principal of a subscription credential (filled by the
/// subscriptions verifiers; `None` = no plan).
pub type PlanLimits = LimitSet;

fn tighter(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a.filter(|v| *v > 0), b.filter(|v| *v > 0)) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

impl LimitSet {
    /// Field by field, the tighter of the two.
    pub fn tighten(self, o: LimitSet) -> LimitSet {
        LimitSet {
            requests_per_minute: tighter(self.requests_per_minute, o.requests_per_minute),
            tokens_per_minute: tighter(self.tokens_per_minute, o.tokens_per_minute),
            concurrent_requests: tighter(self.concurrent_requests, o.concurrent_requests),
            requests_per_day: tighter(self.requests_per_day, o.requests_per_day),
            tokens_per_month: tighter(self.tokens_per_month, o.tokens_per_month),
        }
    }

    /// No limit set.
    pub fn is_unlimited(&self) -> bool {
        self.dims().iter().all(|(_, l)| l.is_none_or(|v| v == 0))
    }

    pub fn dims(&self) -> [(Dim, Option<u64>); 5] {
        [
            (Dim::Requests, self.requests_per_minute),
            (Dim::Tokens, self.tokens_per_minute),
            (Dim::Concurrent, self.concurrent_requests),
            (Dim::RequestsDay, self.requests_per_day),
            (Dim::TokensMonth, self.tokens_per_month),
        ]
    }
}

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Dim {
    Requests = 0,
    Tokens = 1,
    RequestsDay = 2,
    TokensMonth = 3,
    Concurrent = 4,
}

impl Dim {
    pub fn is_quota(self) -> bool {
        matches!(self, Dim::RequestsDay | Dim::TokensMonth)
    }
    pub fn period(self) -> gcra::Period {
        match self {
            Dim::TokensMonth => gcra::Period::Month,
            _ => gcra::Period::Day,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Dim::Requests => "rpm",
            Dim::Tokens => "tpm",
            Dim::RequestsDay => "rpd",
            Dim::TokensMonth => "tpmo",
            Dim::Concurrent => "conc",
        }
    }
    /// "requests per minute", ... for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            Dim::Requests => "requests per minute",
            Dim::Tokens => "tokens per minute",
            Dim::RequestsDay => "requests per day",
            Dim::TokensMonth => "tokens per month",
            Dim::Concurrent => "concurrent requests",
        }
    }
}

/// Whose limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScopeKind {
    Key,
    User,
    Subscription,
    Tenant,
}

impl ScopeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeKind::Key => "API key",
            ScopeKind::User => "user",
            ScopeKind::Subscription => "subscription",
            ScopeKind::Tenant => "tenant",
        }
    }
}

/// A scope; also the key of its counters (cloning it costs two reference counts, no allocation).
/// Displayed as its globally unique name: `k:<key>`, `u:<tenant>:<user>`, `s:<sub>`, `t:<tenant>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScopeRef {
    pub kind: ScopeKind,
    pub tenant_id: Arc<str>,
    pub id: Arc<str>,
}

impl std::fmt::Display for ScopeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            ScopeKind::Key => write!(f, "k:{}", self.id),
            ScopeKind::User => write!(f, "u:{}:{}", self.tenant_id, self.id),
            ScopeKind::Subscription => write!(f, "s:{}", self.id),
            ScopeKind::Tenant => write!(f, "t:{}", self.id),
        }
    }
}

/// One limit to check for one request.
#[derive(Debug, Clone)]
pub struct Check {
    pub scope: ScopeRef,
    pub dim: Dim,
    pub limit: u64,
    /// Units this request reserves (1, or the token estimate).
    pub cost: u64,
}

/// The state of one check after a decision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckState {
    pub remaining: u64,
    pub reset_ms: u64,
    /// For quotas: the start of the period the units were counted in.
    pub period_start: i64,
}
