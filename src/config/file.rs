//! The config file as written on disk: serde structs that mirror the TOML one to one.
//!
//! Nothing here is checked beyond what serde does; `super::validate` turns these into the
//! runtime types. These structs are never handed to the request path.

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub server: ServerFile,
    pub admin: AdminFile,
    #[serde(default)]
    pub routes: Vec<RouteFile>,
    #[serde(default)]
    pub plans: Vec<PlanFile>,
    #[serde(default)]
    pub keys: Vec<KeyFile>,
    #[serde(default)]
    pub limiter: Option<LimiterFile>,
    #[serde(default)]
    pub abuse: Option<AbuseFile>,
}

/// A `keys_file`: only `[[keys]]` entries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeysFile {
    #[serde(default)]
    pub keys: Vec<KeyFile>,
}

/// `listen` accepts one address or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// `[server]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerFile {
    pub listen: OneOrMany,
    pub upstream: String,
    #[serde(default)]
    pub upstream_tls: bool,
    #[serde(default)]
    pub upstream_sni: Option<String>,
    #[serde(default = "default_upstream_timeout_ms")]
    pub upstream_timeout_ms: u64,
    #[serde(default = "default_drain_timeout_s")]
    pub drain_timeout_s: u64,
    #[serde(default)]
    pub strip_authorization: bool,
    #[serde(default)]
    pub keys_file: Option<String>,
    #[serde(default = "default_watch")]
    pub watch: bool,
    #[serde(default)]
    pub tls_cert: Option<String>,
    #[serde(default)]
    pub tls_key: Option<String>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminFile {
    pub listen: String,
}

/// One `[[routes]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteFile {
    pub name: String,
    #[serde(default)]
    pub method: Option<String>,
    pub path: String,
}

/// One `[[plans]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlanFile {
    pub name: String,
    #[serde(default)]
    pub limits: Vec<LimitFile>,
}

/// A window as written: `"1m"` or a number of seconds.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum WindowFile {
    Seconds(i64),
    Text(String),
}

/// One limit of a plan.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitFile {
    pub name: String,
    #[serde(default)]
    pub route: Option<String>,
    pub max: i64,
    pub window: WindowFile,
}

/// One `[[keys]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyFile {
    pub id: String,
    pub sha256: String,
    pub plan: String,
}

/// `[limiter]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimiterFile {
    #[serde(default = "default_backend")]
    pub backend: String,
    #[serde(default)]
    pub redis_url: Option<String>,
    #[serde(default = "default_redis_timeout_ms")]
    pub redis_timeout_ms: u64,
    #[serde(default = "default_on_backend_error")]
    pub on_backend_error: String,
}

/// `[abuse]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AbuseFile {
    #[serde(default = "default_max_invalid_keys_per_minute")]
    pub max_invalid_keys_per_minute: i64,
}

fn default_upstream_timeout_ms() -> u64 {
    30_000
}
fn default_drain_timeout_s() -> u64 {
    10
}
fn default_watch() -> bool {
    true
}
fn default_max_body_bytes() -> u64 {
    1_048_576
}
fn default_header_timeout_ms() -> u64 {
    10_000
}
fn default_idle_timeout_ms() -> u64 {
    60_000
}
fn default_backend() -> String {
    "memory".into()
}
fn default_redis_timeout_ms() -> u64 {
    50
}
fn default_on_backend_error() -> String {
    "local".into()
}
pub(crate) fn default_max_invalid_keys_per_minute() -> i64 {
    30
}
