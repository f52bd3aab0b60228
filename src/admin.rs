//! The admin listener: `/metrics`, `/healthz` and `/readyz`, never on the public port.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::own_listener;
use crate::state::Shared;

/// Serves the admin paths.
pub struct AdminApp {
    shared: Arc<Shared>,
    /// The public listeners as bound at start-up (a reload cannot move them).
    public_listen: Vec<SocketAddr>,
    listener_seen_up: AtomicBool,
}

impl AdminApp {
    /// The admin app for a gateway listening on `public_listen`.
    pub fn new(shared: Arc<Shared>, public_listen: Vec<SocketAddr>) -> Self {
        AdminApp {
            shared,
            public_listen,
            listener_seen_up: AtomicBool::new(false),
        }
    }

    /// Ready once this process's public listener accepts connections, and until shutdown starts.
    fn ready(&self) -> bool {
        if self.shared.draining.load(Ordering::Acquire) {
            return false;
        }
        if self.listener_seen_up.load(Ordering::Acquire) {
            return true;
        }
        // Accepting is not enough: if another process holds the port, this gateway failed to
        // bind it and is exiting (`None`: no /proc to ask, the connection has to do).
        let up = self.public_listen.iter().all(|addr| {
            own_listener::listening_here(addr.port()) != Some(false)
                && TcpStream::connect_timeout(&reachable(*addr), Duration::from_millis(200)).is_ok()
        });
        if up {
            self.listener_seen_up.store(true, Ordering::Release);
        }
        up
    }
}

/// A wildcard listen address is reached through loopback.
fn reachable(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

fn text(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("Content-Type", content_type)
        .header("Content-Length", body.len())
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/metrics" => {
                let memory = self.shared.limiter.memory();
                self.shared
                    .metrics
                    .limiter_keys
                    .set(memory.key_count() as i64);
                text(
                    200,
                    "text/plain; version=0.0.4",
                    self.shared.metrics.render(),
                )
            }
            "/healthz" => text(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" if self.ready() => text(200, "text/plain", b"ready\n".to_vec()),
            "/readyz" => text(503, "text/plain", b"not ready\n".to_vec()),
            _ => text(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access_log::AccessLog;
    use crate::metrics::Metrics;
    use std::net::TcpListener;

    #[test]
    fn ready_only_once_the_public_listener_accepts_and_not_while_draining() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let text = format!(
            "[server]\nlisten = \"{addr}\"\nupstream = \"127.0.0.1:9\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n"
        );
        let config =
            crate::config::load_str(&text, std::path::Path::new("t.toml")).expect("config");
        let metrics = Arc::new(Metrics::new());
        let log = AccessLog::start(
            Box::new(std::io::sink()),
            16,
            metrics.access_log_dropped.clone(),
        );
        let shared = Shared::new(config, metrics, log);
        let app = AdminApp::new(shared.clone(), vec![addr]);
        assert!(!app.ready(), "ready before the public listener is up");
        let _listener = TcpListener::bind(addr).expect("bind public");
        assert!(app.ready());
        shared.draining.store(true, Ordering::Release);
        assert!(!app.ready(), "still ready while draining");
    }
}
