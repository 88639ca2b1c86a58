//! Rate-limit headers on every inference response: the OpenAI-style
//! `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (for the tightest per-minute limit of
//! each kind) and the IETF draft `RateLimit-Policy` / `RateLimit` structured fields (one item per
//! kind, quotas included).

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::{Check, CheckState, Dim};

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
    let mut out = Vec::new();
    write_duration(&mut out, ms);
    String::from_utf8(out).unwrap_or_default()
}

fn write_num(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn write_duration(out: &mut Vec<u8>, ms: u64) {
    if ms < 1000 {
        write_num(out, ms);
        out.extend_from_slice(b"ms");
        return;
    }
    let total_s = ms / 1000;
    let frac = ms % 1000;
    let (h, m, s) = (total_s / 3600, (total_s / 60) % 60, total_s % 60);
    if h > 0 {
        write_num(out, h);
        out.push(b'h');
        write_num(out, m);
        out.push(b'm');
    } else if m > 0 {
        write_num(out, m);
        out.push(b'm');
    }
    write_num(out, s);
    if frac != 0 {
        // Three digits, trailing zeros dropped: 50 ms → ".05".
        let digits = [frac / 100, frac / 10 % 10, frac % 10];
        let keep = if frac.is_multiple_of(100) {
            1
        } else if frac.is_multiple_of(10) {
            2
        } else {
            3
        };
        out.push(b'.');
        out.extend(digits[..keep].iter().map(|d| b'0' + *d as u8));
    }
    out.push(b's');
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

/// Header names, built at compile time.
const WINDOW_NAMES: [[HeaderName; 3]; 2] = [
    [
        HeaderName::from_static("x-ratelimit-limit-requests"),
        HeaderName::from_static("x-ratelimit-remaining-requests"),
        HeaderName::from_static("x-ratelimit-reset-requests"),
    ],
    [
        HeaderName::from_static("x-ratelimit-limit-tokens"),
        HeaderName::from_static("x-ratelimit-remaining-tokens"),
        HeaderName::from_static("x-ratelimit-reset-tokens"),
    ],
];
const POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

impl RateHeaders {
    /// All values are written into one buffer and handed out as slices of it: one allocation
    /// for the whole set, names built at compile time.
    pub fn build(checks: &[Check], states: &[CheckState]) -> Self {
        let windows = tightest(checks, states);
        if windows.iter().all(Option::is_none) {
            return Self::default();
        }
        let mut buf: Vec<u8> = Vec::with_capacity(320);
        let mut spans: Vec<(HeaderName, std::ops::Range<usize>)> = Vec::with_capacity(8);
        for (i, names) in WINDOW_NAMES.iter().enumerate() {
            let Some(w) = windows[i] else { continue };
            let [limit, remaining, reset] = names.clone();
            let at = buf.len();
            write_num(&mut buf, w.limit);
            spans.push((limit, at..buf.len()));
            let at = buf.len();
            write_num(&mut buf, w.remaining);
            spans.push((remaining, at..buf.len()));
            let at = buf.len();
            write_duration(&mut buf, w.reset_ms);
            spans.push((reset, at..buf.len()));
        }
        // RateLimit-Policy: "requests";q=60;w=60, …  and  RateLimit: "requests";r=59;t=1, …
        for (name, policy) in [(POLICY, true), (RATELIMIT, false)] {
            let at = buf.len();
            for (d, w) in DIMS.iter().zip(windows.iter()) {
                let Some(w) = w else { continue };
                if buf.len() > at {
                    buf.extend_from_slice(b", ");
                }
                buf.push(b'"');
                buf.extend_from_slice(policy_name(*d).as_bytes());
                if policy {
                    buf.extend_from_slice(b"\";q=");
                    write_num(&mut buf, w.limit);
                    buf.extend_from_slice(b";w=");
                    write_num(&mut buf, window_secs(*d, w.reset_ms));
                } else {
                    buf.extend_from_slice(b"\";r=");
                    write_num(&mut buf, w.remaining);
                    buf.extend_from_slice(b";t=");
                    write_num(&mut buf, w.reset_ms.div_ceil(1000));
                }
            }
            spans.push((name, at..buf.len()));
        }
        let shared = bytes::Bytes::from(buf);
        Self(
            spans
                .into_iter()
                .filter_map(|(name, range)| {
                    HeaderValue::from_maybe_shared(shared.slice(range))
                        .ok()
                        .map(|v| (name, v))
                })
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &(HeaderName, HeaderValue)> {
        self.0.iter()
    }

    /// Moves the headers into a response (no copies).
    pub fn apply(self, headers: &mut HeaderMap) {
        headers.reserve(self.0.len());
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
        assert_eq!(duration_text(1_100), "1.1s");
        assert_eq!(duration_text(1_001), "1.001s");
        assert_eq!(duration_text(0), "0ms");
    }

    #[test]
    fn headers_for_the_tightest_windows() {
        use crate::{ScopeKind, ScopeRef};
        let scope = |id: &str| ScopeRef {
            kind: ScopeKind::Key,
            tenant_id: "ten_a".into(),
            id: id.into(),
        };
        let check = |dim, limit| Check {
            scope: scope("k"),
            dim,
            limit,
            cost: 1,
        };
        let state = |remaining, reset_ms| CheckState {
            remaining,
            reset_ms,
            period_start: 0,
        };
        let checks = [
            check(Dim::Requests, 60),
            check(Dim::Requests, 1000),
            check(Dim::Tokens, 40_000),
            check(Dim::RequestsDay, 1000),
            check(Dim::Concurrent, 4),
        ];
        let states = [
            state(59, 1000),
            state(999, 60),
            state(39_712, 432),
            state(999, 41_810_200),
            state(3, 0),
        ];
        let h = RateHeaders::build(&checks, &states);
        let got: Vec<(String, String)> = h
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        let want = [
            ("x-ratelimit-limit-requests", "60"),
            ("x-ratelimit-remaining-requests", "59"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-limit-tokens", "40000"),
            ("x-ratelimit-remaining-tokens", "39712"),
            ("x-ratelimit-reset-tokens", "432ms"),
            (
                "ratelimit-policy",
                "\"requests\";q=60;w=60, \"tokens\";q=40000;w=60, \"requests-day\";q=1000;w=86400",
            ),
            (
                "ratelimit",
                "\"requests\";r=59;t=1, \"tokens\";r=39712;t=1, \"requests-day\";r=999;t=41811",
            ),
        ];
        assert_eq!(
            got,
            want.map(|(k, v)| (k.to_string(), v.to_string())).to_vec()
        );
        assert!(RateHeaders::build(&checks[4..], &states[4..]).is_empty());
    }
}
