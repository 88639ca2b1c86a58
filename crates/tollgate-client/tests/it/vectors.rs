//! The Rust minting helper against the shared vectors (`sdk/test-vectors/app-jwt.json`): every
//! digest and canonical form, every token's claims and signature, and — against a running
//! gateway — every request's verdict with tokens the helper minted.

use aws_lc_rs::signature::{self, ParsedPublicKey, VerificationAlgorithm};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use tollgate_client::mint::{
    Alg, AppJwt, SigningKey, bind_sha256_hex, canonical_json, mint_app_jwt, unverified_claims,
};

use crate::helpers::*;

fn vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../sdk/test-vectors/app-jwt.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap()
}

/// The vector's signing key.
fn signing_key(v: &Value) -> SigningKey {
    let alg = Alg::parse(s(&v["alg"])).unwrap();
    let material = match alg {
        Alg::Hs256 => s(&v["key"]["secret"]),
        _ => s(&v["key"]["private_pem"]),
    };
    SigningKey::new(alg, material).unwrap()
}

/// The vector's inputs as an [`AppJwt`] (with another subscription, kid and iat if given).
fn app_jwt(v: &Value, sub_id: &str, kid: &str, iat: Option<i64>) -> AppJwt {
    let m = &v["mint"];
    let mut c = AppJwt::new(sub_id, kid, s(&m["sub"])).ttl(m["ttl"].as_u64().unwrap());
    if let Some(iat) = iat {
        c = c.issued_at(iat);
    }
    if let Some(j) = m.get("jti") {
        c = c.jti(s(j));
    }
    for (p, val) in m["bind"].as_object().into_iter().flatten() {
        c = c.bind(p.clone(), val.clone());
    }
    for (p, text) in m["bind_sha256_json"].as_object().into_iter().flatten() {
        let value: Value = serde_json::from_str(s(text)).unwrap();
        c = c.bind_sha256(p.clone(), &value);
    }
    c
}

fn verify(v: &Value, token: &str) -> bool {
    let (input, sig) = token.rsplit_once('.').unwrap();
    let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    if s(&v["alg"]) == "HS256" {
        let key = aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            s(&v["key"]["secret"]).as_bytes(),
        );
        return aws_lc_rs::hmac::verify(&key, input.as_bytes(), &sig).is_ok();
    }
    let pem = s(&v["key"]["public_pem"]);
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = STANDARD.decode(b64).unwrap();
    let alg: &'static dyn VerificationAlgorithm = match s(&v["alg"]) {
        "RS256" => &signature::RSA_PKCS1_2048_8192_SHA256,
        "ES256" => &signature::ECDSA_P256_SHA256_FIXED,
        _ => &signature::ED25519,
    };
    ParsedPublicKey::new(alg, der)
        .unwrap()
        .verify_sig(input.as_bytes(), &sig)
        .is_ok()
}

fn header(token: &str) -> Value {
    let h = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).unwrap()).unwrap()
}

#[test]
fn digests_and_canonical_forms() {
    let doc = vectors();
    for case in doc["bind_sha256"].as_array().unwrap() {
        let name = s(&case["name"]);
        let value: Value = serde_json::from_str(s(&case["json"])).unwrap();
        assert_eq!(bind_sha256_hex(&value), s(&case["sha256"]), "{name}");
        match case.get("canonical") {
            Some(c) => assert_eq!(canonical_json(&value), s(c), "{name}"),
            None => assert_eq!(value.as_str(), case["string"].as_str(), "{name}"),
        }
    }
}

#[test]
fn minted_tokens_match_the_vectors_claims_and_verify() {
    let doc = vectors();
    for v in doc["tokens"].as_array().unwrap() {
        let name = s(&v["name"]);
        let m = &v["mint"];
        let key = signing_key(v);
        let jwt = app_jwt(v, s(&m["subscription_id"]), s(&m["kid"]), m["iat"].as_i64());
        let token = mint_app_jwt(&jwt, &key).unwrap();
        assert_eq!(unverified_claims(&token).unwrap(), v["claims"], "{name}");
        let h = header(&token);
        assert_eq!(h["alg"], v["header"]["alg"], "{name}");
        assert_eq!(h["kid"], v["header"]["kid"], "{name}");
        assert!(verify(v, &token), "{name}: the helper's token verifies");
        // The vector's own token: same claims, valid signature; a changed byte is not.
        let fixed = s(&v["token"]);
        assert_eq!(unverified_claims(fixed).unwrap(), v["claims"], "{name}");
        assert!(verify(v, fixed), "{name}: the vector's token verifies");
        let (input, sig) = fixed.rsplit_once('.').unwrap();
        let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        sig[3] ^= 0x20;
        assert!(!verify(
            v,
            &format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
        ));
        // Deterministic algorithms give the very same token.
        if s(&v["alg"]) != "ES256" {
            assert_eq!(
                mint_app_jwt(&jwt, &key).unwrap(),
                token,
                "{name}: deterministic"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_gives_every_request_its_verdict() {
    let gw = Gateway::spawn().await;
    let doc = vectors();
    let sub_id = gw.subscription(&["mock-chat"], json!({})).await;
    let (hs_kid, hs_secret) = gw.hs256(&sub_id).await;
    for v in doc["tokens"].as_array().unwrap() {
        let name = s(&v["name"]);
        let (kid, key) = if s(&v["alg"]) == "HS256" {
            (hs_kid.clone(), SigningKey::hs256(&hs_secret))
        } else {
            let c = gw
                .create(
                    &format!("/v1/subscriptions/{sub_id}/credentials"),
                    json!({"type": "jwt_public_key", "alg": v["alg"],
                        "public_key": v["key"]["public_pem"]}),
                )
                .await;
            (s(&c["kid"]).to_string(), signing_key(v))
        };
        for req in v["requests"].as_array().unwrap() {
            let mut jwt = app_jwt(v, &sub_id, &kid, None);
            jwt.jti = Some(tollgate_client::mint::random_jti().unwrap());
            let token = mint_app_jwt(&jwt, &key).unwrap();
            let res = gw
                .http
                .post(gw.url("/v1/chat/completions"))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(s(&req["body"]).to_string())
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            let what = format!("{name} / {}: {body}", s(&req["name"]));
            assert_eq!(
                status as u64,
                req["verdict"]["status"].as_u64().unwrap(),
                "{what}"
            );
            if let Some(code) = req["verdict"].get("code") {
                assert_eq!(body["error"]["code"], *code, "{what}");
                assert_eq!(body["error"]["param"], req["verdict"]["param"], "{what}");
            }
        }
    }
}
