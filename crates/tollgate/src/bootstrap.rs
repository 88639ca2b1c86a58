//! First start and `tollgate init`: the first tenant, its owner, and an owner API key.

use serde_json::json;

use crate::error::{ApiError, ApiResult};
use crate::service::Unit;
use crate::service::keys::{self as keys_service, NewKeySpec};
use crate::store::audit::{Actor, RequestMeta};
use crate::store::invalidations::Kind;
use crate::store::{Conn, Store, StoreError, tenants};
use tollgate_core::audit::Action;

/// What `init` and the first start print (the key is shown this once).
#[derive(Debug, serde::Serialize)]
pub struct InitOutput {
    pub tenant_id: String,
    pub user_id: String,
    pub api_key: String,
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
    let meta = RequestMeta::default();
    let mut unit = Unit::begin(store, &meta).await?;
    let tenant = match tenants::find_tenant_by_name(unit.conn(), &tenant_name).await? {
        Some(t) => t,
        None => {
            let t = tenants::create_tenant(unit.conn(), &tenant_name).await?;
            let event = unit
                .event(t.id.clone(), Actor::operator(), Action::TenantCreated)
                .target("tenant", t.id.clone())
                .details(json!({"name": t.name}));
            unit.audit(event).await?;
            t
        }
    };
    crate::store::Store::insert_setting_if_absent(unit.conn(), "bootstrapped", "init").await?;
    let (user_id, api_key) = add_owner(
        &mut unit,
        prefix,
        &tenant.id,
        &email,
        password_hash,
        Actor::operator(),
    )
    .await?;
    unit.commit_offline().await?;
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
    let meta = RequestMeta::default();
    let mut unit = Unit::begin(store, &meta).await?;
    if tenants::count_tenants(unit.conn()).await? > 0
        || !crate::store::Store::insert_setting_if_absent(unit.conn(), "bootstrapped", "serve")
            .await?
    {
        return Ok(None);
    }
    let tenant = tenants::create_tenant(unit.conn(), "default").await?;
    let event = unit
        .event(tenant.id.clone(), Actor::system(), Action::TenantCreated)
        .target("tenant", tenant.id.clone())
        .details(json!({"name": tenant.name, "bootstrap": true}));
    unit.audit(event).await?;
    let (user_id, api_key) =
        add_owner(&mut unit, prefix, &tenant.id, email, None, Actor::system()).await?;
    // Before this process serves: no request here to cut.
    unit.commit_offline().await?;
    Ok(Some(InitOutput {
        tenant_id: tenant.id,
        user_id,
        api_key,
    }))
}
