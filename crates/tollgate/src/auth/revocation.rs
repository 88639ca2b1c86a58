//! In-flight revocation. Every authenticated request registers a cancellation token under the ids
//! it depends on (key id, user id, later subscription id); revoking any of them cancels the token,
//! which ends a stream with an SSE `error` event and drops a pending upstream call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// Why a live request was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutReason {
    Revoked,
    SubscriptionInactive,
    /// The shutdown grace ended with the request still in flight.
    Shutdown,
}

impl CutReason {
    /// The `streams_cut` metric label (and the stream's usage outcome).
    pub fn label(self) -> &'static str {
        match self {
            Self::Revoked | Self::SubscriptionInactive => "revoked",
            Self::Shutdown => "shutdown",
        }
    }
}

#[derive(Default)]
struct Inner {
    /// Keyed by server-generated ids: the unkeyed Fx hash is enough.
    by_id: HashMap<Arc<str>, Vec<(u64, CancellationToken)>, crate::util::Fx>,
    reasons: HashMap<u64, CutReason, crate::util::Fx>,
}

#[derive(Default)]
pub struct RevocationHub {
    inner: Mutex<Inner>,
    next: AtomicU64,
}

impl std::fmt::Debug for RevocationHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationHub")
            .field("live", &self.live_ids())
            .finish()
    }
}

impl RevocationHub {
    /// Registers a request under `ids`; the request is live until the guard drops.
    pub fn register(self: &Arc<Self>, ids: &[Arc<str>]) -> LiveGuard {
        let serial = self.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        if let Ok(mut inner) = self.inner.lock() {
            for id in ids {
                inner
                    .by_id
                    .entry(id.clone())
                    .or_default()
                    .push((serial, token.clone()));
            }
        }
        LiveGuard {
            hub: self.clone(),
            serial,
            ids: ids.to_vec(),
            token,
        }
    }

    /// Cancels every live request registered under `id`. Returns how many were cut.
    pub fn cancel(&self, id: &str, reason: CutReason) -> usize {
        let Ok(mut inner) = self.inner.lock() else {
            return 0;
        };
        let Some(list) = inner.by_id.remove(id) else {
            return 0;
        };
        for (serial, token) in &list {
            inner.reasons.entry(*serial).or_insert(reason);
            token.cancel();
        }
        list.len()
    }

    /// Cancels every live request (the end of the shutdown grace). Returns how many were cut.
    pub fn cancel_all(&self, reason: CutReason) -> usize {
        let Ok(mut inner) = self.inner.lock() else {
            return 0;
        };
        let by_id = std::mem::take(&mut inner.by_id);
        let mut cut = std::collections::HashSet::new();
        for (serial, token) in by_id.into_values().flatten() {
            if cut.insert(serial) {
                inner.reasons.entry(serial).or_insert(reason);
                token.cancel();
            }
        }
        cut.len()
    }

    fn reason(&self, serial: u64) -> CutReason {
        self.inner
            .lock()
            .ok()
            .and_then(|i| i.reasons.get(&serial).copied())
            .unwrap_or(CutReason::Revoked)
    }

    /// Number of requests in flight on this instance that depend on `id` (what revoking it
    /// would cut here).
    pub fn live_count(&self, id: &str) -> usize {
        self.inner
            .lock()
            .map(|i| i.by_id.get(id).map_or(0, Vec::len))
            .unwrap_or(0)
    }

    /// Number of distinct ids with live requests (for tests and debugging).
    pub fn live_ids(&self) -> usize {
        self.inner.lock().map(|i| i.by_id.len()).unwrap_or(0)
    }
}

/// Held for as long as a request (including its streamed body) is in flight.
pub struct LiveGuard {
    hub: Arc<RevocationHub>,
    serial: u64,
    ids: Vec<Arc<str>>,
    token: CancellationToken,
}

impl LiveGuard {
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
    pub fn is_cut(&self) -> bool {
        self.token.is_cancelled()
    }
    /// The reason, once cut.
    pub fn reason(&self) -> CutReason {
        self.hub.reason(self.serial)
    }
}

impl std::fmt::Debug for LiveGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveGuard")
            .field("ids", &self.ids)
            .field("cut", &self.is_cut())
            .finish()
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.hub.inner.lock() {
            inner.reasons.remove(&self.serial);
            for id in &self.ids {
                if let Some(list) = inner.by_id.get_mut(id) {
                    list.retain(|(s, _)| *s != self.serial);
                    if list.is_empty() {
                        inner.by_id.remove(id);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_cuts_only_requests_under_that_id_and_guards_clean_up() {
        let hub = Arc::new(RevocationHub::default());
        let a = hub.register(&["key_a".into(), "usr_1".into()]);
        let b = hub.register(&["key_b".into(), "usr_1".into()]);
        assert_eq!(hub.cancel("key_a", CutReason::Revoked), 1);
        assert!(a.is_cut() && !b.is_cut());
        assert_eq!(hub.cancel("usr_1", CutReason::SubscriptionInactive), 2);
        assert!(b.is_cut());
        assert_eq!(b.reason(), CutReason::SubscriptionInactive);
        assert_eq!(a.reason(), CutReason::Revoked);
        drop(a);
        drop(b);
        assert_eq!(hub.live_ids(), 0);
    }
}
