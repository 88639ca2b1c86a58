//! Users: the validation shared by every front end that names one.

use crate::error::{ApiError, ApiResult};
use crate::store::tenants;

pub fn validate_email(email: &str) -> ApiResult<String> {
    let e = tenants::normalize_email(email);
    let ok = e.len() <= 254
        && e.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.')
        })
        && !e.contains(char::is_whitespace);
    if ok {
        Ok(e)
    } else {
        Err(ApiError::validation(
            "email",
            "email is not a valid address",
        ))
    }
}
