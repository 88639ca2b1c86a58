//! Server-sent-event pass-through. Upstream bytes are cut into whole events and forwarded as soon
//! as each event is complete — never the whole body. The usage chunk that the gateway asked for
//! (`stream_options.include_usage`) is read for metering and forwarded only if the client asked.

use bytes::{Bytes, BytesMut};
use serde_json::Value;

/// Token counts reported by the upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

#[derive(serde::Deserialize)]
struct UsageFields {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

#[derive(serde::Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<UsageFields>,
}

impl Usage {
    /// Validates that `body` is one JSON object and reads its `usage`, without building a tree
    /// of the whole response. `Err` when the body is not a JSON object.
    pub fn from_body(body: &[u8]) -> Result<Option<Self>, serde_json::Error> {
        let w: WithUsage = serde_json::from_slice(body)?;
        Ok(w.usage.map(|u| Self {
            prompt_tokens: u.prompt_tokens.unwrap_or(0),
            completion_tokens: u.completion_tokens.unwrap_or(0),
        }))
    }

    pub fn from_json(v: &Value) -> Option<Self> {
        let u = v.get("usage")?;
        if !u.is_object() {
            return None;
        }
        Some(Self {
            prompt_tokens: u.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0),
            completion_tokens: u
                .get("completion_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(0),
        })
    }
}

/// Splits a byte stream into complete SSE events (each including its blank-line terminator).
/// When an upstream chunk is exactly one whole event (the common case) it is passed on as is,
/// without copying.
#[derive(Default)]
pub struct EventSplitter {
    buf: BytesMut,
    whole: Option<Bytes>,
}

fn find_boundary(buf: &[u8]) -> Option<usize> {
    // An event ends at the first blank line: "\n\n" or "\r\n\r\n" (or the mixed "\n\r\n").
    let mut i = 0;
    while i + 1 < buf.len() {
        if buf[i] == b'\n' {
            if buf[i + 1] == b'\n' {
                return Some(i + 2);
            }
            if buf[i + 1] == b'\r' && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

impl EventSplitter {
    pub fn push(&mut self, chunk: &[u8]) {
        if let Some(whole) = self.whole.take() {
            self.buf.extend_from_slice(&whole);
        }
        self.buf.extend_from_slice(chunk);
    }

    /// Like [`push`](Self::push), but keeps a chunk that is exactly one event without copying.
    pub fn push_bytes(&mut self, chunk: Bytes) {
        if self.buf.is_empty() && self.whole.is_none() && find_boundary(&chunk) == Some(chunk.len())
        {
            self.whole = Some(chunk);
        } else {
            self.push(&chunk);
        }
    }

    /// The next complete event, if one is buffered.
    pub fn next_event(&mut self) -> Option<Bytes> {
        if let Some(whole) = self.whole.take() {
            return Some(whole);
        }
        let end = find_boundary(&self.buf)?;
        Some(self.buf.split_to(end).freeze())
    }

    /// Whatever is left when the upstream ends (an unterminated last event).
    pub fn remainder(&mut self) -> Option<Bytes> {
        if let Some(whole) = self.whole.take() {
            self.buf.extend_from_slice(&whole);
        }
        (!self.buf.is_empty()).then(|| self.buf.split().freeze())
    }
}

/// What one event means to the gateway.
#[derive(Debug, PartialEq, Eq)]
pub enum EventKind {
    /// `data: [DONE]`
    Done,
    /// The usage-only chunk (`choices: []` and a usage object).
    UsageOnly(Usage),
    /// A normal chunk; may carry usage (some providers attach it to the last content chunk).
    Data(Option<Usage>),
}

fn data_payload(event: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in event.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(b"data:") {
            if !out.is_empty() {
                out.push(b'\n');
            }
            out.extend_from_slice(rest.strip_prefix(b" ").unwrap_or(rest));
        }
    }
    out
}

fn has_usage_object(event: &[u8]) -> bool {
    // Cheap pre-check so ordinary chunks (`"usage":null`) are not parsed.
    let needle = b"\"usage\"";
    let mut i = 0;
    while i + needle.len() <= event.len() {
        if &event[i..i + needle.len()] == needle {
            let rest = event[i + needle.len()..]
                .iter()
                .skip_while(|b| b.is_ascii_whitespace() || **b == b':');
            if rest.take(1).any(|b| *b == b'{') {
                return true;
            }
        }
        i += 1;
    }
    false
}

pub fn classify(event: &[u8]) -> EventKind {
    let payload = data_payload(event);
    if payload.trim_ascii() == b"[DONE]" {
        return EventKind::Done;
    }
    if !has_usage_object(&payload) {
        return EventKind::Data(None);
    }
    let Ok(v) = serde_json::from_slice::<Value>(&payload) else {
        return EventKind::Data(None);
    };
    let usage = Usage::from_json(&v);
    let no_choices = v
        .get("choices")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty);
    match usage {
        Some(u) if no_choices => EventKind::UsageOnly(u),
        u => EventKind::Data(u),
    }
}

/// Formats an SSE `error` event in the OpenAI error shape.
pub fn error_event(err: &crate::error::ApiError) -> Bytes {
    Bytes::from(format!("event: error\ndata: {}\n\n", err.body()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_events_across_arbitrary_chunk_boundaries() {
        let stream = b"data: {\"a\":1}\n\ndata: {\"b\":2}\r\n\r\ndata: [DONE]\n\n";
        for cut in 1..stream.len() {
            let mut s = EventSplitter::default();
            let mut events = Vec::new();
            s.push(&stream[..cut]);
            while let Some(e) = s.next_event() {
                events.push(e);
            }
            s.push(&stream[cut..]);
            while let Some(e) = s.next_event() {
                events.push(e);
            }
            assert_eq!(events.len(), 3, "cut at {cut}");
            assert_eq!(events.concat(), stream.to_vec());
            assert!(s.remainder().is_none());
        }
    }

    #[test]
    fn usage_from_body_validates_json() {
        let u = Usage::from_body(
            br#"{"id":"x","usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}"#,
        );
        assert_eq!(
            u.unwrap(),
            Some(Usage {
                prompt_tokens: 2,
                completion_tokens: 3
            })
        );
        assert_eq!(Usage::from_body(br#"{"data":[]}"#).unwrap(), None);
        assert!(Usage::from_body(b"<html>oops").is_err());
        assert!(Usage::from_body(b"[1,2]").is_err());
    }

    #[test]
    fn whole_event_chunks_pass_without_copying() {
        let mut s = EventSplitter::default();
        let chunk = Bytes::from_static(b"data: {\"a\":1}\n\n");
        s.push_bytes(chunk.clone());
        let ev = s.next_event().unwrap();
        assert_eq!(ev.as_ptr(), chunk.as_ptr());
        // A partial chunk after it is buffered and joined with the next one.
        s.push_bytes(Bytes::from_static(b"data: {\"b\""));
        assert!(s.next_event().is_none());
        s.push_bytes(Bytes::from_static(b":2}\n\ndata: [DONE]\n\n"));
        assert_eq!(&s.next_event().unwrap()[..], b"data: {\"b\":2}\n\n");
        assert_eq!(classify(&s.next_event().unwrap()), EventKind::Done);
        s.push_bytes(Bytes::from_static(b"data: [DONE]\n\n"));
        assert_eq!(&s.remainder().unwrap()[..], b"data: [DONE]\n\n");
    }

    #[test]
    fn classifies_usage_done_and_data() {
        assert_eq!(classify(b"data: [DONE]\n\n"), EventKind::Done);
        assert_eq!(
            classify(b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n"),
            EventKind::Data(None)
        );
        let usage = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":5,\"total_tokens\":8}}\n\n";
        assert_eq!(
            classify(usage),
            EventKind::UsageOnly(Usage {
                prompt_tokens: 3,
                completion_tokens: 5
            })
        );
        let last = b"data: {\"choices\":[{\"delta\":{}}],\"usage\": {\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n";
        assert_eq!(
            classify(last),
            EventKind::Data(Some(Usage {
                prompt_tokens: 1,
                completion_tokens: 2
            }))
        );
        assert_eq!(classify(b": keep-alive\n\n"), EventKind::Data(None));
    }
}
