//! The `Jwt` mode against the real gateway: `get_jwt` receives the request's parameters, the
//! customer backend binds them, the token is reused while it is valid, asked for again when it
//! expires, and asked for exactly once more after `401 AUTH_TOKEN_EXPIRED`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use serde_json::json;
use tollgate_client::mint::{AppJwt, SigningKey, mint_app_jwt};
use tollgate_client::{
    Auth, BoxError, Client, Code, Error, ImageRequest, JwtAuth, JwtParams, RequestOptions,
    WaitOptions,
};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_mode_every_call_with_bound_tokens() {
    let gw = Gateway::spawn().await;
    let sub_id = gw
        .subscription(
            &["mock-chat", "fake-model", "fake-embed", "fake-image"],
            json!({}),
        )
        .await;
    let (kid, secret) = gw.hs256(&sub_id).await;
    let backend = Backend::new(&sub_id, &kid, &secret);
    let client = gw.client(backend.auth());

    let answer = client.chat(&chat_req("mock-chat", "Hello")).await.unwrap();
    assert!(answer.text().is_some());
    assert_eq!(backend.calls(), 1);
    // get_jwt saw the request: route and the JSON body as parameters.
    let first = backend.calls.lock().unwrap()[0].clone();
    assert_eq!(first.method, "POST");
    assert_eq!(first.path, "/v1/chat/completions");
    assert_eq!(first.params["model"], "mock-chat");
    assert_eq!(first.params["messages"][0]["content"], "Hello");
    assert_eq!(first.params, first.body);

    // The same request again reuses the token; another body asks again (its binding differs).
    client.chat(&chat_req("mock-chat", "Hello")).await.unwrap();
    assert_eq!(backend.calls(), 1);
    client.chat(&chat_req("mock-chat", "Other")).await.unwrap();
    assert_eq!(backend.calls(), 2);

    let mut stream = client
        .chat_stream(&chat_req("fake-model", "Stream please").include_usage())
        .await
        .unwrap();
    let mut n = 0;
    let mut usage = None;
    while let Some(c) = stream.next().await {
        let c = c.unwrap();
        n += 1;
        usage = usage.or(c.usage);
    }
    assert!(n >= 2 && usage.is_some());
    // The streamed body carried "stream": true, and the token was minted for exactly that body.
    let last = backend.calls.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.params["stream"], true);

    let emb = client
        .embeddings(&tollgate_client::EmbeddingsRequest::new(
            "fake-embed",
            json!("hello"),
        ))
        .await
        .unwrap();
    assert_eq!(emb.data.len(), 1);
    let img = client
        .images(&ImageRequest::new("fake-image", "a boat"))
        .await
        .unwrap();
    assert_eq!(img.data.len(), 1);

    // Async image: submitted with a JWT, polled with x-user-id (no get_jwt call for polling).
    let before = backend.calls();
    let done = client
        .images_and_wait(
            &ImageRequest::new("fake-image", "a lighthouse at dusk"),
            WaitOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(done.data.len(), 1);
    assert_eq!(backend.calls(), before + 1);
    assert_eq!(client.models().await.unwrap().ids().len(), 4);
    let me = client.me().await.unwrap();
    assert_eq!(me.credential.kind, "subscription_id");
    assert_eq!(
        backend.calls(),
        before + 1,
        "optional-auth calls never call get_jwt"
    );

    // The backend refuses a model it does not sell: the callback's error reaches the caller.
    let err = client.chat(&chat_req("gpt-test", "x")).await.unwrap_err();
    assert!(matches!(err, Error::Token(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_bound_to_other_values_is_refused_naming_the_pointer() {
    let gw = Gateway::spawn().await;
    let sub_id = gw.subscription(&["mock-chat"], json!({})).await;
    let (kid, secret) = gw.hs256(&sub_id).await;
    let (s, k) = (sub_id.clone(), kid.clone());
    // A backend that always binds max_tokens 16.
    let client = gw.client(Auth::jwt(sub_id.clone(), move |_req| {
        let (s, k, secret) = (s.clone(), k.clone(), secret.clone());
        async move {
            let c = AppJwt::new(s, k, "u1").bind("/max_tokens", json!(16));
            Ok::<_, BoxError>(mint_app_jwt(&c, &SigningKey::hs256(secret))?)
        }
    }));
    client
        .chat(&chat_req("mock-chat", "Hi").max_tokens(16))
        .await
        .unwrap();
    let err = client
        .chat(&chat_req("mock-chat", "Hi").max_tokens(4096))
        .await
        .unwrap_err();
    let e = err.api().unwrap();
    assert_eq!(e.code(), Code::AuthBindingMismatch);
    assert_eq!(e.status, 403);
    assert_eq!(e.param.as_deref(), Some("/max_tokens"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_jwt_is_called_again_once_when_the_token_expires_mid_session() {
    let gw = Gateway::spawn().await;
    let sub_id = gw.subscription(&["mock-chat"], json!({})).await;
    let (kid, secret) = gw.hs256(&sub_id).await;
    let mut backend = Backend::new(&sub_id, &kid, &secret);
    backend.ttl = 2;
    let b = backend.clone();
    let auth = JwtAuth::new(sub_id.clone(), move |req| {
        let b = b.clone();
        async move { b.mint(&req) }
    })
    .refresh_margin(Duration::ZERO);
    let client = gw.client(auth.into());

    let req = chat_req("mock-chat", "Hello");
    client.chat(&req).await.unwrap();
    client.chat(&req).await.unwrap();
    assert_eq!(backend.calls(), 1, "a valid token is reused");
    // Let it expire (exp is in whole seconds).
    tokio::time::sleep(Duration::from_millis(3100)).await;
    client.chat(&req).await.unwrap();
    assert_eq!(backend.calls(), 2, "called again exactly once after expiry");
    client.chat(&req).await.unwrap();
    assert_eq!(backend.calls(), 2);
}

/// The device's clock is 10 minutes slow, so a token that expired by the gateway's clock still
/// looks valid here: the gateway answers `401 AUTH_TOKEN_EXPIRED`, the client asks `get_jwt`
/// exactly once more and resends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_auth_token_expired_get_jwt_is_called_once_more_then_the_request_is_resent() {
    let gw = Gateway::spawn().await;
    let sub_id = gw.subscription(&["mock-chat"], json!({})).await;
    let (kid, secret) = gw.hs256(&sub_id).await;
    let calls = Arc::new(AtomicUsize::new(0));
    // Tokens that expired two minutes ago (past the gateway's 60 s leeway) for the first
    // `stale` calls, fresh ones after.
    let make = |stale: usize| {
        let (s, k, secret, calls) = (sub_id.clone(), kid.clone(), secret.clone(), calls.clone());
        move |_req: tollgate_client::JwtRequest| {
            let (s, k, secret) = (s.clone(), k.clone(), secret.clone());
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let now = tollgate_client_now();
                let iat = if n < stale { now - 420 } else { now };
                let c = AppJwt::new(s, k, "u1").issued_at(iat).ttl(300);
                Ok::<_, BoxError>(mint_app_jwt(&c, &SigningKey::hs256(secret))?)
            }
        }
    };
    let slow = || SystemTime::now() - Duration::from_secs(600);

    let client = Client::builder(&gw.base)
        .auth(Auth::jwt(sub_id.clone(), make(1)))
        .clock(slow)
        .build()
        .unwrap();
    let answer = client.chat(&chat_req("mock-chat", "Hi")).await.unwrap();
    assert!(answer.text().is_some());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one renewal after AUTH_TOKEN_EXPIRED"
    );

    // A backend that keeps handing out expired tokens: exactly one renewal, then the error.
    calls.store(0, Ordering::SeqCst);
    let client = Client::builder(&gw.base)
        .auth(Auth::jwt(sub_id.clone(), make(usize::MAX)))
        .clock(slow)
        .build()
        .unwrap();
    let err = client.chat(&chat_req("mock-chat", "Hi")).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::AuthTokenExpired));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

fn tollgate_client_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// With `JwtParams::Fields`, `get_jwt` sees only the named fields, and requests that agree on
/// them share one token (the backend binds just those).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_fields_are_the_parameters_and_the_cache_key() {
    let gw = Gateway::spawn().await;
    let sub_id = gw.subscription(&["mock-chat"], json!({})).await;
    let (kid, secret) = gw.hs256(&sub_id).await;
    let seen: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let (s, k, log) = (sub_id.clone(), kid.clone(), seen.clone());
    let auth = JwtAuth::new(sub_id.clone(), move |req| {
        log.lock().unwrap().push(req.params.clone());
        let (s, k, secret) = (s.clone(), k.clone(), secret.clone());
        async move {
            let model = req.params["/model"].clone();
            let c = AppJwt::new(s, k, "u1").bind("/model", model);
            Ok::<_, BoxError>(mint_app_jwt(&c, &SigningKey::hs256(secret))?)
        }
    })
    .params(JwtParams::Fields(vec!["/model".into(), "/sku_id".into()]));
    let client = gw.client(auth.into());
    client.chat(&chat_req("mock-chat", "one")).await.unwrap();
    client.chat(&chat_req("mock-chat", "two")).await.unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![json!({"/model": "mock-chat"})]);

    // Per-call parameters (e.g. what the app's UI chose) override them.
    client
        .with_options(
            RequestOptions::default().jwt_params(json!({"/model": "mock-chat", "sku": "A-1"})),
        )
        .chat(&chat_req("mock-chat", "three"))
        .await
        .unwrap();
    assert_eq!(seen.lock().unwrap().len(), 2);
    assert_eq!(seen.lock().unwrap()[1]["sku"], "A-1");
}
