//! End-to-end tests of the Redis limiter backend: real `termsgate` processes sharing a real
//! `redis-server` (started per test on a free port, without persistence, killed at the end).
//!
//! The script's semantics and the model check run as unit tests in `src/limiter/redis/`,
//! with injected time; here time is real, so windows are the plans' (a minute, an hour),
//! except the Retry-After test, which uses a 2 s window and sleeps through its wait.

mod common;
#[path = "common/redis.rs"]
mod redis_server;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use redis_server::RedisServer;
use termsgate::own_listener::process_owns_port;

/// The Jettson plans and keys, with a Redis limiter section.
fn redis_config(port: u16, admin: u16, upstream: std::net::SocketAddr, limiter: &str) -> String {
    let mut text = jettson_config(port, admin, upstream, "");
    text.push_str("\n[limiter]\n");
    text.push_str(limiter);
    text
}

fn limiter_section(redis: &RedisServer, timeout_ms: u64, policy: &str) -> String {
    format!(
        "backend = \"redis\"\nredis_url = \"{}\"\nredis_timeout_ms = {timeout_ms}\non_backend_error = \"{policy}\"\n",
        redis.url()
    )
}

/// A gateway on the Jettson config using `redis` with `policy`; waits until the gateway has
/// connected (a request is decided by Redis), so tests start from a known state.
fn gateway(up: &Upstream, redis: &RedisServer, timeout_ms: u64, policy: &str) -> Gateway {
    let limiter = limiter_section(redis, timeout_ms, policy);
    let upstream = up.addr;
    let gw = Gateway::start_with_env(
        move |port, admin| redis_config(port, admin, upstream, &limiter),
        LOG_INFO,
    );
    wait_connected(&gw);
    gw
}

/// `wait_connected` reads the connection message, logged at `info`.
const LOG_INFO: &[(&str, &str)] = &[("RUST_LOG", "info")];

/// Waits until the gateway's limiter has made its background connection, without spending
/// any key's budget: readiness does not depend on Redis, and a GET matches no limit.
fn wait_connected(gw: &Gateway) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.stderr().contains("limiter connected to redis") {
        assert!(
            Instant::now() < deadline,
            "never connected: {}",
            gw.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn redis_client(redis: &RedisServer) -> redis::Connection {
    redis::Client::open(redis.url())
        .and_then(|c| c.get_connection())
        .expect("test connection to redis")
}

/// Requests of key `key_free_a` counted in Redis's minute window (0 when it has no state).
fn counted_in_redis(redis: &RedisServer) -> i64 {
    let mut con = redis_client(redis);
    let counts: std::collections::HashMap<String, i64> = redis::cmd("HGETALL")
        .arg("tg:{key_free_a}:spawns_per_minute")
        .query(&mut con)
        .expect("HGETALL");
    counts
        .iter()
        .filter(|(field, _)| !matches!(field.as_str(), "w" | "h" | "l"))
        .map(|(_, count)| count)
        .sum()
}

async fn status_of(client: &reqwest::Client, gw: &Gateway, token: &str) -> u16 {
    spawn(client, gw, token).await.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_budget() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let a = gateway(&up, &redis, 200, "deny");
    let b = gateway(&up, &redis, 200, "deny");
    let client = client();

    // Alternating: 5 admitted in total, and both instances refuse afterwards.
    let mut statuses = Vec::new();
    for i in 0..12 {
        let gw = if i % 2 == 0 { &a } else { &b };
        statuses.push(status_of(&client, gw, FREE).await);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        5,
        "{statuses:?}"
    );
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    assert_eq!(counted_in_redis(&redis), 5);

    // 40 concurrent spawns of another Free key, 20 on each instance.
    let (a, b) = (Arc::new(a), Arc::new(b));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let gw = if i % 2 == 0 { a.clone() } else { b.clone() };
        let client = client.clone();
        tasks.spawn(async move { status_of(&client, &gw, FREE2).await });
    }
    let mut concurrent = Vec::new();
    while let Some(status) = tasks.join_next().await {
        concurrent.push(status.expect("request task"));
    }
    assert_eq!(
        concurrent.iter().filter(|s| **s == 201).count(),
        5,
        "{concurrent:?}"
    );
    assert_eq!(
        concurrent.iter().filter(|s| **s == 429).count(),
        35,
        "{concurrent:?}"
    );
    assert_eq!(up.count("POST", "/api/v1/agents"), 10);

    let metrics = a.metrics();
    let observed = metric(
        &metrics,
        "termsgate_limiter_backend_duration_seconds_count",
        &[("backend", "redis")],
    );
    // Instance a asked Redis 4 times in the alternating phase (3 admissions and the refusal
    // that filled its local cache; later refusals came from that cache) and at least once in
    // the concurrent phase; how often more depends on how the 20 requests interleave.
    assert!(observed.is_some_and(|n| n >= 5.0), "{observed:?}");
}

/// One key, one limit of 1 per 2 s: the shortest real wait a whole-second Retry-After allows.
fn two_second_config(
    port: u16,
    admin: u16,
    upstream: std::net::SocketAddr,
    limiter: &str,
) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:{port}"
upstream = "{upstream}"
watch = false
drain_timeout_s = 5

[admin]
listen = "127.0.0.1:{admin}"

[[routes]]
name = "spawn"
method = "POST"
path = "/api/v1/agents"

[[plans]]
name = "free"
limits = [{{ name = "spawns_per_2s", route = "spawn", max = 1, window = "2s" }}]

[[keys]]
id = "key_free_a"
sha256 = "{}"
plan = "free"

[limiter]
{limiter}"#,
        sha256_hex(FREE)
    )
}

#[tokio::test]
async fn retry_after_holds_across_instances() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let upstream = up.addr;
    let limiter = limiter_section(&redis, 200, "deny");
    let start = |limiter: String| {
        let gw = Gateway::start_with_env(
            move |port, admin| two_second_config(port, admin, upstream, &limiter),
            LOG_INFO,
        );
        wait_connected(&gw);
        gw
    };
    let (a, b) = (start(limiter.clone()), start(limiter));
    let client = client();

    assert_eq!(status_of(&client, &a, FREE).await, 201);
    let refused = spawn(&client, &a, FREE).await;
    assert_eq!(refused.status().as_u16(), 429);
    let retry_after_secs: u64 = refused
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After header");
    assert!((1..=2).contains(&retry_after_secs), "{retry_after_secs}");
    // Instance B refuses too: the budget is shared.
    assert_eq!(status_of(&client, &b, FREE).await, 429);
    // Measured from the refusal's arrival, as a client would: it slept that long at least.
    tokio::time::sleep(Duration::from_secs(retry_after_secs)).await;
    let retried = spawn(&client, &b, FREE).await;
    assert_eq!(retried.status().as_u16(), 201, "{:?}", retried.headers());
}

/// Traffic on `token` in the background until `stop`, recording each request's latency.
fn background_traffic(
    gw: Arc<Gateway>,
    token: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Duration>> {
    tokio::spawn(async move {
        let client = client();
        let mut latencies = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let _ = spawn(&client, &gw, token).await;
            latencies.push(started.elapsed());
            // Slow enough that the Pro key stays under its 30 a minute before the outage: its
            // requests must reach Redis, not the local refusal cache.
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        latencies
    })
}

/// Kills Redis under traffic and checks what `policy` answers, that no request waited much
/// longer than the 50 ms timeout, and that the gateway uses Redis again once it is back.
async fn outage(policy: &str, check_outage: impl AsyncFnOnce(&reqwest::Client, &Gateway)) {
    let mut redis = RedisServer::start();
    let up = Upstream::start();
    let gw = Arc::new(gateway(&up, &redis, 50, policy));
    let client = client();

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = background_traffic(gw.clone(), PRO, stop.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;

    check_outage(&client, &gw).await;

    stop.store(true, Ordering::Relaxed);
    let latencies = traffic.await.expect("traffic task");
    assert!(latencies.len() >= 10, "{} requests", latencies.len());
    let slowest = latencies.iter().max().copied().unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(1),
        "a request took {slowest:?}"
    );
    let errors = metric(&gw.metrics(), "termsgate_limiter_backend_errors_total", &[]);
    assert!(errors.is_some_and(|n| n >= 1.0), "{errors:?}");

    // Back on the same port, empty: the gateway reconnects by itself.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while counted_in_redis(&redis) == 0 {
        assert!(
            Instant::now() < deadline,
            "never used redis again: {}",
            gw.stderr()
        );
        let _ = spawn(&client, &gw, FREE).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Decided by Redis again: its fresh window admits the rest of the 5, then refuses.
    let mut admitted = counted_in_redis(&redis);
    while status_of(&client, &gw, FREE).await == 201 {
        admitted += 1;
        assert!(admitted <= 5, "over-admitted after recovery");
    }
    assert_eq!(admitted, 5);
    assert_eq!(counted_in_redis(&redis), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_policy_local_keeps_per_instance_limits() {
    outage("local", async |client, gw| {
        let mut statuses = Vec::new();
        for _ in 0..7 {
            let started = Instant::now();
            statuses.push(status_of(client, gw, FREE).await);
            assert!(started.elapsed() < Duration::from_secs(1));
        }
        assert_eq!(statuses, [201, 201, 201, 201, 201, 429, 429]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_policy_allow_admits() {
    outage("allow", async |client, gw| {
        for _ in 0..7 {
            let started = Instant::now();
            let response = spawn(client, gw, FREE).await;
            assert!(started.elapsed() < Duration::from_secs(1));
            assert_eq!(response.status().as_u16(), 201);
            // Not counted anywhere, so no rate-limit headers.
            assert!(response.headers().get("ratelimit").is_none());
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_policy_deny_answers_503() {
    outage("deny", async |client, gw| {
        for _ in 0..3 {
            let started = Instant::now();
            let response = spawn(client, gw, FREE).await;
            assert!(started.elapsed() < Duration::from_secs(1));
            assert_eq!(response.status().as_u16(), 503);
            let body: serde_json::Value = response.json().await.expect("JSON error body");
            assert_eq!(body["error"]["code"], "temporarily_unavailable");
        }
    })
    .await;
}
