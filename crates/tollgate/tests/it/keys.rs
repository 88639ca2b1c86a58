//! API keys (SPEC §2.1): format, storage, expiry, scopes, revocation, rotation, last use.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::store_tests;

store_tests!(created_key_is_shown_once_and_works);

async fn created_key_is_shown_once_and_works(app: TestApp) {
    let created = app
        .create_key(&app.owner_key, json!({"name": "production-integration"}))
        .await;
    let key = created["key"].as_str().unwrap();
    assert!(key.starts_with("tgk_") && key.len() == 4 + 38, "{key}");
    assert_eq!(created["hint"], &key[..10]);
    assert_eq!(created["name"], "production-integration");
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
    let _ = Duration::from_secs(0);
}
