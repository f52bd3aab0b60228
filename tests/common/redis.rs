//! A throwaway `redis-server` for tests: on a free loopback port, without persistence
//! (`--save ''`, `--appendonly no`), killed on drop. Std-only, so the crate's unit tests can
//! include it too (`#[path]` in `src/limiter/redis/tests.rs`).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// The including module provides `process_owns_port` (`termsgate::own_listener`'s), since this
// file is compiled both inside the crate's unit tests and in the integration tests.

/// The server binary: `$REDIS_SERVER`, else `redis-server` on the `PATH`.
fn binary() -> String {
    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

/// True when a `redis-server` binary can be run (for benches that skip without one).
pub fn available() -> bool {
    Command::new(binary())
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A running `redis-server` owned by a test.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts on a free port and waits until it answers PING. The port is bound and released
    /// to find it, so another test may take it first; the server then exits, and this tries a
    /// fresh port.
    pub fn start() -> Self {
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free loopback port")
                .port();
            let mut server = RedisServer { port, child: None };
            match server.launch() {
                Ok(()) => return server,
                Err(exited) => eprintln!("redis-server on port {port}: {exited}; trying another"),
            }
        }
        panic!("redis-server did not start on any of 5 ports");
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: a crash, not a shutdown) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (after [`kill`](Self::kill)), empty.
    pub fn restart(&mut self) {
        if let Err(exited) = self.launch() {
            panic!("redis-server on port {}: {exited}", self.port);
        }
    }

    /// Runs the server on `self.port` and waits until it listens there and answers PING; an
    /// error when it exits first (its port was taken).
    fn launch(&mut self) -> Result<(), String> {
        self.kill();
        let child = Command::new(binary())
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} ({e}); install it: apt-get install -y redis-server",
                    binary()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                return Err(format!("exited with {status}"));
            }
            // The PONG must come from this child: another test's server may hold the port
            // for the moment the child takes to fail binding it.
            let owns = self
                .child
                .as_ref()
                .is_some_and(|c| super::process_owns_port(c.id(), self.port));
            if owns && self.ping() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }

    /// True when the server answers PING.
    pub fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
