//! The OpenAI-compatible proxy (SPEC §4.1): model routes from config, one upstream HTTP client per
//! provider with TCP_NODELAY and a keep-alive pool (`client`), streams passed through event by
//! event, every pending call tied to the caller's revocation token and to the client connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::auth::middleware::Caller;
use crate::auth::revocation::CutReason;
use crate::config::{Config, ProviderKind, Secret};
use crate::error::{ApiError, ErrorCode};
use crate::http::RawJson;
use crate::limits::Meter;
use crate::usage::RequestInfo;

pub mod mock;

use tollgate_upstream::{ByteStream, UpstreamFailure};
use tollgate_upstream::{client, sse};

use sse::{EventKind, EventSplitter, ResponseEvent, TokenUsage};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat = 0,
    Embeddings = 1,
    Images = 2,
    /// Legacy text completions (`/v1/completions`).
    Completions = 3,
    /// The Responses API (`/v1/responses`).
    Responses = 4,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat/completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Images => "images/generations",
            Endpoint::Completions => "completions",
            Endpoint::Responses => "responses",
        }
    }

    /// Answers as SSE with `"stream": true`.
    fn streams(self) -> bool {
        matches!(
            self,
            Endpoint::Chat | Endpoint::Completions | Endpoint::Responses
        )
    }

    /// A stream of chat-completion-style chunks ended by `data: [DONE]`, whose usage comes in a
    /// chunk the gateway asks for (`stream_options.include_usage`). A Responses API stream
    /// instead ends with its `response.completed` event, which always carries the usage.
    fn chunked_stream(self) -> bool {
        matches!(self, Endpoint::Chat | Endpoint::Completions)
    }
}

/// What the client is told when the upstream failed.
pub fn upstream_error(f: UpstreamFailure) -> ApiError {
    match f {
        UpstreamFailure::Connect => ApiError::new(
            ErrorCode::UpstreamError,
            "Could not connect to the upstream provider",
        ),
        UpstreamFailure::Timeout => ApiError::new(
            ErrorCode::UpstreamTimeout,
            "The upstream provider did not answer in time",
        ),
        UpstreamFailure::Broken => ApiError::new(
            ErrorCode::UpstreamError,
            "The upstream provider failed mid-response",
        ),
    }
}

/// Formats an SSE `error` event in the OpenAI error shape.
pub fn error_event(err: &ApiError) -> Bytes {
    Bytes::from(format!("event: error\ndata: {}\n\n", err.body()))
}

pub enum ReplyBody {
    Full(Bytes),
    Stream(ByteStream),
}

/// What an upstream answered (before the gateway maps it for the client).
pub struct UpstreamReply {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub body: ReplyBody,
    pub retry_after: Option<u64>,
}

#[derive(Debug)]
pub enum ProviderBackend {
    OpenAi {
        base_url: String,
        /// The client for this provider's base URL (with its key and connection pool).
        upstream: Box<client::Upstream>,
        /// Request targets of `chat/completions`, `embeddings`, `images/generations`,
        /// `completions`, `responses` (indexed by `Endpoint`).
        targets: [String; 5],
        timeout: Duration,
    },
    Mock,
}

#[derive(Debug)]
pub struct Provider {
    /// Interned: also the `provider` label of upstream metrics.
    pub name: &'static str,
    pub backend: ProviderBackend,
}

impl Provider {
    /// Deadline for the answer head, and the idle limit between stream chunks.
    pub fn timeout(&self, default: Duration) -> Duration {
        match &self.backend {
            ProviderBackend::OpenAi { timeout, .. } => *timeout,
            ProviderBackend::Mock => default,
        }
    }
}

#[derive(Debug)]
pub struct ModelRoute {
    pub name: String,
    pub provider: Arc<Provider>,
    pub upstream_model: String,
}

/// Model routes and their upstreams.
#[derive(Debug)]
pub struct Proxy {
    routes: Vec<Arc<ModelRoute>>,
    /// A fixed table built from the configuration (only looked up afterwards): Fx-hashed.
    by_name: HashMap<String, Arc<ModelRoute>, crate::util::Fx>,
    timeout: Duration,
}

impl Proxy {
    pub fn from_config(cfg: &Config) -> anyhow::Result<Self> {
        let timeout = Duration::from_secs(cfg.upstream_timeout_seconds.max(1));
        let needs_tls = cfg
            .providers
            .iter()
            .any(|p| p.kind == ProviderKind::Openai && p.base_url.starts_with("https:"));
        let settings = client::Settings {
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_idle: 256,
            tls: if needs_tls {
                Some(client::tls_config()?)
            } else {
                None
            },
        };
        let mut providers: HashMap<String, Arc<Provider>> = HashMap::new();
        for p in &cfg.providers {
            let backend = match p.kind {
                ProviderKind::Mock => ProviderBackend::Mock,
                ProviderKind::Openai => {
                    let api_key = match &p.api_key_env {
                        None if p.api_key.is_some() => p.api_key.clone(),
                        Some(var) => match std::env::var(var) {
                            Ok(v) if !v.is_empty() => Some(Secret::new(v)),
                            _ => {
                                tracing::warn!(provider = %p.name, env = %var, "upstream API key variable is not set");
                                None
                            }
                        },
                        None => None,
                    };
                    let base_url = p.base_url.trim_end_matches('/').to_string();
                    let upstream = client::Upstream::new(
                        &base_url,
                        api_key.as_ref().map(Secret::expose),
                        &settings,
                    )
                    .map_err(|e| anyhow::anyhow!("provider {}: {e:#}", p.name))?;
                    let targets = [
                        Endpoint::Chat,
                        Endpoint::Embeddings,
                        Endpoint::Images,
                        Endpoint::Completions,
                        Endpoint::Responses,
                    ]
                    .map(|e| upstream.request_target(e.path()));
                    ProviderBackend::OpenAi {
                        base_url,
                        upstream: Box::new(upstream),
                        targets,
                        timeout: p.timeout_seconds.map_or(timeout, Duration::from_secs),
                    }
                }
            };
            providers.insert(
                p.name.clone(),
                Arc::new(Provider {
                    name: crate::metrics::intern(&p.name),
                    backend,
                }),
            );
        }
        let mut routes = Vec::new();
        for m in &cfg.models {
            let provider = providers.get(&m.provider).cloned().ok_or_else(|| {
                anyhow::anyhow!("model {} routes to unknown provider {}", m.name, m.provider)
            })?;
            routes.push(Arc::new(ModelRoute {
                name: m.name.clone(),
                provider,
                upstream_model: m.upstream_model.clone().unwrap_or_else(|| m.name.clone()),
            }));
        }
        if cfg.providers.is_empty() && cfg.models.is_empty() {
            // No provider configured: serve the built-in mock models so `serve` works out of the box.
            let provider = Arc::new(Provider {
                name: "mock",
                backend: ProviderBackend::Mock,
            });
            for (name, _) in mock::MODELS {
                routes.push(Arc::new(ModelRoute {
                    name: (*name).into(),
                    provider: provider.clone(),
                    upstream_model: (*name).into(),
                }));
            }
        }
        let by_name = routes.iter().map(|r| (r.name.clone(), r.clone())).collect();
        Ok(Self {
            routes,
            by_name,
            timeout,
        })
    }

    pub fn route(&self, model: &str) -> Option<&Arc<ModelRoute>> {
        self.by_name.get(model)
    }

    pub fn routes(&self) -> &[Arc<ModelRoute>] {
        &self.routes
    }

    /// Sends one request upstream and returns the reply head (the body may still be streaming).
    pub async fn send(
        &self,
        route: &ModelRoute,
        endpoint: Endpoint,
        body: &Value,
        bytes: Bytes,
    ) -> Result<UpstreamReply, UpstreamFailure> {
        match &route.provider.backend {
            ProviderBackend::Mock => Ok(mock::respond(endpoint, body)),
            ProviderBackend::OpenAi {
                upstream,
                targets,
                timeout,
                ..
            } => {
                let resp = tokio::time::timeout(
                    *timeout,
                    upstream.post_json(&targets[endpoint as usize], bytes),
                )
                .await
                .map_err(|_| UpstreamFailure::Timeout)??;
                let status = resp.status;
                let content_type = resp.content_type.clone();
                let retry_after = resp.retry_after;
                let is_sse = content_type
                    .as_ref()
                    .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
                let body = if status.is_success() && is_sse {
                    ReplyBody::Stream(resp.into_stream())
                } else {
                    let bytes = tokio::time::timeout(*timeout, resp.bytes())
                        .await
                        .map_err(|_| UpstreamFailure::Timeout)??;
                    ReplyBody::Full(bytes)
                };
                Ok(UpstreamReply {
                    status,
                    content_type,
                    body,
                    retry_after,
                })
            }
        }
    }
}

/// The error a cut request receives.
fn cut_error(reason: CutReason) -> ApiError {
    match reason {
        CutReason::Revoked => ApiError::new(
            ErrorCode::AuthRevoked,
            "The credential was revoked during the request",
        ),
        CutReason::SubscriptionInactive => ApiError::new(
            ErrorCode::SubscriptionInactive,
            "The subscription is no longer active",
        ),
        CutReason::Shutdown => {
            let mut e = ApiError::unavailable("The gateway is shutting down; retry the request");
            e.retry_after = Some(1);
            e
        }
    }
}

/// Maps a non-2xx upstream answer. Client errors the caller can fix (400/413/422) pass through
/// with the provider's body; the provider's rate limiting becomes `429 RATE_LIMITED`; anything
/// else (its auth failures, 404s, 5xx) is `502 UPSTREAM_ERROR` with no upstream detail.
fn map_upstream_error(
    provider: &str,
    status: StatusCode,
    body: &Bytes,
    retry_after: Option<u64>,
) -> Response {
    match status.as_u16() {
        400 | 413 | 422
            if serde_json::from_slice::<Value>(body).is_ok_and(|v| v.get("error").is_some()) =>
        {
            (
                status,
                [(header::CONTENT_TYPE, "application/json")],
                body.clone(),
            )
                .into_response()
        }
        429 => {
            let mut e = ApiError::new(
                ErrorCode::RateLimited,
                "The upstream provider is rate limiting; retry later",
            );
            e.retry_after = Some(retry_after.unwrap_or(1));
            e.into_response()
        }
        code => {
            tracing::warn!(provider, status = code, "upstream returned an error");
            ApiError::new(
                ErrorCode::UpstreamError,
                format!("The upstream provider answered with status {code}"),
            )
            .into_response()
        }
    }
}

/// `GET /v1/models`: the models this caller may use.
fn model_object(r: &ModelRoute) -> Value {
    json!({"id": r.name, "object": "model", "created": 0, "owned_by": r.provider.name})
}

pub async fn list_models(State(state): State<AppState>, caller: Caller) -> Response {
    let data: Vec<Value> = state
        .proxy
        .routes()
        .iter()
        .filter(|r| model_allowed(&caller, &r.name))
        .map(|r| model_object(r))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// `GET /v1/models/{id}` (the SDKs' `models.retrieve`): a model this caller may use, else `404`
/// (a model it may not use is as absent as one that does not exist).
pub async fn get_model(
    State(state): State<AppState>,
    caller: Caller,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    match state
        .proxy
        .routes()
        .iter()
        .find(|r| r.name == id && model_allowed(&caller, &r.name))
    {
        Some(r) => axum::Json(model_object(r)).into_response(),
        None => ApiError::not_found("model").into_response(),
    }
}

/// Whether a caller may use a model: every configured model, unless the principal carries a
/// list (a subscription's product).
pub fn model_allowed(caller: &Caller, model: &str) -> bool {
    caller
        .allowed_models
        .as_ref()
        .is_none_or(|m| m.contains(model))
}

pub async fn chat_completions(
    State(state): State<AppState>,
    caller: Caller,
    info: RequestInfo,
    body: RawJson,
) -> Response {
    forward(&state, caller, Endpoint::Chat, body, info)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v1/responses` (the Responses API, which current SDKs and agent frameworks default
/// to), JSON or SSE, with the same auth, limits, metering and revocation as chat.
pub async fn responses(
    State(state): State<AppState>,
    caller: Caller,
    info: RequestInfo,
    body: RawJson,
) -> Response {
    forward(&state, caller, Endpoint::Responses, body, info)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v1/completions` (legacy text completions: LangChain's `OpenAI`, litellm's
/// `text_completion`), JSON or SSE, with the same auth, limits and metering as chat.
pub async fn completions(
    State(state): State<AppState>,
    caller: Caller,
    info: RequestInfo,
    body: RawJson,
) -> Response {
    forward(&state, caller, Endpoint::Completions, body, info)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

pub async fn embeddings(
    State(state): State<AppState>,
    caller: Caller,
    info: RequestInfo,
    body: RawJson,
) -> Response {
    forward(&state, caller, Endpoint::Embeddings, body, info)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

pub async fn image_generations(
    State(state): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    info: RequestInfo,
    body: RawJson,
) -> Response {
    // `Prefer: respond-async`: queue an operation instead (crate::subscriptions::operations).
    if crate::subscriptions::operations::wants_async(&headers) {
        return submit_async_images(&state, caller, body, info)
            .await
            .unwrap_or_else(IntoResponse::into_response);
    }
    forward(&state, caller, Endpoint::Images, body, info)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// An asynchronous image generation goes through the same admission as a synchronous one
/// (limits, quotas, one usage record for the submission), then is queued as an operation.
async fn submit_async_images(
    state: &AppState,
    caller: Caller,
    body: RawJson,
    info: RequestInfo,
) -> Result<Response, ApiError> {
    let model = body
        .value
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let meter = crate::limits::admit(
        state,
        &caller,
        Endpoint::Images.path(),
        &model,
        &body.value,
        &info,
    )
    .await?;
    match crate::subscriptions::operations::submit(state, caller, body).await {
        Ok(res) => Ok(meter.respond(res)),
        Err(e) => Err(meter.fail(e)),
    }
}

/// Rewrites the body for the upstream: the public model name becomes the upstream one, and a
/// stream asks for usage. Unknown fields pass through untouched; the original bytes are reused
/// when nothing changed, and a stream that only lacks `stream_options` gets it spliced in
/// without re-serialising the body. Returns the body and whether the client itself asked for
/// usage.
pub(crate) fn prepare(
    raw: RawJson,
    route: &ModelRoute,
    stream: bool,
) -> Result<(Value, Bytes, bool), ApiError> {
    let RawJson { bytes, mut value } = raw;
    let mut changed = false;
    // Set when the only change is adding `stream_options` where the body has none.
    let mut splice = false;
    if route.upstream_model != route.name {
        value["model"] = Value::String(route.upstream_model.clone());
        changed = true;
    }
    let mut client_wants_usage = false;
    if stream {
        match value.get_mut("stream_options") {
            Some(Value::Object(opts)) => {
                client_wants_usage =
                    opts.get("include_usage").and_then(Value::as_bool) == Some(true);
                if !client_wants_usage {
                    opts.insert("include_usage".into(), Value::Bool(true));
                    changed = true;
                }
            }
            None => {
                value["stream_options"] = json!({"include_usage": true});
                splice = !changed;
                changed = true;
            }
            Some(Value::Null) => {
                value["stream_options"] = json!({"include_usage": true});
                changed = true;
            }
            Some(_) => {
                return Err(ApiError::validation(
                    "stream_options",
                    "stream_options must be an object",
                ));
            }
        }
    }
    let bytes = if !changed {
        bytes
    } else if let Some(spliced) = splice
        .then(|| splice_first_member(&bytes, br#""stream_options":{"include_usage":true}"#))
        .flatten()
    {
        spliced
    } else {
        Bytes::from(value.to_string())
    };
    Ok((value, bytes, client_wants_usage))
}

/// Inserts `member` as the first member of the JSON object in `json` (which has other members
/// and does not have this one). `None` if `json` does not start with `{`.
fn splice_first_member(json: &[u8], member: &[u8]) -> Option<Bytes> {
    let open = json.iter().position(|b| !b.is_ascii_whitespace())?;
    if json[open] != b'{' {
        return None;
    }
    let mut out = Vec::with_capacity(json.len() + member.len() + 1);
    out.extend_from_slice(&json[..=open]);
    out.extend_from_slice(member);
    out.push(b',');
    out.extend_from_slice(&json[open + 1..]);
    Some(Bytes::from(out))
}

/// The model a client's body names: a non-empty string.
pub(crate) fn request_model(value: &Value) -> Result<&str, ApiError> {
    match value.get("model") {
        Some(Value::String(m)) if !m.is_empty() => Ok(m),
        _ => Err(ApiError::validation(
            "model",
            "The model field is required and must be a string",
        )),
    }
}

/// Whether the answer streams: `stream: true`, on chat and legacy completions.
pub(crate) fn request_stream(value: &Value, endpoint: Endpoint) -> Result<bool, ApiError> {
    match value.get("stream") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(false),
        Some(Value::Bool(true)) => Ok(endpoint.streams()),
        Some(_) => Err(ApiError::validation("stream", "stream must be a boolean")),
    }
}

async fn forward(
    state: &AppState,
    caller: Caller,
    endpoint: Endpoint,
    raw: RawJson,
    info: RequestInfo,
) -> Result<Response, ApiError> {
    let model = request_model(&raw.value)?.to_string();
    let route = state.proxy.route(&model).cloned().ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            format!("The model {model:?} does not exist"),
        )
        .with_param("model")
    })?;
    if !model_allowed(&caller, &model) {
        return Err(ApiError::permission_denied(format!(
            "This credential may not use the model {model:?}"
        ))
        .with_param("model"));
    }
    if let Some(binding) = &caller.binding {
        binding.check(&raw.value)?;
    }
    let stream = request_stream(&raw.value, endpoint)?;
    // A Responses stream always reports its usage; only chunked streams are asked for it.
    let ask_usage = stream && endpoint.chunked_stream();
    let (value, bytes, client_wants_usage) = prepare(raw, &route, ask_usage)?;
    // Limits and quotas (429s carry their headers); the meter settles when it drops.
    let mut meter =
        crate::limits::admit(state, &caller, endpoint.path(), &route.name, &value, &info).await?;
    let started = Instant::now();
    let token = caller.live.token().clone();
    // Dropping this future (client gone) drops the upstream request; a revocation cancels it.
    let reply = tokio::select! {
        biased;
        () = token.cancelled() => {
            let reason = caller.live.reason();
            state.metrics.stream_cut(reason.label());
            return Err(meter.fail(cut_error(reason)));
        }
        r = state.proxy.send(&route, endpoint, &value, bytes) => r,
    };
    let provider = route.provider.name;
    let reply = match reply {
        Ok(r) => r,
        Err(f) => {
            state
                .metrics
                .upstream(provider, f.label(), started.elapsed().as_secs_f64());
            return Err(meter.fail(upstream_error(f)));
        }
    };
    let outcome = if reply.status.is_success() {
        "ok"
    } else {
        "error_status"
    };
    state
        .metrics
        .upstream(provider, outcome, started.elapsed().as_secs_f64());
    match reply.body {
        ReplyBody::Full(body) if reply.status.is_success() => {
            let Ok(usage) = TokenUsage::from_body(&body) else {
                tracing::warn!(provider, "upstream sent a body that is not a JSON object");
                return Err(meter.fail(ApiError::new(
                    ErrorCode::UpstreamError,
                    "The upstream provider sent an invalid response",
                )));
            };
            tracing::debug!(?usage, "completed");
            meter.set_usage(usage);
            Ok(meter.respond(
                (
                    StatusCode::OK,
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    )],
                    public_model_json(body, &route),
                )
                    .into_response(),
            ))
        }
        ReplyBody::Full(body) => Ok(meter.respond(map_upstream_error(
            provider,
            reply.status,
            &body,
            reply.retry_after,
        ))),
        ReplyBody::Stream(upstream) => {
            let idle = route.provider.timeout(state.proxy.timeout);
            Ok(stream_response(
                state,
                caller,
                upstream,
                StreamOptions {
                    client_wants_usage,
                    responses: endpoint == Endpoint::Responses,
                    idle,
                    rename: (route.upstream_model != route.name)
                        .then(|| Arc::<str>::from(route.name.as_str())),
                },
                meter,
            ))
        }
    }
}

struct StreamState {
    upstream: ByteStream,
    splitter: EventSplitter,
    queue: std::collections::VecDeque<Bytes>,
    caller: Caller,
    token: tokio_util::sync::CancellationToken,
    client_wants_usage: bool,
    idle: Duration,
    usage: Option<TokenUsage>,
    saw_done: bool,
    done: bool,
    state: AppState,
    /// Settles limits and writes the usage record when the stream ends or is dropped (client gone).
    meter: Meter,
    /// The public model name, when chunks must be rewritten to it.
    rename: Option<Arc<str>>,
    /// A Responses API stream (typed events, no `[DONE]`).
    responses: bool,
}

impl StreamState {
    fn fail(&mut self, err: &ApiError, reason: &'static str) {
        self.done = true;
        self.meter.stream_failed(reason);
        self.queue.push_back(error_event(err));
        self.state.metrics.stream_cut(reason);
    }

    fn take_events(&mut self) {
        if self.responses {
            return self.take_response_events();
        }
        while let Some(ev) = self.splitter.next_event() {
            match sse::classify(&ev) {
                EventKind::UsageOnly(u) => {
                    self.usage = Some(u);
                    self.meter.set_usage(Some(u));
                    if self.client_wants_usage {
                        let ev = match &self.rename {
                            Some(name) => public_model_event(ev, name),
                            None => ev,
                        };
                        self.queue.push_back(ev);
                    }
                }
                EventKind::Data(u) => {
                    if u.is_some() {
                        self.usage = u;
                    }
                    self.meter.set_usage(u);
                    self.meter.chunk();
                    let ev = match &self.rename {
                        Some(name) => public_model_event(ev, name),
                        None => ev,
                    };
                    self.queue.push_back(ev);
                }
                EventKind::Done => {
                    self.saw_done = true;
                    self.queue.push_back(ev);
                }
            }
        }
    }

    /// A Responses API stream: every event is forwarded (with the public model name); the
    /// final one carries the usage and ends the stream.
    fn take_response_events(&mut self) {
        while let Some(ev) = self.splitter.next_event() {
            match sse::classify_response(&ev) {
                ResponseEvent::End(u) => {
                    if u.is_some() {
                        self.usage = u;
                    }
                    self.meter.set_usage(u);
                    self.saw_done = true;
                }
                ResponseEvent::Other => self.meter.chunk(),
            }
            let ev = match &self.rename {
                Some(name) => public_model_response_event(ev, name),
                None => ev,
            };
            self.queue.push_back(ev);
        }
    }

    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if let Some(ev) = self.queue.pop_front() {
                return Some(ev);
            }
            if self.done {
                tracing::debug!(usage = ?self.usage, "stream finished");
                self.meter.stream_complete();
                return None;
            }
            tokio::select! {
                biased;
                () = self.token.cancelled() => {
                    let reason = self.caller.live.reason();
                    self.fail(&cut_error(reason), reason.label());
                }
                next = tokio::time::timeout(self.idle, self.upstream.next()) => match next {
                    Err(_) => self.fail(&upstream_error(UpstreamFailure::Timeout), "upstream_timeout"),
                    Ok(Some(Err(f))) => self.fail(&upstream_error(f), "upstream_error"),
                    Ok(Some(Ok(bytes))) => {
                        self.splitter.push_bytes(bytes);
                        self.take_events();
                        // An event that never ends would be held in memory without bound.
                        if self.splitter.buffered() > sse::MAX_EVENT_BYTES {
                            tracing::warn!(bytes = self.splitter.buffered(), "upstream SSE event too large");
                            self.fail(&upstream_error(UpstreamFailure::Broken), "upstream_error");
                        }
                    }
                    Ok(None) => {
                        if let Some(rest) = self.splitter.remainder() {
                            self.queue.push_back(rest);
                        }
                        if self.saw_done {
                            self.done = true;
                        } else {
                            self.fail(&upstream_error(UpstreamFailure::Broken), "upstream_error");
                        }
                    }
                },
            }
        }
    }
}

/// How a stream is passed on.
struct StreamOptions {
    client_wants_usage: bool,
    /// A Responses API stream.
    responses: bool,
    idle: Duration,
    /// The public model name, when the route renames the model (chunks are rewritten).
    rename: Option<Arc<str>>,
}

/// The upstream's JSON answer with `model` set to the public name the client asked for (SPEC
/// §4.1) when the route renames the model; otherwise the bytes exactly as they came (no parse).
fn public_model_json(body: Bytes, route: &ModelRoute) -> Bytes {
    if route.upstream_model == route.name {
        return body;
    }
    with_model(&body, &route.name).map_or(body, Bytes::from)
}

/// `json` (an object with a `model` member) re-encoded with `model` = `name`.
fn with_model(json: &[u8], name: &str) -> Option<Vec<u8>> {
    let mut m: serde_json::Map<String, Value> = serde_json::from_slice(json).ok()?;
    let slot = m.get_mut("model")?;
    *slot = Value::String(name.to_string());
    serde_json::to_vec(&m).ok()
}

/// One SSE event (a single `data:` line, as OpenAI-compatible providers send) with its chunk's
/// `model` set to `name`; anything else unchanged.
fn public_model_event(ev: Bytes, name: &str) -> Bytes {
    let Some(rest) = ev.strip_prefix(b"data:") else {
        return ev;
    };
    let payload = rest.trim_ascii();
    if payload.contains(&b'\n') || !payload.starts_with(b"{") {
        return ev;
    }
    match with_model(payload, name) {
        Some(json) => {
            let mut out = Vec::with_capacity(json.len() + 8);
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(&json);
            out.extend_from_slice(b"\n\n");
            Bytes::from(out)
        }
        None => ev,
    }
}

/// One event of a Responses API stream (`event:` and `data:` lines) with the `model` of the
/// `response` it carries set to `name`; events without one (deltas) unchanged.
fn public_model_response_event(ev: Bytes, name: &str) -> Bytes {
    let Some(at) = memchr::memmem::find(&ev, b"data:") else {
        return ev;
    };
    if at != 0 && ev[at - 1] != b'\n' {
        return ev;
    }
    let payload = ev[at + b"data:".len()..].trim_ascii();
    if payload.contains(&b'\n')
        || !payload.starts_with(b"{")
        || memchr::memmem::find(payload, b"\"model\"").is_none()
    {
        return ev;
    }
    let Ok(mut v) = serde_json::from_slice::<serde_json::Map<String, Value>>(payload) else {
        return ev;
    };
    let mut changed = false;
    if let Some(Value::Object(r)) = v.get_mut("response")
        && let Some(slot) = r.get_mut("model")
    {
        *slot = Value::String(name.to_string());
        changed = true;
    }
    if let Some(slot) = v.get_mut("model") {
        *slot = Value::String(name.to_string());
        changed = true;
    }
    let Some(json) = changed.then(|| serde_json::to_vec(&v).ok()).flatten() else {
        return ev;
    };
    let mut out = Vec::with_capacity(at + json.len() + 8);
    out.extend_from_slice(&ev[..at]);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(&json);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

fn stream_response(
    state: &AppState,
    caller: Caller,
    upstream: ByteStream,
    opts: StreamOptions,
    mut meter: Meter,
) -> Response {
    let StreamOptions {
        client_wants_usage,
        responses,
        idle,
        rename,
    } = opts;
    let token = caller.live.token().clone();
    let mut builder = Response::builder();
    if let Some(h) = builder.headers_mut() {
        meter.take_headers().apply(h);
    }
    let st = StreamState {
        upstream,
        splitter: EventSplitter::default(),
        queue: Default::default(),
        caller,
        token,
        client_wants_usage,
        idle,
        usage: None,
        saw_done: false,
        done: false,
        state: state.clone(),
        meter,
        rename,
        responses,
    };
    let body = futures_util::stream::unfold(st, |mut st| async move {
        st.next_frame()
            .await
            .map(|frame| (Ok::<_, std::io::Error>(frame), st))
    });
    builder
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(Body::from_stream(sse::coalesce(body, 64 * 1024)))
        .unwrap_or_else(|_| ApiError::internal("could not build stream response").into_response())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn route(name: &str, upstream_model: &str) -> ModelRoute {
        ModelRoute {
            name: name.into(),
            provider: Arc::new(Provider {
                name: "p",
                backend: ProviderBackend::Mock,
            }),
            upstream_model: upstream_model.into(),
        }
    }

    fn raw(json: &str) -> RawJson {
        RawJson {
            bytes: Bytes::from(json.to_string()),
            value: serde_json::from_str(json).unwrap(),
        }
    }

    #[test]
    fn providers_get_their_upstream_client() {
        use crate::config::{ModelConfig, ProviderConfig};
        let provider = |name: &str, base_url: &str, api_key: Option<&str>| ProviderConfig {
            name: name.into(),
            kind: ProviderKind::Openai,
            base_url: base_url.into(),
            api_key_env: None,
            api_key: api_key.map(Secret::new),
            timeout_seconds: Some(7),
        };
        let mut cfg = Config {
            providers: vec![
                provider("tls", "https://api.example.com/v1/", Some("sk-x")),
                provider("plain", "http://127.0.0.1:9/openai?api-version=2", None),
            ],
            models: vec![
                ModelConfig {
                    name: "a".into(),
                    provider: "tls".into(),
                    upstream_model: None,
                },
                ModelConfig {
                    name: "b".into(),
                    provider: "plain".into(),
                    upstream_model: Some("b-up".into()),
                },
            ],
            ..Config::default()
        };
        let proxy = Proxy::from_config(&cfg).unwrap();
        let ProviderBackend::OpenAi {
            targets, timeout, ..
        } = &proxy.route("a").unwrap().provider.backend
        else {
            panic!("not an OpenAI backend");
        };
        assert_eq!(targets[Endpoint::Chat as usize], "/v1/chat/completions");
        assert_eq!(*timeout, Duration::from_secs(7));
        let ProviderBackend::OpenAi { targets, .. } = &proxy.route("b").unwrap().provider.backend
        else {
            panic!("not an OpenAI backend");
        };
        assert_eq!(
            targets[Endpoint::Images as usize],
            "/openai/images/generations?api-version=2"
        );
        // The provider key never shows in Debug output.
        assert!(!format!("{proxy:?}").contains("sk-x"));
        // A key that cannot be a header value is a configuration error, not a failing request.
        cfg.providers[0].api_key = Some(Secret::new("sk\nx"));
        assert!(Proxy::from_config(&cfg).is_err());
    }

    #[test]
    fn prepare_rewrites_only_what_it_must() {
        let same = route("m", "m");
        // Nothing to change: the client's bytes as they are.
        let body = r#" {"model":"m", "x": [1, 2]}"#;
        let (_, bytes, _) = prepare(raw(body), &same, false).unwrap();
        assert_eq!(bytes, body);
        // A stream without stream_options: spliced in, everything else byte for byte.
        let body = " {\"model\":\"m\",\"stream\":true, \"x\": {\"y\": 1.50}}";
        let (value, bytes, wants) = prepare(raw(body), &same, true).unwrap();
        assert!(!wants);
        assert_eq!(
            bytes,
            " {\"stream_options\":{\"include_usage\":true},\"model\":\"m\",\"stream\":true, \"x\": {\"y\": 1.50}}"
        );
        assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), value);
        // Renamed model, null or partial stream_options: re-serialised.
        for (route, body) in [
            (route("m", "up"), r#"{"model":"m","stream":true}"#),
            (same, r#"{"model":"m","stream":true,"stream_options":null}"#),
            (
                route("m", "m"),
                r#"{"model":"m","stream":true,"stream_options":{"x":1}}"#,
            ),
        ] {
            let (value, bytes, _) = prepare(raw(body), &route, true).unwrap();
            let sent: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(sent, value);
            assert_eq!(sent["stream_options"]["include_usage"], true);
            assert_eq!(sent["model"], route.upstream_model.as_str());
        }
        // The client asked for usage itself: untouched, and reported.
        let body = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#;
        let (_, bytes, wants) = prepare(raw(body), &route("m", "m"), true).unwrap();
        assert!(wants);
        assert_eq!(bytes, body);
    }
}
