//! Rate limits (SPEC §7): per key, per user, per tenant; requests, tokens, concurrency; the
//! headers on JSON, SSE and error responses; exact `Retry-After`.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tollgate::limits::LimitSet;

use crate::helpers::*;
use crate::store_tests;

store_tests!(
    key_request_limit_with_headers_on_json_sse_and_429,
    token_limit_reconciles_with_reported_usage,
    concurrency_limit_holds_while_a_stream_is_open,
    errors_after_admission_carry_the_headers,
);

fn stream_body() -> Value {
    json!({"model": "fake-model", "stream": true,
           "messages": [{"role": "user", "content": "Hello"}]})
}

fn assert_rate_headers(res: &reqwest::Response, limit: u64, remaining: u64) {
    assert_eq!(
        header(res, "x-ratelimit-limit-requests").as_deref(),
        Some(limit.to_string().as_str()),
        "limit header"
    );
    assert_eq!(
        header(res, "x-ratelimit-remaining-requests").as_deref(),
        Some(remaining.to_string().as_str()),
        "remaining header"
    );
    let reset = header(res, "x-ratelimit-reset-requests").expect("reset header");
    assert!(reset.ends_with('s'), "{reset}");
    let policy = header(res, "ratelimit-policy").expect("RateLimit-Policy");
    assert!(
        policy.contains(&format!("\"requests\";q={limit};w=60")),
        "{policy}"
    );
    let state = header(res, "ratelimit").expect("RateLimit");
    assert!(
        state.contains(&format!("\"requests\";r={remaining};t=")),
        "{state}"
    );
}

async fn key_request_limit_with_headers_on_json_sse_and_429(app: TestApp) {
    let (_, key) = limited_key(&app, json!({"requests_per_minute": 3})).await;

    let res = app.chat(&key, chat_body("fake-model")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_rate_headers(&res, 3, 2);

    // Streams carry the headers too (they are sent before the first event).
    let res = app.chat(&key, stream_body()).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        header(&res, "content-type").as_deref(),
        Some("text/event-stream")
    );
    assert_rate_headers(&res, 3, 1);
    let text = read_all(res).await;
    assert!(text.contains("[DONE]"));

    let res = app.chat(&key, chat_body("fake-model")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_rate_headers(&res, 3, 0);

    // The fourth within the minute: 429 with an exact Retry-After (one request every 20 s).
    let res = app.chat(&key, stream_body()).await;
    let retry: u64 = header(&res, "retry-after").unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "Retry-After {retry}");
    assert_rate_headers(&res, 3, 0);
    let body = expect_error(res, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED").await;
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("API key"),
        "{body}"
    );

    // Other keys of the same owner are not affected: with no limit of their own they report the
    // tenant's built-in ceilings, on JSON and SSE answers alike.
    for body in [chat_body("fake-model"), stream_body()] {
        let res = app.chat(&app.owner_key, body).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            header(&res, "x-ratelimit-limit-requests").as_deref(),
            Some("10000000")
        );
        assert_eq!(
            header(&res, "x-ratelimit-limit-tokens").as_deref(),
            Some("10000000000")
        );
        assert!(header(&res, "x-ratelimit-remaining-tokens").is_some());
        assert!(header(&res, "ratelimit").is_some());
        let _ = res.bytes().await;
    }
}

async fn token_limit_reconciles_with_reported_usage(app: TestApp) {
    let (_, key) = limited_key(&app, json!({"tokens_per_minute": 1000})).await;
    // The estimate (prompt + max_tokens ≈ 902) is reserved at admission...
    let body = json!({"model": "fake-model", "max_tokens": 900,
                      "messages": [{"role": "user", "content": "Hello"}]});
    let res = app.chat(&key, body.clone()).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        header(&res, "x-ratelimit-limit-tokens").as_deref(),
        Some("1000")
    );
    let remaining: u64 = header(&res, "x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    assert!(remaining < 100, "remaining {remaining}");
    // ...and reconciled with the reported usage (a handful of tokens), so the same request fits
    // again at once; the same for a stream (usage from its usage chunk).
    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let res = app.chat(&key, stream).await;
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "reconciled after the JSON answer"
    );
    read_all(res).await;
    let res = app.chat(&key, body.clone()).await;
    assert_eq!(res.status(), StatusCode::OK, "reconciled after the stream");
    // Two real 900-token completions do exhaust it.
    let mut big = body.clone();
    big["fake"] = json!({"completion_tokens": 900});
    assert_eq!(app.chat(&key, big.clone()).await.status(), StatusCode::OK);
    let res = app.chat(&key, big).await;
    let body = expect_error(res, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tokens per minute")
    );
}

async fn concurrency_limit_holds_while_a_stream_is_open(app: TestApp) {
    let (_, key) = limited_key(&app, json!({"concurrent_requests": 1})).await;
    let slow = json!({"model": "fake-model", "stream": true,
                      "messages": [{"role": "user", "content": "Hi"}],
                      "fake": {"chunks": 10, "chunk_delay_ms": 50}});
    let res = app.chat(&key, slow).await;
    assert_eq!(res.status(), StatusCode::OK);
    let second = app.chat(&key, chat_body("fake-model")).await;
    let retry = header(&second, "retry-after").unwrap();
    assert_eq!(retry, "1");
    let body = expect_error(second, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("concurrent")
    );
    // The slot is released when the stream ends.
    read_all(res).await;
    assert!(
        eventually(Duration::from_secs(2), || async {
            app.chat(&key, chat_body("fake-model")).await.status() == StatusCode::OK
        })
        .await
    );
}

async fn errors_after_admission_carry_the_headers(app: TestApp) {
    let (_, key) = limited_key(&app, json!({"requests_per_minute": 10})).await;
    let mut body = chat_body("fake-model");
    body["fake"] = json!({"status": 500});
    let res = app.chat(&key, body).await;
    assert_rate_headers(&res, 10, 9);
    expect_error(res, StatusCode::BAD_GATEWAY, "UPSTREAM_ERROR").await;
    let mut body = chat_body("fake-model");
    body["fake"] = json!({"status": 400});
    let res = app.chat(&key, body).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_rate_headers(&res, 10, 8);
}

/// Per-user and per-tenant limits from `[limits.user]` / `[limits.tenant]`: all of a member's
/// keys share the user's limit; all members share the tenant's; the tightest applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_tenant_limits_from_config() {
    let app = TestApp::spawn_with(Opts::new(Db::Sqlite).edit(|cfg| {
        cfg.limits.user = LimitSet {
            requests_per_minute: Some(2),
            ..Default::default()
        };
        cfg.limits.tenant = LimitSet {
            requests_per_minute: Some(3),
            ..Default::default()
        };
    }))
    .await
    .unwrap();
    let (user, key_a) = app.add_user("dev@example.com", &["developer"]).await;
    let key_b = app
        .create_key(&app.owner_key, json!({"name": "second", "user_id": user}))
        .await["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        app.chat(&key_a, chat_body("fake-model")).await.status(),
        StatusCode::OK
    );
    let res = app.chat(&key_b, chat_body("fake-model")).await;
    assert_eq!(res.status(), StatusCode::OK);
    // The user's limit (2, none left) is tighter than the tenant's (3, one left).
    assert_eq!(
        header(&res, "x-ratelimit-limit-requests").as_deref(),
        Some("2")
    );
    assert_eq!(
        header(&res, "x-ratelimit-remaining-requests").as_deref(),
        Some("0")
    );
    let res = app.chat(&key_b, chat_body("fake-model")).await;
    let body = expect_error(res, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED").await;
    assert!(
        body["error"]["message"].as_str().unwrap().contains("user"),
        "{body}"
    );
    // The owner has their own user budget; the denied request took nothing from the tenant's.
    let res = app.chat(&app.owner_key, chat_body("fake-model")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        header(&res, "x-ratelimit-limit-requests").as_deref(),
        Some("3")
    );
    assert_eq!(
        header(&res, "x-ratelimit-remaining-requests").as_deref(),
        Some("0")
    );
    let res = app.chat(&app.owner_key, chat_body("fake-model")).await;
    let body = expect_error(res, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tenant"),
        "{body}"
    );
    // Another tenant is not affected.
    let (_, other) = app.other_tenant("globex").await;
    assert_eq!(
        app.chat(&other, chat_body("fake-model")).await.status(),
        StatusCode::OK
    );
}

/// Key settings validate their limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_limits_are_validated_and_shown() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let res = app
        .post(
            "/v1/api-keys",
            &app.owner_key,
            json!({"name": "x", "rate_limit": {"requests_per_day": 0}}),
        )
        .await;
    expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
    let k = app
        .create_key(
            &app.owner_key,
            json!({"name": "x", "rate_limit": {"requests_per_minute": 5, "requests_per_day": 100,
                   "tokens_per_month": 100000, "concurrent_requests": 2}}),
        )
        .await;
    assert_eq!(k["rate_limit"]["requests_per_day"], 100);
    assert_eq!(k["rate_limit"]["concurrent_requests"], 2);
}
