//! OAuth clients of a tenant (SPEC §4.2, `tenant:admin`): public clients (browser and native
//! apps, PKCE, exact redirect URIs) and confidential clients, which are also service accounts
//! (client credentials → a token carrying the client's roles). The secret is shown once.
//! A service account never holds more than the caller's effective permissions, and never the
//! `owner` role.
//! Another tenant's client is `404`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::auth::middleware::Caller;
use crate::error::{ApiError, ApiResult};
use crate::http::{Json, Meta};
use crate::service::Unit;
use crate::service::identity as service;
use crate::service::users::role_names;
use crate::store::identity::{self as idstore, OAuthClient};
use crate::store::{Conn, StoreError};
use crate::wire::ToApiWithRoles;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateClientBody {
    pub name: String,
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    #[serde(default)]
    pub confidential: bool,
    #[serde(default)]
    pub roles: Option<Vec<String>>,
}

/// Whether `requested` is one of a client's `registered` redirect URIs: the same string, or —
/// for a loopback IP literal over plain `http` (`http://127.0.0.1/cb`, `http://[::1]/cb`) —
/// the same URI with any port, since a native app listens on whatever port it is given at run
/// time (RFC 8252 §7.3). `localhost` is not treated so (§8.3: it may not resolve to loopback).
pub fn redirect_registered(registered: &[String], requested: &str) -> bool {
    if registered.iter().any(|u| u == requested) {
        return true;
    }
    let loopback = |s: &str| {
        let u = url::Url::parse(s).ok()?;
        let ip = match u.host()? {
            url::Host::Ipv4(a) => std::net::IpAddr::V4(a),
            url::Host::Ipv6(a) => std::net::IpAddr::V6(a),
            url::Host::Domain(_) => return None,
        };
        (u.scheme() == "http"
            && ip.is_loopback()
            && u.username().is_empty()
            && u.password().is_none())
        .then(|| (ip, u.path().to_string(), u.query().map(str::to_string)))
    };
    let Some(want) = loopback(requested) else {
        return false;
    };
    registered
        .iter()
        .any(|u| loopback(u).is_some_and(|have| have == want))
}

/// Redirect URIs must be absolute, without a fragment; plain `http` only for loopback hosts
/// (RFC 8252 §7.3); private-use schemes (`com.example.app:/cb`) for native apps.
pub fn validate_redirect_uri(s: &str) -> ApiResult<()> {
    let bad = |why: &str| ApiError::validation("redirect_uris", format!("{s:?}: {why}"));
    let u = url::Url::parse(s).map_err(|_| bad("not an absolute URL"))?;
    if u.fragment().is_some() {
        return Err(bad("must not contain a fragment"));
    }
    match u.scheme() {
        "https" => Ok(()),
        "http" => match u.host_str() {
            Some("localhost" | "127.0.0.1" | "[::1]") => Ok(()),
            _ => Err(bad(
                "http is only allowed for loopback redirect URIs; use https",
            )),
        },
        scheme if scheme.contains('.') => Ok(()),
        _ => Err(bad(
            "use https, a loopback http URI, or a private-use scheme like com.example.app",
        )),
    }
}

async fn to_api(conn: &mut Conn, c: &OAuthClient) -> ApiResult<Value> {
    let names = role_names(conn, &c.tenant_id, &c.roles).await?;
    Ok(c.to_api(&names))
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Meta(meta): Meta,
    Json(body): Json<CreateClientBody>,
) -> ApiResult<Response> {
    let input = service::NewClient {
        name: body.name,
        redirect_uris: body.redirect_uris,
        confidential: body.confidential,
        roles: body.roles,
    };
    let mut unit = Unit::begin(&state.store, &meta).await?;
    let (client, secret) = service::create_client(&mut unit, &caller, input).await?;
    let mut out = to_api(unit.conn(), &client).await?;
    unit.commit(&state.auth).await?;
    if let Some(s) = secret {
        out["client_secret"] = json!(s);
    }
    Ok((StatusCode::CREATED, axum::Json(out)).into_response())
}

pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Response> {
    let clients = idstore::list_clients(state.store.pool(), &caller.tenant_id).await?;
    let mut conn = state
        .store
        .pool()
        .acquire()
        .await
        .map_err(StoreError::from)?;
    let mut data = Vec::new();
    for c in &clients {
        data.push(to_api(&mut conn, c).await?);
    }
    Ok(axum::Json(json!({"object": "list", "data": data})).into_response())
}

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let mut conn = state
        .store
        .pool()
        .acquire()
        .await
        .map_err(StoreError::from)?;
    let c = idstore::get_client(&mut conn, &caller.tenant_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("OAuth client"))?;
    Ok(axum::Json(to_api(&mut conn, &c).await?).into_response())
}

/// Revokes a client: its tokens (service-account tokens and users' sessions through it) stop
/// working at once, in-flight requests included. Idempotent.
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Meta(meta): Meta,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let mut unit = Unit::begin(&state.store, &meta).await?;
    let c = service::revoke_client(&mut unit, &caller, &id).await?;
    let out = to_api(unit.conn(), &c).await?;
    unit.commit(&state.auth).await?;
    Ok(axum::Json(out).into_response())
}

#[cfg(test)]
mod tests {
    use super::redirect_registered;

    #[test]
    fn loopback_redirects_match_on_any_port() {
        let reg = vec![
            "http://127.0.0.1/callback".to_string(),
            "http://[::1]:8000/cb?x=1".to_string(),
            "http://localhost:9000/cb".to_string(),
            "https://app.example.com/cb".to_string(),
        ];
        for ok in [
            "http://127.0.0.1/callback",
            "http://127.0.0.1:53187/callback",
            "http://[::1]:1234/cb?x=1",
            "http://localhost:9000/cb",
            "https://app.example.com/cb",
        ] {
            assert!(redirect_registered(&reg, ok), "{ok}");
        }
        for bad in [
            "http://127.0.0.1:53187/other",
            "http://127.0.0.2:53187/callback",
            "http://[::1]:1234/cb",
            "http://localhost:9001/cb",
            "https://127.0.0.1:443/callback",
            "http://user@127.0.0.1:5/callback",
            "https://app.example.com:8443/cb",
        ] {
            assert!(!redirect_registered(&reg, bad), "{bad}");
        }
    }
}
