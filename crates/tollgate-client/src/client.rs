//! The client: one place that sends every call, with its credential, the `AUTH_TOKEN_EXPIRED`
//! renewal and the `RATE_LIMITED` retries.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::auth::{Auth, CallCtx};
use crate::error::{ApiError, Code, Error};
use crate::sse::ChatStream;
use crate::types::*;
use crate::util::unix_secs;

/// When a `429 RATE_LIMITED` is retried: after its `Retry-After`, at most `max_retries` times
/// per call and `max_total_wait` in all, and only if one wait is at most `max_wait`.
/// `QUOTA_EXCEEDED` (and any response with `x-should-retry: false`) is never retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub max_wait: Duration,
    pub max_total_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 2,
            max_wait: Duration::from_secs(10),
            max_total_wait: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        }
    }
}

/// What a retry hook is told before the client waits.
#[derive(Debug, Clone)]
pub struct RetryEvent {
    /// 1 for the first retry.
    pub attempt: u32,
    pub wait: Duration,
    pub error: ApiError,
}

type RetryHook = Arc<dyn Fn(&RetryEvent) + Send + Sync>;
type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Per-call extras: headers (e.g. `X-End-User-Id`), and the parameters `get_jwt` receives.
#[derive(Debug, Clone, Default)]
pub struct RequestOptions {
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Overrides the parameters handed to `get_jwt` (e.g. fields that are not in the body).
    pub jwt_params: Option<Value>,
}

impl RequestOptions {
    pub fn header(mut self, name: &str, value: &str) -> Result<Self, Error> {
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| Error::Config(format!("{name:?} is not a header name")))?;
        let v = HeaderValue::from_str(value)
            .map_err(|_| Error::Config(format!("invalid value for header {name}")))?;
        self.headers.push((n, v));
        Ok(self)
    }

    /// `X-End-User-Id` (usage accounting per end user for keys and service accounts).
    pub fn end_user(self, id: &str) -> Result<Self, Error> {
        self.header("x-end-user-id", id)
    }

    pub fn jwt_params(mut self, params: Value) -> Self {
        self.jwt_params = Some(params);
        self
    }
}

/// How [`Client::wait_operation`] polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitOptions {
    /// First pause between polls; doubles up to `max_interval`.
    pub interval: Duration,
    pub max_interval: Duration,
    pub timeout: Duration,
}

impl Default for WaitOptions {
    fn default() -> Self {
        WaitOptions {
            interval: Duration::from_millis(250),
            max_interval: Duration::from_secs(2),
            timeout: Duration::from_secs(300),
        }
    }
}

/// Builds a [`Client`].
pub struct ClientBuilder {
    base: String,
    auth: Option<Auth>,
    retry: RetryPolicy,
    http: Option<reqwest::Client>,
    timeout: Option<Duration>,
    headers: HeaderMap,
    clock: Option<Clock>,
    on_retry: Option<RetryHook>,
}

impl ClientBuilder {
    pub fn auth(mut self, auth: impl Into<Auth>) -> Self {
        self.auth = Some(auth.into());
        self
    }

    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Use this reqwest client (proxies, TLS roots, timeouts of your own).
    pub fn http_client(mut self, http: reqwest::Client) -> Self {
        self.http = Some(http);
        self
    }

    /// The whole-request timeout of the default HTTP client (default: none; streams may be long).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// A header sent on every call.
    pub fn default_header(mut self, name: &str, value: &str) -> Result<Self, Error> {
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| Error::Config(format!("{name:?} is not a header name")))?;
        let v = HeaderValue::from_str(value)
            .map_err(|_| Error::Config(format!("invalid value for header {name}")))?;
        self.headers.insert(n, v);
        Ok(self)
    }

    /// The clock token expiry is judged by (default: the system clock). For tests, and for
    /// devices whose clock is known to be off.
    pub fn clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Called before every retry wait (for logging and metrics).
    pub fn on_retry(mut self, f: impl Fn(&RetryEvent) + Send + Sync + 'static) -> Self {
        self.on_retry = Some(Arc::new(f));
        self
    }

    pub fn build(self) -> Result<Client, Error> {
        let auth = self.auth.ok_or_else(|| {
            Error::Config("no auth mode: use .auth(Auth::api_key(..)), Auth::jwt, …".into())
        })?;
        let http = match self.http {
            Some(h) => h,
            None => {
                let mut b = reqwest::Client::builder();
                if let Some(t) = self.timeout {
                    b = b.timeout(t);
                }
                b.build().map_err(Error::Transport)?
            }
        };
        Ok(Client {
            inner: Arc::new(Inner {
                base: normalise_base(&self.base)?,
                http,
                auth,
                retry: self.retry,
                headers: self.headers,
                clock: self.clock,
                on_retry: self.on_retry,
            }),
            options: Arc::new(RequestOptions::default()),
        })
    }
}

/// The gateway's root URL without a trailing `/` (a trailing `/v1` is tolerated and removed).
pub(crate) fn normalise_base(base: &str) -> Result<String, Error> {
    let b = base.trim().trim_end_matches('/');
    let b = b.strip_suffix("/v1").unwrap_or(b);
    let url = reqwest::Url::parse(b)
        .map_err(|_| Error::Config(format!("{base:?} is not an absolute URL")))?;
    if !matches!(url.scheme(), "http" | "https") || url.query().is_some() {
        return Err(Error::Config(format!(
            "{base:?}: the base URL must be http(s) without a query"
        )));
    }
    Ok(b.to_string())
}

struct Inner {
    base: String,
    http: reqwest::Client,
    auth: Auth,
    retry: RetryPolicy,
    headers: HeaderMap,
    clock: Option<Clock>,
    on_retry: Option<RetryHook>,
}

/// A Tollgate client. Cheap to clone; clones share the HTTP pool and the auth state.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    options: Arc<RequestOptions>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.inner.base)
            .field("auth", &self.inner.auth)
            .finish_non_exhaustive()
    }
}

/// Whether a route takes any credential including `x-user-id` (SPEC §5 "optional").
#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Required,
    Optional,
}

impl Client {
    /// `base_url` is the gateway's root, e.g. `http://127.0.0.1:8080`.
    pub fn builder(base_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base: base_url.into(),
            auth: None,
            retry: RetryPolicy::default(),
            http: None,
            timeout: None,
            headers: HeaderMap::new(),
            clock: None,
            on_retry: None,
        }
    }

    /// A client with the given auth and defaults otherwise.
    pub fn new(base_url: impl Into<String>, auth: impl Into<Auth>) -> Result<Client, Error> {
        Client::builder(base_url).auth(auth).build()
    }

    /// The same client with per-call extras (headers, `get_jwt` parameters).
    pub fn with_options(&self, options: RequestOptions) -> Client {
        Client {
            inner: self.inner.clone(),
            options: Arc::new(options),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    pub fn auth(&self) -> &Auth {
        &self.inner.auth
    }

    fn now(&self) -> i64 {
        match &self.inner.clock {
            Some(c) => unix_secs(c()),
            None => crate::util::unix_now(),
        }
    }

    // ---- the calls ----------------------------------------------------------------------

    /// `GET /v1/models` (optional auth: `x-user-id` in the `Jwt` and `SubscriptionId` modes).
    pub async fn models(&self) -> Result<ModelList, Error> {
        self.json(Method::GET, "/v1/models", None, Level::Optional, &[])
            .await
    }

    /// `GET /v1/me`: who the gateway thinks the caller is (optional auth).
    pub async fn me(&self) -> Result<Me, Error> {
        self.json(Method::GET, "/v1/me", None, Level::Optional, &[])
            .await
    }

    /// `POST /v1/chat/completions` without streaming.
    pub async fn chat(&self, req: &ChatRequest) -> Result<ChatCompletion, Error> {
        let mut req = req.clone();
        req.stream = None;
        let body = to_value(&req)?;
        self.json(
            Method::POST,
            "/v1/chat/completions",
            Some(body),
            Level::Required,
            &[],
        )
        .await
    }

    /// `POST /v1/chat/completions` with `"stream": true`: typed chunks as they arrive (with the
    /// usage chunk when [`ChatRequest::include_usage`] asked for it). A stream the gateway cuts
    /// (e.g. `AUTH_REVOKED`) ends with that error.
    pub async fn chat_stream(&self, req: &ChatRequest) -> Result<ChatStream, Error> {
        let mut req = req.clone();
        req.stream = Some(true);
        let body = to_value(&req)?;
        let accept = [(
            reqwest::header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        )];
        let res = self
            .send(
                Method::POST,
                "/v1/chat/completions",
                Some(body),
                Level::Required,
                &accept,
            )
            .await?;
        Ok(ChatStream::new(res))
    }

    /// `POST /v1/embeddings`.
    pub async fn embeddings(&self, req: &EmbeddingsRequest) -> Result<Embeddings, Error> {
        let body = to_value(req)?;
        self.json(
            Method::POST,
            "/v1/embeddings",
            Some(body),
            Level::Required,
            &[],
        )
        .await
    }

    /// `POST /v1/images/generations`, synchronously.
    pub async fn images(&self, req: &ImageRequest) -> Result<ImagesResponse, Error> {
        let body = to_value(req)?;
        self.json(
            Method::POST,
            "/v1/images/generations",
            Some(body),
            Level::Required,
            &[],
        )
        .await
    }

    /// `POST /v1/images/generations` with `Prefer: respond-async`: the queued operation.
    pub async fn images_async(&self, req: &ImageRequest) -> Result<Operation, Error> {
        let body = to_value(req)?;
        let prefer = [(
            HeaderName::from_static("prefer"),
            HeaderValue::from_static("respond-async"),
        )];
        let res = self
            .send(
                Method::POST,
                "/v1/images/generations",
                Some(body),
                Level::Required,
                &prefer,
            )
            .await?;
        let status = res.status().as_u16();
        let request_id = request_id(res.headers());
        let bytes = res.bytes().await?;
        if status == 202 {
            return decode(&bytes, request_id);
        }
        // A gateway that answered synchronously: the same result, as a finished operation.
        let result: Value = decode(&bytes, request_id)?;
        Ok(Operation {
            id: String::new(),
            object: "operation".into(),
            status: "succeeded".into(),
            result: Some(result),
            ..Operation::default()
        })
    }

    /// `GET /v1/operations/{id}` (optional auth).
    pub async fn operation(&self, id: &str) -> Result<Operation, Error> {
        if id.is_empty()
            || !id
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        {
            return Err(Error::Config(format!("{id:?} is not an operation id")));
        }
        self.json(
            Method::GET,
            &format!("/v1/operations/{id}"),
            None,
            Level::Optional,
            &[],
        )
        .await
    }

    /// Polls an operation until it is finished; its images on success, else
    /// [`Error::Operation`] with the operation's error.
    pub async fn wait_operation(
        &self,
        op: &Operation,
        wait: WaitOptions,
    ) -> Result<ImagesResponse, Error> {
        let deadline = tokio::time::Instant::now() + wait.timeout;
        let mut pause = wait.interval;
        let mut current = op.clone();
        loop {
            if current.is_finished() {
                return finished(current);
            }
            if tokio::time::Instant::now() + pause > deadline {
                return Err(Error::Timeout(format!(
                    "operation {} is still {} after {:?}",
                    current.id, current.status, wait.timeout
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(wait.max_interval);
            current = self.operation(&current.id).await?;
        }
    }

    /// [`Client::images_async`] then [`Client::wait_operation`].
    pub async fn images_and_wait(
        &self,
        req: &ImageRequest,
        wait: WaitOptions,
    ) -> Result<ImagesResponse, Error> {
        let op = self.images_async(req).await?;
        self.wait_operation(&op, wait).await
    }

    // ---- the machinery -------------------------------------------------------------------

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        level: Level,
        extra: &[(HeaderName, HeaderValue)],
    ) -> Result<T, Error> {
        let res = self.send(method, path, body, level, extra).await?;
        let request_id = request_id(res.headers());
        let bytes = res.bytes().await?;
        decode(&bytes, request_id)
    }

    /// Sends one call: credential, then at most one renewal after `AUTH_TOKEN_EXPIRED`, and the
    /// `RATE_LIMITED` retries of the policy. Returns the first successful response.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        level: Level,
        extra: &[(HeaderName, HeaderValue)],
    ) -> Result<reqwest::Response, Error> {
        let inner = &*self.inner;
        let bytes = match &body {
            Some(v) => Some(Bytes::from(
                serde_json::to_vec(v).map_err(|e| Error::Config(format!("body: {e}")))?,
            )),
            None => None,
        };
        let ctx = CallCtx {
            method: method.as_str(),
            path,
            body: body.as_ref(),
            jwt_params: self.options.jwt_params.as_ref(),
            optional: level == Level::Optional,
        };
        let url = format!("{}{path}", inner.base);
        let mut stale = None;
        let mut renewed = false;
        let mut retries = 0u32;
        let mut waited = Duration::ZERO;
        loop {
            let cred = inner
                .auth
                .credential(&ctx, self.now(), stale.as_ref())
                .await?;
            let mut rb = inner
                .http
                .request(method.clone(), &url)
                .headers(inner.headers.clone());
            for (n, v) in cred
                .headers
                .iter()
                .chain(extra)
                .chain(&self.options.headers)
            {
                rb = rb.header(n, v);
            }
            if let Some(b) = &bytes {
                rb = rb
                    .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                    .body(b.clone());
            }
            let res = rb.send().await?;
            if res.status().is_success() {
                return Ok(res);
            }
            let status = res.status().as_u16();
            let headers = res.headers().clone();
            let body = res.bytes().await?;
            let err = ApiError::from_parts(status, &headers, &body);
            if status == 401
                && err.code() == Code::AuthTokenExpired
                && !renewed
                && inner.auth.renewable(&cred)
            {
                renewed = true;
                stale = cred.token;
                continue;
            }
            stale = None;
            if let Some(wait) = retry_wait(&inner.retry, &err, retries, waited) {
                retries += 1;
                waited += wait;
                if let Some(hook) = &inner.on_retry {
                    hook(&RetryEvent {
                        attempt: retries,
                        wait,
                        error: err.clone(),
                    });
                }
                tokio::time::sleep(wait).await;
                continue;
            }
            return Err(err.into());
        }
    }
}

/// The wait before retrying `err`, if the policy allows one.
fn retry_wait(
    policy: &RetryPolicy,
    err: &ApiError,
    retries: u32,
    waited: Duration,
) -> Option<Duration> {
    // Never a quota: it does not come back before its period resets.
    if err.status != 429
        || err.code() != Code::RateLimited
        || err.kind == "insufficient_quota"
        || err.should_retry == Some(false)
        || retries >= policy.max_retries
    {
        return None;
    }
    let wait = err.retry_after.unwrap_or(Duration::from_secs(1));
    (wait <= policy.max_wait && waited + wait <= policy.max_total_wait).then_some(wait)
}

fn finished(op: Operation) -> Result<ImagesResponse, Error> {
    if op.status == "succeeded" {
        let result = op.result.unwrap_or(Value::Null);
        return serde_json::from_value(result)
            .map_err(|e| Error::decode(format!("operation {} result: {e}", op.id), None));
    }
    let error = op.error.as_ref().and_then(|e| {
        let body = serde_json::json!({ "error": e }).to_string();
        ApiError::from_body(body.as_bytes()).map(Box::new)
    });
    Err(Error::Operation {
        id: op.id,
        status: op.status,
        error,
    })
}

fn to_value<T: Serialize>(v: &T) -> Result<Value, Error> {
    serde_json::to_value(v).map_err(|e| Error::Config(format!("request body: {e}")))
}

fn request_id(h: &HeaderMap) -> Option<String> {
    h.get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn decode<T: DeserializeOwned>(bytes: &[u8], request_id: Option<String>) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::decode(e.to_string(), request_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(status: u16, code: &str, retry: Option<u64>, should: Option<bool>) -> ApiError {
        ApiError {
            status,
            code: code.into(),
            kind: String::new(),
            message: String::new(),
            param: None,
            request_id: None,
            retry_after: retry.map(Duration::from_secs),
            should_retry: should,
            in_stream: false,
        }
    }

    #[test]
    fn only_rate_limits_are_retried_within_the_budget() {
        let p = RetryPolicy::default();
        let z = Duration::ZERO;
        assert_eq!(
            retry_wait(&p, &err(429, "RATE_LIMITED", Some(1), None), 0, z),
            Some(Duration::from_secs(1))
        );
        // A quota, with or without the header, and whatever Retry-After says.
        assert_eq!(
            retry_wait(&p, &err(429, "QUOTA_EXCEEDED", Some(1), None), 0, z),
            None
        );
        assert_eq!(
            retry_wait(&p, &err(429, "QUOTA_EXCEEDED", Some(1), Some(false)), 0, z),
            None
        );
        assert_eq!(
            retry_wait(&p, &err(429, "RATE_LIMITED", Some(1), Some(false)), 0, z),
            None
        );
        assert_eq!(
            retry_wait(&p, &err(503, "UNAVAILABLE", Some(1), None), 0, z),
            None
        );
        // Bounded: count, one wait, total.
        assert_eq!(
            retry_wait(&p, &err(429, "RATE_LIMITED", Some(1), None), 2, z),
            None
        );
        assert_eq!(
            retry_wait(&p, &err(429, "RATE_LIMITED", Some(11), None), 0, z),
            None
        );
        assert_eq!(
            retry_wait(
                &p,
                &err(429, "RATE_LIMITED", Some(5), None),
                1,
                Duration::from_secs(26)
            ),
            None
        );
    }

    #[test]
    fn base_urls() {
        assert_eq!(normalise_base("http://h:1/").unwrap(), "http://h:1");
        assert_eq!(normalise_base("http://h:1/v1").unwrap(), "http://h:1");
        assert_eq!(normalise_base("https://h/gw").unwrap(), "https://h/gw");
        assert!(normalise_base("h:1").is_err());
        assert!(normalise_base("ftp://h").is_err());
    }
}
