//! Products, plans, subscriptions and their credentials (SPEC §2.4, §2.5, §4.2).
//!
//! Not built yet: until it is, app JWTs and subscription ids are not accepted (fail closed).

use crate::auth::Principal;
use crate::error::ApiError;

/// Verifies an app JWT signed by a subscription's credential.
pub async fn verify_app_jwt(
    _auth: &crate::auth::Auth,
    _token: &str,
    _subscription_id: &str,
) -> Result<Principal, ApiError> {
    Err(ApiError::auth_invalid("Unknown subscription"))
}

/// Verifies a bare subscription id (`x-user-id`, optional-auth routes only).
pub async fn verify_subscription_id(
    _auth: &crate::auth::Auth,
    _id: &str,
) -> Result<Principal, ApiError> {
    Err(ApiError::auth_invalid("Unknown subscription id"))
}
