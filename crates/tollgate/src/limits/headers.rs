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
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let total_s = ms / 1000;
    let frac = ms % 1000;
    let (h, m, s) = (total_s / 3600, (total_s / 60) % 60, total_s % 60);
    let secs = if frac == 0 {
        format!("{s}s")
    } else {
        let f = format!("{frac:03}");
        format!("{s}.{}s", f.trim_end_matches('0'))
    };
    if h > 0 {
        format!("{h}h{m}m{secs}")
    } else if m > 0 {
        format!("{m}m{secs}")
    } else {
        secs
    }
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

/// The tightest window per dimension: least remaining, then latest reset.
pub fn tightest(checks: &[Check], states: &[CheckState]) -> Vec<(Dim, Window)> {
    let mut out: Vec<(Dim, Window)> = Vec::new();
    for (c, s) in checks.iter().zip(states) {
        if c.dim == Dim::Concurrent {
            continue;
        }
        let w = Window {
            limit: c.limit,
            remaining: s.remaining.min(c.limit),
            reset_ms: s.reset_ms,
        };
        match out.iter_mut().find(|(d, _)| *d == c.dim) {
            Some((_, cur)) => {
                if (w.remaining, std::cmp::Reverse(w.reset_ms))
                    < (cur.remaining, std::cmp::Reverse(cur.reset_ms))
                {
                    *cur = w;
                }
            }
            None => out.push((c.dim, w)),
        }
    }
    out.sort_by_key(|(d, _)| *d as u8);
    out
}

impl RateHeaders {
    pub fn build(checks: &[Check], states: &[CheckState]) -> Self {
        let windows = tightest(checks, states);
        if windows.is_empty() {
            return Self::default();
        }
        let mut h = Vec::with_capacity(8);
        let mut push = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.push((HeaderName::from_static(name), v));
            }
        };
        for (dim, w) in &windows {
            let (l, r, t) = match dim {
                Dim::Requests => (
                    "x-ratelimit-limit-requests",
                    "x-ratelimit-remaining-requests",
                    "x-ratelimit-reset-requests",
                ),
                Dim::Tokens => (
                    "x-ratelimit-limit-tokens",
                    "x-ratelimit-remaining-tokens",
                    "x-ratelimit-reset-tokens",
                ),
                _ => continue,
            };
            push(l, w.limit.to_string());
            push(r, w.remaining.to_string());
            push(t, duration_text(w.reset_ms));
        }
        let policy: Vec<String> = windows
            .iter()
            .map(|(d, w)| {
                format!(
                    "\"{}\";q={};w={}",
                    policy_name(*d),
                    w.limit,
                    window_secs(*d, w.reset_ms)
                )
            })
            .collect();
        let state: Vec<String> = windows
            .iter()
            .map(|(d, w)| {
                format!(
                    "\"{}\";r={};t={}",
                    policy_name(*d),
                    w.remaining,
                    w.reset_ms.div_ceil(1000)
                )
            })
            .collect();
        push("ratelimit-policy", policy.join(", "));
        push("ratelimit", state.join(", "));
        Self(h)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &(HeaderName, HeaderValue)> {
        self.0.iter()
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for (k, v) in &self.0 {
            headers.insert(k.clone(), v.clone());
        }
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
    }
}
