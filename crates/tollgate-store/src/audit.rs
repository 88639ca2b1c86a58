//! The audit log (SPEC §8): one event per mutation or security event, appended in the caller's
//! transaction, hash-chained per tenant: `hash = SHA-256(prev_hash || canonical event)`.

use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::util::{new_id, now_ms};
use crate::{Conn, StoreResult};

pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Where a request came from; copied into audit events.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    /// The instance that serves the request (`Auth::instance_id`); not part of audit events. The
    /// invalidations a request publishes carry it, so that instance's poller skips them.
    pub origin: Option<std::sync::Arc<str>>,
}

pub use tollgate_core::audit::{Action, Actor};

/// An event to append. `details` must never hold a secret.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub tenant_id: String,
    pub actor: Actor,
    pub action: Action,
    pub target_type: Option<&'static str>,
    pub target_id: Option<String>,
    pub meta: RequestMeta,
    pub outcome: &'static str,
    pub details: Value,
}

impl AuditEvent {
    pub fn new(
        tenant_id: impl Into<String>,
        actor: Actor,
        action: Action,
        meta: &RequestMeta,
    ) -> Self {
        Self {
            tenant_id: tenant_id.into(),
            actor,
            action,
            target_type: None,
            target_id: None,
            meta: meta.clone(),
            outcome: "success",
            details: json!({}),
        }
    }
    pub fn target(mut self, kind: &'static str, id: impl Into<String>) -> Self {
        self.target_type = Some(kind);
        self.target_id = Some(id.into());
        self
    }
    pub fn details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }
    pub fn outcome(mut self, outcome: &'static str) -> Self {
        self.outcome = outcome;
        self
    }
}

/// A stored event, as returned by the API and the export.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuditRecord {
    pub id: String,
    pub seq: i64,
    pub ts: i64,
    pub tenant_id: String,
    pub actor: Value,
    pub action: String,
    pub target: Value,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub outcome: String,
    pub details: Value,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditRecord {
    /// The canonical form that is hashed: every field but the hashes, keys sorted, compact.
    pub fn canonical(&self) -> String {
        json!({
            "id": self.id, "seq": self.seq, "ts": self.ts, "tenant_id": self.tenant_id,
            "actor": self.actor, "action": self.action, "target": self.target, "ip": self.ip,
            "user_agent": self.user_agent, "request_id": self.request_id, "outcome": self.outcome,
            "details": self.details,
        })
        .to_string()
    }

    pub fn compute_hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.prev_hash.as_bytes());
        h.update(self.canonical().as_bytes());
        hex::encode(h.finalize())
    }
}

/// Appends an event inside the caller's transaction.
pub async fn append(conn: &mut Conn, ev: AuditEvent) -> StoreResult<AuditRecord> {
    sqlx::query("INSERT INTO audit_heads (tenant_id, seq, hash) VALUES ($1, 0, $2) ON CONFLICT (tenant_id) DO NOTHING")
        .bind(ev.tenant_id.clone())
        .bind(GENESIS_HASH)
        .execute(&mut *conn)
        .await?;
    // The UPDATE takes the row lock (PostgreSQL) that serialises appends per tenant until commit.
    let (seq, prev_hash): (i64, String) = sqlx::query_as(
        "UPDATE audit_heads SET seq = seq + 1 WHERE tenant_id = $1 RETURNING seq, hash",
    )
    .bind(ev.tenant_id.clone())
    .fetch_one(&mut *conn)
    .await?;
    let mut rec = AuditRecord {
        id: new_id("evt"),
        seq,
        ts: now_ms(),
        tenant_id: ev.tenant_id,
        actor: json!(ev.actor),
        action: ev.action.as_str().to_string(),
        target: json!({"type": ev.target_type, "id": ev.target_id}),
        ip: ev.meta.ip,
        user_agent: ev.meta.user_agent,
        request_id: ev.meta.request_id,
        outcome: ev.outcome.to_string(),
        details: ev.details,
        prev_hash,
        hash: String::new(),
    };
    rec.hash = rec.compute_hash();
    sqlx::query(
        "INSERT INTO audit_events (id, tenant_id, seq, ts, actor_type, actor_id, action, target_type,
            target_id, ip, user_agent, request_id, outcome, details, prev_hash, hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
    )
    .bind(rec.id.clone())
    .bind(rec.tenant_id.clone())
    .bind(rec.seq)
    .bind(rec.ts)
    .bind(ev.actor.kind.as_str())
    .bind(ev.actor.id)
    .bind(rec.action.clone())
    .bind(ev.target_type)
    .bind(rec.target["id"].as_str().map(str::to_string))
    .bind(rec.ip.clone())
    .bind(rec.user_agent.clone())
    .bind(rec.request_id.clone())
    .bind(rec.outcome.clone())
    .bind(rec.details.to_string())
    .bind(rec.prev_hash.clone())
    .bind(rec.hash.clone())
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE audit_heads SET hash = $2 WHERE tenant_id = $1")
        .bind(rec.tenant_id.clone())
        .bind(rec.hash.clone())
        .execute(&mut *conn)
        .await?;
    Ok(rec)
}

const SELECT: &str =
    "SELECT id, tenant_id, seq, ts, actor_type, actor_id, action, target_type, target_id,
    ip, user_agent, request_id, outcome, details, prev_hash, hash FROM audit_events";

fn from_row(r: &sqlx::any::AnyRow) -> Result<AuditRecord, sqlx::Error> {
    let details: String = r.try_get("details")?;
    Ok(AuditRecord {
        id: r.try_get("id")?,
        seq: r.try_get("seq")?,
        ts: r.try_get("ts")?,
        tenant_id: r.try_get("tenant_id")?,
        actor: json!({"type": r.try_get::<String, _>("actor_type")?, "id": r.try_get::<Option<String>, _>("actor_id")?}),
        action: r.try_get("action")?,
        target: json!({"type": r.try_get::<Option<String>, _>("target_type")?, "id": r.try_get::<Option<String>, _>("target_id")?}),
        ip: r.try_get("ip")?,
        user_agent: r.try_get("user_agent")?,
        request_id: r.try_get("request_id")?,
        outcome: r.try_get("outcome")?,
        details: serde_json::from_str(&details).unwrap_or(Value::String(details)),
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
    })
}

/// Filters for listing events (newest first).
#[derive(Debug, Default, Clone)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub from: Option<i64>,
    pub to: Option<i64>,
    /// Events about this target id.
    pub target: Option<String>,
    /// Return events with `seq` below this (the cursor of the previous page).
    pub before_seq: Option<i64>,
    pub limit: i64,
}

pub async fn list(
    pool: &sqlx::AnyPool,
    tenant_id: &str,
    f: &AuditFilter,
) -> StoreResult<Vec<AuditRecord>> {
    let mut sql = format!("{SELECT} WHERE tenant_id = $1");
    let mut n = 1;
    // Each clause names its placeholder; `{}` in `c` is replaced by `$n`.
    let mut clause = |sql: &mut String, c: &str| {
        n += 1;
        sql.push_str(" AND ");
        sql.push_str(&c.replace("{}", &format!("${n}")));
    };
    if f.actor.is_some() {
        // An actor id, or an actor type such as `system` (no id).
        clause(
            &mut sql,
            "(actor_id = {} OR (actor_type = {} AND actor_id IS NULL))",
        );
    }
    if let Some(a) = &f.action {
        if a.ends_with('*') {
            clause(&mut sql, "action LIKE {} ESCAPE '\\'");
        } else {
            clause(&mut sql, "action = {}");
        }
    }
    if f.from.is_some() {
        clause(&mut sql, "ts >= {}");
    }
    if f.to.is_some() {
        clause(&mut sql, "ts < {}");
    }
    if f.target.is_some() {
        clause(&mut sql, "target_id = {}");
    }
    if f.before_seq.is_some() {
        clause(&mut sql, "seq < {}");
    }
    sql.push_str(&format!(
        " ORDER BY seq DESC LIMIT {}",
        f.limit.clamp(1, 1000)
    ));
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant_id.to_string());
    if let Some(a) = &f.actor {
        q = q.bind(a.clone());
    }
    if let Some(a) = &f.action {
        q = q.bind(match a.strip_suffix('*') {
            // `_` and `%` in the prefix are literal (action names contain `_`).
            Some(prefix) => format!(
                "{}%",
                prefix
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_")
            ),
            None => a.clone(),
        });
    }
    for v in [f.from, f.to].into_iter().flatten() {
        q = q.bind(v);
    }
    if let Some(t) = &f.target {
        q = q.bind(t.clone());
    }
    if let Some(v) = f.before_seq {
        q = q.bind(v);
    }
    let rows = q.fetch_all(pool).await?;
    Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
}

/// All events of one tenant in chain order, `batch` at a time starting after `after_seq`.
pub async fn chain_page(
    pool: &sqlx::AnyPool,
    tenant_id: &str,
    after_seq: i64,
    batch: i64,
) -> StoreResult<Vec<AuditRecord>> {
    let sql = format!("{SELECT} WHERE tenant_id = $1 AND seq > $2 ORDER BY seq ASC LIMIT $3");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(tenant_id.to_string())
        .bind(after_seq)
        .bind(batch)
        .fetch_all(pool)
        .await?;
    Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
}

/// Every tenant that has a chain, with its recorded head.
pub async fn heads(pool: &sqlx::AnyPool) -> StoreResult<Vec<(String, i64, String)>> {
    Ok(
        sqlx::query_as("SELECT tenant_id, seq, hash FROM audit_heads ORDER BY tenant_id")
            .fetch_all(pool)
            .await?,
    )
}

/// A broken link found by [`verify`].
#[derive(Debug, Clone, PartialEq)]
pub struct BrokenLink {
    pub tenant_id: String,
    pub seq: i64,
    pub event_id: Option<String>,
    pub reason: String,
}

impl std::fmt::Display for BrokenLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tenant {} event #{} ({}): {}",
            self.tenant_id,
            self.seq,
            self.event_id.as_deref().unwrap_or("missing"),
            self.reason
        )
    }
}

/// Recomputes every chain. Returns the number of events checked, or the first broken link.
pub async fn verify(pool: &sqlx::AnyPool) -> StoreResult<Result<u64, BrokenLink>> {
    let mut checked = 0u64;
    for (tenant_id, head_seq, head_hash) in heads(pool).await? {
        match verify_chain(pool, &tenant_id, head_seq, &head_hash).await? {
            Ok(n) => checked += n,
            Err(broken) => return Ok(Err(broken)),
        }
    }
    Ok(Ok(checked))
}

/// Recomputes one tenant's chain (as [`verify`] does for each). Returns the number of events
/// checked, or the first broken link; a tenant without a chain has nothing to check.
pub async fn verify_tenant(
    pool: &sqlx::AnyPool,
    tenant_id: &str,
) -> StoreResult<Result<u64, BrokenLink>> {
    let head = heads(pool)
        .await?
        .into_iter()
        .find(|(t, _, _)| t == tenant_id);
    match head {
        Some((t, seq, hash)) => verify_chain(pool, &t, seq, &hash).await,
        None => Ok(Ok(0)),
    }
}

async fn verify_chain(
    pool: &sqlx::AnyPool,
    tenant_id: &str,
    head_seq: i64,
    head_hash: &str,
) -> StoreResult<Result<u64, BrokenLink>> {
    let mut checked = 0u64;
    let mut prev = GENESIS_HASH.to_string();
    let mut expected_seq = 1;
    loop {
        let page = chain_page(pool, tenant_id, expected_seq - 1, 1000).await?;
        if page.is_empty() {
            break;
        }
        for rec in page {
            let broken = |reason: String| BrokenLink {
                tenant_id: tenant_id.to_string(),
                seq: expected_seq,
                event_id: Some(rec.id.clone()),
                reason,
            };
            if rec.seq != expected_seq {
                return Ok(Err(BrokenLink {
                    event_id: None,
                    ..broken(format!("event missing (next found is #{})", rec.seq))
                }));
            }
            if rec.prev_hash != prev {
                return Ok(Err(broken(
                    "prev_hash does not match the previous event's hash".into(),
                )));
            }
            if rec.compute_hash() != rec.hash {
                return Ok(Err(broken(
                    "content does not match its hash (event altered)".into(),
                )));
            }
            prev = rec.hash;
            expected_seq += 1;
            checked += 1;
        }
    }
    if expected_seq - 1 != head_seq || prev != head_hash {
        return Ok(Err(BrokenLink {
            tenant_id: tenant_id.to_string(),
            seq: expected_seq,
            event_id: None,
            reason: format!(
                "chain ends at #{} but the head records #{head_seq} (events removed)",
                expected_seq - 1
            ),
        }));
    }
    Ok(Ok(checked))
}
