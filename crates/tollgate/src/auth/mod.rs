//! The credential pipeline, one explicit path for every request:
//!
//! extract (SPEC §2 order, `AUTH_AMBIGUOUS`) → classify (API key / JWT / subscription id) → verify
//! (one verifier per kind) → [`Principal`] (tenant, user, credential, permissions resolved *now*)
//! → route auth level (§5) → permission → handler.
//!
//! New credential kinds plug in as a [`RawCredential`] variant and a verifier arm in
//! [`Auth::verify`]; handlers never look at headers themselves.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::HeaderMap;

use crate::error::{ApiError, ErrorCode};
use crate::store::Store;
use crate::store::keys::{KeyRateLimit, Matched};

pub mod jwt;
pub mod keycache;
pub mod middleware;
pub mod revocation;

use keycache::{CachedKey, KeyCache};
use revocation::{LiveGuard, RevocationHub};
use tollgate_core::apikey::{self, KeyHash};
use tollgate_core::audit::Actor;
use tollgate_core::binding::Binding;
pub use tollgate_core::credential::CredentialType;
pub use tollgate_core::permissions::{PermSet, Permission};

/// How a route authenticates (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthLevel {
    /// Any credential, or `x-user-id` (a subscription id).
    Optional,
    /// A secret credential (API key or JWT).
    Required,
}

/// Who is calling, with permissions resolved at request time.
#[derive(Debug)]
pub struct Principal {
    pub tenant_id: Arc<str>,
    pub user_id: Option<Arc<str>>,
    pub subscription_id: Option<Arc<str>>,
    pub credential_type: CredentialType,
    pub credential_id: Option<Arc<str>>,
    pub permissions: PermSet,
    /// May manage tenants (`/v1/tenants`).
    pub platform_admin: bool,
    /// Per-key rate limit settings, if any.
    pub rate_limit: Option<KeyRateLimit>,
    /// The plan's limits for a subscription credential (requests/tokens per minute, concurrency,
    /// quotas); `None` = no plan. Enforced per subscription by `crate::limits`.
    pub plan_limits: Option<Arc<crate::limits::PlanLimits>>,
    /// The end user a verifier vouches for (an app JWT's `sub`, SPEC §2.6). For accounting
    /// only: it never grants anything.
    pub end_user: Option<Arc<str>>,
    /// Models this caller may use; `None` = every configured model.
    pub allowed_models: Option<Arc<std::collections::HashSet<String>>>,
    /// Request binding carried by an app JWT, checked against the body by the handler.
    pub binding: Option<Arc<Binding>>,
    /// The web origins whose pages may use this credential (its subscription's
    /// `allowed_origins`); `None` = no subscription, so no browser origin (`crate::cors`).
    pub web_origins: Option<Arc<[String]>>,
    /// Keeps the request registered for in-flight revocation while the principal lives.
    pub live: LiveGuard,
}

impl Principal {
    pub fn require(&self, p: Permission) -> Result<(), ApiError> {
        if self.permissions.contains(p) {
            Ok(())
        } else {
            Err(ApiError::permission_denied(format!(
                "This credential lacks the {} permission",
                p.as_str()
            ))
            .with_param(p.as_str()))
        }
    }
    pub fn has(&self, p: Permission) -> bool {
        self.permissions.contains(p)
    }
    /// The audit actor for this caller.
    pub fn actor(&self) -> Actor {
        match (&self.user_id, self.credential_type) {
            (Some(u), _) => Actor::user(u.as_ref()),
            (None, t) => Actor::credential(t, self.credential_id.as_deref().map(str::to_string)),
        }
    }
}

/// A credential as found in the request, before verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawCredential<'a> {
    ApiKey(&'a str),
    Jwt(&'a str),
    SubscriptionId(&'a str),
}

/// A credential header's one value. Sent more than once, it is ambiguous: a proxy in front that
/// reads another of the values than we do would see another caller (`400 AUTH_AMBIGUOUS`).
fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    let mut values = headers.get_all(name).iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::new(
            ErrorCode::AuthAmbiguous,
            format!("The {name} header was sent more than once; send one credential"),
        ));
    }
    v.to_str()
        .map(|s| Some(s.trim()))
        .map_err(|_| ApiError::auth_invalid(format!("The {name} header is not valid text")))
}

fn looks_like_jwt(s: &str) -> bool {
    let mut parts = 0;
    for seg in s.split('.') {
        parts += 1;
        if seg.is_empty()
            || !seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return false;
        }
    }
    parts == 3
}

/// Step 1 and 2: find and classify the credential (SPEC §2). No I/O. Every credential header
/// this route reads (`Authorization`, `X-API-Key`, and `x-user-id` on optional routes) must
/// appear at most once, whichever of them wins.
pub fn extract<'a>(
    headers: &'a HeaderMap,
    level: AuthLevel,
    key_prefix: &str,
) -> Result<Option<RawCredential<'a>>, ApiError> {
    // Even where a secret credential wins over it, an `x-user-id` sent twice is ambiguous.
    if level == AuthLevel::Optional && headers.get_all("x-user-id").iter().nth(1).is_some() {
        return Err(ApiError::new(
            ErrorCode::AuthAmbiguous,
            "The x-user-id header was sent more than once; send one credential",
        ));
    }
    let bearer = match header_str(headers, "authorization")? {
        None => None,
        Some(v) => {
            let (scheme, token) = v.split_once(' ').unwrap_or((v, ""));
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(ApiError::auth_invalid(
                    "Only the Bearer authorization scheme is accepted",
                ));
            }
            let token = token.trim();
            if token.is_empty() {
                return Err(ApiError::auth_invalid("The Bearer token is empty"));
            }
            Some(token)
        }
    };
    let x_api_key = header_str(headers, "x-api-key")?.filter(|s| !s.is_empty());
    match (bearer, x_api_key) {
        (Some(b), Some(k)) if b != k => {
            return Err(ApiError::new(
                ErrorCode::AuthAmbiguous,
                "Authorization and X-API-Key carry different credentials; send one",
            ));
        }
        (Some(b), _) => {
            return if apikey::has_prefix(b, key_prefix) {
                Ok(Some(RawCredential::ApiKey(b)))
            } else if looks_like_jwt(b) {
                Ok(Some(RawCredential::Jwt(b)))
            } else {
                Err(ApiError::auth_invalid(
                    "The Bearer token is neither an API key nor a JWT",
                ))
            };
        }
        (None, Some(k)) => return Ok(Some(RawCredential::ApiKey(k))),
        (None, None) => {}
    }
    if level == AuthLevel::Optional
        && let Some(sub) = header_str(headers, "x-user-id")?.filter(|s| !s.is_empty())
    {
        return Ok(Some(RawCredential::SubscriptionId(sub)));
    }
    Ok(None)
}

/// The authentication service: verifiers, the key cache, in-flight revocation.
pub struct Auth {
    store: Store,
    key_prefix: String,
    /// The gateway's public URL: the `iss` of platform JWTs.
    public_url: String,
    /// The origin of `public_url` (its own pages are not cross-origin), derived once.
    web_origin: Option<Arc<str>>,
    cache: KeyCache,
    hub: Arc<RevocationHub>,
    /// The identity service's state: signing keys, token and JWKS caches, login throttle.
    pub identity: crate::identity::IdentityState,
    /// Bumped by every invalidation; cache entries loaded under an older epoch are reloaded.
    epoch: AtomicU64,
    last_used: keycache::LastUsed,
    /// App-JWT and subscription verification state (`crate::subscriptions`).
    pub subscriptions: crate::subscriptions::SubscriptionAuth,
    /// This instance, as the `origin` of the invalidations it publishes.
    instance_id: Arc<str>,
    /// Push of invalidations between instances (`crate::push`).
    push: crate::push::Signals,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

/// Why verification failed, as a low-cardinality metrics label.
pub fn failure_reason(e: &ApiError) -> &'static str {
    match e.code {
        ErrorCode::AuthMissing => "missing",
        ErrorCode::AuthInvalid => "invalid",
        ErrorCode::AuthTokenExpired => "expired",
        ErrorCode::AuthRevoked => "revoked",
        ErrorCode::AuthReplayed => "replayed",
        ErrorCode::AuthAmbiguous => "ambiguous",
        ErrorCode::PermissionDenied => "permission",
        ErrorCode::AuthBindingMismatch => "binding",
        ErrorCode::SubscriptionInactive => "subscription_inactive",
        _ => "other",
    }
}

impl Auth {
    pub fn new(store: Store, key_prefix: String, public_url: String, cache_ttl: Duration) -> Self {
        Self {
            store,
            key_prefix,
            web_origin: crate::cors::own_origin(&public_url).map(Into::into),
            public_url,
            cache: KeyCache::new(cache_ttl),
            hub: Arc::new(RevocationHub::default()),
            identity: crate::identity::IdentityState::default(),
            epoch: AtomicU64::new(1),
            last_used: keycache::LastUsed::default(),
            subscriptions: crate::subscriptions::SubscriptionAuth::new(cache_ttl),
            instance_id: crate::util::new_id("inst").into(),
            push: crate::push::Signals::default(),
        }
    }

    /// The push signals of this instance (`crate::push`).
    pub fn push(&self) -> &crate::push::Signals {
        &self.push
    }

    /// This instance's id (random per process start).
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// What a mutation made on this instance records about itself: its origin, so the
    /// invalidations it publishes are not applied a second time by this instance's poller.
    pub fn local_meta(&self) -> crate::store::audit::RequestMeta {
        crate::store::audit::RequestMeta {
            origin: Some(self.instance_id.clone()),
            ..Default::default()
        }
    }

    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    pub fn hub(&self) -> &Arc<RevocationHub> {
        &self.hub
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    /// The gateway's own web origin (`crate::cors`).
    pub fn web_origin(&self) -> Option<&str> {
        self.web_origin.as_deref()
    }

    /// The current auth epoch. Verifiers that cache (like the key verifier) tag entries with it
    /// and re-check it after registering a request (see `verify_api_key`).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The whole pipeline for one request: extract, classify, verify, check the auth level.
    /// Returns `AUTH_MISSING` when nothing was sent.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        level: AuthLevel,
    ) -> Result<Principal, ApiError> {
        match extract(headers, level, &self.key_prefix)? {
            None => Err(ApiError::auth_missing()),
            Some(raw) => self.verify(raw).await,
        }
    }

    /// Step 3: one verifier per credential kind.
    pub async fn verify(&self, raw: RawCredential<'_>) -> Result<Principal, ApiError> {
        match raw {
            RawCredential::ApiKey(k) => self.verify_api_key(k).await,
            RawCredential::Jwt(token) => match jwt::classify(token, &self.public_url)? {
                jwt::JwtKind::Platform => crate::identity::verify_platform_jwt(self, token).await,
                jwt::JwtKind::External { issuer } => {
                    crate::identity::verify_external_jwt(self, token, &issuer).await
                }
                jwt::JwtKind::App { subscription_id } => {
                    crate::subscriptions::verify_app_jwt(self, token, &subscription_id).await
                }
            },
            RawCredential::SubscriptionId(id) => {
                crate::subscriptions::verify_subscription_id(self, id).await
            }
        }
    }

    /// The warm path of an API key check with no registration: checksum, hash, cache. `None` on a
    /// cache miss. Exposed for the micro-benchmark.
    pub fn check_key_cached(&self, key: &str) -> Option<Result<Arc<CachedKey>, ApiError>> {
        let Some(hash) = apikey::verify_format(key, &self.key_prefix) else {
            return Some(Err(ApiError::auth_invalid("Malformed API key")));
        };
        let epoch = self.epoch.load(Ordering::Acquire);
        self.cache
            .get(&hash, epoch)
            .map(|entry| entry.check(crate::util::now_ms()).map(|()| entry))
    }

    async fn verify_api_key(&self, key: &str) -> Result<Principal, ApiError> {
        // The checksum is verified before any cache or store access: a typo costs no I/O.
        let Some(hash) = apikey::verify_format(key, &self.key_prefix) else {
            return Err(ApiError::auth_invalid("Malformed API key"));
        };
        loop {
            let epoch = self.epoch.load(Ordering::Acquire);
            let entry = match self.cache.get(&hash, epoch) {
                Some(e) => e,
                None => self.load_key(hash, epoch).await?,
            };
            entry.check(crate::util::now_ms())?;
            let mut ids: Vec<Arc<str>> = vec![entry.id.clone()];
            ids.extend(entry.user_id.clone());
            ids.extend(entry.subscription_id.clone());
            let live = self.hub.register(&ids);
            // A revocation that committed while we loaded bumped the epoch before cancelling:
            // re-verify rather than run on a stale view.
            if self.epoch.load(Ordering::Acquire) != epoch {
                continue;
            }
            self.last_used.touch(&entry.id);
            return Ok(Principal {
                tenant_id: entry.tenant_id.clone(),
                user_id: entry.user_id.clone(),
                subscription_id: entry.subscription_id.clone(),
                credential_type: CredentialType::ApiKey,
                credential_id: Some(entry.id.clone()),
                permissions: entry.permissions,
                platform_admin: entry.platform_admin,
                rate_limit: entry.rate_limit.clone(),
                plan_limits: entry.subscription.as_ref().map(|s| s.plan_limits.clone()),
                end_user: None,
                allowed_models: entry
                    .subscription
                    .as_ref()
                    .map(|s| s.allowed_models.clone()),
                binding: None,
                web_origins: entry
                    .subscription
                    .as_ref()
                    .map(|s| s.allowed_origins.clone()),
                live,
            });
        }
    }

    async fn load_key(&self, hash: KeyHash, epoch: u64) -> Result<Arc<CachedKey>, ApiError> {
        let pool = self.store.pool();
        let hex = hash.to_hex();
        let Some((rec, matched)) =
            crate::store::read_retry(|| crate::store::keys::find_by_hash(pool, &hex)).await?
        else {
            return Err(ApiError::auth_invalid("Unknown API key"));
        };
        let (member_perms, platform_admin) = match &rec.user_id {
            Some(user_id) => {
                let perms =
                    crate::store::tenants::resolve_permissions(pool, &rec.tenant_id, user_id)
                        .await?;
                let mut conn = pool
                    .acquire()
                    .await
                    .map_err(crate::store::StoreError::from)?;
                let admin = crate::store::tenants::get_user(&mut conn, user_id)
                    .await?
                    .is_some_and(|u| u.platform_admin);
                (perms, admin)
            }
            // Subscription-bound keys take their permissions from the plan.
            None => (Some(subscription_key_permissions()), false),
        };
        // A subscription-bound key takes its models and its status from the subscription.
        let subscription = match &rec.subscription_id {
            Some(sub) => Some(
                crate::subscriptions::key_access(self, sub, epoch)
                    .await?
                    .ok_or_else(|| {
                        ApiError::auth_invalid("The key's subscription no longer exists")
                    })?,
            ),
            None => None,
        };
        let permissions = member_perms.map(|p| match &rec.scopes {
            Some(scopes) => {
                p.intersect(PermSet::parse(scopes.iter().map(String::as_str)).unwrap_or_default())
            }
            None => p,
        });
        let entry = Arc::new(CachedKey {
            id: rec.id.as_str().into(),
            tenant_id: rec.tenant_id.as_str().into(),
            user_id: rec.user_id.as_deref().map(Into::into),
            subscription_id: rec.subscription_id.as_deref().map(Into::into),
            member: permissions.is_some(),
            permissions: permissions.unwrap_or_default(),
            platform_admin,
            expires_at: rec.expires_at,
            revoked_at: rec.revoked_at,
            valid_until: match matched {
                Matched::Current => None,
                Matched::Previous => Some(rec.prev_valid_until.unwrap_or(0)),
            },
            rate_limit: rec.rate_limit.clone(),
            subscription,
            epoch,
            loaded: std::time::Instant::now(),
        });
        self.cache.insert(hash, entry.clone());
        Ok(entry)
    }

    /// Applies an invalidation on this instance: bump the epoch (cached verifications reload),
    /// then cut live requests under `target` when the change takes access away.
    pub fn invalidate(&self, kind: crate::store::invalidations::Kind, target: &str) {
        self.apply_invalidation(kind, target);
        // The other instances read the log now rather than at their next poll.
        self.push.announce.notify_one();
    }

    /// Applies an invalidation another instance (or the CLI) committed: as [`Auth::invalidate`],
    /// without announcing it again.
    pub fn apply_invalidation(&self, kind: crate::store::invalidations::Kind, target: &str) {
        use crate::store::invalidations::Kind;
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.cache.remove_id(target);
        match kind {
            Kind::Credential | Kind::Subject => {
                let reason = if jwt::is_subscription_id(target) {
                    revocation::CutReason::SubscriptionInactive
                } else {
                    revocation::CutReason::Revoked
                };
                let n = self.hub.cancel(target, reason);
                if n > 0 {
                    tracing::info!(target, cut = n, "cut in-flight requests");
                }
            }
            Kind::Permissions => {}
        }
    }

    /// Drains the batched `last_used_at` updates into the store.
    pub async fn flush_last_used(&self) {
        let batch = self.last_used.drain();
        if batch.is_empty() {
            return;
        }
        if let Err(e) = crate::store::keys::touch_last_used(&self.store, &batch).await {
            tracing::warn!(error = %e, count = batch.len(), "could not write last_used_at; will retry");
            self.last_used.restore(batch);
        }
    }

    /// Drops cache entries past their safety-net lifetime.
    pub fn prune_cache(&self) {
        self.cache.prune();
    }
}

/// What a subscription-bound key may do (its models and limits come from the plan).
pub fn subscription_key_permissions() -> PermSet {
    PermSet::of(&[
        Permission::ModelsRead,
        Permission::ChatWrite,
        Permission::EmbeddingsWrite,
        Permission::ImagesWrite,
        Permission::OperationsRead,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn extraction_follows_the_spec_order() {
        let key = apikey::generate("tgk").plaintext;
        let auth = format!("Bearer {key}");
        let h = headers(&[("authorization", &auth)]);
        assert_eq!(
            extract(&h, AuthLevel::Required, "tgk").unwrap(),
            Some(RawCredential::ApiKey(&key))
        );
        let h = headers(&[("x-api-key", &key)]);
        assert_eq!(
            extract(&h, AuthLevel::Required, "tgk").unwrap(),
            Some(RawCredential::ApiKey(&key))
        );
        // Same credential twice is fine; different ones are ambiguous.
        let h = headers(&[("authorization", &auth), ("x-api-key", &key)]);
        assert!(extract(&h, AuthLevel::Required, "tgk").is_ok());
        let h = headers(&[("authorization", &auth), ("x-api-key", "tgk_other")]);
        assert_eq!(
            extract(&h, AuthLevel::Required, "tgk").unwrap_err().code,
            ErrorCode::AuthAmbiguous
        );
        let h = headers(&[("authorization", "Bearer aaa.bbb.ccc")]);
        assert_eq!(
            extract(&h, AuthLevel::Required, "tgk").unwrap(),
            Some(RawCredential::Jwt("aaa.bbb.ccc"))
        );
        let h = headers(&[("authorization", "Basic dXNlcjpwYXNz")]);
        assert_eq!(
            extract(&h, AuthLevel::Required, "tgk").unwrap_err().code,
            ErrorCode::AuthInvalid
        );
        let h = headers(&[("authorization", "Bearer nonsense")]);
        assert_eq!(
            extract(&h, AuthLevel::Required, "tgk").unwrap_err().code,
            ErrorCode::AuthInvalid
        );
        // x-user-id only counts on optional routes.
        let h = headers(&[("x-user-id", "66ec1726e728c1405e5ebca2")]);
        assert_eq!(extract(&h, AuthLevel::Required, "tgk").unwrap(), None);
        assert_eq!(
            extract(&h, AuthLevel::Optional, "tgk").unwrap(),
            Some(RawCredential::SubscriptionId("66ec1726e728c1405e5ebca2"))
        );
        // A secret credential wins over x-user-id.
        let h = headers(&[
            ("x-user-id", "66ec1726e728c1405e5ebca2"),
            ("x-api-key", &key),
        ]);
        assert_eq!(
            extract(&h, AuthLevel::Optional, "tgk").unwrap(),
            Some(RawCredential::ApiKey(&key))
        );
    }

    #[test]
    fn a_credential_header_sent_twice_is_ambiguous() {
        let key = apikey::generate("tgk").plaintext;
        let auth = format!("Bearer {key}");
        let twice = |name: &'static str, a: &str, b: &str| {
            let mut h = HeaderMap::new();
            h.append(name, HeaderValue::from_str(a).unwrap());
            h.append(name, HeaderValue::from_str(b).unwrap());
            h
        };
        for level in [AuthLevel::Required, AuthLevel::Optional] {
            // Different values, and even the same value twice.
            for h in [
                twice("authorization", &auth, "Bearer aaa.bbb.ccc"),
                twice("authorization", &auth, &auth),
                twice("x-api-key", &key, "tgk_other"),
                twice("x-api-key", &key, &key),
            ] {
                let err = extract(&h, level, "tgk").unwrap_err();
                assert_eq!(err.code, ErrorCode::AuthAmbiguous, "{h:?}");
            }
        }
        // x-user-id counts (and so must be single) only on optional routes.
        let h = twice(
            "x-user-id",
            "66ec1726e728c1405e5ebca2",
            "66ec1726e728c1405e5ebca3",
        );
        assert_eq!(
            extract(&h, AuthLevel::Optional, "tgk").unwrap_err().code,
            ErrorCode::AuthAmbiguous
        );
        assert_eq!(extract(&h, AuthLevel::Required, "tgk").unwrap(), None);
        let mut h = h;
        h.insert("authorization", HeaderValue::from_str(&auth).unwrap());
        assert_eq!(
            extract(&h, AuthLevel::Optional, "tgk").unwrap_err().code,
            ErrorCode::AuthAmbiguous
        );
        assert_eq!(
            extract(&h, AuthLevel::Required, "tgk").unwrap(),
            Some(RawCredential::ApiKey(&key))
        );
    }

    #[test]
    fn jwt_shape_detection() {
        assert!(looks_like_jwt("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a..c"));
        assert!(!looks_like_jwt("a.b.c.d"));
        assert!(!looks_like_jwt("a.b+.c"));
    }
}
