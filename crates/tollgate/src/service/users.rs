//! Users and roles of a tenant (SPEC §1, §4.2, §6). Role changes take effect on the next request
//! of every key and token of the user (the change publishes a permissions invalidation).
//! Nobody can grant permissions they do not hold (checked against the caller's *effective*
//! permissions: its roles narrowed by its scopes), only an owner grants or removes the `owner`
//! role or removes an owner (an admin holds every permission bit too, so this is a rule of its
//! own: see `Caller::authority`), and the last owner cannot be removed.

use serde_json::json;
use tollgate_core::audit::Action;
use tollgate_core::permissions::{OWNER_ROLE, builtin_role, is_builtin_name};

use super::Unit;
use crate::auth::middleware::Caller;
use crate::auth::{PermSet, Permission};
use crate::error::{ApiError, ApiResult};
use crate::store::invalidations::Kind;
use crate::store::tenants::{self, Member, Role};
use crate::store::{Conn, keys as keystore};
use crate::util::now_ms;

pub fn validate_email(email: &str) -> ApiResult<String> {
    let e = tenants::normalize_email(email);
    let ok = e.len() <= 254
        && e.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.')
        })
        && !e.contains(char::is_whitespace);
    if ok {
        Ok(e)
    } else {
        Err(ApiError::validation(
            "email",
            "email is not a valid address",
        ))
    }
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
pub async fn role_names(
    conn: &mut Conn,
    tenant_id: &str,
    ids: &[String],
) -> ApiResult<Vec<String>> {
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

fn holds_owner(role_ids: &[String]) -> bool {
    role_ids.iter().any(|r| r == OWNER_ROLE)
}

/// `caller.permissions` are the effective ones (the subject's current roles narrowed by the
/// credential's scopes), resolved when the request was authenticated.
pub fn no_escalation(caller: &Caller, granted: PermSet) -> ApiResult<()> {
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

async fn member(conn: &mut Conn, tenant_id: &str, user_id: &str) -> ApiResult<Member> {
    tenants::get_member(conn, tenant_id, user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))
}

// ---- members ---------------------------------------------------------------------------------

/// A member to add, as a front end received it (the password already hashed: hashing is slow
/// and runs before the unit begins).
pub struct NewMember {
    pub email: String,
    pub name: Option<String>,
    /// Role names; default `developer`.
    pub roles: Option<Vec<String>>,
    pub password_hash: Option<String>,
}

/// Adds a user (found by email, or created) to the caller's tenant with roles the caller may
/// grant. Returns the member.
pub async fn add_member(
    unit: &mut Unit<'_>,
    caller: &Caller,
    input: NewMember,
) -> ApiResult<Member> {
    let email = validate_email(&input.email)?;
    let roles = input.roles.unwrap_or_else(|| vec!["developer".to_string()]);
    let (role_ids, perms) = resolve_roles(unit.conn(), &caller.tenant_id, &roles).await?;
    if holds_owner(&role_ids) {
        caller
            .require_owner(unit.conn(), "grant the owner role")
            .await?;
    }
    no_escalation(caller, perms)?;
    let user = match tenants::find_user_by_email(unit.conn(), &email).await? {
        Some(u) => u,
        None => {
            tenants::create_user(
                unit.conn(),
                &email,
                input.name.as_deref().unwrap_or(""),
                input.password_hash,
                false,
            )
            .await?
        }
    };
    tenants::add_membership(unit.conn(), &caller.tenant_id, &user.id).await?;
    tenants::set_member_roles(unit.conn(), &caller.tenant_id, &user.id, &role_ids).await?;
    let event = unit
        .event(
            caller.tenant_id.to_string(),
            caller.actor(),
            Action::UserAdded,
        )
        .target("user", user.id.clone())
        .details(json!({"email": user.email, "roles": roles}));
    unit.audit(event).await?;
    member(unit.conn(), &caller.tenant_id, &user.id).await
}

/// Sets a member's roles (owner rules, no escalation, the last owner kept) and publishes the
/// permissions change. No audit event: the caller's operation writes it.
async fn set_roles(
    unit: &mut Unit<'_>,
    caller: &Caller,
    user_id: &str,
    roles: &[String],
) -> ApiResult<()> {
    let (role_ids, perms) = resolve_roles(unit.conn(), &caller.tenant_id, roles).await?;
    let old_roles = tenants::get_member(unit.conn(), &caller.tenant_id, user_id)
        .await?
        .map(|m| m.roles)
        .unwrap_or_default();
    if holds_owner(&old_roles) || holds_owner(&role_ids) {
        caller
            .require_owner(unit.conn(), "grant or remove the owner role")
            .await?;
    }
    no_escalation(caller, perms)?;
    keep_an_owner(unit.conn(), &caller.tenant_id, &old_roles, &role_ids).await?;
    tenants::set_member_roles(unit.conn(), &caller.tenant_id, user_id, &role_ids).await?;
    unit.invalidate(Kind::Permissions, user_id).await
}

/// Changes a member's name and/or roles. Returns the member as it is now.
pub async fn update_member(
    unit: &mut Unit<'_>,
    caller: &Caller,
    user_id: &str,
    name: Option<String>,
    roles: Option<Vec<String>>,
) -> ApiResult<Member> {
    member(unit.conn(), &caller.tenant_id, user_id).await?;
    if let Some(name) = &name {
        if name.chars().count() > 200 {
            return Err(ApiError::validation(
                "name",
                "name must be at most 200 characters",
            ));
        }
        tenants::set_user_name(unit.conn(), user_id, name.trim()).await?;
    }
    if let Some(roles) = &roles {
        set_roles(unit, caller, user_id, roles).await?;
    }
    let event = unit
        .event(
            caller.tenant_id.to_string(),
            caller.actor(),
            Action::UserUpdated,
        )
        .target("user", user_id.to_string())
        .details(json!({"name": name, "roles": roles}));
    unit.audit(event).await?;
    member(unit.conn(), &caller.tenant_id, user_id).await
}

/// Replaces a member's roles. Returns the member as it is now.
pub async fn replace_roles(
    unit: &mut Unit<'_>,
    caller: &Caller,
    user_id: &str,
    roles: Vec<String>,
) -> ApiResult<Member> {
    member(unit.conn(), &caller.tenant_id, user_id).await?;
    set_roles(unit, caller, user_id, &roles).await?;
    let event = unit
        .event(
            caller.tenant_id.to_string(),
            caller.actor(),
            Action::UserRolesChanged,
        )
        .target("user", user_id.to_string())
        .details(json!({"roles": roles}));
    unit.audit(event).await?;
    member(unit.conn(), &caller.tenant_id, user_id).await
}

/// Removes a user from the tenant: the membership and roles go, the user's keys in this tenant
/// are revoked (cutting their in-flight requests).
pub async fn remove_member(unit: &mut Unit<'_>, caller: &Caller, user_id: &str) -> ApiResult<()> {
    let m = member(unit.conn(), &caller.tenant_id, user_id).await?;
    if holds_owner(&m.roles) {
        caller
            .require_owner(unit.conn(), "remove an owner from the tenant")
            .await?;
    }
    keep_an_owner(unit.conn(), &caller.tenant_id, &m.roles, &[]).await?;
    let revoked =
        keystore::revoke_user_keys(unit.conn(), &caller.tenant_id, user_id, now_ms()).await?;
    for key_id in &revoked {
        unit.invalidate(Kind::Credential, key_id).await?;
    }
    tenants::remove_member(unit.conn(), &caller.tenant_id, user_id).await?;
    unit.invalidate(Kind::Subject, user_id).await?;
    let event = unit
        .event(
            caller.tenant_id.to_string(),
            caller.actor(),
            Action::UserRemoved,
        )
        .target("user", user_id.to_string())
        .details(json!({"email": m.user.email, "revoked_keys": revoked}));
    unit.audit(event).await
}

// ---- custom roles ----------------------------------------------------------------------------

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

/// Creates a custom role with permissions the caller holds.
pub async fn create_role(
    unit: &mut Unit<'_>,
    caller: &Caller,
    name: &str,
    permissions: &[String],
    description: Option<&str>,
) -> ApiResult<Role> {
    let name = validate_role_name(name)?;
    let perms = parse_perms(permissions)?;
    no_escalation(caller, perms)?;
    let role = tenants::create_role(
        unit.conn(),
        &caller.tenant_id,
        &name,
        description.unwrap_or(""),
        perms,
    )
    .await?;
    let event = unit
        .event(
            caller.tenant_id.to_string(),
            caller.actor(),
            Action::RoleCreated,
        )
        .target("role", role.id.clone())
        .details(json!({"name": role.name, "permissions": role.permissions}));
    unit.audit(event).await?;
    Ok(role)
}

/// Changes a custom role; its holders' permissions are re-resolved everywhere.
pub async fn update_role(
    unit: &mut Unit<'_>,
    caller: &Caller,
    id: &str,
    name: Option<&str>,
    permissions: Option<&[String]>,
    description: Option<&str>,
) -> ApiResult<Role> {
    if builtin_role(id).is_some() {
        return Err(ApiError::conflict("Built-in roles cannot be changed"));
    }
    let mut role = tenants::get_role(unit.conn(), &caller.tenant_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("role"))?;
    if let Some(n) = name {
        role.name = validate_role_name(n)?;
    }
    if let Some(p) = permissions {
        role.permissions = parse_perms(p)?;
        no_escalation(caller, role.permissions)?;
    }
    if let Some(d) = description {
        role.description = d.to_string();
    }
    tenants::update_role(unit.conn(), &role).await?;
    let event = unit
        .event(
            caller.tenant_id.to_string(),
            caller.actor(),
            Action::RoleUpdated,
        )
        .target("role", role.id.clone())
        .details(json!({"name": role.name, "permissions": role.permissions}));
    unit.audit(event).await?;
    unit.invalidate(Kind::Permissions, &role.id).await?;
    Ok(role)
}

/// Deletes a custom role nobody holds.
pub async fn delete_role(unit: &mut Unit<'_>, caller: &Caller, id: &str) -> ApiResult<()> {
    if builtin_role(id).is_some() {
        return Err(ApiError::conflict("Built-in roles cannot be deleted"));
    }
    let role = tenants::get_role(unit.conn(), &caller.tenant_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("role"))?;
    let holders = tenants::role_member_count(unit.conn(), &caller.tenant_id, id).await?;
    if holders > 0 {
        return Err(ApiError::conflict(format!(
            "The role is held by {holders} user(s); reassign them first"
        )));
    }
    tenants::delete_role(unit.conn(), &caller.tenant_id, id).await?;
    let event = unit
        .event(
            caller.tenant_id.to_string(),
            caller.actor(),
            Action::RoleDeleted,
        )
        .target("role", id.to_string())
        .details(json!({"name": role.name}));
    unit.audit(event).await
}
