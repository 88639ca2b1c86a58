//! The in-process limiter: every decision is taken under one mutex, all-or-nothing across the
//! checks of a request. Used when there is no Redis, and as the fallback while Redis is
//! unreachable (never "no limits"). No I/O: rate cells and concurrency slots live here; quotas are
//! spent from *leases* the caller takes from the store's shared counters
//! (`store::quotas`) when this instance's budget for a period runs short.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use crate::{Check, CheckState, Decision, Dim, ScopeRef};
use tollgate_core::limits::gcra::{self, MINUTE_MS};

#[derive(Debug, Default, Clone, Copy)]
struct RateCell {
    req_tat: f64,
    tok_tat: f64,
    concurrent: u64,
}

use tollgate_core::ids::Fx;

/// This instance's share of one quota period.
#[derive(Debug, Default, Clone, Copy)]
struct QuotaCell {
    /// Leased from the store and not spent yet; negative when responses used more than they
    /// reserved (owed to the store, charged with the next lease or when idle).
    budget: i64,
    /// The period's use across all instances (leases included) as the store last reported it.
    used: i64,
    touched_ms: i64,
    /// The store refused a lease of `short_of` units until then: requests needing as many are
    /// refused without asking again (an over-quota client cannot turn into store load).
    exhausted_until_ms: i64,
    short_of: i64,
    /// Units taken back by `take_idle` whose return to the store has not finished: until it
    /// has, a refused lease does not mean the quota is spent (those units are on their way
    /// back), so it marks nothing exhausted.
    returning: i64,
}

type QuotaKey = (ScopeRef, Dim, i64);

#[derive(Default)]
struct State {
    rates: HashMap<ScopeRef, RateCell, Fx>,
    /// (scope, dimension, period start) → this instance's lease.
    quotas: HashMap<QuotaKey, QuotaCell, Fx>,
}

/// A quota check this instance has too little budget for: lease `need` units from the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseNeed {
    pub index: usize,
    pub period_start: i64,
    pub need: u64,
}

/// What a local decision came to.
#[derive(Debug)]
pub enum LocalOutcome {
    Decided(Decision),
    /// Nothing was reserved: take these leases, [`LocalLimiter::deposit`] them, decide again.
    Lease(Vec<LeaseNeed>),
}

/// How long the store's "spent" answer is trusted before asking again (other instances may give
/// back unspent leases).
const EXHAUSTED_RECHECK_MS: i64 = 1000;

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
    /// Decides a request at `now_ms`, or says which quota leases it needs first.
    pub fn decide(&self, checks: &[Check], now_ms: i64) -> LocalOutcome {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        Self::decide_locked(&mut st, checks, now_ms)
    }

    fn decide_locked(st: &mut State, checks: &[Check], now_ms: i64) -> LocalOutcome {
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
        let mut needs: Vec<LeaseNeed> = Vec::new();
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
                    if used.checked_add(c.cost).is_none_or(|n| n > c.limit) {
                        deny(i, 1000.0, false, &mut denied);
                    } else {
                        pending.push((i, 0.0));
                    }
                    states.push(CheckState {
                        remaining: c.limit.saturating_sub(used.saturating_add(c.cost)),
                        reset_ms: 0,
                        period_start: 0,
                    });
                }
                Dim::RequestsDay | Dim::TokensMonth => {
                    let (start, end) = c.dim.period().bounds(now_ms);
                    let cell = st
                        .quotas
                        .get(&(c.scope.clone(), c.dim, start))
                        .copied()
                        .unwrap_or_default();
                    // Limits and costs are at most `MAX_UNITS` (2^53 - 1): these fit an i64.
                    let cost = i64::try_from(c.cost).unwrap_or(i64::MAX);
                    let limit = i64::try_from(c.limit).unwrap_or(i64::MAX);
                    let left = limit.saturating_sub(cell.used.saturating_sub(cell.budget));
                    let need = cost.saturating_sub(cell.budget);
                    if c.cost > c.limit {
                        // Larger than the whole quota: no lease could ever cover it, so the
                        // store is not asked.
                        deny(i, (end - now_ms) as f64, true, &mut denied);
                    } else if need <= 0 {
                        pending.push((i, 0.0));
                    } else if cell.exhausted_until_ms > now_ms && need >= cell.short_of {
                        deny(i, (end - now_ms) as f64, true, &mut denied);
                    } else {
                        needs.push(LeaseNeed {
                            index: i,
                            period_start: start,
                            need: need as u64,
                        });
                    }
                    states.push(CheckState {
                        remaining: left.saturating_sub(cost).max(0) as u64,
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
            return LocalOutcome::Decided(Decision {
                denied: Some(i),
                retry_ms: retry,
                states,
            });
        }
        if !needs.is_empty() {
            return LocalOutcome::Lease(needs);
        }
        for (i, v) in pending {
            let c = &checks[i];
            match c.dim {
                Dim::Requests => with_rate_cell(st, &c.scope, |r| r.req_tat = v),
                Dim::Tokens => with_rate_cell(st, &c.scope, |r| r.tok_tat = v),
                Dim::Concurrent => {
                    with_rate_cell(st, &c.scope, |r| {
                        r.concurrent = r.concurrent.saturating_add(c.cost);
                    });
                }
                Dim::RequestsDay | Dim::TokensMonth => {
                    let key = (c.scope.clone(), c.dim, states[i].period_start);
                    let cell = st.quotas.entry(key).or_default();
                    cell.budget = cell
                        .budget
                        .saturating_sub(i64::try_from(c.cost).unwrap_or(i64::MAX));
                    cell.touched_ms = now_ms;
                }
            }
        }
        LocalOutcome::Decided(Decision {
            denied: None,
            retry_ms: 0.0,
            states,
        })
    }

    /// Adds a lease the store granted (or records that it refused one) for quota check `c`.
    pub fn deposit(&self, c: &Check, n: &LeaseNeed, granted: i64, used: i64, now_ms: i64) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let cell = st
            .quotas
            .entry((c.scope.clone(), c.dim, n.period_start))
            .or_default();
        cell.budget = cell.budget.saturating_add(granted);
        cell.used = used;
        cell.touched_ms = now_ms;
        if granted > 0 {
            cell.exhausted_until_ms = 0;
        } else if cell.returning == 0 {
            cell.exhausted_until_ms = now_ms + EXHAUSTED_RECHECK_MS;
            cell.short_of = n.need as i64;
        }
    }

    /// Whether units of this quota period are being given back to the store right now.
    pub fn is_returning(&self, c: &Check, period_start: i64) -> bool {
        let st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.quotas
            .get(&(c.scope.clone(), c.dim, period_start))
            .is_some_and(|cell| cell.returning != 0)
    }

    /// The give-back of `budget` units that `take_idle` handed out has finished (or failed).
    pub fn returned(&self, scope: &ScopeRef, dim: Dim, start: i64, budget: i64) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cell) = st.quotas.get_mut(&(scope.clone(), dim, start)) {
            cell.returning = cell.returning.saturating_sub(budget);
        }
    }

    /// Takes the budgets of quota periods untouched for `idle_ms` (all of them with 0), to give
    /// back to (or, when negative, charge to) the store's counters: `(scope, dim, period start,
    /// budget)`.
    pub fn take_idle(&self, now_ms: i64, idle_ms: i64) -> Vec<(ScopeRef, Dim, i64, i64)> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::new();
        for ((scope, dim, start), cell) in st.quotas.iter_mut() {
            if cell.budget != 0 && now_ms.saturating_sub(cell.touched_ms) >= idle_ms {
                out.push((scope.clone(), *dim, *start, cell.budget));
                cell.used = cell.used.saturating_sub(cell.budget);
                cell.returning = cell.returning.saturating_add(cell.budget);
                cell.budget = 0;
            }
        }
        out
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
                    // A refund returns to this instance's budget; usage beyond the reservation
                    // is owed (the budget goes negative until the next lease or give-back).
                    if delta != 0
                        && let Some(cell) = st.quotas.get_mut(&(c.scope.clone(), c.dim, start))
                    {
                        cell.budget = cell.budget.saturating_sub(delta);
                        cell.touched_ms = now_ms;
                    }
                }
            }
        }
    }

    /// Drops idle rate cells and past quota periods.
    pub fn prune(&self, now_ms: i64) {
        let now = now_ms as f64;
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.rates
            .retain(|_, c| c.concurrent > 0 || c.req_tat > now || c.tok_tat > now);
        // Past periods, and current ones with nothing leased that nobody used for a while (their
        // counters live on in the store).
        st.quotas.retain(|(_, dim, start), cell| {
            let (s, _) = dim.period().bounds(now_ms);
            *start >= s && (cell.budget != 0 || now_ms - cell.touched_ms < 600_000)
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

    fn decided(o: LocalOutcome) -> Decision {
        match o {
            LocalOutcome::Decided(d) => d,
            LocalOutcome::Lease(n) => panic!("needs a lease: {n:?}"),
        }
    }

    fn needs(o: LocalOutcome) -> Vec<LeaseNeed> {
        match o {
            LocalOutcome::Lease(n) => n,
            LocalOutcome::Decided(d) => panic!("decided: {d:?}"),
        }
    }

    #[test]
    fn all_or_nothing_across_checks() {
        let l = LocalLimiter::default();
        // Requests allow 10, tokens allow 1000: the 3rd 400-token request is denied by tokens and
        // must not consume a request.
        let checks = [
            check("a", Dim::Requests, 10, 1),
            check("a", Dim::Tokens, 1000, 400),
        ];
        assert!(decided(l.decide(&checks, NOW)).denied.is_none());
        let d = decided(l.decide(&checks, NOW));
        assert!(d.denied.is_none());
        assert_eq!(d.states[0].remaining, 8);
        let d = decided(l.decide(&checks, NOW));
        assert_eq!(d.denied, Some(1));
        assert_eq!(d.states[0].remaining, 8, "denied request consumed nothing");
        // Reconcile: the two requests used 50 tokens each.
        let states = d.states.clone();
        l.settle(&checks, &states, &[0, -350], NOW);
        l.settle(&checks, &states, &[0, -350], NOW);
        assert!(decided(l.decide(&checks, NOW)).denied.is_none());
    }

    #[test]
    fn concurrency_slots_are_released_on_settle() {
        let l = LocalLimiter::default();
        let checks = [check("c", Dim::Concurrent, 2, 1)];
        let a = decided(l.decide(&checks, NOW));
        let _b = decided(l.decide(&checks, NOW));
        let c = decided(l.decide(&checks, NOW));
        assert!(a.denied.is_none() && c.denied == Some(0));
        assert_eq!(gcra::retry_after_secs(c.retry_ms), 1);
        l.settle(&checks, &a.states, &[0], NOW);
        assert!(decided(l.decide(&checks, NOW)).denied.is_none());
    }

    #[test]
    fn quotas_are_spent_from_leases_refunded_and_given_back() {
        let l = LocalLimiter::default();
        let checks = [
            check("q", Dim::Requests, 100, 1),
            check("q", Dim::RequestsDay, 10, 1),
        ];
        // No budget yet: nothing is reserved, a lease of 1 is asked for.
        let n = needs(l.decide(&checks, NOW));
        assert_eq!(n.len(), 1);
        assert_eq!((n[0].index, n[0].need), (1, 1));
        assert_eq!(n[0].period_start, gcra::Period::Day.bounds(NOW).0);
        assert_eq!(l.tracked(), 0, "the rate check reserved nothing either");
        // The store grants 3 (7 already used elsewhere): three requests pass without asking.
        l.deposit(&checks[1], &n[0], 3, 10, NOW);
        let mut last = None;
        for _ in 0..3 {
            let d = decided(l.decide(&checks, NOW));
            assert!(d.denied.is_none());
            last = Some(d);
        }
        let last = last.unwrap();
        assert_eq!(last.states[1].remaining, 0);
        // A failed request is refunded into the budget.
        l.settle(&checks, &last.states, &[0, -1], NOW);
        assert!(decided(l.decide(&checks, NOW)).denied.is_none());
        // Spent: the store refuses; the refusal is trusted for a second, then asked again.
        let n = needs(l.decide(&checks, NOW));
        l.deposit(&checks[1], &n[0], 0, 10, NOW);
        let d = decided(l.decide(&checks, NOW));
        assert_eq!(d.denied, Some(1));
        let (_, end) = gcra::Period::Day.bounds(NOW);
        assert_eq!(d.retry_ms as i64, end - NOW);
        assert_eq!(needs(l.decide(&checks, NOW + 1001)).len(), 1);
        // Tomorrow is another period.
        assert_eq!(needs(l.decide(&checks, end + 1))[0].period_start, end);
    }

    /// Units taken back for the store are not spent: a lease refused while they are on their
    /// way back marks nothing exhausted, so the next request asks again (and gets them).
    #[test]
    fn a_refusal_during_a_give_back_is_not_trusted() {
        let l = LocalLimiter::default();
        let checks = [check("g", Dim::RequestsDay, 10, 1)];
        let n = needs(l.decide(&checks, NOW));
        l.deposit(&checks[0], &n[0], 4, 10, NOW);
        let taken = l.take_idle(NOW + 5000, 2000);
        assert_eq!(taken.len(), 1);
        let start = n[0].period_start;
        assert!(l.is_returning(&checks[0], start));
        // The store has not received them yet: it refuses.
        let n = needs(l.decide(&checks, NOW + 5001));
        l.deposit(&checks[0], &n[0], 0, 10, NOW + 5001);
        assert_eq!(needs(l.decide(&checks, NOW + 5002)).len(), 1, "asked again");
        // Once they are back, a refusal is trusted again.
        let (scope, dim, _, budget) = taken[0].clone();
        l.returned(&scope, dim, start, budget);
        assert!(!l.is_returning(&checks[0], start));
        let n = needs(l.decide(&checks, NOW + 5003));
        l.deposit(&checks[0], &n[0], 0, 10, NOW + 5003);
        assert_eq!(decided(l.decide(&checks, NOW + 5004)).denied, Some(0));
    }

    #[test]
    fn unspent_and_overspent_budgets_are_taken_when_idle() {
        let l = LocalLimiter::default();
        let checks = [check("t", Dim::TokensMonth, 1_000_000, 500)];
        let n = needs(l.decide(&checks, NOW));
        l.deposit(&checks[0], &n[0], 60_000, 60_000, NOW);
        let d = decided(l.decide(&checks, NOW));
        assert!(l.take_idle(NOW + 1000, 2000).is_empty(), "not idle yet");
        // The response used 200 tokens: 300 come back to the budget.
        l.settle(&checks, &d.states, &[-300], NOW);
        let taken = l.take_idle(NOW + 5000, 2000);
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].3, 60_000 - 200);
        assert!(l.take_idle(NOW + 9000, 0).is_empty(), "taken once");
        // Overspent: a request reserved 500 and used 900; 400 are owed.
        let n = needs(l.decide(&checks, NOW + 9000));
        assert_eq!(n[0].need, 500);
        l.deposit(&checks[0], &n[0], 500, 60_700, NOW + 9000);
        let d = decided(l.decide(&checks, NOW + 9000));
        l.settle(&checks, &d.states, &[400], NOW + 9000);
        assert_eq!(l.take_idle(NOW + 9000, 0)[0].3, -400);
    }

    #[test]
    fn a_cost_larger_than_a_limit_is_refused_without_a_lease() {
        let l = LocalLimiter::default();
        // Larger than the whole quota: refused at once, the store is not asked for a lease.
        let checks = [check("big", Dim::TokensMonth, 100, 101)];
        let d = decided(l.decide(&checks, NOW));
        assert_eq!(d.denied, Some(0));
        let (_, end) = gcra::Period::Month.bounds(NOW);
        assert_eq!(d.retry_ms as i64, end - NOW);
        // Larger than a per-minute limit: refused even on a full bucket.
        let checks = [check("big", Dim::Tokens, 100, 101)];
        assert_eq!(decided(l.decide(&checks, NOW)).denied, Some(0));
        let checks = [check("big", Dim::Tokens, 100, 100)];
        assert!(decided(l.decide(&checks, NOW)).denied.is_none());
        // Extreme values saturate instead of wrapping.
        let checks = [check("max", Dim::Concurrent, u64::MAX, u64::MAX)];
        assert!(decided(l.decide(&checks, NOW)).denied.is_none());
        assert_eq!(decided(l.decide(&checks, NOW)).denied, Some(0));
        let checks = [check("max", Dim::RequestsDay, u64::MAX, u64::MAX)];
        assert_eq!(needs(l.decide(&checks, NOW))[0].need, i64::MAX as u64);
    }

    #[test]
    fn a_quota_denial_wins_over_a_rate_denial() {
        let l = LocalLimiter::default();
        let checks = [
            check("x", Dim::Requests, 1, 1),
            check("x", Dim::RequestsDay, 1, 1),
        ];
        let n = needs(l.decide(&checks, NOW));
        l.deposit(&checks[1], &n[0], 1, 1, NOW);
        assert!(decided(l.decide(&checks, NOW)).denied.is_none());
        let n = needs(l.decide(&checks, NOW + 60_000));
        l.deposit(&checks[1], &n[0], 0, 1, NOW);
        let d = decided(l.decide(&checks, NOW + 500));
        assert_eq!(d.denied, Some(1));
    }
}
