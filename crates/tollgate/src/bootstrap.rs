//! First start and `tollgate init`: the first tenant, its owner, and an owner API key.

use serde_json::json;

use crate::error::ApiResult;
use crate::service::Unit;
use crate::store::audit::{Actor, RequestMeta};
use crate::store::{Store, tenants};
use tollgate_core::audit::Action;

/// What `init` and the first start print (the key is shown this once).
#[derive(Debug, serde::Serialize)]
pub struct InitOutput {
    pub tenant_id: String,
    pub user_id: String,
    pub api_key: String,
}

/// `tollgate init`: creates the tenant and its owner if missing and issues a new owner key.
pub async fn init(
    store: &Store,
    prefix: &str,
    email: &str,
    tenant_name: &str,
    password: Option<String>,
) -> ApiResult<InitOutput> {
    let email = crate::service::users::validate_email(email)?;
    let tenant_name = crate::service::tenants::validate_tenant_name(tenant_name)?;
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
    let (user_id, api_key) = crate::service::tenants::add_owner(
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
    let (user_id, api_key) = crate::service::tenants::add_owner(
        &mut unit,
        prefix,
        &tenant.id,
        email,
        None,
        Actor::system(),
    )
    .await?;
    // Before this process serves: no request here to cut.
    unit.commit_offline().await?;
    Ok(Some(InitOutput {
        tenant_id: tenant.id,
        user_id,
        api_key,
    }))
}
