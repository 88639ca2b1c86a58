//! Rate limits and quotas (SPEC §7).
//!
//! Scopes: the API key, the user (within a tenant), the subscription (its plan) and the tenant.
//! Dimensions: requests/min and tokens/min (GCRA, exact `Retry-After`), concurrent requests, and
//! the quotas requests/day and tokens/month. A request is checked against every limit of every
//! scope that applies, all-or-nothing, so the tightest one decides.
//!
//! * Admission ([`meter::admit`]) reserves: one request, the estimated tokens (prompt size +
//!   `max_tokens`), one concurrency slot, and the quota units. The body's numbers are
//!   range-checked first and all arithmetic saturates (limits and costs enter a decision at most
//!   [`MAX_UNITS`]); a request whose estimate alone exceeds a limit is refused outright (`422`
//!   for a per-minute limit, `QUOTA_EXCEEDED` for a quota), never told to retry.
//! * Settlement (when the [`meter::Meter`] drops: response sent, stream finished *or* cut by the
//!   client) releases the slot, reconciles tokens with the upstream's reported usage, and refunds
//!   the quota of a request that failed.
//!
//! Backends: with `redis_url`, every decision is one Lua script in Redis ([`redis`]), quota
//! counters seeded from the usage aggregates when Redis has none. Without it, or while Redis is
//! unreachable, the in-process [`local::LocalLimiter`], whose quotas are spent from leases on the
//! store's shared counters (`store::quotas`): the store is asked when an instance's lease runs
//! out, not per request, and unspent leases go back after [`LEASE_IDLE_MS`] without use and at
//! shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::auth::{CredentialType, Principal};
use crate::config::LimitsConfig;
use crate::error::{ApiError, ErrorCode};
use crate::store::Store;

pub mod headers;
pub mod local;
pub mod meter;
pub mod redis;

pub use headers::RateHeaders;
use local::{LocalLimiter, Outcome};

/// A quota lease untouched this long goes back to the store's counter (other instances may need
/// it).
pub const LEASE_IDLE_MS: i64 = 2000;
pub use meter::{Meter, admit};

pub use tollgate_core::limits::{
    Check, CheckState, DEFAULT_TENANT_REQUESTS_PER_MINUTE, DEFAULT_TENANT_TOKENS_PER_MINUTE, Dim,
    LimitSet, MAX_UNITS, PlanLimits, ScopeKind, ScopeRef, gcra,
};

/// The outcome of one admission.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The check that refused the request, if any (nothing was reserved then).
    pub denied: Option<usize>,
    pub retry_ms: f64,
    pub states: Vec<CheckState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Local,
    Redis,
}

/// What admission reserved; settled exactly once.
#[derive(Debug)]
pub struct Reservation {
    backend: Backend,
    checks: Vec<Check>,
    states: Vec<CheckState>,
    member: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub outcome: &'static str,
    pub backend: &'static str,
}

struct LimitMetrics {
    decisions: Family<DecisionLabels, Counter>,
    fallback: Gauge,
    redis_errors: Counter,
}

/// The limiter service (one per app).
pub struct Limits {
    cfg: LimitsConfig,
    store: Store,
    local: LocalLimiter,
    redis: Option<redis::RedisLimiter>,
    redis_ok: AtomicBool,
    metrics: LimitMetrics,
    instance: String,
    next: AtomicU64,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("mode", &self.mode())
            .finish_non_exhaustive()
    }
}

impl Limits {
    pub fn new(
        cfg: &crate::config::Config,
        store: Store,
        registry: &mut Registry,
    ) -> anyhow::Result<Self> {
        let l = &cfg.limits;
        let redis = match cfg.redis_url.as_ref().filter(|u| !u.is_empty()) {
            Some(url) => Some(redis::RedisLimiter::new(
                url.expose(),
                &l.redis_prefix,
                Duration::from_millis(l.redis_timeout_ms.max(10)),
                Duration::from_secs(l.concurrency_lease_seconds.max(1)),
            )?),
            None => None,
        };
        let metrics = LimitMetrics {
            decisions: Family::default(),
            fallback: Gauge::default(),
            redis_errors: Counter::default(),
        };
        registry.register(
            "limit_decisions",
            "Admission decisions by outcome (allowed, rate_limited, quota_exceeded) and backend",
            metrics.decisions.clone(),
        );
        registry.register(
            "limits_redis_fallback",
            "1 while Redis is configured but unreachable and the local limiter decides",
            metrics.fallback.clone(),
        );
        registry.register(
            "limits_redis_errors",
            "Failed Redis limiter calls",
            metrics.redis_errors.clone(),
        );
        Ok(Self {
            cfg: l.clone(),
            store,
            local: LocalLimiter::default(),
            redis,
            // Optimistic: the first failure switches to the fallback.
            redis_ok: AtomicBool::new(true),
            metrics,
            instance: crate::util::random_base62(10),
            next: AtomicU64::new(1),
        })
    }

    /// `local` (no Redis configured), `redis`, or `local-fallback` (Redis unreachable).
    pub fn mode(&self) -> &'static str {
        match (&self.redis, self.redis_ok.load(Ordering::Acquire)) {
            (None, _) => "local",
            (Some(_), true) => "redis",
            (Some(_), false) => "local-fallback",
        }
    }

    pub fn config(&self) -> &LimitsConfig {
        &self.cfg
    }

    /// Every limit that applies to this principal.
    pub fn checks_for(&self, p: &Principal, estimate: u64) -> Vec<Check> {
        let mut checks = Vec::new();
        let tenant = &p.tenant_id;
        let mut add = |kind: ScopeKind, id: &Arc<str>, set: LimitSet| {
            if set.is_unlimited() {
                return;
            }
            let scope = ScopeRef {
                kind,
                tenant_id: tenant.clone(),
                id: id.clone(),
            };
            for (dim, limit) in set.dims() {
                let Some(limit) = limit.filter(|l| *l > 0) else {
                    continue;
                };
                let cost = match dim {
                    Dim::Tokens | Dim::TokensMonth => estimate.min(MAX_UNITS),
                    _ => 1,
                };
                checks.push(Check {
                    scope: scope.clone(),
                    dim,
                    limit: limit.min(MAX_UNITS),
                    cost,
                });
            }
        };
        if p.credential_type == CredentialType::ApiKey
            && let Some(key) = &p.credential_id
        {
            let own = p
                .rate_limit
                .as_ref()
                .map(LimitSet::from)
                .unwrap_or_default();
            add(ScopeKind::Key, key, self.cfg.key.tighten(own));
        }
        if let Some(user) = &p.user_id {
            add(ScopeKind::User, user, self.cfg.user);
        }
        if let (Some(sub), Some(plan)) = (&p.subscription_id, &p.plan_limits) {
            add(ScopeKind::Subscription, sub, **plan);
        }
        let mut tenant_limits = self
            .cfg
            .tenants
            .get(&**tenant)
            .copied()
            .unwrap_or(self.cfg.tenant);
        tenant_limits.requests_per_minute = tenant_limits
            .requests_per_minute
            .or(Some(DEFAULT_TENANT_REQUESTS_PER_MINUTE));
        tenant_limits.tokens_per_minute = tenant_limits
            .tokens_per_minute
            .or(Some(DEFAULT_TENANT_TOKENS_PER_MINUTE));
        add(ScopeKind::Tenant, tenant, tenant_limits);
        checks
    }

    /// What the store recorded in quota check `c`'s current period: the seed of a Redis
    /// counter that does not exist (first use in the period, or Redis lost its data). Read
    /// when Redis asks for it, never cached, so a Redis restart forgets only what is not yet
    /// written (the usage writer's last `flush_ms`, and requests still in flight).
    async fn seed(&self, c: &Check, now_ms: i64) -> Result<i64, ApiError> {
        let (start, _) = c.dim.period().bounds(now_ms);
        let used = crate::store::read_retry(|| {
            crate::store::usage::quota_used(self.store.pool(), &c.scope, c.dim, start)
        })
        .await?;
        Ok(used)
    }

    /// The Redis decision, loading seeds for the quota counters Redis does not have.
    async fn decide_redis(
        &self,
        r: &redis::RedisLimiter,
        checks: &[Check],
        now_ms: i64,
        member: &str,
    ) -> Result<Result<Decision, String>, ApiError> {
        let mut seeds = vec![None; checks.len()];
        // Seeds are asked for once; a second time only if a counter expired in between (at
        // its period's end).
        for _ in 0..3 {
            match r.decide(checks, &seeds, member).await {
                Ok(redis::Answer::Decided(d)) => return Ok(Ok(d)),
                Ok(redis::Answer::NeedSeeds(need)) => {
                    for i in need {
                        if let Some(c) = checks.get(i) {
                            seeds[i] = Some(self.seed(c, now_ms).await?);
                        }
                    }
                }
                Err(e) => return Ok(Err(e)),
            }
        }
        Ok(Err("quota counters kept disappearing".into()))
    }

    /// The local decision, taking the quota leases it asks for from the store first.
    async fn decide_local(&self, checks: &[Check], now_ms: i64) -> Result<Decision, ApiError> {
        // Each round either decides or leases (or learns a quota is spent); more rounds happen
        // only when concurrent requests spend a fresh lease before this one gets to it.
        for _ in 0..8 {
            let needs = match self.local.decide(checks, now_ms) {
                Outcome::Decided(d) => return Ok(d),
                Outcome::Lease(needs) => needs,
            };
            for n in needs {
                let c = &checks[n.index];
                let pool = self.store.pool();
                let lease = crate::store::quotas::lease(
                    pool,
                    &c.scope.to_string(),
                    c.dim.as_str(),
                    n.period_start,
                    c.limit as i64,
                    n.need as i64,
                    || crate::store::usage::quota_used(pool, &c.scope, c.dim, n.period_start),
                )
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "could not lease quota from the store");
                    ApiError::new(
                        ErrorCode::Unavailable,
                        "Quota counters are unavailable; try again shortly",
                    )
                })?;
                self.local
                    .deposit(c, &n, lease.granted, lease.used, crate::util::now_ms());
                // Refused while this instance is giving units of this period back: they are
                // not spent, only on their way to the store; ask again once they are there.
                if lease.granted == 0 && self.local.is_returning(c, n.period_start) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        let mut err = ApiError::new(
            ErrorCode::RateLimited,
            "Too many concurrent requests are competing for this quota; retry in 1 s",
        );
        err.retry_after = Some(1);
        Err(err)
    }

    /// Gives quota leases back to (or charges overspending to) the store's counters: those idle
    /// for `idle_ms`, or all of them with 0.
    pub async fn return_leases(&self, idle_ms: i64) {
        let now = crate::util::now_ms();
        for (scope, dim, start, budget) in self.local.take_idle(now, idle_ms) {
            if let Err(e) = crate::store::quotas::adjust(
                self.store.pool(),
                &scope.to_string(),
                dim.as_str(),
                start,
                -budget,
            )
            .await
            {
                // Unspent units stay counted as used (the period can only end early, never
                // overshoot); an unpaid overspend is lost.
                tracing::warn!(error = %e, "could not give a quota lease back to the store");
            }
            self.local.returned(&scope, dim, start, budget);
        }
    }

    fn member(&self) -> String {
        format!(
            "{}:{}",
            self.instance,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn redis_failed(&self, what: &str, err: &str) {
        self.metrics.redis_errors.inc();
        if self.redis_ok.swap(false, Ordering::AcqRel) {
            tracing::warn!(error = %err, what, "Redis limiter unreachable; falling back to local limits");
            self.metrics.fallback.set(1);
        }
    }

    /// Decides a request: `Ok((reservation, headers))` or a 429 carrying the headers.
    pub async fn decide(
        &self,
        checks: Vec<Check>,
    ) -> Result<(Option<Reservation>, RateHeaders), ApiError> {
        if checks.is_empty() {
            return Ok((None, RateHeaders::default()));
        }
        let now_ms = crate::util::now_ms();
        let mut decided = None;
        if let Some(r) = &self.redis
            && self.redis_ok.load(Ordering::Acquire)
        {
            let member = self.member();
            match self.decide_redis(r, &checks, now_ms, &member).await? {
                Ok(d) => decided = Some((d, Backend::Redis, member)),
                Err(e) => self.redis_failed("decide", &e),
            }
        }
        let (decision, backend, member) = match decided {
            Some(d) => d,
            None => (
                self.decide_local(&checks, now_ms).await?,
                Backend::Local,
                String::new(),
            ),
        };
        let headers = RateHeaders::build(&checks, &decision.states);
        let backend_label = match backend {
            Backend::Local => "local",
            Backend::Redis => "redis",
        };
        match decision.denied {
            None => {
                self.metrics
                    .decisions
                    .get_or_create(&DecisionLabels {
                        outcome: "allowed",
                        backend: backend_label,
                    })
                    .inc();
                Ok((
                    Some(Reservation {
                        backend,
                        checks,
                        states: decision.states,
                        member,
                    }),
                    headers,
                ))
            }
            Some(i) => {
                // A request whose cost alone exceeds a limit can never be admitted, whenever it
                // is retried: it is told so (and not to retry), the per-minute case first.
                let never = checks
                    .iter()
                    .filter(|c| c.cost > c.limit)
                    .min_by_key(|c| c.dim.is_quota());
                if let Some(c) = never {
                    let err = self.never_fits(c, now_ms, headers);
                    self.metrics
                        .decisions
                        .get_or_create(&DecisionLabels {
                            outcome: "too_large",
                            backend: backend_label,
                        })
                        .inc();
                    return Err(err);
                }
                let c = &checks[i];
                let secs = gcra::retry_after_secs(decision.retry_ms);
                let mut err = if c.dim.is_quota() {
                    let resets = now_ms.saturating_add(decision.retry_ms as i64);
                    ApiError::new(
                        ErrorCode::QuotaExceeded,
                        format!(
                            "Quota exceeded: {} {} for this {}; it resets at {}",
                            c.limit,
                            c.dim.describe(),
                            c.scope.kind.as_str(),
                            crate::util::rfc3339(c.dim.period().bounds(resets - 1).1)
                        ),
                    )
                } else {
                    ApiError::new(
                        ErrorCode::RateLimited,
                        format!(
                            "Rate limit reached: {} {} for this {}; retry in {secs} s",
                            c.limit,
                            c.dim.describe(),
                            c.scope.kind.as_str()
                        ),
                    )
                };
                err.retry_after = Some(secs);
                err.headers = headers.into_vec();
                self.metrics
                    .decisions
                    .get_or_create(&DecisionLabels {
                        outcome: if c.dim.is_quota() {
                            "quota_exceeded"
                        } else {
                            "rate_limited"
                        },
                        backend: backend_label,
                    })
                    .inc();
                Err(err)
            }
        }
    }

    /// The refusal of a request whose token estimate alone is larger than limit `c`: for a
    /// per-minute limit `422 VALIDATION_FAILED` (retrying can never help, so it is not a 429:
    /// clients retry those), for a token quota `429 QUOTA_EXCEEDED` (with `x-should-retry:
    /// false`, and `Retry-After` saying when the period resets).
    fn never_fits(&self, c: &Check, now_ms: i64, headers: RateHeaders) -> ApiError {
        let mut err = if c.dim.is_quota() {
            let (_, end) = c.dim.period().bounds(now_ms);
            let mut err = ApiError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "This request's estimated {} tokens exceed the quota of {} {} for this {}; \
                     lower max_tokens (or the prompt)",
                    c.cost,
                    c.limit,
                    c.dim.describe(),
                    c.scope.kind.as_str()
                ),
            );
            err.retry_after = Some(gcra::retry_after_secs(
                end.saturating_sub(now_ms).max(0) as f64
            ));
            err
        } else {
            ApiError::new(
                ErrorCode::ValidationFailed,
                format!(
                    "This request's estimated {} tokens exceed the limit of {} {} for this {}, \
                     so it can never be admitted; lower max_tokens (or the prompt)",
                    c.cost,
                    c.limit,
                    c.dim.describe(),
                    c.scope.kind.as_str()
                ),
            )
        };
        err.headers = headers.into_vec();
        err
    }

    /// Settles a reservation. `ok`: the request counts against request quotas (it was answered
    /// successfully); `actual_tokens`: the real cost (`None` = keep the estimate).
    pub fn settle(self: &Arc<Self>, r: Reservation, ok: bool, actual_tokens: Option<u64>) {
        let deltas: Vec<i64> = r
            .checks
            .iter()
            .map(|c| match c.dim {
                Dim::Tokens | Dim::TokensMonth => actual_tokens.map_or(0, |a| {
                    // Both are at most `MAX_UNITS`-sized in practice; saturate all the same.
                    let a = i64::try_from(a.min(MAX_UNITS)).unwrap_or(i64::MAX);
                    let cost = i64::try_from(c.cost).unwrap_or(i64::MAX);
                    a.saturating_sub(cost)
                }),
                Dim::RequestsDay if !ok => -1,
                _ => 0,
            })
            .collect();
        match r.backend {
            Backend::Local => {
                self.local
                    .settle(&r.checks, &r.states, &deltas, crate::util::now_ms());
            }
            Backend::Redis => {
                let this = self.clone();
                tokio::spawn(async move {
                    if let Some(redis) = &this.redis
                        && let Err(e) = redis.settle(&r.checks, &r.states, &deltas, &r.member).await
                    {
                        // The concurrency lease expires by itself; a lost reconciliation only
                        // leaves the estimate in place.
                        this.metrics.redis_errors.inc();
                        tracing::warn!(error = %e, "could not settle a Redis reservation");
                    }
                });
            }
        }
    }

    /// Background upkeep: give idle quota leases back; prune idle local state; while on the
    /// fallback, probe Redis and switch back when it answers.
    pub async fn maintain(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_prune = std::time::Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            self.return_leases(LEASE_IDLE_MS).await;
            if let Some(r) = &self.redis
                && !self.redis_ok.load(Ordering::Acquire)
                && r.ping().await
            {
                tracing::info!("Redis limiter reachable again; leaving the local fallback");
                self.redis_ok.store(true, Ordering::Release);
                self.metrics.fallback.set(0);
            }
            if last_prune.elapsed() > Duration::from_secs(30) {
                last_prune = std::time::Instant::now();
                let now = crate::util::now_ms();
                self.local.prune(now);
                let month = gcra::Period::Month.bounds(now).0;
                // Counters of months before last (no current period starts that early).
                let before = month - 31 * gcra::DAY_MS;
                if let Err(e) = crate::store::quotas::prune(self.store.pool(), before).await {
                    tracing::warn!(error = %e, "could not prune old quota counters");
                }
            }
        }
    }
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

    async fn limits(cfg: crate::config::Config) -> (Limits, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::connect(&url).await.unwrap();
        let mut registry = Registry::default();
        (Limits::new(&cfg, store, &mut registry).unwrap(), dir)
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
        let checks = l.checks_for(&p, 100);
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
        let (r1, h) = l.decide(l.checks_for(&p, 100)).await.unwrap();
        assert!(!h.is_empty());
        let other = principal(Some(plan), None);
        let (r2, _) = l.decide(l.checks_for(&other, 100)).await.unwrap();
        let err = l.decide(l.checks_for(&p, 100)).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::QuotaExceeded);
        assert!(err.message.contains("subscription"), "{}", err.message);
        // A failed request is refunded at settlement.
        let l = Arc::new(l);
        l.settle(r2.unwrap(), false, Some(0));
        l.settle(r1.unwrap(), true, Some(40));
        assert!(l.decide(l.checks_for(&p, 100)).await.is_ok());
        // Without a plan, only the tenant's ceilings apply; an explicit 0 removes them.
        assert_eq!(l.checks_for(&principal(None, None), 100).len(), 2);
        let mut cfg = crate::config::Config::default();
        cfg.limits.tenant.requests_per_minute = Some(0);
        cfg.limits.tenant.tokens_per_minute = Some(0);
        let (l, _dir) = limits(cfg).await;
        assert!(l.checks_for(&principal(None, None), 100).is_empty());
    }

    /// Cost of one admission + settlement with every limit on every scope (the benchmark's
    /// "limits on" configuration). `cargo test --profile bench -p tollgate --lib admission_cost
    /// -- --ignored --nocapture`
    #[tokio::test]
    #[ignore = "a cost measurement, not a test: run on demand with --ignored --nocapture"]
    async fn admission_cost() {
        let all = LimitSet {
            requests_per_minute: Some(100_000_000),
            tokens_per_minute: Some(100_000_000_000),
            concurrent_requests: Some(100_000),
            requests_per_day: Some(1_000_000_000),
            tokens_per_month: Some(1_000_000_000_000),
        };
        let mut cfg = crate::config::Config::default();
        cfg.limits.key = all;
        cfg.limits.user = all;
        cfg.limits.tenant = all;
        let (l, _dir) = limits(cfg).await;
        let l = Arc::new(l);
        let mut p = principal(None, None);
        p.credential_type = CredentialType::ApiKey;
        p.user_id = Some("usr_1".into());
        let n = 200_000;
        let t = std::time::Instant::now();
        for _ in 0..n {
            let (r, h) = l.decide(l.checks_for(&p, 300)).await.unwrap();
            std::hint::black_box(&h);
            l.settle(r.unwrap(), true, Some(20));
        }
        let per = t.elapsed().as_nanos() / n;
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(l.checks_for(&p, 300));
        }
        let checks = t.elapsed().as_nanos() / n;
        let c = l.checks_for(&p, 300);
        let Outcome::Decided(d) = l.local.decide(&c, crate::util::now_ms()) else {
            panic!("leases were taken by the loop above")
        };
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(RateHeaders::build(&c, &d.states));
        }
        let headers = t.elapsed().as_nanos() / n;
        eprintln!(
            "admit+settle {per} ns; checks_for {checks} ns; headers {headers} ns ({} checks)",
            c.len()
        );
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
