//! The HTTP API in one table: every route's method, path, who may call it and with which
//! permission, read at a glance (SPEC §4, §5). [`router`] mounts it — each row with its own
//! route guard — and the tests read [`table`] to compare the registered routes with the spec.
//!
//! Finer rules are the handlers' and the service layer's, in the caller's transaction: own vs
//! any key and the credential ceiling (`api::keys`), tenant owner and platform owner
//! (`Caller::authority`), a subscription's own operations. The console (`/console…`) is not an
//! API and mounts its own routes (`console::routes`), signed in through its session.

use axum::Router;
use axum::http::Method;
use axum::routing::{MethodFilter, MethodRouter, on};

use crate::app::AppState;
use crate::auth::middleware::guard;
use crate::auth::{AuthLevel, Permission};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No credential is read: health, discovery, sign-up, and the OAuth endpoints, whose
    /// clients authenticate themselves.
    Public,
    /// Any credential with the permission, or a subscription id (`x-user-id`).
    Optional(Permission),
    /// Any credential, or a subscription id; no permission needed.
    Anyone,
    /// Any credential of the tenant (finer checks in the handler).
    Member,
    /// A credential whose effective permissions hold this one.
    Needs(Permission),
}

/// One route of the API.
pub struct Route {
    pub method: Method,
    pub path: String,
    pub access: Access,
    handler: MethodRouter<AppState>,
}

impl Route {
    fn guarded(self, state: &AppState) -> MethodRouter<AppState> {
        match self.access {
            Access::Public => self.handler,
            Access::Optional(p) => {
                self.handler
                    .route_layer(guard(state, AuthLevel::Optional, Some(p)))
            }
            Access::Anyone => self
                .handler
                .route_layer(guard(state, AuthLevel::Optional, None)),
            Access::Member => self
                .handler
                .route_layer(guard(state, AuthLevel::Required, None)),
            Access::Needs(p) => {
                self.handler
                    .route_layer(guard(state, AuthLevel::Required, Some(p)))
            }
        }
    }
}

/// A row of the table: `route!(METHOD path, access, handler)`.
macro_rules! route {
    ($method:ident $path:expr, $access:expr, $handler:expr) => {
        Route {
            method: Method::$method,
            path: ($path).to_string(),
            access: $access,
            handler: on(MethodFilter::$method, $handler),
        }
    };
}

/// The prefixes the OpenAI-compatible routes are served under.
pub const AI_PREFIXES: [&str; 3] = ["/v1", "/api/v1", "/api/v2"];

/// Every route of the API.
pub fn table() -> Vec<Route> {
    use crate::api::{audit, keys, tenants, users};
    use crate::identity::{accounts, clients, external, login, oauth};
    use crate::subscriptions::{api as subs, operations};
    use crate::{ops, proxy, usage};
    use Access::{Anyone, Member, Needs, Optional, Public};
    use Permission::*;

    let mut t = vec![
        // Operations (SPEC §4.4).
        route!(GET "/health", Public, ops::health),
        route!(GET "/ready", Public, ops::ready),
        route!(GET "/metrics", Public, ops::metrics),
    ];
    // OpenAI-compatible (SPEC §4.1), registered with their full paths rather than nested: a
    // nested router rewrites every request's URI to strip its prefix, a cost the hottest
    // routes need not pay.
    for p in AI_PREFIXES {
        t.extend([
            route!(GET format!("{p}/models"), Optional(ModelsRead), proxy::list_models),
            // A catch-all: model names may hold `/` (`meta-llama/Llama-3.1-8B`).
            route!(GET format!("{p}/models/{{*id}}"), Optional(ModelsRead), proxy::get_model),
            route!(POST format!("{p}/chat/completions"), Needs(ChatWrite), proxy::chat_completions),
            route!(POST format!("{p}/completions"), Needs(ChatWrite), proxy::completions),
            route!(POST format!("{p}/responses"), Needs(ChatWrite), proxy::responses),
            route!(POST format!("{p}/embeddings"), Needs(EmbeddingsWrite), proxy::embeddings),
            route!(POST format!("{p}/images/generations"), Needs(ImagesWrite), proxy::image_generations),
            route!(GET format!("{p}/operations/{{id}}"), Optional(OperationsRead), operations::get_operation),
        ]);
    }
    t.extend([
        // Management (SPEC §4.2).
        route!(GET "/v1/api-keys", Member, keys::list),
        route!(POST "/v1/api-keys", Member, keys::create),
        route!(GET "/v1/api-keys/{id}", Member, keys::get),
        route!(PATCH "/v1/api-keys/{id}", Member, keys::patch),
        route!(DELETE "/v1/api-keys/{id}", Member, keys::revoke),
        route!(POST "/v1/api-keys/{id}/rotate", Member, keys::rotate),
        route!(GET "/v1/users", Needs(UsersRead), users::list),
        route!(POST "/v1/users", Needs(UsersWrite), users::create),
        route!(GET "/v1/users/{id}", Needs(UsersRead), users::get),
        route!(PATCH "/v1/users/{id}", Needs(UsersWrite), users::patch),
        route!(DELETE "/v1/users/{id}", Needs(UsersWrite), users::delete),
        route!(PUT "/v1/users/{id}/roles", Needs(UsersWrite), users::put_roles),
        route!(GET "/v1/roles", Needs(RolesWrite), users::list_roles),
        route!(POST "/v1/roles", Needs(RolesWrite), users::create_role),
        route!(PATCH "/v1/roles/{id}", Needs(RolesWrite), users::patch_role),
        route!(DELETE "/v1/roles/{id}", Needs(RolesWrite), users::delete_role),
        // The platform owner only (checked in the handler), and only with a credential whose
        // effective permissions include tenant:admin: scopes narrow platform powers too.
        route!(GET "/v1/tenants", Needs(TenantAdmin), tenants::list),
        route!(POST "/v1/tenants", Needs(TenantAdmin), tenants::create),
        route!(GET "/v1/me", Anyone, tenants::me),
        route!(GET "/v1/products", Member, subs::list_products),
        route!(POST "/v1/products", Needs(ProductsWrite), subs::create_product),
        route!(GET "/v1/products/{id}", Member, subs::get_product),
        route!(GET "/v1/plans", Member, subs::list_plans),
        route!(POST "/v1/plans", Needs(ProductsWrite), subs::create_plan),
        route!(GET "/v1/plans/{id}", Member, subs::get_plan),
        route!(GET "/v1/subscriptions", Needs(SubscriptionsRead), subs::list_subscriptions),
        route!(POST "/v1/subscriptions", Needs(SubscriptionsWrite), subs::create_subscription),
        route!(GET "/v1/subscriptions/{id}", Needs(SubscriptionsRead), subs::get_subscription),
        route!(PATCH "/v1/subscriptions/{id}", Needs(SubscriptionsWrite), subs::patch_subscription),
        route!(DELETE "/v1/subscriptions/{id}", Needs(SubscriptionsWrite), subs::cancel_subscription),
        route!(GET "/v1/subscriptions/{id}/credentials", Needs(SubscriptionsRead), subs::list_credentials),
        route!(POST "/v1/subscriptions/{id}/credentials", Needs(SubscriptionsWrite), subs::create_credential),
        route!(DELETE "/v1/subscriptions/{id}/credentials/{cred}", Needs(SubscriptionsWrite), subs::revoke_credential),
        route!(GET "/v1/usage", Needs(UsageRead), usage::api::get_usage),
        route!(GET "/v1/audit-events", Needs(AuditRead), audit::list),
        route!(GET "/v1/oauth-clients", Needs(TenantAdmin), clients::list),
        route!(POST "/v1/oauth-clients", Needs(TenantAdmin), clients::create),
        route!(GET "/v1/oauth-clients/{id}", Needs(TenantAdmin), clients::get),
        route!(DELETE "/v1/oauth-clients/{id}", Needs(TenantAdmin), clients::revoke),
        route!(GET "/v1/identity-providers", Needs(TenantAdmin), external::list),
        route!(POST "/v1/identity-providers", Needs(TenantAdmin), external::create),
        route!(DELETE "/v1/identity-providers/{id}", Needs(TenantAdmin), external::delete),
        // Identity (SPEC §4.3): discovery and keys, the standard endpoints (clients
        // authenticate themselves where required), the JSON flow and accounts.
        route!(GET "/.well-known/openid-configuration", Public, oauth::discovery),
        route!(GET "/.well-known/oauth-authorization-server", Public, oauth::discovery),
        route!(GET "/.well-known/jwks.json", Public, oauth::jwks),
        route!(GET "/oauth/authorize", Public, login::show),
        route!(POST "/oauth/authorize", Public, login::submit),
        route!(POST "/oauth/token", Public, oauth::token),
        route!(POST "/oauth/revoke", Public, oauth::revoke),
        route!(POST "/oauth/introspect", Public, oauth::introspect),
        route!(POST "/v1/auth/identify", Public, oauth::identify),
        route!(POST "/v1/auth/authorize", Public, oauth::authorize_json),
        route!(POST "/v1/auth/token", Public, oauth::json_token),
        route!(POST "/v1/auth/refresh", Public, oauth::json_refresh),
        route!(POST "/v1/auth/logout", Public, oauth::logout),
        route!(POST "/v1/auth/signup", Public, accounts::signup),
        route!(GET "/v1/auth/verify-email", Public, accounts::verify_email),
        route!(POST "/v1/auth/password-reset", Public, accounts::password_reset),
        route!(POST "/v1/auth/password-reset/confirm", Public, accounts::password_reset_confirm),
    ]);
    t
}

/// The API's routes, each behind its guard.
pub fn router(state: &AppState) -> Router<AppState> {
    table().into_iter().fold(Router::new(), |r, route| {
        let path = route.path.clone();
        r.route(&path, route.guarded(state))
    })
}
