//! The test harness: a real gateway built from a `Config` on 127.0.0.1:0, a fake OpenAI-compatible
//! upstream on a real socket, a fresh database per test (a SQLite file in a temp dir, or a fresh
//! PostgreSQL schema when `TOLLGATE_TEST_DATABASE_URL` is set), and typed helpers.

use std::net::SocketAddr;
use std::time::Duration;

use fake_upstream::{FakeConfig, FakeUpstream};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use tollgate::app::{AppState, Application};
use tollgate::config::{Config, ModelConfig, ProviderConfig, ProviderKind, Secret};

pub const UPSTREAM_KEY: &str = "upstream-secret-key";
pub const OWNER_EMAIL: &str = "owner@example.com";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// Runs a test body once per store: `store_tests!(name_a, name_b)` where each `name` is an
/// `async fn name(app: TestApp)` in the same module.
#[macro_export]
macro_rules! store_tests {
    ($($name:ident),* $(,)?) => { $(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::TestApp::spawn($crate::helpers::Db::Sqlite).await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(app) = $crate::helpers::TestApp::try_spawn($crate::helpers::Db::Postgres).await {
                    super::$name(app).await
                }
            }
        }
    )* };
}

/// PostgreSQL URL for tests, if configured.
pub fn pg_url() -> Option<String> {
    match std::env::var("TOLLGATE_TEST_DATABASE_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            eprintln!("skipped: TOLLGATE_TEST_DATABASE_URL is not set, PostgreSQL variant not run");
            None
        }
    }
}

/// A fresh schema in the test database; returns a URL whose connections use it.
pub async fn fresh_pg_schema(base: &str) -> String {
    use sqlx::Connection;
    let schema = format!("t_{}", tollgate::util::random_base62(16).to_lowercase());
    let mut conn = sqlx::PgConnection::connect(base)
        .await
        .expect("connect to TOLLGATE_TEST_DATABASE_URL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut conn)
        .await
        .expect("create schema");
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-csearch_path%3D{schema}")
}

/// The database a test app uses.
pub struct TestDb {
    pub url: String,
    pub db: Db,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(db: Db) -> Option<TestDb> {
        match db {
            Db::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = format!("sqlite://{}", dir.path().join("tollgate.db").display());
                Some(TestDb {
                    url,
                    db,
                    _dir: Some(dir),
                })
            }
            Db::Postgres => {
                let base = pg_url()?;
                Some(TestDb {
                    url: fresh_pg_schema(&base).await,
                    db,
                    _dir: None,
                })
            }
        }
    }
}

/// The configuration tests start from: one fake upstream provider, one mock provider.
pub fn test_config(db_url: &str, upstream: &FakeUpstream, data_dir: &std::path::Path) -> Config {
    let mut cfg = Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        database_url: Secret::new(db_url),
        data_dir: data_dir.to_path_buf(),
        upstream_timeout_seconds: 5,
        shutdown_grace_seconds: 5,
        last_used_flush_ms: 100,
        providers: vec![
            ProviderConfig {
                name: "fake".into(),
                kind: ProviderKind::Openai,
                base_url: upstream.base_url(),
                api_key_env: None,
                api_key: Some(Secret::new(UPSTREAM_KEY)),
                timeout_seconds: None,
            },
            ProviderConfig {
                name: "mock".into(),
                kind: ProviderKind::Mock,
                base_url: String::new(),
                api_key_env: None,
                api_key: None,
                timeout_seconds: None,
            },
        ],
        models: vec![
            ModelConfig {
                name: "gpt-test".into(),
                provider: "fake".into(),
                upstream_model: Some("upstream-gpt".into()),
            },
            ModelConfig {
                name: "fake-model".into(),
                provider: "fake".into(),
                upstream_model: None,
            },
            ModelConfig {
                name: "fake-embed".into(),
                provider: "fake".into(),
                upstream_model: None,
            },
            ModelConfig {
                name: "fake-image".into(),
                provider: "fake".into(),
                upstream_model: None,
            },
            ModelConfig {
                name: "mock-chat".into(),
                provider: "mock".into(),
                upstream_model: None,
            },
        ],
        ..Config::default()
    };
    cfg.finish().expect("valid test config");
    cfg
}

/// A running gateway with its upstream and an owner.
pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    pub state: AppState,
    pub upstream: FakeUpstream,
    pub db: Db,
    pub db_url: String,
    /// Owner of tenant "acme" (also the platform owner).
    pub owner_key: String,
    pub owner_id: String,
    pub tenant_id: String,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _db: TestDb,
    _data: tempfile::TempDir,
}

/// Options for [`TestApp::spawn_with`].
pub struct Opts {
    pub db: Db,
    pub upstream: FakeConfig,
    pub edit: Box<dyn FnOnce(&mut Config) + Send>,
    /// Reuse another app's database (a second instance).
    pub share_db: Option<String>,
}

impl Opts {
    pub fn new(db: Db) -> Self {
        Self {
            db,
            upstream: FakeConfig {
                api_key: Some(UPSTREAM_KEY.into()),
                ..FakeConfig::default()
            },
            edit: Box::new(|_| {}),
            share_db: None,
        }
    }
    pub fn edit(mut self, f: impl FnOnce(&mut Config) + Send + 'static) -> Self {
        self.edit = Box::new(f);
        self
    }
}

impl TestApp {
    pub async fn spawn(db: Db) -> TestApp {
        Self::try_spawn(db).await.expect("database available")
    }

    /// `None` when the PostgreSQL variant is skipped.
    pub async fn try_spawn(db: Db) -> Option<TestApp> {
        Self::spawn_with(Opts::new(db)).await
    }

    pub async fn spawn_with(opts: Opts) -> Option<TestApp> {
        let test_db = match &opts.share_db {
            Some(url) => TestDb {
                url: url.clone(),
                db: opts.db,
                _dir: None,
            },
            None => TestDb::new(opts.db).await?,
        };
        let upstream = FakeUpstream::start_with(opts.upstream)
            .await
            .expect("fake upstream");
        let data = tempfile::tempdir().expect("tempdir");
        let mut cfg = test_config(&test_db.url, &upstream, data.path());
        (opts.edit)(&mut cfg);
        let app = Application::build(cfg).await.expect("app builds");
        let state = app.state.clone();
        let addr = app.addr;
        let (owner_key, owner_id, tenant_id) = if opts.share_db.is_some() {
            (String::new(), String::new(), String::new())
        } else {
            let out = tollgate::bootstrap::init(
                &state.store,
                &state.config.key_prefix,
                OWNER_EMAIL,
                "acme",
                None,
            )
            .await
            .expect("init");
            (out.api_key, out.user_id, out.tenant_id)
        };
        let task = tokio::spawn(app.run());
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        Some(TestApp {
            addr,
            base: format!("http://{addr}"),
            client,
            state,
            upstream,
            db: opts.db,
            db_url: test_db.url.clone(),
            owner_key,
            owner_id,
            tenant_id,
            task: Some(task),
            _db: test_db,
            _data: data,
        })
    }

    /// A second gateway instance on the same database (and a fresh upstream).
    pub async fn second_instance(&self) -> TestApp {
        self.second_instance_with(|_| {}).await
    }

    /// A second instance on the same database with config edits (e.g. the same Redis).
    pub async fn second_instance_with(
        &self,
        edit: impl FnOnce(&mut Config) + Send + 'static,
    ) -> TestApp {
        let mut opts = Opts::new(self.db).edit(edit);
        opts.share_db = Some(self.db_url.clone());
        let mut other = Self::spawn_with(opts).await.expect("second instance");
        other.owner_key = self.owner_key.clone();
        other.owner_id = self.owner_id.clone();
        other.tenant_id = self.tenant_id.clone();
        other
    }

    /// Stops the server gracefully and waits for it, keeping the database (for a restart).
    pub async fn stop(&mut self) {
        self.state.shutdown.cancel();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }

    /// Stops the server gracefully and waits for it.
    pub async fn shutdown(mut self) {
        self.state.shutdown.cancel();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }

    /// Stops the server gracefully and hands back its database (which outlives the app).
    pub async fn shutdown_keep_db(mut self) -> TestDb {
        self.state.shutdown.cancel();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        self._db
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn req(&self, method: Method, path: &str, key: &str) -> RequestBuilder {
        let r = self.client.request(method, self.url(path));
        if key.is_empty() {
            r
        } else {
            r.bearer_auth(key)
        }
    }

    pub async fn get(&self, path: &str, key: &str) -> Response {
        self.req(Method::GET, path, key)
            .send()
            .await
            .expect("request")
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> Response {
        self.req(Method::POST, path, key)
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    pub async fn patch(&self, path: &str, key: &str, body: Value) -> Response {
        self.req(Method::PATCH, path, key)
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    pub async fn put(&self, path: &str, key: &str, body: Value) -> Response {
        self.req(Method::PUT, path, key)
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    pub async fn delete(&self, path: &str, key: &str) -> Response {
        self.req(Method::DELETE, path, key)
            .send()
            .await
            .expect("request")
    }

    /// `POST /v1/api-keys` as `key`; returns the created object (with its `key`).
    pub async fn create_key(&self, key: &str, body: Value) -> Value {
        let res = self.post("/v1/api-keys", key, body).await;
        assert_eq!(res.status(), StatusCode::CREATED, "create key");
        res.json().await.expect("json")
    }

    /// Adds a member with roles and returns (user id, an API key of theirs).
    pub async fn add_user(&self, email: &str, roles: &[&str]) -> (String, String) {
        let res = self
            .post(
                "/v1/users",
                &self.owner_key,
                json!({"email": email, "roles": roles}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED, "add user");
        let user: Value = res.json().await.expect("json");
        let user_id = user["id"].as_str().expect("id").to_string();
        let key = self
            .create_key(
                &self.owner_key,
                json!({"name": "user key", "user_id": user_id}),
            )
            .await;
        (user_id, key["key"].as_str().expect("key").to_string())
    }

    /// Creates a second tenant with its own owner; returns (tenant id, owner key).
    pub async fn other_tenant(&self, name: &str) -> (String, String) {
        let email = format!("owner@{name}.example.com");
        let res = self
            .post(
                "/v1/tenants",
                &self.owner_key,
                json!({"name": name, "owner_email": email}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED, "create tenant");
        let t: Value = res.json().await.expect("json");
        (
            t["id"].as_str().expect("id").into(),
            t["owner"]["api_key"].as_str().expect("key").into(),
        )
    }

    pub async fn chat(&self, key: &str, body: Value) -> Response {
        self.post("/v1/chat/completions", key, body).await
    }
}

pub fn chat_body(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "Hello"}]})
}

/// Asserts status and error code; returns the error body.
pub async fn expect_error(res: Response, status: StatusCode, code: &str) -> Value {
    let got = res.status();
    assert!(
        res.headers().contains_key("x-request-id"),
        "x-request-id on error"
    );
    let body: Value = res.json().await.expect("error body is JSON");
    assert_eq!(got, status, "status; body: {body}");
    assert_eq!(body["error"]["code"], code, "code; body: {body}");
    assert!(
        body["error"]["message"].is_string() && body["error"]["type"].is_string(),
        "{body}"
    );
    body
}

/// Reads SSE frames until the stream ends, collecting the raw text.
pub async fn read_all(res: Response) -> String {
    res.text().await.unwrap_or_default()
}

/// Waits until `f` is true or the timeout passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Redis URL for tests, if configured.
pub fn redis_url() -> Option<String> {
    match std::env::var("TOLLGATE_TEST_REDIS_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            eprintln!("skipped: TOLLGATE_TEST_REDIS_URL is not set, Redis test not run");
            None
        }
    }
}

/// A fresh Redis key prefix, so tests sharing one Redis never see each other's counters.
pub fn redis_prefix() -> String {
    format!("tgtest:{}:", tollgate::util::random_base62(12))
}

/// Points a config at Redis with its own key prefix.
pub fn use_redis(cfg: &mut Config, url: &str, prefix: &str) {
    cfg.redis_url = Some(Secret::new(url));
    cfg.limits.redis_prefix = prefix.to_string();
}

/// A `redis-server` this test started itself on a free loopback port (never the shared one).
pub struct OwnRedis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    /// `None` (with a message) when `redis-server` is not installed.
    pub async fn start() -> Option<OwnRedis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let mut r = OwnRedis { port, child: None };
        if !r.spawn().await {
            eprintln!("skipped: could not start redis-server");
            return None;
        }
        Some(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) -> bool {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let Ok(child) = child else { return false };
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        eventually(Duration::from_secs(5), || {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(addr).await.is_ok() }
        })
        .await
    }

    /// Stops the server (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) -> bool {
        self.stop();
        self.spawn().await
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Creates a key for the owner with the given `rate_limit` object; returns (id, key).
pub async fn limited_key(app: &TestApp, rate_limit: Value) -> (String, String) {
    let k = app
        .create_key(
            &app.owner_key,
            json!({"name": "limited", "rate_limit": rate_limit}),
        )
        .await;
    (
        k["id"].as_str().expect("id").to_string(),
        k["key"].as_str().expect("key").to_string(),
    )
}

/// A header as text.
pub fn header(res: &Response, name: &str) -> Option<String> {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Waits until the usage writer has stored at least `n` records for the app's tenant.
pub async fn wait_usage_records(app: &TestApp, n: usize) -> bool {
    eventually(Duration::from_secs(10), || async {
        tollgate::store::usage::recent_records(app.state.store.pool(), &app.tenant_id, 100_000)
            .await
            .map(|r| r.len() >= n)
            .unwrap_or(false)
    })
    .await
}
