//! The route guard: every non-public route declares its auth level and permission where it is
//! registered, e.g. `post(chat).route_layer(guard(&state, Required, Some(ChatWrite)))`.
//! The guard runs the credential pipeline and puts an `Arc<Principal>` into the request.
//!
//! The guard checks the route's permission; the finer rules that need the store (the ceiling a
//! credential-minting handler must keep, who counts as a tenant owner) are [`Caller`] methods
//! the handlers call inside their transaction.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};

use super::{AuthLevel, CredentialType, PermSet, Permission, Principal, failure_reason};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::store::{Conn, tenants};
use tollgate_core::permissions::{Authority, OWNER_ROLE};

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
    // A page of another origin may only use a credential whose subscription allows it.
    if let Some(origin) = crate::cors::cross_origin(req.headers(), state.auth.web_origin())
        && let Err(e) = crate::cors::check(&principal, origin)
    {
        state.metrics.auth_failure("origin");
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

impl Caller {
    /// This caller's authority now: its effective permissions, and whether it may act as a
    /// tenant owner (its user holds the `owner` role now, it is a first-party credential — an
    /// API key or a platform token, not an external IdP's token that asserts a member's email —
    /// and it is not narrowed by any scope) or as the platform owner (platform-owner user and
    /// the effective `tenant:admin`). Read in the caller's transaction.
    pub async fn authority(&self, conn: &mut Conn) -> ApiResult<Authority> {
        let first_party = matches!(
            self.credential_type,
            CredentialType::ApiKey | CredentialType::PlatformJwt
        );
        let owner_role = match &self.user_id {
            Some(user) if first_party && self.permissions.is_all() => {
                tenants::get_member(conn, &self.tenant_id, user)
                    .await?
                    .is_some_and(|m| m.roles.iter().any(|r| r == OWNER_ROLE))
            }
            _ => false,
        };
        Ok(Authority::of_member(
            self.permissions,
            owner_role,
            self.platform_admin && self.user_id.is_some(),
        ))
    }

    /// Fails with `403 PERMISSION_DENIED` when this caller is not an owner of its tenant.
    pub async fn require_owner(&self, conn: &mut Conn, what: &str) -> ApiResult<()> {
        if self.authority(conn).await?.owner {
            Ok(())
        } else {
            Err(ApiError::permission_denied(format!(
                "Only a tenant owner can {what} (with an unscoped key or token of their own)"
            )))
        }
    }
}

/// `403 PERMISSION_DENIED` unless `minted` (the credential a request would create, widen or hand
/// out) is within `ceiling` (the caller's authority). `what` completes "This credential cannot …".
pub fn within_ceiling(
    ceiling: Authority,
    minted: Authority,
    what: &str,
    param: Option<&str>,
) -> ApiResult<()> {
    let Some(excess) = minted.excess_over(ceiling) else {
        return Ok(());
    };
    let e = ApiError::permission_denied(format!(
        "This credential cannot {what}: the result would hold {}, which this credential does not",
        excess.describe()
    ));
    Err(match param {
        Some(p) => e.with_param(p),
        None => e,
    })
}

/// A member as the ceiling rules see them, read now: the permissions of their current roles,
/// whether they hold the `owner` role, whether they are the platform owner.
#[derive(Debug, Clone, Copy)]
pub struct MemberPowers {
    pub permissions: PermSet,
    pub owner_role: bool,
    pub platform_admin: bool,
}

impl MemberPowers {
    /// `None` when `user_id` is not a member of the tenant.
    pub async fn load(conn: &mut Conn, tenant_id: &str, user_id: &str) -> ApiResult<Option<Self>> {
        let Some(m) = tenants::get_member(conn, tenant_id, user_id).await? else {
            return Ok(None);
        };
        let permissions =
            crate::identity::tokens::role_permissions(conn, tenant_id, &m.roles).await?;
        Ok(Some(Self {
            permissions,
            owner_role: m.roles.iter().any(|r| r == OWNER_ROLE),
            platform_admin: m.user.platform_admin,
        }))
    }

    /// The authority of a credential of this member narrowed by `scopes` (`None` = unscoped).
    pub fn credential(&self, scopes: Option<PermSet>) -> Authority {
        let permissions = scopes.map_or(self.permissions, |s| self.permissions.intersect(s));
        Authority::of_member(permissions, self.owner_role, self.platform_admin)
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
