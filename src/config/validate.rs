//! Turns the file structs into a checked `Config`, or an error naming the entry at fault.
//!
//! Validation never panics: the same code runs for `termsgate check`, at start-up and on
//! every hot reload, where a panic would take the gateway down.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method};
use ipnet::IpNet;

use super::file::{
    default_max_invalid_keys_per_minute, AbuseFile, FileConfig, KeyFile, LimiterFile, PlanFile,
    RouteFile, ServerFile,
};
use super::model::{
    AbuseSettings, ApiKey, Backend, Config, KeyHash, Limit, LimitSet, LimiterSettings,
    OnBackendError, PathMatch, Plan, Route, ServerSettings, Sources, TlsFiles,
};
use super::window::parse_window;
use super::ConfigError;
use crate::limiter::LimitSpec;

/// Routes are matched with a 64-bit mask.
const MAX_ROUTES: usize = 64;
/// Window counters are 16 bits wide (see `limiter`).
const MAX_LIMIT: i64 = 65_535;
/// Client timeouts: at most an hour.
const MAX_CLIENT_TIMEOUT_MS: u64 = 3_600_000;

/// Checks a parsed file (plus the keys of `keys_file`, if any) and builds the runtime config.
pub(crate) fn build(
    file: FileConfig,
    extra_keys: Vec<KeyFile>,
    sources: Sources,
) -> Result<Config, ConfigError> {
    let base_dir = sources
        .config_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let server = server(file.server, &base_dir)?;
    let admin_listen = socket_addr("admin.listen", &file.admin.listen)?;
    let routes = routes(file.routes)?;
    let plans = plans(file.plans, &routes)?;
    let keys = keys(file.keys.into_iter().chain(extra_keys), &plans)?;
    Ok(Config {
        server,
        admin_listen,
        routes,
        plans,
        keys,
        limiter: limiter(file.limiter)?,
        abuse: abuse(file.abuse)?,
        sources,
    })
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

fn socket_addr(field: &str, raw: &str) -> Result<SocketAddr, ConfigError> {
    raw.parse()
        .map_err(|_| invalid(format!("{field}: {raw:?} is not an IP:port address")))
}

fn server(s: ServerFile, base_dir: &Path) -> Result<ServerSettings, ConfigError> {
    let listen_raw = s.listen.into_vec();
    if listen_raw.is_empty() {
        return Err(invalid("server.listen: at least one address is needed"));
    }
    let listen = listen_raw
        .iter()
        .map(|a| socket_addr("server.listen", a))
        .collect::<Result<Vec<_>, _>>()?;
    let upstream_addr = resolve_upstream(&s.upstream)?;
    if s.upstream_timeout_ms == 0 {
        return Err(invalid("server.upstream_timeout_ms: must be at least 1"));
    }
    if s.max_body_bytes == 0 {
        return Err(invalid("server.max_body_bytes: must be at least 1"));
    }
    for (field, ms) in [
        ("header_timeout_ms", s.header_timeout_ms),
        ("idle_timeout_ms", s.idle_timeout_ms),
    ] {
        if !(1..=MAX_CLIENT_TIMEOUT_MS).contains(&ms) {
            return Err(invalid(format!(
                "server.{field}: must be between 1 and {MAX_CLIENT_TIMEOUT_MS}"
            )));
        }
    }
    let upstream_sni = s
        .upstream_sni
        .clone()
        .unwrap_or_else(|| host_of(&s.upstream));
    Ok(ServerSettings {
        listen,
        upstream_addr,
        upstream_tls: s.upstream_tls,
        upstream_sni,
        upstream: s.upstream,
        upstream_timeout: Duration::from_millis(s.upstream_timeout_ms),
        drain_timeout: Duration::from_secs(s.drain_timeout_s),
        strip_authorization: s.strip_authorization,
        watch: s.watch,
        tls: tls_files(s.tls_cert, s.tls_key, base_dir)?,
        trusted_proxies: trusted_proxies(&s.trusted_proxies)?,
        max_body_bytes: s.max_body_bytes,
        header_timeout: Duration::from_millis(s.header_timeout_ms),
        idle_timeout: Duration::from_millis(s.idle_timeout_ms),
    })
}

fn host_of(upstream: &str) -> String {
    upstream
        .rsplit_once(':')
        .map(|(h, _)| h.trim_matches(|c| c == '[' || c == ']'))
        .unwrap_or(upstream)
        .to_string()
}

/// The upstream is resolved once per load: a DNS change is picked up by a reload.
fn resolve_upstream(raw: &str) -> Result<SocketAddr, ConfigError> {
    let not_found = || {
        invalid(format!(
            "server.upstream: {raw:?} is not a reachable host:port"
        ))
    };
    raw.to_socket_addrs()
        .map_err(|_| not_found())?
        .next()
        .ok_or_else(not_found)
}

fn tls_files(
    cert: Option<String>,
    key: Option<String>,
    base_dir: &Path,
) -> Result<Option<TlsFiles>, ConfigError> {
    let (cert, key) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (base_dir.join(c), base_dir.join(k)),
        _ => {
            return Err(invalid(
                "server.tls_cert and server.tls_key: set both or neither",
            ))
        }
    };
    for (field, path) in [("server.tls_cert", &cert), ("server.tls_key", &key)] {
        std::fs::metadata(path)
            .map_err(|e| invalid(format!("{field}: cannot read {}: {e}", path.display())))?;
    }
    let pair = crate::tls::load_pair(&cert, &key)
        .map_err(|e| invalid(format!("server.tls_cert/tls_key: {e}")))?;
    Ok(Some(TlsFiles { cert, key, pair }))
}

fn trusted_proxies(raw: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    raw.iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| invalid(format!("server.trusted_proxies: {s:?} is not a CIDR or IP")))
        })
        .collect()
}

fn routes(raw: Vec<RouteFile>) -> Result<Vec<Route>, ConfigError> {
    if raw.len() > MAX_ROUTES {
        return Err(invalid(format!(
            "routes: at most {MAX_ROUTES} routes are supported"
        )));
    }
    let mut seen = HashSet::new();
    raw.into_iter()
        .enumerate()
        .map(|(i, r)| {
            let at = format!("routes[{i}] {:?}", r.name);
            if r.name.is_empty() {
                return Err(invalid(format!("{at}: name is empty")));
            }
            if !seen.insert(r.name.clone()) {
                return Err(invalid(format!("{at}: duplicate route name")));
            }
            route(r, &at)
        })
        .collect()
}

fn route(r: RouteFile, at: &str) -> Result<Route, ConfigError> {
    let method = match r.method {
        None => None,
        Some(m) => Some(
            Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| invalid(format!("{at}: method {m:?} is not an HTTP method")))?,
        ),
    };
    if !r.path.starts_with('/') {
        return Err(invalid(format!(
            "{at}: path {:?} must start with '/'",
            r.path
        )));
    }
    let path = match r.path.strip_suffix("/*") {
        Some(prefix) => PathMatch::Prefix(prefix.to_string()),
        None if r.path.contains('*') => {
            return Err(invalid(format!(
                "{at}: '*' is only allowed as a trailing \"/*\""
            )))
        }
        None => PathMatch::Exact(r.path),
    };
    Ok(Route {
        name: Arc::from(r.name),
        method,
        path,
    })
}

fn plans(
    raw: Vec<PlanFile>,
    routes: &[Route],
) -> Result<HashMap<Arc<str>, Arc<Plan>>, ConfigError> {
    let mut out = HashMap::new();
    for (i, p) in raw.into_iter().enumerate() {
        let at = format!("plans[{i}] {:?}", p.name);
        if p.name.is_empty() {
            return Err(invalid(format!("{at}: name is empty")));
        }
        if p.name.chars().any(char::is_control) {
            return Err(invalid(format!(
                "{at}: a plan name goes to the upstream in X-Api-Plan: no control characters"
            )));
        }
        let plan = plan(p, routes, &at)?;
        if out.insert(plan.name.clone(), Arc::new(plan)).is_some() {
            return Err(invalid(format!("{at}: duplicate plan name")));
        }
    }
    Ok(out)
}

fn plan(p: PlanFile, routes: &[Route], at: &str) -> Result<Plan, ConfigError> {
    let mut names = HashSet::new();
    let mut limits = Vec::with_capacity(p.limits.len());
    for (j, l) in p.limits.into_iter().enumerate() {
        let at = format!("{at}: limits[{j}] {:?}", l.name);
        if l.name.is_empty() {
            return Err(invalid(format!("{at}: name is empty")));
        }
        if !l
            .name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            return Err(invalid(format!(
                "{at}: a limit name is quoted in the RateLimit headers: printable ASCII without spaces, quotes or backslashes"
            )));
        }
        if !names.insert(l.name.clone()) {
            return Err(invalid(format!("{at}: duplicate limit name in this plan")));
        }
        let route =
            match &l.route {
                None => None,
                Some(name) => Some(routes.iter().position(|r| &*r.name == name).ok_or_else(
                    || invalid(format!("{at}: route {name:?} is not defined in [[routes]]")),
                )?),
            };
        if !(1..=MAX_LIMIT).contains(&l.max) {
            return Err(invalid(format!(
                "{at}: max = {} must be between 1 and {MAX_LIMIT}",
                l.max
            )));
        }
        let window = parse_window(&l.window).map_err(|e| invalid(format!("{at}: {e}")))?;
        let spec = LimitSpec {
            name: Arc::from(l.name),
            max: l.max as u32,
            window_ms: window.as_millis() as u64,
        };
        limits.push(Limit { spec, route });
    }
    let applies = |l: &Limit, r: Option<usize>| l.route.is_none() || l.route == r;
    let collect = |r: Option<usize>| {
        LimitSet::new(
            limits
                .iter()
                .filter(|l| applies(l, r))
                .map(|l| l.spec.clone())
                .collect(),
        )
    };
    let by_route = (0..routes.len()).map(|r| collect(Some(r))).collect();
    let unrouted = collect(None);
    let header = HeaderValue::from_bytes(p.name.as_bytes()).map_err(|_| {
        invalid(format!(
            "{at}: a plan name goes to the upstream in X-Api-Plan: no control characters"
        ))
    })?;
    Ok(Plan {
        name: Arc::from(p.name),
        header,
        limits,
        by_route,
        unrouted,
    })
}

fn keys(
    raw: impl Iterator<Item = KeyFile>,
    plans: &HashMap<Arc<str>, Arc<Plan>>,
) -> Result<HashMap<KeyHash, Arc<ApiKey>, ahash::RandomState>, ConfigError> {
    let mut ids = HashSet::new();
    let mut out = HashMap::with_hasher(ahash::RandomState::new());
    for (i, k) in raw.enumerate() {
        let at = format!("keys[{i}] {:?}", k.id);
        if k.id.is_empty() || !crate::request_id::is_valid(&k.id) {
            return Err(invalid(format!(
                "{at}: id must be 1-128 characters of A-Z a-z 0-9 . _ : -"
            )));
        }
        if !ids.insert(k.id.clone()) {
            return Err(invalid(format!("{at}: duplicate key id")));
        }
        let hash = parse_hash(&k.sha256).map_err(|e| invalid(format!("{at}: sha256 {e}")))?;
        let plan = plans.get(k.plan.as_str()).ok_or_else(|| {
            invalid(format!(
                "{at}: plan {:?} is not defined in [[plans]]",
                k.plan
            ))
        })?;
        // Checked above: the id's characters are all valid in a header.
        let header = HeaderValue::from_bytes(k.id.as_bytes())
            .map_err(|_| invalid(format!("{at}: id cannot go in X-Api-Key-Id")))?;
        let key = ApiKey {
            id: Arc::from(k.id),
            header,
            plan: plan.clone(),
        };
        if out.insert(hash, Arc::new(key)).is_some() {
            return Err(invalid(format!(
                "{at}: the same sha256 is used by another key"
            )));
        }
    }
    Ok(out)
}

/// A key hash must be 64 lowercase hex characters.
fn parse_hash(raw: &str) -> Result<KeyHash, String> {
    let ok = raw.len() == 64
        && raw
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !ok {
        return Err("must be 64 lowercase hex characters".into());
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(raw, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

fn limiter(raw: Option<LimiterFile>) -> Result<LimiterSettings, ConfigError> {
    let Some(l) = raw else {
        return Ok(LimiterSettings {
            backend: Backend::Memory,
            timeout: Duration::from_millis(50),
            on_backend_error: OnBackendError::Local,
        });
    };
    let backend = match l.backend.as_str() {
        "memory" => Backend::Memory,
        "redis" => {
            let url = l
                .redis_url
                .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
            redis::Client::open(url.as_str()).map_err(|e| {
                // Never echo a password: the message reaches stderr and `check`'s output.
                let shown = crate::limiter::redis::redact(&url);
                invalid(format!("limiter.redis_url: {shown:?}: {e}"))
            })?;
            Backend::Redis { url }
        }
        other => {
            return Err(invalid(format!(
                "limiter.backend: {other:?} is not \"memory\" or \"redis\""
            )))
        }
    };
    let on_backend_error = match l.on_backend_error.as_str() {
        "local" => OnBackendError::Local,
        "allow" => OnBackendError::Allow,
        "deny" => OnBackendError::Deny,
        other => {
            return Err(invalid(format!(
                "limiter.on_backend_error: {other:?} is not \"local\", \"allow\" or \"deny\""
            )))
        }
    };
    if l.redis_timeout_ms == 0 {
        return Err(invalid("limiter.redis_timeout_ms: must be at least 1"));
    }
    Ok(LimiterSettings {
        backend,
        timeout: Duration::from_millis(l.redis_timeout_ms),
        on_backend_error,
    })
}

fn abuse(raw: Option<AbuseFile>) -> Result<AbuseSettings, ConfigError> {
    let max = raw.map_or_else(default_max_invalid_keys_per_minute, |a| {
        a.max_invalid_keys_per_minute
    });
    if !(1..=MAX_LIMIT).contains(&max) {
        return Err(invalid(format!(
            "abuse.max_invalid_keys_per_minute: {max} must be between 1 and {MAX_LIMIT}"
        )));
    }
    Ok(AbuseSettings {
        max_invalid_keys_per_minute: max as u32,
    })
}
