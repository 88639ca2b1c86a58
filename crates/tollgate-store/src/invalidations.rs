//! The invalidation log: written in the same transaction as the change it announces, read by
//! every instance when told (the gateway's `push` module) and on its poll (`app::poll_invalidations`).

use sqlx::AnyPool;

use crate::util::now_ms;
use crate::{Conn, StoreResult};

/// The PostgreSQL channel `publish` notifies when its transaction commits.
pub const PG_CHANNEL: &str = "tollgate_invalidations";

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A credential was revoked or rotated, or its settings changed: cut requests using it.
    Credential,
    /// Permissions may have changed (roles, memberships): re-resolve, do not cut.
    Permissions,
    /// A subject (user, subscription) lost access: cut requests under it.
    Subject,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Credential => "credential",
            Kind::Permissions => "permissions",
            Kind::Subject => "subject",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "credential" => Kind::Credential,
            "permissions" => Kind::Permissions,
            "subject" => Kind::Subject,
            _ => return None,
        })
    }
}

/// Publishes an invalidation in the caller's transaction. `meta.origin` names the instance that
/// will apply it itself after the commit (its poller skips the row).
pub async fn publish(
    conn: &mut Conn,
    kind: Kind,
    target: &str,
    meta: &crate::audit::RequestMeta,
) -> StoreResult<()> {
    sqlx::query("INSERT INTO invalidations (kind, target, at, origin) VALUES ($1, $2, $3, $4)")
        .bind(kind.as_str())
        .bind(target.to_string())
        .bind(now_ms())
        .bind(meta.origin.as_deref().map(str::to_string))
        .execute(&mut *conn)
        .await?;
    // PostgreSQL delivers it to every listening instance when this transaction commits
    // (the gateway's `push` module); one per transaction is enough, duplicates are folded by PostgreSQL.
    if conn.backend_name() == "PostgreSQL" {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(PG_CHANNEL)
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// A row of the invalidation log: `(seq, kind, target, origin)`.
pub type Row = (i64, String, String, Option<String>);

/// Rows written since `since_ms` (a window, not a cursor: PostgreSQL sequences can commit out of
/// order, so the poller dedupes by `seq` instead of trusting `seq > last`).
pub async fn recent(pool: &AnyPool, since_ms: i64) -> StoreResult<Vec<Row>> {
    Ok(sqlx::query_as(
        "SELECT seq, kind, target, origin FROM invalidations WHERE at >= $1 ORDER BY seq",
    )
    .bind(since_ms)
    .fetch_all(pool)
    .await?)
}

pub async fn prune(pool: &AnyPool, before_ms: i64) -> StoreResult<u64> {
    let r = sqlx::query("DELETE FROM invalidations WHERE at < $1")
        .bind(before_ms)
        .execute(pool)
        .await?;
    Ok(r.rows_affected())
}
