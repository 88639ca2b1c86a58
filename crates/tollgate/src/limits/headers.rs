//! Rate-limit headers on every inference response: the OpenAI-style
//! `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (for the tightest per-minute limit of
//! each kind) and the IETF draft `RateLimit-Policy` / `RateLimit` structured fields (one item per
//! kind, quotas included).

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use super::{Check, CheckState, Dim};

/// The tightest state of one dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub limit: u64,
    pub remaining: u64,
    pub reset_ms: u64,
}

/// Header values computed at admission.
#[derive(Debug, Clone, Default)]
pub struct RateHeaders(Vec<(HeaderName, HeaderValue)>);

/// Go-style duration like OpenAI's (`"20ms"`, `"6s"`, `"1m30s"`, `"2h0m0s"`).
pub fn duration_text(ms: u64) -> String {
    let mut s = String::new();
    write_duration(&mut s, ms);
    s
}

fn write_duration(out: &mut String, ms: u64) {
    use std::fmt::Write;
    if ms < 1000 {
        let _ = write!(out, "{ms}ms");
        return;
    }
    let total_s = ms / 1000;
    let frac = ms % 1000;
    let (h, m, s) = (total_s / 3600, (total_s / 60) % 60, total_s % 60);
    if h > 0 {
        let _ = write!(out, "{h}h{m}m");
    } else if m > 0 {
        let _ = write!(out, "{m}m");
    }
    let _ = write!(out, "{s}");
    if frac != 0 {
        let mut f = frac;
        let mut digits = 3;
        while f.is_multiple_of(10) {
            f /= 10;
            digits -= 1;
        }
        let _ = write!(out, ".{f:0digits$}");
    }
    out.push('s');
}

fn policy_name(d: Dim) -> &'static str {
    match d {
        Dim::Requests => "requests",
        Dim::Tokens => "tokens",
        Dim::RequestsDay => "requests-day",
        Dim::TokensMonth => "tokens-month",
        Dim::Concurrent => "concurrent",
    }
}

fn window_secs(d: Dim, reset_ms: u64) -> u64 {
    match d {
        Dim::Requests | Dim::Tokens => 60,
        Dim::RequestsDay => 86_400,
        // The calendar month's length is what is left plus what is gone; report its nominal size.
        Dim::TokensMonth => 2_592_000.max(reset_ms / 1000),
        Dim::Concurrent => 0,
    }
}

/// The tightest window per reported dimension (requests, tokens, requests/day, tokens/month):
/// least remaining, then latest reset.
pub fn tightest(checks: &[Check], states: &[CheckState]) -> [Option<Window>; 4] {
    let mut out: [Option<Window>; 4] = [None; 4];
    for (c, s) in checks.iter().zip(states) {
        let slot = match c.dim {
            Dim::Concurrent => continue,
            d => d as usize,
        };
        let w = Window {
            limit: c.limit,
            remaining: s.remaining.min(c.limit),
            reset_ms: s.reset_ms,
        };
        match &mut out[slot] {
            Some(cur) => {
                if (w.remaining, std::cmp::Reverse(w.reset_ms))
                    < (cur.remaining, std::cmp::Reverse(cur.reset_ms))
                {
                    *cur = w;
                }
            }
            None => out[slot] = Some(w),
        }
    }
    out
}

const DIMS: [Dim; 4] = [
    Dim::Requests,
    Dim::Tokens,
    Dim::RequestsDay,
    Dim::TokensMonth,
];

impl RateHeaders {
    pub fn build(checks: &[Check], states: &[CheckState]) -> Self {
        use std::fmt::Write;
        let windows = tightest(checks, states);
        if windows.iter().all(Option::is_none) {
            return Self::default();
        }
        let mut h = Vec::with_capacity(8);
        let mut buf = String::with_capacity(128);
        let mut push = |name: &'static str, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                h.push((HeaderName::from_static(name), v));
            }
        };
        for (i, names) in [
            [
                "x-ratelimit-limit-requests",
                "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests",
            ],
            [
                "x-ratelimit-limit-tokens",
                "x-ratelimit-remaining-tokens",
                "x-ratelimit-reset-tokens",
            ],
        ]
        .iter()
        .enumerate()
        {
            let Some(w) = windows[i] else { continue };
            buf.clear();
            let _ = write!(buf, "{}", w.limit);
            push(names[0], &buf);
            buf.clear();
            let _ = write!(buf, "{}", w.remaining);
            push(names[1], &buf);
            buf.clear();
            write_duration(&mut buf, w.reset_ms);
            push(names[2], &buf);
        }
        buf.clear();
        for (d, w) in DIMS.iter().zip(windows.iter()) {
            let Some(w) = w else { continue };
            if !buf.is_empty() {
                buf.push_str(", ");
            }
            let _ = write!(
                buf,
                "\"{}\";q={};w={}",
                policy_name(*d),
                w.limit,
                window_secs(*d, w.reset_ms)
            );
        }
        push("ratelimit-policy", &buf);
        buf.clear();
        for (d, w) in DIMS.iter().zip(windows.iter()) {
            let Some(w) = w else { continue };
            if !buf.is_empty() {
                buf.push_str(", ");
            }
            let _ = write!(
                buf,
                "\"{}\";r={};t={}",
                policy_name(*d),
                w.remaining,
                w.reset_ms.div_ceil(1000)
            );
        }
        push("ratelimit", &buf);
        Self(h)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &(HeaderName, HeaderValue)> {
        self.0.iter()
    }

    /// Moves the headers into a response (no copies).
    pub fn apply(self, headers: &mut HeaderMap) {
        for (k, v) in self.0 {
            headers.insert(k, v);
        }
    }

    /// Hands the headers over (e.g. into an error).
    pub fn into_vec(self) -> Vec<(HeaderName, HeaderValue)> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_openai() {
        assert_eq!(duration_text(20), "20ms");
        assert_eq!(duration_text(6000), "6s");
        assert_eq!(duration_text(1500), "1.5s");
        assert_eq!(duration_text(90_000), "1m30s");
        assert_eq!(duration_text(7_200_000), "2h0m0s");
        assert_eq!(duration_text(61_050), "1m1.05s");
    }
}
