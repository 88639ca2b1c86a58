//! A stream the gateway cuts ends the Rust stream with the typed error.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use tollgate_client::{Auth, Code, Error};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_keys_stream_ends_with_a_typed_auth_revoked() {
    let gw = Gateway::spawn().await;
    let (id, key) = gw.key(json!({})).await;
    let client = gw.client(Auth::api_key(&key));
    let req = chat_req("fake-model", "Tell me a long story")
        .field("fake", json!({"chunks": 200, "chunk_delay_ms": 50}));
    let mut stream = client.chat_stream(&req).await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.object, "chat.completion.chunk");

    assert_eq!(gw.delete(&format!("/v1/api-keys/{id}")).await, 200);
    let started = Instant::now();
    let mut received = 1;
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("the stream is cut promptly")
        {
            Some(Ok(_)) => received += 1,
            Some(Err(e)) => break e,
            None => panic!("the stream ended without the error"),
        }
    };
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(received < 200);
    let Error::Api(e) = &err else {
        panic!("expected the gateway's error, got {err:?}")
    };
    assert_eq!(e.code(), Code::AuthRevoked);
    assert_eq!(e.status, 401);
    assert!(e.in_stream);
    assert_eq!(e.request_id.as_deref(), stream.request_id());
    assert!(stream.next().await.is_none(), "nothing after the error");

    // And the key is refused from now on.
    let err = client
        .chat(&chat_req("fake-model", "again"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::AuthRevoked));
}
