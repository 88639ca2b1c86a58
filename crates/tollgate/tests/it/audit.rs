//! The audit log (SPEC §8): `GET /v1/audit-events` with filters and cursor pagination, and the
//! real `tollgate audit verify|export` binary against a tampered store.

use std::process::Command;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::store_tests;

store_tests!(
    audit_events_filter_and_paginate,
    tampering_is_found_by_audit_verify
);

async fn events(app: &TestApp, key: &str, query: &str) -> Value {
    let res = app.get(&format!("/v1/audit-events?{query}"), key).await;
    assert_eq!(res.status(), StatusCode::OK, "{query}");
    res.json().await.unwrap()
}

async fn audit_events_filter_and_paginate(app: TestApp) {
    let mut created = Vec::new();
    for i in 0..5 {
        let k = app
            .create_key(&app.owner_key, json!({"name": format!("k{i}")}))
            .await;
        created.push(k);
    }
    let revoked = created[0]["id"].as_str().unwrap();
    assert_eq!(
        app.delete(&format!("/v1/api-keys/{revoked}"), &app.owner_key)
            .await
            .status(),
        StatusCode::OK
    );

    // Prefix filter (action names contain `_`, matched literally), newest first, 2 per page.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("action=api_key.*&limit=2&cursor={c}"),
            None => "action=api_key.*&limit=2".to_string(),
        };
        let page = events(&app, &app.owner_key, &q).await;
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 2);
        for e in data {
            assert!(e["action"].as_str().unwrap().starts_with("api_key."));
            assert_eq!(e["tenant_id"], app.tenant_id.as_str());
            seen.push(e["seq"].as_i64().unwrap());
        }
        match page["next_cursor"].as_str() {
            Some(c) => {
                assert_eq!(page["has_more"], true);
                cursor = Some(c.to_string());
            }
            None => break,
        }
    }
    // init's key + 5 created + 1 revoked, each once, in descending order.
    assert_eq!(seen.len(), 7, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0] > w[1]));

    let page = events(&app, &app.owner_key, "action=api_key.revoked").await;
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    let e = &page["data"][0];
    assert_eq!(e["target"]["id"], revoked);
    assert_eq!(e["actor"]["type"], "user");
    assert_eq!(e["actor"]["id"], app.owner_id.as_str());
    assert!(e["request_id"].is_string() && e["hash"].is_string() && e["prev_hash"].is_string());

    // Actor and time filters.
    let page = events(&app, &app.owner_key, &format!("actor={}", app.owner_id)).await;
    assert!(page["data"].as_array().unwrap().len() >= 6);
    let future = tollgate::util::rfc3339(tollgate::util::now_ms() + 60_000);
    let page = events(&app, &app.owner_key, &format!("from={future}")).await;
    assert_eq!(page["data"].as_array().unwrap().len(), 0);
    let page = events(
        &app,
        &app.owner_key,
        &format!("to={future}&action=api_key.created"),
    )
    .await;
    assert_eq!(page["data"].as_array().unwrap().len(), 6);

    // No secret in any event.
    let all = events(&app, &app.owner_key, "limit=500").await.to_string();
    for k in &created {
        assert!(!all.contains(k["key"].as_str().unwrap()));
    }
    assert!(!all.contains(&app.owner_key));

    // Tenant isolation and permission.
    let (_, globex) = app.other_tenant("globex").await;
    let theirs = events(&app, &globex, "action=api_key.*").await;
    assert!(
        theirs["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["tenant_id"] != app.tenant_id.as_str())
    );
    let (_, dev) = app.add_user("dev@example.com", &["developer"]).await;
    let res = app.get("/v1/audit-events", &dev).await;
    expect_error(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    let res = app.get("/v1/audit-events?cursor=abc", &app.owner_key).await;
    expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
}

fn tollgate(args: &[&str], db_url: &str) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .args(["--database", db_url])
        .env_remove("TOLLGATE_CONFIG")
        .env_remove("TOLLGATE_DATABASE_URL")
        .env("RUST_LOG", "error")
        .output()
        .expect("run tollgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

async fn tampering_is_found_by_audit_verify(app: TestApp) {
    for i in 0..3 {
        app.create_key(&app.owner_key, json!({"name": format!("k{i}")}))
            .await;
    }
    let (code, out) = tollgate(&["audit", "verify"], &app.db_url);
    assert_eq!(code, 0, "{out}");
    let ok: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(ok["status"], "ok");
    let checked = ok["events_checked"].as_u64().unwrap();
    assert!(checked >= 5);

    // The export is JSON Lines, one per event, in chain order.
    let (code, out) = tollgate(&["audit", "export"], &app.db_url);
    assert_eq!(code, 0);
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len() as u64, checked);
    let (code, out) = tollgate(
        &["audit", "export", "--tenant", &app.tenant_id],
        &app.db_url,
    );
    assert_eq!(code, 0);
    let mine: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        mine.iter()
            .all(|e| e["tenant_id"] == app.tenant_id.as_str())
    );
    assert!(
        mine.windows(2)
            .all(|w| w[0]["seq"].as_i64() < w[1]["seq"].as_i64())
    );

    // Someone edits two events directly in the database: the first broken link is named.
    let victim = &mine[2];
    let later = &mine[4];
    for e in [later, victim] {
        sqlx::query("UPDATE audit_events SET details = $1 WHERE id = $2")
            .bind(r#"{"name":"nothing to see"}"#)
            .bind(e["id"].as_str().unwrap().to_string())
            .execute(app.state.store.pool())
            .await
            .unwrap();
    }
    let (code, out) = tollgate(&["audit", "verify"], &app.db_url);
    assert_ne!(code, 0, "verify must fail: {out}");
    let broken: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(broken["status"], "broken");
    assert_eq!(broken["tenant_id"], app.tenant_id.as_str());
    assert_eq!(broken["seq"], victim["seq"]);
    assert_eq!(broken["event_id"], victim["id"]);
    assert!(broken["reason"].as_str().unwrap().contains("altered"));

    // A deleted event is a broken link too.
    sqlx::query("UPDATE audit_events SET details = $1 WHERE id = $2")
        .bind(victim["details"].to_string())
        .bind(victim["id"].as_str().unwrap().to_string())
        .execute(app.state.store.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE audit_events SET details = $1 WHERE id = $2")
        .bind(later["details"].to_string())
        .bind(later["id"].as_str().unwrap().to_string())
        .execute(app.state.store.pool())
        .await
        .unwrap();
    assert_eq!(tollgate(&["audit", "verify"], &app.db_url).0, 0, "restored");
    sqlx::query("DELETE FROM audit_events WHERE id = $1")
        .bind(later["id"].as_str().unwrap().to_string())
        .execute(app.state.store.pool())
        .await
        .unwrap();
    let (code, out) = tollgate(&["audit", "verify"], &app.db_url);
    assert_ne!(code, 0);
    let broken: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(broken["seq"], later["seq"]);
}
