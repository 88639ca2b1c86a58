//! The API key verification cache and the batched `last_used_at` recorder.
//!
//! Entries are keyed by the key's SHA-256 (the plaintext is never held) and tagged with the auth
//! epoch they were loaded under; any invalidation bumps the epoch, so revocation, expiry changes
//! and role changes take effect on the next request with no stale window. The TTL is only a
//! safety net.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::PermSet;
use crate::error::{ApiError, ErrorCode};
use crate::store::keys::KeyRateLimit;
use tollgate_core::apikey::KeyHash;

/// A verified key as cached: everything the hot path needs, nothing secret.
#[derive(Debug)]
pub struct CachedKey {
    pub id: Arc<str>,
    pub tenant_id: Arc<str>,
    pub user_id: Option<Arc<str>>,
    pub subscription_id: Option<Arc<str>>,
    /// False when the key's user is no longer a member of the tenant.
    pub member: bool,
    /// The owner's current permissions narrowed by the key's scopes.
    pub permissions: PermSet,
    pub platform_admin: bool,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// Set when the lookup matched the pre-rotation secret: valid until then.
    pub valid_until: Option<i64>,
    pub rate_limit: Option<KeyRateLimit>,
    /// For a subscription-bound key: its subscription (models, status).
    pub subscription: Option<std::sync::Arc<crate::subscriptions::SubscriptionAccess>>,
    pub epoch: u64,
    pub loaded: Instant,
}

impl CachedKey {
    /// Is the key usable at `now_ms`?
    pub fn check(&self, now_ms: i64) -> Result<(), ApiError> {
        if self.revoked_at.is_some() {
            return Err(ApiError::new(
                ErrorCode::AuthRevoked,
                "This API key has been revoked",
            ));
        }
        if let Some(until) = self.valid_until
            && now_ms >= until
        {
            return Err(ApiError::new(
                ErrorCode::AuthRevoked,
                "This API key was rotated; use its new secret",
            ));
        }
        if self.expires_at.is_some_and(|e| now_ms >= e) {
            return Err(ApiError::new(
                ErrorCode::AuthTokenExpired,
                "This API key has expired",
            ));
        }
        if !self.member {
            return Err(ApiError::auth_invalid(
                "The key's owner is no longer a member of the tenant",
            ));
        }
        if self.subscription.as_ref().is_some_and(|s| !s.is_active()) {
            return Err(ApiError::new(
                ErrorCode::SubscriptionInactive,
                "The key's subscription is not active",
            ));
        }
        Ok(())
    }
}

/// `KeyHash` is already a uniformly distributed SHA-256: use its first 8 bytes as the hash.
#[derive(Default)]
pub struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8).take(1) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
        }
    }
}

type Map = HashMap<KeyHash, Arc<CachedKey>, BuildHasherDefault<PrehashedHasher>>;

pub struct KeyCache {
    map: RwLock<Map>,
    ttl: Duration,
}

impl KeyCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            map: RwLock::new(Map::default()),
            ttl,
        }
    }

    /// A fresh entry loaded under `epoch`, if any.
    pub fn get(&self, hash: &KeyHash, epoch: u64) -> Option<Arc<CachedKey>> {
        let map = self.map.read().ok()?;
        let e = map.get(hash)?;
        (e.epoch == epoch && e.loaded.elapsed() < self.ttl).then(|| e.clone())
    }

    pub fn insert(&self, hash: KeyHash, entry: Arc<CachedKey>) {
        if let Ok(mut map) = self.map.write() {
            map.insert(hash, entry);
        }
    }

    /// Removes entries that belong to `id` (a key, user or subscription).
    pub fn remove_id(&self, id: &str) {
        if let Ok(mut map) = self.map.write() {
            map.retain(|_, e| {
                &*e.id != id
                    && e.user_id.as_deref() != Some(id)
                    && e.subscription_id.as_deref() != Some(id)
            });
        }
    }

    pub fn prune(&self) {
        if let Ok(mut map) = self.map.write() {
            map.retain(|_, e| e.loaded.elapsed() < self.ttl);
        }
    }

    pub fn len(&self) -> usize {
        self.map.read().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Collects `last_used_at` per key in memory; a background task writes them in batches.
#[derive(Default)]
pub struct LastUsed {
    pending: Mutex<HashMap<Arc<str>, i64, crate::util::Fx>>,
}

impl LastUsed {
    pub fn touch(&self, id: &Arc<str>) {
        if let Ok(mut p) = self.pending.lock() {
            p.insert(id.clone(), crate::util::now_ms());
        }
    }

    pub fn drain(&self) -> Vec<(String, i64)> {
        self.pending
            .lock()
            .map(|mut p| p.drain().map(|(k, v)| (k.to_string(), v)).collect())
            .unwrap_or_default()
    }

    /// Puts a batch back after a failed write (newer touches win).
    pub fn restore(&self, batch: Vec<(String, i64)>) {
        if let Ok(mut p) = self.pending.lock() {
            for (k, v) in batch {
                let slot = p.entry(k.as_str().into()).or_insert(v);
                *slot = (*slot).max(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(epoch: u64) -> Arc<CachedKey> {
        Arc::new(CachedKey {
            id: "key_1".into(),
            tenant_id: "ten_1".into(),
            user_id: Some("usr_1".into()),
            subscription_id: None,
            member: true,
            permissions: PermSet::all(),
            platform_admin: false,
            expires_at: None,
            revoked_at: None,
            valid_until: None,
            rate_limit: None,
            subscription: None,
            epoch,
            loaded: Instant::now(),
        })
    }

    #[test]
    fn stale_epoch_and_removed_ids_miss() {
        let cache = KeyCache::new(Duration::from_secs(30));
        let h = KeyHash::of("x");
        cache.insert(h, entry(1));
        assert!(cache.get(&h, 1).is_some());
        assert!(cache.get(&h, 2).is_none());
        cache.remove_id("usr_1");
        assert!(cache.get(&h, 1).is_none());
    }

    #[test]
    fn check_orders_revoked_expired_member() {
        let mut e = Arc::try_unwrap(entry(1)).unwrap();
        assert!(e.check(0).is_ok());
        e.expires_at = Some(10);
        assert_eq!(e.check(10).unwrap_err().code, ErrorCode::AuthTokenExpired);
        e.revoked_at = Some(5);
        assert_eq!(e.check(10).unwrap_err().code, ErrorCode::AuthRevoked);
        e.revoked_at = None;
        e.expires_at = None;
        e.valid_until = Some(100);
        assert!(e.check(99).is_ok());
        assert_eq!(e.check(100).unwrap_err().code, ErrorCode::AuthRevoked);
    }

    #[test]
    fn last_used_restore_keeps_newest() {
        let lu = LastUsed::default();
        lu.touch(&"key_1".into());
        let batch = lu.drain();
        assert_eq!(batch.len(), 1);
        lu.restore(vec![("key_1".into(), 1)]);
        lu.restore(vec![("key_1".into(), 5)]);
        assert_eq!(lu.drain(), vec![("key_1".to_string(), 5)]);
    }
}
