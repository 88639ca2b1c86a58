//! The OAuth helpers against the real identity service: code + PKCE through the hosted login
//! page (this test plays the browser), refresh-token rotation, renewal after
//! `AUTH_TOKEN_EXPIRED`, and client credentials for a service account.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use serde_json::json;
use tollgate_client::oauth::{LoopbackRedirect, OAuthSession, PkceFlow};
use tollgate_client::{Auth, Client, Error};

use crate::helpers::*;

fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let i = text.find(start).expect("start marker") + start.len();
    let j = text[i..].find(end).expect("end marker") + i;
    &text[i..j]
}

/// Plays the browser: opens the login page, posts the credentials with the CSRF cookie and
/// token, and follows the `303` to the app's redirect URI.
async fn sign_in_like_a_browser(gw: &Gateway, authorize_url: &str) -> String {
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = browser.get(authorize_url).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let cookie = page.headers()[reqwest::header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let html = page.text().await.unwrap();
    let csrf = between(&html, "name=\"csrf_token\" value=\"", "\"").to_string();
    let action = between(&html, "<form method=\"post\" action=\"", "\"").replace("&amp;", "&");
    let res = browser
        .post(gw.url(&action))
        .header(reqwest::header::COOKIE, cookie)
        .form(&[
            ("email", OWNER_EMAIL),
            ("password", PASSWORD),
            ("csrf_token", csrf.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER, "signed in");
    let location = res.headers()[reqwest::header::LOCATION]
        .to_str()
        .unwrap()
        .to_string();
    // The browser lands on the app's loopback listener.
    let landing = browser.get(&location).send().await.unwrap();
    assert_eq!(landing.status(), StatusCode::OK);
    assert!(landing.text().await.unwrap().contains("Signed in"));
    location
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkce_through_the_hosted_login_page_then_refresh_rotation() {
    let gw = Gateway::spawn().await;
    let redirect = LoopbackRedirect::bind().await.unwrap();
    assert!(redirect.uri().starts_with("http://127.0.0.1:"));
    let client = gw
        .create(
            "/v1/oauth-clients",
            json!({"name": "desktop app", "redirect_uris": [redirect.uri()]}),
        )
        .await;
    let client_id = client["client_id"].as_str().unwrap().to_string();

    let flow = PkceFlow::new(&gw.base, &client_id, "openid")
        .unwrap()
        .with_listener(redirect)
        .expect_issuer(gw.public_url());
    let url = flow.authorize_url();
    assert!(url.contains("code_challenge_method=S256"));
    assert!(url.contains(&format!("code_challenge={}", flow.code_challenge())));
    assert!(url.contains(&format!("state={}", flow.state())));
    let waiting = tokio::spawn(flow.finish(Duration::from_secs(30)));
    let location = sign_in_like_a_browser(&gw, &url).await;
    assert!(location.contains("code="));
    let persisted: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = persisted.clone();
    let session = waiting.await.unwrap().unwrap().on_tokens(move |t| {
        log.lock()
            .unwrap()
            .push(t.refresh_token.as_ref().unwrap().expose().to_string())
    });
    let r1 = session.refresh_token().await.unwrap();

    let api = gw.client(Auth::oauth(session.clone()));
    let me = api.me().await.unwrap();
    assert_eq!(me.credential.kind, "platform_jwt");
    api.chat(&chat_req("mock-chat", "Hello")).await.unwrap();

    // Rotation: each refresh spends the previous refresh token; the session keeps the newest,
    // so a second refresh works (reusing a spent one would revoke the whole family).
    session.refresh().await.unwrap();
    let r2 = session.refresh_token().await.unwrap();
    session.refresh().await.unwrap();
    let r3 = session.refresh_token().await.unwrap();
    assert!(r1 != r2 && r2 != r3);
    assert_eq!(
        *persisted.lock().unwrap(),
        vec![r2.expose().to_string(), r3.expose().to_string()]
    );
    api.chat(&chat_req("mock-chat", "Still signed in"))
        .await
        .unwrap();

    // A client whose clock runs two hours ahead sees the access token as expired and refreshes
    // before sending.
    let ahead = Client::builder(&gw.base)
        .auth(Auth::oauth(session.clone()))
        .clock(|| SystemTime::now() + Duration::from_secs(7200))
        .build()
        .unwrap();
    ahead.models().await.unwrap();
    assert_eq!(persisted.lock().unwrap().len(), 3);

    // The spent refresh token r1, replayed by someone else, locks the family out.
    let thief = OAuthSession::from_refresh_token(&gw.base, &client_id, r1.expose(), None).unwrap();
    let err = thief.refresh().await.unwrap_err();
    assert!(
        matches!(&err, Error::OAuth(e) if e.error == "invalid_grant"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_redirect_is_refused_by_its_state() {
    let gw = Gateway::spawn().await;
    let flow = PkceFlow::new(&gw.base, "cli_x", "openid")
        .unwrap()
        .redirect_uri("http://127.0.0.1:9/callback")
        .expect_issuer(gw.public_url());
    let err = flow
        .complete("http://127.0.0.1:9/callback?code=abc&state=not-this-flows")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::OAuth(e) if e.error == "state_mismatch"),
        "{err:?}"
    );
    let forged_iss = format!(
        "http://127.0.0.1:9/callback?code=abc&state={}&iss=https%3A%2F%2Fevil.example",
        flow.state()
    );
    let err = flow.complete(&forged_iss).await.unwrap_err();
    assert!(
        matches!(&err, Error::OAuth(e) if e.error == "issuer_mismatch"),
        "{err:?}"
    );
    let denied = format!(
        "http://127.0.0.1:9/callback?error=access_denied&state={}",
        flow.state()
    );
    let err = flow.complete(&denied).await.unwrap_err();
    assert!(
        matches!(&err, Error::OAuth(e) if e.error == "access_denied"),
        "{err:?}"
    );
}

/// Access tokens of one second: the gateway says `AUTH_TOKEN_EXPIRED` (after its 5 s leeway)
/// while a slow client clock still trusts the token; the session refreshes once and the call is
/// resent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_platform_token_is_refreshed_once_and_the_call_resent() {
    let gw = Gateway::spawn_with(|c| c.auth.access_token_ttl_seconds = 1).await;
    let redirect = LoopbackRedirect::bind().await.unwrap();
    let client = gw
        .create(
            "/v1/oauth-clients",
            json!({"name": "desktop app", "redirect_uris": [redirect.uri()]}),
        )
        .await;
    let client_id = client["client_id"].as_str().unwrap().to_string();
    let flow = PkceFlow::new(&gw.base, &client_id, "openid")
        .unwrap()
        .with_listener(redirect);
    let url = flow.authorize_url();
    let waiting = tokio::spawn(flow.finish(Duration::from_secs(30)));
    sign_in_like_a_browser(&gw, &url).await;
    let refreshes = Arc::new(AtomicUsize::new(0));
    let n = refreshes.clone();
    let session = waiting.await.unwrap().unwrap().on_tokens(move |_| {
        n.fetch_add(1, Ordering::SeqCst);
    });
    let slow = Client::builder(&gw.base)
        .auth(Auth::oauth(session))
        .clock(|| SystemTime::now() - Duration::from_secs(3600))
        .build()
        .unwrap();
    slow.me().await.unwrap();
    assert_eq!(refreshes.load(Ordering::SeqCst), 0);
    tokio::time::sleep(Duration::from_secs(7)).await;
    let me = slow.me().await.unwrap();
    assert_eq!(me.credential.kind, "platform_jwt");
    assert_eq!(refreshes.load(Ordering::SeqCst), 1, "renewed exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_for_a_service() {
    let gw = Gateway::spawn().await;
    let c = gw
        .create(
            "/v1/oauth-clients",
            json!({"name": "billing service", "confidential": true, "roles": ["developer"]}),
        )
        .await;
    let (id, secret) = (
        c["client_id"].as_str().unwrap(),
        c["client_secret"].as_str().unwrap(),
    );
    let session = OAuthSession::client_credentials(&gw.base, id, secret, None)
        .await
        .unwrap();
    assert!(!format!("{session:?}").contains(secret));
    let api = gw.client(Auth::oauth(session.clone()));
    api.chat(&chat_req("mock-chat", "Hello from a service"))
        .await
        .unwrap();
    assert_eq!(api.me().await.unwrap().credential.kind, "platform_jwt");
    // No refresh token for this grant: a refresh asks for a new token.
    assert!(session.refresh_token().await.is_none());
    session.refresh().await.unwrap();
    api.models().await.unwrap();

    let err = OAuthSession::client_credentials(&gw.base, id, "wrong-secret", None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::OAuth(e) if e.error == "invalid_client"),
        "{err:?}"
    );
}
