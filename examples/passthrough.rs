//! `bare`: a bare Pingora pass-through proxy, the baseline of the load benchmark
//! (`benches/load/run.sh`, `docs/performance.md`).
//!
//! No authentication, limits, request ids, access log or metrics: every request goes to one
//! upstream unchanged. It runs with the same server settings as termsgate (`server_conf` in
//! `src/server.rs`: threads from `TERMSGATE_THREADS` or one per CPU, no work stealing, the same
//! keep-alive pool, one pool group per worker thread: `termsgate::upstream::worker_pool_key`),
//! the same global allocator and the same patched Pingora (`vendor/README.md`), so the
//! difference between the two is what termsgate's features cost.
//!
//! ```text
//! cargo build --release --example passthrough
//! target/release/examples/passthrough 127.0.0.1:8081 127.0.0.1:9000
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Proxies everything to one upstream.
struct Passthrough {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Passthrough {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        peer.group_key = termsgate::upstream::worker_pool_key();
        Ok(Box::new(peer))
    }
}

/// Worker threads: `TERMSGATE_THREADS`, else one per CPU (as termsgate's `worker_threads`).
fn worker_threads() -> usize {
    std::env::var("TERMSGATE_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n: &usize| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The same settings as termsgate's `server_conf`, with short shutdown waits.
fn server_conf() -> ServerConf {
    ServerConf {
        threads: worker_threads(),
        work_stealing: false,
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: 1024,
        max_retries: 1,
        ..ServerConf::default()
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, upstream) = match args.as_slice() {
        [listen, upstream] => match (listen.parse::<SocketAddr>(), upstream.parse()) {
            (Ok(l), Ok(u)) => (l, u),
            _ => {
                eprintln!("passthrough: both arguments must be IP:PORT addresses");
                return ExitCode::FAILURE;
            }
        },
        _ => {
            eprintln!("usage: passthrough LISTEN_ADDR UPSTREAM_ADDR   (e.g. 127.0.0.1:8081 127.0.0.1:9000)");
            return ExitCode::FAILURE;
        }
    };

    let mut server = Server::new_with_opt_and_conf(None, server_conf());
    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Passthrough { upstream },
        "passthrough",
    );
    proxy.add_tcp(&listen.to_string());
    server.add_service(proxy);
    server.bootstrap();
    eprintln!("passthrough: {listen} -> {upstream}");
    server.run_forever()
}
