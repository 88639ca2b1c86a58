//! External identity-provider JWTs (SPEC §2.3). A tenant registers an issuer (issuer URL, JWKS
//! URL, audience, the claim naming the user, default role). Tokens are verified against the
//! issuer's cached JWKS; an unknown `kid` refetches it at most once a minute per issuer, and the
//! cache is refreshed hourly. Keys come only from the registered JWKS URL, never from the token.
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
use crate::store::audit::{AuditEvent, append};
use crate::store::identity::{self as idstore, ExternalIssuer};
use crate::store::invalidations::{self, Kind};
use crate::store::{StoreError, tenants};
use crate::util::{new_id, now_ms};

/// An unknown `kid` refetches an issuer's JWKS at most this often.
pub const REFETCH_MIN: Duration = Duration::from_secs(60);
/// Keys are refreshed this often even when every `kid` is known.
const MAX_AGE: Duration = Duration::from_secs(3600);
/// Clock skew accepted on external tokens.
const LEEWAY_SECONDS: u64 = 60;

struct IssuerKeys {
    keys: HashMap<String, Arc<VerifyKey>>,
    fetched_at: Instant,
}

/// JWKS per registered issuer (keyed by registration id).
#[derive(Default)]
pub struct JwksCache {
    entries: tokio::sync::Mutex<HashMap<String, IssuerKeys>>,
    http: OnceLock<reqwest::Client>,
    /// Override of [`REFETCH_MIN`] in milliseconds (0 = the default); for tests.
    refetch_min_ms: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache").finish_non_exhaustive()
    }
}

impl JwksCache {
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

    fn http(&self) -> &reqwest::Client {
        self.http.get_or_init(|| {
            reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default()
        })
    }

    async fn fetch(&self, url: &str) -> Result<HashMap<String, Arc<VerifyKey>>, ApiError> {
        let res = self.http().get(url).send().await.map_err(|e| {
            tracing::warn!(error = %e, "JWKS fetch failed");
            ApiError::auth_invalid("The identity provider's keys are unavailable")
        })?;
        if !res.status().is_success() {
            tracing::warn!(status = %res.status(), "JWKS fetch failed");
            return Err(ApiError::auth_invalid(
                "The identity provider's keys are unavailable",
            ));
        }
        let bytes = res
            .bytes()
            .await
            .map_err(|_| ApiError::auth_invalid("The identity provider's keys are unavailable"))?;
        let doc: Value = serde_json::from_slice(&bytes)
            .map_err(|_| ApiError::auth_invalid("The identity provider's JWKS is malformed"))?;
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .map(|ks| {
                ks.iter()
                    .filter_map(verify_key_from_jwk)
                    .map(|k| (k.kid.clone(), Arc::new(k)))
                    .collect()
            })
            .unwrap_or_default();
        Ok(keys)
    }

    /// The issuer's key for `kid`: cached, or refetched (at most once a minute per issuer).
    async fn key(
        &self,
        reg: &ExternalIssuer,
        kid: &str,
    ) -> Result<Option<Arc<VerifyKey>>, ApiError> {
        let mut entries = self.entries.lock().await;
        if let Some(e) = entries.get(&reg.id) {
            if let Some(k) = e.keys.get(kid)
                && e.fetched_at.elapsed() < MAX_AGE
            {
                return Ok(Some(k.clone()));
            }
            if e.fetched_at.elapsed() < self.refetch_min() {
                return Ok(e.keys.get(kid).cloned());
            }
        }
        let fetched = self.fetch(&reg.jwks_url).await;
        let keys = match fetched {
            Ok(k) => k,
            Err(e) => {
                // Keep serving the previous keys, and wait before trying again.
                if let Some(old) = entries.get_mut(&reg.id) {
                    old.fetched_at = Instant::now();
                    return Ok(old.keys.get(kid).cloned());
                }
                entries.insert(
                    reg.id.clone(),
                    IssuerKeys {
                        keys: HashMap::new(),
                        fetched_at: Instant::now(),
                    },
                );
                return Err(e);
            }
        };
        let found = keys.get(kid).cloned();
        entries.insert(
            reg.id.clone(),
            IssuerKeys {
                keys,
                fetched_at: Instant::now(),
            },
        );
        Ok(found)
    }

    async fn forget(&self, id: &str) {
        self.entries.lock().await.remove(id);
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
    let issuer = body.issuer.trim().to_string();
    if issuer.is_empty() || issuer == state.config.public_url {
        return Err(ApiError::validation(
            "issuer",
            "issuer must be the IdP's issuer and not this gateway",
        ));
    }
    if crate::auth::jwt::is_subscription_id(&issuer) {
        return Err(ApiError::validation(
            "issuer",
            "issuer must not look like a subscription id",
        ));
    }
    let jwks = url::Url::parse(&body.jwks_url)
        .map_err(|_| ApiError::validation("jwks_url", "jwks_url must be an absolute URL"))?;
    if !matches!(jwks.scheme(), "https" | "http") {
        return Err(ApiError::validation("jwks_url", "jwks_url must be http(s)"));
    }
    if body.audience.trim().is_empty() {
        return Err(ApiError::validation("audience", "audience is required"));
    }
    let claim = body.claim.unwrap_or_else(|| "email".into());
    let mut tx = state.store.begin().await?;
    let default_role = match &body.default_role {
        Some(role) => {
            let (ids, perms) = crate::api::users::resolve_roles(
                &mut tx,
                &caller.tenant_id,
                std::slice::from_ref(role),
            )
            .await?;
            if !perms.is_subset_of(caller.permissions) {
                return Err(ApiError::permission_denied(
                    "You cannot grant permissions you do not hold",
                ));
            }
            ids.into_iter().next()
        }
        None => None,
    };
    let reg = ExternalIssuer {
        id: new_id("idp"),
        tenant_id: caller.tenant_id.to_string(),
        issuer,
        jwks_url: body.jwks_url.clone(),
        audience: body.audience.trim().to_string(),
        claim,
        default_role,
        max_permissions: caller.permissions,
        created_at: now_ms(),
    };
    idstore::insert_issuer(&mut tx, &reg).await?;
    append(
        &mut tx,
        AuditEvent::new(
            caller.tenant_id.to_string(),
            caller.actor(),
            "identity_provider.created",
            &meta,
        )
        .target("identity_provider", reg.id.clone())
        .details(reg.to_api()),
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
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
    let mut tx = state.store.begin().await?;
    if !idstore::delete_issuer(&mut tx, &caller.tenant_id, &id).await? {
        return Err(ApiError::not_found("identity provider"));
    }
    append(
        &mut tx,
        AuditEvent::new(
            caller.tenant_id.to_string(),
            caller.actor(),
            "identity_provider.deleted",
            &meta,
        )
        .target("identity_provider", id.clone()),
    )
    .await?;
    invalidations::publish(&mut tx, Kind::Credential, &id, &meta).await?;
    tx.commit().await.map_err(StoreError::from)?;
    state.auth.identity.external.forget(&id).await;
    state.auth.invalidate(Kind::Credential, &id);
    Ok(StatusCode::NO_CONTENT.into_response())
}
