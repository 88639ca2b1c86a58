//! Signing in to the console. The console is a first-party public client of the gateway's own
//! authorization server: `/console/login` starts an authorization-code request with PKCE (S256),
//! the hosted login page authenticates the person, `/console/callback` exchanges the code.
//!
//! The session is kept server-side: the browser holds only a random session id (`HttpOnly`,
//! `SameSite=Lax`; `Secure` and `__Host-` under https). The store keeps the id's SHA-256 and the
//! session's access and refresh tokens sealed with a key derived from the id, so neither leaves
//! the server nor opens without the browser's cookie. Every request re-verifies the access token
//! (which checks its login session is not revoked) and refreshes it when it expired; logging
//! out revokes the session's refresh-token family, which ends it on every instance at once.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::RawQuery;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Cookies, Ctx, LOGIN_COOKIE, SESSION_COOKIE, parse_form};
use crate::app::AppState;
use crate::auth::Principal;
use crate::crypto::SecretBox;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::identity::oauth::{self, TokenResponse, s256_challenge, secret_hash};
use crate::store::audit::RequestMeta;
use crate::store::console::{self as cstore, SessionRow};
use crate::store::identity::{self as idstore, OAuthClient};
use crate::store::tenants;
use crate::util::{now_ms, random_base62};
use askama::Template;
use tollgate_core::audit::{Action, Actor};

/// Name of the public OAuth client the console signs in through (one per tenant).
pub const CONSOLE_CLIENT: &str = "Console";
/// Email-token purpose of the one-time console link.
pub const PURPOSE_CONSOLE_LINK: &str = "console_link";
/// The one-time console link is valid 15 minutes.
pub const LINK_TTL_MS: i64 = 15 * 60_000;
/// A console session lasts at most a week (and never beyond its refresh token).
const SESSION_MAX_MS: i64 = 7 * 86_400_000;
/// Refresh the access token this long before it expires.
const REFRESH_MARGIN_MS: i64 = 30_000;

/// Refreshes are serialised on this instance: two requests of one session refreshing at once
/// would present the same refresh token twice, which revokes the session (reuse detection).
static REFRESH_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A signed-in console session.
pub struct Session {
    pub id_hash: String,
    pub tenant_id: String,
    pub user_id: String,
    pub email: String,
    pub family_id: String,
    pub has_password: bool,
    pub principal: Arc<Principal>,
    /// The current access token (server-side only; never rendered).
    access_token: String,
    sealer: SecretBox,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("tenant_id", &self.tenant_id)
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct Tokens {
    a: String,
    r: String,
}

fn sealer(session_id: &str) -> ApiResult<SecretBox> {
    let mut h = Sha256::new();
    h.update(b"tollgate console session v1\0");
    h.update(session_id.as_bytes());
    let key: [u8; 32] = h.finalize().into();
    SecretBox::new(&key).map_err(ApiError::internal)
}

impl Session {
    /// Holds a one-shot message (e.g. a secret to show once) for the next page of this session.
    pub async fn set_flash(&self, state: &AppState, value: &serde_json::Value) -> ApiResult<()> {
        let sealed = self
            .sealer
            .seal(
                value.to_string().as_bytes(),
                &format!("flash:{}", self.id_hash),
            )
            .map_err(ApiError::internal)?;
        cstore::set_flash(state.store.pool(), &self.id_hash, Some(&sealed)).await?;
        Ok(())
    }

    /// Takes the one-shot message: the first page to ask gets it, no page gets it twice.
    pub async fn take_flash(&self, state: &AppState) -> ApiResult<Option<serde_json::Value>> {
        let sealed = {
            let mut tx = state.store.begin().await?;
            let v = cstore::take_flash(&mut tx, &self.id_hash).await?;
            tx.commit().await.map_err(crate::store::StoreError::from)?;
            v
        };
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let Ok(bytes) = self
            .sealer
            .open(&sealed, &format!("flash:{}", self.id_hash))
        else {
            return Ok(None);
        };
        Ok(serde_json::from_slice(&bytes).ok())
    }

    /// Takes the one-shot message when `wanted` says it is this page's (its object's); any other
    /// page's message is put back for its own page, so opening another object first loses
    /// nothing.
    pub async fn take_flash_for(
        &self,
        state: &AppState,
        wanted: impl Fn(&serde_json::Value) -> bool,
    ) -> ApiResult<Option<serde_json::Value>> {
        match self.take_flash(state).await? {
            Some(v) if wanted(&v) => Ok(Some(v)),
            Some(other) => {
                self.set_flash(state, &other).await?;
                Ok(None)
            }
            None => Ok(None),
        }
    }

    pub fn caller(&self) -> crate::auth::middleware::Caller {
        crate::auth::middleware::Caller(self.principal.clone())
    }

    /// The caller the developer portal acts as on this person's *own* subscriptions: their
    /// credential, with the subscription permissions the portal grants for objects it has
    /// checked they own (the `consumer` role holds none of them at the API).
    pub async fn portal_caller(
        &self,
        state: &AppState,
    ) -> ApiResult<crate::auth::middleware::Caller> {
        use crate::auth::{PermSet, Permission};
        let mut p = crate::identity::verify_platform_jwt(&state.auth, &self.access_token).await?;
        p.permissions = p.permissions.union(PermSet::of(&[
            Permission::SubscriptionsRead,
            Permission::SubscriptionsWrite,
        ]));
        Ok(crate::auth::middleware::Caller(Arc::new(p)))
    }
}

/// Loads the session of this request's cookie. `Err(true)`: the cookie names a session that is
/// over (forget the cookie); `Err(false)`: the store could not be read.
pub async fn load(
    state: &AppState,
    cookies: &Cookies,
    headers: &HeaderMap,
    meta: &RequestMeta,
) -> Result<Option<Session>, bool> {
    let Some(sid) = cookies.read(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    let id_hash = secret_hash(&sid);
    let now = now_ms();
    let Some(mut row) = cstore::get_session(state.store.pool(), &id_hash, now)
        .await
        .map_err(|_| false)?
    else {
        return Err(true);
    };
    let sealer = sealer(&sid).map_err(|_| false)?;
    let mut principal = None;
    let mut current = None;
    if now < row.access_expires_at - REFRESH_MARGIN_MS {
        let toks = open_tokens(&sealer, &row).ok_or(true)?;
        match crate::identity::verify_platform_jwt(&state.auth, &toks.a).await {
            Ok(p) => {
                principal = Some(p);
                current = Some(toks.a);
            }
            Err(e) if e.code == ErrorCode::AuthTokenExpired => {}
            Err(e) if e.code == ErrorCode::Unavailable || e.code == ErrorCode::Internal => {
                return Err(false);
            }
            Err(_) => {
                end_quietly(state, &row).await;
                return Err(true);
            }
        }
    }
    let principal = match principal {
        Some(p) => p,
        None => {
            let _turn = REFRESH_LOCK.lock().await;
            // Another request of this session may have refreshed meanwhile.
            row = cstore::get_session(state.store.pool(), &id_hash, now)
                .await
                .map_err(|_| false)?
                .ok_or(true)?;
            let toks = open_tokens(&sealer, &row).ok_or(true)?;
            let fresh = if now < row.access_expires_at - REFRESH_MARGIN_MS {
                toks.a
            } else {
                let client = idstore::find_client(state.store.pool(), &row.client_id)
                    .await
                    .map_err(|_| false)?
                    .ok_or(true)?;
                match oauth::grant_refresh_token(state, Some(&client), &toks.r, meta).await {
                    Ok(tr) => {
                        let (sealed, exp) =
                            seal_tokens(&sealer, &id_hash, &tr).map_err(|_| false)?;
                        cstore::update_tokens(state.store.pool(), &id_hash, &sealed, exp)
                            .await
                            .map_err(|_| false)?;
                        tr.access_token
                    }
                    Err(e) if e.error == "temporarily_unavailable" || e.error == "server_error" => {
                        return Err(false);
                    }
                    Err(_) => {
                        end_quietly(state, &row).await;
                        return Err(true);
                    }
                }
            };
            match crate::identity::verify_platform_jwt(&state.auth, &fresh).await {
                Ok(p) => {
                    current = Some(fresh);
                    p
                }
                Err(_) => {
                    end_quietly(state, &row).await;
                    return Err(true);
                }
            }
        }
    };
    let user = {
        let mut conn = state.store.pool().acquire().await.map_err(|_| false)?;
        tenants::get_user(&mut conn, &row.user_id)
            .await
            .map_err(|_| false)?
            .ok_or(true)?
    };
    Ok(Some(Session {
        id_hash,
        tenant_id: row.tenant_id,
        user_id: row.user_id,
        email: user.email,
        family_id: row.family_id,
        has_password: user.password_hash.is_some(),
        principal: Arc::new(principal),
        access_token: current.unwrap_or_default(),
        sealer,
    }))
}

fn open_tokens(sealer: &SecretBox, row: &SessionRow) -> Option<Tokens> {
    let bytes = sealer.open(&row.tokens, &row.id_hash).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn seal_tokens(sealer: &SecretBox, id_hash: &str, tr: &TokenResponse) -> ApiResult<(String, i64)> {
    let refresh = tr
        .refresh_token
        .clone()
        .ok_or_else(|| ApiError::internal("a login session without a refresh token"))?;
    let t = Tokens {
        a: tr.access_token.clone(),
        r: refresh,
    };
    let bytes = serde_json::to_vec(&t).map_err(ApiError::internal)?;
    let sealed = sealer.seal(&bytes, id_hash).map_err(ApiError::internal)?;
    let ttl_ms = i64::try_from(tr.expires_in.saturating_mul(1000)).unwrap_or(i64::MAX / 4);
    Ok((sealed, now_ms().saturating_add(ttl_ms)))
}

/// Forgets a session whose login is over (revoked, expired, its user gone).
async fn end_quietly(state: &AppState, row: &SessionRow) {
    if let Ok(mut conn) = state.store.pool().acquire().await {
        let _ = cstore::delete_session(&mut conn, &row.id_hash).await;
    }
}

/// Creates the session of a completed login; returns its `Set-Cookie`.
async fn start(state: &AppState, cookies: &Cookies, tr: &TokenResponse) -> ApiResult<String> {
    let claims = crate::identity::tokens::verify_claims(&state.auth, &tr.access_token).await?;
    let family_id = claims
        .sid
        .ok_or_else(|| ApiError::internal("a login without a session id"))?;
    let sid = random_base62(43);
    let id_hash = secret_hash(&sid);
    let sealer = sealer(&sid)?;
    let (tokens, access_expires_at) = seal_tokens(&sealer, &id_hash, tr)?;
    let now = now_ms();
    let ttl_ms = i64::try_from(
        state
            .config
            .auth
            .refresh_token_ttl_seconds
            .saturating_mul(1000),
    )
    .unwrap_or(SESSION_MAX_MS)
    .min(SESSION_MAX_MS);
    let row = SessionRow {
        id_hash,
        tenant_id: claims.tid,
        user_id: claims.sub,
        family_id,
        client_id: claims.client_id,
        tokens,
        access_expires_at,
        created_at: now,
        expires_at: now.saturating_add(ttl_ms),
    };
    let mut tx = state.store.begin().await?;
    cstore::insert_session(&mut tx, &row).await?;
    tx.commit().await.map_err(crate::store::StoreError::from)?;
    Ok(cookies.set(SESSION_COOKIE, &sid, ttl_ms / 1000))
}

// ---- the tenant and its console client ------------------------------------------------------

/// The tenant of the developer portal: `[portal] tenant` (id or name), else the first tenant.
pub async fn portal_tenant(state: &AppState) -> ApiResult<tenants::Tenant> {
    let all = tenants::list_tenants(state.store.pool()).await?;
    let found = match &state.config.portal.tenant {
        Some(t) => all.into_iter().find(|x| &x.id == t || &x.name == t),
        None => all.into_iter().next(),
    };
    found.ok_or_else(|| ApiError::not_found("portal tenant"))
}

fn callback_uri(state: &AppState) -> String {
    format!("{}/console/callback", state.config.public_url)
}

/// The tenant's public console client (redirect `<public_url>/console/callback`), created on
/// first use with its audit event.
pub async fn console_client(
    state: &AppState,
    tenant_id: &str,
    meta: &RequestMeta,
) -> ApiResult<OAuthClient> {
    let redirect = callback_uri(state);
    let usable = |c: &OAuthClient| {
        c.name == CONSOLE_CLIENT
            && !c.confidential
            && c.revoked_at.is_none()
            && c.redirect_uris.iter().any(|u| u == &redirect)
    };
    if let Some(c) = idstore::list_clients(state.store.pool(), tenant_id)
        .await?
        .into_iter()
        .find(usable)
    {
        return Ok(c);
    }
    let client = OAuthClient {
        id: crate::util::new_id("cli"),
        tenant_id: tenant_id.to_string(),
        name: CONSOLE_CLIENT.into(),
        redirect_uris: vec![redirect],
        confidential: false,
        secret_hash: None,
        roles: Vec::new(),
        created_at: now_ms(),
        created_by: None,
        revoked_at: None,
    };
    let mut unit = crate::service::Unit::begin(&state.store, meta).await?;
    idstore::insert_client(unit.conn(), &client).await?;
    let event = unit
        .event(tenant_id, Actor::system(), Action::OauthClientCreated)
        .target("oauth_client", client.id.clone())
        .details(
            json!({"name": client.name, "redirect_uris": client.redirect_uris,
            "confidential": false, "console": true}),
        );
    unit.audit(event).await?;
    unit.commit(&state.auth).await?;
    Ok(client)
}

/// A new authorization request of the console: the query of `/oauth/authorize` and the cookie
/// that remembers its `state` and PKCE verifier until the callback.
pub async fn begin_login(ctx: &Ctx, tenant_id: &str) -> ApiResult<(String, String)> {
    let client = console_client(&ctx.state, tenant_id, &ctx.meta).await?;
    let verifier = random_base62(64);
    let st = random_base62(32);
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", &client.id)
        .append_pair("redirect_uri", &callback_uri(&ctx.state))
        .append_pair("code_challenge", &s256_challenge(&verifier))
        .append_pair("code_challenge_method", "S256")
        .append_pair("state", &st)
        .finish();
    let cookie = ctx
        .cookies
        .set(LOGIN_COOKIE, &format!("{st}.{verifier}.{}", client.id), 900);
    Ok((query, cookie))
}

/// `GET /console/login`: to the hosted login page.
pub async fn login(mut ctx: Ctx) -> Response {
    let tenant = match portal_tenant(&ctx.state).await {
        Ok(t) => t,
        Err(e) => return ctx.error(&e),
    };
    match begin_login(&ctx, &tenant.id).await {
        Ok((query, cookie)) => {
            ctx.set_cookies.push(cookie);
            ctx.redirect(&format!("/oauth/authorize?{query}"))
        }
        Err(e) => ctx.error(&e),
    }
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.to_string())
}

/// `GET /console/callback?code=…&state=…`: the end of the authorization-code flow.
pub async fn callback(mut ctx: Ctx, RawQuery(query): RawQuery) -> Response {
    let q = query.as_deref();
    let failed = |ctx: &Ctx, text: &str| {
        ctx.message(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            text,
            true,
            Some(("/console/auth?tab=login", "Try again")),
        )
    };
    ctx.set_cookies.push(ctx.cookies.clear(LOGIN_COOKIE));
    if let Some(err) = query_param(q, "error") {
        let desc = query_param(q, "error_description").unwrap_or(err);
        return failed(&ctx, &format!("The sign-in was not completed: {desc}"));
    }
    let pending = ctx
        .cookies
        .read(&ctx.headers, LOGIN_COOKIE)
        .unwrap_or_default();
    let mut parts = pending.splitn(3, '.');
    let (Some(st), Some(verifier), Some(client_id)) = (parts.next(), parts.next(), parts.next())
    else {
        return failed(
            &ctx,
            "This sign-in was not started in this browser, or it took too long. Please sign in again.",
        );
    };
    let sent_state = query_param(q, "state").unwrap_or_default();
    if sent_state.is_empty() || !bool::from(sent_state.as_bytes().ct_eq(st.as_bytes())) {
        return failed(
            &ctx,
            "This sign-in was not started in this browser, or it took too long. Please sign in again.",
        );
    }
    let Some(code) = query_param(q, "code") else {
        return failed(&ctx, "The sign-in answer had no code.");
    };
    let client = match idstore::find_client(ctx.state.store.pool(), client_id).await {
        Ok(Some(c)) => c,
        Ok(None) => return failed(&ctx, "The console's sign-in client is gone."),
        Err(e) => return ctx.error(&e.into()),
    };
    let redirect = callback_uri(&ctx.state);
    let tr = match oauth::grant_authorization_code(
        &ctx.state,
        &client,
        &code,
        Some(verifier),
        Some(&redirect),
        &ctx.meta,
    )
    .await
    {
        Ok(tr) => tr,
        Err(e) => {
            return failed(
                &ctx,
                &format!("The sign-in could not be completed: {}", e.description),
            );
        }
    };
    match start(&ctx.state, &ctx.cookies, &tr).await {
        Ok(cookie) => {
            ctx.set_cookies.push(cookie);
            ctx.redirect("/console")
        }
        Err(e) => ctx.error(&e),
    }
}

/// `POST /console/logout`: ends the login session everywhere and forgets the cookie.
pub async fn logout(mut ctx: Ctx, body: Bytes) -> Response {
    let form = parse_form(&body);
    if let Some(r) = ctx.check_csrf(&form) {
        return r;
    }
    if let Some(s) = ctx.session.take() {
        let deleted = async {
            let mut conn = ctx.state.store.pool().acquire().await?;
            cstore::delete_session(&mut conn, &s.id_hash).await
        }
        .await;
        if let Err(e) = deleted {
            return ctx.error(&e.into());
        }
        if let Err(e) = oauth::end_session(&ctx.state, &s.family_id, &ctx.meta).await {
            return ctx.error(&e);
        }
    }
    ctx.set_cookies.push(ctx.cookies.clear(SESSION_COOKIE));
    ctx.redirect("/console?done=logout")
}

// ---- the one-time console link ----------------------------------------------------------------

/// Issues the one-time console link of `user_id` (single use, 15 minutes).
pub async fn issue_link(
    store: &crate::store::Store,
    public_url: &str,
    user_id: &str,
) -> ApiResult<String> {
    let token = random_base62(43);
    let mut tx = store.begin().await?;
    idstore::insert_email_token(
        &mut tx,
        &secret_hash(&token),
        user_id,
        PURPOSE_CONSOLE_LINK,
        now_ms() + LINK_TTL_MS,
    )
    .await?;
    tx.commit().await.map_err(crate::store::StoreError::from)?;
    Ok(format!("{public_url}/console/link?token={token}"))
}

#[derive(Template)]
#[template(path = "link.html")]
struct LinkPage {
    l: super::Layout,
    token: String,
}

/// `GET /console/link?token=…`: a button, so that a link preview or scanner fetching the URL does
/// not spend it.
pub async fn link_page(ctx: Ctx, RawQuery(query): RawQuery) -> Response {
    let token = query_param(query.as_deref(), "token").unwrap_or_default();
    if token.is_empty() || token.len() > 128 {
        return link_expired(&ctx);
    }
    ctx.html(
        StatusCode::OK,
        &LinkPage {
            l: ctx.layout("Sign in"),
            token,
        },
    )
}

fn link_expired(ctx: &Ctx) -> Response {
    ctx.message(
        StatusCode::GONE,
        "This link has expired",
        "The one-time console link works once, for 15 minutes. It was already used or is too old. Sign in with your email and password, or issue a new owner key with `tollgate init`.",
        true,
        Some(("/console/auth?tab=login", "Log in")),
    )
}

/// `POST /console/link`: spends the link and signs its owner in (a code issued and exchanged
/// through the authorization server, as any login).
pub async fn link_use(mut ctx: Ctx, body: Bytes) -> Response {
    let form = parse_form(&body);
    if let Some(r) = ctx.check_csrf(&form) {
        return r;
    }
    let token = form.get("token").cloned().unwrap_or_default();
    match link_login(&ctx, &token).await {
        Ok(Some((cookie, has_password))) => {
            ctx.set_cookies.push(cookie);
            ctx.redirect(if has_password {
                "/console"
            } else {
                "/console/password"
            })
        }
        Ok(None) => link_expired(&ctx),
        Err(e) => ctx.error(&e),
    }
}

async fn link_login(ctx: &Ctx, token: &str) -> ApiResult<Option<(String, bool)>> {
    let state = &ctx.state;
    let mut unit = crate::service::Unit::begin(&state.store, &ctx.meta).await?;
    let Some(user_id) = idstore::spend_email_token(
        unit.conn(),
        &secret_hash(token),
        PURPOSE_CONSOLE_LINK,
        now_ms(),
    )
    .await?
    else {
        return Ok(None);
    };
    let Some(tenant_id) = idstore::user_tenant_ids(unit.conn(), &user_id)
        .await?
        .into_iter()
        .next()
    else {
        return Ok(None);
    };
    let has_password = tenants::get_user(unit.conn(), &user_id)
        .await?
        .is_some_and(|u| u.password_hash.is_some());
    let event = unit
        .event(
            tenant_id.clone(),
            Actor::user(user_id.clone()),
            Action::AuthConsoleLinkUsed,
        )
        .target("user", user_id.clone());
    unit.audit(event).await?;
    unit.commit(&state.auth).await?;
    let client = console_client(state, &tenant_id, &ctx.meta).await?;
    let verifier = random_base62(64);
    let authz = crate::identity::login::AuthzRequest {
        client: client.clone(),
        redirect_uri: callback_uri(state),
        code_challenge: Some(s256_challenge(&verifier)),
        state: None,
        scope: String::new(),
    };
    let code = crate::identity::login::issue_code(state, &authz, &user_id, &ctx.meta).await?;
    let tr = oauth::grant_authorization_code(
        state,
        &client,
        &code,
        Some(&verifier),
        Some(&authz.redirect_uri),
        &ctx.meta,
    )
    .await
    .map_err(|e| ApiError::invalid_request(e.description))?;
    let cookie = start(state, &ctx.cookies, &tr).await?;
    Ok(Some((cookie, has_password)))
}

// ---- setting a password -------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "password.html")]
pub struct PasswordPage {
    pub l: super::Layout,
    pub heading: String,
    pub intro: String,
    pub action: String,
    pub token: String,
    pub form_error: Option<String>,
    pub password_error: Option<String>,
    pub confirm_error: Option<String>,
}

fn password_page_for(ctx: &Ctx) -> PasswordPage {
    let first = ctx.session.as_ref().is_some_and(|s| !s.has_password);
    PasswordPage {
        l: ctx.layout("Set your password"),
        heading: "Set your password".into(),
        intro: if first {
            "You are signed in with the one-time link. Choose a password to sign in next time."
                .into()
        } else {
            "Choose a new password for your account.".into()
        },
        action: "/console/password".into(),
        token: String::new(),
        form_error: None,
        password_error: None,
        confirm_error: None,
    }
}

/// `GET /console/password`.
pub async fn password_page(ctx: Ctx) -> Response {
    if ctx.session.is_none() {
        return ctx.need_session();
    }
    ctx.html(StatusCode::OK, &password_page_for(&ctx))
}

/// Checks a new password and its repetition; the field errors of the form.
pub fn check_new_password(
    form: &std::collections::HashMap<String, String>,
) -> Result<String, (Option<String>, Option<String>)> {
    let password = form.get("password").cloned().unwrap_or_default();
    let confirm = form.get("confirm").cloned().unwrap_or_default();
    if let Err(e) = crate::passwords::validate(&password) {
        return Err((
            Some(format!(
                "The password is too short or too long: {}.",
                e.message
            )),
            None,
        ));
    }
    if password != confirm {
        return Err((None, Some("The two passwords differ.".into())));
    }
    Ok(password)
}

/// `POST /console/password`.
pub async fn password_set(ctx: Ctx, body: Bytes) -> Response {
    let form = parse_form(&body);
    if let Some(r) = ctx.check_csrf(&form) {
        return r;
    }
    let Some(s) = &ctx.session else {
        return ctx.need_session();
    };
    let password = match check_new_password(&form) {
        Ok(p) => p,
        Err((password_error, confirm_error)) => {
            let mut page = password_page_for(&ctx);
            page.password_error = password_error;
            page.confirm_error = confirm_error;
            return ctx.html(StatusCode::UNPROCESSABLE_ENTITY, &page);
        }
    };
    let done = async {
        let hash = crate::passwords::hash(&password).await?;
        let mut unit = crate::service::Unit::begin(&ctx.state.store, &ctx.meta).await?;
        tenants::set_password_hash(unit.conn(), &s.user_id, &hash).await?;
        let event = unit
            .event(
                s.tenant_id.clone(),
                Actor::user(s.user_id.clone()),
                Action::AuthPasswordSet,
            )
            .target("user", s.user_id.clone());
        unit.audit(event).await?;
        unit.commit(&ctx.state.auth).await
    }
    .await;
    match done {
        Ok(()) => ctx.redirect("/console?done=password"),
        Err(e) => ctx.error(&e),
    }
}
