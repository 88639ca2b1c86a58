//! The HTTP server loop: accepts connections and serves each one with hyper's HTTP/1.1
//! connection directly — the gateway speaks HTTP/1.1 (and SSE over it), so there is no protocol
//! sniffing and no upgrade machinery per connection. Every connection gets TCP_NODELAY, the peer
//! address as `ConnectInfo`, and a header read timeout, so a client that trickles its request
//! head (slowloris) or idles on a kept-alive connection is closed instead of holding a task and
//! a socket forever. On shutdown the listener closes, every connection finishes its in-flight
//! request (streams included) and closes, for up to the grace period.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a client may take to send a request head (and how long a kept-alive connection may
/// sit idle before its next request).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets in-flight requests
/// finish for up to `grace`. A request head must arrive within `header_timeout`
/// ([`HEADER_READ_TIMEOUT`] in production).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    grace: Duration,
    header_timeout: Duration,
) {
    let connections = TaskTracker::new();
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
                .serve_connection(TokioIo::new(tcp), service);
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = shutdown.cancelled() => {
                    // Finish the request in flight (if any), then close.
                    conn.as_mut().graceful_shutdown();
                    conn.await
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
        tracing::warn!("grace period over; closing remaining connections");
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
        ));
        (addr, shutdown, task)
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
