//! The app-JWT verifier (SPEC §2.4) and the subscription-id verifier (SPEC §2.5).
//!
//! An app JWT reaches this verifier only because its unverified `iss` is a subscription id
//! (`auth::jwt::classify`); from here on every rule is this kind's own:
//!
//! 1. header: `alg` must be one Tollgate knows (`none` never parses), `kid` is required, `jku`,
//!    `x5u`, `jwk`, `x5c` and `crit` are refused outright (a key is never taken from a token);
//! 2. `kid` selects one credential of *that* subscription; the credential pins the algorithm, so an
//!    HS256 token is never checked against a public key (or the reverse);
//! 3. signature, `exp` (required), `nbf`, `iss` = the subscription id, `aud` (if present) = the
//!    gateway's public URL, leeway 60 s; then `iat` (required, not in the future),
//!    `exp - iat` ≤ the subscription's maximum lifetime, and `sub` (the end user);
//! 4. the subscription must be active (`403 SUBSCRIPTION_INACTIVE`);
//! 5. `bind` / `bind_sha256` become the principal's binding, checked against the body by the
//!    handler (`403 AUTH_BINDING_MISMATCH`);
//! 6. when the subscription asks for single-use tokens, `jti` is recorded in the store (shared by
//!    every instance) until the token expires; a second use is `401 AUTH_REPLAYED`.

use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use serde_json::Value;

use super::{LEEWAY_SECONDS, SubscriptionAccess};
use crate::auth::jwt::is_subscription_id;
use crate::auth::{Auth, CredentialType, PermSet, Permission, Principal};
use crate::error::{ApiError, ErrorCode};
use tollgate_core::binding::Binding;

/// What a bare subscription id may do: read its own operations and models, nothing more.
pub fn subscription_id_permissions() -> PermSet {
    PermSet::of(&[Permission::ModelsRead, Permission::OperationsRead])
}

pub async fn verify_subscription_id(auth: &Auth, id: &str) -> Result<Principal, ApiError> {
    let unknown = || ApiError::auth_invalid("Unknown or inactive subscription id");
    if !is_subscription_id(id) {
        return Err(unknown());
    }
    loop {
        let epoch = auth.epoch();
        let Some(access) = super::access(auth, id, epoch).await? else {
            return Err(unknown());
        };
        if !access.is_active() {
            return Err(unknown());
        }
        let live = auth.hub().register(std::slice::from_ref(&access.id));
        // A cancellation that committed while we loaded bumped the epoch before cutting.
        if auth.epoch() != epoch {
            continue;
        }
        return Ok(Principal {
            tenant_id: access.tenant_id.clone(),
            user_id: None,
            subscription_id: Some(access.id.clone()),
            credential_type: CredentialType::SubscriptionId,
            credential_id: Some(access.id.clone()),
            permissions: subscription_id_permissions(),
            platform_admin: false,
            rate_limit: None,
            allowed_models: Some(access.allowed_models.clone()),
            plan_limits: Some(access.plan_limits.clone()),
            binding: None,
            web_origins: Some(access.allowed_origins.clone()),
            end_user: None,
            live,
        });
    }
}

fn invalid(msg: &str) -> ApiError {
    ApiError::auth_invalid(msg.to_string())
}

fn map_jwt_error(e: &jsonwebtoken::errors::Error) -> ApiError {
    match e.kind() {
        ErrorKind::ExpiredSignature => {
            ApiError::new(ErrorCode::AuthTokenExpired, "The token has expired")
        }
        ErrorKind::ImmatureSignature => invalid("The token is not valid yet (nbf)"),
        ErrorKind::InvalidAudience => invalid("The token's aud is not this gateway"),
        ErrorKind::InvalidIssuer => invalid("The token's iss does not match its credential"),
        ErrorKind::InvalidSignature => invalid("The token's signature is invalid"),
        ErrorKind::InvalidAlgorithm => invalid("The token's alg does not match its credential"),
        ErrorKind::MissingRequiredClaim(c) => {
            ApiError::auth_invalid(format!("The token has no {c} claim"))
        }
        ErrorKind::InvalidClaimFormat(c) => {
            ApiError::auth_invalid(format!("The token's {c} claim is malformed"))
        }
        _ => invalid("The token is invalid"),
    }
}

/// A NumericDate claim, range-checked by the shared JWS core (0 to the year 9999).
pub(crate) fn numeric(claims: &Value, name: &str) -> Result<Option<i64>, ApiError> {
    crate::identity::jws::numeric_date(claims, name)
}

fn valid_pointer(p: &str) -> bool {
    p.is_empty() || (p.starts_with('/') && p.len() <= 512)
}

/// Reads `bind` and `bind_sha256` into a [`Binding`]; malformed ones make the token invalid.
pub fn parse_binding(claims: &Value) -> Result<Option<Binding>, ApiError> {
    let mut b = Binding::default();
    match claims.get("bind") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (pointer, value) in m {
                if !valid_pointer(pointer) {
                    return Err(ApiError::auth_invalid(format!(
                        "bind: {pointer:?} is not a JSON Pointer"
                    )));
                }
                b.exact.push((pointer.clone(), value.clone()));
            }
        }
        Some(_) => return Err(invalid("bind must be an object")),
    }
    match claims.get("bind_sha256") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (pointer, value) in m {
                let hash = value.as_str().unwrap_or_default();
                if !valid_pointer(pointer)
                    || hash.len() != 64
                    || !hash.bytes().all(|c| c.is_ascii_hexdigit())
                {
                    return Err(ApiError::auth_invalid(format!(
                        "bind_sha256: {pointer:?} must map a JSON Pointer to a hex SHA-256"
                    )));
                }
                b.sha256.push((pointer.clone(), hash.to_ascii_lowercase()));
            }
        }
        Some(_) => return Err(invalid("bind_sha256 must be an object")),
    }
    Ok((!b.is_empty()).then_some(b))
}

/// Checks the header: a known `alg`, a `kid`, and none of the key-carrying headers.
pub(crate) fn check_header(token: &str) -> Result<(jsonwebtoken::Header, String), ApiError> {
    let header = jsonwebtoken::decode_header(token)
        .map_err(|_| invalid("The token header is malformed or names an unsupported alg"))?;
    if header.jku.is_some() || header.x5u.is_some() || header.jwk.is_some() || header.x5c.is_some()
    {
        return Err(invalid(
            "The token header carries a key or key URL (jku, x5u, jwk, x5c); these are never accepted",
        ));
    }
    if header.crit.is_some() {
        return Err(invalid("The token header has critical extensions (crit)"));
    }
    let kid = header
        .kid
        .clone()
        .filter(|k| !k.is_empty())
        .ok_or_else(|| invalid("The token has no kid; it names the subscription's credential"))?;
    Ok((header, kid))
}

pub async fn verify_app_jwt(
    auth: &Auth,
    token: &str,
    subscription_id: &str,
) -> Result<Principal, ApiError> {
    let (header, kid) = check_header(token)?;
    let (access, key, live) = loop {
        let epoch = auth.epoch();
        let Some(access) = super::access(auth, subscription_id, epoch).await? else {
            return Err(invalid("Unknown subscription"));
        };
        let Some(key) = access.keys.get(&kid).cloned() else {
            return Err(invalid("Unknown kid for this subscription"));
        };
        let live = auth.hub().register(&[access.id.clone(), key.id.clone()]);
        if auth.epoch() != epoch {
            continue;
        }
        break (access, key, live);
    };
    // The credential pins the algorithm (jsonwebtoken checks it too).
    if header.alg != key.alg.jwt() {
        return Err(invalid("The token's alg does not match its credential"));
    }
    let data = jsonwebtoken::decode::<Value>(token, &key.key, &key.validation)
        .map_err(|e| map_jwt_error(&e))?;
    let claims = data.claims;
    check_claims(auth, &access, &claims)?;
    if !access.is_active() {
        return Err(ApiError::new(
            ErrorCode::SubscriptionInactive,
            "The subscription is not active",
        ));
    }
    let binding = parse_binding(&claims)?;
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 256)
        .ok_or_else(|| invalid("The token's sub (the end user) must be a non-empty string"))?;
    if access.single_use_tokens {
        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= 256)
            .ok_or_else(|| invalid("This subscription requires single-use tokens with a jti"))?;
        let exp = numeric(&claims, "exp")?.unwrap_or_default();
        let forget_at = (exp + LEEWAY_SECONDS as i64).saturating_mul(1000);
        let fresh = crate::store::subscriptions::record_jti(
            auth.store().pool(),
            &access.id,
            jti,
            forget_at,
        )
        .await?;
        if !fresh {
            return Err(ApiError::new(
                ErrorCode::AuthReplayed,
                "This single-use token was already used",
            ));
        }
    }
    Ok(Principal {
        tenant_id: access.tenant_id.clone(),
        user_id: None,
        subscription_id: Some(access.id.clone()),
        credential_type: CredentialType::AppJwt,
        credential_id: Some(key.id.clone()),
        permissions: crate::auth::subscription_key_permissions(),
        platform_admin: false,
        rate_limit: None,
        allowed_models: Some(access.allowed_models.clone()),
        plan_limits: Some(access.plan_limits.clone()),
        binding: binding.map(Arc::new),
        web_origins: Some(access.allowed_origins.clone()),
        end_user: Some(sub.into()),
        live,
    })
}

/// The rules jsonwebtoken does not know: `iat`, the lifetime cap, the shape of `aud`.
fn check_claims(auth: &Auth, access: &SubscriptionAccess, claims: &Value) -> Result<(), ApiError> {
    crate::identity::jws::check_numeric_dates(claims)?;
    let now = crate::util::now_ms() / 1000;
    let leeway = LEEWAY_SECONDS as i64;
    let exp = numeric(claims, "exp")?.ok_or_else(|| invalid("The token has no exp claim"))?;
    let iat = numeric(claims, "iat")?.ok_or_else(|| invalid("The token has no iat claim"))?;
    if iat > now + leeway {
        return Err(invalid("The token's iat is in the future"));
    }
    if exp <= iat {
        return Err(invalid("The token's exp is not after its iat"));
    }
    if exp - iat > access.max_token_lifetime_seconds {
        return Err(ApiError::auth_invalid(format!(
            "The token's lifetime (exp - iat = {} s) exceeds this subscription's maximum of {} s",
            exp - iat,
            access.max_token_lifetime_seconds
        )));
    }
    match claims.get("aud") {
        None | Some(Value::Null) => {}
        Some(Value::String(a)) if a == auth.public_url() => {}
        Some(Value::Array(list))
            if list.iter().any(|a| a.as_str() == Some(auth.public_url()))
                && list.iter().all(Value::is_string) => {}
        Some(_) => return Err(invalid("The token's aud is not this gateway")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn binding_claims_parse() {
        let b = parse_binding(&json!({"bind": {"/model": "m", "/n": 1},
            "bind_sha256": {"/prompt": "AB".repeat(32)}}))
        .unwrap()
        .unwrap();
        assert_eq!(b.exact.len(), 2);
        assert_eq!(b.sha256[0].1, "ab".repeat(32));
        assert!(parse_binding(&json!({})).unwrap().is_none());
        assert!(parse_binding(&json!({"bind": {"model": "m"}})).is_err());
        assert!(parse_binding(&json!({"bind": ["x"]})).is_err());
        assert!(parse_binding(&json!({"bind_sha256": {"/p": "xyz"}})).is_err());
    }

    #[test]
    fn numeric_dates() {
        assert_eq!(numeric(&json!({"iat": 5}), "iat").unwrap(), Some(5));
        assert_eq!(numeric(&json!({"iat": 5.7}), "iat").unwrap(), Some(5));
        assert_eq!(numeric(&json!({}), "iat").unwrap(), None);
        assert!(numeric(&json!({"iat": "5"}), "iat").is_err());
    }
}
