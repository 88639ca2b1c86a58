//! Web console sessions and the developer portal's catalogue flag. Sessions are looked up by the
//! SHA-256 of their id; their sealed columns are opaque here (the console seals and opens them).

use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

use crate::{Conn, StoreResult};

#[derive(Clone)]
pub struct SessionRow {
    pub id_hash: String,
    pub tenant_id: String,
    pub user_id: String,
    pub family_id: String,
    pub client_id: String,
    /// Sealed access and refresh tokens.
    pub tokens: String,
    pub access_expires_at: i64,
    pub created_at: i64,
    pub expires_at: i64,
}

impl std::fmt::Debug for SessionRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRow")
            .field("tenant_id", &self.tenant_id)
            .field("user_id", &self.user_id)
            .field("family_id", &self.family_id)
            .finish_non_exhaustive()
    }
}

const COLS: &str = "id_hash, tenant_id, user_id, family_id, client_id, tokens, access_expires_at, created_at, expires_at";

fn session_row(r: &AnyRow) -> Result<SessionRow, sqlx::Error> {
    Ok(SessionRow {
        id_hash: r.try_get("id_hash")?,
        tenant_id: r.try_get("tenant_id")?,
        user_id: r.try_get("user_id")?,
        family_id: r.try_get("family_id")?,
        client_id: r.try_get("client_id")?,
        tokens: r.try_get("tokens")?,
        access_expires_at: r.try_get("access_expires_at")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
    })
}

pub async fn insert_session(conn: &mut Conn, s: &SessionRow) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO console_sessions (id_hash, tenant_id, user_id, family_id, client_id, tokens, access_expires_at, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(s.id_hash.clone())
    .bind(s.tenant_id.clone())
    .bind(s.user_id.clone())
    .bind(s.family_id.clone())
    .bind(s.client_id.clone())
    .bind(s.tokens.clone())
    .bind(s.access_expires_at)
    .bind(s.created_at)
    .bind(s.expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// The session with this id hash, if it has not expired.
pub async fn get_session(
    pool: &AnyPool,
    id_hash: &str,
    now: i64,
) -> StoreResult<Option<SessionRow>> {
    let sql = format!("SELECT {COLS} FROM console_sessions WHERE id_hash = $1 AND expires_at > $2");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id_hash.to_string())
        .bind(now)
        .fetch_optional(pool)
        .await?;
    Ok(row.as_ref().map(session_row).transpose()?)
}

/// Stores the tokens of a refreshed session.
pub async fn update_tokens(
    pool: &AnyPool,
    id_hash: &str,
    tokens: &str,
    access_expires_at: i64,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE console_sessions SET tokens = $2, access_expires_at = $3 WHERE id_hash = $1",
    )
    .bind(id_hash.to_string())
    .bind(tokens.to_string())
    .bind(access_expires_at)
    .execute(pool)
    .await?;
    Ok(())
}

/// Sets (or clears) the session's one-shot message.
pub async fn set_flash(pool: &AnyPool, id_hash: &str, flash: Option<&str>) -> StoreResult<()> {
    sqlx::query("UPDATE console_sessions SET flash = $2 WHERE id_hash = $1")
        .bind(id_hash.to_string())
        .bind(flash.map(str::to_string))
        .execute(pool)
        .await?;
    Ok(())
}

/// Reads and clears the session's one-shot message in one transaction: whoever reads it first
/// gets it, nobody gets it twice.
pub async fn take_flash(conn: &mut Conn, id_hash: &str) -> StoreResult<Option<String>> {
    let row: Option<(Option<String>,)> =
        sqlx::query_as("SELECT flash FROM console_sessions WHERE id_hash = $1")
            .bind(id_hash.to_string())
            .fetch_optional(&mut *conn)
            .await?;
    let Some((Some(flash),)) = row else {
        return Ok(None);
    };
    let r =
        sqlx::query("UPDATE console_sessions SET flash = NULL WHERE id_hash = $1 AND flash = $2")
            .bind(id_hash.to_string())
            .bind(flash.clone())
            .execute(conn)
            .await?;
    Ok((r.rows_affected() == 1).then_some(flash))
}

pub async fn delete_session(conn: &mut Conn, id_hash: &str) -> StoreResult<bool> {
    let r = sqlx::query("DELETE FROM console_sessions WHERE id_hash = $1")
        .bind(id_hash.to_string())
        .execute(conn)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// Deletes expired sessions.
pub async fn prune_sessions(pool: &AnyPool, now: i64) -> StoreResult<u64> {
    let r = sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1")
        .bind(now)
        .execute(pool)
        .await?;
    Ok(r.rows_affected())
}

/// Publishes (`Some(at)`) or unpublishes (`None`) a product of `tenant_id`; whether it exists.
pub async fn set_product_published(
    conn: &mut Conn,
    tenant_id: &str,
    product_id: &str,
    at: Option<i64>,
) -> StoreResult<bool> {
    let r = sqlx::query("UPDATE products SET published_at = $3 WHERE tenant_id = $1 AND id = $2")
        .bind(tenant_id.to_string())
        .bind(product_id.to_string())
        .bind(at)
        .execute(conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// The ids of the published products of `tenant_id`.
pub async fn published_product_ids(
    pool: &AnyPool,
    tenant_id: &str,
) -> StoreResult<std::collections::HashSet<String>> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT id FROM products WHERE tenant_id = $1 AND published_at IS NOT NULL")
            .bind(tenant_id.to_string())
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}
