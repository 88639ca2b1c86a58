//! Push for the invalidation log: every instance hears of a committed invalidation at once
//! instead of at its next poll. Two channels, each enough on its own:
//!
//! - PostgreSQL `NOTIFY` in the transaction that writes the log row (`invalidations::publish`),
//!   so it is delivered exactly when the row becomes visible, also for rows the CLI writes;
//! - Redis pub/sub when Redis is configured: the instance that committed publishes right after
//!   its commit (`Auth::invalidate`), which also reaches instances sharing one SQLite file.
//!
//! A message carries nothing but "read the log now": the poller re-reads its time window and
//! dedupes rows by `seq`, so a lost, late or duplicated message cannot lose or double an
//! invalidation. Every (re)connection of a listener also triggers a read, so whatever was
//! committed while it was disconnected is applied as soon as it is back; the poll (every
//! 100 ms) stays as the safety net.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;

use crate::app::AppState;

/// The PostgreSQL notification channel (the store notifies it).
pub use crate::store::invalidations::PG_CHANNEL;

/// How long a listener waits before it reconnects after a failure.
const RECONNECT: Duration = Duration::from_millis(500);

/// The two signals of one instance.
#[derive(Debug, Default)]
pub struct Signals {
    /// Read the invalidation log now (a listener heard of a commit).
    pub wake: Notify,
    /// This instance committed an invalidation: tell the others (Redis).
    pub announce: Notify,
}

/// The Redis channel, under the limiter's key prefix (instances that share a prefix share a
/// deployment).
fn redis_channel(state: &AppState) -> String {
    format!("{}invalidations", state.config.limits.redis_prefix)
}

/// Starts the listeners (and the Redis publisher) this deployment has.
pub fn spawn(state: &AppState) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    if state.store.backend() == crate::store::Dialect::Postgres {
        let s = state.clone();
        tasks.push(tokio::spawn(async move { pg_listen(s).await }));
    }
    if let Some(url) = &state.config.redis_url {
        match redis::Client::open(url.expose()) {
            Ok(client) => {
                let (s, c) = (state.clone(), client.clone());
                tasks.push(tokio::spawn(async move { redis_listen(s, c).await }));
                let s = state.clone();
                tasks.push(tokio::spawn(async move { redis_announce(s, client).await }));
            }
            Err(e) => tracing::warn!(
                error = %crate::store::redact_url(&e.to_string()),
                "invalid redis_url: invalidations are not pushed through Redis"
            ),
        }
    }
    tasks
}

async fn pg_listen(state: AppState) {
    let url = state.config.database_url.expose().to_string();
    loop {
        let connected = tokio::select! {
            r = sqlx::postgres::PgListener::connect(&url) => r,
            () = state.shutdown.cancelled() => return,
        };
        let mut listener = match connected {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %crate::store::redact_url(&e.to_string()), "invalidation listener cannot connect; polling only");
                if pause(&state).await {
                    return;
                }
                continue;
            }
        };
        if let Err(e) = listener.listen(PG_CHANNEL).await {
            tracing::warn!(error = %crate::store::redact_url(&e.to_string()), "cannot LISTEN for invalidations; polling only");
            if pause(&state).await {
                return;
            }
            continue;
        }
        tracing::debug!("listening for invalidations (PostgreSQL)");
        // Whatever committed before this connection listened.
        state.auth.push().wake.notify_one();
        loop {
            let next = tokio::select! {
                r = listener.try_recv() => r,
                () = state.shutdown.cancelled() => return,
            };
            match next {
                Ok(Some(_)) => state.auth.push().wake.notify_one(),
                // The connection was lost; the next call reconnects (and listens again).
                // Notifications sent meanwhile are lost: read the log.
                Ok(None) => state.auth.push().wake.notify_one(),
                Err(e) => {
                    tracing::warn!(error = %crate::store::redact_url(&e.to_string()), "invalidation listener failed; reconnecting");
                    break;
                }
            }
        }
        if pause(&state).await {
            return;
        }
    }
}

async fn redis_listen(state: AppState, client: redis::Client) {
    let channel = redis_channel(&state);
    let own = state.auth.instance_id().to_string();
    loop {
        let connected = tokio::select! {
            r = client.get_async_pubsub() => r,
            () = state.shutdown.cancelled() => return,
        };
        let mut pubsub = match connected {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "invalidation subscriber cannot reach Redis");
                if pause(&state).await {
                    return;
                }
                continue;
            }
        };
        if let Err(e) = pubsub.subscribe(&channel).await {
            tracing::debug!(error = %e, "cannot subscribe to invalidations on Redis");
            if pause(&state).await {
                return;
            }
            continue;
        }
        tracing::debug!("subscribed to invalidations (Redis)");
        state.auth.push().wake.notify_one();
        let mut messages = pubsub.on_message();
        loop {
            let next = tokio::select! {
                m = messages.next() => m,
                () = state.shutdown.cancelled() => return,
            };
            let Some(msg) = next else {
                // Disconnected: read the log, then reconnect.
                state.auth.push().wake.notify_one();
                break;
            };
            // An instance's own announcements need no read: it applied them at its commit.
            let from: String = msg.get_payload().unwrap_or_default();
            if from != own {
                state.auth.push().wake.notify_one();
            }
        }
        if pause(&state).await {
            return;
        }
    }
}

async fn redis_announce(state: AppState, client: redis::Client) {
    let channel = redis_channel(&state);
    let own = state.auth.instance_id().to_string();
    let timeout = Duration::from_millis(state.config.limits.redis_timeout_ms.max(50));
    let mut conn: Option<redis::aio::MultiplexedConnection> = None;
    loop {
        tokio::select! {
            () = state.auth.push().announce.notified() => {}
            () = state.shutdown.cancelled() => return,
        }
        if conn.is_none() {
            conn = tokio::time::timeout(timeout, client.get_multiplexed_async_connection())
                .await
                .ok()
                .and_then(Result::ok);
        }
        let Some(c) = conn.as_mut() else {
            // Redis is away: the others learn it from the log (NOTIFY or their poll).
            continue;
        };
        let sent = tokio::time::timeout(
            timeout,
            redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(&own)
                .query_async::<i64>(c),
        )
        .await;
        if !matches!(sent, Ok(Ok(_))) {
            conn = None;
        }
    }
}

/// Waits before a reconnect; `true` when the instance is shutting down instead.
async fn pause(state: &AppState) -> bool {
    tokio::select! {
        () = tokio::time::sleep(RECONNECT) => false,
        () = state.shutdown.cancelled() => true,
    }
}
