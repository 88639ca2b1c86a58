//! The fake upstream, exercised with a real HTTP client over a real socket.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use fake_upstream::{FakeConfig, FakeUpstream, TINY_PNG_BASE64};
use futures_util::StreamExt;
use serde_json::{Value, json};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .no_proxy()
        .build()
        .unwrap()
}

async fn post(up: &FakeUpstream, path: &str, body: Value) -> reqwest::Response {
    client()
        .post(format!("{}{path}", up.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn chat_body(extra: Value) -> Value {
    let mut body =
        json!({"model": "m-1", "messages": [{"role": "user", "content": "hello there"}]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// Splits an SSE body into the payloads of its `data:` events.
fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("data event").to_owned())
        .collect()
}

fn chunks_of(events: &[String]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

#[tokio::test]
async fn lists_models() {
    let up = FakeUpstream::start().await.unwrap();
    let resp = client()
        .get(format!("{}/models", up.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "list");
    assert!(body["data"].as_array().unwrap().len() >= 2);
    assert_eq!(body["data"][0]["object"], "model");
}

#[tokio::test]
async fn json_chat_echoes_model_and_reports_usage() {
    let up = FakeUpstream::start().await.unwrap();
    let resp = post(&up, "/chat/completions", chat_body(json!({"x-extra": 1}))).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "m-1");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["completion_tokens"], 5);
    assert_eq!(body["usage"]["prompt_tokens"], 2);
    assert_eq!(body["usage"]["total_tokens"], 7);

    let reqs = up.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, "/v1/chat/completions");
    assert_eq!(reqs[0].body["x-extra"], 1);
    assert_eq!(reqs[0].header("content-type"), Some("application/json"));
    assert_eq!((up.started(), up.completed(), up.cancelled()), (1, 1, 0));
}

#[tokio::test]
async fn usage_can_be_overridden() {
    let up = FakeUpstream::start().await.unwrap();
    let fake = json!({"fake": {"prompt_tokens": 11, "completion_tokens": 7}});
    let body: Value = post(&up, "/chat/completions", chat_body(fake))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18})
    );
}

#[tokio::test]
async fn stream_without_include_usage() {
    let up = FakeUpstream::start().await.unwrap();
    let resp = post(&up, "/chat/completions", chat_body(json!({"stream": true}))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let events = sse_data(&resp.text().await.unwrap());
    assert_eq!(events.len(), 6);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks = chunks_of(&events);
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "m-1");
        assert!(
            chunk.get("usage").is_none(),
            "no usage key without include_usage"
        );
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "stop");
    assert!(up.wait_completed(1, Duration::from_secs(2)).await);
}

#[tokio::test]
async fn stream_with_include_usage_ends_with_usage_chunk() {
    let up = FakeUpstream::start().await.unwrap();
    let body = chat_body(json!({
        "stream": true,
        "stream_options": {"include_usage": true},
        "fake": {"chunks": 3, "prompt_tokens": 4},
    }));
    let events = sse_data(
        &post(&up, "/chat/completions", body)
            .await
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(events.len(), 5, "3 chunks, usage, [DONE]: {events:?}");
    assert_eq!(events[4], "[DONE]");
    let chunks = chunks_of(&events);
    for chunk in &chunks[..3] {
        assert_eq!(chunk["usage"], Value::Null);
        assert!(chunk.get("usage").is_some(), "usage: null is present");
        assert_eq!(chunk["choices"].as_array().unwrap().len(), 1);
    }
    assert_eq!(chunks[3]["choices"], json!([]));
    assert_eq!(
        chunks[3]["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7})
    );
}

#[tokio::test]
async fn stream_frames_are_paced() {
    let up = FakeUpstream::start_with(FakeConfig {
        chunk_delay_ms: 100,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let start = Instant::now();
    let resp = post(&up, "/chat/completions", chat_body(json!({"stream": true}))).await;
    let mut body = resp.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    let first_at = start.elapsed();
    assert!(String::from_utf8_lossy(&first).starts_with("data: {"));
    let mut text = String::from_utf8_lossy(&first).into_owned();
    while let Some(frame) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&frame.unwrap()));
    }
    let total = start.elapsed();
    assert!(
        total >= Duration::from_millis(400),
        "4 pauses of 100 ms: {total:?}"
    );
    assert!(
        first_at + Duration::from_millis(300) < total,
        "first chunk {first_at:?} total {total:?}"
    );
    assert!(text.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn drop_after_cuts_the_connection_without_done() {
    let up = FakeUpstream::start().await.unwrap();
    let body = chat_body(json!({"stream": true, "fake": {"chunks": 10, "drop_after": 3}}));
    let resp = post(&up, "/chat/completions", body).await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    let mut failed = false;
    while let Some(frame) = stream.next().await {
        match frame {
            Ok(bytes) => text.push_str(&String::from_utf8_lossy(&bytes)),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the body must end in an error, got {text:?}");
    assert!(!text.contains("[DONE]"));
    assert_eq!(sse_data(&text).len(), 3);
    assert!(up.wait_completed(1, Duration::from_secs(2)).await);
    assert_eq!(up.cancelled(), 0);
}

#[tokio::test]
async fn client_dropping_a_stream_counts_as_cancelled() {
    let up = FakeUpstream::start().await.unwrap();
    let body = chat_body(json!({"stream": true, "fake": {"chunks": 100, "chunk_delay_ms": 20}}));
    let resp = post(&up, "/chat/completions", body).await;
    let mut stream = resp.bytes_stream();
    stream.next().await.unwrap().unwrap();
    assert_eq!(up.in_flight(), 1);
    drop(stream);
    assert!(up.wait_cancelled(1, Duration::from_secs(5)).await);
    assert_eq!((up.started(), up.completed(), up.in_flight()), (1, 0, 0));
}

#[tokio::test]
async fn client_giving_up_during_delay_counts_as_cancelled() {
    let up = FakeUpstream::start().await.unwrap();
    let result = client()
        .post(format!("{}/chat/completions", up.base_url()))
        .json(&chat_body(json!({"fake": {"delay_ms": 5000}})))
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(result.unwrap_err().is_timeout());
    assert!(up.wait_cancelled(1, Duration::from_secs(3)).await);
    assert_eq!(up.completed(), 0);
}

#[tokio::test]
async fn delay_ms_delays_the_response() {
    let up = FakeUpstream::start().await.unwrap();
    let start = Instant::now();
    let resp = post(
        &up,
        "/chat/completions",
        chat_body(json!({"fake": {"delay_ms": 150}})),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(start.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn status_mode_returns_openai_error() {
    let up = FakeUpstream::start().await.unwrap();
    for (status, kind) in [
        (500, "api_error"),
        (429, "rate_limit_error"),
        (400, "invalid_request_error"),
    ] {
        let resp = post(
            &up,
            "/chat/completions",
            chat_body(json!({"fake": {"status": status}})),
        )
        .await;
        assert_eq!(resp.status().as_u16(), status);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["type"], kind);
        assert!(body["error"]["message"].is_string());
    }
}

#[tokio::test]
async fn garbage_mode_returns_html() {
    let up = FakeUpstream::start().await.unwrap();
    let resp = post(
        &up,
        "/chat/completions",
        chat_body(json!({"fake": {"garbage": true}})),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/html");
    let text = resp.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err());
}

#[tokio::test]
async fn embeddings_are_deterministic() {
    let up = FakeUpstream::start().await.unwrap();
    let body: Value = post(
        &up,
        "/embeddings",
        json!({"model": "e", "input": ["a b", "c", "a b"]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "e");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    assert_eq!(data[1]["index"], 1);
    assert_eq!(data[0]["embedding"].as_array().unwrap().len(), 8);
    assert_eq!(data[0]["embedding"], data[2]["embedding"]);
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 5, "total_tokens": 5})
    );

    let single: Value = post(&up, "/embeddings", json!({"model": "e", "input": "c"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(single["data"][0]["embedding"], data[1]["embedding"]);

    let bad = post(&up, "/embeddings", json!({"model": "e", "input": 3})).await;
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn images_return_png_base64() {
    let up = FakeUpstream::start().await.unwrap();
    let start = Instant::now();
    let resp = post(
        &up,
        "/images/generations",
        json!({"prompt": "a cat", "n": 2, "fake": {"delay_ms": 100}}),
    )
    .await;
    assert!(start.elapsed() >= Duration::from_millis(100));
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert!(body["created"].is_u64());
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[0]["b64_json"], TINY_PNG_BASE64);
    assert!(TINY_PNG_BASE64.starts_with("iVBORw0KGgo"), "PNG signature");

    let one: Value = post(&up, "/images/generations", json!({"prompt": "x"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["data"].as_array().unwrap().len(), 1);
    let bad = post(&up, "/images/generations", json!({"prompt": "x", "n": 0})).await;
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn api_key_is_required_when_configured() {
    let up = FakeUpstream::start_with(FakeConfig {
        api_key: Some("sk-test".into()),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let url = format!("{}/chat/completions", up.base_url());
    let body = chat_body(json!({}));
    let none = client().post(&url).json(&body).send().await.unwrap();
    assert_eq!(none.status(), 401);
    let err: Value = none.json().await.unwrap();
    assert_eq!(err["error"]["code"], "invalid_api_key");
    let wrong = client()
        .post(&url)
        .bearer_auth("sk-nope")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let right = client()
        .post(&url)
        .bearer_auth("sk-test")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    assert_eq!(
        up.requests()[2].header("authorization"),
        Some("Bearer sk-test")
    );
}

#[tokio::test]
async fn bad_input_gets_openai_errors() {
    let up = FakeUpstream::start().await.unwrap();
    let c = client();
    let not_json = c
        .post(format!("{}/chat/completions", up.base_url()))
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
    let err: Value = not_json.json().await.unwrap();
    assert_eq!(err["error"]["type"], "invalid_request_error");
    assert_eq!(up.requests()[0].body, Value::Null);

    let no_messages = post(&up, "/chat/completions", json!({"model": "m"})).await;
    assert_eq!(no_messages.status(), 400);
    let typo = post(
        &up,
        "/chat/completions",
        chat_body(json!({"fake": {"chunk": 3}})),
    )
    .await;
    assert_eq!(typo.status(), 400);
    let unknown = post(&up, "/nope", json!({})).await;
    assert_eq!(unknown.status(), 404);
    let wrong_method = c
        .get(format!("{}/chat/completions", up.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), 405);
    let err: Value = wrong_method.json().await.unwrap();
    assert!(err["error"]["message"].is_string());
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let up = FakeUpstream::start().await.unwrap();
    let addr = up.addr;
    up.shutdown().await;
    let result = client()
        .get(format!("http://{addr}/v1/models"))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(result.is_err());
}
