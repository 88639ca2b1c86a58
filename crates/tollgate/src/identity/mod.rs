//! Tollgate's identity service (SPEC §2.2, §2.3, §2.6, §4.3): the OAuth 2.0 authorization server
//! (authorization code + PKCE S256, refresh-token rotation with reuse detection, client
//! credentials for service accounts, RFC 7009 revocation, RFC 7662 introspection, discovery,
//! JWKS), the hosted login page, platform JWTs, external identity providers, sign-up, email
//! verification and password reset.
//!
//! - `keys` — signing keys (generated on first start, encrypted at rest, rotation with overlap);
//! - `jws` — the JWT verification core shared by every JWT kind (header rules, pinned algorithm);
//! - `tokens` — platform access tokens: issuance, verification, per-request permissions;
//! - `oauth` — the grants and the OAuth endpoints; `login` — the hosted login page;
//! - `throttle` — failed-login throttling; `accounts` — sign-up, verification, reset;
//! - `email` — SMTP or `.eml` outbox; `clients` — `/v1/oauth-clients`;
//! - `external` — external IdP JWTs and `/v1/identity-providers`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::auth::Principal;
use crate::error::ApiError;

pub mod accounts;
pub mod clients;
pub mod email;
pub mod external;
pub mod jws;
pub mod keys;
pub mod login;
pub mod oauth;
pub mod throttle;
pub mod tokens;

/// Identity state living in `Auth`: key ring, verification caches, login throttle, mailer.
#[derive(Default)]
pub struct IdentityState {
    pub keys: keys::KeyRing,
    pub tokens: tokens::TokenCache,
    pub external: external::JwksCache,
    pub throttle: throttle::LoginThrottle,
    /// Sign-ups and password-reset requests (each sends an email) per address and per client.
    pub email_throttle: throttle::LoginThrottle,
    mailer: OnceLock<email::Mailer>,
    dummy_hash: tokio::sync::OnceCell<String>,
    last_prune: AtomicI64,
}

impl std::fmt::Debug for IdentityState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityState").finish_non_exhaustive()
    }
}

impl IdentityState {
    /// The mailer for this configuration (built once).
    pub fn mailer(&self, cfg: &crate::config::Config) -> Result<&email::Mailer, ApiError> {
        if let Some(m) = self.mailer.get() {
            return Ok(m);
        }
        let m = email::Mailer::from_config(cfg).map_err(ApiError::internal)?;
        Ok(self.mailer.get_or_init(|| m))
    }

    /// A password hash checked against when the account does not exist, so a failed login
    /// costs the same whether or not the email is known.
    pub async fn dummy_hash(&self) -> String {
        self.dummy_hash
            .get_or_init(|| async {
                crate::passwords::hash(&crate::util::random_base62(24))
                    .await
                    .unwrap_or_default()
            })
            .await
            .clone()
    }

    /// Deletes expired codes and tokens at most every ten minutes, off the request path.
    pub fn maybe_prune(&self, pool: &sqlx::AnyPool) {
        let now = crate::util::now_ms();
        let last = self.last_prune.load(Ordering::Relaxed);
        if now - last < 600_000
            || self
                .last_prune
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::store::identity::prune_expired(&pool, now).await {
                tracing::warn!(error = %e, "could not prune expired identity rows");
            }
        });
    }
}

/// The one place the identity service builds a [`Principal`] (platform and external JWTs).
/// JWT principals carry no per-key rate limit, model list or binding.
pub(crate) fn principal(
    tenant_id: std::sync::Arc<str>,
    user_id: Option<std::sync::Arc<str>>,
    credential_type: crate::auth::CredentialType,
    credential_id: Option<std::sync::Arc<str>>,
    permissions: crate::auth::PermSet,
    platform_admin: bool,
    live: crate::auth::revocation::LiveGuard,
) -> Principal {
    Principal {
        tenant_id,
        user_id,
        subscription_id: None,
        credential_type,
        credential_id,
        permissions,
        platform_admin,
        rate_limit: None,
        allowed_models: None,
        plan_limits: None,
        binding: None,
        web_origins: None,
        end_user: None,
        live,
    }
}

/// Verifies a platform JWT (issued by this gateway).
pub async fn verify_platform_jwt(
    auth: &crate::auth::Auth,
    token: &str,
) -> Result<Principal, ApiError> {
    tokens::verify_platform(auth, token).await
}

/// Verifies a JWT from an external identity provider registered by a tenant.
pub async fn verify_external_jwt(
    auth: &crate::auth::Auth,
    token: &str,
    issuer: &str,
) -> Result<Principal, ApiError> {
    external::verify(auth, token, issuer).await
}
