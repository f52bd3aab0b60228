//! The limiter the proxy talks to: the in-memory windows, or Redis shared by several
//! instances, with the configured policy when the shared backend fails.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::config::{Backend, LimiterSettings, OnBackendError};
use crate::metrics::Metrics;

use super::memory::MemoryLimiter;
use super::redis::RedisLimiter;
use super::{Decision, LimitSpec, MonotonicClock};

/// What the limiter says about one request.
#[derive(Debug)]
pub enum Verdict {
    /// Checked (and, if admitted, charged).
    Decided(Decision),
    /// The backend failed and the policy is `allow`: admitted without counting.
    AdmittedUnchecked,
    /// The backend failed and the policy is `deny`.
    Unavailable,
}

/// The process's limiter.
pub struct Limiter {
    memory: MemoryLimiter<MonotonicClock>,
    redis: Option<RedisLimiter>,
    /// Whether the last Redis call failed: failures and recoveries are logged once each,
    /// not once per request.
    redis_failing: AtomicBool,
}

impl Limiter {
    /// Builds the backend named in the config. A Redis backend connects lazily, in the background.
    pub fn from_settings(settings: &LimiterSettings, metrics: Arc<Metrics>) -> Self {
        let redis = match &settings.backend {
            Backend::Memory => None,
            Backend::Redis { url } => match RedisLimiter::new(url, metrics) {
                Ok(redis) => Some(redis),
                Err(e) => {
                    // `termsgate check` rejects bad URLs, so this is a thread that would not
                    // start. Limits stay enforced, but per instance only.
                    tracing::error!(
                        "limiter backend redis unavailable ({e}); using this instance's \
                         in-memory windows instead"
                    );
                    None
                }
            },
        };
        Limiter {
            memory: MemoryLimiter::new(MonotonicClock::new()),
            redis,
            redis_failing: AtomicBool::new(false),
        }
    }

    /// Checks and charges every limit of `key_id` in one step.
    pub async fn check(
        &self,
        key_id: &str,
        limits: &[LimitSpec],
        settings: &LimiterSettings,
    ) -> Verdict {
        let Some(redis) = &self.redis else {
            return Verdict::Decided(self.memory.check_and_charge(key_id, limits));
        };
        // Boxed: the Redis call's state would otherwise make every request's future larger,
        // memory backend or not.
        match Box::pin(redis.check_and_charge(key_id, limits, settings.timeout)).await {
            Ok(decision) => {
                if self.redis_failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("limiter backend redis answers again");
                }
                Verdict::Decided(decision)
            }
            Err(e) => {
                if !self.redis_failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        policy = ?settings.on_backend_error,
                        "limiter backend redis failed ({e}); following on_backend_error"
                    );
                }
                Self::on_error(&self.memory, key_id, limits, settings.on_backend_error)
            }
        }
    }

    /// The verdict of `policy` when the shared backend could not decide.
    fn on_error(
        memory: &MemoryLimiter<MonotonicClock>,
        key_id: &str,
        limits: &[LimitSpec],
        policy: OnBackendError,
    ) -> Verdict {
        match policy {
            // Limits hold per instance: up to N × max across N instances during the outage.
            OnBackendError::Local => Verdict::Decided(memory.check_and_charge(key_id, limits)),
            OnBackendError::Allow => Verdict::AdmittedUnchecked,
            OnBackendError::Deny => Verdict::Unavailable,
        }
    }

    /// The in-memory windows (the whole state with the memory backend, the fallback with Redis).
    pub fn memory(&self) -> &MemoryLimiter<MonotonicClock> {
        &self.memory
    }
}
