//! The upstream hop of the proxy, on its own: [`client`], the HTTP/1.1 client (one per provider,
//! with its keep-alive pool), and [`sse`], which cuts a streamed body into whole events and reads
//! the upstream's reported token usage.
//!
//! It knows nothing of the gateway's HTTP server, store or limits: a failure is an
//! [`UpstreamFailure`], and the gateway decides what the client is told.

use bytes::Bytes;
use futures_util::stream::BoxStream;

pub mod client;
pub mod sse;

/// A streamed upstream body: pieces of data as they arrive, or why the stream broke.
pub type ByteStream = BoxStream<'static, Result<Bytes, UpstreamFailure>>;

/// Why an upstream call failed (low-cardinality; also the metrics outcome label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    Connect,
    Timeout,
    Broken,
}

impl UpstreamFailure {
    /// The metrics outcome label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Connect => "connect_error",
            Self::Timeout => "timeout",
            Self::Broken => "broken",
        }
    }
}
