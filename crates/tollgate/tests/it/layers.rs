//! The workspace's crate graph is its layering (ARCHITECTURE.md, "Code map"): each lower crate's
//! normal dependency graph (from `cargo metadata`) must not reach the crates its layer may not
//! know. A forbidden edge, direct or through another crate, fails here.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

/// A layer: its crate, whether it must exist, the crates (by name prefix) it may not reach, and
/// the workspace crates it may reach.
struct Layer {
    krate: &'static str,
    required: bool,
    banned: &'static [&'static str],
    allowed_tollgate: &'static [&'static str],
}

/// Servers, databases, runtimes: what the vocabulary must never pull in.
const IO: &[&str] = &["axum", "hyper", "sqlx", "tokio", "redis"];

const LAYERS: &[Layer] = &[
    Layer {
        krate: "tollgate-core",
        required: true,
        banned: IO,
        allowed_tollgate: &[],
    },
    Layer {
        krate: "tollgate-upstream",
        required: true,
        banned: &["axum", "sqlx", "redis"],
        allowed_tollgate: &["tollgate-core"],
    },
    Layer {
        krate: "tollgate-store",
        required: true,
        banned: &["axum", "redis"],
        allowed_tollgate: &["tollgate-core"],
    },
    Layer {
        // Decides; knows nothing of HTTP serving or of how a caller was authenticated.
        krate: "tollgate-limits",
        required: true,
        banned: &["axum", "hyper"],
        allowed_tollgate: &["tollgate-core", "tollgate-store"],
    },
    Layer {
        // The lower layer still to come is held to its rules as soon as it exists.
        krate: "tollgate-auth",
        required: false,
        banned: &["axum"],
        allowed_tollgate: &["tollgate-core", "tollgate-store"],
    },
];

struct Graph {
    names: HashMap<String, String>,
    deps: HashMap<String, Vec<String>>,
}

impl Graph {
    fn load() -> Self {
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
        let names = meta["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["id"].as_str().unwrap().to_string(),
                    p["name"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        // Normal (non-dev, non-build) edges only: what a crate's users compile.
        let deps = meta["resolve"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                let normal = n["deps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|d| {
                        d["dep_kinds"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|k| k["kind"].is_null())
                    })
                    .map(|d| d["pkg"].as_str().unwrap().to_string())
                    .collect();
                (n["id"].as_str().unwrap().to_string(), normal)
            })
            .collect();
        Self { names, deps }
    }

    fn id_of(&self, name: &str) -> Option<&str> {
        self.names
            .iter()
            .find(|(_, n)| n.as_str() == name)
            .map(|(id, _)| id.as_str())
    }

    /// Every crate reachable from `name`, with one path to it (for the failure message).
    fn reached(&self, root: &str) -> HashMap<String, Vec<String>> {
        let mut seen: HashMap<String, Vec<String>> = HashMap::new();
        let mut todo = vec![(root.to_string(), vec![self.names[root].clone()])];
        while let Some((id, path)) = todo.pop() {
            if seen.contains_key(&self.names[&id]) && id != root {
                continue;
            }
            seen.insert(self.names[&id].clone(), path.clone());
            for dep in &self.deps[&id] {
                let mut p = path.clone();
                p.push(self.names[dep].clone());
                todo.push((dep.clone(), p));
            }
        }
        seen.remove(&self.names[root]);
        seen
    }
}

#[test]
fn no_layer_reaches_a_crate_it_may_not_know() {
    let graph = Graph::load();
    let mut checked = HashSet::new();
    let mut errors = Vec::new();
    for layer in LAYERS {
        let Some(root) = graph.id_of(layer.krate) else {
            assert!(!layer.required, "{} is not in the workspace", layer.krate);
            continue;
        };
        checked.insert(layer.krate);
        for (name, path) in graph.reached(root) {
            let banned = layer.banned.iter().any(|b| name.starts_with(b));
            let upward =
                name.starts_with("tollgate") && !layer.allowed_tollgate.contains(&name.as_str());
            let test_tool = name == "fake-upstream";
            if banned || upward || test_tool {
                errors.push(format!("{}: {}", layer.krate, path.join(" → ")));
            }
        }
    }
    errors.sort();
    assert!(errors.is_empty(), "forbidden edges:\n{}", errors.join("\n"));
    for required in LAYERS.iter().filter(|l| l.required) {
        assert!(checked.contains(required.krate), "{}", required.krate);
    }
}

#[test]
fn the_rules_see_a_forbidden_edge() {
    // The gateway itself reaches axum, sqlx and every lower crate: held to core's rules, it
    // must fail them, or the test above proves nothing.
    let graph = Graph::load();
    let root = graph.id_of("tollgate").unwrap();
    let reached = graph.reached(root);
    for name in ["axum", "sqlx", "tokio", "redis", "hyper", "tollgate-core"] {
        assert!(reached.contains_key(name), "tollgate does not reach {name}");
    }
    let path = &reached["sqlx"];
    assert_eq!(path.first().map(String::as_str), Some("tollgate"));
    assert_eq!(path.last().map(String::as_str), Some("sqlx"));
}
