//! The OAuth flows end to end (SPEC §4.3), driven by an independent OAuth client library (the
//! `oauth2` crate) against the running gateway: authorization code + PKCE through the hosted
//! login page, `/v1/models` with the access token, refresh rotation, and lock-out of the whole
//! family when an old refresh token is replayed. Client credentials for a service account that
//! chats with an end-user id.

use oauth2::basic::BasicClient;
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, PkceCodeChallenge, RedirectUrl,
    Scope, TokenResponse, TokenUrl,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::oauth_support::*;
use crate::store_tests;

/// The `oauth2` crate's HTTP client hook, over reqwest 0.13 (its bundled reqwest is another
/// major version).
async fn http(req: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, std::io::Error> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(std::io::Error::other)?;
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes())
        .map_err(std::io::Error::other)?;
    let mut r = client.request(method, req.uri().to_string());
    for (k, v) in req.headers() {
        r = r.header(k.as_str(), v.as_bytes());
    }
    let res = r
        .body(req.body().clone())
        .send()
        .await
        .map_err(std::io::Error::other)?;
    let mut out = oauth2::http::Response::builder().status(res.status().as_u16());
    for (k, v) in res.headers() {
        out = out.header(k.as_str(), v.as_bytes());
    }
    let body = res.bytes().await.map_err(std::io::Error::other)?.to_vec();
    out.body(body).map_err(std::io::Error::other)
}

fn invalid_grant<RE: std::error::Error + 'static>(
    e: &oauth2::RequestTokenError<RE, oauth2::basic::BasicErrorResponse>,
) -> bool {
    matches!(e, oauth2::RequestTokenError::ServerResponse(r)
        if *r.error() == oauth2::basic::BasicErrorResponseType::InvalidGrant)
}

store_tests!(
    code_pkce_refresh_and_reuse_lockout,
    reuse_cuts_a_live_stream,
    service_account_chats_for_an_end_user,
    init_password_stdin_then_login
);

async fn code_pkce_refresh_and_reuse_lockout(app: TestApp) {
    set_owner_password(&app).await;
    let client_id = public_client(&app).await;

    let client = BasicClient::new(ClientId::new(client_id.clone()))
        .set_auth_uri(AuthUrl::new(app.url("/oauth/authorize")).unwrap())
        .set_token_uri(TokenUrl::new(app.url("/oauth/token")).unwrap())
        .set_redirect_uri(RedirectUrl::new(REDIRECT.to_string()).unwrap());
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (auth_url, csrf) = client
        .authorize_url(CsrfToken::new_random)
        .add_scope(Scope::new("openid".into()))
        .set_pkce_challenge(challenge)
        .url();

    // The user signs in on the hosted page (a browser would do this).
    let form = open_login_page(&app, auth_url.as_str()).await;
    let res = submit_login(&app, &form, OWNER_EMAIL, PASSWORD).await;
    let (base, params) = location_params(&res);
    assert_eq!(base, REDIRECT);
    assert_eq!(params["state"], *csrf.secret(), "state round-trips");
    assert_eq!(params["iss"], app.state.config.public_url, "RFC 9207 iss");
    let code = params["code"].clone();

    // The library exchanges the code with its PKCE verifier.
    let tokens = client
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .unwrap();
    let access = tokens.access_token().secret().clone();
    let refresh1 = tokens.refresh_token().unwrap().clone();
    assert!(tokens.expires_in().unwrap().as_secs() > 3000);
    let h = jwt_header(&access);
    assert_eq!(h["typ"], "at+jwt");
    assert_eq!(h["alg"], "RS256");
    let claims = payload(&access);
    assert_eq!(claims["iss"], app.state.config.public_url);
    assert_eq!(claims["sub"], app.owner_id);
    assert_eq!(claims["tid"], app.tenant_id);
    assert_eq!(claims["client_id"], client_id);
    for c in ["aud", "exp", "iat", "jti", "scope", "sid"] {
        assert!(claims.get(c).is_some(), "claim {c}");
    }
    assert!(
        claims.get("permissions").is_none(),
        "permissions are not frozen in the token"
    );

    // The access token works on the API.
    let res = app.get("/v1/models", &access).await;
    assert_eq!(res.status(), StatusCode::OK);
    let me: Value = app.get("/v1/me", &access).await.json().await.unwrap();
    assert_eq!(me["credential"]["type"], "platform_jwt");
    assert_eq!(me["user_id"], app.owner_id);
    assert_eq!(me["tenant_id"], app.tenant_id);
    assert_eq!(
        app.chat(&access, chat_body("mock-chat")).await.status(),
        StatusCode::OK
    );

    // Refresh: a new pair; the old refresh token is spent.
    let t2 = client
        .exchange_refresh_token(&refresh1)
        .request_async(&http)
        .await
        .unwrap();
    let access2 = t2.access_token().secret().clone();
    let refresh2 = t2.refresh_token().unwrap().clone();
    assert_ne!(refresh2.secret(), refresh1.secret());
    assert_eq!(
        app.get("/v1/models", &access2).await.status(),
        StatusCode::OK
    );

    // Replaying the spent refresh token locks the whole family out.
    let reuse = client
        .exchange_refresh_token(&refresh1)
        .request_async(&http)
        .await
        .unwrap_err();
    assert!(invalid_grant(&reuse), "{reuse:?}");
    let after = client
        .exchange_refresh_token(&refresh2)
        .request_async(&http)
        .await
        .unwrap_err();
    assert!(
        invalid_grant(&after),
        "the newest refresh token is dead too"
    );
    for t in [&access, &access2] {
        expect_error(
            app.get("/v1/models", t).await,
            StatusCode::UNAUTHORIZED,
            "AUTH_REVOKED",
        )
        .await;
    }
    let events = audit_events(&app, &app.tenant_id).await;
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    for a in [
        "auth.login",
        "auth.session_created",
        "auth.token_refreshed",
        "auth.refresh_token_reused",
    ] {
        assert!(actions.contains(&a), "{a} in {actions:?}");
    }
    // No secret in the audit log.
    let all = serde_json::to_string(&events).unwrap();
    for s in [
        access.as_str(),
        access2.as_str(),
        refresh1.secret(),
        refresh2.secret(),
        PASSWORD,
    ] {
        assert!(!all.contains(s));
    }
    // Every chain, the platform chain included, still verifies.
    let checked = tollgate::store::audit::verify(app.state.store.pool())
        .await
        .unwrap()
        .unwrap();
    assert!(checked > 5);
}

async fn service_account_chats_for_an_end_user(app: TestApp) {
    let (id, secret) = service_account(&app, &app.owner_key, &["developer"]).await;
    let client = BasicClient::new(ClientId::new(id.clone()))
        .set_client_secret(ClientSecret::new(secret.clone()))
        .set_token_uri(TokenUrl::new(app.url("/oauth/token")).unwrap());
    let tokens = client
        .exchange_client_credentials()
        .request_async(&http)
        .await
        .unwrap();
    assert!(tokens.refresh_token().is_none());
    let token = tokens.access_token().secret().clone();
    let claims = payload(&token);
    assert_eq!(claims["sub"], id);
    assert_eq!(claims["client_id"], id);
    assert!(claims.get("sid").is_none_or(Value::is_null));

    // Chats, attributing usage to an end user.
    let res = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .header("x-end-user-id", "end-user-42")
        .json(&chat_body("fake-model"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // The gateway's token is never forwarded upstream; the provider sees its own key.
    let recorded = app.upstream.requests();
    let last = recorded.last().unwrap();
    assert_eq!(
        last.header("authorization"),
        Some(format!("Bearer {UPSTREAM_KEY}").as_str())
    );
    assert!(!format!("{:?}", recorded).contains(&token));

    // The service account has the developer role's permissions, whatever end-user id it sends.
    let me: Value = app
        .client
        .get(app.url("/v1/me"))
        .bearer_auth(&token)
        .header("x-end-user-id", &app.owner_id)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["credential"]["type"], "platform_jwt");
    assert!(me["user_id"].is_null());
    let perms: Vec<&str> = me["permissions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(perms.contains(&"chat:write"));
    assert!(!perms.contains(&"users:write") && !perms.contains(&"tenant:admin"));
    let res = app
        .client
        .get(app.url("/v1/users"))
        .bearer_auth(&token)
        .header("x-end-user-id", &app.owner_id)
        .send()
        .await
        .unwrap();
    expect_error(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;

    // A viewer service account cannot chat, even "for" the owner.
    let (vid, vsecret) = service_account(&app, &app.owner_key, &["viewer"]).await;
    let res = form_post(
        &app,
        "/oauth/token",
        Some((&vid, &vsecret)),
        &[("grant_type", "client_credentials")],
    )
    .await;
    let vt: Value = res.json().await.unwrap();
    let vtoken = vt["access_token"].as_str().unwrap();
    let res = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(vtoken)
        .header("x-end-user-id", &app.owner_id)
        .json(&chat_body("fake-model"))
        .send()
        .await
        .unwrap();
    expect_error(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;

    // Wrong secret, unknown client, public client with client_credentials.
    let res = form_post(
        &app,
        "/oauth/token",
        Some((&id, "tgcs_wrong")),
        &[("grant_type", "client_credentials")],
    )
    .await;
    let res_headers = res.headers().clone();
    expect_oauth_error(res, StatusCode::UNAUTHORIZED, "invalid_client").await;
    assert!(
        res_headers[reqwest::header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    assert!(
        audit_events(&app, &app.tenant_id)
            .await
            .iter()
            .any(|e| e.action == "auth.client_auth_failed" && e.target["id"] == id.as_str())
    );
    let public = public_client(&app).await;
    let res = form_post(
        &app,
        "/oauth/token",
        None,
        &[("grant_type", "client_credentials"), ("client_id", &public)],
    )
    .await;
    expect_oauth_error(res, StatusCode::BAD_REQUEST, "unauthorized_client").await;

    // Another tenant cannot see or delete the client (404), and the secret never shows again.
    let (_, other_key) = app.other_tenant("globex").await;
    let res = app
        .get(&format!("/v1/oauth-clients/{id}"), &other_key)
        .await;
    expect_error(res, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    let res = app
        .delete(&format!("/v1/oauth-clients/{id}"), &other_key)
        .await;
    expect_error(res, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    let list: Value = app
        .get("/v1/oauth-clients", &other_key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
    let list = app
        .get("/v1/oauth-clients", &app.owner_key)
        .await
        .text()
        .await
        .unwrap();
    assert!(list.contains(&id) && !list.contains(&secret));
    // Managing clients needs tenant:admin.
    let (_, dev_key) = app.add_user("dev@example.com", &["developer"]).await;
    let res = app.get("/v1/oauth-clients", &dev_key).await;
    expect_error(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;

    // Revoking the client kills its tokens at once.
    let res = app
        .delete(&format!("/v1/oauth-clients/{id}"), &app.owner_key)
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    expect_error(
        app.chat(&token, chat_body("fake-model")).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_REVOKED",
    )
    .await;
    let res = form_post(
        &app,
        "/oauth/token",
        Some((&id, &secret)),
        &[("grant_type", "client_credentials")],
    )
    .await;
    expect_oauth_error(res, StatusCode::UNAUTHORIZED, "invalid_client").await;
}

/// `tollgate init --password-stdin` (the real binary) sets the owner's password; the owner then
/// signs in through the hosted page.
async fn init_password_stdin_then_login(app: TestApp) {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args([
            "init",
            "--email",
            OWNER_EMAIL,
            "--tenant",
            "acme",
            "--password-stdin",
            "--database",
            &app.db_url,
        ])
        .env("TOLLGATE_DATA_DIR", dir.path())
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"a fresh owner password\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["user_id"], app.owner_id);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("a fresh owner password"));

    let client_id = public_client(&app).await;
    let tokens = login(&app, &client_id, OWNER_EMAIL, "a fresh owner password").await;
    let res = app
        .get("/v1/me", tokens["access_token"].as_str().unwrap())
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let me: Value = res.json().await.unwrap();
    assert_eq!(me["user_id"], app.owner_id);
    assert_eq!(me["platform_admin"], true);
    let _ = json!({});
}

/// Replaying a spent refresh token revokes the family *and cuts its in-flight requests*: a
/// streaming chat using the family's access token ends with an SSE error, and the upstream call
/// is cancelled.
async fn reuse_cuts_a_live_stream(app: TestApp) {
    set_owner_password(&app).await;
    let client_id = public_client(&app).await;
    let t = login(&app, &client_id, OWNER_EMAIL, PASSWORD).await;
    let access = t["access_token"].as_str().unwrap().to_string();
    let rt1 = t["refresh_token"].as_str().unwrap().to_string();
    let started = std::time::Instant::now();
    let mut res = app
        .chat(
            &access,
            json!({"model": "fake-model", "stream": true, "messages": [{"role": "user", "content": "Hi"}],
                "fake": {"chunks": 500, "chunk_delay_ms": 20}}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let first = res.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());
    // Rotate once, then replay the spent token.
    let r = app
        .post("/v1/auth/refresh", "", json!({"refresh_token": rt1}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .post("/v1/auth/refresh", "", json!({"refresh_token": rt1}))
        .await;
    expect_oauth_error(r, StatusCode::BAD_REQUEST, "invalid_grant").await;
    let mut rest = String::new();
    while let Some(c) = res.chunk().await.unwrap() {
        rest.push_str(&String::from_utf8_lossy(&c));
    }
    assert!(rest.contains("AUTH_REVOKED"), "{rest}");
    // The stream would run 10 s; it was cut as soon as the family was revoked.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(6),
        "the stream was cut early"
    );
    assert!(
        app.upstream
            .wait_cancelled(1, std::time::Duration::from_secs(5))
            .await
    );
}

/// A native app registers `http://127.0.0.1/callback` and listens on whatever port it gets
/// (RFC 8252 §7.3): the hosted login accepts the URI with any port, the code is bound to the
/// URI as used, and another path or host is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_app_logs_in_on_any_loopback_port() {
    let app = TestApp::spawn(Db::Sqlite).await;
    set_owner_password(&app).await;
    let c = create_client(
        &app,
        &app.owner_key,
        json!({"name": "native app", "redirect_uris": ["http://127.0.0.1/callback"]}),
    )
    .await;
    let cid = c["client_id"].as_str().unwrap();
    let used = "http://127.0.0.1:53187/callback";
    let (verifier, challenge) = pkce();
    let code = login_code(
        &app,
        cid,
        used,
        Some(&challenge),
        OWNER_EMAIL,
        PASSWORD,
        "openid",
    )
    .await;
    let res = form_post(
        &app,
        "/oauth/token",
        None,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", cid),
            ("code", &code),
            ("redirect_uri", used),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    // Another path, or localhost, is not registered.
    for bad in [
        "http://127.0.0.1:53187/elsewhere",
        "http://localhost:53187/callback",
    ] {
        let res = app
            .post(
                "/v1/auth/authorize",
                "",
                json!({"tenant_id": app.tenant_id, "client_id": cid, "redirect_uri": bad,
                       "code_challenge": challenge, "code_challenge_method": "S256",
                       "state": "s", "scope": "openid"}),
            )
            .await;
        let body = expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
        assert_eq!(body["error"]["param"], "redirect_uri", "{bad}");
    }
}
