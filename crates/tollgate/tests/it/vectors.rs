//! Published test vectors through the gateway's own code paths: RFC 7636 Appendix B (PKCE S256,
//! also end to end through a running server), RFC 7515 Appendix A.1 and RFC 7520 §4.4 (HS256) for
//! the JWT verification core every JWT kind uses.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tollgate::error::ErrorCode;
use tollgate::identity::{jws, oauth};

use crate::helpers::*;
use crate::oauth_support::*;
use crate::store_tests;

const RFC7636_VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const RFC7636_CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

const A1_KEY: &str =
    "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";
const A1_TOKEN: &str = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

const RFC7520_KEY: &str = "hJtXIZ2uSN5kbQfbtTNWbpdmhkV8FJG-Onbc6mxCcYg";
const RFC7520_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsImtpZCI6IjAxOGMwYWU1LTRkOWItNDcxYi1iZmQ2LWVlZjMxNGJjNzAzNyJ9.SXTigJlzIGEgZGFuZ2Vyb3VzIGJ1c2luZXNzLCBGcm9kbywgZ29pbmcgb3V0IHlvdXIgZG9vci4gWW91IHN0ZXAgb250byB0aGUgcm9hZCwgYW5kIGlmIHlvdSBkb24ndCBrZWVwIHlvdXIgZmVldCwgdGhlcmXigJlzIG5vIGtub3dpbmcgd2hlcmUgeW91IG1pZ2h0IGJlIHN3ZXB0IG9mZiB0by4.s0h6KThzkfBBBkLspW1h84VsJZFTsPPqMDA7g1Md7p0";

fn secret(k: &str) -> DecodingKey {
    DecodingKey::from_secret(&URL_SAFE_NO_PAD.decode(k).unwrap())
}

#[test]
fn rfc7636_appendix_b() {
    assert_eq!(oauth::s256_challenge(RFC7636_VERIFIER), RFC7636_CHALLENGE);
    assert!(oauth::valid_verifier(RFC7636_VERIFIER));
    assert!(oauth::valid_challenge(RFC7636_CHALLENGE));
}

#[test]
fn rfc7515_appendix_a1_hs256() {
    let key = secret(A1_KEY);
    let payload = jws::verify_signature(A1_TOKEN, Algorithm::HS256, &key).unwrap();
    let claims: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(
        claims,
        json!({"iss": "joe", "exp": 1_300_819_380, "http://example.com/is_root": true})
    );
    // The full verifier: signature good, then `exp` (March 2011) has passed.
    let v = jws::validation(Algorithm::HS256, Some("joe"), None, 0);
    let err = jws::verify(A1_TOKEN, Algorithm::HS256, &key, &v).unwrap_err();
    assert_eq!(err.code, ErrorCode::AuthTokenExpired);
    // The key pins the algorithm; a flipped signature or another key fails.
    assert!(jws::verify_signature(A1_TOKEN, Algorithm::HS512, &key).is_err());
    let mut forged = A1_TOKEN.to_string();
    forged.pop();
    forged.push('j');
    assert!(jws::verify_signature(&forged, Algorithm::HS256, &key).is_err());
    assert!(jws::verify_signature(A1_TOKEN, Algorithm::HS256, &secret(RFC7520_KEY)).is_err());
}

#[test]
fn rfc7520_section_4_4_hs256() {
    let key = secret(RFC7520_KEY);
    let payload = jws::verify_signature(RFC7520_TOKEN, Algorithm::HS256, &key).unwrap();
    assert_eq!(
        String::from_utf8(payload).unwrap(),
        "It\u{2019}s a dangerous business, Frodo, going out your door. You step onto the road, and if you don't keep your feet, there\u{2019}s no knowing where you might be swept off to."
    );
    let header = jws::check_header(RFC7520_TOKEN).unwrap();
    assert_eq!(header["kid"], "018c0ae5-4d9b-471b-bfd6-eef314bc7037");
    assert!(jws::verify_signature(RFC7520_TOKEN, Algorithm::HS256, &secret(A1_KEY)).is_err());
}

store_tests!(rfc7636_vector_through_the_server);

/// The RFC 7636 Appendix B pair used in a real authorization: the server stores the challenge and
/// accepts exactly that verifier.
async fn rfc7636_vector_through_the_server(app: TestApp) {
    set_owner_password(&app).await;
    let client_id = public_client(&app).await;
    let exchange = |code: String, verifier: &str| {
        app.post(
            "/v1/auth/token",
            "",
            json!({"code": code, "code_verifier": verifier, "redirect_uri": REDIRECT, "client_id": client_id}),
        )
    };
    let code = login_code(
        &app,
        &client_id,
        REDIRECT,
        Some(RFC7636_CHALLENGE),
        OWNER_EMAIL,
        PASSWORD,
        "openid",
    )
    .await;
    let wrong = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXz";
    expect_oauth_error(
        exchange(code, wrong).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    )
    .await;
    let code = login_code(
        &app,
        &client_id,
        REDIRECT,
        Some(RFC7636_CHALLENGE),
        OWNER_EMAIL,
        PASSWORD,
        "openid",
    )
    .await;
    let res = exchange(code, RFC7636_VERIFIER).await;
    assert_eq!(res.status(), StatusCode::OK);
    let t: Value = res.json().await.unwrap();
    assert_eq!(
        app.get("/v1/models", t["access_token"].as_str().unwrap())
            .await
            .status(),
        StatusCode::OK
    );
}
