//! Browser access (SPEC §2.5a): a subscription's allowed web origins, preflights answered for
//! them only, credentials refused from every other origin (API keys and platform tokens with a
//! message that says why), CORS headers on the answers a page must read.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::store_tests;
use crate::subs::*;

store_tests!(
    allowed_origins_are_validated_and_normalised,
    preflights_are_answered_only_for_allowed_origins,
    credentials_are_used_only_from_allowed_origins,
);

const APP: &str = "http://127.0.0.1:5173";
const EVIL: &str = "https://evil.example";

fn sub_path(id: &str) -> String {
    format!("/v1/subscriptions/{id}")
}

async fn preflight(app: &TestApp, path: &str, origin: &str, method: &str) -> reqwest::Response {
    app.client
        .request(Method::OPTIONS, app.url(path))
        .header("origin", origin)
        .header("access-control-request-method", method)
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap()
}

async fn allow(app: &TestApp, sub_id: &str, origins: Value) -> Value {
    let res = app
        .patch(
            &sub_path(sub_id),
            &app.owner_key,
            json!({"allowed_origins": origins}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.unwrap()
}

async fn allowed_origins_are_validated_and_normalised(app: TestApp) {
    // Default: no browser access.
    let sub = subscribe(&app, &["gpt-test"]).await;
    let v: Value = app
        .get(&sub_path(&sub.id), &app.owner_key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["allowed_origins"], json!([]));
    // Given at creation: normalised (host lower-cased, default port and trailing slash dropped),
    // duplicates dropped.
    let sub = subscribe_with(
        &app,
        &["gpt-test"],
        json!({"allowed_origins": ["https://App.Example.com:443/", "https://app.example.com", APP]}),
    )
    .await;
    let v: Value = app
        .get(&sub_path(&sub.id), &app.owner_key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["allowed_origins"],
        json!(["https://app.example.com", APP])
    );
    // Replaced by PATCH, and audited.
    let v = allow(&app, &sub.id, json!([APP])).await;
    assert_eq!(v["allowed_origins"], json!([APP]));
    let audit: Value = app
        .get(
            "/v1/audit-events?action=subscription.updated",
            &app.owner_key,
        )
        .await
        .json()
        .await
        .unwrap();
    let events = audit["data"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["details"]["changed"] == json!(["allowed_origins"])),
        "{audit}"
    );
    // Anything that is not an origin is refused, naming the field; nothing is changed.
    for bad in [
        json!(["*"]),
        json!(["null"]),
        json!(["app.example.com"]),
        json!(["https://app.example.com/path"]),
        json!(["https://user@app.example.com"]),
        json!(["ftp://app.example.com"]),
        Value::Array(
            (0..33)
                .map(|i| json!(format!("https://a{i}.example")))
                .collect(),
        ),
    ] {
        let res = app
            .patch(
                &sub_path(&sub.id),
                &app.owner_key,
                json!({"allowed_origins": bad}),
            )
            .await;
        let body = expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
        assert_eq!(body["error"]["param"], "allowed_origins", "{bad}");
    }
    // Not a list of strings: the body's shape is wrong.
    for bad in [json!([42]), json!("https://app.example.com")] {
        let res = app
            .patch(
                &sub_path(&sub.id),
                &app.owner_key,
                json!({"allowed_origins": bad}),
            )
            .await;
        expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
    }
    let v: Value = app
        .get(&sub_path(&sub.id), &app.owner_key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["allowed_origins"], json!([APP]));
    let res = app
        .post(
            "/v1/subscriptions",
            &app.owner_key,
            json!({"plan_id": sub.plan_id, "allowed_origins": ["https://*.example"]}),
        )
        .await;
    let body = expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED").await;
    assert_eq!(body["error"]["param"], "allowed_origins");
}

async fn preflights_are_answered_only_for_allowed_origins(app: TestApp) {
    let sub = subscribe(&app, &["gpt-test"]).await;
    // No subscription allows the origin yet: refused, with nothing a browser would accept.
    let res = preflight(&app, "/v1/chat/completions", APP, "POST").await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(header(&res, "access-control-allow-origin").is_none());
    allow(&app, &sub.id, json!([APP])).await;
    for (path, method) in [
        ("/v1/chat/completions", "POST"),
        ("/api/v1/chat/completions", "POST"),
        ("/v1/embeddings", "POST"),
        ("/v1/images/generations", "POST"),
        ("/v1/models", "GET"),
        ("/v1/operations/op_123", "GET"),
    ] {
        let res = preflight(&app, path, APP, method).await;
        assert_eq!(res.status(), StatusCode::NO_CONTENT, "{path}");
        assert_eq!(
            header(&res, "access-control-allow-origin").as_deref(),
            Some(APP)
        );
        assert_eq!(
            header(&res, "access-control-allow-methods").as_deref(),
            Some(method)
        );
        let allowed = header(&res, "access-control-allow-headers").unwrap();
        for h in ["authorization", "content-type", "x-user-id"] {
            assert!(allowed.contains(h), "{allowed}");
        }
        assert!(header(&res, "access-control-max-age").is_some());
        assert!(header(&res, "access-control-allow-credentials").is_none());
        assert!(header(&res, "vary").unwrap().contains("origin"));
    }
    // Another origin, another method, a route a browser may not call: refused.
    let res = preflight(&app, "/v1/chat/completions", EVIL, "POST").await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(header(&res, "access-control-allow-origin").is_none());
    let res = preflight(&app, "/v1/chat/completions", APP, "DELETE").await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = preflight(&app, "/v1/api-keys", APP, "POST").await;
    assert_ne!(res.status(), StatusCode::NO_CONTENT);
    assert!(header(&res, "access-control-allow-origin").is_none());
    // The origin spelled differently from how a browser sends it (browsers never do).
    let res = preflight(
        &app,
        "/v1/chat/completions",
        "HTTP://127.0.0.1:5173",
        "POST",
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    // A suspended subscription no longer opens its origins.
    let res = app
        .patch(
            &sub_path(&sub.id),
            &app.owner_key,
            json!({"status": "suspended"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = preflight(&app, "/v1/chat/completions", APP, "POST").await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
}

fn from(app: &TestApp, origin: &str, token: &str, body: Value) -> reqwest::RequestBuilder {
    app.client
        .post(app.url("/v1/chat/completions"))
        .header("origin", origin)
        .bearer_auth(token)
        .json(&body)
}

async fn credentials_are_used_only_from_allowed_origins(app: TestApp) {
    let sub = subscribe_with(&app, &["gpt-test"], json!({"allowed_origins": [APP]})).await;
    let signer = hs256(&app, &sub.id).await;
    let token = signer.mint(&claims(&sub.id, json!({})));
    // An app JWT from an allowed page: answered, with the headers the page may read.
    let res = from(&app, APP, &token, chat_body("gpt-test"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        header(&res, "access-control-allow-origin").as_deref(),
        Some(APP)
    );
    let exposed = header(&res, "access-control-expose-headers").unwrap();
    for h in [
        "x-request-id",
        "retry-after",
        "x-ratelimit-remaining-requests",
    ] {
        assert!(exposed.contains(h), "{exposed}");
    }
    // Streaming too.
    let mut body = chat_body("gpt-test");
    body["stream"] = json!(true);
    let res = from(&app, APP, &token, body).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        header(&res, "access-control-allow-origin").as_deref(),
        Some(APP)
    );
    assert!(read_all(res).await.contains("[DONE]"));
    // The same token from another page: refused, and the page can read why.
    let res = from(&app, EVIL, &token, chat_body("gpt-test"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&res, "access-control-allow-origin").as_deref(),
        Some(EVIL)
    );
    let v = expect_error(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    assert!(
        v["error"]["message"].as_str().unwrap().contains(EVIL),
        "{v}"
    );
    // The subscription id on an optional route, from each page.
    for (origin, ok) in [(APP, true), (EVIL, false)] {
        let res = app
            .client
            .get(app.url("/v1/models"))
            .header("origin", origin)
            .header("x-user-id", &sub.id)
            .send()
            .await
            .unwrap();
        if ok {
            assert_eq!(res.status(), StatusCode::OK);
        } else {
            expect_error(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
        }
    }
    // The owner's API key from a web page (even an allowed one: the key has no subscription):
    // refused, and the message says a key in a browser is a leak.
    for origin in [APP, EVIL] {
        let res = from(&app, origin, &app.owner_key, chat_body("gpt-test"))
            .send()
            .await
            .unwrap();
        let v = expect_error(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("a key in a browser"), "{msg}");
        assert!(!msg.contains(&app.owner_key));
    }
    // On the management routes as well.
    let res = app
        .client
        .get(app.url("/v1/api-keys"))
        .header("origin", EVIL)
        .bearer_auth(&app.owner_key)
        .send()
        .await
        .unwrap();
    expect_error(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    // A subscription's own API key, from a page its subscription allows: accepted.
    let sub_key = sub_api_key(&app, &sub.id).await;
    let res = from(&app, APP, &sub_key, chat_body("gpt-test"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = from(&app, EVIL, &sub_key, chat_body("gpt-test"))
        .send()
        .await
        .unwrap();
    expect_error(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    // The gateway's own pages, and clients that send no Origin, are not cross-origin.
    let own = app.state.config.public_url.clone();
    let res = from(&app, &own, &app.owner_key, chat_body("gpt-test"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(header(&res, "access-control-allow-origin").is_none());
    let res = app.chat(&app.owner_key, chat_body("gpt-test")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(header(&res, "access-control-allow-origin").is_none());
    // Removing the origin takes effect on the next request.
    allow(&app, &sub.id, json!([])).await;
    let token = signer.mint(&claims(&sub.id, json!({})));
    let res = from(&app, APP, &token, chat_body("gpt-test"))
        .send()
        .await
        .unwrap();
    expect_error(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
}
