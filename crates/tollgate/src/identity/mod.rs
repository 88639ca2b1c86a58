//! Tollgate's identity service (SPEC §2.2, §2.3, §4.3): the OAuth 2.0 authorization server,
//! platform JWTs and external identity providers.
//!
//! Not built yet: until it is, no JWT of these kinds is accepted (fail closed).

use crate::auth::Principal;
use crate::error::ApiError;

/// Verifies a platform JWT (issued by this gateway).
pub async fn verify_platform_jwt(
    _auth: &crate::auth::Auth,
    _token: &str,
) -> Result<Principal, ApiError> {
    Err(ApiError::auth_invalid(
        "This token was not issued by a trusted issuer",
    ))
}

/// Verifies a JWT from an external identity provider registered by a tenant.
pub async fn verify_external_jwt(
    _auth: &crate::auth::Auth,
    _token: &str,
    _issuer: &str,
) -> Result<Principal, ApiError> {
    Err(ApiError::auth_invalid(
        "This token was not issued by a trusted issuer",
    ))
}
