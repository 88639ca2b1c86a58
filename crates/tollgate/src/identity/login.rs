//! The hosted login page (SPEC §4.3): `GET /oauth/authorize` renders a plain HTML form (fields
//! `email`, `password` and a CSRF token) that posts back to `POST /oauth/authorize` with the
//! original query. Success: `303` to `redirect_uri?code=…&state=…`; failure: the page again with
//! an error (`401`), or `429` when the account or the address is throttled.
//!
//! CSRF: a double-submit token — a random value in an `HttpOnly; SameSite=Strict` cookie and in
//! the form; the POST must carry both, equal. An invalid client or redirect URI is shown as an
//! error page and never redirected to (RFC 6749 §4.1.2.1).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::app::AppState;
use crate::identity::oauth::{CODE_TTL_MS, secret_hash, valid_challenge};
use crate::identity::tokens;
use crate::store::audit::{Actor, AuditEvent, RequestMeta, append};
use crate::store::identity::{self as idstore, AuthCode, OAuthClient};
use crate::store::{StoreError, tenants};
use crate::util::{now_ms, random_base62};
use tollgate_core::audit::Action;

const CSRF_COOKIE: &str = "tg_csrf";

/// A validated authorization request.
#[derive(Debug, Clone)]
pub struct AuthzRequest {
    pub client: OAuthClient,
    pub redirect_uri: String,
    pub code_challenge: Option<String>,
    pub state: Option<String>,
    pub scope: String,
}

enum AuthzError {
    /// Shown on the page: the client or redirect URI cannot be trusted with a redirect.
    Page(StatusCode, String),
    /// Sent back to the client's redirect URI (RFC 6749 §4.1.2.1).
    Redirect {
        redirect_uri: String,
        error: &'static str,
        description: String,
        state: Option<String>,
    },
}

fn query_map(query: Option<&str>) -> Result<std::collections::HashMap<String, String>, AuthzError> {
    let mut out = std::collections::HashMap::new();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(AuthzError::Page(
                StatusCode::BAD_REQUEST,
                format!("The parameter {k} appears more than once."),
            ));
        }
    }
    Ok(out)
}

async fn validate(state: &AppState, query: Option<&str>) -> Result<AuthzRequest, AuthzError> {
    let q = query_map(query)?;
    let page = |m: &str| AuthzError::Page(StatusCode::BAD_REQUEST, m.to_string());
    let client_id = q
        .get("client_id")
        .ok_or_else(|| page("client_id is missing."))?;
    let client = idstore::find_client(state.store.pool(), client_id)
        .await
        .map_err(|_| {
            AuthzError::Page(StatusCode::SERVICE_UNAVAILABLE, "Try again shortly.".into())
        })?
        .filter(|c| c.revoked_at.is_none())
        .ok_or_else(|| page("Unknown application (client_id)."))?;
    let redirect_uri = q
        .get("redirect_uri")
        .ok_or_else(|| page("redirect_uri is missing."))?;
    if !super::clients::redirect_registered(&client.redirect_uris, redirect_uri) {
        return Err(page("redirect_uri is not registered for this application."));
    }
    let st = q.get("state").cloned();
    let redirect = |error: &'static str, description: &str| AuthzError::Redirect {
        redirect_uri: redirect_uri.clone(),
        error,
        description: description.to_string(),
        state: st.clone(),
    };
    if q.get("response_type").map(String::as_str) != Some("code") {
        return Err(redirect(
            "unsupported_response_type",
            "Only response_type=code is supported",
        ));
    }
    if let Some(t) = q.get("tenant_id")
        && t != &client.tenant_id
    {
        return Err(redirect(
            "invalid_request",
            "tenant_id does not match the client",
        ));
    }
    let challenge = q.get("code_challenge").cloned();
    match (
        q.get("code_challenge_method").map(String::as_str),
        &challenge,
    ) {
        (Some("S256"), Some(c)) if valid_challenge(c) => {}
        (Some("S256"), Some(_)) => {
            return Err(redirect("invalid_request", "Malformed code_challenge"));
        }
        (Some("S256"), None) => {
            return Err(redirect("invalid_request", "code_challenge is missing"));
        }
        (Some(_), _) => {
            return Err(redirect(
                "invalid_request",
                "Only the S256 code_challenge_method is supported",
            ));
        }
        (None, Some(_)) => {
            // RFC 7636 defaults to `plain`, which is not supported.
            return Err(redirect(
                "invalid_request",
                "code_challenge_method must be S256",
            ));
        }
        (None, None) if !client.confidential => {
            return Err(redirect("invalid_request", "PKCE (S256) is required"));
        }
        (None, None) => {}
    }
    let scope = q.get("scope").cloned().unwrap_or_default();
    if tokens::scope_permissions(&scope).is_err() {
        return Err(redirect("invalid_scope", "Unknown scope"));
    }
    Ok(AuthzRequest {
        client,
        redirect_uri: redirect_uri.clone(),
        code_challenge: challenge,
        state: st,
        scope,
    })
}

pub(crate) fn with_params(base: &str, params: &[(&str, &str)]) -> String {
    match url::Url::parse(base) {
        Ok(mut u) => {
            {
                let mut q = u.query_pairs_mut();
                for (k, v) in params {
                    q.append_pair(k, v);
                }
            }
            u.to_string()
        }
        Err(_) => base.to_string(),
    }
}

fn see_other(location: &str) -> Response {
    let mut res = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn error_response(app: &AppState, e: AuthzError) -> Response {
    match e {
        AuthzError::Page(status, msg) => {
            html(status, &page_html("Cannot sign in", None, Some(&msg), None))
        }
        AuthzError::Redirect {
            redirect_uri,
            error,
            description,
            state: st,
        } => {
            let mut p = vec![
                ("error", error),
                ("error_description", description.as_str()),
            ];
            if let Some(s) = &st {
                p.push(("state", s.as_str()));
            }
            // RFC 9207: the issuer, so a client talking to several servers can tell them apart.
            p.push(("iss", app.config.public_url.as_str()));
            see_other(&with_params(&redirect_uri, &p))
        }
    }
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    out
}

struct Form<'a> {
    action: &'a str,
    csrf: &'a str,
    email: &'a str,
}

fn page_html(
    title: &str,
    app: Option<&str>,
    error: Option<&str>,
    form: Option<Form<'_>>,
) -> String {
    let mut body = String::new();
    if let Some(app) = app {
        body.push_str(&format!(
            "<p class=\"app\">to continue to <strong>{}</strong></p>",
            escape(app)
        ));
    }
    if let Some(e) = error {
        body.push_str(&format!(
            "<p class=\"error\" role=\"alert\">{}</p>",
            escape(e)
        ));
    }
    if let Some(f) = form {
        body.push_str(&format!(
            r#"<form method="post" action="{action}">
<input type="hidden" name="csrf_token" value="{csrf}">
<label for="email">Email</label>
<input id="email" name="email" type="email" autocomplete="username" required value="{email}">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit">Sign in</button>
</form>"#,
            action = escape(f.action),
            csrf = escape(f.csrf),
            email = escape(f.email),
        ));
    }
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{t} · Tollgate</title>
<style>body{{font-family:system-ui,sans-serif;max-width:22rem;margin:4rem auto;padding:0 1rem;color:#222}}
h1{{font-size:1.4rem}}label{{display:block;margin-top:.8rem}}input{{width:100%;padding:.5rem;box-sizing:border-box}}
button{{margin-top:1.2rem;padding:.6rem 1.2rem}}.error{{color:#b00020}}.app{{color:#555}}</style>
</head><body><h1>{t}</h1>{body}</body></html>"#,
        t = escape(title)
    )
}

fn html(status: StatusCode, body: &str) -> Response {
    let mut res = (status, body.to_string()).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    // No `form-action`: browsers apply it to the redirect that follows the POST, which goes to the
    // client's origin. Nothing can be injected anyway (no script is allowed, all text is escaped).
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    res
}

pub(crate) fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn login_page(
    state: &AppState,
    req: &AuthzRequest,
    query: Option<&str>,
    status: StatusCode,
    error: Option<&str>,
    email: &str,
) -> Response {
    let csrf = random_base62(32);
    let action = format!("/oauth/authorize?{}", query.unwrap_or_default());
    let mut res = html(
        status,
        &page_html(
            "Sign in",
            Some(&req.client.name),
            error,
            Some(Form {
                action: &action,
                csrf: &csrf,
                email,
            }),
        ),
    );
    if let Ok(v) = HeaderValue::from_str(&csrf_cookie(state, &csrf)) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

/// The `Set-Cookie` value of the login form's CSRF token (also set by the console, whose sign-in
/// dialog posts this form).
pub(crate) fn csrf_cookie(state: &AppState, csrf: &str) -> String {
    let secure = if state.config.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    format!(
        "{CSRF_COOKIE}={csrf}; Path=/oauth/authorize; HttpOnly; SameSite=Strict; Max-Age=3600{secure}"
    )
}

/// `GET /oauth/authorize`: the login form.
pub async fn show(State(state): State<AppState>, uri: axum::http::Uri) -> Response {
    match validate(&state, uri.query()).await {
        Ok(req) => login_page(&state, &req, uri.query(), StatusCode::OK, None, ""),
        Err(e) => error_response(&state, e),
    }
}

/// `POST /oauth/authorize`: checks the credentials and issues the code.
pub async fn submit(State(state): State<AppState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let query = parts.uri.query().map(str::to_string);
    let meta = crate::http::request_meta(&parts, &state);
    let ip = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into());
    let authz = match validate(&state, query.as_deref()).await {
        Ok(r) => r,
        Err(e) => return error_response(&state, e),
    };
    // The one body limit of every route, and its one error shape (the JSON 413).
    let bytes = match crate::http::read_limited(body, state.config.max_body_bytes).await {
        Ok(b) => b,
        Err(e) if e.code == crate::error::ErrorCode::PayloadTooLarge => {
            return e.into_response();
        }
        Err(_) => {
            return html(
                StatusCode::BAD_REQUEST,
                &page_html(
                    "Cannot sign in",
                    None,
                    Some("The form could not be read."),
                    None,
                ),
            );
        }
    };
    let form: std::collections::HashMap<String, String> = url::form_urlencoded::parse(&bytes)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let email = tenants::normalize_email(form.get("email").map(String::as_str).unwrap_or_default());
    let password = form.get("password").cloned().unwrap_or_default();
    let page =
        |status, msg: &str| login_page(&state, &authz, query.as_deref(), status, Some(msg), &email);

    // CSRF: the cookie and the form field must both be present and equal.
    let field = form.get("csrf_token").cloned().unwrap_or_default();
    let cookie = cookie_value(&parts.headers, CSRF_COOKIE).unwrap_or_default();
    if field.is_empty() || !bool::from(field.as_bytes().ct_eq(cookie.as_bytes())) {
        return page(
            StatusCode::FORBIDDEN,
            "Your session expired or the form was not submitted from this page. Please try again.",
        );
    }
    // Throttle before the (deliberately slow) password check.
    if let Err(retry) = state.auth.identity.throttle.check(&email, &ip) {
        let mut res = page(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("Too many failed sign-in attempts. Try again in {retry} seconds."),
        );
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry.max(1)));
        return res;
    }
    match check_login(&state, &authz, &email, &password).await {
        Ok(user_id) => {
            state.auth.identity.throttle.succeed(&email);
            match issue_code(&state, &authz, &user_id, &meta).await {
                Ok(code) => {
                    let mut p = vec![("code", code.as_str())];
                    if let Some(s) = &authz.state {
                        p.push(("state", s.as_str()));
                    }
                    p.push(("iss", state.config.public_url.as_str()));
                    see_other(&with_params(&authz.redirect_uri, &p))
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not issue an authorization code");
                    page(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Sign-in is unavailable; try again shortly.",
                    )
                }
            }
        }
        Err(LoginFailure::Store(e)) => {
            tracing::error!(error = %e, "login failed on the store");
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign-in is unavailable; try again shortly.",
            )
        }
        Err(LoginFailure::Denied {
            user_id,
            reason,
            message,
        }) => {
            state.auth.identity.throttle.fail(&email, &ip);
            if let Err(e) = audit_failure(&state, &authz, user_id, &email, reason, &meta).await {
                tracing::warn!(error = %e, "could not record a failed login");
            }
            page(StatusCode::UNAUTHORIZED, message)
        }
    }
}

enum LoginFailure {
    Denied {
        user_id: Option<String>,
        reason: &'static str,
        message: &'static str,
    },
    Store(StoreError),
}

impl From<StoreError> for LoginFailure {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

const BAD_CREDENTIALS: &str = "Invalid email or password.";

async fn check_login(
    state: &AppState,
    authz: &AuthzRequest,
    email: &str,
    password: &str,
) -> Result<String, LoginFailure> {
    let mut conn = state
        .store
        .pool()
        .acquire()
        .await
        .map_err(StoreError::from)?;
    let user = tenants::find_user_by_email(&mut conn, email).await?;
    drop(conn);
    let denied = |user_id: Option<&str>, reason| LoginFailure::Denied {
        user_id: user_id.map(str::to_string),
        reason,
        message: BAD_CREDENTIALS,
    };
    let Some(user) = user else {
        // Same cost as a real check, so timing does not reveal which emails exist.
        let dummy = state.auth.identity.dummy_hash().await;
        let _ = crate::passwords::verify(password, &dummy).await;
        return Err(denied(None, "unknown_email"));
    };
    let Some(hash) = &user.password_hash else {
        let dummy = state.auth.identity.dummy_hash().await;
        let _ = crate::passwords::verify(password, &dummy).await;
        return Err(denied(Some(&user.id), "no_password"));
    };
    if !crate::passwords::verify(password, hash).await {
        return Err(denied(Some(&user.id), "bad_password"));
    }
    let mut conn = state
        .store
        .pool()
        .acquire()
        .await
        .map_err(StoreError::from)?;
    if idstore::is_signup_pending(&mut conn, &user.id).await? {
        return Err(LoginFailure::Denied {
            user_id: Some(user.id.clone()),
            reason: "email_unverified",
            message: "Please verify your email address first (see the email we sent you).",
        });
    }
    if tenants::get_member(&mut conn, &authz.client.tenant_id, &user.id)
        .await?
        .is_none()
    {
        return Err(LoginFailure::Denied {
            user_id: Some(user.id.clone()),
            reason: "not_a_member",
            message: "This account has no access to this application's organisation.",
        });
    }
    Ok(user.id)
}

async fn audit_failure(
    state: &AppState,
    authz: &AuthzRequest,
    user_id: Option<String>,
    email: &str,
    reason: &str,
    meta: &RequestMeta,
) -> Result<(), StoreError> {
    let mut ev = AuditEvent::new(
        authz.client.tenant_id.clone(),
        Actor::user_or_anonymous(user_id.clone()),
        Action::AuthLoginFailed,
        meta,
    )
    .outcome("failure")
    .details(json!({"email": email, "reason": reason, "client_id": authz.client.id}));
    if let Some(u) = user_id {
        ev = ev.target("user", u);
    }
    let mut tx = state.store.begin().await?;
    append(&mut tx, ev).await?;
    tx.commit().await?;
    Ok(())
}

pub(crate) async fn issue_code(
    state: &AppState,
    authz: &AuthzRequest,
    user_id: &str,
    meta: &RequestMeta,
) -> Result<String, StoreError> {
    let code = random_base62(43);
    let now = now_ms();
    let row = AuthCode {
        code_hash: secret_hash(&code),
        tenant_id: authz.client.tenant_id.clone(),
        client_id: authz.client.id.clone(),
        user_id: user_id.to_string(),
        redirect_uri: authz.redirect_uri.clone(),
        code_challenge: authz.code_challenge.clone(),
        scope: authz.scope.clone(),
        created_at: now,
        expires_at: now + CODE_TTL_MS,
        used_at: None,
        family_id: None,
    };
    let mut tx = state.store.begin().await?;
    idstore::insert_code(&mut tx, &row).await?;
    append(
        &mut tx,
        AuditEvent::new(
            authz.client.tenant_id.clone(),
            Actor::user(user_id.to_string()),
            Action::AuthLogin,
            meta,
        )
        .target("user", user_id)
        .details(json!({"client_id": authz.client.id, "scope": authz.scope})),
    )
    .await?;
    tx.commit().await?;
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_html() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#x27;"
        );
    }

    #[test]
    fn appends_params_to_redirect_uris() {
        assert_eq!(
            with_params(
                "https://app.example/cb?x=1",
                &[("code", "a b"), ("state", "s&t")]
            ),
            "https://app.example/cb?x=1&code=a+b&state=s%26t"
        );
    }

    #[test]
    fn reads_cookies() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; tg_csrf=xyz; b=2"),
        );
        assert_eq!(cookie_value(&h, "tg_csrf").as_deref(), Some("xyz"));
        assert_eq!(cookie_value(&h, "zz"), None);
    }
}
