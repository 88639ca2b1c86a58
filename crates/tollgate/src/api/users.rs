//! Users and roles of a tenant (SPEC §1, §4.2, §6). Role changes take effect on the next request
//! of every key and token of the user (the change publishes a permissions invalidation).
//! Nobody can grant permissions they do not hold (checked against the caller's *effective*
//! permissions: its roles narrowed by its scopes), only an owner grants or removes the `owner`
//! role or removes an owner (an admin holds every permission bit too, so this is a rule of its
//! own: see `Caller::authority`), and the last owner cannot be removed.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::auth::middleware::Caller;
use crate::auth::{PermSet, Permission};
use crate::error::{ApiError, ApiResult};
use crate::http::{Json, Meta};
use crate::store::audit::{AuditEvent, append};
use crate::store::invalidations::{self, Kind};
use crate::store::tenants::{self, Member, Role};
use crate::store::{Conn, StoreError, keys as keystore};
use crate::util::now_ms;
use crate::wire::{ToApi, ToApiWithRoles};
use tollgate_core::audit::Action;
use tollgate_core::permissions::{
    BUILTIN_ROLES, OWNER_ROLE, builtin_description, builtin_role, is_builtin_name,
};

fn db(e: sqlx::Error) -> ApiError {
    StoreError::from(e).into()
}

/// Resolves role names (built-in or custom) to stored role ids and their permissions.
pub async fn resolve_roles(
    conn: &mut Conn,
    tenant_id: &str,
    names: &[String],
) -> ApiResult<(Vec<String>, PermSet)> {
    let mut ids = Vec::new();
    let mut perms = PermSet::EMPTY;
    for name in names {
        if let Some(p) = builtin_role(name) {
            ids.push(name.clone());
            perms = perms.union(p);
        } else if let Some(role) = tenants::find_role_by_name(conn, tenant_id, name).await? {
            ids.push(role.id.clone());
            perms = perms.union(role.permissions);
        } else {
            return Err(ApiError::validation(
                "roles",
                format!("unknown role {name:?}"),
            ));
        }
    }
    ids.sort();
    ids.dedup();
    Ok((ids, perms))
}

/// Role ids → names for display.
async fn role_names(conn: &mut Conn, tenant_id: &str, ids: &[String]) -> ApiResult<Vec<String>> {
    let mut names = Vec::new();
    for id in ids {
        if builtin_role(id).is_some() {
            names.push(id.clone());
        } else if let Some(r) = tenants::get_role(conn, tenant_id, id).await? {
            names.push(r.name);
        }
    }
    Ok(names)
}

async fn member_to_api(conn: &mut Conn, tenant_id: &str, m: &Member) -> ApiResult<Value> {
    let names = role_names(conn, tenant_id, &m.roles).await?;
    Ok(m.to_api(&names))
}

fn holds_owner(role_ids: &[String]) -> bool {
    role_ids.iter().any(|r| r == OWNER_ROLE)
}

/// `caller.permissions` are the effective ones (the subject's current roles narrowed by the
/// credential's scopes), resolved when the request was authenticated.
fn no_escalation(caller: &Caller, granted: PermSet) -> ApiResult<()> {
    if granted.is_subset_of(caller.permissions) {
        Ok(())
    } else {
        let extra: Vec<&str> = granted
            .iter()
            .filter(|p| !caller.permissions.contains(*p))
            .map(Permission::as_str)
            .collect();
        Err(ApiError::permission_denied(format!(
            "You cannot grant permissions you do not hold: {}",
            extra.join(", ")
        )))
    }
}

/// Fails if taking the owner role from a member whose roles are `old_roles` would leave the
/// tenant without an owner.
async fn keep_an_owner(
    conn: &mut Conn,
    tenant_id: &str,
    old_roles: &[String],
    new_roles: &[String],
) -> ApiResult<()> {
    if holds_owner(old_roles) && !holds_owner(new_roles) {
        let owners = tenants::role_member_count(conn, tenant_id, "owner").await?;
        if owners <= 1 {
            return Err(ApiError::conflict(
                "The tenant's last owner cannot lose the owner role",
            ));
        }
    }
    Ok(())
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
    let email = crate::service::users::validate_email(&body.email)?;
    let roles = body.roles.unwrap_or_else(|| vec!["developer".to_string()]);
    let password_hash = match &body.password {
        Some(p) => Some(crate::passwords::hash(p).await?),
        None => None,
    };
    let mut tx = state.store.begin().await?;
    let (role_ids, perms) = resolve_roles(&mut tx, &caller.tenant_id, &roles).await?;
    if holds_owner(&role_ids) {
        caller
            .require_owner(&mut tx, "grant the owner role")
            .await?;
    }
    no_escalation(&caller, perms)?;
    let user = match tenants::find_user_by_email(&mut tx, &email).await? {
        Some(u) => u,
        None => {
            tenants::create_user(
                &mut tx,
                &email,
                body.name.as_deref().unwrap_or(""),
                password_hash,
                false,
            )
            .await?
        }
    };
    tenants::add_membership(&mut tx, &caller.tenant_id, &user.id).await?;
    tenants::set_member_roles(&mut tx, &caller.tenant_id, &user.id, &role_ids).await?;
    append(
        &mut tx,
        AuditEvent::new(
            caller.tenant_id.to_string(),
            caller.actor(),
            Action::UserAdded,
            &meta,
        )
        .target("user", user.id.clone())
        .details(json!({"email": user.email, "roles": roles})),
    )
    .await?;
    let member = tenants::get_member(&mut tx, &caller.tenant_id, &user.id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    let out = member_to_api(&mut tx, &caller.tenant_id, &member).await?;
    tx.commit().await.map_err(db)?;
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
    let mut tx = state.store.begin().await?;
    tenants::get_member(&mut tx, &caller.tenant_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    if let Some(name) = &body.name {
        if name.chars().count() > 200 {
            return Err(ApiError::validation(
                "name",
                "name must be at most 200 characters",
            ));
        }
        tenants::set_user_name(&mut tx, &id, name.trim()).await?;
    }
    if let Some(roles) = &body.roles {
        set_roles_in_tx(&mut tx, &caller, &id, roles, &meta).await?;
    }
    append(
        &mut tx,
        AuditEvent::new(
            caller.tenant_id.to_string(),
            caller.actor(),
            Action::UserUpdated,
            &meta,
        )
        .target("user", id.clone())
        .details(json!({"name": body.name, "roles": body.roles})),
    )
    .await?;
    let m = tenants::get_member(&mut tx, &caller.tenant_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    let out = member_to_api(&mut tx, &caller.tenant_id, &m).await?;
    tx.commit().await.map_err(db)?;
    if body.roles.is_some() {
        state.auth.invalidate(Kind::Permissions, &id);
    }
    Ok(axum::Json(out).into_response())
}

async fn set_roles_in_tx(
    tx: &mut Conn,
    caller: &Caller,
    user_id: &str,
    roles: &[String],
    meta: &crate::store::audit::RequestMeta,
) -> ApiResult<()> {
    let (role_ids, perms) = resolve_roles(tx, &caller.tenant_id, roles).await?;
    let old_roles = tenants::get_member(tx, &caller.tenant_id, user_id)
        .await?
        .map(|m| m.roles)
        .unwrap_or_default();
    if holds_owner(&old_roles) || holds_owner(&role_ids) {
        caller
            .require_owner(tx, "grant or remove the owner role")
            .await?;
    }
    no_escalation(caller, perms)?;
    keep_an_owner(tx, &caller.tenant_id, &old_roles, &role_ids).await?;
    tenants::set_member_roles(tx, &caller.tenant_id, user_id, &role_ids).await?;
    invalidations::publish(tx, Kind::Permissions, user_id, meta).await?;
    Ok(())
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
    let mut tx = state.store.begin().await?;
    tenants::get_member(&mut tx, &caller.tenant_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    set_roles_in_tx(&mut tx, &caller, &id, &body.roles, &meta).await?;
    append(
        &mut tx,
        AuditEvent::new(
            caller.tenant_id.to_string(),
            caller.actor(),
            Action::UserRolesChanged,
            &meta,
        )
        .target("user", id.clone())
        .details(json!({"roles": body.roles})),
    )
    .await?;
    let m = tenants::get_member(&mut tx, &caller.tenant_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    let out = member_to_api(&mut tx, &caller.tenant_id, &m).await?;
    tx.commit().await.map_err(db)?;
    state.auth.invalidate(Kind::Permissions, &id);
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
    let mut tx = state.store.begin().await?;
    let m = tenants::get_member(&mut tx, &caller.tenant_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    if holds_owner(&m.roles) {
        caller
            .require_owner(&mut tx, "remove an owner from the tenant")
            .await?;
    }
    keep_an_owner(&mut tx, &caller.tenant_id, &m.roles, &[]).await?;
    let revoked = keystore::revoke_user_keys(&mut tx, &caller.tenant_id, &id, now_ms()).await?;
    for key_id in &revoked {
        invalidations::publish(&mut tx, Kind::Credential, key_id, &meta).await?;
    }
    tenants::remove_member(&mut tx, &caller.tenant_id, &id).await?;
    invalidations::publish(&mut tx, Kind::Subject, &id, &meta).await?;
    append(
        &mut tx,
        AuditEvent::new(
            caller.tenant_id.to_string(),
            caller.actor(),
            Action::UserRemoved,
            &meta,
        )
        .target("user", id.clone())
        .details(json!({"email": m.user.email, "revoked_keys": revoked})),
    )
    .await?;
    tx.commit().await.map_err(db)?;
    for key_id in &revoked {
        state.auth.invalidate(Kind::Credential, key_id);
    }
    state.auth.invalidate(Kind::Subject, &id);
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

fn validate_role_name(name: &str) -> ApiResult<String> {
    let n = name.trim();
    if n.is_empty()
        || n.len() > 64
        || !n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
    {
        return Err(ApiError::validation(
            "name",
            "role names are 1-64 characters of letters, digits and -_.:",
        ));
    }
    // Compared ignoring ASCII case: no custom role may pass for a built-in one (above all for
    // "owner").
    if is_builtin_name(n) {
        return Err(ApiError::conflict(format!("{n:?} is a built-in role")));
    }
    Ok(n.to_string())
}

fn parse_perms(names: &[String]) -> ApiResult<PermSet> {
    PermSet::parse(names.iter().map(String::as_str))
        .map_err(|bad| ApiError::validation("permissions", format!("unknown permission {bad:?}")))
}

pub async fn create_role(
    State(state): State<AppState>,
    caller: Caller,
    Meta(meta): Meta,
    Json(body): Json<RoleBody>,
) -> ApiResult<Response> {
    let name = validate_role_name(&body.name)?;
    let perms = parse_perms(&body.permissions)?;
    no_escalation(&caller, perms)?;
    let mut tx = state.store.begin().await?;
    let role = tenants::create_role(
        &mut tx,
        &caller.tenant_id,
        &name,
        body.description.as_deref().unwrap_or(""),
        perms,
    )
    .await?;
    append(
        &mut tx,
        AuditEvent::new(
            caller.tenant_id.to_string(),
            caller.actor(),
            Action::RoleCreated,
            &meta,
        )
        .target("role", role.id.clone())
        .details(json!({"name": role.name, "permissions": role.permissions})),
    )
    .await?;
    tx.commit().await.map_err(db)?;
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
    if builtin_role(&id).is_some() {
        return Err(ApiError::conflict("Built-in roles cannot be changed"));
    }
    let mut tx = state.store.begin().await?;
    let mut role = tenants::get_role(&mut tx, &caller.tenant_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("role"))?;
    if let Some(n) = &body.name {
        role.name = validate_role_name(n)?;
    }
    if let Some(p) = &body.permissions {
        role.permissions = parse_perms(p)?;
        no_escalation(&caller, role.permissions)?;
    }
    if let Some(d) = &body.description {
        role.description = d.clone();
    }
    tenants::update_role(&mut tx, &role).await?;
    append(
        &mut tx,
        AuditEvent::new(
            caller.tenant_id.to_string(),
            caller.actor(),
            Action::RoleUpdated,
            &meta,
        )
        .target("role", role.id.clone())
        .details(json!({"name": role.name, "permissions": role.permissions})),
    )
    .await?;
    invalidations::publish(&mut tx, Kind::Permissions, &role.id, &meta).await?;
    tx.commit().await.map_err(db)?;
    state.auth.invalidate(Kind::Permissions, &role.id);
    Ok(axum::Json(role.to_api()).into_response())
}

pub async fn delete_role(
    State(state): State<AppState>,
    caller: Caller,
    Meta(meta): Meta,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    if builtin_role(&id).is_some() {
        return Err(ApiError::conflict("Built-in roles cannot be deleted"));
    }
    let mut tx = state.store.begin().await?;
    let role = tenants::get_role(&mut tx, &caller.tenant_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("role"))?;
    let holders = tenants::role_member_count(&mut tx, &caller.tenant_id, &id).await?;
    if holders > 0 {
        return Err(ApiError::conflict(format!(
            "The role is held by {holders} user(s); reassign them first"
        )));
    }
    tenants::delete_role(&mut tx, &caller.tenant_id, &id).await?;
    append(
        &mut tx,
        AuditEvent::new(
            caller.tenant_id.to_string(),
            caller.actor(),
            Action::RoleDeleted,
            &meta,
        )
        .target("role", id.clone())
        .details(json!({"name": role.name})),
    )
    .await?;
    tx.commit().await.map_err(db)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
