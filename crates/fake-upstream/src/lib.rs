//! A fake OpenAI-compatible upstream on a real socket, for Tollgate's tests and benchmarks.
//!
//! It serves `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions` and
//! `POST /v1/responses` (JSON and SSE), `POST /v1/embeddings` and `POST /v1/images/generations`. A request can steer its own response through an extra
//! top-level `"fake"` object in the body (a gateway passes unknown fields through):
//!
//! ```json
//! {"fake": {"chunks": 20, "chunk_delay_ms": 10, "delay_ms": 500, "drop_after": 3,
//!           "status": 500, "garbage": true, "prompt_tokens": 11, "completion_tokens": 7}}
//! ```
//!
//! Every request is recorded, and every handler invocation is counted as started, completed or
//! cancelled (dropped before it finished because the client went away), so tests can prove that
//! a gateway cancels its upstream call.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A 1×1 PNG, base64-encoded, returned for every generated image.
pub const TINY_PNG_BASE64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR42mMwnvkfAALOAcwSdnsHAAAAAElFTkSuQmCC";

/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Upper bound on `fake.chunks`, so a typo cannot make a stream run for ever.
const MAX_CHUNKS: usize = 100_000;

/// Server-wide behaviour; each request can override it through its `"fake"` body field.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// If set, every request must carry `Authorization: Bearer <key>`, else `401`.
    pub api_key: Option<String>,
    /// Number of `chat.completion.chunk` events in a stream (default 5).
    pub default_chunks: usize,
    /// Pause between two stream chunks (default 0).
    pub chunk_delay_ms: u64,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            default_chunks: 5,
            chunk_delay_ms: 0,
        }
    }
}

/// One request as the fake upstream received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// The URI path, without the query string.
    pub path: String,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON, or `Null` if it was empty or not JSON.
    pub body: Value,
}

impl RecordedRequest {
    /// The first value of a header (name matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Shared {
    cfg: FakeConfig,
    record: bool,
    requests: Mutex<Vec<RecordedRequest>>,
    started: AtomicUsize,
    completed: AtomicUsize,
    cancelled: AtomicUsize,
}

/// A running fake upstream. Dropping it stops accepting connections and closes idle ones.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl FakeUpstream {
    /// Starts on `127.0.0.1:0` with [`FakeConfig::default`].
    pub async fn start() -> io::Result<FakeUpstream> {
        Self::start_with(FakeConfig::default()).await
    }

    /// Starts on `127.0.0.1:0` with the given configuration.
    pub async fn start_with(cfg: FakeConfig) -> io::Result<FakeUpstream> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), cfg, true).await
    }

    /// Starts on `addr` on the current tokio runtime. With `record_requests == false` the
    /// request log stays empty (for long benchmark runs); the counters still work.
    pub async fn start_on(
        addr: SocketAddr,
        cfg: FakeConfig,
        record_requests: bool,
    ) -> io::Result<FakeUpstream> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let listener = listener.tap_io(|tcp| {
            // Best effort: without it only latency suffers.
            let _ = tcp.set_nodelay(true);
        });
        let shared = Arc::new(Shared {
            cfg,
            record: record_requests,
            requests: Mutex::new(Vec::new()),
            started: AtomicUsize::new(0),
            completed: AtomicUsize::new(0),
            cancelled: AtomicUsize::new(0),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            // `serve` only returns errors from the listener, which it already retries.
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await;
        });
        Ok(FakeUpstream {
            addr,
            shared,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:PORT/v1`
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Handler invocations begun.
    pub fn started(&self) -> usize {
        self.shared.started.load(Ordering::SeqCst)
    }

    /// Handlers that ran to completion, including sending a whole stream (or its scripted cut).
    pub fn completed(&self) -> usize {
        self.shared.completed.load(Ordering::SeqCst)
    }

    /// Handlers or streams dropped before they finished (the client went away).
    pub fn cancelled(&self) -> usize {
        self.shared.cancelled.load(Ordering::SeqCst)
    }

    /// Handlers begun and not yet completed or cancelled.
    pub fn in_flight(&self) -> usize {
        // Read the ends first: `started` is always incremented before either of them.
        let ended = self.completed() + self.cancelled();
        self.started().saturating_sub(ended)
    }

    /// Waits until at least `n` handlers were cancelled; `false` on timeout.
    pub async fn wait_cancelled(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, || self.cancelled() >= n).await
    }

    /// Waits until at least `n` handlers completed; `false` on timeout.
    pub async fn wait_completed(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, || self.completed() >= n).await
    }

    async fn wait_until(&self, timeout: Duration, cond: impl Fn() -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if cond() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops accepting, closes idle connections and waits (at most 5 s) for in-flight ones.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Counts one handler invocation: completed if [`Tracker::finish`] was called, else cancelled.
struct Tracker {
    shared: Arc<Shared>,
    done: bool,
}

impl Tracker {
    fn start(shared: Arc<Shared>) -> Self {
        shared.started.fetch_add(1, Ordering::SeqCst);
        Self {
            shared,
            done: false,
        }
    }

    fn finish(mut self) {
        self.done = true;
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        let counter = if self.done {
            &self.shared.completed
        } else {
            &self.shared.cancelled
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

/// The per-request `"fake"` body field.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FakeOpts {
    chunks: Option<usize>,
    chunk_delay_ms: Option<u64>,
    delay_ms: Option<u64>,
    drop_after: Option<usize>,
    status: Option<u16>,
    #[serde(default)]
    garbage: bool,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    // Owned here so that a dropped handler future counts as cancelled; a stream takes it along.
    let mut tracker = Some(Tracker::start(shared.clone()));
    let response = respond(&shared, &mut tracker, req).await;
    if let Some(t) = tracker {
        t.finish();
    }
    response
}

async fn respond(shared: &Shared, tracker: &mut Option<Tracker>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large or unreadable",
        );
    };
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let (method, path) = (&parts.method, parts.uri.path());
    if shared.record {
        let recorded = RecordedRequest {
            method: method.to_string(),
            path: path.to_owned(),
            headers: header_pairs(&parts.headers),
            body: body.clone(),
        };
        shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(recorded);
    }

    if let Some(key) = &shared.cfg.api_key {
        let expected = format!("Bearer {key}");
        let given = parts.headers.get(header::AUTHORIZATION);
        if given.map(HeaderValue::as_bytes) != Some(expected.as_bytes()) {
            return error_full(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "Incorrect API key provided.",
                Some("invalid_api_key"),
            );
        }
    }
    let allowed = match path {
        "/v1/models" => Method::GET,
        "/v1/chat/completions"
        | "/v1/completions"
        | "/v1/responses"
        | "/v1/embeddings"
        | "/v1/images/generations" => Method::POST,
        _ => {
            return error_full(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                &format!("Unknown request URL: {method} {path}"),
                Some("unknown_url"),
            );
        }
    };
    if *method != allowed {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("Method {method} not allowed on {path}"),
        );
    }
    if path == "/v1/models" {
        return models();
    }

    if !body.is_object() {
        return error(
            StatusCode::BAD_REQUEST,
            "We could not parse the JSON body of your request.",
        );
    }
    let opts = match body.get("fake") {
        None | Some(Value::Null) => FakeOpts::default(),
        Some(v) => match FakeOpts::deserialize(v) {
            Ok(opts) => opts,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("invalid `fake` options: {e}"),
                );
            }
        },
    };
    if let Some(ms) = opts.delay_ms {
        // If the client goes away now, hyper drops this future and the tracker counts a cancel.
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(status) = opts.status {
        return match StatusCode::from_u16(status) {
            Ok(status) => error_full(
                status,
                error_type(status),
                &format!("fake upstream error (status {})", status.as_u16()),
                None,
            ),
            Err(_) => error(StatusCode::BAD_REQUEST, "invalid `fake.status`"),
        };
    }
    if opts.garbage {
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/html")],
            "<html>oops, this is not JSON</html>",
        )
            .into_response();
    }

    match path {
        "/v1/chat/completions" => chat(shared, tracker, &body, &opts, false),
        "/v1/completions" => chat(shared, tracker, &body, &opts, true),
        "/v1/responses" => responses(shared, tracker, &body, &opts),
        "/v1/embeddings" => embeddings(&body, &opts),
        _ => images(&body),
    }
}

fn models() -> Response {
    let created = now_secs();
    let data: Vec<Value> = ["fake-chat", "fake-embed", "fake-image"]
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": created, "owned_by": "fake-upstream"}))
        .collect();
    json_response(StatusCode::OK, json!({"object": "list", "data": data}))
}

/// Chat completions, or (`legacy`) text completions: `prompt` instead of `messages`, `text`
/// instead of `message`/`delta`, objects `text_completion`.
fn chat(
    shared: &Shared,
    tracker: &mut Option<Tracker>,
    body: &Value,
    opts: &FakeOpts,
    legacy: bool,
) -> Response {
    let cfg = &shared.cfg;
    let Some(model) = body.get("model").and_then(Value::as_str) else {
        return error(
            StatusCode::BAD_REQUEST,
            "you must provide a model parameter",
        );
    };
    let prompt_words = if legacy {
        match body.get("prompt") {
            Some(p @ Value::String(_)) => word_count(Some(p)),
            Some(Value::Array(items)) => items.iter().map(|p| word_count(Some(p))).sum(),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "`prompt` must be a string or an array",
                );
            }
        }
    } else {
        let Some(messages) = body.get("messages").and_then(Value::as_array) else {
            return error(StatusCode::BAD_REQUEST, "`messages` must be an array");
        };
        messages
            .iter()
            .map(|m| word_count(m.get("content")))
            .sum::<u64>()
    };
    let chunks = opts.chunks.unwrap_or(cfg.default_chunks).min(MAX_CHUNKS);
    let prompt_tokens = opts.prompt_tokens.unwrap_or(prompt_words.max(1));
    let completion_tokens = opts.completion_tokens.unwrap_or(chunks as u64);
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens.saturating_add(completion_tokens),
    });
    let id = format!("chatcmpl-fake{}", shared.started.load(Ordering::Relaxed));
    let created = now_secs();

    if body.get("stream").and_then(Value::as_bool) != Some(true) {
        let content: String = (0..chunks).map(token).collect();
        if legacy {
            return json_response(
                StatusCode::OK,
                json!({
                    "id": id,
                    "object": "text_completion",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "text": content, "logprobs": null, "finish_reason": "stop"}],
                    "usage": usage,
                }),
            );
        }
        return json_response(
            StatusCode::OK,
            json!({
                "id": id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "logprobs": null,
                    "finish_reason": "stop",
                }],
                "usage": usage,
            }),
        );
    }

    let include_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);
    let mut events = Vec::with_capacity(chunks + 2);
    let sent = opts.drop_after.map_or(chunks, |d| d.min(chunks));
    events.extend((0..sent).map(Event::Chunk));
    if opts.drop_after.is_some() {
        events.push(Event::Cut);
    } else {
        if include_usage {
            events.push(Event::Usage);
        }
        events.push(Event::Done);
    }
    let plan = StreamPlan {
        id,
        created,
        model: model.to_owned(),
        chunks,
        include_usage,
        usage,
        delay: Duration::from_millis(opts.chunk_delay_ms.unwrap_or(cfg.chunk_delay_ms)),
        legacy,
    };
    let stream = futures_util::stream::unfold(
        (plan, events.into_iter(), tracker.take()),
        |(plan, mut events, mut tracker)| async move {
            let Some(event) = events.next() else {
                if let Some(t) = tracker.take() {
                    t.finish();
                }
                return None;
            };
            let item = match event {
                Event::Chunk(i) => {
                    if i > 0 && !plan.delay.is_zero() {
                        tokio::time::sleep(plan.delay).await;
                    }
                    Ok(plan.chunk(i))
                }
                Event::Usage => Ok(plan.usage_chunk()),
                Event::Done => Ok(Bytes::from_static(b"data: [DONE]\n\n")),
                Event::Cut => {
                    // Pause first so hyper flushes the chunks already sent: an error in the
                    // same write batch would discard them together with the headers.
                    tokio::time::sleep(plan.delay.max(Duration::from_millis(20))).await;
                    // The scripted cut is this handler's completion; the error makes hyper
                    // abort the connection without finishing the chunked body.
                    if let Some(t) = tracker.take() {
                        t.finish();
                    }
                    Err(io::Error::other("fake-upstream: drop_after"))
                }
            };
            Some((item, (plan, events, tracker)))
        },
    );
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// The Responses API (`/v1/responses`): `input` (a string or message items) in, an `output`
/// message out; a stream is typed events (`event:` + `data:` lines) ending with
/// `response.completed`, whose `response.usage` has `input_tokens`/`output_tokens`, and no
/// `[DONE]`. `fake.chunks` output-text deltas, `drop_after` cuts after that many.
fn responses(
    shared: &Shared,
    tracker: &mut Option<Tracker>,
    body: &Value,
    opts: &FakeOpts,
) -> Response {
    let cfg = &shared.cfg;
    let Some(model) = body.get("model").and_then(Value::as_str) else {
        return error(
            StatusCode::BAD_REQUEST,
            "you must provide a model parameter",
        );
    };
    let input_words = match body.get("input") {
        Some(i @ Value::String(_)) => word_count(Some(i)),
        Some(Value::Array(items)) => items.iter().map(|m| word_count(m.get("content"))).sum(),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "`input` must be a string or an array of items",
            );
        }
    };
    let chunks = opts.chunks.unwrap_or(cfg.default_chunks).min(MAX_CHUNKS);
    let input_tokens = opts.prompt_tokens.unwrap_or(input_words.max(1));
    let output_tokens = opts.completion_tokens.unwrap_or(chunks as u64);
    let usage = json!({
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": input_tokens.saturating_add(output_tokens),
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    });
    let n = shared.started.load(Ordering::Relaxed);
    let id = format!("resp_fake{n}");
    let msg_id = format!("msg_fake{n}");
    let created = now_secs();
    let text: String = (0..chunks).map(token).collect();
    let whole = |status: &str, output: Value, usage: Value| {
        json!({"id": id, "object": "response", "created_at": created, "status": status,
            "model": model, "output": output, "usage": usage})
    };
    let message = json!([{"type": "message", "id": msg_id, "status": "completed",
        "role": "assistant", "content": [{"type": "output_text", "text": text, "annotations": []}]}]);
    if body.get("stream").and_then(Value::as_bool) != Some(true) {
        return json_response(StatusCode::OK, whole("completed", message, usage));
    }
    let event = |kind: &str, data: &Value| Bytes::from(format!("event: {kind}\ndata: {data}\n\n"));
    let created_ev = event(
        "response.created",
        &json!({"type": "response.created", "sequence_number": 0,
            "response": whole("in_progress", json!([]), Value::Null)}),
    );
    let sent = opts.drop_after.map_or(chunks, |d| d.min(chunks));
    let deltas: Vec<Bytes> = (0..sent)
        .map(|i| {
            event(
                "response.output_text.delta",
                &json!({"type": "response.output_text.delta", "sequence_number": i + 1,
                    "item_id": msg_id, "output_index": 0, "content_index": 0,
                    "delta": token(i), "logprobs": []}),
            )
        })
        .collect();
    let completed = opts.drop_after.is_none().then(|| {
        event(
            "response.completed",
            &json!({"type": "response.completed", "sequence_number": chunks + 1,
                "response": whole("completed", message.clone(), usage.clone())}),
        )
    });
    let delay = Duration::from_millis(opts.chunk_delay_ms.unwrap_or(cfg.chunk_delay_ms));
    let mut items: Vec<Option<Bytes>> = vec![Some(created_ev)];
    items.extend(deltas.into_iter().map(Some));
    // `None`: the scripted cut (after the deltas, instead of the final event).
    items.push(completed);
    let stream = futures_util::stream::unfold(
        (items.into_iter().enumerate(), tracker.take()),
        move |(mut items, mut tracker)| async move {
            let Some((i, item)) = items.next() else {
                if let Some(t) = tracker.take() {
                    t.finish();
                }
                return None;
            };
            if i > 1 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let out = match item {
                Some(bytes) => Ok(bytes),
                None => {
                    tokio::time::sleep(delay.max(Duration::from_millis(20))).await;
                    if let Some(t) = tracker.take() {
                        t.finish();
                    }
                    Err(io::Error::other("fake-upstream: drop_after"))
                }
            };
            Some((out, (items, tracker)))
        },
    );
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

enum Event {
    Chunk(usize),
    Usage,
    Done,
    Cut,
}

struct StreamPlan {
    id: String,
    created: u64,
    model: String,
    chunks: usize,
    include_usage: bool,
    usage: Value,
    delay: Duration,
    /// Text-completion chunks (`/v1/completions`).
    legacy: bool,
}

impl StreamPlan {
    fn object(&self) -> &'static str {
        if self.legacy {
            "text_completion"
        } else {
            "chat.completion.chunk"
        }
    }

    fn chunk(&self, i: usize) -> Bytes {
        let mut delta = json!({"content": token(i)});
        if i == 0 {
            delta["role"] = json!("assistant");
        }
        let finish_reason = if i + 1 == self.chunks {
            json!("stop")
        } else {
            Value::Null
        };
        let choice = if self.legacy {
            json!({"index": 0, "text": token(i), "logprobs": null, "finish_reason": finish_reason})
        } else {
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason})
        };
        let mut chunk = json!({
            "id": self.id,
            "object": self.object(),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        sse(&chunk)
    }

    fn usage_chunk(&self) -> Bytes {
        sse(&json!({
            "id": self.id,
            "object": self.object(),
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": self.usage,
        }))
    }
}

fn embeddings(body: &Value, opts: &FakeOpts) -> Response {
    let Some(model) = body.get("model").and_then(Value::as_str) else {
        return error(
            StatusCode::BAD_REQUEST,
            "you must provide a model parameter",
        );
    };
    let inputs: Vec<&str> = match body.get("input") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) if !items.is_empty() => {
            match items.iter().map(Value::as_str).collect::<Option<Vec<_>>>() {
                Some(inputs) => inputs,
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "`input` must be a string or an array of strings",
                    );
                }
            }
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "`input` must be a string or a non-empty array of strings",
            );
        }
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| json!({"object": "embedding", "index": i, "embedding": embed(text)}))
        .collect();
    let prompt_tokens = opts.prompt_tokens.unwrap_or_else(|| {
        inputs
            .iter()
            .map(|s| (s.split_whitespace().count() as u64).max(1))
            .sum()
    });
    json_response(
        StatusCode::OK,
        json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }),
    )
}

fn images(body: &Value) -> Response {
    if body.get("prompt").and_then(Value::as_str).is_none() {
        return error(StatusCode::BAD_REQUEST, "`prompt` must be a string");
    }
    let n = match body.get("n") {
        None | Some(Value::Null) => 1,
        Some(v) => match v.as_u64() {
            Some(n @ 1..=10) => n,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "`n` must be an integer from 1 to 10",
                );
            }
        },
    };
    let data: Vec<Value> = (0..n)
        .map(|_| json!({"b64_json": TINY_PNG_BASE64}))
        .collect();
    json_response(StatusCode::OK, json!({"created": now_secs(), "data": data}))
}

/// A deterministic 8-dimensional vector in [-1, 1] derived from the text (FNV-1a per dimension).
fn embed(text: &str) -> Vec<f64> {
    (0..8u64)
        .map(|dim| {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ dim.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            for b in text.bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
            let unit = (h >> 11) as f64 / (1u64 << 53) as f64;
            ((unit * 2.0 - 1.0) * 1e4).round() / 1e4
        })
        .collect()
}

fn token(i: usize) -> String {
    format!("tok{i} ")
}

fn word_count(content: Option<&Value>) -> u64 {
    match content {
        Some(Value::String(s)) => s.split_whitespace().count() as u64,
        Some(Value::Array(parts)) => parts.iter().map(|p| word_count(p.get("text"))).sum(),
        _ => 0,
    }
}

fn sse(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn json_response(status: StatusCode, value: Value) -> Response {
    (status, axum::Json(value)).into_response()
}

fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    error_full(status, error_type(status), message, None)
}

fn error_full(status: StatusCode, kind: &str, message: &str, code: Option<&str>) -> Response {
    json_response(
        status,
        json!({"error": {"message": message, "type": kind, "param": null, "code": code}}),
    )
}
