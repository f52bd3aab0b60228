//! What every request and every background task share: the config snapshot, the limiter,
//! the metrics and the access log.

use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use crossbeam_utils::CachePadded;

use crate::abuse::AbuseGuard;
use crate::access_log::AccessLog;
use crate::config::thread_copy::ConfigCopies;
use crate::config::Config;
use crate::limiter::backend::Limiter;
use crate::metrics::Metrics;
use crate::sync::PerThread;
use crate::tls::CertStore;

/// Shared gateway state. One per process.
pub struct Shared {
    /// The config in force; a reload swaps it whole, through [`Shared::install_config`] (a
    /// plain `store` works too, but leaves each worker to copy it on its next request).
    pub config: ArcSwap<Config>,
    /// Window state.
    pub limiter: Limiter,
    /// Failed-authentication counts per client IP.
    pub abuse: AbuseGuard,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// The access log writer.
    pub access_log: AccessLog,
    /// Requests between their first byte and their log line, counted per thread (a request
    /// ended on another thread than it started on makes one count negative; the sum is right).
    inflight: PerThread<Arc<CachePadded<AtomicIsize>>>,
    /// Each worker thread's copy of the config in force.
    config_copies: ConfigCopies,
    /// Set on SIGTERM: `/readyz` turns 503 so load balancers stop sending.
    pub draining: AtomicBool,
    /// The certificate of the HTTPS listener, when there is one.
    pub tls: Option<Arc<CertStore>>,
}

impl Shared {
    /// Builds the state around a first, already validated config.
    pub fn new(config: Config, metrics: Arc<Metrics>, access_log: AccessLog) -> Arc<Self> {
        let limiter = Limiter::from_settings(&config.limiter, metrics.clone());
        let tls = config
            .server
            .tls
            .as_ref()
            .map(|t| Arc::new(CertStore::new(t.pair.clone())));
        Arc::new(Shared {
            config: ArcSwap::from_pointee(config),
            limiter,
            abuse: AbuseGuard::new(),
            metrics,
            access_log,
            inflight: PerThread::new(),
            config_copies: ConfigCopies::new(),
            draining: AtomicBool::new(false),
            tls,
        })
    }

    /// Counts a request in flight until the returned guard is dropped. The count and the
    /// guard's reference belong to this thread: no cache line another worker writes.
    pub fn track_inflight(&self) -> InflightGuard {
        let count = self
            .inflight
            .get_or(|| Arc::new(CachePadded::new(AtomicIsize::new(0))));
        count.fetch_add(1, Ordering::AcqRel);
        InflightGuard(count.clone())
    }

    /// Requests in flight now.
    pub fn inflight(&self) -> usize {
        let total: isize = self
            .inflight
            .iter()
            .map(|count| count.load(Ordering::Acquire))
            .sum();
        total.max(0) as usize
    }

    /// The config snapshot in force, as this thread's own copy (`config::thread_copy`).
    pub fn request_config(&self) -> Arc<Config> {
        self.config_copies.current(&self.config)
    }

    /// Puts `config` in force (a reload), with each worker's copy made first, off the request
    /// path.
    pub fn install_config(&self, config: Arc<Config>) {
        self.config_copies.install(&self.config, config);
    }

    /// Frees config copies the workers have moved on from (from the periodic sweep, so that
    /// no request frees a whole config).
    pub fn release_old_configs(&self) {
        self.config_copies.release_retired();
    }
}

/// Decrements the in-flight count when a request's context is dropped.
pub struct InflightGuard(Arc<CachePadded<AtomicIsize>>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(upstream_port: u16) -> Arc<Shared> {
        let config = shared_config_with_upstream(upstream_port);
        let metrics = Arc::new(Metrics::new());
        let log = AccessLog::start(
            Box::new(std::io::sink()),
            16,
            metrics.access_log_dropped.clone(),
        );
        Shared::new(config, metrics, log)
    }

    #[test]
    fn each_thread_reads_its_own_copy_of_the_config_in_force() {
        let shared = shared(9);
        let first = shared.request_config();
        assert!(Arc::ptr_eq(&first, &shared.request_config()), "copied once");
        assert!(!Arc::ptr_eq(&first, &shared.config.load_full()), "a copy");
        let other =
            std::thread::scope(|s| s.spawn(|| shared.request_config()).join()).expect("thread");
        assert!(!Arc::ptr_eq(&first, &other), "another thread, another copy");

        shared.install_config(Arc::new(shared_config_with_upstream(10)));
        let prepared = |shared: &Shared| shared.config_copies.prepared_count();
        assert_eq!(
            prepared(&shared),
            2,
            "a copy made ahead for each of the two threads"
        );
        let after = shared.request_config();
        assert_eq!(
            after.server.upstream, "127.0.0.1:10",
            "a reload is seen at once"
        );
        assert_eq!(prepared(&shared), 1, "this thread took a copy made ahead");
        assert_eq!(
            shared.config_copies.retired_count(),
            1,
            "its old copy waits for the sweep"
        );
        assert_eq!(
            first.server.upstream, "127.0.0.1:9",
            "a request keeps its snapshot"
        );
        let first_copy = Arc::downgrade(&first);
        drop(first);
        shared.release_old_configs();
        assert_eq!(shared.config_copies.retired_count(), 0);
        assert!(first_copy.upgrade().is_none(), "the old copy is freed");

        // A config stored without copies made ahead is copied on first use.
        shared
            .config
            .store(Arc::new(shared_config_with_upstream(11)));
        assert_eq!(shared.request_config().server.upstream, "127.0.0.1:11");
        assert_eq!(prepared(&shared), 1, "a stale copy made ahead is not taken");
    }

    fn shared_config_with_upstream(port: u16) -> Config {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:{port}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n"
        );
        crate::config::load_str(&text, std::path::Path::new("t.toml")).expect("config")
    }

    #[test]
    fn requests_in_flight_are_summed_over_threads_wherever_they_end() {
        let shared = shared(9);
        let here = shared.track_inflight();
        let there =
            std::thread::scope(|s| s.spawn(|| shared.track_inflight()).join()).expect("thread");
        assert_eq!(shared.inflight(), 2);
        // Started on the other thread, ended on this one.
        drop(there);
        assert_eq!(shared.inflight(), 1);
        drop(here);
        assert_eq!(shared.inflight(), 0);
    }
}
