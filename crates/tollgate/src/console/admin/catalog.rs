//! Products, plans and subscriptions in the console, through the operations of
//! `/v1/products`, `/v1/plans` and `/v1/subscriptions`: products and their plans (any member
//! reads them; `products:write` creates them and publishes them to the portal), and every
//! subscription of the tenant (`subscriptions:read`) with suspend, reactivate and cancel
//! (`subscriptions:write`).

use std::collections::HashMap;

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery};
use axum::http::StatusCode;
use axum::response::Response;

use super::{Section, date, error_for, gate, is_form_error, posted, query_map, sections};
use crate::auth::Permission;
use crate::console::{Ctx, Session};
use crate::error::{ApiError, ApiResult};
use crate::service::Unit;
use crate::service::subscriptions as subsvc;
use crate::store::subscriptions::{self as substore, PlanLimits, Status};

// ---- products and plans ----------------------------------------------------------------------

pub struct PlanRow {
    pub id: String,
    pub name: String,
    pub limits: String,
}

pub struct ProductRow {
    pub id: String,
    pub name: String,
    pub description: String,
    pub models: String,
    pub published: bool,
    pub plans: Vec<PlanRow>,
}

pub struct ModelBox {
    pub name: String,
    pub checked: bool,
}

#[derive(Default)]
pub struct ProductForm {
    pub name: String,
    pub description: String,
    pub error: Option<String>,
    pub name_error: Option<String>,
    pub models_error: Option<String>,
}

#[derive(Default)]
pub struct PlanForm {
    pub product_id: String,
    pub name: String,
    pub limits: HashMap<String, String>,
    pub error: Option<String>,
    pub name_error: Option<String>,
    pub limits_error: Option<String>,
}

impl PlanForm {
    pub fn limit(&self, k: &str) -> String {
        self.limits.get(k).cloned().unwrap_or_default()
    }
}

/// The limit fields of a plan: (form name, label).
pub const LIMIT_FIELDS: &[(&str, &str)] = &[
    ("requests_per_minute", "Requests per minute"),
    ("tokens_per_minute", "Tokens per minute"),
    ("concurrent_requests", "Concurrent requests"),
    ("requests_per_day", "Requests per day"),
    ("tokens_per_month", "Tokens per month"),
];

#[derive(Template)]
#[template(path = "admin/products.html")]
struct ProductsPage {
    l: crate::console::Layout,
    nav: Vec<Section>,
    rows: Vec<ProductRow>,
    can_write: bool,
    models: Vec<ModelBox>,
    product: ProductForm,
    plan: PlanForm,
    limit_fields: &'static [(&'static str, &'static str)],
}

async fn products_page(
    ctx: &Ctx,
    s: &Session,
    product: ProductForm,
    checked: &[String],
    plan: PlanForm,
) -> ApiResult<ProductsPage> {
    let pool = ctx.state.store.pool();
    let published = crate::store::console::published_product_ids(pool, &s.tenant_id).await?;
    let plans = substore::list_plans(pool, &s.tenant_id, None).await?;
    let rows = substore::list_products(pool, &s.tenant_id)
        .await?
        .into_iter()
        .map(|p| ProductRow {
            published: published.contains(&p.id),
            plans: plans
                .iter()
                .filter(|pl| pl.product_id == p.id)
                .map(|pl| PlanRow {
                    id: pl.id.clone(),
                    name: pl.name.clone(),
                    limits: {
                        let words = crate::console::portal::limits_in_words(&pl.limits);
                        if words.is_empty() {
                            "no limits".into()
                        } else {
                            words.join(", ")
                        }
                    },
                })
                .collect(),
            models: p.models.join(", "),
            id: p.id,
            name: p.name,
            description: p.description,
        })
        .collect();
    let models = ctx
        .state
        .proxy
        .routes()
        .iter()
        .map(|r| ModelBox {
            checked: checked.iter().any(|c| c == r.name.as_str()),
            name: r.name.to_string(),
        })
        .collect();
    Ok(ProductsPage {
        l: ctx.layout("Products and plans"),
        nav: sections(s, "/console/admin/products"),
        rows,
        can_write: s.principal.has(Permission::ProductsWrite),
        models,
        product,
        plan,
        limit_fields: LIMIT_FIELDS,
    })
}

/// `GET /console/admin/products` (any member, as `GET /v1/products`).
pub async fn products(ctx: Ctx, RawQuery(query): RawQuery) -> Response {
    let s = match gate(&ctx, &[], "Seeing products") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let q = query_map(query.as_deref());
    match products_page(&ctx, s, ProductForm::default(), &[], PlanForm::default()).await {
        Ok(mut page) => {
            page.l.notice = super::done_notice(
                &q,
                &[
                    ("product", "The product is created."),
                    ("plan", "The plan is created."),
                    ("published", "The portal is updated."),
                ],
            );
            ctx.html(StatusCode::OK, &page)
        }
        Err(e) => ctx.error(&e),
    }
}

const WRITE: &[Permission] = &[Permission::ProductsWrite];

/// `POST /console/admin/products` (as `POST /v1/products`): writes `product.created`.
pub async fn create_product(ctx: Ctx, body: Bytes) -> Response {
    let p = match posted(&ctx, &body, WRITE, "Creating products") {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let mut form = ProductForm {
        name: p.field("name"),
        description: p.field("description"),
        ..ProductForm::default()
    };
    let models = p.values("model");
    let input = subsvc::NewProduct {
        name: form.name.clone(),
        description: (!form.description.is_empty()).then(|| form.description.clone()),
        models: models.clone(),
    };
    let result = async {
        let mut unit = Unit::begin(&ctx.state.store, &ctx.meta).await?;
        let product = subsvc::create_product(&mut unit, &p.caller, input, |m| {
            ctx.state.proxy.route(m).is_some()
        })
        .await?;
        unit.commit(&ctx.state.auth).await?;
        ApiResult::Ok(product)
    }
    .await;
    match result {
        Ok(_) => ctx.redirect("/console/admin/products?done=product"),
        Err(e) if is_form_error(&e) => {
            form.name_error = error_for(Some(&e), "name").or_else(|| {
                (e.code == crate::error::ErrorCode::Conflict).then(|| e.message.clone())
            });
            form.models_error = error_for(Some(&e), "models");
            form.error = Some(format!("The product was not created: {}", e.message));
            match products_page(&ctx, p.session, form, &models, PlanForm::default()).await {
                Ok(page) => ctx.html(e.code.status(), &page),
                Err(e) => ctx.error(&e),
            }
        }
        Err(e) => ctx.error(&e),
    }
}

/// `POST /console/admin/plans` (as `POST /v1/plans`): writes `plan.created`.
pub async fn create_plan(ctx: Ctx, body: Bytes) -> Response {
    let p = match posted(&ctx, &body, WRITE, "Creating plans") {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let mut form = PlanForm {
        product_id: p.field("product_id"),
        name: p.field("name"),
        limits: LIMIT_FIELDS
            .iter()
            .map(|(k, _)| ((*k).to_string(), p.field(k)))
            .collect(),
        ..PlanForm::default()
    };
    let result = async {
        let mut limits = serde_json::Map::new();
        for (k, _) in LIMIT_FIELDS {
            let v = form.limit(k);
            if v.is_empty() {
                continue;
            }
            let n: u64 = v.parse().map_err(|_| {
                ApiError::validation(
                    "limits",
                    "Limits are whole numbers above zero (or empty for none).",
                )
            })?;
            limits.insert((*k).to_string(), n.into());
        }
        let limits: PlanLimits = serde_json::from_value(serde_json::Value::Object(limits))
            .map_err(|_| ApiError::validation("limits", "Limits are whole numbers."))?;
        let mut unit = Unit::begin(&ctx.state.store, &ctx.meta).await?;
        let plan = subsvc::create_plan(
            &mut unit,
            &p.caller,
            subsvc::NewPlan {
                product_id: form.product_id.clone(),
                name: form.name.clone(),
                limits,
            },
        )
        .await?;
        unit.commit(&ctx.state.auth).await?;
        ApiResult::Ok(plan)
    }
    .await;
    match result {
        Ok(_) => ctx.redirect("/console/admin/products?done=plan"),
        Err(e) if is_form_error(&e) => {
            form.name_error = error_for(Some(&e), "name").or_else(|| {
                (e.code == crate::error::ErrorCode::Conflict).then(|| e.message.clone())
            });
            form.limits_error = error_for(Some(&e), "limits");
            form.error = Some(format!("The plan was not created: {}", e.message));
            match products_page(&ctx, p.session, ProductForm::default(), &[], form).await {
                Ok(page) => ctx.html(e.code.status(), &page),
                Err(e) => ctx.error(&e),
            }
        }
        Err(e) => ctx.error(&e),
    }
}

// ---- subscriptions ---------------------------------------------------------------------------

pub struct SubRow {
    pub id: String,
    pub plan: String,
    pub subscriber: String,
    pub status: String,
    pub created: String,
}

#[derive(Template)]
#[template(path = "admin/subscriptions.html")]
struct SubsPage {
    l: crate::console::Layout,
    nav: Vec<Section>,
    rows: Vec<SubRow>,
    status: String,
    can_write: bool,
}

/// `GET /console/admin/subscriptions?status=` (`subscriptions:read`, as `GET /v1/subscriptions`).
pub async fn subscriptions(ctx: Ctx, RawQuery(query): RawQuery) -> Response {
    let s = match gate(
        &ctx,
        &[Permission::SubscriptionsRead],
        "Seeing subscriptions",
    ) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let q = query_map(query.as_deref());
    let status = q
        .get("status")
        .and_then(|v| Status::parse(v))
        .map(|st| st.as_str().to_string())
        .unwrap_or_default();
    let load = async {
        let pool = ctx.state.store.pool();
        let subs = substore::list_subscriptions(pool, &s.tenant_id, None).await?;
        let plans = substore::list_plans(pool, &s.tenant_id, None).await?;
        let products = substore::list_products(pool, &s.tenant_id).await?;
        let members = crate::store::tenants::list_members(pool, &s.tenant_id).await?;
        let rows = subs
            .into_iter()
            .filter(|x| status.is_empty() || x.status.as_str() == status)
            .map(|x| {
                let plan = plans.iter().find(|p| p.id == x.plan_id);
                let product = plan.and_then(|pl| products.iter().find(|p| p.id == pl.product_id));
                SubRow {
                    plan: match (product, plan) {
                        (Some(pr), Some(pl)) => format!("{} · {}", pr.name, pl.name),
                        _ => x.plan_id.clone(),
                    },
                    subscriber: x
                        .user_id
                        .as_deref()
                        .map(|u| {
                            members
                                .iter()
                                .find(|m| m.user.id == u)
                                .map_or_else(|| u.to_string(), |m| m.user.email.clone())
                        })
                        .unwrap_or_else(|| "—".into()),
                    status: x.status.as_str().to_string(),
                    created: date(x.created_at),
                    id: x.id,
                }
            })
            .collect();
        ApiResult::Ok(rows)
    };
    match load.await {
        Ok(rows) => {
            let mut l = ctx.layout("Subscriptions");
            l.notice = super::done_notice(
                &q,
                &[
                    (
                        "suspended",
                        "The subscription is suspended; its requests in flight were cut.",
                    ),
                    ("active", "The subscription is active again."),
                    (
                        "cancelled",
                        "The subscription is cancelled; its credentials no longer work.",
                    ),
                ],
            );
            let page = SubsPage {
                l,
                nav: sections(s, "/console/admin/subscriptions"),
                rows,
                status,
                can_write: s.principal.has(Permission::SubscriptionsWrite),
            };
            ctx.html(StatusCode::OK, &page)
        }
        Err(e) => ctx.error(&e),
    }
}

const SUB_WRITE: &[Permission] = &[Permission::SubscriptionsWrite];

/// `POST /console/admin/subscriptions/{id}/status` (`status=active|suspended`, as
/// `PATCH /v1/subscriptions/{id}`): writes `subscription.suspended` or `subscription.updated`.
pub async fn set_status(ctx: Ctx, Path(id): Path<String>, body: Bytes) -> Response {
    let p = match posted(&ctx, &body, SUB_WRITE, "Changing subscriptions") {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let status = p.field("status");
    let done = async {
        let mut unit = Unit::begin(&ctx.state.store, &ctx.meta).await?;
        let changes = subsvc::SubscriptionChanges {
            status: Some(status.clone()),
            ..Default::default()
        };
        let sub = subsvc::update_subscription(&mut unit, &p.caller, &id, changes).await?;
        unit.commit(&ctx.state.auth).await?;
        ApiResult::Ok(sub)
    };
    match done.await {
        Ok(sub) => ctx.redirect(&format!(
            "/console/admin/subscriptions?done={}",
            sub.status.as_str()
        )),
        Err(e) => ctx.error(&e),
    }
}

/// `POST /console/admin/subscriptions/{id}/cancel` (as `DELETE /v1/subscriptions/{id}`):
/// writes `subscription.cancelled`.
pub async fn cancel(ctx: Ctx, Path(id): Path<String>, body: Bytes) -> Response {
    let p = match posted(&ctx, &body, SUB_WRITE, "Cancelling subscriptions") {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let done = async {
        let mut unit = Unit::begin(&ctx.state.store, &ctx.meta).await?;
        subsvc::cancel_subscription(&mut unit, &p.caller, &id).await?;
        unit.commit(&ctx.state.auth).await
    };
    match done.await {
        Ok(()) => ctx.redirect("/console/admin/subscriptions?done=cancelled"),
        Err(e) => ctx.error(&e),
    }
}
