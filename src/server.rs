//! Assembles and runs the Pingora server: the proxy service, the admin service, and for the
//! demo the stand-in upstream, with shutdown timings taken from the config.

use std::path::PathBuf;
use std::sync::Arc;

use pingora::listeners::tls::TlsSettings;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::listening::Service;
use pingora::services::ServiceWithDependents;

use crate::access_log::AccessLog;
use crate::admin::AdminApp;
use crate::config::Config;
use crate::conn_guard::GuardedApp;
use crate::metrics::Metrics;
use crate::proxy::Gateway;
use crate::state::Shared;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A TLS listener could not be set up.
    #[error("TLS: {0}")]
    Tls(String),
    /// A listen address is taken or not ours to bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The control thread could not start.
    #[error("control thread: {0}")]
    Control(#[from] std::io::Error),
}

/// Pingora's TLS settings without paths need a callbacks value; we need no callbacks.
struct NoCallbacks;

#[async_trait::async_trait]
impl pingora::listeners::TlsAccept for NoCallbacks {}

/// Worker threads: `TERMSGATE_THREADS`, else one per CPU.
fn worker_threads() -> usize {
    std::env::var("TERMSGATE_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n: &usize| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn server_conf(config: &Config) -> ServerConf {
    let drain_secs = config.server.drain_timeout.as_secs();
    ServerConf {
        threads: worker_threads(),
        // Per-thread runtimes with no stealing measured fastest here (NOTES.md).
        work_stealing: false,
        // Pingora's default grace period is 300 s; SIGTERM must take at most drain_timeout_s.
        grace_period_seconds: Some(drain_secs),
        graceful_shutdown_timeout_seconds: Some(drain_secs.min(5)),
        upstream_keepalive_pool_size: 1024,
        max_retries: 1,
        ..ServerConf::default()
    }
}

/// Starts serving `config` and never returns. `config_path` is what SIGHUP and the file
/// watcher reload (`None` for the demo's built-in config); `extra` holds more services.
pub fn run(
    config: Config,
    config_path: Option<PathBuf>,
    extra: Vec<Box<dyn ServiceWithDependents>>,
) -> Result<(), StartError> {
    // Pingora would retry a taken port forever, logging once a second; fail at once instead.
    for addr in config.server.listen.iter().chain([&config.admin_listen]) {
        std::net::TcpListener::bind(addr).map_err(|source| StartError::Bind {
            addr: *addr,
            source,
        })?;
    }
    let metrics = Arc::new(Metrics::new());
    metrics.record_reload_timestamp();
    let access_log = AccessLog::stdout(metrics.access_log_dropped.clone());
    let public_listen = config.server.listen.clone();
    let admin_listen = config.admin_listen;

    let mut server = Server::new_with_opt_and_conf(None, server_conf(&config));
    let shared = Shared::new(config, metrics, access_log.clone());

    let gateway = pingora::proxy::http_proxy(&server.configuration, Gateway::new(shared.clone()));
    let mut proxy = Service::new(
        "termsgate proxy".into(),
        GuardedApp::new(gateway, shared.clone()),
    );
    for addr in &public_listen {
        let addr = addr.to_string();
        match &shared.tls {
            None => proxy.add_tcp(&addr),
            Some(store) => {
                let mut settings = TlsSettings::with_callbacks(Box::new(NoCallbacks))
                    .map_err(|e| StartError::Tls(e.to_string()))?;
                settings.set_cert_resolver(store.clone());
                proxy.add_tls_with_settings(&addr, None, settings);
            }
        }
    }
    tracing::info!(listen = ?public_listen, admin = %admin_listen, "termsgate starting");
    let mut admin = Service::new(
        "termsgate admin".into(),
        AdminApp::new(shared.clone(), public_listen),
    );
    admin.add_tcp(&admin_listen.to_string());

    server.add_service(proxy);
    server.add_service(admin);
    for service in extra {
        server.add_boxed_service(service);
    }
    server.bootstrap();
    crate::control::start(shared, config_path, server.watch_execution_phase())?;
    server.run(pingora::server::RunArgs::default());
    // Pingora's own exit path (after its shutdown) must not lose lines still in the buffer.
    access_log.drain(std::time::Duration::from_secs(1));
    std::process::exit(0)
}
