//! The admin console over HTTP, driven as a browser would (signed in through the console's own
//! flow, forms posted with the CSRF token): API keys (created and shown once, filters in the URL,
//! rotation with a grace period, revocation cutting a stream the confirmation counted), people
//! and roles (the last-owner rule, roles limited to what one holds); every action writes the
//! same audit event as the API; a caller without the permission sees no control and a forged
//! POST is 403; another tenant's objects are 404.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::console_support::{Browser, input_value};
use crate::helpers::{Db, TestApp, chat_body};

/// The secret shown in the one-time panel, if the page has one.
fn shown_secret(html: &str) -> Option<String> {
    let needle = "<code id=\"new-secret\">";
    let i = html.find(needle)? + needle.len();
    Some(html[i..i + html[i..].find('<').unwrap()].to_string())
}

/// Signs `user_id` in with a one-time console link (as `tollgate init` does for the owner).
async fn browser_for(app: &TestApp, user_id: &str) -> Browser {
    let link = tollgate::console::session::issue_link(
        &app.state.store,
        &app.state.config.public_url,
        user_id,
    )
    .await
    .unwrap();
    let mut b = Browser::new(app);
    let page = b.get(&link).await;
    assert_eq!(page.status, StatusCode::OK);
    let token = input_value(&page.body, "token");
    let page = b.submit("/console/link", &[("token", &token)]).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    b
}

/// The tenant's audit events of `action`, newest first.
async fn events(app: &TestApp, action: &str) -> Vec<Value> {
    let res = app
        .get(&format!("/v1/audit-events?action={action}"), &app.owner_key)
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let v: Value = res.json().await.unwrap();
    v["data"].as_array().unwrap().clone()
}

fn assert_event(ev: &[Value], target: &str, actor: &str) {
    assert!(
        ev.iter()
            .any(|e| e["target"]["id"] == target && e["actor"]["id"] == actor),
        "no event on {target} by {actor}: {ev:?}"
    );
}

async fn key_status(app: &TestApp, id: &str) -> Value {
    app.get(&format!("/v1/api-keys/{id}"), &app.owner_key)
        .await
        .json()
        .await
        .unwrap()
}

// ---- API keys ----------------------------------------------------------------------------------

#[tokio::test]
async fn keys_journey_shown_once_filters_rotate_and_revoke_cutting_a_stream() {
    keys_journey(TestApp::spawn(Db::Sqlite).await).await;
}

#[tokio::test]
async fn keys_journey_on_postgres() {
    let Some(app) = TestApp::try_spawn(Db::Postgres).await else {
        return;
    };
    keys_journey(app).await;
}

async fn keys_journey(app: TestApp) {
    let mut owner = browser_for(&app, &app.owner_id).await;
    let (member_id, _) = app.add_user("dev@example.com", &["developer"]).await;

    let page = owner.get("/console/admin/keys").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Create a key"));
    assert!(
        page.body.contains("name=\"user_id\""),
        "keys:admin picks an owner"
    );

    // A validation error is shown next to its field, nothing is created.
    let created_before = events(&app, "api_key.created").await.len();
    let page = owner
        .submit(
            "/console/admin/keys",
            &[("name", "bad"), ("requests_per_minute", "-3")],
        )
        .await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.body.contains("id=\"k-limits-error\" role=\"alert\""));
    assert_eq!(events(&app, "api_key.created").await.len(), created_before);

    // Create a scoped key with a limit; it is shown once, on the page the browser goes to.
    let page = owner
        .submit(
            "/console/admin/keys",
            &[
                ("name", "ci-key"),
                ("user_id", &app.owner_id),
                ("scoped", "1"),
                ("scope", "chat:write"),
                ("scope", "models:read"),
                ("requests_per_minute", "100"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let key_page = page.location.unwrap();
    let key_id = key_page.rsplit('/').next().unwrap().to_string();
    let page = owner.get(&key_page).await;
    assert_eq!(page.status, StatusCode::OK);
    let secret = shown_secret(&page.body).expect("the key, once");
    assert!(secret.starts_with("tgk_"));
    assert!(page.body.contains("data-copy=\"new-secret\""));
    let again = owner.get(&key_page).await;
    assert!(!again.body.contains(&secret), "shown exactly once");
    let list = owner.get("/console/admin/keys").await;
    assert!(!list.body.contains(&secret));
    assert!(list.body.contains("ci-key"));
    // Another key's page opened first neither shows a new key's secret nor loses it.
    let page = owner
        .submit(
            "/console/admin/keys",
            &[("name", "second"), ("user_id", &app.owner_id)],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let second_page = page.location.unwrap();
    let elsewhere = owner.get(&key_page).await;
    assert_eq!(shown_secret(&elsewhere.body), None);
    let second = owner.get(&second_page).await;
    let second_secret = shown_secret(&second.body).expect("its secret, still once");
    assert!(second_secret.starts_with("tgk_") && second_secret != secret);
    assert_eq!(shown_secret(&owner.get(&second_page).await.body), None);
    // The key works, with the settings of the form; the API wrote the same event.
    assert_eq!(
        app.chat(&secret, chat_body("fake-model")).await.status(),
        StatusCode::OK
    );
    let rec = key_status(&app, &key_id).await;
    assert_eq!(rec["scopes"], json!(["chat:write", "models:read"]));
    assert_eq!(rec["rate_limit"]["requests_per_minute"], 100);
    assert_event(
        &events(&app, "api_key.created").await,
        &key_id,
        &app.owner_id,
    );
    // The key's page charts its own requests.
    assert!(crate::helpers::wait_usage_records(&app, 1).await);
    let page = owner.get(&key_page).await;
    assert!(page.body.contains("data-requests=\"1\""), "{}", page.body);
    assert!(page.body.contains("1 request,"));

    // A member's key, expiring in five days, made by the owner for them.
    let soon = chrono_date(5);
    let page = owner
        .submit(
            "/console/admin/keys",
            &[
                ("name", "member-expiring"),
                ("user_id", &member_id),
                ("expires_on", &soon),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let member_key = page
        .location
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(key_status(&app, &member_key).await["user_id"], member_id);

    // Filters in the URL.
    tollgate::store::keys::touch_last_used(
        &app.state.store,
        &[(key_id.clone(), tollgate::util::now_ms())],
    )
    .await
    .unwrap();
    let page = owner.get("/console/admin/keys?expiring=7").await;
    assert!(page.body.contains("member-expiring") && !page.body.contains(">ci-key<"));
    let page = owner.get("/console/admin/keys?unused=1").await;
    assert!(page.body.contains("member-expiring") && !page.body.contains(">ci-key<"));
    let page = owner
        .get(&format!("/console/admin/keys?owner={member_id}"))
        .await;
    assert!(page.body.contains("member-expiring") && !page.body.contains(">ci-key<"));
    assert!(
        page.body
            .contains(&format!("value=\"{member_id}\" selected"))
    );
    let page = owner
        .get("/console/admin/keys?sort=name&status=active")
        .await;
    let (a, b) = (
        page.body.find(">ci-key<").unwrap(),
        page.body.find(">member-expiring<").unwrap(),
    );
    assert!(a < b, "sorted by name");
    assert!(page.body.contains("value=\"name\" selected"));

    // Rotate with a one-hour grace: the new secret is shown once, both work meanwhile.
    let page = owner
        .submit(
            &format!("/console/admin/keys/{key_id}/rotate"),
            &[("grace_period_seconds", "3600")],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let page = owner.get(page.location.as_deref().unwrap()).await;
    let rotated = shown_secret(&page.body).expect("the new secret, once");
    assert_ne!(rotated, secret);
    assert!(page.body.contains("old secret works until"));
    assert!(shown_secret(&owner.get(&key_page).await.body).is_none());
    for k in [&secret, &rotated] {
        assert_eq!(
            app.chat(k, chat_body("fake-model")).await.status(),
            StatusCode::OK
        );
    }
    let ev = events(&app, "api_key.rotated").await;
    assert_event(&ev, &key_id, &app.owner_id);
    assert_eq!(ev[0]["details"]["grace_period_seconds"], 3600);
    // A grace beyond 30 days is refused next to the field.
    let page = owner
        .submit(
            &format!("/console/admin/keys/{key_id}/rotate"),
            &[("grace_period_seconds", "99999999")],
        )
        .await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.body.contains("id=\"rotate-error\" role=\"alert\""));

    // Revoke while a stream is using the key: the confirmation counts it, the stream is cut.
    let mut body = chat_body("fake-model");
    body["stream"] = json!(true);
    body["fake"] = json!({"chunks": 200, "chunk_delay_ms": 50});
    let mut res = app.chat(&rotated, body).await;
    assert_eq!(res.status(), StatusCode::OK);
    res.chunk().await.unwrap().unwrap();
    let page = owner
        .get(&format!("/console/admin/keys/{key_id}/revoke"))
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("1 request is using it right now"),
        "{}",
        page.body
    );
    assert!(page.body.contains("will be cut"));
    let page = owner
        .submit(&format!("/console/admin/keys/{key_id}/revoke"), &[])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let mut rest = String::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(5), res.chunk())
        .await
        .unwrap()
        .unwrap()
    {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        rest.contains("event: error") && rest.contains("AUTH_REVOKED"),
        "{rest}"
    );
    assert!(key_status(&app, &key_id).await["revoked_at"].is_string());
    assert_event(
        &events(&app, "api_key.revoked").await,
        &key_id,
        &app.owner_id,
    );
    let page = owner.get("/console/admin/keys?status=revoked").await;
    assert!(page.body.contains(">ci-key<") && !page.body.contains("member-expiring"));
    app.shutdown().await;
}

/// `YYYY-MM-DD`, `days` from now (UTC).
fn chrono_date(days: i64) -> String {
    tollgate::util::rfc3339(tollgate::util::now_ms() + days * 86_400_000)[..10].to_string()
}

#[tokio::test]
async fn without_the_permission_no_control_is_shown_and_a_forged_post_is_403() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let owner_key = app
        .create_key(&app.owner_key, json!({"name": "owner-only-key"}))
        .await;
    let owner_key_id = owner_key["id"].as_str().unwrap().to_string();
    let (viewer_id, _) = app.add_user("viewer@example.com", &["viewer"]).await;
    let (dev_id, _) = app.add_user("dev@example.com", &["developer"]).await;

    // A viewer (usage:read): the usage dashboard only; no other page, every forged POST
    // refused and nothing done.
    let mut viewer = browser_for(&app, &viewer_id).await;
    let page = viewer.get("/console/admin/usage").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains("href=\"/console/admin/keys\""));
    assert!(!page.body.contains("href=\"/console/admin/people\""));
    assert_eq!(
        viewer.get("/console/admin/keys").await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        viewer.get("/console/admin/people").await.status,
        StatusCode::FORBIDDEN
    );
    let created_before = events(&app, "api_key.created").await.len();
    let added_before = events(&app, "user.added").await.len();
    for (path, form) in [
        ("/console/admin/keys", vec![("name", "forged")]),
        (
            &*format!("/console/admin/keys/{owner_key_id}/revoke"),
            vec![],
        ),
        (
            &*format!("/console/admin/keys/{owner_key_id}/rotate"),
            vec![("grace_period_seconds", "0")],
        ),
        (
            "/console/admin/people",
            vec![("email", "x@example.com"), ("role", "owner")],
        ),
        (
            &*format!("/console/admin/people/{viewer_id}/roles"),
            vec![("role", "owner")],
        ),
        (&*format!("/console/admin/people/{dev_id}/remove"), vec![]),
        (
            "/console/admin/roles",
            vec![("name", "x"), ("permission", "models:read")],
        ),
    ] {
        let page = viewer.submit(path, &form).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{path}");
    }
    assert_eq!(events(&app, "api_key.created").await.len(), created_before);
    assert!(key_status(&app, &owner_key_id).await["revoked_at"].is_null());
    assert_eq!(events(&app, "user.added").await.len(), added_before);
    assert!(events(&app, "role.created").await.is_empty());

    // A developer (keys:write): their own keys only, no owner picker, no people or roles;
    // another member's key is 404 as at the API.
    let mut dev = browser_for(&app, &dev_id).await;
    let page = dev.get("/console/admin/keys").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains("name=\"user_id\""));
    assert!(!page.body.contains("owner-only-key"));
    assert!(!page.body.contains("href=\"/console/admin/people\""));
    assert_eq!(
        dev.get(&format!("/console/admin/keys/{owner_key_id}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let page = dev
        .submit(&format!("/console/admin/keys/{owner_key_id}/revoke"), &[])
        .await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    assert!(key_status(&app, &owner_key_id).await["revoked_at"].is_null());
    // Naming another owner is keys:admin's: 403, shown on the form.
    let page = dev
        .submit(
            "/console/admin/keys",
            &[("name", "for the owner"), ("user_id", &app.owner_id)],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    // Scopes beyond what the developer holds are refused.
    let page = dev
        .submit(
            "/console/admin/keys",
            &[("name", "wide"), ("scoped", "1"), ("scope", "users:write")],
        )
        .await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.body.contains("id=\"k-scopes-error\" role=\"alert\""));
    // Their own key works.
    let page = dev.submit("/console/admin/keys", &[("name", "mine")]).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let id = page
        .location
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    assert_event(&events(&app, "api_key.created").await, &id, &dev_id);
    assert_eq!(
        dev.get("/console/admin/people").await.status,
        StatusCode::FORBIDDEN
    );
    app.shutdown().await;
}

// ---- people and roles ---------------------------------------------------------------------------

#[tokio::test]
async fn people_add_change_roles_remove_and_the_last_owner_rule() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let mut owner = browser_for(&app, &app.owner_id).await;
    let page = owner.get("/console/admin/people").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Add a member"));

    // Add: a bad address is shown next to its field.
    let page = owner
        .submit(
            "/console/admin/people",
            &[("email", "not-an-address"), ("role", "developer")],
        )
        .await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.body.contains("id=\"p-email-error\" role=\"alert\""));
    let page = owner
        .submit(
            "/console/admin/people",
            &[
                ("email", "ada@example.com"),
                ("name", "Ada"),
                ("role", "developer"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let person = page.location.unwrap();
    let ada = person
        .split('?')
        .next()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    assert_event(&events(&app, "user.added").await, &ada, &app.owner_id);
    let page = owner.get(&person).await;
    assert!(page.body.contains("ada@example.com") && page.body.contains("developer"));

    // Change roles (as PUT /v1/users/{id}/roles).
    let page = owner
        .submit(
            &format!("/console/admin/people/{ada}/roles"),
            &[("role", "viewer"), ("role", "developer")],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let user: Value = app
        .get(&format!("/v1/users/{ada}"), &app.owner_key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(user["roles"], json!(["developer", "viewer"]));
    assert_event(
        &events(&app, "user.roles_changed").await,
        &ada,
        &app.owner_id,
    );

    // The last owner: explained on their page and the removal page; refused with the reason.
    let me = format!("/console/admin/people/{}", app.owner_id);
    let page = owner.get(&me).await;
    assert!(page.body.contains("the tenant's last owner"));
    assert!(!page.body.contains(&format!("{me}/remove\"")));
    let page = owner.get(&format!("{me}/remove")).await;
    assert!(page.body.contains("always keeps at least one owner"));
    assert!(!page.body.contains("Remove the member"));
    let page = owner.submit(&format!("{me}/remove"), &[]).await;
    assert_eq!(page.status, StatusCode::CONFLICT);
    assert!(page.body.contains("Make another member an owner first"));
    let page = owner
        .submit(&format!("{me}/roles"), &[("role", "admin")])
        .await;
    assert_eq!(page.status, StatusCode::CONFLICT);
    assert!(page.body.contains("Make another member an owner first"));
    assert!(events(&app, "user.removed").await.is_empty());

    // An admin does not get the owner's controls; the owner role is not grantable for them.
    let (admin_id, _) = app.add_user("admin@example.com", &["admin"]).await;
    let mut admin = browser_for(&app, &admin_id).await;
    let page = admin.get(&me).await;
    assert!(page.body.contains("only an owner can change an owner"));
    assert!(!page.body.contains(&format!("{me}/roles\"")));
    let page = admin.get("/console/admin/people").await;
    assert!(page.body.contains("value=\"owner\" disabled"));
    let page = admin.submit(&format!("{me}/remove"), &[]).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    let page = admin
        .submit(
            &format!("/console/admin/people/{ada}/roles"),
            &[("role", "owner")],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(page.body.contains("role=\"alert\""));

    // Remove a member: their keys are revoked.
    let key = app
        .create_key(&app.owner_key, json!({"name": "ada's", "user_id": ada}))
        .await;
    let page = owner
        .get(&format!("/console/admin/people/{ada}/remove"))
        .await;
    assert!(page.body.contains("1 active API key of theirs"));
    let page = owner
        .submit(&format!("/console/admin/people/{ada}/remove"), &[])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert_event(&events(&app, "user.removed").await, &ada, &app.owner_id);
    assert!(key_status(&app, key["id"].as_str().unwrap()).await["revoked_at"].is_string());
    assert_eq!(
        owner
            .get(&format!("/console/admin/people/{ada}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    app.shutdown().await;
}

#[tokio::test]
async fn custom_roles_offer_only_held_permissions() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let mut owner = browser_for(&app, &app.owner_id).await;
    let page = owner
        .submit(
            "/console/admin/roles",
            &[
                ("name", "role-admin"),
                ("description", "manages roles"),
                ("permission", "roles:write"),
                ("permission", "users:read"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let ev = events(&app, "role.created").await;
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["actor"]["id"], app.owner_id);
    let role_id = ev[0]["target"]["id"].as_str().unwrap().to_string();
    // A built-in name is refused next to the field.
    let page = owner
        .submit(
            "/console/admin/roles",
            &[("name", "Owner"), ("permission", "models:read")],
        )
        .await;
    assert_eq!(page.status, StatusCode::CONFLICT);
    assert!(page.body.contains("id=\"r-name-error\" role=\"alert\""));

    // A holder of that role sees only those two permissions, and cannot give another.
    let (uid, _) = app.add_user("roles@example.com", &["role-admin"]).await;
    let mut b = browser_for(&app, &uid).await;
    let page = b.get("/console/admin/roles").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("value=\"roles:write\""));
    assert!(page.body.contains("value=\"users:read\""));
    assert!(
        !page
            .body
            .contains("name=\"permission\" value=\"keys:admin\"")
    );
    assert!(page.body.contains("you do not hold"));
    let page = b
        .submit(
            "/console/admin/roles",
            &[("name", "sneaky"), ("permission", "keys:admin")],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(page.body.contains("id=\"r-perms-error\" role=\"alert\""));
    assert_eq!(events(&app, "role.created").await.len(), 1);

    // Edit, then delete once nobody holds it.
    let page = owner
        .submit(
            &format!("/console/admin/roles/{role_id}"),
            &[
                ("name", "role-admin"),
                ("permission", "roles:write"),
                ("permission", "users:read"),
                ("permission", "usage:read"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert_event(&events(&app, "role.updated").await, &role_id, &app.owner_id);
    let page = owner
        .submit(&format!("/console/admin/roles/{role_id}/delete"), &[])
        .await;
    assert_eq!(page.status, StatusCode::CONFLICT);
    assert!(page.body.contains("held by 1"));
    app.delete(&format!("/v1/users/{uid}"), &app.owner_key)
        .await;
    let page = owner
        .submit(&format!("/console/admin/roles/{role_id}/delete"), &[])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert_event(&events(&app, "role.deleted").await, &role_id, &app.owner_id);
    app.shutdown().await;
}

#[tokio::test]
async fn another_tenants_objects_are_404() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let (_, other_key) = app.other_tenant("elsewhere").await;
    let foreign = app.create_key(&other_key, json!({"name": "foreign"})).await;
    let foreign_id = foreign["id"].as_str().unwrap().to_string();
    let me: Value = app.get("/v1/me", &other_key).await.json().await.unwrap();
    let foreign_user = me["user_id"].as_str().unwrap().to_string();
    let role: Value = app
        .post(
            "/v1/roles",
            &other_key,
            json!({"name": "theirs", "permissions": ["models:read"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let foreign_role = role["id"].as_str().unwrap().to_string();

    let mut owner = browser_for(&app, &app.owner_id).await;
    for path in [
        format!("/console/admin/keys/{foreign_id}"),
        format!("/console/admin/keys/{foreign_id}/revoke"),
        format!("/console/admin/people/{foreign_user}"),
        format!("/console/admin/people/{foreign_user}/remove"),
        format!("/console/admin/roles/{foreign_role}"),
    ] {
        assert_eq!(
            owner.get(&path).await.status,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    for (path, form) in [
        (format!("/console/admin/keys/{foreign_id}/revoke"), vec![]),
        (
            format!("/console/admin/keys/{foreign_id}/rotate"),
            vec![("grace_period_seconds", "0")],
        ),
        (
            format!("/console/admin/people/{foreign_user}/roles"),
            vec![("role", "viewer")],
        ),
        (
            format!("/console/admin/people/{foreign_user}/remove"),
            vec![],
        ),
        (
            format!("/console/admin/roles/{foreign_role}"),
            vec![("name", "mine"), ("permission", "models:read")],
        ),
        (
            format!("/console/admin/roles/{foreign_role}/delete"),
            vec![],
        ),
    ] {
        let page = owner.submit(&path, &form).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND, "{path}");
    }
    let rec: Value = app
        .get(&format!("/v1/api-keys/{foreign_id}"), &other_key)
        .await
        .json()
        .await
        .unwrap();
    assert!(rec["revoked_at"].is_null());
    app.shutdown().await;
}

// ---- OAuth clients and identity providers -------------------------------------------------------

#[tokio::test]
async fn oauth_clients_secret_shown_once_and_revoked() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let mut owner = browser_for(&app, &app.owner_id).await;
    // A public client needs a redirect URI: said next to the field.
    let page = owner
        .submit("/console/admin/clients", &[("name", "spa")])
        .await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.body.contains("id=\"c-uris-error\" role=\"alert\""));
    let page = owner
        .submit(
            "/console/admin/clients",
            &[
                ("name", "batch job"),
                ("confidential", "1"),
                ("role", "viewer"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let page = owner.get(page.location.as_deref().unwrap()).await;
    let secret = shown_secret(&page.body).expect("the client secret, once");
    assert!(secret.starts_with("tgcs_"));
    let ev = events(&app, "oauth_client.created").await;
    let client_id = ev
        .iter()
        .find(|e| e["details"]["name"] == "batch job")
        .map(|e| e["target"]["id"].as_str().unwrap().to_string())
        .unwrap();
    assert!(
        ev.iter()
            .any(|e| e["target"]["id"] == client_id && e["actor"]["id"] == app.owner_id)
    );
    assert!(
        !owner
            .get("/console/admin/clients")
            .await
            .body
            .contains(&secret)
    );
    // The secret works with the client-credentials grant.
    let res = crate::oauth_support::with_form(
        app.client.post(app.url("/oauth/token")),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", client_id.as_str()),
            ("client_secret", secret.as_str()),
        ],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let page = owner
        .submit(&format!("/console/admin/clients/{client_id}/revoke"), &[])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_event(
        &events(&app, "oauth_client.revoked").await,
        &client_id,
        &app.owner_id,
    );
    // tenant:admin only: an admin of keys (developer) sees no link, and a forged POST is 403.
    let (dev_id, _) = app.add_user("dev@example.com", &["developer"]).await;
    let mut dev = browser_for(&app, &dev_id).await;
    let page = dev.get("/console/admin/keys").await;
    assert!(!page.body.contains("href=\"/console/admin/clients\""));
    assert_eq!(
        dev.get("/console/admin/clients").await.status,
        StatusCode::FORBIDDEN
    );
    let page = dev
        .submit(
            "/console/admin/clients",
            &[("name", "x"), ("confidential", "1")],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_providers_and_the_token_test_say_why() {
    use crate::identity::{jwks_server, rsa_jwk, sign_rs256, spawn_allowing};
    let doc = std::sync::Arc::new(std::sync::Mutex::new(json!({"keys": []})));
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let jwks_url = jwks_server(doc.clone(), hits).await;
    let app = spawn_allowing(Db::Sqlite, &jwks_url).await.unwrap();
    let k1 = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    *doc.lock().unwrap() = json!({"keys": [rsa_jwk(&k1, "k1")]});
    let issuer = "https://idp.example.com";
    let mut owner = browser_for(&app, &app.owner_id).await;

    // A refused JWKS URL is said next to its field.
    let page = owner
        .submit(
            "/console/admin/identity-providers",
            &[
                ("issuer", issuer),
                ("jwks_url", "http://10.0.0.1/jwks.json"),
                ("audience", "tollgate-acme"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.body.contains("id=\"i-jwks-error\" role=\"alert\""));
    let page = owner
        .submit(
            "/console/admin/identity-providers",
            &[
                ("issuer", issuer),
                ("jwks_url", &jwks_url),
                ("audience", "tollgate-acme"),
                ("claim", "email"),
                ("default_role", "viewer"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let ev = events(&app, "identity_provider.created").await;
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["actor"]["id"], app.owner_id);

    let now = tollgate::util::now_ms() / 1000;
    let claims = |aud: &str, exp: i64| {
        json!({"iss": issuer, "aud": aud, "sub": "ext-1", "email": "stranger@example.com",
               "exp": exp, "iat": now})
    };
    let body = test_token(&mut owner, "not a token".into()).await;
    assert!(body.contains("not a well-formed JWT"), "{body}");
    let mut other = claims("tollgate-acme", now + 600);
    other["iss"] = json!("https://other.example.com");
    let body = test_token(&mut owner, sign_rs256(&k1, "k1", &other)).await;
    assert!(body.contains("no identity provider of this tenant has the issuer"));
    let body = test_token(
        &mut owner,
        sign_rs256(&k1, "k1", &claims("someone-else", now + 600)),
    )
    .await;
    assert!(
        body.contains("is not the registered audience (tollgate-acme)"),
        "{body}"
    );
    let body = test_token(
        &mut owner,
        sign_rs256(&k1, "k1", &claims("tollgate-acme", now - 600)),
    )
    .await;
    assert!(
        body.contains("Refused") && body.contains("(in the past)"),
        "{body}"
    );
    let body = test_token(
        &mut owner,
        sign_rs256(&k1, "k9", &claims("tollgate-acme", now + 600)),
    )
    .await;
    assert!(body.contains("unknown key"), "{body}");
    let body = test_token(
        &mut owner,
        sign_rs256(&k1, "k1", &claims("tollgate-acme", now + 600)),
    )
    .await;
    assert!(body.contains("Accepted"), "{body}");
    assert!(body.contains("default role"));
    assert!(body.contains("models:read operations:read usage:read"));

    // Delete: its tokens stop working.
    let reg = ev[0]["target"]["id"].as_str().unwrap().to_string();
    let page = owner
        .submit(
            &format!("/console/admin/identity-providers/{reg}/delete"),
            &[],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(events(&app, "identity_provider.deleted").await.len(), 1);
    let body = test_token(
        &mut owner,
        sign_rs256(&k1, "k1", &claims("tollgate-acme", now + 600)),
    )
    .await;
    assert!(body.contains("no identity provider of this tenant"));
    app.shutdown().await;
}

/// Posts `token` to the identity providers' "test a token" box; the page.
async fn test_token(b: &mut Browser, token: String) -> String {
    let page = b
        .submit(
            "/console/admin/identity-providers/test",
            &[("token", &token)],
        )
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains(&token), "the token is not echoed");
    page.body
}

// ---- products, plans, subscriptions ------------------------------------------------------------

#[tokio::test]
async fn products_plans_and_every_subscription_with_suspend_reactivate_cancel() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let mut owner = browser_for(&app, &app.owner_id).await;
    // An unconfigured model is refused next to the field.
    let page = owner
        .submit(
            "/console/admin/products",
            &[("name", "Chat"), ("model", "no-such-model")],
        )
        .await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.body.contains("id=\"pr-models-error\" role=\"alert\""));
    let page = owner
        .submit(
            "/console/admin/products",
            &[("name", "Chat"), ("model", "fake-model")],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let ev = events(&app, "product.created").await;
    assert_eq!(ev[0]["actor"]["id"], app.owner_id);
    let product_id = ev[0]["target"]["id"].as_str().unwrap().to_string();
    let page = owner
        .submit(
            "/console/admin/plans",
            &[
                ("product_id", &product_id),
                ("name", "Starter"),
                ("requests_per_minute", "abc"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.body.contains("id=\"pl-limits-error\" role=\"alert\""));
    let page = owner
        .submit(
            "/console/admin/plans",
            &[
                ("product_id", &product_id),
                ("name", "Starter"),
                ("requests_per_minute", "60"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let ev = events(&app, "plan.created").await;
    assert_eq!(ev[0]["details"]["limits"]["requests_per_minute"], 60);
    let plan_id = ev[0]["target"]["id"].as_str().unwrap().to_string();
    let page = owner.get("/console/admin/products").await;
    assert!(page.body.contains("Starter") && page.body.contains("Publish Chat"));
    let page = owner
        .submit(
            &format!("/console/admin/products/{product_id}/publish"),
            &[("published", "1")],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert!(
        events(&app, "product.updated").await[0]["details"]["published"]
            .as_bool()
            .unwrap()
    );

    // A member's subscription (through the API), listed with suspend/reactivate/cancel.
    let (dev_id, dev_key) = app.add_user("dev@example.com", &["developer"]).await;
    let sub: Value = app
        .post(
            "/v1/subscriptions",
            &app.owner_key,
            json!({"plan_id": plan_id, "user_id": dev_id}),
        )
        .await
        .json()
        .await
        .unwrap();
    let sub_id = sub["id"].as_str().unwrap().to_string();
    let page = owner.get("/console/admin/subscriptions").await;
    assert!(page.body.contains(&sub_id) && page.body.contains("dev@example.com"));
    assert!(page.body.contains("Chat · Starter"));
    // A key bound to the subscription, from the keys page (the form names an owner too).
    let page = owner.get("/console/admin/keys").await;
    assert!(page.body.contains(&format!("<option value=\"{sub_id}\">")));
    let page = owner
        .submit(
            "/console/admin/keys",
            &[
                ("name", "sub-key"),
                ("user_id", &app.owner_id),
                ("subscription_id", &sub_id),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let sub_key = page
        .location
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let rec = key_status(&app, &sub_key).await;
    assert_eq!(rec["subscription_id"], sub_id);
    assert!(rec["user_id"].is_null());
    let page = owner
        .submit(
            &format!("/console/admin/subscriptions/{sub_id}/status"),
            &[("status", "suspended")],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_event(
        &events(&app, "subscription.suspended").await,
        &sub_id,
        &app.owner_id,
    );
    let page = owner
        .get("/console/admin/subscriptions?status=suspended")
        .await;
    assert!(page.body.contains(&sub_id) && page.body.contains("Reactivate"));
    assert!(
        !owner
            .get("/console/admin/subscriptions?status=active")
            .await
            .body
            .contains(&sub_id)
    );
    let page = owner
        .submit(
            &format!("/console/admin/subscriptions/{sub_id}/status"),
            &[("status", "active")],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_event(
        &events(&app, "subscription.updated").await,
        &sub_id,
        &app.owner_id,
    );
    let page = owner
        .submit(
            &format!("/console/admin/subscriptions/{sub_id}/cancel"),
            &[],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_event(
        &events(&app, "subscription.cancelled").await,
        &sub_id,
        &app.owner_id,
    );

    // A developer reads products but gets no create or publish control, and no subscriptions.
    let _ = dev_key;
    let mut dev = browser_for(&app, &dev_id).await;
    let page = dev.get("/console/admin/products").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains("Create a product") && !page.body.contains("Publish Chat"));
    for (path, form) in [
        (
            "/console/admin/products",
            vec![("name", "X"), ("model", "fake-model")],
        ),
        (
            &*format!("/console/admin/products/{product_id}/publish"),
            vec![("published", "0")],
        ),
        (
            "/console/admin/plans",
            vec![("product_id", product_id.as_str()), ("name", "Y")],
        ),
        (
            &*format!("/console/admin/subscriptions/{sub_id}/status"),
            vec![("status", "active")],
        ),
    ] {
        assert_eq!(
            dev.submit(path, &form).await.status,
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
    assert_eq!(
        dev.get("/console/admin/subscriptions").await.status,
        StatusCode::FORBIDDEN
    );
    // Another tenant's subscription is 404.
    let (_, other_key) = app.other_tenant("elsewhere").await;
    let p: Value = app
        .post(
            "/v1/products",
            &other_key,
            json!({"name": "Theirs", "models": ["fake-model"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let pl: Value = app
        .post(
            "/v1/plans",
            &other_key,
            json!({"product_id": p["id"], "name": "P"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let theirs: Value = app
        .post(
            "/v1/subscriptions",
            &other_key,
            json!({"plan_id": pl["id"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let theirs = theirs["id"].as_str().unwrap();
    for path in [
        format!("/console/admin/subscriptions/{theirs}/cancel"),
        format!(
            "/console/admin/products/{}/publish",
            p["id"].as_str().unwrap()
        ),
    ] {
        assert_eq!(
            owner.submit(&path, &[]).await.status,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    assert!(
        !owner
            .get("/console/admin/subscriptions")
            .await
            .body
            .contains(theirs)
    );
    app.shutdown().await;
}

// ---- usage ---------------------------------------------------------------------------------------

#[tokio::test]
async fn usage_dashboard_charts_real_requests_and_its_csv_matches_the_api() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let k = app
        .create_key(&app.owner_key, json!({"name": "busy"}))
        .await;
    let (key_id, key) = (
        k["id"].as_str().unwrap().to_string(),
        k["key"].as_str().unwrap().to_string(),
    );
    for _ in 0..3 {
        assert_eq!(
            app.chat(&key, chat_body("fake-model")).await.status(),
            StatusCode::OK
        );
    }
    assert!(crate::helpers::wait_usage_records(&app, 3).await);
    let mut owner = browser_for(&app, &app.owner_id).await;
    let page = owner
        .get("/console/admin/usage?range=1h&granularity=minute&group_by=api_key")
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("the whole tenant"));
    assert!(page.body.contains("value=\"api_key\" selected"));
    assert!(page.body.contains("data-label=\"Requests\""));
    assert!(page.body.contains("data-values=\"3\""), "{}", page.body);
    assert!(
        page.body
            .contains(&format!("href=\"/console/admin/keys/{key_id}\""))
    );
    assert!(page.body.contains("uplot-1.6.32.iife.min"));
    // The export holds what is shown, and matches /v1/usage with the same parameters.
    let csv_link = input_attr(&page.body, "href=\"/console/admin/usage.csv?");
    let res = owner.get(&csv_link).await;
    assert_eq!(res.status, StatusCode::OK);
    let lines: Vec<&str> = res.body.lines().collect();
    assert_eq!(
        lines[0],
        "start_time,end_time,api_key,requests,errors,prompt_tokens,completion_tokens,total_tokens,avg_latency_ms"
    );
    let from = (tollgate::util::now_ms() - 3_600_000) / 1000;
    let api: Value = app
        .get(
            &format!("/v1/usage?from={from}&granularity=minute&group_by=api_key"),
            &app.owner_key,
        )
        .await
        .json()
        .await
        .unwrap();
    let rows = api["data"].as_array().unwrap();
    assert_eq!(lines.len() - 1, rows.len());
    for r in rows {
        let line = format!(
            "{},{},{},{},{},{},{},{},{}",
            r["start_time"].as_str().unwrap(),
            r["end_time"].as_str().unwrap(),
            r["api_key"].as_str().unwrap_or_default(),
            r["requests"],
            r["errors"],
            r["prompt_tokens"],
            r["completion_tokens"],
            r["total_tokens"],
            r["avg_latency_ms"]
        );
        assert!(lines.contains(&line.as_str()), "{line} not in {lines:?}");
    }
    // Without usage:read: no dashboard, no export.
    let (uid, _) = app.add_user("nobody@example.com", &["consumer"]).await;
    let mut b = browser_for(&app, &uid).await;
    assert_eq!(
        b.get("/console/admin/usage").await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        b.get("/console/admin/usage.csv?range=1h").await.status,
        StatusCode::FORBIDDEN
    );
    app.shutdown().await;
}

/// The rest of an attribute that starts with `prefix` (e.g. a link), entities decoded.
fn input_attr(html: &str, prefix: &str) -> String {
    let i = html.find(prefix).unwrap_or_else(|| panic!("no {prefix}")) + prefix.len() - 1;
    let start = html[..i].rfind('"').unwrap() + 1;
    let end = i + html[i..].find('"').unwrap();
    unescape(&html[start..end])
}

/// Decodes the character references askama writes in attributes.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let j = i + rest[i..].find(';').unwrap();
        let ent = &rest[i + 1..j];
        out.push(match ent {
            "amp" => '&',
            "quot" => '"',
            "lt" => '<',
            "gt" => '>',
            e if e.starts_with("#x") => {
                char::from_u32(u32::from_str_radix(&e[2..], 16).unwrap()).unwrap()
            }
            e if e.starts_with('#') => char::from_u32(e[1..].parse().unwrap()).unwrap(),
            e => panic!("entity {e}"),
        });
        rest = &rest[j + 1..];
    }
    out.push_str(rest);
    out
}

// ---- spike alerts and the audit log ---------------------------------------------------------------

#[tokio::test]
async fn spike_alerts_link_their_key_and_the_audit_log_filters_pages_exports_and_verifies() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let k = app
        .create_key(&app.owner_key, json!({"name": "spiky"}))
        .await;
    let key_id = k["id"].as_str().unwrap().to_string();
    tollgate::alerts::raise(
        &app.state,
        tollgate::alerts::Spike {
            tenant_id: app.tenant_id.as_str().into(),
            api_key_id: key_id.as_str().into(),
            minute: tollgate::util::now_ms() / 60_000 * 60_000,
            requests: 500,
            baseline: 10.0,
            multiple: 10.0,
        },
    )
    .await;
    let mut owner = browser_for(&app, &app.owner_id).await;
    let page = owner.get("/console/admin/alerts").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body
            .contains(&format!("href=\"/console/admin/keys/{key_id}\">spiky</a>"))
    );
    assert!(
        page.body
            .contains(&format!("href=\"/console/admin/keys/{key_id}/revoke\""))
    );
    assert!(page.body.contains("<td>500</td>") && page.body.contains("<td>10.0</td>"));

    // Some events to filter: the journey of a key.
    for i in 0..3 {
        let page = owner
            .submit("/console/admin/keys", &[("name", &format!("k{i}"))])
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER);
    }
    let page = owner.get("/console/admin/audit").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("hx-get=\"/console/admin/audit/verify\""));
    assert!(page.body.contains("<code>api_key.created</code>"));
    assert!(page.body.contains("<code>alert.usage_spike</code>"));
    let page = owner
        .get(&format!(
            "/console/admin/audit?action=api_key.*&target={key_id}"
        ))
        .await;
    assert!(page.body.contains("value=\"api_key.*\""));
    assert_eq!(
        page.body.matches("<code>api_key.").count(),
        1,
        "only that key's"
    );
    let page = owner
        .get(&format!("/console/admin/audit?actor={}", app.owner_id))
        .await;
    assert!(
        !page.body.contains("<code>alert.usage_spike</code>"),
        "the system raised it"
    );
    // Cursor paging.
    let page = owner
        .get("/console/admin/audit?action=api_key.created&cursor=999999")
        .await;
    let rows = page.body.matches("<code>api_key.created</code>").count();
    assert!(rows >= 5, "{rows}");
    // Exports hold what the filters select, as the API gives it.
    let res = owner
        .get("/console/admin/audit.jsonl?action=api_key.created")
        .await;
    assert_eq!(res.status, StatusCode::OK);
    let lines: Vec<Value> = res
        .body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let api = events(&app, "api_key.created").await;
    assert_eq!(lines, api);
    let res = owner
        .get("/console/admin/audit.csv?action=api_key.created")
        .await;
    assert_eq!(res.body.lines().count(), api.len() + 1);
    assert!(
        res.body
            .starts_with("seq,id,ts,actor_type,actor_id,action,")
    );
    // The chain: verified, then the broken link after tampering with one row.
    let page = owner.get("/console/admin/audit/verify").await;
    assert!(
        page.body.contains("Chain verified through event"),
        "{}",
        page.body
    );
    let victim = &api[1];
    sqlx::query("UPDATE audit_events SET details = $1 WHERE id = $2")
        .bind(r#"{"name":"nothing to see"}"#)
        .bind(victim["id"].as_str().unwrap().to_string())
        .execute(app.state.store.pool())
        .await
        .unwrap();
    let page = owner.get("/console/admin/audit/verify").await;
    assert!(
        page.body
            .contains(&format!("The chain is broken at event {}", victim["seq"])),
        "{}",
        page.body
    );
    assert!(page.body.contains("altered"));
    // audit:read only.
    let (dev_id, _) = app.add_user("dev@example.com", &["developer"]).await;
    let mut dev = browser_for(&app, &dev_id).await;
    for path in [
        "/console/admin/audit",
        "/console/admin/audit/verify",
        "/console/admin/audit.csv",
        "/console/admin/audit.jsonl",
        "/console/admin/alerts",
    ] {
        assert_eq!(dev.get(path).await.status, StatusCode::FORBIDDEN, "{path}");
    }
    app.shutdown().await;
}
