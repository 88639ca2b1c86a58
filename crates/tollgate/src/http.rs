//! Request plumbing shared by every route: request ids, the access log and HTTP metrics, the body
//! limit, the body extractors whose rejections are our own error shape, and the audit request
//! metadata.
//!
//! One body limit for every route (`max_body_bytes`), one error shape: [`BodyLimitLayer`] wraps
//! every route, so a body announced larger than the limit is refused with the JSON `413
//! PAYLOAD_TOO_LARGE` before any handler, guard or extractor runs, and a body without
//! `Content-Length` (chunked) cannot be read past the limit by anyone. The extractors ([`Json`],
//! [`OptionalJson`], [`RawJson`], [`BodyBytes`] for forms) read through [`read_limited`], which
//! turns the limit into the same `413`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, MatchedPath, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::app::AppState;
use crate::error::{ApiError, ErrorCode, ErrorMarker};
use crate::metrics::{HttpLabels, RouteLabels};
use crate::store::audit::RequestMeta;

/// The request id, also sent back as `x-request-id`.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

fn acceptable_request_id(v: &HeaderValue) -> Option<&str> {
    let s = v.to_str().ok()?;
    (!s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)))
    .then_some(s)
}

/// The outermost layer of every route: request id (`x-request-id` in, or a new one), in-flight
/// gauge, HTTP metrics, one access-log line. A hand-written layer rather than
/// `middleware::from_fn`: it neither clones nor boxes the route per request, and the in-flight
/// gauge is held by a guard, so a request whose client went away still leaves the gauge.
#[derive(Clone)]
pub struct ObserveLayer {
    state: AppState,
}

impl ObserveLayer {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    state: AppState,
}

/// Holds the in-flight gauge up for as long as the request's future lives.
struct InFlight(AppState);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.metrics.http_in_flight.dec();
    }
}

impl<S> tower::Service<Request> for Observe<S>
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let started = Instant::now();
        let id: Arc<str> = match req
            .headers()
            .get("x-request-id")
            .and_then(acceptable_request_id)
        {
            Some(s) => s.into(),
            None => crate::util::request_id().into(),
        };
        req.extensions_mut().insert(RequestId(id.clone()));
        let method = crate::metrics::method_label(req.method());
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", |m| crate::metrics::intern(m.as_str()));
        // For the log line only: a cheap reference-counted clone, not a copy of the path.
        let uri = req.uri().clone();
        self.state.metrics.http_in_flight.inc();
        let in_flight = InFlight(self.state.clone());
        let span = tracing::info_span!("request", request_id = %id, method, route);
        let inner = tracing::Instrument::instrument(self.inner.call(req), span);
        ObserveFuture {
            inner,
            done: Some(Done {
                started,
                id,
                method,
                route,
                uri,
                in_flight,
            }),
        }
    }
}

/// What the access log and the metrics need once the response is there.
struct Done {
    started: Instant,
    id: Arc<str>,
    method: &'static str,
    route: &'static str,
    uri: axum::http::Uri,
    in_flight: InFlight,
}

pin_project_lite::pin_project! {
    pub struct ObserveFuture<F> {
        #[pin]
        inner: tracing::instrument::Instrumented<F>,
        done: Option<Done>,
    }
}

impl<F> Future for ObserveFuture<F>
where
    F: Future<Output = Result<Response, std::convert::Infallible>>,
{
    type Output = Result<Response, std::convert::Infallible>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let mut this = self.project();
        let Ok(mut res) = std::task::ready!(this.inner.as_mut().poll(cx));
        if let Some(done) = this.done.take() {
            finish(&mut res, done, this.inner.span());
        }
        std::task::Poll::Ready(Ok(res))
    }
}

fn finish(res: &mut Response, done: Done, span: &tracing::Span) {
    let Done {
        started,
        id,
        route,
        method,
        uri,
        in_flight,
    } = done;
    let metrics = &in_flight.0.metrics;
    let elapsed = started.elapsed();
    let status = res.status().as_u16();
    metrics
        .http_requests
        .get_or_create(&HttpLabels {
            route,
            method,
            status,
        })
        .inc();
    metrics
        .http_duration
        .get_or_create(&RouteLabels { route })
        .observe(elapsed.as_secs_f64());
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert("x-request-id", v);
    }
    if tracing::enabled!(tracing::Level::INFO) || status >= 500 {
        let code = res.extensions().get::<ErrorMarker>().map(|m| m.0.as_str());
        let _enter = span.enter();
        if status >= 500 {
            tracing::warn!(path = %uri.path(), status, code, elapsed_ms = elapsed.as_secs_f64() * 1e3, "request failed");
        } else {
            tracing::info!(path = %uri.path(), status, code, elapsed_ms = elapsed.as_secs_f64() * 1e3, "request");
        }
    }
}

/// Fallback for unknown paths: a JSON 404 (with `x-request-id`, added by [`ObserveLayer`]).
pub async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "No such route")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "This method is not allowed on this route",
    )
}

/// A JSON body. Bad JSON is `400 INVALID_REQUEST`; the right JSON with wrong fields is
/// `422 VALIDATION_FAILED` naming the field; over the limit is `413 PAYLOAD_TOO_LARGE`.
pub struct Json<T>(pub T);

/// The raw body bytes, size-limited, with the parsed JSON value (for the proxy, which forwards
/// unknown fields untouched).
pub struct RawJson {
    pub bytes: Bytes,
    pub value: serde_json::Value,
}

/// `413 PAYLOAD_TOO_LARGE` for a body over `limit` bytes.
pub fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("The request body is larger than {limit} bytes"),
    )
}

/// The announced body length, when there is one.
fn content_length(headers: &axum::http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
}

/// Reads a whole body of at most `limit` bytes: over it is `413 PAYLOAD_TOO_LARGE`, a body that
/// cannot be read is `400 INVALID_REQUEST`.
pub async fn read_limited(body: axum::body::Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = source {
            if s.is::<http_body_util::LengthLimitError>() {
                return too_large(limit);
            }
            source = s.source();
        }
        ApiError::invalid_request("Could not read the request body")
    })
}

/// The body limit of every route (see the module docs). A request whose `Content-Length` is
/// over the limit is answered `413` at once, its body unread (the response says `Connection:
/// close`, and the server reads and discards the rest while it closes, so the client can read
/// the answer); a body of unknown length (chunked) is wrapped so that reading past the limit
/// fails. Bodies of a known length within the limit pass untouched (hyper never delivers more
/// than the announced length).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimitLayer {
    limit: usize,
}

impl BodyLimitLayer {
    pub fn new(limit: usize) -> Self {
        Self { limit }
    }
}

impl<S> tower::Layer<S> for BodyLimitLayer {
    type Service = BodyLimit<S>;
    fn layer(&self, inner: S) -> BodyLimit<S> {
        BodyLimit {
            inner,
            limit: self.limit,
        }
    }
}

#[derive(Debug, Clone)]
pub struct BodyLimit<S> {
    inner: S,
    limit: usize,
}

impl<S> tower::Service<Request> for BodyLimit<S>
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures_util::future::Either<
        std::future::Ready<Result<Response, std::convert::Infallible>>,
        CloseUnlessReadFuture<S::Future>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        use axum::body::HttpBody as _;
        use futures_util::future::Either;
        // The body's own framing as hyper parsed it: an exact length for a `Content-Length`
        // body, no upper bound for a chunked one (even when a `Content-Length` header came too).
        let hint = req.body().size_hint();
        let limit = self.limit as u64;
        if hint.lower() > limit {
            return Either::Left(std::future::ready(
                Ok(too_large(self.limit).into_response()),
            ));
        }
        if hint.upper() == Some(0) {
            return Either::Right(CloseUnlessReadFuture {
                inner: self.inner.call(req),
                read: None,
            });
        }
        let read = Arc::new(AtomicBool::new(false));
        let tracked = read.clone();
        let req = if hint.upper().is_some() {
            req.map(|b| axum::body::Body::new(ReadToEnd::new(b, tracked)))
        } else {
            let limit = self.limit;
            req.map(|b| {
                axum::body::Body::new(ReadToEnd::new(
                    http_body_util::Limited::new(b, limit),
                    tracked,
                ))
            })
        };
        Either::Right(CloseUnlessReadFuture {
            inner: self.inner.call(req),
            read: Some(read),
        })
    }
}

pin_project_lite::pin_project! {
    /// A request body that notes when it has been read to its end.
    struct ReadToEnd<B> {
        #[pin]
        inner: B,
        read: Arc<AtomicBool>,
    }
}

impl<B> ReadToEnd<B> {
    fn new(inner: B, read: Arc<AtomicBool>) -> Self {
        Self { inner, read }
    }
}

impl<B: axum::body::HttpBody> axum::body::HttpBody for ReadToEnd<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        let ended = match &frame {
            None => true,
            Some(Ok(_)) => this.inner.is_end_stream(),
            Some(Err(_)) => false,
        };
        if ended {
            this.read.store(true, Ordering::Relaxed);
        }
        std::task::Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// The route's response, with `Connection: close` when the route answered without reading
    /// the request body to its end: the server then closes the connection (it cannot find the
    /// next request behind an unread body), and a client must know before it reuses it
    /// (RFC 9112 §9.6). Without the header a client may send its next request on a connection
    /// the server is already closing, and get no answer at all.
    pub struct CloseUnlessReadFuture<F> {
        #[pin]
        inner: F,
        read: Option<Arc<AtomicBool>>,
    }
}

impl<F> Future for CloseUnlessReadFuture<F>
where
    F: Future<Output = Result<Response, std::convert::Infallible>>,
{
    type Output = Result<Response, std::convert::Infallible>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let Ok(mut res) = std::task::ready!(this.inner.poll(cx));
        if let Some(read) = this.read.take()
            && !read.load(Ordering::Relaxed)
        {
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        std::task::Poll::Ready(Ok(res))
    }
}

async fn read_body(req: Request, state: &AppState) -> Result<Bytes, ApiError> {
    let limit = state.config.max_body_bytes;
    if content_length(req.headers()).is_some_and(|len| len > limit as u64) {
        return Err(too_large(limit));
    }
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE)
        && !ct
            .to_str()
            .unwrap_or_default()
            .to_ascii_lowercase()
            .starts_with("application/json")
    {
        return Err(ApiError::invalid_request(
            "Content-Type must be application/json",
        ));
    }
    read_limited(req.into_body(), limit).await
}

/// A whole body of any content type (OAuth form posts), read within the body limit: over it is
/// the JSON `413 PAYLOAD_TOO_LARGE` (axum's own `Bytes` would answer a plain-text 413 at its
/// own 2 MB default).
pub struct BodyBytes(pub Bytes);

impl FromRequest<AppState> for BodyBytes {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let limit = state.config.max_body_bytes;
        if content_length(req.headers()).is_some_and(|len| len > limit as u64) {
            return Err(too_large(limit));
        }
        read_limited(req.into_body(), limit).await.map(BodyBytes)
    }
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error_lite(de)
}

/// Maps serde errors: syntax → 400, data → 422 with the message naming the field.
fn serde_path_to_error_lite<'de, T: DeserializeOwned>(
    de: &mut serde_json::Deserializer<serde_json::de::SliceRead<'de>>,
) -> Result<T, ApiError> {
    match T::deserialize(&mut *de).and_then(|v| de.end().map(|()| v)) {
        Ok(v) => Ok(v),
        Err(e) => Err(match e.classify() {
            serde_json::error::Category::Data => {
                let msg = e.to_string();
                let field = msg
                    .split('`')
                    .nth(1)
                    .filter(|_| {
                        msg.starts_with("missing field") || msg.starts_with("unknown field")
                    })
                    .map(str::to_string);
                let mut err = ApiError::new(
                    ErrorCode::ValidationFailed,
                    format!("Invalid request body: {msg}"),
                );
                err.param = field;
                err
            }
            _ => ApiError::invalid_request(format!("The request body is not valid JSON: {e}")),
        }),
    }
}

impl<T: DeserializeOwned> FromRequest<AppState> for Json<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        if bytes.is_empty() {
            return Err(ApiError::invalid_request("A JSON request body is required"));
        }
        parse_json(&bytes).map(Json)
    }
}

/// A JSON body that may be absent (empty body): `None`. A present body must be valid.
pub struct OptionalJson<T>(pub Option<T>);

impl<T: DeserializeOwned> FromRequest<AppState> for OptionalJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        parse_json(&bytes).map(|v| OptionalJson(Some(v)))
    }
}

impl FromRequest<AppState> for RawJson {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::invalid_request(format!("The request body is not valid JSON: {e}"))
        })?;
        if !value.is_object() {
            return Err(ApiError::invalid_request(
                "The request body must be a JSON object",
            ));
        }
        Ok(RawJson { bytes, value })
    }
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Request metadata for audit events.
pub struct Meta(pub RequestMeta);

impl FromRequestParts<AppState> for Meta {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(Meta(request_meta(parts, state)))
    }
}

pub fn request_meta(parts: &Parts, state: &AppState) -> RequestMeta {
    RequestMeta {
        origin: Some(state.auth.instance_id().into()),
        ip: parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string()),
        user_agent: parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(256).collect()),
        request_id: parts.extensions.get::<RequestId>().map(|r| r.0.to_string()),
    }
}
