//! Building and running the application from a [`Config`]: state, router, background tasks,
//! graceful shutdown. Tests call [`Application::build`] with `listen = 127.0.0.1:0`.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::store::Store;
use crate::store::invalidations;

/// Shared state: cheap to clone, one per running app.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Arc<Config>,
    pub store: Store,
    pub auth: Auth,
    pub proxy: Proxy,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
    /// Work a request hands off to finish after its answer (a sign-up's account and mail);
    /// waited for at shutdown, so none of it is cut off.
    pub followups: tokio_util::task::TaskTracker,
    /// Rate limits and quotas (local, or Redis with a local fallback).
    pub limits: Arc<crate::limits::Limits>,
    /// The usage queue and its batched writer.
    pub usage: crate::usage::UsageQueue,
    /// The guard of every outbound request to a user-supplied URL.
    pub outbound: Arc<crate::netguard::Outbound>,
    /// The asynchronous image operations' worker pool of this instance.
    pub operations: crate::subscriptions::operations::Runtime,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub async fn new(config: Config) -> anyhow::Result<Self> {
        crate::store::warn_loose_data_dir(&config.data_dir);
        let store = Store::connect(config.database_url.expose()).await?;
        let state = Self::with_store(config, store)?;
        // Platform JWT signing key: generated on first start, loaded otherwise.
        state
            .auth
            .identity
            .keys
            .ensure(&state.store, &state.config)
            .await?;
        Ok(state)
    }

    pub fn with_store(config: Config, store: Store) -> anyhow::Result<Self> {
        let auth = Auth::new(
            store.clone(),
            config.key_prefix.clone(),
            config.public_url.clone(),
            Duration::from_secs(config.key_cache_ttl_seconds.max(1)),
        );
        crate::subscriptions::configure(&auth, &config)?;
        let outbound = Arc::new(crate::netguard::Outbound::from_config(&config.outbound)?);
        auth.identity.external.configure(outbound.clone());
        let proxy = Proxy::from_config(&config)?;
        let mut metrics = Metrics::default();
        let limits = Arc::new(crate::limits::Limits::new(
            &config.limits,
            config.redis_url.as_ref().map(|u| u.expose()),
            store.clone(),
            metrics.registry_mut(),
        )?);
        let usage = crate::usage::UsageQueue::new(&config.usage, metrics.registry_mut());
        Ok(Self(Arc::new(Inner {
            config: Arc::new(config),
            store,
            auth,
            proxy,
            metrics,
            shutdown: CancellationToken::new(),
            followups: tokio_util::task::TaskTracker::new(),
            limits,
            usage,
            outbound,
            operations: Default::default(),
        })))
    }
}

pub fn router(state: AppState) -> Router {
    crate::routes::router(&state)
        .merge(crate::console::routes(&state))
        .fallback(crate::http::not_found)
        .method_not_allowed_fallback(crate::http::method_not_allowed)
        // One body limit for every route (inside `Observe`, so a 413 has its request id and
        // its access-log line).
        .layer(crate::http::BodyLimitLayer::new(
            state.config.max_body_bytes,
        ))
        // Browser access (preflights, CORS headers) for the AI routes, inside `Observe` too.
        .layer(crate::cors::CorsLayer::new(&state))
        .layer(crate::http::ObserveLayer::new(state.clone()))
        .layer(
            tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer::new([
                axum::http::header::AUTHORIZATION,
                axum::http::header::COOKIE,
                axum::http::HeaderName::from_static("x-api-key"),
            ]),
        )
        .with_state(state)
}

/// A bound, ready-to-run application.
pub struct Application {
    listener: TcpListener,
    pub addr: SocketAddr,
    pub state: AppState,
}

impl Application {
    /// Connects the store, applies migrations, binds the listen address (port 0 is fine).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let state = AppState::new(config).await?;
        Self::from_state(state).await
    }

    /// Binds `config.listen` before anything is built from the config, so that a `public_url`
    /// derived from a port-0 address names the port actually bound ([`Config::bound_to`]).
    pub async fn bind(config: &mut Config) -> anyhow::Result<TcpListener> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        config.bound_to(listener.local_addr()?);
        Ok(listener)
    }

    /// An application on a listener [`Application::bind`] returned.
    pub fn on(listener: TcpListener, state: AppState) -> anyhow::Result<Self> {
        let addr = listener.local_addr()?;
        Ok(Self {
            listener,
            addr,
            state,
        })
    }

    pub async fn from_state(state: AppState) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(state.config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", state.config.listen))?;
        let addr = listener.local_addr()?;
        Ok(Self {
            listener,
            addr,
            state,
        })
    }

    /// Serves until `state.shutdown` is cancelled, then lets in-flight requests (streams
    /// included) finish for up to `shutdown_grace_seconds`.
    pub async fn run(self) -> anyhow::Result<()> {
        let state = self.state.clone();
        let tasks = spawn_background(&state);
        let grace = Duration::from_secs(state.config.shutdown_grace_seconds);
        // At the end of the grace, every request still in flight is cut: a stream ends with an
        // error event, and each gets its usage record before the writer's final flush.
        let grace_over = tokio_util::sync::CancellationToken::new();
        let cutter = {
            let (over, hub) = (grace_over.clone(), state.auth.hub().clone());
            tokio::spawn(async move {
                over.cancelled().await;
                let cut = hub.cancel_all(crate::auth::revocation::CutReason::Shutdown);
                tracing::warn!(requests = cut, "shutdown grace over: requests cut");
            })
        };
        crate::server::serve(
            self.listener,
            router(state.clone()),
            state.shutdown.clone(),
            grace,
            crate::server::HEADER_READ_TIMEOUT,
            grace_over,
        )
        .await;
        cutter.abort();
        crate::subscriptions::operations::drain(&state).await;
        state.followups.close();
        if tokio::time::timeout(grace, state.followups.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                pending = state.followups.len(),
                "follow-up work still running at the end of the shutdown grace"
            );
        }
        for t in tasks {
            t.abort();
        }
        state.auth.flush_last_used().await;
        state.usage.flush_and_stop().await;
        state.limits.return_leases(0).await;
        state.store.close().await;
        Ok(())
    }
}

/// Background work that must never run on the request path.
fn spawn_background(state: &AppState) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    // Usage records: the batched writer (stopped and drained by `run` on shutdown).
    state.usage.start(state.clone());
    // Limiter upkeep: pruning, and the way back from the local fallback to Redis.
    tasks.push(tokio::spawn(
        state.limits.clone().maintain(state.shutdown.clone()),
    ));
    // Batched last_used_at writes.
    let s = state.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick =
            tokio::time::interval(Duration::from_millis(s.config.last_used_flush_ms.max(50)));
        loop {
            tokio::select! {
                _ = tick.tick() => s.auth.flush_last_used().await,
                () = s.shutdown.cancelled() => break,
            }
        }
    }));
    // Invalidations written by other instances (or the CLI).
    let s = state.clone();
    tasks.push(tokio::spawn(async move { poll_invalidations(s).await }));
    // Their push: PostgreSQL LISTEN, Redis pub/sub.
    tasks.extend(crate::push::spawn(state));
    // Usage retention.
    let s = state.clone();
    tasks.push(tokio::spawn(async move { crate::usage::retain(s).await }));
    // Operations workers, jti and operation pruning.
    tasks.extend(crate::subscriptions::spawn_background(state));
    // Cache safety-net pruning.
    let s = state.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = tick.tick() => s.auth.prune_cache(),
                () = s.shutdown.cancelled() => break,
            }
        }
    }));
    tasks
}

const INVALIDATION_WINDOW_MS: i64 = 30_000;

async fn poll_invalidations(state: AppState) {
    let mut seen: HashSet<i64> = HashSet::new();
    let mut order: VecDeque<(i64, Instant)> = VecDeque::new();
    let mut last_prune = Instant::now();
    // At least every 10 ms, at most every minute; each read covers at least three intervals.
    let poll_ms = state.config.invalidation_poll_ms.clamp(10, 60_000);
    let window_ms = INVALIDATION_WINDOW_MS.max(3 * poll_ms as i64);
    let poll = Duration::from_millis(poll_ms);
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            // A listener heard of a commit (`crate::push`).
            () = state.auth.push().wake.notified() => {}
            () = state.shutdown.cancelled() => return,
        }
        let since = crate::util::now_ms() - window_ms;
        let rows = match invalidations::recent(state.store.pool(), since).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "could not poll invalidations");
                continue;
            }
        };
        for (seq, kind, target, origin) in rows {
            if !seen.insert(seq) {
                continue;
            }
            order.push_back((seq, Instant::now()));
            // This instance applied its own rows right after their commit. Applying one again
            // now would be late: a "cut" could end a request that started after the access was
            // given back (a subscription suspended, then reactivated).
            if origin.as_deref() == Some(state.auth.instance_id()) {
                continue;
            }
            // Every other row is applied, also on the first poll: a row committed while this
            // instance was starting may describe a request it has already served.
            if let Some(kind) = invalidations::Kind::parse(&kind) {
                state.auth.apply_invalidation(kind, &target);
            }
        }
        let horizon = Duration::from_millis(2 * window_ms as u64);
        while order.front().is_some_and(|(_, at)| at.elapsed() > horizon) {
            if let Some((seq, _)) = order.pop_front() {
                seen.remove(&seq);
            }
        }
        if last_prune.elapsed() > Duration::from_secs(60) {
            last_prune = Instant::now();
            let _ =
                invalidations::prune(state.store.pool(), crate::util::now_ms() - 3_600_000).await;
        }
    }
}
