//! Rate limits and quotas (SPEC §7).
//!
//! Scopes: the API key, the user (within a tenant), the subscription (its plan) and the tenant.
//! Dimensions: requests/min and tokens/min (GCRA, exact `Retry-After`), concurrent requests, and
//! the quotas requests/day and tokens/month. A request is checked against every limit of every
//! scope that applies, all-or-nothing, so the tightest one decides.
//!
//! * Admission (the binary's `limits::meter::admit`) reserves: one request, the estimated tokens (prompt size +
//!   `max_tokens`), one concurrency slot, and the quota units. The body's numbers are
//!   range-checked first and all arithmetic saturates (limits and costs enter a decision at most
//!   [`MAX_UNITS`]); a request whose estimate alone exceeds a limit is refused outright (`422`
//!   for a per-minute limit, `QUOTA_EXCEEDED` for a quota), never told to retry.
//! * Settlement (when the binary's `Meter` drops: response sent, stream finished *or* cut by the
//!   client) releases the slot, reconciles tokens with the upstream's reported usage, and refunds
//!   the quota of a request that failed.
//!
//! Backends: with `redis_url`, every decision is one Lua script in Redis ([`redis`]), quota
//! counters seeded from the usage aggregates when Redis has none. Without it, or while Redis is
//! unreachable, the in-process [`local::LocalLimiter`], whose quotas are spent from leases on the
//! store's shared counters (`tollgate_store::quotas`): the store is asked when an instance's lease runs
//! out, not per request, and unspent leases go back after [`LEASE_IDLE_MS`] without use and at
//! shutdown.

//!
//! This crate decides; it knows nothing of HTTP errors or of how a caller was authenticated:
//! the binary describes a caller's scopes as [`Scopes`] and turns a [`Refusal`] into its error.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tollgate_core::time::{now_ms, rfc3339};
use tollgate_store::{Store, StoreError};

pub mod headers;
pub mod local;
pub mod redis;

pub use headers::RateHeaders;
use local::{LocalLimiter, LocalOutcome};

/// A quota lease unused for this long goes back to the store's counter.
pub const LEASE_IDLE_MS: i64 = 2000;
pub use tollgate_core::limits::{
    Check, CheckState, DEFAULT_TENANT_REQUESTS_PER_MINUTE, DEFAULT_TENANT_TOKENS_PER_MINUTE, Dim,
    LimitSet, MAX_UNITS, PlanLimits, ScopeKind, ScopeRef, gcra,
};

/// `[limits]`: every field of a limit set is optional; absent (or 0) = unlimited. The tightest
/// limit applies.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// `[limits.tenant]`: applies to each tenant as a whole.
    pub tenant: LimitSet,
    /// `[limits.tenants."ten_…"]`: replaces `[limits.tenant]` for one tenant id.
    pub tenants: std::collections::HashMap<String, LimitSet>,
    /// `[limits.user]`: applies to each member (all of their keys and tokens) within a tenant.
    pub user: LimitSet,
    /// `[limits.key]`: default for every API key; a key's own `rate_limit` can only tighten it.
    pub key: LimitSet,
    /// Completion tokens assumed at admission when a request has no `max_tokens`.
    pub default_max_tokens: u64,
    /// Prefix of every Redis key Tollgate writes (several deployments can share one Redis).
    pub redis_prefix: String,
    /// Deadline for one Redis decision; past it the local limiter decides.
    pub redis_timeout_ms: u64,
    /// How long a concurrency slot held in Redis survives an instance that died mid-request.
    pub concurrency_lease_seconds: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            tenant: Default::default(),
            tenants: Default::default(),
            user: Default::default(),
            key: Default::default(),
            default_max_tokens: 256,
            redis_prefix: "tollgate:".into(),
            redis_timeout_ms: 250,
            concurrency_lease_seconds: 900,
        }
    }
}

/// The scopes a request is limited in, as the binary found them on its caller.
pub struct Scopes<'a> {
    pub tenant: &'a Arc<str>,
    /// An API key and its own `rate_limit` (which can only tighten `[limits.key]`).
    pub key: Option<(&'a Arc<str>, LimitSet)>,
    pub user: Option<&'a Arc<str>>,
    /// A subscription and its plan's limits.
    pub subscription: Option<(&'a Arc<str>, LimitSet)>,
}

/// The outcome of one admission.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The check that refused the request, if any (nothing was reserved then).
    pub denied: Option<usize>,
    pub retry_ms: f64,
    pub states: Vec<CheckState>,
}

/// Which limiter decided a reservation (and so settles it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decider {
    Local,
    Redis,
}

/// What admission reserved; settled exactly once.
#[derive(Debug)]
pub struct Reservation {
    decider: Decider,
    checks: Vec<Check>,
    states: Vec<CheckState>,
    member: String,
}

/// Why a request was not admitted. Nothing was reserved.
#[derive(Debug)]
pub enum Refusal {
    /// A per-minute limit is reached: retry in `retry_secs`.
    RateLimited {
        check: Check,
        retry_secs: u64,
        headers: RateHeaders,
    },
    /// A quota is used up until `resets_at_ms`; `retry_secs` until then.
    QuotaExceeded {
        check: Check,
        retry_secs: u64,
        resets_at_ms: i64,
        headers: RateHeaders,
    },
    /// The request's estimated cost alone exceeds `check`'s limit: no retry can help. For a
    /// quota, `retry_secs` says when its period resets.
    TooLarge {
        check: Check,
        retry_secs: Option<u64>,
        headers: RateHeaders,
    },
    /// The store's quota counters could not be leased from.
    QuotaUnavailable,
    /// Concurrent requests kept spending every fresh lease first.
    Contended,
    /// The store failed while seeding a Redis counter.
    Store(StoreError),
}

impl Refusal {
    /// The sentence a client is told.
    pub fn message(&self) -> String {
        match self {
            Self::RateLimited {
                check: c,
                retry_secs,
                ..
            } => format!(
                "Rate limit reached: {} {} for this {}; retry in {retry_secs} s",
                c.limit,
                c.dim.describe(),
                c.scope.kind.as_str()
            ),
            Self::QuotaExceeded {
                check: c,
                resets_at_ms,
                ..
            } => format!(
                "Quota exceeded: {} {} for this {}; it resets at {}",
                c.limit,
                c.dim.describe(),
                c.scope.kind.as_str(),
                rfc3339(*resets_at_ms)
            ),
            Self::TooLarge { check: c, .. } if c.dim.is_quota() => format!(
                "This request's estimated {} tokens exceed the quota of {} {} for this {}; \
                 lower max_tokens (or the prompt)",
                c.cost,
                c.limit,
                c.dim.describe(),
                c.scope.kind.as_str()
            ),
            Self::TooLarge { check: c, .. } => format!(
                "This request's estimated {} tokens exceed the limit of {} {} for this {}, \
                 so it can never be admitted; lower max_tokens (or the prompt)",
                c.cost,
                c.limit,
                c.dim.describe(),
                c.scope.kind.as_str()
            ),
            Self::QuotaUnavailable => "Quota counters are unavailable; try again shortly".into(),
            Self::Contended => {
                "Too many concurrent requests are competing for this quota; retry in 1 s".into()
            }
            Self::Store(e) => e.to_string(),
        }
    }

    /// Seconds a client should wait (`Retry-After`), when waiting helps or informs.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_secs, .. } | Self::QuotaExceeded { retry_secs, .. } => {
                Some(*retry_secs)
            }
            Self::TooLarge { retry_secs, .. } => *retry_secs,
            Self::Contended => Some(1),
            Self::QuotaUnavailable | Self::Store(_) => None,
        }
    }

    /// The rate-limit headers the answer carries (every refusal of a decision has them).
    pub fn take_headers(&mut self) -> RateHeaders {
        match self {
            Self::RateLimited { headers, .. }
            | Self::QuotaExceeded { headers, .. }
            | Self::TooLarge { headers, .. } => std::mem::take(headers),
            _ => RateHeaders::default(),
        }
    }
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
    /// `redis_url`: decide in Redis (falling back to local limits while it is unreachable).
    pub fn new(
        cfg: &LimitsConfig,
        redis_url: Option<&str>,
        store: Store,
        registry: &mut Registry,
    ) -> anyhow::Result<Self> {
        let l = cfg;
        let redis = match redis_url.filter(|u| !u.is_empty()) {
            Some(url) => Some(redis::RedisLimiter::new(
                url,
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
            instance: tollgate_core::ids::random_base62(10),
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

    /// Every limit that applies to a request in these scopes, whose estimated token cost is
    /// `estimate`.
    pub fn checks(&self, scopes: &Scopes<'_>, estimate: u64) -> Vec<Check> {
        let mut checks = Vec::new();
        let tenant = scopes.tenant;
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
        if let Some((key, own)) = &scopes.key {
            add(ScopeKind::Key, key, self.cfg.key.tighten(*own));
        }
        if let Some(user) = scopes.user {
            add(ScopeKind::User, user, self.cfg.user);
        }
        if let Some((sub, plan)) = &scopes.subscription {
            add(ScopeKind::Subscription, sub, *plan);
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
    async fn seed(&self, c: &Check, now_ms: i64) -> Result<i64, Refusal> {
        let (start, _) = c.dim.period().bounds(now_ms);
        let used = tollgate_store::read_retry(|| {
            tollgate_store::usage::quota_used(self.store.pool(), &c.scope, c.dim, start)
        })
        .await
        .map_err(Refusal::Store)?;
        Ok(used)
    }

    /// The Redis decision, loading seeds for the quota counters Redis does not have.
    async fn decide_redis(
        &self,
        r: &redis::RedisLimiter,
        checks: &[Check],
        now_ms: i64,
        member: &str,
    ) -> Result<Result<Decision, String>, Refusal> {
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
    async fn decide_local(&self, checks: &[Check], now_ms: i64) -> Result<Decision, Refusal> {
        // Each round either decides or leases (or learns a quota is spent); more rounds happen
        // only when concurrent requests spend a fresh lease before this one gets to it.
        for _ in 0..8 {
            let needs = match self.local.decide(checks, now_ms) {
                LocalOutcome::Decided(d) => return Ok(d),
                LocalOutcome::Lease(needs) => needs,
            };
            for n in needs {
                let c = &checks[n.index];
                let pool = self.store.pool();
                let lease = tollgate_store::quotas::lease(
                    pool,
                    &c.scope.to_string(),
                    c.dim.as_str(),
                    n.period_start,
                    c.limit as i64,
                    n.need as i64,
                    || tollgate_store::usage::quota_used(pool, &c.scope, c.dim, n.period_start),
                )
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "could not lease quota from the store");
                    Refusal::QuotaUnavailable
                })?;
                self.local.deposit(
                    c,
                    &n,
                    lease.granted,
                    lease.used,
                    tollgate_core::time::now_ms(),
                );
                // Refused while this instance is giving units of this period back: they are
                // not spent, only on their way to the store; ask again once they are there.
                if lease.granted == 0 && self.local.is_returning(c, n.period_start) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        Err(Refusal::Contended)
    }

    /// Gives quota leases back to (or charges overspending to) the store's counters: those idle
    /// for `idle_ms`, or all of them with 0.
    pub async fn return_leases(&self, idle_ms: i64) {
        let now = now_ms();
        for (scope, dim, start, budget) in self.local.take_idle(now, idle_ms) {
            if let Err(e) = tollgate_store::quotas::adjust(
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

    /// Decides a request: `Ok((reservation, headers))`, or why not (with the headers).
    pub async fn decide(
        &self,
        checks: Vec<Check>,
    ) -> Result<(Option<Reservation>, RateHeaders), Refusal> {
        if checks.is_empty() {
            return Ok((None, RateHeaders::default()));
        }
        let now_ms = now_ms();
        let mut decided = None;
        if let Some(r) = &self.redis
            && self.redis_ok.load(Ordering::Acquire)
        {
            let member = self.member();
            match self.decide_redis(r, &checks, now_ms, &member).await? {
                Ok(d) => decided = Some((d, Decider::Redis, member)),
                Err(e) => self.redis_failed("decide", &e),
            }
        }
        let (decision, backend, member) = match decided {
            Some(d) => d,
            None => (
                self.decide_local(&checks, now_ms).await?,
                Decider::Local,
                String::new(),
            ),
        };
        let headers = RateHeaders::build(&checks, &decision.states);
        let backend_label = match backend {
            Decider::Local => "local",
            Decider::Redis => "redis",
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
                        decider: backend,
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
                let retry_secs = gcra::retry_after_secs(decision.retry_ms);
                let quota = c.dim.is_quota();
                self.metrics
                    .decisions
                    .get_or_create(&DecisionLabels {
                        outcome: if quota {
                            "quota_exceeded"
                        } else {
                            "rate_limited"
                        },
                        backend: backend_label,
                    })
                    .inc();
                let check = c.clone();
                Err(if quota {
                    let resets = now_ms.saturating_add(decision.retry_ms as i64);
                    Refusal::QuotaExceeded {
                        resets_at_ms: check.dim.period().bounds(resets - 1).1,
                        check,
                        retry_secs,
                        headers,
                    }
                } else {
                    Refusal::RateLimited {
                        check,
                        retry_secs,
                        headers,
                    }
                })
            }
        }
    }

    /// The refusal of a request whose token estimate alone is larger than limit `c`: for a
    /// token quota it says when the period resets.
    fn never_fits(&self, c: &Check, now_ms: i64, headers: RateHeaders) -> Refusal {
        let retry_secs = c.dim.is_quota().then(|| {
            let (_, end) = c.dim.period().bounds(now_ms);
            gcra::retry_after_secs(end.saturating_sub(now_ms).max(0) as f64)
        });
        Refusal::TooLarge {
            check: c.clone(),
            retry_secs,
            headers,
        }
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
        match r.decider {
            Decider::Local => {
                self.local.settle(&r.checks, &r.states, &deltas, now_ms());
            }
            Decider::Redis => {
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
                let now = now_ms();
                self.local.prune(now);
                let month = gcra::Period::Month.bounds(now).0;
                // Counters of months before last (no current period starts that early).
                let before = month - 31 * gcra::DAY_MS;
                if let Err(e) = tollgate_store::quotas::prune(self.store.pool(), before).await {
                    tracing::warn!(error = %e, "could not prune old quota counters");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cost of one admission + settlement with every limit on every scope (the benchmark's
    /// "limits on" configuration). `cargo test --profile bench -p tollgate-limits
    /// admission_cost -- --ignored --nocapture`
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
        let cfg = LimitsConfig {
            key: all,
            user: all,
            tenant: all,
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::connect(&url).await.unwrap();
        let mut registry = Registry::default();
        let l = Arc::new(Limits::new(&cfg, None, store, &mut registry).unwrap());
        let (tenant, key, user): (Arc<str>, Arc<str>, Arc<str>) =
            ("ten_1".into(), "key_1".into(), "usr_1".into());
        let scopes = Scopes {
            tenant: &tenant,
            key: Some((&key, LimitSet::default())),
            user: Some(&user),
            subscription: None,
        };
        let n = 200_000;
        let t = std::time::Instant::now();
        for _ in 0..n {
            let (r, h) = l.decide(l.checks(&scopes, 300)).await.unwrap();
            std::hint::black_box(&h);
            l.settle(r.unwrap(), true, Some(20));
        }
        let per = t.elapsed().as_nanos() / n;
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(l.checks(&scopes, 300));
        }
        let checks = t.elapsed().as_nanos() / n;
        let c = l.checks(&scopes, 300);
        let LocalOutcome::Decided(d) = l.local.decide(&c, now_ms()) else {
            panic!("leases were taken by the loop above")
        };
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(RateHeaders::build(&c, &d.states));
        }
        let headers = t.elapsed().as_nanos() / n;
        eprintln!(
            "admit+settle {per} ns; checks {checks} ns; headers {headers} ns ({} checks)",
            c.len()
        );
    }
}
