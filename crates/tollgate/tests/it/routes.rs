//! The routes table (`tollgate::routes`) is what the server mounts: every row answers on its
//! method and path, each is listed once, and a row's access level is enforced — a guarded route
//! asked without a credential is `401 AUTH_MISSING` before its handler reads anything, and a
//! public one never asks for a credential.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::Value;
use tollgate::routes::{AI_PREFIXES, Access, table};

use crate::helpers::*;

/// A concrete path for a table path: each `{param}` or `{*param}` becomes `x`.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| if seg.starts_with('{') { "x" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn every_route_is_listed_once_and_the_ai_routes_under_every_prefix() {
    let t = table();
    let mut seen = HashSet::new();
    for r in &t {
        assert!(
            seen.insert((r.method.clone(), r.path.clone())),
            "{} {} twice",
            r.method,
            r.path
        );
    }
    for path in [
        "/chat/completions",
        "/responses",
        "/models",
        "/operations/{id}",
    ] {
        for p in AI_PREFIXES {
            assert!(
                t.iter().any(|r| r.path == format!("{p}{path}")),
                "{p}{path} missing"
            );
        }
    }
    // Management never runs without a credential.
    assert!(
        t.iter()
            .filter(|r| r.path.starts_with("/v1/") && !r.path.starts_with("/v1/auth/"))
            .filter(|r| !r.path.contains("models") && !r.path.contains("operations"))
            .all(|r| matches!(r.access, Access::Member | Access::Needs(_) | Access::Anyone)),
        "a management route is public"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_guarded_route_refuses_a_missing_credential_and_public_ones_ask_for_none() {
    let app = TestApp::spawn(Db::Sqlite).await;
    for r in table() {
        let url = format!("{}{}", app.base, concrete(&r.path));
        let res = app
            .client
            .request(r.method.clone(), &url)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = res.status();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        let code = body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        // The router's own answers for a path or method it does not have.
        let unmounted = body["error"]["message"] == "No such route" || code == "METHOD_NOT_ALLOWED";
        assert!(!unmounted, "{} {} is not mounted: {body}", r.method, r.path);
        match r.access {
            // Logging out reads the token it ends itself (no route guard).
            Access::Public if r.path == "/v1/auth/logout" => {}
            Access::Public => assert_ne!(
                code, "AUTH_MISSING",
                "{} {} is public but asked for a credential",
                r.method, r.path
            ),
            _ => {
                assert_eq!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{} {}: {body}",
                    r.method,
                    r.path
                );
                assert_eq!(code, "AUTH_MISSING", "{} {}", r.method, r.path);
            }
        }
    }
}
