//! Platform access tokens (SPEC §2.2): issuance and per-request verification.
//!
//! Claims: `iss` (public URL), `sub` (user id, or the client id for a service account), `aud`
//! (public URL), `exp`, `iat`, `nbf`, `jti`, `client_id`, `tid`, `scope`, and `sid` (the refresh
//! token family) for tokens of a login session. Permissions are never in the token: they are
//! resolved from the subject's current roles (cached per `jti`, tagged with the auth epoch so
//! any revocation or role change reloads them), narrowed by permission names in `scope`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::auth::{Auth, CredentialType, PermSet, Principal};
use crate::error::{ApiError, ErrorCode};
use crate::identity::jws;
use crate::store::identity as idstore;
use crate::store::{StoreError, tenants};
use crate::util::{new_id, now_ms};
use tollgate_core::permissions::builtin_role;

/// Clock skew accepted on `exp`/`nbf` of platform tokens.
pub const LEEWAY_SECONDS: u64 = 5;
/// Safety-net lifetime of a cached verification (invalidations are the main path).
const CACHE_TTL: Duration = Duration::from_secs(30);
const CACHE_MAX: usize = 50_000;

/// Scope values that are not permission names (OpenID-style); they never narrow anything.
pub const NON_PERMISSION_SCOPES: &[&str] = &["openid", "profile", "email", "offline_access"];

/// What a new access token is for.
#[derive(Debug, Clone)]
pub struct Grant {
    pub tenant_id: String,
    /// User id, or the client id for a service account.
    pub subject: String,
    pub client_id: String,
    pub scope: String,
    /// Refresh-token family (login session); `None` for client credentials.
    pub sid: Option<String>,
}

/// Issues a signed access token; returns it with its lifetime in seconds.
pub async fn issue_access_token(
    state: &AppState,
    grant: &Grant,
) -> Result<(String, u64), ApiError> {
    let ttl = state.config.auth.access_token_ttl_seconds.max(1);
    let now = now_ms() / 1000;
    let claims = json!({
        "iss": state.config.public_url, "sub": grant.subject, "aud": state.config.public_url,
        "exp": now + i64::try_from(ttl).unwrap_or(3600), "iat": now, "nbf": now,
        "jti": new_id("at"), "client_id": grant.client_id, "tid": grant.tenant_id,
        "scope": grant.scope, "sid": grant.sid,
    });
    Ok((sign_claims(state, &claims).await?, ttl))
}

/// Signs arbitrary claims with the current platform key (header `typ: at+jwt`). Exposed so tests
/// can mint tokens with chosen claims (expired, wrong audience) signed by the real key.
pub async fn sign_claims(state: &AppState, claims: &Value) -> Result<String, ApiError> {
    let signer = state
        .auth
        .identity
        .keys
        .signer(&state.store, &state.config)
        .await?;
    signer.sign(claims)
}

/// Parsed, verified claims of a platform access token.
#[derive(Debug, Clone, Deserialize)]
pub struct AccessClaims {
    pub sub: String,
    pub exp: u64,
    pub iat: u64,
    pub jti: String,
    pub client_id: String,
    pub tid: String,
    #[serde(default)]
    pub scope: String,
    #[serde(default)]
    pub sid: Option<String>,
}

/// Verifies signature and claims only (no store lookups). Used by introspection and logout too.
pub async fn verify_claims(auth: &Auth, token: &str) -> Result<AccessClaims, ApiError> {
    let header = jws::check_header(token)?;
    match header.get("typ").and_then(Value::as_str) {
        Some(t)
            if t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt") => {
        }
        _ => {
            return Err(ApiError::auth_invalid(
                "A platform access token must have typ at+jwt",
            ));
        }
    }
    let Some(kid) = header.get("kid").and_then(Value::as_str) else {
        return Err(ApiError::auth_invalid("The token has no kid"));
    };
    let Some(key) = auth
        .identity
        .keys
        .verifier(auth.store().pool(), kid)
        .await?
    else {
        return Err(ApiError::auth_invalid(
            "The token was signed by an unknown key",
        ));
    };
    let validation = jws::validation(
        key.alg,
        Some(auth.public_url()),
        Some(auth.public_url()),
        LEEWAY_SECONDS,
    );
    let claims = jws::verify(token, key.alg, &key.key, &validation)?;
    serde_json::from_value::<AccessClaims>(claims)
        .map_err(|_| ApiError::auth_invalid("The token's claims are malformed"))
}

/// Permissions named in a scope string; `None` when the scope names none (no narrowing).
pub fn scope_permissions(scope: &str) -> Result<Option<PermSet>, String> {
    let names: Vec<&str> = scope
        .split_whitespace()
        .filter(|s| !NON_PERMISSION_SCOPES.contains(s))
        .collect();
    if names.is_empty() {
        return Ok(None);
    }
    PermSet::parse(names).map(Some)
}

/// The permissions of a set of role ids (built-in names or custom role ids) in a tenant, now.
pub async fn role_permissions(
    conn: &mut crate::store::Conn,
    tenant_id: &str,
    roles: &[String],
) -> Result<PermSet, StoreError> {
    let mut set = PermSet::EMPTY;
    for r in roles {
        if let Some(p) = builtin_role(r) {
            set = set.union(p);
        } else if let Some(role) = tenants::get_role(conn, tenant_id, r).await? {
            set = set.union(role.permissions);
        }
    }
    Ok(set)
}

struct Cached {
    tenant_id: Arc<str>,
    user_id: Option<Arc<str>>,
    client_id: Arc<str>,
    sid: Option<Arc<str>>,
    permissions: PermSet,
    platform_admin: bool,
    epoch: u64,
    loaded: Instant,
}

/// Verified-token cache keyed by `jti`, tagged with the auth epoch.
#[derive(Default)]
pub struct TokenCache {
    map: Mutex<HashMap<String, Arc<Cached>>>,
}

impl TokenCache {
    fn get(&self, jti: &str, epoch: u64) -> Option<Arc<Cached>> {
        let map = self.map.lock().ok()?;
        map.get(jti)
            .filter(|c| c.epoch == epoch && c.loaded.elapsed() < CACHE_TTL)
            .cloned()
    }
    fn insert(&self, jti: String, c: Arc<Cached>) {
        if let Ok(mut map) = self.map.lock() {
            if map.len() >= CACHE_MAX {
                map.retain(|_, v| v.epoch == c.epoch && v.loaded.elapsed() < CACHE_TTL);
                if map.len() >= CACHE_MAX {
                    map.clear();
                }
            }
            map.insert(jti, c);
        }
    }
}

fn revoked(msg: &str) -> ApiError {
    ApiError::new(ErrorCode::AuthRevoked, msg)
}

async fn load(auth: &Auth, c: &AccessClaims, epoch: u64) -> Result<Arc<Cached>, ApiError> {
    let pool = auth.store().pool();
    if idstore::is_jti_revoked(pool, &c.jti).await? {
        return Err(revoked("The access token was revoked"));
    }
    let client = idstore::find_client(pool, &c.client_id)
        .await?
        .filter(|cl| cl.tenant_id == c.tid)
        .ok_or_else(|| ApiError::auth_invalid("The token's client is unknown"))?;
    if client.revoked_at.is_some() {
        return Err(revoked("The token's OAuth client was revoked"));
    }
    // One connection at a time: never hold one while waiting for another from the pool.
    let (user_id, perms, platform_admin) = match &c.sid {
        Some(sid) => {
            let fam = idstore::get_family(pool, sid)
                .await?
                .filter(|f| {
                    f.user_id == c.sub && f.tenant_id == c.tid && f.client_id == c.client_id
                })
                .ok_or_else(|| ApiError::auth_invalid("The token's session is unknown"))?;
            if fam.revoked_at.is_some() {
                return Err(revoked("The session was revoked"));
            }
            let perms = tenants::resolve_permissions(pool, &c.tid, &c.sub)
                .await?
                .ok_or_else(|| revoked("The user is no longer a member of this tenant"))?;
            let mut conn = pool.acquire().await.map_err(StoreError::from)?;
            let admin = tenants::get_user(&mut conn, &c.sub)
                .await?
                .is_some_and(|u| u.platform_admin);
            (Some(Arc::<str>::from(c.sub.as_str())), perms, admin)
        }
        None => {
            if !client.confidential || c.sub != client.id {
                return Err(ApiError::auth_invalid(
                    "The token's subject is not its client",
                ));
            }
            let mut conn = pool.acquire().await.map_err(StoreError::from)?;
            let perms = role_permissions(&mut conn, &c.tid, &client.roles).await?;
            (None, perms, false)
        }
    };
    let perms = match scope_permissions(&c.scope) {
        Ok(Some(scoped)) => perms.intersect(scoped),
        Ok(None) => perms,
        Err(_) => return Err(ApiError::auth_invalid("The token's scope is malformed")),
    };
    Ok(Arc::new(Cached {
        tenant_id: c.tid.as_str().into(),
        user_id,
        client_id: c.client_id.as_str().into(),
        sid: c.sid.as_deref().map(Into::into),
        permissions: perms,
        platform_admin,
        epoch,
        loaded: Instant::now(),
    }))
}

/// `Auth::verify` for `JwtKind::Platform`.
pub async fn verify_platform(auth: &Auth, token: &str) -> Result<Principal, ApiError> {
    let claims = verify_claims(auth, token).await?;
    let cache = &auth.identity.tokens;
    loop {
        let epoch = auth.epoch();
        let entry = match cache.get(&claims.jti, epoch) {
            Some(e) => e,
            None => {
                let e = load(auth, &claims, epoch).await?;
                cache.insert(claims.jti.clone(), e.clone());
                e
            }
        };
        let mut ids: Vec<Arc<str>> = vec![claims.jti.as_str().into(), entry.client_id.clone()];
        ids.extend(entry.sid.clone());
        ids.extend(entry.user_id.clone());
        let live = auth.hub().register(&ids);
        // A revocation that committed while we loaded bumped the epoch before cutting: re-verify.
        if auth.epoch() != epoch {
            continue;
        }
        let credential_id = entry.sid.clone().or_else(|| Some(entry.client_id.clone()));
        return Ok(crate::identity::principal(
            entry.tenant_id.clone(),
            entry.user_id.clone(),
            CredentialType::PlatformJwt,
            credential_id,
            entry.permissions,
            entry.platform_admin,
            live,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_narrow_only_with_permission_names() {
        assert_eq!(scope_permissions("openid offline_access").unwrap(), None);
        assert_eq!(scope_permissions("").unwrap(), None);
        let p = scope_permissions("openid models:read chat:write")
            .unwrap()
            .unwrap();
        assert!(p.contains(crate::auth::Permission::ChatWrite));
        assert!(!p.contains(crate::auth::Permission::KeysWrite));
        assert!(scope_permissions("bogus:perm").is_err());
    }
}
