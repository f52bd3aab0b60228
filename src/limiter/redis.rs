//! Redis backend (not yet written): placeholder so the crate builds; `new` always fails.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;

use super::{Decision, LimitSpec};

/// Why the Redis backend could not decide.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Not implemented yet.
    #[error("redis backend not built")]
    Unavailable,
}

/// Shared windows in Redis.
pub struct RedisLimiter;

impl RedisLimiter {
    /// Connects lazily to `url`.
    pub fn new(_url: &str, _metrics: Arc<Metrics>) -> Result<Self, BackendError> {
        Err(BackendError::Unavailable)
    }

    /// Checks and charges every limit of a key in one atomic step.
    pub async fn check_and_charge(
        &self,
        _key_id: &str,
        _limits: &[LimitSpec],
        _timeout: Duration,
    ) -> Result<Decision, BackendError> {
        Err(BackendError::Unavailable)
    }
}
