//! The route guard: every non-public route declares its auth level and permission where it is
//! registered, e.g. `post(chat).route_layer(guard(&state, Required, Some(ChatWrite)))`.
//! The guard runs the credential pipeline and puts an `Arc<Principal>` into the request.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};

use super::{AuthLevel, Permission, Principal, failure_reason};
use crate::app::AppState;
use crate::error::ApiError;

/// Builds the guard layer for one route.
pub fn guard(state: &AppState, level: AuthLevel, permission: Option<Permission>) -> GuardLayer {
    GuardLayer {
        state: state.clone(),
        level,
        permission,
    }
}

/// The route guard as a layer. Hand-written rather than `middleware::from_fn`: per request it
/// clones the route once and boxes one future, nothing more.
#[derive(Clone)]
pub struct GuardLayer {
    state: AppState,
    level: AuthLevel,
    permission: Option<Permission>,
}

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guard<S>;
    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    layer: GuardLayer,
}

impl<S> tower::Service<Request> for Guard<S>
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Response, std::convert::Infallible>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The service that was polled ready goes into the future; a clone stays for the next call.
        let ready = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, ready);
        let GuardLayer {
            state,
            level,
            permission,
        } = self.layer.clone();
        Box::pin(async move { Ok(run(state, level, permission, req, inner).await) })
    }
}

async fn run<S>(
    state: AppState,
    level: AuthLevel,
    permission: Option<Permission>,
    mut req: Request,
    mut inner: S,
) -> Response
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>,
{
    let principal = match state.auth.authenticate(req.headers(), level).await {
        Ok(p) => p,
        Err(e) => {
            state.metrics.auth_failure(failure_reason(&e));
            return e.into_response();
        }
    };
    if let Some(p) = permission
        && let Err(e) = principal.require(p)
    {
        state.metrics.auth_failure("permission");
        return e.into_response();
    }
    req.extensions_mut().insert(Arc::new(principal));
    match inner.call(req).await {
        Ok(res) => res,
        Err(never) => match never {},
    }
}

/// Extractor for handlers behind a guard.
#[derive(Clone)]
pub struct Caller(pub Arc<Principal>);

impl std::ops::Deref for Caller {
    type Target = Principal;
    fn deref(&self) -> &Principal {
        &self.0
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Arc<Principal>>()
            .cloned()
            .map(Caller)
            // A handler mounted without a guard is a programming error; fail closed.
            .ok_or_else(ApiError::auth_missing)
    }
}
