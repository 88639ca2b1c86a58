//! Products, plans, subscriptions and their credentials (SPEC §2.4, §2.5, §4.1, §4.2).
//!
//! - `api` — the management routes: products, plans, subscriptions, credentials.
//! - `keys` — credential algorithms, HS256 secret generation, uploaded public-key validation.
//! - `appjwt` — the app-JWT verifier (customer-signed, request-bound tokens) and the
//!   subscription-id (`x-user-id`) verifier, both plugged into `auth::Auth::verify`.
//! - `operations` — asynchronous image generations: persisted, run by a bounded worker pool.
//!
//! This file holds what the credential pipeline shares: the per-instance [`SubscriptionAuth`]
//! (a verification cache tagged with the auth epoch, like the API key cache, and the secret box
//! that opens HS256 secrets) and [`SubscriptionAccess`], everything a request needs to know about
//! a subscription.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::{DecodingKey, Validation};

use crate::app::AppState;
use crate::auth::{Auth, Principal};
use crate::crypto::LazySecretBox;
use crate::error::ApiError;
use crate::store::subscriptions::{self as store, PlanLimits, Status};

pub mod api;
pub mod appjwt;
pub mod keys;
pub mod operations;

use keys::Alg;

/// Clock-skew allowance for app JWTs (`exp`, `nbf`, `iat`), in seconds (SPEC: at most 60).
pub const LEEWAY_SECONDS: u64 = 60;
/// Default and largest `max_token_lifetime_seconds` of a subscription.
pub const DEFAULT_MAX_TOKEN_LIFETIME: i64 = 3600;
pub const LARGEST_MAX_TOKEN_LIFETIME: i64 = 86_400;

/// Verifies the app JWT of a subscription (SPEC §2.4); see [`appjwt::verify_app_jwt`].
pub async fn verify_app_jwt(
    auth: &Auth,
    token: &str,
    subscription_id: &str,
) -> Result<Principal, ApiError> {
    appjwt::verify_app_jwt(auth, token, subscription_id).await
}

/// Verifies a bare subscription id (`x-user-id`, optional-auth routes only; SPEC §2.5).
pub async fn verify_subscription_id(auth: &Auth, id: &str) -> Result<Principal, ApiError> {
    appjwt::verify_subscription_id(auth, id).await
}

/// One verification key of a subscription: the algorithm is pinned to it.
pub struct VerifyingKey {
    pub id: Arc<str>,
    pub alg: Alg,
    pub(crate) key: DecodingKey,
    pub(crate) validation: Validation,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("id", &self.id)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// What a request needs to know about a subscription (cached per instance).
#[derive(Debug)]
pub struct SubscriptionAccess {
    pub id: Arc<str>,
    pub tenant_id: Arc<str>,
    pub plan_id: String,
    pub product_id: String,
    pub status: Status,
    /// The plan's limits, shared by every principal of this subscription
    /// (`Principal::plan_limits`).
    pub plan_limits: Arc<PlanLimits>,
    /// The product's models: the only ones this subscription's credentials may call.
    pub allowed_models: Arc<HashSet<String>>,
    /// Web origins allowed to use this subscription's credentials from a browser.
    pub allowed_origins: Arc<[String]>,
    pub max_token_lifetime_seconds: i64,
    pub single_use_tokens: bool,
    /// Live app-JWT verification keys by `kid`.
    pub keys: HashMap<String, Arc<VerifyingKey>>,
}

impl SubscriptionAccess {
    pub fn is_active(&self) -> bool {
        self.status == Status::Active
    }
}

struct Cached {
    access: Arc<SubscriptionAccess>,
    epoch: u64,
    loaded: Instant,
}

/// Per-instance state of the subscription verifiers, held by [`Auth`].
pub struct SubscriptionAuth {
    cache: RwLock<HashMap<Arc<str>, Cached>>,
    ttl: Duration,
    secrets: OnceLock<LazySecretBox>,
}

impl std::fmt::Debug for SubscriptionAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionAuth").finish_non_exhaustive()
    }
}

impl SubscriptionAuth {
    pub fn new(ttl: Duration) -> Self {
        Self {
            cache: RwLock::new(HashMap::new()),
            ttl,
            secrets: OnceLock::new(),
        }
    }

    /// The secret box that seals HS256 secrets (see [`configure`]).
    pub fn secrets(&self) -> Result<&crate::crypto::SecretBox, ApiError> {
        self.secrets
            .get()
            .ok_or_else(|| ApiError::internal("the secret key is not configured"))?
            .get()
            .map_err(ApiError::internal)
    }

    fn cached(&self, id: &str, epoch: u64) -> Option<Arc<SubscriptionAccess>> {
        let map = self.cache.read().ok()?;
        let c = map.get(id)?;
        (c.epoch == epoch && c.loaded.elapsed() < self.ttl).then(|| c.access.clone())
    }

    /// Drops entries past their safety-net lifetime.
    pub fn prune(&self) {
        if let Ok(mut map) = self.cache.write() {
            let ttl = self.ttl;
            map.retain(|_, c| c.loaded.elapsed() < ttl);
        }
    }
}

/// Sets up the per-instance subscription state from the configuration: the secret key
/// (`secret_key` / `TOLLGATE_SECRET_KEY`, else `<data_dir>/credentials.key`, created on first use).
pub fn configure(auth: &Auth, config: &crate::config::Config) -> anyhow::Result<()> {
    let boxed = LazySecretBox::new(
        config
            .secret_key
            .as_ref()
            .map(crate::config::Secret::expose),
        config.data_dir.join("credentials.key"),
    )?;
    let _ = auth.subscriptions.secrets.set(boxed);
    Ok(())
}

/// The subscription as the credential pipeline sees it, from the epoch-tagged cache or the store.
/// `None` when no such subscription exists.
pub async fn access(
    auth: &Auth,
    id: &str,
    epoch: u64,
) -> Result<Option<Arc<SubscriptionAccess>>, ApiError> {
    if let Some(a) = auth.subscriptions.cached(id, epoch) {
        return Ok(Some(a));
    }
    let pool = auth.store().pool();
    let Some((sub, plan, product)) = crate::store::read_retry(|| store::access(pool, id)).await?
    else {
        return Ok(None);
    };
    let creds = crate::store::read_retry(|| store::list_credentials(pool, id, false)).await?;
    let mut keys = HashMap::new();
    for c in creds {
        match verifying_key(auth, &c) {
            Ok(k) => {
                keys.insert(c.kid.clone(), Arc::new(k));
            }
            Err(e) => {
                tracing::error!(credential = %c.id, error = %e, "cannot load an app-JWT credential; tokens signed with it are refused");
            }
        }
    }
    let access = Arc::new(SubscriptionAccess {
        id: sub.id.as_str().into(),
        tenant_id: sub.tenant_id.as_str().into(),
        plan_id: plan.id,
        product_id: product.id,
        status: sub.status,
        plan_limits: Arc::new(plan.limits),
        allowed_models: Arc::new(product.models.into_iter().collect()),
        allowed_origins: sub.allowed_origins.into(),
        max_token_lifetime_seconds: sub.max_token_lifetime_seconds,
        single_use_tokens: sub.single_use_tokens,
        keys,
    });
    if let Ok(mut map) = auth.subscriptions.cache.write() {
        map.insert(
            access.id.clone(),
            Cached {
                access: access.clone(),
                epoch,
                loaded: Instant::now(),
            },
        );
    }
    Ok(Some(access))
}

fn verifying_key(auth: &Auth, c: &store::Credential) -> anyhow::Result<VerifyingKey> {
    use base64::Engine;
    let alg = Alg::parse(&c.alg).ok_or_else(|| anyhow::anyhow!("unknown alg {}", c.alg))?;
    let material = match alg {
        Alg::Hs256 => auth
            .subscriptions
            .secrets
            .get()
            .ok_or_else(|| anyhow::anyhow!("the secret key is not configured"))?
            .get()?
            .open(&c.key_material, &c.id)?,
        _ => base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&c.key_material)
            .map_err(|_| anyhow::anyhow!("stored key is not base64url"))?,
    };
    let mut validation = Validation::new(alg.jwt());
    validation.leeway = LEEWAY_SECONDS;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = true;
    validation.set_required_spec_claims(&["exp", "iss", "sub"]);
    validation.set_issuer(&[c.subscription_id.as_str()]);
    validation.set_audience(&[auth.public_url()]);
    Ok(VerifyingKey {
        id: c.id.as_str().into(),
        alg,
        key: keys::decoding_key(alg, &material),
        validation,
    })
}

/// For subscription-bound API keys: the subscription's access (models, status), or `None` when
/// the subscription no longer exists.
pub async fn key_access(
    auth: &Auth,
    subscription_id: &str,
    epoch: u64,
) -> Result<Option<Arc<SubscriptionAccess>>, ApiError> {
    access(auth, subscription_id, epoch).await
}

/// Background work: the operations worker pool and the pruning of expired `jti`s, old
/// operations and cache entries.
pub fn spawn_background(state: &AppState) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = operations::spawn_workers(state);
    let s = state.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = s.shutdown.cancelled() => break,
            }
            s.auth.subscriptions.prune();
            let now = crate::util::now_ms();
            if let Err(e) = store::prune_jti(s.store.pool(), now).await {
                tracing::warn!(error = %e, "could not prune the jti cache");
            }
            operations::prune(&s).await;
        }
    }));
    tasks
}
