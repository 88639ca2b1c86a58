//! `--propagation N`: how long a revocation takes to reach another instance. Two Tollgate
//! instances share one PostgreSQL database (and, with `--redis-url`, one Redis). For each of N
//! keys: create it on A, use it on B (B caches it), then a prober sends `GET /v1/models` with
//! the key to B back to back while A revokes it. The latency is from A's `DELETE` answer
//! arriving to the arrival of B's first `401` to a probe sent after it — an upper bound on the
//! propagation (it includes up to one probe's round trip, ~0.1-0.5 ms here). Optionally B is
//! under chat load meanwhile (`--propagation-load C` connections).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;

use crate::load::{self, Bounds, Endpoint};
use crate::procs::{self, TempDir};

pub struct Options {
    pub revocations: usize,
    /// The instances' `invalidation_poll_ms` (their safety-net poll).
    pub poll_ms: u64,
    pub database_url: String,
    pub redis_url: Option<String>,
    pub load_connections: usize,
}

pub struct Outcome {
    pub latency_us: Histogram<u64>,
    /// The round trip of the probe that saw the `401` (part of `latency_us`: what B's load adds
    /// to any request, not to the propagation).
    pub probe_us: Histogram<u64>,
    pub load_requests: u64,
    pub load_errors: u64,
}

fn instance_config(opts: &Options, prefix: &str) -> String {
    // One deployment: the same secrets on every instance.
    let mut toml = format!(
        "database_url = {}\nsecret_key = {}\ninvalidation_poll_ms = {}\n",
        serde_json::Value::String(opts.database_url.clone()),
        serde_json::Value::String("ab".repeat(32)),
        opts.poll_ms,
    );
    if let Some(r) = &opts.redis_url {
        toml.push_str(&format!(
            "redis_url = {}\n",
            serde_json::Value::String(r.clone())
        ));
    }
    // Tables last: the extra text goes between the top-level keys and the first table.
    toml.push_str(&format!(
        "\n[limits]\nredis_prefix = {}\n\n[auth]\nsigning_key_secret = {}\n",
        serde_json::Value::String(prefix.to_string()),
        serde_json::Value::String(procs::token("bench-signing-secret")),
    ));
    toml
}

pub async fn run(
    opts: &Options,
    tollgate_bin: &std::path::Path,
    upstream_bin: &std::path::Path,
    workers: Option<usize>,
    client: &reqwest::Client,
) -> Result<Outcome> {
    if !(1..=10_000).contains(&opts.revocations) {
        bail!("--propagation must be 1..=10000");
    }
    if !opts.database_url.starts_with("postgres") {
        bail!(
            "--database-url must be a PostgreSQL URL (an empty database: the instances initialise it)"
        );
    }
    let tmp = TempDir::new()?;
    let upstream_key = procs::token("fake-upstream-key");
    let (_upstream, upstream_addr) =
        procs::start_fake_upstream(upstream_bin, &upstream_key, 20, tmp.path()).await?;
    let prefix = format!("{}:", procs::token("tgbench"));
    let extra = tmp.path().join("shared.toml");
    std::fs::write(&extra, instance_config(opts, &prefix))?;
    let mut started = Vec::new();
    let mut owner_key = String::new();
    for name in ["a", "b"] {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir)?;
        let setup = procs::TollgateSetup {
            bin: tollgate_bin,
            dir: &dir,
            upstream: &upstream_addr,
            upstream_key: &upstream_key,
            extra_config: Some(&extra),
            workers,
            init: name == "a",
        };
        let (proc, port, key) = procs::start_tollgate(setup, client)
            .await
            .with_context(|| format!("starting instance {name}"))?;
        if name == "a" {
            owner_key = key;
        }
        started.push((proc, port));
    }
    let (a, b) = (started[0].1, started[1].1);
    let base_a = format!("http://127.0.0.1:{a}");
    let base_b = format!("http://127.0.0.1:{b}");

    // Background load on B, for the whole measurement.
    let (stop_load, load_task) = if opts.load_connections > 0 {
        let ep = Endpoint {
            url: format!("{base_b}/v1/chat/completions"),
            token: owner_key.clone(),
        };
        let client = client.clone();
        let connections = opts.load_connections;
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut requests = 0;
            let mut errors = 0;
            loop {
                let bounds = Bounds {
                    connections,
                    max_requests: u64::MAX,
                    max_time: Duration::from_secs(2),
                };
                tokio::select! {
                    r = load::run_phase(&client, &ep, false, bounds) => {
                        if let Ok(r) = r {
                            requests += r.requests();
                            errors += r.errors;
                        }
                    }
                    _ = &mut rx => break,
                }
            }
            (requests, errors)
        });
        (Some(tx), Some(task))
    } else {
        (None, None)
    };

    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut probe_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for i in 0..opts.revocations {
        let created: serde_json::Value = client
            .post(format!("{base_a}/v1/api-keys"))
            .bearer_auth(&owner_key)
            .json(&serde_json::json!({"name": format!("propagation {i}")}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let id = created["id"].as_str().context("key id")?.to_string();
        let key = created["key"].as_str().context("key")?.to_string();
        let models_b = format!("{base_b}/v1/models");
        let probe = move |client: reqwest::Client, key: String| {
            let url = models_b.clone();
            async move {
                client
                    .get(url)
                    .bearer_auth(key)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            }
        };
        if probe(client.clone(), key.clone()).await? != 200 {
            bail!("instance B did not accept a fresh key");
        }
        // The prober: back-to-back probes, each stamped when its answer arrives.
        let (start_tx, start_rx) = tokio::sync::oneshot::channel::<Instant>();
        let prober = {
            let client = client.clone();
            let key = key.clone();
            let probe = probe.clone();
            tokio::spawn(async move {
                let mut revoked_at: Option<Instant> = None;
                let mut start_rx = Some(start_rx);
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    if revoked_at.is_none()
                        && let Some(rx) = start_rx.as_mut()
                        && let Ok(t) = rx.try_recv()
                    {
                        revoked_at = Some(t);
                        start_rx = None;
                    }
                    let sent = Instant::now();
                    let status = probe(client.clone(), key.clone()).await;
                    if let (Some(t), Ok(401)) = (revoked_at, &status)
                        && sent >= t
                    {
                        let now = Instant::now();
                        return Some((now.duration_since(t), now.duration_since(sent)));
                    }
                    if Instant::now() > deadline {
                        return None;
                    }
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        client
            .delete(format!("{base_a}/v1/api-keys/{id}"))
            .bearer_auth(&owner_key)
            .send()
            .await?
            .error_for_status()?;
        let _ = start_tx.send(Instant::now());
        match prober.await? {
            Some((d, rtt)) => {
                latency_us.record(d.as_micros().max(1) as u64)?;
                probe_us.record(rtt.as_micros().max(1) as u64)?;
            }
            None => bail!("revocation {i} did not reach instance B within 10 s"),
        }
    }
    let (load_requests, load_errors) = match (stop_load, load_task) {
        (Some(tx), Some(task)) => {
            let _ = tx.send(());
            task.await.unwrap_or((0, 0))
        }
        _ => (0, 0),
    };
    drop(started);
    Ok(Outcome {
        latency_us,
        probe_us,
        load_requests,
        load_errors,
    })
}
