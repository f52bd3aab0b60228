//! Prometheus metrics: the contract's names and labels, in the gateway's own registry.
//!
//! We serve our own `Registry` from the admin listener rather than Pingora's default one, so a
//! `prometheus` version mismatch with Pingora can never make metrics silently disappear.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

/// Buckets from 0.5 ms to 10 s: an edge proxy adds well under a millisecond, upstreams take more.
const LATENCY_BUCKETS_SECS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Every metric the gateway exports.
pub struct Metrics {
    /// Tells this instance's cached handles from another's (tests build several).
    id: u64,
    registry: Registry,
    /// `termsgate_requests_total{plan,route,status}`.
    pub requests: IntCounterVec,
    /// `termsgate_request_duration_seconds{plan,route}`.
    pub request_duration: HistogramVec,
    /// `termsgate_upstream_duration_seconds{route}`.
    pub upstream_duration: HistogramVec,
    /// `termsgate_rate_limited_total{plan,limit}`.
    pub rate_limited: IntCounterVec,
    /// `termsgate_auth_failures_total{reason}`.
    pub auth_failures: IntCounterVec,
    /// `termsgate_upstream_errors_total{kind}`.
    pub upstream_errors: IntCounterVec,
    /// `termsgate_config_reloads_total{result}`.
    pub config_reloads: IntCounterVec,
    /// `termsgate_config_last_reload_success_timestamp_seconds`.
    pub config_last_reload_success: Gauge,
    /// `termsgate_limiter_keys`.
    pub limiter_keys: IntGauge,
    /// `termsgate_access_log_dropped_total`.
    pub access_log_dropped: IntCounter,
    /// `termsgate_abuse_blocked_total`.
    pub abuse_blocked: IntCounter,
    /// `termsgate_limiter_backend_errors_total{kind}`.
    pub backend_errors: IntCounterVec,
    /// `termsgate_client_timeouts_total{kind}`: connections closed for a slow header or idleness.
    pub client_timeouts: IntCounterVec,
    /// `termsgate_limiter_backend_duration_seconds`.
    pub backend_duration: HistogramVec,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn histogram_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS_SECS.to_vec());
    let h = HistogramVec::new(opts, labels).expect("static metric definition");
    registry
        .register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

impl Metrics {
    /// Creates and registers every metric, with the fixed label values pre-set to zero.
    pub fn new() -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let r = Registry::new();
        let m = Metrics {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            requests: counter_vec(
                &r,
                "termsgate_requests_total",
                "Requests answered, by plan, route and status.",
                &["plan", "route", "status"],
            ),
            request_duration: histogram_vec(
                &r,
                "termsgate_request_duration_seconds",
                "Time from the first request byte to the last response byte.",
                &["plan", "route"],
            ),
            upstream_duration: histogram_vec(
                &r,
                "termsgate_upstream_duration_seconds",
                "Time from sending the request upstream to its response header.",
                &["route"],
            ),
            rate_limited: counter_vec(
                &r,
                "termsgate_rate_limited_total",
                "Requests refused by a plan limit.",
                &["plan", "limit"],
            ),
            auth_failures: counter_vec(
                &r,
                "termsgate_auth_failures_total",
                "Requests refused for a missing, malformed or unknown key.",
                &["reason"],
            ),
            upstream_errors: counter_vec(
                &r,
                "termsgate_upstream_errors_total",
                "Failures talking to the upstream.",
                &["kind"],
            ),
            config_reloads: counter_vec(
                &r,
                "termsgate_config_reloads_total",
                "Config reload attempts.",
                &["result"],
            ),
            config_last_reload_success: {
                let g = Gauge::new(
                    "termsgate_config_last_reload_success_timestamp_seconds",
                    "Unix time of the last config load that succeeded.",
                )
                .expect("static metric definition");
                r.register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
            limiter_keys: {
                let g = IntGauge::new(
                    "termsgate_limiter_keys",
                    "Keys holding window state in this process.",
                )
                .expect("static metric definition");
                r.register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
            access_log_dropped: {
                let c = IntCounter::new(
                    "termsgate_access_log_dropped_total",
                    "Access log lines dropped because the log buffer was full.",
                )
                .expect("static metric definition");
                r.register(Box::new(c.clone()))
                    .expect("metric registered once");
                c
            },
            abuse_blocked: {
                let c = IntCounter::new(
                    "termsgate_abuse_blocked_total",
                    "Requests refused because their IP sent too many invalid keys.",
                )
                .expect("static metric definition");
                r.register(Box::new(c.clone()))
                    .expect("metric registered once");
                c
            },
            backend_errors: counter_vec(
                &r,
                "termsgate_limiter_backend_errors_total",
                "Limiter backend failures.",
                &["kind"],
            ),
            client_timeouts: counter_vec(
                &r,
                "termsgate_client_timeouts_total",
                "Client connections closed for a slow request header or for idleness.",
                &["kind"],
            ),
            backend_duration: histogram_vec(
                &r,
                "termsgate_limiter_backend_duration_seconds",
                "Round trip to the limiter backend.",
                &["backend"],
            ),
            registry: r,
        };
        m.preset_labels();
        m
    }

    fn preset_labels(&self) {
        for reason in ["missing", "malformed", "unknown_key"] {
            self.auth_failures.with_label_values(&[reason]);
        }
        for kind in ["connect", "timeout", "other"] {
            self.upstream_errors.with_label_values(&[kind]);
        }
        for result in ["success", "failure"] {
            self.config_reloads.with_label_values(&[result]);
        }
        for kind in ["timeout", "connection", "script"] {
            self.backend_errors.with_label_values(&[kind]);
        }
        for kind in ["header", "idle"] {
            self.client_timeouts.with_label_values(&[kind]);
        }
    }

    /// Counts a config load.
    pub fn record_reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.config_reloads.with_label_values(&[result]).inc();
        if ok {
            self.record_reload_timestamp();
        }
    }

    /// Sets the last-successful-load time to now (start-up counts as a load, not a reload).
    pub fn record_reload_timestamp(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.config_last_reload_success.set(now);
    }

    /// Counts one finished request: `termsgate_requests_total`, its duration and, when it was
    /// proxied, the upstream's time to the response header.
    ///
    /// `with_label_values` hashes the labels with SipHash and takes the metric family's lock on
    /// every call; each worker thread keeps the handles it has resolved instead, so the request
    /// path takes no lock here.
    pub fn observe_request(
        &self,
        labels: RequestLabels<'_>,
        duration_secs: f64,
        upstream_secs: Option<f64>,
    ) {
        thread_local! {
            static HANDLES: RefCell<HandleCache> = RefCell::new(HandleCache::default());
        }
        HANDLES.with(|cache| {
            let mut cache = cache.borrow_mut();
            let handles = cache.get(self, labels);
            handles.requests.inc();
            handles.duration.observe(duration_secs);
            if let Some(secs) = upstream_secs {
                handles.upstream.observe(secs);
            }
        });
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec only fails on invalid metric families, which we never build.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!("cannot encode metrics: {e}");
        }
        out
    }
}

/// The labels of one finished request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestLabels<'a> {
    /// Plan name, or `none`.
    pub plan: &'a str,
    /// Route name, or `other`.
    pub route: &'a str,
    /// Status code label.
    pub status: &'static str,
}

/// The metric handles for one set of request labels.
struct Handles {
    metrics_id: u64,
    plan: Box<str>,
    route: Box<str>,
    status: &'static str,
    requests: IntCounter,
    duration: Histogram,
    upstream: Histogram,
}

/// One worker thread's resolved handles, by a hash of (metrics instance, labels). Bounded: it
/// starts over past `MAX_ENTRIES` (only reloads that rename plans or routes could get there).
#[derive(Default)]
struct HandleCache {
    hasher: ahash::RandomState,
    entries: HashMap<u64, Handles, ahash::RandomState>,
}

const MAX_ENTRIES: usize = 4096;

impl HandleCache {
    fn get(&mut self, metrics: &Metrics, labels: RequestLabels<'_>) -> &Handles {
        let key = self.hasher.hash_one((metrics.id, labels));
        let hit = self.entries.get(&key).is_some_and(|h| {
            h.metrics_id == metrics.id
                && *h.plan == *labels.plan
                && *h.route == *labels.route
                && h.status == labels.status
        });
        if !hit {
            if self.entries.len() >= MAX_ENTRIES {
                self.entries.clear();
            }
            // A hash collision replaces the other entry: correct, only slower.
            self.entries.insert(key, Handles::resolve(metrics, labels));
        }
        &self.entries[&key]
    }
}

impl Handles {
    fn resolve(m: &Metrics, l: RequestLabels<'_>) -> Self {
        Handles {
            metrics_id: m.id,
            plan: l.plan.into(),
            route: l.route.into(),
            status: l.status,
            requests: m.requests.with_label_values(&[l.plan, l.route, l.status]),
            duration: m.request_duration.with_label_values(&[l.plan, l.route]),
            upstream: m.upstream_duration.with_label_values(&[l.route]),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(plan: &'static str, status: &'static str) -> RequestLabels<'static> {
        RequestLabels {
            plan,
            route: "spawn",
            status,
        }
    }

    #[test]
    fn observed_requests_land_in_their_own_series_and_instance() {
        let (a, b) = (Metrics::new(), Metrics::new());
        for _ in 0..3 {
            a.observe_request(labels("free", "201"), 0.002, Some(0.001));
        }
        a.observe_request(labels("free", "429"), 0.001, None);
        b.observe_request(labels("free", "201"), 0.002, None);
        let count = |m: &Metrics, plan, status| {
            m.requests.with_label_values(&[plan, "spawn", status]).get()
        };
        assert_eq!(count(&a, "free", "201"), 3);
        assert_eq!(count(&a, "free", "429"), 1);
        assert_eq!(
            count(&b, "free", "201"),
            1,
            "instances do not share cached handles"
        );
        assert_eq!(
            a.request_duration
                .with_label_values(&["free", "spawn"])
                .get_sample_count(),
            4
        );
        assert_eq!(
            a.upstream_duration
                .with_label_values(&["spawn"])
                .get_sample_count(),
            3
        );
    }

    #[test]
    fn the_handle_cache_stays_correct_past_its_bound() {
        let m = Metrics::new();
        let plans: Vec<&'static str> = (0..MAX_ENTRIES + 10)
            .map(|i| &*Box::leak(format!("p{i}").into_boxed_str()))
            .collect();
        for plan in &plans {
            m.observe_request(labels(plan, "200"), 0.001, None);
        }
        m.observe_request(labels(plans[0], "200"), 0.001, None);
        assert_eq!(
            m.requests.with_label_values(&["p0", "spawn", "200"]).get(),
            2
        );
        assert_eq!(
            m.requests.with_label_values(&["p5", "spawn", "200"]).get(),
            1
        );
    }
}
