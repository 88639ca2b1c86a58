//! Operations (health, readiness, metrics, graceful shutdown) and the command line, driven through
//! the real `tollgate` binary.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_and_metrics() {
    let app = TestApp::spawn(Db::Sqlite).await;
    assert_eq!(app.get("/health", "").await.status(), StatusCode::OK);
    let ready: Value = app.get("/ready", "").await.json().await.unwrap();
    assert_eq!(ready["status"], "ready");
    // Generate some traffic, including auth failures.
    app.chat(&app.owner_key, chat_body("fake-model")).await;
    app.get("/v1/models", "").await;
    app.get("/v1/models", "tgk_bad").await;
    let text = app.get("/metrics", "").await.text().await.unwrap();
    for needle in [
        "tollgate_http_requests_total{route=\"/v1/chat/completions\",method=\"POST\",status=\"200\"} 1",
        "tollgate_auth_failures_total{reason=\"missing\"} 1",
        "tollgate_auth_failures_total{reason=\"invalid\"} 1",
        "tollgate_http_request_duration_seconds_bucket",
        "tollgate_upstream_duration_seconds_count{provider=\"fake\",outcome=\"ok\"} 1",
        "tollgate_http_in_flight_requests",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    // No secrets, no per-key labels.
    assert!(!text.contains(&app.owner_key[4..]));
    assert!(!text.contains("key_"));
    assert!(!text.contains(UPSTREAM_KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_token_protects_metrics() {
    let app = TestApp::spawn_with(Opts::new(Db::Sqlite).edit(|c| {
        c.metrics_token = Some(tollgate::config::Secret::new("scrape-me"));
    }))
    .await
    .unwrap();
    expect_error(
        app.get("/metrics", "").await,
        StatusCode::UNAUTHORIZED,
        "AUTH_MISSING",
    )
    .await;
    expect_error(
        app.get("/metrics", "wrong").await,
        StatusCode::UNAUTHORIZED,
        "AUTH_INVALID",
    )
    .await;
    assert_eq!(
        app.get("/metrics", "scrape-me").await.status(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_streams_finish() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let mut body = chat_body("fake-model");
    body["stream"] = json!(true);
    body["fake"] = json!({"chunks": 10, "chunk_delay_ms": 100});
    let mut res = app.chat(&app.owner_key, body).await;
    res.chunk().await.unwrap().unwrap();
    let state = app.state.clone();
    let addr = app.addr;
    let stopper = tokio::spawn(app.shutdown());
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(state.shutdown.is_cancelled());
    // New connections are refused while the stream still finishes.
    assert!(
        reqwest::Client::new()
            .get(format!("http://{addr}/health"))
            .send()
            .await
            .is_err()
    );
    let mut rest = String::new();
    while let Some(c) = res.chunk().await.unwrap() {
        rest.push_str(&String::from_utf8_lossy(&c));
    }
    assert!(rest.contains("[DONE]"), "{rest}");
    stopper.await.unwrap();
}

fn tollgate_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
}

fn run_json(cmd: &mut Command) -> Value {
    let out = cmd.output().expect("run tollgate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_init_keys_and_audit() {
    let Some(db) = TestDb::new(Db::Sqlite).await else {
        return;
    };
    let url = db.url.clone();
    // init reads TOLLGATE_DATABASE_URL; --password-stdin takes the owner's password.
    let mut child = tollgate_bin()
        .args([
            "init",
            "--email",
            "ops@example.com",
            "--tenant",
            "acme",
            "--password-stdin",
        ])
        .env("TOLLGATE_DATABASE_URL", &url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"a long enough password\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let init: Value = serde_json::from_slice(&out.stdout).unwrap();
    let owner_key = init["api_key"].as_str().unwrap().to_string();
    assert!(owner_key.starts_with("tgk_"));
    assert!(init["tenant_id"].as_str().unwrap().starts_with("ten_"));
    // Running it again issues a new key for the same owner and tenant.
    let again = run_json(tollgate_bin().args([
        "init",
        "--email",
        "ops@example.com",
        "--tenant",
        "acme",
        "--database",
        &url,
    ]));
    assert_eq!(again["tenant_id"], init["tenant_id"]);
    assert_eq!(again["user_id"], init["user_id"]);
    assert_ne!(again["api_key"], init["api_key"]);

    // A server on the same database.
    let upstream = fake_upstream::FakeUpstream::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let app = tollgate::app::Application::build(test_config(&url, &upstream, data.path()))
        .await
        .unwrap();
    let (addr, state) = (app.addr, app.state.clone());
    tokio::spawn(app.run());
    let client = reqwest::Client::new();
    let chat = |key: String| {
        let client = client.clone();
        async move {
            client
                .post(format!("http://{addr}/v1/chat/completions"))
                .bearer_auth(key)
                .json(&chat_body("mock-chat"))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(chat(owner_key.clone()).await, StatusCode::OK);

    // keys create / list / revoke from the CLI; the running server sees the revocation.
    let created = run_json(tollgate_bin().args([
        "keys",
        "create",
        "--tenant",
        "acme",
        "--email",
        "ops@example.com",
        "--name",
        "cli-key",
        "--scopes",
        "models:read,chat:write",
        "--database",
        &url,
    ]));
    let cli_key = created["key"].as_str().unwrap().to_string();
    assert_eq!(created["scopes"], json!(["models:read", "chat:write"]));
    assert_eq!(chat(cli_key.clone()).await, StatusCode::OK);
    let out = tollgate_bin()
        .args(["keys", "list", "--tenant", "acme", "--database", &url])
        .output()
        .unwrap();
    let listed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(listed.lines().count(), 3);
    assert!(!listed.contains(&cli_key[4..]));
    let revoked = run_json(tollgate_bin().args([
        "keys",
        "revoke",
        created["id"].as_str().unwrap(),
        "--database",
        &url,
    ]));
    assert!(revoked["revoked_at"].is_string());
    // The server polls the invalidation log every 100 ms; the bound is loose for loaded machines.
    let started = Instant::now();
    while chat(cli_key.clone()).await != StatusCode::UNAUTHORIZED {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the server must see a revocation made by the CLI"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    state.shutdown.cancel();

    // audit verify passes, export is JSON Lines; migrate is idempotent.
    let v = run_json(tollgate_bin().args(["audit", "verify", "--database", &url]));
    assert_eq!(v["status"], "ok");
    let out = tollgate_bin()
        .args(["audit", "export", "--database", &url])
        .output()
        .unwrap();
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines
            .iter()
            .any(|e| e["action"] == "api_key.revoked" && e["actor"]["type"] == "operator")
    );
    let out = tollgate_bin()
        .args(["migrate", "--database", &url])
        .output()
        .unwrap();
    assert!(out.status.success());
    // Bad input: a clear error and a non-zero exit.
    let out = tollgate_bin()
        .args(["keys", "revoke", "key_nope", "--database", &url])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("No such API key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_bootstraps_once_and_answers_with_the_printed_key() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let start = || {
        let mut child = tollgate_bin()
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env("TOLLGATE_DATA_DIR", dir.path())
            .env_remove("TOLLGATE_DATABASE_URL")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Read stdout on a thread, line by line, so the server never writes into a full pipe.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        (child, rx)
    };
    let (mut child, lines) = start();
    let mut key = None;
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(10)) {
        if let Some(k) = line.split_whitespace().find(|w| w.starts_with("tgk_")) {
            key = Some(k.to_string());
            break;
        }
    }
    let key = key.expect("bootstrap key printed");
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while client.get(format!("{url}/health")).send().await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let res = client
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat_body("mock-chat"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(dir.path().join("tollgate.db").exists());
    terminate(&mut child);
    // The second start prints no key.
    let (mut child, lines) = start();
    let started = Instant::now();
    while client.get(format!("{url}/health")).send().await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    terminate(&mut child);
    let printed: String = lines.try_iter().collect();
    assert!(!printed.contains("tgk_"), "{printed}");
}

/// Sends SIGTERM (graceful) and waits.
fn terminate(child: &mut std::process::Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "serve exits on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The official OpenAI Python SDK against the gateway (base URL + key, nothing else): chat,
/// embeddings, models (list and retrieve), legacy completions and the Responses API, JSON and
/// streamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_python_sdk_works_unmodified() {
    let python = std::env::var("TOLLGATE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_sdk = Command::new(&python)
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_sdk {
        eprintln!("skipped: the openai Python package is not installed (.ci/run installs it)");
        return;
    }
    let app = TestApp::spawn(Db::Sqlite).await;
    let script = r#"
import sys, openai
client = openai.OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0)
r = client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hi"}])
assert r.choices[0].message.content, r
parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
    model="fake-model", messages=[{"role": "user", "content": "hi"}], stream=True) if c.choices]
assert "".join(parts), parts
e = client.embeddings.create(model="fake-embed", input=["a", "b"])
assert len(e.data) == 2
assert [m.id for m in client.models.list()][:2] == ["gpt-test", "fake-model"]
assert client.models.retrieve("gpt-test").id == "gpt-test"
try:
    client.models.retrieve("no-such-model")
    raise SystemExit("expected a not-found error")
except openai.NotFoundError:
    pass
c = client.completions.create(model="gpt-test", prompt="Say this is a test", max_tokens=5)
assert c.choices[0].text and c.model == "gpt-test", c
text = "".join(ch.choices[0].text for ch in client.completions.create(
    model="gpt-test", prompt="Say this", stream=True) if ch.choices)
assert text, text
r = client.responses.create(model="gpt-test", input="Say this is a test")
assert r.output_text and r.model == "gpt-test" and r.usage.output_tokens > 0, r
events = list(client.responses.create(model="gpt-test", input="Say this", stream=True))
assert events[-1].type == "response.completed", events[-1]
assert events[-1].response.model == "gpt-test", events[-1]
deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
assert deltas == events[-1].response.output_text, (deltas, events[-1].response.output_text)
try:
    openai.OpenAI(base_url=sys.argv[1], api_key="tgk_wrong", max_retries=0).models.list()
    raise SystemExit("expected an authentication error")
except openai.AuthenticationError as err:
    assert err.body["code"] == "AUTH_INVALID", err.body
print("ok")
"#;
    let out = tokio::process::Command::new(&python)
        .args(["-c", script, &format!("{}/v1", app.base), &app.owner_key])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}
