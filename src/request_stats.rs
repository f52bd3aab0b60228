//! The three per-request metrics (`termsgate_requests_total`, `termsgate_request_duration_seconds`
//! and `termsgate_upstream_duration_seconds`), kept per worker thread and summed when scraped.
//!
//! The `prometheus` crate's counters and histograms are shared atomics: every request did nine
//! atomic read-modify-writes on cache lines that both worker threads write, so each one could
//! stall on the line moving between cores. Here each thread counts under a lock of its own that
//! only a scrape ever contends for, and the scrape adds the threads' figures up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};

use crate::metrics::LATENCY_BUCKETS_SECS;
use crate::sync::{lock, PerThread};

const REQUESTS: &str = "termsgate_requests_total";
const REQUEST_DURATION: &str = "termsgate_request_duration_seconds";
const UPSTREAM_DURATION: &str = "termsgate_upstream_duration_seconds";

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

/// A histogram one thread owns: plain integers, no atomics.
#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Observations per bucket (not cumulative); past the last bound only `count` grows.
    buckets: [u64; LATENCY_BUCKETS_SECS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        if let Some(i) = LATENCY_BUCKETS_SECS.iter().position(|bound| secs <= *bound) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum += secs;
    }

    fn add(&mut self, other: &Histogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum += other.sum;
    }

    fn to_proto(&self) -> proto::Histogram {
        let mut cumulative = 0;
        let buckets = LATENCY_BUCKETS_SECS
            .iter()
            .zip(self.buckets)
            .map(|(bound, n)| {
                cumulative += n;
                let mut b = proto::Bucket::default();
                b.set_upper_bound(*bound);
                b.set_cumulative_count(cumulative);
                b
            })
            .collect();
        let mut h = proto::Histogram::default();
        h.set_sample_count(self.count);
        h.set_sample_sum(self.sum);
        h.set_bucket(buckets);
        h
    }
}

/// One label set's figures in one thread.
#[derive(Debug)]
struct Series {
    plan: Box<str>,
    route: Box<str>,
    status: &'static str,
    requests: u64,
    duration: Histogram,
    upstream: Histogram,
}

impl Series {
    fn is(&self, labels: RequestLabels<'_>) -> bool {
        *self.plan == *labels.plan && *self.route == *labels.route && self.status == labels.status
    }
}

/// One thread's series, by a hash of their labels.
#[derive(Default)]
struct ThreadStats {
    hasher: ahash::RandomState,
    series: HashMap<u64, Vec<Series>, ahash::RandomState>,
}

impl ThreadStats {
    fn series(&mut self, labels: RequestLabels<'_>) -> &mut Series {
        let slot = self.series.entry(self.hasher.hash_one(labels)).or_default();
        // Almost always one entry; a hash collision keeps both, side by side.
        match slot.iter().position(|s| s.is(labels)) {
            Some(i) => &mut slot[i],
            None => {
                slot.push(Series {
                    plan: labels.plan.into(),
                    route: labels.route.into(),
                    status: labels.status,
                    requests: 0,
                    duration: Histogram::default(),
                    upstream: Histogram::default(),
                });
                let last = slot.len() - 1;
                &mut slot[last]
            }
        }
    }
}

/// The request metrics of one `Metrics` instance, registered in its registry as a collector
/// (a clone shares the figures).
#[derive(Clone)]
pub struct RequestStats {
    per_thread: Arc<PerThread<Mutex<ThreadStats>>>,
    descs: Vec<Desc>,
}

impl RequestStats {
    /// Empty figures; no series shows until its first request.
    pub fn new() -> Self {
        let desc = |name: &str, help: &str, labels: &[&str]| {
            Desc::new(
                name.to_owned(),
                help.to_owned(),
                labels.iter().map(|l| (*l).to_owned()).collect(),
                HashMap::new(),
            )
            .expect("static metric definition")
        };
        RequestStats {
            per_thread: Arc::new(PerThread::new()),
            descs: vec![
                desc(
                    REQUESTS,
                    "Requests answered, by plan, route and status.",
                    &["plan", "route", "status"],
                ),
                desc(
                    REQUEST_DURATION,
                    "Time from the first request byte to the last response byte.",
                    &["plan", "route"],
                ),
                desc(
                    UPSTREAM_DURATION,
                    "Time from sending the request upstream to its response header.",
                    &["route"],
                ),
            ],
        }
    }

    /// Counts one finished request, its duration and, when it was proxied, the upstream's time
    /// to the response header.
    pub fn observe(
        &self,
        labels: RequestLabels<'_>,
        duration_secs: f64,
        upstream_secs: Option<f64>,
    ) {
        let mut stats = lock(self.per_thread.get_or(Mutex::default));
        let series = stats.series(labels);
        series.requests += 1;
        series.duration.observe(duration_secs);
        if let Some(secs) = upstream_secs {
            series.upstream.observe(secs);
        }
    }

    /// Every thread's series, added up by the labels each metric has.
    fn totals(&self) -> Totals {
        let mut totals = Totals::default();
        for stats in self.per_thread.iter() {
            for s in lock(stats).series.values().flatten() {
                let (plan, route) = (s.plan.to_string(), s.route.to_string());
                *totals
                    .requests
                    .entry((plan.clone(), route.clone(), s.status))
                    .or_default() += s.requests;
                totals
                    .duration
                    .entry((plan, route.clone()))
                    .or_default()
                    .add(&s.duration);
                if s.upstream.count > 0 {
                    totals.upstream.entry(route).or_default().add(&s.upstream);
                }
            }
        }
        totals
    }

    /// `termsgate_requests_total{plan,route,status}` as counted so far (tests).
    #[cfg(test)]
    pub fn requests(&self, plan: &str, route: &str, status: &str) -> u64 {
        self.totals()
            .requests
            .iter()
            .filter(|((p, r, s), _)| p == plan && r == route && *s == status)
            .map(|(_, n)| n)
            .sum()
    }

    /// Observations in `termsgate_request_duration_seconds{plan,route}` (tests).
    #[cfg(test)]
    pub fn duration_count(&self, plan: &str, route: &str) -> u64 {
        let key = (plan.to_owned(), route.to_owned());
        self.totals().duration.get(&key).map_or(0, |h| h.count)
    }

    /// Observations in `termsgate_upstream_duration_seconds{route}` (tests).
    #[cfg(test)]
    pub fn upstream_count(&self, route: &str) -> u64 {
        self.totals().upstream.get(route).map_or(0, |h| h.count)
    }
}

impl Default for RequestStats {
    fn default() -> Self {
        Self::new()
    }
}

/// The scrape's sums.
#[derive(Default)]
struct Totals {
    requests: HashMap<(String, String, &'static str), u64>,
    duration: HashMap<(String, String), Histogram>,
    upstream: HashMap<String, Histogram>,
}

fn label_pairs(pairs: &[(&str, &str)]) -> Vec<proto::LabelPair> {
    pairs
        .iter()
        .map(|(name, value)| {
            let mut lp = proto::LabelPair::default();
            lp.set_name((*name).to_owned());
            lp.set_value((*value).to_owned());
            lp
        })
        .collect()
}

fn family(desc: &Desc, kind: MetricType, metrics: Vec<proto::Metric>) -> MetricFamily {
    let mut mf = MetricFamily::default();
    mf.set_name(desc.fq_name.clone());
    mf.set_help(desc.help.clone());
    mf.set_field_type(kind);
    mf.set_metric(metrics);
    mf
}

impl Collector for RequestStats {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let totals = self.totals();
        let requests = totals
            .requests
            .iter()
            .map(|((plan, route, status), n)| {
                let mut m = proto::Metric::default();
                m.set_label(label_pairs(&[
                    ("plan", plan),
                    ("route", route),
                    ("status", status),
                ]));
                let mut c = proto::Counter::default();
                c.set_value(*n as f64);
                m.set_counter(c);
                m
            })
            .collect();
        let duration = totals
            .duration
            .iter()
            .map(|((plan, route), h)| {
                let mut m = proto::Metric::default();
                m.set_label(label_pairs(&[("plan", plan), ("route", route)]));
                m.set_histogram(h.to_proto());
                m
            })
            .collect();
        let upstream = totals
            .upstream
            .iter()
            .map(|(route, h)| {
                let mut m = proto::Metric::default();
                m.set_label(label_pairs(&[("route", route)]));
                m.set_histogram(h.to_proto());
                m
            })
            .collect();
        vec![
            family(&self.descs[0], MetricType::COUNTER, requests),
            family(&self.descs[1], MetricType::HISTOGRAM, duration),
            family(&self.descs[2], MetricType::HISTOGRAM, upstream),
        ]
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
    fn observations_from_several_threads_add_up_per_label_set() {
        let stats = RequestStats::new();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..250 {
                        stats.observe(labels("free", "201"), 0.002, Some(0.001));
                    }
                    stats.observe(labels("free", "429"), 0.0001, None);
                });
            }
        });
        assert_eq!(stats.requests("free", "spawn", "201"), 1_000);
        assert_eq!(stats.requests("free", "spawn", "429"), 4);
        assert_eq!(stats.requests("pro", "spawn", "201"), 0);
        assert_eq!(stats.duration_count("free", "spawn"), 1_004);
        assert_eq!(stats.upstream_count("spawn"), 1_000);
    }

    #[test]
    fn buckets_are_cumulative_and_the_sum_is_kept() {
        let mut h = Histogram::default();
        for secs in [0.0001, 0.003, 0.003, 7.0, 60.0] {
            h.observe(secs);
        }
        let p = h.to_proto();
        let cumulative: Vec<(f64, u64)> = p
            .get_bucket()
            .iter()
            .map(|b| (b.get_upper_bound(), b.get_cumulative_count()))
            .collect();
        assert_eq!(cumulative[0], (0.0005, 1));
        assert_eq!(cumulative[3], (0.005, 3));
        assert_eq!(cumulative[12], (5.0, 3));
        assert_eq!(cumulative[13], (10.0, 4));
        assert_eq!(p.get_sample_count(), 5, "60 s counts only in +Inf");
        assert!((p.get_sample_sum() - 67.0061).abs() < 1e-9);
    }

    #[test]
    fn each_metric_is_summed_over_the_labels_it_does_not_have() {
        let stats = RequestStats::new();
        stats.observe(labels("free", "201"), 0.002, Some(0.001));
        stats.observe(labels("free", "500"), 0.002, Some(0.001));
        stats.observe(labels("pro", "201"), 0.002, Some(0.001));
        let families = stats.collect();
        let count = |i: usize| families[i].get_metric().len();
        assert_eq!(
            count(0),
            3,
            "requests: one series per plan, route and status"
        );
        assert_eq!(count(1), 2, "duration: one per plan and route");
        assert_eq!(count(2), 1, "upstream: one per route");
        assert_eq!(
            families[2].get_metric()[0]
                .get_histogram()
                .get_sample_count(),
            3
        );
    }
}
