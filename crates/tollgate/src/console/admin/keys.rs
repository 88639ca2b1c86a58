//! API keys in the console: the list (filters and sort in the URL), creating a key (for
//! yourself, or with `keys:admin` for a member or a subscription; shown once), a key's page,
//! rotating with a chosen grace period, revoking after a confirmation that says how many
//! requests are in flight. The gates are those of `/v1/api-keys`: `keys:write` for one's own
//! keys, `keys:admin` for any key of the tenant; another's key without `keys:admin`, or another
//! tenant's, is `404`.

use std::collections::HashMap;

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::{Section, date, error_for, gate, is_form_error, posted, query_map, sections};
use crate::auth::Permission;
use crate::console::{Ctx, Session};
use crate::error::{ApiError, ApiResult};
use crate::service::Unit;
use crate::service::keys::{self as keysvc, KeyRequest};
use crate::store::keys::{self as keystore, ApiKeyRecord, KeyRateLimit};
use crate::store::subscriptions::{self as substore, Status};
use crate::util::now_ms;

const KEY_PERMS: &[Permission] = &[Permission::KeysWrite, Permission::KeysAdmin];
const DAY_MS: i64 = 86_400_000;
/// "Unused": no use recorded in this long.
const UNUSED_MS: i64 = 30 * DAY_MS;

pub struct KeyRow {
    pub id: String,
    pub name: String,
    pub hint: String,
    pub owner: String,
    pub created: String,
    pub last_used: String,
    pub expires: String,
    pub status: String,
    pub active: bool,
}

/// The list's filters and sort, as in the URL.
#[derive(Default, Clone)]
pub struct KeyFilter {
    pub owner: String,
    pub status: String,
    pub expiring: String,
    pub unused: bool,
    pub sort: String,
}

impl KeyFilter {
    fn from_query(q: &HashMap<String, String>) -> Self {
        let pick = |name: &str, allowed: &[&str]| {
            q.get(name)
                .filter(|v| allowed.contains(&v.as_str()))
                .cloned()
                .unwrap_or_default()
        };
        Self {
            owner: q
                .get("owner")
                .filter(|v| v.len() <= 64)
                .cloned()
                .unwrap_or_default(),
            status: pick("status", &["active", "revoked", "expired"]),
            expiring: pick("expiring", &["7", "30", "90"]),
            unused: q.get("unused").is_some_and(|v| v == "1"),
            sort: pick("sort", &["name", "last_used", "expires", "created_asc"]),
        }
    }

    fn keep(&self, k: &ApiKeyRecord, now: i64) -> bool {
        let status = status_of(k, now).0;
        if !self.owner.is_empty() {
            let owner = k
                .user_id
                .as_deref()
                .or(k.subscription_id.as_deref())
                .unwrap_or_default();
            if owner != self.owner {
                return false;
            }
        }
        if !self.status.is_empty() && status != self.status {
            return false;
        }
        if let Ok(days) = self.expiring.parse::<i64>() {
            let within = k
                .expires_at
                .is_some_and(|e| e > now && e <= now.saturating_add(days.saturating_mul(DAY_MS)));
            if !within || status != "active" {
                return false;
            }
        }
        if self.unused {
            let recent = k
                .last_used_at
                .is_some_and(|t| t > now.saturating_sub(UNUSED_MS));
            if recent || status != "active" {
                return false;
            }
        }
        true
    }

    fn sort(&self, keys: &mut [ApiKeyRecord]) {
        match self.sort.as_str() {
            "name" => keys.sort_by_key(|k| k.name.to_lowercase()),
            // Most recently used first, never used last.
            "last_used" => keys.sort_by_key(|k| std::cmp::Reverse(k.last_used_at)),
            // Soonest expiry first, no expiry last.
            "expires" => keys.sort_by_key(|k| k.expires_at.unwrap_or(i64::MAX)),
            "created_asc" => keys.sort_by_key(|k| k.created_at),
            _ => keys.sort_by_key(|k| std::cmp::Reverse(k.created_at)),
        }
    }
}

/// `("active" | "revoked" | "expired", words)`.
fn status_of(k: &ApiKeyRecord, now: i64) -> (&'static str, String) {
    if let Some(r) = k.revoked_at {
        return ("revoked", format!("revoked {}", date(r)));
    }
    if k.expires_at.is_some_and(|e| e <= now) {
        return ("expired", "expired".into());
    }
    match k.prev_valid_until {
        Some(until) if until > now => (
            "active",
            format!("active · rotated, old secret works until {}", date(until)),
        ),
        _ => ("active", "active".into()),
    }
}

/// A permission the key may be narrowed to (only ones the caller holds are offered).
pub struct ScopeBox {
    pub name: &'static str,
    pub checked: bool,
}

/// The create form as filled in, and its errors.
#[derive(Default)]
pub struct KeyForm {
    pub name: String,
    pub user_id: String,
    pub subscription_id: String,
    pub expires_on: String,
    pub scoped: bool,
    pub rpm: String,
    pub tpm: String,
    pub error: Option<String>,
    pub name_error: Option<String>,
    pub owner_error: Option<String>,
    pub expires_error: Option<String>,
    pub scopes_error: Option<String>,
    pub limits_error: Option<String>,
}

#[derive(Template)]
#[template(path = "admin/keys.html")]
struct KeysPage {
    l: crate::console::Layout,
    nav: Vec<Section>,
    rows: Vec<KeyRow>,
    total: usize,
    filter: KeyFilter,
    /// `keys:admin`: every key of the tenant, keys for members.
    admin: bool,
    me: String,
    /// (user id, email) of the tenant's members.
    members: Vec<(String, String)>,
    /// (subscription id, label): `subscriptions:write` binds keys to subscriptions.
    subscriptions: Vec<(String, String)>,
    scopes: Vec<ScopeBox>,
    form: KeyForm,
}

async fn members(ctx: &Ctx, tenant_id: &str) -> ApiResult<Vec<(String, String)>> {
    Ok(
        crate::store::tenants::list_members(ctx.state.store.pool(), tenant_id)
            .await?
            .into_iter()
            .map(|m| (m.user.id, m.user.email))
            .collect(),
    )
}

async fn keys_page(
    ctx: &Ctx,
    s: &Session,
    filter: KeyFilter,
    form: KeyForm,
    checked: &[String],
) -> ApiResult<KeysPage> {
    let admin = s.principal.has(Permission::KeysAdmin);
    let pool = ctx.state.store.pool();
    let own = (!admin).then_some(s.user_id.as_str());
    let mut keys = keystore::list(pool, &s.tenant_id, own).await?;
    let total = keys.len();
    let now = now_ms();
    keys.retain(|k| filter.keep(k, now));
    filter.sort(&mut keys);
    let members = if admin {
        members(ctx, &s.tenant_id).await?
    } else {
        vec![(s.user_id.clone(), s.email.clone())]
    };
    let subscriptions = if s.principal.has(Permission::SubscriptionsWrite) {
        substore::list_subscriptions(pool, &s.tenant_id, None)
            .await?
            .into_iter()
            .filter(|x| x.status == Status::Active)
            .map(|x| {
                let label = format!("{} (plan {})", x.id, x.plan_id);
                (x.id, label)
            })
            .collect()
    } else {
        Vec::new()
    };
    let email_of = |id: &str| {
        members
            .iter()
            .find(|(u, _)| u == id)
            .map(|(_, e)| e.clone())
            .unwrap_or_else(|| id.to_string())
    };
    let rows = keys
        .iter()
        .map(|k| {
            let (st, words) = status_of(k, now);
            KeyRow {
                id: k.id.clone(),
                name: k.name.clone(),
                hint: k.hint.clone(),
                owner: match (&k.user_id, &k.subscription_id) {
                    (Some(u), _) => email_of(u),
                    (None, Some(sub)) => format!("subscription {sub}"),
                    _ => "—".into(),
                },
                created: date(k.created_at),
                last_used: k.last_used_at.map_or_else(|| "never".into(), date),
                expires: k.expires_at.map_or_else(|| "never".into(), date),
                status: words,
                active: st == "active",
            }
        })
        .collect();
    let scopes = s
        .principal
        .permissions
        .iter()
        .map(|p| ScopeBox {
            name: p.as_str(),
            checked: checked.iter().any(|c| c == p.as_str()),
        })
        .collect();
    Ok(KeysPage {
        l: ctx.layout("API keys"),
        nav: sections(s, "/console/admin/keys"),
        rows,
        total,
        filter,
        admin,
        me: s.user_id.clone(),
        members,
        subscriptions,
        scopes,
        form,
    })
}

/// `GET /console/admin/keys?owner&status&expiring&unused&sort`.
pub async fn list(ctx: Ctx, RawQuery(query): RawQuery) -> Response {
    let s = match gate(&ctx, KEY_PERMS, "Managing API keys") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let q = query_map(query.as_deref());
    let form = KeyForm {
        user_id: s.user_id.clone(),
        ..KeyForm::default()
    };
    match keys_page(&ctx, s, KeyFilter::from_query(&q), form, &[]).await {
        Ok(mut page) => {
            page.l.notice = super::done_notice(
                &q,
                &[("revoked", "The key is revoked; requests using it were cut.")],
            );
            ctx.html(StatusCode::OK, &page)
        }
        Err(e) => ctx.error(&e),
    }
}

fn parse_limit(v: &str) -> Result<Option<u32>, ()> {
    if v.is_empty() {
        return Ok(None);
    }
    match v.parse::<u32>() {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => Err(()),
    }
}

/// `POST /console/admin/keys`: the new key's secret goes to the one-shot flash, and the browser
/// to the key's page (POST-redirect-GET: a reload does not show it again).
pub async fn create(ctx: Ctx, body: Bytes) -> Response {
    let p = match posted(&ctx, &body, KEY_PERMS, "Managing API keys") {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let s = p.session;
    let mut form = KeyForm {
        name: p.field("name"),
        user_id: p.field("user_id"),
        subscription_id: p.field("subscription_id"),
        expires_on: p.field("expires_on"),
        scoped: p.field("scoped") == "1",
        rpm: p.field("requests_per_minute"),
        tpm: p.field("tokens_per_minute"),
        ..KeyForm::default()
    };
    let checked = p.values("scope");
    let rpm = parse_limit(&form.rpm);
    let tpm = parse_limit(&form.tpm);
    let expires_at = if form.expires_on.is_empty() {
        None
    } else {
        Some(format!("{}T23:59:59Z", form.expires_on))
    };
    let local_error = if rpm.is_err() || tpm.is_err() {
        Some(ApiError::validation(
            "rate_limit",
            "Limits are whole numbers above zero (or empty for none).",
        ))
    } else if form.scoped && checked.is_empty() {
        Some(ApiError::validation(
            "scopes",
            "Choose at least one permission, or let the key follow its owner's roles.",
        ))
    } else if expires_at
        .as_deref()
        .is_some_and(|e| crate::util::parse_rfc3339(e).is_none())
    {
        Some(ApiError::validation(
            "expires_at",
            "Enter the expiry as a date (YYYY-MM-DD).",
        ))
    } else {
        None
    };
    let result = match local_error {
        Some(e) => Err(e),
        None => {
            let (rpm, tpm) = (rpm.unwrap_or(None), tpm.unwrap_or(None));
            let rate_limit = (rpm.is_some() || tpm.is_some()).then(|| KeyRateLimit {
                requests_per_minute: rpm,
                tokens_per_minute: tpm,
                ..KeyRateLimit::default()
            });
            let req = KeyRequest {
                name: form.name.clone(),
                expires_at,
                scopes: form.scoped.then(|| checked.clone()),
                rate_limit,
                subscription_id: (!form.subscription_id.is_empty())
                    .then(|| form.subscription_id.clone()),
                // The form always names an owner; a subscription's key has none.
                user_id: (!form.user_id.is_empty() && form.subscription_id.is_empty())
                    .then(|| form.user_id.clone()),
            };
            async {
                let mut unit = Unit::begin(&ctx.state.store, &ctx.meta).await?;
                let out = keysvc::create_as(&mut unit, ctx.state.auth.key_prefix(), &p.caller, req)
                    .await?;
                unit.commit(&ctx.state.auth).await?;
                ApiResult::Ok(out)
            }
            .await
        }
    };
    match result {
        Ok((rec, secret)) => {
            let flash = json!({"key_id": rec.id, "title": "Your new API key",
                "value": secret.plaintext});
            if let Err(e) = s.set_flash(&ctx.state, &flash).await {
                return ctx.error(&e);
            }
            ctx.redirect(&format!("/console/admin/keys/{}", rec.id))
        }
        Err(e) if is_form_error(&e) => {
            let status = e.code.status();
            form.name_error = error_for(Some(&e), "name");
            form.owner_error =
                error_for(Some(&e), "user_id").or_else(|| error_for(Some(&e), "subscription_id"));
            form.expires_error = error_for(Some(&e), "expires_at");
            form.scopes_error = error_for(Some(&e), "scopes");
            form.limits_error = error_for(Some(&e), "rate_limit");
            let placed = form.name_error.is_some()
                || form.owner_error.is_some()
                || form.expires_error.is_some()
                || form.scopes_error.is_some()
                || form.limits_error.is_some();
            form.error = Some(if placed {
                "The key was not created: correct the fields marked below.".into()
            } else {
                format!("The key was not created: {}", e.message)
            });
            match keys_page(&ctx, s, KeyFilter::default(), form, &checked).await {
                Ok(page) => ctx.html(status, &page),
                Err(e) => ctx.error(&e),
            }
        }
        Err(e) => ctx.error(&e),
    }
}

pub struct Shown {
    pub title: String,
    pub value: String,
}

#[derive(Template)]
#[template(path = "admin/key.html")]
struct KeyPage {
    l: crate::console::Layout,
    nav: Vec<Section>,
    k: KeyRow,
    scopes: String,
    limits: String,
    created_by: String,
    in_flight: usize,
    shown: Option<Shown>,
    rotate_error: Option<String>,
    chart: Option<KeyChart>,
    uplot_css: String,
    uplot_js: String,
    chart_js: String,
}

/// The key's requests and tokens per hour over the last 24 hours.
pub struct KeyChart {
    pub x: String,
    pub requests: String,
    pub tokens: String,
    pub total_requests: u64,
    pub total_tokens: u64,
}

/// From `GET /v1/usage` for the caller (`None` without `usage:read`).
async fn key_chart(ctx: &Ctx, s: &Session, key_id: &str) -> Option<KeyChart> {
    let mut q = HashMap::new();
    q.insert("from".to_string(), ((now_ms() - DAY_MS) / 1000).to_string());
    q.insert("granularity".to_string(), "hour".to_string());
    q.insert("group_by".to_string(), "api_key".to_string());
    let answer = crate::usage::api::usage(&ctx.state, &s.caller(), &q)
        .await
        .ok()?;
    let mut points: Vec<(i64, u64, u64)> = answer["data"]
        .as_array()?
        .iter()
        .filter(|b| b["api_key"].as_str() == Some(key_id))
        .map(|b| {
            let t = b["start_time"]
                .as_str()
                .and_then(crate::util::parse_rfc3339)
                .unwrap_or_default()
                / 1000;
            (
                t,
                b["requests"].as_u64().unwrap_or(0),
                b["total_tokens"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    points.sort_by_key(|p| p.0);
    let join =
        |f: &dyn Fn(&(i64, u64, u64)) -> String| points.iter().map(f).collect::<Vec<_>>().join(",");
    Some(KeyChart {
        x: join(&|p| p.0.to_string()),
        requests: join(&|p| p.1.to_string()),
        tokens: join(&|p| p.2.to_string()),
        total_requests: points.iter().map(|p| p.1).sum(),
        total_tokens: points.iter().map(|p| p.2).sum(),
    })
}

/// The key `id` as the caller may manage it, else 404 (as `GET /v1/api-keys/{id}`).
async fn manageable(ctx: &Ctx, s: &Session, id: &str) -> ApiResult<ApiKeyRecord> {
    let mut conn = ctx
        .state
        .store
        .pool()
        .acquire()
        .await
        .map_err(crate::store::StoreError::from)?;
    keysvc::load_manageable(&mut conn, &s.caller(), id).await
}

async fn key_page(
    ctx: &Ctx,
    s: &Session,
    rec: ApiKeyRecord,
    shown: Option<Shown>,
) -> ApiResult<KeyPage> {
    let now = now_ms();
    let (st, words) = status_of(&rec, now);
    let members = members(ctx, &s.tenant_id).await?;
    let email_of = |id: &str| {
        members
            .iter()
            .find(|(u, _)| u == id)
            .map(|(_, e)| e.clone())
            .unwrap_or_else(|| id.to_string())
    };
    let limits = match &rec.rate_limit {
        None => "none of its own (the owner's, the plan's and the tenant's apply)".into(),
        Some(rl) => {
            let mut parts = Vec::new();
            if let Some(n) = rl.requests_per_minute {
                parts.push(format!("{n} requests per minute"));
            }
            if let Some(n) = rl.tokens_per_minute {
                parts.push(format!("{n} tokens per minute"));
            }
            if let Some(n) = rl.concurrent_requests {
                parts.push(format!("{n} concurrent requests"));
            }
            if let Some(n) = rl.requests_per_day {
                parts.push(format!("{n} requests per day"));
            }
            if let Some(n) = rl.tokens_per_month {
                parts.push(format!("{n} tokens per month"));
            }
            parts.join(", ")
        }
    };
    Ok(KeyPage {
        l: ctx.layout(&format!("API key {}", rec.name)),
        nav: sections(s, "/console/admin/keys"),
        scopes: match &rec.scopes {
            None => "follows its owner's roles".into(),
            Some(sc) => sc.join(" "),
        },
        limits,
        created_by: rec.created_by.as_deref().map(email_of).unwrap_or_default(),
        in_flight: ctx.state.auth.hub().live_count(&rec.id),
        chart: key_chart(ctx, s, &rec.id).await,
        uplot_css: crate::console::assets::url("uplot-1.6.32.min.css"),
        uplot_js: crate::console::assets::url("uplot-1.6.32.iife.min.js"),
        chart_js: crate::console::assets::url("chart.js"),
        k: KeyRow {
            owner: match (&rec.user_id, &rec.subscription_id) {
                (Some(u), _) => email_of(u),
                (None, Some(sub)) => format!("subscription {sub}"),
                _ => "—".into(),
            },
            created: date(rec.created_at),
            last_used: rec.last_used_at.map_or_else(|| "never".into(), date),
            expires: rec.expires_at.map_or_else(|| "never".into(), date),
            status: words,
            active: st == "active",
            id: rec.id,
            name: rec.name,
            hint: rec.hint,
        },
        shown,
        rotate_error: None,
    })
}

/// `GET /console/admin/keys/{id}`: the key, and its secret once, right after it was created or
/// rotated.
pub async fn show(ctx: Ctx, Path(id): Path<String>, RawQuery(query): RawQuery) -> Response {
    let s = match gate(&ctx, KEY_PERMS, "Managing API keys") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let rec = match manageable(&ctx, s, &id).await {
        Ok(r) => r,
        Err(e) => return ctx.error(&e),
    };
    let shown = match s
        .take_flash_for(&ctx.state, |f| {
            f["key_id"].as_str() == Some(rec.id.as_str())
        })
        .await
    {
        Ok(Some(f)) => Some(Shown {
            title: f["title"].as_str().unwrap_or_default().to_string(),
            value: f["value"].as_str().unwrap_or_default().to_string(),
        }),
        Ok(_) => None,
        Err(e) => return ctx.error(&e),
    };
    let q = query_map(query.as_deref());
    match key_page(&ctx, s, rec, shown).await {
        Ok(mut page) => {
            page.l.notice = super::done_notice(&q, &[("rotated", "The key has a new secret.")]);
            ctx.html(StatusCode::OK, &page)
        }
        Err(e) => ctx.error(&e),
    }
}

#[derive(Template)]
#[template(path = "admin/key_revoke.html")]
struct RevokePage {
    l: crate::console::Layout,
    nav: Vec<Section>,
    id: String,
    name: String,
    hint: String,
    in_flight: usize,
}

/// `GET /console/admin/keys/{id}/revoke`: the confirmation, with the requests in flight now.
pub async fn revoke_page(ctx: Ctx, Path(id): Path<String>) -> Response {
    let s = match gate(&ctx, KEY_PERMS, "Managing API keys") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let rec = match manageable(&ctx, s, &id).await {
        Ok(r) => r,
        Err(e) => return ctx.error(&e),
    };
    if rec.revoked_at.is_some() {
        return ctx.redirect(&format!("/console/admin/keys/{}", rec.id));
    }
    let page = RevokePage {
        l: ctx.layout(&format!("Revoke {}", rec.name)),
        nav: sections(s, "/console/admin/keys"),
        in_flight: ctx.state.auth.hub().live_count(&rec.id),
        id: rec.id,
        name: rec.name,
        hint: rec.hint,
    };
    ctx.html(StatusCode::OK, &page)
}

/// `POST /console/admin/keys/{id}/revoke`: as `DELETE /v1/api-keys/{id}` (`api_key.revoked`;
/// requests in flight with it are cut).
pub async fn revoke(ctx: Ctx, Path(id): Path<String>, body: Bytes) -> Response {
    let p = match posted(&ctx, &body, KEY_PERMS, "Managing API keys") {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let done = async {
        let mut unit = Unit::begin(&ctx.state.store, &ctx.meta).await?;
        let rec = keysvc::revoke_as(&mut unit, &p.caller, &id).await?;
        unit.commit(&ctx.state.auth).await?;
        ApiResult::Ok(rec)
    };
    match done.await {
        Ok(_) => ctx.redirect("/console/admin/keys?done=revoked"),
        Err(e) => ctx.error(&e),
    }
}

/// `POST /console/admin/keys/{id}/rotate` (`grace_period_seconds`): as
/// `POST /v1/api-keys/{id}/rotate`; the new secret is shown once on the key's page.
pub async fn rotate(ctx: Ctx, Path(id): Path<String>, body: Bytes) -> Response {
    let p = match posted(&ctx, &body, KEY_PERMS, "Managing API keys") {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let s = p.session;
    let grace = p.field("grace_period_seconds");
    let done = async {
        let grace: u64 = if grace.is_empty() {
            0
        } else {
            grace.parse().map_err(|_| {
                ApiError::validation(
                    "grace_period_seconds",
                    "Choose how long the old secret keeps working.",
                )
            })?
        };
        let mut unit = Unit::begin(&ctx.state.store, &ctx.meta).await?;
        let out = keysvc::rotate_as(
            &mut unit,
            ctx.state.auth.key_prefix(),
            &p.caller,
            &id,
            grace,
        )
        .await?;
        unit.commit(&ctx.state.auth).await?;
        ApiResult::Ok(out)
    };
    match done.await {
        Ok((rec, secret)) => {
            let flash = json!({"key_id": rec.id, "title": "The key's new secret",
                "value": secret.plaintext});
            if let Err(e) = s.set_flash(&ctx.state, &flash).await {
                return ctx.error(&e);
            }
            ctx.redirect(&format!("/console/admin/keys/{}?done=rotated", rec.id))
        }
        Err(e) if is_form_error(&e) => {
            let status = e.code.status();
            let rec = match manageable(&ctx, s, &id).await {
                Ok(r) => r,
                Err(e) => return ctx.error(&e),
            };
            match key_page(&ctx, s, rec, None).await {
                Ok(mut page) => {
                    page.rotate_error = Some(e.message);
                    ctx.html(status, &page)
                }
                Err(e) => ctx.error(&e),
            }
        }
        Err(e) => ctx.error(&e),
    }
}
