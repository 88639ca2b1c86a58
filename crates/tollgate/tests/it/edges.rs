//! The gateway's edges, as an attacker probes them: numbers from requests and tokens (token
//! budgets, `n`, NumericDates, reported usage) are range-checked with saturating arithmetic; a
//! request whose estimate can never fit a limit is refused at admission; a credential header
//! sent twice is ambiguous; every route has the one body limit with the one JSON `413`, which
//! every client can read (also when it keeps uploading); `QUOTA_EXCEEDED` tells the official SDKs
//! not to retry.

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;
use crate::oauth_support::*;
use crate::store_tests;
use crate::subs;

store_tests!(
    huge_token_budgets_are_refused_and_a_quota_is_never_overshot,
    an_estimate_larger_than_a_limit_is_refused_at_admission,
    reported_usage_is_capped_and_never_refunds,
    huge_configured_limits_count_as_unlimited,
    numeric_dates_out_of_range_are_refused_for_every_jwt_kind,
    a_credential_header_sent_twice_is_ambiguous,
);

/// `base` with `extra`'s members set.
fn with(mut base: Value, extra: &Value) -> Value {
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    base
}

fn hi(extra: Value) -> Value {
    with(
        json!({"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}]}),
        &extra,
    )
}

/// Sends `bodies` to the chat route all at once; returns (status, headers, body) in order.
async fn concurrently(
    app: &TestApp,
    key: &str,
    bodies: Vec<Value>,
) -> Vec<(StatusCode, reqwest::header::HeaderMap, Value)> {
    let tasks: Vec<_> = bodies
        .into_iter()
        .map(|b| {
            let req = app.req(Method::POST, "/v1/chat/completions", key).json(&b);
            tokio::spawn(async move {
                let res = req
                    .send()
                    .await
                    .expect("a response, not a connection error");
                let status = res.status();
                let headers = res.headers().clone();
                (
                    status,
                    headers,
                    res.json::<Value>().await.unwrap_or_default(),
                )
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn hdr<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Tokens recorded for the tenant (prompt + completion over every usage record).
async fn recorded_tokens(app: &TestApp) -> i64 {
    tollgate::store::usage::recent_records(app.state.store.pool(), &app.tenant_id, 100_000)
        .await
        .unwrap()
        .iter()
        .map(|r| r.4 + r.5)
        .sum()
}

/// `max_tokens` of 2^64-1 (or 2^63 with n=2, 2^62 with n=4, `max_completion_tokens` 2^64-1)
/// used to be estimated at about one token, so eight of them at once against a slow upstream
/// were served 200 tokens on a 100-token monthly quota. Now they are refused before admission,
/// and in-range budgets are reserved in full, so concurrent requests cannot overshoot.
async fn huge_token_budgets_are_refused_and_a_quota_is_never_overshot(app: TestApp) {
    let (_, key) = limited_key(&app, json!({"tokens_per_month": 100})).await;
    let slow = json!({"fake": {"delay_ms": 300, "completion_tokens": 25}});
    let huge = [
        (json!({"max_tokens": u64::MAX}), "max_tokens"),
        (json!({"max_tokens": 1u64 << 63, "n": 2}), "max_tokens"),
        (json!({"max_tokens": 1u64 << 62, "n": 4}), "max_tokens"),
        (
            json!({"max_completion_tokens": u64::MAX}),
            "max_completion_tokens",
        ),
    ];
    let bodies = (0..8)
        .map(|i| with(hi(slow.clone()), &huge[i % 4].0))
        .collect();
    for (i, (status, _, body)) in concurrently(&app, &key, bodies)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["code"], "VALIDATION_FAILED", "{body}");
        assert_eq!(body["error"]["param"], huge[i % 4].1, "{body}");
    }
    // Every other out-of-range number is refused the same way, naming its field.
    for (extra, param) in [
        (json!({"max_tokens": -1}), "max_tokens"),
        (json!({"max_tokens": 0}), "max_tokens"),
        (json!({"max_tokens": 12.5}), "max_tokens"),
        (json!({"max_tokens": "100"}), "max_tokens"),
        (json!({"max_tokens": 2_147_483_648u64}), "max_tokens"),
        (
            json!({"max_completion_tokens": -5}),
            "max_completion_tokens",
        ),
        (json!({"n": 0}), "n"),
        (json!({"n": -1}), "n"),
        (json!({"n": 129}), "n"),
        (json!({"n": 1e300}), "n"),
    ] {
        let res = app.chat(&key, hi(extra.clone())).await;
        let body = expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
        assert_eq!(body["error"]["param"], param, "{extra}: {body}");
    }
    // Images and embeddings too (`n` of an image request).
    let res = app
        .post(
            "/v1/images/generations",
            &key,
            json!({"model": "fake-image", "prompt": "a cat", "n": u64::MAX}),
        )
        .await;
    let body = expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
    assert_eq!(body["error"]["param"], "n");
    assert_eq!(app.upstream.started(), 0, "nothing reached the upstream");

    // A budget larger than the whole quota can never fit: QUOTA_EXCEEDED at once, not retryable.
    let res = app.chat(&key, hi(json!({"max_tokens": 1000}))).await;
    assert_eq!(header(&res, "x-should-retry").as_deref(), Some("false"));
    assert!(header(&res, "retry-after").is_some());
    let body = expect_error(res, StatusCode::TOO_MANY_REQUESTS, "QUOTA_EXCEEDED").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("estimated 1002 tokens"),
        "{body}"
    );

    // In range: each request reserves 2 + 40 tokens ("user" and "Hi" are 6 bytes of prompt), so
    // two of eight fit in 100; the others are refused while the first two are still running.
    let bodies = (0..8)
        .map(|_| hi(json!({"max_tokens": 40, "fake": {"delay_ms": 300, "completion_tokens": 40}})))
        .collect();
    let results = concurrently(&app, &key, bodies).await;
    let ok = results.iter().filter(|r| r.0 == StatusCode::OK).count();
    assert_eq!(ok, 2, "{results:?}");
    for (status, headers, body) in results.iter().filter(|r| r.0 != StatusCode::OK) {
        assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(body["error"]["code"], "QUOTA_EXCEEDED", "{body}");
        assert_eq!(hdr(headers, "x-should-retry"), Some("false"));
        let retry: u64 = hdr(headers, "retry-after").unwrap().parse().unwrap();
        assert!(retry >= 1);
    }
    // What was used is what was reserved; one more small request fits, the next does not.
    assert!(wait_usage_records(&app, 8 + 1).await);
    assert_eq!(recorded_tokens(&app).await, 2 * 41);
    let small = hi(json!({"max_tokens": 10, "fake": {"completion_tokens": 10}}));
    assert_eq!(app.chat(&key, small.clone()).await.status(), StatusCode::OK);
    let res = app.chat(&key, small).await;
    expect_error(res, StatusCode::TOO_MANY_REQUESTS, "QUOTA_EXCEEDED").await;
    assert!(wait_usage_records(&app, 11).await);
    let used = recorded_tokens(&app).await;
    assert!(used <= 100, "the quota was overshot: {used} tokens");
    assert_eq!(app.upstream.started(), 3);
}

/// An estimate larger than a tokens-per-minute limit can never be admitted, however long the
/// client waits: `422 VALIDATION_FAILED` naming what to lower (a 429 would be retried forever).
/// `RATE_LIMITED` stays retryable: `Retry-After`, no `x-should-retry`.
async fn an_estimate_larger_than_a_limit_is_refused_at_admission(app: TestApp) {
    let (_, key) = limited_key(&app, json!({"tokens_per_minute": 100})).await;
    for (extra, param) in [
        (json!({"max_tokens": 500}), "max_tokens"),
        (
            json!({"max_completion_tokens": 500}),
            "max_completion_tokens",
        ),
        // No budget given: the default (256) is assumed, and is what to lower.
        (json!({}), "max_tokens"),
    ] {
        let res = app.chat(&key, hi(extra.clone())).await;
        assert!(header(&res, "retry-after").is_none(), "{extra}");
        assert!(header(&res, "x-should-retry").is_none(), "{extra}");
        assert_eq!(
            header(&res, "x-ratelimit-limit-tokens").as_deref(),
            Some("100")
        );
        let body = expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
        assert_eq!(body["error"]["param"], param, "{extra}: {body}");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.contains("can never be admitted"), "{msg}");
        assert!(msg.contains("tokens per minute"), "{msg}");
    }
    // A prompt alone larger than the limit: the prompt is what to lower.
    let res = app
        .post(
            "/v1/embeddings",
            &key,
            json!({"model": "fake-embed", "input": "x".repeat(1000)}),
        )
        .await;
    let body = expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
    assert_eq!(body["error"]["param"], "input");
    // The limit itself still fits.
    let res = app.chat(&key, hi(json!({"max_tokens": 50}))).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(app.upstream.started(), 1);

    let (_, key) = limited_key(&app, json!({"requests_per_minute": 1})).await;
    assert_eq!(app.chat(&key, hi(json!({}))).await.status(), StatusCode::OK);
    let res = app.chat(&key, hi(json!({}))).await;
    assert!(header(&res, "retry-after").is_some());
    assert!(header(&res, "x-should-retry").is_none());
    expect_error(res, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED").await;
}

/// Usage reported by the upstream is its word only up to a ceiling: 2^64-1 prompt tokens used to
/// settle as -1 (a refund of the reservation, and a negative usage record).
async fn reported_usage_is_capped_and_never_refunds(app: TestApp) {
    let (_, key) = limited_key(&app, json!({"tokens_per_month": 1000})).await;
    let lying =
        hi(json!({"max_tokens": 10, "fake": {"prompt_tokens": u64::MAX, "completion_tokens": 0}}));
    let res = app.chat(&key, lying).await;
    assert_eq!(res.status(), StatusCode::OK);
    let _ = res.bytes().await;
    assert!(wait_usage_records(&app, 1).await);
    let recs = tollgate::store::usage::recent_records(app.state.store.pool(), &app.tenant_id, 10)
        .await
        .unwrap();
    assert_eq!(recs[0].4, i64::from(i32::MAX), "{recs:?}");
    // The quota counts the capped usage: it is spent.
    let res = app.chat(&key, hi(json!({"max_tokens": 10}))).await;
    expect_error(res, StatusCode::TOO_MANY_REQUESTS, "QUOTA_EXCEEDED").await;
}

/// A limit configured beyond what decisions count with (2^64-1 tokens a month) is in effect
/// unlimited; it used to turn into -1 and refuse every request.
async fn huge_configured_limits_count_as_unlimited(app: TestApp) {
    let (_, key) = limited_key(
        &app,
        json!({"tokens_per_month": u64::MAX, "requests_per_day": u64::MAX}),
    )
    .await;
    for _ in 0..3 {
        let res = app.chat(&key, hi(json!({"max_tokens": 10}))).await;
        assert_eq!(res.status(), StatusCode::OK);
        let state = header(&res, "ratelimit").unwrap();
        assert!(state.contains("\"tokens-month\";r=9007199254"), "{state}");
    }
}

async fn platform_token(app: &TestApp, exp: Value, iat: Value) -> String {
    let (id, secret) = service_account(app, &app.owner_key, &["developer"]).await;
    let res = form_post(
        app,
        "/oauth/token",
        Some((&id, &secret)),
        &[("grant_type", "client_credentials")],
    )
    .await;
    let v: Value = res.json().await.unwrap();
    let mut claims = payload(v["access_token"].as_str().unwrap());
    claims["exp"] = exp;
    claims["iat"] = iat;
    tollgate::identity::tokens::sign_claims(&app.state, &claims)
        .await
        .unwrap()
}

/// `exp = 2^63-1` with `iat = -2^63`, or `iat = -1e308`, used to pass an app JWT's lifetime cap
/// (`exp - iat` overflowed), so the token never expired. Every NumericDate of every JWT kind is
/// now range-checked (0 to the year 9999) by the shared JWS core.
async fn numeric_dates_out_of_range_are_refused_for_every_jwt_kind(app: TestApp) {
    let now = subs::now();
    let year_10000 = 253_402_300_800i64;
    // App JWTs.
    let sub = subs::subscribe(&app, &["fake-image"]).await;
    let signer = subs::hs256(&app, &sub.id).await;
    let good = signer.mint(&subs::claims(&sub.id, json!({})));
    assert_eq!(app.get("/v1/me", &good).await.status(), StatusCode::OK);
    for extra in [
        json!({"exp": i64::MAX, "iat": i64::MIN}),
        json!({"iat": -1e308}),
        json!({"iat": -1}),
        json!({"exp": year_10000, "iat": year_10000 - 60}),
        json!({"exp": now + 300, "iat": now, "nbf": -100}),
        json!({"exp": 1e300}),
    ] {
        let t = signer.mint(&subs::claims(&sub.id, extra.clone()));
        let res = app.get("/v1/me", &t).await;
        let body = expect_error(res, StatusCode::UNAUTHORIZED, "AUTH_INVALID").await;
        assert!(
            body["error"]["message"].as_str().unwrap().contains("claim"),
            "{extra}: {body}"
        );
    }
    // Platform tokens (signed with the gateway's own key, so only the date rules refuse them).
    let ok = platform_token(&app, json!(now + 300), json!(now)).await;
    assert_eq!(app.get("/v1/me", &ok).await.status(), StatusCode::OK);
    for (exp, iat) in [
        (json!(i64::MAX), json!(now)),
        (json!(year_10000), json!(now)),
        (json!(now + 300), json!(-1e308)),
        (json!(now + 300), json!(i64::MIN)),
    ] {
        let t = platform_token(&app, exp.clone(), iat.clone()).await;
        let res = app.get("/v1/me", &t).await;
        expect_error(res, StatusCode::UNAUTHORIZED, "AUTH_INVALID").await;
    }
}

/// Two `Authorization` headers (or two `X-API-Key`, or two `x-user-id` on an optional route)
/// used to be accepted with the first winning; a proxy in front reading the other would see
/// another caller.
async fn a_credential_header_sent_twice_is_ambiguous(app: TestApp) {
    let bearer = format!("Bearer {}", app.owner_key);
    let sub = subs::subscribe(&app, &["fake-model"]).await;
    let send = |path: &'static str, headers: Vec<(&'static str, String)>| {
        let mut r = app.client.get(app.url(path));
        for (k, v) in headers {
            r = r.header(k, v);
        }
        r.send()
    };
    for (path, headers) in [
        (
            "/v1/me",
            vec![
                ("authorization", bearer.clone()),
                ("authorization", bearer.clone()),
            ],
        ),
        (
            "/v1/api-keys",
            vec![
                ("authorization", bearer.clone()),
                ("authorization", "Bearer aaa.bbb.ccc".into()),
            ],
        ),
        (
            "/v1/me",
            vec![
                ("x-api-key", app.owner_key.clone()),
                ("x-api-key", app.owner_key.clone()),
            ],
        ),
        (
            "/v1/models",
            vec![("x-user-id", sub.id.clone()), ("x-user-id", sub.id.clone())],
        ),
        (
            "/v1/models",
            vec![
                ("authorization", bearer.clone()),
                ("x-user-id", sub.id.clone()),
                ("x-user-id", "66ec1726e728c1405e5ebca2".into()),
            ],
        ),
    ] {
        let res = send(path, headers.clone()).await.unwrap();
        let body = expect_error(res, StatusCode::BAD_REQUEST, "AUTH_AMBIGUOUS").await;
        assert_eq!(
            body["error"]["type"], "invalid_request_error",
            "{headers:?}"
        );
    }
    // Once each is fine; x-user-id is ignored (even twice) where it does not count.
    for (path, headers) in [
        ("/v1/me", vec![("authorization", bearer.clone())]),
        ("/v1/models", vec![("x-user-id", sub.id.clone())]),
        (
            "/v1/api-keys",
            vec![
                ("authorization", bearer.clone()),
                ("x-user-id", sub.id.clone()),
                ("x-user-id", sub.id.clone()),
            ],
        ),
    ] {
        let res = send(path, headers.clone()).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{headers:?}");
    }
    // The chat route too (a POST).
    let res = app
        .client
        .post(app.url("/v1/chat/completions"))
        .header(AUTHORIZATION, &bearer)
        .header(AUTHORIZATION, &bearer)
        .json(&hi(json!({})))
        .send()
        .await
        .unwrap();
    expect_error(res, StatusCode::BAD_REQUEST, "AUTH_AMBIGUOUS").await;
    assert_eq!(app.upstream.started(), 0);
}

// ---- the body limit ------------------------------------------------------------------------

const SMALL_LIMIT: usize = 4096;

async fn small_limit_app(db: Db) -> Option<TestApp> {
    TestApp::spawn_with(Opts::new(db).edit(|c| c.max_body_bytes = SMALL_LIMIT)).await
}

/// Every route that reads a body, by method, path and content type (and a few that do not).
const ROUTES: &[(&str, &str, &str)] = &[
    ("POST", "/v1/chat/completions", "application/json"),
    ("POST", "/api/v1/chat/completions", "application/json"),
    ("POST", "/api/v2/embeddings", "application/json"),
    ("POST", "/v1/embeddings", "application/json"),
    ("POST", "/v1/images/generations", "application/json"),
    ("POST", "/v1/api-keys", "application/json"),
    ("PATCH", "/v1/api-keys/key_x", "application/json"),
    ("POST", "/v1/api-keys/key_x/rotate", "application/json"),
    ("POST", "/v1/users", "application/json"),
    ("PATCH", "/v1/users/usr_x", "application/json"),
    ("PUT", "/v1/users/usr_x/roles", "application/json"),
    ("POST", "/v1/roles", "application/json"),
    ("PATCH", "/v1/roles/role_x", "application/json"),
    ("POST", "/v1/tenants", "application/json"),
    ("POST", "/v1/products", "application/json"),
    ("POST", "/v1/plans", "application/json"),
    ("POST", "/v1/subscriptions", "application/json"),
    (
        "POST",
        "/v1/subscriptions/x/credentials",
        "application/json",
    ),
    ("POST", "/v1/oauth-clients", "application/json"),
    ("POST", "/v1/identity-providers", "application/json"),
    ("POST", "/oauth/token", "application/x-www-form-urlencoded"),
    ("POST", "/oauth/revoke", "application/x-www-form-urlencoded"),
    (
        "POST",
        "/oauth/introspect",
        "application/x-www-form-urlencoded",
    ),
    (
        "POST",
        "/oauth/authorize",
        "application/x-www-form-urlencoded",
    ),
    ("POST", "/v1/auth/identify", "application/json"),
    ("POST", "/v1/auth/authorize", "application/json"),
    ("POST", "/v1/auth/token", "application/json"),
    ("POST", "/v1/auth/refresh", "application/json"),
    ("POST", "/v1/auth/logout", "application/json"),
    ("POST", "/v1/auth/signup", "application/json"),
    ("POST", "/v1/auth/password-reset", "application/json"),
    (
        "POST",
        "/v1/auth/password-reset/confirm",
        "application/json",
    ),
    ("GET", "/v1/models", "application/json"),
    ("POST", "/v1/no-such-route", "application/json"),
];

fn json_padding(len: usize) -> String {
    format!("{{\"pad\": \"{}\"}}", "x".repeat(len))
}

async fn expect_json_413(res: reqwest::Response, what: &str) {
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE, "{what}");
    assert!(header(&res, "x-request-id").is_some(), "{what}");
    assert_eq!(
        header(&res, "connection").as_deref(),
        Some("close"),
        "{what}"
    );
    assert_eq!(
        header(&res, "content-type").as_deref(),
        Some("application/json"),
        "{what}"
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "PAYLOAD_TOO_LARGE", "{what}: {body}");
    assert_eq!(
        body["error"]["type"], "invalid_request_error",
        "{what}: {body}"
    );
}

/// `/v1/auth/token` and `/v1/auth/refresh` (and the OAuth form endpoints, the login form)
/// used to parse bodies over `max_body_bytes`, answering plain text above 2 MB. Now one limit
/// holds on every route, with one error shape, with or without `Content-Length`.
async fn every_route_has_the_one_body_limit(db: Db) {
    let Some(app) = small_limit_app(db).await else {
        return;
    };
    let client_id = public_client(&app).await;
    let (_, challenge) = pkce();
    let login = authorize_url(&app, &client_id, REDIRECT, Some(&challenge), "s", "openid");
    let login_path = login.trim_start_matches(&app.base).to_string();
    for (method, path, ct) in ROUTES {
        let path = if *path == "/oauth/authorize" {
            login_path.as_str()
        } else {
            path
        };
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        // With a Content-Length: refused before any handler, guard or extractor runs.
        let res = app
            .req(method.clone(), path, &app.owner_key)
            .header(CONTENT_TYPE, *ct)
            .body(json_padding(2 * SMALL_LIMIT))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        expect_json_413(res, &format!("{method} {path}")).await;
        // Without one (chunked): reading stops at the limit, and the answer is the same.
        let chunks = futures_util::stream::iter(
            (0..8).map(|_| Ok::<_, std::io::Error>(vec![b' '; SMALL_LIMIT])),
        );
        let res = app
            .req(method.clone(), path, &app.owner_key)
            .header(CONTENT_TYPE, *ct)
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .unwrap_or_else(|e| panic!("chunked {method} {path}: {e}"));
        // Only the routes that never read a body answer otherwise.
        match path {
            "/v1/models" => assert_eq!(res.status(), StatusCode::OK),
            "/v1/no-such-route" => assert_eq!(res.status(), StatusCode::NOT_FOUND),
            _ => expect_json_413(res, &format!("chunked {method} {path}")).await,
        }
    }
    // The routes the report named, and the login form, read chunked bodies up to the limit.
    for path in [
        "/v1/auth/token",
        "/v1/auth/refresh",
        "/v1/auth/signup",
        "/oauth/token",
        "/v1/chat/completions",
        login_path.as_str(),
    ] {
        let chunks = futures_util::stream::iter(
            (0..8).map(|_| Ok::<_, std::io::Error>(vec![b' '; SMALL_LIMIT])),
        );
        let res = app
            .client
            .post(app.url(path))
            .bearer_auth(&app.owner_key)
            .header(CONTENT_TYPE, "application/json")
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .unwrap();
        expect_json_413(res, &format!("chunked {path}")).await;
    }
    // A body within the limit is read and parsed as before.
    let res = app
        .client
        .post(app.url("/v1/auth/token"))
        .header(CONTENT_TYPE, "application/json")
        .body(json_padding(SMALL_LIMIT - 100))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = form_post(&app, "/oauth/token", None, &[("grant_type", "password")]).await;
    expect_oauth_error(res, StatusCode::BAD_REQUEST, "unsupported_grant_type").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_has_the_one_body_limit_sqlite() {
    every_route_has_the_one_body_limit(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_has_the_one_body_limit_postgres() {
    if pg_url().is_some() {
        every_route_has_the_one_body_limit(Db::Postgres).await;
    }
}

/// With the default limit (4 MiB), a 3 MB body to the token endpoints is read (axum's own
/// extractor used to refuse it at 2 MB, in plain text), and a 5 MB one gets the JSON 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_is_the_configured_one_not_a_framework_default() {
    let app = TestApp::spawn(Db::Sqlite).await;
    assert_eq!(app.state.config.max_body_bytes, 4 * 1024 * 1024);
    for path in ["/v1/auth/token", "/v1/auth/refresh"] {
        let res = app
            .client
            .post(app.url(path))
            .header(CONTENT_TYPE, "application/json")
            .body(json_padding(3_000_000))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(
            header(&res, "content-type").as_deref(),
            Some("application/json")
        );
        let res = app
            .client
            .post(app.url(path))
            .header(CONTENT_TYPE, "application/json")
            .body(json_padding(5_000_000))
            .send()
            .await
            .unwrap();
        expect_json_413(res, path).await;
    }
    let pad = "x".repeat(3_000_000);
    let res = form_post(
        &app,
        "/oauth/token",
        None,
        &[("grant_type", "password"), ("pad", &pad)],
    )
    .await;
    expect_oauth_error(res, StatusCode::BAD_REQUEST, "unsupported_grant_type").await;
}

// ---- a 413 every client can read -----------------------------------------------------------

/// Reads until the server closes; `Err` if the connection was reset instead.
async fn read_to_close(tcp: &mut tokio::net::TcpStream) -> std::io::Result<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(15), tcp.read(&mut buf)).await {
            Ok(Ok(0)) => return Ok(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return Err(e),
            Err(_) => panic!("the server neither answered nor closed"),
        }
    }
}

/// A client that keeps uploading after its headers (as Node's fetch does) while the gateway
/// refuses the body from its `Content-Length`: the gateway answers at once and closes in stages,
/// reading and discarding the rest, so the whole upload goes through and the client then reads a
/// complete 413. Closing at once used to reset the connection (the client saw `EPIPE`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_over_the_limit_reads_a_complete_413() {
    let app = small_limit_app(Db::Sqlite).await.unwrap();
    let total = 8 * 1024 * 1024;
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: {total}\r\n\r\n",
        app.addr, app.owner_key
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 256 * 1024];
    for i in 0..total / chunk.len() {
        tcp.write_all(&chunk)
            .await
            .unwrap_or_else(|e| panic!("upload cut after {i} chunks: {e}"));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let got = read_to_close(&mut tcp).await.expect("closed, not reset");
    let text = String::from_utf8_lossy(&got);
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_string)
        })
        .expect("content-length")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(body.len(), len, "the whole body arrived");
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["error"]["code"], "PAYLOAD_TOO_LARGE");
}

/// Reads one response head (and whatever followed it in the same reads) off a kept-alive
/// connection; `None` if the server closed the connection instead.
async fn read_head(tcp: &mut tokio::net::TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(15), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server neither answered nor closed"),
        }
    }
    Some(String::from_utf8_lossy(&got).to_ascii_lowercase())
}

/// A route that answers without reading the request body (a `GET /v1/models` or an unknown
/// route with a chunked body) leaves the connection unusable: the server cannot find the next
/// request behind the unread body and closes. Its answer says `Connection: close`, so a client
/// never sends its next request on that connection and gets no answer (reqwest's pool did, under
/// load). A route that read its body keeps the connection alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_body_closes_the_connection_and_says_so() {
    let app = small_limit_app(Db::Sqlite).await.unwrap();
    let chunked: String = (0..8)
        .map(|_| format!("400\r\n{}\r\n", " ".repeat(1024)))
        .chain(["0\r\n\r\n".to_string()])
        .collect();
    for (method, path) in [("GET", "/v1/models"), ("POST", "/v1/no-such-route")] {
        let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
             content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{chunked}",
            app.owner_key
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let head = read_head(&mut tcp).await.expect("an answer");
        assert!(head.contains("\r\nconnection: close\r\n"), "{path}: {head}");
    }
    // Read bodies (the token endpoint's, a request without one) keep the connection.
    let small: String = (0..2)
        .map(|_| format!("400\r\n{}\r\n", " ".repeat(1024)))
        .chain(["0\r\n\r\n".to_string()])
        .collect();
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    for req in [
        "POST /v1/auth/token HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: 2\r\n\r\n{}"
            .to_string(),
        format!(
            "POST /v1/auth/token HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             transfer-encoding: chunked\r\n\r\n{small}"
        ),
        format!(
            "GET /v1/models HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\r\n",
            app.owner_key
        ),
    ] {
        tcp.write_all(req.as_bytes()).await.unwrap();
        let head = read_head(&mut tcp)
            .await
            .expect("answered on the same connection");
        assert!(!head.contains("connection: close"), "{head}");
    }
}

/// A client that never stops sending is not read from forever: closing reads at most its bounds
/// (64 MiB, 10 s) and then closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_upload_is_closed_after_the_bounds() {
    let app = small_limit_app(Db::Sqlite).await.unwrap();
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        u64::MAX / 2
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![b' '; 1024 * 1024];
        let mut sent = 0u64;
        while wr.write_all(&chunk).await.is_ok() {
            sent += chunk.len() as u64;
        }
        sent
    });
    // The 413 arrives first, then the connection ends.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    let started = std::time::Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), rd.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the connection was never closed"),
        }
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 413"));
    let sent = tokio::time::timeout(Duration::from_secs(20), writer)
        .await
        .expect("the upload was cut")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(
        sent >= 8 * 1024 * 1024,
        "the server kept reading for a while: {sent}"
    );
}

/// Node's fetch (what the `openai` Node SDK uses) posting a 10 MB body over the default 4 MiB
/// limit must see the 413, not a connection error. Runs when `node` is on PATH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_fetch_sees_the_413() {
    let Ok(version) = std::process::Command::new("node").arg("--version").output() else {
        eprintln!("skipped: node is not on PATH, the Node fetch 413 test was not run");
        return;
    };
    eprintln!("node {}", String::from_utf8_lossy(&version.stdout).trim());
    let app = TestApp::spawn(Db::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("post.mjs");
    std::fs::write(
        &script,
        r#"
const [url, key] = process.argv.slice(2);
const body = JSON.stringify({model: "fake-model",
  messages: [{role: "user", content: "x".repeat(10 * 1024 * 1024)}]});
const out = [];
for (let i = 0; i < 3; i++) {
  try {
    const res = await fetch(url, {method: "POST", body,
      headers: {authorization: `Bearer ${key}`, "content-type": "application/json"}});
    const j = await res.json();
    out.push({status: res.status, code: j.error && j.error.code});
  } catch (e) {
    out.push({error: String(e), cause: String(e.cause)});
  }
}
console.log(JSON.stringify(out));
"#,
    )
    .unwrap();
    let output = tokio::process::Command::new("node")
        .arg(&script)
        .arg(app.url("/v1/chat/completions"))
        .arg(&app.owner_key)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Value = serde_json::from_str(stdout.trim()).unwrap();
    for r in results.as_array().unwrap() {
        assert_eq!(r["status"], 413, "{results}");
        assert_eq!(r["code"], "PAYLOAD_TOO_LARGE", "{results}");
    }
    assert_eq!(app.upstream.started(), 0);
}

// ---- Redis --------------------------------------------------------------------------------

/// The same admission rules when every decision is the Redis script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_refuses_estimates_that_can_never_fit() {
    let Some(url) = redis_url() else { return };
    let prefix = redis_prefix();
    let app = TestApp::spawn_with(Opts::new(Db::Sqlite).edit(move |c| use_redis(c, &url, &prefix)))
        .await
        .unwrap();
    let ready: Value = app.get("/ready", "").await.json().await.unwrap();
    assert_eq!(ready["limits"], "redis", "{ready}");
    let (_, key) = limited_key(&app, json!({"tokens_per_minute": 100})).await;
    let res = app.chat(&key, hi(json!({"max_tokens": 500}))).await;
    let body = expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
    assert_eq!(body["error"]["param"], "max_tokens");
    assert_eq!(
        app.chat(&key, hi(json!({"max_tokens": 50}))).await.status(),
        StatusCode::OK
    );

    let (_, key) = limited_key(&app, json!({"tokens_per_month": 100})).await;
    let res = app.chat(&key, hi(json!({"max_tokens": u64::MAX}))).await;
    expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
    let res = app.chat(&key, hi(json!({"max_tokens": 1000}))).await;
    assert_eq!(header(&res, "x-should-retry").as_deref(), Some("false"));
    expect_error(res, StatusCode::TOO_MANY_REQUESTS, "QUOTA_EXCEEDED").await;
    let bodies = (0..8)
        .map(|_| hi(json!({"max_tokens": 40, "fake": {"delay_ms": 300, "completion_tokens": 40}})))
        .collect();
    let results = concurrently(&app, &key, bodies).await;
    let ok = results.iter().filter(|r| r.0 == StatusCode::OK).count();
    assert_eq!(ok, 2, "{results:?}");

    // A limit beyond 2^53 counts as that (exact in Lua's doubles): requests pass and the
    // remaining count is reported, not 0.
    let (_, key) = limited_key(&app, json!({"tokens_per_month": u64::MAX})).await;
    let res = app.chat(&key, hi(json!({"max_tokens": 10}))).await;
    assert_eq!(res.status(), StatusCode::OK);
    let state = header(&res, "ratelimit").unwrap();
    assert!(state.contains("\"tokens-month\";r=9007199254"), "{state}");
}
