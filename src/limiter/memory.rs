//! The in-process limiter: window state of every key, in a sharded map.
//!
//! Each key's rings live under that key's `DashMap` shard lock, so one check
//! sees and charges all of a key's limits atomically while other keys, on
//! other shards, proceed in parallel. There is no global lock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use super::clock::Clock;
use super::ring::Ring;
use super::{Decision, LimitSpec, LimitStatus};

/// The rings of one key, one per limit name it has been checked against.
#[derive(Clone, Debug, Default)]
pub(crate) struct KeyState {
    /// A key has a handful of limits: a Vec searched by name beats a map.
    limits: Vec<NamedRing>,
}

#[derive(Clone, Debug)]
struct NamedRing {
    name: Arc<str>,
    ring: Ring,
}

impl KeyState {
    /// The ring for `spec`, created on first use and moved to the spec's
    /// window if a reload changed it.
    fn ring_for(&mut self, spec: &LimitSpec, now_ms: u64) -> &mut Ring {
        let found = self
            .limits
            .iter()
            .position(|l| Arc::ptr_eq(&l.name, &spec.name) || l.name == spec.name);
        let index = found.unwrap_or_else(|| {
            self.limits.push(NamedRing {
                name: spec.name.clone(),
                ring: Ring::new(spec.window_ms, now_ms),
            });
            self.limits.len() - 1
        });
        let ring = &mut self.limits[index].ring;
        if ring.window_ms() != spec.window_ms {
            ring.rebucket(spec.window_ms, now_ms);
        }
        ring
    }

    /// Checks every limit, then charges all of them or none.
    pub(crate) fn check_and_charge(&mut self, limits: &[LimitSpec], now_ms: u64) -> Decision {
        if self.limits.capacity() == 0 {
            // Vec would round up to 4 rings (256 bytes); most keys have 1 to 3.
            self.limits.reserve_exact(limits.len());
        }
        let refusal = self.longest_refusal(limits, now_ms);
        let statuses = limits
            .iter()
            .map(|spec| {
                let ring = self.ring_for(spec, now_ms);
                if refusal.is_none() {
                    ring.charge(now_ms);
                }
                LimitStatus {
                    remaining: ring.remaining(now_ms, spec.max),
                    wait_ms: ring.wait_ms(now_ms, spec.max),
                }
            })
            .collect();
        match refusal {
            None => Decision::Admitted { statuses },
            Some((limit_index, retry_after_ms)) => Decision::Refused {
                limit_index,
                retry_after_ms,
                statuses,
            },
        }
    }

    /// (index, wait) of the refusing limit with the longest wait, if any.
    fn longest_refusal(&mut self, limits: &[LimitSpec], now_ms: u64) -> Option<(usize, u64)> {
        let mut refusal: Option<(usize, u64)> = None;
        for (index, spec) in limits.iter().enumerate() {
            let wait_ms = self.ring_for(spec, now_ms).wait_ms(now_ms, spec.max);
            // Strictly longer: on a tie the first refusing limit is reported.
            if wait_ms > refusal.map_or(0, |(_, longest)| longest) {
                refusal = Some((index, wait_ms));
            }
        }
        refusal
    }

    /// Drops rings with nothing counted; true when none are left.
    fn drop_empty_rings(&mut self, now_ms: u64) -> bool {
        self.limits.retain_mut(|l| !l.ring.is_empty(now_ms));
        self.limits.is_empty()
    }
}

/// Rolling-window limits for every key, held in this process's memory.
pub struct MemoryLimiter<C: Clock> {
    keys: DashMap<Arc<str>, KeyState, ahash::RandomState>,
    clock: C,
}

impl<C: Clock> MemoryLimiter<C> {
    /// An empty limiter reading time from `clock`.
    pub fn new(clock: C) -> Self {
        Self {
            keys: DashMap::with_hasher(ahash::RandomState::new()),
            clock,
        }
    }

    /// Admits the request of `key_id` if every limit in `limits` has room,
    /// and then counts it in all of them; otherwise counts it in none.
    ///
    /// Names in `limits` must be distinct: a repeated name shares one ring.
    pub fn check_and_charge(&self, key_id: &str, limits: &[LimitSpec]) -> Decision {
        // Known keys are looked up by &str: no allocation on the hot path.
        if let Some(mut state) = self.keys.get_mut(key_id) {
            // Time is read under the key's lock, so charges of one key are
            // made in clock order.
            return state.check_and_charge(limits, self.clock.now_ms());
        }
        let mut state = self.keys.entry(Arc::from(key_id)).or_default();
        state.check_and_charge(limits, self.clock.now_ms())
    }

    /// Whether `key_id` holds window state.
    pub fn contains_key(&self, key_id: &str) -> bool {
        self.keys.contains_key(key_id)
    }

    /// Number of keys holding window state.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Drops keys with nothing counted in any window (idle for longer than
    /// their longest window) and returns how many were dropped. Keys with
    /// history are kept, so eviction never resets a limit.
    pub fn sweep(&self) -> usize {
        let dropped = AtomicUsize::new(0);
        self.keys.retain(|_, state| {
            let now_ms = self.clock.now_ms();
            let empty = state.drop_empty_rings(now_ms);
            if empty {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
            !empty
        });
        dropped.into_inner()
    }

    /// For a config reload: drops the (key id, limit name) rings for which
    /// `keep` is false, and keys left with none. Kept rings keep their history.
    pub fn retain(&self, keep: impl Fn(&str, &str) -> bool) {
        self.keys.retain(|key_id, state| {
            state.limits.retain(|l| keep(key_id, &l.name));
            !state.limits.is_empty()
        });
    }

    /// The clock this limiter reads.
    pub fn clock(&self) -> &C {
        &self.clock
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::{retry_after_secs, FakeClock};

    const MINUTE_MS: u64 = 60_000;
    const HOUR_MS: u64 = 3_600_000;
    const DAY_MS: u64 = 86_400_000;

    fn setup() -> MemoryLimiter<FakeClock> {
        MemoryLimiter::new(FakeClock::new(0))
    }

    fn at(lim: &MemoryLimiter<FakeClock>, t_ms: u64, key: &str, specs: &[LimitSpec]) -> Decision {
        lim.clock().set_ms(t_ms);
        lim.check_and_charge(key, specs)
    }

    fn refusal(decision: &Decision) -> (usize, u64) {
        match decision {
            Decision::Refused {
                limit_index,
                retry_after_ms,
                ..
            } => (*limit_index, *retry_after_ms),
            Decision::Admitted { .. } => panic!("expected a refusal, got {decision:?}"),
        }
    }

    fn free() -> Vec<LimitSpec> {
        vec![
            LimitSpec::new("per_minute", 5, MINUTE_MS),
            LimitSpec::new("per_hour", 30, HOUR_MS),
        ]
    }

    #[test]
    fn free_plan_minute_limit() {
        let lim = setup();
        for (i, t) in (0..5).enumerate() {
            let d = at(&lim, t, "k", &free());
            assert!(d.is_admitted());
            assert_eq!(d.statuses()[0].remaining, 4 - i as u32);
            assert_eq!(d.statuses()[1].remaining, 29 - i as u32);
        }
        let d = at(&lim, 10, "k", &free());
        // The newest counted request (at 4 ms) leaves the window at 60_004 ms, and with it
        // every older one: the wait is at most one window, never 61 s for a minute.
        assert_eq!(refusal(&d), (0, 60_004 - 10));
        assert_eq!(d.statuses()[1].remaining, 25);
        let retry_secs = retry_after_secs(60_004 - 10);
        assert_eq!(retry_secs, 60);
        assert!(!at(&lim, 60_003, "k", &free()).is_admitted());
        let d = at(&lim, 10 + retry_secs * 1_000, "k", &free());
        assert_eq!(d.statuses()[0].remaining, 4);
    }

    #[test]
    fn free_plan_hour_limit_refuses_all_or_nothing() {
        let lim = setup();
        // Bursts of 5, 61 s apart: each burst finds the minute span empty.
        for burst in 0..6u64 {
            for _ in 0..5 {
                assert!(at(&lim, burst * 61_000, "k", &free()).is_admitted());
            }
        }
        let t = 6 * 61_000;
        let d = at(&lim, t, "k", &free());
        // The hour's first bucket [0, 60 s) holds 5 and leaves at 61 min.
        assert_eq!(refusal(&d), (1, 61 * MINUTE_MS - t));
        // The minute limit was not charged for the refused request.
        assert_eq!(
            d.statuses()[0],
            LimitStatus {
                remaining: 5,
                wait_ms: 0
            }
        );
        let retry_secs = retry_after_secs(61 * MINUTE_MS - t);
        assert_eq!(retry_secs, 3_294);
        assert!(!at(&lim, t + retry_secs * 1_000 - 1, "k", &free()).is_admitted());
        let d = at(&lim, t + retry_secs * 1_000, "k", &free());
        assert_eq!(d.statuses()[0].remaining, 4);
        assert_eq!(d.statuses()[1].remaining, 4);
    }

    #[test]
    fn calliope_day_limit() {
        let specs = [
            LimitSpec::new("per_minute", 100, MINUTE_MS),
            LimitSpec::new("per_day", 10_000, DAY_MS),
        ];
        let lim = setup();
        for burst in 0..100u64 {
            for _ in 0..100 {
                assert!(at(&lim, burst * 61_000, "c", &specs).is_admitted());
            }
        }
        let t = 100 * 61_000;
        let d = at(&lim, t, "c", &specs);
        // Day buckets are 24 min; bursts 0..=23 (2,400 requests) fall in the
        // first, which leaves the span when bucket 61 starts.
        let wait_ms = 61 * 1_440_000 - t;
        assert_eq!(refusal(&d), (1, wait_ms));
        assert_eq!(retry_after_secs(wait_ms), 81_740);
        assert!(!at(&lim, t + wait_ms - 1, "c", &specs).is_admitted());
        let d = at(&lim, t + retry_after_secs(wait_ms) * 1_000, "c", &specs);
        assert_eq!(d.statuses()[1].remaining, 2_399);
    }

    #[test]
    fn refusal_reports_the_longest_wait() {
        let specs = [
            LimitSpec::new("a", 1, MINUTE_MS),
            LimitSpec::new("b", 1, HOUR_MS),
            LimitSpec::new("c", 5, MINUTE_MS),
        ];
        let lim = setup();
        assert!(at(&lim, 0, "k", &specs).is_admitted());
        let d = at(&lim, 1, "k", &specs);
        assert_eq!(refusal(&d), (1, HOUR_MS - 1));
        assert_eq!(d.statuses()[0].wait_ms, MINUTE_MS - 1);
        assert_eq!(
            d.statuses()[2],
            LimitStatus {
                remaining: 4,
                wait_ms: 0
            }
        );
    }

    #[test]
    fn hour_refusal_charges_nothing_in_minute() {
        let lim = setup();
        let tight = [
            LimitSpec::new("per_minute", 10, MINUTE_MS),
            LimitSpec::new("per_hour", 3, HOUR_MS),
        ];
        for t in 0..3 {
            assert!(at(&lim, t, "k", &tight).is_admitted());
        }
        for t in 3..8 {
            let d = at(&lim, t, "k", &tight);
            assert_eq!(refusal(&d).0, 1);
            assert_eq!(d.statuses()[0].remaining, 7);
        }
        let loose = [tight[0].clone(), LimitSpec::new("per_hour", 30, HOUR_MS)];
        assert_eq!(at(&lim, 9, "k", &loose).statuses()[0].remaining, 6);
    }

    #[test]
    fn changed_max_applies_to_existing_history() {
        let lim = setup();
        let with_max = |max| [LimitSpec::new("m", max, MINUTE_MS)];
        for t in 0..5 {
            assert!(at(&lim, t, "k", &with_max(5)).is_admitted());
        }
        let d = at(&lim, 10, "k", &with_max(3));
        assert_eq!(d.statuses()[0].remaining, 0);
        assert!(!d.is_admitted());
        for t in 11..14 {
            assert!(at(&lim, t, "k", &with_max(8)).is_admitted());
        }
        assert!(!at(&lim, 14, "k", &with_max(8)).is_admitted());
    }

    #[test]
    fn changed_window_never_over_admits() {
        let lim = setup();
        let minute = [LimitSpec::new("m", 5, MINUTE_MS)];
        for t in [0, 10_000, 20_000, 30_000, 40_000] {
            assert!(at(&lim, t, "k", &minute).is_admitted());
        }
        // Shorter window: all 5 stay counted for a whole new window.
        let ten_secs = [LimitSpec::new("m", 5, 10_000)];
        let d = at(&lim, 45_000, "k", &ten_secs);
        assert_eq!(refusal(&d), (0, 10_000));
        assert!(!at(&lim, 54_999, "k", &ten_secs).is_admitted());
        assert!(at(&lim, 55_000, "k", &ten_secs).is_admitted());
        // Longer window: what the short window counts is carried over.
        let hour = [LimitSpec::new("m", 2, HOUR_MS)];
        assert!(at(&lim, 55_001, "k", &hour).is_admitted());
        assert!(!at(&lim, 55_002, "k", &hour).is_admitted());
    }

    #[test]
    fn keys_are_independent() {
        let lim = setup();
        let one = [LimitSpec::new("m", 1, MINUTE_MS)];
        assert!(at(&lim, 0, "a", &one).is_admitted());
        assert!(!at(&lim, 1, "a", &one).is_admitted());
        assert!(at(&lim, 2, "b", &one).is_admitted());
        assert_eq!(lim.key_count(), 2);
    }

    #[test]
    fn sweep_drops_only_empty_keys() {
        let lim = setup();
        assert!(at(&lim, 0, "old", &free()).is_admitted());
        assert!(at(&lim, HOUR_MS - 1, "new", &free()).is_admitted());
        // "old" is still inside its hour window.
        assert_eq!(lim.sweep(), 0);
        lim.clock().set_ms(HOUR_MS);
        assert_eq!(lim.sweep(), 1);
        assert_eq!(lim.key_count(), 1);
        // "new" kept its history: 1 of 5 used this minute.
        let d = at(&lim, HOUR_MS + 1, "new", &free());
        assert_eq!(d.statuses()[0].remaining, 3);
    }

    #[test]
    fn retain_drops_removed_keys_and_limits() {
        let lim = setup();
        for key in ["a", "b"] {
            assert!(at(&lim, 0, key, &free()).is_admitted());
        }
        lim.retain(|key, limit| key == "a" && limit == "per_minute");
        assert_eq!(lim.key_count(), 1);
        let d = at(&lim, 1, "a", &free());
        assert_eq!(d.statuses()[0].remaining, 3);
        assert_eq!(d.statuses()[1].remaining, 29);
        assert_eq!(at(&lim, 2, "b", &free()).statuses()[0].remaining, 4);
    }

    #[test]
    fn a_key_moved_to_another_plan_keeps_the_history_of_shared_limit_names() {
        let lim = setup();
        for t in 0..5 {
            assert!(at(&lim, t, "k", &free()).is_admitted());
        }
        assert!(!at(&lim, 10, "k", &free()).is_admitted());
        // Moved to "pro": same limit names, larger max, plus a limit free did not have.
        let pro = [
            LimitSpec::new("per_minute", 30, MINUTE_MS),
            LimitSpec::new("per_hour", 500, HOUR_MS),
            LimitSpec::new("per_day", 1_000, 24 * HOUR_MS),
        ];
        let d = at(&lim, 20, "k", &pro);
        assert!(d.is_admitted());
        assert_eq!(
            d.statuses()[0].remaining,
            24,
            "the minute history came along"
        );
        assert_eq!(
            d.statuses()[1].remaining,
            494,
            "the hour history came along"
        );
        assert_eq!(d.statuses()[2].remaining, 999, "a new limit starts empty");
        // A reload drops the limits the key's new plan no longer has.
        lim.retain(|_, limit| limit != "per_day");
        // Back on free, its 6 spawns this minute are over free's 5: refused, charged nothing.
        let d = at(&lim, 30, "k", &free());
        assert!(!d.is_admitted());
        assert_eq!(d.statuses()[1].remaining, 24);
    }

    #[test]
    fn threads_on_one_key_admit_exactly_max() {
        let lim = setup();
        let specs = [
            LimitSpec::new("per_minute", 1_000, MINUTE_MS),
            LimitSpec::new("per_hour", 5_000, HOUR_MS),
        ];
        let admitted = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..600 {
                        if lim.check_and_charge("hot", &specs).is_admitted() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.into_inner(), 1_000);
    }

    /// Run with `--nocapture` to see the figures quoted in `mod.rs`.
    #[test]
    fn prints_sizes() {
        use std::mem::size_of;
        let ring_heap = 61 * size_of::<u16>();
        let per_ring = size_of::<NamedRing>() + ring_heap;
        let entry = size_of::<(Arc<str>, KeyState)>();
        // An Arc<str> heap block: two counters plus the bytes of the id.
        let key_id_heap = 2 * size_of::<usize>() + 20;
        println!(
            "Ring {} NamedRing {} KeyState {} map entry {} ring heap {}",
            size_of::<Ring>(),
            size_of::<NamedRing>(),
            size_of::<KeyState>(),
            entry,
            ring_heap
        );
        // hashbrown: one control byte per slot, load factor at most 7/8.
        let table = (entry + 1) * 8 / 7;
        println!(
            "per key with 2 limits: ~{} B",
            table + key_id_heap + 2 * per_ring
        );
        assert_eq!(ring_heap, 122);
    }
}
