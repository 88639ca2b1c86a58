//! Accounts (SPEC §4.3): sign-up with email verification, password reset by emailed token.
//! Sign-up creates the user, a personal tenant they own and a public "Console" OAuth client
//! (redirect `<public_url>/console/callback`) through which they sign in once verified; the
//! verification answer names them. Sign-up and password reset never reveal whether an address
//! is registered: the same answer either way, and only the mailbox learns the difference.
//! Tokens are random, single-use, stored as SHA-256 only, and expire (verification 24 h, reset
//! 1 h). A signed-up user cannot log in until the email is verified. Security events without a
//! single tenant (email verified, password reset) are recorded on every tenant chain the user
//! belongs to.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::http::{Json, Meta};
use crate::identity::oauth::secret_hash;
use crate::store::audit::{Actor, AuditEvent, RequestMeta, append};
use crate::store::identity as idstore;
use crate::store::invalidations::Kind;
use crate::store::{StoreError, tenants};
use crate::util::{now_ms, random_base62};
use tollgate_core::audit::Action;

const VERIFY_TTL_MS: i64 = 24 * 3_600_000;
const RESET_TTL_MS: i64 = 3_600_000;
pub const PURPOSE_VERIFY: &str = "verify_email";
pub const PURPOSE_RESET: &str = "password_reset";
/// Name of the public OAuth client a sign-up creates in its personal tenant.
const CONSOLE_CLIENT: &str = "Console";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignupBody {
    pub email: String,
    pub password: String,
    #[serde(default)]
    pub name: Option<String>,
}

impl std::fmt::Debug for SignupBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignupBody")
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

fn new_email_token() -> String {
    random_base62(43)
}

/// Requests that send an email are limited per target address and per client address (the same
/// windows as failed logins), so the gateway cannot be used to flood a mailbox.
pub(crate) fn email_quota(state: &AppState, email: &str, meta: &RequestMeta) -> ApiResult<()> {
    let ip = meta.ip.as_deref().unwrap_or("unknown");
    let t = &state.auth.identity.email_throttle;
    if let Err(wait) = t.check(email, ip) {
        let mut e = ApiError::new(
            crate::error::ErrorCode::RateLimited,
            "Too many emails requested; try again later",
        );
        e.retry_after = Some(wait);
        return Err(e);
    }
    t.fail(email, ip);
    Ok(())
}

/// The one answer to a sign-up, whether or not the address already has an account: the
/// status, body and the single email sent are what differ only for the mailbox's owner.
fn signup_accepted(email: &str) -> Response {
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "status": "check_your_email",
            "email": email,
            "message": "Check your email: we sent a message to finish signing up.",
        })),
    )
        .into_response()
}

/// What a new sign-up created.
struct NewAccount {
    user_id: String,
    email: String,
}

/// `POST /v1/auth/signup`: an unverified user, a personal tenant they own, a verification email
/// — or, when the address already has an account, nothing but an email telling its owner that
/// someone tried. Both answer `202` with the same body, so sign-up does not reveal which
/// addresses are registered. The request does the same work either way (validation, the email
/// limit, the password hash); the account and the email are made after the answer, off the
/// request path, so neither the store's writes nor the mail server's latency shows in its time.
pub async fn signup(
    State(state): State<AppState>,
    Meta(meta): Meta,
    Json(body): Json<SignupBody>,
) -> ApiResult<Response> {
    if !state.config.auth.open_signup {
        return Err(ApiError::permission_denied(
            "Sign-up is closed on this gateway",
        ));
    }
    let email = crate::service::users::validate_email(&body.email)?;
    crate::passwords::validate(&body.password)?;
    email_quota(&state, &email, &meta)?;
    // Fails on the configuration alone, the same for every address.
    state.auth.identity.mailer(&state.config)?;
    let hash = crate::passwords::hash(&body.password).await?;
    let name = body
        .name
        .unwrap_or_default()
        .trim()
        .chars()
        .take(200)
        .collect::<String>();
    let answer = signup_accepted(&email);
    let followups = state.followups.clone();
    followups.spawn(finish_signup(state, meta, email, name, hash));
    Ok(answer)
}

/// The part of a sign-up that depends on whether the address is known: creates the account and
/// sends the verification link, or sends the known address its notice. Failures are logged (the
/// answer has been given; signing up again is the retry).
async fn finish_signup(
    state: AppState,
    meta: RequestMeta,
    email: String,
    name: String,
    hash: String,
) {
    let token = new_email_token();
    let created = match create_account(&state, &meta, &email, &name, hash, &token).await {
        Ok(created) => created,
        // Another sign-up for the same address won the race: it is a known address now.
        Err(StoreError::Conflict(what)) => {
            let known = async {
                let mut conn = state.store.pool().acquire().await?;
                tenants::find_user_by_email(&mut conn, &email).await
            }
            .await;
            match known {
                Ok(Some(_)) => None,
                Ok(None) => {
                    tracing::error!(conflict = %what, "sign-up failed");
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "sign-up failed");
                    return;
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "sign-up failed");
            return;
        }
    };
    let mailer = match state.auth.identity.mailer(&state.config) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "no mailer for the sign-up email");
            return;
        }
    };
    match created {
        Some(account) => {
            let link = format!(
                "{}/v1/auth/verify-email?token={token}",
                state.config.public_url
            );
            let text = format!(
                "Welcome to Tollgate.\n\nPlease confirm your email address by opening this link (valid for 24 hours):\n\n{link}\n\nIf you did not sign up, ignore this message.\n"
            );
            if let Err(e) = mailer
                .send(&account.email, "Verify your email address", text)
                .await
            {
                tracing::error!(error = %e, user = %account.user_id, "could not send the verification email");
            }
        }
        None => {
            let public = &state.config.public_url;
            let text = format!(
                "Someone (perhaps you) tried to sign up for Tollgate at {public} with this email address, which already has an account. Nothing was changed.\n\nIf it was you, sign in as usual. If you forgot your password, or never confirmed your address, request a password reset (POST {public}/v1/auth/password-reset with {{\"email\": \"...\"}}); completing it also confirms the address.\n\nIf it was not you, ignore this message; your account is unchanged.\n"
            );
            tracing::info!("sign-up attempted for an address that has an account");
            if let Err(e) = mailer
                .send(
                    &email,
                    "Someone tried to sign up with your email address",
                    text,
                )
                .await
            {
                tracing::error!(error = %e, "could not send the sign-up attempt email");
            }
        }
    }
}

/// Creates the account of a new sign-up in one transaction; `None` when the address already has
/// one (nothing is written then).
async fn create_account(
    state: &AppState,
    meta: &RequestMeta,
    email: &str,
    name: &str,
    hash: String,
    token: &str,
) -> Result<Option<NewAccount>, StoreError> {
    let mut tx = state.store.begin().await?;
    if tenants::find_user_by_email(&mut tx, email).await?.is_some() {
        return Ok(None);
    }
    let user = tenants::create_user(&mut tx, email, name, Some(hash), false).await?;
    let mut tenant_name: String = format!("{email}'s workspace").chars().take(80).collect();
    if tenants::find_tenant_by_name(&mut tx, &tenant_name)
        .await?
        .is_some()
    {
        tenant_name = format!("{tenant_name} ({})", &user.id);
    }
    let tenant = tenants::create_tenant(&mut tx, &tenant_name).await?;
    tenants::add_membership(&mut tx, &tenant.id, &user.id).await?;
    tenants::set_member_roles(&mut tx, &tenant.id, &user.id, &["owner".to_string()]).await?;
    idstore::mark_signup_pending(&mut tx, &user.id).await?;
    // A public client for the console, so the new owner can sign in to their tenant.
    let console = idstore::OAuthClient {
        id: crate::util::new_id("cli"),
        tenant_id: tenant.id.clone(),
        name: CONSOLE_CLIENT.into(),
        redirect_uris: vec![format!("{}/console/callback", state.config.public_url)],
        confidential: false,
        secret_hash: None,
        roles: Vec::new(),
        created_at: now_ms(),
        created_by: Some(user.id.clone()),
        revoked_at: None,
    };
    idstore::insert_client(&mut tx, &console).await?;
    idstore::insert_email_token(
        &mut tx,
        &secret_hash(token),
        &user.id,
        PURPOSE_VERIFY,
        now_ms() + VERIFY_TTL_MS,
    )
    .await?;
    let actor = Actor::user(user.id.clone());
    append(
        &mut tx,
        AuditEvent::new(
            tenant.id.clone(),
            actor.clone(),
            Action::TenantCreated,
            meta,
        )
        .target("tenant", tenant.id.clone())
        .details(json!({"name": tenant.name, "signup": true})),
    )
    .await?;
    append(
        &mut tx,
        AuditEvent::new(tenant.id.clone(), actor, Action::UserSignedUp, meta)
            .target("user", user.id.clone())
            .details(json!({"email": user.email, "console_client_id": console.id})),
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(Some(NewAccount {
        user_id: user.id,
        email: user.email,
    }))
}

/// The personal tenant a sign-up created for `user_id` and its Console client, if any.
async fn personal_tenant(
    state: &AppState,
    user_id: &str,
) -> Result<Option<(String, String)>, StoreError> {
    let tenant_ids = {
        let mut conn = state.store.pool().acquire().await?;
        idstore::user_tenant_ids(&mut conn, user_id).await?
    };
    for tenant_id in tenant_ids {
        let clients = idstore::list_clients(state.store.pool(), &tenant_id).await?;
        if let Some(c) = clients.iter().find(|c| {
            c.name == CONSOLE_CLIENT
                && c.created_by.as_deref() == Some(user_id)
                && c.revoked_at.is_none()
        }) {
            return Ok(Some((tenant_id, c.id.clone())));
        }
    }
    Ok(None)
}

/// Appends one event per tenant the user belongs to.
async fn audit_user_event(
    tx: &mut crate::store::Tx,
    user_id: &str,
    action: Action,
    meta: &RequestMeta,
    details: serde_json::Value,
) -> Result<(), StoreError> {
    for tenant_id in idstore::user_tenant_ids(tx, user_id).await? {
        append(
            tx,
            AuditEvent::new(tenant_id, Actor::user(user_id.to_string()), action, meta)
                .target("user", user_id)
                .details(details.clone()),
        )
        .await?;
    }
    Ok(())
}

/// The audit event of `action` on `user_id`, in each of the user's tenants, in `unit`.
async fn audit_user_in(
    unit: &mut crate::service::Unit<'_>,
    user_id: &str,
    action: Action,
    details: serde_json::Value,
) -> ApiResult<()> {
    for tenant_id in idstore::user_tenant_ids(unit.conn(), user_id).await? {
        let event = unit
            .event(tenant_id, Actor::user(user_id.to_string()), action)
            .target("user", user_id)
            .details(details.clone());
        unit.audit(event).await?;
    }
    Ok(())
}

/// Spends an email-verification token and marks its user's address verified (audited in each
/// of the user's tenants). `None`: the token is invalid, used or expired. The API's
/// `GET /v1/auth/verify-email` and the portal's `/console/verify` both run it.
pub(crate) async fn verify_email_in(
    unit: &mut crate::service::Unit<'_>,
    token: &str,
) -> ApiResult<Option<String>> {
    let now = now_ms();
    let Some(user_id) =
        idstore::spend_email_token(unit.conn(), &secret_hash(token), PURPOSE_VERIFY, now).await?
    else {
        return Ok(None);
    };
    idstore::mark_email_verified(unit.conn(), &user_id, now).await?;
    audit_user_in(unit, &user_id, Action::AuthEmailVerified, json!({})).await?;
    Ok(Some(user_id))
}

/// Spends a password-reset token: the user gets `password_hash`, their address counts as
/// verified, and every session family of theirs ends on every instance (audited in each of
/// their tenants). Returns the user; `None`: the token is invalid, used or expired. The API's
/// `POST /v1/auth/password-reset/confirm` and the portal's `/console/reset/confirm` both run it.
pub(crate) async fn reset_password_in(
    unit: &mut crate::service::Unit<'_>,
    token: &str,
    password_hash: &str,
) -> ApiResult<Option<String>> {
    let now = now_ms();
    let Some(user_id) =
        idstore::spend_email_token(unit.conn(), &secret_hash(token), PURPOSE_RESET, now).await?
    else {
        return Ok(None);
    };
    tenants::set_password_hash(unit.conn(), &user_id, password_hash).await?;
    idstore::mark_email_verified(unit.conn(), &user_id, now).await?;
    let families =
        idstore::revoke_user_families(unit.conn(), &user_id, "password_reset", now).await?;
    for (fid, _) in &families {
        unit.invalidate(Kind::Credential, fid).await?;
    }
    audit_user_in(
        unit,
        &user_id,
        Action::AuthPasswordReset,
        json!({"sessions_revoked": families.len()}),
    )
    .await?;
    Ok(Some(user_id))
}

pub struct TokenQuery {
    pub token: String,
}

impl std::fmt::Debug for TokenQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenQuery(***)")
    }
}

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

/// `GET /v1/auth/verify-email?token=`.
pub async fn verify_email(
    State(state): State<AppState>,
    Meta(meta): Meta,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let q = TokenQuery {
        token: url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.to_string())
            .ok_or_else(|| ApiError::validation("token", "token is required"))?,
    };
    let mut unit = crate::service::Unit::begin(&state.store, &meta).await?;
    let Some(user_id) = verify_email_in(&mut unit, &q.token).await? else {
        return Err(ApiError::validation(
            "token",
            "The verification link is invalid, used or expired",
        ));
    };
    unit.commit(&state.auth).await?;
    if wants_html(&headers) {
        let page = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Email verified · Tollgate</title></head><body><h1>Email verified</h1><p>You can now sign in.</p></body></html>";
        return Ok(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response());
    }
    // The link's holder has proven the address: now (not at sign-up, which must not tell a new
    // address from a known one) they learn where to sign in.
    let (tenant_id, console_client_id) = match personal_tenant(&state, &user_id).await? {
        Some((t, c)) => (Some(t), Some(c)),
        None => (None, None),
    };
    Ok(axum::Json(json!({
        "user_id": user_id, "email_verified": true,
        "tenant_id": tenant_id, "console_client_id": console_client_id,
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetRequestBody {
    pub email: String,
}

/// `POST /v1/auth/password-reset`: always `202` (it does not reveal whether the email exists);
/// a reset token is emailed when it does.
pub async fn password_reset(
    State(state): State<AppState>,
    Meta(meta): Meta,
    Json(body): Json<ResetRequestBody>,
) -> ApiResult<Response> {
    let accepted = || {
        (
            StatusCode::ACCEPTED,
            axum::Json(json!({"status": "sent_if_registered"})),
        )
            .into_response()
    };
    let Ok(email) = crate::service::users::validate_email(&body.email) else {
        return Ok(accepted());
    };
    email_quota(&state, &email, &meta)?;
    let token = new_email_token();
    let mut tx = state.store.begin().await?;
    let Some(user) = tenants::find_user_by_email(&mut tx, &email).await? else {
        return Ok(accepted());
    };
    idstore::insert_email_token(
        &mut tx,
        &secret_hash(&token),
        &user.id,
        PURPOSE_RESET,
        now_ms() + RESET_TTL_MS,
    )
    .await?;
    audit_user_event(
        &mut tx,
        &user.id,
        Action::AuthPasswordResetRequested,
        &meta,
        json!({}),
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    let text = format!(
        "A password reset was requested for your Tollgate account.\n\nReset token (valid for 1 hour):\n\n{token}\n\nSend it with your new password to {}/v1/auth/password-reset/confirm as {{\"token\": \"...\", \"password\": \"...\"}}.\nIf you did not ask for this, ignore this message; your password is unchanged.\n",
        state.config.public_url
    );
    if let Err(e) = state
        .auth
        .identity
        .mailer(&state.config)?
        .send(&user.email, "Reset your password", text)
        .await
    {
        tracing::error!(error = %e, user = %user.id, "could not send the password reset email");
    }
    Ok(accepted())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetConfirmBody {
    pub token: String,
    pub password: String,
}

impl std::fmt::Debug for ResetConfirmBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResetConfirmBody(***)")
    }
}

/// `POST /v1/auth/password-reset/confirm`: sets the new password, proves the email (verifies it)
/// and revokes every session of the user.
pub async fn password_reset_confirm(
    State(state): State<AppState>,
    Meta(meta): Meta,
    Json(body): Json<ResetConfirmBody>,
) -> ApiResult<Response> {
    let hash = crate::passwords::hash(&body.password).await?;
    let mut unit = crate::service::Unit::begin(&state.store, &meta).await?;
    if reset_password_in(&mut unit, &body.token, &hash)
        .await?
        .is_none()
    {
        return Err(ApiError::validation(
            "token",
            "The reset token is invalid, used or expired",
        ));
    }
    unit.commit(&state.auth).await?;
    Ok(axum::Json(json!({"status": "password_changed"})).into_response())
}
