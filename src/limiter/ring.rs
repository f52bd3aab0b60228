//! The window algorithm for one (key, limit): a ring of sub-window buckets.
//!
//! A window of `window_ms` is cut into `B` buckets of `bucket_ms` each; the
//! ring keeps `B + 1` counters, indexed by the absolute bucket number
//! `now_ms / bucket_ms` modulo `B + 1`. At time `t` in bucket `k` the count is
//! the sum of buckets `k - B ..= k`: the whole window plus, in full, the one
//! bucket the window's start falls in. Counting that partial bucket in full
//! is what makes the ring conservative (see the module notes in `mod.rs`).
//!
//! Because the ring has exactly as many slots as counted buckets, once stale
//! slots are cleared the count is the sum of all slots; `total_count` keeps that
//! sum so a check is O(1) and not O(B).

/// Fewest and most buckets per window: at least 60 bounds early refusal to
/// window/60; at most 100 bounds memory to 202 bytes of counters per limit.
const MIN_BUCKETS: u64 = 60;
const MAX_BUCKETS: u64 = 100;

/// Per-bucket counts are `u16`; a larger `max` is clamped to this so that a
/// saturated counter can never make the ring under-count.
pub(crate) const MAX_COUNT: u32 = u16::MAX as u32;

/// Conservative rolling-window counter for one limit of one key.
#[derive(Clone, Debug)]
pub(crate) struct Ring {
    window_ms: u64,
    /// Kept rather than recomputed: the hot path then needs no division
    /// until time crosses into a new bucket.
    bucket_ms: u64,
    /// Absolute index of the newest bucket the ring has been advanced to.
    head: u64,
    /// Sum of all slots, which equals the count at any time in bucket `head`.
    total_count: u32,
    /// Time of the newest charge. Every counted request happened at or before it, so all
    /// have left the window by `last_charge_ms + window_ms`: this caps every wait at one
    /// window (a minute limit never answers `Retry-After: 61`).
    last_charge_ms: u64,
    /// `B + 1` slots; slot `i % (B + 1)` holds absolute bucket `i`.
    counts: Box<[u16]>,
}

/// Bucket count and width for a window.
///
/// The smallest B in 60..=100 that divides `window_ms` gives exact buckets
/// (one always exists for a whole number of seconds). Otherwise B = 60 with
/// widths rounded up: the counted span then exceeds the window, which still
/// never over-admits but may refuse a little earlier than window/60.
fn layout(window_ms: u64) -> (u64, u64) {
    let window_ms = window_ms.max(1);
    let buckets = (MIN_BUCKETS..=MAX_BUCKETS)
        .find(|b| window_ms.is_multiple_of(*b))
        .unwrap_or(MIN_BUCKETS);
    (buckets, window_ms.div_ceil(buckets))
}

impl Ring {
    /// An empty ring for `window_ms`, positioned at `now_ms`.
    pub(crate) fn new(window_ms: u64, now_ms: u64) -> Self {
        let (buckets, bucket_ms) = layout(window_ms);
        let slots = usize::try_from(buckets + 1).expect("at most 101 slots");
        Self {
            window_ms,
            bucket_ms,
            head: now_ms / bucket_ms,
            total_count: 0,
            last_charge_ms: now_ms,
            counts: vec![0; slots].into_boxed_slice(),
        }
    }

    /// The window this ring counts, in milliseconds.
    pub(crate) fn window_ms(&self) -> u64 {
        self.window_ms
    }

    /// Number of slots, B + 1.
    fn slots(&self) -> u64 {
        self.counts.len() as u64
    }

    fn slot(&self, bucket: u64) -> usize {
        // The remainder is below the slot count, itself a usize.
        (bucket % self.slots()) as usize
    }

    /// Moves the ring to the bucket of `now_ms`, clearing slots that now
    /// belong to buckets that have left the counted range. A clock reading
    /// older than `head` is treated as `head`: charging a later bucket only
    /// keeps a request counted longer, so it stays conservative.
    fn advance(&mut self, now_ms: u64) {
        if self.total_count > 0 && now_ms >= self.last_charge_ms.saturating_add(self.window_ms) {
            // The newest request has left the window, so every older one has too.
            self.counts.fill(0);
            self.total_count = 0;
        }
        if now_ms < (self.head + 1).saturating_mul(self.bucket_ms) {
            return;
        }
        let bucket = now_ms / self.bucket_ms;
        if bucket - self.head >= self.slots() {
            self.counts.fill(0);
            self.total_count = 0;
        } else {
            for stale in self.head + 1..=bucket {
                let slot = self.slot(stale);
                self.total_count -= u32::from(self.counts[slot]);
                self.counts[slot] = 0;
            }
        }
        self.head = bucket;
    }

    /// Requests counted at `now_ms` (the window plus the partial oldest bucket).
    pub(crate) fn count(&mut self, now_ms: u64) -> u32 {
        self.advance(now_ms);
        self.total_count
    }

    /// Room left under `max` at `now_ms`.
    pub(crate) fn remaining(&mut self, now_ms: u64, max: u32) -> u32 {
        max.min(MAX_COUNT).saturating_sub(self.count(now_ms))
    }

    /// Counts one request at `now_ms`. Callers check room first.
    pub(crate) fn charge(&mut self, now_ms: u64) {
        self.advance(now_ms);
        let slot = self.slot(self.head);
        // Admission keeps the total at most MAX_COUNT, so no counter can
        // saturate; saturating anyway keeps a logic error from wrapping to 0.
        if self.counts[slot] < u16::MAX {
            self.counts[slot] += 1;
            self.total_count += 1;
        }
        self.last_charge_ms = self.last_charge_ms.max(now_ms);
    }

    /// True when nothing is counted any more: dropping the ring then cannot
    /// give a key back room it does not have.
    pub(crate) fn is_empty(&mut self, now_ms: u64) -> bool {
        self.count(now_ms) == 0
    }

    /// Milliseconds until one more request fits under `max`; 0 if it fits now.
    ///
    /// Walks from the oldest counted bucket forward: once bucket `k + j`
    /// starts, buckets `k - B .. k - B + j` have left the counted range. The
    /// answer is exact to one bucket, assuming nothing else is admitted
    /// meanwhile. With `max == 0` nothing ever fits; a window is returned so
    /// that clients back off rather than hammer.
    pub(crate) fn wait_ms(&mut self, now_ms: u64, max: u32) -> u64 {
        let max = max.min(MAX_COUNT);
        let count = self.count(now_ms);
        if count < max {
            return 0;
        }
        if max == 0 {
            return self.window_ms.max(1);
        }
        let must_free = count - (max - 1);
        let all_expire_at_ms = self.last_charge_ms.saturating_add(self.window_ms);
        let mut freed = 0;
        for j in 1..=self.slots() {
            // Bucket k - B + j - 1 lives in the same slot as k + j (B + 1 slots).
            freed += u32::from(self.counts[self.slot(self.head + j)]);
            if freed >= must_free {
                let bucket_frees_at_ms = (self.head + j) * self.bucket_ms;
                return bucket_frees_at_ms
                    .min(all_expire_at_ms)
                    .saturating_sub(now_ms);
            }
        }
        // All slots together hold the whole count, so the loop has returned; if not, the
        // newest request's expiry is still a truthful answer.
        all_expire_at_ms.saturating_sub(now_ms)
    }

    /// Moves the ring to a new window, as a config reload that changes
    /// `window_ms` requires. Every request counted now is folded into the
    /// current bucket of the new ring, so it stays counted for a whole new
    /// window: conservative under both windows. History older than the old
    /// window was never kept and cannot be recovered.
    pub(crate) fn rebucket(&mut self, new_window_ms: u64, now_ms: u64) {
        let counted = self.count(now_ms);
        let mut ring = Ring::new(new_window_ms, now_ms);
        let slot = ring.slot(ring.head);
        let folded = u16::try_from(counted).unwrap_or(u16::MAX);
        ring.counts[slot] = folded;
        ring.total_count = u32::from(folded);
        ring.last_charge_ms = now_ms.max(self.last_charge_ms);
        *self = ring;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE_MS: u64 = 60_000;

    #[test]
    fn layout_picks_smallest_divisor() {
        assert_eq!(layout(1_000), (100, 10));
        assert_eq!(layout(2_000), (80, 25));
        assert_eq!(layout(MINUTE_MS), (60, 1_000));
        assert_eq!(layout(3_600_000), (60, 60_000));
        assert_eq!(layout(86_400_000), (60, 1_440_000));
        assert_eq!(layout(7_001), (60, 117));
    }

    #[test]
    fn counts_oldest_bucket_in_full() {
        let mut ring = Ring::new(MINUTE_MS, 0);
        ring.charge(500);
        ring.charge(900);
        // At 60_499 both requests are inside (t - W, t] and counted.
        assert_eq!(ring.count(60_499), 2);
        // At 60_600 the one at 500 has left the window, but its bucket [0, 1000) also holds
        // the one at 900 and is counted in full: refused early by at most one bucket.
        assert_eq!(ring.count(60_600), 2);
        // Once the newest request has left, nothing is counted.
        assert_eq!(ring.count(60_900), 0);
    }

    #[test]
    fn wait_walks_to_the_bucket_that_frees_room() {
        let mut ring = Ring::new(MINUTE_MS, 0);
        ring.charge(100);
        ring.charge(5_100);
        ring.charge(5_200);
        assert_eq!(ring.wait_ms(10_000, 4), 0);
        // max 3: one must go; bucket 0 leaves when bucket 61 starts.
        assert_eq!(ring.wait_ms(10_000, 3), 61_000 - 10_000);
        // max 2: two must go; bucket 5 (two requests) would leave at bucket 66, but its
        // newest request, the newest of all, leaves the window earlier, at 65_200.
        assert_eq!(ring.wait_ms(10_000, 2), 65_200 - 10_000);
        assert_eq!(ring.remaining(10_000, 2), 0);
        assert_eq!(ring.remaining(10_000, 5), 2);
        assert_eq!(ring.wait_ms(66_000, 2), 0);
        assert!(ring.wait_ms(0, 0) > 0);
    }

    #[test]
    fn stale_slots_are_cleared_after_long_idle() {
        let mut ring = Ring::new(MINUTE_MS, 0);
        ring.charge(0);
        assert!(!ring.is_empty(59_999));
        assert!(ring.is_empty(60_000));
        assert!(ring.is_empty(10 * MINUTE_MS));
        ring.charge(10 * MINUTE_MS);
        assert_eq!(ring.count(10 * MINUTE_MS + 1), 1);
    }

    #[test]
    fn backwards_clock_charges_the_newest_bucket() {
        let mut ring = Ring::new(MINUTE_MS, 5_000);
        ring.charge(4_000);
        // Counted in bucket 5 from the ring's own start at 5_000: conservative.
        assert_eq!(ring.count(64_999), 1);
        assert_eq!(ring.count(65_000), 0);
    }

    #[test]
    fn rebucket_keeps_everything_counted() {
        let mut ring = Ring::new(MINUTE_MS, 0);
        for t in [0, 20_000, 40_000] {
            ring.charge(t);
        }
        ring.rebucket(10_000, 50_000);
        assert_eq!(ring.window_ms(), 10_000);
        assert_eq!(ring.count(50_000), 3);
        // Folded into the current bucket of the new ring, as if all three had just
        // happened: gone one new window later.
        assert_eq!(ring.count(59_999), 3);
        assert_eq!(ring.count(60_000), 0);
    }
}
