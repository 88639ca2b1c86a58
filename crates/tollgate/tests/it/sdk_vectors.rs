//! The shared app-JWT vectors (`sdk/test-vectors/app-jwt.json`), checked against the gateway so
//! the minting helpers (Rust, Python, TypeScript), which check the same file, cannot drift from
//! it: every `bind_sha256` digest is the gateway's own hash of the value (directly, and through a
//! running server that accepts it and refuses a neighbour's), and every token vector's requests
//! get their verdict from the server, with tokens signed here by jsonwebtoken and the vectors' own
//! keys (public halves uploaded to a subscription).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::*;
use crate::store_tests;
use crate::subs::*;

fn vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../sdk/test-vectors/app-jwt.json"
    );
    let text = std::fs::read_to_string(path).expect("the shared vector file");
    serde_json::from_str(&text).expect("the vector file is JSON")
}

fn s(v: &Value) -> &str {
    v.as_str().expect("a string in the vector file")
}

#[test]
fn every_digest_is_the_gateways_own_hash() {
    let doc = vectors();
    let cases = doc["bind_sha256"].as_array().unwrap();
    assert!(cases.len() >= 30, "the vector file lost its cases");
    for case in cases {
        let name = s(&case["name"]);
        let value: Value = serde_json::from_str(s(&case["json"])).unwrap();
        let expected = s(&case["sha256"]);
        // The function the binding check uses.
        let got = tollgate_core::binding::value_sha256(&value);
        let form = match &value {
            Value::String(text) => {
                assert_eq!(text, s(&case["string"]), "{name}: the string");
                text.clone()
            }
            other => {
                assert_eq!(
                    other.to_string(),
                    s(&case["canonical"]),
                    "{name}: the gateway's compact JSON"
                );
                other.to_string()
            }
        };
        assert_eq!(
            hex::encode(Sha256::digest(form.as_bytes())),
            expected,
            "{name}: digest of {form:?}"
        );
        assert_eq!(
            got, expected,
            "{name}: the gateway hashes {form:?} to {got}"
        );
    }
}

/// The vector's key as a signer for `kid`.
fn vector_key(vector: &Value) -> (Algorithm, EncodingKey) {
    let pem = || s(&vector["key"]["private_pem"]).as_bytes();
    match s(&vector["alg"]) {
        "EdDSA" => (Algorithm::EdDSA, EncodingKey::from_ed_pem(pem()).unwrap()),
        "RS256" => (Algorithm::RS256, EncodingKey::from_rsa_pem(pem()).unwrap()),
        "ES256" => (Algorithm::ES256, EncodingKey::from_ec_pem(pem()).unwrap()),
        other => panic!("no PEM signer for {other}"),
    }
}

/// A signer for the vector on this subscription: Tollgate's own HS256 secret, or the vector's
/// key pair with its public half uploaded.
async fn signer_for(app: &TestApp, sub_id: &str, vector: &Value) -> Signer {
    if s(&vector["alg"]) == "HS256" {
        return hs256(app, sub_id).await;
    }
    let (alg, key) = vector_key(vector);
    let res = add_credential(
        app,
        sub_id,
        json!({"type": "jwt_public_key", "alg": s(&vector["alg"]),
            "public_key": s(&vector["key"]["public_pem"])}),
    )
    .await;
    assert_eq!(
        res.status(),
        StatusCode::CREATED,
        "upload {}",
        vector["alg"]
    );
    let v: Value = res.json().await.unwrap();
    Signer {
        alg,
        kid: v["kid"].as_str().unwrap().to_string(),
        key,
        material: String::new(),
    }
}

async fn post_raw(app: &TestApp, token: &str, body: &str) -> (StatusCode, Value) {
    let res = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

store_tests!(vectors_through_the_server);

async fn vectors_through_the_server(app: TestApp) {
    let doc = vectors();
    let sub = subscribe(&app, &["mock-chat"]).await;
    let hs = hs256(&app, &sub.id).await;

    // Each digest, bound to a field of a chat request holding exactly that JSON text: accepted;
    // the digest of the next case's value: refused naming the pointer.
    let cases = doc["bind_sha256"].as_array().unwrap();
    for (i, case) in cases.iter().enumerate() {
        let name = s(&case["name"]);
        let body = format!(
            r#"{{"model":"mock-chat","messages":[{{"role":"user","content":"Hi"}}],"v":{}}}"#,
            s(&case["json"])
        );
        let token = hs.mint(&claims(
            &sub.id,
            json!({"bind_sha256": {"/v": s(&case["sha256"])}}),
        ));
        let (status, answer) = post_raw(&app, &token, &body).await;
        assert_eq!(status, StatusCode::OK, "{name}: {answer}");
        let other = cases
            .iter()
            .cycle()
            .skip(i + 1)
            .map(|c| s(&c["sha256"]))
            .find(|d| *d != s(&case["sha256"]))
            .unwrap();
        let token = hs.mint(&claims(&sub.id, json!({"bind_sha256": {"/v": other}})));
        let (status, answer) = post_raw(&app, &token, &body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{name}: {answer}");
        assert_eq!(answer["error"]["code"], "AUTH_BINDING_MISMATCH", "{name}");
        assert_eq!(answer["error"]["param"], "/v", "{name}");
    }

    // The token vectors: a token with the vector's binding claims for this subscription, signed
    // with the vector's algorithm, and each request's verdict.
    for vector in doc["tokens"].as_array().unwrap() {
        let name = s(&vector["name"]);
        let signer = signer_for(&app, &sub.id, vector).await;
        let ttl = vector["mint"]["ttl"].as_i64().unwrap();
        let mut extra = json!({"sub": vector["claims"]["sub"], "exp": now() + ttl});
        for c in ["bind", "bind_sha256"] {
            if let Some(v) = vector["claims"].get(c) {
                extra[c] = v.clone();
            }
        }
        for req in vector["requests"].as_array().unwrap() {
            let token = signer.mint(&claims(&sub.id, extra.clone()));
            let (status, answer) = post_raw(&app, &token, s(&req["body"])).await;
            let verdict = &req["verdict"];
            let what = format!("{name} / {}: {answer}", s(&req["name"]));
            assert_eq!(
                status.as_u16() as u64,
                verdict["status"].as_u64().unwrap(),
                "{what}"
            );
            if let Some(code) = verdict.get("code") {
                assert_eq!(answer["error"]["code"], *code, "{what}");
                assert_eq!(answer["error"]["param"], verdict["param"], "{what}");
            }
        }
        // The vector's fixed token verifies with the vector's key and carries its claims.
        let token = s(&vector["token"]);
        let key = match s(&vector["alg"]) {
            "HS256" => DecodingKey::from_secret(s(&vector["key"]["secret"]).as_bytes()),
            alg => {
                let public = s(&vector["key"]["public_pem"]).as_bytes();
                match alg {
                    "EdDSA" => DecodingKey::from_ed_pem(public).unwrap(),
                    "RS256" => DecodingKey::from_rsa_pem(public).unwrap(),
                    _ => DecodingKey::from_ec_pem(public).unwrap(),
                }
            }
        };
        let mut v = Validation::new(signer.alg);
        v.validate_exp = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        let data =
            jsonwebtoken::decode::<Value>(token, &key, &v).expect("the fixed token verifies");
        assert_eq!(
            data.claims, vector["claims"],
            "{name}: the fixed token's claims"
        );
        assert_eq!(
            data.header.kid.as_ref(),
            vector["header"]["kid"]
                .as_str()
                .map(str::to_string)
                .as_ref()
        );
        // One signature byte changed.
        let (input, sig) = token.rsplit_once('.').unwrap();
        let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        sig[5] ^= 1;
        let forged = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig));
        assert!(
            jsonwebtoken::decode::<Value>(&forged, &key, &v).is_err(),
            "{name}: a changed signature fails"
        );
    }
}
