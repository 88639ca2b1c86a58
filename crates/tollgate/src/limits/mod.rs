//! Rate limits and quotas (SPEC §7): the engine is `tollgate-limits`; this module connects it to
//! the gateway — a caller's scopes from its [`Principal`], a [`Refusal`] as the client's
//! [`ApiError`] — and holds the per-request [`meter`].

use std::sync::Arc;

use crate::auth::{CredentialType, Principal};
use crate::error::{ApiError, ErrorCode};

pub mod meter;

pub use meter::{Meter, admit};
pub use tollgate_limits::{
    Check, CheckState, DEFAULT_TENANT_REQUESTS_PER_MINUTE, DEFAULT_TENANT_TOKENS_PER_MINUTE,
    Decider, Decision, Dim, LEASE_IDLE_MS, LimitSet, Limits, LimitsConfig, MAX_UNITS, PlanLimits,
    RateHeaders, Refusal, Reservation, ScopeKind, ScopeRef, Scopes, gcra,
};

/// The scopes a caller's requests are limited in: its API key (with the key's own limits), its
/// user, its subscription (with the plan's limits), its tenant.
pub fn scopes(p: &Principal) -> Scopes<'_> {
    let key = match (&p.credential_type, &p.credential_id) {
        (CredentialType::ApiKey, Some(key)) => Some((
            key,
            p.rate_limit
                .as_ref()
                .map(LimitSet::from)
                .unwrap_or_default(),
        )),
        _ => None,
    };
    let subscription = match (&p.subscription_id, &p.plan_limits) {
        (Some(sub), Some(plan)) => Some((sub, **plan)),
        _ => None,
    };
    Scopes {
        tenant: &p.tenant_id,
        key,
        user: p.user_id.as_ref(),
        subscription,
    }
}

/// Every limit that applies to this principal's request of estimated cost `estimate`.
pub fn checks_for(limits: &Limits, p: &Principal, estimate: u64) -> Vec<Check> {
    limits.checks(&scopes(p), estimate)
}

/// The client's error for a refusal: `429 RATE_LIMITED` / `QUOTA_EXCEEDED` with `Retry-After`
/// and the rate-limit headers; a request too large for a per-minute limit ever to admit is
/// `422 VALIDATION_FAILED` (retrying can never help, so it is not a 429: clients retry those),
/// too large for a token quota `429 QUOTA_EXCEEDED` (with `x-should-retry: false`, and
/// `Retry-After` saying when the period resets); the store's quota counters unavailable `503`.
pub fn refusal_error(r: Refusal) -> ApiError {
    let mut r = match r {
        Refusal::Store(e) => return e.into(),
        other => other,
    };
    let code = match &r {
        Refusal::RateLimited { .. } | Refusal::Contended => ErrorCode::RateLimited,
        Refusal::QuotaExceeded { .. } => ErrorCode::QuotaExceeded,
        Refusal::TooLarge { check, .. } if check.dim.is_quota() => ErrorCode::QuotaExceeded,
        Refusal::TooLarge { .. } => ErrorCode::ValidationFailed,
        Refusal::QuotaUnavailable | Refusal::Store(_) => ErrorCode::Unavailable,
    };
    let mut err = ApiError::new(code, r.message());
    err.retry_after = r.retry_after();
    err.headers = r.take_headers().into_vec();
    err
}

/// Decides a request's checks: the reservation and headers, or the client's error.
pub async fn decide(
    limits: &Arc<Limits>,
    checks: Vec<Check>,
) -> Result<(Option<Reservation>, RateHeaders), ApiError> {
    limits.decide(checks).await.map_err(refusal_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tighten_takes_the_smaller_limit_and_ignores_zero() {
        let a = LimitSet {
            requests_per_minute: Some(10),
            tokens_per_minute: Some(0),
            ..Default::default()
        };
        let b = LimitSet {
            requests_per_minute: Some(5),
            requests_per_day: Some(100),
            ..Default::default()
        };
        let t = a.tighten(b);
        assert_eq!(t.requests_per_minute, Some(5));
        assert_eq!(t.tokens_per_minute, None);
        assert_eq!(t.requests_per_day, Some(100));
    }

    fn principal(plan: Option<PlanLimits>, end_user: Option<&str>) -> Principal {
        let hub = Arc::new(crate::auth::revocation::RevocationHub::default());
        Principal {
            tenant_id: "ten_1".into(),
            user_id: None,
            subscription_id: Some("66ec1726e728c1405e5ebca2".into()),
            credential_type: CredentialType::AppJwt,
            credential_id: Some("cred_1".into()),
            permissions: crate::auth::PermSet::EMPTY,
            platform_admin: false,
            rate_limit: None,
            plan_limits: plan.map(Arc::new),
            end_user: end_user.map(Into::into),
            allowed_models: None,
            binding: None,
            web_origins: None,
            live: hub.register(&[]),
        }
    }

    async fn limits(cfg: crate::config::Config) -> (Arc<Limits>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = crate::store::Store::connect(&url).await.unwrap();
        let mut registry = prometheus_client::registry::Registry::default();
        let l = Limits::new(&cfg.limits, None, store, &mut registry).unwrap();
        (Arc::new(l), dir)
    }

    /// Per-subscription limits come from the plan the principal carries (the subscriptions
    /// verifiers fill `plan_limits`); they apply to every credential of the subscription.
    #[tokio::test]
    async fn plan_limits_apply_per_subscription() {
        let (l, _dir) = limits(crate::config::Config::default()).await;
        let plan = PlanLimits {
            requests_per_minute: Some(3),
            tokens_per_minute: Some(10_000),
            concurrent_requests: Some(5),
            requests_per_day: Some(2),
            tokens_per_month: Some(1_000_000),
        };
        let p = principal(Some(plan), Some("end-user-7"));
        let checks = checks_for(&l, &p, 100);
        // App JWTs have no key scope; no user; the subscription's five limits; the tenant's
        // built-in per-minute ceilings.
        assert_eq!(checks.len(), 7);
        let (sub, tenant): (Vec<_>, Vec<_>) = checks
            .iter()
            .partition(|c| c.scope.kind == ScopeKind::Subscription);
        assert_eq!(sub.len(), 5);
        assert!(
            sub.iter()
                .all(|c| c.scope.to_string() == "s:66ec1726e728c1405e5ebca2")
        );
        assert_eq!(
            tenant
                .iter()
                .map(|c| (c.scope.kind, c.dim, c.limit))
                .collect::<Vec<_>>(),
            [
                (
                    ScopeKind::Tenant,
                    Dim::Requests,
                    DEFAULT_TENANT_REQUESTS_PER_MINUTE
                ),
                (
                    ScopeKind::Tenant,
                    Dim::Tokens,
                    DEFAULT_TENANT_TOKENS_PER_MINUTE
                )
            ]
        );
        let tokens = sub.iter().find(|c| c.dim == Dim::Tokens).unwrap();
        assert_eq!(tokens.cost, 100);
        // Two requests a day, whichever credential of the subscription sends them.
        let (r1, h) = decide(&l, checks_for(&l, &p, 100)).await.unwrap();
        assert!(!h.is_empty());
        let other = principal(Some(plan), None);
        let (r2, _) = decide(&l, checks_for(&l, &other, 100)).await.unwrap();
        let err = decide(&l, checks_for(&l, &p, 100)).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::QuotaExceeded);
        assert!(err.message.contains("subscription"), "{}", err.message);
        // A failed request is refunded at settlement.
        l.settle(r2.unwrap(), false, Some(0));
        l.settle(r1.unwrap(), true, Some(40));
        assert!(decide(&l, checks_for(&l, &p, 100)).await.is_ok());
        // Without a plan, only the tenant's ceilings apply; an explicit 0 removes them.
        assert_eq!(checks_for(&l, &principal(None, None), 100).len(), 2);
        let mut cfg = crate::config::Config::default();
        cfg.limits.tenant.requests_per_minute = Some(0);
        cfg.limits.tenant.tokens_per_minute = Some(0);
        let (l, _dir) = limits(cfg).await;
        assert!(checks_for(&l, &principal(None, None), 100).is_empty());
    }

    #[test]
    fn the_end_user_comes_from_the_token_then_the_header_then_the_body() {
        let body = serde_json::json!({"user": "from-body"});
        let app_jwt = principal(None, Some("jwt-sub"));
        assert_eq!(
            meter::end_user(&app_jwt, Some("hdr"), &body).as_deref(),
            Some("jwt-sub")
        );
        // For app JWTs the header is ignored.
        let no_sub = principal(None, None);
        assert_eq!(
            meter::end_user(&no_sub, Some("hdr"), &body).as_deref(),
            Some("from-body")
        );
        let mut key = principal(None, None);
        key.credential_type = CredentialType::ApiKey;
        assert_eq!(
            meter::end_user(&key, Some("hdr"), &body).as_deref(),
            Some("hdr")
        );
        assert_eq!(
            meter::end_user(&key, None, &serde_json::json!({})).as_deref(),
            None
        );
    }

    #[test]
    fn plan_limits_parse_from_the_plan_json() {
        let p: PlanLimits = serde_json::from_str(
            r#"{"requests_per_minute": 60, "tokens_per_minute": 1000, "concurrent_requests": 2,
                "requests_per_day": 10, "tokens_per_month": 100000}"#,
        )
        .unwrap();
        assert_eq!(p.concurrent_requests, Some(2));
        assert_eq!(p.dims().iter().filter(|(_, v)| v.is_some()).count(), 5);
    }
}
