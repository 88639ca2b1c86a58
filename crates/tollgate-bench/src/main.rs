//! `tollgate-bench`: a bounded loopback benchmark of Tollgate side by side with nginx and with
//! the bare fake upstream. See README.md.

mod load;
mod procs;
mod propagation;
mod report;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};

use load::{Bounds, Endpoint};
use procs::{Proc, TempDir};
use report::Row;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TargetKind {
    Direct,
    Nginx,
    Tollgate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ScenarioKind {
    Chat,
    Stream,
}

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Bounded loopback benchmark: direct upstream vs nginx vs Tollgate"
)]
struct Args {
    /// Concurrent connections (one client, a pool of this size); a list measures each level
    /// (e.g. `1,32,128`: added latency at one connection, throughput at many).
    #[arg(long, value_delimiter = ',', default_value = "32")]
    connections: Vec<usize>,
    /// Request budget of each measured phase (per target and scenario).
    #[arg(long, default_value_t = 20_000)]
    requests: u64,
    /// Time budget of each measured phase, in seconds (at most 600).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Measured phases per target and scenario, alternating between targets; the report shows
    /// each metric's median over the rounds (a shared machine's neighbours move single runs).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Request budget of each warm-up phase.
    #[arg(long, default_value_t = 2_000)]
    warmup_requests: u64,
    /// Time budget of each warm-up phase, in seconds (at most 60).
    #[arg(long, default_value_t = 1.0)]
    warmup_seconds: f64,
    /// Chunks per streamed completion (the fake upstream's `--chunks`).
    #[arg(long, default_value_t = 20)]
    chunks: usize,
    /// Do not benchmark nginx.
    #[arg(long)]
    skip_nginx: bool,
    /// Benchmark only these targets (comma-separated, e.g. `direct,nginx`).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<TargetKind>,
    /// Run only these scenarios (comma-separated: `chat`, `stream`); default: both.
    #[arg(long, value_enum, value_delimiter = ',')]
    scenarios: Vec<ScenarioKind>,
    /// The `tollgate` binary (default: next to this one).
    #[arg(long)]
    tollgate_bin: Option<PathBuf>,
    /// The `fake-upstream` binary (default: next to this one).
    #[arg(long)]
    fake_upstream_bin: Option<PathBuf>,
    /// The nginx binary.
    #[arg(long, default_value = "nginx")]
    nginx_bin: PathBuf,
    /// Worker threads of Tollgate's runtime (`TOKIO_WORKER_THREADS`); default: one per core.
    /// `1` matches nginx's single worker process.
    #[arg(long)]
    tollgate_workers: Option<usize>,
    /// TOML appended to the generated Tollgate config (e.g. limits for a "limits on" run).
    #[arg(long)]
    tollgate_config_extra: Option<PathBuf>,
    /// A name for this run, carried into the report.
    #[arg(long, default_value = "bench")]
    label: String,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Instead of the throughput benchmark: measure how long N revocations take to reach a
    /// second instance (two instances on `--database-url`, and `--redis-url` if given).
    #[arg(long)]
    propagation: Option<usize>,
    /// PostgreSQL URL of an empty database, for `--propagation`.
    #[arg(long)]
    database_url: Option<String>,
    /// Redis URL, for `--propagation` (pub/sub on top of PostgreSQL NOTIFY).
    #[arg(long)]
    redis_url: Option<String>,
    /// Chat-load connections on the second instance during `--propagation` (0 = idle).
    #[arg(long, default_value_t = 0)]
    propagation_load: usize,
    /// The instances' safety-net poll during `--propagation` (`invalidation_poll_ms`); a long
    /// one shows what the push alone does.
    #[arg(long, default_value_t = 100)]
    propagation_poll_ms: u64,
}

impl Args {
    fn wants(&self, kind: TargetKind) -> bool {
        let selected = self.only.is_empty() || self.only.contains(&kind);
        selected && !(kind == TargetKind::Nginx && self.skip_nginx)
    }

    fn scenarios(&self) -> impl Iterator<Item = (&'static str, bool)> + '_ {
        SCENARIOS.into_iter().filter(|(_, stream)| {
            let kind = if *stream {
                ScenarioKind::Stream
            } else {
                ScenarioKind::Chat
            };
            self.scenarios.is_empty() || self.scenarios.contains(&kind)
        })
    }

    fn validate(&self) -> Result<()> {
        if self.connections.is_empty()
            || self.connections.len() > 8
            || self.connections.iter().any(|c| !(1..=1024).contains(c))
        {
            bail!("--connections must be 1 to 8 levels, each 1..=1024");
        }
        if !(1..=50).contains(&self.rounds) {
            bail!("--rounds must be 1..=50");
        }
        if self.requests == 0 {
            bail!("--requests must be at least 1");
        }
        if !(self.seconds > 0.0 && self.seconds <= 600.0) {
            bail!("--seconds must be in (0, 600]");
        }
        if !(0.0..=60.0).contains(&self.warmup_seconds) {
            bail!("--warmup-seconds must be in [0, 60]");
        }
        if !(1..=10_000).contains(&self.chunks) {
            bail!("--chunks must be 1..=10000");
        }
        Ok(())
    }
}

const SCENARIOS: [(&str, bool); 2] = [("chat", false), ("stream", true)];

/// A benchmarked endpoint and the process whose CPU and memory are charged to it.
struct Target {
    name: &'static str,
    endpoint: Endpoint,
    pid: u32,
    _proc: Option<Proc>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // Dropping `run` (on a signal) drops every child process handle, which stops the children.
    let result = tokio::select! {
        r = run(args) => r,
        () = shutdown_signal() => Err(anyhow::anyhow!("interrupted")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "tollgate-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
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

async fn run(args: Args) -> Result<()> {
    args.validate()?;
    let tmp = TempDir::new()?;
    let client = reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .no_proxy()
        .pool_max_idle_per_host(
            args.connections
                .iter()
                .copied()
                .max()
                .unwrap_or(1)
                .max(args.propagation_load + 4),
        )
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")?;
    if let Some(n) = args.propagation {
        return run_propagation(&args, n, &client).await;
    }

    let upstream_key = procs::token("fake-upstream-key");
    let upstream_bin = match &args.fake_upstream_bin {
        Some(bin) => bin.clone(),
        None => procs::sibling_binary("fake-upstream")?,
    };
    let (upstream, upstream_addr) =
        procs::start_fake_upstream(&upstream_bin, &upstream_key, args.chunks, tmp.path()).await?;
    log(&format!(
        "fake upstream on {upstream_addr} (pid {})",
        upstream.pid
    ));

    // Start every target first, so a misconfiguration fails before any time is spent measuring.
    let mut targets = Vec::new();
    if args.wants(TargetKind::Direct) {
        targets.push(Target {
            name: "direct",
            endpoint: Endpoint {
                url: format!("http://{upstream_addr}/v1/chat/completions"),
                token: upstream_key.clone(),
            },
            pid: upstream.pid,
            _proc: None,
        });
    }
    if args.wants(TargetKind::Nginx) {
        let dir = tmp.path().join("nginx");
        std::fs::create_dir_all(&dir)?;
        let token = procs::token("nginx-static-token");
        let (proc, port) =
            procs::start_nginx(&args.nginx_bin, &dir, &upstream_addr, &upstream_key, &token)
                .await?;
        log(&format!("nginx on 127.0.0.1:{port} (pid {})", proc.pid));
        targets.push(Target {
            name: "nginx",
            endpoint: Endpoint {
                url: format!("http://127.0.0.1:{port}/v1/chat/completions"),
                token,
            },
            pid: proc.pid,
            _proc: Some(proc),
        });
    }
    if args.wants(TargetKind::Tollgate) {
        let dir = tmp.path().join("tollgate");
        std::fs::create_dir_all(&dir)?;
        let bin = match &args.tollgate_bin {
            Some(bin) => bin.clone(),
            None => procs::sibling_binary("tollgate")?,
        };
        let setup = procs::TollgateSetup {
            bin: &bin,
            dir: &dir,
            upstream: &upstream_addr,
            upstream_key: &upstream_key,
            extra_config: args.tollgate_config_extra.as_deref(),
            workers: args.tollgate_workers,
            init: true,
        };
        let (proc, port, api_key) = procs::start_tollgate(setup, &client).await?;
        log(&format!("tollgate on 127.0.0.1:{port} (pid {})", proc.pid));
        targets.push(Target {
            name: "tollgate",
            endpoint: Endpoint {
                url: format!("http://127.0.0.1:{port}/v1/chat/completions"),
                token: api_key,
            },
            pid: proc.pid,
            _proc: Some(proc),
        });
    }
    if targets.is_empty() {
        bail!("no target selected (--skip-nginx together with --only nginx?)");
    }
    for t in &targets {
        for (scenario, stream) in SCENARIOS {
            load::one_request(&client, &t.endpoint, &load::chat_body(stream), stream)
                .await
                .with_context(|| format!("smoke request to {} ({scenario}) failed", t.name))?;
        }
    }

    let ticks = procs::clock_ticks_per_second();
    let mut rows = Vec::new();
    // Scenario and concurrency outermost: the targets compared in one cell run close together
    // in time.
    for (base, stream) in args.scenarios() {
        for &connections in &args.connections {
            // A label per (scenario, level), made once per run.
            let scenario: &'static str = if args.connections.len() == 1 {
                base
            } else {
                Box::leak(format!("{base} c={connections}").into_boxed_str())
            };
            for round in 1..=args.rounds {
                for t in &targets {
                    log(&format!(
                        "{} / {scenario} (round {round}/{}): warm-up, then measuring",
                        t.name, args.rounds
                    ));
                    let cell = Cell {
                        scenario,
                        stream,
                        connections,
                    };
                    let row = measure(&client, t, upstream.pid, cell, &args, ticks).await?;
                    log(&format!(
                        "  {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {:.1} µs CPU/req, {} errors",
                        row.rps, row.p50_ms, row.p99_ms, row.proxy_cpu_us, row.errors
                    ));
                    rows.push(row);
                }
            }
        }
    }

    let meta = report::Meta {
        label: args.label.clone(),
        connections: args.connections.clone(),
        requests: args.requests,
        seconds: args.seconds,
        chunks: args.chunks,
        cores: std::thread::available_parallelism().map_or(0, usize::from),
        tollgate_workers: args.tollgate_workers,
        rounds: args.rounds,
    };
    let rounds = report::round_ratios(&rows);
    let rows = report::merge_rounds(rows);
    let markdown = report::markdown(&meta, &rows, &rounds);
    {
        let mut out = std::io::stdout().lock();
        out.write_all(markdown.as_bytes())?;
        out.flush()?;
    }
    if let Some(path) = &args.out {
        let json = serde_json::to_string_pretty(&report::json(&meta, &rows, &rounds))?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    let errors: u64 = rows.iter().map(|r| r.errors).sum();
    if errors > 0 {
        log(&format!(
            "warning: {errors} requests failed (see the errors column)"
        ));
    }
    Ok(())
}

async fn run_propagation(args: &Args, n: usize, client: &reqwest::Client) -> Result<()> {
    let database_url = args
        .database_url
        .clone()
        .context("--propagation needs --database-url (an empty PostgreSQL database)")?;
    let tollgate_bin = match &args.tollgate_bin {
        Some(bin) => bin.clone(),
        None => procs::sibling_binary("tollgate")?,
    };
    let upstream_bin = match &args.fake_upstream_bin {
        Some(bin) => bin.clone(),
        None => procs::sibling_binary("fake-upstream")?,
    };
    let opts = propagation::Options {
        revocations: n,
        poll_ms: args.propagation_poll_ms,
        database_url,
        redis_url: args.redis_url.clone(),
        load_connections: args.propagation_load,
    };
    log(&format!(
        "propagation: {n} revocations, PostgreSQL{}, {}",
        if opts.redis_url.is_some() {
            " + Redis"
        } else {
            ""
        },
        if opts.load_connections > 0 {
            format!(
                "{} chat connections of load on instance B",
                opts.load_connections
            )
        } else {
            "idle".to_string()
        }
    ));
    let out = propagation::run(
        &opts,
        &tollgate_bin,
        &upstream_bin,
        args.tollgate_workers,
        client,
    )
    .await?;
    let h = &out.latency_us;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let probe = |q: f64| out.probe_us.value_at_quantile(q) as f64 / 1000.0;
    let line = format!(
        "| {} | {} | {} | {n} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} / {:.2} | {} |\n",
        args.label,
        if opts.redis_url.is_some() {
            "PostgreSQL + Redis"
        } else {
            "PostgreSQL"
        },
        if opts.load_connections > 0 {
            format!("{} connections", opts.load_connections)
        } else {
            "idle".into()
        },
        ms(0.5),
        ms(0.9),
        ms(0.99),
        h.max() as f64 / 1000.0,
        probe(0.5),
        probe(0.99),
        if out.load_requests > 0 {
            format!("{} ({} errors)", out.load_requests, out.load_errors)
        } else {
            "-".into()
        },
    );
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(
        b"| run | store | load on B | revocations | p50 ms | p90 ms | p99 ms | max ms | its probe's round trip p50 / p99 ms | load requests |\n|---|---|---|---|---|---|---|---|---|---|\n",
    )?;
    stdout.write_all(line.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// One measured cell: a scenario at a concurrency level.
#[derive(Clone, Copy)]
struct Cell {
    scenario: &'static str,
    stream: bool,
    connections: usize,
}

/// Warm-up, then one measured phase, with CPU and peak RSS of the target's process tree.
async fn measure(
    client: &reqwest::Client,
    target: &Target,
    upstream_pid: u32,
    cell: Cell,
    args: &Args,
    ticks_per_second: u64,
) -> Result<Row> {
    let Cell {
        scenario,
        stream,
        connections,
    } = cell;
    let warmup = Bounds {
        connections,
        max_requests: args.warmup_requests,
        max_time: Duration::from_secs_f64(args.warmup_seconds),
    };
    if args.warmup_requests > 0 && args.warmup_seconds > 0.0 {
        load::run_phase(client, &target.endpoint, stream, warmup).await?;
    }

    let proxy_pids = procs::tree(target.pid);
    let upstream_pids = procs::tree(upstream_pid);
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let sampler_pids = proxy_pids.clone();
    let sampler = tokio::spawn(async move {
        let mut peak = procs::rss_kib(&sampler_pids);
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                () = tokio::time::sleep(Duration::from_millis(50)) => {
                    peak = peak.max(procs::rss_kib(&sampler_pids));
                }
            }
        }
        peak
    });
    let proxy_before = procs::cpu_ticks(&proxy_pids);
    let upstream_before = procs::cpu_ticks(&upstream_pids);
    let bounds = Bounds {
        connections,
        max_requests: args.requests,
        max_time: Duration::from_secs_f64(args.seconds),
    };
    let result = load::run_phase(client, &target.endpoint, stream, bounds).await;
    let proxy_ticks = procs::cpu_ticks(&proxy_pids).saturating_sub(proxy_before);
    let upstream_ticks = procs::cpu_ticks(&upstream_pids).saturating_sub(upstream_before);
    let _ = stop.send(());
    let peak_kib = sampler.await.unwrap_or(0);
    let result = result?;

    let requests = result.requests();
    let per_request_us = |ticks: u64| {
        if requests == 0 {
            0.0
        } else {
            ticks as f64 * 1e6 / ticks_per_second as f64 / requests as f64
        }
    };
    let ms = |q: f64| result.latency_us.value_at_quantile(q) as f64 / 1000.0;
    Ok(Row {
        target: target.name,
        scenario,
        requests,
        errors: result.errors,
        first_error: result.first_error.clone(),
        seconds: result.elapsed.as_secs_f64(),
        rps: requests as f64 / result.elapsed.as_secs_f64().max(1e-9),
        p50_ms: ms(0.50),
        p90_ms: ms(0.90),
        p99_ms: ms(0.99),
        proxy_cpu_us: per_request_us(proxy_ticks),
        upstream_cpu_us: per_request_us(upstream_ticks),
        rss_mib: peak_kib as f64 / 1024.0,
    })
}

/// Progress goes to stderr; the report alone goes to stdout.
fn log(line: &str) {
    let _ = writeln!(std::io::stderr(), "tollgate-bench: {line}");
}
