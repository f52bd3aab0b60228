//! Shared helpers for end-to-end tests: a recording upstream (hyper, port 0), the real
//! `termsgate` binary on loopback, and config text builders.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};

pub const FREE: &str = "tg_test_free_0123456789abcdef";
pub const FREE2: &str = "tg_test_free_fedcba9876543210";
pub const PRO: &str = "tg_test_pro_00112233445566778899";

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// Path and query, as the upstream received them.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
}

impl Seen {
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A real HTTP upstream on a loopback port 0 that records every request.
/// `/slow/<ms>` answers after that many milliseconds; `/big/<n>` answers n bytes.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// TCP connections accepted so far.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Upstream {
    /// Starts on its own thread and runtime, so tests may create and drop it anywhere.
    pub fn start() -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let connections2 = connections.clone();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("upstream runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind upstream");
                addr_tx
                    .send(listener.local_addr().expect("addr"))
                    .expect("send addr");
                let accept = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        connections2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let seen = seen2.clone();
                        tokio::spawn(async move {
                            let svc = service_fn(move |req| handle(req, seen.clone()));
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stop_rx => {}
                }
            });
            runtime.shutdown_background();
        });
        let addr = addr_rx.recv().expect("upstream address");
        Upstream {
            addr,
            seen,
            connections,
            stop: Some(stop_tx),
        }
    }

    pub fn count(&self, method: &str, path: &str) -> usize {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| s.method == method && s.path == path)
            .count()
    }

    pub fn total(&self) -> usize {
        self.seen.lock().expect("lock").len()
    }

    pub fn last(&self) -> Option<Seen> {
        self.seen.lock().expect("lock").last().cloned()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| path.clone(), |pq| pq.as_str().to_string());
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    seen.lock().expect("lock").push(Seen {
        method: method.clone(),
        path: path.clone(),
        target,
        headers,
        body_len: body.len(),
    });
    if let Some(ms) = path.strip_prefix("/slow/").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let out = match path
        .strip_prefix("/big/")
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(n) => Bytes::from(vec![b'x'; n]),
        None => Bytes::from(format!(
            "{{\"ok\":true,\"method\":\"{method}\",\"path\":\"{path}\"}}"
        )),
    };
    let status = if method == "POST" && path.starts_with("/api/v1/agents") {
        201
    } else {
        200
    };
    let resp = Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .header("X-Request-Id", "upstream-set-this")
        .body(Full::new(out))
        .expect("response");
    Ok(resp)
}

/// A loopback address that refuses connections for as long as this value lives. Its port is
/// bound, so no other test's server can take it, but never listened on, so a connection to it
/// is reset at once. (A port bound and released could be handed to another test's server, or
/// to this test's own gateway, which would then answer instead of refusing.) The socket has no
/// `SO_REUSEADDR` on purpose: with it, another socket that sets it could bind the port too.
pub struct RefusingAddr {
    socket: tokio::net::TcpSocket,
}

impl RefusingAddr {
    /// Binds a free loopback port and holds it.
    pub fn new() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind");
        RefusingAddr { socket }
    }

    /// The address that refuses connections.
    pub fn addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("addr")
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

pub fn sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The Jettson plans with three keys (free a, free b, pro) plus `extra_server` lines.
pub fn jettson_config(port: u16, admin: u16, upstream: SocketAddr, extra_server: &str) -> String {
    jettson_config_with(
        port,
        admin,
        upstream,
        extra_server,
        5,
        &[
            ("key_free_a", FREE, "free"),
            ("key_free_b", FREE2, "free"),
            ("key_pro", PRO, "pro"),
        ],
    )
}

pub fn jettson_config_with(
    port: u16,
    admin: u16,
    upstream: SocketAddr,
    extra_server: &str,
    free_per_minute: u32,
    keys: &[(&str, &str, &str)],
) -> String {
    let watch = if extra_server.contains("watch") {
        ""
    } else {
        "watch = false"
    };
    let mut out = format!(
        r#"[server]
listen = "127.0.0.1:{port}"
upstream = "{upstream}"
{watch}
drain_timeout_s = 5
{extra_server}

[admin]
listen = "127.0.0.1:{admin}"

[[routes]]
name = "spawn"
method = "POST"
path = "/api/v1/agents"

[[plans]]
name = "free"
limits = [
  {{ name = "spawns_per_minute", route = "spawn", max = {free_per_minute}, window = "1m" }},
  {{ name = "spawns_per_hour", route = "spawn", max = 30, window = "1h" }},
]

[[plans]]
name = "pro"
limits = [
  {{ name = "spawns_per_minute", route = "spawn", max = 30, window = "1m" }},
  {{ name = "spawns_per_hour", route = "spawn", max = 500, window = "1h" }},
]
"#
    );
    for (id, token, plan) in keys {
        out.push_str(&format!(
            "\n[[keys]]\nid = \"{id}\"\nsha256 = \"{}\"\nplan = \"{plan}\"\n",
            sha256_hex(token)
        ));
    }
    out
}

/// The real gateway binary, run on a config file in a temporary directory.
pub struct Gateway {
    pub port: u16,
    pub admin: u16,
    pub dir: tempfile::TempDir,
    child: Child,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_termsgate")
}

impl Gateway {
    /// Starts the gateway with `config(port, admin)` and waits until `/readyz` says 200.
    pub fn start(config: impl Fn(u16, u16) -> String) -> Self {
        Self::start_with_env(config, &[])
    }

    pub fn start_with_env(config: impl Fn(u16, u16) -> String, env: &[(&str, &str)]) -> Self {
        // Ports come from binding port 0 and releasing it (Pingora cannot report the port it
        // bound), so another test may grab one first: the gateway then refuses to start with
        // "cannot listen on", and we try again on fresh ports.
        for _ in 0..5 {
            let mut gw = Self::spawn(&config, env);
            match gw.wait_ready() {
                Ok(()) => return gw,
                Err(why) if why.contains("cannot listen on") => continue,
                Err(why) => panic!("{why}"),
            }
        }
        panic!("no free ports for the gateway after 5 tries");
    }

    fn spawn(config: &impl Fn(u16, u16) -> String, env: &[(&str, &str)]) -> Self {
        let (port, admin) = (free_port(), free_port());
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("termsgate.toml"), config(port, admin))
            .expect("write config");
        let mut cmd = Command::new(binary());
        cmd.arg("run")
            .arg("-c")
            .arg(dir.path().join("termsgate.toml"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout.log")).expect("stdout"))
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).expect("stderr"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn termsgate");
        Gateway {
            port,
            admin,
            dir,
            child,
        }
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("gateway exited with {status}: {}", self.stderr()));
            }
            // The answer must come from this child: when a port it was given was taken by
            // another test's server first, the child fails to bind it and exits, and whatever
            // holds the port may answer meanwhile.
            let owns = |port| termsgate::own_listener::process_owns_port(self.child.id(), port);
            if blocking_status(&format!("http://127.0.0.1:{}/readyz", self.admin)) == Some(200)
                && owns(self.admin)
                && owns(self.port)
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("gateway not ready: {}", self.stderr()))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("termsgate.toml")
    }

    /// Replaces the config file atomically (write, then rename).
    pub fn write_config(&self, text: &str) {
        write_atomically(&self.config_path(), text);
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// The access log lines, parsed.
    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        self.stdout()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// Waits until the access log holds at least `n` lines (it is written off the request path).
    pub fn wait_log_lines(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let lines = self.log_lines();
            if lines.len() >= n || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn metrics(&self) -> String {
        blocking_get(&self.admin_url("/metrics"))
    }

    /// Waits for the process to exit (after a signal); returns whether it did in time.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write tmp");
    std::fs::rename(&tmp, path).expect("rename");
}

/// `termsgate_config_reloads_total{result}` of a gateway (0 when absent).
pub fn reloads(gw: &Gateway, result: &str) -> f64 {
    metric(
        &gw.metrics(),
        "termsgate_config_reloads_total",
        &[("result", result)],
    )
    .unwrap_or(0.0)
}

/// Polls `pred` for up to 5 s (reloads and log lines happen off the request path).
pub fn wait_for(mut pred: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The status of a GET with a bearer token.
pub async fn get_status(client: &::reqwest::Client, url: &str, token: &str) -> u16 {
    client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

/// Sum of the samples of `name` whose labels include all of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric_name, label_text) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric_name != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
        {
            *total.get_or_insert(0.0) += value.parse::<f64>().ok()?;
        }
    }
    total
}

/// A plain blocking GET for readiness and metrics (no runtime needed).
pub fn blocking_get(url: &str) -> String {
    raw_http::blocking_get_text(url)
}

pub fn blocking_status(url: &str) -> Option<u16> {
    raw_http::blocking_status(url)
}

/// Minimal blocking HTTP/1.0 GET over a raw socket, to avoid a second HTTP client.
mod raw_http {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    fn get(url: &str) -> Option<(u16, String)> {
        let rest = url.strip_prefix("http://")?;
        let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}")))?;
        let mut s = TcpStream::connect(host).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let status = out.split_whitespace().nth(1)?.parse().ok()?;
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((status, body))
    }

    pub fn blocking_get_text(url: &str) -> String {
        get(url).map(|(_, b)| b).unwrap_or_default()
    }

    pub fn blocking_status(url: &str) -> Option<u16> {
        get(url).map(|(s, _)| s)
    }
}

/// An async client that never reuses pooled connections across tests.
pub fn client() -> ::reqwest::Client {
    ::reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

pub async fn spawn(client: &::reqwest::Client, gw: &Gateway, token: &str) -> ::reqwest::Response {
    client
        .post(gw.url("/api/v1/agents"))
        .bearer_auth(token)
        .header("Content-Type", "application/json")
        .body(r#"{"task":"test"}"#)
        .send()
        .await
        .expect("spawn request")
}
