//! Management routes for products, plans, subscriptions and their credentials (SPEC §4.2).
//! Everything is tenant-scoped: another tenant's object is `404`. Every mutation writes its audit
//! event in the same transaction; changes that take access away also write an invalidation (so
//! every instance cuts in-flight requests) and apply it locally after the commit.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Value, json};

use super::keys::{self, Alg};
use super::{DEFAULT_MAX_TOKEN_LIFETIME, LARGEST_MAX_TOKEN_LIFETIME};
use crate::app::AppState;
use crate::auth::middleware::{Caller, guard, within_ceiling};
use crate::auth::{AuthLevel, PermSet, Permission};
use crate::error::{ApiError, ApiResult};
use crate::http::{Json, Meta};
use crate::store::audit::{AuditEvent, RequestMeta, append};
use crate::store::invalidations::{self, Kind};
use crate::store::keys::KeyRateLimit;
use crate::store::subscriptions::{
    self as store, Credential, Plan, PlanLimits, Product, Status, Subscription,
};
use crate::store::{StoreError, Tx};
use crate::util::{new_id, now_ms, random_base62};
use crate::wire::ToApi;
use tollgate_core::audit::Action;
use tollgate_core::permissions::Authority;

pub fn routes(state: &AppState) -> Router<AppState> {
    use AuthLevel::Required;
    let any = || guard(state, Required, None);
    let perm = |p| guard(state, Required, Some(p));
    Router::new()
        .route("/products", get(list_products).route_layer(any()))
        .route(
            "/products",
            post(create_product).route_layer(perm(Permission::ProductsWrite)),
        )
        .route("/products/{id}", get(get_product).route_layer(any()))
        .route("/plans", get(list_plans).route_layer(any()))
        .route(
            "/plans",
            post(create_plan).route_layer(perm(Permission::ProductsWrite)),
        )
        .route("/plans/{id}", get(get_plan).route_layer(any()))
        .route(
            "/subscriptions",
            get(list_subscriptions).route_layer(perm(Permission::SubscriptionsRead)),
        )
        .route(
            "/subscriptions",
            post(create_subscription).route_layer(perm(Permission::SubscriptionsWrite)),
        )
        .route(
            "/subscriptions/{id}",
            get(get_subscription).route_layer(perm(Permission::SubscriptionsRead)),
        )
        .route(
            "/subscriptions/{id}",
            delete(cancel_subscription)
                .patch(patch_subscription)
                .route_layer(perm(Permission::SubscriptionsWrite)),
        )
        .route(
            "/subscriptions/{id}/credentials",
            get(list_credentials).route_layer(perm(Permission::SubscriptionsRead)),
        )
        .route(
            "/subscriptions/{id}/credentials",
            post(create_credential).route_layer(perm(Permission::SubscriptionsWrite)),
        )
        .route(
            "/subscriptions/{id}/credentials/{cred}",
            delete(revoke_credential).route_layer(perm(Permission::SubscriptionsWrite)),
        )
}

fn commit_err(e: sqlx::Error) -> ApiError {
    StoreError::from(e).into()
}

async fn commit(tx: Tx) -> ApiResult<()> {
    tx.commit().await.map_err(commit_err)
}

/// Products and plans are readable by any member of the tenant (not by a subscription's own
/// credentials, which only see their models through `/v1/models`).
fn require_member(caller: &Caller) -> ApiResult<()> {
    if caller.subscription_id.is_some() && caller.user_id.is_none() {
        return Err(ApiError::permission_denied(
            "A subscription's credential cannot read the tenant's catalogue",
        ));
    }
    Ok(())
}

fn list(data: Vec<Value>) -> Response {
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

fn created(v: Value) -> Response {
    (StatusCode::CREATED, axum::Json(v)).into_response()
}

async fn conn(state: &AppState) -> ApiResult<sqlx::pool::PoolConnection<sqlx::Any>> {
    state
        .store
        .pool()
        .acquire()
        .await
        .map_err(|e| StoreError::from(e).into())
}

// ---------------------------------------------------------------------------------------------
// Products

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateProduct {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub models: Vec<String>,
}

async fn create_product(
    State(state): State<AppState>,
    caller: Caller,
    Meta(meta): Meta,
    Json(body): Json<CreateProduct>,
) -> ApiResult<Response> {
    let name = crate::service::keys::validate_name(&body.name)?;
    let description = body.description.unwrap_or_default();
    if description.chars().count() > 2000 {
        return Err(ApiError::validation(
            "description",
            "description is at most 2000 characters",
        ));
    }
    if body.models.is_empty() {
        return Err(ApiError::validation(
            "models",
            "a product lists at least one model",
        ));
    }
    let mut models: Vec<String> = Vec::new();
    for m in &body.models {
        if state.proxy.route(m).is_none() {
            return Err(ApiError::validation(
                "models",
                format!("the model {m:?} is not configured on this gateway"),
            ));
        }
        if !models.contains(m) {
            models.push(m.clone());
        }
    }
    let product = Product {
        id: new_id("prod"),
        tenant_id: caller.tenant_id.to_string(),
        name,
        description,
        models,
        created_at: now_ms(),
    };
    let mut tx = state.store.begin().await?;
    store::insert_product(&mut tx, &product)
        .await
        .map_err(|e| conflict_as(e, "A product with that name already exists"))?;
    append(
        &mut tx,
        AuditEvent::new(
            product.tenant_id.clone(),
            caller.actor(),
            Action::ProductCreated,
            &meta,
        )
        .target("product", product.id.clone())
        .details(json!({"name": product.name, "models": product.models})),
    )
    .await?;
    commit(tx).await?;
    Ok(created(product.to_api()))
}

fn conflict_as(e: StoreError, msg: &str) -> ApiError {
    match e {
        StoreError::Conflict(_) => ApiError::conflict(msg),
        other => other.into(),
    }
}

async fn list_products(State(state): State<AppState>, caller: Caller) -> ApiResult<Response> {
    require_member(&caller)?;
    let data = store::list_products(state.store.pool(), &caller.tenant_id)
        .await?
        .iter()
        .map(Product::to_api)
        .collect();
    Ok(list(data))
}

async fn get_product(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    require_member(&caller)?;
    let mut c = conn(&state).await?;
    let p = store::get_product(&mut c, &caller.tenant_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("product"))?;
    let plans: Vec<Value> = store::list_plans(state.store.pool(), &caller.tenant_id, Some(&id))
        .await?
        .iter()
        .map(Plan::to_api)
        .collect();
    let mut out = p.to_api();
    out["plans"] = Value::Array(plans);
    Ok(axum::Json(out).into_response())
}

// ---------------------------------------------------------------------------------------------
// Plans

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePlan {
    pub product_id: String,
    pub name: String,
    #[serde(default)]
    pub limits: PlanLimits,
}

fn validate_limits(l: &PlanLimits) -> ApiResult<()> {
    let all = [
        ("requests_per_minute", l.requests_per_minute),
        ("tokens_per_minute", l.tokens_per_minute),
        ("concurrent_requests", l.concurrent_requests),
        ("requests_per_day", l.requests_per_day),
        ("tokens_per_month", l.tokens_per_month),
    ];
    for (name, v) in all {
        if v == Some(0) {
            return Err(ApiError::validation(
                "limits",
                format!("limits.{name} must be positive (omit it for no limit)"),
            ));
        }
    }
    Ok(())
}

async fn create_plan(
    State(state): State<AppState>,
    caller: Caller,
    Meta(meta): Meta,
    Json(body): Json<CreatePlan>,
) -> ApiResult<Response> {
    let name = crate::service::keys::validate_name(&body.name)?;
    validate_limits(&body.limits)?;
    let mut tx = state.store.begin().await?;
    let product = store::get_product(&mut tx, &caller.tenant_id, &body.product_id)
        .await?
        .ok_or_else(|| ApiError::not_found("product").with_param("product_id"))?;
    let plan = Plan {
        id: new_id("plan"),
        tenant_id: caller.tenant_id.to_string(),
        product_id: product.id.clone(),
        name,
        limits: body.limits,
        created_at: now_ms(),
    };
    store::insert_plan(&mut tx, &plan)
        .await
        .map_err(|e| conflict_as(e, "This product already has a plan with that name"))?;
    append(
        &mut tx,
        AuditEvent::new(
            plan.tenant_id.clone(),
            caller.actor(),
            Action::PlanCreated,
            &meta,
        )
        .target("plan", plan.id.clone())
        .details(json!({"name": plan.name, "product_id": plan.product_id, "limits": plan.limits})),
    )
    .await?;
    commit(tx).await?;
    Ok(created(plan.to_api()))
}

#[derive(Debug, Deserialize)]
pub struct PlanQuery {
    #[serde(default)]
    pub product_id: Option<String>,
}

async fn list_plans(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<PlanQuery>,
) -> ApiResult<Response> {
    require_member(&caller)?;
    let data = store::list_plans(
        state.store.pool(),
        &caller.tenant_id,
        q.product_id.as_deref(),
    )
    .await?
    .iter()
    .map(Plan::to_api)
    .collect();
    Ok(list(data))
}

async fn get_plan(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    require_member(&caller)?;
    let mut c = conn(&state).await?;
    let p = store::get_plan(&mut c, &caller.tenant_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("plan"))?;
    Ok(axum::Json(p.to_api()).into_response())
}

// ---------------------------------------------------------------------------------------------
// Subscriptions

/// A new subscription id: 24 lowercase hex characters (96 random bits).
pub fn new_subscription_id() -> ApiResult<String> {
    let mut b = [0u8; 12];
    crate::crypto::random_bytes(&mut b).map_err(ApiError::internal)?;
    Ok(hex::encode(b))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSubscription {
    pub plan_id: String,
    /// The subscriber (default: the caller); must be a member of the tenant.
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub max_token_lifetime_seconds: Option<i64>,
    #[serde(default)]
    pub single_use_tokens: Option<bool>,
    /// Web origins whose pages may use this subscription's credentials (CORS); default none.
    #[serde(default)]
    pub allowed_origins: Option<Vec<String>>,
}

fn validate_lifetime(v: i64) -> ApiResult<i64> {
    if !(1..=LARGEST_MAX_TOKEN_LIFETIME).contains(&v) {
        return Err(ApiError::validation(
            "max_token_lifetime_seconds",
            format!("max_token_lifetime_seconds must be 1 to {LARGEST_MAX_TOKEN_LIFETIME}"),
        ));
    }
    Ok(v)
}

async fn subscription_api(state: &AppState, s: &Subscription) -> ApiResult<Value> {
    let mut out = s.to_api();
    let mut c = conn(state).await?;
    if let Some(plan) = store::get_plan(&mut c, &s.tenant_id, &s.plan_id).await? {
        out["product_id"] = Value::String(plan.product_id);
    }
    Ok(out)
}

pub(crate) async fn create_subscription(
    State(state): State<AppState>,
    caller: Caller,
    Meta(meta): Meta,
    Json(body): Json<CreateSubscription>,
) -> ApiResult<Response> {
    let lifetime = validate_lifetime(
        body.max_token_lifetime_seconds
            .unwrap_or(DEFAULT_MAX_TOKEN_LIFETIME),
    )?;
    let allowed_origins = crate::cors::validate_origins(body.allowed_origins.unwrap_or_default())?;
    let user_id = match body.user_id {
        Some(u) => {
            crate::store::tenants::resolve_permissions(state.store.pool(), &caller.tenant_id, &u)
                .await?
                .ok_or_else(|| ApiError::not_found("user").with_param("user_id"))?;
            Some(u)
        }
        None => caller.user_id.as_deref().map(str::to_string),
    };
    let mut tx = state.store.begin().await?;
    let plan = store::get_plan(&mut tx, &caller.tenant_id, &body.plan_id)
        .await?
        .ok_or_else(|| ApiError::not_found("plan").with_param("plan_id"))?;
    let now = now_ms();
    let sub = Subscription {
        id: new_subscription_id()?,
        tenant_id: caller.tenant_id.to_string(),
        plan_id: plan.id.clone(),
        user_id,
        status: Status::Active,
        max_token_lifetime_seconds: lifetime,
        single_use_tokens: body.single_use_tokens.unwrap_or(false),
        created_at: now,
        updated_at: now,
        cancelled_at: None,
        allowed_origins,
    };
    store::insert_subscription(&mut tx, &sub).await?;
    append(
        &mut tx,
        AuditEvent::new(
            sub.tenant_id.clone(),
            caller.actor(),
            Action::SubscriptionCreated,
            &meta,
        )
        .target("subscription", sub.id.clone())
        .details(
            json!({"plan_id": sub.plan_id, "product_id": plan.product_id,
            "user_id": sub.user_id, "max_token_lifetime_seconds": lifetime,
            "single_use_tokens": sub.single_use_tokens,
            "allowed_origins": sub.allowed_origins}),
        ),
    )
    .await?;
    commit(tx).await?;
    let mut out = sub.to_api();
    out["product_id"] = Value::String(plan.product_id);
    Ok(created(out))
}

#[derive(Debug, Deserialize)]
pub struct SubscriptionQuery {
    #[serde(default)]
    pub plan_id: Option<String>,
}

async fn list_subscriptions(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<SubscriptionQuery>,
) -> ApiResult<Response> {
    let subs =
        store::list_subscriptions(state.store.pool(), &caller.tenant_id, q.plan_id.as_deref())
            .await?;
    Ok(list(subs.iter().map(Subscription::to_api).collect()))
}

async fn load_subscription(
    conn: &mut crate::store::Conn,
    caller: &Caller,
    id: &str,
) -> ApiResult<Subscription> {
    store::get_subscription(conn, &caller.tenant_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("subscription"))
}

async fn credentials_api(state: &AppState, s: &Subscription) -> ApiResult<Vec<Value>> {
    let mut out: Vec<Value> = store::list_credentials(state.store.pool(), &s.id, true)
        .await?
        .iter()
        .map(Credential::to_api)
        .collect();
    let mut c = conn(state).await?;
    for key_id in store::subscription_key_ids(state.store.pool(), &s.tenant_id, &s.id).await? {
        if let Some(k) = crate::store::keys::get(&mut c, &s.tenant_id, &key_id).await? {
            let mut v = k.to_api();
            v["type"] = "api_key".into();
            out.push(v);
        }
    }
    Ok(out)
}

async fn get_subscription(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let mut c = conn(&state).await?;
    let s = load_subscription(&mut c, &caller, &id).await?;
    drop(c);
    let mut out = subscription_api(&state, &s).await?;
    out["credentials"] = Value::Array(credentials_api(&state, &s).await?);
    Ok(axum::Json(out).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchSubscription {
    /// `active` or `suspended` (cancelling is `DELETE`).
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub max_token_lifetime_seconds: Option<i64>,
    #[serde(default)]
    pub single_use_tokens: Option<bool>,
    /// Replaces the list of allowed web origins (`[]` = no browser access).
    #[serde(default)]
    pub allowed_origins: Option<Vec<String>>,
}

fn inactive_error() -> Value {
    crate::error::ApiError::new(
        crate::error::ErrorCode::SubscriptionInactive,
        "The subscription was cancelled or suspended",
    )
    .body()["error"]
        .clone()
}

async fn patch_subscription(
    State(state): State<AppState>,
    caller: Caller,
    Meta(meta): Meta,
    Path(id): Path<String>,
    Json(body): Json<PatchSubscription>,
) -> ApiResult<Response> {
    let new_status = match body.status.as_deref() {
        None => None,
        Some("active") => Some(Status::Active),
        Some("suspended") => Some(Status::Suspended),
        Some(_) => {
            return Err(ApiError::validation(
                "status",
                "status must be \"active\" or \"suspended\" (DELETE cancels)",
            ));
        }
    };
    let lifetime = body
        .max_token_lifetime_seconds
        .map(validate_lifetime)
        .transpose()?;
    let origins = body
        .allowed_origins
        .map(crate::cors::validate_origins)
        .transpose()?;
    let mut tx = state.store.begin().await?;
    let mut s = load_subscription(&mut tx, &caller, &id).await?;
    if s.status == Status::Cancelled {
        return Err(ApiError::conflict("A cancelled subscription cannot change"));
    }
    let mut changed = Vec::new();
    let mut cut = false;
    if let Some(st) = new_status
        && st != s.status
    {
        cut = st == Status::Suspended;
        s.status = st;
        changed.push("status");
    }
    if let Some(l) = lifetime
        && l != s.max_token_lifetime_seconds
    {
        s.max_token_lifetime_seconds = l;
        changed.push("max_token_lifetime_seconds");
    }
    if let Some(b) = body.single_use_tokens
        && b != s.single_use_tokens
    {
        s.single_use_tokens = b;
        changed.push("single_use_tokens");
    }
    if let Some(o) = origins
        && o != s.allowed_origins
    {
        s.allowed_origins = o;
        changed.push("allowed_origins");
    }
    let kind = if cut {
        Kind::Subject
    } else {
        Kind::Permissions
    };
    if !changed.is_empty() {
        s.updated_at = now_ms();
        store::update_subscription(&mut tx, &s).await?;
        if cut {
            store::cancel_queued_operations(&mut tx, &s.id, &inactive_error(), s.updated_at)
                .await?;
        }
        append(
            &mut tx,
            AuditEvent::new(
                s.tenant_id.clone(),
                caller.actor(),
                if cut {
                    Action::SubscriptionSuspended
                } else {
                    Action::SubscriptionUpdated
                },
                &meta,
            )
            .target("subscription", s.id.clone())
            .details(json!({"changed": changed, "status": s.status.as_str(),
                "allowed_origins": s.allowed_origins})),
        )
        .await?;
        invalidations::publish(&mut tx, kind, &s.id, &meta).await?;
    }
    commit(tx).await?;
    if !changed.is_empty() {
        state.auth.invalidate(kind, &s.id);
    }
    Ok(axum::Json(subscription_api(&state, &s).await?).into_response())
}

/// `DELETE /v1/subscriptions/{id}`: cancels (idempotent). Its keys and credentials stop working
/// at once on every instance, in-flight requests included, and its queued operations are
/// cancelled.
pub(crate) async fn cancel_subscription(
    State(state): State<AppState>,
    caller: Caller,
    Meta(meta): Meta,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let mut tx = state.store.begin().await?;
    let mut s = load_subscription(&mut tx, &caller, &id).await?;
    let changed = s.status != Status::Cancelled;
    if changed {
        let now = now_ms();
        s.status = Status::Cancelled;
        s.cancelled_at = Some(now);
        s.updated_at = now;
        store::update_subscription(&mut tx, &s).await?;
        let ops = store::cancel_queued_operations(&mut tx, &s.id, &inactive_error(), now).await?;
        append(
            &mut tx,
            AuditEvent::new(
                s.tenant_id.clone(),
                caller.actor(),
                Action::SubscriptionCancelled,
                &meta,
            )
            .target("subscription", s.id.clone())
            .details(json!({"plan_id": s.plan_id, "cancelled_operations": ops})),
        )
        .await?;
        invalidations::publish(&mut tx, Kind::Subject, &s.id, &meta).await?;
    }
    commit(tx).await?;
    if changed {
        state.auth.invalidate(Kind::Subject, &s.id);
    }
    Ok(axum::Json(subscription_api(&state, &s).await?).into_response())
}

// ---------------------------------------------------------------------------------------------
// Credentials

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCredential {
    #[serde(rename = "type")]
    pub kind: String,
    /// `jwt_public_key`: `RS256`, `ES256` or `EdDSA`.
    #[serde(default)]
    pub alg: Option<String>,
    /// `jwt_public_key`: PEM or JWK (a JSON object or its text).
    #[serde(default)]
    pub public_key: Option<Value>,
    /// JWT credentials: the `kid` tokens will carry (default: generated, or the JWK's).
    #[serde(default)]
    pub kid: Option<String>,
    /// `api_key`: a display name.
    #[serde(default)]
    pub name: Option<String>,
    /// `api_key`: optional expiry (RFC 3339).
    #[serde(default)]
    pub expires_at: Option<String>,
}

fn validate_kid(kid: &str) -> ApiResult<String> {
    if kid.is_empty()
        || kid.len() > 64
        || !kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return Err(ApiError::validation(
            "kid",
            "kid must be 1-64 characters of A-Z a-z 0-9 - _ . :",
        ));
    }
    Ok(kid.to_string())
}

pub(crate) async fn create_credential(
    State(state): State<AppState>,
    caller: Caller,
    Meta(meta): Meta,
    Path(id): Path<String>,
    Json(body): Json<CreateCredential>,
) -> ApiResult<Response> {
    match body.kind.as_str() {
        "api_key" => {
            let name = body
                .name
                .clone()
                .unwrap_or_else(|| format!("subscription {id}"));
            let out = create_subscription_key(
                &state,
                &caller,
                &meta,
                &id,
                SubscriptionKeySpec {
                    name,
                    expires_at: body.expires_at.clone(),
                    scopes: None,
                    rate_limit: None,
                },
            )
            .await?;
            Ok(created(out))
        }
        "jwt_hs256" | "jwt_public_key" => {
            create_jwt_credential(&state, &caller, &meta, &id, body).await
        }
        other => Err(ApiError::validation(
            "type",
            format!("unknown credential type {other:?}; use api_key, jwt_hs256 or jwt_public_key"),
        )),
    }
}

async fn create_jwt_credential(
    state: &AppState,
    caller: &Caller,
    meta: &RequestMeta,
    sub_id: &str,
    body: CreateCredential,
) -> ApiResult<Response> {
    // A signing credential mints app JWTs, which carry the subscription-key permissions: the
    // caller must hold them all (its effective permissions; no other power is involved).
    within_ceiling(
        Authority::permissions_only(caller.permissions),
        Authority::permissions_only(crate::auth::subscription_key_permissions()),
        "create a signing credential for app JWTs",
        Some("type"),
    )?;
    let cred_id = new_id("cred");
    let (alg, material, format, secret, jwk_kid) = if body.kind == "jwt_hs256" {
        if body.alg.as_deref().is_some_and(|a| a != "HS256") || body.public_key.is_some() {
            return Err(ApiError::validation(
                "type",
                "jwt_hs256 credentials are generated by Tollgate: send only type (and kid)",
            ));
        }
        let secret = keys::generate_hs256_secret().map_err(ApiError::internal)?;
        let sealed = state
            .auth
            .subscriptions
            .secrets()?
            .seal(secret.as_bytes(), &cred_id)
            .map_err(ApiError::internal)?;
        (Alg::Hs256, sealed, "generated", Some(secret), None)
    } else {
        let alg = body
            .alg
            .as_deref()
            .and_then(Alg::parse)
            .filter(|a| *a != Alg::Hs256)
            .ok_or_else(|| ApiError::validation("alg", "alg must be RS256, ES256 or EdDSA"))?;
        let text = match &body.public_key {
            Some(Value::String(s)) => s.clone(),
            Some(v @ Value::Object(_)) => v.to_string(),
            _ => {
                return Err(ApiError::validation(
                    "public_key",
                    "public_key (PEM text or a JWK) is required",
                ));
            }
        };
        let key = keys::parse_public_key(alg, &text)
            .map_err(|msg| ApiError::validation("public_key", msg))?;
        (
            alg,
            URL_SAFE_NO_PAD.encode(&key.material),
            key.format,
            None,
            key.jwk_kid,
        )
    };
    let kid = match body.kid.or(jwk_kid) {
        Some(k) => validate_kid(&k)?,
        None => random_base62(16),
    };
    let mut tx = state.store.begin().await?;
    let s = load_subscription(&mut tx, caller, sub_id).await?;
    if s.status == Status::Cancelled {
        return Err(ApiError::conflict(
            "A cancelled subscription cannot get new credentials",
        ));
    }
    let cred = Credential {
        id: cred_id,
        tenant_id: s.tenant_id.clone(),
        subscription_id: s.id.clone(),
        kind: body.kind.clone(),
        kid,
        alg: alg.as_str().to_string(),
        key_material: material,
        key_format: format.to_string(),
        created_at: now_ms(),
        created_by: caller.user_id.as_deref().map(str::to_string),
        revoked_at: None,
    };
    store::insert_credential(&mut tx, &cred)
        .await
        .map_err(|e| {
            conflict_as(
                e,
                "This subscription already has a credential with that kid",
            )
        })?;
    append(
        &mut tx,
        AuditEvent::new(
            s.tenant_id.clone(),
            caller.actor(),
            Action::SubscriptionCredentialCreated,
            meta,
        )
        .target("subscription_credential", cred.id.clone())
        .details(
            json!({"subscription_id": s.id, "type": cred.kind, "kid": cred.kid,
            "alg": cred.alg, "key_format": cred.key_format}),
        ),
    )
    .await?;
    // Cached verifications of this subscription must see the new kid.
    invalidations::publish(&mut tx, Kind::Permissions, &s.id, meta).await?;
    commit(tx).await?;
    state.auth.invalidate(Kind::Permissions, &s.id);
    let mut out = cred.to_api();
    if let Some(secret) = secret {
        out["secret"] = Value::String(secret);
    }
    Ok(created(out))
}

/// Settings of a subscription-bound API key.
pub struct SubscriptionKeySpec {
    pub name: String,
    pub expires_at: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub rate_limit: Option<KeyRateLimit>,
}

/// Creates an API key bound to a subscription of the caller's tenant (its models and limits come
/// from the plan). Used by `POST /v1/subscriptions/{id}/credentials {"type": "api_key"}` and
/// `POST /v1/api-keys {"subscription_id": ...}`. Needs `subscriptions:write`, and the key never
/// holds a permission the caller lacks (see `crate::api::keys::inherited_scopes`).
pub async fn create_subscription_key(
    state: &AppState,
    caller: &Caller,
    meta: &RequestMeta,
    sub_id: &str,
    spec: SubscriptionKeySpec,
) -> ApiResult<Value> {
    caller.require(Permission::SubscriptionsWrite)?;
    let name = crate::service::keys::validate_name(&spec.name)?;
    let expires_at = match spec.expires_at.as_deref() {
        None => None,
        Some(s) => {
            let at = crate::util::parse_rfc3339(s).ok_or_else(|| {
                ApiError::validation("expires_at", "expires_at must be an RFC 3339 time")
            })?;
            if at <= now_ms() {
                return Err(ApiError::validation(
                    "expires_at",
                    "expires_at must be in the future",
                ));
            }
            Some(at)
        }
    };
    let scope_set = spec
        .scopes
        .as_deref()
        .map(crate::api::keys::validate_subscription_scopes)
        .transpose()?;
    if let Some(rl) = &spec.rate_limit
        && (rl.requests_per_minute == Some(0) || rl.tokens_per_minute == Some(0))
    {
        return Err(ApiError::validation(
            "rate_limit",
            "rate limits must be positive",
        ));
    }
    let mut unit = crate::service::Unit::begin(&state.store, meta).await?;
    let s = load_subscription(unit.conn(), caller, sub_id)
        .await
        .map_err(|e| e.with_param("subscription_id"))?;
    if s.status == Status::Cancelled {
        return Err(ApiError::conflict(
            "A cancelled subscription cannot get new credentials",
        ));
    }
    // The key never holds more than the caller: explicit scopes must be held by the caller, and
    // without scopes a narrower caller's key inherits the caller's permissions. A subscription
    // key has permissions only, so the caller's effective permissions are the whole ceiling.
    let ceiling = Authority::permissions_only(caller.permissions);
    let base = crate::auth::subscription_key_permissions();
    let sub_key = |p: PermSet| Authority::permissions_only(base.intersect(p));
    let scopes = match (spec.scopes, scope_set) {
        (Some(scopes), Some(set)) => {
            within_ceiling(
                ceiling,
                sub_key(set),
                "create a key with these scopes",
                Some("scopes"),
            )?;
            Some(scopes)
        }
        _ => crate::api::keys::inherited_scopes(ceiling, sub_key(base), sub_key)?,
    };
    let key_spec = crate::service::keys::NewKeySpec {
        tenant_id: s.tenant_id.clone(),
        user_id: None,
        subscription_id: Some(s.id.clone()),
        name,
        expires_at,
        scopes,
        rate_limit: spec.rate_limit,
        created_by: caller.user_id.as_deref().map(str::to_string),
    };
    let (rec, secret) =
        crate::service::keys::create(&mut unit, state.auth.key_prefix(), key_spec, caller.actor())
            .await?;
    unit.commit(&state.auth).await?;
    let mut out = crate::api::keys::created_json(&rec, secret);
    out["type"] = "api_key".into();
    Ok(out)
}

async fn list_credentials(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let mut c = conn(&state).await?;
    let s = load_subscription(&mut c, &caller, &id).await?;
    drop(c);
    Ok(list(credentials_api(&state, &s).await?))
}

/// Revokes one credential of a subscription: a JWT credential (`cred_…`) or a bound API key
/// (`key_…`). Requests in flight with it are cut.
pub(crate) async fn revoke_credential(
    State(state): State<AppState>,
    caller: Caller,
    Meta(meta): Meta,
    Path((id, cred_id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let mut unit = crate::service::Unit::begin(&state.store, &meta).await?;
    let s = load_subscription(unit.conn(), &caller, &id).await?;
    if let Some(key) = crate::store::keys::get(unit.conn(), &s.tenant_id, &cred_id).await?
        && key.subscription_id.as_deref() == Some(s.id.as_str())
    {
        let (rec, _) =
            crate::service::keys::revoke(&mut unit, &s.tenant_id, &cred_id, caller.actor()).await?;
        unit.commit(&state.auth).await?;
        let mut out = rec.to_api();
        out["type"] = "api_key".into();
        return Ok(axum::Json(out).into_response());
    }
    let Some(_) = store::get_credential(unit.conn(), &s.tenant_id, &s.id, &cred_id).await? else {
        return Err(ApiError::not_found("credential"));
    };
    let changed = store::revoke_credential(unit.conn(), &s.tenant_id, &cred_id, now_ms()).await?;
    if changed {
        let event = unit
            .event(
                s.tenant_id.clone(),
                caller.actor(),
                Action::SubscriptionCredentialRevoked,
            )
            .target("subscription_credential", cred_id.clone())
            .details(json!({"subscription_id": s.id}));
        unit.audit(event).await?;
        unit.invalidate(Kind::Credential, &cred_id).await?;
    }
    let cred = store::get_credential(unit.conn(), &s.tenant_id, &s.id, &cred_id)
        .await?
        .ok_or_else(|| ApiError::not_found("credential"))?;
    unit.commit(&state.auth).await?;
    Ok(axum::Json(cred.to_api()).into_response())
}
