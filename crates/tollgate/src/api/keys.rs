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
use crate::auth::Permission;
use crate::auth::middleware::{Caller, MemberPowers, within_ceiling};
use crate::error::{ApiError, ApiResult};
use crate::http::{Json, Meta, OptionalJson};
use crate::service::Unit;
use crate::service::keys::{
    self as keys_service, KeyRequest, key_authority, load_manageable, own_user, validate_expiry,
    validate_name, validate_rate_limit, validate_scopes, validate_subscription_scopes,
};
use crate::store::keys::{self as keystore, ApiKeyRecord, KeyRateLimit};
use crate::wire::ToApi;
use tollgate_core::apikey;

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

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Meta(meta): Meta,
    Json(body): Json<CreateKeyBody>,
) -> ApiResult<Response> {
    let bound = body.subscription_id.is_some();
    let req = KeyRequest {
        name: body.name,
        expires_at: body.expires_at,
        scopes: body.scopes,
        rate_limit: body.rate_limit,
        subscription_id: body.subscription_id,
        user_id: body.user_id,
    };
    let mut unit = Unit::begin(&state.store, &meta).await?;
    let (rec, secret) =
        keys_service::create_as(&mut unit, state.auth.key_prefix(), &caller, req).await?;
    unit.commit(&state.auth).await?;
    let mut out = created_json(&rec, secret);
    if bound {
        out["type"] = "api_key".into();
    }
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
    let rec = keys_service::revoke_as(&mut unit, &caller, &id).await?;
    unit.commit(&state.auth).await?;
    Ok(axum::Json(rec.to_api()).into_response())
}

pub async fn rotate(
    State(state): State<AppState>,
    caller: Caller,
    Meta(meta): Meta,
    Path(id): Path<String>,
    body: OptionalJson<RotateBody>,
) -> ApiResult<Response> {
    let grace = body.0.and_then(|b| b.grace_period_seconds).unwrap_or(0);
    let mut unit = Unit::begin(&state.store, &meta).await?;
    let (rec, secret) =
        keys_service::rotate_as(&mut unit, state.auth.key_prefix(), &caller, &id, grace).await?;
    unit.commit(&state.auth).await?;
    Ok(axum::Json(created_json(&rec, secret)).into_response())
}

/// Formats a key for the JSON printed by `tollgate init` and `tollgate keys create`.
pub fn created_json(rec: &ApiKeyRecord, secret: apikey::NewKey) -> Value {
    let mut out = rec.to_api();
    out["key"] = Value::String(secret.plaintext);
    out
}
