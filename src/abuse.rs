//! Brute-force protection: failed authentications are counted per client IP, and an IP past
//! `abuse.max_invalid_keys_per_minute` is refused with 429 before any key lookup.
//!
//! The counts use the same never-over-admitting rolling window as plan limits, keyed by IP.
//! Memory is bounded: at most `MAX_TRACKED_IPS` addresses hold state; past that, new addresses
//! are not tracked until the sweeper frees idle ones (they still need a valid key to get in).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

use crate::limiter::{retry_after_secs, Clock, Decision, LimitSpec, MemoryLimiter, MonotonicClock};

/// Most client IPs tracked at once (about 300 B each).
pub const MAX_TRACKED_IPS: usize = 200_000;

const WINDOW: Duration = Duration::from_secs(60);

/// Failed-authentication windows per client IP, plus the IPs currently blocked.
pub struct AbuseGuard {
    failures: MemoryLimiter<MonotonicClock>,
    blocked_until_ms: DashMap<IpAddr, u64, ahash::RandomState>,
}

impl AbuseGuard {
    /// An empty guard.
    pub fn new() -> Self {
        AbuseGuard {
            failures: MemoryLimiter::new(MonotonicClock::new()),
            blocked_until_ms: DashMap::with_hasher(ahash::RandomState::new()),
        }
    }

    /// `Some(retry_after_secs)` when `ip` is blocked now.
    pub fn blocked(&self, ip: IpAddr) -> Option<u64> {
        let until = *self.blocked_until_ms.get(&ip)?;
        let now = self.failures.clock().now_ms();
        (now < until).then(|| retry_after_secs(until - now))
    }

    /// Counts one failed authentication from `ip`; past `max` per minute the IP is blocked.
    pub fn record_failure(&self, ip: IpAddr, max_per_minute: u32) {
        if self.failures.key_count() >= MAX_TRACKED_IPS {
            return;
        }
        let spec = [LimitSpec {
            name: Arc::from("invalid_keys_per_minute"),
            max: max_per_minute,
            window_ms: WINDOW.as_millis() as u64,
        }];
        let key = ip.to_string();
        if let Decision::Refused { retry_after_ms, .. } =
            self.failures.check_and_charge(&key, &spec)
        {
            let until = self.failures.clock().now_ms() + retry_after_ms;
            self.blocked_until_ms.insert(ip, until);
        }
    }

    /// Frees idle windows and expired blocks.
    pub fn sweep(&self) {
        self.failures.sweep();
        let now = self.failures.clock().now_ms();
        self.blocked_until_ms.retain(|_, until| *until > now);
    }

    /// Addresses holding state.
    pub fn tracked(&self) -> usize {
        self.failures.key_count()
    }
}

impl Default for AbuseGuard {
    fn default() -> Self {
        Self::new()
    }
}
