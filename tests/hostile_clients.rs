//! End-to-end over raw TCP sockets: oversized headers and bodies, the requests Pingora refuses
//! before the proxy phases, the header deadline (slowloris), the idle timeout, and `latency_ms`
//! counted from a request's first byte. (A malformed request and chunked bodies also have
//! raw-socket tests in `gateway.rs`.) Timeouts are set short in the config; each wait below is
//! bounded many times over the timeout it waits for, and nothing asserts how fast the gateway
//! is.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn gateway(up: &Upstream, extra: &str) -> Gateway {
    let addr = up.addr;
    let extra = extra.to_string();
    Gateway::start(move |p, a| jettson_config(p, a, addr, &extra))
}

fn connect(gw: &Gateway) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", gw.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    s
}

fn request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {PRO}\r\n\r\n")
}

/// Reads one response with a Content-Length body; returns its status code.
fn read_response(s: &mut TcpStream) -> u16 {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).expect("read response");
        assert!(n > 0, "connection closed before a whole response");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let head = &text[..end];
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .expect("content-length");
            if buf.len() >= end + 4 + length {
                return head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .expect("status code");
            }
        }
    }
}

/// Waits until the gateway closes `s` (end of stream or reset), failing after `bound`.
/// Returns any bytes the gateway sent first.
fn wait_closed(s: &mut TcpStream, bound: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(bound)).expect("read timeout");
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => out,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => out,
        Err(e) => panic!("connection still open after {bound:?}: {e}"),
    }
}

fn client_timeouts(gw: &Gateway, kind: &str) -> f64 {
    metric(
        &gw.metrics(),
        "termsgate_client_timeouts_total",
        &[("kind", kind)],
    )
    .unwrap_or(-1.0)
}

#[test]
fn a_client_dribbling_its_header_is_cut_off_while_others_are_served() {
    let up = Upstream::start();
    // 1 s leaves room for another client to be served while the slow one is still connected.
    let gw = gateway(&up, "header_timeout_ms = 1000");
    let mut slow = connect(&gw);
    slow.write_all(b"GET /api/v1/items HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();

    // One header line every 50 ms: each read is quick, which Pingora's per-read timeout
    // allows for ever; only a deadline on the whole header stops it.
    let bound = Instant::now() + Duration::from_secs(10);
    let mut served_meanwhile = false;
    let closed = loop {
        assert!(Instant::now() < bound, "slow client still connected");
        if slow.write_all(b"X-Slow: a\r\n").is_err() {
            break true;
        }
        let mut byte = [0u8; 1];
        match slow.read(&mut byte) {
            Ok(0) => break true,
            Ok(_) => panic!("the gateway answered an incomplete header"),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break true,
            Err(_) => {} // still open: the read timed out
        }
        if !served_meanwhile && blocking_status(&gw.url("/api/v1/items")) == Some(401) {
            // Served while the slow client is still connected (its read only times out).
            match slow.read(&mut byte) {
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    served_meanwhile = true;
                }
                other => panic!("slow client closed before another was served: {other:?}"),
            }
        }
    };
    assert!(closed);
    assert!(
        served_meanwhile,
        "others were served while the slow client held on"
    );
    assert_eq!(client_timeouts(&gw, "header"), 1.0);
    assert_eq!(up.total(), 0, "nothing of the slow request went upstream");
    assert!(
        !gw.stderr().contains("header_timeout_ms"),
        "the metric counts it; stderr gets no line per slow client: {}",
        gw.stderr()
    );
    assert_eq!(blocking_status(&gw.url("/api/v1/items")), Some(401));
}

#[test]
fn the_header_deadline_starts_at_each_requests_first_byte_not_at_the_connection() {
    let up = Upstream::start();
    let gw = gateway(&up, "header_timeout_ms = 300");
    let mut s = connect(&gw);
    s.write_all(request("/api/v1/items").as_bytes()).unwrap();
    assert_eq!(read_response(&mut s), 200);
    // Idle for longer than the header timeout: idleness is not a slow header.
    std::thread::sleep(Duration::from_millis(600));
    s.write_all(request("/api/v1/items").as_bytes()).unwrap();
    assert_eq!(read_response(&mut s), 200, "served on the same connection");
    assert_eq!(up.total(), 2);
    assert_eq!(client_timeouts(&gw, "header"), 0.0);
}

#[test]
fn a_stalled_header_after_an_idle_wait_gets_the_header_deadline_not_the_idle_one() {
    let up = Upstream::start();
    let gw = gateway(&up, "header_timeout_ms = 300\nidle_timeout_ms = 20000");
    let mut s = connect(&gw);
    s.write_all(request("/api/v1/items").as_bytes()).unwrap();
    assert_eq!(read_response(&mut s), 200);
    // Idle long enough for the gateway to wait on the idle deadline (20 s away)...
    std::thread::sleep(Duration::from_millis(200));
    // ...then half a header: the wait must switch to the earlier header deadline.
    s.write_all(b"GET /api/v1/items HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    let rest = wait_closed(&mut s, Duration::from_secs(10));
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed after {:?}: the idle deadline, not the header one",
        started.elapsed()
    );
    assert_eq!(client_timeouts(&gw, "header"), 1.0);
    assert_eq!(client_timeouts(&gw, "idle"), 0.0);
}

#[test]
fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let up = Upstream::start();
    let gw = gateway(&up, "idle_timeout_ms = 1000");

    // Kept alive while it is used within the timeout: four requests 400 ms apart span longer
    // than the timeout, so the idle clock must restart after each response.
    let mut s = connect(&gw);
    for _ in 0..4 {
        s.write_all(request("/api/v1/items").as_bytes()).unwrap();
        assert_eq!(read_response(&mut s), 200);
        std::thread::sleep(Duration::from_millis(400));
    }
    // Then closed, quietly, once idle.
    let rest = wait_closed(&mut s, Duration::from_secs(15));
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));

    // A connection that never sends anything is closed the same way.
    let mut silent = connect(&gw);
    let rest = wait_closed(&mut silent, Duration::from_secs(15));
    assert!(rest.is_empty());

    assert_eq!(client_timeouts(&gw, "idle"), 2.0);
    assert_eq!(up.total(), 4);
    assert_eq!(blocking_status(&gw.url("/api/v1/items")), Some(401));
}

#[test]
fn latency_ms_counts_from_the_first_byte_of_the_request() {
    let up = Upstream::start();
    let gw = gateway(&up, "");
    let mut s = connect(&gw);
    let req = request("/api/v1/items");
    let (first, rest) = req.split_at(10);
    s.write_all(first.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    s.write_all(rest.as_bytes()).unwrap();
    assert_eq!(read_response(&mut s), 200);

    let lines = gw.wait_log_lines(1);
    assert_eq!(lines.len(), 1);
    let latency = lines[0]["latency_ms"].as_f64().expect("latency_ms");
    // Counted from the header's end it would be a few ms. The gateway sees the first bytes a
    // little after they were sent (scheduling), so the bound sits well below the 400 ms gap.
    assert!(
        latency >= 300.0,
        "latency_ms {latency} leaves out the 400 ms the header took to arrive"
    );
}

#[test]
fn oversized_headers_get_431_over_a_raw_socket_and_others_are_served() {
    let up = Upstream::start();
    let gw = gateway(&up, "");
    let mut s = connect(&gw);
    let big = "a".repeat(40 * 1024);
    let req = format!(
        "GET /api/v1/items HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {PRO}\r\nX-Big: {big}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    assert_eq!(read_response(&mut s), 431);
    assert_eq!(up.total(), 0, "nothing went upstream");
    assert_eq!(blocking_status(&gw.url("/api/v1/items")), Some(401));
}

#[test]
fn a_declared_body_over_max_body_bytes_gets_413_before_it_is_sent() {
    let up = Upstream::start();
    let gw = gateway(&up, "max_body_bytes = 1000");
    let mut s = connect(&gw);
    // Only the header goes out: the answer must not wait for the 2 MB the header announces.
    let req = format!(
        "POST /api/v1/agents HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {PRO}\r\nContent-Length: 2000000\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    assert_eq!(read_response(&mut s), 413);
    assert_eq!(up.total(), 0, "nothing went upstream");
    assert_eq!(blocking_status(&gw.url("/api/v1/items")), Some(401));
}

#[test]
fn sigterm_closes_idle_keep_alive_connections_and_the_gateway_exits() {
    let up = Upstream::start();
    let mut gw = gateway(&up, "");
    let mut s = connect(&gw);
    s.write_all(request("/api/v1/items").as_bytes()).unwrap();
    assert_eq!(read_response(&mut s), 200);
    // The connection now waits idle for its next request (idle timeout: 60 s).
    gw.signal("TERM");
    let rest = wait_closed(&mut s, Duration::from_secs(10));
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    let status = gw
        .wait_exit(Duration::from_secs(15))
        .expect("exited after SIGTERM");
    assert!(status.success(), "{status}");
}

/// A request Pingora refuses, and what the gateway must answer and log for it.
struct Refused {
    request: Vec<u8>,
    status: u16,
    code: &'static str,
    /// The `method` the log line holds (null when the request line did not parse).
    method: Option<&'static str>,
    /// The `path` the log line holds: no query string (null when the request line did not parse).
    path: Option<&'static str>,
    /// A valid `X-Request-Id` the request carries, which the answer must keep.
    client_id: Option<&'static str>,
}

/// What Pingora refuses before any proxy phase runs: a malformed header, one over Pingora's own
/// limits (1 MiB, 256 fields), `CONNECT`, and framing Pingora rejects after parsing (HTTP/1.0
/// with `Transfer-Encoding`, two different `Content-Length`s). Each gets the contract's JSON
/// envelope with an `X-Request-Id`, one access log line and a count in the metrics, and its
/// connection is closed.
#[test]
fn requests_pingora_refuses_get_the_envelope_a_request_id_a_log_line_and_a_metric() {
    let up = Upstream::start();
    let gw = gateway(&up, "");
    let many_fields: String = (0..300).map(|i| format!("X-F{i}: v\r\n")).collect();
    // Exactly 1 MiB and no end of header: Pingora refuses it once it has read 1 MiB, that is
    // all of it, so the gateway closes without unread bytes (which would reset the connection).
    let mut a_mib = b"GET /api/v1/items HTTP/1.1\r\nX-Big: ".to_vec();
    a_mib.resize(1024 * 1024, b'a');
    let cases = [
        Refused {
            request: b"GET /x HTTP/1.1\r\nHost: x\r\nBad Header Without Colon\r\n\r\n".to_vec(),
            status: 400,
            code: "invalid_request",
            method: None,
            path: None,
            client_id: None,
        },
        Refused {
            request: b"POST /api/v1/agents HTTP/1.0\r\nTransfer-Encoding: chunked\r\nX-Request-Id: early-te\r\n\r\n"
                .to_vec(),
            status: 400,
            code: "invalid_request",
            method: Some("POST"),
            path: Some("/api/v1/agents"),
            client_id: Some("early-te"),
        },
        Refused {
            // With a key and a query string, neither of which may reach the log.
            request: format!(
                "PUT /x?token=s3cret HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {PRO}\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
            )
            .into_bytes(),
            status: 400,
            code: "invalid_request",
            method: Some("PUT"),
            path: Some("/x"),
            client_id: None,
        },
        Refused {
            request: b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nX-Request-Id: early-connect\r\n\r\n"
                .to_vec(),
            status: 405,
            code: "method_not_allowed",
            method: Some("CONNECT"),
            path: Some("/"),
            client_id: Some("early-connect"),
        },
        Refused {
            request: format!("GET /x HTTP/1.1\r\nHost: x\r\n{many_fields}\r\n").into_bytes(),
            status: 431,
            code: "payload_too_large",
            method: None,
            path: None,
            client_id: None,
        },
        Refused {
            request: a_mib,
            status: 431,
            code: "payload_too_large",
            method: None,
            path: None,
            client_id: None,
        },
    ];
    let mut ids = Vec::new();
    for Refused {
        request,
        status,
        code,
        method,
        path,
        client_id,
    } in &cases
    {
        let mut s = connect(&gw);
        s.write_all(request).unwrap();
        let raw = wait_closed(&mut s, Duration::from_secs(10));
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").expect("a whole response");
        assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
        };
        assert_eq!(header("content-type").as_deref(), Some("application/json"));
        let body: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
        assert_eq!(body["error"]["code"], *code, "{head}");
        let id = header("x-request-id").expect("X-Request-Id");
        match client_id {
            Some(kept) => assert_eq!(id, *kept, "a valid client id is kept"),
            None => assert_eq!(id.len(), 32, "a generated id: {id}"),
        }
        ids.push((id, *status, *method, *path));
    }

    let lines = gw.wait_log_lines(cases.len());
    assert_eq!(lines.len(), cases.len(), "{lines:?}");
    for (id, status, method, path) in &ids {
        let line = lines
            .iter()
            .find(|l| l["request_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no log line for {id}: {lines:?}"));
        assert_eq!(line["status"], *status);
        assert_eq!(line["method"].as_str(), *method, "{line}");
        assert_eq!(line["path"].as_str(), *path, "{line}");
        assert_eq!(line["client_ip"], "127.0.0.1");
        assert!(line["key_id"].is_null() && line["upstream_ms"].is_null());
        assert!(line["latency_ms"].is_number(), "{line}");
    }
    let stdout = gw.stdout();
    assert!(
        !stdout.contains("s3cret") && !stdout.contains(PRO),
        "{stdout}"
    );
    let metrics = gw.metrics();
    let count = |status: &str| {
        metric(
            &metrics,
            "termsgate_requests_total",
            &[("plan", "none"), ("route", "other"), ("status", status)],
        )
    };
    assert_eq!(
        (count("400"), count("405"), count("431")),
        (Some(3.0), Some(1.0), Some(2.0))
    );
    assert_eq!(up.total(), 0, "nothing went upstream");
    assert_eq!(blocking_status(&gw.url("/api/v1/items")), Some(401));
}
