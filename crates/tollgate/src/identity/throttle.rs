//! Login throttling (SPEC §4.3): failed sign-ins are counted per account and per client address
//! in a sliding window; past the threshold the login page answers `429` with `Retry-After`
//! until the oldest failure leaves the window. A success clears the account's count.
//! Per instance (in memory): N instances allow at most N times the threshold.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Failures per account within the window before it is throttled.
pub const ACCOUNT_MAX: usize = 5;
/// Failures per client address within the window before it is throttled.
pub const IP_MAX: usize = 20;
const MAX_KEYS: usize = 100_000;

#[derive(Default)]
pub struct LoginThrottle {
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl std::fmt::Debug for LoginThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginThrottle").finish_non_exhaustive()
    }
}

fn prune(q: &mut VecDeque<Instant>, now: Instant) {
    while q.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
        q.pop_front();
    }
}

impl LoginThrottle {
    /// `Err(seconds)` when the account or the address must wait.
    pub fn check(&self, account: &str, ip: &str) -> Result<(), u64> {
        let Ok(mut map) = self.failures.lock() else {
            return Ok(());
        };
        let now = Instant::now();
        let mut wait = 0u64;
        for (key, max) in [
            (format!("acct:{account}"), ACCOUNT_MAX),
            (format!("ip:{ip}"), IP_MAX),
        ] {
            if let Some(q) = map.get_mut(&key) {
                prune(q, now);
                if q.len() >= max
                    && let Some(oldest) = q.get(q.len() - max)
                {
                    let left = WINDOW.saturating_sub(now.duration_since(*oldest));
                    wait = wait.max(left.as_secs().max(1));
                }
            }
        }
        if wait > 0 { Err(wait) } else { Ok(()) }
    }

    pub fn fail(&self, account: &str, ip: &str) {
        let Ok(mut map) = self.failures.lock() else {
            return;
        };
        let now = Instant::now();
        if map.len() > MAX_KEYS {
            map.retain(|_, q| {
                prune(q, now);
                !q.is_empty()
            });
        }
        for key in [format!("acct:{account}"), format!("ip:{ip}")] {
            let q = map.entry(key).or_default();
            prune(q, now);
            q.push_back(now);
        }
    }

    pub fn succeed(&self, account: &str) {
        if let Ok(mut map) = self.failures.lock() {
            map.remove(&format!("acct:{account}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttles_per_account_and_per_ip() {
        let t = LoginThrottle::default();
        for _ in 0..ACCOUNT_MAX {
            assert!(t.check("a@x", "1.1.1.1").is_ok());
            t.fail("a@x", "1.1.1.1");
        }
        let wait = t.check("a@x", "2.2.2.2").unwrap_err();
        assert!(wait > 0 && wait <= WINDOW.as_secs());
        // Another account from the same address is still fine until the address limit.
        assert!(t.check("b@x", "1.1.1.1").is_ok());
        for i in 0..IP_MAX {
            t.fail(&format!("u{i}@x"), "3.3.3.3");
        }
        assert!(t.check("new@x", "3.3.3.3").is_err());
        assert!(t.check("new@x", "4.4.4.4").is_ok());
        t.succeed("a@x");
        assert!(t.check("a@x", "2.2.2.2").is_ok());
    }
}
