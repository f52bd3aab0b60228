//! Window state in Redis, shared by every gateway instance that points at it.
//!
//! One Lua script (`check_and_charge.lua`) checks and charges all the limits of a key in one
//! atomic step, with the in-memory ring's algorithm (`ring.rs`): same buckets, same count,
//! same waits. It reads time from Redis's `TIME`, so instances with skewed clocks agree, and
//! all of a key's Redis keys share the hash tag `{key_id}`, so it also runs on Redis Cluster.
//! Each limit's hash expires one window and one bucket after its newest charge.
//!
//! # Round trips
//! A request costs at most one round trip (`EVALSHA`; redis-rs falls back to loading the
//! script once after a Redis restart). A key refused with a wait `w` is refused here, without
//! Redis, until `w` has passed (as envoyproxy/ratelimit's local cache does): an abusive key
//! cannot flood Redis, and the answer is the same Redis would give, since nothing can free
//! room sooner.
//!
//! # Failures
//! All Redis I/O runs on a dedicated single-threaded runtime ("termsgate-redis"), not on the
//! caller's: Pingora runs one runtime per worker thread without work stealing, and redis-rs
//! spawns its connection driver and reconnection on the current runtime, which would tie
//! every instance's Redis traffic to whichever worker happened to connect first. The first
//! connection is made in the background, so a gateway starts with Redis down; until it
//! succeeds, calls fail at once. A [`ConnectionManager`] then reconnects by itself. Every
//! call is bounded by the caller's timeout, so a slow or dead Redis costs at most that long.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};
use tokio::sync::oneshot;

use crate::metrics::Metrics;

use super::{Clock, Decision, LimitSpec, LimitStatus, MonotonicClock, Statuses};

#[cfg(test)]
mod tests;

/// The script's source; `Script` sends its SHA-1 (`EVALSHA`) and loads it when Redis lacks it.
const SCRIPT: &str = include_str!("check_and_charge.lua");

/// How long one connection attempt may take (the TCP connect and the handshake). Requests do
/// not wait for it: they are bounded by `redis_timeout_ms`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest pause between reconnection attempts, so a restarted Redis is used again quickly.
const MAX_RECONNECT_DELAY_MS: u64 = 500;
/// Pause between rounds of the first connection while Redis is unreachable.
const FIRST_CONNECT_PAUSE: Duration = Duration::from_millis(500);
/// Cached refusals kept before expired ones are swept out.
const REFUSAL_CACHE_SWEEP_LEN: usize = 4_096;

/// Why the Redis backend could not decide.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The configured URL is not a Redis URL.
    #[error("invalid redis_url: {0}")]
    InvalidUrl(String),
    /// The background runtime for Redis I/O could not start.
    #[error("cannot start the redis runtime: {0}")]
    Start(String),
    /// Redis did not answer within the timeout.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// No connection to Redis (not yet made, refused, or lost).
    #[error("redis connection: {0}")]
    Connection(String),
    /// Redis answered with an error or an unexpected reply.
    #[error("redis script: {0}")]
    Script(String),
}

impl BackendError {
    /// The `kind` label of `termsgate_limiter_backend_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendError::Timeout(_) => "timeout",
            BackendError::Script(_) => "script",
            BackendError::InvalidUrl(_) | BackendError::Start(_) | BackendError::Connection(_) => {
                "connection"
            }
        }
    }

    fn from_redis(e: &RedisError) -> Self {
        if e.is_timeout() {
            // redis-rs's own I/O timeout; ours is `Timeout` from tokio.
            BackendError::Connection(e.to_string())
        } else if e.is_io_error()
            || e.is_connection_refusal()
            || e.is_connection_dropped()
            || e.is_unrecoverable_error()
            || e.is_cluster_error()
        {
            BackendError::Connection(e.to_string())
        } else {
            BackendError::Script(e.to_string())
        }
    }
}

/// The limits a refusal was for: (name, max, window_ms) each, in order.
type Signature = Vec<(Arc<str>, u32, u64)>;

fn signature(limits: &[LimitSpec]) -> Signature {
    limits
        .iter()
        .map(|s| (s.name.clone(), s.max, s.window_ms))
        .collect()
}

/// A refusal remembered for the rest of its wait.
struct CachedRefusal {
    /// The limits it was for: a request matching other limits asks Redis.
    specs: Signature,
    /// Local time of the refusal, in ms of `RedisLimiter::clock`.
    at_ms: u64,
    /// Local time until which the key is refused, in ms.
    until_ms: u64,
    limit_index: usize,
    statuses: Statuses,
}

impl CachedRefusal {
    fn matches(&self, limits: &[LimitSpec]) -> bool {
        self.specs.len() == limits.len()
            && self
                .specs
                .iter()
                .zip(limits)
                .all(|((name, max, window_ms), spec)| {
                    *name == spec.name && *max == spec.max && *window_ms == spec.window_ms
                })
    }

    /// The refusal as it stands at `now_ms`: every wait shortened by the time passed.
    fn decision_at(&self, now_ms: u64) -> Decision {
        let elapsed_ms = now_ms.saturating_sub(self.at_ms);
        let statuses = self
            .statuses
            .iter()
            .map(|s| LimitStatus {
                remaining: s.remaining,
                // A limit that was full stays reported full (wait ≥ 1 ms): whether it has
                // room again is only known to Redis, and remaining 0 needs a wait > 0.
                wait_ms: if s.wait_ms == 0 {
                    0
                } else {
                    s.wait_ms.saturating_sub(elapsed_ms).max(1)
                },
            })
            .collect();
        Decision::Refused {
            limit_index: self.limit_index,
            retry_after_ms: self.until_ms.saturating_sub(now_ms).max(1),
            statuses,
        }
    }
}

/// State shared with the background connection task.
struct Shared {
    /// Set once the first connection succeeds; the manager reconnects by itself afterwards.
    manager: OnceLock<ConnectionManager>,
    script: Script,
}

/// Shared windows in Redis.
pub struct RedisLimiter {
    shared: Arc<Shared>,
    /// The dedicated runtime that runs all Redis I/O.
    runtime: tokio::runtime::Handle,
    /// Dropped with the limiter, which stops the runtime's thread.
    _stop: oneshot::Sender<()>,
    metrics: Arc<Metrics>,
    /// Local time for the refusal cache; Redis time is not known here.
    clock: MonotonicClock,
    refusals: DashMap<Box<str>, CachedRefusal, ahash::RandomState>,
}

impl RedisLimiter {
    /// A limiter for the Redis at `url`. Never waits for Redis: the first connection is made
    /// in the background, and fails only for a malformed URL or when no thread can start.
    pub fn new(url: &str, metrics: Arc<Metrics>) -> Result<Self, BackendError> {
        let client =
            redis::Client::open(url).map_err(|e| BackendError::InvalidUrl(e.to_string()))?;
        let (runtime, stop) = start_runtime()?;
        let shared = Arc::new(Shared {
            manager: OnceLock::new(),
            script: Script::new(SCRIPT),
        });
        runtime.spawn(connect_in_background(client, shared.clone(), redact(url)));
        Ok(RedisLimiter {
            shared,
            runtime,
            _stop: stop,
            metrics,
            clock: MonotonicClock::new(),
            refusals: DashMap::with_hasher(ahash::RandomState::new()),
        })
    }

    /// True once the first connection to Redis has been made (it may have been lost since).
    pub fn is_connected(&self) -> bool {
        self.shared.manager.get().is_some()
    }

    /// Admits the request of `key_id` if every limit has room in Redis, and then counts it in
    /// all of them; otherwise counts it in none. Takes at most one round trip, and none for a
    /// key still inside a refusal's wait. Waits at most `timeout` for Redis.
    pub async fn check_and_charge(
        &self,
        key_id: &str,
        limits: &[LimitSpec],
        timeout: Duration,
    ) -> Result<Decision, BackendError> {
        self.decide(key_id, limits, timeout, None).await
    }

    /// [`check_and_charge`](Self::check_and_charge) at a given time: the script uses `now_ms`
    /// instead of Redis's `TIME`, and so does the local refusal cache.
    ///
    /// For tests and benches only: Redis's clock cannot be faked, so this is the only way to
    /// drive the model check (`limiter::model`) through hours of windows in seconds. The
    /// production path never passes a time, so instances keep agreeing on Redis's clock.
    #[doc(hidden)]
    pub async fn check_and_charge_at(
        &self,
        key_id: &str,
        limits: &[LimitSpec],
        timeout: Duration,
        now_ms: u64,
    ) -> Result<Decision, BackendError> {
        self.decide(key_id, limits, timeout, Some(now_ms)).await
    }

    async fn decide(
        &self,
        key_id: &str,
        limits: &[LimitSpec],
        timeout: Duration,
        fixed_now_ms: Option<u64>,
    ) -> Result<Decision, BackendError> {
        if limits.is_empty() {
            return Ok(Decision::Admitted {
                statuses: Statuses::new(),
            });
        }
        let local_now_ms = fixed_now_ms.unwrap_or_else(|| self.clock.now_ms());
        if let Some(cached) = self.refusals.get(key_id) {
            if cached.until_ms > local_now_ms && cached.matches(limits) {
                return Ok(cached.decision_at(local_now_ms));
            }
        }
        let decision = self
            .round_trip(key_id, limits, timeout, fixed_now_ms)
            .await
            .inspect_err(|e| {
                self.metrics
                    .backend_errors
                    .with_label_values(&[e.kind()])
                    .inc();
            })?;
        self.remember(key_id, limits, &decision, local_now_ms);
        Ok(decision)
    }

    /// Runs the script once, on the Redis runtime, bounded by `timeout`.
    async fn round_trip(
        &self,
        key_id: &str,
        limits: &[LimitSpec],
        timeout: Duration,
        fixed_now_ms: Option<u64>,
    ) -> Result<Decision, BackendError> {
        let Some(manager) = self.shared.manager.get() else {
            return Err(BackendError::Connection(
                "not connected yet (connecting in the background)".into(),
            ));
        };
        let mut connection = manager.clone();
        let shared = self.shared.clone();
        let keys = limits
            .iter()
            .map(|spec| redis_key(key_id, &spec.name))
            .collect::<Vec<_>>();
        let mut args = Vec::with_capacity(1 + 2 * limits.len());
        args.push(fixed_now_ms.map_or_else(String::new, |t| t.to_string()));
        for spec in limits {
            args.push(spec.max.to_string());
            args.push(spec.window_ms.to_string());
        }
        let started = Instant::now();
        let mut task = self.runtime.spawn(async move {
            let mut invocation = shared.script.prepare_invoke();
            for key in &keys {
                invocation.key(key);
            }
            for arg in &args {
                invocation.arg(arg);
            }
            invocation.invoke_async::<Vec<i64>>(&mut connection).await
        });
        let outcome = tokio::time::timeout(timeout, &mut task).await;
        self.metrics
            .backend_duration
            .with_label_values(&["redis"])
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            Err(_elapsed) => {
                // Nobody waits for the answer any more; a late reply is dropped by redis-rs.
                task.abort();
                Err(BackendError::Timeout(timeout))
            }
            Ok(Err(join_error)) => Err(BackendError::Connection(format!(
                "redis runtime: {join_error}"
            ))),
            Ok(Ok(Err(e))) => Err(BackendError::from_redis(&e)),
            Ok(Ok(Ok(reply))) => parse_reply(&reply, limits.len()),
        }
    }

    /// Caches a refusal for the rest of its wait.
    fn remember(&self, key_id: &str, limits: &[LimitSpec], decision: &Decision, now_ms: u64) {
        let Decision::Refused {
            limit_index,
            retry_after_ms,
            statuses,
        } = decision
        else {
            return;
        };
        if self.refusals.len() >= REFUSAL_CACHE_SWEEP_LEN {
            // Bounded memory: entries past their wait are useless, whatever key they hold.
            self.refusals.retain(|_, r| r.until_ms > now_ms);
        }
        self.refusals.insert(
            Box::from(key_id),
            CachedRefusal {
                specs: signature(limits),
                at_ms: now_ms,
                until_ms: now_ms.saturating_add(*retry_after_ms),
                limit_index: *limit_index,
                statuses: statuses.clone(),
            },
        );
    }
}

/// The Redis key of one limit of one API key. The `{key_id}` hash tag puts all of a key's
/// limits in one Cluster slot, which a multi-key script requires. Key ids cannot contain `}`
/// (config validation), so the tag is exactly the key id and two keys never collide.
pub fn redis_key(key_id: &str, limit_name: &str) -> String {
    format!("tg:{{{key_id}}}:{limit_name}")
}

/// Turns the script's flat reply into a decision; see `check_and_charge.lua`.
fn parse_reply(reply: &[i64], limit_count: usize) -> Result<Decision, BackendError> {
    let malformed = || BackendError::Script(format!("unexpected reply {reply:?}"));
    if reply.len() != 2 + 2 * limit_count {
        return Err(malformed());
    }
    let non_negative = |v: i64| u64::try_from(v).map_err(|_| malformed());
    let statuses = reply[2..]
        .chunks_exact(2)
        .map(|pair| {
            Ok(LimitStatus {
                remaining: u32::try_from(pair[0]).map_err(|_| malformed())?,
                wait_ms: non_negative(pair[1])?,
            })
        })
        .collect::<Result<Statuses, BackendError>>()?;
    let refusing = usize::try_from(reply[0]).map_err(|_| malformed())?;
    if refusing == 0 {
        return Ok(Decision::Admitted { statuses });
    }
    if refusing > limit_count {
        return Err(malformed());
    }
    Ok(Decision::Refused {
        limit_index: refusing - 1,
        retry_after_ms: non_negative(reply[1])?.max(1),
        statuses,
    })
}

/// Starts the thread and runtime that run all Redis I/O. The thread ends when the returned
/// sender is dropped, and its runtime is dropped there, outside any async context.
fn start_runtime() -> Result<(tokio::runtime::Handle, oneshot::Sender<()>), BackendError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BackendError::Start(e.to_string()))?;
    let handle = runtime.handle().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("termsgate-redis".into())
        .spawn(move || {
            // Either a send or the sender's drop ends the wait.
            runtime.block_on(async move {
                let _ = stopped.await;
            });
        })
        .map_err(|e| BackendError::Start(e.to_string()))?;
    Ok((handle, stop))
}

/// Retries with short pauses: a Redis restarted during an outage is used again within about
/// half a second of coming back.
fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_max_delay(MAX_RECONNECT_DELAY_MS)
}

/// Makes the first connection, retrying until Redis answers; the manager takes over after.
async fn connect_in_background(client: redis::Client, shared: Arc<Shared>, url: String) {
    let mut warned = false;
    loop {
        match ConnectionManager::new_with_config(client.clone(), manager_config()).await {
            Ok(manager) => {
                tracing::info!(url = %url, "limiter connected to redis");
                // Only this task sets it, once.
                let _ = shared.manager.set(manager);
                return;
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(
                        url = %url,
                        "limiter cannot reach redis yet ({e}); retrying in the background"
                    );
                    warned = true;
                }
                tokio::time::sleep(FIRST_CONNECT_PAUSE).await;
            }
        }
    }
}

/// The URL without its password, for logs.
pub(crate) fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_credentials, host)) => format!("{scheme}://***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}
