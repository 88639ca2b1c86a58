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

/// The module graph of one crate: for each top-level module (a file or folder under `src/`),
/// the other top-level modules its files name through `crate::…` paths. `lib.rs` is the root,
/// which re-exports; it is not a module of the graph.
fn module_graph(src: &std::path::Path) -> HashMap<String, HashSet<String>> {
    fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut all = Vec::new();
    files(src, &mut all);
    let top = |p: &std::path::Path| {
        let rel = p.strip_prefix(src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        first.trim_end_matches(".rs").to_string()
    };
    let modules: HashSet<String> = all.iter().map(|p| top(p)).filter(|m| m != "lib").collect();
    let mut graph: HashMap<String, HashSet<String>> = HashMap::new();
    for p in &all {
        let from = top(p);
        if from == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(p).unwrap();
        // Tests may reach anywhere: only the code that ships counts.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let mut named = Vec::new();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or_default();
                for part in inner.split(',') {
                    named.push(
                        part.trim()
                            .split("::")
                            .next()
                            .unwrap_or_default()
                            .to_string(),
                    );
                }
            } else {
                let ident: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                named.push(ident);
            }
        }
        let deps = graph.entry(from.clone()).or_default();
        for m in named {
            if m != from && modules.contains(&m) {
                deps.insert(m);
            }
        }
    }
    graph
}

/// One cycle of the graph, if it has any (depth-first search).
fn find_cycle(graph: &HashMap<String, HashSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &HashMap<String, HashSet<String>>,
        state: &mut HashMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        let mut next: Vec<&String> = graph.get(n).into_iter().flatten().collect();
        next.sort();
        for m in next {
            match state.get(m.as_str()) {
                Some(1) => {
                    let at = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(m, graph, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = HashMap::new();
    let mut roots: Vec<&String> = graph.keys().collect();
    roots.sort();
    for r in roots {
        if !state.contains_key(r.as_str()) {
            let mut stack = Vec::new();
            if let Some(c) = visit(r, graph, &mut state, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn the_lower_crates_have_no_module_cycle() {
    let crates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for krate in [
        "tollgate-core",
        "tollgate-store",
        "tollgate-limits",
        "tollgate-upstream",
    ] {
        let graph = module_graph(&crates.join(krate).join("src"));
        assert!(graph.len() >= 2, "{krate}: no modules found");
        if let Some(cycle) = find_cycle(&graph) {
            panic!("{krate} has a module cycle: {}", cycle.join(" → "));
        }
    }
    // The check sees a cycle where there is one: the gateway's own modules still form one.
    let gateway = module_graph(&crates.join("tollgate").join("src"));
    assert!(find_cycle(&gateway).is_some());
}

/// The public types (`pub struct|enum|trait|type Name`) declared in a crate's shipped code.
fn public_types(src: &std::path::Path) -> HashSet<String> {
    fn walk(dir: &std::path::Path, out: &mut HashSet<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for line in code.lines() {
                let line = line.trim_start();
                for kw in ["pub struct ", "pub enum ", "pub trait ", "pub type "] {
                    if let Some(rest) = line.strip_prefix(kw) {
                        let name: String = rest
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        out.insert(name);
                    }
                }
            }
        }
    }
    let mut out = HashSet::new();
    walk(src, &mut out);
    out
}

/// One name per concept: no two crates of the gateway declare a public type of the same name
/// (the SDK and the test tools are separate products and may mirror the gateway's names).
#[test]
fn no_two_gateway_crates_declare_the_same_public_type() {
    let crates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut seen: HashMap<String, &str> = HashMap::new();
    let mut clashes = Vec::new();
    for krate in [
        "tollgate",
        "tollgate-core",
        "tollgate-store",
        "tollgate-limits",
        "tollgate-upstream",
    ] {
        let mut names: Vec<String> = public_types(&crates.join(krate).join("src"))
            .into_iter()
            .collect();
        assert!(!names.is_empty(), "{krate}: no public types found");
        names.sort();
        for name in names {
            if let Some(other) = seen.insert(name.clone(), krate) {
                clashes.push(format!("{name}: {other} and {krate}"));
            }
        }
    }
    assert!(clashes.is_empty(), "same name, two crates: {clashes:?}");
}
