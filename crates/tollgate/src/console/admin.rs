//! The tenant administrators' part of the console: publishing products to the portal.

use askama::Template;
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::{Ctx, parse_form};
use crate::auth::Permission;
use crate::error::{ApiError, ApiResult};
use crate::store::subscriptions as substore;
use tollgate_core::audit::{Action, Actor};

pub struct ProductRow {
    pub id: String,
    pub name: String,
    pub models: String,
    pub published: bool,
}

#[derive(Template)]
#[template(path = "admin.html")]
struct AdminPage {
    l: super::Layout,
    tenant: String,
    products: Vec<ProductRow>,
}

/// `GET /console/admin`.
pub async fn home(ctx: Ctx) -> Response {
    let Some(s) = &ctx.session else {
        return ctx.need_session();
    };
    if !s.principal.has(Permission::ProductsWrite) {
        return ctx.error(&ApiError::permission_denied(
            "The console's administration needs the products:write permission",
        ));
    }
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
            let mut l = ctx.layout("Console");
            l.notice = super::portal::notice(&ctx);
            let page = AdminPage {
                l,
                tenant,
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
    let form = parse_form(&body);
    if let Some(r) = ctx.check_csrf(&form) {
        return r;
    }
    let Some(s) = &ctx.session else {
        return ctx.need_session();
    };
    if let Err(e) = s.principal.require(Permission::ProductsWrite) {
        return ctx.error(&e);
    }
    let published = form.get("published").map(String::as_str) == Some("1");
    let done = async {
        let mut unit = crate::service::Unit::begin(&ctx.state.store, &ctx.meta).await?;
        let at = published.then(crate::util::now_ms);
        if !crate::store::console::set_product_published(unit.conn(), &s.tenant_id, &id, at).await?
        {
            return Err(ApiError::not_found("product"));
        }
        let event = unit
            .event(
                s.tenant_id.clone(),
                Actor::user(s.user_id.clone()),
                Action::ProductUpdated,
            )
            .target("product", id.clone())
            .details(json!({"changed": ["published"], "published": published}));
        unit.audit(event).await?;
        unit.commit(&ctx.state.auth).await
    };
    match done.await {
        Ok(()) => ctx.redirect("/console/admin"),
        Err(e) => ctx.error(&e),
    }
}
