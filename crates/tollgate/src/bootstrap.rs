//! First start and `tollgate init`: the first tenant, its owner, and an owner API key.

use serde_json::json;

use crate::api::keys::{NewKeySpec, create_key};
use crate::error::{ApiError, ApiResult};
use crate::store::audit::{Actor, AuditEvent, RequestMeta, append};
use crate::store::{Conn, Store, StoreError, tenants};
use tollgate_core::audit::Action;

/// What `init` and the first start print (the key is shown this once).
#[derive(Debug, serde::Serialize)]
pub struct InitOutput {
    pub tenant_id: String,
    pub user_id: String,
    pub api_key: String,
}

/// Makes `email` (created if new) an owner of `tenant_id` and issues an owner key.
pub async fn add_owner(
    conn: &mut Conn,
    prefix: &str,
    tenant_id: &str,
    email: &str,
    password_hash: Option<String>,
    actor: Actor,
    meta: &RequestMeta,
) -> ApiResult<(String, String)> {
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
        append(
            conn,
            AuditEvent::new(tenant_id, actor.clone(), Action::UserAdded, meta)
                .target("user", user.id.clone())
                .details(json!({"email": user.email, "roles": ["owner"]})),
        )
        .await?;
    }
    let member = tenants::get_member(conn, tenant_id, &user.id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    if !member.roles.iter().any(|r| r == "owner") {
        let mut roles = member.roles.clone();
        roles.push("owner".into());
        tenants::set_member_roles(conn, tenant_id, &user.id, &roles).await?;
        crate::store::invalidations::publish(
            conn,
            crate::store::invalidations::Kind::Permissions,
            &user.id,
            meta,
        )
        .await?;
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
    let (_, secret) = create_key(conn, prefix, spec, actor, meta).await?;
    Ok((user.id, secret.plaintext))
}

async fn platform_admin_exists(conn: &mut Conn) -> Result<bool, StoreError> {
    tenants::platform_admin_exists(conn).await
}

/// `tollgate init`: creates the tenant and its owner if missing and issues a new owner key.
pub async fn init(
    store: &Store,
    prefix: &str,
    email: &str,
    tenant_name: &str,
    password: Option<String>,
) -> ApiResult<InitOutput> {
    let email = crate::api::users::validate_email(email)?;
    let tenant_name = crate::api::tenants::validate_tenant_name(tenant_name)?;
    let password_hash = match password {
        Some(p) => Some(crate::passwords::hash(&p).await?),
        None => None,
    };
    let mut tx = store.begin().await?;
    let meta = RequestMeta::default();
    let tenant = match tenants::find_tenant_by_name(&mut tx, &tenant_name).await? {
        Some(t) => t,
        None => {
            let t = tenants::create_tenant(&mut tx, &tenant_name).await?;
            append(
                &mut tx,
                AuditEvent::new(
                    t.id.clone(),
                    Actor::operator(),
                    Action::TenantCreated,
                    &meta,
                )
                .target("tenant", t.id.clone())
                .details(json!({"name": t.name})),
            )
            .await?;
            t
        }
    };
    crate::store::Store::insert_setting_if_absent(&mut tx, "bootstrapped", "init").await?;
    let (user_id, api_key) = add_owner(
        &mut tx,
        prefix,
        &tenant.id,
        &email,
        password_hash,
        Actor::operator(),
        &meta,
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(InitOutput {
        tenant_id: tenant.id,
        user_id,
        api_key,
    })
}

/// On the very first start with an empty store: create the first tenant and owner. Returns the
/// bootstrap output exactly once (never again on later starts, nor on other instances).
pub async fn first_start(
    store: &Store,
    prefix: &str,
    email: &str,
) -> ApiResult<Option<InitOutput>> {
    let mut tx = store.begin().await?;
    if tenants::count_tenants(&mut tx).await? > 0
        || !crate::store::Store::insert_setting_if_absent(&mut tx, "bootstrapped", "serve").await?
    {
        return Ok(None);
    }
    let meta = RequestMeta::default();
    let tenant = tenants::create_tenant(&mut tx, "default").await?;
    append(
        &mut tx,
        AuditEvent::new(
            tenant.id.clone(),
            Actor::system(),
            Action::TenantCreated,
            &meta,
        )
        .target("tenant", tenant.id.clone())
        .details(json!({"name": tenant.name, "bootstrap": true})),
    )
    .await?;
    let (user_id, api_key) = add_owner(
        &mut tx,
        prefix,
        &tenant.id,
        email,
        None,
        Actor::system(),
        &meta,
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(Some(InitOutput {
        tenant_id: tenant.id,
        user_id,
        api_key,
    }))
}
