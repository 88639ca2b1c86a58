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
use crate::store::Conn;
use crate::store::audit::{Actor, AuditEvent, RequestMeta, append};
use crate::store::invalidations::{self, Kind};
use crate::store::keys::{self as keystore, ApiKeyRecord, KeyRateLimit};
use crate::util::{new_id, now_ms, parse_rfc3339};
use tollgate_core::apikey;
use tollgate_core::audit::Action;
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

/// Creates a key and its audit event in the caller's transaction. Used by the API, the CLI and
/// bootstrap. Returns the record and the plaintext (to be shown once).
pub async fn create_key(
    conn: &mut Conn,
    prefix: &str,
    spec: NewKeySpec,
    actor: Actor,
    meta: &RequestMeta,
) -> ApiResult<(ApiKeyRecord, apikey::NewKey)> {
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
    keystore::insert(conn, &rec, &secret.hash.to_hex()).await?;
    append(
        conn,
        AuditEvent::new(rec.tenant_id.clone(), actor, Action::ApiKeyCreated, meta)
            .target("api_key", rec.id.clone())
            .details(
                json!({"name": rec.name, "hint": rec.hint, "user_id": rec.user_id,
                "subscription_id": rec.subscription_id, "scopes": rec.scopes,
                "expires_at": rec.expires_at.map(crate::util::rfc3339)}),
            ),
    )
    .await?;
    Ok((rec, secret))
}

/// Revokes a key (idempotent) with its audit event and invalidation, in the caller's transaction.
/// Returns the key and whether this call revoked it.
pub async fn revoke_key(
    conn: &mut Conn,
    tenant_id: &str,
    id: &str,
    actor: Actor,
    meta: &RequestMeta,
) -> ApiResult<(ApiKeyRecord, bool)> {
    let at = now_ms();
    let changed = keystore::revoke(conn, tenant_id, id, at).await?;
    let rec = keystore::get(conn, tenant_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("API key"))?;
    if changed {
        append(
            conn,
            AuditEvent::new(tenant_id, actor, Action::ApiKeyRevoked, meta)
                .target("api_key", id)
                .details(json!({"name": rec.name, "hint": rec.hint})),
        )
        .await?;
        invalidations::publish(conn, Kind::Credential, id, meta).await?;
    }
    Ok((rec, changed))
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
        let spec = crate::subscriptions::api::SubscriptionKeySpec {
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
    let mut tx = state.store.begin().await?;
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
    let member = MemberPowers::load(&mut tx, &caller.tenant_id, &owner)
        .await?
        .ok_or_else(|| ApiError::not_found("user").with_param("user_id"))?;
    let ceiling = caller.authority(&mut tx).await?;
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
    let (rec, secret) = create_key(
        &mut tx,
        state.auth.key_prefix(),
        spec,
        caller.actor(),
        &meta,
    )
    .await?;
    tx.commit().await.map_err(crate::store::StoreError::from)?;
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
    let mut tx = state.store.begin().await?;
    let mut rec = load_manageable(&mut tx, &caller, &id).await?;
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
                    let perms = MemberPowers::load(&mut tx, &rec.tenant_id, owner)
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
        let ceiling = caller.authority(&mut tx).await?;
        let after = key_authority(&mut tx, &rec).await?;
        let param = changed.contains(&"scopes").then_some("scopes");
        within_ceiling(ceiling, after, "change this key", param)?;
        keystore::update_settings(&mut tx, &rec).await?;
        append(
            &mut tx,
            AuditEvent::new(
                rec.tenant_id.clone(),
                caller.actor(),
                Action::ApiKeyUpdated,
                &meta,
            )
            .target("api_key", rec.id.clone())
            .details(json!({"changed": changed})),
        )
        .await?;
        invalidations::publish(&mut tx, Kind::Permissions, &rec.id, &meta).await?;
    }
    tx.commit().await.map_err(crate::store::StoreError::from)?;
    if !changed.is_empty() {
        state.auth.invalidate(Kind::Permissions, &rec.id);
    }
    Ok(axum::Json(rec.to_api()).into_response())
}

pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Meta(meta): Meta,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let mut tx = state.store.begin().await?;
    load_manageable(&mut tx, &caller, &id).await?;
    let (rec, changed) = revoke_key(&mut tx, &caller.tenant_id, &id, caller.actor(), &meta).await?;
    tx.commit().await.map_err(crate::store::StoreError::from)?;
    if changed {
        state.auth.invalidate(Kind::Credential, &id);
    }
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
    let mut tx = state.store.begin().await?;
    let rec = load_manageable(&mut tx, &caller, &id).await?;
    if rec.revoked_at.is_some() {
        return Err(ApiError::conflict("A revoked key cannot be rotated"));
    }
    // Rotation hands out the key's new secret: only to a caller holding all the key can do.
    let ceiling = caller.authority(&mut tx).await?;
    within_ceiling(
        ceiling,
        key_authority(&mut tx, &rec).await?,
        "rotate this key (rotation hands out its new secret)",
        None,
    )?;
    let secret = apikey::generate(state.auth.key_prefix());
    let prev_valid_until = now_ms() + (grace as i64) * 1000;
    keystore::rotate(
        &mut tx,
        &caller.tenant_id,
        &id,
        &secret.hash.to_hex(),
        &secret.hint,
        prev_valid_until,
    )
    .await?;
    append(
        &mut tx,
        AuditEvent::new(
            caller.tenant_id.to_string(),
            caller.actor(),
            Action::ApiKeyRotated,
            &meta,
        )
        .target("api_key", id.clone())
        .details(json!({"hint": secret.hint, "grace_period_seconds": grace})),
    )
    .await?;
    // Without a grace period the old secret is dead now: cut requests still using it.
    let kind = if grace == 0 {
        Kind::Credential
    } else {
        Kind::Permissions
    };
    invalidations::publish(&mut tx, kind, &id, &meta).await?;
    let rec = keystore::get(&mut tx, &caller.tenant_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("API key"))?;
    tx.commit().await.map_err(crate::store::StoreError::from)?;
    state.auth.invalidate(kind, &id);
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

/// For the CLI: revoke by id in any tenant (the CLI runs with store access, i.e. as the operator).
pub async fn revoke_by_id_as_operator(
    store: &crate::store::Store,
    id: &str,
) -> ApiResult<ApiKeyRecord> {
    let mut tx = store.begin().await?;
    let Some(tenant_id) = keystore::tenant_of(&mut tx, id).await? else {
        return Err(ApiError::not_found("API key"));
    };
    let (rec, _) = revoke_key(
        &mut tx,
        &tenant_id,
        id,
        Actor::operator(),
        &RequestMeta::default(),
    )
    .await?;
    tx.commit().await.map_err(crate::store::StoreError::from)?;
    Ok(rec)
}
