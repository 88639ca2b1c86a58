//! Asynchronous image generations (SPEC §4.1): `Prefer: respond-async` → `202` + operation,
//! polled with the subscription id; persisted across restarts, private to their subscription.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::store_tests;
use crate::subs::*;

store_tests!(
    async_image_polled_with_subscription_id_to_succeeded,
    operations_are_private_to_their_subscription_and_tenant,
    upstream_failures_are_reported_on_the_operation,
    cancelling_the_subscription_cancels_its_running_operation,
);

/// Polls an operation with `x-user-id` until it is finished.
async fn poll(app: &TestApp, path: &str, sub_id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let res = get_as_subscription(app, path, sub_id).await;
        assert_eq!(res.status(), StatusCode::OK, "poll {path}");
        let v: Value = res.json().await.unwrap();
        match v["status"].as_str().unwrap() {
            "queued" | "running" => {}
            _ => return v,
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "operation never finished: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_status(app: &TestApp, path: &str, sub_id: &str, status: &str) {
    let ok = eventually(Duration::from_secs(10), || async {
        let v: Value = get_as_subscription(app, path, sub_id)
            .await
            .json()
            .await
            .unwrap_or_default();
        v["status"] == status
    })
    .await;
    assert!(ok, "operation never reached {status}");
}

async fn async_image_polled_with_subscription_id_to_succeeded(app: TestApp) {
    let sub = subscribe(&app, &["fake-image"]).await;
    let signer = hs256(&app, &sub.id).await;
    let prompt = "a lighthouse at dusk";
    let token = signer.mint(&claims(
        &sub.id,
        json!({"bind": {"/model": "fake-image"}, "bind_sha256": {"/prompt": sha256_hex(prompt)}}),
    ));
    let mut body = image_body(prompt);
    body["fake"] = json!({"delay_ms": 200});
    let res = images_async(&app, &token, body).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let location = res.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(res.headers()["preference-applied"], "respond-async");
    let op: Value = res.json().await.unwrap();
    let id = op["id"].as_str().unwrap();
    assert!(id.starts_with("op_"), "{op}");
    assert_eq!(op["object"], "operation");
    assert_eq!(op["status"], "queued");
    assert_eq!(location, format!("/v1/operations/{id}"));

    let done = poll(&app, &location, &sub.id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        done["result"]["data"][0]["b64_json"],
        fake_upstream::TINY_PNG_BASE64
    );
    assert!(done["finished_at"].is_string());
    // The upstream saw the request once, with the upstream's key, not the customer's token.
    let reqs: Vec<_> = app
        .upstream
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/images/generations")
        .collect();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].body["prompt"], prompt);
    assert_eq!(
        reqs[0].header("authorization"),
        Some(format!("Bearer {UPSTREAM_KEY}").as_str())
    );
    // Same operation under the alternative layouts, and with the token itself.
    for prefix in ["/api/v1", "/api/v2"] {
        let res = get_as_subscription(&app, &format!("{prefix}/operations/{id}"), &sub.id).await;
        assert_eq!(res.status(), StatusCode::OK, "{prefix}");
    }
    let res = app.get(&location, &token).await;
    assert_eq!(res.status(), StatusCode::OK);
    // The end user (sub) is recorded.
    let stored =
        tollgate::store::subscriptions::get_operation(app.state.store.pool(), &app.tenant_id, id)
            .await
            .unwrap()
            .unwrap();
    assert_eq!(stored.end_user.as_deref(), Some("end-user-42"));
    assert_eq!(stored.credential_type, "app_jwt");

    // Without the header the call stays synchronous.
    let res = images(&app, &token, image_body(prompt)).await;
    assert_eq!(res.status(), StatusCode::OK);
    let v: Value = res.json().await.unwrap();
    assert!(v["data"].is_array());
}

async fn operations_are_private_to_their_subscription_and_tenant(app: TestApp) {
    let sub = subscribe(&app, &["fake-image"]).await;
    let other_sub = subscribe(&app, &["fake-image"]).await;
    let key = sub_api_key(&app, &sub.id).await;
    let res = images_async(&app, &key, image_body("x")).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let op: Value = res.json().await.unwrap();
    let path = format!("/v1/operations/{}", op["id"].as_str().unwrap());
    poll(&app, &path, &sub.id).await;

    // Another subscription of the same tenant: 404, by id and by its own key.
    let res = get_as_subscription(&app, &path, &other_sub.id).await;
    expect_error(res, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    let other_key = sub_api_key(&app, &other_sub.id).await;
    expect_error(
        app.get(&path, &other_key).await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    )
    .await;
    // Another tenant: 404.
    let (_, foreign_owner) = app.other_tenant("initech").await;
    expect_error(
        app.get(&path, &foreign_owner).await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    )
    .await;
    // The tenant's own members see it.
    assert_eq!(
        app.get(&path, &app.owner_key).await.status(),
        StatusCode::OK
    );
    // No credential at all.
    let res = app.client.get(app.url(&path)).send().await.unwrap();
    expect_error(res, StatusCode::UNAUTHORIZED, "AUTH_MISSING").await;
    // Unknown operation.
    let res = get_as_subscription(&app, "/v1/operations/op_nope", &sub.id).await;
    expect_error(res, StatusCode::NOT_FOUND, "NOT_FOUND").await;

    // A member's own operation is not visible to a subscription id.
    let res = images_async(&app, &app.owner_key, image_body("y")).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let mine: Value = res.json().await.unwrap();
    let mine_path = format!("/v1/operations/{}", mine["id"].as_str().unwrap());
    expect_error(
        get_as_subscription(&app, &mine_path, &sub.id).await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    )
    .await;
    assert_eq!(
        app.get(&mine_path, &app.owner_key).await.status(),
        StatusCode::OK
    );
    // Model access is checked at submission.
    let res = images_async(&app, &key, json!({"model": "gpt-test", "prompt": "x"})).await;
    expect_error(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    let res = images_async(&app, &key, json!({"prompt": "x"})).await;
    expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
}

async fn upstream_failures_are_reported_on_the_operation(app: TestApp) {
    let sub = subscribe(&app, &["fake-image"]).await;
    let key = sub_api_key(&app, &sub.id).await;
    let mut body = image_body("x");
    body["fake"] = json!({"status": 500});
    let op: Value = images_async(&app, &key, body).await.json().await.unwrap();
    let done = poll(
        &app,
        &format!("/v1/operations/{}", op["id"].as_str().unwrap()),
        &sub.id,
    )
    .await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["error"]["code"], "UPSTREAM_ERROR");
    assert!(done.get("result").is_none());
    // A client error from the upstream is passed through.
    let op: Value = images_async(&app, &key, json!({"model": "fake-image", "prompt": 5}))
        .await
        .json()
        .await
        .unwrap();
    let done = poll(
        &app,
        &format!("/v1/operations/{}", op["id"].as_str().unwrap()),
        &sub.id,
    )
    .await;
    assert_eq!(done["status"], "failed");
    assert!(
        done["error"]["message"]
            .as_str()
            .unwrap()
            .contains("prompt"),
        "{done}"
    );
}

async fn cancelling_the_subscription_cancels_its_running_operation(app: TestApp) {
    let sub = subscribe(&app, &["fake-image"]).await;
    let key = sub_api_key(&app, &sub.id).await;
    let mut body = image_body("slow");
    body["fake"] = json!({"delay_ms": 5000});
    let op: Value = images_async(&app, &key, body).await.json().await.unwrap();
    let path = format!("/v1/operations/{}", op["id"].as_str().unwrap());
    wait_status(&app, &path, &sub.id, "running").await;
    // "running" is set when a worker claims it, a moment before its upstream call starts: wait
    // for the call, so that the deletion cuts it rather than prevents it.
    let started = eventually(Duration::from_secs(5), || async {
        app.upstream.started() >= 1
    })
    .await;
    assert!(started, "the upstream call started");
    let res = app
        .delete(&format!("/v1/subscriptions/{}", sub.id), &app.owner_key)
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    // The subscription id no longer authenticates; the owner reads the outcome.
    let ok = eventually(Duration::from_secs(5), || async {
        let v: Value = app.get(&path, &app.owner_key).await.json().await.unwrap();
        v["status"] == "cancelled"
    })
    .await;
    assert!(ok, "the running operation is cancelled");
    let v: Value = app.get(&path, &app.owner_key).await.json().await.unwrap();
    assert_eq!(v["error"]["code"], "SUBSCRIPTION_INACTIVE");
    assert!(app.upstream.wait_cancelled(1, Duration::from_secs(5)).await);
}

// ---------------------------------------------------------------------------------------------
// Scenarios that need their own configuration: one function per store.

macro_rules! per_store {
    ($($name:ident),* $(,)?) => { $(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::Db::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if $crate::helpers::pg_url().is_some() {
                    super::$name($crate::helpers::Db::Postgres).await
                }
            }
        }
    )* };
}

per_store!(
    queued_operations_run_after_a_restart,
    running_operation_is_resumed_after_a_graceful_stop,
    operations_of_a_dead_instance_are_retried_then_failed,
    queued_operations_of_a_cancelled_subscription_are_cancelled,
    finished_operations_are_pruned_after_retention,
);

async fn spawn(db: Db, workers: usize, lease_seconds: u64, share: Option<String>) -> TestApp {
    let mut opts = Opts::new(db).edit(move |c| {
        c.operations.workers = workers;
        c.operations.lease_seconds = lease_seconds;
        c.operations.poll_ms = 100;
    });
    opts.share_db = share;
    TestApp::spawn_with(opts).await.expect("app")
}

async fn submit(app: &TestApp, key: &str, body: Value) -> String {
    let res = images_async(app, key, body).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let op: Value = res.json().await.unwrap();
    format!("/v1/operations/{}", op["id"].as_str().unwrap())
}

async fn queued_operations_run_after_a_restart(db: Db) {
    // This instance only queues.
    let mut a = spawn(db, 0, 30, None).await;
    let sub = subscribe(&a, &["fake-image"]).await;
    let key = sub_api_key(&a, &sub.id).await;
    let p1 = submit(&a, &key, image_body("one")).await;
    let p2 = submit(&a, &key, image_body("two")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let v: Value = get_as_subscription(&a, &p1, &sub.id)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["status"], "queued");
    a.stop().await;

    // A new gateway on the same database runs them.
    let b = spawn(db, 2, 30, Some(a.db_url.clone())).await;
    for p in [&p1, &p2] {
        let done = poll(&b, p, &sub.id).await;
        assert_eq!(done["status"], "succeeded", "{done}");
    }
    b.shutdown().await;
    drop(a);
}

async fn running_operation_is_resumed_after_a_graceful_stop(db: Db) {
    let mut a = spawn(db, 1, 30, None).await;
    let sub = subscribe(&a, &["fake-image"]).await;
    let key = sub_api_key(&a, &sub.id).await;
    let mut body = image_body("slow");
    body["fake"] = json!({"delay_ms": 3000});
    let p = submit(&a, &key, body).await;
    wait_status(&a, &p, &sub.id, "running").await;
    a.stop().await;
    // The stopping instance gave it back.
    let id = p.rsplit('/').next().unwrap().to_string();
    let b = spawn(db, 1, 30, Some(a.db_url.clone())).await;
    let done = poll(&b, &p, &sub.id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let stored =
        tollgate::store::subscriptions::get_operation(b.state.store.pool(), &a.tenant_id, &id)
            .await
            .unwrap()
            .unwrap();
    assert_eq!(
        stored.attempts, 1,
        "a graceful stop does not use up an attempt"
    );
    b.shutdown().await;
    drop(a);
}

async fn operations_of_a_dead_instance_are_retried_then_failed(db: Db) {
    let mut a = spawn(db, 0, 1, None).await;
    let sub = subscribe(&a, &["fake-image"]).await;
    let key = sub_api_key(&a, &sub.id).await;
    let p1 = submit(&a, &key, image_body("retry me")).await;
    let p2 = submit(&a, &key, image_body("give up")).await;
    let pool = a.state.store.pool().clone();
    // A worker of an instance that then died had claimed both; their leases ran out, and the
    // second had already used up its attempts.
    let expired = tollgate::util::now_ms() - 1;
    for (p, attempts) in [(&p1, 1i64), (&p2, 2)] {
        let id = p.rsplit('/').next().unwrap().to_string();
        sqlx::query(
            "UPDATE operations SET status = 'running', worker = 'dead/0', lease_until = $1,
                attempts = $2 WHERE id = $3",
        )
        .bind(expired)
        .bind(attempts)
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    }
    a.stop().await;
    let b = spawn(db, 1, 1, Some(a.db_url.clone())).await;
    let done = poll(&b, &p1, &sub.id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let done = poll(&b, &p2, &sub.id).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "UPSTREAM_ERROR");
    b.shutdown().await;
    drop(a);
}

async fn queued_operations_of_a_cancelled_subscription_are_cancelled(db: Db) {
    let app = spawn(db, 0, 30, None).await;
    let sub = subscribe(&app, &["fake-image"]).await;
    let key = sub_api_key(&app, &sub.id).await;
    let p = submit(&app, &key, image_body("never")).await;
    let res = app
        .delete(&format!("/v1/subscriptions/{}", sub.id), &app.owner_key)
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let v: Value = app.get(&p, &app.owner_key).await.json().await.unwrap();
    assert_eq!(v["status"], "cancelled");
    assert_eq!(v["error"]["code"], "SUBSCRIPTION_INACTIVE");
    app.shutdown().await;
}

async fn finished_operations_are_pruned_after_retention(db: Db) {
    // One second, not zero: with zero the background pruner may remove the operation between
    // its completion and the poll that is meant to see it.
    let mut opts = Opts::new(db).edit(|c| c.operations.retention_seconds = 1);
    opts.share_db = None;
    let app = TestApp::spawn_with(opts).await.expect("app");
    let sub = subscribe(&app, &["fake-image"]).await;
    let key = sub_api_key(&app, &sub.id).await;
    let p = submit(&app, &key, image_body("x")).await;
    poll(&app, &p, &sub.id).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    tollgate::subscriptions::operations::prune(&app.state).await;
    let res = get_as_subscription(&app, &p, &sub.id).await;
    expect_error(res, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    app.shutdown().await;
}
