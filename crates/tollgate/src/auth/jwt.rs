//! JWT classification (SPEC §2.2–2.4, RFC 8725 §3.11–3.12). A token is classified by its
//! (unverified) `iss` first, then verified by exactly one verifier with that kind's rules, so a
//! platform token can never pass as an app token or the reverse:
//!
//! - `iss` = the gateway's public URL → platform JWT (`crate::identity`);
//! - `iss` = a 24-hex subscription id → app JWT signed by the customer (`crate::subscriptions`);
//! - `iss` = an external issuer registered by a tenant → external IdP JWT (`crate::identity`);
//! - anything else → `401 AUTH_INVALID`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use crate::error::ApiError;

/// Which verifier a token goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtKind {
    Platform,
    App { subscription_id: String },
    External { issuer: String },
}

/// Decodes the payload without verifying it, only to read `iss` for routing.
pub fn peek_claims(token: &str) -> Result<Value, ApiError> {
    let invalid = || ApiError::auth_invalid("The token is not a well-formed JWT");
    let mut parts = token.split('.');
    let (_, payload) = (
        parts.next().ok_or_else(invalid)?,
        parts.next().ok_or_else(invalid)?,
    );
    let bytes = URL_SAFE_NO_PAD.decode(payload).map_err(|_| invalid())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    if !v.is_object() {
        return Err(invalid());
    }
    Ok(v)
}

pub fn is_subscription_id(s: &str) -> bool {
    s.len() == 24
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Classifies by `iss`. `public_url` is the gateway's own issuer.
pub fn classify(token: &str, public_url: &str) -> Result<JwtKind, ApiError> {
    let claims = peek_claims(token)?;
    let Some(iss) = claims.get("iss").and_then(Value::as_str) else {
        return Err(ApiError::auth_invalid("The token has no issuer"));
    };
    if iss == public_url {
        Ok(JwtKind::Platform)
    } else if is_subscription_id(iss) {
        Ok(JwtKind::App {
            subscription_id: iss.to_string(),
        })
    } else {
        Ok(JwtKind::External {
            issuer: iss.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(payload: &str) -> String {
        format!(
            "eyJhbGciOiJIUzI1NiJ9.{}.c2ln",
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn classifies_by_issuer() {
        let p = "http://127.0.0.1:8080";
        assert_eq!(
            classify(&token(r#"{"iss":"http://127.0.0.1:8080"}"#), p).unwrap(),
            JwtKind::Platform
        );
        assert_eq!(
            classify(&token(r#"{"iss":"66ec1726e728c1405e5ebca2"}"#), p).unwrap(),
            JwtKind::App {
                subscription_id: "66ec1726e728c1405e5ebca2".into()
            }
        );
        assert_eq!(
            classify(&token(r#"{"iss":"https://idp.example.com"}"#), p).unwrap(),
            JwtKind::External {
                issuer: "https://idp.example.com".into()
            }
        );
        assert!(classify(&token(r#"{"sub":"x"}"#), p).is_err());
        assert!(classify(&token("not json"), p).is_err());
        assert!(!is_subscription_id("66EC1726E728C1405E5EBCA2"));
    }
}
