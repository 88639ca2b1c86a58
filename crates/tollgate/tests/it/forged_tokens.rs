//! Forged and malformed JWTs (SPEC §2.2–2.4, RFC 8725) against the running gateway: each is
//! rejected with the right code. Tokens "signed by the real key" are minted with the gateway's
//! own signing key (`tokens::sign_claims`), to show that claim checks hold on their own.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::oauth_support::*;
use crate::store_tests;

store_tests!(forged_tokens_are_rejected, expired_and_immature_tokens);

fn now() -> i64 {
    tollgate::util::now_ms() / 1000
}

/// A genuine service-account token and its claims (the template for forgeries).
async fn genuine(app: &TestApp) -> (String, Value) {
    let (id, secret) = service_account(app, &app.owner_key, &["developer"]).await;
    let res = form_post(
        app,
        "/oauth/token",
        Some((&id, &secret)),
        &[("grant_type", "client_credentials")],
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let v: Value = res.json().await.unwrap();
    let t = v["access_token"].as_str().unwrap().to_string();
    let claims = payload(&t);
    (t, claims)
}

async fn sign_real(app: &TestApp, claims: &Value) -> String {
    tollgate::identity::tokens::sign_claims(&app.state, claims)
        .await
        .unwrap()
}

/// Signs `header`/`claims` with an RSA key of the test's own (not the gateway's).
fn sign_own(kp: &aws_lc_rs::rsa::KeyPair, header: &Value, claims: &Value) -> String {
    let msg = format!("{}.{}", b64json(header), b64json(claims));
    let mut sig = vec![0u8; kp.public_modulus_len()];
    kp.sign(
        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        msg.as_bytes(),
        &mut sig,
    )
    .unwrap();
    format!("{msg}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn hs256(secret: &[u8], header: &Value, claims: &Value) -> String {
    use aws_lc_rs::hmac;
    let msg = format!("{}.{}", b64json(header), b64json(claims));
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), msg.as_bytes());
    format!("{msg}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

async fn rejected(app: &TestApp, token: &str, code: &str, what: &str) {
    let res = app.get("/v1/me", token).await;
    let challenge = res
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
    assert_eq!(body["error"]["code"], code, "{what}: {body}");
    assert!(
        challenge.contains("error=\"invalid_token\""),
        "{what}: {challenge}"
    );
}

async fn forged_tokens_are_rejected(app: TestApp) {
    let (token, claims) = genuine(&app).await;
    assert_eq!(app.get("/v1/me", &token).await.status(), StatusCode::OK);
    let real_header = jwt_header(&token);
    let kid = real_header["kid"].as_str().unwrap().to_string();
    let sig = token.rsplit('.').next().unwrap().to_string();

    // alg: none (with an empty and with a non-empty signature part).
    let none = json!({"alg": "none", "typ": "at+jwt", "kid": kid});
    rejected(
        &app,
        &format!("{}.{}.", b64json(&none), b64json(&claims)),
        "AUTH_INVALID",
        "alg none, empty sig",
    )
    .await;
    rejected(
        &app,
        &format!("{}.{}.{sig}", b64json(&none), b64json(&claims)),
        "AUTH_INVALID",
        "alg none",
    )
    .await;
    let none_upper = json!({"alg": "NONE", "typ": "at+jwt", "kid": kid});
    rejected(
        &app,
        &format!("{}.{}.{sig}", b64json(&none_upper), b64json(&claims)),
        "AUTH_INVALID",
        "alg NONE",
    )
    .await;

    // HS256 signed with the gateway's RSA public key (as PEM, as DER, as the JWK's modulus).
    let jwks: Value = app
        .get("/.well-known/jwks.json", "")
        .await
        .json()
        .await
        .unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap()
        .clone();
    assert!(
        jwk.get("d").is_none() && jwk.get("p").is_none(),
        "JWKS has no private parts"
    );
    let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
    let e = URL_SAFE_NO_PAD.decode(jwk["e"].as_str().unwrap()).unwrap();
    let spki = aws_lc_rs::rsa::PublicKeyComponents {
        n: n.as_slice(),
        e: e.as_slice(),
    }
    .as_der()
    .unwrap();
    let der = spki.as_ref().to_vec();
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(&der)
    );
    let hs_header = json!({"alg": "HS256", "typ": "at+jwt", "kid": kid});
    for secret in [pem.as_bytes(), der.as_slice(), n.as_slice()] {
        rejected(
            &app,
            &hs256(secret, &hs_header, &claims),
            "AUTH_INVALID",
            "HS256 with the public key",
        )
        .await;
    }

    // Tampered payload (another tenant, more scope) with the original signature.
    let mut tampered = claims.clone();
    tampered["scope"] = json!("tenant:admin");
    rejected(
        &app,
        &format!("{}.{}.{sig}", b64json(&real_header), b64json(&tampered)),
        "AUTH_INVALID",
        "tampered payload",
    )
    .await;
    let mut t2 = claims.clone();
    t2["tid"] = json!("ten_someoneelse");
    rejected(
        &app,
        &format!("{}.{}.{sig}", b64json(&real_header), b64json(&t2)),
        "AUTH_INVALID",
        "tampered tenant",
    )
    .await;
    // Tampered signature.
    let mut bad_sig = token.clone();
    let last = bad_sig.pop().unwrap();
    bad_sig.push(if last == 'A' { 'B' } else { 'A' });
    rejected(&app, &bad_sig, "AUTH_INVALID", "tampered signature").await;

    // Unknown kid, and the real kid with a key of the attacker's own.
    let own = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let unknown = json!({"alg": "RS256", "typ": "at+jwt", "kid": "kid-nobody-knows"});
    rejected(
        &app,
        &sign_own(&own, &unknown, &claims),
        "AUTH_INVALID",
        "unknown kid",
    )
    .await;
    rejected(
        &app,
        &sign_own(&own, &real_header, &claims),
        "AUTH_INVALID",
        "real kid, other key",
    )
    .await;

    // jku / jwk / x5u / x5c headers pointing at (or embedding) the attacker's key.
    let own_pk = own.public_key();
    let own_jwk = json!({"kty": "RSA", "kid": "attacker",
        "n": URL_SAFE_NO_PAD.encode(own_pk.modulus().big_endian_without_leading_zero()),
        "e": URL_SAFE_NO_PAD.encode(own_pk.exponent().big_endian_without_leading_zero())});
    for (k, v) in [
        ("jwk", own_jwk.clone()),
        ("jku", json!("http://127.0.0.1:9/jwks.json")),
        ("x5u", json!("http://127.0.0.1:9/cert.pem")),
        ("x5c", json!(["MIIB"])),
    ] {
        for kid_value in ["attacker", kid.as_str()] {
            let mut h = json!({"alg": "RS256", "typ": "at+jwt", "kid": kid_value});
            h[k] = v.clone();
            rejected(&app, &sign_own(&own, &h, &claims), "AUTH_INVALID", k).await;
        }
    }

    // String exp / nbf / iat, signed by the real key.
    for (c, v) in [
        ("exp", json!((now() + 600).to_string())),
        ("nbf", json!("0")),
        ("iat", json!("0")),
    ] {
        let mut bad = claims.clone();
        bad[c] = v;
        rejected(&app, &sign_real(&app, &bad).await, "AUTH_INVALID", c).await;
    }
    // Missing exp.
    let mut no_exp = claims.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    rejected(
        &app,
        &sign_real(&app, &no_exp).await,
        "AUTH_INVALID",
        "no exp",
    )
    .await;

    // Wrong iss (then it is not a platform token at all) and wrong aud, signed by the real key.
    let mut wrong_iss = claims.clone();
    wrong_iss["iss"] = json!("https://evil.example.com");
    rejected(
        &app,
        &sign_real(&app, &wrong_iss).await,
        "AUTH_INVALID",
        "wrong iss",
    )
    .await;
    let mut wrong_aud = claims.clone();
    wrong_aud["aud"] = json!("https://api.other.example");
    rejected(
        &app,
        &sign_real(&app, &wrong_aud).await,
        "AUTH_INVALID",
        "wrong aud",
    )
    .await;
    let mut no_aud = claims.clone();
    no_aud.as_object_mut().unwrap().remove("aud");
    rejected(
        &app,
        &sign_real(&app, &no_aud).await,
        "AUTH_INVALID",
        "no aud",
    )
    .await;

    // A platform token presented as an app token: `iss` a subscription id, signed by the
    // platform key — it goes to the app verifier, which never accepts the platform key.
    let mut as_app = claims.clone();
    as_app["iss"] = json!("66ec1726e728c1405e5ebca2");
    rejected(
        &app,
        &sign_real(&app, &as_app).await,
        "AUTH_INVALID",
        "platform token as app token",
    )
    .await;
    // The reverse: an app-style token (HS256, typ JWT, a subscription's secret) claiming the
    // gateway as issuer goes to the platform verifier, which refuses it.
    let app_header = json!({"alg": "HS256", "typ": "JWT", "kid": "sub-cred-1"});
    let mut app_claims = claims.clone();
    app_claims["sub"] = json!("end-user-1");
    rejected(
        &app,
        &hs256(
            b"0123456789abcdef0123456789abcdef",
            &app_header,
            &app_claims,
        ),
        "AUTH_INVALID",
        "app token as platform token",
    )
    .await;
    // A platform-signed token without typ at+jwt.
    let jwt_typ = {
        let parts: Vec<&str> = token.split('.').collect();
        let mut h = jwt_header(&token);
        h["typ"] = json!("JWT");
        format!("{}.{}.{}", b64json(&h), parts[1], parts[2])
    };
    rejected(&app, &jwt_typ, "AUTH_INVALID", "typ JWT").await;

    // The genuine token still works after all that.
    assert_eq!(app.get("/v1/me", &token).await.status(), StatusCode::OK);
}

async fn expired_and_immature_tokens(app: TestApp) {
    let (token, claims) = genuine(&app).await;
    let mut expired = claims.clone();
    expired["iat"] = json!(now() - 7200);
    expired["nbf"] = json!(now() - 7200);
    expired["exp"] = json!(now() - 120);
    let t = sign_real(&app, &expired).await;
    rejected(&app, &t, "AUTH_TOKEN_EXPIRED", "expired").await;
    // On the AI routes too.
    expect_error(
        app.chat(&t, chat_body("fake-model")).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_TOKEN_EXPIRED",
    )
    .await;

    let mut immature = claims.clone();
    immature["nbf"] = json!(now() + 3600);
    rejected(
        &app,
        &sign_real(&app, &immature).await,
        "AUTH_INVALID",
        "nbf in the future",
    )
    .await;
    assert_eq!(app.get("/v1/me", &token).await.status(), StatusCode::OK);
}
