//! OAuth clients and external identity providers of a tenant (SPEC §2.3, §4.2). A service
//! account (a confidential client) and an identity provider's tokens never hold more than the
//! effective permissions of the caller who registered them, and never the `owner` role. Another
//! tenant's object is `404`.

use serde_json::json;
use tollgate_core::audit::Action;
use tollgate_core::permissions::{Authority, OWNER_ROLE};

use super::Unit;
use crate::auth::middleware::{Caller, within_ceiling};
use crate::error::{ApiError, ApiResult};
use crate::identity::clients::validate_redirect_uri;
use crate::identity::oauth::secret_hash;
use crate::store::identity::{self as idstore, ExternalIssuer, OAuthClient};
use crate::store::invalidations::Kind;
use crate::util::{new_id, now_ms, random_base62};
use crate::wire::ToApi;

// ---- OAuth clients ---------------------------------------------------------------------------

/// A new OAuth client as a front end received it.
pub struct NewClient {
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub confidential: bool,
    /// A confidential client's (service account's) roles.
    pub roles: Option<Vec<String>>,
}

/// Registers a client. Returns it and, for a confidential client, its secret (to be shown
/// once; only its hash is stored).
pub async fn create_client(
    unit: &mut Unit<'_>,
    caller: &Caller,
    input: NewClient,
) -> ApiResult<(OAuthClient, Option<String>)> {
    let name = super::keys::validate_name(&input.name)?;
    if input.redirect_uris.len() > 20 {
        return Err(ApiError::validation(
            "redirect_uris",
            "at most 20 redirect URIs",
        ));
    }
    for u in &input.redirect_uris {
        validate_redirect_uri(u)?;
    }
    if !input.confidential && input.redirect_uris.is_empty() {
        return Err(ApiError::validation(
            "redirect_uris",
            "a public client needs at least one redirect URI",
        ));
    }
    if !input.confidential && input.roles.as_ref().is_some_and(|r| !r.is_empty()) {
        return Err(ApiError::validation(
            "roles",
            "only confidential clients (service accounts) have roles",
        ));
    }
    // A service account is never a tenant owner: the owner role is for people.
    if input
        .roles
        .iter()
        .flatten()
        .any(|r| r.eq_ignore_ascii_case(OWNER_ROLE))
    {
        return Err(ApiError::validation(
            "roles",
            "a service account cannot hold the owner role; give it admin",
        ));
    }
    let roles = input.roles.unwrap_or_default();
    let (role_ids, perms) =
        super::users::resolve_roles(unit.conn(), &caller.tenant_id, &roles).await?;
    // Never more than the caller's effective permissions (its roles narrowed by its scopes).
    // Service-account tokens hold permissions only: no owner or platform powers.
    within_ceiling(
        Authority::permissions_only(caller.permissions),
        Authority::permissions_only(perms),
        "give a service account these roles",
        Some("roles"),
    )?;
    let secret = input
        .confidential
        .then(|| format!("tgcs_{}", random_base62(43)));
    let client = OAuthClient {
        id: new_id("cli"),
        tenant_id: caller.tenant_id.to_string(),
        name,
        redirect_uris: input.redirect_uris,
        confidential: input.confidential,
        secret_hash: secret.as_deref().map(secret_hash),
        roles: role_ids,
        created_at: now_ms(),
        created_by: caller.user_id.as_deref().map(str::to_string),
        revoked_at: None,
    };
    idstore::insert_client(unit.conn(), &client).await?;
    let role_names =
        super::users::role_names(unit.conn(), &client.tenant_id, &client.roles).await?;
    let event = unit
        .event(
            caller.tenant_id.to_string(),
            caller.actor(),
            Action::OauthClientCreated,
        )
        .target("oauth_client", client.id.clone())
        .details(
            json!({"name": client.name, "confidential": client.confidential,
            "redirect_uris": client.redirect_uris, "roles": role_names}),
        );
    unit.audit(event).await?;
    Ok((client, secret))
}

/// Revokes a client (idempotent): its tokens (service-account tokens and users' sessions
/// through it) stop working at once, in-flight requests included.
pub async fn revoke_client(
    unit: &mut Unit<'_>,
    caller: &Caller,
    id: &str,
) -> ApiResult<OAuthClient> {
    let changed = idstore::revoke_client(unit.conn(), &caller.tenant_id, id, now_ms()).await?;
    let c = idstore::get_client(unit.conn(), &caller.tenant_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("OAuth client"))?;
    if changed {
        let event = unit
            .event(
                caller.tenant_id.to_string(),
                caller.actor(),
                Action::OauthClientRevoked,
            )
            .target("oauth_client", id.to_string())
            .details(json!({"name": c.name}));
        unit.audit(event).await?;
        unit.invalidate(Kind::Credential, id).await?;
    }
    Ok(c)
}

// ---- identity providers ----------------------------------------------------------------------

/// A new identity provider, its issuer and JWKS URL already checked by the front end (the JWKS
/// URL against the outbound policy, which needs DNS).
pub struct NewIdentityProvider {
    pub issuer: String,
    pub jwks_url: String,
    pub audience: String,
    pub claim: Option<String>,
    pub default_role: Option<String>,
}

/// Checks a front end's identity-provider input before any unit begins: the issuer (the IdP's,
/// not this gateway's, not shaped like a subscription id) and the JWKS URL against the outbound
/// policy (strict syntax and the host's current addresses; the fetch checks them again).
pub async fn check_identity_provider(
    state: &crate::app::AppState,
    issuer: &str,
    jwks_url: &str,
    audience: String,
    claim: Option<String>,
    default_role: Option<String>,
) -> ApiResult<NewIdentityProvider> {
    let issuer = issuer.trim().to_string();
    if issuer.is_empty() || issuer == state.config.public_url {
        return Err(ApiError::validation(
            "issuer",
            "issuer must be the IdP's issuer and not this gateway",
        ));
    }
    if crate::auth::jwt::is_subscription_id(&issuer) {
        return Err(ApiError::validation(
            "issuer",
            "issuer must not look like a subscription id",
        ));
    }
    let jwks = state
        .outbound
        .check_registration(jwks_url.trim())
        .await
        .map_err(|e| {
            tracing::info!(reason = e.reason(), "identity provider's jwks_url refused");
            ApiError::validation(
                "jwks_url",
                format!("jwks_url {}", crate::netguard::REFUSED_URL),
            )
        })?;
    Ok(NewIdentityProvider {
        issuer,
        jwks_url: jwks.to_string(),
        audience,
        claim,
        default_role,
    })
}

/// Registers an external identity provider whose tokens are capped at the caller's effective
/// permissions.
pub async fn create_identity_provider(
    unit: &mut Unit<'_>,
    caller: &Caller,
    input: NewIdentityProvider,
) -> ApiResult<ExternalIssuer> {
    if input.audience.trim().is_empty() {
        return Err(ApiError::validation("audience", "audience is required"));
    }
    let claim = input.claim.unwrap_or_else(|| "email".into());
    let default_role = match &input.default_role {
        Some(role) => {
            let (ids, perms) = super::users::resolve_roles(
                unit.conn(),
                &caller.tenant_id,
                std::slice::from_ref(role),
            )
            .await?;
            if !perms.is_subset_of(caller.permissions) {
                return Err(ApiError::permission_denied(
                    "You cannot grant permissions you do not hold",
                ));
            }
            if ids.iter().any(|r| r == OWNER_ROLE) {
                return Err(ApiError::validation(
                    "default_role",
                    "An identity provider's tokens can never hold the owner role",
                ));
            }
            ids.into_iter().next()
        }
        None => None,
    };
    let reg = ExternalIssuer {
        id: new_id("idp"),
        tenant_id: caller.tenant_id.to_string(),
        issuer: input.issuer,
        jwks_url: input.jwks_url,
        audience: input.audience.trim().to_string(),
        claim,
        default_role,
        max_permissions: caller.permissions,
        created_at: now_ms(),
    };
    idstore::insert_issuer(unit.conn(), &reg).await?;
    let event = unit
        .event(
            caller.tenant_id.to_string(),
            caller.actor(),
            Action::IdentityProviderCreated,
        )
        .target("identity_provider", reg.id.clone())
        .details(reg.to_api());
    unit.audit(event).await?;
    Ok(reg)
}

/// Deletes an identity provider: its tokens stop working at once, in-flight requests included.
pub async fn delete_identity_provider(
    unit: &mut Unit<'_>,
    caller: &Caller,
    id: &str,
) -> ApiResult<()> {
    if !idstore::delete_issuer(unit.conn(), &caller.tenant_id, id).await? {
        return Err(ApiError::not_found("identity provider"));
    }
    let event = unit
        .event(
            caller.tenant_id.to_string(),
            caller.actor(),
            Action::IdentityProviderDeleted,
        )
        .target("identity_provider", id.to_string());
    unit.audit(event).await?;
    unit.invalidate(Kind::Credential, id).await
}
