//! The access log: one JSON object per request on standard output, written off the request path.
//!
//! Requests hand a finished line to a bounded channel; one writer thread drains it into a
//! buffered stdout every 5 ms and flushes after each batch. If stdout is slower than the
//! traffic and the buffer fills, new lines are dropped and counted in
//! `termsgate_access_log_dropped_total`: a stuck log pipeline must never stall the gateway.

use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use prometheus::IntCounter;
use serde::Serialize;

/// Lines buffered before new ones are dropped.
pub const BUFFER_LINES: usize = 65_536;

/// How often the writer thread drains the buffer.
const WRITE_TICK: Duration = Duration::from_millis(5);

/// One access log line. The fields are exactly the contract's; there is deliberately no field
/// that could hold a token, a header, a query string or a body.
#[derive(Debug, Serialize)]
pub struct AccessRecord<'a> {
    /// RFC 3339, UTC, milliseconds.
    pub ts: String,
    /// The request's id.
    pub request_id: &'a str,
    /// The client address (see `client_ip`).
    pub client_ip: Option<IpAddr>,
    /// Request method.
    pub method: &'a str,
    /// Request path, without the query string.
    pub path: &'a str,
    /// Response status (499 when the client went away before an answer).
    pub status: u16,
    /// First request byte to last response byte.
    pub latency_ms: f64,
    /// The authenticated key's id.
    pub key_id: Option<&'a str>,
    /// The key's plan.
    pub plan: Option<&'a str>,
    /// The limit that refused the request.
    pub limited: Option<&'a str>,
    /// Time to the upstream's response header, when proxied.
    pub upstream_ms: Option<f64>,
}

/// The handle requests log through.
#[derive(Clone)]
pub struct AccessLog {
    tx: SyncSender<Vec<u8>>,
    pending: Arc<AtomicUsize>,
    dropped: IntCounter,
}

impl AccessLog {
    /// Starts the writer thread on standard output.
    pub fn stdout(dropped: IntCounter) -> Self {
        Self::start(Box::new(std::io::stdout()), BUFFER_LINES, dropped)
    }

    /// Starts the writer thread on any sink (tests use a slow one).
    pub fn start(sink: Box<dyn Write + Send>, capacity: usize, dropped: IntCounter) -> Self {
        let (tx, rx) = sync_channel(capacity);
        let pending = Arc::new(AtomicUsize::new(0));
        let counter = pending.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(rx, sink, counter))
            .expect("spawning the access log thread at start-up");
        AccessLog {
            tx,
            pending,
            dropped,
        }
    }

    /// Queues one line; drops it (and counts the drop) when the buffer is full.
    pub fn log(&self, record: &AccessRecord<'_>) {
        let mut line = Vec::with_capacity(256);
        if serde_json::to_writer(&mut line, record).is_err() {
            return;
        }
        line.push(b'\n');
        self.pending.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.pending.fetch_sub(1, Ordering::Relaxed);
                self.dropped.inc();
            }
        }
    }

    /// Waits, at most `timeout`, until every queued line is written (used before exiting).
    pub fn drain(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.pending.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn write_loop(rx: Receiver<Vec<u8>>, sink: Box<dyn Write + Send>, pending: Arc<AtomicUsize>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, sink);
    loop {
        let mut written = 0;
        loop {
            match rx.try_recv() {
                Ok(line) => {
                    let _ = out.write_all(&line);
                    written += 1;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
        }
        if written > 0 {
            let _ = out.flush();
            pending.fetch_sub(written, Ordering::Release);
        }
        // Polling instead of blocking in `recv`: a parked writer would have to be woken by
        // every request (a futex call and a context switch each), which cost more than the
        // rest of the log line under load. A line waits at most one tick.
        std::thread::sleep(WRITE_TICK);
    }
}

/// The `ts` field: now, RFC 3339 in UTC with milliseconds.
pub fn timestamp_now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A sink that blocks until released, standing for a stuck log pipeline. `entered` turns
    /// true once the writer thread is stuck in it.
    struct Stuck {
        gate: Arc<Mutex<()>>,
        entered: Arc<std::sync::atomic::AtomicBool>,
    }
    impl Stuck {
        fn block(&self) {
            self.entered.store(true, Ordering::SeqCst);
            let _held = self.gate.lock();
        }
    }
    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.block();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.block();
            Ok(())
        }
    }

    fn record() -> AccessRecord<'static> {
        AccessRecord {
            ts: timestamp_now(),
            request_id: "r1",
            client_ip: None,
            method: "GET",
            path: "/x",
            status: 200,
            latency_ms: 1.5,
            key_id: None,
            plan: None,
            limited: None,
            upstream_ms: None,
        }
    }

    #[test]
    fn a_stuck_sink_drops_lines_instead_of_blocking() {
        let gate = Arc::new(Mutex::new(()));
        let entered = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let held = gate.lock().expect("lock");
        let dropped = IntCounter::new("d", "d").expect("counter");
        let sink = Stuck {
            gate: gate.clone(),
            entered: entered.clone(),
        };
        let log = AccessLog::start(Box::new(sink), 4, dropped.clone());
        log.log(&record());
        while !entered.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        // The writer is stuck: four lines fit in the buffer, the other 96 are dropped, and
        // `log` returned every time instead of waiting.
        for _ in 0..100 {
            log.log(&record());
        }
        assert_eq!(dropped.get(), 96);
        drop(held);
        log.drain(Duration::from_secs(5));
        assert_eq!(log.pending.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_line_is_one_json_object_with_the_contract_fields() {
        let mut line = Vec::new();
        serde_json::to_writer(&mut line, &record()).expect("json");
        let v: serde_json::Value = serde_json::from_slice(&line).expect("parse");
        let fields: Vec<&str> = v
            .as_object()
            .expect("object")
            .keys()
            .map(|k| k.as_str())
            .collect();
        let mut want = vec![
            "ts",
            "request_id",
            "client_ip",
            "method",
            "path",
            "status",
            "latency_ms",
            "key_id",
            "plan",
            "limited",
            "upstream_ms",
        ];
        want.sort();
        let mut got = fields.clone();
        got.sort();
        assert_eq!(got, want);
        assert!(v["ts"].as_str().expect("ts").ends_with('Z'));
    }
}
