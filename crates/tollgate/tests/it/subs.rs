//! Helpers for the subscription scenarios: products → plans → subscriptions → credentials, and a
//! customer backend that mints app JWTs with its own keys (HS256 secret from Tollgate, or
//! RS256 / ES256 / EdDSA key pairs generated here with aws-lc-rs).

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

/// A subscription with its product and plan.
#[derive(Debug, Clone)]
pub struct Sub {
    pub id: String,
    pub plan_id: String,
    pub product_id: String,
}

pub async fn create_product(app: &TestApp, key: &str, name: &str, models: &[&str]) -> Value {
    let res = app
        .post(
            "/v1/products",
            key,
            json!({"name": name, "description": "test product", "models": models}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED, "create product");
    res.json().await.unwrap()
}

pub async fn create_plan(app: &TestApp, key: &str, product_id: &str, name: &str) -> Value {
    let res = app
        .post(
            "/v1/plans",
            key,
            json!({"product_id": product_id, "name": name,
                "limits": {"requests_per_minute": 60, "requests_per_day": 1000}}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED, "create plan");
    res.json().await.unwrap()
}

/// Product (with `models`) → plan → subscription (with extra body fields), as the tenant owner.
pub async fn subscribe_with(app: &TestApp, models: &[&str], extra: Value) -> Sub {
    subscribe_as(app, &app.owner_key, models, extra).await
}

pub async fn subscribe_as(app: &TestApp, key: &str, models: &[&str], extra: Value) -> Sub {
    let name = format!("product {}", tollgate::util::random_base62(6));
    let product = create_product(app, key, &name, models).await;
    let product_id = product["id"].as_str().unwrap().to_string();
    let plan = create_plan(app, key, &product_id, "basic").await;
    let plan_id = plan["id"].as_str().unwrap().to_string();
    let mut body = json!({"plan_id": plan_id});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            body[k] = v;
        }
    }
    let res = app.post("/v1/subscriptions", key, body).await;
    assert_eq!(res.status(), StatusCode::CREATED, "subscribe");
    let sub: Value = res.json().await.unwrap();
    Sub {
        id: sub["id"].as_str().unwrap().to_string(),
        plan_id,
        product_id,
    }
}

pub async fn subscribe(app: &TestApp, models: &[&str]) -> Sub {
    subscribe_with(app, models, json!({})).await
}

pub async fn add_credential(app: &TestApp, sub_id: &str, body: Value) -> reqwest::Response {
    app.post(
        &format!("/v1/subscriptions/{sub_id}/credentials"),
        &app.owner_key,
        body,
    )
    .await
}

/// A subscription API key (plaintext).
pub async fn sub_api_key(app: &TestApp, sub_id: &str) -> String {
    let res = add_credential(app, sub_id, json!({"type": "api_key"})).await;
    assert_eq!(res.status(), StatusCode::CREATED, "api_key credential");
    let v: Value = res.json().await.unwrap();
    v["key"].as_str().unwrap().to_string()
}

/// A customer backend's signing key for one subscription credential.
pub struct Signer {
    pub alg: Algorithm,
    pub kid: String,
    pub key: EncodingKey,
    /// The raw HS256 secret, or the public key PEM.
    pub material: String,
}

impl Signer {
    pub fn mint(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

/// `POST …/credentials {"type": "jwt_hs256"}` → a signer with the returned secret.
pub async fn hs256(app: &TestApp, sub_id: &str) -> Signer {
    let res = add_credential(app, sub_id, json!({"type": "jwt_hs256"})).await;
    assert_eq!(res.status(), StatusCode::CREATED, "hs256 credential");
    let v: Value = res.json().await.unwrap();
    let secret = v["secret"].as_str().unwrap().to_string();
    assert!(URL_SAFE_NO_PAD.decode(&secret).unwrap().len() >= 32);
    Signer {
        alg: Algorithm::HS256,
        kid: v["kid"].as_str().unwrap().to_string(),
        key: EncodingKey::from_secret(secret.as_bytes()),
        material: secret,
    }
}

pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A fresh key pair as the customer would generate it: (private signing key, public PEM, JWK).
pub fn keypair(alg: Algorithm) -> (EncodingKey, String, Value) {
    match alg {
        Algorithm::ES256 => {
            let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
            let pkcs8 = kp.to_pkcs8v1().unwrap();
            let spki = kp.public_key().as_der().unwrap();
            let point = kp.public_key().as_ref().to_vec();
            let jwk = json!({"kty": "EC", "crv": "P-256", "use": "sig",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])});
            (
                EncodingKey::from_ec_der(pkcs8.as_ref()),
                pem("PUBLIC KEY", spki.as_ref()),
                jwk,
            )
        }
        Algorithm::EdDSA => {
            let kp = Ed25519KeyPair::generate().unwrap();
            let pkcs8 = kp.to_pkcs8v1().unwrap();
            let spki = kp.public_key().as_der().unwrap();
            let jwk = json!({"kty": "OKP", "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(kp.public_key().as_ref())});
            (
                EncodingKey::from_ed_der(pkcs8.as_ref()),
                pem("PUBLIC KEY", spki.as_ref()),
                jwk,
            )
        }
        Algorithm::RS256 => {
            let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
            let pkcs8: aws_lc_rs::encoding::Pkcs8V1Der = kp.as_der().unwrap();
            let spki = kp.public_key().as_der().unwrap();
            (
                EncodingKey::from_rsa_der(&pkcs1_from_pkcs8(pkcs8.as_ref())),
                pem("PUBLIC KEY", spki.as_ref()),
                Value::Null,
            )
        }
        other => panic!("no key pair for {other:?}"),
    }
}

/// Reads one DER TLV: (tag, content, rest).
fn der_next(b: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = b[0];
    let (len, hdr) = if b[1] < 0x80 {
        (b[1] as usize, 2)
    } else {
        let n = (b[1] & 0x7f) as usize;
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | b[2 + i] as usize;
        }
        (len, 2 + n)
    };
    (tag, &b[hdr..hdr + len], &b[hdr + len..])
}

/// PKCS#8 PrivateKeyInfo → the RSAPrivateKey (PKCS#1) inside it.
fn pkcs1_from_pkcs8(pkcs8: &[u8]) -> Vec<u8> {
    let (_, info, _) = der_next(pkcs8);
    let (_, _version, rest) = der_next(info);
    let (_, _alg, rest) = der_next(rest);
    let (tag, key, _) = der_next(rest);
    assert_eq!(tag, 0x04);
    key.to_vec()
}

/// Uploads a public key credential; returns the signer holding the private half.
pub async fn upload_key(app: &TestApp, sub_id: &str, alg: Algorithm, as_jwk: bool) -> Signer {
    let (key, pem, jwk) = keypair(alg);
    let alg_name = match alg {
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        Algorithm::EdDSA => "EdDSA",
        _ => unreachable!(),
    };
    let public_key = if as_jwk {
        jwk
    } else {
        Value::String(pem.clone())
    };
    let res = add_credential(
        app,
        sub_id,
        json!({"type": "jwt_public_key", "alg": alg_name, "public_key": public_key}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED, "upload {alg_name}");
    let v: Value = res.json().await.unwrap();
    assert!(v.get("secret").is_none());
    Signer {
        alg,
        kid: v["kid"].as_str().unwrap().to_string(),
        key,
        material: pem,
    }
}

pub fn now() -> i64 {
    tollgate::util::now_ms() / 1000
}

/// Standard claims for a subscription's app JWT, merged with `extra`.
pub fn claims(sub_id: &str, extra: Value) -> Value {
    let n = now();
    let mut c = json!({"iss": sub_id, "sub": "end-user-42", "iat": n, "exp": n + 300});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(&k);
            } else {
                c[k] = v;
            }
        }
    }
    c
}

pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

pub fn image_body(prompt: &str) -> Value {
    json!({"model": "fake-image", "prompt": prompt, "n": 1, "size": "256x256"})
}

pub async fn images(app: &TestApp, token: &str, body: Value) -> reqwest::Response {
    app.post("/v1/images/generations", token, body).await
}

pub async fn images_async(app: &TestApp, token: &str, body: Value) -> reqwest::Response {
    app.req(reqwest::Method::POST, "/v1/images/generations", token)
        .header("prefer", "respond-async")
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// `GET` with `x-user-id` only.
pub async fn get_as_subscription(app: &TestApp, path: &str, sub_id: &str) -> reqwest::Response {
    app.client
        .get(app.url(path))
        .header("x-user-id", sub_id)
        .send()
        .await
        .unwrap()
}
