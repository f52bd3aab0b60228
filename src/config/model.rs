//! The checked runtime config: what the request path reads.
//!
//! These types never derive `Deserialize`; they are built only by `validate` from the file
//! structs, so every value here has already been checked. One `Config` is one immutable
//! snapshot: a reload builds a new one and swaps it in whole.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method};
use ipnet::IpNet;

use crate::limiter::LimitSpec;
use crate::ratelimit_headers;

/// SHA-256 of a bearer token.
pub type KeyHash = [u8; 32];

/// One validated config snapshot.
#[derive(Debug)]
pub struct Config {
    /// `[server]`.
    pub server: ServerSettings,
    /// `[admin] listen`.
    pub admin_listen: SocketAddr,
    /// Routes in file order; a request's metrics route is the first that matches.
    pub routes: Vec<Route>,
    /// Plans by name.
    pub plans: HashMap<Arc<str>, Arc<Plan>>,
    /// Keys by the SHA-256 of their token.
    pub keys: HashMap<KeyHash, Arc<ApiKey>, ahash::RandomState>,
    /// `[limiter]`.
    pub limiter: LimiterSettings,
    /// `[abuse]`.
    pub abuse: AbuseSettings,
    /// Files this snapshot was read from (watched for changes).
    pub sources: Sources,
}

/// The files a config came from.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The main config file.
    pub config_path: PathBuf,
    /// `server.keys_file`, resolved against the config file's directory.
    pub keys_path: Option<PathBuf>,
}

/// `[server]`, checked.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Public listen addresses.
    pub listen: Vec<SocketAddr>,
    /// The upstream as written, for messages and SNI defaults.
    pub upstream: String,
    /// The upstream address, resolved when the config was loaded.
    pub upstream_addr: SocketAddr,
    /// Connect to the upstream over TLS.
    pub upstream_tls: bool,
    /// SNI for the upstream TLS handshake.
    pub upstream_sni: String,
    /// Connect and read timeout towards the upstream.
    pub upstream_timeout: Duration,
    /// How long SIGTERM waits for in-flight requests.
    pub drain_timeout: Duration,
    /// Do not forward the client's Authorization header.
    pub strip_authorization: bool,
    /// Reload when the files change on disk.
    pub watch: bool,
    /// Certificate and key for HTTPS on the public listener.
    pub tls: Option<TlsFiles>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Largest request body accepted.
    pub max_body_bytes: u64,
    /// From a request's first byte, how long its header may take to arrive (slowloris).
    pub header_timeout: Duration,
    /// How long a client connection may sit idle before or between requests.
    pub idle_timeout: Duration,
}

/// Certificate and private key (PEM), resolved against the config directory, and the pair
/// as loaded and checked when the config was validated.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
    /// The loaded pair, ready to serve.
    pub pair: Arc<pingora::tls::sign::CertifiedKey>,
}

/// How a route's path is compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The path must be exactly this.
    Exact(String),
    /// The path must be this, or start with this followed by `/`.
    Prefix(String),
}

/// A named set of requests that limits can refer to.
#[derive(Debug, Clone)]
pub struct Route {
    /// The route's name (a metric label).
    pub name: Arc<str>,
    /// Method to match; any when `None`.
    pub method: Option<Method>,
    /// Path to match.
    pub path: PathMatch,
}

impl Route {
    /// Whether this route covers a request.
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        if self.method.as_ref().is_some_and(|m| m != method) {
            return false;
        }
        match &self.path {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => {
                path.starts_with(p.as_str())
                    && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
            }
        }
    }
}

/// One limit of a plan.
#[derive(Debug, Clone)]
pub struct Limit {
    /// Name, max and window as the limiter sees them.
    pub spec: LimitSpec,
    /// Index into `Config::routes`; `None` counts every request.
    pub route: Option<usize>,
}

/// A plan: its limits, plus the limits that apply per route, computed once at load.
#[derive(Debug)]
pub struct Plan {
    /// Plan name.
    pub name: Arc<str>,
    /// The name as the upstream receives it in `X-Api-Plan`, built once at load.
    pub header: HeaderValue,
    /// All limits, in file order.
    pub limits: Vec<Limit>,
    /// `by_route[r]`: the limits a request matching only route `r` is subject to.
    pub by_route: Vec<LimitSet>,
    /// The limits of a request that matches no route (those without a route).
    pub unrouted: LimitSet,
}

impl Plan {
    /// The limits that apply to a request, given which routes it matched (a bit per route).
    pub fn limits_for(&self, route_mask: u64) -> LimitSet {
        if route_mask == 0 {
            return self.unrouted.clone();
        }
        if route_mask.is_power_of_two() {
            return self.by_route[route_mask.trailing_zeros() as usize].clone();
        }
        LimitSet::for_one_request(
            self.limits
                .iter()
                .filter(|l| l.route.is_none_or(|r| route_mask & (1 << r) != 0))
                .map(|l| l.spec.clone())
                .collect(),
        )
    }
}

/// Limits that apply to a request together, in config order, with their `RateLimit-Policy`
/// and `X-RateLimit-Limit` values, which depend only on the limits. The sets of requests that
/// match one route or none are built once per config ([`LimitSet::new`]); a request matching
/// several routes at once builds its own ([`LimitSet::for_one_request`]).
#[derive(Debug, Clone)]
pub struct LimitSet {
    /// The limits.
    pub specs: Arc<[LimitSpec]>,
    /// `RateLimit-Policy` for them.
    pub policy: HeaderValue,
    /// `X-RateLimit-Limit` of each limit, in the same order; `None` in a set built for one
    /// request, which makes only the value it sends.
    pub maxima: Option<Arc<[HeaderValue]>>,
}

impl LimitSet {
    /// The set of `specs`, with all its header values (built at load, cloned per request).
    pub fn new(specs: Arc<[LimitSpec]>) -> Self {
        let maxima = specs
            .iter()
            .map(|spec| HeaderValue::from(spec.max))
            .collect();
        LimitSet {
            maxima: Some(maxima),
            ..Self::for_one_request(specs)
        }
    }

    /// The set of `specs` for a single request: its `X-RateLimit-Limit` value is made only
    /// for the limit it reports.
    pub fn for_one_request(specs: Arc<[LimitSpec]>) -> Self {
        let policy = ratelimit_headers::policy(&specs);
        LimitSet {
            specs,
            policy,
            maxima: None,
        }
    }
}

/// A configured API key. The token itself is never held, only its hash (the map key).
#[derive(Debug)]
pub struct ApiKey {
    /// What logs, the upstream and the limiter see.
    pub id: Arc<str>,
    /// The id as the upstream receives it in `X-Api-Key-Id`, built once at load.
    pub header: HeaderValue,
    /// The key's plan.
    pub plan: Arc<Plan>,
}

/// Which limiter backend holds window state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// This process's memory.
    Memory,
    /// A Redis shared by several instances.
    Redis {
        /// `redis://` URL.
        url: String,
    },
}

/// What to do when the limiter backend fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBackendError {
    /// Fall back to this instance's in-memory windows.
    Local,
    /// Admit.
    Allow,
    /// Refuse with 503.
    Deny,
}

/// `[limiter]`, checked.
#[derive(Debug, Clone)]
pub struct LimiterSettings {
    /// Where state lives.
    pub backend: Backend,
    /// Longest wait for the backend.
    pub timeout: Duration,
    /// Policy when the backend fails.
    pub on_backend_error: OnBackendError,
}

/// `[abuse]`, checked.
#[derive(Debug, Clone)]
pub struct AbuseSettings {
    /// Failed authentications per client IP per minute before it is blocked.
    pub max_invalid_keys_per_minute: u32,
}

impl ServerSettings {
    /// Whether `ip` is a trusted proxy.
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

impl Config {
    /// The bit mask of routes a request matches (bit `i` for `routes[i]`).
    pub fn route_mask(&self, method: &Method, path: &str) -> u64 {
        self.routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.matches(method, path))
            .fold(0, |mask, (i, _)| mask | (1 << i))
    }

    /// The metrics label of a request: its first matching route, or `other`.
    pub fn route_label(&self, route_mask: u64) -> &str {
        if route_mask == 0 {
            return "other";
        }
        &self.routes[route_mask.trailing_zeros() as usize].name
    }

    /// The one-line summary `termsgate check` prints.
    pub fn summary(&self) -> String {
        format!(
            "config ok: {} plans, {} routes, {} keys, upstream {}, listen {}",
            self.plans.len(),
            self.routes.len(),
            self.keys.len(),
            self.server.upstream,
            self.server
                .listen
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(","),
        )
    }
}
