//! Every call against the real gateway, in the API-key and subscription-id modes, and the
//! credential headers each mode puts on the wire.

use futures_util::StreamExt;
use serde_json::json;
use tollgate_client::{
    Auth, Code, EmbeddingsRequest, Error, ImageRequest, KeyHeader, RequestOptions, WaitOptions,
};

use crate::helpers::*;

async fn every_call_with(gw: &Gateway, auth: Auth) {
    let client = gw.client(auth);

    let models = client.models().await.unwrap();
    for m in ["gpt-test", "fake-model", "mock-chat"] {
        assert!(models.ids().contains(&m), "{:?}", models.ids());
    }
    let me = client.me().await.unwrap();
    assert_eq!(me.credential.kind, "api_key");
    assert!(me.permissions.iter().any(|p| p == "chat:write"));

    // JSON chat, with usage.
    let answer = client.chat(&chat_req("fake-model", "Hello")).await.unwrap();
    assert_eq!(answer.model, "fake-model");
    assert!(!answer.text().unwrap_or_default().is_empty());
    assert!(answer.usage.as_ref().unwrap().total_tokens > 0);

    // A stream of typed chunks, ending with the usage chunk that was asked for.
    let mut stream = client
        .chat_stream(&chat_req("fake-model", "Hi").include_usage())
        .await
        .unwrap();
    assert!(stream.request_id().is_some());
    let mut chunks = Vec::new();
    while let Some(c) = stream.next().await {
        chunks.push(c.unwrap());
    }
    assert!(chunks.len() >= 3, "{chunks:?}");
    let text: String = chunks.iter().filter_map(|c| c.delta_text()).collect();
    assert!(!text.is_empty());
    let last = chunks.last().unwrap();
    assert!(last.choices.is_empty() && last.usage.as_ref().unwrap().completion_tokens > 0);
    // Without include_usage the gateway forwards no usage chunk.
    let mut stream = client
        .chat_stream(&chat_req("fake-model", "Hi"))
        .await
        .unwrap();
    while let Some(c) = stream.next().await {
        assert!(c.unwrap().usage.is_none());
    }

    let emb = client
        .embeddings(&EmbeddingsRequest::new("fake-embed", json!(["one", "two"])))
        .await
        .unwrap();
    assert_eq!(emb.data.len(), 2);
    assert!(!emb.data[0].vector().unwrap().is_empty());

    let img = client
        .images(&ImageRequest::new("fake-image", "a lighthouse"))
        .await
        .unwrap();
    assert_eq!(img.data.len(), 1);
    assert!(img.data[0].b64_json.is_some());

    // Prefer: respond-async, then polling to completion.
    let op = client
        .images_async(&ImageRequest {
            n: Some(2),
            ..ImageRequest::new("fake-image", "two lighthouses")
        })
        .await
        .unwrap();
    assert!(op.id.starts_with("op_"), "{op:?}");
    assert_eq!(op.status, "queued");
    let done = client
        .wait_operation(&op, WaitOptions::default())
        .await
        .unwrap();
    assert_eq!(done.data.len(), 2);
    let polled = client.operation(&op.id).await.unwrap();
    assert_eq!(polled.status, "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_with_an_api_key_in_either_header() {
    let gw = Gateway::spawn().await;
    let (_, key) = gw.key(json!({})).await;
    every_call_with(&gw, Auth::api_key(&key)).await;
    every_call_with(&gw, Auth::api_key_bearer(&key)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_errors_carry_code_param_status_and_request_id() {
    let gw = Gateway::spawn().await;
    let (_, key) = gw.key(json!({})).await;
    let client = gw.client(Auth::api_key(&key));
    let err = client
        .chat(&chat_req("no-such-model", "Hi"))
        .await
        .unwrap_err();
    let e = err.api().expect("an API error");
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(e.status, 404);
    assert_eq!(e.param.as_deref(), Some("model"));
    assert_eq!(e.kind, "invalid_request_error");
    assert!(e.request_id.as_deref().is_some_and(|id| !id.is_empty()));
    assert!(err.to_string().contains("NOT_FOUND"));

    // A wrong key: 401 AUTH_INVALID; and the secret never shows in Debug output.
    let bad = gw.client(Auth::api_key("tgk_definitelyNotAValidKeyAtAll0000000"));
    let err = bad.models().await.unwrap_err();
    assert_eq!(err.code(), Some(Code::AuthInvalid));
    assert!(!format!("{bad:?}").contains("definitely"));

    // An unknown operation is 404 for this caller.
    let err = client.operation("op_doesnotexist").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound));
    assert!(matches!(
        client.operation("../v1/me").await,
        Err(Error::Config(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_id_alone_reads_models_me_and_its_operations_only() {
    let gw = Gateway::spawn().await;
    let sub_id = gw.subscription(&["fake-image"], json!({})).await;
    let (kid, secret) = gw.hs256(&sub_id).await;

    // The app starts an async generation with an app JWT ...
    let backend = Backend::new(&sub_id, &kid, &secret);
    let app = gw.client(backend.auth());
    let op = app
        .images_async(&ImageRequest::new("fake-image", "a red boat"))
        .await
        .unwrap();

    // ... and anything holding only the subscription id can poll it.
    let poller = gw.client(Auth::subscription_id(&sub_id));
    let done = poller
        .wait_operation(&op, WaitOptions::default())
        .await
        .unwrap();
    assert_eq!(done.data.len(), 1);
    assert_eq!(poller.models().await.unwrap().ids(), vec!["fake-image"]);
    let me = poller.me().await.unwrap();
    assert_eq!(me.credential.kind, "subscription_id");
    assert_eq!(me.subscription_id.as_deref(), Some(sub_id.as_str()));

    // Nothing else: refused before any request.
    let err = poller.chat(&chat_req("fake-image", "x")).await.unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    // An unknown subscription id: 401 AUTH_INVALID.
    let err = gw
        .client(Auth::subscription_id("0123456789abcdef01234567"))
        .models()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::AuthInvalid));
    assert_eq!(err.api().unwrap().status, 401);
}

/// What each mode sends, seen by a capture server: `X-API-Key` or Bearer for a key; for `Jwt`
/// the token on required-auth calls and only `x-user-id` on optional-auth ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_headers_on_the_wire() {
    let cap = Capture::start(
        200,
        &[],
        r#"{"object":"list","data":[],"id":"op_1","status":"queued","tenant_id":"t","credential":{"type":"x"}}"#,
    )
    .await;
    let client = |auth| tollgate_client::Client::new(&cap.base, auth).unwrap();

    client(Auth::api_key("tgk_k1")).models().await.unwrap();
    client(Auth::ApiKey {
        key: "tgk_k2".into(),
        header: KeyHeader::Bearer,
    })
    .models()
    .await
    .unwrap();
    let jwt = Auth::jwt("66ec1726e728c1405e5ebca2", |_req| async {
        Ok::<_, tollgate_client::BoxError>("header.payload.sig".to_string())
    });
    let c = client(jwt);
    c.models().await.unwrap();
    c.operation("op_1").await.unwrap();
    c.me().await.unwrap();
    let _ = c.chat(&chat_req("m", "x")).await;
    c.with_options(RequestOptions::default().end_user("eu-9").unwrap())
        .models()
        .await
        .unwrap();
    client(Auth::subscription_id("66ec1726e728c1405e5ebca2"))
        .operation("op_1")
        .await
        .unwrap();

    let seen = cap.seen();
    assert_eq!(seen.len(), 8, "{seen:?}");
    assert_eq!(seen[0].header("x-api-key"), Some("tgk_k1"));
    assert_eq!(seen[0].header("authorization"), None);
    assert_eq!(seen[1].header("authorization"), Some("Bearer tgk_k2"));
    assert_eq!(seen[1].header("x-api-key"), None);
    for s in &seen[2..5] {
        assert_eq!(
            s.header("x-user-id"),
            Some("66ec1726e728c1405e5ebca2"),
            "{s:?}"
        );
        assert_eq!(s.header("authorization"), None, "{s:?}");
    }
    assert!(seen[3].request_line.starts_with("GET /v1/operations/op_1 "));
    assert!(
        seen[5]
            .request_line
            .starts_with("POST /v1/chat/completions ")
    );
    assert_eq!(
        seen[5].header("authorization"),
        Some("Bearer header.payload.sig")
    );
    assert_eq!(seen[5].header("x-user-id"), None);
    assert_eq!(seen[6].header("x-end-user-id"), Some("eu-9"));
    assert_eq!(
        seen[7].header("x-user-id"),
        Some("66ec1726e728c1405e5ebca2")
    );
}
