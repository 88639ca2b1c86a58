//! Quota counters in the store, shared by every instance when there is no Redis (SPEC §7: "in the
//! store otherwise"). An instance never asks the store per request: it *leases* a slice of what
//! is left in one conditional `UPDATE` (atomic on SQLite and PostgreSQL alike), spends the slice
//! locally (`limits::local`), and gives back what it did not spend. The sum of all leases never
//! exceeds the limit, so N instances cannot overshoot; a crashed instance can only make the
//! period end early by its unspent lease, never late.

use sqlx::{AnyPool, Row};

use crate::StoreResult;
use crate::util::now_ms;

/// A lease is what the request needs plus this fraction of what is left after it, so the last
/// units of a quota are leased one request at a time and no instance sits on a large slice of a
/// nearly spent quota.
const SLICE_DIVISOR: i64 = 16;

/// The answer to a lease request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Units granted (0: fewer than the units needed are left).
    pub granted: i64,
    /// Units used in the period across all instances after this lease (unspent leases included).
    pub used: i64,
}

/// Leases at least `need` units of a quota period, or none if fewer are left. `seed` gives the
/// usage already recorded for the period, used only when its counter does not exist yet.
pub async fn lease<F, Fut>(
    pool: &AnyPool,
    scope: &str,
    dim: &str,
    period_start: i64,
    limit: i64,
    need: i64,
    seed: F,
) -> StoreResult<Lease>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = StoreResult<i64>>,
{
    if let Some(l) = try_lease(pool, scope, dim, period_start, limit, need).await? {
        return Ok(l);
    }
    match current(pool, scope, dim, period_start).await? {
        Some(used) => Ok(Lease { granted: 0, used }),
        None => {
            let used = seed().await?;
            sqlx::query(
                "INSERT INTO quota_counters (scope, dim, period_start, used, updated_at)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            )
            .bind(scope.to_string())
            .bind(dim.to_string())
            .bind(period_start)
            .bind(used)
            .bind(now_ms())
            .execute(pool)
            .await?;
            match try_lease(pool, scope, dim, period_start, limit, need).await? {
                Some(l) => Ok(l),
                None => Ok(Lease {
                    granted: 0,
                    used: current(pool, scope, dim, period_start)
                        .await?
                        .unwrap_or(used),
                }),
            }
        }
    }
}

async fn try_lease(
    pool: &AnyPool,
    scope: &str,
    dim: &str,
    period_start: i64,
    limit: i64,
    need: i64,
) -> StoreResult<Option<Lease>> {
    // Both assignments read the row as it was (SQL evaluates every SET expression against the old
    // row), and the WHERE clause guarantees `limit - used >= need`, so the grant never passes the
    // limit.
    let row = sqlx::query(
        "UPDATE quota_counters
         SET last_grant = $5 + ($4 - used - $5) / $6,
             used = used + $5 + ($4 - used - $5) / $6,
             updated_at = $7
         WHERE scope = $1 AND dim = $2 AND period_start = $3 AND used + $5 <= $4
         RETURNING last_grant, used",
    )
    .bind(scope.to_string())
    .bind(dim.to_string())
    .bind(period_start)
    .bind(limit)
    .bind(need)
    .bind(SLICE_DIVISOR)
    .bind(now_ms())
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        Some(r) => Some(Lease {
            granted: r.try_get("last_grant")?,
            used: r.try_get("used")?,
        }),
        None => None,
    })
}

async fn current(
    pool: &AnyPool,
    scope: &str,
    dim: &str,
    period_start: i64,
) -> StoreResult<Option<i64>> {
    let row = sqlx::query(
        "SELECT used FROM quota_counters WHERE scope = $1 AND dim = $2 AND period_start = $3",
    )
    .bind(scope.to_string())
    .bind(dim.to_string())
    .bind(period_start)
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        Some(r) => Some(r.try_get("used")?),
        None => None,
    })
}

/// Adjusts a period's counter by `delta`: negative gives back unspent units, positive charges
/// usage beyond what was leased (a response that used more tokens than estimated). Never below 0.
pub async fn adjust(
    pool: &AnyPool,
    scope: &str,
    dim: &str,
    period_start: i64,
    delta: i64,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE quota_counters
         SET used = CASE WHEN used + $4 < 0 THEN 0 ELSE used + $4 END, updated_at = $5
         WHERE scope = $1 AND dim = $2 AND period_start = $3",
    )
    .bind(scope.to_string())
    .bind(dim.to_string())
    .bind(period_start)
    .bind(delta)
    .bind(now_ms())
    .execute(pool)
    .await?;
    Ok(())
}

/// Deletes the counters of periods that started before `before_ms` (the caller passes a time
/// older than any current period: a month ago and more).
pub async fn prune(pool: &AnyPool, before_ms: i64) -> StoreResult<u64> {
    let r = sqlx::query("DELETE FROM quota_counters WHERE period_start < $1")
        .bind(before_ms)
        .execute(pool)
        .await?;
    Ok(r.rows_affected())
}
