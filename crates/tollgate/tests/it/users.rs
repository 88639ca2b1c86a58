//! Tenants, users and roles (SPEC §1, §4.2, §6): custom roles, no escalation, last owner,
//! isolation, `/v1/me`, and the audit events every mutation writes.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::store_tests;

store_tests!(
    custom_roles_grant_exactly_their_permissions,
    nobody_grants_what_they_do_not_hold,
    the_last_owner_stays,
    removing_a_user_revokes_their_keys,
    users_and_roles_of_another_tenant_are_not_found,
    tenants_are_for_the_platform_owner,
    me_describes_the_caller,
    every_mutation_is_audited_in_a_valid_chain,
);

async fn custom_roles_grant_exactly_their_permissions(app: TestApp) {
    let res = app
        .post(
            "/v1/roles",
            &app.owner_key,
            json!({"name": "embedder", "permissions": ["models:read", "embeddings:write"]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let role: Value = res.json().await.unwrap();
    assert_eq!(role["builtin"], false);
    let (user_id, key) = app.add_user("emb@example.com", &["embedder"]).await;
    let me: Value = app.get("/v1/me", &key).await.json().await.unwrap();
    assert_eq!(
        me["permissions"],
        json!(["models:read", "embeddings:write"])
    );
    expect_error(
        app.chat(&key, chat_body("mock-chat")).await,
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
    )
    .await;

    // Changing the role's permissions changes what the user's key can do, at once.
    let path = format!("/v1/roles/{}", role["id"].as_str().unwrap());
    let res = app
        .patch(
            &path,
            &app.owner_key,
            json!({"permissions": ["models:read", "chat:write"]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        app.chat(&key, chat_body("mock-chat")).await.status(),
        StatusCode::OK
    );

    // Roles list: built-ins first, then custom; built-ins cannot change.
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
            "embedder"
        ]
    );
    expect_error(
        app.patch("/v1/roles/owner", &app.owner_key, json!({"name": "x"}))
            .await,
        StatusCode::CONFLICT,
        "CONFLICT",
    )
    .await;
    expect_error(
        app.post(
            "/v1/roles",
            &app.owner_key,
            json!({"name": "embedder", "permissions": []}),
        )
        .await,
        StatusCode::CONFLICT,
        "CONFLICT",
    )
    .await;
    expect_error(
        app.post(
            "/v1/roles",
            &app.owner_key,
            json!({"name": "x", "permissions": ["fly:away"]}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "VALIDATION_FAILED",
    )
    .await;
    // A role in use cannot be deleted; once unassigned it can.
    expect_error(
        app.delete(&path, &app.owner_key).await,
        StatusCode::CONFLICT,
        "CONFLICT",
    )
    .await;
    app.put(
        &format!("/v1/users/{user_id}/roles"),
        &app.owner_key,
        json!({"roles": ["viewer"]}),
    )
    .await;
    assert_eq!(
        app.delete(&path, &app.owner_key).await.status(),
        StatusCode::NO_CONTENT
    );
}

async fn nobody_grants_what_they_do_not_hold(app: TestApp) {
    // A custom "user manager" may manage users but holds no keys:admin.
    let res = app
        .post(
            "/v1/roles",
            &app.owner_key,
            json!({"name": "hr", "permissions": ["users:read", "users:write", "models:read"]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let (_, hr_key) = app.add_user("hr@example.com", &["hr"]).await;
    let res = app
        .post(
            "/v1/users",
            &hr_key,
            json!({"email": "x@example.com", "roles": ["owner"]}),
        )
        .await;
    expect_error(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    let res = app
        .post(
            "/v1/users",
            &hr_key,
            json!({"email": "y@example.com", "roles": ["hr"]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    // And a developer cannot touch users or roles at all.
    let (_, dev_key) = app.add_user("dev@example.com", &["developer"]).await;
    expect_error(
        app.get("/v1/users", &dev_key).await,
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
    )
    .await;
    expect_error(
        app.get("/v1/roles", &dev_key).await,
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
    )
    .await;
}

async fn the_last_owner_stays(app: TestApp) {
    let path = format!("/v1/users/{}/roles", app.owner_id);
    expect_error(
        app.put(&path, &app.owner_key, json!({"roles": ["admin"]}))
            .await,
        StatusCode::CONFLICT,
        "CONFLICT",
    )
    .await;
    expect_error(
        app.delete(&format!("/v1/users/{}", app.owner_id), &app.owner_key)
            .await,
        StatusCode::CONFLICT,
        "CONFLICT",
    )
    .await;
    // With a second owner, the first may step down.
    let (_, _) = app.add_user("owner2@example.com", &["owner"]).await;
    assert_eq!(
        app.put(&path, &app.owner_key, json!({"roles": ["admin"]}))
            .await
            .status(),
        StatusCode::OK
    );
}

async fn removing_a_user_revokes_their_keys(app: TestApp) {
    let (user_id, key) = app.add_user("leaver@example.com", &["developer"]).await;
    assert_eq!(
        app.chat(&key, chat_body("mock-chat")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.delete(&format!("/v1/users/{user_id}"), &app.owner_key)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    expect_error(
        app.chat(&key, chat_body("mock-chat")).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_REVOKED",
    )
    .await;
    expect_error(
        app.get(&format!("/v1/users/{user_id}"), &app.owner_key)
            .await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    )
    .await;
    // Re-adding the same email makes them a member again (with no keys).
    let res = app
        .post(
            "/v1/users",
            &app.owner_key,
            json!({"email": "leaver@example.com"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let again: Value = res.json().await.unwrap();
    assert_eq!(again["id"], user_id.as_str());
    assert_eq!(again["roles"], json!(["developer"]));
    expect_error(
        app.post(
            "/v1/users",
            &app.owner_key,
            json!({"email": "leaver@example.com"}),
        )
        .await,
        StatusCode::CONFLICT,
        "CONFLICT",
    )
    .await;
    expect_error(
        app.post(
            "/v1/users",
            &app.owner_key,
            json!({"email": "not-an-email"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "VALIDATION_FAILED",
    )
    .await;
}

async fn users_and_roles_of_another_tenant_are_not_found(app: TestApp) {
    let (_, other_owner) = app.other_tenant("globex").await;
    let res = app
        .post(
            "/v1/roles",
            &app.owner_key,
            json!({"name": "secret-role", "permissions": ["models:read"]}),
        )
        .await;
    let role: Value = res.json().await.unwrap();
    let role_path = format!("/v1/roles/{}", role["id"].as_str().unwrap());
    let user_path = format!("/v1/users/{}", app.owner_id);
    for res in [
        app.get(&user_path, &other_owner).await,
        app.patch(&user_path, &other_owner, json!({"name": "x"}))
            .await,
        app.delete(&user_path, &other_owner).await,
        app.put(
            &format!("{user_path}/roles"),
            &other_owner,
            json!({"roles": ["viewer"]}),
        )
        .await,
        app.patch(&role_path, &other_owner, json!({"name": "x"}))
            .await,
        app.delete(&role_path, &other_owner).await,
    ] {
        expect_error(res, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    }
    let users: Value = app
        .get("/v1/users", &other_owner)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(users["data"].as_array().unwrap().len(), 1);
    assert!(!users.to_string().contains(OWNER_EMAIL));
    // A role of tenant A cannot be assigned in tenant B.
    let res = app
        .post(
            "/v1/users",
            &other_owner,
            json!({"email": "z@example.com", "roles": ["secret-role"]}),
        )
        .await;
    expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
}

async fn tenants_are_for_the_platform_owner(app: TestApp) {
    let (tenant_id, other_owner) = app.other_tenant("initech").await;
    let list: Value = app
        .get("/v1/tenants", &app.owner_key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    // The new tenant's owner is not the platform owner.
    expect_error(
        app.get("/v1/tenants", &other_owner).await,
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
    )
    .await;
    let me: Value = app.get("/v1/me", &other_owner).await.json().await.unwrap();
    assert_eq!(me["tenant_id"], tenant_id.as_str());
    expect_error(
        app.post("/v1/tenants", &app.owner_key, json!({"name": "initech"}))
            .await,
        StatusCode::CONFLICT,
        "CONFLICT",
    )
    .await;
    expect_error(
        app.post("/v1/tenants", &app.owner_key, json!({"name": ""}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "VALIDATION_FAILED",
    )
    .await;
}

async fn me_describes_the_caller(app: TestApp) {
    let (user_id, key) = app.add_user("viewer@example.com", &["viewer"]).await;
    let me: Value = app.get("/v1/me", &key).await.json().await.unwrap();
    assert_eq!(me["tenant_id"], app.tenant_id.as_str());
    assert_eq!(me["user_id"], user_id.as_str());
    assert_eq!(me["credential"]["type"], "api_key");
    assert!(me["credential"]["id"].as_str().unwrap().starts_with("key_"));
    assert_eq!(
        me["permissions"],
        json!(["models:read", "operations:read", "usage:read"])
    );
    expect_error(
        app.get("/v1/me", "").await,
        StatusCode::UNAUTHORIZED,
        "AUTH_MISSING",
    )
    .await;
}

async fn every_mutation_is_audited_in_a_valid_chain(app: TestApp) {
    let (user_id, _) = app.add_user("a@example.com", &["developer"]).await;
    app.put(
        &format!("/v1/users/{user_id}/roles"),
        &app.owner_key,
        json!({"roles": ["viewer"]}),
    )
    .await;
    let k = app.create_key(&app.owner_key, json!({"name": "k"})).await;
    app.delete(
        &format!("/v1/api-keys/{}", k["id"].as_str().unwrap()),
        &app.owner_key,
    )
    .await;
    let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT action, actor_type, request_id FROM audit_events WHERE tenant_id = $1 ORDER BY seq",
    )
    .bind(app.tenant_id.clone())
    .fetch_all(app.state.store.pool())
    .await
    .unwrap();
    let actions: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    for a in [
        "tenant.created",
        "user.added",
        "api_key.created",
        "user.roles_changed",
        "api_key.revoked",
    ] {
        assert!(actions.contains(&a), "{a} in {actions:?}");
    }
    // Events made through the API carry the request id and the acting user.
    let revoked = rows.iter().find(|r| r.0 == "api_key.revoked").unwrap();
    assert_eq!(revoked.1, "user");
    assert!(revoked.2.as_deref().unwrap_or_default().starts_with("req_"));
    let verified = tollgate::store::audit::verify(app.state.store.pool())
        .await
        .unwrap();
    assert!(verified.unwrap() >= 6);
}
