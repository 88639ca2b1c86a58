//! The arithmetic shared by the local limiter and (mirrored in Lua) the Redis script: GCRA for
//! per-minute rates, counters for concurrency and quota periods (UTC day, UTC calendar month).
//! Pure functions of their inputs and `now`, so tests drive them with a fake clock.

/// Milliseconds in the rate window (limits are per minute).
pub const MINUTE_MS: f64 = 60_000.0;
pub const DAY_MS: i64 = 86_400_000;

/// Tolerance for float comparisons on epoch-millisecond values (~0.25 µs resolution).
const EPS: f64 = 0.01;

/// The result of one GCRA check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GcraOutcome {
    pub allowed: bool,
    /// The theoretical arrival time to store if the whole decision is allowed.
    pub new_tat: f64,
    /// What is left of the limit after this request (or now, when denied).
    pub remaining: u64,
    /// Until the limit is fully replenished.
    pub reset_ms: f64,
    /// When denied: until this request would be allowed.
    pub retry_ms: f64,
}

/// Generic cell rate algorithm: `limit` units per `window_ms`, a burst of up to `limit`.
/// `tat` is the stored theoretical arrival time (anything ≤ `now` means a full bucket). A cost
/// larger than the limit is never allowed (it could not fit even a full bucket; letting it drain
/// one would admit a request of any size once a minute).
pub fn gcra(tat: f64, now: f64, limit: u64, window_ms: f64, cost: u64) -> GcraOutcome {
    let limit = limit.max(1);
    let interval = window_ms / limit as f64;
    let tat = tat.max(now);
    let new_tat = tat + cost as f64 * interval;
    let over = new_tat - now - window_ms;
    let remaining = |t: f64| ((window_ms - (t - now)) / interval + 1e-6).floor().max(0.0) as u64;
    if cost > limit || over > EPS {
        GcraOutcome {
            allowed: false,
            new_tat: tat,
            remaining: remaining(tat),
            reset_ms: tat - now,
            retry_ms: over.max(0.0),
        }
    } else {
        GcraOutcome {
            allowed: true,
            new_tat,
            remaining: remaining(new_tat),
            reset_ms: new_tat - now,
            retry_ms: 0.0,
        }
    }
}

/// Moves a stored TAT by `delta` units (reconciling an estimate with the real cost); never below
/// `now` when refunding.
pub fn gcra_adjust(tat: f64, now: f64, limit: u64, window_ms: f64, delta: i64) -> f64 {
    let interval = window_ms / limit.max(1) as f64;
    (tat.max(now) + delta as f64 * interval).max(now)
}

/// Whole seconds for `Retry-After`: rounded up, at least 1.
pub fn retry_after_secs(ms: f64) -> u64 {
    ((ms / 1000.0).ceil() as u64).max(1)
}

/// Days since 1970-01-01 → (year, month 1..=12, day 1..=31). Howard Hinnant's algorithm.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) → days since 1970-01-01.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The quota periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    /// The UTC day.
    Day,
    /// The UTC calendar month.
    Month,
}

impl Period {
    /// `[start, end)` of the period containing `now_ms`, in epoch milliseconds.
    pub fn bounds(self, now_ms: i64) -> (i64, i64) {
        let day = now_ms.div_euclid(DAY_MS);
        match self {
            Period::Day => (day * DAY_MS, (day + 1) * DAY_MS),
            Period::Month => {
                let (y, m, _) = civil_from_days(day);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (
                    days_from_civil(y, m, 1) * DAY_MS,
                    days_from_civil(ny, nm, 1) * DAY_MS,
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: f64 = 1_763_812_345_678.0;

    #[test]
    fn gcra_allows_a_burst_of_the_limit_then_gives_an_exact_retry() {
        let mut tat = 0.0;
        for i in 0..10 {
            let o = gcra(tat, NOW, 10, MINUTE_MS, 1);
            assert!(o.allowed, "request {i}");
            assert_eq!(o.remaining, 9 - i);
            tat = o.new_tat;
        }
        let o = gcra(tat, NOW, 10, MINUTE_MS, 1);
        assert!(!o.allowed);
        assert_eq!(o.remaining, 0);
        assert!((o.retry_ms - 6000.0).abs() < 0.1, "{o:?}");
        assert_eq!(retry_after_secs(o.retry_ms), 6);
        assert!((o.reset_ms - 60_000.0).abs() < 0.1);
        // 6 s later exactly one more fits.
        let later = NOW + 6000.0;
        let o = gcra(tat, later, 10, MINUTE_MS, 1);
        assert!(o.allowed);
        assert!(!gcra(o.new_tat, later, 10, MINUTE_MS, 1).allowed);
    }

    #[test]
    fn gcra_is_exact_for_limits_that_do_not_divide_the_window() {
        for limit in [3u64, 7, 13, 600, 1_000_000] {
            let mut tat = 0.0;
            for _ in 0..limit.min(2000) {
                let o = gcra(tat, NOW, limit, MINUTE_MS, 1);
                assert!(o.allowed, "limit {limit}");
                tat = o.new_tat;
            }
            if limit <= 2000 {
                assert!(
                    !gcra(tat, NOW, limit, MINUTE_MS, 1).allowed,
                    "limit {limit}"
                );
            }
        }
    }

    #[test]
    fn gcra_token_costs_and_reconciliation() {
        // 1000 tokens/min: an estimate of 800 passes, a second one does not.
        let o = gcra(0.0, NOW, 1000, MINUTE_MS, 800);
        assert!(o.allowed && o.remaining == 200);
        assert!(!gcra(o.new_tat, NOW, 1000, MINUTE_MS, 800).allowed);
        // The real cost was 100: refund 700, and 800 fits again.
        let tat = gcra_adjust(o.new_tat, NOW, 1000, MINUTE_MS, 100 - 800);
        assert!(gcra(tat, NOW, 1000, MINUTE_MS, 800).allowed);
        // A cost above the limit never passes, not even on a full bucket (it used to drain one,
        // which let a request of any size through once a minute); the limit itself does.
        let o = gcra(0.0, NOW, 1000, MINUTE_MS, 5000);
        assert!(!o.allowed && o.remaining == 1000);
        assert!(!gcra(0.0, NOW, 1000, MINUTE_MS, u64::MAX).allowed);
        assert!(!gcra(0.0, NOW, 1000, MINUTE_MS, 1001).allowed);
        assert!(gcra(0.0, NOW, 1000, MINUTE_MS, 1000).allowed);
        // Exactly, also where the float tolerance is larger than one unit.
        let big = 10_000_000_000;
        assert!(!gcra(0.0, NOW, big, MINUTE_MS, big + 1).allowed);
        assert!(gcra(0.0, NOW, big, MINUTE_MS, big).allowed);
        // Refunds never push the TAT before now.
        assert_eq!(gcra_adjust(0.0, NOW, 10, MINUTE_MS, -5), NOW);
    }

    #[test]
    fn periods_are_utc_days_and_calendar_months() {
        let ms = crate::time::parse_rfc3339("2024-02-29T13:00:00Z").unwrap();
        let (s, e) = Period::Day.bounds(ms);
        assert_eq!(crate::time::rfc3339(s), "2024-02-29T00:00:00Z");
        assert_eq!(crate::time::rfc3339(e), "2024-03-01T00:00:00Z");
        let (s, e) = Period::Month.bounds(ms);
        assert_eq!(crate::time::rfc3339(s), "2024-02-01T00:00:00Z");
        assert_eq!(crate::time::rfc3339(e), "2024-03-01T00:00:00Z");
        let dec = crate::time::parse_rfc3339("2025-12-31T23:59:59Z").unwrap();
        let (s, e) = Period::Month.bounds(dec);
        assert_eq!(crate::time::rfc3339(s), "2025-12-01T00:00:00Z");
        assert_eq!(crate::time::rfc3339(e), "2026-01-01T00:00:00Z");
        for days in [-1000i64, 0, 59, 365, 10_957, 20_000, 50_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
