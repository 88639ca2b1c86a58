//! Privilege escalation, attacked through the API (SPEC §2, §4.2, §6): a credential never
//! creates, widens or obtains a credential with more than its own effective permissions (its
//! owner's current roles narrowed by its scopes) and never obtains a wider key's secret;
//! `/v1/tenants` needs the platform owner *and* the effective `tenant:admin`; only an owner
//! grants or removes `owner`. Every refused request is checked for its exact status and code,
//! for leaking no secret, and for leaving the store as it was.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::oauth_support::*;
use crate::store_tests;
use crate::subs::*;

store_tests!(
    a_scoped_key_mints_no_unscoped_key,
    a_scoped_key_mints_no_scope_it_lacks,
    a_scoped_key_widens_no_other_key,
    a_scoped_key_cannot_unscope_itself,
    a_scoped_key_rotates_only_keys_within_its_reach,
    keys_admin_follows_the_same_ceiling,
    an_admin_obtains_no_key_of_an_owner,
    subscription_credentials_follow_the_ceiling,
    service_accounts_get_at_most_the_callers_effective_permissions,
    roles_and_users_are_granted_from_effective_permissions,
    tenants_need_the_effective_tenant_admin,
    an_admin_cannot_make_itself_owner,
    an_admin_cannot_demote_or_remove_an_owner,
    a_narrowed_owner_credential_is_not_an_owner,
    no_custom_role_passes_for_owner,
    no_identity_provider_grants_owner,
    two_basic_authorizations_are_refused,
);

/// A key of the owner with `scopes`; returns (id, key).
async fn owner_key_scoped(app: &TestApp, scopes: &[&str]) -> (String, String) {
    let k = app
        .create_key(&app.owner_key, json!({"name": "scoped", "scopes": scopes}))
        .await;
    (
        k["id"].as_str().unwrap().to_string(),
        k["key"].as_str().unwrap().to_string(),
    )
}

/// A key as its owner reads it, without the fields that move on their own.
async fn key_state(app: &TestApp, id: &str) -> Value {
    let res = app.get(&format!("/v1/api-keys/{id}"), &app.owner_key).await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut v: Value = res.json().await.unwrap();
    v.as_object_mut().unwrap().remove("last_used_at");
    v
}

/// Every key of the tenant, as the owner lists them.
async fn all_keys(app: &TestApp) -> Vec<Value> {
    let v: Value = app
        .get("/v1/api-keys", &app.owner_key)
        .await
        .json()
        .await
        .unwrap();
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let mut k = k.clone();
            k.as_object_mut().unwrap().remove("last_used_at");
            k
        })
        .collect()
}

/// Asserts a refusal and that its body carries no secret of any kind.
async fn refused(res: reqwest::Response, status: StatusCode, code: &str) -> Value {
    let body = expect_error(res, status, code).await;
    let text = body.to_string();
    assert!(
        body.get("key").is_none() && body.get("secret").is_none(),
        "{body}"
    );
    assert!(
        !text.contains("tgk_") && !text.contains("tgcs_"),
        "a refusal carries no secret: {body}"
    );
    body
}

/// The number of audit events with `action` on `target`.
async fn audit_count(app: &TestApp, action: &str, target: &str) -> i64 {
    let n: (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM audit_events WHERE action = $1 AND target_id = $2")
            .bind(action.to_string())
            .bind(target.to_string())
            .fetch_one(app.state.store.pool())
            .await
            .unwrap();
    n.0
}

async fn me(app: &TestApp, key: &str) -> Value {
    let res = app.get("/v1/me", key).await;
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.unwrap()
}

/// A member's roles as the owner reads them.
async fn roles_of(app: &TestApp, user_id: &str) -> Value {
    let res = app
        .get(&format!("/v1/users/{user_id}"), &app.owner_key)
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    res.json::<Value>().await.unwrap()["roles"].clone()
}

// ---- keys --------------------------------------------------------------------------------------

/// A `keys:write`-only key creating a key without scopes used to get an unscoped key, i.e. every
/// permission of its owner. The new key inherits the caller's permissions as its scopes.
async fn a_scoped_key_mints_no_unscoped_key(app: TestApp) {
    let (_, k) = owner_key_scoped(&app, &["keys:write"]).await;
    let child = app.create_key(&k, json!({"name": "child"})).await;
    assert_eq!(child["scopes"], json!(["keys:write"]));
    let child_key = child["key"].as_str().unwrap();
    assert_eq!(
        me(&app, child_key).await["permissions"],
        json!(["keys:write"])
    );
    refused(
        app.chat(child_key, chat_body("mock-chat")).await,
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
    )
    .await;
    // A wider scoped caller passes on exactly what it holds (in the spec's permission order).
    let (_, k2) = owner_key_scoped(&app, &["chat:write", "keys:write", "models:read"]).await;
    let child = app.create_key(&k2, json!({"name": "child 2"})).await;
    assert_eq!(
        child["scopes"],
        json!(["models:read", "chat:write", "keys:write"])
    );
    // The owner's own unscoped key still creates unscoped keys.
    let plain = app
        .create_key(&app.owner_key, json!({"name": "plain"}))
        .await;
    assert!(plain["scopes"].is_null());
}

async fn a_scoped_key_mints_no_scope_it_lacks(app: TestApp) {
    let (_, k) = owner_key_scoped(&app, &["keys:write"]).await;
    let before = all_keys(&app).await;
    for scopes in [
        json!(["users:write"]),
        json!(["keys:write", "tenant:admin"]),
        json!(["chat:write"]),
    ] {
        let res = app
            .post(
                "/v1/api-keys",
                &k,
                json!({"name": "wider", "scopes": scopes}),
            )
            .await;
        let body = refused(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
        assert_eq!(body["error"]["param"], "scopes");
    }
    assert_eq!(all_keys(&app).await, before, "no key was created");
    // Within its reach it may create keys.
    let ok = app
        .create_key(&k, json!({"name": "same", "scopes": ["keys:write"]}))
        .await;
    assert_eq!(ok["scopes"], json!(["keys:write"]));
}

async fn a_scoped_key_widens_no_other_key(app: TestApp) {
    let (_, k) = owner_key_scoped(&app, &["keys:write"]).await;
    let (sib_id, sib_key) = owner_key_scoped(&app, &["models:read"]).await;
    let path = format!("/v1/api-keys/{sib_id}");
    let before = key_state(&app, &sib_id).await;
    for body in [
        json!({"scopes": ["users:write", "tenant:admin"]}),
        json!({"scopes": null}),
        json!({"scopes": ["keys:write", "models:read"]}),
        // The sibling can do what the caller cannot (models:read): no change at all, not even
        // a longer life or a looser limit.
        json!({"expires_at": null, "rate_limit": null}),
        json!({"name": "renamed"}),
    ] {
        let res = app.patch(&path, &k, body.clone()).await;
        refused(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
        assert_eq!(key_state(&app, &sib_id).await, before, "after {body}");
    }
    assert_eq!(audit_count(&app, "api_key.updated", &sib_id).await, 0);
    assert_eq!(
        me(&app, &sib_key).await["permissions"],
        json!(["models:read"])
    );
    // Revoking stays allowed: it only takes away.
    assert_eq!(app.delete(&path, &k).await.status(), StatusCode::OK);
}

async fn a_scoped_key_cannot_unscope_itself(app: TestApp) {
    let (id, k) = owner_key_scoped(&app, &["keys:write"]).await;
    let path = format!("/v1/api-keys/{id}");
    let before = key_state(&app, &id).await;
    let res = app.patch(&path, &k, json!({"scopes": null})).await;
    let body = refused(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    assert_eq!(body["error"]["param"], "scopes");
    let res = app
        .patch(&path, &k, json!({"scopes": ["keys:write", "users:write"]}))
        .await;
    refused(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    assert_eq!(key_state(&app, &id).await, before);
    assert_eq!(me(&app, &k).await["permissions"], json!(["keys:write"]));
    // Changes that stay within its reach are fine.
    let res = app
        .patch(
            &path,
            &k,
            json!({"name": "still narrow", "scopes": ["keys:write"]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    // The owner's unscoped key may widen it (the owner holds everything).
    let res = app
        .patch(&path, &app.owner_key, json!({"scopes": null}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(key_state(&app, &id).await["scopes"].is_null());
}

async fn a_scoped_key_rotates_only_keys_within_its_reach(app: TestApp) {
    let (_, k) = owner_key_scoped(&app, &["keys:write"]).await;
    // A sibling that can chat, and the owner's own unscoped key.
    let (sib_id, sib_key) = owner_key_scoped(&app, &["chat:write", "models:read"]).await;
    let owner_key_id = me(&app, &app.owner_key).await["credential"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    for (id, secret) in [(&sib_id, &sib_key), (&owner_key_id, &app.owner_key)] {
        let before = key_state(&app, id).await;
        let res = app
            .post(
                &format!("/v1/api-keys/{id}/rotate"),
                &k,
                json!({"grace_period_seconds": 0}),
            )
            .await;
        refused(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
        assert_eq!(key_state(&app, id).await, before, "hint unchanged");
        assert_eq!(audit_count(&app, "api_key.rotated", id).await, 0);
        // The old secret still works: nothing was rotated.
        assert_eq!(app.get("/v1/models", secret).await.status(), StatusCode::OK);
    }
    // A sibling no wider than the caller may be rotated (it is a key the caller could create).
    let (narrow_id, _) = owner_key_scoped(&app, &["keys:write"]).await;
    let res = app
        .post(&format!("/v1/api-keys/{narrow_id}/rotate"), &k, json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let v: Value = res.json().await.unwrap();
    assert!(v["key"].as_str().unwrap().starts_with("tgk_"));
}

async fn keys_admin_follows_the_same_ceiling(app: TestApp) {
    let (admin_id, _) = app.add_user("admin@example.com", &["admin"]).await;
    let (dev_id, _) = app.add_user("dev@example.com", &["developer"]).await;
    let narrow_admin = app
        .create_key(
            &app.owner_key,
            json!({"name": "admin keys only", "user_id": admin_id, "scopes": ["keys:admin"]}),
        )
        .await;
    let ka = narrow_admin["key"].as_str().unwrap();
    let before = all_keys(&app).await;
    // For the developer: without scopes nothing of the developer's would be left; with scopes
    // the caller does not hold, refused.
    for body in [
        json!({"name": "for dev", "user_id": dev_id}),
        json!({"name": "for dev", "user_id": dev_id, "scopes": ["chat:write"]}),
    ] {
        let res = app.post("/v1/api-keys", ka, body).await;
        let b = refused(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
        assert_eq!(b["error"]["param"], "scopes");
    }
    assert_eq!(all_keys(&app).await, before);
    // The developer's own unscoped key cannot be widened or rotated by it either.
    let dev_key = app
        .create_key(&app.owner_key, json!({"name": "dev's", "user_id": dev_id}))
        .await;
    let dev_key_id = dev_key["id"].as_str().unwrap();
    let state = key_state(&app, dev_key_id).await;
    refused(
        app.post(&format!("/v1/api-keys/{dev_key_id}/rotate"), ka, json!({}))
            .await,
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
    )
    .await;
    refused(
        app.patch(
            &format!("/v1/api-keys/{dev_key_id}"),
            ka,
            json!({"expires_at": null}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
    )
    .await;
    assert_eq!(key_state(&app, dev_key_id).await, state);
    // An admin key that holds what it hands out may: the key is narrowed to the caller.
    let wider_admin = app
        .create_key(
            &app.owner_key,
            json!({"name": "admin", "user_id": admin_id,
                "scopes": ["keys:admin", "models:read", "chat:write"]}),
        )
        .await;
    let kw = wider_admin["key"].as_str().unwrap();
    let k = app
        .create_key(kw, json!({"name": "for dev", "user_id": dev_id}))
        .await;
    assert_eq!(k["user_id"], dev_id.as_str());
    assert_eq!(k["scopes"], json!(["models:read", "chat:write"]));
    assert_eq!(
        app.chat(k["key"].as_str().unwrap(), chat_body("mock-chat"))
            .await
            .status(),
        StatusCode::OK
    );
}

/// An admin holds every permission bit, but a key of the owner acts as the owner: an admin may
/// neither mint one nor rotate one to learn its secret.
async fn an_admin_obtains_no_key_of_an_owner(app: TestApp) {
    let (_, admin_key) = app.add_user("admin@example.com", &["admin"]).await;
    let owner_key_id = me(&app, &app.owner_key).await["credential"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let before = all_keys(&app).await;
    let res = app
        .post(
            "/v1/api-keys",
            &admin_key,
            json!({"name": "mine now", "user_id": app.owner_id}),
        )
        .await;
    refused(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    let res = app
        .post(
            &format!("/v1/api-keys/{owner_key_id}/rotate"),
            &admin_key,
            json!({}),
        )
        .await;
    refused(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    let res = app
        .patch(
            &format!("/v1/api-keys/{owner_key_id}"),
            &admin_key,
            json!({"expires_at": null}),
        )
        .await;
    refused(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    assert_eq!(all_keys(&app).await, before);
    assert_eq!(
        app.get("/v1/models", &app.owner_key).await.status(),
        StatusCode::OK
    );
    // Nor a key of the platform owner that reaches /v1/tenants.
    let res = app
        .post(
            "/v1/api-keys",
            &admin_key,
            json!({"name": "platform", "user_id": app.owner_id, "scopes": ["tenant:admin"]}),
        )
        .await;
    refused(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    assert_eq!(all_keys(&app).await, before);
    // A narrower key for the owner carries neither power, so an admin may create it.
    let k = app
        .create_key(
            &admin_key,
            json!({"name": "owner's chat key", "user_id": app.owner_id, "scopes": ["chat:write"]}),
        )
        .await;
    assert_eq!(k["user_id"], app.owner_id.as_str());
}

async fn subscription_credentials_follow_the_ceiling(app: TestApp) {
    let sub = subscribe(&app, &["mock-chat"]).await;
    let creds_path = format!("/v1/subscriptions/{}/credentials", sub.id);
    let creds_before: Value = app
        .get(&creds_path, &app.owner_key)
        .await
        .json()
        .await
        .unwrap();
    // A subscriptions-only key holds none of a subscription key's permissions.
    let (_, k) = owner_key_scoped(&app, &["subscriptions:write", "subscriptions:read"]).await;
    let keys_before = all_keys(&app).await;
    let res = app.post(&creds_path, &k, json!({"type": "api_key"})).await;
    refused(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    let res = app
        .post(
            "/v1/api-keys",
            &k,
            json!({"name": "sub", "subscription_id": sub.id, "scopes": ["chat:write"]}),
        )
        .await;
    let body = refused(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    assert_eq!(body["error"]["param"], "scopes");
    // Signing credentials mint app JWTs with the subscription's permissions.
    let res = app
        .post(&creds_path, &k, json!({"type": "jwt_hs256"}))
        .await;
    refused(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    let signer = upload_pem_body();
    let res = app.post(&creds_path, &k, signer).await;
    refused(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    assert_eq!(
        app.get(&creds_path, &app.owner_key)
            .await
            .json::<Value>()
            .await
            .unwrap(),
        creds_before
    );
    assert_eq!(all_keys(&app).await, keys_before);
    // A caller with some of them passes on exactly those.
    let (_, k2) =
        owner_key_scoped(&app, &["subscriptions:write", "models:read", "chat:write"]).await;
    let res = app.post(&creds_path, &k2, json!({"type": "api_key"})).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["scopes"], json!(["models:read", "chat:write"]));
    let res = app
        .post(
            "/v1/api-keys",
            &k2,
            json!({"name": "sub", "subscription_id": sub.id}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["scopes"], json!(["models:read", "chat:write"]));
    assert_eq!(
        app.chat(v["key"].as_str().unwrap(), chat_body("mock-chat"))
            .await
            .status(),
        StatusCode::OK
    );
    // Such a key cannot then be widened by the narrow caller.
    let id = v["id"].as_str().unwrap();
    let before = key_state(&app, id).await;
    let (_, k3) = owner_key_scoped(&app, &["keys:admin", "models:read", "chat:write"]).await;
    let res = app
        .patch(&format!("/v1/api-keys/{id}"), &k3, json!({"scopes": null}))
        .await;
    refused(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    // ... and a subscription key's scopes stay within what subscription keys can do.
    let res = app
        .patch(
            &format!("/v1/api-keys/{id}"),
            &app.owner_key,
            json!({"scopes": ["users:write"]}),
        )
        .await;
    refused(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
    assert_eq!(key_state(&app, id).await, before);
}

/// A valid ES256 public key to upload.
fn upload_pem_body() -> Value {
    let (_, pem, _) = keypair(jsonwebtoken::Algorithm::ES256);
    json!({"type": "jwt_public_key", "alg": "ES256", "public_key": pem})
}

async fn service_accounts_get_at_most_the_callers_effective_permissions(app: TestApp) {
    // The owner holds everything, but this key of theirs only tenant:admin.
    let (_, k) = owner_key_scoped(&app, &["tenant:admin"]).await;
    let before: Value = app
        .get("/v1/oauth-clients", &app.owner_key)
        .await
        .json()
        .await
        .unwrap();
    for roles in [json!(["developer"]), json!(["admin"])] {
        let res = app
            .post(
                "/v1/oauth-clients",
                &k,
                json!({"name": "backend", "confidential": true, "roles": roles}),
            )
            .await;
        let body = refused(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
        assert_eq!(body["error"]["param"], "roles");
    }
    // No service account is an owner, whoever asks.
    let res = app
        .post(
            "/v1/oauth-clients",
            &app.owner_key,
            json!({"name": "backend", "confidential": true, "roles": ["owner"]}),
        )
        .await;
    let body = refused(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
    assert_eq!(body["error"]["param"], "roles");
    let after: Value = app
        .get("/v1/oauth-clients", &app.owner_key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(after, before, "no client was registered");
    // Within the key's reach it works.
    let c = create_client(
        &app,
        &k,
        json!({"name": "backend", "confidential": true, "roles": []}),
    )
    .await;
    assert!(c["client_secret"].as_str().unwrap().starts_with("tgcs_"));
}

async fn roles_and_users_are_granted_from_effective_permissions(app: TestApp) {
    let (_, k) = owner_key_scoped(&app, &["users:write", "users:read", "roles:write"]).await;
    let res = app
        .post(
            "/v1/roles",
            &k,
            json!({"name": "chatter", "permissions": ["chat:write"]}),
        )
        .await;
    refused(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    let res = app
        .post(
            "/v1/users",
            &k,
            json!({"email": "new@example.com", "roles": ["developer"]}),
        )
        .await;
    refused(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    let (dev_id, _) = app.add_user("dev@example.com", &["viewer"]).await;
    let res = app
        .put(
            &format!("/v1/users/{dev_id}/roles"),
            &k,
            json!({"roles": ["developer"]}),
        )
        .await;
    refused(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    assert_eq!(roles_of(&app, &dev_id).await, json!(["viewer"]));
    let users: Value = app
        .get("/v1/users", &app.owner_key)
        .await
        .json()
        .await
        .unwrap();
    assert!(!users.to_string().contains("new@example.com"));
    let roles: Value = app
        .get("/v1/roles", &app.owner_key)
        .await
        .json()
        .await
        .unwrap();
    assert!(!roles.to_string().contains("chatter"));
}

// ---- tenants -----------------------------------------------------------------------------------

async fn tenants_need_the_effective_tenant_admin(app: TestApp) {
    let (_, read_only) = owner_key_scoped(&app, &["models:read"]).await;
    let count = || async {
        let v: Value = app
            .get("/v1/tenants", &app.owner_key)
            .await
            .json()
            .await
            .unwrap();
        v["data"].as_array().unwrap().len()
    };
    let before = count().await;
    refused(
        app.get("/v1/tenants", &read_only).await,
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
    )
    .await;
    refused(
        app.post(
            "/v1/tenants",
            &read_only,
            json!({"name": "evil", "owner_email": "evil@example.com"}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
    )
    .await;
    // The same through a platform token of the owner narrowed to models:read.
    set_owner_password(&app).await;
    let client_id = public_client(&app).await;
    let (verifier, challenge) = pkce();
    let code = login_code(
        &app,
        &client_id,
        REDIRECT,
        Some(&challenge),
        OWNER_EMAIL,
        PASSWORD,
        "openid models:read",
    )
    .await;
    let res = app
        .post(
            "/v1/auth/token",
            "",
            json!({"code": code, "code_verifier": verifier, "redirect_uri": REDIRECT,
                "client_id": client_id}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let token: Value = res.json().await.unwrap();
    let jwt = token["access_token"].as_str().unwrap();
    assert_eq!(me(&app, jwt).await["permissions"], json!(["models:read"]));
    refused(
        app.get("/v1/tenants", jwt).await,
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
    )
    .await;
    refused(
        app.post("/v1/tenants", jwt, json!({"name": "evil2"})).await,
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
    )
    .await;
    assert_eq!(count().await, before, "no tenant was created");
    // A key of the platform owner scoped to tenant:admin is enough.
    let (_, tenant_admin) = owner_key_scoped(&app, &["tenant:admin"]).await;
    assert_eq!(
        app.get("/v1/tenants", &tenant_admin).await.status(),
        StatusCode::OK
    );
}

// ---- owners ------------------------------------------------------------------------------------

async fn an_admin_cannot_make_itself_owner(app: TestApp) {
    let (admin_id, admin_key) = app.add_user("admin@example.com", &["admin"]).await;
    let res = app
        .put(
            &format!("/v1/users/{admin_id}/roles"),
            &admin_key,
            json!({"roles": ["owner"]}),
        )
        .await;
    refused(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    let res = app
        .patch(
            &format!("/v1/users/{admin_id}"),
            &admin_key,
            json!({"roles": ["admin", "owner"]}),
        )
        .await;
    refused(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    assert_eq!(roles_of(&app, &admin_id).await, json!(["admin"]));
    // Nor can it add a new owner (an accomplice).
    let res = app
        .post(
            "/v1/users",
            &admin_key,
            json!({"email": "accomplice@example.com", "roles": ["owner"]}),
        )
        .await;
    refused(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    let users: Value = app
        .get("/v1/users", &app.owner_key)
        .await
        .json()
        .await
        .unwrap();
    assert!(!users.to_string().contains("accomplice@example.com"));
    assert_eq!(audit_count(&app, "user.roles_changed", &admin_id).await, 0);
    // The owner may make it an owner.
    let res = app
        .put(
            &format!("/v1/users/{admin_id}/roles"),
            &app.owner_key,
            json!({"roles": ["owner"]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(roles_of(&app, &admin_id).await, json!(["owner"]));
}

async fn an_admin_cannot_demote_or_remove_an_owner(app: TestApp) {
    // Two owners, so the last-owner rule is not what stops the admin.
    let (owner2_id, _) = app.add_user("owner2@example.com", &["owner"]).await;
    let (_, admin_key) = app.add_user("admin@example.com", &["admin"]).await;
    for owner in [&app.owner_id, &owner2_id] {
        let res = app
            .put(
                &format!("/v1/users/{owner}/roles"),
                &admin_key,
                json!({"roles": ["viewer"]}),
            )
            .await;
        refused(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
        let res = app
            .patch(
                &format!("/v1/users/{owner}"),
                &admin_key,
                json!({"roles": ["admin"]}),
            )
            .await;
        refused(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
        let res = app.delete(&format!("/v1/users/{owner}"), &admin_key).await;
        refused(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
        assert_eq!(roles_of(&app, owner).await, json!(["owner"]));
    }
    // The original owner's key kept working (removal would have revoked it).
    assert_eq!(
        me(&app, &app.owner_key).await["permissions"]
            .as_array()
            .unwrap()
            .len(),
        17
    );
    // An owner may demote another owner.
    let res = app
        .put(
            &format!("/v1/users/{owner2_id}/roles"),
            &app.owner_key,
            json!({"roles": ["viewer"]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
}

/// A credential of an owner acts as the owner only when it is not narrowed at all.
async fn a_narrowed_owner_credential_is_not_an_owner(app: TestApp) {
    let (admin_id, _) = app.add_user("admin@example.com", &["admin"]).await;
    let all: Vec<&str> = "models:read chat:write embeddings:write images:write operations:read \
        keys:write keys:admin users:read users:write roles:write products:write \
        subscriptions:read subscriptions:write usage:read audit:read tenant:admin metrics:read"
        .split(' ')
        .collect();
    let almost: Vec<&str> = all
        .iter()
        .copied()
        .filter(|p| *p != "metrics:read")
        .collect();
    let (_, narrowed) = owner_key_scoped(&app, &almost).await;
    let path = format!("/v1/users/{admin_id}/roles");
    let res = app.put(&path, &narrowed, json!({"roles": ["owner"]})).await;
    refused(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    assert_eq!(roles_of(&app, &admin_id).await, json!(["admin"]));
    // Demoting or removing another owner is refused too, though it grants nothing.
    let (owner2_id, _) = app.add_user("owner2@example.com", &["owner"]).await;
    let res = app
        .put(
            &format!("/v1/users/{owner2_id}/roles"),
            &narrowed,
            json!({"roles": ["viewer"]}),
        )
        .await;
    refused(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    let res = app
        .delete(&format!("/v1/users/{owner2_id}"), &narrowed)
        .await;
    refused(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    assert_eq!(roles_of(&app, &owner2_id).await, json!(["owner"]));
    // Scoped to every permission there is, it is not narrowed.
    let (_, everything) = owner_key_scoped(&app, &all).await;
    let res = app
        .put(&path, &everything, json!({"roles": ["owner"]}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    // And an owner's platform token (no permission names in its scope) acts as the owner.
    set_owner_password(&app).await;
    let client_id = public_client(&app).await;
    let t = login(&app, &client_id, OWNER_EMAIL, PASSWORD).await;
    let jwt = t["access_token"].as_str().unwrap();
    let res = app.put(&path, jwt, json!({"roles": ["admin"]})).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(roles_of(&app, &admin_id).await, json!(["admin"]));
}

async fn no_custom_role_passes_for_owner(app: TestApp) {
    for name in ["Owner", "OWNER", "Admin"] {
        let res = app
            .post(
                "/v1/roles",
                &app.owner_key,
                json!({"name": name, "permissions": ["models:read"]}),
            )
            .await;
        refused(res, StatusCode::CONFLICT, "CONFLICT").await;
    }
    let res = app
        .post(
            "/v1/roles",
            &app.owner_key,
            json!({"name": "helper", "permissions": ["models:read"]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let role: Value = res.json().await.unwrap();
    let path = format!("/v1/roles/{}", role["id"].as_str().unwrap());
    let res = app
        .patch(&path, &app.owner_key, json!({"name": "owner"}))
        .await;
    refused(res, StatusCode::CONFLICT, "CONFLICT").await;
    let res = app
        .patch(&path, &app.owner_key, json!({"name": "oWnEr"}))
        .await;
    refused(res, StatusCode::CONFLICT, "CONFLICT").await;
    let roles: Value = app
        .get("/v1/roles", &app.owner_key)
        .await
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = roles["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "owner",
            "admin",
            "developer",
            "viewer",
            "consumer",
            "helper"
        ]
    );
    // "owner" is no permission a custom role could carry either.
    let res = app
        .post(
            "/v1/roles",
            &app.owner_key,
            json!({"name": "sneaky", "permissions": ["owner"]}),
        )
        .await;
    refused(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
}

/// An identity provider's `default_role` can never be `owner`, not even when an owner registers
/// it: its tokens would carry the owner role for any address it asserts.
async fn no_identity_provider_grants_owner(app: TestApp) {
    let res = app
        .post(
            "/v1/identity-providers",
            &app.owner_key,
            json!({"issuer": "https://idp.example.com", "jwks_url": "https://idp.example.com/jwks.json",
                   "audience": "tollgate", "default_role": "owner"}),
        )
        .await;
    let err = expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
    assert_eq!(err["error"]["param"], "default_role");
    let list: Value = app
        .get("/v1/identity-providers", &app.owner_key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"], json!([]), "nothing was registered: {list}");
}

/// Client authentication with two `Authorization` headers is refused: a proxy in front could
/// read the other one.
async fn two_basic_authorizations_are_refused(app: TestApp) {
    let (cid, secret) = service_account(&app, &app.owner_key, &["developer"]).await;
    use base64::Engine;
    let basic = |id: &str, s: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{id}:{s}"))
        )
    };
    let res = app
        .client
        .post(app.url("/oauth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", basic(&cid, &secret))
        .header("authorization", basic(&cid, "wrong"))
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    expect_oauth_error(res, StatusCode::BAD_REQUEST, "invalid_request").await;
    // One header works.
    let res = app
        .client
        .post(app.url("/oauth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", basic(&cid, &secret))
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}
