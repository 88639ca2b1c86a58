//! The Markdown table and the JSON document.

use std::fmt::Write as _;

use serde_json::{Value, json};

pub struct Meta {
    pub label: String,
    /// The concurrency levels measured (each scenario is run at each).
    pub connections: Vec<usize>,
    pub requests: u64,
    pub seconds: f64,
    pub chunks: usize,
    pub cores: usize,
    /// Tollgate's runtime worker threads, when set.
    pub tollgate_workers: Option<usize>,
    /// Measured phases per target and scenario.
    pub rounds: usize,
}

/// One measured phase: a target under a scenario (or, after [`merge_rounds`], the medians of
/// its rounds).
#[derive(Clone)]
pub struct Row {
    pub target: &'static str,
    pub scenario: &'static str,
    pub requests: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
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
    if ratio.difference {
        return Some(n - d);
    }
    (d > 0.0).then(|| n / d)
}

/// A comparison reported per scenario: `metric(num) / metric(den)`, or with `difference`
/// `metric(num) - metric(den)`.
struct Ratio {
    name: &'static str,
    num: &'static str,
    den: &'static str,
    metric: fn(&Row) -> f64,
    difference: bool,
}

const RATIOS: [Ratio; 10] = [
    Ratio {
        name: "tollgate/nginx RPS",
        num: "tollgate",
        den: "nginx",
        metric: |r| r.rps,
        difference: false,
    },
    Ratio {
        name: "tollgate/direct RPS",
        num: "tollgate",
        den: "direct",
        metric: |r| r.rps,
        difference: false,
    },
    Ratio {
        name: "tollgate/nginx CPU per request",
        num: "tollgate",
        den: "nginx",
        metric: |r| r.proxy_cpu_us,
        difference: false,
    },
    Ratio {
        name: "tollgate/nginx p99",
        num: "tollgate",
        den: "nginx",
        metric: |r| r.p99_ms,
        difference: false,
    },
    Ratio {
        name: "tollgate added p50 µs over direct",
        num: "tollgate",
        den: "direct",
        metric: |r| r.p50_ms * 1000.0,
        difference: true,
    },
    Ratio {
        name: "tollgate added p90 µs over direct",
        num: "tollgate",
        den: "direct",
        metric: |r| r.p90_ms * 1000.0,
        difference: true,
    },
    Ratio {
        name: "tollgate added p99 µs over direct",
        num: "tollgate",
        den: "direct",
        metric: |r| r.p99_ms * 1000.0,
        difference: true,
    },
    Ratio {
        name: "nginx added p50 µs over direct",
        num: "nginx",
        den: "direct",
        metric: |r| r.p50_ms * 1000.0,
        difference: true,
    },
    Ratio {
        name: "nginx added p90 µs over direct",
        num: "nginx",
        den: "direct",
        metric: |r| r.p90_ms * 1000.0,
        difference: true,
    },
    Ratio {
        name: "nginx added p99 µs over direct",
        num: "nginx",
        den: "direct",
        metric: |r| r.p99_ms * 1000.0,
        difference: true,
    },
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One row per target and scenario: the median of each metric over its rounds (peak RSS: the
/// highest; requests, errors and seconds: the sums). Order of first appearance is kept.
pub fn merge_rounds(rows: Vec<Row>) -> Vec<Row> {
    let mut keys: Vec<(&'static str, &'static str)> = Vec::new();
    for r in &rows {
        if !keys.contains(&(r.scenario, r.target)) {
            keys.push((r.scenario, r.target));
        }
    }
    keys.into_iter()
        .filter_map(|(scenario, target)| {
            let group: Vec<&Row> = rows
                .iter()
                .filter(|r| r.scenario == scenario && r.target == target)
                .collect();
            let first = (*group.first()?).clone();
            let med = |f: fn(&Row) -> f64| median(group.iter().map(|r| f(r)).collect());
            Some(Row {
                requests: group.iter().map(|r| r.requests).sum(),
                errors: group.iter().map(|r| r.errors).sum(),
                first_error: group.iter().find_map(|r| r.first_error.clone()),
                seconds: group.iter().map(|r| r.seconds).sum(),
                rps: med(|r| r.rps),
                p50_ms: med(|r| r.p50_ms),
                p90_ms: med(|r| r.p90_ms),
                p99_ms: med(|r| r.p99_ms),
                proxy_cpu_us: med(|r| r.proxy_cpu_us),
                upstream_cpu_us: med(|r| r.upstream_cpu_us),
                rss_mib: group.iter().map(|r| r.rss_mib).fold(0.0, f64::max),
                ..first
            })
        })
        .collect()
}

/// A ratio as the table shows it: for tollgate/nginx RPS over several rounds, the median of the
/// paired per-round ratios (each round measures both targets back to back, so a neighbour that
/// slows the machine for a while moves both); otherwise the ratio of the medians.
fn headline(
    rows: &[Row],
    rounds: &[(&'static str, Vec<f64>)],
    scenario: &str,
    r: &Ratio,
) -> Option<f64> {
    if r.name == "tollgate/nginx RPS"
        && let Some((_, per_round)) = rounds.iter().find(|(sc, v)| *sc == scenario && v.len() > 1)
    {
        return Some(median(per_round.clone()));
    }
    ratio(rows, scenario, r)
}

/// Tollgate/nginx RPS of each round, per scenario (the spread behind the medians).
pub fn round_ratios(rows: &[Row]) -> Vec<(&'static str, Vec<f64>)> {
    scenarios(rows)
        .into_iter()
        .map(|sc| {
            let of = |t: &str| {
                rows.iter()
                    .filter(|r| r.scenario == sc && r.target == t)
                    .map(|r| r.rps)
                    .collect::<Vec<_>>()
            };
            let ratios = of("tollgate")
                .iter()
                .zip(of("nginx"))
                .filter(|(_, n)| *n > 0.0)
                .map(|(t, n)| t / n)
                .collect();
            (sc, ratios)
        })
        .filter(|(_, v): &(&str, Vec<f64>)| !v.is_empty())
        .collect()
}

fn scenarios(rows: &[Row]) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for r in rows {
        if !out.contains(&r.scenario) {
            out.push(r.scenario);
        }
    }
    out
}

pub fn markdown(meta: &Meta, rows: &[Row], rounds: &[(&'static str, Vec<f64>)]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## tollgate-bench: {}\n", meta.label);
    let _ = writeln!(
        s,
        "{} connections, at most {} requests / {} s per phase, streams of {} chunks, {} cores shared by client, proxy and upstream.\n",
        meta.connections
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(" / "),
        meta.requests,
        meta.seconds,
        meta.chunks,
        meta.cores
    );
    if let Some(n) = meta.tollgate_workers {
        let _ = writeln!(s, "Tollgate runs {n} runtime worker thread(s).\n");
    }
    if meta.rounds > 1 {
        let _ = writeln!(
            s,
            "{} rounds alternating between targets; each cell is the median of its rounds (peak RSS: the highest; requests: the sum); tollgate/nginx RPS is the median of the per-round ratios.\n",
            meta.rounds
        );
    }
    s.push_str("| target | scenario | requests | RPS | p50 ms | p90 ms | p99 ms | CPU µs/req | upstream CPU µs/req | peak RSS MiB | errors |\n");
    s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} | {} |",
            r.target,
            r.scenario,
            r.requests,
            r.rps,
            r.p50_ms,
            r.p90_ms,
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
            let cells: Vec<Option<f64>> = scenarios
                .iter()
                .map(|sc| headline(rows, rounds, sc, r))
                .collect();
            cells.iter().any(Option::is_some).then(|| {
                let cells: Vec<String> = cells
                    .iter()
                    .map(|c| {
                        c.map_or("–".to_owned(), |v| {
                            if r.difference {
                                format!("{v:.0}")
                            } else {
                                format!("{v:.2}")
                            }
                        })
                    })
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
    if meta.rounds > 1 {
        for (sc, ratios) in rounds {
            let cells: Vec<String> = ratios.iter().map(|v| format!("{v:.2}")).collect();
            let _ = writeln!(
                s,
                "\ntollgate/nginx RPS per round, {sc}: {}",
                cells.join(", ")
            );
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

pub fn json(meta: &Meta, rows: &[Row], rounds: &[(&'static str, Vec<f64>)]) -> Value {
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
                "p90_ms": r.p90_ms,
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
            if let Some(v) = headline(rows, rounds, sc, r) {
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
        "rounds": meta.rounds,
        "tollgate_nginx_rps_per_round": rounds.iter().map(|(sc, v)| (sc.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
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
            p90_ms: 1.5,
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
            connections: vec![1],
            requests: 100,
            seconds: 1.0,
            chunks: 20,
            cores: 2,
            tollgate_workers: Some(1),
            rounds: 1,
        };
        let mut direct = row("direct", 2000.0);
        direct.p50_ms = 0.9;
        let rows = [row("nginx", 1000.0), row("tollgate", 500.0)];
        let md = markdown(&meta, &rows, &[]);
        assert!(md.contains("| tollgate/nginx RPS | 0.50 |"), "{md}");
        assert!(!md.contains("added p50"), "{md}");
        let with_direct = [direct, row("nginx", 1000.0), row("tollgate", 500.0)];
        let md2 = markdown(&meta, &with_direct, &[]);
        assert!(
            md2.contains("| tollgate added p50 µs over direct | 100 |"),
            "{md2}"
        );
        assert!(!md.contains("tollgate/direct"), "{md}");
        assert!(
            md.contains("Tollgate runs 1 runtime worker thread(s)."),
            "{md}"
        );
        let json = json(&meta, &rows, &[]);
        assert_eq!(json["ratios"]["chat"]["tollgate/nginx RPS"], 0.5);
        assert_eq!(json["results"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn rounds_merge_into_medians() {
        let rows = vec![
            row("nginx", 1000.0),
            row("tollgate", 600.0),
            row("nginx", 2000.0),
            row("tollgate", 1400.0),
            row("nginx", 1500.0),
            row("tollgate", 900.0),
        ];
        let per_round = round_ratios(&rows);
        assert_eq!(per_round.len(), 1);
        assert_eq!(per_round[0].1, vec![0.6, 0.7, 0.6]);
        let meta = Meta {
            label: "t".into(),
            connections: vec![1],
            requests: 100,
            seconds: 1.0,
            chunks: 20,
            cores: 2,
            tollgate_workers: None,
            rounds: 3,
        };
        let md = markdown(&meta, &merge_rounds(rows.clone()), &per_round);
        assert!(md.contains("| tollgate/nginx RPS | 0.60 |"), "{md}");
        assert!(md.contains("per round, chat: 0.60, 0.70, 0.60"), "{md}");
        let merged = merge_rounds(rows);
        assert_eq!(merged.len(), 2);
        assert_eq!((merged[0].target, merged[0].rps), ("nginx", 1500.0));
        assert_eq!((merged[1].target, merged[1].rps), ("tollgate", 900.0));
        assert_eq!(merged[1].requests, 300);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
