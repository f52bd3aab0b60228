//! Brute-force protection: failed authentications are counted per client IP, and an IP past
//! `abuse.max_invalid_keys_per_minute` is refused with 429 before any key lookup.
//!
//! The counts use the same never-over-admitting rolling window as plan limits, keyed by IP.
//! Memory is bounded: at most `MAX_TRACKED_IPS` addresses hold state; past that, new addresses
//! are not tracked until the sweeper frees idle ones (they still need a valid key to get in).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;

use crate::limiter::{retry_after_secs, Clock, Decision, LimitSpec, MemoryLimiter, MonotonicClock};
use crate::sync::lock;

/// Most client IPs tracked at once (about 300 B each).
pub const MAX_TRACKED_IPS: usize = 200_000;

const WINDOW: Duration = Duration::from_secs(60);

/// Failed-authentication windows per client IP, plus the IPs currently blocked.
pub struct AbuseGuard<C: Clock = MonotonicClock> {
    failures: MemoryLimiter<C>,
    blocked_until_ms: DashMap<IpAddr, u64, ahash::RandomState>,
    /// Whether `blocked_until_ms` may hold an entry. Every request asks whether its IP is
    /// blocked; while none is, the answer is this one flag, which only blocking and the sweeper
    /// write, instead of a lock on a map shard that both worker threads would keep taking.
    any_blocked: AtomicBool,
    /// Held while an address is blocked and while the sweeper clears the flag, so that the flag
    /// is never cleared over a block that is being added.
    blocking: Mutex<()>,
    max_tracked_ips: usize,
}

impl AbuseGuard {
    /// An empty guard on the process clock.
    pub fn new() -> Self {
        Self::with_clock(MonotonicClock::new(), MAX_TRACKED_IPS)
    }
}

impl<C: Clock> AbuseGuard<C> {
    /// An empty guard on `clock`, tracking at most `max_tracked_ips` addresses.
    pub fn with_clock(clock: C, max_tracked_ips: usize) -> Self {
        AbuseGuard {
            failures: MemoryLimiter::new(clock),
            blocked_until_ms: DashMap::with_hasher(ahash::RandomState::new()),
            any_blocked: AtomicBool::new(false),
            blocking: Mutex::new(()),
            max_tracked_ips,
        }
    }

    /// `Some(retry_after_secs)` when `ip` is blocked now.
    pub fn blocked(&self, ip: IpAddr) -> Option<u64> {
        if !self.any_blocked.load(Ordering::Acquire) {
            return None;
        }
        let until = *self.blocked_until_ms.get(&ip)?;
        let now = self.failures.clock().now_ms();
        (now < until).then(|| retry_after_secs(until - now))
    }

    /// Counts one failed authentication from `ip`; past `max` per minute the IP is blocked.
    pub fn record_failure(&self, ip: IpAddr, max_per_minute: u32) {
        let key = ip.to_string();
        // When the table is full only new addresses go untracked: an address already counted
        // must keep being counted, or filling the table would switch the guard off.
        if self.failures.key_count() >= self.max_tracked_ips && !self.failures.contains_key(&key) {
            return;
        }
        let spec = [LimitSpec {
            name: Arc::from("invalid_keys_per_minute"),
            max: max_per_minute,
            window_ms: WINDOW.as_millis() as u64,
        }];
        if let Decision::Refused { retry_after_ms, .. } =
            self.failures.check_and_charge(&key, &spec)
        {
            let until = self.failures.clock().now_ms() + retry_after_ms;
            let _blocking = lock(&self.blocking);
            self.blocked_until_ms.insert(ip, until);
            self.any_blocked.store(true, Ordering::Release);
        }
    }

    /// Frees idle windows and expired blocks.
    pub fn sweep(&self) {
        self.failures.sweep();
        let now = self.failures.clock().now_ms();
        let _blocking = lock(&self.blocking);
        self.blocked_until_ms.retain(|_, until| *until > now);
        if self.blocked_until_ms.is_empty() {
            self.any_blocked.store(false, Ordering::Release);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::FakeClock;

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n))
    }

    #[test]
    fn an_ip_is_blocked_past_its_budget_until_its_window_has_room() {
        let clock = FakeClock::new(0);
        let guard = AbuseGuard::with_clock(clock.clone(), 100);
        for _ in 0..4 {
            assert_eq!(guard.blocked(ip(1)), None);
            guard.record_failure(ip(1), 3);
        }
        assert_eq!(guard.blocked(ip(1)), Some(60));
        assert_eq!(guard.blocked(ip(2)), None);
        clock.advance_ms(59_999);
        assert!(guard.blocked(ip(1)).is_some());
        clock.advance_ms(1);
        assert_eq!(guard.blocked(ip(1)), None);
    }

    #[test]
    fn a_sweep_keeps_live_blocks_and_blocking_works_again_after_all_expired() {
        let clock = FakeClock::new(0);
        let guard = AbuseGuard::with_clock(clock.clone(), 100);
        for _ in 0..4 {
            guard.record_failure(ip(1), 3);
        }
        clock.advance_ms(30_000);
        for _ in 0..4 {
            guard.record_failure(ip(2), 3);
        }
        clock.advance_ms(30_000);
        guard.sweep();
        assert_eq!(guard.blocked(ip(1)), None, "ip 1's block expired");
        assert_eq!(guard.blocked(ip(2)), Some(30), "a sweep keeps a live block");
        clock.advance_ms(30_000);
        guard.sweep();
        assert_eq!(guard.blocked(ip(2)), None);
        for _ in 0..4 {
            guard.record_failure(ip(3), 3);
        }
        assert_eq!(
            guard.blocked(ip(3)),
            Some(60),
            "blocking after an empty sweep"
        );
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_from_many_addresses() {
        let clock = FakeClock::new(0);
        let guard = AbuseGuard::with_clock(clock.clone(), 1_000);
        for n in 0..50_000 {
            guard.record_failure(ip(n), 3);
        }
        assert_eq!(guard.tracked(), 1_000);
        // A full table still counts an address it already tracks, up to a block.
        for _ in 0..3 {
            guard.record_failure(ip(7), 3);
        }
        assert!(
            guard.blocked(ip(7)).is_some(),
            "a full table switched the guard off"
        );
        clock.advance_ms(60_000);
        guard.sweep();
        assert_eq!(guard.tracked(), 0, "idle addresses are freed");
        guard.record_failure(ip(99_999), 3);
        assert_eq!(guard.tracked(), 1);
    }
}
