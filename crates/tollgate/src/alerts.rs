//! Spike alerts (SPEC §7): a key whose requests in the current minute exceed `spike_multiple` ×
//! its trailing per-minute baseline (the mean of the previous `baseline_minutes`, counting quiet
//! minutes as zero) — and at least `spike_min_requests` — raises `alert.usage_spike` in the audit
//! log (its own transaction, actor `system`) and, when configured, POSTs it to a webhook through
//! the outbound-URL guard (`crate::netguard`: public `https`, or a destination in
//! `[outbound] allow`; no redirects).
//!
//! The detector runs in the usage writer (off the request path) and sees this instance's traffic.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Deadline of one webhook POST (DNS, connection and answer).
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

use serde_json::json;

use crate::app::AppState;
use crate::config::AlertsConfig;
use crate::store::audit::{Actor, AuditEvent, RequestMeta, append};
use tollgate_core::audit::Action;
use tollgate_core::usage::UsageRecord;

/// A detected spike.
#[derive(Debug, Clone, PartialEq)]
pub struct Spike {
    pub tenant_id: Arc<str>,
    pub api_key_id: Arc<str>,
    /// Start of the minute (epoch ms).
    pub minute: i64,
    pub requests: u64,
    pub baseline: f64,
    pub multiple: f64,
}

struct KeyWindow {
    tenant_id: Arc<str>,
    minute: i64,
    count: u64,
    /// Counts of the previous minutes, newest last.
    history: VecDeque<u64>,
    alerted: Option<i64>,
}

/// Per-key minute counters with a trailing baseline.
pub struct SpikeDetector {
    multiple: f64,
    min_requests: u64,
    baseline_minutes: usize,
    keys: HashMap<Arc<str>, KeyWindow>,
    last_prune: i64,
}

impl SpikeDetector {
    pub fn new(cfg: &AlertsConfig) -> Self {
        Self {
            multiple: cfg.spike_multiple,
            min_requests: cfg.spike_min_requests.max(1),
            baseline_minutes: cfg.baseline_minutes.clamp(1, 1440) as usize,
            keys: HashMap::new(),
            last_prune: 0,
        }
    }

    /// Feeds records; returns the spikes they reveal (at most one per key and minute).
    pub fn observe(&mut self, records: &[UsageRecord]) -> Vec<Spike> {
        let mut out = Vec::new();
        for r in records {
            let Some(key) = &r.api_key_id else { continue };
            if let Some(s) = self.observe_one(&r.tenant_id, key, r.ts) {
                out.push(s);
            }
        }
        out
    }

    pub fn observe_one(&mut self, tenant_id: &Arc<str>, key: &Arc<str>, ts: i64) -> Option<Spike> {
        let minute = ts - ts.rem_euclid(60_000);
        let n = self.baseline_minutes;
        let w = self.keys.entry(key.clone()).or_insert_with(|| KeyWindow {
            tenant_id: tenant_id.clone(),
            minute,
            count: 0,
            history: VecDeque::new(),
            alerted: None,
        });
        if minute > w.minute {
            let gap = ((minute - w.minute) / 60_000) as usize;
            w.history.push_back(w.count);
            for _ in 1..gap.min(n + 1) {
                w.history.push_back(0);
            }
            while w.history.len() > n {
                w.history.pop_front();
            }
            w.minute = minute;
            w.count = 0;
        }
        w.count += 1;
        let baseline = if w.history.is_empty() {
            0.0
        } else {
            w.history.iter().sum::<u64>() as f64 / w.history.len() as f64
        };
        let threshold = (self.multiple * baseline).max(self.min_requests as f64);
        let spike = (w.count as f64 > threshold && w.alerted != Some(w.minute)).then(|| {
            w.alerted = Some(w.minute);
            Spike {
                tenant_id: w.tenant_id.clone(),
                api_key_id: key.clone(),
                minute: w.minute,
                requests: w.count,
                baseline,
                multiple: self.multiple,
            }
        });
        if ts - self.last_prune > 60_000 {
            self.last_prune = ts;
            let horizon = (n as i64 + 1) * 60_000;
            self.keys.retain(|_, w| ts - w.minute <= horizon);
        }
        spike
    }
}

/// Records the alert in the audit log and sends the webhook (in the background).
pub async fn raise(state: &AppState, s: Spike) {
    let details = json!({
        "minute": crate::util::rfc3339(s.minute),
        "requests_in_minute": s.requests,
        "baseline_per_minute": (s.baseline * 100.0).round() / 100.0,
        "multiple": s.multiple,
    });
    tracing::warn!(tenant = %s.tenant_id, key = %s.api_key_id, requests = s.requests, baseline = s.baseline, "usage spike");
    let event_id = async {
        let mut tx = state.store.begin().await?;
        let rec = append(
            &mut tx,
            AuditEvent::new(
                s.tenant_id.to_string(),
                Actor::system(),
                Action::AlertUsageSpike,
                &RequestMeta::default(),
            )
            .target("api_key", s.api_key_id.to_string())
            .details(details.clone()),
        )
        .await?;
        tx.commit().await.map_err(crate::store::StoreError::from)?;
        Ok::<_, crate::store::StoreError>(rec.id)
    }
    .await;
    let event_id = match event_id {
        Ok(id) => Some(id),
        Err(e) => {
            tracing::error!(error = %e, "could not record the usage spike alert");
            None
        }
    };
    if let Some(url) = state.config.alerts.webhook_url.clone() {
        let body = json!({
            "type": "alert.usage_spike",
            "event_id": event_id,
            "tenant_id": &*s.tenant_id,
            "api_key_id": &*s.api_key_id,
            "details": details,
        });
        let outbound = state.outbound.clone();
        tokio::spawn(async move {
            // Through the outbound-URL guard, like every request to a configured URL.
            if let Err(e) = outbound.post_json(&url, &body, WEBHOOK_TIMEOUT).await {
                tracing::warn!(reason = e.reason(), "alert webhook did not take the alert");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector(multiple: f64, min: u64, minutes: u64) -> SpikeDetector {
        SpikeDetector::new(&AlertsConfig {
            spike_multiple: multiple,
            spike_min_requests: min,
            baseline_minutes: minutes,
            webhook_url: None,
        })
    }

    const T0: i64 = 1_763_812_320_000; // a whole minute

    #[test]
    fn a_burst_over_the_multiple_of_the_baseline_alerts_once() {
        let mut d = detector(3.0, 20, 10);
        let (t, k): (Arc<str>, Arc<str>) = ("ten".into(), "key".into());
        // Ten minutes at 10 requests per minute: baseline 10, no alert.
        for m in 0..10 {
            for i in 0..10 {
                assert_eq!(
                    d.observe_one(&t, &k, T0 + m * 60_000 + i),
                    None,
                    "minute {m}"
                );
            }
        }
        // Next minute: 30 is not over 3 × 10, the 31st is; once only.
        let m = T0 + 10 * 60_000;
        for i in 0..30 {
            assert_eq!(d.observe_one(&t, &k, m + i), None);
        }
        let s = d.observe_one(&t, &k, m + 30).expect("spike");
        assert_eq!((s.requests, s.baseline), (31, 10.0));
        assert_eq!(d.observe_one(&t, &k, m + 31), None);
    }

    #[test]
    fn quiet_minutes_lower_the_baseline_and_the_floor_applies() {
        let mut d = detector(3.0, 5, 4);
        let (t, k): (Arc<str>, Arc<str>) = ("ten".into(), "key".into());
        for i in 0..4 {
            d.observe_one(&t, &k, T0 + i);
        }
        // Ten minutes later the history is all zeros: the floor (5) decides.
        let later = T0 + 10 * 60_000;
        for i in 0..5 {
            assert_eq!(d.observe_one(&t, &k, later + i), None);
        }
        assert!(d.observe_one(&t, &k, later + 5).is_some());
    }
}
