//! The JWT verification core shared by every JWT kind (RFC 7515, RFC 8725):
//!
//! 1. the header is checked before anything else: `alg: none` is refused, and a token whose
//!    header carries `jku`, `x5u`, `jwk`, `x5c` or `crit` is refused outright (key material or
//!    key locations are never taken from a token);
//! 2. the key is chosen by the verifier (by `kid` among keys it already trusts), and the token's
//!    `alg` must be that key's one algorithm (no HS256-with-an-RSA-public-key confusion);
//! 3. `jsonwebtoken::decode` checks the signature, then the claims with one `Validation` per key:
//!    `exp` required, `nbf` checked, `iss`/`aud` pinned; `exp`/`nbf` of the wrong JSON type fail;
//! 4. every NumericDate (`exp`, `nbf`, `iat`) must lie in [`NUMERIC_DATE_MAX`]'s range, 0 to the
//!    end of the year 9999 ([`check_numeric_dates`], used by every JWT kind: platform, external
//!    and app tokens), so arithmetic on them (`exp - iat`, milliseconds) can never overflow and a
//!    token can never be made to live forever.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::error::{ApiError, ErrorCode};

/// Header parameters that would let a token choose its own key: never honoured (RFC 8725 §3.10).
pub const FORBIDDEN_HEADERS: &[&str] = &["jku", "x5u", "jwk", "x5c", "crit"];

fn malformed() -> ApiError {
    ApiError::auth_invalid("The token is not a well-formed JWT")
}

/// The largest NumericDate accepted: 9999-12-31T23:59:59Z. Anything later (or negative, or not a
/// finite number) is refused, so `exp - iat` and `exp * 1000` always fit an `i64`.
pub const NUMERIC_DATE_MAX: i64 = 253_402_300_799;

/// A NumericDate claim (RFC 7519 §2) as whole seconds: `None` when absent; an error when it is not
/// a number, or is outside `0..=NUMERIC_DATE_MAX`. A fractional value (allowed by the RFC) is
/// rounded down; every value in range is exact in an `f64`, so no precision is lost.
pub fn numeric_date(claims: &Value, name: &str) -> Result<Option<i64>, ApiError> {
    let Some(v) = claims.get(name) else {
        return Ok(None);
    };
    let out_of_range = || {
        ApiError::auth_invalid(format!(
            "The token's {name} claim is not a NumericDate between 1970 and 9999"
        ))
    };
    let Value::Number(n) = v else {
        return Err(ApiError::auth_invalid(format!(
            "The token's {name} claim has the wrong type"
        )));
    };
    let secs = if let Some(u) = n.as_u64() {
        i64::try_from(u).map_err(|_| out_of_range())?
    } else if n.is_i64() {
        // Only negative integers are left here.
        return Err(out_of_range());
    } else {
        let f = n
            .as_f64()
            .filter(|f| f.is_finite())
            .ok_or_else(out_of_range)?;
        if !(0.0..=NUMERIC_DATE_MAX as f64).contains(&f) {
            return Err(out_of_range());
        }
        f.floor() as i64
    };
    if secs > NUMERIC_DATE_MAX {
        return Err(out_of_range());
    }
    Ok(Some(secs))
}

/// Checks every NumericDate claim a token carries (`exp`, `nbf`, `iat`): each one, when present,
/// must be a number in range (see [`numeric_date`]).
pub fn check_numeric_dates(claims: &Value) -> Result<(), ApiError> {
    for c in ["exp", "nbf", "iat"] {
        numeric_date(claims, c)?;
    }
    Ok(())
}

/// Decodes and checks the protected header. Returns it as JSON.
pub fn check_header(token: &str) -> Result<Value, ApiError> {
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    let bytes = URL_SAFE_NO_PAD.decode(h).map_err(|_| malformed())?;
    let header: Value = serde_json::from_slice(&bytes).map_err(|_| malformed())?;
    let Some(obj) = header.as_object() else {
        return Err(malformed());
    };
    match obj.get("alg").and_then(Value::as_str) {
        None => return Err(ApiError::auth_invalid("The token header has no alg")),
        Some(a) if a.eq_ignore_ascii_case("none") => {
            return Err(ApiError::auth_invalid(
                "Unsigned tokens (alg: none) are never accepted",
            ));
        }
        Some(_) => {}
    }
    if let Some(bad) = FORBIDDEN_HEADERS.iter().find(|k| obj.contains_key(**k)) {
        return Err(ApiError::auth_invalid(format!(
            "The token header carries {bad:?}, which is never honoured"
        )));
    }
    Ok(header)
}

/// The algorithm named in a checked header.
pub fn header_alg(header: &Value) -> Result<Algorithm, ApiError> {
    header
        .get("alg")
        .and_then(Value::as_str)
        .and_then(|a| a.parse::<Algorithm>().ok())
        .ok_or_else(|| ApiError::auth_invalid("The token's algorithm is not supported"))
}

/// A `Validation` for one key: its algorithm only, `exp` required, `nbf` checked, `iss` and `aud`
/// pinned when given, `leeway` seconds of clock skew.
pub fn validation(
    alg: Algorithm,
    issuer: Option<&str>,
    audience: Option<&str>,
    leeway: u64,
) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = leeway;
    v.validate_exp = true;
    v.validate_nbf = true;
    let mut required = vec!["exp"];
    if let Some(iss) = issuer {
        v.set_issuer(&[iss]);
        required.push("iss");
    }
    match audience {
        Some(aud) => {
            v.set_audience(&[aud]);
            required.push("aud");
        }
        None => v.validate_aud = false,
    }
    v.set_required_spec_claims(&required);
    v
}

/// Maps a `jsonwebtoken` failure to the spec's codes: expiry is `AUTH_TOKEN_EXPIRED`, anything
/// else `AUTH_INVALID` (with a message that names the check, never the key).
pub fn map_error(e: &jsonwebtoken::errors::Error) -> ApiError {
    match e.kind() {
        ErrorKind::ExpiredSignature => {
            ApiError::new(ErrorCode::AuthTokenExpired, "The access token expired")
        }
        ErrorKind::ImmatureSignature => ApiError::auth_invalid("The token is not valid yet (nbf)"),
        ErrorKind::InvalidIssuer => ApiError::auth_invalid("The token's issuer is not accepted"),
        ErrorKind::InvalidAudience => {
            ApiError::auth_invalid("The token's audience is not this gateway")
        }
        ErrorKind::InvalidAlgorithm => {
            ApiError::auth_invalid("The token's algorithm does not match its key")
        }
        ErrorKind::InvalidSignature => ApiError::auth_invalid("The token's signature is invalid"),
        ErrorKind::MissingRequiredClaim(c) => {
            ApiError::auth_invalid(format!("The token lacks the {c} claim"))
        }
        ErrorKind::InvalidClaimFormat(c) => {
            ApiError::auth_invalid(format!("The token's {c} claim has the wrong type"))
        }
        _ => ApiError::auth_invalid("The token is invalid"),
    }
}

/// Full verification of a JWT against one trusted key: header rules, algorithm pinned to the
/// key, signature, registered claims. Returns the claims.
pub fn verify(
    token: &str,
    alg: Algorithm,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<Value, ApiError> {
    let header = check_header(token)?;
    if header_alg(&header)? != alg || !validation.algorithms.contains(&alg) {
        return Err(ApiError::auth_invalid(
            "The token's algorithm does not match its key",
        ));
    }
    let data = jsonwebtoken::decode::<Value>(token, key, validation).map_err(|e| map_error(&e))?;
    let claims = data.claims;
    if !claims.is_object() {
        return Err(malformed());
    }
    // RFC 7519 NumericDate: `iat`, like `exp` and `nbf`, must be a number when present, and
    // every one of them in range.
    check_numeric_dates(&claims)?;
    // RFC 7519 §4.1.1: `iss` is one StringOrURI. The library accepts an array when one of its
    // members is the pinned issuer; a token naming several issuers is not ours.
    if let Some(iss) = claims.get("iss")
        && !iss.is_string()
    {
        return Err(ApiError::auth_invalid(
            "The token's iss claim has the wrong type",
        ));
    }
    Ok(claims)
}

/// Signature check only (JWS, any payload), with the same header rules and algorithm pinning.
/// Returns the decoded payload bytes.
pub fn verify_signature(
    token: &str,
    alg: Algorithm,
    key: &DecodingKey,
) -> Result<Vec<u8>, ApiError> {
    let header = check_header(token)?;
    if header_alg(&header)? != alg {
        return Err(ApiError::auth_invalid(
            "The token's algorithm does not match its key",
        ));
    }
    let (message, signature) = token.rsplit_once('.').ok_or_else(malformed)?;
    let ok = jsonwebtoken::crypto::verify(signature, message.as_bytes(), key, alg)
        .map_err(|e| map_error(&e))?;
    if !ok {
        return Err(ApiError::auth_invalid("The token's signature is invalid"));
    }
    let payload = message
        .split_once('.')
        .map(|(_, p)| p)
        .ok_or_else(malformed)?;
    URL_SAFE_NO_PAD.decode(payload).map_err(|_| malformed())
}

#[cfg(test)]
mod tests {
    //! Published test vectors run through the verifier code path.
    use super::*;

    /// RFC 7515 Appendix A.1: HS256. The JWK `k` and the compact serialization from the RFC.
    const A1_KEY: &str =
        "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";
    const A1_TOKEN: &str = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

    /// RFC 7520 §4.4: HMAC-SHA2 integrity protection (compact serialization, kid set).
    const RFC7520_KEY: &str = "hJtXIZ2uSN5kbQfbtTNWbpdmhkV8FJG-Onbc6mxCcYg";
    const RFC7520_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsImtpZCI6IjAxOGMwYWU1LTRkOWItNDcxYi1iZmQ2LWVlZjMxNGJjNzAzNyJ9.SXTigJlzIGEgZGFuZ2Vyb3VzIGJ1c2luZXNzLCBGcm9kbywgZ29pbmcgb3V0IHlvdXIgZG9vci4gWW91IHN0ZXAgb250byB0aGUgcm9hZCwgYW5kIGlmIHlvdSBkb24ndCBrZWVwIHlvdXIgZmVldCwgdGhlcmXigJlzIG5vIGtub3dpbmcgd2hlcmUgeW91IG1pZ2h0IGJlIHN3ZXB0IG9mZiB0by4.s0h6KThzkfBBBkLspW1h84VsJZFTsPPqMDA7g1Md7p0";
    const RFC7520_PAYLOAD: &str = "It\u{2019}s a dangerous business, Frodo, going out your door. You step onto the road, and if you don't keep your feet, there\u{2019}s no knowing where you might be swept off to.";

    fn hs_key(k: &str) -> DecodingKey {
        DecodingKey::from_secret(&URL_SAFE_NO_PAD.decode(k).unwrap())
    }

    fn tamper_last(token: &str) -> String {
        let mut t = token.to_string();
        let last = t.pop().unwrap();
        t.push(if last == 'A' { 'B' } else { 'A' });
        t
    }

    #[test]
    fn rfc7515_a1_hs256_vector() {
        let key = hs_key(A1_KEY);
        // The signature verifies and the payload is the RFC's.
        let payload = verify_signature(A1_TOKEN, Algorithm::HS256, &key).unwrap();
        let claims: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(claims["iss"], "joe");
        assert_eq!(claims["exp"], 1_300_819_380);
        assert_eq!(claims["http://example.com/is_root"], true);
        // Full verification: the signature passes, then exp (2011) is in the past.
        let v = validation(Algorithm::HS256, Some("joe"), None, 0);
        let err = verify(A1_TOKEN, Algorithm::HS256, &key, &v).unwrap_err();
        assert_eq!(err.code, ErrorCode::AuthTokenExpired);
        // With expiry not checked (only to show the rest of the path accepts it).
        let mut v2 = v.clone();
        v2.validate_exp = false;
        v2.required_spec_claims.clear();
        let claims = verify(A1_TOKEN, Algorithm::HS256, &key, &v2).unwrap();
        assert_eq!(claims["iss"], "joe");
        // Wrong issuer, wrong key, tampered signature, pinned algorithm.
        let v3 = validation(Algorithm::HS256, Some("not-joe"), None, 0);
        let mut v3b = v3.clone();
        v3b.validate_exp = false;
        assert_eq!(
            verify(A1_TOKEN, Algorithm::HS256, &key, &v3b)
                .unwrap_err()
                .code,
            ErrorCode::AuthInvalid
        );
        let wrong = DecodingKey::from_secret(b"another secret of thirty-two bytes!");
        assert!(verify_signature(A1_TOKEN, Algorithm::HS256, &wrong).is_err());
        assert!(verify_signature(&tamper_last(A1_TOKEN), Algorithm::HS256, &key).is_err());
        assert!(verify_signature(A1_TOKEN, Algorithm::HS384, &key).is_err());
    }

    #[test]
    fn rfc7520_4_4_hs256_vector() {
        let key = hs_key(RFC7520_KEY);
        let payload = verify_signature(RFC7520_TOKEN, Algorithm::HS256, &key).unwrap();
        assert_eq!(String::from_utf8(payload).unwrap(), RFC7520_PAYLOAD);
        assert!(verify_signature(&tamper_last(RFC7520_TOKEN), Algorithm::HS256, &key).is_err());
        // Not a JWT (the payload is prose): the claims step refuses it.
        let v = validation(Algorithm::HS256, None, None, 0);
        assert!(verify(RFC7520_TOKEN, Algorithm::HS256, &key, &v).is_err());
    }

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn header_rules() {
        let claims = b64(&serde_json::json!({"exp": 4_000_000_000u64}));
        let none = format!("{}.{claims}.", b64(&serde_json::json!({"alg": "none"})));
        // An empty signature part is still three parts.
        assert_eq!(
            check_header(&none).unwrap_err().code,
            ErrorCode::AuthInvalid
        );
        for h in FORBIDDEN_HEADERS {
            let header = serde_json::json!({"alg": "RS256", *h: "x"});
            let t = format!("{}.{claims}.c2ln", b64(&header));
            let err = check_header(&t).unwrap_err();
            assert!(err.message.contains(h), "{}", err.message);
        }
        assert!(check_header("a.b").is_err());
        assert!(check_header("a.b.c.d").is_err());
    }

    #[test]
    fn string_exp_and_nbf_are_invalid() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let key = DecodingKey::from_secret(secret);
        let enc = jsonwebtoken::EncodingKey::from_secret(secret);
        let h = jsonwebtoken::Header::new(Algorithm::HS256);
        let v = validation(Algorithm::HS256, None, None, 0);
        for claims in [
            serde_json::json!({"exp": "4000000000"}),
            serde_json::json!({"exp": 4_000_000_000u64, "nbf": "0"}),
            serde_json::json!({"exp": 4_000_000_000u64, "iat": "0"}),
        ] {
            let t = jsonwebtoken::encode(&h, &claims, &enc).unwrap();
            assert_eq!(
                verify(&t, Algorithm::HS256, &key, &v).unwrap_err().code,
                ErrorCode::AuthInvalid,
                "{claims}"
            );
        }
        let future = serde_json::json!({"exp": 4_000_000_000u64, "nbf": 3_999_999_999u64});
        let t = jsonwebtoken::encode(&h, &future, &enc).unwrap();
        assert!(
            verify(&t, Algorithm::HS256, &key, &v)
                .unwrap_err()
                .message
                .contains("nbf")
        );
        let ok = serde_json::json!({"exp": 4_000_000_000u64, "nbf": 1u64});
        let t = jsonwebtoken::encode(&h, &ok, &enc).unwrap();
        assert!(verify(&t, Algorithm::HS256, &key, &v).is_ok());
    }

    #[test]
    fn numeric_dates_are_range_checked() {
        use serde_json::json;
        let get = |v: Value| numeric_date(&json!({ "iat": v }), "iat");
        assert_eq!(get(json!(0)).unwrap(), Some(0));
        assert_eq!(get(json!(1_700_000_000)).unwrap(), Some(1_700_000_000));
        assert_eq!(get(json!(1_700_000_000.75)).unwrap(), Some(1_700_000_000));
        assert_eq!(
            get(json!(NUMERIC_DATE_MAX)).unwrap(),
            Some(NUMERIC_DATE_MAX)
        );
        assert_eq!(numeric_date(&json!({}), "iat").unwrap(), None);
        for bad in [
            json!(-1),
            json!(i64::MIN),
            json!(i64::MAX),
            json!(u64::MAX),
            json!(-1e308),
            json!(1e308),
            json!(-0.5),
            json!(NUMERIC_DATE_MAX + 1),
            json!(NUMERIC_DATE_MAX as f64 + 1.0),
            json!("1700000000"),
            json!(null),
            json!(true),
        ] {
            let err = get(bad.clone()).unwrap_err();
            assert_eq!(err.code, ErrorCode::AuthInvalid, "{bad}");
        }
        assert!(check_numeric_dates(&json!({"exp": 4_000_000_000u64, "nbf": 1, "iat": 2})).is_ok());
        assert!(check_numeric_dates(&json!({"exp": 4_000_000_000u64, "iat": -1})).is_err());
    }

    /// Far-future `exp` and huge negative `iat` are refused by the shared verifier, whichever
    /// kind of token it checks (platform and external tokens go through [`verify`]).
    #[test]
    fn out_of_range_dates_fail_verification() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let key = DecodingKey::from_secret(secret);
        let enc = jsonwebtoken::EncodingKey::from_secret(secret);
        let h = jsonwebtoken::Header::new(Algorithm::HS256);
        let v = validation(Algorithm::HS256, None, None, 0);
        for claims in [
            serde_json::json!({"exp": i64::MAX}),
            serde_json::json!({"exp": i64::MAX, "iat": i64::MIN}),
            serde_json::json!({"exp": 4_000_000_000u64, "iat": -1e308}),
            serde_json::json!({"exp": 4_000_000_000u64, "nbf": -5}),
            serde_json::json!({"exp": 1e300}),
        ] {
            let t = jsonwebtoken::encode(&h, &claims, &enc).unwrap();
            assert_eq!(
                verify(&t, Algorithm::HS256, &key, &v).unwrap_err().code,
                ErrorCode::AuthInvalid,
                "{claims}"
            );
        }
    }
}
