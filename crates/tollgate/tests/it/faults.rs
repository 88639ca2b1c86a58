//! Faults: concurrent writers on SQLite, a store connection killed under a mutation, streams
//! still open when the shutdown grace ends.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::subs::*;

/// Fifty-two mutations of thirteen kinds at once on one SQLite file: every one succeeds (writers take
/// turns holding no connection while they wait, and no request needs a second connection while
/// it holds the write lock). Four clients creating keys at once used to stall for the busy
/// timeout and get `500 database is locked` or `503`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_mutations_on_sqlite_all_succeed() {
    let app = std::sync::Arc::new(TestApp::spawn(Db::Sqlite).await);
    let product = create_product(&app, &app.owner_key, "concurrency", &["gpt-test"]).await;
    let product_id = product["id"].as_str().unwrap().to_string();
    let plan = create_plan(&app, &app.owner_key, &product_id, "p").await;
    let plan_id = plan["id"].as_str().unwrap().to_string();
    let victim = app
        .create_key(&app.owner_key, json!({"name": "victim"}))
        .await;
    let victim_id = victim["id"].as_str().unwrap().to_string();
    let (member_id, _) = app.add_user("member@example.com", &["viewer"]).await;
    let sub = subscribe(&app, &["gpt-test"]).await;
    let audited = |app: std::sync::Arc<TestApp>| async move {
        let audit: Value = app
            .get("/v1/audit-events?limit=500", &app.owner_key)
            .await
            .json()
            .await
            .unwrap();
        audit["data"].as_array().unwrap().len()
    };
    let before = audited(app.clone()).await;
    let mut tasks = Vec::new();
    for i in 0..52 {
        let app = app.clone();
        let plan_id = plan_id.clone();
        let product_id = product_id.clone();
        let victim_id = victim_id.clone();
        let member_id = member_id.clone();
        let sub_id = sub.id.clone();
        tasks.push(tokio::spawn(async move {
            let key = &app.owner_key;
            let (what, res) = match i % 13 {
                0 => (
                    "key",
                    app.post("/v1/api-keys", key, json!({"name": format!("k{i}")}))
                        .await,
                ),
                1 => (
                    "user",
                    app.post(
                        "/v1/users",
                        key,
                        json!({"email": format!("u{i}@example.com"), "roles": ["viewer"]}),
                    )
                    .await,
                ),
                2 => (
                    "role",
                    app.post(
                        "/v1/roles",
                        key,
                        json!({"name": format!("role{i}"), "permissions": ["models:read"]}),
                    )
                    .await,
                ),
                3 => (
                    "product",
                    app.post(
                        "/v1/products",
                        key,
                        json!({"name": format!("prod{i}"), "models": ["gpt-test"]}),
                    )
                    .await,
                ),
                4 => (
                    "plan",
                    app.post(
                        "/v1/plans",
                        key,
                        json!({"product_id": product_id, "name": format!("plan{i}")}),
                    )
                    .await,
                ),
                5 => (
                    "subscription",
                    app.post("/v1/subscriptions", key, json!({"plan_id": plan_id}))
                        .await,
                ),
                6 => (
                    "key patch",
                    app.patch(
                        &format!("/v1/api-keys/{victim_id}"),
                        key,
                        json!({"name": format!("victim {i}")}),
                    )
                    .await,
                ),
                7 => (
                    "key rotate",
                    app.post(
                        &format!("/v1/api-keys/{victim_id}/rotate"),
                        key,
                        json!({"grace_period_seconds": 60}),
                    )
                    .await,
                ),
                8 => (
                    "oauth client",
                    app.post(
                        "/v1/oauth-clients",
                        key,
                        json!({"name": format!("c{i}"), "redirect_uris": ["http://127.0.0.1/cb"]}),
                    )
                    .await,
                ),
                9 => (
                    "member roles",
                    app.put(
                        &format!("/v1/users/{member_id}/roles"),
                        key,
                        json!({"roles": if i % 2 == 0 { ["developer"] } else { ["viewer"] }}),
                    )
                    .await,
                ),
                10 => (
                    "subscription credential",
                    app.post(
                        &format!("/v1/subscriptions/{sub_id}/credentials"),
                        key,
                        json!({"type": "jwt_hs256"}),
                    )
                    .await,
                ),
                11 => (
                    "subscription patch",
                    app.patch(
                        &format!("/v1/subscriptions/{sub_id}"),
                        key,
                        // A value no other task sets: every patch changes it, so each is audited.
                        json!({"max_token_lifetime_seconds": 100 + i}),
                    )
                    .await,
                ),
                _ => ("key + revoke", {
                    let k = app.create_key(key, json!({"name": format!("r{i}")})).await;
                    app.delete(&format!("/v1/api-keys/{}", k["id"].as_str().unwrap()), key)
                        .await
                }),
            };
            let status = res.status();
            let body = res.text().await.unwrap_or_default();
            (what, status, body)
        }));
    }
    let mut failed = Vec::new();
    for t in tasks {
        let (what, status, body) = t.await.unwrap();
        if !status.is_success() {
            failed.push(format!("{what}: {status} {body}"));
        }
    }
    assert!(failed.is_empty(), "{} failed: {failed:#?}", failed.len());
    // Each of them is in the audit log (written in the same transaction): one event per
    // mutation, two for the four "key + revoke" tasks.
    assert_eq!(audited(app.clone()).await - before, 52 + 4);
}

/// A PostgreSQL connection terminated under a mutation (as a database restart does: "terminating
/// connection due to administrator command") is `503 UNAVAILABLE` with `Retry-After`, not a 500;
/// the next request gets a fresh connection and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_connection_killed_under_a_mutation_is_503() {
    let Some(app) = TestApp::try_spawn(Db::Postgres).await else {
        return;
    };
    let key = app
        .create_key(&app.owner_key, json!({"name": "locked"}))
        .await;
    let id = key["id"].as_str().unwrap().to_string();
    // Hold the key's row, so the gateway's UPDATE waits on it inside its transaction.
    let mut holder = sqlx::PgConnection::connect_with_url(&app.db_url).await;
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    let (holder_pid,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
        .fetch_one(&mut holder)
        .await
        .unwrap();
    sqlx::query("SELECT id FROM api_keys WHERE id = $1 FOR UPDATE")
        .bind(&id)
        .execute(&mut holder)
        .await
        .unwrap();
    let patch = {
        let app_url = app.url(&format!("/v1/api-keys/{id}"));
        let client = app.client.clone();
        let owner = app.owner_key.clone();
        tokio::spawn(async move {
            client
                .patch(app_url)
                .bearer_auth(owner)
                .json(&json!({"name": "renamed"}))
                .send()
                .await
                .unwrap()
        })
    };
    // The gateway's backend waiting on the lock, terminated.
    let killed = eventually(Duration::from_secs(10), || {
        let url = app.db_url.clone();
        async move {
            let mut c = sqlx::PgConnection::connect_with_url(&url).await;
            let row: Option<(bool,)> = sqlx::query_as(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE $1 = ANY(pg_blocking_pids(pid)) LIMIT 1",
            )
            .bind(holder_pid)
            .fetch_optional(&mut c)
            .await
            .unwrap();
            row.is_some_and(|r| r.0)
        }
    })
    .await;
    assert!(
        killed,
        "the gateway's waiting backend was found and terminated"
    );
    let res = patch.await.unwrap();
    assert_eq!(header(&res, "retry-after").as_deref(), Some("1"));
    expect_error(res, StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE").await;
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    // Nothing was changed, and the next attempt succeeds on a fresh connection.
    let res = app
        .patch(
            &format!("/v1/api-keys/{id}"),
            &app.owner_key,
            json!({"name": "renamed"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
}

trait ConnectWithUrl {
    async fn connect_with_url(url: &str) -> Self;
}

impl ConnectWithUrl for sqlx::PgConnection {
    async fn connect_with_url(url: &str) -> Self {
        use sqlx::Connection;
        sqlx::PgConnection::connect(url).await.unwrap()
    }
}

/// Streams still open when `shutdown_grace_seconds` ends are cut with a final SSE error event
/// (`UNAVAILABLE`), and every one gets its usage record (outcome `shutdown`) before the usage
/// writer's final flush. They used to be dropped at exit, unmetered (6 of 6 lost).
async fn streams_cut_at_the_end_of_the_grace_are_metered(db: Db) {
    let Some(app) = TestApp::spawn_with(Opts::new(db).edit(|c| c.shutdown_grace_seconds = 1)).await
    else {
        return;
    };
    let tenant = app.tenant_id.clone();
    let mut streams = Vec::new();
    for _ in 0..6 {
        let mut body = chat_body("gpt-test");
        body["stream"] = json!(true);
        // 200 chunks, 50 ms apart: ten seconds, far past the grace.
        body["fake"] = json!({"chunks": 200, "chunk_delay_ms": 50});
        let res = app.chat(&app.owner_key, body).await;
        assert_eq!(res.status(), StatusCode::OK);
        let mut bytes = res.bytes_stream();
        // The stream is running.
        let first = bytes.next().await.unwrap().unwrap();
        assert!(!first.is_empty());
        streams.push(tokio::spawn(async move {
            let mut text = String::from_utf8_lossy(&first).to_string();
            while let Some(Ok(b)) = bytes.next().await {
                text.push_str(&String::from_utf8_lossy(&b));
            }
            text
        }));
    }
    let started = std::time::Instant::now();
    let db = app.shutdown_keep_db().await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the shutdown took {:?}",
        started.elapsed()
    );
    for s in streams {
        let text = s.await.unwrap();
        assert!(text.contains("event: error"), "{text}");
        assert!(text.contains("UNAVAILABLE"), "{text}");
    }
    let store = tollgate::store::Store::connect(&db.url).await.unwrap();
    let records = tollgate::store::usage::recent_records(store.pool(), &tenant, 100)
        .await
        .unwrap();
    let shutdown = records.iter().filter(|r| r.3 == "shutdown").count();
    assert_eq!(shutdown, 6, "{records:?}");
    // Each counted what it forwarded.
    assert!(
        records.iter().all(|r| r.3 != "shutdown" || r.5 > 0),
        "{records:?}"
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_cut_at_the_end_of_the_grace_are_metered_sqlite() {
    streams_cut_at_the_end_of_the_grace_are_metered(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_cut_at_the_end_of_the_grace_are_metered_postgres() {
    if pg_url().is_some() {
        streams_cut_at_the_end_of_the_grace_are_metered(Db::Postgres).await;
    }
}
