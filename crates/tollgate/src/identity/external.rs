//! External identity-provider JWTs (SPEC §2.3). A tenant registers an issuer (issuer URL, JWKS
//! URL, audience, the claim naming the user, default role). Tokens are verified against the
//! issuer's cached JWKS; an unknown `kid` refetches it at most once a minute per issuer, and the
//! cache is refreshed hourly. Keys come only from the registered JWKS URL, never from the token.
//! That URL is user-supplied: it is checked by the outbound-URL guard (`crate::netguard`) when
//! registered and again, after DNS resolution, on every fetch; any failure reads the same.
//!
//! Mapping: with `claim = "email"` the token's email is matched to a member of the tenant, whose
//! current roles apply; otherwise (or when the email is not a member) the issuer's
//! `default_role` applies, and without one the token is refused. Whatever the mapping, an external
//! token never does more than the admin who registered the issuer could (their permissions are
//! stored as its ceiling), and never carries platform-owner powers.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::auth::middleware::Caller;
use crate::auth::{Auth, CredentialType, Principal};
use crate::error::{ApiError, ApiResult};
use crate::http::{Json, Meta};
use crate::identity::jws;
use crate::identity::keys::{VerifyKey, verify_key_from_jwk};
use crate::netguard::Outbound;
use crate::store::identity::{self as idstore, ExternalIssuer};
use crate::store::{StoreError, tenants};
use crate::wire::ToApi;

/// An unknown `kid` refetches an issuer's JWKS at most this often.
pub const REFETCH_MIN: Duration = Duration::from_secs(60);
/// Keys are refreshed this often even when every `kid` is known.
const MAX_AGE: Duration = Duration::from_secs(3600);
/// Clock skew accepted on external tokens.
const LEEWAY_SECONDS: u64 = 60;
/// The largest JWKS document read.
const JWKS_MAX_BYTES: usize = 512 * 1024;
/// Deadline of one JWKS fetch (DNS, connection and answer).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The one answer for a JWKS that could not be had, whatever the reason (refused destination,
/// closed port, timeout, error status, not a JWKS): a token cannot probe the network through it.
const KEYS_UNAVAILABLE: &str = "The identity provider's keys are unavailable";

struct IssuerKeys {
    keys: HashMap<String, Arc<VerifyKey>>,
    fetched_at: Instant,
    /// Whether a fetch ever succeeded; until one does, the keys are "unavailable".
    ok: bool,
}

/// One issuer's cached keys, locked on their own: a slow identity provider delays only the
/// tokens of its own registration.
type Slot = Arc<tokio::sync::Mutex<Option<IssuerKeys>>>;

/// JWKS per registered issuer (keyed by registration id).
#[derive(Default)]
pub struct JwksCache {
    entries: std::sync::Mutex<HashMap<String, Slot>>,
    /// The outbound-URL guard every fetch goes through (set by `AppState`; unset, the default
    /// guard: public `https` destinations only).
    outbound: OnceLock<Arc<Outbound>>,
    /// Override of [`REFETCH_MIN`] in milliseconds (0 = the default); for tests.
    refetch_min_ms: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache").finish_non_exhaustive()
    }
}

impl JwksCache {
    /// Sets the guard that JWKS fetches go through (once; later calls are ignored).
    pub fn configure(&self, outbound: Arc<Outbound>) {
        let _ = self.outbound.set(outbound);
    }

    fn outbound(&self) -> &Outbound {
        self.outbound.get_or_init(Arc::default)
    }

    /// Changes the minimum interval between refetches triggered by unknown kids (tests use a
    /// short one to see the refetch happen without waiting a minute).
    pub fn set_refetch_min(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        self.refetch_min_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn refetch_min(&self) -> Duration {
        match self
            .refetch_min_ms
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => REFETCH_MIN,
            ms => Duration::from_millis(ms),
        }
    }

    async fn fetch(
        &self,
        reg: &ExternalIssuer,
    ) -> Result<HashMap<String, Arc<VerifyKey>>, ApiError> {
        let unavailable = |reason: &str| {
            tracing::warn!(identity_provider = %reg.id, reason, "JWKS fetch failed");
            ApiError::auth_invalid(KEYS_UNAVAILABLE)
        };
        let bytes = self
            .outbound()
            .get(&reg.jwks_url, JWKS_MAX_BYTES, FETCH_TIMEOUT)
            .await
            .map_err(|e| unavailable(e.reason()))?;
        let doc: Value = serde_json::from_slice(&bytes).map_err(|_| unavailable("not JSON"))?;
        let Some(keys) = doc.get("keys").and_then(Value::as_array) else {
            return Err(unavailable("no keys array"));
        };
        Ok(keys
            .iter()
            .filter_map(verify_key_from_jwk)
            .map(|k| (k.kid.clone(), Arc::new(k)))
            .collect())
    }

    fn slot(&self, id: &str) -> Slot {
        let mut map = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(id.to_string()).or_default().clone()
    }

    /// The issuer's key for `kid`: cached, or refetched (at most once a minute per issuer).
    async fn key(
        &self,
        reg: &ExternalIssuer,
        kid: &str,
    ) -> Result<Option<Arc<VerifyKey>>, ApiError> {
        let slot = self.slot(&reg.id);
        let mut entry = slot.lock().await;
        if let Some(e) = entry.as_ref() {
            if let Some(k) = e.keys.get(kid)
                && e.fetched_at.elapsed() < MAX_AGE
            {
                return Ok(Some(k.clone()));
            }
            if e.fetched_at.elapsed() < self.refetch_min() {
                if !e.ok {
                    return Err(ApiError::auth_invalid(KEYS_UNAVAILABLE));
                }
                return Ok(e.keys.get(kid).cloned());
            }
        }
        match self.fetch(reg).await {
            Ok(keys) => {
                let found = keys.get(kid).cloned();
                *entry = Some(IssuerKeys {
                    keys,
                    fetched_at: Instant::now(),
                    ok: true,
                });
                Ok(found)
            }
            Err(e) => match entry.as_mut() {
                // Keep serving the previous keys, and wait before trying again.
                Some(old) if old.ok => {
                    old.fetched_at = Instant::now();
                    Ok(old.keys.get(kid).cloned())
                }
                _ => {
                    *entry = Some(IssuerKeys {
                        keys: HashMap::new(),
                        fetched_at: Instant::now(),
                        ok: false,
                    });
                    Err(e)
                }
            },
        }
    }

    pub async fn forget(&self, id: &str) {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id);
    }
}

fn audience_of(claims: &Value) -> Vec<String> {
    match claims.get("aud") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// `Auth::verify` for `JwtKind::External`.
pub async fn verify(auth: &Auth, token: &str, issuer: &str) -> Result<Principal, ApiError> {
    let untrusted = || ApiError::auth_invalid("This token was not issued by a trusted issuer");
    let header = jws::check_header(token)?;
    let regs = idstore::issuers_by_iss(auth.store().pool(), issuer).await?;
    if regs.is_empty() {
        return Err(untrusted());
    }
    // Only to pick the registration; the signature and `aud` are checked below.
    let unverified = crate::auth::jwt::peek_claims(token)?;
    let auds = audience_of(&unverified);
    let reg = regs
        .iter()
        .find(|r| auds.iter().any(|a| a == &r.audience))
        .ok_or_else(|| ApiError::auth_invalid("The token's audience is not registered"))?;
    let Some(kid) = header.get("kid").and_then(Value::as_str) else {
        return Err(ApiError::auth_invalid("The token has no kid"));
    };
    let Some(key) = auth.identity.external.key(reg, kid).await? else {
        return Err(ApiError::auth_invalid(
            "The token was signed by an unknown key",
        ));
    };
    let validation = jws::validation(
        key.alg,
        Some(&reg.issuer),
        Some(&reg.audience),
        LEEWAY_SECONDS,
    );
    let claims = jws::verify(token, key.alg, &key.key, &validation)?;
    let Some(who) = claims
        .get(&reg.claim)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    else {
        return Err(ApiError::auth_invalid(format!(
            "The token lacks the {} claim",
            reg.claim
        )));
    };
    let pool = auth.store().pool();
    // One connection at a time: never hold one while waiting for another from the pool.
    let user = if reg.claim == "email" {
        let mut conn = pool.acquire().await.map_err(StoreError::from)?;
        tenants::find_user_by_email(&mut conn, who).await?
    } else {
        None
    };
    let member = match user {
        Some(u) => tenants::resolve_permissions(pool, &reg.tenant_id, &u.id)
            .await?
            .map(|p| (u, p)),
        None => None,
    };
    // Never more than the admin who registered the issuer holds, and never platform powers:
    // whoever controls an IdP's keys must not be able to escalate through it.
    let platform_admin = false;
    let (user_id, permissions) = match member {
        Some((u, p)) => (Some(Arc::<str>::from(u.id.as_str())), p),
        None => match &reg.default_role {
            Some(role) => {
                let mut conn = pool.acquire().await.map_err(StoreError::from)?;
                let p = crate::identity::tokens::role_permissions(
                    &mut conn,
                    &reg.tenant_id,
                    std::slice::from_ref(role),
                )
                .await?;
                (None, p)
            }
            None => {
                return Err(ApiError::auth_invalid(
                    "This identity is not a member of the issuer's tenant",
                ));
            }
        },
    };
    let permissions = permissions.intersect(reg.max_permissions);
    let subject: Arc<str> = format!("{}:{who}", reg.id).into();
    loop {
        let epoch = auth.epoch();
        let mut ids: Vec<Arc<str>> = vec![reg.id.as_str().into(), subject.clone()];
        ids.extend(user_id.clone());
        let live = auth.hub().register(&ids);
        if auth.epoch() != epoch {
            // Something was revoked meanwhile: make sure the registration still exists.
            if idstore::issuers_by_iss(pool, issuer)
                .await?
                .iter()
                .all(|r| r.id != reg.id)
            {
                return Err(untrusted());
            }
            continue;
        }
        return Ok(crate::identity::principal(
            reg.tenant_id.as_str().into(),
            user_id.clone(),
            CredentialType::ExternalJwt,
            Some(subject.clone()),
            permissions,
            platform_admin,
            live,
        ));
    }
}

// ---- management: /v1/identity-providers ---------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateIssuerBody {
    pub issuer: String,
    pub jwks_url: String,
    pub audience: String,
    #[serde(default)]
    pub claim: Option<String>,
    #[serde(default)]
    pub default_role: Option<String>,
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Meta(meta): Meta,
    Json(body): Json<CreateIssuerBody>,
) -> ApiResult<Response> {
    let input = crate::service::identity::check_identity_provider(
        &state,
        &body.issuer,
        &body.jwks_url,
        body.audience,
        body.claim,
        body.default_role,
    )
    .await?;
    let mut unit = crate::service::Unit::begin(&state.store, &meta).await?;
    let reg = crate::service::identity::create_identity_provider(&mut unit, &caller, input).await?;
    unit.commit(&state.auth).await?;
    Ok((StatusCode::CREATED, axum::Json(reg.to_api())).into_response())
}

pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Response> {
    let data: Vec<Value> = idstore::list_issuers(state.store.pool(), &caller.tenant_id)
        .await?
        .iter()
        .map(ExternalIssuer::to_api)
        .collect();
    Ok(axum::Json(json!({"object": "list", "data": data})).into_response())
}

pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Meta(meta): Meta,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let mut unit = crate::service::Unit::begin(&state.store, &meta).await?;
    crate::service::identity::delete_identity_provider(&mut unit, &caller, &id).await?;
    unit.commit(&state.auth).await?;
    // Local memory only (its cached JWKS): other instances refuse its tokens from the
    // invalidation and the registration being gone.
    state.auth.identity.external.forget(&id).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}
