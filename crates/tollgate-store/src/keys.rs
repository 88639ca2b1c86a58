//! API key rows. Only SHA-256 hashes of keys are stored (hex), never the plaintext.

use serde_json::json;
use sqlx::{AnyPool, Row};

use crate::{Conn, StoreResult, json_col};
use tollgate_core::limits::LimitSet;

/// Per-key rate limits and quotas (enforced by `crate::limits`; the tightest of these, the
/// user's, the plan's and the tenant's applies).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRateLimit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent_requests: Option<u32>,
    /// Quota: requests per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_day: Option<u64>,
    /// Quota: tokens per UTC calendar month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_month: Option<u64>,
}

/// A key's limits as a scope's limit set.
impl From<&KeyRateLimit> for LimitSet {
    fn from(k: &KeyRateLimit) -> Self {
        LimitSet {
            requests_per_minute: k.requests_per_minute.map(u64::from),
            tokens_per_minute: k.tokens_per_minute.map(u64::from),
            concurrent_requests: k.concurrent_requests.map(u64::from),
            requests_per_day: k.requests_per_day,
            tokens_per_month: k.tokens_per_month,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiKeyRecord {
    pub id: String,
    pub tenant_id: String,
    pub user_id: Option<String>,
    pub subscription_id: Option<String>,
    pub name: String,
    pub hint: String,
    pub scopes: Option<Vec<String>>,
    pub rate_limit: Option<KeyRateLimit>,
    pub expires_at: Option<i64>,
    pub created_at: i64,
    pub created_by: Option<String>,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// While set and in the future, the previous secret (before a rotation) still works.
    pub prev_valid_until: Option<i64>,
}

const COLS: &str =
    "id, tenant_id, user_id, subscription_id, name, hint, scopes, rate_limit, expires_at,
    created_at, created_by, last_used_at, revoked_at, prev_valid_until, key_hash, prev_key_hash";

fn from_row(r: &sqlx::any::AnyRow) -> Result<ApiKeyRecord, sqlx::Error> {
    Ok(ApiKeyRecord {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        user_id: r.try_get("user_id")?,
        subscription_id: r.try_get("subscription_id")?,
        name: r.try_get("name")?,
        hint: r.try_get("hint")?,
        scopes: json_col(r.try_get("scopes")?),
        rate_limit: json_col(r.try_get("rate_limit")?),
        expires_at: r.try_get("expires_at")?,
        created_at: r.try_get("created_at")?,
        created_by: r.try_get("created_by")?,
        last_used_at: r.try_get("last_used_at")?,
        revoked_at: r.try_get("revoked_at")?,
        prev_valid_until: r.try_get("prev_valid_until")?,
    })
}

fn opt_json<T: serde::Serialize>(v: &Option<T>) -> Option<String> {
    v.as_ref().map(|v| json!(v).to_string())
}

pub async fn insert(conn: &mut Conn, k: &ApiKeyRecord, key_hash_hex: &str) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO api_keys (id, tenant_id, user_id, subscription_id, name, key_hash, hint, scopes,
            rate_limit, expires_at, created_at, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(k.id.clone())
    .bind(k.tenant_id.clone())
    .bind(k.user_id.clone())
    .bind(k.subscription_id.clone())
    .bind(k.name.clone())
    .bind(key_hash_hex.to_string())
    .bind(k.hint.clone())
    .bind(opt_json(&k.scopes))
    .bind(opt_json(&k.rate_limit))
    .bind(k.expires_at)
    .bind(k.created_at)
    .bind(k.created_by.clone())
    .execute(conn)
    .await?;
    Ok(())
}

/// Which secret of a key matched a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matched {
    Current,
    /// The pre-rotation secret; valid only until `prev_valid_until`.
    Previous,
}

/// Looks a key up by the hash of its secret (current or pre-rotation). Revoked keys are returned
/// too, so the caller can answer `AUTH_REVOKED` rather than `AUTH_INVALID`.
pub async fn find_by_hash(
    pool: &AnyPool,
    hash_hex: &str,
) -> StoreResult<Option<(ApiKeyRecord, Matched)>> {
    let sql = format!("SELECT {COLS} FROM api_keys WHERE key_hash = $1 OR prev_key_hash = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(hash_hex.to_string())
        .fetch_optional(pool)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let current: String = row.try_get("key_hash")?;
    let matched = if current == hash_hex {
        Matched::Current
    } else {
        Matched::Previous
    };
    Ok(Some((from_row(&row)?, matched)))
}

pub async fn get(conn: &mut Conn, tenant_id: &str, id: &str) -> StoreResult<Option<ApiKeyRecord>> {
    let sql = format!("SELECT {COLS} FROM api_keys WHERE tenant_id = $1 AND id = $2");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(tenant_id.to_string())
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    Ok(row.as_ref().map(from_row).transpose()?)
}

/// Keys of a tenant, optionally only one user's, newest first.
pub async fn list(
    pool: &AnyPool,
    tenant_id: &str,
    user_id: Option<&str>,
) -> StoreResult<Vec<ApiKeyRecord>> {
    let rows = match user_id {
        Some(u) => {
            let sql = format!(
                "SELECT {COLS} FROM api_keys WHERE tenant_id = $1 AND user_id = $2 ORDER BY created_at DESC, id"
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(tenant_id.to_string())
                .bind(u.to_string())
                .fetch_all(pool)
                .await?
        }
        None => {
            let sql = format!(
                "SELECT {COLS} FROM api_keys WHERE tenant_id = $1 ORDER BY created_at DESC, id"
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(tenant_id.to_string())
                .fetch_all(pool)
                .await?
        }
    };
    Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
}

/// Writes the mutable settings (name, scopes, rate limit, expiry).
pub async fn update_settings(conn: &mut Conn, k: &ApiKeyRecord) -> StoreResult<()> {
    sqlx::query(
        "UPDATE api_keys SET name = $3, scopes = $4, rate_limit = $5, expires_at = $6
         WHERE tenant_id = $1 AND id = $2",
    )
    .bind(k.tenant_id.clone())
    .bind(k.id.clone())
    .bind(k.name.clone())
    .bind(opt_json(&k.scopes))
    .bind(opt_json(&k.rate_limit))
    .bind(k.expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks a key revoked (idempotent: an already revoked key keeps its first `revoked_at`).
pub async fn revoke(conn: &mut Conn, tenant_id: &str, id: &str, at: i64) -> StoreResult<bool> {
    let r = sqlx::query("UPDATE api_keys SET revoked_at = $3 WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL")
        .bind(tenant_id.to_string())
        .bind(id.to_string())
        .bind(at)
        .execute(conn)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// Revokes every live key a user holds in a tenant; returns their ids.
pub async fn revoke_user_keys(
    conn: &mut Conn,
    tenant_id: &str,
    user_id: &str,
    at: i64,
) -> StoreResult<Vec<String>> {
    let ids: Vec<(String,)> = sqlx::query_as(
        "SELECT id FROM api_keys WHERE tenant_id = $1 AND user_id = $2 AND revoked_at IS NULL",
    )
    .bind(tenant_id.to_string())
    .bind(user_id.to_string())
    .fetch_all(&mut *conn)
    .await?;
    sqlx::query("UPDATE api_keys SET revoked_at = $3 WHERE tenant_id = $1 AND user_id = $2 AND revoked_at IS NULL")
        .bind(tenant_id.to_string())
        .bind(user_id.to_string())
        .bind(at)
        .execute(conn)
        .await?;
    Ok(ids.into_iter().map(|r| r.0).collect())
}

/// Replaces a key's secret. The previous secret is remembered until the next rotation, valid
/// until `prev_valid_until` (now, without a grace period): using it afterwards is answered as a
/// rotated-away key rather than an unknown one.
pub async fn rotate(
    conn: &mut Conn,
    tenant_id: &str,
    id: &str,
    new_hash_hex: &str,
    new_hint: &str,
    prev_valid_until: i64,
) -> StoreResult<()> {
    // SET expressions read the row's old values, so prev_key_hash receives the old key_hash.
    sqlx::query(
        "UPDATE api_keys SET prev_key_hash = key_hash, prev_valid_until = $5, key_hash = $3, hint = $4
         WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant_id.to_string())
    .bind(id.to_string())
    .bind(new_hash_hex.to_string())
    .bind(new_hint.to_string())
    .bind(prev_valid_until)
    .execute(conn)
    .await?;
    Ok(())
}

/// Batched `last_used_at` writes (never on the request path).
pub async fn touch_last_used(store: &super::Store, batch: &[(String, i64)]) -> StoreResult<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut tx = store.begin().await?;
    for (id, at) in batch {
        sqlx::query("UPDATE api_keys SET last_used_at = $2 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)")
            .bind(id.clone())
            .bind(*at)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The tenant a key belongs to (for operator commands that address a key by id alone).
pub async fn tenant_of(conn: &mut Conn, id: &str) -> StoreResult<Option<String>> {
    let r: Option<(String,)> = sqlx::query_as("SELECT tenant_id FROM api_keys WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    Ok(r.map(|r| r.0))
}
