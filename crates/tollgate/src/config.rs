//! Configuration (SPEC §9): defaults, then the TOML file, then `TOLLGATE_*` environment variables,
//! then command-line flags. Nothing here can turn authentication off.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A secret string: never printed by `Debug`, never serialised back out.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    /// The externally visible base URL (JWT `iss`, links in emails).
    pub public_url: String,
    /// `sqlite://...` or `postgres://...`. Empty = `<data_dir>/tollgate.db`.
    pub database_url: Secret,
    /// Optional; enables cross-instance limits and revocation broadcast.
    pub redis_url: Option<Secret>,
    /// API key prefix (`tgk` → `tgk_...`). Lowercase ASCII letters/digits, 2–8 chars.
    pub key_prefix: String,
    pub data_dir: PathBuf,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Deadline for a non-streaming upstream response, and for the first byte of a stream.
    pub upstream_timeout_seconds: u64,
    /// How long `serve` waits for in-flight requests (streams) when asked to stop.
    pub shutdown_grace_seconds: u64,
    /// Bearer token required on `/metrics` when set.
    pub metrics_token: Option<Secret>,
    /// Safety-net lifetime of a cached key verification; explicit invalidation is the main path.
    pub key_cache_ttl_seconds: u64,
    /// How often batched `last_used_at` writes are flushed.
    pub last_used_flush_ms: u64,
    /// How often the invalidation log is read when no push arrives (the safety net under
    /// PostgreSQL `LISTEN` and Redis pub/sub; the only channel for SQLite without Redis).
    pub invalidation_poll_ms: u64,
    /// Emit logs as JSON lines (default: human-readable).
    pub log_json: bool,
    pub auth: AuthConfig,
    pub email: EmailConfig,
    /// 256-bit key (64 hex digits or base64url) that encrypts recoverable secrets at rest (HS256
    /// app-JWT secrets). Unset: a random key in `<data_dir>/credentials.key`. Every instance of
    /// a deployment needs the same key.
    pub secret_key: Option<Secret>,
    /// Asynchronous operations (image generations with `Prefer: respond-async`).
    pub operations: OperationsConfig,
    pub providers: Vec<ProviderConfig>,
    pub models: Vec<ModelConfig>,
    /// Rate limits and quotas per tenant, user and key (SPEC §7); see `limits`.
    pub limits: LimitsConfig,
    /// Usage metering (the batched writer behind `/v1/usage`).
    pub usage: UsageConfig,
    /// Spike alerts (`alert.usage_spike`).
    pub alerts: AlertsConfig,
    /// `[portal]`: the developer portal of the web console.
    pub portal: PortalConfig,
    /// Outbound requests to user-supplied URLs (identity providers' JWKS, the alert webhook).
    pub outbound: OutboundConfig,
}

/// `[outbound]`: what the outbound-URL guard (`crate::netguard`) admits besides public `https`
/// destinations.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboundConfig {
    /// Internal destinations that may be fetched (also over plain `http`): CIDR prefixes
    /// (`10.0.0.0/8`), addresses with or without a port (`127.0.0.1:9000`, `[::1]:9000`), host
    /// names with or without a port (`idp.internal`). Env `TOLLGATE_OUTBOUND_ALLOW`
    /// (comma-separated).
    pub allow: Vec<String>,
}

/// `[limits]`: ceilings that apply besides a key's own `rate_limit` and a subscription's plan.
/// `[limits]`, the limits engine's own settings.
pub use tollgate_limits::LimitsConfig;

/// `[usage]`: the bounded queue between requests and the batched store writer.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsageConfig {
    /// Records queued or reserved by in-flight requests; when full, new requests wait.
    pub queue_capacity: usize,
    /// Largest batch written in one transaction.
    pub batch_size: usize,
    /// How often the writer flushes.
    pub flush_ms: u64,
    /// Usage records older than this many days are deleted (0 = kept forever).
    pub retention_days: u64,
    /// Per-minute aggregates (reports, quotas) older than this many days are deleted (0 = kept
    /// forever; else at least 35, so a month's quota can always be counted).
    pub aggregate_retention_days: u64,
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 65_536,
            batch_size: 1000,
            flush_ms: 250,
            retention_days: 90,
            aggregate_retention_days: 400,
        }
    }
}

/// `[alerts]`: a key whose requests in one minute exceed `spike_multiple` × its trailing
/// per-minute baseline (and at least `spike_min_requests`) raises `alert.usage_spike`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    pub spike_multiple: f64,
    pub spike_min_requests: u64,
    /// Length of the trailing baseline, in minutes.
    pub baseline_minutes: u64,
    /// Optional URL that receives each alert as a JSON POST.
    pub webhook_url: Option<String>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            spike_multiple: 5.0,
            spike_min_requests: 100,
            baseline_minutes: 15,
            webhook_url: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Platform JWT algorithm: `RS256` (default) or `ES256`.
    pub signing_alg: String,
    /// Encrypts the stored signing keys (any string; 32 random bytes, base64, recommended). Unset:
    /// a random key kept in `<data_dir>/signing.key` (mode 0600). Env `TOLLGATE_SIGNING_KEY_SECRET`.
    pub signing_key_secret: Option<Secret>,
    pub access_token_ttl_seconds: u64,
    pub refresh_token_ttl_seconds: u64,
    pub open_signup: bool,
}

/// `[portal]`: the developer portal (web console) belongs to one tenant.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PortalConfig {
    /// The tenant (id or name) whose published products the portal offers and which its
    /// sign-ups join as consumers. Unset: the first tenant created.
    pub tenant: Option<String>,
}

/// `[operations]`: the asynchronous-operation worker pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OperationsConfig {
    /// Workers on this instance (0: this instance only queues; others run the operations).
    pub workers: usize,
    /// How long finished operations (and their results) are kept.
    pub retention_seconds: u64,
    /// Lease of a running operation, renewed while it runs; an operation whose instance died is
    /// retried after its lease runs out.
    pub lease_seconds: u64,
    /// Attempts before an operation interrupted by dying instances is marked failed.
    pub max_attempts: u32,
    /// Queued operations across the deployment beyond which submissions get `503`.
    pub max_queued: u64,
    /// How often idle workers look for operations queued by other instances.
    pub poll_ms: u64,
}

impl Default for OperationsConfig {
    fn default() -> Self {
        Self {
            workers: 4,
            retention_seconds: 86_400,
            lease_seconds: 30,
            max_attempts: 2,
            max_queued: 10_000,
            poll_ms: 500,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmailConfig {
    pub smtp_url: Secret,
    /// Sender of verification and password-reset emails (default `Tollgate <no-reply@tollgate.local>`).
    pub from: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Any OpenAI-compatible HTTP API.
    Openai,
    /// The built-in mock provider (no network).
    Mock,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    #[serde(default)]
    pub base_url: String,
    /// Name of the environment variable holding the upstream API key (preferred).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// The upstream API key itself (when an environment variable is not practical).
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// Per-provider override of `upstream_timeout_seconds`.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Public model name clients send.
    pub name: String,
    pub provider: String,
    /// Model name sent upstream (default: the public name).
    #[serde(default)]
    pub upstream_model: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: String::new(),
            database_url: Secret::default(),
            redis_url: None,
            key_prefix: "tgk".into(),
            data_dir: PathBuf::from("./tollgate-data"),
            max_body_bytes: 4 * 1024 * 1024,
            upstream_timeout_seconds: 120,
            shutdown_grace_seconds: 30,
            metrics_token: None,
            key_cache_ttl_seconds: 30,
            last_used_flush_ms: 1000,
            invalidation_poll_ms: 100,
            log_json: false,
            auth: AuthConfig::default(),
            email: EmailConfig::default(),
            secret_key: None,
            operations: OperationsConfig::default(),
            providers: Vec::new(),
            models: Vec::new(),
            limits: LimitsConfig::default(),
            usage: UsageConfig::default(),
            alerts: AlertsConfig::default(),
            portal: PortalConfig::default(),
            outbound: OutboundConfig::default(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            access_token_ttl_seconds: 3600,
            refresh_token_ttl_seconds: 2_592_000,
            open_signup: true,
            signing_alg: "RS256".into(),
            signing_key_secret: None,
        }
    }
}

/// Values given on the command line (each flag also reads its `TOLLGATE_*` variable through clap).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
}

impl Config {
    /// Loads defaults ← file ← environment ← flags, then validates.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Self> {
        let mut cfg = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("cannot read config file {}: {e}", path.display())
                })?;
                Self::from_toml(&text)?
            }
            None => Self::default(),
        };
        cfg.apply_env(|k| std::env::var(k).ok())?;
        if let Some(l) = overrides.listen {
            cfg.listen = l;
        }
        if let Some(d) = &overrides.database_url {
            cfg.database_url = Secret::new(d.clone());
        }
        if let Some(r) = &overrides.redis_url {
            cfg.redis_url = Some(Secret::new(r.clone()));
        }
        cfg.finish()?;
        Ok(cfg)
    }

    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        toml::from_str(text).map_err(|e| anyhow::anyhow!("invalid config: {e}"))
    }

    /// Environment overrides for settings that have no flag of their own.
    fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        fn parse<T: std::str::FromStr>(name: &str, v: String) -> anyhow::Result<T> {
            v.parse()
                .map_err(|_| anyhow::anyhow!("{name}: cannot parse {v:?}"))
        }
        if let Some(v) = get("TOLLGATE_PUBLIC_URL") {
            self.public_url = v;
        }
        if let Some(v) = get("TOLLGATE_KEY_PREFIX") {
            self.key_prefix = v;
        }
        if let Some(v) = get("TOLLGATE_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = get("TOLLGATE_METRICS_TOKEN") {
            self.metrics_token = Some(Secret::new(v));
        }
        if let Some(v) = get("TOLLGATE_MAX_BODY_BYTES") {
            self.max_body_bytes = parse("TOLLGATE_MAX_BODY_BYTES", v)?;
        }
        if let Some(v) = get("TOLLGATE_LOG_JSON") {
            self.log_json = matches!(v.as_str(), "1" | "true" | "yes");
        }
        if let Some(v) = get("TOLLGATE_SECRET_KEY") {
            self.secret_key = Some(Secret::new(v));
        }
        if let Some(v) = get("TOLLGATE_OPERATIONS_WORKERS") {
            self.operations.workers = parse("TOLLGATE_OPERATIONS_WORKERS", v)?;
        }
        if let Some(v) = get("TOLLGATE_SMTP_URL") {
            self.email.smtp_url = Secret::new(v);
        }
        if let Some(v) = get("TOLLGATE_SIGNING_KEY_SECRET") {
            self.auth.signing_key_secret = Some(Secret::new(v));
        }
        if let Some(v) = get("TOLLGATE_OUTBOUND_ALLOW") {
            self.outbound.allow = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
        }
        Ok(())
    }

    /// Called once the listener is bound: with port 0 and `public_url` left to its default
    /// (`http://<listen>`), `public_url` becomes the bound address, since it is the issuer and
    /// the base of every link the gateway sends, and a link to port 0 reaches nothing.
    pub fn bound_to(&mut self, addr: SocketAddr) {
        if self.listen.port() == 0 && self.public_url == format!("http://{}", self.listen) {
            self.public_url = format!("http://{addr}");
        }
    }

    /// Fills derived defaults and rejects inconsistent settings.
    pub fn finish(&mut self) -> anyhow::Result<()> {
        self.public_url = self.public_url.trim().trim_end_matches('/').to_string();
        if self.public_url.is_empty() {
            self.public_url = format!("http://{}", self.listen);
        }
        check_public_url(&self.public_url)?;
        if self.database_url.is_empty() {
            let path = self.data_dir.join("tollgate.db");
            self.database_url = Secret::new(format!("sqlite://{}", path.display()));
        }
        let p = &self.key_prefix;
        if !(2..=8).contains(&p.len())
            || !p
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            anyhow::bail!("key_prefix must be 2-8 lowercase letters or digits, got {p:?}");
        }
        if !matches!(self.auth.signing_alg.as_str(), "RS256" | "ES256") {
            anyhow::bail!(
                "auth.signing_alg must be RS256 or ES256, got {:?}",
                self.auth.signing_alg
            );
        }
        if self.max_body_bytes < 1024 {
            anyhow::bail!("max_body_bytes must be at least 1024");
        }
        let mut names = std::collections::HashSet::new();
        for p in &self.providers {
            if !names.insert(p.name.as_str()) {
                anyhow::bail!("provider {:?} is defined twice", p.name);
            }
            if p.kind == ProviderKind::Openai && !p.base_url.starts_with("http") {
                anyhow::bail!("provider {:?}: base_url must be an http(s) URL", p.name);
            }
        }
        if self.usage.queue_capacity < 16 || self.usage.batch_size == 0 {
            anyhow::bail!("usage.queue_capacity must be at least 16 and usage.batch_size positive");
        }
        if self.usage.retention_days > 36_500 {
            anyhow::bail!("usage.retention_days must be at most 36500 (0 keeps records forever)");
        }
        if self.usage.aggregate_retention_days != 0
            && !(35..=36_500).contains(&self.usage.aggregate_retention_days)
        {
            anyhow::bail!(
                "usage.aggregate_retention_days must be 35..=36500 (a month's quota is counted from them), or 0 to keep them forever"
            );
        }
        if self.alerts.spike_multiple.is_nan() || self.alerts.spike_multiple <= 1.0 {
            anyhow::bail!("alerts.spike_multiple must be greater than 1");
        }
        let outbound = crate::netguard::Outbound::from_config(&self.outbound)?;
        if let Some(url) = &self.alerts.webhook_url
            && outbound.check_syntax(url).is_err()
        {
            anyhow::bail!(
                "alerts.webhook_url must be an https URL without user info (plain http only to a destination in [outbound] allow)"
            );
        }
        let mut models = std::collections::HashSet::new();
        for m in &self.models {
            if !names.contains(m.provider.as_str()) {
                anyhow::bail!(
                    "model {:?} routes to unknown provider {:?}",
                    m.name,
                    m.provider
                );
            }
            if !models.insert(m.name.as_str()) {
                anyhow::bail!("model {:?} is defined twice", m.name);
            }
        }
        Ok(())
    }

    /// True when the store is SQLite.
    pub fn is_sqlite(&self) -> bool {
        self.database_url.expose().starts_with("sqlite:")
    }
}

/// `public_url` is the JWT issuer and the base of every link the gateway sends: an absolute
/// `http`/`https` URL with a host, no user info, query or fragment.
fn check_public_url(u: &str) -> anyhow::Result<()> {
    // The URL parser would strip or encode them; the value is used as written (the JWT `iss`).
    if u.chars().any(|c| c.is_whitespace() || c.is_control()) {
        anyhow::bail!("public_url must not contain spaces or control characters, got {u:?}");
    }
    let parsed = url::Url::parse(u)
        .map_err(|e| anyhow::anyhow!("public_url must be an absolute URL ({e}), got {u:?}"))?;
    if !matches!(parsed.scheme(), "http" | "https")
        || parsed.host_str().is_none_or(str::is_empty)
        || !parsed.username().is_empty()
        || parsed.password().is_some()
        || parsed.query().is_some()
        || parsed.fragment().is_some()
    {
        anyhow::bail!(
            "public_url must be an http or https URL with a host and no user, query or fragment, got {u:?}"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_url_follows_the_bound_port_only_when_derived() {
        let finished = |text: &str| {
            let mut c = Config::from_toml(text)?;
            c.finish().map(|()| c)
        };
        let bound: SocketAddr = "127.0.0.1:40123".parse().unwrap();
        let mut c = finished("listen = \"127.0.0.1:0\"").unwrap();
        assert_eq!(c.public_url, "http://127.0.0.1:0");
        c.bound_to(bound);
        assert_eq!(c.public_url, "http://127.0.0.1:40123");
        let mut c =
            finished("listen = \"127.0.0.1:0\"\npublic_url = \"https://gw.example.com\"").unwrap();
        c.bound_to(bound);
        assert_eq!(
            c.public_url, "https://gw.example.com",
            "a configured URL is kept"
        );
        let mut c = finished("listen = \"127.0.0.1:8080\"").unwrap();
        c.bound_to("127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.public_url, "http://127.0.0.1:8080");
    }

    #[test]
    fn public_url_is_an_absolute_http_url() {
        let finished = |text: &str| {
            let mut c = Config::from_toml(text)?;
            c.finish().map(|()| c)
        };
        let c = finished("public_url = \"/\"").unwrap();
        assert_eq!(
            c.public_url, "http://127.0.0.1:8080",
            "only slashes = the default"
        );
        let c = finished("public_url = \"https://gw.example.com///\"").unwrap();
        assert_eq!(c.public_url, "https://gw.example.com");
        for bad in [
            "gw.example.com",
            "ftp://gw.example.com",
            "https://u:p@gw.example.com",
            "https://gw.example.com/?a=1",
            "https://gw.example.com/#x",
            "http://",
            // Found by fuzzing: the inner space survived one `finish` and was trimmed by the next.
            "http://127.0.0.1:808 /",
            "https://gw.example.com/a b",
            "https://gw.example.com/\tx",
        ] {
            assert!(finished(&format!("public_url = {bad:?}")).is_err(), "{bad}");
        }
    }

    #[test]
    fn toml_example_from_spec_parses() {
        let text = r#"
listen = "127.0.0.1:8080"
public_url = "http://127.0.0.1:8080"
database_url = "sqlite://./tollgate-data/tollgate.db"
key_prefix = "sgk"
data_dir = "./tollgate-data"

[auth]
access_token_ttl_seconds = 3600
refresh_token_ttl_seconds = 2592000
open_signup = true

[email]
smtp_url = ""

[[providers]]
name = "openai"
kind = "openai"
base_url = "https://api.example.com/v1"
api_key_env = "OPENAI_API_KEY"

[[models]]
name = "gpt-4o-mini"
provider = "openai"
upstream_model = "gpt-4o-mini"
"#;
        let mut cfg = Config::from_toml(text).unwrap();
        cfg.finish().unwrap();
        assert_eq!(cfg.key_prefix, "sgk");
        assert_eq!(cfg.models[0].provider, "openai");
        assert!(cfg.is_sqlite());
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let mut cfg = Config {
            database_url: Secret::new("postgres://u:hunter2@h/db"),
            ..Config::default()
        };
        cfg.metrics_token = Some(Secret::new("hunter2"));
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }

    #[test]
    fn rejects_unknown_provider_and_bad_prefix() {
        let mut cfg = Config::from_toml("[[models]]\nname='a'\nprovider='nope'\n").unwrap();
        assert!(cfg.finish().is_err());
        let mut cfg = Config {
            key_prefix: "Bad_".into(),
            ..Config::default()
        };
        assert!(cfg.finish().is_err());
    }

    #[test]
    fn the_outbound_allow_list_is_validated_and_read_from_the_environment() {
        let mut cfg = Config::from_toml(
            "[outbound]\nallow = [\"10.0.0.0/8\", \"idp.internal\", \"127.0.0.1:9000\"]\n",
        )
        .unwrap();
        cfg.finish().unwrap();
        assert_eq!(cfg.outbound.allow.len(), 3);
        let mut cfg = Config::from_toml("[outbound]\nallow = [\"10.1.0.0/8\"]\n").unwrap();
        assert!(cfg.finish().is_err(), "host bits past the prefix");
        let mut cfg = Config::default();
        cfg.apply_env(|k| {
            (k == "TOLLGATE_OUTBOUND_ALLOW").then(|| "10.0.0.0/8, idp.internal:8443".to_string())
        })
        .unwrap();
        assert_eq!(cfg.outbound.allow, ["10.0.0.0/8", "idp.internal:8443"]);
    }

    #[test]
    fn a_plain_http_webhook_needs_the_allow_list() {
        let mut cfg = Config::default();
        cfg.alerts.webhook_url = Some("http://10.0.0.7/hook".into());
        assert!(cfg.finish().is_err());
        let mut cfg = Config::default();
        cfg.alerts.webhook_url = Some("http://10.0.0.7/hook".into());
        cfg.outbound.allow = vec!["10.0.0.0/8".into()];
        cfg.finish().unwrap();
        let mut cfg = Config::default();
        cfg.alerts.webhook_url = Some("https://user:pw@hooks.example.com/x".into());
        assert!(cfg.finish().is_err());
    }

    #[test]
    fn env_overrides_apply() {
        let mut cfg = Config::default();
        cfg.apply_env(|k| (k == "TOLLGATE_KEY_PREFIX").then(|| "sgk".to_string()))
            .unwrap();
        assert_eq!(cfg.key_prefix, "sgk");
    }
}
