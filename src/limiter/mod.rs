//! Per-key rolling-window rate limits, checked and charged all or nothing.
//!
//! `clock` supplies time, `ring` counts one (key, limit) window, `memory`
//! keeps the rings of every key in this process, and `model` is the reusable
//! property check that any backend (memory today, Redis later) must pass.
//!
//! # Implementation notes
//!
//! **Algorithm.** Each (key id, limit name) owns a ring of B sub-window
//! buckets, B the smallest number in 60..=100 that divides the window (60 for
//! a minute, an hour or a day; 100 for one second). At time `t` in bucket `k`
//! the count is the sum of buckets `k - B ..= k`, which covers the whole window
//! `(t - W, t]` plus the part of the oldest bucket that lies before it.
//! The alternatives from NOTES.md, and why they were not chosen:
//! - a fixed window admits up to 2×max across a boundary;
//! - the two-window weighted sliding counter estimates, and errs both ways;
//! - GCRA / token bucket lets a burst of max and then the refill through, up to
//!   2×max − 1 in one window, so it cannot promise "max per window";
//! - a sliding log is exact but costs `max` timestamps: 20 KB for 5,000/h and
//!   40 KB for 10,000/day per key, against 122 bytes of counters here.
//!   A mix (a log for small `max`) would be exact there, but the ring's error
//!   already meets the contract and one code path is easier to keep right.
//!
//! **Error bound.** The ring never over-admits: a request is admitted only if
//! fewer than `max` are counted, and the counted span contains the window.
//! It refuses early by at most one bucket, `W/B ≤ W/60` (1 s for a minute,
//! 1 min for an hour, 24 min for a day), because that is all the span exceeds
//! the window by. `Retry-After` is exact to one bucket: it is the start of the
//! first bucket at which enough of the oldest buckets have left the span, so a
//! retry at that time, with nothing admitted in between, is admitted. Each ring
//! also keeps the time of its newest charge: once that request has left the
//! window every older one has too, so the ring empties then, and no wait is ever
//! longer than one window (a minute limit never says `Retry-After: 61`).
//! [`retry_after_secs`] rounds up, never down. These bounds assume a window
//! of whole seconds (the config's unit); for other windows B is 60 with
//! widths rounded up, which still never over-admits but may refuse up to
//! about 60 ms more early.
//!
//! **Reload.** `max` is not stored: it is passed on every call, so a raised or
//! lowered `max` applies to the existing history at once. A changed window
//! folds all counted requests into the current bucket of a new ring
//! (conservative under both windows). `max` must be at most 65,535 (u16
//! counters); a larger value is clamped, which refuses early rather than late.
//!
//! **Memory.** Bytes per active key on 64-bit Linux with 20-byte key ids.
//! Every plan below has two limits whose windows are whole minutes, hours or
//! days, so each ring has 60 buckets and all plans cost the same. Per key:
//! 2 × 122 B of `u16` counters, 2 × 72 B of ring headers (name, window,
//! bucket width, head, total, newest charge), 36 B for the shared key id, and about 58 B of
//! hash-table slot (40 B entry at the map's load factor). Sizes come from
//! `size_of` (test `memory::tests::prints_sizes`); the total was measured in
//! `benches/limiter.rs` by counting allocator bytes, and the resident set,
//! over 200,000 Scale keys:
//!
//! | plan | limits | heap requested per key | resident per key |
//! | --- | --- | --- | --- |
//! | free | 5/min + 30/h | 482 B (same layout) | ≈ 551 B |
//! | pro | 30/min + 500/h | 482 B (same layout) | ≈ 551 B |
//! | scale | 100/min + 5,000/h | 482 B (measured) | 551 B (measured) |
//! | calliope | 100/min + 10,000/24 h | 482 B (same layout) | ≈ 551 B |
//!
//! The baseline sliding log of the bench (`u64` times) holds 8 B per
//! admission in the window: 40 KB for a Scale key at its hourly limit.
//!
//! The figure does not depend on `max`: every window of whole minutes, hours
//! or days gets 60 buckets. Keys idle for longer than their longest window are
//! dropped by [`MemoryLimiter::sweep`], never earlier, so eviction cannot
//! give a key back room it does not have.

use std::sync::Arc;

pub mod backend;
mod clock;
mod memory;
pub mod model;
pub mod redis;
mod ring;

pub use clock::{Clock, FakeClock, MonotonicClock};
pub use memory::MemoryLimiter;

/// One limit applying to a request: at most `max` per `window_ms`.
#[derive(Clone, Debug)]
pub struct LimitSpec {
    /// Names the limit's window state, which survives reloads under this name.
    pub name: Arc<str>,
    /// Requests admitted per window; at most 65,535.
    pub max: u32,
    /// Window length in milliseconds; a whole number of seconds.
    pub window_ms: u64,
}

impl LimitSpec {
    /// Convenience constructor.
    pub fn new(name: &str, max: u32, window_ms: u64) -> Self {
        Self {
            name: Arc::from(name),
            max,
            window_ms,
        }
    }
}

/// State of one limit after a request: what the RateLimit headers report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitStatus {
    /// Requests still allowed now, after this one was counted (or refused).
    pub remaining: u32,
    /// Milliseconds until there is room for one more; 0 when there is now.
    pub wait_ms: u64,
}

/// One status per limit of a request, inline up to four: a request matches one to three limits
/// in the configs here, so a decision allocates nothing for them.
pub type Statuses = smallvec::SmallVec<[LimitStatus; 4]>;

/// Outcome of [`MemoryLimiter::check_and_charge`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Every limit had room and the request now counts in all of them.
    Admitted {
        /// One status per spec, in the order of the specs.
        statuses: Statuses,
    },
    /// Some limit had no room and the request counts in none of them.
    Refused {
        /// Index of the refusing spec with the longest wait.
        limit_index: usize,
        /// That wait, in milliseconds; always > 0.
        retry_after_ms: u64,
        /// One status per spec, in the order of the specs.
        statuses: Statuses,
    },
}

impl Decision {
    /// True for [`Decision::Admitted`].
    pub fn is_admitted(&self) -> bool {
        matches!(self, Decision::Admitted { .. })
    }

    /// One status per spec, in spec order.
    pub fn statuses(&self) -> &[LimitStatus] {
        match self {
            Decision::Admitted { statuses } | Decision::Refused { statuses, .. } => statuses,
        }
    }
}

/// The `Retry-After` header value for a wait: whole seconds, rounded up, at
/// least 1. Rounding down would send clients back too soon (traefik#8573).
pub fn retry_after_secs(wait_ms: u64) -> u64 {
    wait_ms.div_ceil(1_000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_at_least_one() {
        assert_eq!(retry_after_secs(0), 1);
        assert_eq!(retry_after_secs(1), 1);
        assert_eq!(retry_after_secs(105), 1);
        assert_eq!(retry_after_secs(1_000), 1);
        assert_eq!(retry_after_secs(1_001), 2);
        assert_eq!(retry_after_secs(59_001), 60);
    }
}
