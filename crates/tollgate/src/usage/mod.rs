//! Usage metering (SPEC §7): one record per inference request, handed to a bounded queue and
//! written in batches by one background writer — never on the request path, never dropped:
//!
//! * a request reserves its queue slot at admission (`UsageQueue::reserve`), *waiting* while the queue
//!   is full — backpressure on new requests rather than loss of records;
//! * the slot is filled when the request settles (`UsageQueue::send`, synchronous, cannot fail), which
//!   can happen in a `Drop` (a client that disconnected mid-stream);
//! * the writer flushes every `usage.flush_ms` (records + per-minute aggregates in one
//!   transaction), retries a failed batch until it succeeds, and drains the queue on shutdown;
//! * it also feeds the spike detector (`crate::alerts`).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::app::AppState;
use crate::config::UsageConfig;
use tollgate_core::usage::UsageRecord;

pub mod api;

/// Per-request facts the proxy needs for metering, from the request head.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    pub request_id: Option<Arc<str>>,
    /// `X-End-User-Id`, if sent (SPEC §2.6; ignored for app JWTs).
    pub end_user: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for RequestInfo {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(RequestInfo {
            request_id: parts
                .extensions
                .get::<crate::http::RequestId>()
                .map(|r| r.0.clone()),
            end_user: parts
                .headers
                .get("x-end-user-id")
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        })
    }
}

struct UsageMetrics {
    queue_depth: Gauge,
    written: Counter,
    write_errors: Counter,
}

/// The usage queue and its writer.
pub struct UsageQueue {
    tx: mpsc::Sender<UsageRecord>,
    rx: Mutex<Option<mpsc::Receiver<UsageRecord>>>,
    capacity: usize,
    cfg: UsageConfig,
    metrics: UsageMetrics,
    stop: CancellationToken,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for UsageQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageQueue")
            .field("depth", &self.depth())
            .finish_non_exhaustive()
    }
}

impl UsageQueue {
    pub fn new(cfg: &UsageConfig, registry: &mut Registry) -> Self {
        let (tx, rx) = mpsc::channel(cfg.queue_capacity);
        let metrics = UsageMetrics {
            queue_depth: Gauge::default(),
            written: Counter::default(),
            write_errors: Counter::default(),
        };
        registry.register(
            "usage_queue_depth",
            "Usage records queued or reserved by in-flight requests",
            metrics.queue_depth.clone(),
        );
        registry.register(
            "usage_records_written",
            "Usage records written to the store",
            metrics.written.clone(),
        );
        registry.register(
            "usage_write_errors",
            "Failed usage batch writes (each is retried)",
            metrics.write_errors.clone(),
        );
        Self {
            tx,
            rx: Mutex::new(Some(rx)),
            capacity: cfg.queue_capacity,
            cfg: cfg.clone(),
            metrics,
            stop: CancellationToken::new(),
            writer: Mutex::new(None),
        }
    }

    /// Records queued or reserved.
    pub fn depth(&self) -> usize {
        self.capacity.saturating_sub(self.tx.capacity())
    }

    /// Reserves a queue slot, waiting while the queue is full. `None` only once the writer has
    /// stopped (shutdown).
    pub async fn reserve(&self) -> Option<mpsc::OwnedPermit<UsageRecord>> {
        match self.tx.clone().reserve_owned().await {
            Ok(p) => Some(p),
            Err(_) => {
                tracing::warn!("usage writer stopped; this request is not metered");
                None
            }
        }
    }

    /// Fills a reserved slot (synchronous, usable from `Drop`).
    pub fn send(permit: Option<mpsc::OwnedPermit<UsageRecord>>, record: UsageRecord) {
        match permit {
            Some(p) => {
                p.send(record);
            }
            None => {
                tracing::warn!(model = %record.model, "usage record not written (shutting down)")
            }
        }
    }

    /// Starts the writer (once).
    pub fn start(&self, state: AppState) {
        let Some(rx) = self
            .rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return;
        };
        let stop = self.stop.clone();
        let handle = tokio::spawn(writer(state, rx, stop));
        *self.writer.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle);
    }

    /// Drains the queue into the store and stops the writer (shutdown path).
    pub async fn flush_and_stop(&self) {
        self.stop.cancel();
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = tokio::time::timeout(Duration::from_secs(30), h).await;
        }
    }
}

async fn write(state: &AppState, batch: &[UsageRecord]) -> Result<(), crate::store::StoreError> {
    crate::store::usage::write_batch(&state.store, batch).await
}

async fn writer(state: AppState, mut rx: mpsc::Receiver<UsageRecord>, stop: CancellationToken) {
    let usage = &state.usage;
    let batch_max = usage.cfg.batch_size.max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(usage.cfg.flush_ms.max(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut spikes = crate::alerts::SpikeDetector::new(&state.config.alerts);
    let mut batch: Vec<UsageRecord> = Vec::with_capacity(batch_max);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            () = stop.cancelled() => true,
        };
        loop {
            while batch.len() < batch_max {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            let mut attempts = 0u32;
            loop {
                match write(&state, &batch).await {
                    Ok(()) => {
                        usage.metrics.written.inc_by(batch.len() as u64);
                        break;
                    }
                    Err(e) => {
                        attempts += 1;
                        usage.metrics.write_errors.inc();
                        if stopping && attempts >= 5 {
                            tracing::error!(error = %e, lost = batch.len(), "could not write usage records at shutdown");
                            break;
                        }
                        tracing::warn!(error = %e, count = batch.len(), "could not write usage records; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
            for alert in spikes.observe(&batch) {
                crate::alerts::raise(&state, alert).await;
            }
            let full = batch.len() >= batch_max;
            batch.clear();
            usage.metrics.queue_depth.set(usage.depth() as i64);
            if !full {
                break;
            }
        }
        usage.metrics.queue_depth.set(usage.depth() as i64);
        if stopping {
            rx.close();
            // Anything sent between the last drain and `close`.
            while let Ok(r) = rx.try_recv() {
                batch.push(r);
            }
            if !batch.is_empty()
                && let Err(e) = write(&state, &batch).await
            {
                tracing::error!(error = %e, lost = batch.len(), "could not write usage records at shutdown");
            }
            return;
        }
    }
}

/// Rows deleted per statement by [`retain_once`], with a pause between statements: deleting a
/// backlog never holds the store (or SQLite's write lock) for long while requests are served.
const RETENTION_BATCH: i64 = 5_000;

/// Deletes usage records older than `[usage] retention_days` and per-minute aggregates older
/// than `aggregate_retention_days`, as of `now_ms`. Returns (records, aggregates) deleted.
pub async fn retain_once(state: &AppState, now_ms: i64) -> (u64, u64) {
    const DAY_MS: i64 = 86_400_000;
    let cfg = &state.config.usage;
    let pool = state.store.pool();
    let mut records = 0;
    if cfg.retention_days > 0 {
        let before = now_ms.saturating_sub((cfg.retention_days as i64).saturating_mul(DAY_MS));
        loop {
            match crate::store::usage::prune_records(pool, before, RETENTION_BATCH).await {
                Ok(n) => {
                    records += n;
                    if n < RETENTION_BATCH as u64 {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not delete old usage records");
                    break;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
                () = state.shutdown.cancelled() => break,
            }
        }
    }
    let mut minutes = 0;
    if cfg.aggregate_retention_days > 0 {
        let before =
            now_ms.saturating_sub((cfg.aggregate_retention_days as i64).saturating_mul(DAY_MS));
        match crate::store::usage::prune_minutes(pool, before).await {
            Ok(n) => minutes = n,
            Err(e) => tracing::warn!(error = %e, "could not delete old usage aggregates"),
        }
    }
    if records > 0 || minutes > 0 {
        tracing::info!(
            records,
            aggregates = minutes,
            "deleted usage past its retention"
        );
    }
    (records, minutes)
}

/// Usage retention in the background: a minute after start, then hourly.
pub async fn retain(state: AppState) {
    let mut wait = Duration::from_secs(60);
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = state.shutdown.cancelled() => return,
        }
        retain_once(&state, crate::util::now_ms()).await;
        wait = Duration::from_secs(3600);
    }
}
