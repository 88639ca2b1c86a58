//! Browser access (CORS, SPEC §2.5a). A subscription lists the web origins whose pages may use
//! its app JWTs and its id from a browser (`allowed_origins`, empty by default = none).
//!
//! - **Preflights** (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) on the AI routes
//!   a browser may call (models, chat, embeddings, images, operations) are answered `204` with
//!   exactly that route's method and the headers the routes read, when an active subscription
//!   allows the origin; otherwise `403`, without CORS headers, so the browser never sends the
//!   request. A preflight carries no credential, so it can only ask "is this origin allowed by
//!   anyone"; the request itself is checked against its own credential.
//! - **Requests from another origin** (an `Origin` header that is not the gateway's own): the route
//!   guard refuses every credential whose subscription does not list the origin — API keys and
//!   platform tokens included (a long-lived key in a web page is a leak; the error says so). On
//!   the AI routes, responses to such requests carry `Access-Control-Allow-Origin` (errors too, so
//!   a page can read why it was refused, e.g. `AUTH_TOKEN_EXPIRED` to mint a new token) and
//!   expose the headers a client needs (`x-request-id`, `Retry-After`, the rate-limit headers).
//!   No cookie is ever accepted cross-origin (`Access-Control-Allow-Credentials` is never sent).

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::app::AppState;
use crate::auth::{CredentialType, Principal};
use crate::error::ApiError;

/// The most origins one subscription may list.
pub const MAX_ORIGINS: usize = 32;

/// The request headers the AI routes read, as a preflight answers them.
const ALLOW_HEADERS: &str =
    "authorization, content-type, x-api-key, x-user-id, x-request-id, x-end-user-id, prefer";

/// The response headers a page may read.
const EXPOSE_HEADERS: &str = "x-request-id, retry-after, x-should-retry, location, \
     x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, \
     x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens";

/// How long a browser may cache a preflight's answer (seconds).
const MAX_AGE: &str = "600";

/// An origin as a subscription stores it and a browser sends it: `scheme://host[:port]`, scheme
/// `http` or `https`, the host lower-cased (IDNA to ASCII), the default port dropped. Anything
/// with a path, query, fragment or user info is refused, as are `null` and wildcards.
pub fn parse_origin(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() || s.len() > 300 {
        return Err("an origin is scheme://host[:port], at most 300 characters".into());
    }
    if s.contains('*') {
        return Err(format!("{s}: wildcards are not allowed; list each origin"));
    }
    let url =
        url::Url::parse(s).map_err(|_| format!("{s} is not an origin (scheme://host[:port])"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{s}: the scheme must be http or https"));
    }
    if url.path() != "/"
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(format!(
            "{s}: an origin has no path, query, fragment or user info"
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{s}: an origin needs a host"));
    }
    Ok(url.origin().ascii_serialization())
}

/// A subscription's `allowed_origins` as given: each normalised, duplicates dropped, at most
/// [`MAX_ORIGINS`]; an error names the field.
pub fn validate_origins(list: Vec<String>) -> Result<Vec<String>, ApiError> {
    if list.len() > MAX_ORIGINS {
        return Err(ApiError::validation(
            "allowed_origins",
            format!("at most {MAX_ORIGINS} origins"),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for s in list {
        let o = parse_origin(&s).map_err(|m| ApiError::validation("allowed_origins", m))?;
        if !out.contains(&o) {
            out.push(o);
        }
    }
    Ok(out)
}

/// The gateway's own origin (from `public_url`): requests from its own pages are not
/// cross-origin.
pub fn own_origin(public_url: &str) -> Option<String> {
    url::Url::parse(public_url)
        .ok()
        .map(|u| u.origin().ascii_serialization())
}

/// The `Origin` of a cross-origin request: `None` when there is none or it is the gateway's own.
/// Two `Origin` headers, or one that is not text, count as an origin no subscription allows.
pub fn cross_origin<'a>(headers: &'a HeaderMap, own: Option<&str>) -> Option<&'a str> {
    let mut all = headers.get_all(header::ORIGIN).iter();
    let first = all.next()?;
    if all.next().is_some() {
        return Some("");
    }
    let origin = first.to_str().unwrap_or("");
    (Some(origin) != own).then_some(origin)
}

/// Whether `principal` may be used from a page of `origin` (a cross-origin request): only when
/// its subscription lists the origin.
pub fn check(principal: &Principal, origin: &str) -> Result<(), ApiError> {
    if principal
        .web_origins
        .as_deref()
        .is_some_and(|list| list.iter().any(|o| o == origin))
    {
        return Ok(());
    }
    let shown = if origin.is_empty() {
        "(unreadable)"
    } else {
        origin
    };
    let message = match principal.credential_type {
        CredentialType::ApiKey => format!(
            "API keys are refused from web pages (Origin {shown}): a key in a browser is visible \
             to everyone who opens the page. Mint a short-lived app JWT on your backend instead, \
             or allow this origin in the key's subscription"
        ),
        CredentialType::PlatformJwt | CredentialType::ExternalJwt => format!(
            "Platform and identity-provider tokens are refused from web pages (Origin {shown}); \
             call from your backend, or use an app JWT of a subscription that allows this origin"
        ),
        CredentialType::AppJwt | CredentialType::SubscriptionId => {
            format!("The origin {shown} is not allowed for this subscription (its allowed_origins)")
        }
    };
    Err(ApiError::permission_denied(message).with_param("origin"))
}

/// The method of the browser-callable AI route at `path`, or `None` for any other path.
fn route_method(path: &str) -> Option<Method> {
    let rest = ["/v1/", "/api/v1/", "/api/v2/"]
        .iter()
        .find_map(|p| path.strip_prefix(p))?;
    match rest {
        "models" => Some(Method::GET),
        "chat/completions" | "completions" | "responses" | "embeddings" | "images/generations" => {
            Some(Method::POST)
        }
        _ => match rest.strip_prefix("models/") {
            Some(name) => (!name.is_empty()).then_some(Method::GET),
            None => rest
                .strip_prefix("operations/")
                .filter(|id| !id.is_empty() && !id.contains('/'))
                .map(|_| Method::GET),
        },
    }
}

/// The CORS layer around the router (inside `Observe`, so its answers have a request id).
#[derive(Clone)]
pub struct CorsLayer {
    state: AppState,
}

impl CorsLayer {
    pub fn new(state: &AppState) -> Self {
        Self {
            state: state.clone(),
        }
    }
}

impl<S> tower::Layer<S> for CorsLayer {
    type Service = Cors<S>;
    fn layer(&self, inner: S) -> Cors<S> {
        Cors {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Cors<S> {
    inner: S,
    layer: CorsLayer,
}

type BoxedResponse =
    std::pin::Pin<Box<dyn Future<Output = Result<Response, std::convert::Infallible>> + Send>>;

impl<S> tower::Service<Request> for Cors<S>
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures_util::future::Either<S::Future, BoxedResponse>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        use futures_util::future::Either;
        let Some(method) = route_method(req.uri().path()) else {
            return Either::Left(self.inner.call(req));
        };
        let Some(origin) = cross_origin(req.headers(), self.layer.state.auth.web_origin()) else {
            return Either::Left(self.inner.call(req));
        };
        let origin = origin.to_string();
        if req.method() == Method::OPTIONS
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            let state = self.layer.state.clone();
            let requested = req
                .headers()
                .get(header::ACCESS_CONTROL_REQUEST_METHOD)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            return Either::Right(Box::pin(async move {
                Ok(preflight(&state, &origin, &requested, &method).await)
            }));
        }
        let fut = self.inner.call(req);
        Either::Right(Box::pin(async move {
            let Ok(mut res) = fut.await;
            allow(res.headers_mut(), &origin);
            Ok(res)
        }))
    }
}

/// The CORS headers of an answer to a cross-origin request from `origin`.
fn allow(h: &mut HeaderMap, origin: &str) {
    if let Ok(v) = HeaderValue::from_str(origin)
        && !origin.is_empty()
    {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
    }
    h.append(header::VARY, HeaderValue::from_static("origin"));
}

async fn preflight(state: &AppState, origin: &str, requested: &str, method: &Method) -> Response {
    let refuse = |why: String| {
        let mut res = ApiError::permission_denied(why)
            .with_param("origin")
            .into_response();
        res.headers_mut()
            .append(header::VARY, HeaderValue::from_static("origin"));
        res
    };
    let Ok(normalised) = parse_origin(origin) else {
        return refuse(format!(
            "The origin {origin} may not call this gateway from a browser"
        ));
    };
    if normalised != origin {
        return refuse(format!(
            "The origin {origin} may not call this gateway from a browser"
        ));
    }
    if requested != method.as_str() {
        return refuse(format!("This route answers {method} only, not {requested}"));
    }
    match crate::store::subscriptions::origin_allowed_anywhere(state.store.pool(), origin).await {
        Ok(true) => {}
        Ok(false) => {
            return refuse(format!(
                "The origin {origin} is not allowed by any subscription (allowed_origins)"
            ));
        }
        Err(e) => return ApiError::from(e).into_response(),
    }
    let mut res = StatusCode::NO_CONTENT.into_response();
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(if *method == Method::GET {
            "GET"
        } else {
            "POST"
        }),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(ALLOW_HEADERS),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(MAX_AGE),
    );
    h.append(header::VARY, HeaderValue::from_static("origin"));
    h.append(
        header::VARY,
        HeaderValue::from_static("access-control-request-method, access-control-request-headers"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_normalised_or_refused() {
        assert_eq!(
            parse_origin("https://App.Example.com").as_deref(),
            Ok("https://app.example.com")
        );
        assert_eq!(
            parse_origin("https://app.example.com/").as_deref(),
            Ok("https://app.example.com")
        );
        assert_eq!(
            parse_origin("https://app.example.com:443").as_deref(),
            Ok("https://app.example.com")
        );
        assert_eq!(
            parse_origin("http://127.0.0.1:5173").as_deref(),
            Ok("http://127.0.0.1:5173")
        );
        for bad in [
            "",
            "null",
            "*",
            "https://*.example.com",
            "app.example.com",
            "ftp://example.com",
            "file:///tmp/x.html",
            "https://example.com/app",
            "https://example.com/?q",
            "https://example.com/#f",
            "https://user@example.com",
            "javascript:alert(1)",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_the_browser_routes_are_covered() {
        assert_eq!(route_method("/v1/chat/completions"), Some(Method::POST));
        assert_eq!(route_method("/api/v2/embeddings"), Some(Method::POST));
        assert_eq!(route_method("/v1/models"), Some(Method::GET));
        assert_eq!(route_method("/v1/operations/op_1"), Some(Method::GET));
        assert_eq!(route_method("/v1/models/gpt-4o"), Some(Method::GET));
        assert_eq!(route_method("/v1/operations/"), None);
        assert_eq!(route_method("/v1/operations/a/b"), None);
        assert_eq!(route_method("/v1/api-keys"), None);
        assert_eq!(route_method("/oauth/token"), None);
    }

    #[test]
    fn two_origins_or_garbage_count_as_an_unknown_origin() {
        let mut h = HeaderMap::new();
        assert_eq!(cross_origin(&h, Some("http://gw")), None);
        h.insert(header::ORIGIN, HeaderValue::from_static("http://gw"));
        assert_eq!(cross_origin(&h, Some("http://gw")), None);
        h.insert(header::ORIGIN, HeaderValue::from_static("http://app"));
        assert_eq!(cross_origin(&h, Some("http://gw")), Some("http://app"));
        h.append(header::ORIGIN, HeaderValue::from_static("http://gw"));
        assert_eq!(cross_origin(&h, Some("http://gw")), Some(""));
    }
}
