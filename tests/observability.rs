//! End-to-end: access log lines, Prometheus metrics and the admin endpoints (contract 5 and 7).

mod common;

use std::time::Duration;

use common::*;

fn gateway_with_env(up_addr: std::net::SocketAddr, env: &[(&str, &str)]) -> Gateway {
    Gateway::start_with_env(move |p, a| jettson_config(p, a, up_addr, ""), env)
}

fn find(lines: &[serde_json::Value], status: u64) -> Vec<&serde_json::Value> {
    lines.iter().filter(|l| l["status"] == status).collect()
}

#[tokio::test]
async fn each_kind_of_request_writes_exactly_one_log_line_with_the_right_fields() {
    let up = Upstream::start();
    let gw = gateway_with_env(up.addr, &[]);
    let c = client();
    assert_eq!(
        c.get(gw.url("/api/v1/agents?cursor=abc"))
            .bearer_auth(PRO)
            .header("X-Request-Id", "rid-200")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(gw.url("/api/v1/agents"))
            .header("X-Request-Id", "rid-401")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    for _ in 0..5 {
        spawn(&c, &gw, FREE).await;
    }
    let r = c
        .post(gw.url("/api/v1/agents"))
        .bearer_auth(FREE)
        .header("X-Request-Id", "rid-429")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);

    let lines = gw.wait_log_lines(8);
    assert_eq!(lines.len(), 8, "one line per request: {lines:?}");
    let fields = [
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
    for l in &lines {
        let obj = l.as_object().unwrap();
        assert_eq!(
            obj.len(),
            fields.len(),
            "exactly the contract's fields: {l}"
        );
        for f in fields {
            assert!(obj.contains_key(f), "missing {f} in {l}");
        }
        assert!(l["ts"].as_str().unwrap().ends_with('Z'));
        assert_eq!(l["client_ip"], "127.0.0.1");
        assert!(l["latency_ms"].as_f64().unwrap() >= 0.0);
    }
    let ok = find(&lines, 200)[0];
    assert_eq!(ok["request_id"], "rid-200");
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["path"], "/api/v1/agents");
    assert_eq!(ok["key_id"], "key_pro");
    assert_eq!(ok["plan"], "pro");
    assert!(ok["limited"].is_null());
    assert!(ok["upstream_ms"].as_f64().unwrap() >= 0.0);

    let unauth = find(&lines, 401)[0];
    assert_eq!(unauth["request_id"], "rid-401");
    assert!(
        unauth["key_id"].is_null() && unauth["plan"].is_null() && unauth["upstream_ms"].is_null()
    );

    let limited = find(&lines, 429);
    assert_eq!(limited.len(), 1);
    assert_eq!(limited[0]["request_id"], "rid-429");
    assert_eq!(limited[0]["key_id"], "key_free_a");
    assert_eq!(limited[0]["plan"], "free");
    assert_eq!(limited[0]["limited"], "spawns_per_minute");
    assert!(limited[0]["upstream_ms"].is_null());
    assert_eq!(find(&lines, 201).len(), 5);
}

#[tokio::test]
async fn an_unreachable_upstream_is_logged_as_503_with_the_key() {
    let refusing = RefusingAddr::new();
    let gw = gateway_with_env(refusing.addr(), &[]);
    let r = client()
        .get(gw.url("/api/v1/agents"))
        .bearer_auth(PRO)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let lines = gw.wait_log_lines(1);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["status"], 503);
    assert_eq!(lines[0]["key_id"], "key_pro");
    let m = gw.metrics();
    assert_eq!(
        metric(
            &m,
            "termsgate_upstream_errors_total",
            &[("kind", "connect")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "termsgate_requests_total",
            &[("plan", "pro"), ("route", "other"), ("status", "503")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn tokens_bodies_and_query_strings_never_reach_any_log_even_at_trace() {
    let up = Upstream::start();
    let gw = gateway_with_env(up.addr, &[("RUST_LOG", "trace")]);
    let c = client();
    let body = r#"{"task":"body_secret_7f3a"}"#;
    c.post(gw.url("/api/v1/agents?q=query_secret_91"))
        .bearer_auth(FREE)
        .body(body)
        .send()
        .await
        .unwrap();
    c.get(gw.url("/x?q=query_secret_92"))
        .bearer_auth("tg_unknown_secret_token_55")
        .send()
        .await
        .unwrap();
    c.get(gw.url("/slow/2000?q=query_secret_93"))
        .bearer_auth(PRO)
        .timeout(Duration::from_millis(200))
        .send()
        .await
        .ok();
    let refusing = RefusingAddr::new();
    let dead_gw = gateway_with_env(refusing.addr(), &[("RUST_LOG", "trace")]);
    c.post(dead_gw.url("/api/v1/agents?q=query_secret_94"))
        .bearer_auth(PRO)
        .body(body)
        .send()
        .await
        .unwrap();
    gw.wait_log_lines(3);
    dead_gw.wait_log_lines(1);
    std::thread::sleep(Duration::from_millis(300));
    for g in [&gw, &dead_gw] {
        let all = format!("{}\n{}", g.stdout(), g.stderr());
        assert!(!g.stderr().is_empty(), "trace diagnostics were written");
        for secret in [
            FREE,
            PRO,
            "tg_unknown_secret_token_55",
            "body_secret_7f3a",
            "query_secret_9",
            "Bearer",
            "authorization",
        ] {
            assert!(!all.contains(secret), "{secret:?} leaked into the logs");
        }
    }
}

#[tokio::test]
async fn metric_values_are_exact_after_a_known_sequence() {
    let up = Upstream::start();
    let gw = gateway_with_env(up.addr, &[]);
    let c = client();
    for _ in 0..6 {
        spawn(&c, &gw, FREE).await;
    }
    for _ in 0..3 {
        c.get(gw.url("/api/v1/agents"))
            .bearer_auth(PRO)
            .send()
            .await
            .unwrap();
    }
    c.get(gw.url("/api/v1/agents")).send().await.unwrap();
    c.get(gw.url("/api/v1/agents"))
        .header("Authorization", "Basic abc")
        .send()
        .await
        .unwrap();
    c.get(gw.url("/api/v1/agents"))
        .bearer_auth("tg_nope")
        .send()
        .await
        .unwrap();
    gw.wait_log_lines(12);

    let m = gw.metrics();
    let req = |plan, route, status| {
        metric(
            &m,
            "termsgate_requests_total",
            &[("plan", plan), ("route", route), ("status", status)],
        )
    };
    assert_eq!(req("free", "spawn", "201"), Some(5.0));
    assert_eq!(req("free", "spawn", "429"), Some(1.0));
    assert_eq!(req("pro", "other", "200"), Some(3.0));
    assert_eq!(req("none", "other", "401"), Some(3.0));
    assert_eq!(
        metric(
            &m,
            "termsgate_rate_limited_total",
            &[("plan", "free"), ("limit", "spawns_per_minute")]
        ),
        Some(1.0)
    );
    for reason in ["missing", "malformed", "unknown_key"] {
        assert_eq!(
            metric(&m, "termsgate_auth_failures_total", &[("reason", reason)]),
            Some(1.0),
            "{reason}"
        );
    }
    assert_eq!(
        metric(
            &m,
            "termsgate_request_duration_seconds_count",
            &[("plan", "free"), ("route", "spawn")]
        ),
        Some(6.0)
    );
    assert_eq!(
        metric(
            &m,
            "termsgate_upstream_duration_seconds_count",
            &[("route", "spawn")]
        ),
        Some(5.0)
    );
    assert_eq!(
        metric(
            &m,
            "termsgate_upstream_errors_total",
            &[("kind", "connect")]
        ),
        Some(0.0)
    );
    assert_eq!(metric(&m, "termsgate_limiter_keys", &[]), Some(1.0));
    assert_eq!(
        metric(&m, "termsgate_access_log_dropped_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &m,
            "termsgate_config_reloads_total",
            &[("result", "failure")]
        ),
        Some(0.0)
    );
    assert!(
        metric(
            &m,
            "termsgate_config_last_reload_success_timestamp_seconds",
            &[]
        )
        .unwrap()
            > 1.7e9
    );
    assert!(
        m.contains("le=\"0.0005\"") && m.contains("le=\"10\""),
        "edge-proxy buckets"
    );
    assert!(
        !m.contains("key_free_a") && !m.contains("key_pro"),
        "key ids are never labels"
    );
}

#[tokio::test]
async fn admin_endpoints_answer_and_the_public_port_never_serves_metrics() {
    let up = Upstream::start();
    let gw = gateway_with_env(up.addr, &[]);
    assert_eq!(blocking_status(&gw.admin_url("/healthz")), Some(200));
    assert_eq!(blocking_status(&gw.admin_url("/readyz")), Some(200));
    assert_eq!(blocking_status(&gw.admin_url("/nope")), Some(404));
    assert!(blocking_get(&gw.admin_url("/metrics"))
        .contains("termsgate_auth_failures_total{reason=\"missing\"} 0"));

    let c = client();
    let r = c.get(gw.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(gw.url("/metrics"))
        .bearer_auth(PRO)
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(
        !text.contains("termsgate_"),
        "the public port served metrics"
    );
    assert_eq!(
        up.last().unwrap().path,
        "/metrics",
        "it went to the upstream like any path"
    );
}
