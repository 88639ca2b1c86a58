//! Server-sent events: splitting a byte stream into events, and the typed chat stream on top.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::stream::{BoxStream, Stream, StreamExt};

use crate::error::{ApiError, Error};
use crate::types::ChatChunk;

/// One SSE event: its `event` field (empty for the default `message`) and joined `data` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub event: String,
    pub data: String,
}

/// Incremental SSE parser: feed bytes, take complete events.
#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
}

impl Parser {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete event, if the buffer holds one.
    pub fn next_event(&mut self) -> Option<Event> {
        loop {
            let (end, sep) = find_blank_line(&self.buf)?;
            let raw: Vec<u8> = self.buf.drain(..end + sep).collect();
            let text = String::from_utf8_lossy(&raw[..end]);
            let mut event = String::new();
            let mut data: Vec<&str> = Vec::new();
            for line in text.split('\n') {
                let line = line.strip_suffix('\r').unwrap_or(line);
                if line.is_empty() || line.starts_with(':') {
                    continue;
                }
                let (field, value) = match line.split_once(':') {
                    Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                    None => (line, ""),
                };
                match field {
                    "event" => event = value.to_string(),
                    "data" => data.push(value),
                    _ => {}
                }
            }
            if data.is_empty() && event.is_empty() {
                continue;
            }
            return Some(Event {
                event,
                data: data.join("\n"),
            });
        }
    }
}

/// Position of the first blank line (end of an event) and the length of its separator.
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some((i, 2));
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some((i, 3));
            }
        }
        i += 1;
    }
    None
}

/// A streamed chat answer: typed chunks, ending after `data: [DONE]`, or with an error when the
/// gateway cut the stream (an SSE `error` event, e.g. `AUTH_REVOKED` when the key was revoked
/// mid-stream) or the connection broke. Dropping it closes the connection.
pub struct ChatStream {
    inner: BoxStream<'static, Result<ChatChunk, Error>>,
    request_id: Option<String>,
}

impl std::fmt::Debug for ChatStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatStream")
            .field("request_id", &self.request_id)
            .finish_non_exhaustive()
    }
}

struct State {
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    parser: Parser,
    done: bool,
    request_id: Option<String>,
}

impl ChatStream {
    pub(crate) fn new(res: reqwest::Response) -> Self {
        let request_id = res
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let state = State {
            body: res.bytes_stream().boxed(),
            parser: Parser::default(),
            done: false,
            request_id: request_id.clone(),
        };
        let inner = futures_util::stream::unfold(state, |mut st| async move {
            if st.done {
                return None;
            }
            loop {
                if let Some(ev) = st.parser.next_event() {
                    match classify(ev, st.request_id.as_deref()) {
                        Next::Skip => continue,
                        Next::Done => return None,
                        Next::Item(item) => {
                            if item.is_err() {
                                st.done = true;
                            }
                            return Some((item, st));
                        }
                    }
                }
                match st.body.next().await {
                    Some(Ok(bytes)) => st.parser.push(&bytes),
                    Some(Err(e)) => {
                        st.done = true;
                        return Some((Err(Error::Transport(e)), st));
                    }
                    // The connection ended without [DONE]: whatever came is all there is.
                    None => return None,
                }
            }
        })
        .boxed();
        ChatStream { inner, request_id }
    }

    /// The response's `x-request-id`.
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }
}

enum Next {
    Skip,
    Done,
    Item(Result<ChatChunk, Error>),
}

fn classify(ev: Event, request_id: Option<&str>) -> Next {
    if ev.event == "error" {
        let mut e = ApiError::from_body(ev.data.as_bytes()).unwrap_or_else(|| ApiError {
            status: 0,
            code: String::new(),
            kind: String::new(),
            message: ev.data.clone(),
            param: None,
            request_id: None,
            retry_after: None,
            should_retry: None,
            in_stream: true,
        });
        e.in_stream = true;
        e.request_id = request_id.map(str::to_string);
        return Next::Item(Err(e.into()));
    }
    let data = ev.data.trim();
    if data == "[DONE]" {
        return Next::Done;
    }
    if data.is_empty() {
        return Next::Skip;
    }
    // A provider error relayed as a plain data event.
    if data.starts_with("{\"error\"")
        && let Some(mut e) = ApiError::from_body(data.as_bytes())
    {
        e.in_stream = true;
        e.request_id = request_id.map(str::to_string);
        return Next::Item(Err(e.into()));
    }
    Next::Item(serde_json::from_str::<ChatChunk>(data).map_err(|e| {
        Error::decode(
            format!("a stream event is not a chat chunk: {e}"),
            request_id.map(str::to_string),
        )
    }))
}

impl Stream for ChatStream {
    type Item = Result<ChatChunk, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_any_chunk_boundary() {
        let stream = b": comment\n\ndata: {\"a\":1}\n\nevent: error\r\ndata: {\"b\":\r\ndata: 2}\r\n\r\ndata: [DONE]\n\n";
        for cut in 1..stream.len() {
            let mut p = Parser::default();
            let mut got = Vec::new();
            p.push(&stream[..cut]);
            while let Some(e) = p.next_event() {
                got.push(e);
            }
            p.push(&stream[cut..]);
            while let Some(e) = p.next_event() {
                got.push(e);
            }
            assert_eq!(got.len(), 3, "cut at {cut}: {got:?}");
            assert_eq!(got[0].data, "{\"a\":1}");
            assert_eq!(got[1].event, "error");
            assert_eq!(got[1].data, "{\"b\":\n2}");
            assert_eq!(got[2].data, "[DONE]");
        }
    }

    #[test]
    fn an_error_event_is_a_typed_error() {
        let ev = Event {
            event: "error".into(),
            data: r#"{"error": {"message": "revoked", "type": "authentication_error", "code": "AUTH_REVOKED", "param": null}}"#.into(),
        };
        match classify(ev, Some("r1")) {
            Next::Item(Err(Error::Api(e))) => {
                assert_eq!(e.code(), crate::Code::AuthRevoked);
                assert_eq!(e.status, 401);
                assert!(e.in_stream);
                assert_eq!(e.request_id.as_deref(), Some("r1"));
            }
            _ => panic!("expected an API error"),
        }
    }
}
