//! The load generator: C concurrent workers sharing a request budget and a deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use reqwest::Client;
use reqwest::header::CONTENT_TYPE;
use tokio::task::JoinSet;

/// Where requests go and with which bearer token.
#[derive(Clone)]
pub struct Endpoint {
    pub url: String,
    pub token: String,
}

/// One phase's bounds.
#[derive(Clone, Copy)]
pub struct Bounds {
    pub connections: usize,
    pub max_requests: u64,
    pub max_time: Duration,
}

pub struct PhaseResult {
    /// Latencies of successful requests, in microseconds.
    pub latency_us: Histogram<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
}

impl PhaseResult {
    pub fn requests(&self) -> u64 {
        self.latency_us.len() + self.errors
    }
}

/// The request body for a scenario.
pub fn chat_body(stream: bool) -> Bytes {
    let mut body = serde_json::json!({
        "model": "bench-model",
        "messages": [{"role": "user", "content": "hello"}],
    });
    if stream {
        body["stream"] = serde_json::Value::Bool(true);
    }
    Bytes::from(body.to_string())
}

/// Sends one request and reads the whole body; `Err` for transport errors, non-2xx, or a stream
/// that does not end with `[DONE]`.
pub async fn one_request(client: &Client, ep: &Endpoint, body: &Bytes, stream: bool) -> Result<()> {
    let resp = client
        .post(&ep.url)
        .bearer_auth(&ep.token)
        .header(CONTENT_TYPE, "application/json")
        .body(body.clone())
        .send()
        .await?;
    let status = resp.status();
    let bytes = resp.bytes().await?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&bytes);
        bail!(
            "HTTP {status}: {}",
            text.chars().take(300).collect::<String>()
        );
    }
    if stream && !bytes.ends_with(b"data: [DONE]\n\n") {
        bail!(
            "stream did not end with `data: [DONE]` ({} bytes)",
            bytes.len()
        );
    }
    Ok(())
}

/// Runs `bounds.connections` workers until `max_requests` were issued or `max_time` passed.
/// Requests in flight at the deadline are finished (each bounded by the client's timeout).
pub async fn run_phase(
    client: &Client,
    ep: &Endpoint,
    stream: bool,
    bounds: Bounds,
) -> Result<PhaseResult> {
    let body = chat_body(stream);
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + bounds.max_time;
    let mut workers = JoinSet::new();
    for _ in 0..bounds.connections {
        let (client, ep, body, issued) = (client.clone(), ep.clone(), body.clone(), issued.clone());
        workers.spawn(async move {
            let mut hist = new_histogram()?;
            let (mut errors, mut first_error) = (0u64, None);
            while Instant::now() < deadline
                && issued.fetch_add(1, Ordering::Relaxed) < bounds.max_requests
            {
                let t0 = Instant::now();
                match one_request(&client, &ep, &body, stream).await {
                    Ok(()) => {
                        let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
                        hist.saturating_record(us.max(1));
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            anyhow::Ok((hist, errors, first_error))
        });
    }

    let mut result = PhaseResult {
        latency_us: new_histogram()?,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
    };
    // Hard stop: the deadline plus the client's request timeout, plus slack.
    let hard_stop = tokio::time::Instant::from_std(deadline + Duration::from_secs(40));
    loop {
        let joined = tokio::time::timeout_at(hard_stop, workers.join_next()).await;
        let Ok(next) = joined else {
            workers.abort_all();
            bail!("load workers did not stop in time");
        };
        let Some(outcome) = next else { break };
        let (hist, errors, first_error) = outcome??;
        result
            .latency_us
            .add(&hist)
            .map_err(|e| anyhow!("merging histograms: {e:?}"))?;
        result.errors += errors;
        if result.first_error.is_none() {
            result.first_error = first_error;
        }
    }
    result.elapsed = start.elapsed();
    Ok(result)
}

fn new_histogram() -> Result<Histogram<u64>> {
    // 1 µs .. 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).map_err(|e| anyhow!("histogram: {e:?}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use fake_upstream::{FakeConfig, FakeUpstream};

    async fn setup() -> (FakeUpstream, Client, Endpoint) {
        let up = FakeUpstream::start_with(FakeConfig {
            api_key: Some("k".into()),
            ..FakeConfig::default()
        })
        .await
        .unwrap();
        let client = Client::builder().http1_only().no_proxy().build().unwrap();
        let ep = Endpoint {
            url: format!("{}/chat/completions", up.base_url()),
            token: "k".into(),
        };
        (up, client, ep)
    }

    #[tokio::test]
    async fn a_phase_stops_at_its_request_budget() {
        let (up, client, ep) = setup().await;
        let bounds = Bounds {
            connections: 4,
            max_requests: 50,
            max_time: Duration::from_secs(30),
        };
        for stream in [false, true] {
            let r = run_phase(&client, &ep, stream, bounds).await.unwrap();
            assert_eq!((r.requests(), r.errors), (50, 0), "{:?}", r.first_error);
            assert!(r.latency_us.value_at_quantile(0.5) > 0);
        }
        assert_eq!(up.completed(), 100);
    }

    #[tokio::test]
    async fn a_phase_stops_at_its_deadline() {
        let (_up, client, ep) = setup().await;
        let bounds = Bounds {
            connections: 2,
            max_requests: u64::MAX,
            max_time: Duration::from_millis(200),
        };
        let r = run_phase(&client, &ep, false, bounds).await.unwrap();
        assert!(r.requests() > 0);
        assert!(r.elapsed < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn non_2xx_and_cut_streams_are_errors() {
        let (_up, client, mut ep) = setup().await;
        ep.token = "wrong".into();
        let err = one_request(&client, &ep, &chat_body(false), false)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("401"), "{err}");
        ep.token = "k".into();
        let cut =
            Bytes::from(r#"{"model":"m","messages":[],"stream":true,"fake":{"drop_after":2}}"#);
        assert!(one_request(&client, &ep, &cut, true).await.is_err());
    }
}
