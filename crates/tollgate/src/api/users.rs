//! `/v1/users` and `/v1/roles` (SPEC §4.2): the JSON front end of `service::users`, which holds
//! the rules (no escalation, the owner rules, the last owner kept).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::auth::middleware::Caller;
use crate::error::{ApiError, ApiResult};
use crate::http::{Json, Meta};
use crate::service::Unit;
use crate::service::users::{self as service, role_names};
use crate::store::tenants::{self, Member, Role};
use crate::store::{Conn, StoreError};
use crate::wire::{ToApi, ToApiWithRoles};
use tollgate_core::permissions::{BUILTIN_ROLES, builtin_description, builtin_role};

fn db(e: sqlx::Error) -> ApiError {
    StoreError::from(e).into()
}

async fn member_to_api(conn: &mut Conn, tenant_id: &str, m: &Member) -> ApiResult<Value> {
    let names = role_names(conn, tenant_id, &m.roles).await?;
    Ok(m.to_api(&names))
}

// ---- users -----------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUserBody {
    pub email: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub roles: Option<Vec<String>>,
    #[serde(default)]
    pub password: Option<String>,
}

pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Response> {
    let members = tenants::list_members(state.store.pool(), &caller.tenant_id).await?;
    let mut conn = state.store.pool().acquire().await.map_err(db)?;
    let mut data = Vec::new();
    for m in &members {
        data.push(member_to_api(&mut conn, &caller.tenant_id, m).await?);
    }
    Ok(axum::Json(json!({"object": "list", "data": data})).into_response())
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Meta(meta): Meta,
    Json(body): Json<CreateUserBody>,
) -> ApiResult<Response> {
    // A bad address is refused before the (slow) password hash.
    service::validate_email(&body.email)?;
    let password_hash = match &body.password {
        Some(p) => Some(crate::passwords::hash(p).await?),
        None => None,
    };
    let input = service::NewMember {
        email: body.email,
        name: body.name,
        roles: body.roles,
        password_hash,
    };
    let mut unit = Unit::begin(&state.store, &meta).await?;
    let member = service::add_member(&mut unit, &caller, input).await?;
    let out = member_to_api(unit.conn(), &caller.tenant_id, &member).await?;
    unit.commit(&state.auth).await?;
    Ok((StatusCode::CREATED, axum::Json(out)).into_response())
}

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let mut conn = state.store.pool().acquire().await.map_err(db)?;
    let m = tenants::get_member(&mut conn, &caller.tenant_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    Ok(axum::Json(member_to_api(&mut conn, &caller.tenant_id, &m).await?).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchUserBody {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub roles: Option<Vec<String>>,
}

pub async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    Meta(meta): Meta,
    Path(id): Path<String>,
    Json(body): Json<PatchUserBody>,
) -> ApiResult<Response> {
    let mut unit = Unit::begin(&state.store, &meta).await?;
    let m = service::update_member(&mut unit, &caller, &id, body.name, body.roles).await?;
    let out = member_to_api(unit.conn(), &caller.tenant_id, &m).await?;
    unit.commit(&state.auth).await?;
    Ok(axum::Json(out).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolesBody {
    pub roles: Vec<String>,
}

pub async fn put_roles(
    State(state): State<AppState>,
    caller: Caller,
    Meta(meta): Meta,
    Path(id): Path<String>,
    Json(body): Json<RolesBody>,
) -> ApiResult<Response> {
    let mut unit = Unit::begin(&state.store, &meta).await?;
    let m = service::replace_roles(&mut unit, &caller, &id, body.roles).await?;
    let out = member_to_api(unit.conn(), &caller.tenant_id, &m).await?;
    unit.commit(&state.auth).await?;
    Ok(axum::Json(out).into_response())
}

/// Removes a user from the tenant: the membership and roles go, the user's keys in this tenant
/// are revoked (cutting their in-flight requests).
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Meta(meta): Meta,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let mut unit = Unit::begin(&state.store, &meta).await?;
    service::remove_member(&mut unit, &caller, &id).await?;
    unit.commit(&state.auth).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- roles -----------------------------------------------------------------------------------

fn builtin_json(name: &str) -> Value {
    json!({"id": name, "object": "role", "name": name, "description": builtin_description(name),
        "permissions": builtin_role(name).unwrap_or_default(), "builtin": true})
}

pub async fn list_roles(State(state): State<AppState>, caller: Caller) -> ApiResult<Response> {
    let mut data: Vec<Value> = BUILTIN_ROLES.iter().map(|n| builtin_json(n)).collect();
    data.extend(
        tenants::list_roles(state.store.pool(), &caller.tenant_id)
            .await?
            .iter()
            .map(Role::to_api),
    );
    Ok(axum::Json(json!({"object": "list", "data": data})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleBody {
    pub name: String,
    pub permissions: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
}

pub async fn create_role(
    State(state): State<AppState>,
    caller: Caller,
    Meta(meta): Meta,
    Json(body): Json<RoleBody>,
) -> ApiResult<Response> {
    let mut unit = Unit::begin(&state.store, &meta).await?;
    let role = service::create_role(
        &mut unit,
        &caller,
        &body.name,
        &body.permissions,
        body.description.as_deref(),
    )
    .await?;
    unit.commit(&state.auth).await?;
    Ok((StatusCode::CREATED, axum::Json(role.to_api())).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchRoleBody {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub permissions: Option<Vec<String>>,
    #[serde(default)]
    pub description: Option<String>,
}

pub async fn patch_role(
    State(state): State<AppState>,
    caller: Caller,
    Meta(meta): Meta,
    Path(id): Path<String>,
    Json(body): Json<PatchRoleBody>,
) -> ApiResult<Response> {
    let mut unit = Unit::begin(&state.store, &meta).await?;
    let role = service::update_role(
        &mut unit,
        &caller,
        &id,
        body.name.as_deref(),
        body.permissions.as_deref(),
        body.description.as_deref(),
    )
    .await?;
    unit.commit(&state.auth).await?;
    Ok(axum::Json(role.to_api()).into_response())
}

pub async fn delete_role(
    State(state): State<AppState>,
    caller: Caller,
    Meta(meta): Meta,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let mut unit = Unit::begin(&state.store, &meta).await?;
    service::delete_role(&mut unit, &caller, &id).await?;
    unit.commit(&state.auth).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
