//! The Markdown table and the JSON document.

use std::fmt::Write as _;

use serde_json::{Value, json};

pub struct Meta {
    pub label: String,
    pub connections: usize,
    pub requests: u64,
    pub seconds: f64,
    pub chunks: usize,
    pub cores: usize,
    /// Tollgate's runtime worker threads, when set.
    pub tollgate_workers: Option<usize>,
}

/// One measured phase: a target under a scenario.
pub struct Row {
    pub target: &'static str,
    pub scenario: &'static str,
    pub requests: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// CPU time of the target's process tree per request (the upstream's own for `direct`).
    pub proxy_cpu_us: f64,
    /// CPU time of the fake upstream per request.
    pub upstream_cpu_us: f64,
    /// Peak resident memory of the target's process tree during the phase.
    pub rss_mib: f64,
}

/// One ratio for one scenario, if both targets were measured.
fn ratio(rows: &[Row], scenario: &str, ratio: &Ratio) -> Option<f64> {
    let find = |t: &str| {
        rows.iter()
            .find(|r| r.scenario == scenario && r.target == t)
    };
    let n = (ratio.metric)(find(ratio.num)?);
    let d = (ratio.metric)(find(ratio.den)?);
    (d > 0.0).then(|| n / d)
}

/// A ratio reported per scenario: `metric(num) / metric(den)`.
struct Ratio {
    name: &'static str,
    num: &'static str,
    den: &'static str,
    metric: fn(&Row) -> f64,
}

const RATIOS: [Ratio; 4] = [
    Ratio {
        name: "tollgate/nginx RPS",
        num: "tollgate",
        den: "nginx",
        metric: |r| r.rps,
    },
    Ratio {
        name: "tollgate/direct RPS",
        num: "tollgate",
        den: "direct",
        metric: |r| r.rps,
    },
    Ratio {
        name: "tollgate/nginx CPU per request",
        num: "tollgate",
        den: "nginx",
        metric: |r| r.proxy_cpu_us,
    },
    Ratio {
        name: "tollgate/nginx p99",
        num: "tollgate",
        den: "nginx",
        metric: |r| r.p99_ms,
    },
];

fn scenarios(rows: &[Row]) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for r in rows {
        if !out.contains(&r.scenario) {
            out.push(r.scenario);
        }
    }
    out
}

pub fn markdown(meta: &Meta, rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## tollgate-bench: {}\n", meta.label);
    let _ = writeln!(
        s,
        "{} connections, at most {} requests / {} s per phase, streams of {} chunks, {} cores shared by client, proxy and upstream.\n",
        meta.connections, meta.requests, meta.seconds, meta.chunks, meta.cores
    );
    if let Some(n) = meta.tollgate_workers {
        let _ = writeln!(s, "Tollgate runs {n} runtime worker thread(s).\n");
    }
    s.push_str("| target | scenario | requests | RPS | p50 ms | p99 ms | CPU µs/req | upstream CPU µs/req | peak RSS MiB | errors |\n");
    s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} | {} |",
            r.target,
            r.scenario,
            r.requests,
            r.rps,
            r.p50_ms,
            r.p99_ms,
            r.proxy_cpu_us,
            r.upstream_cpu_us,
            r.rss_mib,
            r.errors
        );
    }
    let scenarios = scenarios(rows);
    let ratio_lines: Vec<String> = RATIOS
        .iter()
        .filter_map(|r| {
            let cells: Vec<Option<f64>> = scenarios.iter().map(|sc| ratio(rows, sc, r)).collect();
            cells.iter().any(Option::is_some).then(|| {
                let cells: Vec<String> = cells
                    .iter()
                    .map(|c| c.map_or("–".to_owned(), |v| format!("{v:.2}")))
                    .collect();
                format!("| {} | {} |", r.name, cells.join(" | "))
            })
        })
        .collect();
    if !ratio_lines.is_empty() {
        let _ = writeln!(s, "\n| ratio | {} |", scenarios.join(" | "));
        let _ = writeln!(s, "|---|{}", "---:|".repeat(scenarios.len()));
        for line in ratio_lines {
            let _ = writeln!(s, "{line}");
        }
    }
    for r in rows.iter().filter(|r| r.errors > 0) {
        let _ = writeln!(
            s,
            "\n{} / {}: {} errors, first: {}",
            r.target,
            r.scenario,
            r.errors,
            r.first_error.as_deref().unwrap_or("?")
        );
    }
    s
}

pub fn json(meta: &Meta, rows: &[Row]) -> Value {
    let results: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "target": r.target,
                "scenario": r.scenario,
                "requests": r.requests,
                "errors": r.errors,
                "first_error": r.first_error,
                "seconds": r.seconds,
                "rps": r.rps,
                "p50_ms": r.p50_ms,
                "p99_ms": r.p99_ms,
                "cpu_us_per_request": r.proxy_cpu_us,
                "upstream_cpu_us_per_request": r.upstream_cpu_us,
                "peak_rss_mib": r.rss_mib,
            })
        })
        .collect();
    let mut ratios = serde_json::Map::new();
    for sc in scenarios(rows) {
        let mut per = serde_json::Map::new();
        for r in &RATIOS {
            if let Some(v) = ratio(rows, sc, r) {
                per.insert(r.name.to_owned(), json!(v));
            }
        }
        ratios.insert(sc.to_owned(), Value::Object(per));
    }
    let unix_time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({
        "label": meta.label,
        "unix_time": unix_time,
        "connections": meta.connections,
        "max_requests": meta.requests,
        "max_seconds": meta.seconds,
        "stream_chunks": meta.chunks,
        "cores": meta.cores,
        "tollgate_workers": meta.tollgate_workers,
        "results": results,
        "ratios": ratios,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(target: &'static str, rps: f64) -> Row {
        Row {
            target,
            scenario: "chat",
            requests: 100,
            errors: 0,
            first_error: None,
            seconds: 1.0,
            rps,
            p50_ms: 1.0,
            p99_ms: 2.0,
            proxy_cpu_us: rps / 100.0,
            upstream_cpu_us: 10.0,
            rss_mib: 5.0,
        }
    }

    #[test]
    fn ratios_appear_when_both_targets_ran() {
        let meta = Meta {
            label: "t".into(),
            connections: 1,
            requests: 100,
            seconds: 1.0,
            chunks: 20,
            cores: 2,
            tollgate_workers: Some(1),
        };
        let rows = [row("nginx", 1000.0), row("tollgate", 500.0)];
        let md = markdown(&meta, &rows);
        assert!(md.contains("| tollgate/nginx RPS | 0.50 |"), "{md}");
        assert!(!md.contains("tollgate/direct"), "{md}");
        assert!(
            md.contains("Tollgate runs 1 runtime worker thread(s)."),
            "{md}"
        );
        let json = json(&meta, &rows);
        assert_eq!(json["ratios"]["chat"]["tollgate/nginx RPS"], 0.5);
        assert_eq!(json["results"].as_array().map(Vec::len), Some(2));
    }
}
