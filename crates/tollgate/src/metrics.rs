//! Prometheus metrics. The registry lives in the app state, so each test app has its own counters.
//! Labels are low-cardinality by design: no key ids, user ids or secrets, ever.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: &'static str,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

/// Interns a label value from a finite set (the router's route templates, configured provider
/// names) so labels need no allocation per request.
pub fn intern(route: &str) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{OnceLock, RwLock};
    static ROUTES: OnceLock<RwLock<HashSet<&'static str>>> = OnceLock::new();
    let set = ROUTES.get_or_init(Default::default);
    if let Some(r) = set.read().ok().and_then(|s| s.get(route).copied()) {
        return r;
    }
    let Ok(mut w) = set.write() else {
        return "unknown";
    };
    if let Some(r) = w.get(route) {
        return r;
    }
    let leaked: &'static str = Box::leak(route.to_string().into_boxed_str());
    w.insert(leaked);
    leaked
}

/// A static label for an HTTP method.
pub fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub provider: &'static str,
    pub outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<RouteLabels, Histogram>,
    pub http_in_flight: Gauge<i64, AtomicI64>,
    pub auth_failures: Family<ReasonLabels, Counter>,
    pub upstream_duration: Family<UpstreamLabels, Histogram>,
    pub streams_cut: Family<ReasonLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn latency_histogram() -> Histogram {
    // 100 µs … ~105 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 21))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tollgate");
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_duration = Family::<RouteLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let http_in_flight = Gauge::<i64, AtomicI64>::default();
        let auth_failures = Family::<ReasonLabels, Counter>::default();
        let upstream_duration = Family::<UpstreamLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let streams_cut = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to response headers by route",
            http_duration.clone(),
        );
        registry.register(
            "http_in_flight_requests",
            "Requests being served now",
            http_in_flight.clone(),
        );
        registry.register(
            "auth_failures",
            "Rejected credentials by reason",
            auth_failures.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Upstream time to response headers by provider and outcome",
            upstream_duration.clone(),
        );
        registry.register(
            "streams_cut",
            "Streams ended by the gateway, by reason",
            streams_cut.clone(),
        );
        Self {
            registry,
            http_requests,
            http_duration,
            http_in_flight,
            auth_failures,
            upstream_duration,
            streams_cut,
        }
    }
}

impl Metrics {
    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// `provider` is a configured provider's name, interned ([`intern`]) when the proxy was built.
    pub fn upstream(&self, provider: &'static str, outcome: &'static str, seconds: f64) {
        self.upstream_duration
            .get_or_create(&UpstreamLabels { provider, outcome })
            .observe(seconds);
    }

    pub fn stream_cut(&self, reason: &'static str) {
        self.streams_cut
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Lets other subsystems register their metrics at start-up.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }
}
