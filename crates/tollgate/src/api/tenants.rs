//! Tenants (platform owner only) and `GET /v1/me`.
//!
//! `/v1/tenants` needs the platform power: a credential of the platform-owner user whose
//! effective permissions include `tenant:admin` (the route's guard checks the permission, the
//! handler the user). A scoped key or a narrowed token of the platform owner without
//! `tenant:admin` is refused like anyone else.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::auth::Permission;
use crate::auth::middleware::Caller;
use crate::error::{ApiError, ApiResult};
use crate::http::{Json, Meta};
use crate::service::Unit;
use crate::store::tenants;
use crate::wire::ToApi;
use tollgate_core::audit::Action;

fn platform_only(caller: &Caller) -> ApiResult<()> {
    // The guard already required tenant:admin; checked again so the rule holds wherever the
    // handler is mounted.
    caller.require(Permission::TenantAdmin)?;
    if caller.platform_admin && caller.user_id.is_some() {
        Ok(())
    } else {
        Err(ApiError::permission_denied(
            "Only the platform owner manages tenants",
        ))
    }
}

pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Response> {
    platform_only(&caller)?;
    let data: Vec<Value> = tenants::list_tenants(state.store.pool())
        .await?
        .iter()
        .map(tenants::Tenant::to_api)
        .collect();
    Ok(axum::Json(json!({"object": "list", "data": data})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenantBody {
    pub name: String,
    /// Makes this user (created if new) the tenant's owner and returns an owner API key once.
    #[serde(default)]
    pub owner_email: Option<String>,
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Meta(meta): Meta,
    Json(body): Json<CreateTenantBody>,
) -> ApiResult<Response> {
    platform_only(&caller)?;
    let name = crate::service::tenants::validate_tenant_name(&body.name)?;
    let owner_email = body
        .owner_email
        .as_deref()
        .map(crate::service::users::validate_email)
        .transpose()?;
    let mut unit = Unit::begin(&state.store, &meta).await?;
    let tenant = tenants::create_tenant(unit.conn(), &name).await?;
    let event = unit
        .event(tenant.id.clone(), caller.actor(), Action::TenantCreated)
        .target("tenant", tenant.id.clone())
        .details(json!({"name": tenant.name, "created_from_tenant": &*caller.tenant_id}));
    unit.audit(event).await?;
    let mut out = tenant.to_api();
    if let Some(email) = owner_email {
        let (user_id, key) = crate::service::tenants::add_owner(
            &mut unit,
            state.auth.key_prefix(),
            &tenant.id,
            &email,
            None,
            caller.actor(),
        )
        .await?;
        out["owner"] = json!({"user_id": user_id, "api_key": key});
    }
    // The owner's memberships changed: applied here too, as the invalidation it published says.
    unit.commit(&state.auth).await?;
    Ok((StatusCode::CREATED, axum::Json(out)).into_response())
}

/// `GET /v1/me`: who the caller is and what it may do right now.
pub async fn me(caller: Caller) -> Response {
    axum::Json(json!({
        "tenant_id": &*caller.tenant_id,
        "user_id": caller.user_id.as_deref(),
        "subscription_id": caller.subscription_id.as_deref(),
        "credential": {"type": caller.credential_type.as_str(), "id": caller.credential_id.as_deref()},
        "permissions": caller.permissions,
        "platform_admin": caller.platform_admin,
    }))
    .into_response()
}
