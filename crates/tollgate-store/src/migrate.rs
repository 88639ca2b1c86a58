//! Embedded migrations, one folder per backend, applied in order, each in its own transaction.
//! PostgreSQL takes an advisory lock so instances starting together do not race.

use sqlx::AssertSqlSafe;

use crate::{Dialect, Store};

struct Migration {
    version: i64,
    name: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

macro_rules! migration {
    ($version:expr, $name:literal) => {
        Migration {
            version: $version,
            name: $name,
            sqlite: include_str!(concat!("../migrations/sqlite/", $name, ".sql")),
            postgres: include_str!(concat!("../migrations/postgres/", $name, ".sql")),
        }
    };
}

const MIGRATIONS: &[Migration] = &[
    migration!(1, "0001_foundation"),
    migration!(2, "0002_identity"),
    migration!(3, "0003_subscriptions"),
    migration!(4, "0004_limits"),
    migration!(5, "0005_quota_counters"),
    migration!(6, "0006_invalidation_origin"),
    migration!(7, "0007_subscription_origins"),
    migration!(8, "0008_console"),
];

const ADVISORY_LOCK_ID: i64 = 0x746f_6c6c_6761_7465; // "tollgate"

pub async fn run(store: &Store) -> anyhow::Result<()> {
    let mut conn = store.pool().acquire().await?;
    if store.backend() == Dialect::Postgres {
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(ADVISORY_LOCK_ID)
            .execute(&mut *conn)
            .await?;
    }
    let result = apply_all(store.backend(), &mut conn).await;
    if store.backend() == Dialect::Postgres {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(ADVISORY_LOCK_ID)
            .execute(&mut *conn)
            .await?;
    }
    result
}

async fn apply_all(backend: Dialect, conn: &mut sqlx::AnyConnection) -> anyhow::Result<()> {
    use sqlx::Connection;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *conn)
    .await?;
    let applied: Vec<(i64,)> = sqlx::query_as("SELECT version FROM schema_migrations")
        .fetch_all(&mut *conn)
        .await?;
    let latest_known = MIGRATIONS.last().map_or(0, |m| m.version);
    if let Some(newer) = applied.iter().map(|r| r.0).find(|v| *v > latest_known) {
        anyhow::bail!(
            "the store was migrated by a newer Tollgate (schema version {newer}); refusing to run an older binary on it"
        );
    }
    for m in MIGRATIONS {
        if applied.iter().any(|r| r.0 == m.version) {
            continue;
        }
        let sql = match backend {
            Dialect::Sqlite => m.sqlite,
            Dialect::Postgres => m.postgres,
        };
        let mut tx = conn.begin().await?;
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .map_err(|e| anyhow::anyhow!("migration {} failed: {e}", m.name))?;
        sqlx::query(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
        )
        .bind(m.version)
        .bind(m.name)
        .bind(crate::util::now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(version = m.version, name = m.name, "applied migration");
    }
    Ok(())
}
