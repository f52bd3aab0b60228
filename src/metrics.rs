//! Prometheus metrics: the contract's names and labels, in the gateway's own registry.
//!
//! We serve our own `Registry` from the admin listener rather than Pingora's default one, so a
//! `prometheus` version mismatch with Pingora can never make metrics silently disappear.

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

pub use crate::request_stats::RequestLabels;
use crate::request_stats::RequestStats;

/// Buckets from 0.5 ms to 10 s: an edge proxy adds well under a millisecond, upstreams take more.
pub const LATENCY_BUCKETS_SECS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    /// `termsgate_requests_total{plan,route,status}`, `termsgate_request_duration_seconds{plan,route}`
    /// and `termsgate_upstream_duration_seconds{route}`, counted per worker thread.
    pub requests: RequestStats,
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
        let r = Registry::new();
        let requests = RequestStats::new();
        r.register(Box::new(requests.clone()))
            .expect("metric registered once");
        let m = Metrics {
            requests,
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
    pub fn observe_request(
        &self,
        labels: RequestLabels<'_>,
        duration_secs: f64,
        upstream_secs: Option<f64>,
    ) {
        self.requests.observe(labels, duration_secs, upstream_secs);
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

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observed_requests_are_rendered_and_instances_do_not_share_them() {
        let (a, b) = (Metrics::new(), Metrics::new());
        let labels = RequestLabels {
            plan: "free",
            route: "spawn",
            status: "201",
        };
        for _ in 0..3 {
            a.observe_request(labels, 0.002, Some(0.001));
        }
        b.observe_request(labels, 0.002, None);
        assert_eq!(a.requests.requests("free", "spawn", "201"), 3);
        assert_eq!(b.requests.requests("free", "spawn", "201"), 1);
        let text = String::from_utf8(a.render()).expect("utf8");
        for line in [
            "termsgate_requests_total{plan=\"free\",route=\"spawn\",status=\"201\"} 3",
            "termsgate_request_duration_seconds_bucket{plan=\"free\",route=\"spawn\",le=\"0.0025\"} 3",
            "termsgate_request_duration_seconds_bucket{plan=\"free\",route=\"spawn\",le=\"+Inf\"} 3",
            "termsgate_request_duration_seconds_count{plan=\"free\",route=\"spawn\"} 3",
            "termsgate_upstream_duration_seconds_count{route=\"spawn\"} 3",
            "# TYPE termsgate_requests_total counter",
            "# TYPE termsgate_request_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
