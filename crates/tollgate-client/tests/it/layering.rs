//! The crate's normal dependency graph (from `cargo metadata`) holds no server framework, no
//! database driver and not the gateway itself: it is what customers compile into their apps.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

#[test]
fn no_axum_no_sqlx_no_gateway_in_the_client_dependencies() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: HashMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let nodes: HashMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let root = names
        .iter()
        .find(|(_, n)| **n == "tollgate-client")
        .map(|(id, _)| *id)
        .unwrap();
    // Every crate reachable through normal (non-dev, non-build) edges.
    let mut seen = HashSet::new();
    let mut todo = vec![root];
    while let Some(id) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let normal = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null());
            if normal {
                todo.push(dep["pkg"].as_str().unwrap());
            }
        }
    }
    let reached: Vec<&str> = seen.iter().map(|id| names[id]).collect();
    let banned: Vec<&&str> = reached
        .iter()
        .filter(|n| {
            n.starts_with("axum")
                || n.starts_with("sqlx")
                || **n == "tollgate"
                || **n == "fake-upstream"
        })
        .collect();
    assert!(banned.is_empty(), "tollgate-client depends on {banned:?}");
    assert!(reached.contains(&"reqwest") && reached.contains(&"rustls"));
}
