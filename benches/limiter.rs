//! Check-and-charge cost of the bucket-ring limiter against a naive baseline,
//! and the bytes it holds per active Scale key.
//!
//! Every case uses limits shaped like the Scale plan (a minute and an hour
//! window) but with `max` = 65,535, and a fake clock advanced 100 ms per call
//! on the one-key cases, so that the calls measured are admissions: 600 per
//! minute and 36,000 per hour stay under the limits. The baseline is a
//! `Mutex<HashMap<String, VecDeque<u64>>>` sliding log of admission times.
//!
//! The "2 threads" cases run the calls split over two scoped threads and
//! report wall time divided by the total number of calls (inverse throughput).
//!
//! The `redis_check_and_charge` group runs the Redis backend against a loopback
//! `redis-server` the bench starts itself (skipped, with a note, without one):
//! one check at a time (a round trip each), 16 in flight on the shared
//! connection (inverse throughput), and a refusal answered by the local cache.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{HashMap, VecDeque};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use termsgate::limiter::redis::RedisLimiter;
use termsgate::limiter::{Clock, FakeClock, LimitSpec, MemoryLimiter};
use termsgate::metrics::Metrics;
use termsgate::own_listener::process_owns_port;

#[path = "../tests/common/redis.rs"]
mod redis_server;

/// Counts live heap bytes while `COUNTING` is on. Off during timing, so the
/// two threads do not contend on the counter.
struct CountingAlloc;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        }
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const MANY_KEYS: usize = 1_000_000;
/// Calls between clock steps: stepping every call would measure the clock.
const CALLS_PER_STEP: u64 = 64;

fn bench_specs() -> Vec<LimitSpec> {
    vec![
        LimitSpec::new("per_minute", 65_535, 60_000),
        LimitSpec::new("per_hour", 65_535, 3_600_000),
    ]
}

fn scale_specs() -> Vec<LimitSpec> {
    vec![
        LimitSpec::new("per_minute", 100, 60_000),
        LimitSpec::new("per_hour", 5_000, 3_600_000),
    ]
}

/// Key ids of 20 bytes, like `key_` plus 16 hex digits.
fn key_ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("key_{i:016x}")).collect()
}

/// The naive baseline: one global lock, one log of admission times per key.
struct SlidingLog {
    logs: Mutex<HashMap<String, VecDeque<u64>>>,
    clock: FakeClock,
}

impl SlidingLog {
    fn check_and_charge(&self, key_id: &str, specs: &[LimitSpec]) -> bool {
        let now_ms = self.clock.now_ms();
        let mut logs = self.logs.lock().expect("no panics while locked");
        if !logs.contains_key(key_id) {
            logs.insert(key_id.to_owned(), VecDeque::new());
        }
        let log = logs.get_mut(key_id).expect("inserted above");
        let longest_ms = specs.iter().map(|s| s.window_ms).max().unwrap_or(0);
        while log.front().is_some_and(|&t| t + longest_ms <= now_ms) {
            log.pop_front();
        }
        let has_room = specs.iter().all(|s| {
            let in_window = log.len() - log.partition_point(|&t| t + s.window_ms <= now_ms);
            in_window < s.max as usize
        });
        if has_room {
            log.push_back(now_ms);
        }
        has_room
    }
}

/// What is measured: one limiter behind a common call shape.
trait Backend: Sync {
    fn call(&self, key_id: &str, specs: &[LimitSpec]) -> bool;
    fn clock(&self) -> &FakeClock;
}

impl Backend for MemoryLimiter<FakeClock> {
    fn call(&self, key_id: &str, specs: &[LimitSpec]) -> bool {
        self.check_and_charge(key_id, specs).is_admitted()
    }
    fn clock(&self) -> &FakeClock {
        MemoryLimiter::clock(self)
    }
}

impl Backend for SlidingLog {
    fn call(&self, key_id: &str, specs: &[LimitSpec]) -> bool {
        self.check_and_charge(key_id, specs)
    }
    fn clock(&self) -> &FakeClock {
        &self.clock
    }
}

/// `calls` calls cycling over `keys` from `offset`, stepping the clock
/// `step_ms` per call on average. Returns how many were admitted.
fn run(backend: &impl Backend, keys: &[String], offset: usize, calls: u64, step_ms: u64) -> u64 {
    let specs = bench_specs();
    let mut admitted = 0;
    let mut key = offset % keys.len();
    for i in 0..calls {
        if i % CALLS_PER_STEP == 0 {
            backend.clock().advance_ms(step_ms * CALLS_PER_STEP);
        }
        admitted += u64::from(black_box(backend.call(&keys[key], &specs)));
        key += 1;
        if key == keys.len() {
            key = 0;
        }
    }
    admitted
}

fn timed_two_threads(
    backend: &impl Backend,
    keys: &[String],
    iters: u64,
    step_ms: u64,
) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        // Each thread steps the clock for its own calls: together 100 ms/call.
        let half = keys.len() / 2;
        s.spawn(move || run(backend, keys, 0, iters / 2, 2 * step_ms));
        s.spawn(move || run(backend, keys, half, iters - iters / 2, 2 * step_ms));
    });
    start.elapsed()
}

fn populated_ring(keys: &[String]) -> MemoryLimiter<FakeClock> {
    let limiter = MemoryLimiter::new(FakeClock::new(0));
    let specs = bench_specs();
    for key in keys {
        limiter.check_and_charge(key, &specs);
    }
    limiter
}

fn populated_log(keys: &[String]) -> SlidingLog {
    let log = SlidingLog {
        logs: Mutex::new(HashMap::new()),
        clock: FakeClock::new(0),
    };
    let specs = bench_specs();
    for key in keys {
        log.check_and_charge(key, &specs);
    }
    log
}

/// Step per call: 100 ms on one key (to stay under its limits); 1 ms over
/// a million keys (a pass then spans ~17 min, so rings are partly stale).
fn step_ms(keys: &[String]) -> u64 {
    if keys.len() == 1 {
        100
    } else {
        1
    }
}

fn bench_case(c: &mut Criterion, name: &str, backend: &impl Backend, keys: &[String]) {
    let label = if keys.len() == 1 { "1_key" } else { "1M_keys" };
    let step = step_ms(keys);
    let warm = run(backend, keys, 0, 100_000, step);
    assert_eq!(
        warm, 100_000,
        "{name}/{label}: the bench must measure admissions"
    );
    let mut group = c.benchmark_group("check_and_charge");
    group.sample_size(30);
    group.bench_function(BenchmarkId::new(name, label), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            run(backend, keys, 0, iters, step);
            start.elapsed()
        })
    });
    group.bench_function(BenchmarkId::new(name, format!("{label}/2_threads")), |b| {
        b.iter_custom(|iters| timed_two_threads(backend, keys, iters, step))
    });
    group.finish();
}

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Bytes per active Scale key, two ways: the live heap bytes requested (the
/// counting allocator; excludes malloc's per-block overhead) and the growth of
/// the resident set (includes it, and page granularity), each divided by N.
fn print_bytes_per_scale_key() {
    const N: usize = 200_000;
    let keys = key_ids(N);
    let specs = scale_specs();
    let limiter = MemoryLimiter::new(FakeClock::new(0));
    let rss_before = rss_bytes();
    COUNTING.store(true, Ordering::SeqCst);
    for key in &keys {
        for _ in 0..3 {
            limiter.check_and_charge(key, &specs);
        }
    }
    COUNTING.store(false, Ordering::SeqCst);
    let heap = LIVE_BYTES.load(Ordering::SeqCst) as f64 / N as f64;
    let rss = rss_bytes().saturating_sub(rss_before) as f64 / N as f64;
    println!("bytes per active Scale key ({N} keys): heap {heap:.0} B requested, RSS {rss:.0} B");
    black_box(&limiter);
}

/// Checks against a loopback Redis, through the production path (Redis's `TIME`). Keys
/// cycle over 10,000 so that no key reaches its limits: the checks measured are admissions.
fn bench_redis(c: &mut Criterion) {
    const KEYS: usize = 10_000;
    const IN_FLIGHT: u64 = 16;
    const TIMEOUT: Duration = Duration::from_secs(5);
    if !redis_server::available() {
        println!(
            "redis-server not found: skipping the Redis benches (apt-get install redis-server)"
        );
        return;
    }
    let server = redis_server::RedisServer::start();
    let limiter = Arc::new(
        RedisLimiter::new(&server.url(), Arc::new(Metrics::new())).expect("a valid redis url"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !limiter.is_connected() {
        assert!(
            Instant::now() < deadline,
            "no connection to the bench's redis-server"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("bench runtime");
    let keys = Arc::new(key_ids(KEYS));
    let specs = Arc::new(bench_specs());
    // Loads the script, so that no measured call pays for it.
    let warm = runtime.block_on(limiter.check_and_charge(&keys[0], &specs, TIMEOUT));
    assert!(
        warm.is_ok_and(|d| d.is_admitted()),
        "the bench must measure admissions"
    );

    let mut group = c.benchmark_group("redis_check_and_charge");
    group.sample_size(20);
    group.bench_function("1_in_flight", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    let key = &keys[i as usize % KEYS];
                    let decision = limiter.check_and_charge(key, &specs, TIMEOUT).await;
                    black_box(decision.expect("redis answers"));
                }
                start.elapsed()
            })
        })
    });
    group.bench_function(format!("{IN_FLIGHT}_in_flight"), |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                let mut tasks = tokio::task::JoinSet::new();
                for task in 0..IN_FLIGHT {
                    let (limiter, keys, specs) = (limiter.clone(), keys.clone(), specs.clone());
                    tasks.spawn(async move {
                        for i in (task..iters).step_by(IN_FLIGHT as usize) {
                            let key = &keys[i as usize % KEYS];
                            let decision = limiter.check_and_charge(key, &specs, TIMEOUT).await;
                            black_box(decision.expect("redis answers"));
                        }
                    });
                }
                while let Some(done) = tasks.join_next().await {
                    done.expect("bench task");
                }
                start.elapsed()
            })
        })
    });
    let one = [LimitSpec::new("one", 1, 3_600_000)];
    runtime.block_on(async {
        for _ in 0..2 {
            let _ = limiter.check_and_charge("refused", &one, TIMEOUT).await;
        }
    });
    group.bench_function("cached_refusal", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let decision = limiter.check_and_charge("refused", &one, TIMEOUT).await;
                    assert!(!decision.expect("cached").is_admitted());
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

fn main() {
    print_bytes_per_scale_key();
    let mut c = Criterion::default().configure_from_args();
    bench_redis(&mut c);
    let one = key_ids(1);
    let many = key_ids(MANY_KEYS);
    bench_case(&mut c, "ring", &populated_ring(&one), &one);
    bench_case(&mut c, "baseline_mutex_log", &populated_log(&one), &one);
    let ring = populated_ring(&many);
    bench_case(&mut c, "ring", &ring, &many);
    drop(ring);
    bench_case(&mut c, "baseline_mutex_log", &populated_log(&many), &many);
    c.final_summary();
}
