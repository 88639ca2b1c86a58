//! Quotas (SPEC §7): reserved at admission, settled when the response ends — including a client
//! that disconnects mid-stream — so concurrent requests cannot overshoot. Without Redis the
//! counters live in the store, so instances sharing it enforce one quota.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;
use crate::store_tests;

store_tests!(
    thirty_concurrent_requests_on_a_ten_per_day_quota,
    a_stream_cut_by_the_client_settles_its_quota,
    failed_requests_are_refunded,
    quota_usage_survives_a_restart,
    two_instances_sharing_the_store_enforce_one_quota,
);

/// Fires `n` chat requests at once; returns the statuses and error codes.
pub async fn burst(
    app: &TestApp,
    key: &str,
    n: usize,
) -> Vec<(StatusCode, Option<String>, Option<String>)> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let req = app
            .req(reqwest::Method::POST, "/v1/chat/completions", key)
            .json(
                &json!({"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}],
                          "fake": {"delay_ms": 50}}),
            );
        tasks.push(tokio::spawn(async move {
            let res = req.send().await.unwrap();
            let status = res.status();
            let retry = header(&res, "retry-after");
            let body: serde_json::Value = res.json().await.unwrap_or_default();
            (
                status,
                body["error"]["code"].as_str().map(str::to_string),
                retry,
            )
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

async fn thirty_concurrent_requests_on_a_ten_per_day_quota(app: TestApp) {
    let (_, key) = limited_key(&app, json!({"requests_per_day": 10})).await;
    let results = burst(&app, &key, 30).await;
    let ok = results.iter().filter(|r| r.0 == StatusCode::OK).count();
    assert_eq!(ok, 10, "{results:?}");
    for (status, code, retry) in results.iter().filter(|r| r.0 != StatusCode::OK) {
        assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(code.as_deref(), Some("QUOTA_EXCEEDED"));
        // Not retryable before the day resets.
        let retry: u64 = retry.as_deref().unwrap().parse().unwrap();
        assert!((1..=86_400).contains(&retry));
    }
    let res = app.chat(&key, chat_body("fake-model")).await;
    assert_eq!(
        header(&res, "ratelimit-policy").as_deref(),
        Some(
            "\"requests\";q=10000000;w=60, \"tokens\";q=10000000000;w=60, \"requests-day\";q=10;w=86400"
        )
    );
    let body = expect_error(res, StatusCode::TOO_MANY_REQUESTS, "QUOTA_EXCEEDED").await;
    assert_eq!(body["error"]["type"], "insufficient_quota");
    assert_eq!(
        app.upstream.started(),
        10,
        "only admitted requests reach the upstream"
    );
}

async fn a_stream_cut_by_the_client_settles_its_quota(app: TestApp) {
    // One request at a time and 6000 tokens a month; each request reserves ~5000.
    let (_, key) = limited_key(
        &app,
        json!({"concurrent_requests": 1, "tokens_per_month": 6000}),
    )
    .await;
    let body = json!({"model": "fake-model", "stream": true, "max_tokens": 5000,
                      "messages": [{"role": "user", "content": "Hi"}],
                      "fake": {"chunks": 200, "chunk_delay_ms": 20}});
    let res = app.chat(&key, body.clone()).await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut stream = res.bytes_stream();
    let mut seen = 0;
    while seen < 2 {
        let chunk = stream.next().await.unwrap().unwrap();
        seen += String::from_utf8_lossy(&chunk).matches("data:").count();
    }
    // While the stream runs, its slot and its reservation are held.
    let res = app.chat(&key, chat_body("fake-model")).await;
    expect_error(res, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED").await;
    // The client goes away mid-stream.
    drop(stream);
    assert!(app.upstream.wait_cancelled(1, Duration::from_secs(5)).await);
    // Settled: the slot is free and only the tokens really streamed were kept, so another
    // 5000-token reservation fits.
    let ok = eventually(Duration::from_secs(3), || async {
        let res = app.chat(&key, body.clone()).await;
        let ok = res.status() == StatusCode::OK;
        drop(res);
        ok
    })
    .await;
    assert!(ok, "quota and slot settled after the client disconnected");
    // The usage record says what happened.
    assert!(wait_usage_records(&app, 2).await);
    let recs = tollgate::store::usage::recent_records(app.state.store.pool(), &app.tenant_id, 100)
        .await
        .unwrap();
    assert!(
        recs.iter()
            .any(|r| r.3 == "client_closed" && r.2 == 200 && r.5 >= 2),
        "{recs:?}"
    );
}

async fn failed_requests_are_refunded(app: TestApp) {
    let (_, key) = limited_key(&app, json!({"requests_per_day": 1})).await;
    let mut failing = chat_body("fake-model");
    failing["fake"] = json!({"status": 500});
    let res = app.chat(&key, failing).await;
    expect_error(res, StatusCode::BAD_GATEWAY, "UPSTREAM_ERROR").await;
    assert_eq!(
        app.chat(&key, chat_body("fake-model")).await.status(),
        StatusCode::OK
    );
    let res = app.chat(&key, chat_body("fake-model")).await;
    expect_error(res, StatusCode::TOO_MANY_REQUESTS, "QUOTA_EXCEEDED").await;
}

async fn quota_usage_survives_a_restart(app: TestApp) {
    let (_, key) = limited_key(&app, json!({"requests_per_day": 2})).await;
    for _ in 0..2 {
        assert_eq!(
            app.chat(&key, chat_body("fake-model")).await.status(),
            StatusCode::OK
        );
    }
    assert!(wait_usage_records(&app, 2).await);
    // A fresh instance (no shared limiter state) seeds its counter from the recorded usage.
    let other = app.second_instance().await;
    let res = other.chat(&key, chat_body("fake-model")).await;
    expect_error(res, StatusCode::TOO_MANY_REQUESTS, "QUOTA_EXCEEDED").await;
    other.shutdown().await;
}

/// No Redis: two instances share the store's quota counters. Leases never add up to more than
/// the quota, and a lease one instance leaves unspent goes back for the other to use.
async fn two_instances_sharing_the_store_enforce_one_quota(app: TestApp) {
    let other = app.second_instance().await;
    for a in [&app, &other] {
        let ready: serde_json::Value = a.get("/ready", "").await.json().await.unwrap();
        assert_eq!(ready["limits"], "local", "{ready}");
    }
    let (_, key) = limited_key(&app, json!({"requests_per_day": 40})).await;
    // The second instance serves one request and keeps the rest of its lease (a sixteenth of
    // what was left: 3 units, 2 unspent).
    assert_eq!(
        other.chat(&key, chat_body("fake-model")).await.status(),
        StatusCode::OK
    );
    // A concurrent burst of 60 on the first instance: it can lease only what is left, 37.
    let results = burst(&app, &key, 60).await;
    let ok = results.iter().filter(|r| r.0 == StatusCode::OK).count();
    assert_eq!(ok, 37, "{results:?}");
    for (status, code, _) in results.iter().filter(|r| r.0 != StatusCode::OK) {
        assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(code.as_deref(), Some("QUOTA_EXCEEDED"));
    }
    // The unspent lease goes back once idle, and the first instance serves its 2 units.
    let started = || app.upstream.started() + other.upstream.started();
    let served = eventually(Duration::from_secs(10), || async {
        let _ = app.chat(&key, chat_body("fake-model")).await;
        started() >= 40
    })
    .await;
    assert!(served, "the unspent lease came back: {}", started());
    for x in [&app, &other] {
        let res = x.chat(&key, chat_body("fake-model")).await;
        expect_error(res, StatusCode::TOO_MANY_REQUESTS, "QUOTA_EXCEEDED").await;
    }
    assert_eq!(started(), 40, "exactly the quota reached the upstreams");
    other.shutdown().await;
}
