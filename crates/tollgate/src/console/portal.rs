//! The developer portal: sign-up (joining the portal tenant with the `consumer` role), email
//! verification, password reset, the catalogue of published products, subscriptions and their
//! credentials. A consumer sees only their own subscriptions: another one's is `404`, as between
//! tenants. Subscription changes go through the same operations as `/v1/subscriptions`.

use std::collections::HashMap;

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::session::{begin_login, portal_tenant};
use super::{AuthForms, Ctx, parse_form};
use crate::error::{ApiError, ApiResult};
use crate::identity::accounts::{PURPOSE_RESET, PURPOSE_VERIFY};
use crate::identity::oauth::secret_hash;
use crate::service::Unit;
use crate::service::subscriptions as subsvc;
use crate::store::identity as idstore;
use crate::store::subscriptions::{self as substore, PlanLimits, Product, Subscription};
use crate::store::tenants;
use crate::util::now_ms;
use tollgate_core::audit::{Action, Actor};

const VERIFY_TTL_MS: i64 = 24 * 3_600_000;
const RESET_TTL_MS: i64 = 3_600_000;

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.to_string())
}

/// The fixed confirmation a redirect asks for (`?done=…`); nothing of the URL is echoed.
pub fn notice(ctx: &Ctx) -> Option<String> {
    let _ = ctx;
    None
}

fn notice_for(done: Option<&str>) -> Option<String> {
    Some(
        match done? {
            "password" => "Your password is set.",
            "logout" => "You are logged out.",
            "cancelled" => "The subscription is cancelled; its credentials no longer work.",
            "revoked" => "The credential is revoked.",
            _ => return None,
        }
        .to_string(),
    )
}

/// The sign-up / log-in forms; sets the cookies of a new sign-in attempt.
async fn auth_forms(ctx: &mut Ctx, tab: &str) -> ApiResult<AuthForms> {
    let tenant = portal_tenant(&ctx.state).await?;
    let (query, cookie) = begin_login(ctx, &tenant.id).await?;
    let login_csrf = crate::util::random_base62(32);
    ctx.set_cookies.push(cookie);
    ctx.set_cookies
        .push(crate::identity::login::csrf_cookie(&ctx.state, &login_csrf));
    Ok(AuthForms {
        tab: if tab == "signup" { "signup" } else { "login" }.to_string(),
        open_signup: ctx.state.config.auth.open_signup,
        login_action: format!("/oauth/authorize?{query}"),
        login_csrf,
        login_email: String::new(),
        signup_email: String::new(),
        signup_error: None,
        signup_email_error: None,
        signup_password_error: None,
    })
}

#[derive(Template)]
#[template(path = "auth.html")]
struct AuthPage {
    l: super::Layout,
    form: Option<AuthForms>,
}

/// `GET /console/auth?tab=signup|login`: the dialog's forms as a page (without JavaScript).
pub async fn auth_page(mut ctx: Ctx, RawQuery(query): RawQuery) -> Response {
    let tab = query_param(query.as_deref(), "tab").unwrap_or_else(|| "login".into());
    match auth_forms(&mut ctx, &tab).await {
        Ok(form) => {
            let page = AuthPage {
                l: ctx.layout("Sign up or log in"),
                form: Some(form),
            };
            ctx.html(StatusCode::OK, &page)
        }
        Err(e) => ctx.error(&e),
    }
}

// ---- sign-up, verification, reset ------------------------------------------------------------

/// `POST /console/signup`: a consumer account in the portal tenant, unverified until the link
/// sent by email is opened. The answer is the same whether or not the address is registered.
pub async fn signup(mut ctx: Ctx, body: Bytes) -> Response {
    let form = parse_form(&body);
    if let Some(r) = ctx.check_csrf(&form) {
        return r;
    }
    if !ctx.state.config.auth.open_signup {
        return ctx.error(&ApiError::permission_denied(
            "Sign-up is closed on this gateway",
        ));
    }
    let email_raw = form.get("email").cloned().unwrap_or_default();
    let password = form.get("password").cloned().unwrap_or_default();
    let email = crate::service::users::validate_email(&email_raw);
    let pw = crate::passwords::validate(&password);
    if email.is_err() || pw.is_err() {
        let mut forms = match auth_forms(&mut ctx, "signup").await {
            Ok(f) => f,
            Err(e) => return ctx.error(&e),
        };
        forms.signup_email = email_raw.trim().to_string();
        forms.signup_email_error = email
            .err()
            .map(|_| "Enter a valid email address, like name@example.com.".to_string());
        forms.signup_password_error = pw
            .err()
            .map(|e| format!("Choose another password: {}.", e.message));
        forms.signup_error = Some("The account was not created: correct the fields below.".into());
        let page = AuthPage {
            l: ctx.layout("Sign up or log in"),
            form: Some(forms),
        };
        return ctx.html(StatusCode::UNPROCESSABLE_ENTITY, &page);
    }
    let Ok(email) = email else {
        return ctx.error(&ApiError::validation("email", "invalid email"));
    };
    // The same limit as the API's sign-up: the portal cannot be used to flood a mailbox.
    if let Err(e) = crate::identity::accounts::email_quota(&ctx.state, &email, &ctx.meta) {
        return ctx.error(&e);
    }
    match create_consumer(&ctx, &email, &password).await {
        Ok(()) => ctx.message(
            StatusCode::OK,
            "Check your email",
            "We sent a message to finish signing up: open the link in it to verify your address, then log in.",
            false,
            None,
        ),
        Err(e) => ctx.error(&e),
    }
}

async fn create_consumer(ctx: &Ctx, email: &str, password: &str) -> ApiResult<()> {
    let state = &ctx.state;
    let mailer = state.auth.identity.mailer(&state.config)?;
    let tenant = portal_tenant(state).await?;
    let hash = crate::passwords::hash(password).await?;
    let token = crate::util::random_base62(43);
    let mut unit = crate::service::Unit::begin(&state.store, &ctx.meta).await?;
    if tenants::find_user_by_email(unit.conn(), email)
        .await?
        .is_some()
    {
        // Known address: nothing changes, and the page says the same as for a new one; only
        // the mailbox's owner learns that someone tried.
        drop(unit);
        let public = &state.config.public_url;
        let text = format!(
            "Someone (perhaps you) tried to sign up for the developer portal at {public}/console with this email address, which already has an account. Nothing was changed.\n\nIf it was you, log in as usual, or reset your password at {public}/console/reset.\n\nIf it was not you, ignore this message; your account is unchanged.\n"
        );
        if let Err(e) = mailer
            .send(
                email,
                "Someone tried to sign up with your email address",
                text,
            )
            .await
        {
            tracing::error!(error = %e, "could not send the sign-up notice email");
        }
        return Ok(());
    }
    let user = tenants::create_user(unit.conn(), email, "", Some(hash), false).await?;
    tenants::add_membership(unit.conn(), &tenant.id, &user.id).await?;
    tenants::set_member_roles(unit.conn(), &tenant.id, &user.id, &["consumer".to_string()]).await?;
    idstore::mark_signup_pending(unit.conn(), &user.id).await?;
    idstore::insert_email_token(
        unit.conn(),
        &secret_hash(&token),
        &user.id,
        PURPOSE_VERIFY,
        now_ms() + VERIFY_TTL_MS,
    )
    .await?;
    let event = unit
        .event(
            tenant.id.clone(),
            Actor::user(user.id.clone()),
            Action::UserSignedUp,
        )
        .target("user", user.id.clone())
        .details(json!({"email": user.email, "portal": true, "roles": ["consumer"]}));
    unit.audit(event).await?;
    unit.commit(&state.auth).await?;
    let link = format!("{}/console/verify?token={token}", state.config.public_url);
    let text = format!(
        "Welcome to the developer portal.\n\nPlease confirm your email address by opening this link (valid for 24 hours):\n\n{link}\n\nIf you did not sign up, ignore this message.\n"
    );
    if let Err(e) = mailer
        .send(&user.email, "Verify your email address", text)
        .await
    {
        tracing::error!(error = %e, user = %user.id, "could not send the verification email");
    }
    Ok(())
}

/// `GET /console/verify?token=…`.
pub async fn verify(ctx: Ctx, RawQuery(query): RawQuery) -> Response {
    let token = query_param(query.as_deref(), "token").unwrap_or_default();
    let done = async {
        let mut unit = crate::service::Unit::begin(&ctx.state.store, &ctx.meta).await?;
        if crate::identity::accounts::verify_email_in(&mut unit, &token)
            .await?
            .is_none()
        {
            return Ok(false);
        }
        unit.commit(&ctx.state.auth).await?;
        ApiResult::Ok(true)
    };
    match done.await {
        Ok(true) => ctx.message(
            StatusCode::OK,
            "Email verified",
            "Your address is confirmed. You can now log in.",
            false,
            Some(("/console/auth?tab=login", "Log in")),
        ),
        Ok(false) => ctx.message(
            StatusCode::GONE,
            "This link has expired",
            "The verification link is invalid, was already used or is older than 24 hours. If your address is not verified yet, sign up again or reset your password.",
            true,
            Some(("/console/auth?tab=login", "Log in")),
        ),
        Err(e) => ctx.error(&e),
    }
}

#[derive(Template)]
#[template(path = "reset.html")]
struct ResetPage {
    l: super::Layout,
    email: String,
    email_error: Option<String>,
}

/// `GET /console/reset`.
pub async fn reset_page(ctx: Ctx) -> Response {
    let page = ResetPage {
        l: ctx.layout("Reset your password"),
        email: String::new(),
        email_error: None,
    };
    ctx.html(StatusCode::OK, &page)
}

/// `POST /console/reset`: emails a reset link when the address is registered (the page does not
/// say whether it is).
pub async fn reset_request(ctx: Ctx, body: Bytes) -> Response {
    let form = parse_form(&body);
    if let Some(r) = ctx.check_csrf(&form) {
        return r;
    }
    let raw = form.get("email").cloned().unwrap_or_default();
    let Ok(email) = crate::service::users::validate_email(&raw) else {
        let page = ResetPage {
            l: ctx.layout("Reset your password"),
            email: raw.trim().to_string(),
            email_error: Some("Enter a valid email address, like name@example.com.".into()),
        };
        return ctx.html(StatusCode::UNPROCESSABLE_ENTITY, &page);
    };
    let done = async {
        let state = &ctx.state;
        crate::identity::accounts::email_quota(state, &email, &ctx.meta)?;
        let mailer = state.auth.identity.mailer(&state.config)?;
        let token = crate::util::random_base62(43);
        let mut unit = crate::service::Unit::begin(&state.store, &ctx.meta).await?;
        let Some(user) = tenants::find_user_by_email(unit.conn(), &email).await? else {
            return Ok(());
        };
        idstore::insert_email_token(
            unit.conn(),
            &secret_hash(&token),
            &user.id,
            PURPOSE_RESET,
            now_ms() + RESET_TTL_MS,
        )
        .await?;
        for tenant_id in idstore::user_tenant_ids(unit.conn(), &user.id).await? {
            let event = unit
                .event(
                    tenant_id,
                    Actor::user(user.id.clone()),
                    Action::AuthPasswordResetRequested,
                )
                .target("user", user.id.clone());
            unit.audit(event).await?;
        }
        unit.commit(&state.auth).await?;
        let link = format!(
            "{}/console/reset/confirm?token={token}",
            state.config.public_url
        );
        let text = format!(
            "A password reset was requested for your account.\n\nChoose a new password here (valid for 1 hour):\n\n{link}\n\nIf you did not ask for this, ignore this message; your password is unchanged.\n"
        );
        if let Err(e) = mailer.send(&user.email, "Reset your password", text).await {
            tracing::error!(error = %e, "could not send the password reset email");
        }
        ApiResult::Ok(())
    };
    match done.await {
        Ok(()) => ctx.message(
            StatusCode::OK,
            "Check your email",
            "If this address has an account, we sent it a link to choose a new password (valid for 1 hour).",
            false,
            None,
        ),
        Err(e) => ctx.error(&e),
    }
}

fn reset_form(ctx: &Ctx, token: &str) -> super::session::PasswordPage {
    super::session::PasswordPage {
        l: ctx.layout("Choose a new password"),
        heading: "Choose a new password".into(),
        intro: "Choosing a new password also signs you out everywhere.".into(),
        action: "/console/reset/confirm".into(),
        token: token.to_string(),
        form_error: None,
        password_error: None,
        confirm_error: None,
    }
}

/// `GET /console/reset/confirm?token=…`.
pub async fn reset_confirm_page(ctx: Ctx, RawQuery(query): RawQuery) -> Response {
    let token = query_param(query.as_deref(), "token").unwrap_or_default();
    ctx.html(StatusCode::OK, &reset_form(&ctx, &token))
}

/// `POST /console/reset/confirm`: the new password; every session of the user is revoked.
pub async fn reset_confirm(ctx: Ctx, body: Bytes) -> Response {
    let form = parse_form(&body);
    if let Some(r) = ctx.check_csrf(&form) {
        return r;
    }
    let token = form.get("token").cloned().unwrap_or_default();
    let password = match super::session::check_new_password(&form) {
        Ok(p) => p,
        Err((p, c)) => {
            let mut page = reset_form(&ctx, &token);
            page.password_error = p;
            page.confirm_error = c;
            return ctx.html(StatusCode::UNPROCESSABLE_ENTITY, &page);
        }
    };
    let done = async {
        let hash = crate::passwords::hash(&password).await?;
        let mut unit = crate::service::Unit::begin(&ctx.state.store, &ctx.meta).await?;
        if crate::identity::accounts::reset_password_in(&mut unit, &token, &hash)
            .await?
            .is_none()
        {
            return Ok(false);
        }
        unit.commit(&ctx.state.auth).await?;
        ApiResult::Ok(true)
    };
    match done.await {
        Ok(true) => ctx.message(
            StatusCode::OK,
            "Password changed",
            "Your new password is set. Log in with it.",
            false,
            Some(("/console/auth?tab=login", "Log in")),
        ),
        Ok(false) => ctx.message(
            StatusCode::GONE,
            "This link has expired",
            "The reset link is invalid, was already used or is older than one hour. Ask for a new one.",
            true,
            Some(("/console/reset", "Reset your password")),
        ),
        Err(e) => ctx.error(&e),
    }
}

// ---- the catalogue ------------------------------------------------------------------------------

pub struct ProductCard {
    pub id: String,
    pub name: String,
    pub description: String,
    pub models: String,
}

#[derive(Template)]
#[template(path = "catalog.html")]
struct CatalogPage {
    l: super::Layout,
    products: Vec<ProductCard>,
}

async fn published_products(ctx: &Ctx) -> ApiResult<(String, Vec<Product>)> {
    let tenant = portal_tenant(&ctx.state).await?;
    let pool = ctx.state.store.pool();
    let ids = crate::store::console::published_product_ids(pool, &tenant.id).await?;
    let products = substore::list_products(pool, &tenant.id)
        .await?
        .into_iter()
        .filter(|p| ids.contains(&p.id))
        .collect();
    Ok((tenant.id, products))
}

/// `GET /console`: the administrators' console for them, the portal for everyone else.
pub async fn home(ctx: Ctx, RawQuery(query): RawQuery) -> Response {
    if let Some(s) = &ctx.session
        && s.principal.has(crate::auth::Permission::ProductsWrite)
        && query_param(query.as_deref(), "done").is_none()
    {
        return ctx.redirect("/console/admin");
    }
    render_catalog(
        ctx,
        notice_for(query_param(query.as_deref(), "done").as_deref()),
    )
    .await
}

/// `GET /console/portal`.
pub async fn catalog(ctx: Ctx) -> Response {
    render_catalog(ctx, None).await
}

async fn render_catalog(mut ctx: Ctx, notice: Option<String>) -> Response {
    let products = match published_products(&ctx).await {
        Ok((_, p)) => p,
        Err(e) => return ctx.error(&e),
    };
    let dialog = if ctx.session.is_none() {
        match auth_forms(&mut ctx, "login").await {
            Ok(f) => Some(f),
            Err(e) => return ctx.error(&e),
        }
    } else {
        None
    };
    let mut l = ctx.layout("API catalog");
    l.notice = notice;
    l.dialog = dialog;
    let page = CatalogPage {
        l,
        products: products
            .into_iter()
            .map(|p| ProductCard {
                models: p.models.join(", "),
                id: p.id,
                name: p.name,
                description: p.description,
            })
            .collect(),
    };
    ctx.html(StatusCode::OK, &page)
}

/// A plan's limits and quotas in words.
pub fn limits_in_words(l: &PlanLimits) -> Vec<String> {
    let v = serde_json::to_value(l).unwrap_or(Value::Null);
    let n = |k: &str| v.get(k).and_then(Value::as_u64);
    let mut out = Vec::new();
    let fmt = |x: u64| {
        let s = x.to_string();
        let mut o = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                o.push(',');
            }
            o.push(c);
        }
        o
    };
    if let Some(x) = n("requests_per_minute") {
        out.push(format!("Up to {} requests per minute", fmt(x)));
    }
    if let Some(x) = n("tokens_per_minute") {
        out.push(format!("Up to {} tokens per minute", fmt(x)));
    }
    if let Some(x) = n("concurrent_requests") {
        out.push(format!("At most {} requests at the same time", fmt(x)));
    }
    if let Some(x) = n("requests_per_day") {
        out.push(format!("{} requests per day", fmt(x)));
    }
    if let Some(x) = n("tokens_per_month") {
        out.push(format!("{} tokens per month", fmt(x)));
    }
    if out.is_empty() {
        out.push("No limits beyond the gateway's own".into());
    }
    out
}

pub struct PlanCard {
    pub id: String,
    pub name: String,
    pub limits: Vec<String>,
}

#[derive(Template)]
#[template(path = "product.html")]
struct ProductPage {
    l: super::Layout,
    name: String,
    description: String,
    models: String,
    plans: Vec<PlanCard>,
    signed_in: bool,
}

/// `GET /console/portal/products/{id}`: only published products exist here.
pub async fn product(mut ctx: Ctx, Path(id): Path<String>) -> Response {
    let (tenant_id, products) = match published_products(&ctx).await {
        Ok(x) => x,
        Err(e) => return ctx.error(&e),
    };
    let Some(p) = products.into_iter().find(|p| p.id == id) else {
        return ctx.error(&ApiError::not_found("product"));
    };
    let plans = match substore::list_plans(ctx.state.store.pool(), &tenant_id, Some(&p.id)).await {
        Ok(x) => x,
        Err(e) => return ctx.error(&e.into()),
    };
    let dialog = if ctx.session.is_none() {
        match auth_forms(&mut ctx, "login").await {
            Ok(f) => Some(f),
            Err(e) => return ctx.error(&e),
        }
    } else {
        None
    };
    let mut l = ctx.layout(&p.name);
    l.dialog = dialog;
    let page = ProductPage {
        l,
        signed_in: ctx.session.is_some(),
        models: p.models.join(", "),
        name: p.name,
        description: p.description,
        plans: plans
            .into_iter()
            .map(|pl| PlanCard {
                limits: limits_in_words(&pl.limits),
                id: pl.id,
                name: pl.name,
            })
            .collect(),
    };
    ctx.html(StatusCode::OK, &page)
}

// ---- subscriptions --------------------------------------------------------------------------------

/// The session's own subscription `id` in the portal: another person's is `404`.
async fn own_subscription(ctx: &Ctx, id: &str) -> ApiResult<Subscription> {
    let Some(s) = &ctx.session else {
        return Err(ApiError::auth_missing());
    };
    let mut conn = ctx
        .state
        .store
        .pool()
        .acquire()
        .await
        .map_err(crate::store::StoreError::from)?;
    substore::get_subscription(&mut conn, &s.tenant_id, id)
        .await?
        .filter(|sub| sub.user_id.as_deref() == Some(s.user_id.as_str()))
        .ok_or_else(|| ApiError::not_found("subscription"))
}

/// The session's own subscription in `unit`, checked before an operation changes it.
async fn own_in_unit(
    unit: &mut Unit<'_>,
    caller: &crate::auth::middleware::Caller,
    user_id: &str,
    id: &str,
) -> ApiResult<Subscription> {
    let sub = subsvc::load(unit.conn(), caller, id).await?;
    if sub.user_id.as_deref() != Some(user_id) {
        return Err(ApiError::not_found("subscription"));
    }
    Ok(sub)
}

/// `POST /console/portal/subscribe` (`plan_id`): a plan of a published product only.
pub async fn subscribe(ctx: Ctx, body: Bytes) -> Response {
    let form = parse_form(&body);
    if let Some(r) = ctx.check_csrf(&form) {
        return r;
    }
    let Some(s) = &ctx.session else {
        return ctx.need_session();
    };
    let plan_id = form.get("plan_id").cloned().unwrap_or_default();
    let done = async {
        let (tenant_id, products) = published_products(&ctx).await?;
        if tenant_id != s.tenant_id {
            return Err(ApiError::not_found("plan"));
        }
        let plan = {
            let mut conn = ctx
                .state
                .store
                .pool()
                .acquire()
                .await
                .map_err(crate::store::StoreError::from)?;
            substore::get_plan(&mut conn, &tenant_id, &plan_id).await?
        }
        .filter(|pl| products.iter().any(|p| p.id == pl.product_id))
        .ok_or_else(|| ApiError::not_found("plan"))?;
        let caller = s.portal_caller(&ctx.state).await?;
        let mut unit = Unit::begin(&ctx.state.store, &ctx.meta).await?;
        let (sub, _) = subsvc::create_subscription(
            &mut unit,
            &caller,
            subsvc::NewSubscription {
                plan_id: plan.id,
                ..Default::default()
            },
        )
        .await?;
        unit.commit(&ctx.state.auth).await?;
        ApiResult::Ok(sub.id)
    };
    match done.await {
        Ok(id) => ctx.redirect(&format!("/console/portal/subscriptions/{id}")),
        Err(e) => ctx.error(&e),
    }
}

pub struct SubRow {
    pub id: String,
    pub product: String,
    pub plan: String,
    pub status: String,
    pub created: String,
    pub usage: String,
}

#[derive(Template)]
#[template(path = "subscriptions.html")]
struct SubscriptionsPage {
    l: super::Layout,
    rows: Vec<SubRow>,
}

fn date(ms: i64) -> String {
    crate::util::rfc3339(ms)
        .chars()
        .take(16)
        .collect::<String>()
        .replace('T', " ")
}

/// Usage of a subscription since the start of this month (UTC), against its plan's quota.
async fn usage_words(ctx: &Ctx, sub: &Subscription, limits: Option<&PlanLimits>) -> String {
    let now = now_ms();
    let month_start = {
        let t = time::OffsetDateTime::from_unix_timestamp(now / 1000)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let d = t.date().replace_day(1).unwrap_or(t.date());
        d.midnight().assume_utc().unix_timestamp() * 1000
    };
    let q = crate::store::usage::UsageQuery {
        tenant_id: sub.tenant_id.clone(),
        user_id: None,
        from: month_start,
        to: now + 60_000,
        bucket_ms: (now + 60_000 - month_start).max(60_000),
        group_by: vec![crate::store::usage::GroupBy::Subscription],
    };
    let (mut req, mut tok) = (0i64, 0i64);
    if let Ok(rows) = crate::store::usage::query(ctx.state.store.pool(), &q).await {
        for b in rows
            .iter()
            .filter(|b| b.group.first().cloned().flatten().as_deref() == Some(sub.id.as_str()))
        {
            req = req.saturating_add(b.requests);
            tok = tok.saturating_add(b.prompt_tokens.saturating_add(b.completion_tokens));
        }
    }
    let quota = limits
        .and_then(|l| serde_json::to_value(l).ok())
        .and_then(|v| v.get("tokens_per_month").and_then(Value::as_u64));
    match quota {
        Some(q) => format!("{req} requests, {tok} of {q} tokens this month"),
        None => format!("{req} requests, {tok} tokens this month"),
    }
}

/// `GET /console/portal/subscriptions`.
pub async fn my_subscriptions(ctx: Ctx) -> Response {
    let Some(s) = &ctx.session else {
        return ctx.need_session();
    };
    let load = async {
        let pool = ctx.state.store.pool();
        let subs: Vec<Subscription> = substore::list_subscriptions(pool, &s.tenant_id, None)
            .await?
            .into_iter()
            .filter(|x| x.user_id.as_deref() == Some(s.user_id.as_str()))
            .collect();
        let products: HashMap<String, String> = substore::list_products(pool, &s.tenant_id)
            .await?
            .into_iter()
            .map(|p| (p.id, p.name))
            .collect();
        let plans: HashMap<String, crate::store::subscriptions::Plan> =
            substore::list_plans(pool, &s.tenant_id, None)
                .await?
                .into_iter()
                .map(|p| (p.id.clone(), p))
                .collect();
        let mut rows = Vec::new();
        for sub in subs {
            let plan = plans.get(&sub.plan_id);
            rows.push(SubRow {
                usage: usage_words(&ctx, &sub, plan.map(|p| &p.limits)).await,
                product: plan
                    .and_then(|p| products.get(&p.product_id).cloned())
                    .unwrap_or_default(),
                plan: plan.map(|p| p.name.clone()).unwrap_or_default(),
                status: sub.status.as_str().to_string(),
                created: date(sub.created_at),
                id: sub.id,
            });
        }
        ApiResult::Ok(rows)
    };
    match load.await {
        Ok(rows) => {
            let page = SubscriptionsPage {
                l: ctx.layout("My subscriptions"),
                rows,
            };
            ctx.html(StatusCode::OK, &page)
        }
        Err(e) => ctx.error(&e),
    }
}

pub struct CredRow {
    pub id: String,
    pub kind: String,
    pub label: String,
    pub created: String,
    pub status: String,
    pub active: bool,
}

pub struct Shown {
    pub title: String,
    pub kid: String,
    pub value: String,
}

#[derive(Template)]
#[template(path = "subscription.html")]
struct SubscriptionPage {
    l: super::Layout,
    /// The chart shows days (the last 30) rather than hours (the last 48).
    per_day: bool,
    id: String,
    product: String,
    plan: String,
    status: String,
    created: String,
    active: bool,
    limits: Vec<String>,
    credentials: Vec<CredRow>,
    shown: Option<Shown>,
    form_error: Option<String>,
    name_error: Option<String>,
    key_error: Option<String>,
    key_name: String,
    alg: String,
    public_key: String,
    usage: String,
    chart_x: String,
    chart_requests: String,
    chart_tokens: String,
    base: String,
    model: String,
    uplot_css: String,
    uplot_js: String,
    chart_js: String,
}

/// What a failed credential form keeps and says.
#[derive(Default)]
struct CredForm {
    error: Option<ApiError>,
    key_name: String,
    alg: String,
    public_key: String,
}

async fn subscription_page(
    ctx: &Ctx,
    sub: Subscription,
    form: CredForm,
    shown: Option<Shown>,
    per_day: bool,
) -> ApiResult<SubscriptionPage> {
    let pool = ctx.state.store.pool();
    let (plan, product) = {
        let mut conn = pool
            .acquire()
            .await
            .map_err(crate::store::StoreError::from)?;
        let plan = substore::get_plan(&mut conn, &sub.tenant_id, &sub.plan_id).await?;
        let product = match &plan {
            Some(p) => substore::get_product(&mut conn, &sub.tenant_id, &p.product_id).await?,
            None => None,
        };
        (plan, product)
    };
    let mut credentials: Vec<CredRow> = substore::list_credentials(pool, &sub.id, true)
        .await?
        .into_iter()
        .map(|c| CredRow {
            active: c.revoked_at.is_none(),
            status: if c.revoked_at.is_none() {
                "active"
            } else {
                "revoked"
            }
            .into(),
            kind: if c.kind == "jwt_hs256" {
                "HS256 secret".into()
            } else {
                format!("{} public key", c.alg)
            },
            label: c.kid,
            created: date(c.created_at),
            id: c.id,
        })
        .collect();
    {
        let mut conn = pool
            .acquire()
            .await
            .map_err(crate::store::StoreError::from)?;
        for key_id in substore::subscription_key_ids(pool, &sub.tenant_id, &sub.id).await? {
            if let Some(k) = crate::store::keys::get(&mut conn, &sub.tenant_id, &key_id).await? {
                credentials.push(CredRow {
                    active: k.revoked_at.is_none(),
                    status: if k.revoked_at.is_none() {
                        "active"
                    } else {
                        "revoked"
                    }
                    .into(),
                    kind: "API key".into(),
                    label: format!("{} ({}…)", k.name, k.hint),
                    created: date(k.created_at),
                    id: k.id,
                });
            }
        }
    }
    // Requests and tokens per hour over the last 48 hours, or per (UTC) day over the last 30.
    let now = now_ms();
    let (hour, buckets): (i64, i64) = if per_day {
        (86_400_000, 30)
    } else {
        (3_600_000, 48)
    };
    let from = (now / hour - (buckets - 1)) * hour;
    let q = crate::store::usage::UsageQuery {
        tenant_id: sub.tenant_id.clone(),
        user_id: None,
        from,
        to: now + 60_000,
        bucket_ms: hour,
        group_by: vec![crate::store::usage::GroupBy::Subscription],
    };
    let mut per_hour: Vec<(i64, i64, i64)> = (0..buckets)
        .map(|i| ((from + i * hour) / 1000, 0, 0))
        .collect();
    if let Ok(rows) = crate::store::usage::query(pool, &q).await {
        for b in rows
            .iter()
            .filter(|b| b.group.first().cloned().flatten().as_deref() == Some(sub.id.as_str()))
        {
            let i = usize::try_from((b.start - from) / hour).unwrap_or(usize::MAX);
            if let Some(slot) = per_hour.get_mut(i) {
                slot.1 = slot.1.saturating_add(b.requests);
                slot.2 = slot
                    .2
                    .saturating_add(b.prompt_tokens.saturating_add(b.completion_tokens));
            }
        }
    }
    let join = |f: fn(&(i64, i64, i64)) -> i64| {
        per_hour
            .iter()
            .map(|x| f(x).to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let (mut form_error, mut name_error, mut key_error) = (None, None, None);
    if let Some(e) = &form.error {
        match e.param.as_deref() {
            Some("name") => name_error = Some(e.message.clone()),
            Some("public_key") | Some("alg") | Some("kid") => key_error = Some(e.message.clone()),
            _ => form_error = Some(e.message.clone()),
        }
    }
    let limits = plan
        .as_ref()
        .map(|p| limits_in_words(&p.limits))
        .unwrap_or_default();
    let model = product
        .as_ref()
        .and_then(|p| p.models.first().cloned())
        .unwrap_or_else(|| "MODEL".into());
    Ok(SubscriptionPage {
        l: ctx.layout("Subscription"),
        usage: usage_words(ctx, &sub, plan.as_ref().map(|p| &p.limits)).await,
        product: product.map(|p| p.name).unwrap_or_default(),
        plan: plan.map(|p| p.name).unwrap_or_default(),
        status: sub.status.as_str().to_string(),
        active: sub.status == crate::store::subscriptions::Status::Active,
        created: date(sub.created_at),
        id: sub.id,
        limits,
        credentials,
        shown,
        form_error,
        name_error,
        key_error,
        key_name: form.key_name,
        alg: if form.alg.is_empty() {
            "RS256".into()
        } else {
            form.alg
        },
        public_key: form.public_key,
        per_day,
        chart_x: join(|x| x.0),
        chart_requests: join(|x| x.1),
        chart_tokens: join(|x| x.2),
        base: ctx.state.config.public_url.clone(),
        model,
        uplot_css: super::assets::url("uplot-1.6.32.min.css"),
        uplot_js: super::assets::url("uplot-1.6.32.iife.min.js"),
        chart_js: super::assets::url("chart.js"),
    })
}

/// `GET /console/portal/subscriptions/{id}`: shows a secret just created (once: the flash is
/// taken from the store as it is read).
pub async fn subscription(ctx: Ctx, Path(id): Path<String>, RawQuery(query): RawQuery) -> Response {
    let Some(s) = &ctx.session else {
        return ctx.need_session();
    };
    let sub = match own_subscription(&ctx, &id).await {
        Ok(x) => x,
        Err(e) => return ctx.error(&e),
    };
    let shown = match s
        .take_flash_for(&ctx.state, |v| {
            v["subscription_id"].as_str() == Some(sub.id.as_str())
        })
        .await
    {
        Ok(Some(v)) => Some(Shown {
            title: v["title"].as_str().unwrap_or("New secret").to_string(),
            kid: v["kid"].as_str().unwrap_or_default().to_string(),
            value: v["value"].as_str().unwrap_or_default().to_string(),
        }),
        Ok(_) => None,
        Err(e) => return ctx.error(&e),
    };
    let per_day = query_param(query.as_deref(), "range").as_deref() == Some("day");
    match subscription_page(&ctx, sub, CredForm::default(), shown, per_day).await {
        Ok(mut page) => {
            page.l.notice = notice_for(query_param(query.as_deref(), "done").as_deref());
            ctx.html(StatusCode::OK, &page)
        }
        Err(e) => ctx.error(&e),
    }
}

/// `POST /console/portal/subscriptions/{id}/credentials` (`type` = `api_key` | `jwt_hs256` |
/// `jwt_public_key`): the secret goes to the session's one-shot flash, then the page is
/// reloaded by a redirect (POST-redirect-GET), so a reload does not show it again.
pub async fn create_credential(ctx: Ctx, Path(id): Path<String>, body: Bytes) -> Response {
    let form = parse_form(&body);
    if let Some(r) = ctx.check_csrf(&form) {
        return r;
    }
    let Some(s) = &ctx.session else {
        return ctx.need_session();
    };
    let sub = match own_subscription(&ctx, &id).await {
        Ok(x) => x,
        Err(e) => return ctx.error(&e),
    };
    let kind = form.get("type").cloned().unwrap_or_default();
    let name = form
        .get("name")
        .map(|n| n.trim().to_string())
        .unwrap_or_default();
    let alg = form.get("alg").cloned().unwrap_or_default();
    let public_key = form.get("public_key").cloned().unwrap_or_default();
    let created = async {
        let caller = s.portal_caller(&ctx.state).await?;
        let mut unit = Unit::begin(&ctx.state.store, &ctx.meta).await?;
        own_in_unit(&mut unit, &caller, &s.user_id, &sub.id).await?;
        let flash = match kind.as_str() {
            "api_key" => {
                let spec = subsvc::SubscriptionKeySpec {
                    name: if name.is_empty() {
                        "portal key".to_string()
                    } else {
                        name.clone()
                    },
                    expires_at: None,
                    scopes: None,
                    rate_limit: None,
                };
                let (_, key) = subsvc::create_subscription_key(
                    &mut unit,
                    ctx.state.auth.key_prefix(),
                    &caller,
                    &sub.id,
                    spec,
                )
                .await?;
                Some(
                    json!({"subscription_id": sub.id, "title": "Your new API key",
                    "value": key.plaintext, "kid": ""}),
                )
            }
            "jwt_hs256" | "jwt_public_key" => {
                let input = if kind == "jwt_hs256" {
                    subsvc::NewSigningKey::Hs256 { kid: None }
                } else {
                    subsvc::NewSigningKey::Public {
                        alg: Some(alg.clone()),
                        public_key: Some(public_key.trim().to_string()),
                        kid: None,
                    }
                };
                let secrets = ctx.state.auth.subscriptions.secrets()?;
                let (cred, secret) =
                    subsvc::create_signing_credential(&mut unit, secrets, &caller, &sub.id, input)
                        .await?;
                secret.map(|value| {
                    json!({"subscription_id": sub.id, "title": "Your new HS256 secret",
                        "value": value, "kid": cred.kid})
                })
            }
            _ => return Err(ApiError::validation("type", "unknown credential type")),
        };
        unit.commit(&ctx.state.auth).await?;
        ApiResult::Ok(flash)
    };
    match created.await {
        Ok(flash) => {
            if let Some(f) = flash
                && let Err(e) = s.set_flash(&ctx.state, &f).await
            {
                return ctx.error(&e);
            }
            ctx.redirect(&format!("/console/portal/subscriptions/{}", sub.id))
        }
        Err(e)
            if matches!(
                e.code,
                crate::error::ErrorCode::ValidationFailed
                    | crate::error::ErrorCode::Conflict
                    | crate::error::ErrorCode::InvalidRequest
            ) =>
        {
            let form = CredForm {
                error: Some(e),
                key_name: name,
                alg,
                public_key,
            };
            match subscription_page(&ctx, sub, form, None, false).await {
                Ok(page) => ctx.html(StatusCode::UNPROCESSABLE_ENTITY, &page),
                Err(e) => ctx.error(&e),
            }
        }
        Err(e) => ctx.error(&e),
    }
}

/// `POST /console/portal/subscriptions/{id}/credentials/{cred}/revoke`.
pub async fn revoke_credential(
    ctx: Ctx,
    Path((id, cred)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let form = parse_form(&body);
    if let Some(r) = ctx.check_csrf(&form) {
        return r;
    }
    let Some(s) = &ctx.session else {
        return ctx.need_session();
    };
    let done = async {
        let caller = s.portal_caller(&ctx.state).await?;
        let mut unit = Unit::begin(&ctx.state.store, &ctx.meta).await?;
        let sub = own_in_unit(&mut unit, &caller, &s.user_id, &id).await?;
        subsvc::revoke_credential(&mut unit, &caller, &sub.id, &cred).await?;
        unit.commit(&ctx.state.auth).await?;
        ApiResult::Ok(sub.id)
    };
    match done.await {
        Ok(id) => ctx.redirect(&format!("/console/portal/subscriptions/{id}?done=revoked")),
        Err(e) => ctx.error(&e),
    }
}

/// `POST /console/portal/subscriptions/{id}/cancel`: its credentials stop at once.
pub async fn cancel(ctx: Ctx, Path(id): Path<String>, body: Bytes) -> Response {
    let form = parse_form(&body);
    if let Some(r) = ctx.check_csrf(&form) {
        return r;
    }
    let Some(s) = &ctx.session else {
        return ctx.need_session();
    };
    let done = async {
        let caller = s.portal_caller(&ctx.state).await?;
        let mut unit = Unit::begin(&ctx.state.store, &ctx.meta).await?;
        let sub = own_in_unit(&mut unit, &caller, &s.user_id, &id).await?;
        subsvc::cancel_subscription(&mut unit, &caller, &sub.id).await?;
        unit.commit(&ctx.state.auth).await?;
        ApiResult::Ok(sub.id)
    };
    match done.await {
        Ok(id) => ctx.redirect(&format!(
            "/console/portal/subscriptions/{id}?done=cancelled"
        )),
        Err(e) => ctx.error(&e),
    }
}
