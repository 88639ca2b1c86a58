//! Retries: `429 RATE_LIMITED` waits for its `Retry-After` and succeeds; `QUOTA_EXCEEDED` is
//! never retried; the count and the waits are bounded.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tollgate_client::{Auth, Client, Code, RetryEvent, RetryPolicy};

use crate::helpers::*;

fn recording(base: &str, auth: Auth, policy: RetryPolicy) -> (Client, Arc<Mutex<Vec<RetryEvent>>>) {
    let events: Arc<Mutex<Vec<RetryEvent>>> = Arc::default();
    let log = events.clone();
    let client = Client::builder(base)
        .auth(auth)
        .retry(policy)
        .on_retry(move |e| log.lock().unwrap().push(e.clone()))
        .build()
        .unwrap();
    (client, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_is_retried_after_retry_after_then_succeeds() {
    let gw = Gateway::spawn().await;
    // 60 per minute: a burst of 60, then one more each second (Retry-After: 1).
    let (_, key) = gw
        .key(json!({"rate_limit": {"requests_per_minute": 60}}))
        .await;
    let burst = (0..60).map(|_| {
        gw.http
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&json!({"model": "mock-chat", "messages": [{"role": "user", "content": "Hi"}]}))
            .send()
    });
    for res in futures_util::future::join_all(burst).await {
        assert_eq!(res.unwrap().status(), 200);
    }
    let (client, events) = recording(&gw.base, Auth::api_key(&key), RetryPolicy::default());
    let started = Instant::now();
    let answer = client.chat(&chat_req("mock-chat", "Hello")).await.unwrap();
    assert!(answer.text().is_some());
    let events = events.lock().unwrap().clone();
    assert!(!events.is_empty(), "the first attempt was rate limited");
    assert_eq!(events[0].error.code(), Code::RateLimited);
    assert_eq!(events[0].wait, Duration::from_secs(1), "Retry-After: 1");
    assert_eq!(events[0].error.retry_after, Some(Duration::from_secs(1)));
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_exceeded_is_never_retried() {
    let gw = Gateway::spawn().await;
    let (_, key) = gw.key(json!({"rate_limit": {"requests_per_day": 1}})).await;
    // Even a policy that would wait a day does not retry a quota.
    let generous = RetryPolicy {
        max_retries: 10,
        max_wait: Duration::from_secs(86_400),
        max_total_wait: Duration::from_secs(86_400),
    };
    let (client, events) = recording(&gw.base, Auth::api_key(&key), generous);
    client.chat(&chat_req("mock-chat", "one")).await.unwrap();
    let started = Instant::now();
    let err = client
        .chat(&chat_req("mock-chat", "two"))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1));
    let e = err.api().unwrap();
    assert_eq!(e.code(), Code::QuotaExceeded);
    assert_eq!(e.status, 429);
    assert_eq!(e.kind, "insufficient_quota");
    assert!(
        e.retry_after.is_some(),
        "the gateway says when the period resets"
    );
    assert!(events.lock().unwrap().is_empty());
}

/// A server that always rate-limits: the retry count, the longest single wait and
/// `x-should-retry: false` all bound the retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_bounded() {
    let body = r#"{"error":{"message":"slow down","type":"rate_limit_error","code":"RATE_LIMITED","param":null}}"#;
    let cap = Capture::start(429, &[("retry-after", "1"), ("x-request-id", "rq-7")], body).await;
    let policy = RetryPolicy {
        max_retries: 2,
        ..RetryPolicy::default()
    };
    let (client, events) = recording(&cap.base, Auth::api_key("tgk_x"), policy);
    let err = client.models().await.unwrap_err();
    assert_eq!(err.code(), Some(Code::RateLimited));
    assert_eq!(err.api().unwrap().request_id.as_deref(), Some("rq-7"));
    assert_eq!(cap.seen().len(), 3, "the first attempt and two retries");
    assert_eq!(events.lock().unwrap().len(), 2);

    let cap = Capture::start(429, &[("retry-after", "120")], body).await;
    let (client, _) = recording(&cap.base, Auth::api_key("tgk_x"), RetryPolicy::default());
    client.models().await.unwrap_err();
    assert_eq!(cap.seen().len(), 1, "a wait above max_wait is not taken");

    let cap = Capture::start(
        429,
        &[("retry-after", "1"), ("x-should-retry", "false")],
        body,
    )
    .await;
    let (client, _) = recording(&cap.base, Auth::api_key("tgk_x"), RetryPolicy::default());
    client.models().await.unwrap_err();
    assert_eq!(cap.seen().len(), 1, "x-should-retry: false is obeyed");

    let quota = r#"{"error":{"message":"used up","type":"insufficient_quota","code":"QUOTA_EXCEEDED","param":null}}"#;
    let cap = Capture::start(429, &[("retry-after", "1")], quota).await;
    let (client, _) = recording(&cap.base, Auth::api_key("tgk_x"), RetryPolicy::default());
    client.models().await.unwrap_err();
    assert_eq!(
        cap.seen().len(),
        1,
        "a quota without x-should-retry is not retried either"
    );
}
