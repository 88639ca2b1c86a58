//! The usage dashboard (`usage:read`): requests, errors, tokens and latency over time, by
//! minute, hour or day, grouped by key, model, user, end user or subscription, with the top
//! groups; the range and grouping in the URL; a CSV export of what is shown. The numbers are
//! the answer of `GET /v1/usage` for the same caller and parameters (the same function, so the
//! same scope: the whole tenant with `users:read` or `keys:admin`, else one's own usage).

use std::collections::HashMap;

use askama::Template;
use axum::extract::RawQuery;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::{Section, date, gate, query_map, sections};
use crate::auth::Permission;
use crate::console::Ctx;
use crate::error::ApiResult;

/// The dashboard's choices, as in the URL.
pub struct UsageView {
    pub range: String,
    pub granularity: String,
    pub group_by: String,
}

const RANGES: &[(&str, i64)] = &[
    ("1h", 3_600_000),
    ("24h", 86_400_000),
    ("7d", 7 * 86_400_000),
    ("30d", 30 * 86_400_000),
];
const GROUPS: &[&str] = &["api_key", "model", "user", "end_user", "subscription"];

impl UsageView {
    fn from_query(q: &HashMap<String, String>) -> Self {
        let range = q
            .get("range")
            .filter(|r| RANGES.iter().any(|(n, _)| n == r))
            .cloned()
            .unwrap_or_else(|| "24h".into());
        let default_granularity = match range.as_str() {
            "1h" => "minute",
            "7d" | "30d" => "day",
            _ => "hour",
        };
        let granularity = q
            .get("granularity")
            .filter(|g| ["minute", "hour", "day"].contains(&g.as_str()))
            .cloned()
            .unwrap_or_else(|| default_granularity.into());
        let group_by = q
            .get("group_by")
            .filter(|g| GROUPS.contains(&g.as_str()))
            .cloned()
            .unwrap_or_default();
        Self {
            range,
            granularity,
            group_by,
        }
    }

    /// The `/v1/usage` parameters of this view (times in Unix seconds).
    pub fn api_query(&self) -> HashMap<String, String> {
        let span = RANGES
            .iter()
            .find(|(n, _)| *n == self.range)
            .map_or(86_400_000, |(_, ms)| *ms);
        let to = crate::util::now_ms() + 1;
        let mut q = HashMap::new();
        q.insert("from".into(), ((to - span) / 1000).to_string());
        q.insert("granularity".into(), self.granularity.clone());
        if !self.group_by.is_empty() {
            q.insert("group_by".into(), self.group_by.clone());
        }
        q
    }

    fn query_string(&self) -> String {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        s.append_pair("range", &self.range)
            .append_pair("granularity", &self.granularity);
        if !self.group_by.is_empty() {
            s.append_pair("group_by", &self.group_by);
        }
        s.finish()
    }
}

fn num(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or(0.0)
}

/// One bucket of the totals (every group summed).
pub struct BucketRow {
    pub time: String,
    pub requests: u64,
    pub errors: u64,
    pub tokens: u64,
    pub latency: String,
}

pub struct GroupRow {
    pub group: String,
    pub requests: u64,
    pub errors: u64,
    pub tokens: u64,
    pub latency: String,
}

#[derive(Template)]
#[template(path = "admin/usage.html")]
struct UsagePage {
    l: crate::console::Layout,
    nav: Vec<Section>,
    view: UsageView,
    scope: String,
    csv: String,
    buckets: Vec<BucketRow>,
    top: Vec<GroupRow>,
    x: String,
    requests: String,
    errors: String,
    tokens: String,
    latency: String,
    uplot_css: String,
    uplot_js: String,
    chart_js: String,
}

struct Totals {
    requests: f64,
    errors: f64,
    tokens: f64,
    latency_sum: f64,
}

impl Totals {
    fn add(&mut self, v: &Value) {
        let r = num(v, "requests");
        self.requests += r;
        self.errors += num(v, "errors");
        self.tokens += num(v, "total_tokens");
        self.latency_sum += num(v, "avg_latency_ms") * r;
    }
    fn latency(&self) -> String {
        if self.requests > 0.0 {
            format!("{:.1}", self.latency_sum / self.requests)
        } else {
            "—".into()
        }
    }
}

const ZERO: Totals = Totals {
    requests: 0.0,
    errors: 0.0,
    tokens: 0.0,
    latency_sum: 0.0,
};

/// `GET /console/admin/usage?range&granularity&group_by`.
pub async fn dashboard(ctx: Ctx, RawQuery(query): RawQuery) -> Response {
    let s = match gate(&ctx, &[Permission::UsageRead], "The usage dashboard") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let view = UsageView::from_query(&query_map(query.as_deref()));
    let answer = match crate::usage::api::usage(&ctx.state, &s.caller(), &view.api_query()).await {
        Ok(a) => a,
        Err(e) => return ctx.error(&e),
    };
    let data = answer["data"].as_array().cloned().unwrap_or_default();
    // Totals per bucket, in time order.
    let mut by_time: Vec<(String, Totals)> = Vec::new();
    let mut by_group: HashMap<String, Totals> = HashMap::new();
    for b in &data {
        let start = b["start_time"].as_str().unwrap_or_default().to_string();
        match by_time.iter_mut().find(|(t, _)| *t == start) {
            Some((_, t)) => t.add(b),
            None => {
                let mut t = ZERO;
                t.add(b);
                by_time.push((start, t));
            }
        }
        if !view.group_by.is_empty() {
            let g = b[view.group_by.as_str()]
                .as_str()
                .unwrap_or("(none)")
                .to_string();
            by_group.entry(g).or_insert(ZERO).add(b);
        }
    }
    by_time.sort_by(|a, b| a.0.cmp(&b.0));
    let secs = |t: &str| {
        crate::util::parse_rfc3339(t)
            .map(|ms| (ms / 1000).to_string())
            .unwrap_or_default()
    };
    let join = |f: &dyn Fn(&(String, Totals)) -> String| {
        by_time.iter().map(f).collect::<Vec<_>>().join(",")
    };
    let mut top: Vec<GroupRow> = by_group
        .into_iter()
        .map(|(group, t)| GroupRow {
            latency: t.latency(),
            requests: t.requests as u64,
            errors: t.errors as u64,
            tokens: t.tokens as u64,
            group,
        })
        .collect();
    top.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.group.cmp(&b.group)));
    top.truncate(20);
    let page = UsagePage {
        l: ctx.layout("Usage"),
        nav: sections(s, "/console/admin/usage"),
        scope: if answer["scope"] == "tenant" {
            "the whole tenant".into()
        } else {
            "your own requests".into()
        },
        csv: format!("/console/admin/usage.csv?{}", view.query_string()),
        x: join(&|(t, _)| secs(t)),
        requests: join(&|(_, v)| (v.requests as u64).to_string()),
        errors: join(&|(_, v)| (v.errors as u64).to_string()),
        tokens: join(&|(_, v)| (v.tokens as u64).to_string()),
        latency: join(&|(_, v)| {
            if v.requests > 0.0 {
                format!("{:.1}", v.latency_sum / v.requests)
            } else {
                "0".into()
            }
        }),
        buckets: by_time
            .iter()
            .map(|(t, v)| BucketRow {
                time: crate::util::parse_rfc3339(t).map(date).unwrap_or_default(),
                requests: v.requests as u64,
                errors: v.errors as u64,
                tokens: v.tokens as u64,
                latency: v.latency(),
            })
            .collect(),
        top,
        view,
        uplot_css: crate::console::assets::url("uplot-1.6.32.min.css"),
        uplot_js: crate::console::assets::url("uplot-1.6.32.iife.min.js"),
        chart_js: crate::console::assets::url("chart.js"),
    };
    ctx.html(StatusCode::OK, &page)
}

/// A CSV field: quoted when it holds a comma, quote or line break; a leading `= + - @` is
/// prefixed with `'` so a spreadsheet does not run it as a formula.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// The rows of `GET /v1/usage` for `view`, as CSV.
async fn csv(ctx: &Ctx, view: &UsageView) -> ApiResult<String> {
    let s = ctx
        .session
        .as_ref()
        .ok_or_else(crate::error::ApiError::auth_missing)?;
    let answer = crate::usage::api::usage(&ctx.state, &s.caller(), &view.api_query()).await?;
    let mut cols = vec!["start_time", "end_time"];
    if !view.group_by.is_empty() {
        cols.push(view.group_by.as_str());
    }
    cols.extend([
        "requests",
        "errors",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "avg_latency_ms",
    ]);
    let mut out = cols.join(",");
    out.push_str("\r\n");
    for b in answer["data"].as_array().into_iter().flatten() {
        let line: Vec<String> = cols
            .iter()
            .map(|c| match &b[*c] {
                Value::String(s) => csv_field(s),
                Value::Null => String::new(),
                other => other.to_string(),
            })
            .collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    Ok(out)
}

/// `GET /console/admin/usage.csv?range&granularity&group_by`: what the dashboard shows.
pub async fn export(ctx: Ctx, RawQuery(query): RawQuery) -> Response {
    if let Err(r) = gate(&ctx, &[Permission::UsageRead], "The usage dashboard") {
        return *r;
    }
    let view = UsageView::from_query(&query_map(query.as_deref()));
    match csv(&ctx, &view).await {
        Ok(body) => {
            let mut res = (StatusCode::OK, body).into_response();
            let h = res.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            );
            h.insert(
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"tollgate-usage.csv\""),
            );
            ctx.finish(res)
        }
        Err(e) => ctx.error(&e),
    }
}
