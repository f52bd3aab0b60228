//! What every request and every background task share: the config snapshot, the limiter,
//! the metrics and the access log.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::abuse::AbuseGuard;
use crate::access_log::AccessLog;
use crate::config::Config;
use crate::limiter::backend::Limiter;
use crate::metrics::Metrics;
use crate::tls::CertStore;

/// Shared gateway state. One per process.
pub struct Shared {
    /// The config in force; a reload swaps it whole.
    pub config: ArcSwap<Config>,
    /// Window state.
    pub limiter: Limiter,
    /// Failed-authentication counts per client IP.
    pub abuse: AbuseGuard,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// The access log writer.
    pub access_log: AccessLog,
    /// Requests between their first byte and their log line.
    pub inflight: AtomicUsize,
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
            inflight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            tls,
        })
    }

    /// Counts a request in flight until the returned guard is dropped.
    pub fn track_inflight(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        InflightGuard(self.clone())
    }
}

/// Decrements the in-flight count when a request's context is dropped.
pub struct InflightGuard(Arc<Shared>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}
