//! Errors (SPEC §3) and credential extraction (SPEC §2): shapes, codes, challenges, request ids.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

async fn app() -> TestApp {
    TestApp::spawn(Db::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_credential_gets_a_bare_challenge() {
    let app = app().await;
    let res = app
        .post("/v1/chat/completions", "", chat_body("mock-chat"))
        .await;
    assert_eq!(
        res.headers()["www-authenticate"],
        "Bearer realm=\"tollgate\""
    );
    let body = expect_error(res, StatusCode::UNAUTHORIZED, "AUTH_MISSING").await;
    assert_eq!(body["error"]["type"], "authentication_error");
    assert!(body["error"]["param"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_different_credentials_are_ambiguous() {
    let app = app().await;
    let other = app
        .create_key(&app.owner_key, json!({"name": "second"}))
        .await;
    let res = app
        .client
        .get(app.url("/v1/models"))
        .bearer_auth(&app.owner_key)
        .header("x-api-key", other["key"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let body = expect_error(res, StatusCode::BAD_REQUEST, "AUTH_AMBIGUOUS").await;
    assert_eq!(body["error"]["type"], "invalid_request_error");
    // The same key in both headers is not ambiguous.
    let res = app
        .client
        .get(app.url("/v1/models"))
        .bearer_auth(&app.owner_key)
        .header("x-api-key", &app.owner_key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_schemes_and_garbage_bearers_are_invalid() {
    let app = app().await;
    for auth in [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer not-a-key-or-jwt",
        "Token abc",
        "Bearer a.b",
    ] {
        let res = app
            .client
            .get(app.url("/v1/models"))
            .header("authorization", auth)
            .send()
            .await
            .unwrap();
        let challenge = res.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            challenge.contains("error=\"invalid_token\""),
            "{auth}: {challenge}"
        );
        expect_error(res, StatusCode::UNAUTHORIZED, "AUTH_INVALID").await;
    }
    // A JWT-shaped token from nobody we trust.
    let res = app
        .client
        .get(app.url("/v1/models"))
        .bearer_auth("eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJ4In0.c2ln")
        .send()
        .await
        .unwrap();
    expect_error(res, StatusCode::UNAUTHORIZED, "AUTH_INVALID").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_id_header_is_ignored_on_required_routes() {
    let app = app().await;
    let res = app
        .client
        .post(app.url("/v1/chat/completions"))
        .header("x-user-id", "66ec1726e728c1405e5ebca2")
        .json(&chat_body("mock-chat"))
        .send()
        .await
        .unwrap();
    expect_error(res, StatusCode::UNAUTHORIZED, "AUTH_MISSING").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_has_a_request_id() {
    let app = app().await;
    let mut seen = std::collections::HashSet::new();
    for res in [
        app.get("/health", "").await,
        app.get("/v1/models", &app.owner_key).await,
        app.get("/v1/models", "").await,
        app.get("/no/such/route", "").await,
        app.req(reqwest::Method::DELETE, "/v1/models", &app.owner_key)
            .send()
            .await
            .unwrap(),
        app.chat(&app.owner_key, chat_body("mock-chat")).await,
    ] {
        let id = res
            .headers()
            .get("x-request-id")
            .expect("x-request-id")
            .to_str()
            .unwrap()
            .to_string();
        assert!(id.starts_with("req_"), "{id}");
        assert!(seen.insert(id));
    }
    // A sane incoming id is kept; a hostile one is replaced.
    let res = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "trace-abc.123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "trace-abc.123");
    let res = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "bad id\u{7f}")
        .send()
        .await;
    if let Ok(res) = res {
        assert_ne!(res.headers()["x-request-id"], "bad id\u{7f}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_are_json_errors() {
    let app = app().await;
    let body = expect_error(
        app.get("/v1/nothing", &app.owner_key).await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    )
    .await;
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let res = app
        .req(reqwest::Method::PUT, "/v1/chat/completions", &app.owner_key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body: Value = res.json().await.unwrap();
    assert!(body["error"]["code"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_invalid_bodies() {
    let app = app().await;
    let send = |body: &'static str| {
        app.client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(&app.owner_key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    expect_error(
        send("{not json").await.unwrap(),
        StatusCode::BAD_REQUEST,
        "INVALID_REQUEST",
    )
    .await;
    expect_error(
        send("[1,2]").await.unwrap(),
        StatusCode::BAD_REQUEST,
        "INVALID_REQUEST",
    )
    .await;
    let body = expect_error(
        send(r#"{"messages": []}"#).await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "VALIDATION_FAILED",
    )
    .await;
    assert_eq!(body["error"]["param"], "model");
    let body = expect_error(
        send(r#"{"model": "nope", "messages": []}"#).await.unwrap(),
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    )
    .await;
    assert_eq!(body["error"]["param"], "model");
    expect_error(
        send(r#"{"model": "mock-chat", "stream": "yes"}"#)
            .await
            .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "VALIDATION_FAILED",
    )
    .await;
    // Management bodies: wrong types are 422 naming the field, unknown fields are rejected.
    let res = app
        .post("/v1/api-keys", &app.owner_key, json!({"name": 5}))
        .await;
    expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
    let res = app.post("/v1/api-keys", &app.owner_key, json!({})).await;
    let body = expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
    assert_eq!(body["error"]["param"], "name");
    let res = app
        .post(
            "/v1/api-keys",
            &app.owner_key,
            json!({"name": "x", "colour": "red"}),
        )
        .await;
    let body = expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
    assert_eq!(body["error"]["param"], "colour");
    let res = app
        .client
        .post(app.url("/v1/api-keys"))
        .bearer_auth(&app.owner_key)
        .header("content-type", "text/plain")
        .body("name=x")
        .send()
        .await
        .unwrap();
    expect_error(res, StatusCode::BAD_REQUEST, "INVALID_REQUEST").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_413() {
    let app = TestApp::spawn_with(Opts::new(Db::Sqlite).edit(|c| c.max_body_bytes = 4096))
        .await
        .unwrap();
    let big = "x".repeat(8192);
    let res = app
        .chat(
            &app.owner_key,
            json!({"model": "mock-chat", "messages": [{"role": "user", "content": big}]}),
        )
        .await;
    expect_error(res, StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE").await;
    // Also without a Content-Length (chunked upload). Two chunks, small enough that the client
    // has sent them before the server answers (else the client may see a broken pipe instead).
    let chunks =
        futures_util::stream::iter((0..2).map(|_| Ok::<_, std::io::Error>(vec![b' '; 3000])));
    let res = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&app.owner_key)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    expect_error(res, StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_details_never_leak() {
    let app = app().await;
    // Store down: a clean 503, no SQL or driver text.
    app.state.store.close().await;
    let unknown = tollgate_core::apikey::generate("tgk").plaintext;
    let res = app.get("/v1/models", &unknown).await;
    assert!(res.headers().contains_key("retry-after"));
    let body = expect_error(res, StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE").await;
    let text = body.to_string().to_lowercase();
    for leak in ["sqlx", "pool", "select", "sqlite", "postgres"] {
        assert!(!text.contains(leak), "{text}");
    }
    let res = app.get("/ready", "").await;
    expect_error(res, StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE").await;
}
