//! The access log: one JSON object per request on standard output, written off the request path.
//!
//! Each worker thread appends its finished lines to a buffer of its own; one writer thread
//! takes every buffer every 5 ms, writes it to stdout and flushes. A request allocates nothing
//! for its line and touches no memory another thread writes, except that the writer takes its
//! thread's buffer now and then. If stdout is slower than the traffic and a thread's buffer
//! fills, new lines are dropped and counted in `termsgate_access_log_dropped_total`: a stuck
//! log pipeline must never stall the gateway.
//!
//! Lines from one thread (so from one connection) keep their order. Lines that different
//! threads wrote within the same tick are grouped by thread; each carries its own `ts`.

use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use prometheus::IntCounter;

use crate::sync::{lock, PerThread};

/// Lines one worker thread's buffer holds before new ones are dropped (so the log holds at most
/// this many lines per worker thread while its output is stuck).
pub const BUFFER_LINES: usize = 65_536;

/// How often the writer thread drains the buffers.
const WRITE_TICK: Duration = Duration::from_millis(5);

/// Room a thread's buffer starts with: a tick's worth of lines at a busy rate.
const INITIAL_BUFFER_BYTES: usize = 64 * 1024;

/// A taken buffer larger than this is shrunk back to `INITIAL_BUFFER_BYTES` once written.
const SHRINK_ABOVE_BYTES: usize = 16 * INITIAL_BUFFER_BYTES;

/// One access log line. The fields are exactly the contract's; there is deliberately no field
/// that could hold a token, a header, a query string or a body.
#[derive(Debug)]
pub struct AccessRecord<'a> {
    /// When the request ended; written as RFC 3339, UTC, milliseconds.
    pub ts: SystemTime,
    /// The request's id.
    pub request_id: &'a str,
    /// The client address (see `client_ip`).
    pub client_ip: Option<IpAddr>,
    /// Request method; `None` when the request line could not be parsed.
    pub method: Option<&'a str>,
    /// Request path, without the query string; `None` when the request line could not be parsed.
    pub path: Option<&'a str>,
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

/// Lines a thread has written and the writer has not taken yet.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    lines: usize,
}

/// Every thread's batch, and whether the writer holds taken lines it has not flushed.
struct Buffers {
    per_thread: PerThread<Mutex<Batch>>,
    capacity_lines: usize,
    writing: AtomicBool,
}

impl Buffers {
    fn is_empty(&self) -> bool {
        self.per_thread.iter().all(|batch| lock(batch).lines == 0)
    }
}

/// The handle requests log through.
#[derive(Clone)]
pub struct AccessLog {
    buffers: Arc<Buffers>,
    /// The writer thread exits, after a last write, once every handle is gone.
    _alive: Arc<()>,
    dropped: IntCounter,
}

impl AccessLog {
    /// Starts the writer thread on standard output.
    pub fn stdout(dropped: IntCounter) -> Self {
        Self::start(Box::new(std::io::stdout()), BUFFER_LINES, dropped)
    }

    /// Starts the writer thread on any sink (tests use a slow one); each thread buffers at
    /// most `capacity_lines` lines.
    pub fn start(sink: Box<dyn Write + Send>, capacity_lines: usize, dropped: IntCounter) -> Self {
        let buffers = Arc::new(Buffers {
            per_thread: PerThread::new(),
            capacity_lines,
            writing: AtomicBool::new(false),
        });
        let alive = Arc::new(());
        let (writer_buffers, writer_alive) = (buffers.clone(), Arc::downgrade(&alive));
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(&writer_buffers, writer_alive, sink))
            .expect("spawning the access log thread at start-up");
        AccessLog {
            buffers,
            _alive: alive,
            dropped,
        }
    }

    /// Appends one line to this thread's buffer; drops it (and counts the drop) when full.
    pub fn log(&self, record: &AccessRecord<'_>) {
        let batch = self.buffers.per_thread.get_or(|| {
            Mutex::new(Batch {
                bytes: Vec::with_capacity(INITIAL_BUFFER_BYTES),
                lines: 0,
            })
        });
        let mut batch = lock(batch);
        if batch.lines >= self.buffers.capacity_lines {
            drop(batch);
            self.dropped.inc();
            return;
        }
        record.write_json(&mut batch.bytes);
        batch.bytes.push(b'\n');
        batch.lines += 1;
    }

    /// Waits, at most `timeout`, until every line logged so far is written (used before
    /// exiting).
    pub fn drain(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.is_drained() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether every line logged so far is written and flushed.
    fn is_drained(&self) -> bool {
        // Buffers first, then the flag: the writer raises the flag before it takes a buffer
        // and lowers it after the flush, so lines it holds are never missed in between.
        self.buffers.is_empty() && !self.buffers.writing.load(Ordering::SeqCst)
    }
}

fn write_loop(buffers: &Buffers, alive: Weak<()>, sink: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, sink);
    let mut taken = Batch {
        bytes: Vec::with_capacity(INITIAL_BUFFER_BYTES),
        lines: 0,
    };
    loop {
        // Checked before the last write, so lines logged before the last handle went are in it.
        let last = alive.strong_count() == 0;
        buffers.writing.store(true, Ordering::SeqCst);
        let mut wrote = false;
        for batch in buffers.per_thread.iter() {
            std::mem::swap(&mut *lock(batch), &mut taken);
            if taken.lines > 0 {
                let _ = out.write_all(&taken.bytes);
                wrote = true;
            }
            // The emptied batch keeps its room and goes to the next thread's turn; one that
            // grew far past it (the output was stuck) gives the extra memory back.
            taken.bytes.clear();
            if taken.bytes.capacity() > SHRINK_ABOVE_BYTES {
                taken.bytes.shrink_to(INITIAL_BUFFER_BYTES);
            }
            taken.lines = 0;
        }
        if wrote {
            let _ = out.flush();
        }
        buffers.writing.store(false, Ordering::SeqCst);
        if last {
            return;
        }
        // Polling instead of waking the writer per line: a parked writer would have to be woken
        // by every request (a futex call and a context switch each), which cost more than the
        // rest of the log line under load. A line waits at most one tick.
        std::thread::sleep(WRITE_TICK);
    }
}

/// The `ts` field: now, RFC 3339 in UTC with milliseconds.
pub fn timestamp_now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Appends `ip` as a JSON string (no escaping needed). IPv4 digit by digit: `Display` for an
/// address goes through `fmt` four times, a tenth of the line's cost.
fn json_ip(out: &mut Vec<u8>, ip: IpAddr) {
    out.push(b'"');
    match ip {
        IpAddr::V4(v4) => {
            let mut num = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(num.format(octet).as_bytes());
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
    out.push(b'"');
}

impl AccessRecord<'_> {
    /// Appends the record as one JSON object, fields in the contract's order. Written by hand
    /// rather than through serde: this runs once per request, and every string is escaped.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"ts\":\"");
        write_timestamp(out, self.ts);
        out.extend_from_slice(b"\",\"request_id\":");
        json_str(out, self.request_id);
        out.extend_from_slice(b",\"client_ip\":");
        match self.client_ip {
            // An address has no characters that need escaping.
            Some(ip) => json_ip(out, ip),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"method\":");
        json_opt_str(out, self.method);
        out.extend_from_slice(b",\"path\":");
        json_opt_str(out, self.path);
        out.extend_from_slice(b",\"status\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.status).as_bytes());
        out.extend_from_slice(b",\"latency_ms\":");
        json_ms(out, Some(self.latency_ms));
        out.extend_from_slice(b",\"key_id\":");
        json_opt_str(out, self.key_id);
        out.extend_from_slice(b",\"plan\":");
        json_opt_str(out, self.plan);
        out.extend_from_slice(b",\"limited\":");
        json_opt_str(out, self.limited);
        out.extend_from_slice(b",\"upstream_ms\":");
        json_ms(out, self.upstream_ms);
        out.push(b'}');
    }
}

fn json_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string: quotes, backslashes and control characters escaped; the rest is UTF-8 as is.
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let needs_escape = s.bytes().fold(false, |acc, b| {
        acc | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if !needs_escape {
        out.extend_from_slice(s.as_bytes());
    } else {
        for b in s.bytes() {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                b if b < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", b);
                }
                b => out.push(b),
            }
        }
    }
    out.push(b'"');
}

/// Milliseconds with three decimals at most (`3.525`, `0.92`, `2.0`); `null` when absent or
/// not finite.
fn json_ms(out: &mut Vec<u8>, ms: Option<f64>) {
    let micros = match ms {
        Some(ms) if ms.is_finite() && ms >= 0.0 => (ms * 1000.0).round() as u64,
        _ => {
            out.extend_from_slice(b"null");
            return;
        }
    };
    out.extend_from_slice(itoa::Buffer::new().format(micros / 1000).as_bytes());
    out.push(b'.');
    let frac = micros % 1000;
    let digits = [
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ];
    let keep = digits.iter().rposition(|&d| d != b'0').map_or(1, |i| i + 1);
    out.extend_from_slice(&digits[..keep]);
}

/// Writes `t` as `2026-11-25T15:00:20.436Z`. The part up to the second is formatted once per
/// second and thread, then reused.
fn write_timestamp(out: &mut Vec<u8>, t: SystemTime) {
    thread_local! {
        static SECOND: std::cell::RefCell<(u64, String)> = const {
            std::cell::RefCell::new((u64::MAX, String::new()))
        };
    }
    let since_epoch = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let millis = since_epoch.subsec_millis();
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            // "2026-11-25T15:00:20Z" without its "Z".
            let mut text = humantime::format_rfc3339_seconds(whole).to_string();
            text.pop();
            *cached = (secs, text);
        }
        out.extend_from_slice(cached.1.as_bytes());
    });
    // Three digits by hand: `write!` with a width costs more than the rest of the timestamp.
    let digit = |n: u32| b'0' + (n % 10) as u8;
    out.extend_from_slice(&[
        b'.',
        digit(millis / 100),
        digit(millis / 10),
        digit(millis),
        b'Z',
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;

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
            ts: SystemTime::now(),
            request_id: "r1",
            client_ip: None,
            method: Some("GET"),
            path: Some("/x"),
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
        assert!(!log.is_drained(), "five lines are still to be written");
        drop(held);
        log.drain(Duration::from_secs(5));
        assert!(
            log.is_drained(),
            "every kept line written after the sink came back"
        );
    }

    /// A sink the test can read while the writer thread owns it; `closed` turns true when a
    /// copy of it is dropped (the writer thread's, when that thread ends).
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>, Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Shared {
        fn drop(&mut self) {
            self.1.store(true, Ordering::SeqCst);
        }
    }
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("sink").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_thread_s_lines_are_written_whole_and_in_their_order() {
        let sink = Shared::default();
        let dropped = IntCounter::new("d", "d").expect("counter");
        let log = AccessLog::start(Box::new(sink.clone()), 10_000, dropped.clone());
        let ids: Vec<Vec<String>> = (0..4)
            .map(|t| (0..500).map(|i| format!("t{t}-{i}")).collect())
            .collect();
        std::thread::scope(|scope| {
            for thread_ids in &ids {
                let log = log.clone();
                scope.spawn(move || {
                    for id in thread_ids {
                        log.log(&AccessRecord {
                            request_id: id,
                            ..record()
                        });
                    }
                });
            }
        });
        log.drain(Duration::from_secs(5));
        assert!(log.is_drained());
        let text = String::from_utf8(sink.0.lock().expect("sink").clone()).expect("utf8");
        let written: Vec<String> = text
            .lines()
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).expect("one JSON per line");
                v["request_id"].as_str().expect("id").to_owned()
            })
            .collect();
        assert_eq!(written.len(), 2_000);
        assert_eq!(dropped.get(), 0);
        for thread_ids in &ids {
            let prefix = thread_ids[0].split('-').next().expect("prefix").to_owned() + "-";
            let order: Vec<&String> = written
                .iter()
                .filter(|id| id.starts_with(&prefix))
                .collect();
            assert_eq!(order, thread_ids.iter().collect::<Vec<_>>());
        }
    }

    #[test]
    fn the_writer_writes_what_is_left_and_ends_once_the_last_handle_goes() {
        let sink = Shared::default();
        let log = AccessLog::start(
            Box::new(sink.clone()),
            10,
            IntCounter::new("d", "d").expect("counter"),
        );
        let buffers = log.buffers.clone();
        log.log(&record());
        drop(log);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !sink.1.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(sink.1.load(Ordering::SeqCst), "the writer thread ended");
        let lines = sink
            .0
            .lock()
            .expect("sink")
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        assert_eq!(lines, 1, "the line logged before the end was written");
        assert!(buffers.is_empty());
    }

    #[test]
    fn a_line_is_one_json_object_with_the_contract_fields() {
        let mut line = Vec::new();
        record().write_json(&mut line);
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

    #[test]
    fn every_value_is_written_as_valid_json() {
        let nasty = "/a\"b\\c\nd\te\u{1}f\u{7f}é✓";
        let rec = AccessRecord {
            ts: SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_082_820_436),
            request_id: "id-1",
            client_ip: Some("2001:db8::1".parse().expect("ip")),
            method: Some("GET"),
            path: Some(nasty),
            status: 429,
            latency_ms: 3.5254,
            key_id: Some("k\"1"),
            plan: Some("free"),
            limited: None,
            upstream_ms: Some(0.92),
        };
        let mut line = Vec::new();
        rec.write_json(&mut line);
        let v: serde_json::Value = serde_json::from_slice(&line)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&line)));
        assert_eq!(v["ts"], "2025-11-25T15:00:20.436Z");
        assert_eq!(v["request_id"], "id-1");
        assert_eq!(v["client_ip"], "2001:db8::1");
        assert_eq!(v["path"], nasty);
        assert_eq!(v["status"], 429);
        assert_eq!(v["latency_ms"], 3.525);
        assert_eq!(v["key_id"], "k\"1");
        assert_eq!(v["plan"], "free");
        assert!(v["limited"].is_null());
        assert_eq!(v["upstream_ms"], 0.92);
    }

    #[test]
    fn milliseconds_keep_three_decimals_at_most() {
        for (ms, text) in [
            (Some(2.0), "2.0"),
            (Some(0.0004), "0.0"),
            (Some(0.0005), "0.001"),
            (Some(12.3456), "12.346"),
            (Some(0.5), "0.5"),
            (Some(f64::NAN), "null"),
            (None, "null"),
        ] {
            let mut out = Vec::new();
            json_ms(&mut out, ms);
            assert_eq!(String::from_utf8(out).expect("utf8"), text, "{ms:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_path_round_trips_through_json(path in "\\PC*|[\\x00-\\x7f]*") {
            let mut out = Vec::new();
            json_str(&mut out, &path);
            let back: String = serde_json::from_slice(&out).expect("valid JSON string");
            proptest::prop_assert_eq!(back, path);
        }

        #[test]
        fn any_timestamp_is_rfc3339_with_milliseconds(ms in 0u64..4_102_444_800_000) {
            let t = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
            let mut out = Vec::new();
            write_timestamp(&mut out, t);
            let want = humantime::format_rfc3339_millis(t).to_string();
            proptest::prop_assert_eq!(String::from_utf8(out).expect("utf8"), want);
        }

        #[test]
        fn any_address_is_written_as_display_writes_it(bits: u128, v4: bool) {
            let ip = if v4 {
                IpAddr::from(std::net::Ipv4Addr::from(bits as u32))
            } else {
                IpAddr::from(std::net::Ipv6Addr::from(bits))
            };
            let mut out = Vec::new();
            json_ip(&mut out, ip);
            proptest::prop_assert_eq!(String::from_utf8(out).expect("utf8"), format!("\"{ip}\""));
        }
    }
}
