//! Usage records and their per-minute aggregates. Written in batches by the usage writer, never
//! on the request path; read by `GET /v1/usage` and, once per scope and period, to seed quota
//! counters.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::Row;

use crate::{Dialect, StoreResult};
use tollgate_core::limits::{Dim, ScopeKind, ScopeRef};

use tollgate_core::usage::UsageRecord;

const RECORD_COLS: usize = 14;
const AGG_COLS: usize = 12;

/// Rows per multi-row statement. A batch is cut into chunks of these sizes, largest first, so
/// only these nine statement texts per table ever exist: each is prepared once per connection
/// and reused from the driver's statement cache. (A statement sized to each batch was a new text
/// almost every time, parsed again by the database: most of the writer's cost on SQLite.
/// Handing the batch over as one JSON parameter instead was measured too: SQLite re-parses each
/// row's JSON for every column, which cost more than the binding it saved.)
const CHUNK_ROWS: [usize; 9] = [256, 128, 64, 32, 16, 8, 4, 2, 1];

/// Splits `items` into chunks whose lengths are in [`CHUNK_ROWS`].
fn chunks<T>(items: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    std::iter::from_fn(move || {
        let n = CHUNK_ROWS.iter().copied().find(|&n| n <= rest.len())?;
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Some(head)
    })
}

const RECORD_INSERT: &str = "INSERT INTO usage_records (ts, request_id, tenant_id, api_key_id, \
    user_id, subscription_id, end_user, model, route, status, outcome, prompt_tokens, \
    completion_tokens, latency_ms) VALUES ";
const AGG_INSERT: &str = "INSERT INTO usage_minute (tenant_id, minute, api_key_id, user_id, \
    subscription_id, end_user, model, requests, errors, prompt_tokens, completion_tokens, \
    latency_ms_sum) VALUES ";
const AGG_UPSERT: &str = " ON CONFLICT (tenant_id, minute, api_key_id, user_id, subscription_id, \
    end_user, model) DO UPDATE SET requests = usage_minute.requests + excluded.requests, \
    errors = usage_minute.errors + excluded.errors, \
    prompt_tokens = usage_minute.prompt_tokens + excluded.prompt_tokens, \
    completion_tokens = usage_minute.completion_tokens + excluded.completion_tokens, \
    latency_ms_sum = usage_minute.latency_ms_sum + excluded.latency_ms_sum";

/// The statement texts of one backend, per chunk size (same order as [`CHUNK_ROWS`]).
struct Statements {
    records: Vec<String>,
    aggs: Vec<String>,
}

impl Statements {
    fn build(backend: Dialect) -> Self {
        let texts = |head: &str, cols: usize, tail: &str| {
            CHUNK_ROWS
                .iter()
                .map(|&rows| format!("{head}{}{tail}", placeholders(rows, cols, backend)))
                .collect()
        };
        Self {
            records: texts(RECORD_INSERT, RECORD_COLS, ""),
            aggs: texts(AGG_INSERT, AGG_COLS, AGG_UPSERT),
        }
    }

    fn of(backend: Dialect) -> &'static Self {
        static SQLITE: std::sync::OnceLock<Statements> = std::sync::OnceLock::new();
        static POSTGRES: std::sync::OnceLock<Statements> = std::sync::OnceLock::new();
        match backend {
            Dialect::Sqlite => SQLITE.get_or_init(|| Self::build(backend)),
            Dialect::Postgres => POSTGRES.get_or_init(|| Self::build(backend)),
        }
    }

    /// The text for a chunk of `rows` rows (a length [`chunks`] produced).
    fn pick(texts: &'static [String], rows: usize) -> &'static str {
        let i = CHUNK_ROWS.iter().position(|&n| n == rows).unwrap_or(0);
        texts.get(i).map_or("", String::as_str)
    }
}

/// `($1, $2, …), (…)` — or, on SQLite, anonymous `?`: its driver resolves each `$N` with a linear
/// scan of the statement's parameters, which made binding quadratic in the batch size. (The only
/// place in the store that does not use `$N`.)
fn placeholders(rows: usize, cols: usize, backend: Dialect) -> String {
    let mut s = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for c in 0..cols {
            if c > 0 {
                s.push_str(", ");
            }
            match backend {
                Dialect::Sqlite => s.push('?'),
                Dialect::Postgres => {
                    s.push('$');
                    s.push_str(&(r * cols + c + 1).to_string());
                }
            }
        }
        s.push(')');
    }
    s
}

/// Binds one record's fourteen columns; `$text` turns a shared string into what the driver
/// binds (a reference-counted clone for the typed SQLite driver, an owned copy for `Any`).
macro_rules! bind_record {
    ($q:expr, $r:expr, $text:expr) => {
        $q.bind($r.ts)
            .bind($r.request_id.as_ref().map($text))
            .bind($text(&$r.tenant_id))
            .bind($r.api_key_id.as_ref().map($text))
            .bind($r.user_id.as_ref().map($text))
            .bind($r.subscription_id.as_ref().map($text))
            .bind($r.end_user.as_ref().map($text))
            .bind($text(&$r.model))
            .bind($r.route)
            .bind(i64::from($r.status))
            .bind($r.outcome)
            .bind($r.prompt_tokens as i64)
            .bind($r.completion_tokens as i64)
            .bind($r.latency_ms as i64)
    };
}

/// Binds one aggregate row's twelve columns.
macro_rules! bind_minute {
    ($q:expr, $key:expr, $a:expr) => {{
        let (tenant, minute, key, user, sub, end_user, model) = $key;
        $q.bind(tenant.to_string())
            .bind(*minute)
            .bind(key.to_string())
            .bind(user.to_string())
            .bind(sub.to_string())
            .bind(end_user.to_string())
            .bind(model.to_string())
            .bind($a.requests)
            .bind($a.errors)
            .bind($a.prompt)
            .bind($a.completion)
            .bind($a.latency)
    }};
}

#[derive(Default)]
struct Agg {
    requests: i64,
    errors: i64,
    prompt: i64,
    completion: i64,
    latency: i64,
}

type AggKey<'a> = (&'a str, i64, &'a str, &'a str, &'a str, &'a str, &'a str);

/// The per-minute aggregates of a batch: one row per (tenant, minute, key, user, subscription,
/// end user, model), so a multi-row upsert never touches the same row twice.
fn minutes(batch: &[UsageRecord]) -> Vec<(AggKey<'_>, Agg)> {
    let mut aggs: HashMap<AggKey<'_>, Agg> = HashMap::new();
    for r in batch {
        let key = (
            &*r.tenant_id,
            r.ts - r.ts.rem_euclid(60_000),
            r.api_key_id.as_deref().unwrap_or_default(),
            r.user_id.as_deref().unwrap_or_default(),
            r.subscription_id.as_deref().unwrap_or_default(),
            r.end_user.as_deref().unwrap_or_default(),
            &*r.model,
        );
        let a = aggs.entry(key).or_default();
        a.requests += 1;
        a.errors += i64::from(!r.counts());
        a.prompt += r.prompt_tokens as i64;
        a.completion += r.completion_tokens as i64;
        a.latency += r.latency_ms as i64;
    }
    aggs.into_iter().collect()
}

/// Runs the record and aggregate statements of a batch in `$tx`, then commits; `$text` as in
/// [`bind_record!`]. (A macro: the typed and the `Any` transactions are different types.)
macro_rules! write_in {
    ($tx:expr, $statements:expr, $batch:expr, $aggs:expr, $text:expr) => {{
        let mut tx = $tx;
        for chunk in chunks($batch) {
            let mut q = sqlx::query(Statements::pick(&$statements.records, chunk.len()));
            for r in chunk {
                q = bind_record!(q, r, $text);
            }
            q.execute(&mut *tx).await?;
        }
        for chunk in chunks($aggs) {
            let mut q = sqlx::query(Statements::pick(&$statements.aggs, chunk.len()));
            for (key, a) in chunk {
                q = bind_minute!(q, key, a);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
    }};
}

/// Writes a batch: the records, and their per-minute aggregates (upserted), in one transaction.
/// On SQLite through the usage writer's own typed connection, elsewhere through the pool.
pub async fn write_batch(store: &crate::Store, batch: &[UsageRecord]) -> StoreResult<()> {
    let statements = Statements::of(store.backend());
    let aggs = minutes(batch);
    match store.usage_sqlite() {
        Some(pool) => write_in!(
            pool.begin_with("BEGIN IMMEDIATE").await?,
            statements,
            batch,
            &aggs,
            |s: &Arc<str>| s.clone()
        ),
        None => write_in!(store.begin().await?, statements, batch, &aggs, |s: &Arc<
            str,
        >| {
            s.to_string()
        }),
    }
    Ok(())
}

/// Units a scope used since `since_ms` (the start of a quota period): requests answered without
/// an error for `RequestsDay`, prompt + completion tokens for `TokensMonth`.
pub async fn quota_used(
    pool: &sqlx::AnyPool,
    scope: &ScopeRef,
    dim: Dim,
    since_ms: i64,
) -> StoreResult<i64> {
    let what = match dim {
        Dim::TokensMonth => "prompt_tokens + completion_tokens",
        _ => "requests - errors",
    };
    let filter = match scope.kind {
        ScopeKind::Key => " AND api_key_id = $3",
        ScopeKind::User => " AND user_id = $3",
        ScopeKind::Subscription => " AND subscription_id = $3",
        ScopeKind::Tenant => "",
    };
    let sql = format!(
        "SELECT COALESCE(CAST(SUM({what}) AS BIGINT), 0) AS used FROM usage_minute
         WHERE tenant_id = $1 AND minute >= $2{filter}"
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(scope.tenant_id.to_string())
        .bind(since_ms);
    if !filter.is_empty() {
        q = q.bind(scope.id.to_string());
    }
    let row = q.fetch_one(pool).await?;
    Ok(row.try_get::<i64, _>("used")?)
}

/// Deletes at most `batch` of the oldest usage records written before `before_ms`; returns how
/// many. Walks the primary key from its oldest end (records are appended in time order), so a
/// call costs a bounded index range whatever the table's size, and nothing when the oldest
/// record is recent.
pub async fn prune_records(pool: &sqlx::AnyPool, before_ms: i64, batch: i64) -> StoreResult<u64> {
    let oldest: Option<(i64,)> =
        sqlx::query_as("SELECT ts FROM usage_records ORDER BY seq LIMIT 1")
            .fetch_optional(pool)
            .await?;
    if oldest.is_none_or(|(ts,)| ts >= before_ms) {
        return Ok(0);
    }
    let r = sqlx::query(
        "DELETE FROM usage_records WHERE seq IN
            (SELECT seq FROM usage_records ORDER BY seq LIMIT $2) AND ts < $1",
    )
    .bind(before_ms)
    .bind(batch)
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}

/// Deletes per-minute aggregates of minutes before `before_ms`; returns how many.
pub async fn prune_minutes(pool: &sqlx::AnyPool, before_ms: i64) -> StoreResult<u64> {
    let r = sqlx::query("DELETE FROM usage_minute WHERE minute < $1")
        .bind(before_ms)
        .execute(pool)
        .await?;
    Ok(r.rows_affected())
}

/// A dimension `GET /v1/usage` can group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    ApiKey,
    User,
    EndUser,
    Model,
    Subscription,
}

impl GroupBy {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "api_key" => Self::ApiKey,
            "user" => Self::User,
            "end_user" => Self::EndUser,
            "model" => Self::Model,
            "subscription" => Self::Subscription,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::ApiKey => "api_key",
            Self::User => "user",
            Self::EndUser => "end_user",
            Self::Model => "model",
            Self::Subscription => "subscription",
        }
    }
    fn column(self) -> &'static str {
        match self {
            Self::ApiKey => "api_key_id",
            Self::User => "user_id",
            Self::EndUser => "end_user",
            Self::Model => "model",
            Self::Subscription => "subscription_id",
        }
    }
}

#[derive(Debug, Clone)]
pub struct UsageQuery {
    pub tenant_id: String,
    /// Only this user's usage ("usage:read (own)").
    pub user_id: Option<String>,
    pub from: i64,
    pub to: i64,
    pub bucket_ms: i64,
    pub group_by: Vec<GroupBy>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageBucket {
    pub start: i64,
    /// One value per `group_by` entry (`None` when the record had none).
    pub group: Vec<Option<String>>,
    pub requests: i64,
    pub errors: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub latency_ms_sum: i64,
}

/// Usage in `[from, to)` by bucket (and group), oldest first.
pub async fn query(pool: &sqlx::AnyPool, q: &UsageQuery) -> StoreResult<Vec<UsageBucket>> {
    let dims: Vec<String> = q
        .group_by
        .iter()
        .enumerate()
        .map(|(i, g)| format!("{} AS g{i}", g.column()))
        .collect();
    let dim_names: Vec<String> = (0..q.group_by.len()).map(|i| format!("g{i}")).collect();
    let user_filter = if q.user_id.is_some() {
        " AND user_id = $5"
    } else {
        ""
    };
    let inner_dims = if dims.is_empty() {
        String::new()
    } else {
        format!(", {}", dims.join(", "))
    };
    let outer_dims = if dim_names.is_empty() {
        String::new()
    } else {
        format!(", {}", dim_names.join(", "))
    };
    let sql = format!(
        "SELECT bucket{outer_dims},
            CAST(SUM(requests) AS BIGINT) AS requests, CAST(SUM(errors) AS BIGINT) AS errors,
            CAST(SUM(prompt_tokens) AS BIGINT) AS prompt_tokens,
            CAST(SUM(completion_tokens) AS BIGINT) AS completion_tokens,
            CAST(SUM(latency_ms_sum) AS BIGINT) AS latency_ms_sum
         FROM (SELECT (minute / $4) * $4 AS bucket{inner_dims}, requests, errors, prompt_tokens,
                completion_tokens, latency_ms_sum
               FROM usage_minute WHERE tenant_id = $1 AND minute >= $2 AND minute < $3{user_filter}) u
         GROUP BY bucket{outer_dims}
         ORDER BY bucket{outer_dims}
         LIMIT 50000"
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(q.tenant_id.clone())
        .bind(q.from)
        .bind(q.to)
        .bind(q.bucket_ms);
    if let Some(u) = &q.user_id {
        query = query.bind(u.clone());
    }
    let rows = query.fetch_all(pool).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let mut group = Vec::with_capacity(q.group_by.len());
        for name in &dim_names {
            let v: Option<String> = r.try_get(name.as_str())?;
            group.push(v.filter(|s| !s.is_empty()));
        }
        out.push(UsageBucket {
            start: r.try_get("bucket")?,
            group,
            requests: r.try_get("requests")?,
            errors: r.try_get("errors")?,
            prompt_tokens: r.try_get("prompt_tokens")?,
            completion_tokens: r.try_get("completion_tokens")?,
            latency_ms_sum: r.try_get("latency_ms_sum")?,
        });
    }
    Ok(out)
}

/// Raw records of a tenant in `[from, to)`, newest first (for tests and exports).
pub async fn recent_records(
    pool: &sqlx::AnyPool,
    tenant_id: &str,
    limit: i64,
) -> StoreResult<Vec<(String, Option<String>, i64, String, i64, i64)>> {
    let rows: Vec<(String, Option<String>, i64, String, i64, i64)> = sqlx::query_as(
        "SELECT model, end_user, status, outcome, prompt_tokens, completion_tokens
         FROM usage_records WHERE tenant_id = $1 ORDER BY seq DESC LIMIT $2",
    )
    .bind(tenant_id.to_string())
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_cut_into_the_fixed_statement_sizes() {
        let sizes = |n: usize| chunks(&vec![0u8; n]).map(<[u8]>::len).collect::<Vec<_>>();
        assert_eq!(sizes(0), Vec::<usize>::new());
        assert_eq!(sizes(1), [1]);
        assert_eq!(sizes(1000), [256, 256, 256, 128, 64, 32, 8]);
        assert_eq!(sizes(7), [4, 2, 1]);
        for backend in [Dialect::Sqlite, Dialect::Postgres] {
            let st = Statements::of(backend);
            for (i, rows) in CHUNK_ROWS.iter().enumerate() {
                let text = Statements::pick(&st.records, *rows);
                assert_eq!(text, st.records[i]);
                assert_eq!(text.matches('(').count(), rows + 1, "{text}");
                assert!(Statements::pick(&st.aggs, *rows).ends_with("excluded.latency_ms_sum"));
            }
            let last = Statements::pick(&st.records, 2);
            match backend {
                Dialect::Sqlite => assert_eq!(last.matches('?').count(), 2 * RECORD_COLS),
                Dialect::Postgres => assert!(last.ends_with("$27, $28)"), "{last}"),
            }
        }
    }

    /// Cost of writing usage: `cargo test --profile bench -p tollgate --lib usage_write_cost --
    /// --ignored --nocapture`
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a cost measurement, not a test: run on demand with --ignored --nocapture"]
    async fn usage_write_cost() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = crate::Store::connect(&url).await.unwrap();
        let rec = UsageRecord {
            ts: crate::util::now_ms(),
            request_id: Some("req_abcdefghijklmnopqrst".into()),
            tenant_id: "ten_abcdefghijklmnopqrst".into(),
            api_key_id: Some("key_abcdefghijklmnopqrst".into()),
            user_id: Some("usr_abcdefghijklmnopqrst".into()),
            subscription_id: None,
            end_user: None,
            model: "bench-model".into(),
            route: "chat/completions",
            status: 200,
            outcome: "ok",
            prompt_tokens: 10,
            completion_tokens: 20,
            latency_ms: 3,
        };
        let batch: Vec<UsageRecord> = (0..2000).map(|_| rec.clone()).collect();
        let rounds = 10;

        let t = std::time::Instant::now();
        for _ in 0..rounds {
            write_batch(&store, &batch).await.unwrap();
        }
        let per = t.elapsed().as_nanos() / (rounds * batch.len() as u128);
        eprintln!("usage write: {per} ns per record");
    }
}
