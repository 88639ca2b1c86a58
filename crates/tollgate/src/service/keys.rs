//! API keys: create, update, rotate, revoke. Each is one function run in a [`Unit`]: the store
//! change, its audit event, and (when access is taken away or may change) its invalidation.

use serde_json::json;
use tollgate_core::apikey::{self, NewKey};
use tollgate_core::audit::{Action, Actor};

use super::Unit;
use crate::error::{ApiError, ApiResult};
use crate::store::invalidations::Kind;
use crate::store::keys::{self as keystore, ApiKeyRecord, KeyRateLimit};
use crate::util::{new_id, now_ms};

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
