//! Tenants, users, memberships and roles. Every tenant-owned query filters by tenant.

use serde_json::json;
use sqlx::{AnyPool, Row};

use crate::util::{new_id, now_ms};
use crate::{Conn, StoreError, StoreResult};
use tollgate_core::permissions::{PermSet, builtin_role};

#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

/// A user. `password_hash` is an Argon2id PHC string and never leaves the store layer in a response.
#[derive(Clone)]
pub struct User {
    pub id: String,
    pub email: String,
    pub name: String,
    pub password_hash: Option<String>,
    pub email_verified_at: Option<i64>,
    pub platform_admin: bool,
    pub created_at: i64,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

/// A user seen from one tenant: the user plus the role ids held there.
#[derive(Debug, Clone)]
pub struct Member {
    pub user: User,
    pub roles: Vec<String>,
    pub joined_at: i64,
}

/// A custom role (built-in roles are code, see `permissions::builtin_role`).
#[derive(Debug, Clone)]
pub struct Role {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub description: String,
    pub permissions: PermSet,
    pub created_at: i64,
}

pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

// ---- tenants ---------------------------------------------------------------------------------

pub async fn create_tenant(conn: &mut Conn, name: &str) -> StoreResult<Tenant> {
    let t = Tenant {
        id: new_id("ten"),
        name: name.to_string(),
        created_at: now_ms(),
    };
    sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3)")
        .bind(t.id.clone())
        .bind(t.name.clone())
        .bind(t.created_at)
        .execute(conn)
        .await
        .map_err(|e| match StoreError::from(e) {
            StoreError::Conflict(_) => {
                StoreError::Conflict(format!("A tenant named {name:?} already exists"))
            }
            other => other,
        })?;
    Ok(t)
}

fn tenant_row(r: (String, String, i64)) -> Tenant {
    Tenant {
        id: r.0,
        name: r.1,
        created_at: r.2,
    }
}

pub async fn get_tenant(pool: &AnyPool, id: &str) -> StoreResult<Option<Tenant>> {
    let r: Option<(String, String, i64)> =
        sqlx::query_as("SELECT id, name, created_at FROM tenants WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(pool)
            .await?;
    Ok(r.map(tenant_row))
}

pub async fn find_tenant_by_name(conn: &mut Conn, name: &str) -> StoreResult<Option<Tenant>> {
    let r: Option<(String, String, i64)> =
        sqlx::query_as("SELECT id, name, created_at FROM tenants WHERE name = $1")
            .bind(name.to_string())
            .fetch_optional(conn)
            .await?;
    Ok(r.map(tenant_row))
}

pub async fn list_tenants(pool: &AnyPool) -> StoreResult<Vec<Tenant>> {
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT id, name, created_at FROM tenants ORDER BY created_at, id")
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().map(tenant_row).collect())
}

pub async fn count_tenants(conn: &mut Conn) -> StoreResult<i64> {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM tenants")
        .fetch_one(conn)
        .await?;
    Ok(n)
}

/// Tenants a user belongs to (for the login flow).
pub async fn user_tenants(pool: &AnyPool, user_id: &str) -> StoreResult<Vec<Tenant>> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT t.id, t.name, t.created_at FROM tenants t JOIN memberships m ON m.tenant_id = t.id
         WHERE m.user_id = $1 ORDER BY t.name",
    )
    .bind(user_id.to_string())
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(tenant_row).collect())
}

// ---- users -----------------------------------------------------------------------------------

const USER_COLS: &str =
    "u.id, u.email, u.name, u.password_hash, u.email_verified_at, u.platform_admin, u.created_at";

fn user_from_row(r: &sqlx::any::AnyRow) -> Result<User, sqlx::Error> {
    Ok(User {
        id: r.try_get("id")?,
        email: r.try_get("email")?,
        name: r.try_get("name")?,
        password_hash: r.try_get("password_hash")?,
        email_verified_at: r.try_get("email_verified_at")?,
        platform_admin: r.try_get::<i64, _>("platform_admin")? != 0,
        created_at: r.try_get("created_at")?,
    })
}

pub async fn create_user(
    conn: &mut Conn,
    email: &str,
    name: &str,
    password_hash: Option<String>,
    platform_admin: bool,
) -> StoreResult<User> {
    let u = User {
        id: new_id("usr"),
        email: normalize_email(email),
        name: name.to_string(),
        password_hash,
        email_verified_at: None,
        platform_admin,
        created_at: now_ms(),
    };
    sqlx::query(
        "INSERT INTO users (id, email, name, password_hash, platform_admin, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(u.id.clone())
    .bind(u.email.clone())
    .bind(u.name.clone())
    .bind(u.password_hash.clone())
    .bind(i64::from(u.platform_admin))
    .bind(u.created_at)
    .execute(conn)
    .await
    .map_err(|e| match StoreError::from(e) {
        StoreError::Conflict(_) => StoreError::Conflict("A user with that email already exists".into()),
        other => other,
    })?;
    Ok(u)
}

pub async fn find_user_by_email(conn: &mut Conn, email: &str) -> StoreResult<Option<User>> {
    let sql = format!("SELECT {USER_COLS} FROM users u WHERE u.email = $1");
    let r = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(normalize_email(email))
        .fetch_optional(conn)
        .await?;
    Ok(r.as_ref().map(user_from_row).transpose()?)
}

pub async fn get_user(conn: &mut Conn, user_id: &str) -> StoreResult<Option<User>> {
    let sql = format!("SELECT {USER_COLS} FROM users u WHERE u.id = $1");
    let r = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(user_id.to_string())
        .fetch_optional(conn)
        .await?;
    Ok(r.as_ref().map(user_from_row).transpose()?)
}

pub async fn set_password_hash(conn: &mut Conn, user_id: &str, hash: &str) -> StoreResult<()> {
    sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
        .bind(user_id.to_string())
        .bind(hash.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn set_user_name(conn: &mut Conn, user_id: &str, name: &str) -> StoreResult<()> {
    sqlx::query("UPDATE users SET name = $2 WHERE id = $1")
        .bind(user_id.to_string())
        .bind(name.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

// ---- memberships -----------------------------------------------------------------------------

pub async fn add_membership(conn: &mut Conn, tenant_id: &str, user_id: &str) -> StoreResult<()> {
    sqlx::query("INSERT INTO memberships (tenant_id, user_id, created_at) VALUES ($1, $2, $3)")
        .bind(tenant_id.to_string())
        .bind(user_id.to_string())
        .bind(now_ms())
        .execute(conn)
        .await
        .map_err(|e| match StoreError::from(e) {
            StoreError::Conflict(_) => {
                StoreError::Conflict("That user is already a member of this tenant".into())
            }
            other => other,
        })?;
    Ok(())
}

/// Replaces a member's roles (role ids: built-in names or custom role ids).
pub async fn set_member_roles(
    conn: &mut Conn,
    tenant_id: &str,
    user_id: &str,
    roles: &[String],
) -> StoreResult<()> {
    sqlx::query("DELETE FROM member_roles WHERE tenant_id = $1 AND user_id = $2")
        .bind(tenant_id.to_string())
        .bind(user_id.to_string())
        .execute(&mut *conn)
        .await?;
    for role in roles {
        sqlx::query("INSERT INTO member_roles (tenant_id, user_id, role) VALUES ($1, $2, $3)")
            .bind(tenant_id.to_string())
            .bind(user_id.to_string())
            .bind(role.clone())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Removes a user from a tenant (roles go with the membership).
pub async fn remove_member(conn: &mut Conn, tenant_id: &str, user_id: &str) -> StoreResult<bool> {
    sqlx::query("DELETE FROM member_roles WHERE tenant_id = $1 AND user_id = $2")
        .bind(tenant_id.to_string())
        .bind(user_id.to_string())
        .execute(&mut *conn)
        .await?;
    let r = sqlx::query("DELETE FROM memberships WHERE tenant_id = $1 AND user_id = $2")
        .bind(tenant_id.to_string())
        .bind(user_id.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(r.rows_affected() > 0)
}

async fn roles_of(conn: &mut Conn, tenant_id: &str, user_id: &str) -> StoreResult<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT role FROM member_roles WHERE tenant_id = $1 AND user_id = $2 ORDER BY role",
    )
    .bind(tenant_id.to_string())
    .bind(user_id.to_string())
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

pub async fn get_member(
    conn: &mut Conn,
    tenant_id: &str,
    user_id: &str,
) -> StoreResult<Option<Member>> {
    let sql = format!(
        "SELECT {USER_COLS}, m.created_at AS joined_at FROM users u
         JOIN memberships m ON m.user_id = u.id WHERE m.tenant_id = $1 AND u.id = $2"
    );
    let Some(r) = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(tenant_id.to_string())
        .bind(user_id.to_string())
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    let user = user_from_row(&r)?;
    let joined_at = r.try_get("joined_at")?;
    let roles = roles_of(conn, tenant_id, user_id).await?;
    Ok(Some(Member {
        user,
        roles,
        joined_at,
    }))
}

pub async fn list_members(pool: &AnyPool, tenant_id: &str) -> StoreResult<Vec<Member>> {
    let sql = format!(
        "SELECT {USER_COLS}, m.created_at AS joined_at FROM users u
         JOIN memberships m ON m.user_id = u.id WHERE m.tenant_id = $1 ORDER BY m.created_at, u.id"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(tenant_id.to_string())
        .fetch_all(pool)
        .await?;
    let all_roles: Vec<(String, String)> =
        sqlx::query_as("SELECT user_id, role FROM member_roles WHERE tenant_id = $1 ORDER BY role")
            .bind(tenant_id.to_string())
            .fetch_all(pool)
            .await?;
    rows.iter()
        .map(|r| {
            let user = user_from_row(r)?;
            let roles = all_roles
                .iter()
                .filter(|(u, _)| *u == user.id)
                .map(|(_, role)| role.clone())
                .collect();
            Ok(Member {
                user,
                roles,
                joined_at: r.try_get("joined_at")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}

/// The permissions a member holds right now, from the current roles; `None` if not a member.
pub async fn resolve_permissions(
    pool: &AnyPool,
    tenant_id: &str,
    user_id: &str,
) -> StoreResult<Option<PermSet>> {
    let member: Option<(i64,)> =
        sqlx::query_as("SELECT 1 FROM memberships WHERE tenant_id = $1 AND user_id = $2")
            .bind(tenant_id.to_string())
            .bind(user_id.to_string())
            .fetch_optional(pool)
            .await?;
    if member.is_none() {
        return Ok(None);
    }
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT mr.role, r.permissions FROM member_roles mr
         LEFT JOIN roles r ON r.id = mr.role AND r.tenant_id = mr.tenant_id
         WHERE mr.tenant_id = $1 AND mr.user_id = $2",
    )
    .bind(tenant_id.to_string())
    .bind(user_id.to_string())
    .fetch_all(pool)
    .await?;
    let mut set = PermSet::EMPTY;
    for (role, custom) in rows {
        if let Some(p) = builtin_role(&role) {
            set = set.union(p);
        } else if let Some(perms) = custom {
            set = set.union(parse_perm_json(&perms));
        }
    }
    Ok(Some(set))
}

fn parse_perm_json(s: &str) -> PermSet {
    let names: Vec<String> = serde_json::from_str(s).unwrap_or_default();
    // Unknown names are dropped rather than failing a request (they were validated on write).
    names
        .iter()
        .filter_map(|n| PermSet::parse([n.as_str()]).ok())
        .fold(PermSet::EMPTY, PermSet::union)
}

// ---- custom roles ----------------------------------------------------------------------------

fn role_from_row(r: (String, String, String, String, String, i64)) -> Role {
    Role {
        id: r.0,
        tenant_id: r.1,
        name: r.2,
        description: r.3,
        permissions: parse_perm_json(&r.4),
        created_at: r.5,
    }
}

pub async fn list_roles(pool: &AnyPool, tenant_id: &str) -> StoreResult<Vec<Role>> {
    let rows: Vec<(String, String, String, String, String, i64)> = sqlx::query_as(
        "SELECT id, tenant_id, name, description, permissions, created_at FROM roles WHERE tenant_id = $1 ORDER BY name",
    )
    .bind(tenant_id.to_string())
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(role_from_row).collect())
}

pub async fn get_role(conn: &mut Conn, tenant_id: &str, id: &str) -> StoreResult<Option<Role>> {
    let r: Option<(String, String, String, String, String, i64)> = sqlx::query_as(
        "SELECT id, tenant_id, name, description, permissions, created_at FROM roles WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant_id.to_string())
    .bind(id.to_string())
    .fetch_optional(conn)
    .await?;
    Ok(r.map(role_from_row))
}

pub async fn find_role_by_name(
    conn: &mut Conn,
    tenant_id: &str,
    name: &str,
) -> StoreResult<Option<Role>> {
    let r: Option<(String, String, String, String, String, i64)> = sqlx::query_as(
        "SELECT id, tenant_id, name, description, permissions, created_at FROM roles WHERE tenant_id = $1 AND name = $2",
    )
    .bind(tenant_id.to_string())
    .bind(name.to_string())
    .fetch_optional(conn)
    .await?;
    Ok(r.map(role_from_row))
}

pub async fn create_role(
    conn: &mut Conn,
    tenant_id: &str,
    name: &str,
    description: &str,
    permissions: PermSet,
) -> StoreResult<Role> {
    let role = Role {
        id: new_id("role"),
        tenant_id: tenant_id.to_string(),
        name: name.to_string(),
        description: description.to_string(),
        permissions,
        created_at: now_ms(),
    };
    sqlx::query(
        "INSERT INTO roles (id, tenant_id, name, description, permissions, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(role.id.clone())
    .bind(role.tenant_id.clone())
    .bind(role.name.clone())
    .bind(role.description.clone())
    .bind(json!(permissions).to_string())
    .bind(role.created_at)
    .execute(conn)
    .await
    .map_err(|e| match StoreError::from(e) {
        StoreError::Conflict(_) => StoreError::Conflict(format!("A role named {name:?} already exists")),
        other => other,
    })?;
    Ok(role)
}

pub async fn update_role(conn: &mut Conn, role: &Role) -> StoreResult<()> {
    sqlx::query("UPDATE roles SET name = $3, description = $4, permissions = $5 WHERE tenant_id = $1 AND id = $2")
        .bind(role.tenant_id.clone())
        .bind(role.id.clone())
        .bind(role.name.clone())
        .bind(role.description.clone())
        .bind(json!(role.permissions).to_string())
        .execute(conn)
        .await
        .map_err(|e| match StoreError::from(e) {
            StoreError::Conflict(_) => StoreError::Conflict(format!("A role named {:?} already exists", role.name)),
            other => other,
        })?;
    Ok(())
}

pub async fn role_member_count(
    conn: &mut Conn,
    tenant_id: &str,
    role_id: &str,
) -> StoreResult<i64> {
    let (n,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM member_roles WHERE tenant_id = $1 AND role = $2")
            .bind(tenant_id.to_string())
            .bind(role_id.to_string())
            .fetch_one(conn)
            .await?;
    Ok(n)
}

pub async fn delete_role(conn: &mut Conn, tenant_id: &str, role_id: &str) -> StoreResult<bool> {
    let r = sqlx::query("DELETE FROM roles WHERE tenant_id = $1 AND id = $2")
        .bind(tenant_id.to_string())
        .bind(role_id.to_string())
        .execute(conn)
        .await?;
    Ok(r.rows_affected() > 0)
}

pub async fn platform_admin_exists(conn: &mut Conn) -> StoreResult<bool> {
    let r: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM users WHERE platform_admin = 1 LIMIT 1")
        .fetch_optional(conn)
        .await?;
    Ok(r.is_some())
}
