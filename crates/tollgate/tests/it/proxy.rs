//! The proxy (SPEC §4.1) against a real upstream socket: pass-through, streaming, usage,
//! upstream failures, timeouts, cancellation, aliases.

use std::time::{Duration, Instant};

use fake_upstream::FakeConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

async fn app() -> TestApp {
    TestApp::spawn(Db::Sqlite).await
}

fn stream_body(model: &str) -> Value {
    let mut b = chat_body(model);
    b["stream"] = json!(true);
    b
}

fn data_events(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_is_forwarded_with_unknown_fields_and_the_upstream_key() {
    let app = app().await;
    let mut body = chat_body("gpt-test");
    body["temperature"] = json!(0.2);
    body["vendor_extension"] = json!({"deep": [1, 2, {"x": null}]});
    let res = app.chat(&app.owner_key, body).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/json");
    let out: Value = res.json().await.unwrap();
    assert_eq!(out["object"], "chat.completion");
    let seen = app.upstream.requests();
    let req = seen.last().unwrap();
    assert_eq!(req.path, "/v1/chat/completions");
    // The public name is replaced by the upstream name; everything else passes through.
    assert_eq!(req.body["model"], "upstream-gpt");
    assert_eq!(req.body["temperature"], 0.2);
    assert_eq!(
        req.body["vendor_extension"],
        json!({"deep": [1, 2, {"x": null}]})
    );
    // The upstream sees the provider key, never the client's key.
    assert_eq!(
        req.header("authorization"),
        Some(format!("Bearer {UPSTREAM_KEY}").as_str())
    );
    assert!(!format!("{:?}", req.headers).contains(&app.owner_key));
    assert!(req.header("x-api-key").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_passes_through_and_hides_the_usage_chunk_unless_asked() {
    let app = app().await;
    let res = app.chat(&app.owner_key, stream_body("fake-model")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = read_all(res).await;
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let events = data_events(&text);
    assert_eq!(events.len(), 5);
    assert!(
        events
            .iter()
            .all(|e| e["choices"].as_array().is_some_and(|c| !c.is_empty()))
    );
    // The gateway asked the upstream for usage anyway.
    let req = app.upstream.requests().pop().unwrap();
    assert_eq!(req.body["stream_options"]["include_usage"], true);

    // When the client asks, the usage chunk is forwarded.
    let mut body = stream_body("fake-model");
    body["stream_options"] = json!({"include_usage": true});
    body["fake"] = json!({"prompt_tokens": 11, "completion_tokens": 7});
    let text = read_all(app.chat(&app.owner_key, body).await).await;
    let events = data_events(&text);
    let usage = events
        .iter()
        .find(|e| e["usage"].is_object())
        .expect("usage chunk");
    assert_eq!(usage["usage"]["prompt_tokens"], 11);
    assert_eq!(usage["usage"]["completion_tokens"], 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_is_not_buffered() {
    let app = app().await;
    let mut body = stream_body("fake-model");
    body["fake"] = json!({"chunks": 10, "chunk_delay_ms": 200});
    let started = Instant::now();
    let mut res = app.chat(&app.owner_key, body).await;
    let first = res.chunk().await.unwrap().unwrap();
    let first_at = started.elapsed();
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));
    // The whole stream takes ~2 s; the first event must arrive long before that.
    assert!(
        first_at < Duration::from_millis(900),
        "first event after {first_at:?}"
    );
    let mut n = 1;
    while let Some(c) = res.chunk().await.unwrap() {
        n += String::from_utf8_lossy(&c).matches("data: ").count();
    }
    assert!(n >= 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mid_stream_drop_ends_with_an_error_event() {
    let app = app().await;
    let mut body = stream_body("fake-model");
    body["fake"] = json!({"chunks": 10, "drop_after": 3});
    let text = read_all(app.chat(&app.owner_key, body).await).await;
    assert!(text.contains("event: error"), "{text}");
    assert!(text.contains("UPSTREAM_ERROR"), "{text}");
    assert!(!text.contains("[DONE]"));
    assert_eq!(
        data_events(&text.replace("event: error\n", "")).len(),
        3 + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_map_to_spec_codes() {
    let app = app().await;
    // 5xx → 502 without the upstream's details.
    let mut body = chat_body("fake-model");
    body["fake"] = json!({"status": 500});
    let res = app.chat(&app.owner_key, body).await;
    let err = expect_error(res, StatusCode::BAD_GATEWAY, "UPSTREAM_ERROR").await;
    assert_eq!(err["error"]["type"], "api_error");
    // Garbage with 200 → 502.
    let mut body = chat_body("fake-model");
    body["fake"] = json!({"garbage": true});
    expect_error(
        app.chat(&app.owner_key, body).await,
        StatusCode::BAD_GATEWAY,
        "UPSTREAM_ERROR",
    )
    .await;
    // A provider client error the caller can fix passes through.
    let mut body = chat_body("fake-model");
    body["fake"] = json!({"status": 400});
    let res = app.chat(&app.owner_key, body).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.json::<Value>().await.unwrap()["error"].is_object());
    // The provider's rate limit → 429 RATE_LIMITED with Retry-After.
    let mut body = chat_body("fake-model");
    body["fake"] = json!({"status": 429});
    let res = app.chat(&app.owner_key, body).await;
    assert!(res.headers().contains_key("retry-after"));
    expect_error(res, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_upstream_key_is_a_gateway_error_not_the_callers() {
    let mut opts = Opts::new(Db::Sqlite);
    opts.upstream = FakeConfig {
        api_key: Some("a-different-key".into()),
        ..FakeConfig::default()
    };
    let app = TestApp::spawn_with(opts).await.unwrap();
    let res = app.chat(&app.owner_key, chat_body("fake-model")).await;
    let err = expect_error(res, StatusCode::BAD_GATEWAY, "UPSTREAM_ERROR").await;
    assert!(!err.to_string().contains(UPSTREAM_KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_is_502() {
    // A port that was just free: connection refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = TestApp::spawn_with(Opts::new(Db::Sqlite).edit(move |c| {
        c.providers[0].base_url = format!("http://127.0.0.1:{port}/v1");
    }))
    .await
    .unwrap();
    let res = app.chat(&app.owner_key, chat_body("fake-model")).await;
    let err = expect_error(res, StatusCode::BAD_GATEWAY, "UPSTREAM_ERROR").await;
    assert!(!err.to_string().contains(&port.to_string()));
    let res = app.chat(&app.owner_key, stream_body("fake-model")).await;
    expect_error(res, StatusCode::BAD_GATEWAY, "UPSTREAM_ERROR").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_504() {
    let app = TestApp::spawn_with(
        Opts::new(Db::Sqlite).edit(|c| c.providers[0].timeout_seconds = Some(1)),
    )
    .await
    .unwrap();
    let mut body = chat_body("fake-model");
    body["fake"] = json!({"delay_ms": 3000});
    let started = Instant::now();
    let res = app.chat(&app.owner_key, body).await;
    expect_error(res, StatusCode::GATEWAY_TIMEOUT, "UPSTREAM_TIMEOUT").await;
    assert!(started.elapsed() < Duration::from_millis(2500));
    // A stream that stalls between chunks ends with an error event.
    let mut body = stream_body("fake-model");
    body["fake"] = json!({"chunks": 3, "chunk_delay_ms": 3000});
    let text = read_all(app.chat(&app.owner_key, body).await).await;
    assert!(text.contains("UPSTREAM_TIMEOUT"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_cancels_the_upstream_call() {
    let app = app().await;
    // Non-streaming: the client gives up while the upstream is still thinking.
    let mut body = chat_body("fake-model");
    body["fake"] = json!({"delay_ms": 5000});
    let short = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let r = short
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&app.owner_key)
        .json(&body)
        .send()
        .await;
    assert!(r.is_err());
    assert!(
        app.upstream.wait_cancelled(1, Duration::from_secs(3)).await,
        "upstream call cancelled"
    );
    // The abandoned request no longer counts as in flight.
    let settled = eventually(Duration::from_secs(3), || async {
        app.state.metrics.http_in_flight.get() == 0
    })
    .await;
    assert!(settled, "in-flight gauge back to 0");
    // Streaming: the client reads one event and goes away.
    let mut body = stream_body("fake-model");
    body["fake"] = json!({"chunks": 100, "chunk_delay_ms": 50});
    let mut res = app.chat(&app.owner_key, body).await;
    res.chunk().await.unwrap().unwrap();
    drop(res);
    assert!(
        app.upstream.wait_cancelled(2, Duration::from_secs(3)).await,
        "upstream stream cancelled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_images_and_aliases() {
    let app = app().await;
    let res = app
        .post(
            "/v1/embeddings",
            &app.owner_key,
            json!({"model": "fake-embed", "input": ["a", "b"]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let out: Value = res.json().await.unwrap();
    assert_eq!(out["data"].as_array().unwrap().len(), 2);
    assert_eq!(
        app.upstream.requests().last().unwrap().path,
        "/v1/embeddings"
    );
    let res = app
        .post(
            "/v1/images/generations",
            &app.owner_key,
            json!({"model": "fake-image", "prompt": "a cat"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.json::<Value>().await.unwrap()["data"][0]["b64_json"].is_string());
    for prefix in ["/api/v1", "/api/v2"] {
        let res = app.chat(&app.owner_key, chat_body("mock-chat")).await;
        assert_eq!(res.status(), StatusCode::OK);
        let res = app
            .post(
                &format!("{prefix}/chat/completions"),
                &app.owner_key,
                chat_body("fake-model"),
            )
            .await;
        assert_eq!(res.status(), StatusCode::OK, "{prefix}");
        let res = app.get(&format!("{prefix}/models"), &app.owner_key).await;
        assert_eq!(res.status(), StatusCode::OK, "{prefix}");
        expect_error(
            app.get(&format!("{prefix}/models"), "").await,
            StatusCode::UNAUTHORIZED,
            "AUTH_MISSING",
        )
        .await;
    }
    let models: Value = app
        .get("/v1/models", &app.owner_key)
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "gpt-test",
            "fake-model",
            "fake-embed",
            "fake-image",
            "mock-chat"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_config_serves_the_mock_models() {
    let app = TestApp::spawn_with(Opts::new(Db::Sqlite).edit(|c| {
        c.providers.clear();
        c.models.clear();
    }))
    .await
    .unwrap();
    let models: Value = app
        .get("/v1/models", &app.owner_key)
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["mock-chat", "mock-embed", "mock-image"]);
    let out: Value = app
        .chat(&app.owner_key, chat_body("mock-chat"))
        .await
        .json()
        .await
        .unwrap();
    assert!(
        out["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("Hello")
    );
    let text = read_all(app.chat(&app.owner_key, stream_body("mock-chat")).await).await;
    assert!(text.trim_end().ends_with("data: [DONE]"));
    let res = app
        .post(
            "/v1/embeddings",
            &app.owner_key,
            json!({"model": "mock-embed", "input": "x"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = app
        .post(
            "/v1/images/generations",
            &app.owner_key,
            json!({"model": "mock-image", "prompt": "x"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_usage_reports_are_capped_before_they_are_summed() {
    // An upstream reporting 2^64 − 1 tokens: read as at most 2^31 − 1 per count, so the sum
    // (quota settlement), the store (i64) and the per-minute aggregates cannot overflow.
    let app = app().await;
    let cap = tollgate_upstream::sse::MAX_REPORTED_TOKENS;
    let huge = json!({"prompt_tokens": u64::MAX, "completion_tokens": u64::MAX});
    let mut body = chat_body("fake-model");
    body["fake"] = huge.clone();
    let res = app.chat(&app.owner_key, body).await;
    assert_eq!(res.status(), StatusCode::OK);
    res.text().await.unwrap();
    let mut body = stream_body("fake-model");
    body["fake"] = huge;
    let text = read_all(app.chat(&app.owner_key, body).await).await;
    assert!(text.contains("[DONE]"), "{text}");
    assert!(wait_usage_records(&app, 2).await);
    let records =
        tollgate::store::usage::recent_records(app.state.store.pool(), &app.tenant_id, 10)
            .await
            .unwrap();
    for (_, _, status, _, prompt, completion) in &records {
        assert_eq!(*status, 200);
        assert_eq!((*prompt, *completion), (cap as i64, cap as i64));
    }
    let res = app.get("/v1/usage?group_by=model", &app.owner_key).await;
    assert_eq!(res.status(), StatusCode::OK);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["data"][0]["total_tokens"], 4 * cap, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_event_that_never_ends_is_cut() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that streams one SSE event without end: the gateway must not hold it in
    // memory without bound; past MAX_EVENT_BYTES it ends the stream with an error event.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sent.clone();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let _ = sock.read(&mut buf).await;
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                    connection: close\r\n\r\ndata: ";
        if sock.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let piece = vec![b'x'; 256 * 1024];
        // Four times the limit, then silence (a gateway without a limit would wait for more).
        for _ in 0..(4 * tollgate_upstream::sse::MAX_EVENT_BYTES / piece.len()) {
            if sock.write_all(&piece).await.is_err() {
                return;
            }
            counter.fetch_add(piece.len(), std::sync::atomic::Ordering::SeqCst);
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let app = TestApp::spawn_with(Opts::new(Db::Sqlite).edit(move |c| {
        c.providers[0].base_url = format!("http://{addr}/v1");
    }))
    .await
    .unwrap();
    let started = Instant::now();
    let res = app.chat(&app.owner_key, stream_body("fake-model")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let text = read_all(res).await;
    assert!(
        text.contains("event: error"),
        "{}",
        &text[text.len().saturating_sub(300)..]
    );
    assert!(text.contains("UPSTREAM_ERROR") && !text.contains("UPSTREAM_TIMEOUT"));
    // Cut when the event outgrew the limit, not at the idle timeout.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        sent.load(std::sync::atomic::Ordering::SeqCst)
            < 4 * tollgate_upstream::sse::MAX_EVENT_BYTES
    );
}

/// The `model` of an answer is the public name the client asked for, not the upstream's name
/// (SPEC §4.1): in JSON answers and in every stream chunk (usage chunk included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_carry_the_public_model_name() {
    let app = app().await;
    let res = app.chat(&app.owner_key, chat_body("gpt-test")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let out: Value = res.json().await.unwrap();
    assert_eq!(out["model"], "gpt-test", "{out}");
    assert_eq!(out["object"], "chat.completion");
    assert!(out["usage"]["total_tokens"].as_u64().unwrap() > 0);
    let mut body = stream_body("gpt-test");
    body["stream_options"] = json!({"include_usage": true});
    let res = app.chat(&app.owner_key, body).await;
    assert_eq!(res.status(), StatusCode::OK);
    let text = read_all(res).await;
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let events = data_events(&text);
    assert!(events.len() > 2);
    for ev in &events {
        assert_eq!(ev["model"], "gpt-test", "{ev}");
    }
    assert!(events.iter().any(|e| e["usage"].is_object()));
    // Upstream saw its own name; a model that is not renamed passes byte for byte.
    assert_eq!(
        app.upstream.requests().last().unwrap().body["model"],
        "upstream-gpt"
    );
    let out: Value = app
        .chat(&app.owner_key, chat_body("fake-model"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(out["model"], "fake-model");
}

/// `GET /v1/models/{id}` (`models.retrieve`): the model for a caller that may use it, `404`
/// for one it may not use or that does not exist; names with `/` work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_is_retrieved_by_id() {
    let app = app().await;
    let res = app.get("/v1/models/gpt-test", &app.owner_key).await;
    assert_eq!(res.status(), StatusCode::OK);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["id"], "gpt-test");
    assert_eq!(v["object"], "model");
    let res = app.get("/api/v1/models/fake-model", &app.owner_key).await;
    assert_eq!(res.status(), StatusCode::OK);
    for missing in ["/v1/models/nope", "/v1/models/org/nope"] {
        let res = app.get(missing, &app.owner_key).await;
        expect_error(res, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    }
    // A subscription sees its product's models only: another model is absent.
    let sub = crate::subs::subscribe(&app, &["gpt-test"]).await;
    let res = crate::subs::get_as_subscription(&app, "/v1/models/gpt-test", &sub.id).await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = crate::subs::get_as_subscription(&app, "/v1/models/fake-model", &sub.id).await;
    expect_error(res, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    // No credential: as for the list.
    let res = app
        .client
        .get(app.url("/v1/models/gpt-test"))
        .send()
        .await
        .unwrap();
    expect_error(res, StatusCode::UNAUTHORIZED, "AUTH_MISSING").await;
}

/// `POST /v1/completions` (legacy text completions): JSON and SSE through the real upstream,
/// metered like chat, with the same permission (a key without `chat:write` is refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_completions_json_and_stream() {
    let app = app().await;
    let body = json!({"model": "gpt-test", "prompt": "Say this is a test", "max_tokens": 7});
    let res = app
        .post("/v1/completions", &app.owner_key, body.clone())
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let out: Value = res.json().await.unwrap();
    assert_eq!(out["object"], "text_completion");
    assert_eq!(out["model"], "gpt-test");
    assert!(out["choices"][0]["text"].as_str().unwrap().len() > 1);
    let seen = app.upstream.requests();
    let req = seen.last().unwrap();
    assert_eq!(req.path, "/v1/completions");
    assert_eq!(req.body["model"], "upstream-gpt");
    assert_eq!(req.body["prompt"], "Say this is a test");
    // Streaming: chunks pass through (with the public name), usage is metered even when the
    // client did not ask for the usage chunk, which it then does not see.
    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let res = app.post("/v1/completions", &app.owner_key, stream).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let text = read_all(res).await;
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let events = data_events(&text);
    assert!(!events.is_empty());
    assert!(
        events
            .iter()
            .all(|e| e["object"] == "text_completion" && e["model"] == "gpt-test")
    );
    assert!(events.iter().all(|e| !e["usage"].is_object()), "{text}");
    assert_eq!(
        app.upstream.requests().last().unwrap().body["stream_options"]["include_usage"],
        true
    );
    assert!(wait_usage_records(&app, 2).await);
    let records =
        tollgate::store::usage::recent_records(app.state.store.pool(), &app.tenant_id, 10)
            .await
            .unwrap();
    assert!(
        records.iter().all(|r| r.3 == "ok" && r.4 > 0 && r.5 > 0),
        "{records:?}"
    );
    // The chat permission governs it.
    let k = app
        .create_key(
            &app.owner_key,
            json!({"name": "embed only", "scopes": ["embeddings:write"]}),
        )
        .await;
    let res = app
        .post("/v1/completions", k["key"].as_str().unwrap(), body)
        .await;
    expect_error(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    // The built-in mock provider answers it too.
    let res = app
        .post(
            "/v1/completions",
            &app.owner_key,
            json!({"model": "mock-chat", "prompt": "hello"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let out: Value = res.json().await.unwrap();
    assert_eq!(out["object"], "text_completion");
    assert!(out["usage"]["total_tokens"].as_u64().unwrap() > 0);
}

/// The `data:` objects of a Responses API stream (each event has an `event:` line first).
fn response_events(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

/// `POST /v1/responses` (the Responses API): JSON and SSE through the real upstream, the public
/// model name in the answer and in every event that names one, usage metered from the
/// response's `usage` and from the `response.completed` event (which the stream must end with),
/// the chat permission, a model the caller may not use refused, and a revoked key cutting a
/// stream in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_json_and_stream() {
    let app = app().await;
    let body = json!({"model": "gpt-test", "input": "Say this is a test",
        "max_output_tokens": 16, "fake": {"chunks": 4, "prompt_tokens": 9, "completion_tokens": 4}});
    let res = app
        .post("/v1/responses", &app.owner_key, body.clone())
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let out: Value = res.json().await.unwrap();
    assert_eq!(out["object"], "response");
    assert_eq!(out["model"], "gpt-test");
    assert_eq!(out["output"][0]["content"][0]["type"], "output_text");
    let seen = app.upstream.requests();
    let req = seen.last().unwrap();
    assert_eq!(req.path, "/v1/responses");
    assert_eq!(req.body["model"], "upstream-gpt");
    assert_eq!(req.body["input"], "Say this is a test");
    // Streaming: the events pass through as typed events, the model renamed where they carry
    // the response; nothing is added to the body (the final event always has the usage).
    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let res = app.post("/v1/responses", &app.owner_key, stream).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let text = read_all(res).await;
    assert!(text.starts_with("event: response.created\n"), "{text}");
    assert!(
        !text.contains("[DONE]") && !text.contains("event: error"),
        "{text}"
    );
    let events = response_events(&text);
    assert_eq!(events.len(), 6, "{text}");
    assert_eq!(events.last().unwrap()["type"], "response.completed");
    for e in events.iter().filter(|e| e["response"].is_object()) {
        assert_eq!(e["response"]["model"], "gpt-test", "{e}");
    }
    let up = app.upstream.requests();
    assert!(up.last().unwrap().body.get("stream_options").is_none());
    assert!(wait_usage_records(&app, 2).await);
    let records =
        tollgate::store::usage::recent_records(app.state.store.pool(), &app.tenant_id, 10)
            .await
            .unwrap();
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(
        records
            .iter()
            .all(|r| r.0 == "gpt-test" && r.3 == "ok" && r.4 == 9 && r.5 == 4),
        "{records:?}"
    );
    // A stream the upstream cuts before `response.completed` is a failed stream, told so.
    let mut cut = body.clone();
    cut["stream"] = json!(true);
    cut["fake"] = json!({"chunks": 5, "drop_after": 2});
    let text = read_all(app.post("/v1/responses", &app.owner_key, cut).await).await;
    assert!(text.contains("event: error"), "{text}");
    // The chat permission governs it; a model outside a subscription's product is refused.
    let k = app
        .create_key(
            &app.owner_key,
            json!({"name": "embed only", "scopes": ["embeddings:write"]}),
        )
        .await;
    let res = app
        .post("/v1/responses", k["key"].as_str().unwrap(), body.clone())
        .await;
    expect_error(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    let sub = crate::subs::subscribe(&app, &["fake-model"]).await;
    let sk = crate::subs::sub_api_key(&app, &sub.id).await;
    let res = app.post("/v1/responses", &sk, body.clone()).await;
    expect_error(res, StatusCode::FORBIDDEN, "PERMISSION_DENIED").await;
    // Revoking the key cuts a stream in flight.
    let created = app
        .create_key(&app.owner_key, json!({"name": "streamer"}))
        .await;
    let (id, key) = (
        created["id"].as_str().unwrap().to_string(),
        created["key"].as_str().unwrap().to_string(),
    );
    let mut long = body.clone();
    long["stream"] = json!(true);
    long["fake"] = json!({"chunks": 200, "chunk_delay_ms": 50});
    let mut res = app.post("/v1/responses", &key, long).await;
    assert_eq!(res.status(), StatusCode::OK);
    let first = res.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).starts_with("event: response.created"));
    let started = std::time::Instant::now();
    let del = app
        .delete(&format!("/v1/api-keys/{id}"), &app.owner_key)
        .await;
    assert_eq!(del.status(), StatusCode::OK);
    let mut rest = String::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(5), res.chunk())
        .await
        .unwrap()
        .unwrap()
    {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(started.elapsed() < Duration::from_secs(2), "cut promptly");
    assert!(rest.contains("AUTH_REVOKED"), "{rest}");
    assert!(!rest.contains("response.completed"), "{rest}");
    // The built-in mock provider answers it too, JSON and SSE.
    let mock = json!({"model": "mock-chat", "input": "hello there"});
    let res = app
        .post("/v1/responses", &app.owner_key, mock.clone())
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let out: Value = res.json().await.unwrap();
    assert!(out["usage"]["input_tokens"].as_u64().unwrap() > 0);
    let mut mock_stream = mock;
    mock_stream["stream"] = json!(true);
    let text = read_all(app.post("/v1/responses", &app.owner_key, mock_stream).await).await;
    assert!(text.contains("event: response.completed"), "{text}");
    assert!(!text.contains("event: error"), "{text}");
}
