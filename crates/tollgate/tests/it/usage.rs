//! Usage metering (SPEC §7, §4.2): one record per inference request, batched writes, per-minute
//! aggregates, `GET /v1/usage` with `group_by` and `granularity`, end-user attribution (§2.6).

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::store_tests;

store_tests!(
    usage_grouped_by_end_user,
    developers_see_only_their_own_usage,
    usage_is_flushed_on_shutdown,
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
