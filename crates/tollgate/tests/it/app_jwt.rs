//! App JWTs (SPEC §2.4): tokens minted by the customer's backend with HS256 (Tollgate's secret)
//! or its own RS256 / ES256 / EdDSA keys, request binding, lifetime rules, replay, alg confusion.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::store_tests;
use crate::subs::*;

store_tests!(
    hs256_bound_token_generates_an_image,
    customer_public_keys_rs256_es256_eddsa,
    alg_confusion_and_forged_headers,
    binding_mismatches_name_the_pointer,
    lifetime_expiry_and_audience,
    single_use_tokens_are_not_replayable,
    replay_cache_is_shared_by_instances,
    revoked_credential_stops_its_tokens,
);

async fn hs256_bound_token_generates_an_image(app: TestApp) {
    let sub = subscribe(&app, &["fake-image", "gpt-test"]).await;
    let signer = hs256(&app, &sub.id).await;
    let prompt = "a watercolour fox";
    let token = signer.mint(&claims(
        &sub.id,
        json!({"bind": {"/model": "fake-image", "/n": 1},
               "bind_sha256": {"/prompt": sha256_hex(prompt)}}),
    ));
    let res = images(&app, &token, image_body(prompt)).await;
    assert_eq!(res.status(), StatusCode::OK);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["data"][0]["b64_json"], fake_upstream::TINY_PNG_BASE64);

    let me: Value = app.get("/v1/me", &token).await.json().await.unwrap();
    assert_eq!(me["credential"]["type"], "app_jwt");
    assert_eq!(me["subscription_id"], sub.id.as_str());
    assert!(me["user_id"].is_null());
    assert_eq!(me["tenant_id"], app.tenant_id.as_str());

    // The product's models only.
    let token = signer.mint(&claims(&sub.id, json!({})));
    let res = app.chat(&token, chat_body("mock-chat")).await;
    expect_error(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    // Tokens grant nothing on management routes.
    let res = app.get("/v1/subscriptions", &token).await;
    expect_error(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    // The secret is not stored in plaintext.
    let cred_rows =
        tollgate::store::subscriptions::list_credentials(app.state.store.pool(), &sub.id, true)
            .await
            .unwrap();
    assert!(cred_rows[0].key_material.starts_with("v1."));
    assert!(!cred_rows[0].key_material.contains(&signer.material));
}

async fn customer_public_keys_rs256_es256_eddsa(app: TestApp) {
    let sub = subscribe(&app, &["fake-image"]).await;
    for (alg, jwk) in [
        (Algorithm::RS256, false),
        (Algorithm::ES256, false),
        (Algorithm::ES256, true),
        (Algorithm::EdDSA, false),
        (Algorithm::EdDSA, true),
    ] {
        let signer = upload_key(&app, &sub.id, alg, jwk).await;
        let token = signer.mint(&claims(&sub.id, json!({"bind": {"/model": "fake-image"}})));
        let res = images(&app, &token, image_body("a cat")).await;
        assert_eq!(res.status(), StatusCode::OK, "{alg:?} jwk={jwk}");
        // A token signed by another key under this kid fails.
        let (other, _, _) = keypair(alg);
        let forged = Signer {
            alg,
            kid: signer.kid.clone(),
            key: other,
            material: String::new(),
        }
        .mint(&claims(&sub.id, json!({})));
        let res = images(&app, &forged, image_body("a cat")).await;
        expect_error(res, StatusCode::UNAUTHORIZED, "AUTH_INVALID").await;
    }
}

fn raw_token(header: Value, payload: &Value, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string()),
        URL_SAFE_NO_PAD.encode(sig)
    )
}

async fn alg_confusion_and_forged_headers(app: TestApp) {
    let sub = subscribe(&app, &["fake-image"]).await;
    let rsa = upload_key(&app, &sub.id, Algorithm::RS256, false).await;
    let hs = hs256(&app, &sub.id).await;
    let c = claims(&sub.id, json!({}));

    // HS256 signed with the RSA public key (PEM bytes) under the RSA credential's kid.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(rsa.kid.clone());
    let confused = jsonwebtoken::encode(
        &header,
        &c,
        &EncodingKey::from_secret(rsa.material.as_bytes()),
    )
    .unwrap();
    let res = images(&app, &confused, image_body("x")).await;
    expect_error(res, StatusCode::UNAUTHORIZED, "AUTH_INVALID").await;

    // An RS256 token presented under the HS256 credential's kid.
    let (rs_key, _, _) = keypair(Algorithm::RS256);
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(hs.kid.clone());
    let token = jsonwebtoken::encode(&header, &c, &rs_key).unwrap();
    let res = images(&app, &token, image_body("x")).await;
    expect_error(res, StatusCode::UNAUTHORIZED, "AUTH_INVALID").await;

    // alg none, with and without a signature.
    for alg in ["none", "None"] {
        let t = raw_token(json!({"alg": alg, "kid": hs.kid}), &c, b"");
        let t = if t.ends_with('.') {
            format!("{t}AA")
        } else {
            t
        };
        let res = images(&app, &t, image_body("x")).await;
        expect_error(res, StatusCode::UNAUTHORIZED, "AUTH_INVALID").await;
    }

    // Key-carrying headers are never honoured, even with a valid signature.
    for (name, value) in [
        ("jku", json!("https://attacker.example/jwks.json")),
        ("x5u", json!("https://attacker.example/cert.pem")),
        ("jwk", json!({"kty": "oct", "k": "c2VjcmV0"})),
        ("x5c", json!(["MIIB"])),
    ] {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(hs.kid.clone());
        let mut h = serde_json::to_value(&header).unwrap();
        h[name] = value;
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(h.to_string()),
            URL_SAFE_NO_PAD.encode(c.to_string())
        );
        let tag = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, hs.material.as_bytes()),
            signing_input.as_bytes(),
        );
        let t = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
        let res = images(&app, &t, image_body("x")).await;
        expect_error(res, StatusCode::UNAUTHORIZED, "AUTH_INVALID").await;
    }

    // Unknown kid, no kid, tampered payload, another subscription as iss.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("unknown".into());
    let unknown = jsonwebtoken::encode(
        &header,
        &c,
        &EncodingKey::from_secret(hs.material.as_bytes()),
    )
    .unwrap();
    let no_kid = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &c,
        &EncodingKey::from_secret(hs.material.as_bytes()),
    )
    .unwrap();
    let good = hs.mint(&c);
    let parts: Vec<&str> = good.split('.').collect();
    let mut tampered_claims = c.clone();
    tampered_claims["sub"] = "someone-else".into();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(tampered_claims.to_string()),
        parts[2]
    );
    let sub2 = subscribe(&app, &["fake-image"]).await;
    let foreign = hs.mint(&claims(&sub2.id, json!({})));
    for t in [unknown, no_kid, tampered, foreign] {
        let res = images(&app, &t, image_body("x")).await;
        expect_error(res, StatusCode::UNAUTHORIZED, "AUTH_INVALID").await;
    }
    assert_eq!(
        images(&app, &good, image_body("x")).await.status(),
        StatusCode::OK
    );
}

async fn binding_mismatches_name_the_pointer(app: TestApp) {
    let sub = subscribe(&app, &["fake-image", "gpt-test"]).await;
    let signer = hs256(&app, &sub.id).await;
    let prompt = "a red bicycle";
    let bound = claims(
        &sub.id,
        json!({"bind": {"/model": "fake-image", "/size": "256x256", "/sku_id": "A-123"},
               "bind_sha256": {"/prompt": sha256_hex(prompt)}}),
    );
    let token = signer.mint(&bound);
    let mut body = image_body(prompt);
    body["sku_id"] = "A-123".into();
    assert_eq!(
        images(&app, &token, body.clone()).await.status(),
        StatusCode::OK
    );

    // (pointer, new value; None removes the field)
    let cases = [
        ("/model", Some(json!("gpt-test"))),
        ("/size", Some(json!("1024x1024"))),
        ("/sku_id", None),
        ("/prompt", Some(json!("a blue bicycle"))),
    ];
    for (pointer, change) in cases {
        let mut b = body.clone();
        let field = &pointer[1..];
        match change {
            Some(v) => b[field] = v,
            None => {
                b.as_object_mut().unwrap().remove(field);
            }
        }
        let res = images(&app, &token, b).await;
        let err = expect_error(res, StatusCode::FORBIDDEN, "AUTH_BINDING_MISMATCH").await;
        assert_eq!(err["error"]["param"], pointer);
    }
    // The async path checks the binding before anything is queued.
    let mut b = body.clone();
    b["size"] = "1024x1024".into();
    let res = images_async(&app, &token, b).await;
    let err = expect_error(res, StatusCode::FORBIDDEN, "AUTH_BINDING_MISMATCH").await;
    assert_eq!(err["error"]["param"], "/size");
    // Malformed binding claims make the token invalid.
    let token = signer.mint(&claims(&sub.id, json!({"bind": {"model": "x"}})));
    let res = images(&app, &token, image_body(prompt)).await;
    expect_error(res, StatusCode::UNAUTHORIZED, "AUTH_INVALID").await;
}

async fn lifetime_expiry_and_audience(app: TestApp) {
    let sub = subscribe(&app, &["fake-image"]).await;
    let short = subscribe_with(
        &app,
        &["fake-image"],
        json!({"max_token_lifetime_seconds": 600}),
    )
    .await;
    let signer = hs256(&app, &sub.id).await;
    let short_signer = hs256(&app, &short.id).await;
    let n = now();
    let ok = |s: &Signer, id: &str, extra: Value| s.mint(&claims(id, extra));

    // Exactly the default maximum passes, one second more does not.
    let t = ok(&signer, &sub.id, json!({"iat": n, "exp": n + 3600}));
    assert_eq!(
        images(&app, &t, image_body("x")).await.status(),
        StatusCode::OK
    );
    let t = ok(&signer, &sub.id, json!({"iat": n, "exp": n + 3601}));
    let err = expect_error(
        images(&app, &t, image_body("x")).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_INVALID",
    )
    .await;
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("lifetime")
    );
    // The subscription's own maximum.
    let t = ok(&short_signer, &short.id, json!({"iat": n, "exp": n + 900}));
    expect_error(
        images(&app, &t, image_body("x")).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_INVALID",
    )
    .await;
    let t = ok(&short_signer, &short.id, json!({"iat": n, "exp": n + 600}));
    assert_eq!(
        images(&app, &t, image_body("x")).await.status(),
        StatusCode::OK
    );

    // exp and iat are required; a string exp is invalid.
    for extra in [
        json!({"exp": null}),
        json!({"iat": null}),
        json!({"exp": format!("{}", n + 60)}),
        json!({"sub": null}),
        json!({"iat": n + 3600, "exp": n + 3700}),
        json!({"nbf": n + 600}),
    ] {
        let t = ok(&signer, &sub.id, extra.clone());
        let res = images(&app, &t, image_body("x")).await;
        expect_error(res, StatusCode::UNAUTHORIZED, "AUTH_INVALID").await;
    }
    // Expired (beyond the 60 s leeway) → AUTH_TOKEN_EXPIRED; within the leeway still fine.
    let t = ok(&signer, &sub.id, json!({"iat": n - 400, "exp": n - 120}));
    expect_error(
        images(&app, &t, image_body("x")).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_TOKEN_EXPIRED",
    )
    .await;
    let t = ok(&signer, &sub.id, json!({"iat": n - 400, "exp": n - 10}));
    assert_eq!(
        images(&app, &t, image_body("x")).await.status(),
        StatusCode::OK
    );

    // aud: optional, but when present it must be this gateway.
    let t = ok(
        &signer,
        &sub.id,
        json!({"aud": app.state.config.public_url}),
    );
    assert_eq!(
        images(&app, &t, image_body("x")).await.status(),
        StatusCode::OK
    );
    let t = ok(
        &signer,
        &sub.id,
        json!({"aud": "https://other.example.com"}),
    );
    expect_error(
        images(&app, &t, image_body("x")).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_INVALID",
    )
    .await;
}

async fn single_use_tokens_are_not_replayable(app: TestApp) {
    let sub = subscribe_with(&app, &["fake-image"], json!({"single_use_tokens": true})).await;
    let signer = hs256(&app, &sub.id).await;
    let t = signer.mint(&claims(&sub.id, json!({"jti": "req-1"})));
    assert_eq!(
        images(&app, &t, image_body("x")).await.status(),
        StatusCode::OK
    );
    let res = images(&app, &t, image_body("x")).await;
    expect_error(res, StatusCode::UNAUTHORIZED, "AUTH_REPLAYED").await;
    // A new jti is fine; a token without jti is refused on this subscription.
    let t = signer.mint(&claims(&sub.id, json!({"jti": "req-2"})));
    assert_eq!(
        images(&app, &t, image_body("x")).await.status(),
        StatusCode::OK
    );
    let t = signer.mint(&claims(&sub.id, json!({})));
    expect_error(
        images(&app, &t, image_body("x")).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_INVALID",
    )
    .await;

    // Without single-use, the same token works repeatedly.
    let multi = subscribe(&app, &["fake-image"]).await;
    let ms = hs256(&app, &multi.id).await;
    let t = ms.mint(&claims(&multi.id, json!({"jti": "req-1"})));
    for _ in 0..2 {
        assert_eq!(
            images(&app, &t, image_body("x")).await.status(),
            StatusCode::OK
        );
    }

    // The cache forgets expired tokens.
    let pool = app.state.store.pool();
    let far_future = tollgate::util::now_ms() + 10 * 3600 * 1000;
    let pruned = tollgate::store::subscriptions::prune_jti(pool, far_future)
        .await
        .unwrap();
    assert_eq!(pruned, 2);
}

async fn replay_cache_is_shared_by_instances(app: TestApp) {
    let sub = subscribe_with(&app, &["fake-image"], json!({"single_use_tokens": true})).await;
    let signer = upload_key(&app, &sub.id, Algorithm::ES256, false).await;
    let other = app.second_instance().await;
    let t = signer.mint(&claims(&sub.id, json!({"jti": "once"})));
    assert_eq!(
        images(&app, &t, image_body("x")).await.status(),
        StatusCode::OK
    );
    let res = images(&other, &t, image_body("x")).await;
    expect_error(res, StatusCode::UNAUTHORIZED, "AUTH_REPLAYED").await;
    other.shutdown().await;
}

async fn revoked_credential_stops_its_tokens(app: TestApp) {
    let sub = subscribe(&app, &["fake-image"]).await;
    let a = hs256(&app, &sub.id).await;
    let b = upload_key(&app, &sub.id, Algorithm::EdDSA, true).await;
    let ta = a.mint(&claims(&sub.id, json!({})));
    let tb = b.mint(&claims(&sub.id, json!({})));
    assert_eq!(
        images(&app, &ta, image_body("x")).await.status(),
        StatusCode::OK
    );
    let creds: Value = app
        .get(
            &format!("/v1/subscriptions/{}/credentials", sub.id),
            &app.owner_key,
        )
        .await
        .json()
        .await
        .unwrap();
    let id = creds["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kid"] == a.kid.as_str())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let res = app
        .delete(
            &format!("/v1/subscriptions/{}/credentials/{id}", sub.id),
            &app.owner_key,
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let v: Value = res.json().await.unwrap();
    assert!(v["revoked_at"].is_string());
    expect_error(
        images(&app, &ta, image_body("x")).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_INVALID",
    )
    .await;
    assert_eq!(
        images(&app, &tb, image_body("x")).await.status(),
        StatusCode::OK
    );
}
