//! Invalidations pushed between instances: PostgreSQL `LISTEN/NOTIFY` and Redis pub/sub. Every
//! instance here polls the log only once a minute, so an instance that refuses a revoked
//! credential within seconds heard of it through the push; a listener that lost its connection
//! reads the log when it is back, so nothing committed meanwhile is lost.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;
use crate::subs::*;

/// Far longer than any wait below: what arrives in time was pushed.
const SLOW_POLL_MS: u64 = 60_000;

async fn revoked_on_a_refused_by_b(a: &TestApp, b: &TestApp) {
    let created = a.create_key(&a.owner_key, json!({"name": "pushed"})).await;
    let (id, key) = (
        created["id"].as_str().unwrap(),
        created["key"].as_str().unwrap(),
    );
    assert_eq!(
        b.chat(key, chat_body("mock-chat")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        a.delete(&format!("/v1/api-keys/{id}"), &a.owner_key)
            .await
            .status(),
        StatusCode::OK
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.chat(key, chat_body("mock-chat")).await.status() == StatusCode::UNAUTHORIZED
        })
        .await,
        "instance B must refuse the revoked key without waiting for its poll"
    );
}

async fn suspended_on_a_refused_by_b(a: &TestApp, b: &TestApp) {
    let sub = subscribe(a, &["mock-chat"]).await;
    let key = sub_api_key(a, &sub.id).await;
    assert_eq!(
        b.chat(&key, chat_body("mock-chat")).await.status(),
        StatusCode::OK
    );
    let res = a
        .patch(
            &format!("/v1/subscriptions/{}", sub.id),
            &a.owner_key,
            json!({"status": "suspended"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.chat(&key, chat_body("mock-chat")).await.status() == StatusCode::FORBIDDEN
        })
        .await,
        "instance B must refuse the suspended subscription's key"
    );
}

async fn slow_pair(db: Db, redis: Option<(String, String)>) -> Option<(TestApp, TestApp)> {
    let r1 = redis.clone();
    let a = TestApp::spawn_with(Opts::new(db).edit(move |c| {
        c.invalidation_poll_ms = SLOW_POLL_MS;
        if let Some((url, prefix)) = &r1 {
            use_redis(c, url, prefix);
        }
    }))
    .await?;
    let b = a
        .second_instance_with(move |c| {
            c.invalidation_poll_ms = SLOW_POLL_MS;
            if let Some((url, prefix)) = &redis {
                use_redis(c, url, prefix);
            }
        })
        .await;
    // Both listeners are up before anything is revoked.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Some((a, b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_notify_carries_revocations_and_suspensions() {
    let Some((a, b)) = slow_pair(Db::Postgres, None).await else {
        return;
    };
    revoked_on_a_refused_by_b(&a, &b).await;
    suspended_on_a_refused_by_b(&a, &b).await;
}

/// B's `LISTEN` connection is terminated and a key revoked while it is away: the notification is
/// lost, but B reads the log when it has listened again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_listener_that_reconnects_misses_nothing() {
    let Some((a, b)) = slow_pair(Db::Postgres, None).await else {
        return;
    };
    let created = a
        .create_key(&a.owner_key, json!({"name": "while away"}))
        .await;
    let (id, key) = (
        created["id"].as_str().unwrap(),
        created["key"].as_str().unwrap(),
    );
    assert_eq!(
        b.chat(key, chat_body("mock-chat")).await.status(),
        StatusCode::OK
    );
    // Every listening backend of this database (other tests' instances just reconnect too).
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&a.db_url)
        .await
        .unwrap();
    let killed: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert!(killed.len() >= 2, "both instances were listening");
    assert_eq!(
        a.delete(&format!("/v1/api-keys/{id}"), &a.owner_key)
            .await
            .status(),
        StatusCode::OK
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.chat(key, chat_body("mock-chat")).await.status() == StatusCode::UNAUTHORIZED
        })
        .await,
        "B read the log when it listened again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_pubsub_carries_revocations_between_sqlite_instances() {
    let Some(url) = redis_url() else {
        return;
    };
    let Some((a, b)) = slow_pair(Db::Sqlite, Some((url, redis_prefix()))).await else {
        return;
    };
    revoked_on_a_refused_by_b(&a, &b).await;
    suspended_on_a_refused_by_b(&a, &b).await;
}

/// Redis is down when the key is revoked (the announcement is lost) and comes back: B's
/// subscriber reconnects and reads the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_subscriber_that_reconnects_misses_nothing() {
    let Some(mut redis) = OwnRedis::start().await else {
        return;
    };
    let Some((a, b)) = slow_pair(Db::Sqlite, Some((redis.url(), "tgtest:push:".into()))).await
    else {
        return;
    };
    let created = a
        .create_key(&a.owner_key, json!({"name": "while away"}))
        .await;
    let (id, key) = (
        created["id"].as_str().unwrap(),
        created["key"].as_str().unwrap(),
    );
    assert_eq!(
        b.chat(key, chat_body("mock-chat")).await.status(),
        StatusCode::OK
    );
    redis.stop();
    assert_eq!(
        a.delete(&format!("/v1/api-keys/{id}"), &a.owner_key)
            .await
            .status(),
        StatusCode::OK
    );
    assert!(redis.restart().await, "redis-server restarted");
    assert!(
        eventually(Duration::from_secs(8), || async {
            b.chat(key, chat_body("mock-chat")).await.status() == StatusCode::UNAUTHORIZED
        })
        .await,
        "B read the log when its subscriber was back"
    );
}
