//! API key management (SPEC §2.1, §4.2): create (shown once), list, get, patch, revoke, rotate.
//! `keys:write` manages the caller's own keys, `keys:admin` any key in the tenant. A key of
//! another tenant — or, without `keys:admin`, of another user — is `404`.
//!
//! The ceiling (SPEC §2): a key created, changed or rotated (rotation hands out its new secret)
//! never holds more than the caller's own authority — its effective permissions, and the owner
//! and platform powers ([`Authority`]). A key created without `scopes` by a caller that holds
//! less than the key would inherits the caller's permissions as its scopes. Revoking is always
//! allowed to whoever manages the key.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::auth::middleware::{Caller, MemberPowers, within_ceiling};
use crate::auth::{PermSet, Permission, subscription_key_permissions};
use crate::error::{ApiError, ApiResult};
use crate::http::{Json, Meta, OptionalJson};
use crate::service::Unit;
use crate::service::keys::{self as keys_service, NewKeySpec, validate_name};
use crate::store::Conn;
use crate::store::keys::{self as keystore, ApiKeyRecord, KeyRateLimit};
use crate::util::{now_ms, parse_rfc3339};
use crate::wire::ToApi;
use tollgate_core::apikey;
use tollgate_core::permissions::Authority;

/// Distinguishes "field absent" from "field set to null" in PATCH bodies.
#[derive(Debug, Default)]
pub enum Patch<T> {
    #[default]
    Absent,
    Null,
    Value(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Patch<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Option::<T>::deserialize(d)? {
            None => Patch::Null,
            Some(v) => Patch::Value(v),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyBody {
    pub name: String,
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    #[serde(default)]
    pub rate_limit: Option<KeyRateLimit>,
    #[serde(default)]
    pub subscription_id: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchKeyBody {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub expires_at: Patch<String>,
    #[serde(default)]
    pub scopes: Patch<Vec<String>>,
    #[serde(default)]
    pub rate_limit: Patch<KeyRateLimit>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    #[serde(default)]
    pub grace_period_seconds: Option<u64>,
}

fn validate_expiry(s: &str) -> ApiResult<i64> {
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

fn validate_scopes(scopes: &[String], owner_perms: PermSet) -> ApiResult<PermSet> {
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

fn validate_rate_limit(rl: &KeyRateLimit) -> ApiResult<()> {
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
fn own_user(caller: &Caller) -> Option<&str> {
    caller.user_id.as_deref()
}

/// Loads a key the caller may manage, else 404.
async fn load_manageable(conn: &mut Conn, caller: &Caller, id: &str) -> ApiResult<ApiKeyRecord> {
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

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Meta(meta): Meta,
    Json(body): Json<CreateKeyBody>,
) -> ApiResult<Response> {
    let name = validate_name(&body.name)?;
    let expires_at = body
        .expires_at
        .as_deref()
        .map(validate_expiry)
        .transpose()?;
    if let Some(rl) = &body.rate_limit {
        validate_rate_limit(rl)?;
    }
    if let Some(sub) = &body.subscription_id {
        // A subscription-bound key (no user; models and limits from the plan).
        if body.user_id.is_some() {
            return Err(ApiError::validation(
                "user_id",
                "a key belongs to a user or to a subscription, not both",
            ));
        }
        let spec = crate::service::subscriptions::SubscriptionKeySpec {
            name,
            expires_at: body.expires_at.clone(),
            scopes: body.scopes.clone(),
            rate_limit: body.rate_limit.clone(),
        };
        let out =
            crate::subscriptions::api::create_subscription_key(&state, &caller, &meta, sub, spec)
                .await?;
        return Ok((StatusCode::CREATED, axum::Json(out)).into_response());
    }
    let mut unit = Unit::begin(&state.store, &meta).await?;
    let owner = match &body.user_id {
        Some(other) if Some(other.as_str()) != own_user(&caller) => {
            caller.require(Permission::KeysAdmin)?;
            Some(other.clone())
        }
        _ => {
            if !caller.has(Permission::KeysAdmin) {
                caller.require(Permission::KeysWrite)?;
            }
            own_user(&caller).map(str::to_string)
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
    let scopes = match body.scopes {
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
        rate_limit: body.rate_limit,
        created_by: caller.user_id.as_deref().map(str::to_string),
    };
    let (rec, secret) =
        keys_service::create(&mut unit, state.auth.key_prefix(), spec, caller.actor()).await?;
    unit.commit(&state.auth).await?;
    let mut out = rec.to_api();
    out["key"] = Value::String(secret.plaintext);
    Ok((StatusCode::CREATED, axum::Json(out)).into_response())
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub include_revoked: Option<bool>,
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Response> {
    let user_filter = if caller.has(Permission::KeysAdmin) {
        q.user_id.clone()
    } else {
        caller.require(Permission::KeysWrite)?;
        match own_user(&caller) {
            Some(u) => Some(u.to_string()),
            None => return Ok(axum::Json(json!({"object": "list", "data": []})).into_response()),
        }
    };
    let keys = keystore::list(
        state.store.pool(),
        &caller.tenant_id,
        user_filter.as_deref(),
    )
    .await?;
    let include_revoked = q.include_revoked.unwrap_or(true);
    let data: Vec<Value> = keys
        .iter()
        .filter(|k| include_revoked || k.revoked_at.is_none())
        .map(ApiKeyRecord::to_api)
        .collect();
    Ok(axum::Json(json!({"object": "list", "data": data})).into_response())
}

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let mut conn = state
        .store
        .pool()
        .acquire()
        .await
        .map_err(crate::store::StoreError::from)?;
    let rec = load_manageable(&mut conn, &caller, &id).await?;
    Ok(axum::Json(rec.to_api()).into_response())
}

pub async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    Meta(meta): Meta,
    Path(id): Path<String>,
    Json(body): Json<PatchKeyBody>,
) -> ApiResult<Response> {
    let mut unit = Unit::begin(&state.store, &meta).await?;
    let mut rec = load_manageable(unit.conn(), &caller, &id).await?;
    if rec.revoked_at.is_some() {
        return Err(ApiError::conflict("A revoked key cannot be changed"));
    }
    let mut changed = Vec::new();
    if let Some(name) = &body.name {
        rec.name = validate_name(name)?;
        changed.push("name");
    }
    match &body.expires_at {
        Patch::Absent => {}
        Patch::Null => {
            rec.expires_at = None;
            changed.push("expires_at");
        }
        Patch::Value(s) => {
            rec.expires_at = Some(validate_expiry(s)?);
            changed.push("expires_at");
        }
    }
    match body.scopes {
        Patch::Absent => {}
        Patch::Null => {
            rec.scopes = None;
            changed.push("scopes");
        }
        Patch::Value(scopes) => {
            match &rec.user_id {
                Some(owner) => {
                    let perms = MemberPowers::load(unit.conn(), &rec.tenant_id, owner)
                        .await?
                        .map(|m| m.permissions)
                        .unwrap_or_default();
                    validate_scopes(&scopes, perms)?;
                }
                None => {
                    validate_subscription_scopes(&scopes)?;
                }
            }
            rec.scopes = Some(scopes);
            changed.push("scopes");
        }
    }
    match body.rate_limit {
        Patch::Absent => {}
        Patch::Null => {
            rec.rate_limit = None;
            changed.push("rate_limit");
        }
        Patch::Value(rl) => {
            validate_rate_limit(&rl)?;
            rec.rate_limit = Some(rl);
            changed.push("rate_limit");
        }
    }
    if !changed.is_empty() {
        // The key as the change leaves it must be within the caller's own authority: a
        // credential changes only keys it could have created (revoking is always allowed).
        let ceiling = caller.authority(unit.conn()).await?;
        let after = key_authority(unit.conn(), &rec).await?;
        let param = changed.contains(&"scopes").then_some("scopes");
        within_ceiling(ceiling, after, "change this key", param)?;
        keys_service::update(&mut unit, &rec, &changed, caller.actor()).await?;
    }
    unit.commit(&state.auth).await?;
    Ok(axum::Json(rec.to_api()).into_response())
}

pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Meta(meta): Meta,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let mut unit = Unit::begin(&state.store, &meta).await?;
    load_manageable(unit.conn(), &caller, &id).await?;
    let (rec, _) = keys_service::revoke(&mut unit, &caller.tenant_id, &id, caller.actor()).await?;
    unit.commit(&state.auth).await?;
    Ok(axum::Json(rec.to_api()).into_response())
}

const MAX_GRACE_SECONDS: u64 = 30 * 24 * 3600;

pub async fn rotate(
    State(state): State<AppState>,
    caller: Caller,
    Meta(meta): Meta,
    Path(id): Path<String>,
    body: OptionalJson<RotateBody>,
) -> ApiResult<Response> {
    let grace = body.0.and_then(|b| b.grace_period_seconds).unwrap_or(0);
    if grace > MAX_GRACE_SECONDS {
        return Err(ApiError::validation(
            "grace_period_seconds",
            "grace_period_seconds must be at most 30 days",
        ));
    }
    let mut unit = Unit::begin(&state.store, &meta).await?;
    let rec = load_manageable(unit.conn(), &caller, &id).await?;
    if rec.revoked_at.is_some() {
        return Err(ApiError::conflict("A revoked key cannot be rotated"));
    }
    // Rotation hands out the key's new secret: only to a caller holding all the key can do.
    let ceiling = caller.authority(unit.conn()).await?;
    within_ceiling(
        ceiling,
        key_authority(unit.conn(), &rec).await?,
        "rotate this key (rotation hands out its new secret)",
        None,
    )?;
    let (rec, secret) = keys_service::rotate(
        &mut unit,
        state.auth.key_prefix(),
        &caller.tenant_id,
        &id,
        grace,
        caller.actor(),
    )
    .await?;
    unit.commit(&state.auth).await?;
    let mut out = rec.to_api();
    out["key"] = Value::String(secret.plaintext);
    Ok(axum::Json(out).into_response())
}

/// Formats a key for the JSON printed by `tollgate init` and `tollgate keys create`.
pub fn created_json(rec: &ApiKeyRecord, secret: apikey::NewKey) -> Value {
    let mut out = rec.to_api();
    out["key"] = Value::String(secret.plaintext);
    out
}
