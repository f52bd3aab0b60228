//! Time source for the limiter.
//!
//! The limiter never reads the system clock itself: it asks a [`Clock`], so
//! that tests can drive an hour-long window in microseconds with a
//! [`FakeClock`] instead of sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A monotonic millisecond clock with an arbitrary fixed origin.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since this clock's origin; never decreases.
    fn now_ms(&self) -> u64;
}

impl<C: Clock> Clock for Arc<C> {
    fn now_ms(&self) -> u64 {
        (**self).now_ms()
    }
}

/// The production clock: `Instant`-based, origin at creation.
#[derive(Clone, Copy, Debug)]
pub struct MonotonicClock {
    origin: Instant,
}

impl MonotonicClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now_ms(&self) -> u64 {
        // u64 milliseconds last 584 million years: the cast cannot truncate.
        self.origin.elapsed().as_millis() as u64
    }
}

/// A manually driven clock for tests and benches; clones share one time.
#[derive(Clone, Debug, Default)]
pub struct FakeClock {
    now_ms: Arc<AtomicU64>,
}

impl FakeClock {
    /// A clock that reads `start_ms` until moved.
    pub fn new(start_ms: u64) -> Self {
        Self {
            now_ms: Arc::new(AtomicU64::new(start_ms)),
        }
    }

    /// Moves time forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.advance_ms(u64::try_from(by.as_millis()).unwrap_or(u64::MAX));
    }

    /// Moves time forward by `by_ms` milliseconds.
    pub fn advance_ms(&self, by_ms: u64) {
        self.now_ms.fetch_add(by_ms, Ordering::SeqCst);
    }

    /// Sets the time; tests should only move it forward, as a real clock does.
    pub fn set_ms(&self, now_ms: u64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_clock_clones_share_time() {
        let clock = FakeClock::new(5);
        let other = clock.clone();
        clock.advance(Duration::from_secs(2));
        other.advance_ms(3);
        assert_eq!(clock.now_ms(), 2_008);
        other.set_ms(10);
        assert_eq!(Arc::new(clock).now_ms(), 10);
    }

    #[test]
    fn monotonic_clock_starts_near_zero() {
        let clock = MonotonicClock::new();
        assert!(clock.now_ms() < 1_000);
    }
}
