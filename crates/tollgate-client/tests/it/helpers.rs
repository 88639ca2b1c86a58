//! A real gateway for the client's tests: built from a `Config` on 127.0.0.1:0 with a fake
//! OpenAI-compatible upstream and a fresh SQLite file (the setup of the gateway's own test
//! harness, trimmed to what the client needs), plus a tiny capture server for wire-level checks.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fake_upstream::{FakeConfig, FakeUpstream};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate::app::{AppState, Application};
use tollgate::config::{Config, ModelConfig, ProviderConfig, ProviderKind, Secret};
use tollgate_client::mint::{AppJwt, SigningKey, mint_app_jwt};
use tollgate_client::{Auth, BoxError, Client, JwtRequest};

pub const UPSTREAM_KEY: &str = "upstream-secret-key";
pub const OWNER_EMAIL: &str = "owner@example.com";
pub const PASSWORD: &str = "correct horse battery staple";

/// A running gateway with its upstream and an owner.
pub struct Gateway {
    pub addr: SocketAddr,
    pub base: String,
    pub http: reqwest::Client,
    pub state: AppState,
    pub upstream: FakeUpstream,
    pub owner_key: String,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

fn config(db_url: &str, upstream: &FakeUpstream, data_dir: &std::path::Path) -> Config {
    let provider = |name: &str, kind, base_url: String, key: Option<&str>| ProviderConfig {
        name: name.into(),
        kind,
        base_url,
        api_key_env: None,
        api_key: key.map(Secret::new),
        timeout_seconds: None,
    };
    let model = |name: &str, provider: &str| ModelConfig {
        name: name.into(),
        provider: provider.into(),
        upstream_model: None,
    };
    Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        database_url: Secret::new(db_url),
        data_dir: data_dir.to_path_buf(),
        upstream_timeout_seconds: 5,
        shutdown_grace_seconds: 2,
        last_used_flush_ms: 100,
        providers: vec![
            provider(
                "fake",
                ProviderKind::Openai,
                upstream.base_url(),
                Some(UPSTREAM_KEY),
            ),
            provider("mock", ProviderKind::Mock, String::new(), None),
        ],
        models: vec![
            ModelConfig {
                name: "gpt-test".into(),
                provider: "fake".into(),
                upstream_model: Some("upstream-gpt".into()),
            },
            model("fake-model", "fake"),
            model("fake-embed", "fake"),
            model("fake-image", "fake"),
            model("mock-chat", "mock"),
        ],
        ..Config::default()
    }
}

impl Gateway {
    pub async fn spawn() -> Gateway {
        Self::spawn_with(|_| {}).await
    }

    /// With config edits (before `finish`).
    pub async fn spawn_with(edit: impl FnOnce(&mut Config)) -> Gateway {
        let upstream = FakeUpstream::start_with(FakeConfig {
            api_key: Some(UPSTREAM_KEY.into()),
            ..FakeConfig::default()
        })
        .await
        .expect("fake upstream");
        let dir = tempfile::tempdir().expect("tempdir");
        let db = format!("sqlite://{}", dir.path().join("tollgate.db").display());
        let mut cfg = config(&db, &upstream, dir.path());
        edit(&mut cfg);
        cfg.finish().expect("valid config");
        let app = Application::build(cfg).await.expect("app builds");
        let state = app.state.clone();
        let addr = app.addr;
        let out = tollgate::bootstrap::init(
            &state.store,
            &state.config.key_prefix,
            OWNER_EMAIL,
            "acme",
            Some(PASSWORD.to_string()),
        )
        .await
        .expect("init");
        let task = tokio::spawn(app.run());
        Gateway {
            addr,
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            state,
            upstream,
            owner_key: out.api_key,
            task: Some(task),
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The public URL the gateway puts in tokens (`iss`, `aud`).
    pub fn public_url(&self) -> String {
        self.state.config.public_url.clone()
    }

    /// `POST` as the owner; asserts `201` and returns the body.
    pub async fn create(&self, path: &str, body: Value) -> Value {
        let res = self
            .http
            .post(self.url(path))
            .bearer_auth(&self.owner_key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = res.status();
        let v: Value = res.json().await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "POST {path}: {v}");
        v
    }

    pub async fn delete(&self, path: &str) -> StatusCode {
        self.http
            .delete(self.url(path))
            .bearer_auth(&self.owner_key)
            .send()
            .await
            .unwrap()
            .status()
    }

    /// An owner API key with extra fields (e.g. `rate_limit`); returns (id, key).
    pub async fn key(&self, extra: Value) -> (String, String) {
        let mut body = json!({"name": "client test key"});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                body[k] = v;
            }
        }
        let k = self.create("/v1/api-keys", body).await;
        (
            k["id"].as_str().unwrap().to_string(),
            k["key"].as_str().unwrap().to_string(),
        )
    }

    /// Product (models) → plan (limits) → subscription; returns the subscription id.
    pub async fn subscription(&self, models: &[&str], limits: Value) -> String {
        let name = format!("product {}", tollgate::util::random_base62(6));
        let product = self
            .create("/v1/products", json!({"name": name, "models": models}))
            .await;
        let plan = self
            .create(
                "/v1/plans",
                json!({"product_id": product["id"], "name": "basic", "limits": limits}),
            )
            .await;
        let sub = self
            .create("/v1/subscriptions", json!({"plan_id": plan["id"]}))
            .await;
        sub["id"].as_str().unwrap().to_string()
    }

    /// An HS256 credential of the subscription: (kid, secret).
    pub async fn hs256(&self, sub_id: &str) -> (String, String) {
        let c = self
            .create(
                &format!("/v1/subscriptions/{sub_id}/credentials"),
                json!({"type": "jwt_hs256"}),
            )
            .await;
        (
            c["kid"].as_str().unwrap().to_string(),
            c["secret"].as_str().unwrap().to_string(),
        )
    }

    /// A client with defaults and this auth.
    pub fn client(&self, auth: Auth) -> Client {
        Client::new(&self.base, auth).unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.state.shutdown.cancel();
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// A customer backend for the `Jwt` mode: validates what the client asks for and mints a token
/// that binds it (the model exactly, the messages or prompt by hash). Counts its calls.
#[derive(Clone)]
pub struct Backend {
    pub sub_id: String,
    pub kid: String,
    pub secret: String,
    pub ttl: u64,
    pub calls: Arc<Mutex<Vec<JwtRequest>>>,
}

impl Backend {
    pub fn new(sub_id: &str, kid: &str, secret: &str) -> Backend {
        Backend {
            sub_id: sub_id.into(),
            kid: kid.into(),
            secret: secret.into(),
            ttl: 300,
            calls: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    /// The token for a request: binds `/model` and hashes whichever of `/messages`, `/prompt`,
    /// `/input` the params hold.
    pub fn mint(&self, req: &JwtRequest) -> Result<String, BoxError> {
        self.calls.lock().unwrap().push(req.clone());
        let p = &req.params;
        let model = p
            .get("model")
            .or_else(|| p.get("/model"))
            .and_then(Value::as_str)
            .ok_or("the client must say which model")?;
        if !["mock-chat", "fake-model", "fake-embed", "fake-image"].contains(&model) {
            return Err(format!("model {model} is not sold to this app").into());
        }
        let mut claims = AppJwt::new(&self.sub_id, &self.kid, "end-user-42")
            .ttl(self.ttl)
            .bind("/model", json!(model));
        for field in ["messages", "prompt", "input"] {
            if let Some(v) = p.get(field) {
                claims = claims.bind_sha256(format!("/{field}"), v);
            }
        }
        Ok(mint_app_jwt(&claims, &SigningKey::hs256(&self.secret))?)
    }

    pub fn auth(&self) -> Auth {
        let b = self.clone();
        Auth::jwt(self.sub_id.clone(), move |req| {
            let b = b.clone();
            async move { b.mint(&req) }
        })
    }
}

/// One request as the capture server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub request_line: String,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A canned HTTP server on 127.0.0.1:0: answers every request with `status`, `headers` and
/// `body`, and records what it received.
pub struct Capture {
    pub base: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Capture {
    pub async fn start(status: u16, headers: &[(&str, &str)], body: &str) -> Capture {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let mut head = format!("HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!(
            "content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ));
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let (log, head) = (log.clone(), head.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let end = loop {
                        let n = sock.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i;
                        }
                    };
                    let text = String::from_utf8_lossy(&buf[..end]).to_string();
                    let mut lines = text.split("\r\n");
                    let request_line = lines.next().unwrap_or_default().to_string();
                    let headers = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                        .collect::<Vec<_>>();
                    let len: usize = headers
                        .iter()
                        .find(|(k, _)| k == "content-length")
                        .and_then(|(_, v)| v.parse().ok())
                        .unwrap_or(0);
                    while buf.len() < end + 4 + len {
                        let n = sock.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    log.lock().unwrap().push(Seen {
                        request_line,
                        headers,
                    });
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Capture { base, seen }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

pub fn chat_req(model: &str, text: &str) -> tollgate_client::ChatRequest {
    tollgate_client::ChatRequest::new(model, vec![tollgate_client::Message::user(text)])
}
