//! The web console over HTTP: security headers, hashed assets, CSRF refusals, cookie flags, the
//! one-time console link, the developer portal's sign-up → verify → log in → subscribe →
//! credentials journey, a secret shown exactly once, another consumer's subscription is 404, and
//! logout ending the session on a second instance.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::console_support::{Browser, Page, assert_no_inline_script, input_value, unescape};
use crate::helpers::{Db, Opts, TestApp, chat_body, expect_error};

fn login_action(html: &str) -> String {
    let i = html
        .find("action=\"/oauth/authorize?")
        .expect("the login form")
        + 8;
    unescape(&html[i..i + html[i..].find('"').unwrap()])
}

fn mails(app: &TestApp) -> Vec<String> {
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

/// Signs the owner in with a fresh one-time console link.
async fn owner_browser(app: &TestApp) -> Browser {
    let link = tollgate::console::session::issue_link(
        &app.state.store,
        &app.state.config.public_url,
        &app.owner_id,
    )
    .await
    .unwrap();
    let mut b = Browser::new(app);
    let page = b.get(&link).await;
    assert_eq!(page.status, StatusCode::OK);
    let token = input_value(&page.body, "token");
    let csrf = b.csrf();
    let page = b
        .post("/console/link", &[("csrf_token", &csrf), ("token", &token)])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    b
}

/// A published product with one plan (via the API and the console's publish toggle).
async fn published_plan(app: &TestApp, owner: &mut Browser) -> (String, String) {
    let product: serde_json::Value = app
        .post(
            "/v1/products",
            &app.owner_key,
            json!({"name": "Chat", "models": ["gpt-test"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let product_id = product["id"].as_str().unwrap().to_string();
    let plan: serde_json::Value = app
        .post(
            "/v1/plans",
            &app.owner_key,
            json!({"product_id": product_id, "name": "Starter",
                   "limits": {"requests_per_minute": 60, "tokens_per_month": 100000}}),
        )
        .await
        .json()
        .await
        .unwrap();
    let csrf = owner.csrf();
    let page = owner
        .post(
            &format!("/console/admin/products/{product_id}/publish"),
            &[("csrf_token", &csrf), ("published", "1")],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    (product_id, plan["id"].as_str().unwrap().to_string())
}

/// Signs up a consumer on the portal, verifies the address from the outbox, logs in through
/// the OAuth flow of the sign-in dialog.
async fn consumer_browser(app: &TestApp, email: &str) -> Browser {
    let mut b = Browser::new(app);
    b.get("/console/auth?tab=signup").await;
    let csrf = b.csrf();
    let page = b
        .post(
            "/console/signup",
            &[
                ("csrf_token", &csrf),
                ("email", email),
                ("password", "correct horse battery"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("Check your email"));
    let mail = mails(app)
        .into_iter()
        .find(|m| m.contains(&format!("To: {email}")))
        .expect("the verification email");
    let i = mail.find("/console/verify?token=").unwrap();
    let link: String = mail[i..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    let page = b.get(&link).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    // The link works once.
    assert_eq!(b.get(&link).await.status, StatusCode::GONE);
    let page = b.get("/console/auth?tab=login").await;
    let action = login_action(&page.body);
    let login_csrf = page
        .body
        .split("action=\"/oauth/authorize?")
        .nth(1)
        .map(|rest| input_value(rest, "csrf_token"))
        .unwrap();
    let page = b
        .post(
            &action,
            &[
                ("csrf_token", &login_csrf),
                ("email", email),
                ("password", "correct horse battery"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let callback = page.location.unwrap();
    assert!(callback.contains("/console/callback?code="), "{callback}");
    let page = b.get(&callback).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert_eq!(page.location.as_deref(), Some("/console"));
    b
}

#[tokio::test]
async fn root_redirects_and_pages_carry_the_security_headers() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let mut b = Browser::new(&app);
    let page = b.get("/").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location.as_deref(), Some("/console"));
    for path in [
        "/console",
        "/console/auth?tab=signup",
        "/console/reset",
        "/console/portal",
    ] {
        let page = b.get(path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        let csp = page.headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
            "{csp}"
        );
        assert_eq!(page.headers["x-content-type-options"], "nosniff");
        assert!(page.headers.contains_key("referrer-policy"));
        assert_eq!(page.headers["cache-control"], "no-store");
        assert!(page.body.starts_with("<!doctype html>"));
        assert_no_inline_script(&page.body);
    }
    // The stylesheet is served under its content hash, cacheable forever; other names are 404.
    let page = b.get("/console").await;
    let i = page.body.find("href=\"/console/assets/console.").unwrap() + 6;
    let href = &page.body[i..i + page.body[i..].find('"').unwrap()];
    let css = b.get(href).await;
    assert_eq!(css.status, StatusCode::OK);
    assert_eq!(
        css.headers["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert!(
        css.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
    assert_eq!(
        b.get("/console/assets/console.css").await.status,
        StatusCode::NOT_FOUND
    );
    app.shutdown().await;
}

#[tokio::test]
async fn state_changes_without_the_csrf_token_are_refused() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let mut owner = owner_browser(&app).await;
    // No token, a wrong token, and no cookie at all: 403, nothing done.
    let page = owner.post("/console/logout", &[]).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    let page = owner
        .post(
            "/console/logout",
            &[("csrf_token", "x".repeat(43).as_str())],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert_eq!(owner.get("/console/admin").await.status, StatusCode::OK);
    let mut stranger = Browser::new(&app);
    let page = stranger
        .post(
            "/console/signup",
            &[
                ("email", "x@example.com"),
                ("password", "correct horse battery"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(mails(&app).is_empty());
    // The right token logs out.
    let csrf = owner.csrf();
    let page = owner
        .post("/console/logout", &[("csrf_token", &csrf)])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(
        owner.get("/console/admin").await.location.as_deref(),
        Some("/console/auth?tab=login")
    );
    app.shutdown().await;
}

#[tokio::test]
async fn session_cookies_are_httponly_lax_and_host_prefixed_under_https() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let link = tollgate::console::session::issue_link(
        &app.state.store,
        &app.state.config.public_url,
        &app.owner_id,
    )
    .await
    .unwrap();
    let mut b = Browser::new(&app);
    let page = b.get(&link).await;
    let csrf_cookie = page
        .set_cookies
        .iter()
        .find(|c| c.starts_with("tg_console_csrf="))
        .unwrap();
    assert!(csrf_cookie.contains("HttpOnly") && csrf_cookie.contains("SameSite=Lax"));
    let token = input_value(&page.body, "token");
    let csrf = b.csrf();
    let page = b
        .post("/console/link", &[("csrf_token", &csrf), ("token", &token)])
        .await;
    let session = page
        .set_cookies
        .iter()
        .find(|c| c.starts_with("tg_console="))
        .expect("a session cookie");
    assert!(session.contains("HttpOnly"), "{session}");
    assert!(session.contains("SameSite=Lax"), "{session}");
    assert!(session.contains("Path=/"), "{session}");
    assert!(!session.contains("Secure"), "plain http: {session}");
    // The store keeps only the session id's hash.
    let sid = b.jar["tg_console"].clone();
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT id_hash, tokens FROM console_sessions")
            .fetch_all(app.state.store.pool())
            .await
            .unwrap();
    assert_eq!(rows.len(), 1);
    assert_ne!(rows[0].0, sid);
    assert!(!rows[0].1.contains("tgr_") && !rows[0].1.contains("eyJ"));
    app.shutdown().await;

    let app = TestApp::spawn_with(
        Opts::new(Db::Sqlite).edit(|c| c.public_url = "https://gw.example.com".into()),
    )
    .await
    .unwrap();
    let mut b = Browser::new(&app);
    let page = b.get("/console/auth?tab=login").await;
    let csrf_cookie = page
        .set_cookies
        .iter()
        .find(|c| c.contains("tg_console_csrf="))
        .unwrap();
    assert!(
        csrf_cookie.starts_with("__Host-tg_console_csrf="),
        "{csrf_cookie}"
    );
    assert!(csrf_cookie.contains("; Secure") && csrf_cookie.contains("Path=/"));
    let login = page
        .set_cookies
        .iter()
        .find(|c| c.contains("tg_console_login="))
        .unwrap();
    assert!(
        login.starts_with("__Host-") && login.contains("; Secure"),
        "{login}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn the_console_link_works_once_and_asks_for_a_password() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let link = tollgate::console::session::issue_link(
        &app.state.store,
        &app.state.config.public_url,
        &app.owner_id,
    )
    .await
    .unwrap();
    let mut b = Browser::new(&app);
    let page = b.get(&link).await;
    let token = input_value(&page.body, "token");
    let csrf = b.csrf();
    let page = b
        .post("/console/link", &[("csrf_token", &csrf), ("token", &token)])
        .await;
    assert_eq!(page.location.as_deref(), Some("/console/password"));
    // A too-short password is refused next to its field; the page keeps no password.
    let page = b
        .post(
            "/console/password",
            &[
                ("csrf_token", &csrf),
                ("password", "short"),
                ("confirm", "short"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.body.contains("role=\"alert\"") && !page.body.contains("value=\"short\""));
    let page = b
        .post(
            "/console/password",
            &[
                ("csrf_token", &csrf),
                ("password", "a long enough password"),
                ("confirm", "a long enough password"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    // Replayed: a clear page, no session.
    let mut other = Browser::new(&app);
    other.get(&link).await;
    let csrf = other.csrf();
    let page = other
        .post("/console/link", &[("csrf_token", &csrf), ("token", &token)])
        .await;
    assert_eq!(page.status, StatusCode::GONE);
    assert!(page.body.contains("expired"));
    assert!(!other.jar.contains_key("tg_console"));
    app.shutdown().await;
}

#[tokio::test]
async fn portal_journey_secret_shown_once_foreign_subscription_404_cancel_stops_keys() {
    journey(Db::Sqlite).await;
}

#[tokio::test]
async fn portal_journey_on_postgres() {
    journey(Db::Postgres).await;
}

async fn journey(db: Db) {
    let Some(app) = TestApp::try_spawn(db).await else {
        eprintln!("skipped: TOLLGATE_TEST_DATABASE_URL is not set");
        return;
    };
    let mut owner = owner_browser(&app).await;
    let (product_id, plan_id) = published_plan(&app, &mut owner).await;
    let mut alice = consumer_browser(&app, "alice@example.com").await;
    let catalog = alice.get("/console/portal").await;
    assert!(
        catalog
            .body
            .contains(&format!("/console/portal/products/{product_id}"))
    );
    let product = alice
        .get(&format!("/console/portal/products/{product_id}"))
        .await;
    assert!(
        product.body.contains("Up to 60 requests per minute"),
        "{}",
        product.body
    );
    let csrf = alice.csrf();
    let page = alice
        .post(
            "/console/portal/subscribe",
            &[("csrf_token", &csrf), ("plan_id", &plan_id)],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let sub_url = page.location.unwrap();
    let sub_id = sub_url.rsplit('/').next().unwrap().to_string();
    assert_eq!(sub_id.len(), 24);

    // An API key: in the page right after its creation, never again.
    let page = alice
        .post(
            &format!("{sub_url}/credentials"),
            &[
                ("csrf_token", &csrf),
                ("type", "api_key"),
                ("name", "backend"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert!(!page.body.contains("tgk_"));
    let shown = alice.get(&sub_url).await;
    let i = shown
        .body
        .find("<code id=\"new-secret\">")
        .expect("the new key")
        + 22;
    let key = shown.body[i..i + shown.body[i..].find('<').unwrap()].to_string();
    assert!(key.starts_with("tgk_"), "{key}");
    assert_no_inline_script(&shown.body);
    let again = alice.get(&sub_url).await;
    assert_eq!(again.status, StatusCode::OK);
    assert!(!again.body.contains(&key));
    // The usage chart: 48 hours by default, 30 days on request.
    let buckets = |body: &str| {
        let i = body.find("data-x=\"").unwrap() + 8;
        body[i..i + body[i..].find('"').unwrap()].split(',').count()
    };
    assert_eq!(buckets(&again.body), 48);
    assert!(again.body.contains("per hour, last 48 hours"));
    let daily = alice.get(&format!("{sub_url}?range=day")).await;
    assert_eq!(daily.status, StatusCode::OK);
    assert_eq!(buckets(&daily.body), 30);
    assert!(daily.body.contains("per day, last 30 days"));
    assert!(
        !alice
            .get("/console/portal/subscriptions")
            .await
            .body
            .contains(&key)
    );
    // The key works.
    let res = app.chat(&key, chat_body("gpt-test")).await;
    assert_eq!(res.status(), StatusCode::OK);

    // An HS256 secret, shown once too.
    alice
        .post(
            &format!("{sub_url}/credentials"),
            &[("csrf_token", &csrf), ("type", "jwt_hs256")],
        )
        .await;
    let shown = alice.get(&sub_url).await;
    assert!(shown.body.contains("Your new HS256 secret"));
    let i = shown.body.find("<code id=\"new-secret\">").unwrap() + 22;
    let secret = shown.body[i..i + shown.body[i..].find('<').unwrap()].to_string();
    assert!(secret.len() >= 43);
    assert!(!alice.get(&sub_url).await.body.contains(&secret));

    // A bad public key: the error next to the field, the text kept, nothing stored.
    let page = alice
        .post(
            &format!("{sub_url}/credentials"),
            &[
                ("csrf_token", &csrf),
                ("type", "jwt_public_key"),
                ("alg", "ES256"),
                ("public_key", "not a key"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        page.body.contains("id=\"pk-key-error\" role=\"alert\""),
        "{}",
        page.body
    );
    assert!(page.body.contains(">not a key</textarea>"));

    // Another consumer: 404 on Alice's subscription, and on acting on it.
    let mut bob = consumer_browser(&app, "bob@example.com").await;
    assert_eq!(bob.get(&sub_url).await.status, StatusCode::NOT_FOUND);
    let bob_csrf = bob.csrf();
    let page = bob
        .post(&format!("{sub_url}/cancel"), &[("csrf_token", &bob_csrf)])
        .await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    // A consumer's own credential cannot read the tenant's subscriptions through the API either.
    let res = app.get(&format!("/v1/subscriptions/{sub_id}"), &key).await;
    assert_ne!(res.status(), StatusCode::OK);

    // My subscriptions lists it; cancelling stops the key at once.
    let mine = alice.get("/console/portal/subscriptions").await;
    assert!(mine.body.contains(&sub_id) && mine.body.contains("Starter"));
    let page = alice
        .post(&format!("{sub_url}/cancel"), &[("csrf_token", &csrf)])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    let res = app.chat(&key, chat_body("gpt-test")).await;
    assert!(res.status() == StatusCode::UNAUTHORIZED || res.status() == StatusCode::FORBIDDEN);
    app.shutdown().await;
}

#[tokio::test]
async fn logout_ends_the_session_on_another_instance() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let other = app.second_instance().await;
    let mut owner = owner_browser(&app).await;
    let mut there = Browser::new(&other);
    there.jar = owner.jar.clone();
    assert_eq!(there.get("/console/admin").await.status, StatusCode::OK);
    let csrf = owner.csrf();
    owner
        .post("/console/logout", &[("csrf_token", &csrf)])
        .await;
    let page = there.get("/console/admin").await;
    assert_eq!(page.location.as_deref(), Some("/console/auth?tab=login"));
    other.shutdown().await;
    app.shutdown().await;
}

/// Portal sign-ups and reset requests send email, so they share the API's per-address and
/// per-client limit; a known address gets a notice instead of a second account, and the page
/// says the same either way.
#[tokio::test]
async fn portal_mail_is_limited_and_a_known_address_gets_a_notice() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let mut b = Browser::new(&app);
    b.get("/console/auth?tab=signup").await;
    let first = portal_signup(&mut b, "bob@example.com").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let second = portal_signup(&mut b, "bob@example.com").await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(
        second.body, first.body,
        "the page does not tell a known address apart"
    );
    let to_bob: Vec<String> = mails(&app)
        .into_iter()
        .filter(|m| m.contains("To: bob@example.com"))
        .collect();
    assert_eq!(to_bob.len(), 2, "{to_bob:?}");
    assert_eq!(
        to_bob
            .iter()
            .filter(|m| m.contains("Someone tried to sign up"))
            .count(),
        1
    );
    // Three more requests for the address use up its window; the next is refused.
    for _ in 0..3 {
        let page = portal_signup(&mut b, "bob@example.com").await;
        assert_eq!(page.status, StatusCode::OK);
    }
    let limited = portal_signup(&mut b, "bob@example.com").await;
    assert_eq!(
        limited.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        limited.body
    );
    let csrf = b.csrf();
    let reset = b
        .post(
            "/console/reset",
            &[("csrf_token", &csrf), ("email", "bob@example.com")],
        )
        .await;
    assert_eq!(
        reset.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        reset.body
    );
    assert_eq!(
        mails(&app)
            .iter()
            .filter(|m| m.contains("To: bob@example.com"))
            .count(),
        5
    );
    app.shutdown().await;
}

async fn portal_signup(b: &mut Browser, email: &str) -> Page {
    let csrf = b.csrf();
    b.post(
        "/console/signup",
        &[
            ("csrf_token", &csrf),
            ("email", email),
            ("password", "correct horse battery"),
        ],
    )
    .await
}

/// A developer-portal consumer reads the published catalogue only, through the API as in the
/// portal: an unpublished product or plan is `404` to them; other members see every product.
#[tokio::test]
async fn a_consumer_reads_only_the_published_catalogue() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let open = crate::subs::create_product(&app, &app.owner_key, "Open", &["gpt-test"]).await;
    let hidden = crate::subs::create_product(&app, &app.owner_key, "Hidden", &["gpt-test"]).await;
    let (open_id, hidden_id) = (
        open["id"].as_str().unwrap().to_string(),
        hidden["id"].as_str().unwrap().to_string(),
    );
    let open_plan = crate::subs::create_plan(&app, &app.owner_key, &open_id, "Free").await;
    let hidden_plan = crate::subs::create_plan(&app, &app.owner_key, &hidden_id, "Free").await;
    let mut conn = app.state.store.pool().acquire().await.unwrap();
    assert!(
        tollgate::store::console::set_product_published(
            &mut conn,
            &app.tenant_id,
            &open_id,
            Some(1)
        )
        .await
        .unwrap()
    );
    drop(conn);
    let (_, consumer) = app.add_user("carol@example.com", &["consumer"]).await;
    let (_, developer) = app.add_user("dev@example.com", &["developer"]).await;
    let ids = |v: Value| -> Vec<String> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_string())
            .collect()
    };
    let seen = ids(app
        .get("/v1/products", &consumer)
        .await
        .json()
        .await
        .unwrap());
    assert_eq!(seen, vec![open_id.clone()]);
    let all = ids(app
        .get("/v1/products", &developer)
        .await
        .json()
        .await
        .unwrap());
    assert_eq!(all.len(), 2, "{all:?}");
    let res = app
        .get(&format!("/v1/products/{hidden_id}"), &consumer)
        .await;
    expect_error(res, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    let res = app.get(&format!("/v1/products/{open_id}"), &consumer).await;
    assert_eq!(res.status(), StatusCode::OK);
    let plans = ids(app.get("/v1/plans", &consumer).await.json().await.unwrap());
    assert_eq!(plans, vec![open_plan["id"].as_str().unwrap().to_string()]);
    let res = app
        .get(
            &format!("/v1/plans/{}", hidden_plan["id"].as_str().unwrap()),
            &consumer,
        )
        .await;
    expect_error(res, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    let res = app
        .get(
            &format!("/v1/plans/{}", hidden_plan["id"].as_str().unwrap()),
            &developer,
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    app.shutdown().await;
}
