//! Many instances (SPEC §7, §12): with Redis every decision is one Lua script, so N gateways
//! enforce one limit; Redis unreachable → the local limiter (never no limits), reported in
//! `/ready` and metrics, and back to Redis when it returns.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

async fn pair(db: Db) -> Option<(TestApp, TestApp)> {
    let url = redis_url()?;
    let prefix = redis_prefix();
    let (u, p) = (url.clone(), prefix.clone());
    let a = TestApp::spawn_with(Opts::new(db).edit(move |cfg| use_redis(cfg, &u, &p))).await?;
    let b = a
        .second_instance_with(move |cfg| use_redis(cfg, &url, &prefix))
        .await;
    Some((a, b))
}

async fn two_instances_enforce_one_limit(db: Db) {
    let Some((a, b)) = pair(db).await else { return };
    for app in [&a, &b] {
        let ready: Value = app.get("/ready", "").await.json().await.unwrap();
        assert_eq!(ready["limits"], "redis", "{ready}");
    }
    // Requests per minute: 6 in total, whichever instance serves them.
    let (_, key) = limited_key(&a, json!({"requests_per_minute": 6})).await;
    let mut ok = 0;
    let mut last_remaining = None;
    for i in 0..12 {
        let app = if i % 2 == 0 { &a } else { &b };
        let res = app.chat(&key, chat_body("mock-chat")).await;
        if res.status() == StatusCode::OK {
            ok += 1;
            last_remaining = header(&res, "x-ratelimit-remaining-requests");
        } else {
            assert!(header(&res, "retry-after").is_some());
            expect_error(res, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED").await;
        }
    }
    assert_eq!(ok, 6, "one limit across both instances");
    assert_eq!(last_remaining.as_deref(), Some("0"));

    // A daily quota under a concurrent burst split over both instances: exactly 10.
    let (_, key) = limited_key(&a, json!({"requests_per_day": 10})).await;
    let mut tasks = Vec::new();
    for i in 0..30 {
        let app = if i % 2 == 0 { &a } else { &b };
        let req = app
            .req(reqwest::Method::POST, "/v1/chat/completions", &key)
            .json(
                &json!({"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}],
                          "fake": {"delay_ms": 30}}),
            );
        tasks.push(tokio::spawn(
            async move { req.send().await.unwrap().status() },
        ));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        10,
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::TOO_MANY_REQUESTS)
    );

    // Concurrency slots are shared too, and a stream cut by its client frees its slot.
    let (_, key) = limited_key(&a, json!({"concurrent_requests": 1})).await;
    let slow = json!({"model": "fake-model", "stream": true,
                      "messages": [{"role": "user", "content": "Hi"}],
                      "fake": {"chunks": 200, "chunk_delay_ms": 20}});
    let res = a.chat(&key, slow).await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut stream = res.bytes_stream();
    let _ = stream.next().await;
    let res = b.chat(&key, chat_body("mock-chat")).await;
    expect_error(res, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED").await;
    drop(stream);
    let freed = eventually(Duration::from_secs(5), || async {
        b.chat(&key, chat_body("mock-chat")).await.status() == StatusCode::OK
    })
    .await;
    assert!(freed, "the cut stream's slot was released in Redis");
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_sqlite_and_redis_enforce_one_limit() {
    two_instances_enforce_one_limit(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_postgres_and_redis_enforce_one_limit() {
    if pg_url().is_none() {
        return;
    }
    two_instances_enforce_one_limit(Db::Postgres).await;
}

async fn ready_limits(app: &TestApp) -> String {
    let res = app.get("/ready", "").await;
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "ready stays 200 on the fallback"
    );
    let v: Value = res.json().await.unwrap();
    v["limits"].as_str().unwrap_or_default().to_string()
}

/// Redis stopped mid-test (a redis-server this test started on its own port): the local limiter
/// takes over with no 5xx, `/ready` and the metrics say so, and Redis is used again once back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_falls_back_to_local_limits() {
    let Some(mut redis) = OwnRedis::start().await else {
        return;
    };
    let url = redis.url();
    let app = TestApp::spawn_with(Opts::new(Db::Sqlite).edit(move |cfg| {
        use_redis(cfg, &url, "tgtest:outage:");
        cfg.limits.redis_timeout_ms = 200;
    }))
    .await
    .unwrap();
    let (_, key) = limited_key(&app, json!({"requests_per_minute": 5})).await;
    for _ in 0..2 {
        assert_eq!(
            app.chat(&key, chat_body("mock-chat")).await.status(),
            StatusCode::OK
        );
    }
    assert_eq!(ready_limits(&app).await, "redis");

    redis.stop();
    // No request fails with a 5xx; the limit is still enforced (locally: 5 more, then 429).
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let res = app.chat(&key, chat_body("mock-chat")).await;
        statuses.push(res.status());
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(header(&res, "retry-after").is_some());
        }
    }
    assert!(
        statuses.iter().all(|s| !s.is_server_error()),
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        5,
        "local limits apply during the outage: {statuses:?}"
    );
    assert_eq!(ready_limits(&app).await, "local-fallback");
    let metrics = app.get("/metrics", "").await.text().await.unwrap();
    assert!(
        metrics.contains("tollgate_limits_redis_fallback 1"),
        "{metrics}"
    );
    assert!(metrics.contains("backend=\"local\""));

    // Redis comes back: the gateway returns to it.
    assert!(redis.restart().await, "redis-server restarted");
    let back = eventually(Duration::from_secs(10), || async {
        ready_limits(&app).await == "redis"
    })
    .await;
    assert!(back, "back on Redis");
    // The restarted Redis is empty: the key gets a full budget there again.
    let res = app.chat(&key, chat_body("mock-chat")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let metrics = app.get("/metrics", "").await.text().await.unwrap();
    assert!(metrics.contains("tollgate_limits_redis_fallback 0"));
    app.shutdown().await;
}

/// A quota used up on Redis stays used up when Redis restarts empty: the counter Redis no longer
/// has is seeded from what the store recorded, read at that moment (each instance used to reuse
/// a seed loaded up to a minute earlier, so a key that had used its 10/day got 10 more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_up_quota_stays_used_up_after_redis_restarts() {
    let Some(mut redis) = OwnRedis::start().await else {
        return;
    };
    let url = redis.url();
    let app = TestApp::spawn_with(Opts::new(Db::Sqlite).edit(move |cfg| {
        use_redis(cfg, &url, "tgtest:reseed:");
        cfg.limits.redis_timeout_ms = 200;
    }))
    .await
    .unwrap();
    let (_, key) = limited_key(&app, json!({"requests_per_day": 10})).await;
    for _ in 0..10 {
        assert_eq!(
            app.chat(&key, chat_body("mock-chat")).await.status(),
            StatusCode::OK
        );
    }
    let res = app.chat(&key, chat_body("mock-chat")).await;
    expect_error(res, StatusCode::TOO_MANY_REQUESTS, "QUOTA_EXCEEDED").await;
    assert_eq!(ready_limits(&app).await, "redis");
    // Everything admitted is recorded in the store.
    assert!(wait_usage_records(&app, 11).await);

    redis.stop();
    assert!(redis.restart().await, "redis-server restarted");
    // The first decision after the restart may find the old connection broken and fall back
    // for a moment; another key's requests go through that until Redis decides again.
    let (_, other) = limited_key(&app, json!({"requests_per_minute": 1000})).await;
    let back = eventually(Duration::from_secs(10), || async {
        app.chat(&other, chat_body("mock-chat")).await.status() == StatusCode::OK
            && ready_limits(&app).await == "redis"
    })
    .await;
    assert!(back, "back on Redis");
    let before = redis_quota_refusals(&app).await;
    for _ in 0..3 {
        let res = app.chat(&key, chat_body("mock-chat")).await;
        expect_error(res, StatusCode::TOO_MANY_REQUESTS, "QUOTA_EXCEEDED").await;
    }
    assert_eq!(
        redis_quota_refusals(&app).await,
        before + 3,
        "refused by Redis itself, not by the fallback"
    );
    app.shutdown().await;
}

/// `tollgate_limit_decisions_total{outcome="quota_exceeded",backend="redis"}`.
async fn redis_quota_refusals(app: &TestApp) -> u64 {
    let metrics = app.get("/metrics", "").await.text().await.unwrap();
    metrics
        .lines()
        .find(|l| {
            l.starts_with("tollgate_limit_decisions_total")
                && l.contains("outcome=\"quota_exceeded\"")
                && l.contains("backend=\"redis\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}
