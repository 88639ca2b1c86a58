//! Usage metering (SPEC §7, §4.2): one record per inference request, batched writes, per-minute
//! aggregates, `GET /v1/usage` with `group_by` and `granularity`, end-user attribution (§2.6).

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::store_tests;

store_tests!(
    old_usage_is_deleted_in_batches_and_recent_usage_kept,
    usage_grouped_by_end_user,
    developers_see_only_their_own_usage,
    usage_is_flushed_on_shutdown,
    a_batch_keeps_every_field_of_every_record,
);

async fn usage(app: &TestApp, key: &str, query: &str) -> Value {
    let res = app.get(&format!("/v1/usage?{query}"), key).await;
    assert_eq!(res.status(), StatusCode::OK, "GET /v1/usage?{query}");
    res.json().await.unwrap()
}

fn total(v: &Value, field: &str, group: &str, name: Option<&str>) -> i64 {
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b[group].as_str() == name)
        .map(|b| b[field].as_i64().unwrap())
        .sum()
}

async fn usage_grouped_by_end_user(app: TestApp) {
    let send = |end_user: Option<&'static str>, body: Value| {
        let mut req = app
            .req(
                reqwest::Method::POST,
                "/v1/chat/completions",
                &app.owner_key,
            )
            .json(&body);
        if let Some(u) = end_user {
            req = req.header("x-end-user-id", u);
        }
        async move {
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            res.text().await.unwrap()
        }
    };
    let mut with_user = chat_body("fake-model");
    with_user["user"] = json!("bob");
    with_user["fake"] = json!({"prompt_tokens": 10, "completion_tokens": 5});
    // The header names the end user; the body's `user` is used only without it.
    send(Some("alice"), with_user.clone()).await;
    send(Some("alice"), with_user.clone()).await;
    send(None, with_user.clone()).await;
    let mut stream = with_user.clone();
    stream["stream"] = json!(true);
    let text = send(Some("carol"), stream).await;
    assert!(text.contains("[DONE]"));
    send(None, chat_body("mock-chat")).await;
    assert!(wait_usage_records(&app, 5).await);

    let v = usage(&app, &app.owner_key, "group_by=end_user&granularity=day").await;
    assert_eq!(v["granularity"], "day");
    assert_eq!(total(&v, "requests", "end_user", Some("alice")), 2);
    assert_eq!(total(&v, "requests", "end_user", Some("bob")), 1);
    assert_eq!(total(&v, "requests", "end_user", Some("carol")), 1);
    assert_eq!(total(&v, "requests", "end_user", None), 1);
    assert_eq!(total(&v, "prompt_tokens", "end_user", Some("alice")), 20);
    assert_eq!(
        total(&v, "completion_tokens", "end_user", Some("alice")),
        10
    );
    // The stream's usage came from its usage chunk.
    assert_eq!(total(&v, "total_tokens", "end_user", Some("carol")), 15);

    // By model, per minute, within an explicit range.
    let now = tollgate::util::now_ms();
    let from = tollgate::util::rfc3339(now - 3_600_000);
    let to = tollgate::util::rfc3339(now + 60_000);
    let v = usage(
        &app,
        &app.owner_key,
        &format!("group_by=model&granularity=minute&from={from}&to={to}"),
    )
    .await;
    assert_eq!(total(&v, "requests", "model", Some("fake-model")), 4);
    assert_eq!(total(&v, "requests", "model", Some("mock-chat")), 1);
    let b = &v["data"][0];
    assert!(
        b["start_time"].is_string() && b["end_time"].is_string() && b["avg_latency_ms"].is_number()
    );
    // By key and by user.
    let v = usage(&app, &app.owner_key, "group_by=api_key,user").await;
    assert_eq!(v["data"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["data"][0]["user"], app.owner_id.as_str());
    assert_eq!(v["data"][0]["requests"], 5);

    // Validation.
    let res = app.get("/v1/usage?granularity=week", &app.owner_key).await;
    expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
    let res = app.get("/v1/usage?group_by=colour", &app.owner_key).await;
    expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
    let res = app.get("/v1/usage?from=yesterday", &app.owner_key).await;
    expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
}

async fn developers_see_only_their_own_usage(app: TestApp) {
    let (_, dev) = app.add_user("dev@example.com", &["developer"]).await;
    let (_, other) = app.add_user("other@example.com", &["developer"]).await;
    assert_eq!(
        app.chat(&dev, chat_body("fake-model")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.chat(&other, chat_body("fake-model")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.chat(&app.owner_key, chat_body("fake-model"))
            .await
            .status(),
        StatusCode::OK
    );
    assert!(wait_usage_records(&app, 3).await);
    let mine = usage(&app, &dev, "group_by=user").await;
    assert_eq!(mine["scope"], "own");
    assert_eq!(mine["data"].as_array().unwrap().len(), 1);
    assert_eq!(mine["data"][0]["requests"], 1);
    let all = usage(&app, &app.owner_key, "group_by=user").await;
    assert_eq!(all["scope"], "tenant");
    assert_eq!(all["data"].as_array().unwrap().len(), 3);
    // Another tenant sees none of it.
    let (_, globex) = app.other_tenant("globex").await;
    let theirs = usage(&app, &globex, "").await;
    assert_eq!(theirs["data"].as_array().unwrap().len(), 0);
    // A role without usage:read is refused.
    let (_, custom) = {
        let res = app
            .post(
                "/v1/roles",
                &app.owner_key,
                json!({"name": "chat-only", "permissions": ["chat:write"]}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
        app.add_user("chat@example.com", &["chat-only"]).await
    };
    let res = app.get("/v1/usage", &custom).await;
    expect_error(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
}

async fn usage_is_flushed_on_shutdown(app: TestApp) {
    for _ in 0..5 {
        assert_eq!(
            app.chat(&app.owner_key, chat_body("mock-chat"))
                .await
                .status(),
            StatusCode::OK
        );
    }
    let metrics = app.get("/metrics", "").await.text().await.unwrap();
    assert!(metrics.contains("tollgate_usage_queue_depth"), "{metrics}");
    assert!(metrics.contains("tollgate_limits_redis_fallback"));
    let tenant = app.tenant_id.clone();
    let db = app.shutdown_keep_db().await;
    let store = tollgate::store::Store::connect(&db.url).await.unwrap();
    let recs = tollgate::store::usage::recent_records(store.pool(), &tenant, 100)
        .await
        .unwrap();
    assert_eq!(recs.len(), 5, "every record written by shutdown");
    store.close().await;
}

/// The writer hands the database a whole batch as one JSON parameter: every field must come back
/// exactly, NULLs, quotes, backslashes and non-ASCII text included, and the per-minute
/// aggregates must add up.
async fn a_batch_keeps_every_field_of_every_record(app: TestApp) {
    use std::sync::Arc;
    use tollgate::store::usage::write_batch;
    use tollgate_core::usage::UsageRecord;
    let minute = 1_763_812_320_000_i64; // a minute boundary
    let rec = |i: i64, end_user: Option<&str>, key: Option<&str>| UsageRecord {
        ts: minute + i,
        request_id: key.map(|_| Arc::from(format!("req_{i}").as_str())),
        tenant_id: Arc::from("ten_batch"),
        api_key_id: key.map(Arc::from),
        user_id: key.map(|_| Arc::from("usr_1")),
        subscription_id: None,
        end_user: end_user.map(Arc::from),
        model: Arc::from("m\"odel"),
        route: "chat/completions",
        status: if i == 2 { 429 } else { 200 },
        outcome: if i == 2 { "rate_limited" } else { "ok" },
        prompt_tokens: 10 + i as u64,
        completion_tokens: 4_000_000_000 + i as u64,
        latency_ms: 7,
    };
    let batch = vec![
        rec(0, Some("ålice \"the\" \\ admin"), Some("key_a")),
        rec(1, None, None),
        rec(2, Some("ålice \"the\" \\ admin"), Some("key_a")),
    ];
    let store = &app.state.store;
    write_batch(store, &batch).await.unwrap();

    type Row = (
        i64,
        Option<String>,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        String,
        String,
        i64,
        String,
        i64,
        i64,
        i64,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT ts, request_id, tenant_id, api_key_id, user_id, subscription_id, end_user, model,
                route, status, outcome, prompt_tokens, completion_tokens, latency_ms
         FROM usage_records WHERE tenant_id = 'ten_batch' ORDER BY seq",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    // (Tuples this long have no `PartialEq`: compare them in two halves.)
    let got: Vec<_> = rows
        .into_iter()
        .map(|r| {
            (
                (r.0, r.1, r.2, r.3, r.4, r.5, r.6),
                (r.7, r.8, r.9, r.10, r.11, r.12, r.13),
            )
        })
        .collect();
    let want: Vec<_> = batch
        .iter()
        .map(|r| {
            (
                (
                    r.ts,
                    r.request_id.as_deref().map(str::to_string),
                    r.tenant_id.to_string(),
                    r.api_key_id.as_deref().map(str::to_string),
                    r.user_id.as_deref().map(str::to_string),
                    None,
                    r.end_user.as_deref().map(str::to_string),
                ),
                (
                    r.model.to_string(),
                    r.route.to_string(),
                    i64::from(r.status),
                    r.outcome.to_string(),
                    r.prompt_tokens as i64,
                    r.completion_tokens as i64,
                    r.latency_ms as i64,
                ),
            )
        })
        .collect();
    assert_eq!(got, want);

    // Two aggregate rows: (key_a, ålice) with both of its requests, one an error; and the
    // anonymous one. Written again, the upsert adds to them.
    write_batch(store, &batch).await.unwrap();
    let aggs: Vec<(i64, String, String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT minute, api_key_id, end_user, requests, errors, prompt_tokens, completion_tokens
         FROM usage_minute WHERE tenant_id = 'ten_batch' ORDER BY api_key_id",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(
        aggs,
        vec![
            (
                minute,
                String::new(),
                String::new(),
                2,
                0,
                22,
                8_000_000_002
            ),
            (
                minute,
                "key_a".to_string(),
                "ålice \"the\" \\ admin".to_string(),
                4,
                2,
                2 * (10 + 12),
                2 * (8_000_000_002)
            ),
        ]
    );
}

/// Retention: records older than `retention_days` and aggregates older than
/// `aggregate_retention_days` are deleted (in batches, more than one batch here), the rest kept.
async fn old_usage_is_deleted_in_batches_and_recent_usage_kept(app: TestApp) {
    const DAY: i64 = 86_400_000;
    let now = tollgate::util::now_ms();
    let pool = app.state.store.pool();
    // 12 000 records 100 days old, 5 a day old; aggregates 500 and 10 days old.
    let old = now - 100 * DAY;
    for chunk in 0..12 {
        let mut sql = String::from(
            "INSERT INTO usage_records (ts, tenant_id, model, route, status, outcome, \
             prompt_tokens, completion_tokens, latency_ms) VALUES ",
        );
        for i in 0..1000 {
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "({}, '{}', 'm', 'chat/completions', 200, 'ok', 1, 1, 1)",
                old + chunk * 1000 + i,
                app.tenant_id
            ));
        }
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(pool)
            .await
            .unwrap();
    }
    for i in 0..5 {
        sqlx::query(
            "INSERT INTO usage_records (ts, tenant_id, model, route, status, outcome, \
             prompt_tokens, completion_tokens, latency_ms) VALUES ($1, $2, 'm', 'chat/completions', 200, 'ok', 1, 1, 1)",
        )
        .bind(now - DAY + i)
        .bind(app.tenant_id.clone())
        .execute(pool)
        .await
        .unwrap();
    }
    for (minute, model) in [(now - 500 * DAY, "ancient"), (now - 10 * DAY, "recent")] {
        sqlx::query(
            "INSERT INTO usage_minute (tenant_id, minute, model, requests, errors, prompt_tokens, \
             completion_tokens, latency_ms_sum) VALUES ($1, $2, $3, 1, 0, 1, 1, 1)",
        )
        .bind(app.tenant_id.clone())
        .bind(minute)
        .bind(model)
        .execute(pool)
        .await
        .unwrap();
    }
    assert_eq!(app.state.config.usage.retention_days, 90);
    let (records, minutes) = tollgate::usage::retain_once(&app.state, now).await;
    assert_eq!((records, minutes), (12_000, 1));
    let (left,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM usage_records")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(left, 5);
    let kept: Vec<(String,)> = sqlx::query_as("SELECT model FROM usage_minute")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(kept, vec![("recent".to_string(),)]);
    // Nothing left to delete: a second pass deletes nothing.
    assert_eq!(tollgate::usage::retain_once(&app.state, now).await, (0, 0));
}
