//! The limiter the proxy talks to: the in-memory windows, or Redis shared by several
//! instances, with the configured policy when the shared backend fails.

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
}

impl Limiter {
    /// Builds the backend named in the config. A Redis backend connects lazily, in the background.
    pub fn from_settings(settings: &LimiterSettings, metrics: Arc<Metrics>) -> Self {
        let redis = match &settings.backend {
            Backend::Memory => None,
            Backend::Redis { url } => RedisLimiter::new(url, metrics).ok(),
        };
        Limiter {
            memory: MemoryLimiter::new(MonotonicClock::new()),
            redis,
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
        match redis
            .check_and_charge(key_id, limits, settings.timeout)
            .await
        {
            Ok(decision) => Verdict::Decided(decision),
            Err(_) => match settings.on_backend_error {
                OnBackendError::Local => {
                    Verdict::Decided(self.memory.check_and_charge(key_id, limits))
                }
                OnBackendError::Allow => Verdict::AdmittedUnchecked,
                OnBackendError::Deny => Verdict::Unavailable,
            },
        }
    }

    /// The in-memory windows (the whole state with the memory backend, the fallback with Redis).
    pub fn memory(&self) -> &MemoryLimiter<MonotonicClock> {
        &self.memory
    }
}
