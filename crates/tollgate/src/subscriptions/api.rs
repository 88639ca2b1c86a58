//! Management routes for products, plans, subscriptions and their credentials (SPEC §4.2).
//! Everything is tenant-scoped: another tenant's object is `404`. Every mutation writes its audit
//! event in the same transaction; changes that take access away also write an invalidation (so
//! every instance cuts in-flight requests) and apply it locally after the commit.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::auth::middleware::{Caller, within_ceiling};
use crate::error::{ApiError, ApiResult};
use crate::http::{Json, Meta};
use crate::service::Unit;
use crate::service::subscriptions::{self as service, SubscriptionKeySpec};
use crate::store::StoreError;
use crate::store::audit::RequestMeta;
use crate::store::subscriptions::{
    self as store, Credential, Plan, PlanLimits, Product, Subscription,
};
use crate::wire::ToApi;
use tollgate_core::permissions::{Authority, CONSUMER_ROLE};

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

/// What of the catalogue a member may read: everything, or — for a developer-portal consumer (a
/// member whose only role is `consumer`) — the published products and their plans only, as in
/// the portal. `Some(ids)`: only these products.
async fn visible_products(
    state: &AppState,
    caller: &Caller,
) -> ApiResult<Option<std::collections::HashSet<String>>> {
    let Some(user) = &caller.user_id else {
        return Ok(None);
    };
    let mut c = conn(state).await?;
    let Some(member) = crate::store::tenants::get_member(&mut c, &caller.tenant_id, user).await?
    else {
        return Ok(None);
    };
    drop(c);
    let consumer_only = !member.roles.is_empty() && member.roles.iter().all(|r| r == CONSUMER_ROLE);
    if !consumer_only {
        return Ok(None);
    }
    let ids =
        crate::store::console::published_product_ids(state.store.pool(), &caller.tenant_id).await?;
    Ok(Some(ids))
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

pub async fn create_product(
    State(state): State<AppState>,
    caller: Caller,
    Meta(meta): Meta,
    Json(body): Json<CreateProduct>,
) -> ApiResult<Response> {
    let input = service::NewProduct {
        name: body.name,
        description: body.description,
        models: body.models,
    };
    let mut unit = Unit::begin(&state.store, &meta).await?;
    let product = service::create_product(&mut unit, &caller, input, |m| {
        state.proxy.route(m).is_some()
    })
    .await?;
    unit.commit(&state.auth).await?;
    Ok(created(product.to_api()))
}

pub async fn list_products(State(state): State<AppState>, caller: Caller) -> ApiResult<Response> {
    require_member(&caller)?;
    let visible = visible_products(&state, &caller).await?;
    let data = store::list_products(state.store.pool(), &caller.tenant_id)
        .await?
        .iter()
        .filter(|p| visible.as_ref().is_none_or(|v| v.contains(&p.id)))
        .map(Product::to_api)
        .collect();
    Ok(list(data))
}

pub async fn get_product(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    require_member(&caller)?;
    let visible = visible_products(&state, &caller).await?;
    let mut c = conn(&state).await?;
    let p = store::get_product(&mut c, &caller.tenant_id, &id)
        .await?
        .filter(|p| visible.as_ref().is_none_or(|v| v.contains(&p.id)))
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

pub async fn create_plan(
    State(state): State<AppState>,
    caller: Caller,
    Meta(meta): Meta,
    Json(body): Json<CreatePlan>,
) -> ApiResult<Response> {
    let input = service::NewPlan {
        product_id: body.product_id,
        name: body.name,
        limits: body.limits,
    };
    let mut unit = Unit::begin(&state.store, &meta).await?;
    let plan = service::create_plan(&mut unit, &caller, input).await?;
    unit.commit(&state.auth).await?;
    Ok(created(plan.to_api()))
}

#[derive(Debug, Deserialize)]
pub struct PlanQuery {
    #[serde(default)]
    pub product_id: Option<String>,
}

pub async fn list_plans(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<PlanQuery>,
) -> ApiResult<Response> {
    require_member(&caller)?;
    let visible = visible_products(&state, &caller).await?;
    let data = store::list_plans(
        state.store.pool(),
        &caller.tenant_id,
        q.product_id.as_deref(),
    )
    .await?
    .iter()
    .filter(|p| visible.as_ref().is_none_or(|v| v.contains(&p.product_id)))
    .map(Plan::to_api)
    .collect();
    Ok(list(data))
}

pub async fn get_plan(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    require_member(&caller)?;
    let visible = visible_products(&state, &caller).await?;
    let mut c = conn(&state).await?;
    let p = store::get_plan(&mut c, &caller.tenant_id, &id)
        .await?
        .filter(|p| visible.as_ref().is_none_or(|v| v.contains(&p.product_id)))
        .ok_or_else(|| ApiError::not_found("plan"))?;
    Ok(axum::Json(p.to_api()).into_response())
}

// ---------------------------------------------------------------------------------------------
// Subscriptions

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

async fn subscription_api(state: &AppState, s: &Subscription) -> ApiResult<Value> {
    let mut out = s.to_api();
    let mut c = conn(state).await?;
    if let Some(plan) = store::get_plan(&mut c, &s.tenant_id, &s.plan_id).await? {
        out["product_id"] = Value::String(plan.product_id);
    }
    Ok(out)
}

pub async fn create_subscription(
    State(state): State<AppState>,
    caller: Caller,
    Meta(meta): Meta,
    Json(body): Json<CreateSubscription>,
) -> ApiResult<Response> {
    let input = service::NewSubscription {
        plan_id: body.plan_id,
        user_id: body.user_id,
        max_token_lifetime_seconds: body.max_token_lifetime_seconds,
        single_use_tokens: body.single_use_tokens,
        allowed_origins: body.allowed_origins,
    };
    let mut unit = Unit::begin(&state.store, &meta).await?;
    let (sub, plan) = service::create_subscription(&mut unit, &caller, input).await?;
    unit.commit(&state.auth).await?;
    let mut out = sub.to_api();
    out["product_id"] = Value::String(plan.product_id);
    Ok(created(out))
}

#[derive(Debug, Deserialize)]
pub struct SubscriptionQuery {
    #[serde(default)]
    pub plan_id: Option<String>,
}

pub async fn list_subscriptions(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<SubscriptionQuery>,
) -> ApiResult<Response> {
    let subs =
        store::list_subscriptions(state.store.pool(), &caller.tenant_id, q.plan_id.as_deref())
            .await?;
    Ok(list(subs.iter().map(Subscription::to_api).collect()))
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

pub async fn get_subscription(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let mut c = conn(&state).await?;
    let s = service::load(&mut c, &caller, &id).await?;
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

pub async fn patch_subscription(
    State(state): State<AppState>,
    caller: Caller,
    Meta(meta): Meta,
    Path(id): Path<String>,
    Json(body): Json<PatchSubscription>,
) -> ApiResult<Response> {
    let changes = service::SubscriptionChanges {
        status: body.status,
        max_token_lifetime_seconds: body.max_token_lifetime_seconds,
        single_use_tokens: body.single_use_tokens,
        allowed_origins: body.allowed_origins,
    };
    let mut unit = Unit::begin(&state.store, &meta).await?;
    let s = service::update_subscription(&mut unit, &caller, &id, changes).await?;
    unit.commit(&state.auth).await?;
    Ok(axum::Json(subscription_api(&state, &s).await?).into_response())
}

/// `DELETE /v1/subscriptions/{id}`: cancels (idempotent). Its keys and credentials stop working
/// at once on every instance, in-flight requests included, and its queued operations are
/// cancelled.
pub async fn cancel_subscription(
    State(state): State<AppState>,
    caller: Caller,
    Meta(meta): Meta,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let mut unit = Unit::begin(&state.store, &meta).await?;
    let s = service::cancel_subscription(&mut unit, &caller, &id).await?;
    unit.commit(&state.auth).await?;
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

pub async fn create_credential(
    State(state): State<AppState>,
    caller: Caller,
    Meta(meta): Meta,
    Path(id): Path<String>,
    Json(body): Json<CreateCredential>,
) -> ApiResult<Response> {
    let signing = match body.kind.as_str() {
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
            return Ok(created(out));
        }
        "jwt_hs256" => {
            if body.alg.as_deref().is_some_and(|a| a != "HS256") || body.public_key.is_some() {
                // Checked after the caller's ceiling, as the operation itself checks it first.
                within_ceiling(
                    Authority::permissions_only(caller.permissions),
                    Authority::permissions_only(crate::auth::subscription_key_permissions()),
                    "create a signing credential for app JWTs",
                    Some("type"),
                )?;
                return Err(ApiError::validation(
                    "type",
                    "jwt_hs256 credentials are generated by Tollgate: send only type (and kid)",
                ));
            }
            service::NewSigningKey::Hs256 { kid: body.kid }
        }
        "jwt_public_key" => service::NewSigningKey::Public {
            alg: body.alg,
            public_key: match body.public_key {
                Some(Value::String(s)) => Some(s),
                Some(v @ Value::Object(_)) => Some(v.to_string()),
                _ => None,
            },
            kid: body.kid,
        },
        other => {
            return Err(ApiError::validation(
                "type",
                format!(
                    "unknown credential type {other:?}; use api_key, jwt_hs256 or jwt_public_key"
                ),
            ));
        }
    };
    let secrets = state.auth.subscriptions.secrets()?;
    let mut unit = Unit::begin(&state.store, &meta).await?;
    let (cred, secret) =
        service::create_signing_credential(&mut unit, secrets, &caller, &id, signing).await?;
    unit.commit(&state.auth).await?;
    let mut out = cred.to_api();
    if let Some(secret) = secret {
        out["secret"] = Value::String(secret);
    }
    Ok(created(out))
}

/// Creates an API key bound to a subscription of the caller's tenant and answers its JSON (the
/// plaintext included, once). Used by `POST /v1/subscriptions/{id}/credentials {"type":
/// "api_key"}` and `POST /v1/api-keys {"subscription_id": ...}`.
pub async fn create_subscription_key(
    state: &AppState,
    caller: &Caller,
    meta: &RequestMeta,
    sub_id: &str,
    spec: SubscriptionKeySpec,
) -> ApiResult<Value> {
    let mut unit = Unit::begin(&state.store, meta).await?;
    let (rec, secret) =
        service::create_subscription_key(&mut unit, state.auth.key_prefix(), caller, sub_id, spec)
            .await?;
    unit.commit(&state.auth).await?;
    let mut out = crate::api::keys::created_json(&rec, secret);
    out["type"] = "api_key".into();
    Ok(out)
}

pub async fn list_credentials(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let mut c = conn(&state).await?;
    let s = service::load(&mut c, &caller, &id).await?;
    drop(c);
    Ok(list(credentials_api(&state, &s).await?))
}

/// Revokes one credential of a subscription: a JWT credential (`cred_…`) or a bound API key
/// (`key_…`). Requests in flight with it are cut.
pub async fn revoke_credential(
    State(state): State<AppState>,
    caller: Caller,
    Meta(meta): Meta,
    Path((id, cred_id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let mut unit = Unit::begin(&state.store, &meta).await?;
    let revoked = service::revoke_credential(&mut unit, &caller, &id, &cred_id).await?;
    unit.commit(&state.auth).await?;
    let out = match revoked {
        service::RevokedCredential::Key(rec) => {
            let mut out = rec.to_api();
            out["type"] = "api_key".into();
            out
        }
        service::RevokedCredential::Signing(cred) => cred.to_api(),
    };
    Ok(axum::Json(out).into_response())
}
