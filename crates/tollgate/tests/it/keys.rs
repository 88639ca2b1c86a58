//! API keys (SPEC §2.1): format, storage, expiry, scopes, revocation (also in flight), rotation,
//! last use, own vs any, and propagation to other instances.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::*;
use crate::store_tests;

store_tests!(
    created_key_is_shown_once_and_works,
    only_the_hash_is_stored,
    checksum_is_checked_before_any_store_access,
    unknown_and_malformed_keys_are_invalid,
    expired_key_is_rejected,
    scopes_only_narrow,
    role_changes_apply_on_the_next_request,
    revocation_is_immediate_and_idempotent,
    revocation_cuts_a_stream_in_flight,
    revocation_cancels_a_pending_upstream_call,
    rotation_with_and_without_grace,
    last_used_is_recorded_in_batches,
    own_keys_versus_any_key,
    another_tenants_key_is_not_found,
    revocation_reaches_another_instance,
    patch_updates_settings_and_validates,
);

async fn created_key_is_shown_once_and_works(app: TestApp) {
    let created = app
        .create_key(&app.owner_key, json!({"name": "production-integration"}))
        .await;
    let key = created["key"].as_str().unwrap();
    assert!(key.starts_with("tgk_") && key.len() == 4 + 38, "{key}");
    assert_eq!(created["hint"], &key[..10]);
    assert_eq!(created["name"], "production-integration");
    assert_eq!(created["user_id"], app.owner_id.as_str());
    let id = created["id"].as_str().unwrap();

    // List and get never contain the key.
    let list: Value = app
        .get("/v1/api-keys", &app.owner_key)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k.get("key").is_none())
    );
    assert!(!list.to_string().contains(key));
    let one: Value = app
        .get(&format!("/v1/api-keys/{id}"), &app.owner_key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["id"], id);
    assert!(one.get("key").is_none());

    // It works, both as Bearer and as X-API-Key.
    let res = app.chat(key, chat_body("mock-chat")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = app
        .client
        .get(app.url("/v1/models"))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

async fn only_the_hash_is_stored(app: TestApp) {
    let created = app
        .create_key(&app.owner_key, json!({"name": "hashed"}))
        .await;
    let key = created["key"].as_str().unwrap();
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT id, key_hash, hint FROM api_keys")
            .fetch_all(app.state.store.pool())
            .await
            .unwrap();
    let expected = hex::encode(Sha256::digest(key.as_bytes()));
    let row = rows
        .iter()
        .find(|r| r.0 == created["id"].as_str().unwrap())
        .unwrap();
    assert_eq!(row.1, expected);
    assert_eq!(row.2, &key[..10]);
    // No column of any row of any table holds the plaintext: dump the keys table as text.
    let dump: Vec<(String,)> = sqlx::query_as(
        "SELECT id || '|' || key_hash || '|' || hint || '|' || name || '|' || tenant_id FROM api_keys",
    )
    .fetch_all(app.state.store.pool())
    .await
    .unwrap();
    assert!(dump.iter().all(|r| !r.0.contains(&key[4..])));
    // Nor does the audit log.
    let audit: Vec<(String,)> = sqlx::query_as("SELECT details FROM audit_events")
        .fetch_all(app.state.store.pool())
        .await
        .unwrap();
    assert!(audit.iter().all(|r| !r.0.contains(&key[4..])));
}

async fn checksum_is_checked_before_any_store_access(app: TestApp) {
    let created = app
        .create_key(&app.owner_key, json!({"name": "typo"}))
        .await;
    let key = created["key"].as_str().unwrap().to_string();
    // A single-character typo and a valid-looking unknown key, with the store closed:
    // the typo is rejected without I/O (401), the unknown key needs the store (503).
    let mut typo = key.clone().into_bytes();
    typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    let unknown = tollgate_core::apikey::generate("tgk").plaintext;
    app.state.store.close().await;
    let res = app.chat(&typo, chat_body("mock-chat")).await;
    let body = expect_error(res, StatusCode::UNAUTHORIZED, "AUTH_INVALID").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Malformed")
    );
    let res = app.chat(&unknown, chat_body("mock-chat")).await;
    expect_error(res, StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE").await;
}

async fn unknown_and_malformed_keys_are_invalid(app: TestApp) {
    let unknown = tollgate_core::apikey::generate("tgk").plaintext;
    let res = app.chat(&unknown, chat_body("mock-chat")).await;
    let challenge = res.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.starts_with("Bearer realm=\"tollgate\", error=\"invalid_token\""),
        "{challenge}"
    );
    expect_error(res, StatusCode::UNAUTHORIZED, "AUTH_INVALID").await;
    for bad in [
        "tgk_short",
        "tgk_",
        "sgk_0123456789abcdefghijklmnopqrstuvABCDEF",
        "not-a-key",
    ] {
        let res = app
            .client
            .get(app.url("/v1/models"))
            .header("x-api-key", bad)
            .send()
            .await
            .unwrap();
        expect_error(res, StatusCode::UNAUTHORIZED, "AUTH_INVALID").await;
    }
}

async fn expired_key_is_rejected(app: TestApp) {
    let soon = tollgate::util::rfc3339(tollgate::util::now_ms() + 1200);
    let created = app
        .create_key(
            &app.owner_key,
            json!({"name": "short-lived", "expires_at": soon}),
        )
        .await;
    let key = created["key"].as_str().unwrap();
    assert_eq!(
        app.chat(key, chat_body("mock-chat")).await.status(),
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let res = app.chat(key, chat_body("mock-chat")).await;
    expect_error(res, StatusCode::UNAUTHORIZED, "AUTH_TOKEN_EXPIRED").await;
    // Expiry in the past or malformed is refused at creation.
    let res = app
        .post(
            "/v1/api-keys",
            &app.owner_key,
            json!({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}),
        )
        .await;
    let body = expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
    assert_eq!(body["error"]["param"], "expires_at");
    let res = app
        .post(
            "/v1/api-keys",
            &app.owner_key,
            json!({"name": "x", "expires_at": "tomorrow"}),
        )
        .await;
    expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
}

async fn scopes_only_narrow(app: TestApp) {
    let created = app
        .create_key(
            &app.owner_key,
            json!({"name": "read-only", "scopes": ["models:read"]}),
        )
        .await;
    let key = created["key"].as_str().unwrap();
    assert_eq!(app.get("/v1/models", key).await.status(), StatusCode::OK);
    let res = app.chat(key, chat_body("mock-chat")).await;
    let challenge = res.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    expect_error(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    let me: Value = app.get("/v1/me", key).await.json().await.unwrap();
    assert_eq!(me["permissions"], json!(["models:read"]));

    // A developer cannot mint a key with a scope the developer lacks.
    let (_, dev_key) = app.add_user("dev@example.com", &["developer"]).await;
    let res = app
        .post(
            "/v1/api-keys",
            &dev_key,
            json!({"name": "x", "scopes": ["keys:admin"]}),
        )
        .await;
    let body = expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
    assert_eq!(body["error"]["param"], "scopes");
    let res = app
        .post(
            "/v1/api-keys",
            &dev_key,
            json!({"name": "x", "scopes": ["no:such"]}),
        )
        .await;
    expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
}

async fn role_changes_apply_on_the_next_request(app: TestApp) {
    let (user_id, key) = app.add_user("dev@example.com", &["developer"]).await;
    assert_eq!(
        app.chat(&key, chat_body("mock-chat")).await.status(),
        StatusCode::OK
    );
    let res = app
        .put(
            &format!("/v1/users/{user_id}/roles"),
            &app.owner_key,
            json!({"roles": ["viewer"]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    expect_error(
        app.chat(&key, chat_body("mock-chat")).await,
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
    )
    .await;
    assert_eq!(app.get("/v1/models", &key).await.status(), StatusCode::OK);
    let res = app
        .put(
            &format!("/v1/users/{user_id}/roles"),
            &app.owner_key,
            json!({"roles": ["developer"]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        app.chat(&key, chat_body("mock-chat")).await.status(),
        StatusCode::OK
    );
}

async fn revocation_is_immediate_and_idempotent(app: TestApp) {
    let created = app
        .create_key(&app.owner_key, json!({"name": "to-revoke"}))
        .await;
    let (id, key) = (
        created["id"].as_str().unwrap(),
        created["key"].as_str().unwrap(),
    );
    assert_eq!(
        app.chat(key, chat_body("mock-chat")).await.status(),
        StatusCode::OK
    );
    let res = app
        .delete(&format!("/v1/api-keys/{id}"), &app.owner_key)
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let first: Value = res.json().await.unwrap();
    assert!(first["revoked_at"].is_string());
    assert!(first.get("key").is_none());
    expect_error(
        app.chat(key, chat_body("mock-chat")).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_REVOKED",
    )
    .await;
    // Idempotent: same revoked_at.
    let again: Value = app
        .delete(&format!("/v1/api-keys/{id}"), &app.owner_key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["revoked_at"], first["revoked_at"]);
    // One audit event for the revocation.
    let n: (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM audit_events WHERE action = 'api_key.revoked' AND target_id = $1",
    )
    .bind(id.to_string())
    .fetch_one(app.state.store.pool())
    .await
    .unwrap();
    assert_eq!(n.0, 1);
}

async fn revocation_cuts_a_stream_in_flight(app: TestApp) {
    let created = app
        .create_key(&app.owner_key, json!({"name": "streamer"}))
        .await;
    let (id, key) = (
        created["id"].as_str().unwrap().to_string(),
        created["key"].as_str().unwrap().to_string(),
    );
    let mut body = chat_body("fake-model");
    body["stream"] = json!(true);
    body["fake"] = json!({"chunks": 200, "chunk_delay_ms": 50});
    let mut res = app.chat(&key, body).await;
    assert_eq!(res.status(), StatusCode::OK);
    let first = res.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));
    let started = std::time::Instant::now();
    assert_eq!(
        app.delete(&format!("/v1/api-keys/{id}"), &app.owner_key)
            .await
            .status(),
        StatusCode::OK
    );
    let mut rest = String::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(5), res.chunk())
        .await
        .unwrap()
        .unwrap()
    {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(started.elapsed() < Duration::from_secs(2), "cut promptly");
    assert!(rest.contains("event: error"), "{rest}");
    assert!(rest.contains("AUTH_REVOKED"), "{rest}");
    assert!(!rest.contains("[DONE]"));
    // The upstream stream was dropped, not left running.
    assert!(app.upstream.wait_cancelled(1, Duration::from_secs(3)).await);
}

async fn revocation_cancels_a_pending_upstream_call(app: TestApp) {
    let created = app
        .create_key(&app.owner_key, json!({"name": "slow"}))
        .await;
    let (id, key) = (
        created["id"].as_str().unwrap().to_string(),
        created["key"].as_str().unwrap().to_string(),
    );
    let mut body = chat_body("fake-model");
    body["fake"] = json!({"delay_ms": 4000});
    let pending = {
        let (client, url, key) = (
            app.client.clone(),
            app.url("/v1/chat/completions"),
            key.clone(),
        );
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap()
        })
    };
    assert!(
        eventually(Duration::from_secs(3), || async {
            app.upstream.started() >= 1
        })
        .await
    );
    let started = std::time::Instant::now();
    assert_eq!(
        app.delete(&format!("/v1/api-keys/{id}"), &app.owner_key)
            .await
            .status(),
        StatusCode::OK
    );
    let res = pending.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    expect_error(res, StatusCode::UNAUTHORIZED, "AUTH_REVOKED").await;
    assert!(app.upstream.wait_cancelled(1, Duration::from_secs(3)).await);
}

async fn rotation_with_and_without_grace(app: TestApp) {
    let created = app
        .create_key(&app.owner_key, json!({"name": "rotating"}))
        .await;
    let (id, old) = (
        created["id"].as_str().unwrap(),
        created["key"].as_str().unwrap(),
    );
    // With a grace period both secrets work.
    let res = app
        .post(
            &format!("/v1/api-keys/{id}/rotate"),
            &app.owner_key,
            json!({"grace_period_seconds": 60}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let rotated: Value = res.json().await.unwrap();
    assert_eq!(rotated["id"], id);
    assert_eq!(rotated["name"], "rotating");
    let new = rotated["key"].as_str().unwrap();
    assert_ne!(new, old);
    assert_eq!(rotated["hint"], &new[..10]);
    assert_eq!(
        app.chat(new, chat_body("mock-chat")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.chat(old, chat_body("mock-chat")).await.status(),
        StatusCode::OK
    );
    // Without one (default 0), the previous secret stops at once.
    let res = app
        .req(
            reqwest::Method::POST,
            &format!("/v1/api-keys/{id}/rotate"),
            &app.owner_key,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let newest = res.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    expect_error(
        app.chat(new, chat_body("mock-chat")).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_REVOKED",
    )
    .await;
    assert_eq!(
        app.chat(&newest, chat_body("mock-chat")).await.status(),
        StatusCode::OK
    );
    // The first secret was two rotations ago: gone.
    expect_error(
        app.chat(old, chat_body("mock-chat")).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_INVALID",
    )
    .await;
    let res = app
        .post(
            &format!("/v1/api-keys/{id}/rotate"),
            &app.owner_key,
            json!({"grace_period_seconds": -1}),
        )
        .await;
    expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
}

async fn last_used_is_recorded_in_batches(app: TestApp) {
    let created = app
        .create_key(&app.owner_key, json!({"name": "used"}))
        .await;
    let (id, key) = (
        created["id"].as_str().unwrap(),
        created["key"].as_str().unwrap(),
    );
    assert!(created["last_used_at"].is_null());
    assert_eq!(
        app.chat(key, chat_body("mock-chat")).await.status(),
        StatusCode::OK
    );
    let path = format!("/v1/api-keys/{id}");
    assert!(
        eventually(Duration::from_secs(3), || async {
            app.get(&path, &app.owner_key)
                .await
                .json::<Value>()
                .await
                .unwrap()["last_used_at"]
                .is_string()
        })
        .await
    );
}

async fn own_keys_versus_any_key(app: TestApp) {
    let (dev_id, dev_key) = app.add_user("dev@example.com", &["developer"]).await;
    // A developer lists only their own keys and cannot see the owner's.
    let list: Value = app
        .get("/v1/api-keys", &dev_key)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["user_id"] == dev_id.as_str())
    );
    let owner_keys: Value = app
        .get("/v1/api-keys", &app.owner_key)
        .await
        .json()
        .await
        .unwrap();
    let owner_key_id = owner_keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["user_id"] == app.owner_id.as_str())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    expect_error(
        app.get(&format!("/v1/api-keys/{owner_key_id}"), &dev_key)
            .await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    )
    .await;
    expect_error(
        app.delete(&format!("/v1/api-keys/{owner_key_id}"), &dev_key)
            .await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    )
    .await;
    // Creating a key for someone else needs keys:admin.
    let res = app
        .post(
            "/v1/api-keys",
            &dev_key,
            json!({"name": "x", "user_id": app.owner_id}),
        )
        .await;
    expect_error(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    // The developer manages their own key.
    let mine = app.create_key(&dev_key, json!({"name": "mine"})).await;
    assert_eq!(mine["user_id"], dev_id.as_str());
    let res = app
        .delete(
            &format!("/v1/api-keys/{}", mine["id"].as_str().unwrap()),
            &dev_key,
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    // A viewer has neither keys:write nor keys:admin.
    let (_, viewer_key) = app.add_user("viewer@example.com", &["viewer"]).await;
    expect_error(
        app.get("/v1/api-keys", &viewer_key).await,
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
    )
    .await;
    // An admin creates a key for a member who is not in the tenant: 404.
    let res = app
        .post(
            "/v1/api-keys",
            &app.owner_key,
            json!({"name": "x", "user_id": "usr_nobody"}),
        )
        .await;
    expect_error(res, StatusCode::NOT_FOUND, "NOT_FOUND").await;
}

async fn another_tenants_key_is_not_found(app: TestApp) {
    let (_, other_owner) = app.other_tenant("globex").await;
    let mine = app
        .create_key(&app.owner_key, json!({"name": "acme-key"}))
        .await;
    let id = mine["id"].as_str().unwrap();
    for res in [
        app.get(&format!("/v1/api-keys/{id}"), &other_owner).await,
        app.delete(&format!("/v1/api-keys/{id}"), &other_owner)
            .await,
        app.patch(
            &format!("/v1/api-keys/{id}"),
            &other_owner,
            json!({"name": "stolen"}),
        )
        .await,
        app.post(
            &format!("/v1/api-keys/{id}/rotate"),
            &other_owner,
            json!({}),
        )
        .await,
    ] {
        expect_error(res, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    }
    let list: Value = app
        .get("/v1/api-keys", &other_owner)
        .await
        .json()
        .await
        .unwrap();
    assert!(!list.to_string().contains(id));
    // The key still works for its own tenant.
    assert_eq!(
        app.chat(mine["key"].as_str().unwrap(), chat_body("mock-chat"))
            .await
            .status(),
        StatusCode::OK
    );
}

async fn revocation_reaches_another_instance(app: TestApp) {
    let b = app.second_instance().await;
    let created = app
        .create_key(&app.owner_key, json!({"name": "shared"}))
        .await;
    let (id, key) = (
        created["id"].as_str().unwrap(),
        created["key"].as_str().unwrap(),
    );
    // Warm instance B's cache.
    assert_eq!(
        b.chat(key, chat_body("mock-chat")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.delete(&format!("/v1/api-keys/{id}"), &app.owner_key)
            .await
            .status(),
        StatusCode::OK
    );
    // Instances poll the invalidation log every 100 ms, so B rejects the key well within the
    // spec's 1 s on an idle machine; the bound here is looser so a loaded CI machine does not
    // turn a scheduling delay into a failure. The measured delay is printed.
    let started = std::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(3), || async {
            b.chat(key, chat_body("mock-chat")).await.status() == StatusCode::UNAUTHORIZED
        })
        .await,
        "instance B must reject the revoked key"
    );
    eprintln!(
        "revocation reached instance B after {:?}",
        started.elapsed()
    );
}

async fn patch_updates_settings_and_validates(app: TestApp) {
    let created = app
        .create_key(
            &app.owner_key,
            json!({"name": "patchable", "scopes": ["models:read"]}),
        )
        .await;
    let (id, key) = (
        created["id"].as_str().unwrap(),
        created["key"].as_str().unwrap(),
    );
    let path = format!("/v1/api-keys/{id}");
    expect_error(
        app.chat(key, chat_body("mock-chat")).await,
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
    )
    .await;
    let res = app
        .patch(
            &path,
            &app.owner_key,
            json!({"name": "renamed", "scopes": null, "rate_limit": {"requests_per_minute": 60}}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let k: Value = res.json().await.unwrap();
    assert_eq!(k["name"], "renamed");
    assert!(k["scopes"].is_null());
    assert_eq!(k["rate_limit"]["requests_per_minute"], 60);
    // Widening scopes takes effect on the next request.
    assert_eq!(
        app.chat(key, chat_body("mock-chat")).await.status(),
        StatusCode::OK
    );
    let res = app.patch(&path, &app.owner_key, json!({"name": ""})).await;
    expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
    let res = app
        .patch(&path, &app.owner_key, json!({"unknown": 1}))
        .await;
    expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
    let res = app
        .patch(
            &path,
            &app.owner_key,
            json!({"rate_limit": {"requests_per_minute": 0}}),
        )
        .await;
    expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
    let res = app
        .patch(&path, &app.owner_key, json!({"expires_at": 5}))
        .await;
    expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
}
