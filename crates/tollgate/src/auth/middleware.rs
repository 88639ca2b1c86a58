//! The route guard: every non-public route declares its auth level and permission where it is
//! registered, e.g. `post(chat).route_layer(guard(&state, Required, Some(ChatWrite)))`.
//! The guard runs the credential pipeline and puts an `Arc<Principal>` into the request.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};

use super::{AuthLevel, Permission, Principal, failure_reason};
use crate::app::AppState;
use crate::error::ApiError;

type BoxedResponse = std::pin::Pin<Box<dyn Future<Output = Response> + Send>>;

/// Builds the guard layer for one route.
// The layer type names the closure type; there is no simpler spelling that keeps it nameable.
#[allow(clippy::type_complexity)]
pub fn guard(
    state: &AppState,
    level: AuthLevel,
    permission: Option<Permission>,
) -> axum::middleware::FromFnLayer<
    impl Fn(State<AppState>, Request, Next) -> BoxedResponse + Clone + Send + Sync + 'static,
    AppState,
    (State<AppState>, Request),
> {
    from_fn_with_state(
        state.clone(),
        move |State(state): State<AppState>, req: Request, next: Next| {
            Box::pin(async move { run(state, level, permission, req, next).await }) as BoxedResponse
        },
    )
}

async fn run(
    state: AppState,
    level: AuthLevel,
    permission: Option<Permission>,
    mut req: Request,
    next: Next,
) -> Response {
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
    next.run(req).await
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
