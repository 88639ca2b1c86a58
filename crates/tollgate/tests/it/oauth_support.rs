//! Helpers for the identity scenarios: OAuth clients, the hosted login page driven like a
//! browser (cookie + CSRF field), PKCE pairs, tokens.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

pub const PASSWORD: &str = "correct horse battery staple";
/// A loopback redirect URI nobody listens on: the tests read the `303` instead of following it.
pub const REDIRECT: &str = "http://127.0.0.1:9/callback";

/// `POST /v1/oauth-clients` as `key`; returns the created object (with `client_secret` once).
pub async fn create_client(app: &TestApp, key: &str, body: Value) -> Value {
    let res = app.post("/v1/oauth-clients", key, body).await;
    let status = res.status();
    let v: Value = res.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "create client: {v}");
    v
}

/// A public client of the owner's tenant with [`REDIRECT`].
pub async fn public_client(app: &TestApp) -> String {
    let c = create_client(
        app,
        &app.owner_key,
        json!({"name": "web app", "redirect_uris": [REDIRECT]}),
    )
    .await;
    c["client_id"].as_str().unwrap().to_string()
}

/// A confidential client (service account) with `roles`; returns (client id, secret).
pub async fn service_account(app: &TestApp, key: &str, roles: &[&str]) -> (String, String) {
    let c = create_client(
        app,
        key,
        json!({"name": "backend", "confidential": true, "roles": roles}),
    )
    .await;
    (
        c["client_id"].as_str().unwrap().to_string(),
        c["client_secret"].as_str().unwrap().to_string(),
    )
}

/// Sets the owner's password the way `tollgate init --password-stdin` does.
pub async fn set_owner_password(app: &TestApp) {
    tollgate::bootstrap::init(
        &app.state.store,
        &app.state.config.key_prefix,
        OWNER_EMAIL,
        "acme",
        Some(PASSWORD.to_string()),
    )
    .await
    .unwrap();
}

/// Adds a member with a password and roles; returns the user id.
pub async fn add_member(app: &TestApp, email: &str, roles: &[&str]) -> String {
    let res = app
        .post(
            "/v1/users",
            &app.owner_key,
            json!({"email": email, "roles": roles, "password": PASSWORD}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let v: Value = res.json().await.unwrap();
    v["id"].as_str().unwrap().to_string()
}

/// A client that does not follow redirects (to read the `303`).
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A fresh PKCE pair (verifier, S256 challenge).
pub fn pkce() -> (String, String) {
    let verifier = tollgate::util::random_base62(64);
    let challenge = tollgate::identity::oauth::s256_challenge(&verifier);
    (verifier, challenge)
}

pub fn authorize_url(
    app: &TestApp,
    client_id: &str,
    redirect: &str,
    challenge: Option<&str>,
    state: &str,
    scope: &str,
) -> String {
    let mut u = url::Url::parse(&app.url("/oauth/authorize")).unwrap();
    {
        let mut q = u.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", redirect)
            .append_pair("state", state)
            .append_pair("scope", scope);
        if let Some(c) = challenge {
            q.append_pair("code_challenge", c)
                .append_pair("code_challenge_method", "S256");
        }
    }
    u.to_string()
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let i = text.find(start)? + start.len();
    let j = text[i..].find(end)? + i;
    Some(&text[i..j])
}

/// What the login page gave a browser: its CSRF cookie, the hidden field and the form action.
pub struct LoginForm {
    pub cookie: String,
    pub csrf: String,
    pub action: String,
}

/// `GET` the hosted login page and read the form.
pub async fn open_login_page(app: &TestApp, url: &str) -> LoginForm {
    let res = browser().get(url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "login page");
    assert!(
        res.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let set_cookie = res.headers()[reqwest::header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    assert_eq!(res.headers()["x-frame-options"], "DENY");
    assert!(
        res.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let html = res.text().await.unwrap();
    assert!(html.contains("name=\"email\"") && html.contains("name=\"password\""));
    let csrf = between(&html, "name=\"csrf_token\" value=\"", "\"")
        .unwrap()
        .to_string();
    let action = between(&html, "<form method=\"post\" action=\"", "\"")
        .unwrap()
        .replace("&amp;", "&");
    assert!(action.starts_with("/oauth/authorize?"), "{action}");
    let _ = app;
    LoginForm {
        cookie,
        csrf,
        action,
    }
}

/// Posts the login form as a browser would.
pub async fn submit_login(
    app: &TestApp,
    form: &LoginForm,
    email: &str,
    password: &str,
) -> reqwest::Response {
    with_form(
        browser()
            .post(app.url(&form.action))
            .header(reqwest::header::COOKIE, &form.cookie),
        &[
            ("email", email),
            ("password", password),
            ("csrf_token", form.csrf.as_str()),
        ],
    )
    .send()
    .await
    .unwrap()
}

/// The query parameters of a `303`'s `Location`.
pub fn location_params(res: &reqwest::Response) -> (String, HashMap<String, String>) {
    assert_eq!(res.status(), StatusCode::SEE_OTHER, "expected a redirect");
    let loc = res.headers()[reqwest::header::LOCATION].to_str().unwrap();
    let u = url::Url::parse(loc).unwrap();
    let base = format!(
        "{}://{}{}",
        u.scheme(),
        u.host_str().unwrap_or_default(),
        u.port().map(|p| format!(":{p}")).unwrap_or_default()
    ) + u.path();
    (base, u.query_pairs().into_owned().collect())
}

/// Logs in through the hosted page and returns the authorization code.
pub async fn login_code(
    app: &TestApp,
    client_id: &str,
    redirect: &str,
    challenge: Option<&str>,
    email: &str,
    password: &str,
    scope: &str,
) -> String {
    let url = authorize_url(app, client_id, redirect, challenge, "st-123", scope);
    let form = open_login_page(app, &url).await;
    let res = submit_login(app, &form, email, password).await;
    let (_, params) = location_params(&res);
    assert_eq!(params.get("state").map(String::as_str), Some("st-123"));
    params["code"].clone()
}

/// The whole flow through the JSON endpoint: returns the token response.
pub async fn login(app: &TestApp, client_id: &str, email: &str, password: &str) -> Value {
    let (verifier, challenge) = pkce();
    let code = login_code(
        app,
        client_id,
        REDIRECT,
        Some(&challenge),
        email,
        password,
        "openid",
    )
    .await;
    let res = app
        .post(
            "/v1/auth/token",
            "",
            json!({"code": code, "code_verifier": verifier, "redirect_uri": REDIRECT, "client_id": client_id}),
        )
        .await;
    let status = res.status();
    let v: Value = res.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "token: {v}");
    v
}

/// `application/x-www-form-urlencoded` encoding of `pairs`.
pub fn form_body(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// Adds a form body to a request.
pub fn with_form(r: reqwest::RequestBuilder, pairs: &[(&str, &str)]) -> reqwest::RequestBuilder {
    r.header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(pairs))
}

/// Form POST to an OAuth endpoint, optionally with HTTP Basic client credentials.
pub async fn form_post(
    app: &TestApp,
    path: &str,
    basic: Option<(&str, &str)>,
    form: &[(&str, &str)],
) -> reqwest::Response {
    let mut r = with_form(app.client.post(app.url(path)), form);
    if let Some((id, secret)) = basic {
        r = r.basic_auth(id, Some(secret));
    }
    r.send().await.unwrap()
}

/// Asserts an RFC 6749 error; returns the body.
pub async fn expect_oauth_error(res: reqwest::Response, status: StatusCode, error: &str) -> Value {
    let got = res.status();
    assert_eq!(
        res.headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(got, status, "{body}");
    assert_eq!(body["error"], error, "{body}");
    assert!(body["error_description"].is_string());
    body
}

/// The (unverified) payload of a JWT.
pub fn payload(token: &str) -> Value {
    let p = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap()
}

/// The (unverified) header of a JWT.
pub fn jwt_header(token: &str) -> Value {
    let p = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap()
}

pub fn b64json(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// Every audit event of a tenant, oldest first.
pub async fn audit_events(app: &TestApp, tenant_id: &str) -> Vec<tollgate::store::AuditRecord> {
    tollgate::store::audit::chain_page(app.state.store.pool(), tenant_id, 0, 10_000)
        .await
        .unwrap()
}
