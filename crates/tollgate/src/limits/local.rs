//! The in-process limiter: every decision is taken under one mutex, all-or-nothing across the
//! checks of a request. Used alone on a single instance, and as the fallback when Redis is
//! unreachable (never "no limits"). No I/O: quota counters are seeded by the caller.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use super::gcra::{self, MINUTE_MS};
use super::{Check, CheckState, Decision, Dim, ScopeRef};

#[derive(Debug, Default, Clone, Copy)]
struct RateCell {
    req_tat: f64,
    tok_tat: f64,
    concurrent: u64,
}

/// The Fx hash (as in rustc): the keys are server-generated ids, so a fast non-keyed hash is
/// fine here, and SipHash was a visible share of a decision.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(b)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
}

type Fx = std::hash::BuildHasherDefault<FxHasher>;

#[derive(Default)]
struct State {
    rates: HashMap<ScopeRef, RateCell, Fx>,
    /// (scope, dimension, period start) → units used.
    quotas: HashMap<(ScopeRef, Dim, i64), i64, Fx>,
}

/// Updates the rate cell of a scope, creating it on first use (no key clone when it exists).
fn with_rate_cell(st: &mut State, key: &ScopeRef, f: impl FnOnce(&mut RateCell)) {
    match st.rates.get_mut(key) {
        Some(c) => f(c),
        None => {
            let mut c = RateCell::default();
            f(&mut c);
            st.rates.insert(key.clone(), c);
        }
    }
}

#[derive(Default)]
pub struct LocalLimiter {
    state: Mutex<State>,
}

impl std::fmt::Debug for LocalLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalLimiter")
    }
}

impl LocalLimiter {
    /// Decides a request at `now_ms`. `seeds[i]` is the usage already recorded in the store for
    /// quota check `i` (used when this process has no counter for the period yet).
    pub fn decide(&self, checks: &[Check], seeds: &[i64], now_ms: i64) -> Decision {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        Self::decide_locked(&mut st, checks, seeds, now_ms)
    }

    /// The fast path: decides only if every quota check already has a counter for its period
    /// (one lock, no seeds needed); `None` means "load seeds and call [`Self::decide`]".
    pub fn try_decide(&self, checks: &[Check], now_ms: i64) -> Option<Decision> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let seeded = checks.iter().filter(|c| c.dim.is_quota()).all(|c| {
            let (start, _) = c.dim.period().bounds(now_ms);
            st.quotas.contains_key(&(c.scope.clone(), c.dim, start))
        });
        seeded.then(|| Self::decide_locked(&mut st, checks, &[], now_ms))
    }

    fn decide_locked(st: &mut State, checks: &[Check], seeds: &[i64], now_ms: i64) -> Decision {
        let now = now_ms as f64;
        let mut states = Vec::with_capacity(checks.len());
        let mut denied: Option<(usize, f64)> = None;
        let deny = |i: usize, retry: f64, quota: bool, denied: &mut Option<(usize, f64)>| {
            // A quota denial wins over a rate denial: retrying soon will not help.
            let better = match denied {
                None => true,
                Some((j, r)) => {
                    let jq = checks[*j].dim.is_quota();
                    (quota && !jq) || (quota == jq && retry > *r)
                }
            };
            if better {
                *denied = Some((i, retry));
            }
        };
        // Pending writes, applied only if every check passes.
        let mut pending: Vec<(usize, f64)> = Vec::with_capacity(checks.len());
        for (i, c) in checks.iter().enumerate() {
            match c.dim {
                Dim::Requests | Dim::Tokens => {
                    let cell = st.rates.get(&c.scope).copied().unwrap_or_default();
                    let tat = if c.dim == Dim::Requests {
                        cell.req_tat
                    } else {
                        cell.tok_tat
                    };
                    let o = gcra::gcra(tat, now, c.limit, MINUTE_MS, c.cost);
                    if o.allowed {
                        pending.push((i, o.new_tat));
                    } else {
                        deny(i, o.retry_ms, false, &mut denied);
                    }
                    states.push(CheckState {
                        remaining: o.remaining,
                        reset_ms: o.reset_ms.max(0.0) as u64,
                        period_start: 0,
                    });
                }
                Dim::Concurrent => {
                    let used = st.rates.get(&c.scope).map_or(0, |r| r.concurrent);
                    if used + c.cost > c.limit {
                        deny(i, 1000.0, false, &mut denied);
                    } else {
                        pending.push((i, 0.0));
                    }
                    states.push(CheckState {
                        remaining: c.limit.saturating_sub(used + c.cost),
                        reset_ms: 0,
                        period_start: 0,
                    });
                }
                Dim::RequestsDay | Dim::TokensMonth => {
                    let (start, end) = c.dim.period().bounds(now_ms);
                    let used = *st
                        .quotas
                        .entry((c.scope.clone(), c.dim, start))
                        .or_insert(seeds.get(i).copied().unwrap_or(0));
                    let cost = c.cost as i64;
                    let limit = c.limit as i64;
                    if used + cost > limit {
                        deny(i, (end - now_ms) as f64, true, &mut denied);
                    } else {
                        pending.push((i, 0.0));
                    }
                    states.push(CheckState {
                        remaining: (limit - used - cost).max(0) as u64,
                        reset_ms: (end - now_ms).max(0) as u64,
                        period_start: start,
                    });
                }
            }
        }
        if let Some((i, retry)) = denied {
            // Report what is left without this request's cost.
            for (j, s) in states.iter_mut().enumerate() {
                if pending.iter().any(|(p, _)| *p == j) {
                    s.remaining = s
                        .remaining
                        .saturating_add(checks[j].cost.min(checks[j].limit));
                    s.remaining = s.remaining.min(checks[j].limit);
                }
            }
            return Decision {
                denied: Some(i),
                retry_ms: retry,
                states,
            };
        }
        for (i, v) in pending {
            let c = &checks[i];
            match c.dim {
                Dim::Requests => with_rate_cell(st, &c.scope, |r| r.req_tat = v),
                Dim::Tokens => with_rate_cell(st, &c.scope, |r| r.tok_tat = v),
                Dim::Concurrent => {
                    with_rate_cell(st, &c.scope, |r| r.concurrent += c.cost);
                }
                Dim::RequestsDay | Dim::TokensMonth => {
                    let key = (c.scope.clone(), c.dim, states[i].period_start);
                    *st.quotas.entry(key).or_insert(0) += c.cost as i64;
                }
            }
        }
        Decision {
            denied: None,
            retry_ms: 0.0,
            states,
        }
    }

    /// Settles a reservation: `deltas[i]` adjusts check `i` (token reconciliation, quota refunds;
    /// concurrency slots are released whatever the delta).
    pub fn settle(&self, checks: &[Check], states: &[CheckState], deltas: &[i64], now_ms: i64) {
        let now = now_ms as f64;
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        for (i, c) in checks.iter().enumerate() {
            let delta = deltas.get(i).copied().unwrap_or(0);
            match c.dim {
                Dim::Requests => {}
                Dim::Tokens => {
                    if delta != 0
                        && let Some(cell) = st.rates.get_mut(&c.scope)
                    {
                        cell.tok_tat =
                            gcra::gcra_adjust(cell.tok_tat, now, c.limit, MINUTE_MS, delta);
                    }
                }
                Dim::Concurrent => {
                    if let Some(cell) = st.rates.get_mut(&c.scope) {
                        cell.concurrent = cell.concurrent.saturating_sub(c.cost);
                    }
                }
                Dim::RequestsDay | Dim::TokensMonth => {
                    let start = states.get(i).map_or(0, |s| s.period_start);
                    if delta != 0
                        && let Some(used) = st.quotas.get_mut(&(c.scope.clone(), c.dim, start))
                    {
                        *used = (*used + delta).max(0);
                    }
                }
            }
        }
    }

    /// Whether this process already counts a quota period (no seed needed).
    pub fn has_quota(&self, scope: &ScopeRef, dim: Dim, period_start: i64) -> bool {
        let st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.quotas.contains_key(&(scope.clone(), dim, period_start))
    }

    /// Drops idle rate cells and past quota periods.
    pub fn prune(&self, now_ms: i64) {
        let now = now_ms as f64;
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.rates
            .retain(|_, c| c.concurrent > 0 || c.req_tat > now || c.tok_tat > now);
        st.quotas.retain(|(_, dim, start), _| {
            let (s, _) = dim.period().bounds(now_ms);
            *start >= s
        });
    }

    /// Number of tracked scopes (tests, debugging).
    pub fn tracked(&self) -> usize {
        let st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.rates.len() + st.quotas.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(scope: &str, dim: Dim, limit: u64, cost: u64) -> Check {
        Check {
            scope: super::super::ScopeRef {
                kind: super::super::ScopeKind::Key,
                tenant_id: "ten_1".into(),
                id: scope.into(),
            },
            dim,
            limit,
            cost,
        }
    }

    const NOW: i64 = 1_763_812_345_678;

    #[test]
    fn all_or_nothing_across_checks() {
        let l = LocalLimiter::default();
        // Requests allow 10, tokens allow 1000: the 3rd 400-token request is denied by tokens and
        // must not consume a request.
        let checks = [
            check("a", Dim::Requests, 10, 1),
            check("a", Dim::Tokens, 1000, 400),
        ];
        assert!(l.decide(&checks, &[0, 0], NOW).denied.is_none());
        let d = l.decide(&checks, &[0, 0], NOW);
        assert!(d.denied.is_none());
        assert_eq!(d.states[0].remaining, 8);
        let d = l.decide(&checks, &[0, 0], NOW);
        assert_eq!(d.denied, Some(1));
        assert_eq!(d.states[0].remaining, 8, "denied request consumed nothing");
        // Reconcile: the two requests used 50 tokens each.
        let states = d.states.clone();
        l.settle(&checks, &states, &[0, -350], NOW);
        l.settle(&checks, &states, &[0, -350], NOW);
        assert!(l.decide(&checks, &[0, 0], NOW).denied.is_none());
    }

    #[test]
    fn concurrency_slots_are_released_on_settle() {
        let l = LocalLimiter::default();
        let checks = [check("c", Dim::Concurrent, 2, 1)];
        let a = l.decide(&checks, &[0], NOW);
        let _b = l.decide(&checks, &[0], NOW);
        let c = l.decide(&checks, &[0], NOW);
        assert!(a.denied.is_none() && c.denied == Some(0));
        assert_eq!(gcra::retry_after_secs(c.retry_ms), 1);
        l.settle(&checks, &a.states, &[0], NOW);
        assert!(l.decide(&checks, &[0], NOW).denied.is_none());
    }

    #[test]
    fn quotas_are_seeded_reserved_refunded_and_reset_per_period() {
        let l = LocalLimiter::default();
        let checks = [check("q", Dim::RequestsDay, 10, 1)];
        // 7 already recorded in the store today.
        for _ in 0..3 {
            assert!(l.decide(&checks, &[7], NOW).denied.is_none());
        }
        let d = l.decide(&checks, &[7], NOW);
        assert_eq!(d.denied, Some(0));
        let (_, end) = gcra::Period::Day.bounds(NOW);
        assert_eq!(d.retry_ms as i64, end - NOW);
        // A failed request is refunded.
        l.settle(&checks, &d.states, &[-1], NOW);
        assert!(l.decide(&checks, &[7], NOW).denied.is_none());
        // Tomorrow starts from the new seed.
        assert!(l.decide(&checks, &[0], end + 1).denied.is_none());
        l.prune(end + 1);
        assert!(!l.has_quota(&checks[0].scope, Dim::RequestsDay, end - gcra::DAY_MS));
    }

    #[test]
    fn a_quota_denial_wins_over_a_rate_denial() {
        let l = LocalLimiter::default();
        let checks = [
            check("x", Dim::Requests, 1, 1),
            check("x", Dim::RequestsDay, 1, 1),
        ];
        assert!(l.decide(&checks, &[0, 0], NOW).denied.is_none());
        assert_eq!(l.decide(&checks, &[0, 0], NOW).denied, Some(1));
    }
}
