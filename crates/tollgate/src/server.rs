//! The HTTP server loop: accepts connections and serves each one with hyper's HTTP/1.1
//! connection directly — the gateway speaks HTTP/1.1 (and SSE over it), so there is no protocol
//! sniffing and no upgrade machinery per connection. Every connection gets TCP_NODELAY, the peer
//! address as `ConnectInfo`, and a header read timeout, so a client that trickles its request
//! head (slowloris) or idles on a kept-alive connection is closed instead of holding a task and
//! a socket forever. On shutdown the listener closes, every connection finishes its in-flight
//! request (streams included) and closes, for up to the grace period.
//!
//! Closing is staged (RFC 9112 §9.6): when the server ends a connection after a response — a
//! `413` answered from `Content-Length` with the body unread, `Connection: close`, shutdown — it
//! half-closes (FIN), then keeps reading and discarding what the client still sends, for a
//! bounded time and amount ([`Lingering`]), and only then closes the socket. Closing at once
//! with unread data makes the kernel answer with a reset, which can destroy the response before
//! the client reads it: Node's fetch (and so the `openai` Node SDK) then sees `EPIPE` instead of
//! the `413`, and uploads the whole body again.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a client may take to send a request head (and how long a kept-alive connection may
/// sit idle before its next request).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a closing connection keeps reading (and discarding) what its client still sends.
pub const LINGER_TIME: Duration = Duration::from_secs(10);
/// A closing connection whose client sends nothing for this long is closed at once.
pub const LINGER_IDLE: Duration = Duration::from_secs(2);
/// At most this many bytes are read and discarded while closing (a 10 MB upload refused by a
/// `413` is read to its end; an endless one is not).
pub const LINGER_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// How long and how much a closing connection reads before it closes.
#[derive(Debug, Clone, Copy)]
pub struct Lingering {
    pub time: Duration,
    pub idle: Duration,
    pub max_bytes: u64,
}

impl Default for Lingering {
    fn default() -> Self {
        Self {
            time: LINGER_TIME,
            idle: LINGER_IDLE,
            max_bytes: LINGER_MAX_BYTES,
        }
    }
}

/// The client socket as hyper sees it. Reads, writes and flushes pass straight through; its
/// `poll_shutdown` (called by hyper when it ends the connection normally) sends FIN and then
/// lingers: reads and discards until the client closes its side, [`Lingering`]'s bounds are
/// reached, or the client resets. hyper drops (and so closes) the socket only after that.
/// Lingering also ends when the server shuts down (idle kept-alive connections must not hold
/// the shutdown up).
struct Conn {
    tcp: TcpStream,
    /// The client closed its side (a read returned end of file): nothing to linger for.
    eof: bool,
    linger: Lingering,
    shutdown: CancellationToken,
    closing: Option<Closing>,
}

struct Closing {
    deadline: Pin<Box<tokio::time::Sleep>>,
    idle: Pin<Box<tokio::time::Sleep>>,
    shutdown: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    discarded: u64,
}

impl Conn {
    fn new(tcp: TcpStream, linger: Lingering, shutdown: CancellationToken) -> Self {
        Self {
            tcp,
            eof: false,
            linger,
            shutdown,
            closing: None,
        }
    }

    /// Reads and discards until end of file, a read error, a bound or the server's shutdown.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let linger = self.linger;
        let shutdown = &self.shutdown;
        let closing = self.closing.get_or_insert_with(|| Closing {
            deadline: Box::pin(tokio::time::sleep(linger.time)),
            idle: Box::pin(tokio::time::sleep(linger.idle)),
            shutdown: Box::pin(shutdown.clone().cancelled_owned()),
            discarded: 0,
        });
        let mut scratch = [0u8; 8192];
        loop {
            if closing.discarded >= linger.max_bytes {
                return Poll::Ready(());
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.tcp).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {
                    closing.discarded += buf.filled().len() as u64;
                    let idle_until = tokio::time::Instant::now() + linger.idle;
                    closing.idle.as_mut().reset(idle_until);
                }
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => {
                    if closing.deadline.as_mut().poll(cx).is_ready()
                        || closing.idle.as_mut().poll(cx).is_ready()
                        || closing.shutdown.as_mut().poll(cx).is_ready()
                    {
                        return Poll::Ready(());
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let room = buf.remaining();
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.tcp).poll_read(cx, buf))?;
        if room > 0 && buf.filled().len() == before {
            self.eof = true;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.closing.is_none() {
            // FIN: the response is complete; the client may still be sending.
            ready!(Pin::new(&mut self.tcp).poll_shutdown(cx))?;
            if self.eof {
                return Poll::Ready(Ok(()));
            }
        }
        ready!(self.poll_linger(cx));
        Poll::Ready(Ok(()))
    }
}

/// After the grace, how long requests that were told to end (`grace_over`) get to do so before
/// their connections are dropped.
pub const CUT_WAIT: Duration = Duration::from_secs(2);

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets in-flight requests
/// finish for up to `grace`. A request head must arrive within `header_timeout`
/// ([`HEADER_READ_TIMEOUT`] in production).
///
/// When the grace ends with requests still in flight, `grace_over` is cancelled (the
/// application ends them: a stream gets a final error event and its usage record); what is left
/// after [`CUT_WAIT`] is dropped (a request's meter still records it as it drops). `serve`
/// returns only once no connection task is left, so whatever runs after it (the usage writer's
/// final flush) sees every request's record.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    grace: Duration,
    header_timeout: Duration,
    grace_over: CancellationToken,
) {
    serve_with(
        listener,
        router,
        shutdown,
        grace,
        header_timeout,
        Lingering::default(),
        grace_over,
    )
    .await;
}

/// [`serve`] with chosen bounds for closing connections.
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    grace: Duration,
    header_timeout: Duration,
    linger: Lingering,
    grace_over: CancellationToken,
) {
    let connections = TaskTracker::new();
    // Cancelled after `CUT_WAIT`: the connections still open are dropped.
    let drop_all = CancellationToken::new();
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (tcp, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let router = router.clone();
        let shutdown = shutdown.clone();
        let drop_all = drop_all.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(remote));
                let router = router.clone();
                async move {
                    Ok::<_, Infallible>(
                        match tower::ServiceExt::oneshot(router, req.map(Body::new)).await {
                            Ok(res) => res,
                            Err(never) => match never {},
                        },
                    )
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(
                    TokioIo::new(Conn::new(tcp, linger, shutdown.clone())),
                    service,
                );
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = shutdown.cancelled() => {
                    // Finish the request in flight (if any), then close.
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        r = conn.as_mut() => r,
                        // Dropped with its request: the request's meter records it.
                        () = drop_all.cancelled() => Ok(()),
                    }
                }
            };
            if let Err(e) = result {
                tracing::trace!(peer = %remote, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = connections.len(),
            "grace period over; ending the requests still in flight"
        );
        grace_over.cancel();
        if tokio::time::timeout(CUT_WAIT, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                connections = connections.len(),
                "closing the connections that did not end"
            );
            drop_all.cancel();
            connections.wait().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const HEAD_TIMEOUT: Duration = Duration::from_millis(300);

    async fn spawn(
        grace: Duration,
    ) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route(
            "/peer",
            axum::routing::get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                peer.to_string()
            }),
        );
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            router,
            shutdown.clone(),
            grace,
            HEAD_TIMEOUT,
            CancellationToken::new(),
        ));
        (addr, shutdown, task)
    }

    /// A server whose `/refuse` answers 413 without reading the body (as the body limit does).
    async fn spawn_refusing(
        linger: Lingering,
    ) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route(
            "/refuse",
            axum::routing::post(|| async {
                (
                    axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                    [(axum::http::header::CONNECTION, "close")],
                    "too large",
                )
            }),
        );
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve_with(
            listener,
            router,
            shutdown.clone(),
            Duration::from_secs(1),
            HEAD_TIMEOUT,
            linger,
            CancellationToken::new(),
        ));
        (addr, shutdown, task)
    }

    const UPLOAD_HEAD: &[u8] =
        b"POST /refuse HTTP/1.1\r\nhost: x\r\ncontent-length: 100000000\r\n\r\n";

    /// Reads until end of file (`Ok`) or a reset (`Err`), with what arrived.
    async fn read_all(tcp: &mut tokio::net::tcp::OwnedReadHalf) -> (Vec<u8>, bool) {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await {
                Ok(Ok(0)) => return (got, true),
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Ok(Err(_)) => return (got, false),
                Err(_) => panic!("never closed"),
            }
        }
    }

    #[tokio::test]
    async fn a_refused_upload_is_read_and_discarded_while_the_connection_closes() {
        let (addr, shutdown, task) = spawn_refusing(Lingering::default()).await;
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut rd, mut wr) = tcp.into_split();
        wr.write_all(UPLOAD_HEAD).await.unwrap();
        // The client keeps uploading 4 MiB after the answer was sent; every write succeeds.
        let chunk = vec![b'x'; 64 * 1024];
        for i in 0..64 {
            wr.write_all(&chunk)
                .await
                .unwrap_or_else(|e| panic!("write {i}: {e}"));
            if i % 8 == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        // Then it stops and reads: the whole answer, then the server's FIN.
        wr.shutdown().await.unwrap();
        let (got, clean) = read_all(&mut rd).await;
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
        assert!(text.ends_with("too large"), "{text}");
        assert!(clean, "closed, not reset");
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn closing_reads_within_its_bounds() {
        let linger = Lingering {
            time: Duration::from_secs(5),
            idle: Duration::from_millis(200),
            max_bytes: 1024 * 1024,
        };
        // Past `max_bytes` the connection is closed, though the client keeps sending.
        let (addr, shutdown, task) = spawn_refusing(linger).await;
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut rd, mut wr) = tcp.into_split();
        wr.write_all(UPLOAD_HEAD).await.unwrap();
        let writer = tokio::spawn(async move {
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0usize;
            while sent < 100_000_000 && wr.write_all(&chunk).await.is_ok() {
                sent += chunk.len();
            }
            sent
        });
        let (got, _) = read_all(&mut rd).await;
        assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 413"));
        let sent = tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("the upload was cut")
            .unwrap();
        assert!(
            (1024 * 1024..100_000_000).contains(&sent),
            "read about max_bytes, then closed: {sent}"
        );
        // A client that goes quiet is closed after `idle`.
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut rd, mut wr) = tcp.into_split();
        wr.write_all(UPLOAD_HEAD).await.unwrap();
        let started = std::time::Instant::now();
        let (got, _) = read_all(&mut rd).await;
        assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 413"));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "{took:?}");
        shutdown.cancel();
        task.await.unwrap();
        // The server's shutdown ends lingering too (long before its bounds).
        let (addr, shutdown, task) = spawn_refusing(Lingering {
            idle: Duration::from_secs(5),
            ..linger
        })
        .await;
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (_rd, mut wr) = tcp.into_split();
        wr.write_all(UPLOAD_HEAD).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        shutdown.cancel();
        tokio::time::timeout(Duration::from_millis(500), task)
            .await
            .unwrap()
            .unwrap();
        drop(wr);
    }

    #[tokio::test]
    async fn serves_keep_alive_requests_with_the_peer_address() {
        let (addr, shutdown, task) = spawn(Duration::from_secs(1)).await;
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let local = tcp.local_addr().unwrap();
        for _ in 0..2 {
            tcp.write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            let mut buf = vec![0u8; 1024];
            let n = tcp.read(&mut buf).await.unwrap();
            let text = String::from_utf8_lossy(&buf[..n]);
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            assert!(text.ends_with(&local.to_string()), "{text}");
        }
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_head_is_closed() {
        let (addr, shutdown, task) = spawn(Duration::from_secs(1)).await;
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /peer HTTP/1.1\r\nhost:").await.unwrap();
        // Past the header read timeout the server closes the connection (maybe after a 408).
        let mut buf = vec![0u8; 1024];
        let mut got = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the connection was closed");
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{text}"
        );
        // A shutdown with no request in flight is immediate.
        shutdown.cancel();
        tokio::time::timeout(Duration::from_millis(500), task)
            .await
            .unwrap()
            .unwrap();
    }
}
