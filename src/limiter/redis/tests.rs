//! Tests of the Redis backend against a real `redis-server` (started per test, see
//! `tests/common/redis.rs`): the script decides exactly as the in-memory ring does, passes the
//! model check, keeps its keys bounded, and fails fast.
//!
//! Time is injected (`check_and_charge_at`) because Redis's `TIME` cannot be faked.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::limiter::model::{check_trace, strategy};
use crate::limiter::{FakeClock, MemoryLimiter};
use crate::own_listener::process_owns_port;

#[path = "../../../tests/common/redis.rs"]
mod server;

use server::RedisServer;

const MINUTE_MS: u64 = 60_000;
const HOUR_MS: u64 = 3_600_000;
/// Generous: loopback answers in well under a millisecond, but CI machines stall.
const TIMEOUT: Duration = Duration::from_secs(2);

/// A server, a runtime for the calls, and a connected limiter.
struct Setup {
    runtime: tokio::runtime::Runtime,
    limiter: RedisLimiter,
    server: RedisServer,
    metrics: Arc<Metrics>,
}

fn setup() -> Setup {
    let server = RedisServer::start();
    let metrics = Arc::new(Metrics::new());
    let limiter = RedisLimiter::new(&server.url(), metrics.clone()).expect("valid url");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !limiter.is_connected() {
        assert!(Instant::now() < deadline, "never connected to redis");
        std::thread::sleep(Duration::from_millis(10));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("test runtime");
    Setup {
        runtime,
        limiter,
        server,
        metrics,
    }
}

impl Setup {
    fn at(&self, t_ms: u64, key: &str, specs: &[LimitSpec]) -> Decision {
        self.try_at(t_ms, key, specs).expect("redis answers")
    }

    fn try_at(&self, t_ms: u64, key: &str, specs: &[LimitSpec]) -> Result<Decision, BackendError> {
        self.runtime
            .block_on(self.limiter.check_and_charge_at(key, specs, TIMEOUT, t_ms))
    }

    fn client(&self) -> redis::Connection {
        redis::Client::open(self.server.url())
            .and_then(|c| c.get_connection())
            .expect("test connection")
    }

    fn errors(&self, kind: &str) -> u64 {
        self.metrics.backend_errors.with_label_values(&[kind]).get()
    }
}

fn plan(limits: &[(u32, u64)]) -> Vec<LimitSpec> {
    limits
        .iter()
        .enumerate()
        .map(|(i, &(max, window_ms))| LimitSpec::new(&format!("l{i}"), max, window_ms))
        .collect()
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

/// Runs `steps` (time, specs) through the ring and through Redis on one key and compares.
/// Redis's answers must equal the ring's; an answer from the local refusal cache must agree
/// on the refusal itself (its other statuses are the ones Redis gave when it refused).
fn compare_with_memory(s: &Setup, key: &str, steps: &[(u64, Vec<LimitSpec>)]) {
    let memory = MemoryLimiter::new(FakeClock::new(0));
    // The refusal the limiter caches: until when, and for which limits.
    let mut cached: Option<(u64, Signature)> = None;
    for (t_ms, specs) in steps {
        memory.clock().set_ms(*t_ms);
        let expected = memory.check_and_charge(key, specs);
        let got = s.at(*t_ms, key, specs);
        let from_cache = cached
            .as_ref()
            .is_some_and(|(until_ms, refused)| *t_ms < *until_ms && *refused == signature(specs));
        if from_cache {
            assert!(!got.is_admitted(), "at {t_ms}: cache admitted");
            assert_eq!(refusal(&got), refusal(&expected), "at {t_ms} (cached)");
            continue;
        }
        assert_eq!(got, expected, "at {t_ms} ms");
        if let Decision::Refused { retry_after_ms, .. } = got {
            cached = Some((t_ms + retry_after_ms, signature(specs)));
        }
    }
}

fn same_specs(
    times: impl IntoIterator<Item = u64>,
    specs: &[LimitSpec],
) -> Vec<(u64, Vec<LimitSpec>)> {
    times.into_iter().map(|t| (t, specs.to_vec())).collect()
}

#[test]
fn free_plan_decides_as_memory() {
    let s = setup();
    let free = [
        LimitSpec::new("per_minute", 5, MINUTE_MS),
        LimitSpec::new("per_hour", 30, HOUR_MS),
    ];
    let mut times: Vec<u64> = (0..5).chain([10, 60_003, 60_004, 60_010]).collect();
    // Bursts of 5 a minute apart fill the hour, then the hour refuses.
    for burst in 2..8u64 {
        times.extend((0..6).map(|i| burst * 61_000 + i));
    }
    times.extend([HOUR_MS + 61_000, 2 * HOUR_MS + 1]);
    compare_with_memory(&s, "free", &same_specs(times, &free));
}

#[test]
fn changed_max_and_window_decide_as_memory() {
    let s = setup();
    let with_max = |max| vec![LimitSpec::new("m", max, MINUTE_MS)];
    let mut steps = same_specs(0..5, &with_max(5));
    steps.push((10, with_max(3)));
    steps.extend(same_specs(11..15, &with_max(8)));
    compare_with_memory(&s, "max", &steps);

    let minute = [LimitSpec::new("m", 5, MINUTE_MS)];
    let ten_secs = [LimitSpec::new("m", 5, 10_000)];
    let hour = [LimitSpec::new("m", 2, HOUR_MS)];
    let mut steps = same_specs([0, 10_000, 20_000, 30_000, 40_000], &minute);
    steps.extend(same_specs([45_000, 54_999, 55_000], &ten_secs));
    steps.extend(same_specs([55_001, 55_002, 70_000], &hour));
    compare_with_memory(&s, "window", &steps);
}

#[test]
fn refusal_reports_longest_wait_and_charges_nothing() {
    let s = setup();
    let specs = [
        LimitSpec::new("a", 1, MINUTE_MS),
        LimitSpec::new("b", 1, HOUR_MS),
        LimitSpec::new("c", 5, MINUTE_MS),
    ];
    assert!(s.at(0, "k", &specs).is_admitted());
    let d = s.at(1, "k", &specs);
    assert_eq!(refusal(&d), (1, HOUR_MS - 1));
    assert_eq!(d.statuses()[0].wait_ms, MINUTE_MS - 1);
    assert_eq!(
        d.statuses()[2],
        LimitStatus {
            remaining: 4,
            wait_ms: 0
        }
    );
    // "c" was not charged by the refusal.
    let c_only = [specs[2].clone()];
    assert_eq!(s.at(2, "k", &c_only).statuses()[0].remaining, 3);
}

#[test]
fn keys_share_a_hash_tag_and_expire_after_their_window() {
    let s = setup();
    let specs = plan(&[(5, MINUTE_MS), (30, HOUR_MS)]);
    assert!(s.at(1_000, "key_a", &specs).is_admitted());
    let mut con = s.client();
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con).expect("KEYS");
    keys.sort();
    assert_eq!(keys, ["tg:{key_a}:l0", "tg:{key_a}:l1"]);
    // Injected time is 1 s while Redis's clock is now: the expiry is measured from the
    // script's time, so it is one window plus one bucket, whatever the clocks.
    let ttl_ms: Vec<i64> = keys
        .iter()
        .map(|k| redis::cmd("PTTL").arg(k).query(&mut con).expect("PTTL"))
        .collect();
    assert!(
        (MINUTE_MS as i64..=61_000).contains(&ttl_ms[0]),
        "{ttl_ms:?}"
    );
    assert!(
        (HOUR_MS as i64..=HOUR_MS as i64 + 60_000).contains(&ttl_ms[1]),
        "{ttl_ms:?}"
    );
    // A refusal writes nothing, so it does not extend the expiry.
    let one = plan(&[(1, MINUTE_MS)]);
    assert!(s.at(2_000, "key_b", &one).is_admitted());
    assert!(!s.at(2_001, "key_b", &one).is_admitted());
    let fields: usize = redis::cmd("HLEN")
        .arg("tg:{key_b}:l0")
        .query(&mut con)
        .expect("HLEN");
    // w, h, l and one bucket.
    assert_eq!(fields, 4);
}

#[test]
fn production_path_uses_redis_time() {
    let s = setup();
    let specs = plan(&[(2, MINUTE_MS)]);
    let check = || {
        s.runtime
            .block_on(s.limiter.check_and_charge("live", &specs, TIMEOUT))
            .expect("redis answers")
    };
    assert!(check().is_admitted());
    assert!(check().is_admitted());
    let (index, wait_ms) = refusal(&check());
    assert_eq!(index, 0);
    assert!(
        (MINUTE_MS - 5_000..=MINUTE_MS).contains(&wait_ms),
        "{wait_ms}"
    );
    let mut con = s.client();
    let last_ms: u64 = redis::cmd("HGET")
        .arg("tg:{live}:l0")
        .arg("l")
        .query(&mut con)
        .expect("HGET");
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;
    assert!(unix_ms.abs_diff(last_ms) < 10_000, "{unix_ms} vs {last_ms}");
}

#[test]
fn cached_refusal_needs_no_redis_until_its_wait_ends() {
    let mut s = setup();
    let specs = plan(&[(1, MINUTE_MS), (10, HOUR_MS)]);
    assert!(s.at(0, "k", &specs).is_admitted());
    let (index, wait_ms) = refusal(&s.at(1, "k", &specs));
    assert_eq!((index, wait_ms), (0, MINUTE_MS - 1));
    s.server.kill();
    // Refused from the cache, with the wait counted down, while Redis is gone.
    let d = s.at(30_001, "k", &specs);
    assert_eq!(refusal(&d), (0, MINUTE_MS - 30_001));
    assert_eq!(
        d.statuses()[1],
        LimitStatus {
            remaining: 9,
            wait_ms: 0
        }
    );
    // Other limits, other keys, and the same key after the wait all need Redis.
    assert!(s.try_at(30_002, "k", &specs[1..]).is_err());
    assert!(s.try_at(30_003, "other", &specs).is_err());
    assert!(s.try_at(MINUTE_MS, "k", &specs).is_err());
    assert!(s.errors("connection") + s.errors("timeout") >= 3);
}

#[test]
fn fails_fast_when_redis_is_down_and_connects_when_it_starts() {
    let mut server = RedisServer::start();
    server.kill();
    let metrics = Arc::new(Metrics::new());
    let limiter = RedisLimiter::new(&server.url(), metrics.clone()).expect("valid url");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("test runtime");
    let specs = plan(&[(5, MINUTE_MS)]);
    let started = Instant::now();
    let result = runtime.block_on(limiter.check_and_charge("k", &specs, Duration::from_millis(50)));
    assert!(
        matches!(result, Err(BackendError::Connection(_))),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(100));
    assert_eq!(
        metrics
            .backend_errors
            .with_label_values(&["connection"])
            .get(),
        1
    );
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let result = runtime.block_on(limiter.check_and_charge("k", &specs, TIMEOUT));
        if result.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "never recovered: {result:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn invalid_url_is_an_error() {
    let result = RedisLimiter::new("http://nope", Arc::new(Metrics::new()));
    assert!(matches!(result, Err(BackendError::InvalidUrl(_))));
}

#[test]
fn replies_are_parsed_strictly() {
    assert_eq!(
        parse_reply(&[0, 0, 4, 0], 1).ok(),
        Some(Decision::Admitted {
            statuses: smallvec::smallvec![LimitStatus {
                remaining: 4,
                wait_ms: 0
            }]
        })
    );
    assert_eq!(
        parse_reply(&[2, 70, 1, 0, 0, 70], 2).ok(),
        Some(Decision::Refused {
            limit_index: 1,
            retry_after_ms: 70,
            statuses: smallvec::smallvec![
                LimitStatus {
                    remaining: 1,
                    wait_ms: 0
                },
                LimitStatus {
                    remaining: 0,
                    wait_ms: 70
                }
            ]
        })
    );
    assert!(parse_reply(&[0, 0, 4], 1).is_err());
    assert!(parse_reply(&[3, 1, 0, 1, 0, 1], 2).is_err());
    assert!(parse_reply(&[0, 0, -1, 0], 1).is_err());
}

#[test]
fn redis_keys_and_redacted_urls() {
    assert_eq!(redis_key("key_1", "per_minute"), "tg:{key_1}:per_minute");
    assert_eq!(
        redact("redis://:secret@host:6379/0"),
        "redis://***@host:6379/0"
    );
    assert_eq!(redact("redis://host:6379"), "redis://host:6379");
}

proptest! {
    // Each case is hundreds of real round trips; the in-memory model check runs 256.
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn redis_matches_model(
        specs in strategy::specs(),
        arrivals in strategy::arrivals(120),
    ) {
        let s = setup();
        let traces = AtomicUsize::new(0);
        // A fresh limiter is a fresh key: the model replays histories on new ones.
        let fresh = || {
            let key = format!("trace{}", traces.fetch_add(1, Ordering::Relaxed));
            let s = &s;
            move |t_ms: u64, specs: &[LimitSpec]| s.at(t_ms, &key, specs)
        };
        let result = check_trace(&specs, &arrivals, fresh);
        prop_assert!(result.is_ok(), "{:?}", result);
    }

    #[test]
    fn redis_decides_as_memory(
        specs in strategy::specs(),
        arrivals in strategy::arrivals(120),
    ) {
        let s = setup();
        compare_with_memory(&s, "diff", &same_specs(arrivals, &specs));
    }
}
