//! The built-in `mock` provider: lets `tollgate serve` answer `mock-chat`, `mock-embed` and
//! `mock-image` with no network and no configuration. A product feature for trying Tollgate out;
//! the gateway's own tests use a real HTTP upstream instead.

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Endpoint, ReplyBody, UpstreamReply};

pub const MODELS: &[(&str, Endpoint)] = &[
    ("mock-chat", Endpoint::Chat),
    ("mock-embed", Endpoint::Embeddings),
    ("mock-image", Endpoint::Images),
];

/// A 1×1 transparent PNG.
const PNG_1X1_B64: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn last_user_text(body: &Value) -> String {
    body.get("messages")
        .and_then(Value::as_array)
        .and_then(|m| {
            m.iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        })
        .and_then(|m| m.get("content"))
        .map(|c| match c {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .unwrap_or_default()
}

fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

pub fn respond(endpoint: Endpoint, body: &Value) -> UpstreamReply {
    match endpoint {
        Endpoint::Chat => chat(body),
        Endpoint::Embeddings => embeddings(body),
        Endpoint::Images => images(body),
        Endpoint::Completions => completion(body),
        Endpoint::Responses => response(body),
    }
}

/// The text of a Responses API `input`: a string, or items whose `content` is a string or
/// parts with `text`.
fn input_text(body: &Value) -> String {
    match body.get("input") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|i| match i.get("content") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Array(parts)) => Some(
                    parts
                        .iter()
                        .filter_map(|p| p.get("text").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join(" "),
                ),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// A Responses API answer (`/v1/responses`), JSON or SSE (typed events ending with
/// `response.completed`, which carries the usage).
fn response(body: &Value) -> UpstreamReply {
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock-chat")
        .to_string();
    let prompt = input_text(body);
    let excerpt: String = prompt.chars().take(200).collect();
    let reply = format!("This is a mock response from Tollgate to: {excerpt}");
    let input_tokens = words(&prompt).max(1);
    let output_tokens = words(&reply);
    let id = format!("resp_mock{}", crate::util::random_base62(12));
    let msg_id = format!("msg_mock{}", crate::util::random_base62(12));
    let created = now_secs();
    let message = |text: &str| {
        json!({"type": "message", "id": msg_id, "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]})
    };
    let whole = |status: &str, output: Value, usage: Value| {
        json!({"id": id, "object": "response", "created_at": created, "status": status,
            "model": model, "output": output, "usage": usage})
    };
    let usage = json!({"input_tokens": input_tokens, "output_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0}});
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        let event =
            |kind: &str, data: Value| Bytes::from(format!("event: {kind}\ndata: {data}\n\n"));
        let mut events = vec![event(
            "response.created",
            json!({"type": "response.created", "sequence_number": 0,
                "response": whole("in_progress", json!([]), Value::Null)}),
        )];
        for (i, piece) in reply.split_inclusive(' ').enumerate() {
            events.push(event(
                "response.output_text.delta",
                json!({"type": "response.output_text.delta", "sequence_number": i + 1,
                    "item_id": msg_id, "output_index": 0, "content_index": 0,
                    "delta": piece, "logprobs": []}),
            ));
        }
        events.push(event(
            "response.completed",
            json!({"type": "response.completed", "sequence_number": events.len(),
                "response": whole("completed", json!([message(&reply)]), usage)}),
        ));
        let stream = futures_util::stream::iter(events.into_iter().map(Ok)).boxed();
        return UpstreamReply::stream(stream);
    }
    UpstreamReply::json(whole("completed", json!([message(&reply)]), usage))
}

/// A legacy text completion (`/v1/completions`), JSON or SSE.
fn completion(body: &Value) -> UpstreamReply {
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock-chat")
        .to_string();
    let prompt = match body.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    };
    let excerpt: String = prompt.chars().take(200).collect();
    let reply = format!(" This is a mock completion from Tollgate of: {excerpt}");
    let prompt_tokens = words(&prompt).max(1);
    let completion_tokens = words(&reply);
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens});
    let id = format!("cmpl-mock{}", crate::util::random_base62(12));
    let created = now_secs();
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        let include_usage = body
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            == Some(true);
        let mut events: Vec<Bytes> = reply
            .split_inclusive(' ')
            .map(|piece| {
                let c = json!({"id": id, "object": "text_completion", "created": created,
                    "model": model, "choices": [{"index": 0, "text": piece, "logprobs": null,
                    "finish_reason": null}]});
                Bytes::from(format!("data: {c}\n\n"))
            })
            .collect();
        let last = json!({"id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": "", "logprobs": null, "finish_reason": "stop"}]});
        events.push(Bytes::from(format!("data: {last}\n\n")));
        if include_usage {
            let u = json!({"id": id, "object": "text_completion", "created": created,
                "model": model, "choices": [], "usage": usage});
            events.push(Bytes::from(format!("data: {u}\n\n")));
        }
        events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        let stream = futures_util::stream::iter(events.into_iter().map(Ok)).boxed();
        return UpstreamReply::stream(stream);
    }
    UpstreamReply::json(json!({
        "id": id, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": reply, "logprobs": null, "finish_reason": "stop"}],
        "usage": usage,
    }))
}

fn chat(body: &Value) -> UpstreamReply {
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock-chat")
        .to_string();
    let prompt = last_user_text(body);
    let excerpt: String = prompt.chars().take(200).collect();
    let reply = format!("This is a mock reply from Tollgate. You said: {excerpt}");
    let prompt_tokens = words(&prompt).max(1);
    let completion_tokens = words(&reply);
    let id = format!("chatcmpl-mock{}", crate::util::random_base62(12));
    let created = now_secs();
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        let include_usage = body
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            == Some(true);
        let usage_null = if include_usage {
            json!({"usage": null})
        } else {
            json!({})
        };
        let mut events: Vec<Bytes> = Vec::new();
        let chunk = |delta: Value, finish: Value| {
            let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
            if let (Some(obj), Some(extra)) = (c.as_object_mut(), usage_null.as_object()) {
                obj.extend(extra.clone());
            }
            Bytes::from(format!("data: {c}\n\n"))
        };
        events.push(chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        ));
        let mut first = true;
        for w in reply.split(' ') {
            let piece = if first {
                w.to_string()
            } else {
                format!(" {w}")
            };
            first = false;
            events.push(chunk(json!({"content": piece}), Value::Null));
        }
        events.push(chunk(json!({}), json!("stop")));
        if include_usage {
            let u = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}});
            events.push(Bytes::from(format!("data: {u}\n\n")));
        }
        events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        let stream = futures_util::stream::iter(events.into_iter().map(Ok)).boxed();
        return UpstreamReply::stream(stream);
    }
    UpstreamReply::json(json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens},
    }))
}

fn embedding_of(text: &str) -> Vec<f64> {
    let digest = Sha256::digest(text.as_bytes());
    digest
        .iter()
        .take(16)
        .map(|b| f64::from(*b) / 255.0 * 2.0 - 1.0)
        .collect()
}

fn embeddings(body: &Value) -> UpstreamReply {
    let inputs: Vec<String> = match body.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .collect(),
        _ => vec![],
    };
    let tokens: u64 = inputs.iter().map(|s| words(s).max(1)).sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"object": "embedding", "index": i, "embedding": embedding_of(s)}))
        .collect();
    UpstreamReply::json(json!({
        "object": "list", "data": data,
        "model": body.get("model").cloned().unwrap_or(json!("mock-embed")),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
}

fn images(body: &Value) -> UpstreamReply {
    let n = body
        .get("n")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .clamp(1, 4);
    let data: Vec<Value> = (0..n).map(|_| json!({"b64_json": PNG_1X1_B64})).collect();
    UpstreamReply::json(json!({"created": now_secs(), "data": data}))
}

impl UpstreamReply {
    fn json(v: Value) -> Self {
        Self {
            status: axum::http::StatusCode::OK,
            content_type: Some(axum::http::HeaderValue::from_static("application/json")),
            body: ReplyBody::Full(Bytes::from(v.to_string())),
            retry_after: None,
        }
    }
    fn stream(s: tollgate_upstream::ByteStream) -> Self {
        Self {
            status: axum::http::StatusCode::OK,
            content_type: Some(axum::http::HeaderValue::from_static("text/event-stream")),
            body: ReplyBody::Stream(s),
            retry_after: None,
        }
    }
}
