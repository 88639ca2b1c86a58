//! `fake-upstream`: the fake OpenAI-compatible upstream as its own process (for benchmarks).
//!
//! Prints `listening ADDR` as its first stdout line, then serves until SIGINT or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use fake_upstream::{FakeConfig, FakeUpstream};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "A fake OpenAI-compatible upstream for Tollgate's tests and benchmarks"
)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Chunks per streamed chat completion (a request's `fake.chunks` overrides it).
    #[arg(long, default_value_t = 5)]
    chunks: usize,
    /// Pause between two stream chunks, in milliseconds.
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
    /// Require `Authorization: Bearer <KEY>`.
    #[arg(long, env = "FAKE_UPSTREAM_API_KEY")]
    api_key: Option<String>,
    /// Keep a log of every request in memory (off by default: it grows without bound).
    #[arg(long)]
    record: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = FakeConfig {
        api_key: args.api_key,
        default_chunks: args.chunks,
        chunk_delay_ms: args.chunk_delay_ms,
    };
    let server = match FakeUpstream::start_on(args.listen, cfg, args.record).await {
        Ok(server) => server,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "fake-upstream: cannot listen on {}: {e}",
                args.listen
            );
            return ExitCode::FAILURE;
        }
    };
    {
        let mut out = std::io::stdout().lock();
        if writeln!(out, "listening {}", server.addr)
            .and_then(|()| out.flush())
            .is_err()
        {
            return ExitCode::FAILURE;
        }
    }
    wait_for_signal().await;
    server.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
