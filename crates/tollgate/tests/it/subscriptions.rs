//! Products → plans → subscriptions → credentials (SPEC §4.2), subscription-bound API keys,
//! subscription ids (`x-user-id`, §2.5), cancellation and suspension (in flight too).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::store_tests;
use crate::subs::*;

store_tests!(
    catalogue_and_subscription_shapes,
    validation_and_tenant_isolation,
    subscription_api_keys_carry_the_plan_models,
    subscription_id_reads_only_its_own_things,
    cancelling_stops_every_credential_at_once,
    suspension_is_reversible,
    a_reactivated_subscription_is_not_cut_by_its_old_suspension,
    cancellation_cuts_streams_in_flight,
    cancellation_reaches_other_instances,
);

async fn catalogue_and_subscription_shapes(app: TestApp) {
    let product = create_product(&app, &app.owner_key, "Images", &["fake-image", "gpt-test"]).await;
    assert_eq!(product["object"], "product");
    assert_eq!(product["models"], json!(["fake-image", "gpt-test"]));
    let pid = product["id"].as_str().unwrap();
    let plan = create_plan(&app, &app.owner_key, pid, "basic").await;
    assert_eq!(plan["limits"]["requests_per_minute"], 60);
    assert_eq!(plan["product_id"], pid);
    let plan_id = plan["id"].as_str().unwrap();

    let res = app
        .post(
            "/v1/subscriptions",
            &app.owner_key,
            json!({"plan_id": plan_id}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let sub: Value = res.json().await.unwrap();
    let id = sub["id"].as_str().unwrap();
    assert!(tollgate::auth::jwt::is_subscription_id(id), "{id}");
    assert_eq!(sub["status"], "active");
    assert_eq!(sub["plan_id"], plan_id);
    assert_eq!(sub["product_id"], pid);
    assert_eq!(sub["max_token_lifetime_seconds"], 3600);
    assert_eq!(sub["user_id"], app.owner_id);

    // Credentials of all three kinds; secrets appear once.
    let hs = hs256(&app, id).await;
    let key = sub_api_key(&app, id).await;
    let es = upload_key(&app, id, jsonwebtoken::Algorithm::ES256, true).await;
    let got: Value = app
        .get(&format!("/v1/subscriptions/{id}"), &app.owner_key)
        .await
        .json()
        .await
        .unwrap();
    let creds = got["credentials"].as_array().unwrap();
    assert_eq!(creds.len(), 3, "{got}");
    let text = got.to_string();
    assert!(!text.contains(&hs.material) && !text.contains(&key));
    assert!(
        creds
            .iter()
            .any(|c| c["type"] == "jwt_hs256" && c["kid"] == hs.kid.as_str())
    );
    assert!(creds.iter().any(|c| c["type"] == "jwt_public_key"
        && c["alg"] == "ES256"
        && c["kid"] == es.kid.as_str()));
    assert!(creds.iter().any(|c| c["type"] == "api_key"));

    // Lists.
    for path in ["/v1/products", "/v1/plans", "/v1/subscriptions"] {
        let v: Value = app.get(path, &app.owner_key).await.json().await.unwrap();
        assert_eq!(v["data"].as_array().unwrap().len(), 1, "{path}: {v}");
    }
    let p: Value = app
        .get(&format!("/v1/products/{pid}"), &app.owner_key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(p["plans"][0]["id"], plan_id);

    // Every mutation is in the audit log.
    let events = tollgate::store::audit::list(
        app.state.store.pool(),
        &app.tenant_id,
        &tollgate::store::audit::AuditFilter {
            limit: 500,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    for a in [
        "product.created",
        "plan.created",
        "subscription.created",
        "subscription.credential_created",
        "api_key.created",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    assert!(!format!("{events:?}").contains(&hs.material));
}

async fn validation_and_tenant_isolation(app: TestApp) {
    // Unknown model, empty models, zero limits.
    let res = app
        .post(
            "/v1/products",
            &app.owner_key,
            json!({"name": "x", "models": ["nope"]}),
        )
        .await;
    expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
    let res = app
        .post(
            "/v1/products",
            &app.owner_key,
            json!({"name": "x", "models": []}),
        )
        .await;
    expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
    let sub = subscribe(&app, &["fake-image"]).await;
    let res = app
        .post(
            "/v1/plans",
            &app.owner_key,
            json!({"product_id": sub.product_id, "name": "p", "limits": {"requests_per_minute": 0}}),
        )
        .await;
    expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
    let res = app
        .post(
            "/v1/subscriptions",
            &app.owner_key,
            json!({"plan_id": "plan_nope"}),
        )
        .await;
    expect_error(res, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    let res = app
        .post(
            "/v1/subscriptions",
            &app.owner_key,
            json!({"plan_id": sub.plan_id, "max_token_lifetime_seconds": 0}),
        )
        .await;
    expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
    // Bad credential bodies.
    for body in [
        json!({"type": "password"}),
        json!({"type": "jwt_public_key", "alg": "HS256", "public_key": "x"}),
        json!({"type": "jwt_public_key", "alg": "ES256", "public_key": "not a key"}),
        json!({"type": "jwt_public_key", "alg": "RS256"}),
        json!({"type": "jwt_hs256", "kid": "bad kid!"}),
    ] {
        let res = add_credential(&app, &sub.id, body.clone()).await;
        expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
    }
    // An EC public key uploaded as RS256 is refused; a private key is refused.
    let (_, ec_pem, _) = keypair(jsonwebtoken::Algorithm::ES256);
    let res = add_credential(
        &app,
        &sub.id,
        json!({"type": "jwt_public_key", "alg": "RS256", "public_key": ec_pem}),
    )
    .await;
    let body = expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
    assert_eq!(body["error"]["param"], "public_key");
    let res = add_credential(
        &app,
        &sub.id,
        json!({"type": "jwt_public_key", "alg": "ES256",
            "public_key": pem("PRIVATE KEY", b"0123456789")}),
    )
    .await;
    let body = expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("private")
    );
    // A kid is unique per subscription.
    let res = add_credential(&app, &sub.id, json!({"type": "jwt_hs256", "kid": "k1"})).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = add_credential(&app, &sub.id, json!({"type": "jwt_hs256", "kid": "k1"})).await;
    expect_error(res, StatusCode::CONFLICT, "CONFLICT").await;

    // Another tenant sees none of it.
    let (_, other_key) = app.other_tenant("globex").await;
    for path in [
        format!("/v1/subscriptions/{}", sub.id),
        format!("/v1/subscriptions/{}/credentials", sub.id),
        format!("/v1/products/{}", sub.product_id),
        format!("/v1/plans/{}", sub.plan_id),
    ] {
        let res = app.get(&path, &other_key).await;
        expect_error(res, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    }
    let res = app
        .delete(&format!("/v1/subscriptions/{}", sub.id), &other_key)
        .await;
    expect_error(res, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    let res = app
        .post(
            &format!("/v1/subscriptions/{}/credentials", sub.id),
            &other_key,
            json!({"type": "jwt_hs256"}),
        )
        .await;
    expect_error(res, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    let res = app
        .post(
            "/v1/subscriptions",
            &other_key,
            json!({"plan_id": sub.plan_id}),
        )
        .await;
    expect_error(res, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    let list: Value = app
        .get("/v1/products", &other_key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"], json!([]));

    // A developer may not manage subscriptions.
    let (_, dev_key) = app.add_user("dev@example.com", &["developer"]).await;
    let res = app
        .post(
            "/v1/subscriptions",
            &dev_key,
            json!({"plan_id": sub.plan_id}),
        )
        .await;
    expect_error(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    let res = app.get("/v1/products", &dev_key).await;
    assert_eq!(res.status(), StatusCode::OK, "members read the catalogue");
}

async fn subscription_api_keys_carry_the_plan_models(app: TestApp) {
    let sub = subscribe(&app, &["mock-chat", "fake-image"]).await;
    let key = sub_api_key(&app, &sub.id).await;
    let res = app.chat(&key, chat_body("mock-chat")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = app.chat(&key, chat_body("gpt-test")).await;
    let body = expect_error(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    assert_eq!(body["error"]["param"], "model");
    let models: Value = app.get("/v1/models", &key).await.json().await.unwrap();
    let mut ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["fake-image", "mock-chat"]);
    let me: Value = app.get("/v1/me", &key).await.json().await.unwrap();
    assert_eq!(me["subscription_id"], sub.id.as_str());
    assert_eq!(me["credential"]["type"], "api_key");
    // A subscription key cannot manage anything.
    let res = app.get("/v1/subscriptions", &key).await;
    expect_error(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    let res = app.get("/v1/products", &key).await;
    expect_error(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;

    // POST /v1/api-keys with subscription_id works too (needs subscriptions:write).
    let created = app
        .create_key(
            &app.owner_key,
            json!({"name": "sub key", "subscription_id": sub.id, "scopes": ["chat:write"]}),
        )
        .await;
    assert_eq!(created["subscription_id"], sub.id.as_str());
    assert!(created["user_id"].is_null());
    let scoped = created["key"].as_str().unwrap();
    assert_eq!(
        app.chat(scoped, chat_body("mock-chat")).await.status(),
        StatusCode::OK
    );
    let res = app.get("/v1/models", scoped).await;
    expect_error(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    let res = app
        .post(
            "/v1/api-keys",
            &app.owner_key,
            json!({"name": "x", "subscription_id": "0123456789abcdef01234567"}),
        )
        .await;
    expect_error(res, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    let (_, dev_key) = app.add_user("dev@example.com", &["developer"]).await;
    let res = app
        .post(
            "/v1/api-keys",
            &dev_key,
            json!({"name": "x", "subscription_id": sub.id}),
        )
        .await;
    expect_error(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;

    // Revoking one credential through the subscription.
    let key_id = created["id"].as_str().unwrap();
    let res = app
        .delete(
            &format!("/v1/subscriptions/{}/credentials/{key_id}", sub.id),
            &app.owner_key,
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = app.chat(scoped, chat_body("mock-chat")).await;
    expect_error(res, StatusCode::UNAUTHORIZED, "AUTH_REVOKED").await;
    assert_eq!(
        app.chat(&key, chat_body("mock-chat")).await.status(),
        StatusCode::OK
    );
}

async fn subscription_id_reads_only_its_own_things(app: TestApp) {
    let sub = subscribe(&app, &["fake-image"]).await;
    let res = get_as_subscription(&app, "/v1/models", &sub.id).await;
    assert_eq!(res.status(), StatusCode::OK);
    let models: Value = res.json().await.unwrap();
    assert_eq!(models["data"].as_array().unwrap().len(), 1);
    assert_eq!(models["data"][0]["id"], "fake-image");
    for prefix in ["/api/v1", "/api/v2"] {
        let res = get_as_subscription(&app, &format!("{prefix}/models"), &sub.id).await;
        assert_eq!(res.status(), StatusCode::OK, "{prefix}");
    }
    let me: Value = get_as_subscription(&app, "/v1/me", &sub.id)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["credential"]["type"], "subscription_id");
    assert_eq!(me["subscription_id"], sub.id.as_str());
    assert_eq!(me["permissions"], json!(["models:read", "operations:read"]));

    // Ignored on required routes: alone it is no credential.
    let res = app
        .client
        .post(app.url("/v1/images/generations"))
        .header("x-user-id", &sub.id)
        .json(&image_body("a cat"))
        .send()
        .await
        .unwrap();
    let body = expect_error(res, StatusCode::UNAUTHORIZED, "AUTH_MISSING").await;
    assert!(body["error"]["message"].is_string());
    let res = app
        .client
        .get(app.url("/v1/subscriptions"))
        .header("x-user-id", &sub.id)
        .send()
        .await
        .unwrap();
    expect_error(res, StatusCode::UNAUTHORIZED, "AUTH_MISSING").await;

    // Unknown, malformed → AUTH_INVALID.
    for id in [
        "0123456789abcdef01234567",
        "not-a-subscription",
        "66EC1726E728C1405E5EBCA2",
    ] {
        let res = get_as_subscription(&app, "/v1/models", id).await;
        expect_error(res, StatusCode::UNAUTHORIZED, "AUTH_INVALID").await;
    }
}

async fn cancelling_stops_every_credential_at_once(app: TestApp) {
    let sub = subscribe(&app, &["mock-chat", "fake-image"]).await;
    let key = sub_api_key(&app, &sub.id).await;
    let signer = hs256(&app, &sub.id).await;
    let token = signer.mint(&claims(&sub.id, json!({})));
    assert_eq!(
        app.chat(&key, chat_body("mock-chat")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.chat(&token, chat_body("mock-chat")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        get_as_subscription(&app, "/v1/models", &sub.id)
            .await
            .status(),
        StatusCode::OK
    );

    let res = app
        .delete(&format!("/v1/subscriptions/{}", sub.id), &app.owner_key)
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["status"], "cancelled");
    assert!(v["cancelled_at"].is_string());
    // Idempotent.
    let res = app
        .delete(&format!("/v1/subscriptions/{}", sub.id), &app.owner_key)
        .await;
    assert_eq!(res.status(), StatusCode::OK);

    let res = app.chat(&key, chat_body("mock-chat")).await;
    expect_error(res, StatusCode::FORBIDDEN, "SUBSCRIPTION_INACTIVE").await;
    let res = app.chat(&token, chat_body("mock-chat")).await;
    expect_error(res, StatusCode::FORBIDDEN, "SUBSCRIPTION_INACTIVE").await;
    let res = get_as_subscription(&app, "/v1/models", &sub.id).await;
    expect_error(res, StatusCode::UNAUTHORIZED, "AUTH_INVALID").await;
    // No new credentials on a cancelled subscription.
    let res = add_credential(&app, &sub.id, json!({"type": "jwt_hs256"})).await;
    expect_error(res, StatusCode::CONFLICT, "CONFLICT").await;
    let res = app
        .patch(
            &format!("/v1/subscriptions/{}", sub.id),
            &app.owner_key,
            json!({"status": "active"}),
        )
        .await;
    expect_error(res, StatusCode::CONFLICT, "CONFLICT").await;
}

/// The instance that suspended a subscription applied that change at once; its poller must not
/// apply it a second time when it reads the change back from the invalidation log, or a request
/// started after the reactivation would be cut as if the subscription were still suspended.
async fn a_reactivated_subscription_is_not_cut_by_its_old_suspension(app: TestApp) {
    let sub = subscribe(&app, &["fake-model"]).await;
    let key = sub_api_key(&app, &sub.id).await;
    let path = format!("/v1/subscriptions/{}", sub.id);
    for status in ["suspended", "active"] {
        let res = app
            .patch(&path, &app.owner_key, json!({"status": status}))
            .await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    // Several poll intervals long: the poller reads both rows back while this is in flight.
    let mut body = chat_body("fake-model");
    body["fake"] = json!({"delay_ms": 600});
    let res = app.chat(&key, body).await;
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "{}",
        res.text().await.unwrap()
    );
}

async fn suspension_is_reversible(app: TestApp) {
    let sub = subscribe(&app, &["mock-chat"]).await;
    let key = sub_api_key(&app, &sub.id).await;
    let path = format!("/v1/subscriptions/{}", sub.id);
    let res = app
        .patch(&path, &app.owner_key, json!({"status": "suspended"}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = app.chat(&key, chat_body("mock-chat")).await;
    expect_error(res, StatusCode::FORBIDDEN, "SUBSCRIPTION_INACTIVE").await;
    let res = app
        .patch(&path, &app.owner_key, json!({"status": "active"}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        app.chat(&key, chat_body("mock-chat")).await.status(),
        StatusCode::OK
    );
    let res = app
        .patch(&path, &app.owner_key, json!({"status": "cancelled"}))
        .await;
    expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
}

fn stream_body(chunks: usize) -> Value {
    json!({"model": "fake-model", "stream": true,
        "messages": [{"role": "user", "content": "Hello"}],
        "fake": {"chunks": chunks, "chunk_delay_ms": 50}})
}

/// Starts a stream, waits for its first bytes, runs `cut`, then reads the rest.
async fn cut_stream(
    app: &TestApp,
    token: &str,
    cut: impl std::future::Future<Output = ()>,
) -> String {
    let mut res = app.chat(token, stream_body(200)).await;
    assert_eq!(res.status(), StatusCode::OK);
    let first = res.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());
    cut.await;
    let rest = tokio::time::timeout(Duration::from_secs(5), read_all(res))
        .await
        .expect("the stream ends soon after the cut");
    assert!(!rest.contains("[DONE]"), "the stream must not complete");
    rest
}

async fn cancellation_cuts_streams_in_flight(app: TestApp) {
    let sub = subscribe(&app, &["fake-model"]).await;
    let key = sub_api_key(&app, &sub.id).await;
    let signer = upload_key(&app, &sub.id, jsonwebtoken::Algorithm::ES256, false).await;
    let token = signer.mint(&claims(&sub.id, json!({"bind": {"/model": "fake-model"}})));
    let path = format!("/v1/subscriptions/{}", sub.id);

    // Two live streams, one per credential; one DELETE cuts both.
    let mut a = app.chat(&key, stream_body(200)).await;
    let mut b = app.chat(&token, stream_body(200)).await;
    assert_eq!(a.status(), StatusCode::OK);
    assert_eq!(b.status(), StatusCode::OK);
    a.chunk().await.unwrap().unwrap();
    b.chunk().await.unwrap().unwrap();
    let res = app.delete(&path, &app.owner_key).await;
    assert_eq!(res.status(), StatusCode::OK);
    for res in [a, b] {
        let rest = tokio::time::timeout(Duration::from_secs(5), read_all(res))
            .await
            .expect("cut promptly");
        assert!(rest.contains("SUBSCRIPTION_INACTIVE"), "{rest}");
        assert!(!rest.contains("[DONE]"));
    }
    assert!(app.upstream.wait_cancelled(2, Duration::from_secs(5)).await);
}

async fn cancellation_reaches_other_instances(app: TestApp) {
    let sub = subscribe(&app, &["fake-model"]).await;
    let key = sub_api_key(&app, &sub.id).await;
    let other = app.second_instance().await;
    let path = format!("/v1/subscriptions/{}", sub.id);
    let cut = async {
        let res = app.delete(&path, &app.owner_key).await;
        assert_eq!(res.status(), StatusCode::OK);
    };
    let rest = cut_stream(&other, &key, cut).await;
    assert!(rest.contains("SUBSCRIPTION_INACTIVE"), "{rest}");
    let res = other.chat(&key, chat_body("fake-model")).await;
    expect_error(res, StatusCode::FORBIDDEN, "SUBSCRIPTION_INACTIVE").await;
    other.shutdown().await;
}
