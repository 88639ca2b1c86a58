//! People and roles in the console: the tenant's members and their roles (`users:read`), adding a
//! member, changing roles and removing a member (`users:write`), custom roles (`roles:write`),
//! through the operations of `/v1/users` and `/v1/roles`. The rules are the service's (nobody
//! grants what they do not hold; only an owner grants, removes or takes the `owner` role; the
//! last owner stays); the pages explain them before a form would be refused.

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery};
use axum::http::StatusCode;
use axum::response::Response;
use tollgate_core::permissions::{BUILTIN_ROLES, OWNER_ROLE, builtin_description, builtin_role};

use super::{Section, date, error_for, gate, is_form_error, posted, query_map, sections};
use crate::auth::{PermSet, Permission};
use crate::console::{Ctx, Session};
use crate::error::{ApiError, ApiResult};
use crate::service::Unit;
use crate::service::users::{self as usersvc, role_names};
use crate::store::tenants::{self, Member, Role};

// ---- shared ----------------------------------------------------------------------------------

/// A role a form may offer: `grantable` when the caller may give it (it holds all of the role's
/// permissions, and for `owner` is an owner).
pub struct RoleBox {
    pub name: String,
    pub description: String,
    pub checked: bool,
    pub grantable: bool,
}

pub(super) struct Powers {
    perms: PermSet,
    owner: bool,
}

pub(super) async fn powers(ctx: &Ctx, s: &Session) -> ApiResult<Powers> {
    let mut conn = conn(ctx).await?;
    let owner = s.caller().authority(&mut conn).await?.owner;
    Ok(Powers {
        perms: s.principal.permissions,
        owner,
    })
}

pub(super) async fn conn(ctx: &Ctx) -> ApiResult<sqlx::pool::PoolConnection<sqlx::Any>> {
    Ok(ctx
        .state
        .store
        .pool()
        .acquire()
        .await
        .map_err(crate::store::StoreError::from)?)
}

/// Every role of the tenant (built-in, then custom) as (name, description, permissions).
pub(super) async fn all_roles(
    ctx: &Ctx,
    tenant_id: &str,
) -> ApiResult<Vec<(String, String, PermSet)>> {
    let mut out: Vec<(String, String, PermSet)> = BUILTIN_ROLES
        .iter()
        .map(|n| {
            (
                (*n).to_string(),
                builtin_description(n).to_string(),
                builtin_role(n).unwrap_or_default(),
            )
        })
        .collect();
    for r in tenants::list_roles(ctx.state.store.pool(), tenant_id).await? {
        out.push((r.name, r.description, r.permissions));
    }
    Ok(out)
}

pub(super) fn role_boxes(
    roles: &[(String, String, PermSet)],
    powers: &Powers,
    checked: &[String],
) -> Vec<RoleBox> {
    roles
        .iter()
        .map(|(name, description, perms)| RoleBox {
            grantable: perms.is_subset_of(powers.perms) && (name != OWNER_ROLE || powers.owner),
            checked: checked.iter().any(|c| c == name),
            name: name.clone(),
            description: description.clone(),
        })
        .collect()
}

async fn owner_count(ctx: &Ctx, tenant_id: &str) -> ApiResult<i64> {
    let mut c = conn(ctx).await?;
    Ok(tenants::role_member_count(&mut c, tenant_id, OWNER_ROLE).await?)
}

// ---- members ---------------------------------------------------------------------------------

pub struct MemberRow {
    pub id: String,
    pub email: String,
    pub name: String,
    pub roles: String,
    pub joined: String,
    pub you: bool,
}

#[derive(Default)]
pub struct AddForm {
    pub email: String,
    pub name: String,
    pub error: Option<String>,
    pub email_error: Option<String>,
    pub roles_error: Option<String>,
}

#[derive(Template)]
#[template(path = "admin/people.html")]
struct PeoplePage {
    l: crate::console::Layout,
    nav: Vec<Section>,
    rows: Vec<MemberRow>,
    can_write: bool,
    roles: Vec<RoleBox>,
    form: AddForm,
}

async fn people_page(
    ctx: &Ctx,
    s: &Session,
    form: AddForm,
    checked: &[String],
) -> ApiResult<PeoplePage> {
    let members = tenants::list_members(ctx.state.store.pool(), &s.tenant_id).await?;
    let mut c = conn(ctx).await?;
    let mut rows = Vec::new();
    for m in members {
        let names = role_names(&mut c, &s.tenant_id, &m.roles).await?;
        rows.push(MemberRow {
            you: m.user.id == s.user_id,
            id: m.user.id,
            email: m.user.email,
            name: m.user.name,
            roles: names.join(", "),
            joined: date(m.joined_at),
        });
    }
    drop(c);
    let can_write = s.principal.has(Permission::UsersWrite);
    let roles = if can_write {
        let p = powers(ctx, s).await?;
        role_boxes(&all_roles(ctx, &s.tenant_id).await?, &p, checked)
    } else {
        Vec::new()
    };
    Ok(PeoplePage {
        l: ctx.layout("People"),
        nav: sections(s, "/console/admin/people"),
        rows,
        can_write,
        roles,
        form,
    })
}

/// `GET /console/admin/people` (`users:read`, as `GET /v1/users`).
pub async fn list(ctx: Ctx, RawQuery(query): RawQuery) -> Response {
    let s = match gate(&ctx, &[Permission::UsersRead], "Seeing the tenant's people") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let q = query_map(query.as_deref());
    match people_page(&ctx, s, AddForm::default(), &["developer".to_string()]).await {
        Ok(mut page) => {
            page.l.notice = super::done_notice(
                &q,
                &[(
                    "removed",
                    "The member is removed from the tenant; their keys here are revoked.",
                )],
            );
            ctx.html(StatusCode::OK, &page)
        }
        Err(e) => ctx.error(&e),
    }
}

/// `POST /console/admin/people` (`users:write`, as `POST /v1/users`): writes `user.added`.
pub async fn add(ctx: Ctx, body: Bytes) -> Response {
    let p = match posted(&ctx, &body, &[Permission::UsersWrite], "Adding people") {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let s = p.session;
    let mut form = AddForm {
        email: p.field("email"),
        name: p.field("name"),
        ..AddForm::default()
    };
    let roles = p.values("role");
    let result = async {
        if roles.is_empty() {
            return Err(ApiError::validation("roles", "Choose at least one role."));
        }
        usersvc::validate_email(&form.email)?;
        let input = usersvc::NewMember {
            email: form.email.clone(),
            name: (!form.name.is_empty()).then(|| form.name.clone()),
            roles: Some(roles.clone()),
            password_hash: None,
        };
        let mut unit = Unit::begin(&ctx.state.store, &ctx.meta).await?;
        let m = usersvc::add_member(&mut unit, &p.caller, input).await?;
        unit.commit(&ctx.state.auth).await?;
        ApiResult::Ok(m)
    }
    .await;
    match result {
        Ok(m) => ctx.redirect(&format!("/console/admin/people/{}?done=added", m.user.id)),
        Err(e) if is_form_error(&e) => {
            let status = e.code.status();
            form.email_error =
                error_for(Some(&e), "email").map(|_| "Enter a valid email address.".into());
            form.roles_error = error_for(Some(&e), "roles").or_else(|| {
                (e.code == crate::error::ErrorCode::PermissionDenied).then(|| e.message.clone())
            });
            form.error = Some(
                if form.email_error.is_some() || form.roles_error.is_some() {
                    "The member was not added: correct the fields marked below.".into()
                } else {
                    format!("The member was not added: {}", e.message)
                },
            );
            match people_page(&ctx, s, form, &roles).await {
                Ok(page) => ctx.html(status, &page),
                Err(e) => ctx.error(&e),
            }
        }
        Err(e) => ctx.error(&e),
    }
}

#[derive(Template)]
#[template(path = "admin/person.html")]
struct PersonPage {
    l: crate::console::Layout,
    nav: Vec<Section>,
    id: String,
    email: String,
    name: String,
    joined: String,
    current: String,
    you: bool,
    can_write: bool,
    roles: Vec<RoleBox>,
    /// Why the roles or the membership cannot be changed by this caller (shown instead of the
    /// controls), if so.
    owner_rule: Option<String>,
    last_owner: bool,
    error: Option<String>,
}

async fn person_page(
    ctx: &Ctx,
    s: &Session,
    m: Member,
    error: Option<String>,
    checked: Option<&[String]>,
) -> ApiResult<PersonPage> {
    let mut c = conn(ctx).await?;
    let names = role_names(&mut c, &s.tenant_id, &m.roles).await?;
    drop(c);
    let can_write = s.principal.has(Permission::UsersWrite);
    let is_owner = m.roles.iter().any(|r| r == OWNER_ROLE);
    let p = powers(ctx, s).await?;
    let last_owner = is_owner && owner_count(ctx, &s.tenant_id).await? <= 1;
    let owner_rule = if is_owner && !p.owner {
        Some(
            "This member is an owner: only an owner can change an owner's roles or remove them."
                .to_string(),
        )
    } else {
        None
    };
    let roles = if can_write {
        role_boxes(
            &all_roles(ctx, &s.tenant_id).await?,
            &p,
            checked.unwrap_or(&names),
        )
    } else {
        Vec::new()
    };
    Ok(PersonPage {
        l: ctx.layout(&m.user.email),
        nav: sections(s, "/console/admin/people"),
        you: m.user.id == s.user_id,
        id: m.user.id,
        email: m.user.email,
        name: m.user.name,
        joined: date(m.joined_at),
        current: names.join(", "),
        can_write,
        roles,
        owner_rule,
        last_owner,
        error,
    })
}

async fn member_of(ctx: &Ctx, s: &Session, id: &str) -> ApiResult<Member> {
    let mut c = conn(ctx).await?;
    tenants::get_member(&mut c, &s.tenant_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))
}

/// `GET /console/admin/people/{id}` (`users:read`, as `GET /v1/users/{id}`).
pub async fn show(ctx: Ctx, Path(id): Path<String>, RawQuery(query): RawQuery) -> Response {
    let s = match gate(&ctx, &[Permission::UsersRead], "Seeing the tenant's people") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let m = match member_of(&ctx, s, &id).await {
        Ok(m) => m,
        Err(e) => return ctx.error(&e),
    };
    let q = query_map(query.as_deref());
    match person_page(&ctx, s, m, None, None).await {
        Ok(mut page) => {
            page.l.notice = super::done_notice(
                &q,
                &[
                    ("added", "The member is added."),
                    (
                        "roles",
                        "The roles are changed; they apply from the next request.",
                    ),
                ],
            );
            ctx.html(StatusCode::OK, &page)
        }
        Err(e) => ctx.error(&e),
    }
}

/// `POST /console/admin/people/{id}/roles` (`users:write`, as `PUT /v1/users/{id}/roles`):
/// writes `user.roles_changed`.
pub async fn set_roles(ctx: Ctx, Path(id): Path<String>, body: Bytes) -> Response {
    let p = match posted(&ctx, &body, &[Permission::UsersWrite], "Changing roles") {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let s = p.session;
    let roles = p.values("role");
    let result = async {
        let mut unit = Unit::begin(&ctx.state.store, &ctx.meta).await?;
        let m = usersvc::replace_roles(&mut unit, &p.caller, &id, roles.clone()).await?;
        unit.commit(&ctx.state.auth).await?;
        ApiResult::Ok(m)
    }
    .await;
    match result {
        Ok(m) => ctx.redirect(&format!("/console/admin/people/{}?done=roles", m.user.id)),
        Err(e) if is_form_error(&e) => {
            let status = e.code.status();
            let m = match member_of(&ctx, s, &id).await {
                Ok(m) => m,
                Err(e) => return ctx.error(&e),
            };
            let msg = explain(&e);
            match person_page(&ctx, s, m, Some(msg), Some(&roles)).await {
                Ok(page) => ctx.html(status, &page),
                Err(e) => ctx.error(&e),
            }
        }
        Err(e) => ctx.error(&e),
    }
}

/// The service's refusal in the words of the page.
fn explain(e: &ApiError) -> String {
    if e.message.contains("last owner") {
        "A tenant always keeps at least one owner (someone must be able to manage owners and \
         the tenant itself). Make another member an owner first; then this one can lose the \
         owner role or be removed."
            .into()
    } else {
        e.message.clone()
    }
}

#[derive(Template)]
#[template(path = "admin/person_remove.html")]
struct RemovePage {
    l: crate::console::Layout,
    nav: Vec<Section>,
    id: String,
    email: String,
    keys: usize,
    blocked: Option<String>,
}

/// `GET /console/admin/people/{id}/remove`: the confirmation (or why it cannot be done).
pub async fn remove_page(ctx: Ctx, Path(id): Path<String>) -> Response {
    let s = match gate(&ctx, &[Permission::UsersWrite], "Removing people") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let build = async {
        let m = member_of(&ctx, s, &id).await?;
        let is_owner = m.roles.iter().any(|r| r == OWNER_ROLE);
        let p = powers(&ctx, s).await?;
        let blocked = if is_owner && owner_count(&ctx, &s.tenant_id).await? <= 1 {
            Some(explain(&ApiError::conflict("last owner")))
        } else if is_owner && !p.owner {
            Some("This member is an owner: only an owner can remove an owner.".to_string())
        } else {
            None
        };
        let keys = crate::store::keys::list(ctx.state.store.pool(), &s.tenant_id, Some(&id))
            .await?
            .iter()
            .filter(|k| k.revoked_at.is_none())
            .count();
        ApiResult::Ok(RemovePage {
            l: ctx.layout(&format!("Remove {}", m.user.email)),
            nav: sections(s, "/console/admin/people"),
            id: m.user.id,
            email: m.user.email,
            keys,
            blocked,
        })
    };
    match build.await {
        Ok(page) => ctx.html(StatusCode::OK, &page),
        Err(e) => ctx.error(&e),
    }
}

/// `POST /console/admin/people/{id}/remove` (`users:write`, as `DELETE /v1/users/{id}`):
/// writes `user.removed`; the member's keys in this tenant are revoked.
pub async fn remove(ctx: Ctx, Path(id): Path<String>, body: Bytes) -> Response {
    let p = match posted(&ctx, &body, &[Permission::UsersWrite], "Removing people") {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let done = async {
        let mut unit = Unit::begin(&ctx.state.store, &ctx.meta).await?;
        usersvc::remove_member(&mut unit, &p.caller, &id).await?;
        unit.commit(&ctx.state.auth).await
    };
    match done.await {
        Ok(()) => ctx.redirect("/console/admin/people?done=removed"),
        Err(e) if e.code == crate::error::ErrorCode::Conflict => ctx.message(
            StatusCode::CONFLICT,
            "The member was not removed",
            &explain(&e),
            true,
            Some(("/console/admin/people", "Back to people")),
        ),
        Err(e) => ctx.error(&e),
    }
}

// ---- roles -----------------------------------------------------------------------------------

pub struct RoleRow {
    pub id: String,
    pub name: String,
    pub description: String,
    pub permissions: String,
    pub builtin: bool,
}

pub struct PermBox {
    pub name: &'static str,
    pub checked: bool,
}

#[derive(Default)]
pub struct RoleForm {
    pub name: String,
    pub description: String,
    pub error: Option<String>,
    pub name_error: Option<String>,
    pub perms_error: Option<String>,
}

#[derive(Template)]
#[template(path = "admin/roles.html")]
struct RolesPage {
    l: crate::console::Layout,
    nav: Vec<Section>,
    rows: Vec<RoleRow>,
    perms: Vec<PermBox>,
    not_held: String,
    form: RoleForm,
    /// Editing this custom role (else creating one).
    editing: Option<String>,
}

fn perm_boxes(s: &Session, checked: &[String]) -> (Vec<PermBox>, String) {
    let held = s.principal.permissions;
    let boxes = held
        .iter()
        .map(|p| PermBox {
            name: p.as_str(),
            checked: checked.iter().any(|c| c == p.as_str()),
        })
        .collect();
    let not_held: Vec<&str> = Permission::ALL
        .iter()
        .filter(|p| !held.contains(**p))
        .map(|p| p.as_str())
        .collect();
    (boxes, not_held.join(", "))
}

async fn roles_page(
    ctx: &Ctx,
    s: &Session,
    form: RoleForm,
    checked: &[String],
    editing: Option<String>,
) -> ApiResult<RolesPage> {
    let mut rows: Vec<RoleRow> = BUILTIN_ROLES
        .iter()
        .map(|n| RoleRow {
            id: (*n).to_string(),
            name: (*n).to_string(),
            description: builtin_description(n).to_string(),
            permissions: builtin_role(n).unwrap_or_default().names().join(" "),
            builtin: true,
        })
        .collect();
    for r in tenants::list_roles(ctx.state.store.pool(), &s.tenant_id).await? {
        rows.push(RoleRow {
            permissions: r.permissions.names().join(" "),
            id: r.id,
            name: r.name,
            description: r.description,
            builtin: false,
        });
    }
    let (perms, not_held) = perm_boxes(s, checked);
    Ok(RolesPage {
        l: ctx.layout("Roles"),
        nav: sections(s, "/console/admin/roles"),
        rows,
        perms,
        not_held,
        form,
        editing,
    })
}

const ROLES: &[Permission] = &[Permission::RolesWrite];

/// `GET /console/admin/roles` (`roles:write`, as `GET /v1/roles`).
pub async fn roles(ctx: Ctx, RawQuery(query): RawQuery) -> Response {
    let s = match gate(&ctx, ROLES, "Managing roles") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let q = query_map(query.as_deref());
    match roles_page(&ctx, s, RoleForm::default(), &[], None).await {
        Ok(mut page) => {
            page.l.notice = super::done_notice(
                &q,
                &[
                    ("created", "The role is created."),
                    (
                        "updated",
                        "The role is changed; its holders' keys and tokens follow.",
                    ),
                    ("deleted", "The role is deleted."),
                ],
            );
            ctx.html(StatusCode::OK, &page)
        }
        Err(e) => ctx.error(&e),
    }
}

/// `GET /console/admin/roles/{id}`: the edit form of a custom role.
pub async fn role(ctx: Ctx, Path(id): Path<String>) -> Response {
    let s = match gate(&ctx, ROLES, "Managing roles") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let load = async {
        let mut c = conn(&ctx).await?;
        tenants::get_role(&mut c, &s.tenant_id, &id)
            .await?
            .ok_or_else(|| ApiError::not_found("role"))
    };
    let r: Role = match load.await {
        Ok(r) => r,
        Err(e) => return ctx.error(&e),
    };
    let checked: Vec<String> = r
        .permissions
        .names()
        .iter()
        .map(|x| x.to_string())
        .collect();
    let form = RoleForm {
        name: r.name.clone(),
        description: r.description.clone(),
        ..RoleForm::default()
    };
    match roles_page(&ctx, s, form, &checked, Some(r.id)).await {
        Ok(page) => ctx.html(StatusCode::OK, &page),
        Err(e) => ctx.error(&e),
    }
}

fn role_form_error(e: &ApiError, form: &mut RoleForm, what: &str) {
    form.name_error = error_for(Some(e), "name").or_else(|| {
        (e.code == crate::error::ErrorCode::Conflict && e.message.contains("built-in"))
            .then(|| e.message.clone())
    });
    form.perms_error = error_for(Some(e), "permissions").or_else(|| {
        (e.code == crate::error::ErrorCode::PermissionDenied).then(|| e.message.clone())
    });
    form.error = Some(if form.name_error.is_some() || form.perms_error.is_some() {
        format!("The role was not {what}: correct the fields marked below.")
    } else {
        format!("The role was not {what}: {}", e.message)
    });
}

/// `POST /console/admin/roles` (as `POST /v1/roles`): writes `role.created`.
pub async fn create_role(ctx: Ctx, body: Bytes) -> Response {
    let p = match posted(&ctx, &body, ROLES, "Managing roles") {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let mut form = RoleForm {
        name: p.field("name"),
        description: p.field("description"),
        ..RoleForm::default()
    };
    let perms = p.values("permission");
    let result = async {
        let mut unit = Unit::begin(&ctx.state.store, &ctx.meta).await?;
        let desc = (!form.description.is_empty()).then_some(form.description.as_str());
        let r = usersvc::create_role(&mut unit, &p.caller, &form.name, &perms, desc).await?;
        unit.commit(&ctx.state.auth).await?;
        ApiResult::Ok(r)
    }
    .await;
    match result {
        Ok(_) => ctx.redirect("/console/admin/roles?done=created"),
        Err(e) if is_form_error(&e) => {
            role_form_error(&e, &mut form, "created");
            match roles_page(&ctx, p.session, form, &perms, None).await {
                Ok(page) => ctx.html(e.code.status(), &page),
                Err(e) => ctx.error(&e),
            }
        }
        Err(e) => ctx.error(&e),
    }
}

/// `POST /console/admin/roles/{id}` (as `PATCH /v1/roles/{id}`): writes `role.updated`.
pub async fn update_role(ctx: Ctx, Path(id): Path<String>, body: Bytes) -> Response {
    let p = match posted(&ctx, &body, ROLES, "Managing roles") {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let mut form = RoleForm {
        name: p.field("name"),
        description: p.field("description"),
        ..RoleForm::default()
    };
    let perms = p.values("permission");
    let result = async {
        let mut unit = Unit::begin(&ctx.state.store, &ctx.meta).await?;
        let r = usersvc::update_role(
            &mut unit,
            &p.caller,
            &id,
            Some(&form.name),
            Some(&perms),
            Some(&form.description),
        )
        .await?;
        unit.commit(&ctx.state.auth).await?;
        ApiResult::Ok(r)
    }
    .await;
    match result {
        Ok(_) => ctx.redirect("/console/admin/roles?done=updated"),
        Err(e) if is_form_error(&e) => {
            role_form_error(&e, &mut form, "changed");
            match roles_page(&ctx, p.session, form, &perms, Some(id.clone())).await {
                Ok(page) => ctx.html(e.code.status(), &page),
                Err(e) => ctx.error(&e),
            }
        }
        Err(e) => ctx.error(&e),
    }
}

/// `POST /console/admin/roles/{id}/delete` (as `DELETE /v1/roles/{id}`): writes `role.deleted`.
pub async fn delete_role(ctx: Ctx, Path(id): Path<String>, body: Bytes) -> Response {
    let p = match posted(&ctx, &body, ROLES, "Managing roles") {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let done = async {
        let mut unit = Unit::begin(&ctx.state.store, &ctx.meta).await?;
        usersvc::delete_role(&mut unit, &p.caller, &id).await?;
        unit.commit(&ctx.state.auth).await
    };
    match done.await {
        Ok(()) => ctx.redirect("/console/admin/roles?done=deleted"),
        Err(e) if e.code == crate::error::ErrorCode::Conflict => ctx.message(
            StatusCode::CONFLICT,
            "The role was not deleted",
            &e.message,
            true,
            Some(("/console/admin/roles", "Back to roles")),
        ),
        Err(e) => ctx.error(&e),
    }
}
