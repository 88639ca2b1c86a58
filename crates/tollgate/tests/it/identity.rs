//! Identity scenarios (SPEC §2.2, §2.3, §4.3): discovery and JWKS, the ScaiKey-style JSON flow,
//! the login page's CSRF and throttling, PKCE rules, logout, RFC 7009 revocation, RFC 7662
//! introspection, permissions resolved per request, signing-key rotation with overlap, external
//! IdP tokens with a JWKS on a real socket, sign-up and password reset through the `.eml` outbox.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::oauth_support::*;
use crate::store_tests;

store_tests!(
    discovery_and_jwks,
    scaikey_json_flow,
    login_page_csrf_and_errors,
    login_is_throttled_per_account_and_per_ip,
    pkce_rules,
    logout_revoke_and_introspect,
    permissions_follow_current_roles,
    signing_key_rotation_keeps_old_tokens_valid,
    tokens_verify_and_revoke_across_instances,
    signup_verify_and_reset_through_the_outbox
);

/// The JWKS server is on 127.0.0.1, which the outbound-URL guard refuses: each app of this
/// scenario lists exactly that server's address in `[outbound] allow`.
mod external_idp_tokens {
    use super::*;

    async fn run(db: Db) {
        let doc = Arc::new(std::sync::Mutex::new(json!({"keys": []})));
        let hits = Arc::new(AtomicUsize::new(0));
        let jwks_url = jwks_server(doc.clone(), hits.clone()).await;
        if let Some(app) = spawn_allowing(db, &jwks_url).await {
            super::external_idp_tokens(app, doc, hits, jwks_url).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        run(Db::Sqlite).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        run(Db::Postgres).await
    }
}

/// An app whose `[outbound] allow` lists the `host:port` of `url` (and nothing else); `None`
/// when the PostgreSQL variant is skipped.
pub async fn spawn_allowing(db: Db, url: &str) -> Option<TestApp> {
    let u = url::Url::parse(url).unwrap();
    let entry = format!(
        "{}:{}",
        u.host_str().unwrap(),
        u.port_or_known_default().unwrap()
    );
    TestApp::spawn_with(Opts::new(db).edit(move |c| c.outbound.allow = vec![entry])).await
}

async fn discovery_and_jwks(app: TestApp) {
    let d: Value = app
        .get("/.well-known/openid-configuration", "")
        .await
        .json()
        .await
        .unwrap();
    let public = &app.state.config.public_url;
    assert_eq!(d["issuer"], *public);
    assert_eq!(d["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(d["token_endpoint"], format!("{public}/oauth/token"));
    assert_eq!(d["jwks_uri"], format!("{public}/.well-known/jwks.json"));
    let d2: Value = app
        .get("/.well-known/oauth-authorization-server", "")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(d, d2);
    let jwks: Value = app
        .get("/.well-known/jwks.json", "")
        .await
        .json()
        .await
        .unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kty"], "RSA");
    assert_eq!(keys[0]["alg"], "RS256");
    for private in ["d", "p", "q", "dp", "dq", "qi"] {
        assert!(keys[0].get(private).is_none());
    }
    // The private key is stored encrypted, and the key file is private.
    let key_file = app.state.config.data_dir.join("signing.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Unknown endpoints under /oauth are JSON 404s; the token endpoint wants a form.
    let res = app
        .post(
            "/oauth/token",
            "",
            json!({"grant_type": "client_credentials"}),
        )
        .await;
    expect_oauth_error(res, StatusCode::BAD_REQUEST, "invalid_request").await;
    let res = form_post(&app, "/oauth/token", None, &[("grant_type", "password")]).await;
    expect_oauth_error(res, StatusCode::BAD_REQUEST, "unsupported_grant_type").await;
}

async fn scaikey_json_flow(app: TestApp) {
    set_owner_password(&app).await;
    let client_id = public_client(&app).await;
    // 1. identify
    let r: Value = app
        .post("/v1/auth/identify", "", json!({"email": OWNER_EMAIL}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["tenants"], json!([{"id": app.tenant_id, "name": "acme"}]));
    let r: Value = app
        .post(
            "/v1/auth/identify",
            "",
            json!({"email": "nobody@example.com"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["tenants"], json!([]));
    // 2. authorize → the hosted page's URL
    let (verifier, challenge) = pkce();
    let body = json!({"tenant_id": app.tenant_id, "client_id": client_id, "redirect_uri": REDIRECT,
        "code_challenge": challenge, "code_challenge_method": "S256", "state": "xyz"});
    let res = app.post("/v1/auth/authorize", "", body.clone()).await;
    assert_eq!(res.status(), StatusCode::OK);
    let url = res.json::<Value>().await.unwrap()["authorization_url"]
        .as_str()
        .unwrap()
        .to_string();
    let public = app.state.config.public_url.clone();
    assert!(url.starts_with(&format!("{public}/oauth/authorize?")));
    // The test app's public URL names port 0: point the browser at the real address.
    let url = url.replacen(&public, &app.base, 1);
    for (field, value) in [
        ("code_challenge_method", json!("plain")),
        ("redirect_uri", json!("http://127.0.0.1:9/elsewhere")),
        ("tenant_id", json!("ten_other")),
        ("code_challenge", json!("short")),
    ] {
        let mut b = body.clone();
        b[field] = value;
        let res = app.post("/v1/auth/authorize", "", b).await;
        expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
    }
    // 3. the user signs in
    let form = open_login_page(&app, &url).await;
    let res = submit_login(&app, &form, OWNER_EMAIL, PASSWORD).await;
    let (_, params) = location_params(&res);
    assert_eq!(params["state"], "xyz");
    // 4. token
    let res = app
        .post(
            "/v1/auth/token",
            "",
            json!({"code": params["code"], "code_verifier": verifier, "redirect_uri": REDIRECT, "client_id": client_id}),
        )
        .await;
    assert_eq!(
        res.headers()[reqwest::header::CACHE_CONTROL]
            .to_str()
            .unwrap(),
        "no-store"
    );
    let t: Value = res.json().await.unwrap();
    assert_eq!(t["token_type"], "Bearer");
    assert!(t["expires_in"].as_u64().unwrap() > 0);
    let access = t["access_token"].as_str().unwrap();
    assert_eq!(app.get("/v1/models", access).await.status(), StatusCode::OK);
    // refresh through the JSON endpoint
    let r = app
        .post(
            "/v1/auth/refresh",
            "",
            json!({"refresh_token": t["refresh_token"]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let t2: Value = r.json().await.unwrap();
    assert_ne!(t2["refresh_token"], t["refresh_token"]);
    let r = app
        .post(
            "/v1/auth/refresh",
            "",
            json!({"refresh_token": t["refresh_token"]}),
        )
        .await;
    expect_oauth_error(r, StatusCode::BAD_REQUEST, "invalid_grant").await;
    let access2 = t2["access_token"].as_str().unwrap();
    expect_error(
        app.get("/v1/models", access2).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_REVOKED",
    )
    .await;
}

async fn login_page_csrf_and_errors(app: TestApp) {
    set_owner_password(&app).await;
    let client_id = public_client(&app).await;
    let (_, challenge) = pkce();
    let url = authorize_url(&app, &client_id, REDIRECT, Some(&challenge), "s1", "openid");
    let form = open_login_page(&app, &url).await;

    // No cookie, or a cookie that does not match the field: 403, no code.
    let res = with_form(
        browser().post(app.url(&form.action)),
        &[
            ("email", OWNER_EMAIL),
            ("password", PASSWORD),
            ("csrf_token", form.csrf.as_str()),
        ],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let other = LoginForm {
        cookie: "tg_csrf=forged".into(),
        csrf: form.csrf.clone(),
        action: form.action.clone(),
    };
    let res = submit_login(&app, &other, OWNER_EMAIL, PASSWORD).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    // Wrong password: the page again, with an error, and an audit event.
    let res = submit_login(&app, &form, OWNER_EMAIL, "not the password").await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let html = res.text().await.unwrap();
    assert!(html.contains("Invalid email or password") && html.contains("name=\"password\""));
    assert!(html.contains(OWNER_EMAIL), "the email is kept in the form");
    let events = audit_events(&app, &app.tenant_id).await;
    let failed = events
        .iter()
        .find(|e| e.action == "auth.login_failed")
        .unwrap();
    assert_eq!(failed.outcome, "failure");
    assert!(
        !serde_json::to_string(&events)
            .unwrap()
            .contains("not the password")
    );
    // Unknown email: the same answer.
    let res = submit_login(&app, &form, "ghost@example.com", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    // An unknown client or an unregistered redirect URI is an error page, never a redirect.
    for bad in [
        authorize_url(
            &app,
            "cli_unknown",
            REDIRECT,
            Some(&challenge),
            "s",
            "openid",
        ),
        authorize_url(
            &app,
            &client_id,
            "http://127.0.0.1:9/evil",
            Some(&challenge),
            "s",
            "openid",
        ),
    ] {
        let res = browser().get(&bad).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert!(res.headers().get(reqwest::header::LOCATION).is_none());
    }
    // Other errors go back to the client with its state.
    let mut u = url::Url::parse(&authorize_url(
        &app,
        &client_id,
        REDIRECT,
        Some(&challenge),
        "s2",
        "openid",
    ))
    .unwrap();
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .map(|(k, v)| {
            (
                k.to_string(),
                if k == "response_type" {
                    "token".into()
                } else {
                    v.to_string()
                },
            )
        })
        .collect();
    u.query_pairs_mut().clear().extend_pairs(pairs);
    let res = browser().get(u.as_str()).send().await.unwrap();
    let (base, params) = location_params(&res);
    assert_eq!(base, REDIRECT);
    assert_eq!(params["error"], "unsupported_response_type");
    assert_eq!(params["state"], "s2");

    // The right password works with the original form.
    let res = submit_login(&app, &form, OWNER_EMAIL, PASSWORD).await;
    let (_, params) = location_params(&res);
    assert!(params.contains_key("code"));
}

async fn login_is_throttled_per_account_and_per_ip(app: TestApp) {
    set_owner_password(&app).await;
    let client_id = public_client(&app).await;
    let (_, challenge) = pkce();
    let url = authorize_url(&app, &client_id, REDIRECT, Some(&challenge), "s", "openid");
    let form = open_login_page(&app, &url).await;
    for _ in 0..tollgate::identity::throttle::ACCOUNT_MAX {
        let res = submit_login(&app, &form, OWNER_EMAIL, "wrong password!").await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    // Now even the right password waits.
    let res = submit_login(&app, &form, OWNER_EMAIL, PASSWORD).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = res.headers()[reqwest::header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    // Per address: many accounts from one address.
    let ip_left = tollgate::identity::throttle::IP_MAX - tollgate::identity::throttle::ACCOUNT_MAX;
    for i in 0..ip_left {
        let res = submit_login(
            &app,
            &form,
            &format!("ghost{i}@example.com"),
            "wrong password!",
        )
        .await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    let res = submit_login(&app, &form, "fresh@example.com", "wrong password!").await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
}

async fn pkce_rules(app: TestApp) {
    set_owner_password(&app).await;
    let client_id = public_client(&app).await;
    // plain is rejected, and a public client must use PKCE.
    for (method, challenge) in [
        (Some("plain"), Some("abc")),
        (None, Some("abc")),
        (None, None),
    ] {
        let mut u = url::Url::parse(&authorize_url(
            &app, &client_id, REDIRECT, None, "s", "openid",
        ))
        .unwrap();
        if let Some(c) = challenge {
            u.query_pairs_mut().append_pair("code_challenge", c);
        }
        if let Some(m) = method {
            u.query_pairs_mut().append_pair("code_challenge_method", m);
        }
        let res = browser().get(u.as_str()).send().await.unwrap();
        let (_, params) = location_params(&res);
        assert_eq!(params["error"], "invalid_request", "{method:?}");
        assert_eq!(params["state"], "s");
    }
    let token = |code: String, verifier: Option<String>, redirect: &str, cid: &str| {
        let mut b = json!({"code": code, "redirect_uri": redirect, "client_id": cid});
        if let Some(v) = verifier {
            b["code_verifier"] = json!(v);
        }
        app.post("/v1/auth/token", "", b)
    };
    // Missing verifier, wrong verifier, wrong redirect URI: invalid_grant (and the code is spent).
    let (verifier, challenge) = pkce();
    let code = login_code(
        &app,
        &client_id,
        REDIRECT,
        Some(&challenge),
        OWNER_EMAIL,
        PASSWORD,
        "openid",
    )
    .await;
    expect_oauth_error(
        token(code.clone(), None, REDIRECT, &client_id).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    )
    .await;
    expect_oauth_error(
        token(code, Some(verifier.clone()), REDIRECT, &client_id).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    )
    .await;
    let code = login_code(
        &app,
        &client_id,
        REDIRECT,
        Some(&challenge),
        OWNER_EMAIL,
        PASSWORD,
        "openid",
    )
    .await;
    let (other_verifier, _) = pkce();
    expect_oauth_error(
        token(code, Some(other_verifier), REDIRECT, &client_id).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    )
    .await;
    let failed: Vec<_> = audit_events(&app, &app.tenant_id)
        .await
        .into_iter()
        .filter(|e| e.action == "auth.code_exchange_failed")
        .collect();
    assert_eq!(failed.len(), 2, "each failed exchange is audited");
    let events = audit_events(&app, &app.tenant_id).await;
    assert!(events.iter().any(|e| e.action == "auth.code_reused"));
    // Codes are single-use: a replay fails and revokes what the first exchange produced.
    let code = login_code(
        &app,
        &client_id,
        REDIRECT,
        Some(&challenge),
        OWNER_EMAIL,
        PASSWORD,
        "openid",
    )
    .await;
    let first = token(code.clone(), Some(verifier.clone()), REDIRECT, &client_id).await;
    assert_eq!(first.status(), StatusCode::OK);
    let first: Value = first.json().await.unwrap();
    let access = first["access_token"].as_str().unwrap();
    assert_eq!(app.get("/v1/models", access).await.status(), StatusCode::OK);
    expect_oauth_error(
        token(code, Some(verifier.clone()), REDIRECT, &client_id).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    )
    .await;
    expect_error(
        app.get("/v1/models", access).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_REVOKED",
    )
    .await;
    // A code issued to one client cannot be redeemed by another.
    let other_client = public_client(&app).await;
    let code = login_code(
        &app,
        &client_id,
        REDIRECT,
        Some(&challenge),
        OWNER_EMAIL,
        PASSWORD,
        "openid",
    )
    .await;
    expect_oauth_error(
        token(code, Some(verifier.clone()), REDIRECT, &other_client).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    )
    .await;

    // A confidential client without PKCE: a code_verifier without a stored challenge is rejected.
    let c = create_client(
        &app,
        &app.owner_key,
        json!({"name": "server app", "confidential": true, "redirect_uris": [REDIRECT]}),
    )
    .await;
    let (cid, secret) = (
        c["client_id"].as_str().unwrap(),
        c["client_secret"].as_str().unwrap(),
    );
    let code = login_code(&app, cid, REDIRECT, None, OWNER_EMAIL, PASSWORD, "openid").await;
    let res = form_post(
        &app,
        "/oauth/token",
        Some((cid, secret)),
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    expect_oauth_error(res, StatusCode::BAD_REQUEST, "invalid_grant").await;
    // Without the verifier (and with its secret) it works.
    let code = login_code(&app, cid, REDIRECT, None, OWNER_EMAIL, PASSWORD, "openid").await;
    let res = form_post(
        &app,
        "/oauth/token",
        Some((cid, secret)),
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
        ],
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    // Repeated parameters are invalid_request.
    let res = app
        .client
        .post(app.url("/oauth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    expect_oauth_error(res, StatusCode::BAD_REQUEST, "invalid_request").await;
}

async fn logout_revoke_and_introspect(app: TestApp) {
    set_owner_password(&app).await;
    let client_id = public_client(&app).await;

    // Logout with the access token revokes the session.
    let t = login(&app, &client_id, OWNER_EMAIL, PASSWORD).await;
    let access = t["access_token"].as_str().unwrap();
    let res = app
        .req(reqwest::Method::POST, "/v1/auth/logout", access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    expect_error(
        app.get("/v1/models", access).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_REVOKED",
    )
    .await;
    let r = app
        .post(
            "/v1/auth/refresh",
            "",
            json!({"refresh_token": t["refresh_token"]}),
        )
        .await;
    expect_oauth_error(r, StatusCode::BAD_REQUEST, "invalid_grant").await;
    let res = app
        .req(reqwest::Method::POST, "/v1/auth/logout", "")
        .send()
        .await
        .unwrap();
    expect_error(res, StatusCode::UNAUTHORIZED, "AUTH_MISSING").await;

    // Logout with the refresh token.
    let t = login(&app, &client_id, OWNER_EMAIL, PASSWORD).await;
    let res = app
        .post(
            "/v1/auth/logout",
            "",
            json!({"refresh_token": t["refresh_token"]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    expect_error(
        app.get("/v1/models", t["access_token"].as_str().unwrap())
            .await,
        StatusCode::UNAUTHORIZED,
        "AUTH_REVOKED",
    )
    .await;
    assert!(
        audit_events(&app, &app.tenant_id)
            .await
            .iter()
            .any(|e| e.action == "auth.logout")
    );

    // RFC 7009: revoking a refresh token ends the session; unknown tokens are fine.
    let t = login(&app, &client_id, OWNER_EMAIL, PASSWORD).await;
    let rt = t["refresh_token"].as_str().unwrap();
    let res = form_post(
        &app,
        "/oauth/revoke",
        None,
        &[
            ("token", rt),
            ("client_id", &client_id),
            ("token_type_hint", "refresh_token"),
        ],
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    expect_error(
        app.get("/v1/models", t["access_token"].as_str().unwrap())
            .await,
        StatusCode::UNAUTHORIZED,
        "AUTH_REVOKED",
    )
    .await;
    let res = form_post(
        &app,
        "/oauth/revoke",
        None,
        &[("token", "garbage"), ("client_id", &client_id)],
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);

    // RFC 7662: a confidential client of the tenant introspects.
    let (sa, secret) = service_account(&app, &app.owner_key, &["viewer"]).await;
    let t = login(&app, &client_id, OWNER_EMAIL, PASSWORD).await;
    let access = t["access_token"].as_str().unwrap();
    let res = form_post(
        &app,
        "/oauth/introspect",
        Some((&sa, &secret)),
        &[("token", access)],
    )
    .await;
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["active"], true, "{v}");
    assert_eq!(v["sub"], app.owner_id);
    assert_eq!(v["client_id"], client_id);
    let res = form_post(
        &app,
        "/oauth/introspect",
        Some((&sa, &secret)),
        &[("token", t["refresh_token"].as_str().unwrap())],
    )
    .await;
    assert_eq!(res.json::<Value>().await.unwrap()["active"], true);
    let res = form_post(
        &app,
        "/oauth/introspect",
        Some((&sa, &secret)),
        &[("token", "nonsense")],
    )
    .await;
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"active": false}));
    // A public client may not introspect; another tenant's service account sees nothing.
    let res = form_post(
        &app,
        "/oauth/introspect",
        None,
        &[("token", access), ("client_id", &client_id)],
    )
    .await;
    expect_oauth_error(res, StatusCode::UNAUTHORIZED, "invalid_client").await;
    let (_, other_key) = app.other_tenant("globex").await;
    let (osa, osecret) = service_account(&app, &other_key, &["viewer"]).await;
    let res = form_post(
        &app,
        "/oauth/introspect",
        Some((&osa, &osecret)),
        &[("token", access)],
    )
    .await;
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"active": false}));
    // A client cannot revoke another client's tokens.
    let res = form_post(
        &app,
        "/oauth/revoke",
        Some((&osa, &osecret)),
        &[("token", t["refresh_token"].as_str().unwrap())],
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(app.get("/v1/models", access).await.status(), StatusCode::OK);
}

async fn permissions_follow_current_roles(app: TestApp) {
    let client_id = public_client(&app).await;
    let user_id = add_member(&app, "dev@example.com", &["developer"]).await;
    let t = login(&app, &client_id, "dev@example.com", PASSWORD).await;
    let access = t["access_token"].as_str().unwrap();
    assert_eq!(
        app.chat(access, chat_body("mock-chat")).await.status(),
        StatusCode::OK
    );
    // Demoted to viewer: the same token can no longer chat.
    let res = app
        .put(
            &format!("/v1/users/{user_id}/roles"),
            &app.owner_key,
            json!({"roles": ["viewer"]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    expect_error(
        app.chat(access, chat_body("mock-chat")).await,
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
    )
    .await;
    assert_eq!(app.get("/v1/models", access).await.status(), StatusCode::OK);
    // Removed from the tenant: the token stops working, and refresh fails.
    let res = app
        .delete(&format!("/v1/users/{user_id}"), &app.owner_key)
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    expect_error(
        app.get("/v1/models", access).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_REVOKED",
    )
    .await;
    let r = app
        .post(
            "/v1/auth/refresh",
            "",
            json!({"refresh_token": t["refresh_token"]}),
        )
        .await;
    expect_oauth_error(r, StatusCode::BAD_REQUEST, "invalid_grant").await;

    // Scopes naming permissions narrow the token.
    let owner_client = public_client(&app).await;
    set_owner_password(&app).await;
    let (verifier, challenge) = pkce();
    let code = login_code(
        &app,
        &owner_client,
        REDIRECT,
        Some(&challenge),
        OWNER_EMAIL,
        PASSWORD,
        "openid models:read",
    )
    .await;
    let t: Value = app
        .post("/v1/auth/token", "", json!({"code": code, "code_verifier": verifier, "redirect_uri": REDIRECT, "client_id": owner_client}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(t["scope"], "openid models:read");
    let narrow = t["access_token"].as_str().unwrap();
    let me: Value = app.get("/v1/me", narrow).await.json().await.unwrap();
    assert_eq!(me["permissions"], json!(["models:read"]));
    expect_error(
        app.chat(narrow, chat_body("mock-chat")).await,
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
    )
    .await;
}

async fn signing_key_rotation_keeps_old_tokens_valid(app: TestApp) {
    let (id, secret) = service_account(&app, &app.owner_key, &["developer"]).await;
    let get_token = || async {
        let res = form_post(
            &app,
            "/oauth/token",
            Some((&id, &secret)),
            &[("grant_type", "client_credentials")],
        )
        .await;
        res.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let old = get_token().await;
    let old_kid = jwt_header(&old)["kid"].as_str().unwrap().to_string();
    let new_kid = tollgate::identity::keys::rotate(&app.state.store, &app.state.config, None)
        .await
        .unwrap();
    assert_ne!(new_kid, old_kid);
    app.state.auth.identity.keys.forget_signer().await;
    let new = get_token().await;
    assert_eq!(jwt_header(&new)["kid"], new_kid);
    // Both keys are published; both tokens work.
    let jwks: Value = app
        .get("/.well-known/jwks.json", "")
        .await
        .json()
        .await
        .unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(kids.contains(&old_kid.as_str()) && kids.contains(&new_kid.as_str()));
    assert_eq!(app.get("/v1/me", &old).await.status(), StatusCode::OK);
    assert_eq!(app.get("/v1/me", &new).await.status(), StatusCode::OK);
    let listed = tollgate::identity::keys::list(&app.state.store)
        .await
        .unwrap();
    let old_row = listed
        .iter()
        .find(|k| k["kid"] == old_kid.as_str())
        .unwrap();
    assert!(old_row["retired_at"].is_string() && old_row["expires_at"].is_string());
    assert!(
        audit_events(&app, "platform")
            .await
            .iter()
            .any(|e| e.action == "signing_key.rotated")
    );

    // The CLI rotates too (same store, same data_dir and so the same encryption key file).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["signing-keys", "rotate", "--database", &app.db_url])
        .env("TOLLGATE_DATA_DIR", &app.state.config.data_dir)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let cli_kid = printed["kid"].as_str().unwrap().to_string();
    app.state.auth.identity.keys.forget_signer().await;
    let newest = get_token().await;
    assert_eq!(jwt_header(&newest)["kid"], cli_kid.as_str());
    for t in [&old, &new, &newest] {
        assert_eq!(app.get("/v1/me", t).await.status(), StatusCode::OK);
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["signing-keys", "list", "--database", &app.db_url])
        .env("TOLLGATE_DATA_DIR", &app.state.config.data_dir)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(listed.lines().count(), 3, "{listed}");
    assert!(!listed.contains("private"));

    // When the overlap has passed (simulated: the retired keys' expiry moved to the past), the
    // retired keys leave the JWKS; the current one stays.
    let mut tx = app.state.store.begin().await.unwrap();
    let now = tollgate::util::now_ms();
    expire_retired_keys(&mut tx, &cli_kid, now).await;
    tx.commit().await.unwrap();
    let jwks: Value = app
        .get("/.well-known/jwks.json", "")
        .await
        .json()
        .await
        .unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, vec![cli_kid.as_str()]);
}

/// Moves the expiry of every retired key (all but `keep`) to just before `now`, through the
/// store's own rotation function.
async fn expire_retired_keys(tx: &mut tollgate::store::Tx, keep: &str, now: i64) {
    tollgate::store::identity::expire_retired_signing_keys(tx, keep, now - 1)
        .await
        .unwrap();
}

/// ES256 selected in the configuration, and the key-encryption key taken from the configured
/// secret (no `signing.key` file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_with_a_configured_secret() {
    let app = TestApp::spawn_with(Opts::new(Db::Sqlite).edit(|c| {
        c.auth.signing_alg = "ES256".into();
        c.auth.signing_key_secret = Some(tollgate::config::Secret::new(
            "a long configured secret value",
        ));
    }))
    .await
    .unwrap();
    assert!(!app.state.config.data_dir.join("signing.key").exists());
    assert!(!format!("{:?}", app.state.config).contains("a long configured secret value"));
    let (id, secret) = service_account(&app, &app.owner_key, &["developer"]).await;
    let res = form_post(
        &app,
        "/oauth/token",
        Some((&id, &secret)),
        &[("grant_type", "client_credentials")],
    )
    .await;
    let t: Value = res.json().await.unwrap();
    let token = t["access_token"].as_str().unwrap();
    assert_eq!(jwt_header(token)["alg"], "ES256");
    assert_eq!(app.get("/v1/me", token).await.status(), StatusCode::OK);
    let jwks: Value = app
        .get("/.well-known/jwks.json", "")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["kty"], "EC");
    assert_eq!(jwks["keys"][0]["crv"], "P-256");
    assert!(jwks["keys"][0].get("d").is_none());
    let d: Value = app
        .get("/.well-known/openid-configuration", "")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(d["id_token_signing_alg_values_supported"], json!(["ES256"]));
}

/// A second gateway instance on the same store verifies platform tokens with the published
/// public keys, and a logout on the first instance reaches it through the invalidation log.
async fn tokens_verify_and_revoke_across_instances(app: TestApp) {
    set_owner_password(&app).await;
    let client_id = public_client(&app).await;
    let t = login(&app, &client_id, OWNER_EMAIL, PASSWORD).await;
    let access = t["access_token"].as_str().unwrap().to_string();
    let other = app.second_instance().await;
    assert_eq!(other.get("/v1/me", &access).await.status(), StatusCode::OK);
    let jwks1: Value = app
        .get("/.well-known/jwks.json", "")
        .await
        .json()
        .await
        .unwrap();
    let jwks2: Value = other
        .get("/.well-known/jwks.json", "")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(jwks1, jwks2);
    let res = app
        .req(reqwest::Method::POST, "/v1/auth/logout", &access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let revoked = eventually(std::time::Duration::from_secs(2), || async {
        other.get("/v1/me", &access).await.status() == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(
        revoked,
        "the second instance rejects the logged-out token within 2 s"
    );
    other.shutdown().await;
}

/// A JWKS server on a real socket, counting fetches.
pub async fn jwks_server(doc: Arc<std::sync::Mutex<Value>>, hits: Arc<AtomicUsize>) -> String {
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let doc = doc.clone();
            let hits = hits.clone();
            async move {
                hits.fetch_add(1, Ordering::SeqCst);
                axum::Json(doc.lock().unwrap().clone())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/jwks.json")
}

pub fn rsa_jwk(kp: &aws_lc_rs::rsa::KeyPair, kid: &str) -> Value {
    let pk = kp.public_key();
    json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
        "n": URL_SAFE_NO_PAD.encode(pk.modulus().big_endian_without_leading_zero()),
        "e": URL_SAFE_NO_PAD.encode(pk.exponent().big_endian_without_leading_zero())})
}

pub fn sign_rs256(kp: &aws_lc_rs::rsa::KeyPair, kid: &str, claims: &Value) -> String {
    let h = json!({"alg": "RS256", "typ": "JWT", "kid": kid});
    let msg = format!("{}.{}", b64json(&h), b64json(claims));
    let mut sig = vec![0u8; kp.public_modulus_len()];
    kp.sign(
        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        msg.as_bytes(),
        &mut sig,
    )
    .unwrap();
    format!("{msg}.{}", URL_SAFE_NO_PAD.encode(sig))
}

async fn external_idp_tokens(
    app: TestApp,
    doc: Arc<std::sync::Mutex<Value>>,
    hits: Arc<AtomicUsize>,
    jwks_url: String,
) {
    let k1 = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let k2 = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    *doc.lock().unwrap() = json!({"keys": [rsa_jwk(&k1, "k1")]});
    let issuer = "https://idp.example.com";
    let res = app
        .post(
            "/v1/identity-providers",
            &app.owner_key,
            json!({"issuer": issuer, "jwks_url": jwks_url, "audience": "tollgate-acme", "claim": "email", "default_role": "viewer"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let reg: Value = res.json().await.unwrap();
    let now = tollgate::util::now_ms() / 1000;
    let claims = |email: &str| json!({"iss": issuer, "aud": "tollgate-acme", "sub": "ext-1", "email": email, "exp": now + 600, "iat": now});

    // A member's email: the member's current roles apply.
    let t = sign_rs256(&k1, "k1", &claims(OWNER_EMAIL));
    let me: Value = app.get("/v1/me", &t).await.json().await.unwrap();
    assert_eq!(me["credential"]["type"], "external_jwt", "{me}");
    assert_eq!(me["user_id"], app.owner_id);
    assert!(
        me["permissions"]
            .as_array()
            .unwrap()
            .contains(&json!("tenant:admin"))
    );
    // An unknown email gets the default role.
    let t = sign_rs256(&k1, "k1", &claims("stranger@example.com"));
    let me: Value = app.get("/v1/me", &t).await.json().await.unwrap();
    assert!(me["user_id"].is_null());
    assert_eq!(
        me["permissions"],
        json!(["models:read", "operations:read", "usage:read"])
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the JWKS is cached");

    // The IdP rotates to k2: an unknown kid refetches once.
    doc.lock().unwrap()["keys"] = json!([rsa_jwk(&k1, "k1"), rsa_jwk(&k2, "k2")]);
    let t2 = sign_rs256(&k2, "k2", &claims(OWNER_EMAIL));
    // The first fetch was under a minute ago: no refetch yet, so the kid is unknown.
    expect_error(
        app.get("/v1/me", &t2).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_INVALID",
    )
    .await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "at most one refetch per minute"
    );
    // Once the refetch interval has passed, the unknown kid triggers one refetch (shortened here
    // so the test need not wait a minute), and another unknown kid right after triggers none.
    app.state
        .auth
        .identity
        .external
        .set_refetch_min(std::time::Duration::from_millis(200));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let me: Value = app.get("/v1/me", &t2).await.json().await.unwrap();
    assert_eq!(me["user_id"], app.owner_id, "{me}");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    // Back to the one-minute interval: the next unknown kid right away refetches nothing.
    app.state
        .auth
        .identity
        .external
        .set_refetch_min(tollgate::identity::external::REFETCH_MIN);
    let t3 = sign_rs256(&k2, "k3", &claims(OWNER_EMAIL));
    expect_error(
        app.get("/v1/me", &t3).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_INVALID",
    )
    .await;
    expect_error(
        app.get("/v1/me", &t3).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_INVALID",
    )
    .await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "no second refetch within the interval"
    );
    // Wrong audience, wrong signature, alg confusion with the IdP's public key.
    let mut wrong = claims(OWNER_EMAIL);
    wrong["aud"] = json!("someone-else");
    expect_error(
        app.get("/v1/me", &sign_rs256(&k1, "k1", &wrong)).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_INVALID",
    )
    .await;
    expect_error(
        app.get("/v1/me", &sign_rs256(&k2, "k1", &claims(OWNER_EMAIL)))
            .await,
        StatusCode::UNAUTHORIZED,
        "AUTH_INVALID",
    )
    .await;
    let mut expired = claims(OWNER_EMAIL);
    expired["exp"] = json!(now - 600);
    expect_error(
        app.get("/v1/me", &sign_rs256(&k1, "k1", &expired)).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_TOKEN_EXPIRED",
    )
    .await;

    // No escalation through an IdP: external tokens never carry platform-owner powers, and an
    // issuer registered by a narrower admin caps what its tokens can do, even for the owner's email.
    let me: Value = app
        .get("/v1/me", &sign_rs256(&k1, "k1", &claims(OWNER_EMAIL)))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["platform_admin"], false);
    let res = app
        .post(
            "/v1/roles",
            &app.owner_key,
            json!({"name": "idp-admin", "permissions": ["tenant:admin", "models:read"]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let (_, narrow_key) = app.add_user("idp.admin@example.com", &["idp-admin"]).await;
    let res = app
        .post(
            "/v1/identity-providers",
            &narrow_key,
            json!({"issuer": issuer, "jwks_url": jwks_url, "audience": "narrow", "claim": "email"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let mut narrow_claims = claims(OWNER_EMAIL);
    narrow_claims["aud"] = json!("narrow");
    let me: Value = app
        .get("/v1/me", &sign_rs256(&k1, "k1", &narrow_claims))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["user_id"], app.owner_id);
    assert_eq!(
        me["permissions"],
        json!(["models:read", "tenant:admin"]),
        "{me}"
    );
    // A default role above the registering admin's permissions is refused.
    let res = app
        .post(
            "/v1/identity-providers",
            &narrow_key,
            json!({"issuer": "https://other-idp.example.com", "jwks_url": jwks_url, "audience": "x", "default_role": "owner"}),
        )
        .await;
    expect_error(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;

    // Another tenant cannot delete it; deleting it makes its tokens invalid.
    let (_, other_key) = app.other_tenant("globex").await;
    let path = format!("/v1/identity-providers/{}", reg["id"].as_str().unwrap());
    expect_error(
        app.delete(&path, &other_key).await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    )
    .await;
    assert_eq!(
        app.delete(&path, &app.owner_key).await.status(),
        StatusCode::NO_CONTENT
    );
    expect_error(
        app.get("/v1/me", &t).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_INVALID",
    )
    .await;
}

/// Reads the newest `.eml` in the outbox and returns its decoded text.
fn read_outbox(app: &TestApp, count: usize) -> String {
    let dir = app.state.config.data_dir.join("outbox");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    assert_eq!(files.len(), count, "emails in the outbox");
    files.sort();
    let raw = std::fs::read_to_string(files.last().unwrap()).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(files.last().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Undo quoted-printable soft breaks and escapes, if the body was encoded that way.
    raw.replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=")
}

/// Every message in the outbox, decoded.
fn outbox_mails(app: &TestApp) -> Vec<String> {
    let dir = app.state.config.data_dir.join("outbox");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    rd.map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .replace("=\r\n", "")
                .replace("=\n", "")
                .replace("=3D", "=")
        })
        .collect()
}

/// The personal tenant and Console client that the sign-up of `email` created.
async fn signup_console(app: &TestApp, email: &str) -> (String, String) {
    let pool = app.state.store.pool();
    let mut conn = pool.acquire().await.unwrap();
    let user = tollgate::store::tenants::find_user_by_email(&mut conn, email)
        .await
        .unwrap()
        .unwrap();
    let tenants = tollgate::store::identity::user_tenant_ids(&mut conn, &user.id)
        .await
        .unwrap();
    drop(conn);
    assert_eq!(tenants.len(), 1);
    let clients = tollgate::store::identity::list_clients(pool, &tenants[0])
        .await
        .unwrap();
    let console = clients.iter().find(|c| c.name == "Console").unwrap();
    (tenants[0].clone(), console.id.clone())
}

fn token_after(text: &str, marker: &str) -> String {
    let i = text.find(marker).unwrap() + marker.len();
    text[i..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect()
}

async fn signup_verify_and_reset_through_the_outbox(app: TestApp) {
    let email = "new.person@example.com";
    let res = app
        .post(
            "/v1/auth/signup",
            "",
            json!({"email": email, "password": "short"}),
        )
        .await;
    expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
    let res = app
        .post(
            "/v1/auth/signup",
            "",
            json!({"email": email, "password": PASSWORD}),
        )
        .await;
    // Sign-up answers a new and a known address alike (202, one body): it reveals nothing about
    // which addresses are registered. Only the mailbox learns which it was.
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let s: Value = res.json().await.unwrap();
    assert_eq!(s["status"], "check_your_email");
    let redirect = format!("{}/console/callback", app.state.config.public_url);
    let res = app
        .post(
            "/v1/auth/signup",
            "",
            json!({"email": email, "password": PASSWORD}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_eq!(res.json::<Value>().await.unwrap(), s);

    // The account and the emails are made after the answer.
    eventually(std::time::Duration::from_secs(10), || async {
        outbox_mails(&app).len() >= 2
    })
    .await;
    let mails = outbox_mails(&app);
    assert_eq!(
        mails.len(),
        2,
        "a verification and a sign-up attempt notice"
    );
    let mail = mails
        .iter()
        .find(|m| m.contains("Subject: Verify your email address"))
        .unwrap();
    assert!(mail.contains(&format!("To: {email}")));
    assert!(!mail.contains(PASSWORD));
    let token = token_after(mail, "verify-email?token=");
    assert!(token.len() >= 40);
    let attempt = mails
        .iter()
        .find(|m| m.contains("Subject: Someone tried to sign up"))
        .unwrap();
    assert!(attempt.contains(&format!("To: {email}")));
    assert!(!attempt.contains("token=") && !attempt.contains(PASSWORD));
    // The sign-up's Console client, read from the store: the caller learns it on verification.
    let (tenant_id, console) = signup_console(&app, email).await;

    // Not verified yet: the login page refuses (with the right password).
    let (verifier, challenge) = pkce();
    let url = authorize_url(&app, &console, &redirect, Some(&challenge), "s", "openid");
    let form = open_login_page(&app, &url).await;
    let res = submit_login(&app, &form, email, PASSWORD).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(res.text().await.unwrap().contains("verify your email"));

    let res = app.get("/v1/auth/verify-email", "").await;
    expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
    // Verify (the link is single-use).
    let res = app
        .get(&format!("/v1/auth/verify-email?token={token}"), "")
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["email_verified"], true);
    assert_eq!(v["tenant_id"], tenant_id.as_str());
    assert_eq!(v["console_client_id"], console.as_str());
    let res = app
        .get(&format!("/v1/auth/verify-email?token={token}"), "")
        .await;
    expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
    let events = audit_events(&app, &tenant_id).await;
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert!(
        actions.contains(&"user.signed_up") && actions.contains(&"auth.email_verified"),
        "{actions:?}"
    );

    // Now the console login works, as the owner of the personal tenant.
    let form = open_login_page(&app, &url).await;
    let res = submit_login(&app, &form, email, PASSWORD).await;
    let (_, params) = location_params(&res);
    let t: Value = app
        .post("/v1/auth/token", "", json!({"code": params["code"], "code_verifier": verifier, "redirect_uri": redirect, "client_id": console}))
        .await
        .json()
        .await
        .unwrap();
    let access = t["access_token"].as_str().unwrap().to_string();
    let me: Value = app.get("/v1/me", &access).await.json().await.unwrap();
    assert_eq!(me["tenant_id"], tenant_id.as_str());
    assert!(
        me["permissions"]
            .as_array()
            .unwrap()
            .contains(&json!("tenant:admin"))
    );

    // Password reset through the outbox: unknown emails get the same answer and no mail.
    let res = app
        .post(
            "/v1/auth/password-reset",
            "",
            json!({"email": "nobody@example.com"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let res = app
        .post("/v1/auth/password-reset", "", json!({"email": email}))
        .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let mail = read_outbox(&app, 3);
    let reset = token_after(&mail, "valid for 1 hour):\r\n\r\n");
    let reset = if reset.is_empty() {
        token_after(&mail, "valid for 1 hour):\n\n")
    } else {
        reset
    };
    assert!(reset.len() >= 40, "{mail}");
    let res = app
        .post(
            "/v1/auth/password-reset/confirm",
            "",
            json!({"token": reset, "password": "a brand new password"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    // Sessions were revoked; the old password no longer works; the new one does.
    expect_error(
        app.get("/v1/me", &access).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_REVOKED",
    )
    .await;
    let (_, challenge) = pkce();
    let url = authorize_url(&app, &console, &redirect, Some(&challenge), "s", "openid");
    let form = open_login_page(&app, &url).await;
    assert_eq!(
        submit_login(&app, &form, email, PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let res = submit_login(&app, &form, email, "a brand new password").await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let res = app
        .post(
            "/v1/auth/password-reset/confirm",
            "",
            json!({"token": reset, "password": "yet another password"}),
        )
        .await;
    expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
    // Emails are rate limited per address: past 5 requests for one address in the window (so far
    // 2 sign-ups and 1 reset) the next is refused, whether or not the address exists.
    for _ in 0..2 {
        let res = app
            .post("/v1/auth/password-reset", "", json!({"email": email}))
            .await;
        assert_eq!(res.status(), StatusCode::ACCEPTED);
    }
    let res = app
        .post("/v1/auth/password-reset", "", json!({"email": email}))
        .await;
    assert!(res.headers().contains_key(reqwest::header::RETRY_AFTER));
    expect_error(res, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED").await;
}

/// A minimal SMTP server on a real socket that records the DATA of each message.
async fn fake_smtp(messages: Arc<std::sync::Mutex<Vec<String>>>) -> u16 {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let messages = messages.clone();
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut lines = BufReader::new(r).lines();
                w.write_all(b"220 fake ESMTP\r\n").await.unwrap();
                while let Ok(Some(line)) = lines.next_line().await {
                    let cmd = line.to_ascii_uppercase();
                    if cmd.starts_with("EHLO") || cmd.starts_with("HELO") {
                        w.write_all(b"250-fake\r\n250 8BITMIME\r\n").await.unwrap();
                    } else if cmd.starts_with("DATA") {
                        w.write_all(b"354 go ahead\r\n").await.unwrap();
                        let mut data = String::new();
                        while let Ok(Some(l)) = lines.next_line().await {
                            if l == "." {
                                break;
                            }
                            data.push_str(&l);
                            data.push('\n');
                        }
                        messages.lock().unwrap().push(data);
                        w.write_all(b"250 queued\r\n").await.unwrap();
                    } else if cmd.starts_with("QUIT") {
                        w.write_all(b"221 bye\r\n").await.unwrap();
                        return;
                    } else {
                        w.write_all(b"250 OK\r\n").await.unwrap();
                    }
                }
            });
        }
    });
    port
}

/// With `email.smtp_url` set, the verification email goes over SMTP (and not to the outbox).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signup_email_over_smtp() {
    let messages = Arc::new(std::sync::Mutex::new(Vec::new()));
    let port = fake_smtp(messages.clone()).await;
    let app = TestApp::spawn_with(Opts::new(Db::Sqlite).edit(move |c| {
        c.email.smtp_url = tollgate::config::Secret::new(format!("smtp://127.0.0.1:{port}"));
    }))
    .await
    .unwrap();
    let res = app
        .post(
            "/v1/auth/signup",
            "",
            json!({"email": "smtp.user@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let got = eventually(std::time::Duration::from_secs(5), || async {
        !messages.lock().unwrap().is_empty()
    })
    .await;
    assert!(got, "a message reached the SMTP server");
    let msg = messages.lock().unwrap()[0]
        .replace("=\n", "")
        .replace("=3D", "=");
    assert!(msg.contains("To: smtp.user@example.com"), "{msg}");
    let token = token_after(&msg, "verify-email?token=");
    assert!(token.len() >= 40, "{msg}");
    assert!(!app.state.config.data_dir.join("outbox").exists());
    let res = app
        .get(&format!("/v1/auth/verify-email?token={token}"), "")
        .await;
    assert_eq!(res.status(), StatusCode::OK);
}
