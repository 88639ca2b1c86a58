//! The tenant administrators' part of the console: API keys, people and roles, OAuth clients
//! and identity providers, products, plans and subscriptions (publishing products to the
//! portal), usage, spike alerts and the audit log.
//!
//! Every page and action is gated by the permission of the matching API route (a control the
//! caller may not use is not shown; posting it anyway is `403`), and every action calls the
//! service operation the API handler calls, so it writes the same audit event. Objects are
//! looked up in the session's tenant only: another tenant's is `404`.

use std::collections::HashMap;

use askama::Template;
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::Response;

use super::{Ctx, Session, parse_form};
use crate::auth::Permission;
use crate::auth::middleware::Caller;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::service::Unit;
use crate::store::subscriptions as substore;

pub mod audit;
pub mod catalog;
pub mod identity;
pub mod keys;
pub mod people;
pub mod usage;

/// One link of the administration's section navigation.
pub struct Section {
    pub href: &'static str,
    pub label: &'static str,
    pub current: bool,
}

/// The sections the caller may open (a section it may not use is not linked).
pub fn sections(s: &Session, current: &str) -> Vec<Section> {
    let p = &s.principal;
    let mut out = Vec::new();
    let mut add = |href: &'static str, label: &'static str, ok: bool| {
        if ok {
            out.push(Section {
                href,
                label,
                current: href == current,
            });
        }
    };
    add("/console/admin", "Overview", true);
    add(
        "/console/admin/keys",
        "API keys",
        p.has(Permission::KeysWrite) || p.has(Permission::KeysAdmin),
    );
    add(
        "/console/admin/people",
        "People",
        p.has(Permission::UsersRead),
    );
    add(
        "/console/admin/roles",
        "Roles",
        p.has(Permission::RolesWrite),
    );
    out
}

/// Whether the session may open any part of the administration (the header's "Admin" link).
pub fn any_section(p: &crate::auth::Principal) -> bool {
    [
        Permission::KeysWrite,
        Permission::KeysAdmin,
        Permission::UsersRead,
        Permission::RolesWrite,
        Permission::ProductsWrite,
        Permission::SubscriptionsRead,
        Permission::UsageRead,
        Permission::AuditRead,
        Permission::TenantAdmin,
    ]
    .iter()
    .any(|x| p.has(*x))
}

/// The signed-in session, if it holds one of `any_of` (the permissions of the matching API
/// route); else the response to give (the sign-in page, or `403`).
pub fn gate<'c>(
    ctx: &'c Ctx,
    any_of: &[Permission],
    what: &str,
) -> Result<&'c Session, Box<Response>> {
    let Some(s) = &ctx.session else {
        return Err(Box::new(ctx.need_session()));
    };
    if any_of.is_empty() || any_of.iter().any(|p| s.principal.has(*p)) {
        Ok(s)
    } else {
        let names: Vec<&str> = any_of.iter().map(|p| p.as_str()).collect();
        Err(Box::new(ctx.error(&ApiError::permission_denied(format!(
            "{what} needs the {} permission",
            names.join(" or ")
        )))))
    }
}

/// A posted form after the CSRF check and the permission gate: its fields, the session and the
/// caller the service operations act as.
pub struct Posted<'c> {
    pub form: HashMap<String, String>,
    pub all: Vec<(String, String)>,
    pub session: &'c Session,
    pub caller: Caller,
}

impl Posted<'_> {
    pub fn field(&self, name: &str) -> String {
        self.form
            .get(name)
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    }

    /// Every value of a repeated field (checkboxes).
    pub fn values(&self, name: &str) -> Vec<String> {
        self.all
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// Checks the CSRF token, then the permission gate.
pub fn posted<'c>(
    ctx: &'c Ctx,
    body: &Bytes,
    any_of: &[Permission],
    what: &str,
) -> Result<Posted<'c>, Box<Response>> {
    let form = parse_form(body);
    if let Some(r) = ctx.check_csrf(&form) {
        return Err(Box::new(r));
    }
    let session = gate(ctx, any_of, what)?;
    let all = url::form_urlencoded::parse(body)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Ok(Posted {
        form,
        all,
        session,
        caller: session.caller(),
    })
}

/// The query string's parameters (the first value of each).
pub fn query_map(query: Option<&str>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        out.entry(k.to_string()).or_insert_with(|| v.to_string());
    }
    out
}

/// A time for tables: `YYYY-MM-DD HH:MM` (UTC).
pub fn date(ms: i64) -> String {
    crate::util::rfc3339(ms)
        .chars()
        .take(16)
        .collect::<String>()
        .replace('T', " ")
}

/// Errors a form shows next to its fields (a validation error, a refused change) rather than
/// on a page of their own.
pub fn is_form_error(e: &ApiError) -> bool {
    matches!(
        e.code,
        ErrorCode::ValidationFailed
            | ErrorCode::Conflict
            | ErrorCode::InvalidRequest
            | ErrorCode::PermissionDenied
    )
}

/// The message of `e` when it is about `param`.
pub fn error_for(e: Option<&ApiError>, param: &str) -> Option<String> {
    e.filter(|e| e.param.as_deref() == Some(param))
        .map(|e| e.message.clone())
}

/// A fixed confirmation for `?done=…` (nothing of the URL is echoed).
pub fn done_notice(query: &HashMap<String, String>, table: &[(&str, &str)]) -> Option<String> {
    let done = query.get("done")?;
    table
        .iter()
        .find(|(k, _)| k == done)
        .map(|(_, v)| (*v).to_string())
}

// ---- overview and publishing -----------------------------------------------------------------

pub struct ProductRow {
    pub id: String,
    pub name: String,
    pub models: String,
    pub published: bool,
}

#[derive(Template)]
#[template(path = "admin/home.html")]
struct AdminPage {
    l: super::Layout,
    nav: Vec<Section>,
    tenant: String,
    can_publish: bool,
    products: Vec<ProductRow>,
}

/// `GET /console/admin`: the overview (the sections the caller may open, the products and their
/// place in the portal).
pub async fn home(ctx: Ctx) -> Response {
    let Some(s) = &ctx.session else {
        return ctx.need_session();
    };
    if !any_section(&s.principal) {
        return ctx.error(&ApiError::permission_denied(
            "The console's administration needs a permission to manage keys, people, roles or products",
        ));
    }
    let can_publish = s.principal.has(Permission::ProductsWrite);
    let load = async {
        let pool = ctx.state.store.pool();
        let published = crate::store::console::published_product_ids(pool, &s.tenant_id).await?;
        let products = substore::list_products(pool, &s.tenant_id).await?;
        let tenant = crate::store::tenants::get_tenant(pool, &s.tenant_id)
            .await?
            .map(|t| t.name)
            .unwrap_or_default();
        ApiResult::Ok((tenant, products, published))
    };
    match load.await {
        Ok((tenant, products, published)) => {
            let page = AdminPage {
                l: ctx.layout("Console"),
                nav: sections(s, "/console/admin"),
                tenant,
                can_publish,
                products: products
                    .into_iter()
                    .map(|p| ProductRow {
                        published: published.contains(&p.id),
                        models: p.models.join(", "),
                        id: p.id,
                        name: p.name,
                    })
                    .collect(),
            };
            ctx.html(StatusCode::OK, &page)
        }
        Err(e) => ctx.error(&e),
    }
}

/// `POST /console/admin/products/{id}/publish` (`published=1|0`): gated by `products:write`, as
/// the product routes of the API; writes `product.updated`.
pub async fn publish(ctx: Ctx, Path(id): Path<String>, body: Bytes) -> Response {
    let p = match posted(
        &ctx,
        &body,
        &[Permission::ProductsWrite],
        "Publishing products",
    ) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let published = p.field("published") == "1";
    let done = async {
        let mut unit = Unit::begin(&ctx.state.store, &ctx.meta).await?;
        crate::service::subscriptions::set_product_published(&mut unit, &p.caller, &id, published)
            .await?;
        unit.commit(&ctx.state.auth).await
    };
    match done.await {
        Ok(()) => ctx.redirect("/console/admin"),
        Err(e) => ctx.error(&e),
    }
}
