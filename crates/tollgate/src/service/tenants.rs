//! Tenants: names, and making a user a tenant's owner (first start, `tollgate init`,
//! `POST /v1/tenants`).

use serde_json::json;
use tollgate_core::audit::{Action, Actor};

use super::Unit;
use super::keys::{self as keys_service, NewKeySpec};
use crate::error::{ApiError, ApiResult};
use crate::store::invalidations::Kind;
use crate::store::{Conn, StoreError, tenants};

pub fn validate_tenant_name(name: &str) -> ApiResult<String> {
    let n = name.trim();
    if n.is_empty() || n.chars().count() > 100 {
        return Err(ApiError::validation(
            "name",
            "tenant names are 1-100 characters",
        ));
    }
    Ok(n.to_string())
}

/// Makes `email` (created if new) an owner of `tenant_id` and issues an owner key, in `unit`.
pub async fn add_owner(
    unit: &mut Unit<'_>,
    prefix: &str,
    tenant_id: &str,
    email: &str,
    password_hash: Option<String>,
    actor: Actor,
) -> ApiResult<(String, String)> {
    let conn = unit.conn();
    let user = match tenants::find_user_by_email(conn, email).await? {
        Some(u) => {
            if let Some(h) = &password_hash {
                tenants::set_password_hash(conn, &u.id, h).await?;
            }
            u
        }
        None => {
            let first = tenants::count_tenants(conn).await? <= 1;
            let platform_admin = first && !platform_admin_exists(conn).await?;
            tenants::create_user(conn, email, "", password_hash, platform_admin).await?
        }
    };
    if tenants::get_member(conn, tenant_id, &user.id)
        .await?
        .is_none()
    {
        tenants::add_membership(conn, tenant_id, &user.id).await?;
        let event = unit
            .event(tenant_id, actor.clone(), Action::UserAdded)
            .target("user", user.id.clone())
            .details(json!({"email": user.email, "roles": ["owner"]}));
        unit.audit(event).await?;
    }
    let member = tenants::get_member(unit.conn(), tenant_id, &user.id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    if !member.roles.iter().any(|r| r == "owner") {
        let mut roles = member.roles.clone();
        roles.push("owner".into());
        tenants::set_member_roles(unit.conn(), tenant_id, &user.id, &roles).await?;
        unit.invalidate(Kind::Permissions, &user.id).await?;
    }
    let spec = NewKeySpec {
        tenant_id: tenant_id.to_string(),
        user_id: Some(user.id.clone()),
        subscription_id: None,
        name: "owner".into(),
        expires_at: None,
        scopes: None,
        rate_limit: None,
        created_by: Some(user.id.clone()),
    };
    let (_, secret) = keys_service::create(unit, prefix, spec, actor).await?;
    Ok((user.id, secret.plaintext))
}

async fn platform_admin_exists(conn: &mut Conn) -> Result<bool, StoreError> {
    tenants::platform_admin_exists(conn).await
}
