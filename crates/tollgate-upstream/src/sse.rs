//! Server-sent-event pass-through. Upstream bytes are cut into whole events and forwarded as soon
//! as each event is complete — never the whole body. The usage chunk that the gateway asked for
//! (`stream_options.include_usage`) is read for metering and forwarded only if the client asked.

use std::borrow::Cow;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use serde_json::Value;

/// The most tokens one count of an upstream's usage report is taken to say; larger values are
/// cut to it. Reports are read as `u64`, but they are summed (prompt + completion, per minute,
/// per month) and stored as `i64`: at most 2^31 − 1 each (the largest value upstreams that read
/// a count as a 32-bit integer accept, and the ceiling admission puts on requested budgets), a
/// sum of billions of records still fits, and no real request comes near it.
pub const MAX_REPORTED_TOKENS: u64 = i32::MAX as u64;

/// An SSE event (or the unterminated rest of a stream) larger than this is an upstream protocol
/// error: the splitter holds an event until its end arrives, and no provider's event is near
/// this size.
pub const MAX_EVENT_BYTES: usize = 16 << 20;

/// Token counts reported by the upstream, each at most [`MAX_REPORTED_TOKENS`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// A `usage` object: chat and completions name its counts `prompt_tokens`/`completion_tokens`,
/// the Responses API `input_tokens`/`output_tokens`; the first pair wins when both are there.
#[derive(serde::Deserialize)]
struct UsageFields {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

impl UsageFields {
    fn counts(&self) -> TokenUsage {
        TokenUsage {
            prompt_tokens: self
                .prompt_tokens
                .or(self.input_tokens)
                .unwrap_or(0)
                .min(MAX_REPORTED_TOKENS),
            completion_tokens: self
                .completion_tokens
                .or(self.output_tokens)
                .unwrap_or(0)
                .min(MAX_REPORTED_TOKENS),
        }
    }
}

#[derive(serde::Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<UsageFields>,
}

impl TokenUsage {
    /// Validates that `body` is one JSON object and reads its `usage`, without building a tree
    /// of the whole response. `Err` when the body is not a JSON object.
    pub fn from_body(body: &[u8]) -> Result<Option<Self>, serde_json::Error> {
        let w: WithUsage = serde_json::from_slice(body)?;
        Ok(w.usage.map(|u| u.counts()))
    }

    pub fn from_json(v: &Value) -> Option<Self> {
        Self::from_usage(v.get("usage")?)
    }

    /// From the `usage` member itself: `None` unless it is an object.
    fn from_usage(u: &Value) -> Option<Self> {
        if !u.is_object() {
            return None;
        }
        let count = |name: &str, alt: &str| {
            u.get(name)
                .and_then(Value::as_u64)
                .or_else(|| u.get(alt).and_then(Value::as_u64))
                .unwrap_or(0)
                .min(MAX_REPORTED_TOKENS)
        };
        Some(Self {
            prompt_tokens: count("prompt_tokens", "input_tokens"),
            completion_tokens: count("completion_tokens", "output_tokens"),
        })
    }
}

/// Splits a byte stream into complete SSE events (each including its blank-line terminator).
/// Events are cut out of the upstream chunk without copying; only an event that spans two
/// chunks is copied (into `buf`), and its bytes are searched for the boundary once, not again
/// with every chunk that extends it.
#[derive(Default)]
pub struct EventSplitter {
    /// The start of an event whose end has not arrived yet. When not empty, `chunk` is empty.
    buf: BytesMut,
    /// How much of `buf` is known to hold no boundary that starts there.
    scanned: usize,
    /// The unconsumed rest of the last chunk (only while `buf` is empty).
    chunk: Bytes,
}

fn find_boundary(buf: &[u8]) -> Option<usize> {
    // An event ends at the first blank line: "\n\n" or "\r\n\r\n" (or the mixed "\n\r\n").
    for i in memchr::memchr_iter(b'\n', buf) {
        match buf.get(i + 1) {
            Some(b'\n') => return Some(i + 2),
            Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => return Some(i + 3),
            _ => {}
        }
    }
    None
}

impl EventSplitter {
    pub fn push(&mut self, chunk: &[u8]) {
        self.spill();
        self.buf.extend_from_slice(chunk);
    }

    /// Like [`push`](Self::push), but keeps the chunk's events without copying.
    pub fn push_bytes(&mut self, chunk: Bytes) {
        if self.buf.is_empty() && self.chunk.is_empty() {
            self.chunk = chunk;
        } else {
            self.push(&chunk);
        }
    }

    /// Moves the rest of the current chunk into `buf`.
    fn spill(&mut self) {
        if !self.chunk.is_empty() {
            self.buf.extend_from_slice(&self.chunk);
            self.chunk = Bytes::new();
        }
    }

    /// The next complete event, if one is buffered.
    pub fn next_event(&mut self) -> Option<Bytes> {
        if !self.chunk.is_empty() {
            if let Some(end) = find_boundary(&self.chunk) {
                return Some(self.chunk.split_to(end));
            }
            self.spill();
            self.scanned = self.buf.len().saturating_sub(2);
            return None;
        }
        // A boundary is at most 3 bytes: one that ends in new bytes starts at most 2 before.
        let Some(end) = find_boundary(&self.buf[self.scanned..]) else {
            self.scanned = self.buf.len().saturating_sub(2);
            return None;
        };
        let end = self.scanned + end;
        self.scanned = 0;
        Some(self.buf.split_to(end).freeze())
    }

    /// Bytes held that do not form a complete event yet (after [`next_event`](Self::next_event)
    /// returned `None`: the start of the next event). Compared with [`MAX_EVENT_BYTES`].
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.chunk.len()
    }

    /// Whatever is left when the upstream ends (an unterminated last event).
    pub fn remainder(&mut self) -> Option<Bytes> {
        self.spill();
        self.scanned = 0;
        (!self.buf.is_empty()).then(|| self.buf.split().freeze())
    }
}

/// What one event means to the gateway.
#[derive(Debug, PartialEq, Eq)]
pub enum EventKind {
    /// `data: [DONE]`
    Done,
    /// The usage-only chunk (`choices: []` and a usage object).
    UsageOnly(TokenUsage),
    /// A normal chunk; may carry usage (some providers attach it to the last content chunk).
    Data(Option<TokenUsage>),
}

/// The event's data: its `data:` lines joined by `\n`. Borrowed when there is one such line
/// (the usual case), so ordinary chunks are classified without allocating.
fn data_payload(event: &[u8]) -> Cow<'_, [u8]> {
    let mut out: Option<Cow<'_, [u8]>> = None;
    let mut start = 0;
    while start < event.len() {
        let end = memchr::memchr(b'\n', &event[start..]).map_or(event.len(), |i| start + i);
        let line = &event[start..end];
        start = end + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(b"data:") {
            let rest = rest.strip_prefix(b" ").unwrap_or(rest);
            out = Some(match out {
                None => Cow::Borrowed(rest),
                Some(prev) => {
                    let mut joined = prev.into_owned();
                    joined.push(b'\n');
                    joined.extend_from_slice(rest);
                    Cow::Owned(joined)
                }
            });
        }
    }
    out.unwrap_or(Cow::Borrowed(&[]))
}

fn has_usage_object(event: &[u8]) -> bool {
    // Cheap pre-check so ordinary chunks (`"usage":null`) are not parsed. The searcher is built
    // once: building it costs more than searching an event.
    static USAGE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"usage\""));
    let needle = USAGE.needle();
    USAGE.find_iter(event).any(|i| {
        event[i + needle.len()..]
            .iter()
            .find(|b| !(b.is_ascii_whitespace() || **b == b':'))
            == Some(&b'{')
    })
}

pub fn classify(event: &[u8]) -> EventKind {
    let payload = data_payload(event);
    if payload.trim_ascii() == b"[DONE]" {
        return EventKind::Done;
    }
    if !has_usage_object(&payload) {
        return EventKind::Data(None);
    }
    // Only `choices` and `usage` are read; the chunk's other members are skipped, not built.
    #[derive(serde::Deserialize)]
    struct UsageChunk {
        #[serde(default)]
        choices: Option<Value>,
        #[serde(default)]
        usage: Option<Value>,
    }
    if payload.trim_ascii_start().first() != Some(&b'{') {
        return EventKind::Data(None);
    }
    let Ok(chunk) = serde_json::from_slice::<UsageChunk>(&payload) else {
        return EventKind::Data(None);
    };
    let usage = chunk.usage.as_ref().and_then(TokenUsage::from_usage);
    let no_choices = chunk
        .choices
        .as_ref()
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty);
    match usage {
        Some(u) if no_choices => EventKind::UsageOnly(u),
        u => EventKind::Data(u),
    }
}

/// What one event of a Responses API stream (`POST /v1/responses`) means to the gateway.
#[derive(Debug, PartialEq, Eq)]
pub enum ResponseEvent {
    /// The stream's last event (`response.completed`, `response.incomplete` or
    /// `response.failed`), with the usage its `response` reports.
    End(Option<TokenUsage>),
    /// Any other event: output deltas, progress, items.
    Other,
}

/// The event types that end a Responses API stream.
const RESPONSE_END_TYPES: [&str; 3] = [
    "response.completed",
    "response.incomplete",
    "response.failed",
];

/// Classifies one event of a Responses API stream. Its data is only parsed when it names one of
/// the final event types, and then only `type` and `response.usage` are read.
pub fn classify_response(event: &[u8]) -> ResponseEvent {
    let payload = data_payload(event);
    let names_end = RESPONSE_END_TYPES
        .iter()
        .any(|t| memchr::memmem::find(&payload, t.as_bytes()).is_some());
    if !names_end || payload.trim_ascii_start().first() != Some(&b'{') {
        return ResponseEvent::Other;
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        #[serde(default)]
        usage: Option<Value>,
    }
    #[derive(serde::Deserialize)]
    struct Outer {
        #[serde(default, rename = "type")]
        kind: Option<String>,
        #[serde(default)]
        response: Option<Inner>,
    }
    let Ok(ev) = serde_json::from_slice::<Outer>(&payload) else {
        return ResponseEvent::Other;
    };
    match ev.kind.as_deref() {
        Some(t) if RESPONSE_END_TYPES.contains(&t) => ResponseEvent::End(
            ev.response
                .and_then(|r| r.usage)
                .as_ref()
                .and_then(TokenUsage::from_usage),
        ),
        _ => ResponseEvent::Other,
    }
}

/// Joins the frames a stream has ready *now* into one frame of at most about `max` bytes. It
/// never waits for more: a frame goes out as soon as the stream has nothing else ready, so
/// nothing is buffered, but a burst of events costs one body frame (one chunk, one write)
/// instead of one each.
pub fn coalesce<S, E>(inner: S, max: usize) -> Coalesce<S, E>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    Coalesce {
        inner: Box::pin(inner),
        max,
        error: None,
        done: false,
    }
}

pub struct Coalesce<S, E> {
    inner: Pin<Box<S>>,
    max: usize,
    /// An error that followed frames already joined: the next item.
    error: Option<E>,
    done: bool,
}

impl<S, E> Stream for Coalesce<S, E>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: Unpin,
{
    type Item = Result<Bytes, E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(e) = this.error.take() {
            return Poll::Ready(Some(Err(e)));
        }
        if this.done {
            return Poll::Ready(None);
        }
        let first = match this.inner.as_mut().poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                this.done = true;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        let mut joined: Option<BytesMut> = None;
        let mut len = first.len();
        while len < this.max {
            match this.inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    len += frame.len();
                    joined
                        .get_or_insert_with(|| {
                            let mut j = BytesMut::with_capacity(len.max(4096));
                            j.extend_from_slice(&first);
                            j
                        })
                        .extend_from_slice(&frame);
                }
                Poll::Ready(Some(Err(e))) => {
                    this.error = Some(e);
                    break;
                }
                Poll::Ready(None) => {
                    this.done = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        Poll::Ready(Some(Ok(joined.map_or(first, BytesMut::freeze))))
    }
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
    fn byte_by_byte_chunks_find_every_boundary_and_report_what_is_held() {
        let stream = b"data: a\n\n: x\r\n\r\ndata: b\n\r\ndata: tail";
        let mut s = EventSplitter::default();
        let mut events = Vec::new();
        for (i, b) in stream.iter().enumerate() {
            if i % 2 == 0 {
                s.push_bytes(Bytes::copy_from_slice(&[*b]));
            } else {
                s.push(&[*b]);
            }
            while let Some(e) = s.next_event() {
                events.push(e);
            }
        }
        assert_eq!(
            events,
            [&b"data: a\n\n"[..], b": x\r\n\r\n", b"data: b\n\r\n"]
        );
        assert_eq!(s.buffered(), b"data: tail".len());
        assert_eq!(&s.remainder().unwrap()[..], b"data: tail");
        assert_eq!(s.buffered(), 0);
    }

    #[test]
    fn reported_usage_is_capped() {
        let max = u64::MAX;
        let body = format!(r#"{{"usage":{{"prompt_tokens":{max},"completion_tokens":{max}}}}}"#);
        let capped = TokenUsage {
            prompt_tokens: MAX_REPORTED_TOKENS,
            completion_tokens: MAX_REPORTED_TOKENS,
        };
        assert_eq!(
            TokenUsage::from_body(body.as_bytes()).unwrap(),
            Some(capped)
        );
        let event = format!("data: {{\"choices\":[],{}\n\n", &body[1..]);
        assert_eq!(classify(event.as_bytes()), EventKind::UsageOnly(capped));
        // Summed and stored as i64 without overflow.
        assert!(i64::try_from(capped.prompt_tokens + capped.completion_tokens).is_ok());
    }

    #[test]
    fn responses_usage_and_the_final_event() {
        let body = br#"{"id":"resp_1","object":"response","usage":{"input_tokens":7,"output_tokens":3,"total_tokens":10}}"#;
        assert_eq!(
            TokenUsage::from_body(body).unwrap(),
            Some(TokenUsage {
                prompt_tokens: 7,
                completion_tokens: 3
            })
        );
        let done = b"event: response.completed\ndata: {\"type\":\"response.completed\",\"sequence_number\":9,\"response\":{\"id\":\"resp_1\",\"usage\":{\"input_tokens\":4,\"output_tokens\":2}}}\n\n";
        assert_eq!(
            classify_response(done),
            ResponseEvent::End(Some(TokenUsage {
                prompt_tokens: 4,
                completion_tokens: 2
            }))
        );
        let delta = b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"response.completed\"}\n\n";
        assert_eq!(classify_response(delta), ResponseEvent::Other);
        let failed = b"data: {\"type\":\"response.failed\",\"response\":{\"usage\":null}}\n\n";
        assert_eq!(classify_response(failed), ResponseEvent::End(None));
    }

    #[test]
    fn usage_from_body_validates_json() {
        let u = TokenUsage::from_body(
            br#"{"id":"x","usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}"#,
        );
        assert_eq!(
            u.unwrap(),
            Some(TokenUsage {
                prompt_tokens: 2,
                completion_tokens: 3
            })
        );
        assert_eq!(TokenUsage::from_body(br#"{"data":[]}"#).unwrap(), None);
        assert!(TokenUsage::from_body(b"<html>oops").is_err());
        assert!(TokenUsage::from_body(b"[1,2]").is_err());
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
    fn several_events_in_one_chunk_are_cut_without_copying() {
        let mut s = EventSplitter::default();
        let chunk = Bytes::from_static(b"data: 1\n\ndata: 2\r\n\r\ndata: 3\n\ndata: 4");
        s.push_bytes(chunk.clone());
        let a = s.next_event().unwrap();
        let b = s.next_event().unwrap();
        assert_eq!(a.as_ptr(), chunk.as_ptr());
        assert_eq!(&b[..], b"data: 2\r\n\r\n");
        assert_eq!(&s.next_event().unwrap()[..], b"data: 3\n\n");
        assert!(s.next_event().is_none());
        // The unterminated rest waits for the next chunk.
        s.push_bytes(Bytes::from_static(b"\n\ndata: 5\n\n"));
        assert_eq!(&s.next_event().unwrap()[..], b"data: 4\n\n");
        assert_eq!(&s.next_event().unwrap()[..], b"data: 5\n\n");
        assert!(s.remainder().is_none());
    }

    #[test]
    fn multi_line_data_is_joined() {
        assert_eq!(
            &data_payload(b"event: x\ndata: a\r\ndata:b\n\n")[..],
            b"a\nb"
        );
        let usage = b"data: {\"choices\":[],\ndata: \"usage\":\ndata: {\"prompt_tokens\":1}}\n\n";
        assert_eq!(
            classify(usage),
            EventKind::UsageOnly(TokenUsage {
                prompt_tokens: 1,
                completion_tokens: 0
            })
        );
    }

    /// A stream that plays a script; `Poll::Pending` entries are returned once each.
    struct Script(std::collections::VecDeque<Poll<Option<Result<Bytes, ()>>>>);

    impl Stream for Script {
        type Item = Result<Bytes, ()>;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.0.pop_front().unwrap_or(Poll::Ready(None))
        }
    }

    #[test]
    fn coalesce_joins_only_what_is_ready() {
        let ok = |s: &'static str| Poll::Ready(Some(Ok(Bytes::from(s))));
        let script = Script(
            [
                ok("ab"),
                ok("cd"),
                ok("ef"),
                Poll::Pending,
                Poll::Pending,
                ok("0123456"),
                ok("789"),
                ok("xyz"),
                Poll::Ready(Some(Err(()))),
            ]
            .into(),
        );
        let mut out = coalesce(script, 10);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut next = || Pin::new(&mut out).poll_next(&mut cx);
        assert_eq!(next(), Poll::Ready(Some(Ok(Bytes::from("abcdef")))));
        // Nothing ready: the stream waits instead of yielding an empty frame.
        assert_eq!(next(), Poll::Pending);
        // At most about `max` bytes per frame.
        assert_eq!(next(), Poll::Ready(Some(Ok(Bytes::from("0123456789")))));
        // An error after joined frames comes next, then the end.
        assert_eq!(next(), Poll::Ready(Some(Ok(Bytes::from("xyz")))));
        assert_eq!(next(), Poll::Ready(Some(Err(()))));
        assert_eq!(next(), Poll::Ready(None));
        assert_eq!(next(), Poll::Ready(None));
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
            EventKind::UsageOnly(TokenUsage {
                prompt_tokens: 3,
                completion_tokens: 5
            })
        );
        let last = b"data: {\"choices\":[{\"delta\":{}}],\"usage\": {\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n";
        assert_eq!(
            classify(last),
            EventKind::Data(Some(TokenUsage {
                prompt_tokens: 1,
                completion_tokens: 2
            }))
        );
        assert_eq!(classify(b": keep-alive\n\n"), EventKind::Data(None));
        // Odd shapes: not an object, usage not an object, choices not an array, bad JSON.
        assert_eq!(
            classify(b"data: [{\"usage\":{\"prompt_tokens\":1}}]\n\n"),
            EventKind::Data(None)
        );
        assert_eq!(
            classify(b"data: {\"choices\":null,\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":\"x\"}}\n\n"),
            EventKind::Data(Some(TokenUsage {
                prompt_tokens: 4,
                completion_tokens: 0
            }))
        );
        assert_eq!(
            classify(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}\n\n"),
            EventKind::Data(None)
        );
    }
}
