//! Products, plans, subscriptions, app-JWT credentials, the single-use `jti` cache and
//! asynchronous operations. Every tenant-owned lookup filters by tenant, except the two the
//! credential pipeline needs before it knows the tenant (a subscription id *is* the credential).

use serde_json::{Value, json};
use sqlx::any::AnyRow;
use sqlx::{AnyPool, AssertSqlSafe, Row};

use crate::{Conn, StoreResult, json_col};

// ---------------------------------------------------------------------------------------------
// Products and plans

#[derive(Debug, Clone)]
pub struct Product {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub description: String,
    pub models: Vec<String>,
    pub created_at: i64,
}

/// A plan's limits: the limits layer's `LimitSet` (one shape for plans, keys and config).
pub use tollgate_core::limits::LimitSet as PlanLimits;

#[derive(Debug, Clone)]
pub struct Plan {
    pub id: String,
    pub tenant_id: String,
    pub product_id: String,
    pub name: String,
    pub limits: PlanLimits,
    pub created_at: i64,
}

fn product_row(r: &AnyRow) -> Result<Product, sqlx::Error> {
    Ok(Product {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        models: json_col(r.try_get("models")?).unwrap_or_default(),
        created_at: r.try_get("created_at")?,
    })
}

fn plan_row(r: &AnyRow) -> Result<Plan, sqlx::Error> {
    Ok(Plan {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        product_id: r.try_get("product_id")?,
        name: r.try_get("name")?,
        limits: json_col(r.try_get("limits")?).unwrap_or_default(),
        created_at: r.try_get("created_at")?,
    })
}

const PRODUCT_COLS: &str = "id, tenant_id, name, description, models, created_at";
const PLAN_COLS: &str = "id, tenant_id, product_id, name, limits, created_at";

pub async fn insert_product(conn: &mut Conn, p: &Product) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO products (id, tenant_id, name, description, models, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(p.id.clone())
    .bind(p.tenant_id.clone())
    .bind(p.name.clone())
    .bind(p.description.clone())
    .bind(json!(p.models).to_string())
    .bind(p.created_at)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn get_product(
    conn: &mut Conn,
    tenant_id: &str,
    id: &str,
) -> StoreResult<Option<Product>> {
    let sql = format!("SELECT {PRODUCT_COLS} FROM products WHERE tenant_id = $1 AND id = $2");
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(tenant_id.to_string())
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    Ok(row.as_ref().map(product_row).transpose()?)
}

pub async fn list_products(pool: &AnyPool, tenant_id: &str) -> StoreResult<Vec<Product>> {
    let sql =
        format!("SELECT {PRODUCT_COLS} FROM products WHERE tenant_id = $1 ORDER BY created_at, id");
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(tenant_id.to_string())
        .fetch_all(pool)
        .await?;
    Ok(rows.iter().map(product_row).collect::<Result<_, _>>()?)
}

pub async fn insert_plan(conn: &mut Conn, p: &Plan) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO plans (id, tenant_id, product_id, name, limits, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(p.id.clone())
    .bind(p.tenant_id.clone())
    .bind(p.product_id.clone())
    .bind(p.name.clone())
    .bind(json!(p.limits).to_string())
    .bind(p.created_at)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn get_plan(conn: &mut Conn, tenant_id: &str, id: &str) -> StoreResult<Option<Plan>> {
    let sql = format!("SELECT {PLAN_COLS} FROM plans WHERE tenant_id = $1 AND id = $2");
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(tenant_id.to_string())
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    Ok(row.as_ref().map(plan_row).transpose()?)
}

pub async fn list_plans(
    pool: &AnyPool,
    tenant_id: &str,
    product_id: Option<&str>,
) -> StoreResult<Vec<Plan>> {
    let rows = match product_id {
        Some(p) => {
            let sql = format!(
                "SELECT {PLAN_COLS} FROM plans WHERE tenant_id = $1 AND product_id = $2 ORDER BY created_at, id"
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(tenant_id.to_string())
                .bind(p.to_string())
                .fetch_all(pool)
                .await?
        }
        None => {
            let sql = format!(
                "SELECT {PLAN_COLS} FROM plans WHERE tenant_id = $1 ORDER BY created_at, id"
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(tenant_id.to_string())
                .fetch_all(pool)
                .await?
        }
    };
    Ok(rows.iter().map(plan_row).collect::<Result<_, _>>()?)
}

// ---------------------------------------------------------------------------------------------
// Subscriptions

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Active,
    Suspended,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => Self::Active,
            "suspended" => Self::Suspended,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Subscription {
    pub id: String,
    pub tenant_id: String,
    pub plan_id: String,
    pub user_id: Option<String>,
    pub status: Status,
    pub max_token_lifetime_seconds: i64,
    pub single_use_tokens: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub cancelled_at: Option<i64>,
    /// Web origins allowed to use this subscription's credentials from a browser (normalised,
    /// see `tollgate::cors::parse_origin`); empty = none.
    pub allowed_origins: Vec<String>,
}

const SUB_COLS: &str = "id, tenant_id, plan_id, user_id, status, max_token_lifetime_seconds,
    single_use_tokens, created_at, updated_at, cancelled_at, allowed_origins";

fn sub_row(r: &AnyRow) -> Result<Subscription, sqlx::Error> {
    let status: String = r.try_get("status")?;
    let single: i64 = r.try_get("single_use_tokens")?;
    Ok(Subscription {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        plan_id: r.try_get("plan_id")?,
        user_id: r.try_get("user_id")?,
        // An unknown status (a newer binary wrote it) is treated as not active.
        status: Status::parse(&status).unwrap_or(Status::Suspended),
        max_token_lifetime_seconds: r.try_get("max_token_lifetime_seconds")?,
        single_use_tokens: single != 0,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        cancelled_at: r.try_get("cancelled_at")?,
        // Written by this code only; an unreadable value counts as no origin allowed.
        allowed_origins: serde_json::from_str(&r.try_get::<String, _>("allowed_origins")?)
            .unwrap_or_default(),
    })
}

/// Replaces the subscription's rows in `subscription_origins` by its `allowed_origins`.
async fn write_origins(conn: &mut Conn, s: &Subscription) -> StoreResult<()> {
    sqlx::query("DELETE FROM subscription_origins WHERE subscription_id = $1")
        .bind(s.id.clone())
        .execute(&mut *conn)
        .await?;
    for origin in &s.allowed_origins {
        sqlx::query("INSERT INTO subscription_origins (origin, subscription_id) VALUES ($1, $2)")
            .bind(origin.clone())
            .bind(s.id.clone())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Whether an active subscription (of any tenant) allows `origin`: the only question a CORS
/// preflight, which carries no credential, can ask.
pub async fn origin_allowed_anywhere(pool: &AnyPool, origin: &str) -> StoreResult<bool> {
    let row = sqlx::query(
        "SELECT 1 FROM subscription_origins o JOIN subscriptions s ON s.id = o.subscription_id
         WHERE o.origin = $1 AND s.status = 'active' LIMIT 1",
    )
    .bind(origin.to_string())
    .fetch_optional(pool)
    .await?;
    Ok(row.is_some())
}

fn origins_json(s: &Subscription) -> String {
    serde_json::to_string(&s.allowed_origins).unwrap_or_else(|_| "[]".into())
}

pub async fn insert_subscription(conn: &mut Conn, s: &Subscription) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO subscriptions (id, tenant_id, plan_id, user_id, status,
            max_token_lifetime_seconds, single_use_tokens, created_at, updated_at, cancelled_at,
            allowed_origins)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(s.id.clone())
    .bind(s.tenant_id.clone())
    .bind(s.plan_id.clone())
    .bind(s.user_id.clone())
    .bind(s.status.as_str())
    .bind(s.max_token_lifetime_seconds)
    .bind(i64::from(s.single_use_tokens))
    .bind(s.created_at)
    .bind(s.updated_at)
    .bind(s.cancelled_at)
    .bind(origins_json(s))
    .execute(&mut *conn)
    .await?;
    write_origins(conn, s).await
}

pub async fn get_subscription(
    conn: &mut Conn,
    tenant_id: &str,
    id: &str,
) -> StoreResult<Option<Subscription>> {
    let sql = format!("SELECT {SUB_COLS} FROM subscriptions WHERE tenant_id = $1 AND id = $2");
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(tenant_id.to_string())
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    Ok(row.as_ref().map(sub_row).transpose()?)
}

pub async fn list_subscriptions(
    pool: &AnyPool,
    tenant_id: &str,
    plan_id: Option<&str>,
) -> StoreResult<Vec<Subscription>> {
    let rows = match plan_id {
        Some(p) => {
            let sql = format!(
                "SELECT {SUB_COLS} FROM subscriptions WHERE tenant_id = $1 AND plan_id = $2 ORDER BY created_at DESC, id"
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(tenant_id.to_string())
                .bind(p.to_string())
                .fetch_all(pool)
                .await?
        }
        None => {
            let sql = format!(
                "SELECT {SUB_COLS} FROM subscriptions WHERE tenant_id = $1 ORDER BY created_at DESC, id"
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(tenant_id.to_string())
                .fetch_all(pool)
                .await?
        }
    };
    Ok(rows.iter().map(sub_row).collect::<Result<_, _>>()?)
}

/// Writes status and settings.
pub async fn update_subscription(conn: &mut Conn, s: &Subscription) -> StoreResult<()> {
    sqlx::query(
        "UPDATE subscriptions SET status = $3, max_token_lifetime_seconds = $4,
            single_use_tokens = $5, updated_at = $6, cancelled_at = $7, allowed_origins = $8
         WHERE tenant_id = $1 AND id = $2",
    )
    .bind(s.tenant_id.clone())
    .bind(s.id.clone())
    .bind(s.status.as_str())
    .bind(s.max_token_lifetime_seconds)
    .bind(i64::from(s.single_use_tokens))
    .bind(s.updated_at)
    .bind(s.cancelled_at)
    .bind(origins_json(s))
    .execute(&mut *conn)
    .await?;
    write_origins(conn, s).await
}

/// What the credential pipeline needs about a subscription, found by its id alone (the id is
/// what the caller presented): the subscription, its plan and its product.
pub async fn access(
    pool: &AnyPool,
    id: &str,
) -> StoreResult<Option<(Subscription, Plan, Product)>> {
    let sql = format!("SELECT {SUB_COLS} FROM subscriptions WHERE id = $1");
    let Some(row) = sqlx::query(AssertSqlSafe(sql))
        .bind(id.to_string())
        .fetch_optional(pool)
        .await?
    else {
        return Ok(None);
    };
    let sub = sub_row(&row)?;
    let mut conn = pool.acquire().await?;
    let Some(plan) = get_plan(&mut conn, &sub.tenant_id, &sub.plan_id).await? else {
        return Ok(None);
    };
    let Some(product) = get_product(&mut conn, &sub.tenant_id, &plan.product_id).await? else {
        return Ok(None);
    };
    Ok(Some((sub, plan, product)))
}

// ---------------------------------------------------------------------------------------------
// App-JWT credentials

#[derive(Clone)]
pub struct Credential {
    pub id: String,
    pub tenant_id: String,
    pub subscription_id: String,
    /// `jwt_hs256` or `jwt_public_key`.
    pub kind: String,
    pub kid: String,
    pub alg: String,
    /// Sealed secret (HS256) or normalised public key; never returned by the API.
    pub key_material: String,
    /// `generated`, `pem` or `jwk`: how the key was given.
    pub key_format: String,
    pub created_at: i64,
    pub created_by: Option<String>,
    pub revoked_at: Option<i64>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("id", &self.id)
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

const CRED_COLS: &str = "id, tenant_id, subscription_id, kind, kid, alg, key_material, key_format,
    created_at, created_by, revoked_at";

fn cred_row(r: &AnyRow) -> Result<Credential, sqlx::Error> {
    Ok(Credential {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        subscription_id: r.try_get("subscription_id")?,
        kind: r.try_get("kind")?,
        kid: r.try_get("kid")?,
        alg: r.try_get("alg")?,
        key_material: r.try_get("key_material")?,
        key_format: r.try_get("key_format")?,
        created_at: r.try_get("created_at")?,
        created_by: r.try_get("created_by")?,
        revoked_at: r.try_get("revoked_at")?,
    })
}

pub async fn insert_credential(conn: &mut Conn, c: &Credential) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO subscription_credentials (id, tenant_id, subscription_id, kind, kid, alg,
            key_material, key_format, created_at, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(c.id.clone())
    .bind(c.tenant_id.clone())
    .bind(c.subscription_id.clone())
    .bind(c.kind.clone())
    .bind(c.kid.clone())
    .bind(c.alg.clone())
    .bind(c.key_material.clone())
    .bind(c.key_format.clone())
    .bind(c.created_at)
    .bind(c.created_by.clone())
    .execute(conn)
    .await?;
    Ok(())
}

/// The JWT credentials of a subscription (revoked ones too when `include_revoked`).
pub async fn list_credentials(
    pool: &AnyPool,
    subscription_id: &str,
    include_revoked: bool,
) -> StoreResult<Vec<Credential>> {
    let filter = if include_revoked {
        ""
    } else {
        " AND revoked_at IS NULL"
    };
    let sql = format!(
        "SELECT {CRED_COLS} FROM subscription_credentials WHERE subscription_id = $1{filter}
         ORDER BY created_at, id"
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(subscription_id.to_string())
        .fetch_all(pool)
        .await?;
    Ok(rows.iter().map(cred_row).collect::<Result<_, _>>()?)
}

pub async fn get_credential(
    conn: &mut Conn,
    tenant_id: &str,
    subscription_id: &str,
    id: &str,
) -> StoreResult<Option<Credential>> {
    let sql = format!(
        "SELECT {CRED_COLS} FROM subscription_credentials
         WHERE tenant_id = $1 AND subscription_id = $2 AND id = $3"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(tenant_id.to_string())
        .bind(subscription_id.to_string())
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    Ok(row.as_ref().map(cred_row).transpose()?)
}

/// Marks a credential revoked (idempotent); returns whether this call revoked it.
pub async fn revoke_credential(
    conn: &mut Conn,
    tenant_id: &str,
    id: &str,
    at: i64,
) -> StoreResult<bool> {
    let r = sqlx::query(
        "UPDATE subscription_credentials SET revoked_at = $3
         WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL",
    )
    .bind(tenant_id.to_string())
    .bind(id.to_string())
    .bind(at)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// Ids of the API keys bound to a subscription.
pub async fn subscription_key_ids(
    pool: &AnyPool,
    tenant_id: &str,
    subscription_id: &str,
) -> StoreResult<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT id FROM api_keys WHERE tenant_id = $1 AND subscription_id = $2 ORDER BY created_at, id",
    )
    .bind(tenant_id.to_string())
    .bind(subscription_id.to_string())
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// Whether an API key is still usable (exists and not revoked); for operations picked up later.
pub async fn api_key_live(pool: &AnyPool, id: &str) -> StoreResult<bool> {
    let row: Option<(Option<i64>,)> =
        sqlx::query_as("SELECT revoked_at FROM api_keys WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(pool)
            .await?;
    Ok(matches!(row, Some((None,))))
}

/// Status of a subscription by id (for operations picked up later).
pub async fn subscription_status(pool: &AnyPool, id: &str) -> StoreResult<Option<Status>> {
    let row: Option<(String,)> = sqlx::query_as("SELECT status FROM subscriptions WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|r| Status::parse(&r.0).unwrap_or(Status::Suspended)))
}

// ---------------------------------------------------------------------------------------------
// Single-use jti cache

/// Records a `jti` as used until `expires_at`; `false` when it was already recorded (a replay).
pub async fn record_jti(
    pool: &AnyPool,
    subscription_id: &str,
    jti: &str,
    expires_at: i64,
) -> StoreResult<bool> {
    let r = sqlx::query(
        "INSERT INTO jwt_replay (subscription_id, jti, expires_at) VALUES ($1, $2, $3)
         ON CONFLICT (subscription_id, jti) DO NOTHING",
    )
    .bind(subscription_id.to_string())
    .bind(jti.to_string())
    .bind(expires_at)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Forgets `jti`s whose tokens have expired (they can no longer be presented anyway).
pub async fn prune_jti(pool: &AnyPool, now: i64) -> StoreResult<u64> {
    let r = sqlx::query("DELETE FROM jwt_replay WHERE expires_at < $1")
        .bind(now)
        .execute(pool)
        .await?;
    Ok(r.rows_affected())
}

// ---------------------------------------------------------------------------------------------
// Operations

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl OpStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Operation {
    pub id: String,
    pub tenant_id: String,
    pub subscription_id: Option<String>,
    pub user_id: Option<String>,
    pub credential_type: String,
    pub credential_id: Option<String>,
    pub end_user: Option<String>,
    pub kind: String,
    pub model: String,
    /// The request body as the client sent it (public model name).
    pub request: Value,
    pub status: OpStatus,
    pub result: Option<Value>,
    pub error: Option<Value>,
    pub attempts: i64,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

const OP_COLS: &str = "id, tenant_id, subscription_id, user_id, credential_type, credential_id,
    end_user, kind, model, request, status, result, error, attempts, created_at, started_at,
    finished_at";

fn op_row(r: &AnyRow) -> Result<Operation, sqlx::Error> {
    let status: String = r.try_get("status")?;
    Ok(Operation {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        subscription_id: r.try_get("subscription_id")?,
        user_id: r.try_get("user_id")?,
        credential_type: r.try_get("credential_type")?,
        credential_id: r.try_get("credential_id")?,
        end_user: r.try_get("end_user")?,
        kind: r.try_get("kind")?,
        model: r.try_get("model")?,
        request: json_col(r.try_get("request")?).unwrap_or(Value::Null),
        status: OpStatus::parse(&status).unwrap_or(OpStatus::Failed),
        result: json_col(r.try_get("result")?),
        error: json_col(r.try_get("error")?),
        attempts: r.try_get("attempts")?,
        created_at: r.try_get("created_at")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
    })
}

pub async fn insert_operation(pool: &AnyPool, op: &Operation) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO operations (id, tenant_id, subscription_id, user_id, credential_type,
            credential_id, end_user, kind, model, request, status, attempts, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 0, $12)",
    )
    .bind(op.id.clone())
    .bind(op.tenant_id.clone())
    .bind(op.subscription_id.clone())
    .bind(op.user_id.clone())
    .bind(op.credential_type.clone())
    .bind(op.credential_id.clone())
    .bind(op.end_user.clone())
    .bind(op.kind.clone())
    .bind(op.model.clone())
    .bind(op.request.to_string())
    .bind(op.status.as_str())
    .bind(op.created_at)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn get_operation(
    pool: &AnyPool,
    tenant_id: &str,
    id: &str,
) -> StoreResult<Option<Operation>> {
    let sql = format!("SELECT {OP_COLS} FROM operations WHERE tenant_id = $1 AND id = $2");
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(tenant_id.to_string())
        .bind(id.to_string())
        .fetch_optional(pool)
        .await?;
    Ok(row.as_ref().map(op_row).transpose()?)
}

pub async fn count_queued(pool: &AnyPool) -> StoreResult<i64> {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM operations WHERE status = 'queued'")
        .fetch_one(pool)
        .await?;
    Ok(n)
}

/// Atomically takes the oldest queued operation for `worker`, leased until `lease_until`. Safe
/// across instances: of two workers racing for one row, exactly one update matches.
pub async fn claim_operation(
    pool: &AnyPool,
    worker: &str,
    now: i64,
    lease_until: i64,
) -> StoreResult<Option<Operation>> {
    let sql = format!(
        "UPDATE operations SET status = 'running', worker = $1, lease_until = $2,
            started_at = $3, attempts = attempts + 1
         WHERE id = (SELECT id FROM operations WHERE status = 'queued'
                     ORDER BY created_at, id LIMIT 1)
           AND status = 'queued'
         RETURNING {OP_COLS}"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(worker.to_string())
        .bind(lease_until)
        .bind(now)
        .fetch_optional(pool)
        .await?;
    Ok(row.as_ref().map(op_row).transpose()?)
}

/// Extends a running operation's lease; `false` when this worker no longer holds it.
pub async fn renew_lease(
    pool: &AnyPool,
    id: &str,
    worker: &str,
    lease_until: i64,
) -> StoreResult<bool> {
    let r = sqlx::query(
        "UPDATE operations SET lease_until = $3 WHERE id = $1 AND worker = $2 AND status = 'running'",
    )
    .bind(id.to_string())
    .bind(worker.to_string())
    .bind(lease_until)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// Records the outcome of a running operation held by `worker`.
pub async fn finish_operation(
    pool: &AnyPool,
    id: &str,
    worker: &str,
    status: OpStatus,
    result: Option<&Value>,
    error: Option<&Value>,
    now: i64,
) -> StoreResult<bool> {
    let r = sqlx::query(
        "UPDATE operations SET status = $3, result = $4, error = $5, finished_at = $6,
            worker = NULL, lease_until = NULL
         WHERE id = $1 AND worker = $2 AND status = 'running'",
    )
    .bind(id.to_string())
    .bind(worker.to_string())
    .bind(status.as_str())
    .bind(result.map(Value::to_string))
    .bind(error.map(Value::to_string))
    .bind(now)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// Puts a running operation back in the queue without counting the attempt (graceful shutdown).
pub async fn release_operation(pool: &AnyPool, id: &str, worker: &str) -> StoreResult<bool> {
    let r = sqlx::query(
        "UPDATE operations SET status = 'queued', worker = NULL, lease_until = NULL,
            started_at = NULL, attempts = attempts - 1
         WHERE id = $1 AND worker = $2 AND status = 'running'",
    )
    .bind(id.to_string())
    .bind(worker.to_string())
    .execute(pool)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// Running operations whose lease ran out (their instance died): retried while they have
/// attempts left, else failed with `error`. Returns (requeued, failed).
pub async fn recover_expired(
    pool: &AnyPool,
    now: i64,
    max_attempts: i64,
    error: &Value,
) -> StoreResult<(u64, u64)> {
    let requeued = sqlx::query(
        "UPDATE operations SET status = 'queued', worker = NULL, lease_until = NULL
         WHERE status = 'running' AND lease_until < $1 AND attempts < $2",
    )
    .bind(now)
    .bind(max_attempts)
    .execute(pool)
    .await?
    .rows_affected();
    let failed = sqlx::query(
        "UPDATE operations SET status = 'failed', error = $2, finished_at = $1, worker = NULL,
            lease_until = NULL
         WHERE status = 'running' AND lease_until < $1",
    )
    .bind(now)
    .bind(error.to_string())
    .execute(pool)
    .await?
    .rows_affected();
    Ok((requeued, failed))
}

/// Cancels the queued operations of a subscription (it was cancelled or suspended).
pub async fn cancel_queued_operations(
    conn: &mut Conn,
    subscription_id: &str,
    error: &Value,
    now: i64,
) -> StoreResult<u64> {
    let r = sqlx::query(
        "UPDATE operations SET status = 'cancelled', error = $2, finished_at = $3
         WHERE subscription_id = $1 AND status = 'queued'",
    )
    .bind(subscription_id.to_string())
    .bind(error.to_string())
    .bind(now)
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}

/// Deletes finished operations older than `before` (the retention period).
pub async fn prune_operations(pool: &AnyPool, before: i64) -> StoreResult<u64> {
    let r =
        sqlx::query("DELETE FROM operations WHERE finished_at IS NOT NULL AND finished_at < $1")
            .bind(before)
            .execute(pool)
            .await?;
    Ok(r.rows_affected())
}
