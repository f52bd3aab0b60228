//! End-to-end: the real gateway between a real client and a real upstream, on loopback.
//! Covers contract section 3 rows that do not involve limits, identity and request ids.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::header::{HeaderMap, HeaderValue};

fn gateway(up: &Upstream, extra: &str) -> Gateway {
    let addr = up.addr;
    let extra = extra.to_string();
    Gateway::start(move |p, a| jettson_config(p, a, addr, &extra))
}

async fn assert_invalid_key(resp: reqwest::Response) {
    assert_eq!(resp.status(), 401);
    let h = resp.headers().clone();
    assert_eq!(h["www-authenticate"], "Bearer");
    assert!(h["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    assert!(h.contains_key("x-request-id"));
    let body: serde_json::Value = resp.json().await.expect("json body");
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert!(body["error"]["message"].is_string());
}

#[tokio::test]
async fn every_kind_of_bad_authorization_gets_401_and_nothing_goes_upstream() {
    let up = Upstream::start();
    let gw = gateway(&up, "");
    let c = client();
    let url = gw.url("/api/v1/agents");
    assert_invalid_key(c.get(&url).send().await.unwrap()).await;
    for value in [
        &b"Basic dXNlcjpwYXNz"[..],
        b"Bearer ",
        b"Bearer",
        b"Bearer tg_not_a_real_key",
        b"Bearer \xff\xfe\xfd",
        b"Token abc",
    ] {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_bytes(value).unwrap());
        assert_invalid_key(c.get(&url).headers(h).send().await.unwrap()).await;
    }
    let mut two = HeaderMap::new();
    two.append(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {FREE}")).unwrap(),
    );
    two.append(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {PRO}")).unwrap(),
    );
    assert_invalid_key(c.get(&url).headers(two).send().await.unwrap()).await;
    assert_eq!(up.total(), 0, "a refused request reached the upstream");
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let up = Upstream::start();
    let gw = gateway(&up, "");
    let c = client();
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let r = c
            .get(gw.url("/api/v1/agents"))
            .header("Authorization", format!("{scheme} {FREE}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{scheme}");
    }
    assert_eq!(up.total(), 3);
}

#[tokio::test]
async fn identity_headers_are_set_and_client_copies_removed() {
    let up = Upstream::start();
    let gw = gateway(&up, "");
    let r = client()
        .get(gw.url("/api/v1/agents/ag_1"))
        .bearer_auth(PRO)
        .header("X-Api-Key-Id", "someone_else")
        .header("x-api-key-id", "a_second_copy")
        .header("X-Api-Plan", "scale")
        .header("X-Request-Id", "bad id with spaces")
        // Lookalikes, for upstreams that read `_` as `-` (CGI, WSGI, Rack).
        .header("X_Api_Plan", "scale")
        .header("x_api-key_id", "someone_else")
        .header("X_Request_Id", "chosen-by-client")
        .header("X_Api_Plans", "not a lookalike")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last().expect("upstream saw the request");
    assert_eq!(seen.header("x-api-key-id"), vec!["key_pro"]);
    assert_eq!(seen.header("x-api-plan"), vec!["pro"]);
    for lookalike in ["x_api_plan", "x_api-key_id", "x_request_id"] {
        assert!(
            seen.header(lookalike).is_empty(),
            "{lookalike} reached the upstream"
        );
    }
    assert_eq!(seen.header("x_api_plans"), vec!["not a lookalike"]);
    assert_eq!(seen.header("authorization"), vec![format!("Bearer {PRO}")]);
    let ids = seen.header("x-request-id");
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(
        ids[0].len(),
        32,
        "the invalid client id was replaced: {ids:?}"
    );
}

#[test]
fn a_client_cannot_nominate_the_identity_headers_as_hop_by_hop() {
    // Pingora drops from the request it forwards every header the client names in
    // `Connection`; naming ours must not keep them from the upstream.
    let up = Upstream::start();
    let gw = gateway(&up, "");
    let text = raw_exchange(
        gw.port,
        &format!(
            "GET /api/v1/agents/ag_1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {PRO}\r\n\
             Connection: close, X-Api-Key-Id,x-api-plan\r\nConnection: X-REQUEST-ID\r\n\
             X-Upstream-Only: 1\r\nConnection: X-Upstream-Only\r\n\r\n"
        ),
    );
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let seen = up.last().expect("upstream saw the request");
    assert_eq!(seen.header("x-api-key-id"), vec!["key_pro"]);
    assert_eq!(seen.header("x-api-plan"), vec!["pro"]);
    assert_eq!(seen.header("x-request-id").len(), 1);
    // Other nominations still hold.
    assert!(seen.header("x-upstream-only").is_empty());
}

#[tokio::test]
async fn strip_authorization_keeps_the_token_from_the_upstream() {
    let up = Upstream::start();
    let gw = gateway(&up, "strip_authorization = true");
    let r = client()
        .get(gw.url("/api/v1/agents"))
        .bearer_auth(FREE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last().expect("seen");
    assert!(seen.header("authorization").is_empty());
    assert_eq!(seen.header("x-api-key-id"), vec!["key_free_a"]);
}

#[tokio::test]
async fn request_ids_are_kept_when_valid_replaced_otherwise_and_reach_the_upstream() {
    let up = Upstream::start();
    let gw = gateway(&up, "");
    let c = client();
    let r = c
        .get(gw.url("/api/v1/agents"))
        .bearer_auth(FREE)
        .header("X-Request-Id", "client-id.42:a_b")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "client-id.42:a_b");
    assert_eq!(
        up.last().unwrap().header("x-request-id"),
        vec!["client-id.42:a_b"]
    );

    let r = c
        .get(gw.url("/api/v1/agents"))
        .bearer_auth(FREE)
        .header("X-Request-Id", "not valid <script>")
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(id, "not valid <script>");
    assert!(!id.is_empty() && id.len() <= 128);
    // The upstream's own X-Request-Id ("upstream-set-this") is replaced by ours.
    assert_eq!(up.last().unwrap().header("x-request-id"), vec![id.as_str()]);

    let mut ids = std::collections::HashSet::new();
    for _ in 0..20 {
        let r = c
            .get(gw.url("/api/v1/agents"))
            .bearer_auth(FREE)
            .send()
            .await
            .unwrap();
        ids.insert(r.headers()["x-request-id"].to_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 20, "request ids repeat");
}

#[tokio::test]
async fn a_refused_upstream_connection_gives_503() {
    let refusing = RefusingAddr::new();
    let dead = refusing.addr();
    let gw = Gateway::start(move |p, a| jettson_config(p, a, dead, ""));
    let r = client()
        .get(gw.url("/api/v1/agents"))
        .bearer_auth(FREE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("x-request-id"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "temporarily_unavailable");
    // The gateway keeps serving.
    let r = client().get(gw.url("/api/v1/agents")).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn a_slow_upstream_gives_504_after_the_timeout() {
    let up = Upstream::start();
    let gw = gateway(&up, "upstream_timeout_ms = 300");
    let started = Instant::now();
    let r = client()
        .get(gw.url("/slow/3000"))
        .bearer_auth(FREE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "did not time out"
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_timeout");
}

#[tokio::test]
async fn a_body_over_max_body_bytes_gets_413_before_the_upstream() {
    let up = Upstream::start();
    let gw = gateway(&up, "max_body_bytes = 100");
    let r = client()
        .post(gw.url("/api/v1/agents/ag_1/x"))
        .bearer_auth(PRO)
        .body(vec![b'a'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");
    assert_eq!(up.total(), 0);
}

#[tokio::test]
async fn upstream_responses_pass_through_with_keep_alive() {
    let up = Upstream::start();
    let gw = gateway(&up, "");
    let c = client();
    for _ in 0..5 {
        let r = c
            .get(gw.url("/big/100000"))
            .bearer_auth(PRO)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().len(), 100_000);
    }
}

#[tokio::test]
async fn upstream_connections_are_reused_from_the_keep_alive_pool() {
    let up = Upstream::start();
    // Two worker threads, each with its own pool group: at most one connection each.
    let addr = up.addr;
    let gw = Gateway::start_with_env(
        move |p, a| jettson_config(p, a, addr, ""),
        &[("TERMSGATE_THREADS", "2")],
    );
    // Two client connections, one after the other: the second may land on the other worker.
    for c in [client(), client()] {
        for _ in 0..40 {
            let r = c.get(gw.url("/x")).bearer_auth(PRO).send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
    }
    assert_eq!(up.count("GET", "/x"), 80);
    let opened = up.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (1..=2).contains(&opened),
        "80 sequential requests opened {opened} upstream connections"
    );
}

/// Starts a request the upstream answers after `ms` milliseconds, and returns once the upstream
/// has it (at most 5 s), so a signal sent next finds it in flight.
async fn slow_request_in_flight(
    gw: &Gateway,
    up: &Upstream,
    ms: u64,
) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    let url = gw.url(&format!("/slow/{ms}"));
    let inflight = tokio::spawn(async move { client().get(url).bearer_auth(FREE).send().await });
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.total() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    inflight
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_then_exits() {
    let up = Upstream::start();
    let mut gw = gateway(&up, "");
    let inflight = slow_request_in_flight(&gw, &up, 1500).await;
    gw.signal("TERM");
    let resp = inflight
        .await
        .unwrap()
        .expect("in-flight request completed");
    assert_eq!(resp.status(), 200);
    let status = gw
        .wait_exit(Duration::from_secs(8))
        .expect("exited after draining");
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn sigint_exits_at_once() {
    let up = Upstream::start();
    let mut gw = gateway(&up, "");
    assert_eq!(
        client()
            .get(gw.url("/x"))
            .bearer_auth(FREE)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The line of a finished request is written before the signal (a request still being
    // logged when SIGINT arrives may lose its line: SIGINT does not wait for anything).
    assert_eq!(gw.wait_log_lines(1).len(), 1);
    gw.signal("INT");
    let status = gw
        .wait_exit(Duration::from_secs(3))
        .expect("exited at once");
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn an_upstream_that_answers_garbage_gives_500_internal_error() {
    // A raw TCP "upstream" that reads the request and answers something that is not HTTP.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"this is not HTTP at all\r\n\r\n");
        }
    });
    let gw = Gateway::start(move |p, a| jettson_config(p, a, addr, ""));
    let r = client()
        .get(gw.url("/x"))
        .bearer_auth(PRO)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    assert!(r.headers().contains_key("x-request-id"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "internal_error");
    assert_eq!(
        metric(
            &gw.metrics(),
            "termsgate_upstream_errors_total",
            &[("kind", "other")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn sigint_exits_at_once_even_during_a_sigterm_drain() {
    let up = Upstream::start();
    let mut gw = gateway(&up, "");
    let _inflight = slow_request_in_flight(&gw, &up, 5000).await;
    gw.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    gw.signal("INT");
    gw.wait_exit(Duration::from_secs(2))
        .expect("SIGINT ended the drain at once");
    assert!(asked.elapsed() < Duration::from_secs(2));
}

#[test]
fn a_taken_listen_port_fails_start_up_with_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    let up = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
    std::fs::write(&path, jettson_config(port, free_port(), up, "")).unwrap();
    let out = std::process::Command::new(binary())
        .args(["run", "-c", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
}

/// Writes `request` on a fresh connection and reads until the gateway closes it.
fn raw_exchange(port: u16, request: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends a chunked POST over a raw socket; returns the status code of the answer.
fn chunked_post(port: u16, path: &str, token: &str, chunks: &[Vec<u8>]) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for c in chunks {
        req.extend(format!("{:x}\r\n", c.len()).bytes());
        req.extend(c);
        req.extend(b"\r\n");
    }
    req.extend(b"0\r\n\r\n");
    let _ = s.write_all(&req);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_chunked_body_is_checked_whole_before_anything_goes_upstream() {
    let up = Upstream::start();
    let gw = gateway(&up, "max_body_bytes = 1000");
    let (port, chunk) = (gw.port, vec![b'a'; 300]);
    let small = vec![chunk.clone(), chunk.clone()];
    let status =
        tokio::task::spawn_blocking(move || chunked_post(port, "/api/v1/items", PRO, &small))
            .await
            .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        up.last().unwrap().body_len,
        600,
        "the buffered body reached the upstream whole"
    );

    let big = vec![chunk; 5];
    let status =
        tokio::task::spawn_blocking(move || chunked_post(port, "/api/v1/items", PRO, &big))
            .await
            .unwrap();
    assert_eq!(status, 413);
    assert_eq!(
        up.total(),
        1,
        "the upstream saw nothing of the oversized body"
    );
}

#[test]
fn the_request_target_reaches_the_upstream_unchanged() {
    let up = Upstream::start();
    let gw = gateway(&up, "");
    for (sent, want) in [
        (
            "/api/v1/agents?limit=5&cursor=a%20b&x=%E2%9C%93",
            "/api/v1/agents?limit=5&cursor=a%20b&x=%E2%9C%93",
        ),
        // Absolute-form: the upstream gets the same path and query.
        ("http://127.0.0.1/api/v1/agents?q=1", "/api/v1/agents?q=1"),
    ] {
        let text = raw_exchange(
            gw.port,
            &format!(
                "GET {sent} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {PRO}\r\nConnection: close\r\n\r\n"
            ),
        );
        assert!(text.starts_with("HTTP/1.1 200"), "{sent}: {text}");
        let seen = up.last().expect("upstream saw the request");
        assert_eq!(seen.target, want, "{sent}");
    }
}

#[test]
fn a_malformed_request_gets_400_and_a_closed_connection_and_others_are_served() {
    use std::io::{Read, Write};
    let up = Upstream::start();
    let gw = gateway(&up, "");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\nBad Header Without Colon\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    // read_to_end returns only once the gateway has closed the connection.
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert_eq!(up.total(), 0);
    assert_eq!(
        blocking_status(&gw.url("/x")),
        Some(401),
        "the gateway keeps serving others"
    );
}
