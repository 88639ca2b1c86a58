//! The web console (SPEC §10), served at `/console` by the gateway itself: server-rendered pages
//! (askama templates, checked at compile time), htmx and uPlot embedded and only enhancing pages
//! that work without JavaScript (forms post and redirect).
//!
//! - `assets` — the embedded files under content-hashed names;
//! - `session` — sign-in through the gateway's own OAuth code + PKCE flow, the server-side
//!   session, logout, the one-time console link and setting a password;
//! - `portal` — the developer portal: sign-up, verification, password reset, catalogue,
//!   subscriptions and their credentials;
//! - `admin` — what the tenant's administrators do here: API keys, people and roles, OAuth
//!   clients and identity providers, products, plans and subscriptions (publishing to the
//!   portal), usage, spike alerts and the audit log.
//!
//! Invariants: no inline script or inline event handler anywhere (the CSP forbids them); every
//! state-changing request carries the CSRF token; a secret appears in exactly one response, the
//! one right after it was created (a one-shot flash held server-side), never again; every action
//! goes through the operation the matching API route uses.

use std::collections::HashMap;

use askama::Template;
use axum::Router;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use subtle::ConstantTimeEq;

use crate::app::AppState;
use crate::store::audit::RequestMeta;

pub mod admin;
pub mod assets;
pub mod portal;
pub mod session;

pub use session::Session;

/// The Content-Security-Policy of every console response: scripts and styles from this origin
/// only (no inline script, no inline event handler), nothing may frame the console.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The console's routes, with `/` redirecting to `/console`.
pub fn routes(_state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { redirect("/console") }))
        .route("/console", get(portal::home))
        .route("/console/", get(|| async { redirect("/console") }))
        .route("/console/assets/{name}", get(assets::serve))
        .route("/console/login", get(session::login))
        .route("/console/callback", get(session::callback))
        .route("/console/logout", post(session::logout))
        .route(
            "/console/link",
            get(session::link_page).post(session::link_use),
        )
        .route(
            "/console/password",
            get(session::password_page).post(session::password_set),
        )
        .route("/console/auth", get(portal::auth_page))
        .route("/console/signup", post(portal::signup))
        .route("/console/verify", get(portal::verify))
        .route(
            "/console/reset",
            get(portal::reset_page).post(portal::reset_request),
        )
        .route(
            "/console/reset/confirm",
            get(portal::reset_confirm_page).post(portal::reset_confirm),
        )
        .route("/console/portal", get(portal::catalog))
        .route("/console/portal/products/{id}", get(portal::product))
        .route("/console/portal/subscribe", post(portal::subscribe))
        .route(
            "/console/portal/subscriptions",
            get(portal::my_subscriptions),
        )
        .route(
            "/console/portal/subscriptions/{id}",
            get(portal::subscription),
        )
        .route(
            "/console/portal/subscriptions/{id}/credentials",
            post(portal::create_credential),
        )
        .route(
            "/console/portal/subscriptions/{id}/credentials/{cred}/revoke",
            post(portal::revoke_credential),
        )
        .route(
            "/console/portal/subscriptions/{id}/cancel",
            post(portal::cancel),
        )
        .route("/console/admin", get(admin::home))
        .route("/console/admin/products/{id}/publish", post(admin::publish))
        .route(
            "/console/admin/keys",
            get(admin::keys::list).post(admin::keys::create),
        )
        .route("/console/admin/keys/{id}", get(admin::keys::show))
        .route(
            "/console/admin/keys/{id}/revoke",
            get(admin::keys::revoke_page).post(admin::keys::revoke),
        )
        .route("/console/admin/keys/{id}/rotate", post(admin::keys::rotate))
        .route(
            "/console/admin/people",
            get(admin::people::list).post(admin::people::add),
        )
        .route("/console/admin/people/{id}", get(admin::people::show))
        .route(
            "/console/admin/people/{id}/roles",
            post(admin::people::set_roles),
        )
        .route(
            "/console/admin/people/{id}/remove",
            get(admin::people::remove_page).post(admin::people::remove),
        )
        .route(
            "/console/admin/roles",
            get(admin::people::roles).post(admin::people::create_role),
        )
        .route(
            "/console/admin/roles/{id}",
            get(admin::people::role).post(admin::people::update_role),
        )
        .route(
            "/console/admin/roles/{id}/delete",
            post(admin::people::delete_role),
        )
        .route(
            "/console/admin/clients",
            get(admin::identity::clients).post(admin::identity::create_client),
        )
        .route(
            "/console/admin/clients/{id}/revoke",
            post(admin::identity::revoke_client),
        )
        .route(
            "/console/admin/identity-providers",
            get(admin::identity::idps).post(admin::identity::create_idp),
        )
        .route(
            "/console/admin/identity-providers/test",
            post(admin::identity::test_token),
        )
        .route(
            "/console/admin/identity-providers/{id}/delete",
            post(admin::identity::delete_idp),
        )
        .route(
            "/console/admin/products",
            get(admin::catalog::products).post(admin::catalog::create_product),
        )
        .route("/console/admin/plans", post(admin::catalog::create_plan))
        .route(
            "/console/admin/subscriptions",
            get(admin::catalog::subscriptions),
        )
        .route(
            "/console/admin/subscriptions/{id}/status",
            post(admin::catalog::set_status),
        )
        .route(
            "/console/admin/subscriptions/{id}/cancel",
            post(admin::catalog::cancel),
        )
        .route("/console/admin/usage", get(admin::usage::dashboard))
        .route("/console/admin/usage.csv", get(admin::usage::export))
        .route("/console/admin/alerts", get(admin::audit::alerts))
        .route("/console/admin/audit", get(admin::audit::log))
        .route("/console/admin/audit/verify", get(admin::audit::verify))
        .route("/console/admin/audit.csv", get(admin::audit::export_csv))
        .route(
            "/console/admin/audit.jsonl",
            get(admin::audit::export_jsonl),
        )
        .layer(axum::middleware::from_fn(security_headers))
}

/// Security headers on every console response; HTML is never cached.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

/// `303 See Other` to a path of this origin.
pub fn redirect(location: &str) -> Response {
    let mut res = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

// ---- cookies ---------------------------------------------------------------------------------

/// Cookie names and attributes: `__Host-` names and `Secure` when the gateway is served over
/// https (the prefix makes the browser refuse a cookie set without `Secure`, for another path or
/// by a subdomain).
pub struct Cookies {
    secure: bool,
}

impl Cookies {
    pub fn new(state: &AppState) -> Self {
        Self {
            secure: state.config.public_url.starts_with("https://"),
        }
    }

    pub fn name(&self, base: &str) -> String {
        if self.secure {
            format!("__Host-{base}")
        } else {
            base.to_string()
        }
    }

    /// A `Set-Cookie` value: `HttpOnly`, `SameSite=Lax`, `Path=/`, `Secure` under https.
    pub fn set(&self, base: &str, value: &str, max_age: i64) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!(
            "{}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}",
            self.name(base)
        )
    }

    pub fn clear(&self, base: &str) -> String {
        self.set(base, "", 0)
    }

    pub fn read(&self, headers: &HeaderMap, base: &str) -> Option<String> {
        crate::identity::login::cookie_value(headers, &self.name(base)).filter(|v| !v.is_empty())
    }
}

pub const SESSION_COOKIE: &str = "tg_console";
pub const CSRF_COOKIE: &str = "tg_console_csrf";
/// The pending sign-in (OAuth `state`, PKCE verifier, client) between `/console/login` and the
/// callback.
pub const LOGIN_COOKIE: &str = "tg_console_login";

// ---- the request context ---------------------------------------------------------------------

/// What every console handler starts from: the session (if signed in), the CSRF token of this
/// browser, the request's audit metadata, and the cookies the response must set.
pub struct Ctx {
    pub state: AppState,
    pub session: Option<Session>,
    pub csrf: String,
    pub meta: RequestMeta,
    pub headers: HeaderMap,
    pub set_cookies: Vec<String>,
    pub cookies: Cookies,
}

impl FromRequestParts<AppState> for Ctx {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let cookies = Cookies::new(state);
        let meta = crate::http::request_meta(parts, state);
        let mut set_cookies = Vec::new();
        let csrf = match cookies.read(&parts.headers, CSRF_COOKIE) {
            Some(c) if c.len() == 43 && c.bytes().all(|b| b.is_ascii_alphanumeric()) => c,
            _ => {
                let c = crate::util::random_base62(43);
                set_cookies.push(cookies.set(CSRF_COOKIE, &c, 86_400 * 30));
                c
            }
        };
        let session = match session::load(state, &cookies, &parts.headers, &meta).await {
            Ok(s) => s,
            Err(gone) => {
                // A session cookie for a session that is over: forget it.
                if gone {
                    set_cookies.push(cookies.clear(SESSION_COOKIE));
                }
                None
            }
        };
        Ok(Ctx {
            state: state.clone(),
            session,
            csrf,
            meta,
            headers: parts.headers.clone(),
            set_cookies,
            cookies,
        })
    }
}

/// Fields of a posted form (`application/x-www-form-urlencoded`); a repeated name keeps the
/// first value.
pub fn parse_form(body: &[u8]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        out.entry(k.to_string()).or_insert_with(|| v.to_string());
    }
    out
}

impl Ctx {
    /// The layout of a page titled `title`.
    pub fn layout(&self, title: &str) -> Layout {
        Layout {
            title: title.to_string(),
            csrf: self.csrf.clone(),
            css: assets::url("console.css"),
            js: assets::url("console.js"),
            htmx: assets::url("htmx-2.0.11.min.js"),
            user: self.session.as_ref().map(|s| UserNav {
                email: s.email.clone(),
                admin: admin::any_section(&s.principal),
            }),
            notice: None,
            dialog: None,
        }
    }

    /// Refuses a state-changing request without this browser's CSRF token (form field
    /// `csrf_token`, or the `X-CSRF-Token` header htmx sends).
    /// `Some` is the refusal to answer.
    pub fn check_csrf(&self, form: &HashMap<String, String>) -> Option<Response> {
        let sent = form
            .get("csrf_token")
            .cloned()
            .or_else(|| {
                self.headers
                    .get("x-csrf-token")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            })
            .unwrap_or_default();
        // The cookie was sent with this request (a token minted just now matches nothing).
        let had_cookie = self.cookies.read(&self.headers, CSRF_COOKIE).is_some();
        if had_cookie && !sent.is_empty() && bool::from(sent.as_bytes().ct_eq(self.csrf.as_bytes()))
        {
            None
        } else {
            Some(self.message(
                StatusCode::FORBIDDEN,
                "Form expired",
                "This form was not sent from this browser's console page, or it expired. Go back, reload the page and try again.",
                true,
                Some(("/console", "Back to the console")),
            ))
        }
    }

    /// Adds the pending cookies to a response.
    pub fn finish(&self, mut res: Response) -> Response {
        for c in &self.set_cookies {
            if let Ok(v) = HeaderValue::from_str(c) {
                res.headers_mut().append(header::SET_COOKIE, v);
            }
        }
        res
    }

    pub fn html(&self, status: StatusCode, page: &impl Template) -> Response {
        match page.render() {
            Ok(body) => {
                let mut res = (status, body).into_response();
                res.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                self.finish(res)
            }
            Err(e) => {
                tracing::error!(error = %e, "console template failed");
                self.finish((StatusCode::INTERNAL_SERVER_ERROR, "Internal error").into_response())
            }
        }
    }

    pub fn redirect(&self, location: &str) -> Response {
        self.finish(redirect(location))
    }

    /// A page with a heading and a sentence (errors, expired links, confirmations).
    pub fn message(
        &self,
        status: StatusCode,
        heading: &str,
        text: &str,
        alert: bool,
        link: Option<(&str, &str)>,
    ) -> Response {
        let page = MessagePage {
            l: self.layout(heading),
            heading: heading.to_string(),
            text: text.to_string(),
            alert,
            link: link.map(|(a, b)| (a.to_string(), b.to_string())),
        };
        self.html(status, &page)
    }

    /// The page for an error of an operation (store down, not found, ...).
    pub fn error(&self, e: &crate::error::ApiError) -> Response {
        use crate::error::ErrorCode;
        let status = e.code.status();
        let (heading, text) = match e.code {
            ErrorCode::NotFound => ("Not found", "There is nothing here.".to_string()),
            ErrorCode::Unavailable => (
                "Unavailable",
                "The console cannot reach its store right now; try again shortly.".to_string(),
            ),
            ErrorCode::Internal => ("Something went wrong", "Try again shortly.".to_string()),
            ErrorCode::PermissionDenied => ("Not allowed", e.message.clone()),
            _ => ("Cannot do that", e.message.clone()),
        };
        self.message(
            status,
            heading,
            &text,
            true,
            Some(("/console", "Back to the console")),
        )
    }

    /// The sign-in page for a request that needs a session.
    pub fn need_session(&self) -> Response {
        self.redirect("/console/auth?tab=login")
    }
}

// ---- templates shared by every page ----------------------------------------------------------

pub struct UserNav {
    pub email: String,
    pub admin: bool,
}

/// The sign-up / log-in forms (a page of their own, or the dialog of portal pages).
pub struct AuthForms {
    pub tab: String,
    pub open_signup: bool,
    pub login_action: String,
    pub login_csrf: String,
    pub login_email: String,
    pub signup_email: String,
    pub signup_error: Option<String>,
    pub signup_email_error: Option<String>,
    pub signup_password_error: Option<String>,
}

pub struct Layout {
    pub title: String,
    pub csrf: String,
    pub css: String,
    pub js: String,
    pub htmx: String,
    pub user: Option<UserNav>,
    pub notice: Option<String>,
    pub dialog: Option<AuthForms>,
}

#[derive(Template)]
#[template(path = "message.html")]
pub struct MessagePage {
    pub l: Layout,
    pub heading: String,
    pub text: String,
    pub alert: bool,
    pub link: Option<(String, String)>,
}
