//! The OAuth 2.0 authorization server endpoints (SPEC §4.3, RFC 6749, RFC 7636, RFC 7009,
//! RFC 7662, RFC 8414, RFC 9700): the grants, token rotation with reuse detection, revocation,
//! introspection, discovery and JWKS, plus the ScaiKey-style JSON flow under `/v1/auth/*`.
//!
//! The OAuth endpoints answer RFC 6749 errors (`{"error": "invalid_grant", ...}`); the `/v1/auth`
//! helpers that are not token endpoints (`identify`, `authorize`, `logout`) use the API's errors.
//! Bodies are read within the one body limit of every route (`crate::http::BodyBytes`): a body
//! over it is the API's JSON `413 PAYLOAD_TOO_LARGE`, on these endpoints too.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::app::AppState;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::http::{BodyBytes, Json, Meta, OptionalJson};
use crate::identity::tokens::{self, Grant};
use crate::store::audit::{Actor, AuditEvent, RequestMeta, append};
use crate::store::identity::{self as idstore, AuthCode, Family, OAuthClient, RefreshToken};
use crate::store::invalidations::{self, Kind};
use crate::store::{StoreError, tenants};
use crate::util::{new_id, now_ms, random_base62};
use tollgate_core::audit::Action;

/// Authorization codes live 60 seconds (RFC 9700 recommends short-lived codes).
pub const CODE_TTL_MS: i64 = 60_000;

/// SHA-256 hex of a secret (codes, refresh tokens, client secrets, email tokens).
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// RFC 7636 §4.2 `S256`: `BASE64URL(SHA256(ASCII(code_verifier)))`.
pub fn s256_challenge(verifier: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// RFC 7636 §4.1: 43–128 characters of `[A-Z] / [a-z] / [0-9] / "-" / "." / "_" / "~"`.
pub fn valid_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// A challenge is a base64url SHA-256: 43 characters.
pub fn valid_challenge(c: &str) -> bool {
    c.len() == 43
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

// ---- RFC 6749 errors -------------------------------------------------------------------------

/// An RFC 6749 §5.2 error response.
#[derive(Debug)]
pub struct OAuthError {
    pub status: StatusCode,
    pub error: &'static str,
    pub description: String,
    /// The client tried HTTP Basic: answer `WWW-Authenticate: Basic` (RFC 6749 §5.2).
    pub basic: bool,
}

impl OAuthError {
    pub fn new(error: &'static str, description: impl Into<String>) -> Self {
        let status = match error {
            "invalid_client" => StatusCode::UNAUTHORIZED,
            "server_error" => StatusCode::INTERNAL_SERVER_ERROR,
            "temporarily_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        Self {
            status,
            error,
            description: description.into(),
            basic: false,
        }
    }
    pub fn invalid_request(d: impl Into<String>) -> Self {
        Self::new("invalid_request", d)
    }
    pub fn invalid_grant(d: impl Into<String>) -> Self {
        Self::new("invalid_grant", d)
    }
    pub fn invalid_client(d: impl Into<String>) -> Self {
        Self::new("invalid_client", d)
    }
}

impl From<ApiError> for OAuthError {
    fn from(e: ApiError) -> Self {
        match e.code {
            ErrorCode::Unavailable => Self::new("temporarily_unavailable", e.message),
            ErrorCode::Internal => Self::new("server_error", "Internal error"),
            ErrorCode::ValidationFailed | ErrorCode::InvalidRequest => {
                Self::invalid_request(e.message)
            }
            _ => Self::invalid_grant(e.message),
        }
    }
}

impl From<StoreError> for OAuthError {
    fn from(e: StoreError) -> Self {
        ApiError::from(e).into()
    }
}

impl From<sqlx::Error> for OAuthError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::from(e).into()
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.error, "error_description": self.description});
        let mut res = (self.status, axum::Json(body)).into_response();
        let h = res.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if self.status == StatusCode::UNAUTHORIZED && self.basic {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"tollgate\""),
            );
        }
        res
    }
}

type OAuthResult<T> = Result<T, OAuthError>;

/// A successful token response (RFC 6749 §5.1), never cached.
pub struct TokenResponse {
    pub access_token: String,
    pub expires_in: u64,
    pub refresh_token: Option<String>,
    pub scope: String,
}

impl IntoResponse for TokenResponse {
    fn into_response(self) -> Response {
        let mut body = json!({
            "access_token": self.access_token, "token_type": "Bearer",
            "expires_in": self.expires_in, "scope": self.scope,
        });
        if let Some(r) = self.refresh_token {
            body["refresh_token"] = json!(r);
        }
        let mut res = axum::Json(body).into_response();
        let h = res.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        res
    }
}

// ---- request parsing and client authentication ------------------------------------------------

/// Parses an `application/x-www-form-urlencoded` body; a repeated parameter is an error
/// (RFC 6749 §3.2).
pub fn parse_form(headers: &HeaderMap, body: &[u8]) -> OAuthResult<HashMap<String, String>> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if !ct.starts_with("application/x-www-form-urlencoded") {
        return Err(OAuthError::invalid_request(
            "The body must be application/x-www-form-urlencoded",
        ));
    }
    let mut out = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(OAuthError::invalid_request(format!(
                "The parameter {k} appears more than once"
            )));
        }
    }
    Ok(out)
}

pub(crate) fn basic_credentials(headers: &HeaderMap) -> OAuthResult<Option<(String, String)>> {
    use base64::Engine;
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    let bad = || OAuthError {
        basic: true,
        ..OAuthError::invalid_client("Malformed Basic credentials")
    };
    // Two Authorization headers: a proxy in front could read the other one.
    if values.next().is_some() {
        return Err(OAuthError::invalid_request("Send one Authorization header"));
    }
    let v = v.to_str().map_err(|_| bad())?;
    let Some((scheme, rest)) = v.split_once(' ') else {
        return Err(bad());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .map_err(|_| bad())?;
    let text = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, secret) = text.split_once(':').ok_or_else(bad)?;
    // RFC 6749 §2.3.1: both parts are form-urlencoded.
    let dec = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.to_string())
            .unwrap_or_default()
    };
    Ok(Some((dec(id), dec(secret))))
}

/// Authenticates the client of a token-endpoint request: HTTP Basic or `client_secret_post`
/// for confidential clients, `client_id` alone for public ones.
pub async fn authenticate_client(
    state: &AppState,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
    meta: &RequestMeta,
) -> OAuthResult<OAuthClient> {
    let basic = basic_credentials(headers)?;
    let used_basic = basic.is_some();
    let (id, secret) = match basic {
        Some((id, secret)) => {
            if form.contains_key("client_secret") {
                return Err(OAuthError::invalid_request(
                    "Use one client authentication method",
                ));
            }
            (Some(id), Some(secret))
        }
        None => (
            form.get("client_id").cloned(),
            form.get("client_secret").cloned(),
        ),
    };
    let fail = |d: &str| OAuthError {
        basic: used_basic,
        ..OAuthError::invalid_client(d.to_string())
    };
    let Some(id) = id.filter(|s| !s.is_empty()) else {
        return Err(fail("Client authentication is required"));
    };
    if let Some(form_id) = form.get("client_id")
        && form_id != &id
    {
        return Err(fail("client_id does not match the authenticated client"));
    }
    let client = idstore::find_client(state.store.pool(), &id)
        .await?
        .filter(|c| c.revoked_at.is_none())
        .ok_or_else(|| fail("Unknown client"))?;
    match (&client.secret_hash, secret.filter(|s| !s.is_empty())) {
        (Some(hash), Some(secret)) => {
            if !bool::from(secret_hash(&secret).as_bytes().ct_eq(hash.as_bytes())) {
                // A wrong secret for a real service account is a failed login: audited.
                let mut tx = state.store.begin().await?;
                append(
                    &mut tx,
                    AuditEvent::new(
                        client.tenant_id.clone(),
                        Actor::anonymous(),
                        Action::AuthClientAuthFailed,
                        meta,
                    )
                    .target("oauth_client", client.id.clone())
                    .outcome("failure"),
                )
                .await?;
                tx.commit().await?;
                return Err(fail("Client authentication failed"));
            }
        }
        (Some(_), None) => return Err(fail("This client must authenticate with its secret")),
        (None, Some(_)) => return Err(fail("A public client has no secret")),
        (None, None) => {}
    }
    Ok(client)
}

// ---- grants ----------------------------------------------------------------------------------

fn new_refresh(family_id: &str, ttl_seconds: u64) -> (String, RefreshToken) {
    let plaintext = format!("tgr_{}", random_base62(43));
    let now = now_ms();
    let rec = RefreshToken {
        token_hash: secret_hash(&plaintext),
        family_id: family_id.to_string(),
        created_at: now,
        expires_at: now + i64::try_from(ttl_seconds.saturating_mul(1000)).unwrap_or(i64::MAX / 2),
        used_at: None,
    };
    (plaintext, rec)
}

/// Revokes a family in `tx` with its audit event and invalidation. Returns whether it changed.
async fn revoke_family_tx(
    tx: &mut crate::store::Tx,
    fam: &Family,
    reason: &'static str,
    action: Action,
    actor: Actor,
    meta: &RequestMeta,
) -> Result<bool, StoreError> {
    let changed = idstore::revoke_family(tx, &fam.id, reason, now_ms()).await?;
    if changed {
        append(
            tx,
            AuditEvent::new(fam.tenant_id.clone(), actor, action, meta)
                .target("session", fam.id.clone())
                .details(
                    json!({"user_id": fam.user_id, "client_id": fam.client_id, "reason": reason}),
                )
                .outcome(if reason == "logout" {
                    "success"
                } else {
                    "revoked"
                }),
        )
        .await?;
        invalidations::publish(tx, Kind::Credential, &fam.id, meta).await?;
    }
    Ok(changed)
}

/// Ends a login session (its refresh-token family) as a logout by its user: on every instance,
/// in-flight requests included. Ending a session that is already over changes nothing.
pub(crate) async fn end_session(
    state: &AppState,
    family_id: &str,
    meta: &RequestMeta,
) -> Result<(), ApiError> {
    let Some(fam) = idstore::get_family(state.store.pool(), family_id).await? else {
        return Ok(());
    };
    let mut tx = state.store.begin().await?;
    let actor = Actor::user(fam.user_id.clone());
    let changed =
        revoke_family_tx(&mut tx, &fam, "logout", Action::AuthLogout, actor, meta).await?;
    tx.commit().await.map_err(StoreError::from)?;
    if changed {
        state.auth.invalidate(Kind::Credential, &fam.id);
    }
    Ok(())
}

/// The answer to a grant that continues a login session: a new access token bound to the session
/// (`sid`), and the refresh token just issued for it.
async fn session_tokens(
    state: &AppState,
    fam: Family,
    refresh: String,
) -> OAuthResult<TokenResponse> {
    let grant = Grant {
        tenant_id: fam.tenant_id.clone(),
        subject: fam.user_id.clone(),
        client_id: fam.client_id.clone(),
        scope: fam.scope.clone(),
        sid: Some(fam.id.clone()),
    };
    let (access, ttl) = tokens::issue_access_token(state, &grant).await?;
    Ok(TokenResponse {
        access_token: access,
        expires_in: ttl,
        refresh_token: Some(refresh),
        scope: fam.scope,
    })
}

/// Exchanges an authorization code (with its PKCE verifier) for tokens.
pub async fn grant_authorization_code(
    state: &AppState,
    client: &OAuthClient,
    code: &str,
    verifier: Option<&str>,
    redirect_uri: Option<&str>,
    meta: &RequestMeta,
) -> OAuthResult<TokenResponse> {
    let hash = secret_hash(code);
    let now = now_ms();
    let mut tx = state.store.begin().await?;
    let Some(row) = idstore::get_code(&mut tx, &hash).await? else {
        return Err(OAuthError::invalid_grant("Unknown authorization code"));
    };
    if row.client_id != client.id {
        return Err(OAuthError::invalid_grant(
            "The code was issued to another client",
        ));
    }
    if row.used_at.is_some() || !idstore::spend_code(&mut tx, &hash, now).await? {
        // RFC 6749 §4.1.2: a replayed code revokes what it produced.
        let mut revoked = None;
        if let Some(fid) = &row.family_id
            && let Some(fam) = idstore::get_family(&mut *tx, fid).await?
            && revoke_family_tx(
                &mut tx,
                &fam,
                "code_reuse",
                Action::AuthCodeReused,
                Actor::system(),
                meta,
            )
            .await?
        {
            revoked = Some(fam.id);
        } else {
            append(
                &mut tx,
                AuditEvent::new(
                    row.tenant_id.clone(),
                    Actor::oauth_client(client.id.clone()),
                    Action::AuthCodeReused,
                    meta,
                )
                .target("user", row.user_id.clone())
                .outcome("failure")
                .details(json!({"session_revoked": false})),
            )
            .await?;
        }
        tx.commit().await?;
        if let Some(fid) = revoked {
            state.auth.invalidate(Kind::Credential, &fid);
        }
        return Err(OAuthError::invalid_grant(
            "The authorization code was already used",
        ));
    }
    // From here the code is spent whatever the outcome.
    let mut failure = check_code(&row, verifier, redirect_uri, client, now).err();
    if failure.is_none()
        && tenants::get_member(&mut tx, &row.tenant_id, &row.user_id)
            .await?
            .is_none()
    {
        failure = Some(OAuthError::invalid_grant(
            "The user is no longer a member of this tenant",
        ));
    }
    if let Some(e) = failure {
        // The code is spent; the failed exchange (a PKCE mismatch may be an attack) is recorded.
        append(
            &mut tx,
            AuditEvent::new(
                row.tenant_id.clone(),
                Actor::oauth_client(client.id.clone()),
                Action::AuthCodeExchangeFailed,
                meta,
            )
            .target("user", row.user_id.clone())
            .outcome("failure")
            .details(json!({"reason": e.description})),
        )
        .await?;
        tx.commit().await?;
        return Err(e);
    }
    let fam = Family {
        id: new_id("ses"),
        tenant_id: row.tenant_id.clone(),
        user_id: row.user_id.clone(),
        client_id: client.id.clone(),
        scope: row.scope.clone(),
        created_at: now,
        revoked_at: None,
    };
    idstore::insert_family(&mut tx, &fam).await?;
    idstore::set_code_family(&mut tx, &hash, &fam.id).await?;
    let (refresh, rec) = new_refresh(&fam.id, state.config.auth.refresh_token_ttl_seconds);
    idstore::insert_refresh(&mut tx, &rec).await?;
    append(
        &mut tx,
        AuditEvent::new(
            fam.tenant_id.clone(),
            Actor::user(fam.user_id.clone()),
            Action::AuthSessionCreated,
            meta,
        )
        .target("session", fam.id.clone())
        .details(
            json!({"client_id": client.id, "scope": fam.scope, "grant_type": "authorization_code"}),
        ),
    )
    .await?;
    tx.commit().await?;
    session_tokens(state, fam, refresh).await
}

fn check_code(
    row: &AuthCode,
    verifier: Option<&str>,
    redirect_uri: Option<&str>,
    client: &OAuthClient,
    now: i64,
) -> OAuthResult<()> {
    if row.expires_at <= now {
        return Err(OAuthError::invalid_grant("The authorization code expired"));
    }
    if redirect_uri != Some(row.redirect_uri.as_str()) {
        return Err(OAuthError::invalid_grant(
            "redirect_uri does not match the authorization request",
        ));
    }
    match (&row.code_challenge, verifier) {
        (Some(challenge), Some(v)) => {
            if !valid_verifier(v) {
                return Err(OAuthError::invalid_grant("Malformed code_verifier"));
            }
            let computed = s256_challenge(v);
            if !bool::from(computed.as_bytes().ct_eq(challenge.as_bytes())) {
                return Err(OAuthError::invalid_grant(
                    "code_verifier does not match the code_challenge",
                ));
            }
        }
        (Some(_), None) => {
            return Err(OAuthError::invalid_grant("code_verifier is required"));
        }
        (None, Some(_)) => {
            return Err(OAuthError::invalid_grant(
                "A code_verifier was sent but the authorization request had no code_challenge",
            ));
        }
        (None, None) if !client.confidential => {
            return Err(OAuthError::invalid_grant("PKCE is required"));
        }
        (None, None) => {}
    }
    Ok(())
}

/// Rotates a refresh token. A spent token presented again revokes its whole family (and, through
/// the invalidation, the family's access tokens and in-flight requests).
pub async fn grant_refresh_token(
    state: &AppState,
    client: Option<&OAuthClient>,
    refresh_token: &str,
    meta: &RequestMeta,
) -> OAuthResult<TokenResponse> {
    let hash = secret_hash(refresh_token);
    let now = now_ms();
    let mut tx = state.store.begin().await?;
    let Some((rt, fam)) = idstore::find_refresh(&mut tx, &hash).await? else {
        return Err(OAuthError::invalid_grant("Unknown refresh token"));
    };
    let fam_client = match client {
        Some(c) if c.id != fam.client_id => {
            return Err(OAuthError::invalid_grant(
                "The refresh token was issued to another client",
            ));
        }
        Some(c) => c.clone(),
        None => {
            let c = idstore::find_client(&mut *tx, &fam.client_id)
                .await?
                .ok_or_else(|| OAuthError::invalid_grant("The token's client is gone"))?;
            if c.confidential {
                return Err(OAuthError::invalid_client(
                    "This client must authenticate at /oauth/token",
                ));
            }
            c
        }
    };
    if fam.revoked_at.is_some() {
        return Err(OAuthError::invalid_grant("The session was revoked"));
    }
    if rt.used_at.is_some() || !idstore::spend_refresh(&mut tx, &hash, now).await? {
        revoke_family_tx(
            &mut tx,
            &fam,
            "refresh_token_reuse",
            Action::AuthRefreshTokenReused,
            Actor::system(),
            meta,
        )
        .await?;
        tx.commit().await?;
        state.auth.invalidate(Kind::Credential, &fam.id);
        tracing::warn!(session = %fam.id, "refresh token reuse: session revoked");
        return Err(OAuthError::invalid_grant(
            "The refresh token was already used; the session has been revoked",
        ));
    }
    let failure = if rt.expires_at <= now {
        Some("The refresh token expired")
    } else if fam_client.revoked_at.is_some() {
        Some("The client was revoked")
    } else if tenants::get_member(&mut tx, &fam.tenant_id, &fam.user_id)
        .await?
        .is_none()
    {
        Some("The user is no longer a member of this tenant")
    } else {
        None
    };
    if let Some(reason) = failure {
        // The token is spent; record why the refresh failed.
        append(
            &mut tx,
            AuditEvent::new(
                fam.tenant_id.clone(),
                Actor::user(fam.user_id.clone()),
                Action::AuthRefreshFailed,
                meta,
            )
            .target("session", fam.id.clone())
            .outcome("failure")
            .details(json!({"reason": reason})),
        )
        .await?;
        tx.commit().await?;
        return Err(OAuthError::invalid_grant(reason));
    }
    let (refresh, rec) = new_refresh(&fam.id, state.config.auth.refresh_token_ttl_seconds);
    idstore::insert_refresh(&mut tx, &rec).await?;
    append(
        &mut tx,
        AuditEvent::new(
            fam.tenant_id.clone(),
            Actor::user(fam.user_id.clone()),
            Action::AuthTokenRefreshed,
            meta,
        )
        .target("session", fam.id.clone())
        .details(json!({"client_id": fam.client_id})),
    )
    .await?;
    tx.commit().await?;
    session_tokens(state, fam, refresh).await
}

/// Client credentials: a service account's token, carrying the client's roles (resolved at
/// request time). No refresh token.
pub async fn grant_client_credentials(
    state: &AppState,
    client: &OAuthClient,
    scope: Option<&str>,
    meta: &RequestMeta,
) -> OAuthResult<TokenResponse> {
    if !client.confidential {
        return Err(OAuthError::new(
            "unauthorized_client",
            "Only confidential clients (service accounts) may use client_credentials",
        ));
    }
    let scope = scope.unwrap_or_default().trim().to_string();
    if tokens::scope_permissions(&scope).is_err() {
        return Err(OAuthError::new("invalid_scope", "Unknown scope"));
    }
    let mut tx = state.store.begin().await?;
    append(
        &mut tx,
        AuditEvent::new(
            client.tenant_id.clone(),
            Actor::service_account(client.id.clone()),
            Action::AuthClientCredentials,
            meta,
        )
        .target("oauth_client", client.id.clone())
        .details(json!({"scope": scope})),
    )
    .await?;
    tx.commit().await?;
    let (access, ttl) = tokens::issue_access_token(
        state,
        &Grant {
            tenant_id: client.tenant_id.clone(),
            subject: client.id.clone(),
            client_id: client.id.clone(),
            scope: scope.clone(),
            sid: None,
        },
    )
    .await?;
    Ok(TokenResponse {
        access_token: access,
        expires_in: ttl,
        refresh_token: None,
        scope,
    })
}

// ---- endpoints -------------------------------------------------------------------------------

/// `POST /oauth/token` (form-encoded).
pub async fn token(
    State(state): State<AppState>,
    Meta(meta): Meta,
    headers: HeaderMap,
    BodyBytes(body): BodyBytes,
) -> Result<TokenResponse, OAuthError> {
    let form = parse_form(&headers, &body)?;
    state.auth.identity.maybe_prune(state.store.pool());
    let grant_type = form
        .get("grant_type")
        .ok_or_else(|| OAuthError::invalid_request("grant_type is required"))?;
    match grant_type.as_str() {
        "authorization_code" => {
            let client = authenticate_client(&state, &headers, &form, &meta).await?;
            let code = form
                .get("code")
                .ok_or_else(|| OAuthError::invalid_request("code is required"))?;
            grant_authorization_code(
                &state,
                &client,
                code,
                form.get("code_verifier").map(String::as_str),
                form.get("redirect_uri").map(String::as_str),
                &meta,
            )
            .await
        }
        "refresh_token" => {
            let client = authenticate_client(&state, &headers, &form, &meta).await?;
            let rt = form
                .get("refresh_token")
                .ok_or_else(|| OAuthError::invalid_request("refresh_token is required"))?;
            grant_refresh_token(&state, Some(&client), rt, &meta).await
        }
        "client_credentials" => {
            let client = authenticate_client(&state, &headers, &form, &meta).await?;
            grant_client_credentials(
                &state,
                &client,
                form.get("scope").map(String::as_str),
                &meta,
            )
            .await
        }
        _ => Err(OAuthError::new(
            "unsupported_grant_type",
            "Supported: authorization_code, refresh_token, client_credentials",
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonTokenBody {
    pub code: String,
    #[serde(default)]
    pub code_verifier: Option<String>,
    pub redirect_uri: String,
    pub client_id: String,
    #[serde(default)]
    pub client_secret: Option<String>,
}

/// `POST /v1/auth/token` (JSON): the ScaiKey-style code exchange.
pub async fn json_token(
    State(state): State<AppState>,
    Meta(meta): Meta,
    headers: HeaderMap,
    BodyBytes(body): BodyBytes,
) -> Result<TokenResponse, OAuthError> {
    let body: JsonTokenBody = parse_json_body(&headers, &body)?;
    let mut form = HashMap::new();
    form.insert("client_id".to_string(), body.client_id.clone());
    if let Some(s) = &body.client_secret {
        form.insert("client_secret".to_string(), s.clone());
    }
    let client = authenticate_client(&state, &headers, &form, &meta).await?;
    grant_authorization_code(
        &state,
        &client,
        &body.code,
        body.code_verifier.as_deref(),
        Some(&body.redirect_uri),
        &meta,
    )
    .await
}

/// Bodies carrying codes, verifiers, secrets or refresh tokens print none of them.
macro_rules! redacted_debug {
    ($($t:ty),*) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($t), "(***)"))
            }
        }
    )*};
}
redacted_debug!(JsonTokenBody, RefreshBody, LogoutBody, TokenResponse);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    pub refresh_token: String,
    #[serde(default)]
    pub client_id: Option<String>,
}

/// `POST /v1/auth/refresh` (JSON): rotates a public client's refresh token.
pub async fn json_refresh(
    State(state): State<AppState>,
    Meta(meta): Meta,
    headers: HeaderMap,
    BodyBytes(body): BodyBytes,
) -> Result<TokenResponse, OAuthError> {
    let body: RefreshBody = parse_json_body(&headers, &body)?;
    let client = match &body.client_id {
        Some(id) => Some(
            idstore::find_client(state.store.pool(), id)
                .await?
                .filter(|c| c.revoked_at.is_none() && !c.confidential)
                .ok_or_else(|| OAuthError::invalid_client("Unknown public client"))?,
        ),
        None => None,
    };
    grant_refresh_token(&state, client.as_ref(), &body.refresh_token, &meta).await
}

fn parse_json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
) -> OAuthResult<T> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if !ct.starts_with("application/json") {
        return Err(OAuthError::invalid_request(
            "Content-Type must be application/json",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| OAuthError::invalid_request(format!("Invalid request body: {e}")))
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogoutBody {
    #[serde(default)]
    pub refresh_token: Option<String>,
}

/// `POST /v1/auth/logout`: revokes the session (refresh-token family) named by a refresh token
/// in the body or by the platform access token in `Authorization`. Idempotent: `204`.
pub async fn logout(
    State(state): State<AppState>,
    Meta(meta): Meta,
    headers: HeaderMap,
    OptionalJson(body): OptionalJson<LogoutBody>,
) -> ApiResult<Response> {
    let fam = match body.and_then(|b| b.refresh_token) {
        Some(rt) => {
            let mut conn = state
                .store
                .pool()
                .acquire()
                .await
                .map_err(StoreError::from)?;
            idstore::find_refresh(&mut conn, &secret_hash(&rt))
                .await?
                .map(|(_, f)| f)
        }
        None => {
            let raw = crate::auth::extract(
                &headers,
                crate::auth::AuthLevel::Required,
                state.auth.key_prefix(),
            )?;
            let Some(crate::auth::RawCredential::Jwt(token)) = raw else {
                return Err(match raw {
                    None => ApiError::auth_missing(),
                    Some(_) => ApiError::auth_invalid(
                        "Logout takes a platform access token or a refresh token",
                    ),
                });
            };
            let claims = tokens::verify_claims(&state.auth, token).await?;
            match claims.sid {
                Some(sid) => idstore::get_family(state.store.pool(), &sid).await?,
                None => {
                    return Err(ApiError::invalid_request(
                        "A service-account token has no session to log out of",
                    ));
                }
            }
        }
    };
    if let Some(fam) = fam {
        let mut tx = state.store.begin().await?;
        let actor = Actor::user(fam.user_id.clone());
        let changed =
            revoke_family_tx(&mut tx, &fam, "logout", Action::AuthLogout, actor, &meta).await?;
        tx.commit().await.map_err(StoreError::from)?;
        if changed {
            state.auth.invalidate(Kind::Credential, &fam.id);
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /oauth/revoke` (RFC 7009). Always `200` for a token the client may not see or that does
/// not exist; revoking a refresh token revokes its session, an access token its session (or, for
/// a service account, that token).
pub async fn revoke(
    State(state): State<AppState>,
    Meta(meta): Meta,
    headers: HeaderMap,
    BodyBytes(body): BodyBytes,
) -> Result<Response, OAuthError> {
    let form = parse_form(&headers, &body)?;
    let client = authenticate_client(&state, &headers, &form, &meta).await?;
    let token = form
        .get("token")
        .ok_or_else(|| OAuthError::invalid_request("token is required"))?;
    let ok = || {
        let mut res = StatusCode::OK.into_response();
        res.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        res
    };
    let mut fam = None;
    let mut jti = None;
    {
        let mut conn = state
            .store
            .pool()
            .acquire()
            .await
            .map_err(StoreError::from)?;
        if let Some((_, f)) = idstore::find_refresh(&mut conn, &secret_hash(token)).await? {
            fam = Some(f);
        }
    }
    if fam.is_none()
        && let Ok(claims) = tokens::verify_claims(&state.auth, token).await
        && claims.client_id == client.id
    {
        match &claims.sid {
            Some(sid) => fam = idstore::get_family(state.store.pool(), sid).await?,
            None => jti = Some(claims),
        }
    }
    let mut tx = state.store.begin().await?;
    let actor = Actor::oauth_client(client.id.clone());
    let mut cut = None;
    if let Some(f) = fam.filter(|f| f.client_id == client.id) {
        if revoke_family_tx(
            &mut tx,
            &f,
            "revoked",
            Action::AuthTokenRevoked,
            actor,
            &meta,
        )
        .await?
        {
            cut = Some(f.id);
        }
    } else if let Some(c) = jti {
        let exp_ms = i64::try_from(c.exp).unwrap_or(i64::MAX / 1000) * 1000;
        idstore::revoke_jti(&mut tx, &c.jti, exp_ms).await?;
        append(
            &mut tx,
            AuditEvent::new(
                client.tenant_id.clone(),
                actor,
                Action::AuthTokenRevoked,
                &meta,
            )
            .target("access_token", c.jti.clone())
            .details(json!({"client_id": client.id})),
        )
        .await?;
        invalidations::publish(&mut tx, Kind::Credential, &c.jti, &meta).await?;
        cut = Some(c.jti);
    }
    tx.commit().await?;
    if let Some(id) = cut {
        state.auth.invalidate(Kind::Credential, &id);
    }
    Ok(ok())
}

/// `POST /oauth/introspect` (RFC 7662). Only confidential clients may introspect, and only tokens
/// of their own tenant; anything else is `{"active": false}`.
pub async fn introspect(
    State(state): State<AppState>,
    Meta(meta): Meta,
    headers: HeaderMap,
    BodyBytes(body): BodyBytes,
) -> Result<Response, OAuthError> {
    let form = parse_form(&headers, &body)?;
    let client = authenticate_client(&state, &headers, &form, &meta).await?;
    if !client.confidential {
        return Err(OAuthError::invalid_client(
            "Only confidential clients may introspect tokens",
        ));
    }
    let token = form
        .get("token")
        .ok_or_else(|| OAuthError::invalid_request("token is required"))?;
    let inactive = json!({"active": false});
    let mut out = inactive.clone();
    let mut conn = state
        .store
        .pool()
        .acquire()
        .await
        .map_err(StoreError::from)?;
    if let Some((rt, fam)) = idstore::find_refresh(&mut conn, &secret_hash(token)).await? {
        drop(conn);
        if fam.tenant_id == client.tenant_id
            && fam.revoked_at.is_none()
            && rt.used_at.is_none()
            && rt.expires_at > now_ms()
        {
            out = json!({
                "active": true, "token_type": "refresh_token", "client_id": fam.client_id,
                "sub": fam.user_id, "tid": fam.tenant_id, "scope": fam.scope,
                "exp": rt.expires_at / 1000, "iat": rt.created_at / 1000, "iss": state.config.public_url,
            });
        }
    } else {
        drop(conn);
        if let Ok(claims) = tokens::verify_claims(&state.auth, token).await
            && claims.tid == client.tenant_id
            && let Ok(p) = tokens::verify_platform(&state.auth, token).await
        {
            out = json!({
                "active": true, "token_type": "Bearer", "client_id": claims.client_id,
                "sub": claims.sub, "tid": claims.tid, "scope": claims.scope, "exp": claims.exp,
                "iat": claims.iat, "jti": claims.jti, "iss": state.config.public_url,
                "aud": state.config.public_url, "permissions": p.permissions,
            });
        }
    }
    let mut res = axum::Json(out).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// `GET /.well-known/openid-configuration` and `/.well-known/oauth-authorization-server`.
pub async fn discovery(State(state): State<AppState>) -> Response {
    let base = &state.config.public_url;
    let alg = &state.config.auth.signing_alg;
    let mut scopes: Vec<&str> = tokens::NON_PERMISSION_SCOPES.to_vec();
    scopes.extend(crate::auth::Permission::ALL.iter().map(|p| p.as_str()));
    axum::Json(json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/oauth/authorize"),
        "token_endpoint": format!("{base}/oauth/token"),
        "revocation_endpoint": format!("{base}/oauth/revoke"),
        "introspection_endpoint": format!("{base}/oauth/introspect"),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "scopes_supported": scopes,
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [alg],
        "access_token_signing_alg_values_supported": [alg],
        "authorization_response_iss_parameter_supported": true,
    }))
    .into_response()
}

/// `GET /.well-known/jwks.json`: the current and still-valid previous public keys.
pub async fn jwks(State(state): State<AppState>) -> ApiResult<Response> {
    let doc = state.auth.identity.keys.jwks(state.store.pool()).await?;
    let mut res = axum::Json(doc).into_response();
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    Ok(res)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentifyBody {
    pub email: String,
}

/// `POST /v1/auth/identify`: the tenants an email belongs to (empty for unknown emails).
pub async fn identify(
    State(state): State<AppState>,
    Json(body): Json<IdentifyBody>,
) -> ApiResult<Response> {
    let mut conn = state
        .store
        .pool()
        .acquire()
        .await
        .map_err(StoreError::from)?;
    let user = tenants::find_user_by_email(&mut conn, &body.email).await?;
    drop(conn);
    let list: Vec<Value> = match user {
        Some(u) => tenants::user_tenants(state.store.pool(), &u.id)
            .await?
            .iter()
            .map(|t| json!({"id": t.id, "name": t.name}))
            .collect(),
        None => Vec::new(),
    };
    Ok(axum::Json(json!({"tenants": list})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeBody {
    pub tenant_id: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub code_challenge_method: String,
    pub state: String,
    #[serde(default)]
    pub scope: Option<String>,
}

/// `POST /v1/auth/authorize`: validates an authorization request and returns the hosted login
/// page's URL for it.
pub async fn authorize_json(
    State(state): State<AppState>,
    Json(body): Json<AuthorizeBody>,
) -> ApiResult<Response> {
    let client = idstore::find_client(state.store.pool(), &body.client_id)
        .await?
        .filter(|c| c.revoked_at.is_none() && c.tenant_id == body.tenant_id)
        .ok_or_else(|| ApiError::validation("client_id", "Unknown client for this tenant"))?;
    if !super::clients::redirect_registered(&client.redirect_uris, &body.redirect_uri) {
        return Err(ApiError::validation(
            "redirect_uri",
            "redirect_uri is not registered for this client",
        ));
    }
    if body.code_challenge_method != "S256" {
        return Err(ApiError::validation(
            "code_challenge_method",
            "Only S256 is supported",
        ));
    }
    if !valid_challenge(&body.code_challenge) {
        return Err(ApiError::validation(
            "code_challenge",
            "code_challenge must be a base64url SHA-256 (43 characters)",
        ));
    }
    if let Some(s) = &body.scope
        && tokens::scope_permissions(s).is_err()
    {
        return Err(ApiError::validation("scope", "Unknown scope"));
    }
    let mut url = url::Url::parse(&format!("{}/oauth/authorize", state.config.public_url))
        .map_err(ApiError::internal)?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", &client.id)
            .append_pair("redirect_uri", &body.redirect_uri)
            .append_pair("code_challenge", &body.code_challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("state", &body.state)
            .append_pair("tenant_id", &body.tenant_id);
        if let Some(s) = &body.scope {
            q.append_pair("scope", s);
        }
    }
    Ok(axum::Json(json!({"authorization_url": url.as_str()})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7636_appendix_b() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert!(valid_verifier(verifier));
        assert_eq!(
            s256_challenge(verifier),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert!(valid_challenge(
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        ));
        assert!(!valid_verifier("short"));
        assert!(!valid_verifier(&"a".repeat(129)));
        assert!(!valid_verifier(&format!("{}!", "a".repeat(43))));
    }

    fn code_row(challenge: Option<&str>, expires_at: i64) -> AuthCode {
        AuthCode {
            code_hash: "h".into(),
            tenant_id: "t".into(),
            client_id: "c".into(),
            user_id: "u".into(),
            redirect_uri: "https://app.example/cb".into(),
            code_challenge: challenge.map(str::to_string),
            scope: String::new(),
            created_at: 0,
            expires_at,
            used_at: None,
            family_id: None,
        }
    }

    fn client(confidential: bool) -> OAuthClient {
        OAuthClient {
            id: "c".into(),
            tenant_id: "t".into(),
            name: "n".into(),
            redirect_uris: vec![],
            confidential,
            secret_hash: None,
            roles: vec![],
            created_at: 0,
            created_by: None,
            revoked_at: None,
        }
    }

    #[test]
    fn code_checks() {
        let v = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let ch = Some("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        let cb = Some("https://app.example/cb");
        let now = 1_000_000;
        let public = client(false);
        // Good.
        assert!(check_code(&code_row(ch, now + 1), Some(v), cb, &public, now).is_ok());
        // Expired (a code lives CODE_TTL_MS).
        let e = check_code(&code_row(ch, now), Some(v), cb, &public, now).unwrap_err();
        assert!(e.description.contains("expired"));
        // redirect_uri must match exactly.
        assert!(
            check_code(
                &code_row(ch, now + 1),
                Some(v),
                Some("https://app.example/cb/"),
                &public,
                now
            )
            .is_err()
        );
        assert!(check_code(&code_row(ch, now + 1), Some(v), None, &public, now).is_err());
        // PKCE: missing, wrong, malformed verifier; a verifier without a stored challenge.
        assert!(check_code(&code_row(ch, now + 1), None, cb, &public, now).is_err());
        assert!(
            check_code(
                &code_row(ch, now + 1),
                Some(&v.replace('d', "e")),
                cb,
                &public,
                now
            )
            .is_err()
        );
        assert!(check_code(&code_row(ch, now + 1), Some("short"), cb, &public, now).is_err());
        let e = check_code(&code_row(None, now + 1), Some(v), cb, &client(true), now).unwrap_err();
        assert_eq!(e.error, "invalid_grant");
        // No PKCE at all: only for confidential clients.
        assert!(check_code(&code_row(None, now + 1), None, cb, &client(true), now).is_ok());
        assert!(check_code(&code_row(None, now + 1), None, cb, &public, now).is_err());
    }

    #[test]
    fn secret_bodies_do_not_debug_print() {
        let b = JsonTokenBody {
            code: "the-code".into(),
            code_verifier: Some("the-verifier".into()),
            redirect_uri: "https://x".into(),
            client_id: "cli".into(),
            client_secret: Some("the-secret".into()),
        };
        let r = RefreshBody {
            refresh_token: "the-refresh".into(),
            client_id: None,
        };
        let t = TokenResponse {
            access_token: "the-access".into(),
            expires_in: 1,
            refresh_token: Some("the-refresh".into()),
            scope: String::new(),
        };
        let all = format!("{b:?}{r:?}{t:?}");
        for s in [
            "the-code",
            "the-verifier",
            "the-secret",
            "the-refresh",
            "the-access",
        ] {
            assert!(!all.contains(s), "{all}");
        }
    }

    #[test]
    fn form_rejects_repeated_parameters() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        assert!(parse_form(&h, b"a=1&b=2").is_ok());
        assert_eq!(
            parse_form(&h, b"a=1&a=2").unwrap_err().error,
            "invalid_request"
        );
        assert!(parse_form(&HeaderMap::new(), b"a=1").is_err());
    }
}
