//! API keys: create, update, rotate, revoke. Each is one function run in a [`Unit`]: the store
//! change, its audit event, and (when access is taken away or may change) its invalidation.

//!
//! The `*_as` operations are what a front end (the JSON API, the console) calls on behalf of a
//! caller: they check what the caller may do first (own vs any key, the credential ceiling of
//! SPEC §2), in the same unit, so a refused request changes nothing.

use serde_json::json;
use tollgate_core::apikey::{self, NewKey};
use tollgate_core::audit::{Action, Actor};
use tollgate_core::permissions::Authority;

use super::Unit;
use crate::auth::middleware::{Caller, MemberPowers, within_ceiling};
use crate::auth::{PermSet, Permission, subscription_key_permissions};
use crate::error::{ApiError, ApiResult};
use crate::store::Conn;
use crate::store::invalidations::Kind;
use crate::store::keys::{self as keystore, ApiKeyRecord, KeyRateLimit};
use crate::util::{new_id, now_ms, parse_rfc3339};

/// A key's name: trimmed, 1-200 characters.
pub fn validate_name(name: &str) -> ApiResult<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::validation(
            "name",
            "name must be 1-200 characters",
        ));
    }
    Ok(name.to_string())
}

/// Parameters of a new key, validated.
pub struct NewKeySpec {
    pub tenant_id: String,
    pub user_id: Option<String>,
    pub subscription_id: Option<String>,
    pub name: String,
    pub expires_at: Option<i64>,
    pub scopes: Option<Vec<String>>,
    pub rate_limit: Option<KeyRateLimit>,
    pub created_by: Option<String>,
}

/// Creates a key and its audit event. Returns the record and the plaintext (to be shown once).
pub async fn create(
    unit: &mut Unit<'_>,
    prefix: &str,
    spec: NewKeySpec,
    actor: Actor,
) -> ApiResult<(ApiKeyRecord, NewKey)> {
    let secret = apikey::generate(prefix);
    let rec = ApiKeyRecord {
        id: new_id("key"),
        tenant_id: spec.tenant_id,
        user_id: spec.user_id,
        subscription_id: spec.subscription_id,
        name: spec.name,
        hint: secret.hint.clone(),
        scopes: spec.scopes,
        rate_limit: spec.rate_limit,
        expires_at: spec.expires_at,
        created_at: now_ms(),
        created_by: spec.created_by,
        last_used_at: None,
        revoked_at: None,
        prev_valid_until: None,
    };
    keystore::insert(unit.conn(), &rec, &secret.hash.to_hex()).await?;
    let event = unit
        .event(rec.tenant_id.clone(), actor, Action::ApiKeyCreated)
        .target("api_key", rec.id.clone())
        .details(
            json!({"name": rec.name, "hint": rec.hint, "user_id": rec.user_id,
            "subscription_id": rec.subscription_id, "scopes": rec.scopes,
            "expires_at": rec.expires_at.map(crate::util::rfc3339)}),
        );
    unit.audit(event).await?;
    Ok((rec, secret))
}

/// Stores a key's changed settings (`changed` names the fields) with its audit event; its
/// verifications are re-resolved everywhere.
pub async fn update(
    unit: &mut Unit<'_>,
    rec: &ApiKeyRecord,
    changed: &[&'static str],
    actor: Actor,
) -> ApiResult<()> {
    keystore::update_settings(unit.conn(), rec).await?;
    let event = unit
        .event(rec.tenant_id.clone(), actor, Action::ApiKeyUpdated)
        .target("api_key", rec.id.clone())
        .details(json!({"changed": changed}));
    unit.audit(event).await?;
    unit.invalidate(Kind::Permissions, &rec.id).await
}

/// Gives a key a new secret; the old one stays valid for `grace_seconds` (without a grace period
/// it is dead at once, and requests still using it are cut). Returns the key as it is now and
/// the new plaintext (to be shown once).
pub async fn rotate(
    unit: &mut Unit<'_>,
    prefix: &str,
    tenant_id: &str,
    id: &str,
    grace_seconds: u64,
    actor: Actor,
) -> ApiResult<(ApiKeyRecord, NewKey)> {
    let secret = apikey::generate(prefix);
    let prev_valid_until = now_ms() + (grace_seconds as i64) * 1000;
    keystore::rotate(
        unit.conn(),
        tenant_id,
        id,
        &secret.hash.to_hex(),
        &secret.hint,
        prev_valid_until,
    )
    .await?;
    let event = unit
        .event(tenant_id, actor, Action::ApiKeyRotated)
        .target("api_key", id)
        .details(json!({"hint": secret.hint, "grace_period_seconds": grace_seconds}));
    unit.audit(event).await?;
    let kind = if grace_seconds == 0 {
        Kind::Credential
    } else {
        Kind::Permissions
    };
    unit.invalidate(kind, id).await?;
    let rec = keystore::get(unit.conn(), tenant_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("API key"))?;
    Ok((rec, secret))
}

/// Revokes a key (idempotent) with its audit event and invalidation. Returns the key and
/// whether this call revoked it.
pub async fn revoke(
    unit: &mut Unit<'_>,
    tenant_id: &str,
    id: &str,
    actor: Actor,
) -> ApiResult<(ApiKeyRecord, bool)> {
    let changed = keystore::revoke(unit.conn(), tenant_id, id, now_ms()).await?;
    let rec = keystore::get(unit.conn(), tenant_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("API key"))?;
    if changed {
        let event = unit
            .event(tenant_id, actor, Action::ApiKeyRevoked)
            .target("api_key", id)
            .details(json!({"name": rec.name, "hint": rec.hint}));
        unit.audit(event).await?;
        unit.invalidate(Kind::Credential, id).await?;
    }
    Ok((rec, changed))
}

/// Revokes a key by id in whatever tenant holds it, as the operator (the CLI, which runs with
/// store access and serves no requests: every instance applies the invalidation when it polls).
pub async fn revoke_as_operator(store: &crate::store::Store, id: &str) -> ApiResult<ApiKeyRecord> {
    let meta = crate::store::audit::RequestMeta::default();
    let mut unit = Unit::begin(store, &meta).await?;
    let Some(tenant_id) = keystore::tenant_of(unit.conn(), id).await? else {
        return Err(ApiError::not_found("API key"));
    };
    let (rec, _) = revoke(&mut unit, &tenant_id, id, Actor::operator()).await?;
    unit.commit_offline().await?;
    Ok(rec)
}

// ---- on behalf of a caller ------------------------------------------------------------------

pub fn validate_expiry(s: &str) -> ApiResult<i64> {
    let at = parse_rfc3339(s)
        .ok_or_else(|| ApiError::validation("expires_at", "expires_at must be an RFC 3339 time"))?;
    if at <= now_ms() {
        return Err(ApiError::validation(
            "expires_at",
            "expires_at must be in the future",
        ));
    }
    Ok(at)
}

pub fn validate_scopes(scopes: &[String], owner_perms: PermSet) -> ApiResult<PermSet> {
    let set = PermSet::parse(scopes.iter().map(String::as_str))
        .map_err(|bad| ApiError::validation("scopes", format!("unknown permission {bad:?}")))?;
    if !set.is_subset_of(owner_perms) {
        let extra: Vec<&str> = set
            .iter()
            .filter(|p| !owner_perms.contains(*p))
            .map(Permission::as_str)
            .collect();
        return Err(ApiError::validation(
            "scopes",
            format!(
                "scopes can only narrow the owner's permissions; the owner lacks {}",
                extra.join(", ")
            ),
        ));
    }
    Ok(set)
}

/// A subscription key's scopes can only narrow what subscription keys can do.
pub fn validate_subscription_scopes(scopes: &[String]) -> ApiResult<PermSet> {
    let set = PermSet::parse(scopes.iter().map(String::as_str))
        .map_err(|bad| ApiError::validation("scopes", format!("unknown permission {bad:?}")))?;
    if !set.is_subset_of(subscription_key_permissions()) {
        return Err(ApiError::validation(
            "scopes",
            "a subscription key's scopes can only narrow models:read, chat:write, \
             embeddings:write, images:write, operations:read",
        ));
    }
    Ok(set)
}

/// The scopes a new key gets when the request names none. `unscoped` is what the key would
/// hold without scopes, `narrowed(p)` what it holds scoped to `p`. When the caller's authority
/// covers `unscoped`, the key is unscoped (it follows its owner's roles); otherwise it inherits
/// the caller's own permissions as its scopes, so a narrowed credential never mints a wider one.
/// Refused when nothing would be left, or when the key would still act as an owner (or as the
/// platform owner) and the caller does not.
pub fn inherited_scopes(
    ceiling: Authority,
    unscoped: Authority,
    narrowed: impl Fn(PermSet) -> Authority,
) -> ApiResult<Option<Vec<String>>> {
    if unscoped.within(ceiling) {
        return Ok(None);
    }
    let perms = unscoped.permissions.intersect(ceiling.permissions);
    if perms.is_empty() {
        return Err(ApiError::permission_denied(
            "This credential holds none of the permissions the key would have, so it cannot \
             create it",
        )
        .with_param("scopes"));
    }
    within_ceiling(ceiling, narrowed(perms), "create this key", Some("scopes"))?;
    Ok(Some(
        perms.names().into_iter().map(str::to_string).collect(),
    ))
}

/// The authority a key holds (as stored, or as a change would leave it): a member's key has its
/// owner's current roles narrowed by its scopes; a subscription key the subscription-key
/// permissions narrowed by its scopes. Read in the caller's transaction.
pub async fn key_authority(conn: &mut Conn, rec: &ApiKeyRecord) -> ApiResult<Authority> {
    // Unparseable stored scopes grant nothing, as at verification.
    let scopes = rec
        .scopes
        .as_ref()
        .map(|s| PermSet::parse(s.iter().map(String::as_str)).unwrap_or_default());
    Ok(match &rec.user_id {
        Some(user) => match MemberPowers::load(conn, &rec.tenant_id, user).await? {
            Some(m) => m.credential(scopes),
            None => Authority::permissions_only(PermSet::EMPTY),
        },
        None => {
            let base = subscription_key_permissions();
            Authority::permissions_only(scopes.map_or(base, |s| base.intersect(s)))
        }
    })
}

pub fn validate_rate_limit(rl: &KeyRateLimit) -> ApiResult<()> {
    if rl.requests_per_minute == Some(0)
        || rl.tokens_per_minute == Some(0)
        || rl.concurrent_requests == Some(0)
        || rl.requests_per_day == Some(0)
        || rl.tokens_per_month == Some(0)
    {
        return Err(ApiError::validation(
            "rate_limit",
            "rate limits must be positive",
        ));
    }
    Ok(())
}

/// The caller's own user id, required for `keys:write` operations.
pub fn own_user(caller: &Caller) -> Option<&str> {
    caller.user_id.as_deref()
}

/// Loads a key the caller may manage (`keys:admin`: any of the tenant; `keys:write`: its own),
/// else 404 (403 without either permission).
pub async fn load_manageable(
    conn: &mut Conn,
    caller: &Caller,
    id: &str,
) -> ApiResult<ApiKeyRecord> {
    let rec = keystore::get(conn, &caller.tenant_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("API key"))?;
    let own = rec.user_id.is_some() && rec.user_id.as_deref() == own_user(caller);
    if caller.has(Permission::KeysAdmin) || (own && caller.has(Permission::KeysWrite)) {
        Ok(rec)
    } else if caller.has(Permission::KeysWrite) {
        Err(ApiError::not_found("API key"))
    } else {
        Err(caller
            .require(Permission::KeysWrite)
            .err()
            .unwrap_or_else(|| ApiError::not_found("API key")))
    }
}

/// A key as a caller asked for it (the body of `POST /v1/api-keys`, or the console's form).
#[derive(Debug, Default)]
pub struct KeyRequest {
    pub name: String,
    /// RFC 3339.
    pub expires_at: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub rate_limit: Option<KeyRateLimit>,
    /// A key bound to this subscription instead of a member.
    pub subscription_id: Option<String>,
    /// Another member's key (needs `keys:admin`).
    pub user_id: Option<String>,
}

/// Creates a key for `caller`: its own (`keys:write`), another member's (`keys:admin`) or a
/// subscription's, within the caller's ceiling. Returns the record and the plaintext (shown once).
pub async fn create_as(
    unit: &mut Unit<'_>,
    prefix: &str,
    caller: &Caller,
    req: KeyRequest,
) -> ApiResult<(ApiKeyRecord, NewKey)> {
    let name = validate_name(&req.name)?;
    let expires_at = req.expires_at.as_deref().map(validate_expiry).transpose()?;
    if let Some(rl) = &req.rate_limit {
        validate_rate_limit(rl)?;
    }
    if let Some(sub) = &req.subscription_id {
        // A subscription-bound key (no user; models and limits from the plan).
        if req.user_id.is_some() {
            return Err(ApiError::validation(
                "user_id",
                "a key belongs to a user or to a subscription, not both",
            ));
        }
        let spec = super::subscriptions::SubscriptionKeySpec {
            name,
            expires_at: req.expires_at,
            scopes: req.scopes,
            rate_limit: req.rate_limit,
        };
        return super::subscriptions::create_subscription_key(unit, prefix, caller, sub, spec)
            .await;
    }
    let owner = match &req.user_id {
        Some(other) if Some(other.as_str()) != own_user(caller) => {
            caller.require(Permission::KeysAdmin)?;
            Some(other.clone())
        }
        _ => {
            if !caller.has(Permission::KeysAdmin) {
                caller.require(Permission::KeysWrite)?;
            }
            own_user(caller).map(str::to_string)
        }
    };
    let Some(owner) = owner else {
        return Err(ApiError::validation(
            "user_id",
            "This credential has no user; name the key's owner in user_id",
        ));
    };
    let member = MemberPowers::load(unit.conn(), &caller.tenant_id, &owner)
        .await?
        .ok_or_else(|| ApiError::not_found("user").with_param("user_id"))?;
    let ceiling = caller.authority(unit.conn()).await?;
    let scopes = match req.scopes {
        Some(scopes) => {
            let set = validate_scopes(&scopes, member.permissions)?;
            within_ceiling(
                ceiling,
                member.credential(Some(set)),
                "create a key with these scopes",
                Some("scopes"),
            )?;
            Some(scopes)
        }
        None => inherited_scopes(ceiling, member.credential(None), |p| {
            member.credential(Some(p))
        })?,
    };
    let spec = NewKeySpec {
        tenant_id: caller.tenant_id.to_string(),
        user_id: Some(owner),
        subscription_id: None,
        name,
        expires_at,
        scopes,
        rate_limit: req.rate_limit,
        created_by: caller.user_id.as_deref().map(str::to_string),
    };
    create(unit, prefix, spec, caller.actor()).await
}

/// Revokes a key the caller manages (idempotent; revoking is always within the ceiling).
pub async fn revoke_as(unit: &mut Unit<'_>, caller: &Caller, id: &str) -> ApiResult<ApiKeyRecord> {
    load_manageable(unit.conn(), caller, id).await?;
    let (rec, _) = revoke(unit, &caller.tenant_id, id, caller.actor()).await?;
    Ok(rec)
}

/// The longest grace period a rotation may give the old secret.
pub const MAX_GRACE_SECONDS: u64 = 30 * 24 * 3600;

/// Rotates a key the caller manages and could have created (rotation hands out its new secret).
pub async fn rotate_as(
    unit: &mut Unit<'_>,
    prefix: &str,
    caller: &Caller,
    id: &str,
    grace_seconds: u64,
) -> ApiResult<(ApiKeyRecord, NewKey)> {
    if grace_seconds > MAX_GRACE_SECONDS {
        return Err(ApiError::validation(
            "grace_period_seconds",
            "grace_period_seconds must be at most 30 days",
        ));
    }
    let rec = load_manageable(unit.conn(), caller, id).await?;
    if rec.revoked_at.is_some() {
        return Err(ApiError::conflict("A revoked key cannot be rotated"));
    }
    let ceiling = caller.authority(unit.conn()).await?;
    within_ceiling(
        ceiling,
        key_authority(unit.conn(), &rec).await?,
        "rotate this key (rotation hands out its new secret)",
        None,
    )?;
    rotate(
        unit,
        prefix,
        &caller.tenant_id,
        id,
        grace_seconds,
        caller.actor(),
    )
    .await
}
