//! End-to-end: brute-force protection, client IP from trusted proxies, oversized headers.

mod common;

use common::*;

fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(ip))
        .build()
        .unwrap()
}

#[tokio::test]
async fn an_ip_past_its_invalid_key_budget_gets_429_before_any_key_lookup() {
    let up = Upstream::start();
    let addr = up.addr;
    let gw = Gateway::start(move |p, a| {
        format!(
            "{}\n[abuse]\nmax_invalid_keys_per_minute = 3\n",
            jettson_config(p, a, addr, "")
        )
    });
    let attacker = client_from([127, 0, 0, 1]);
    let mut statuses = Vec::new();
    for i in 0..6 {
        let r = attacker
            .get(gw.url("/x"))
            .bearer_auth(format!("tg_guess_{i}"))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(
        statuses,
        [401, 401, 401, 401, 429, 429],
        "blocked after more than 3 failures"
    );
    // Even a valid key from that IP is refused now: the check comes before the key lookup.
    let r = attacker
        .get(gw.url("/x"))
        .bearer_auth(PRO)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_invalid_keys");
    assert_eq!(up.total(), 0);

    // Another address is unaffected.
    let other = client_from([127, 0, 0, 2]);
    assert_eq!(
        other
            .get(gw.url("/x"))
            .bearer_auth(PRO)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let m = gw.metrics();
    assert_eq!(metric(&m, "termsgate_abuse_blocked_total", &[]), Some(3.0));
    assert_eq!(
        metric(
            &m,
            "termsgate_auth_failures_total",
            &[("reason", "unknown_key")]
        ),
        Some(4.0)
    );
}

#[tokio::test]
async fn x_forwarded_for_is_believed_only_from_trusted_proxies() {
    let up = Upstream::start();
    let addr = up.addr;
    let gw = Gateway::start(move |p, a| {
        jettson_config(p, a, addr, "trusted_proxies = [\"127.0.0.1/32\"]")
    });
    let spoof = "6.6.6.6, 203.0.113.9";
    client_from([127, 0, 0, 1])
        .get(gw.url("/a"))
        .bearer_auth(PRO)
        .header("X-Forwarded-For", spoof)
        .send()
        .await
        .unwrap();
    client_from([127, 0, 0, 3])
        .get(gw.url("/b"))
        .bearer_auth(PRO)
        .header("X-Forwarded-For", spoof)
        .send()
        .await
        .unwrap();
    let lines = gw.wait_log_lines(2);
    let ip_of = |path: &str| {
        lines
            .iter()
            .find(|l| l["path"] == path)
            .map(|l| l["client_ip"].clone())
            .unwrap()
    };
    assert_eq!(
        ip_of("/a"),
        "203.0.113.9",
        "trusted peer: right-most untrusted hop"
    );
    assert_eq!(ip_of("/b"), "127.0.0.3", "untrusted peer: its own address");
}

#[tokio::test]
async fn oversized_headers_get_431_and_nothing_goes_upstream() {
    let up = Upstream::start();
    let addr = up.addr;
    let gw = Gateway::start(move |p, a| jettson_config(p, a, addr, ""));
    let c = client();
    let r = c
        .get(gw.url("/x"))
        .bearer_auth(PRO)
        .header("X-Big", "a".repeat(40 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");
    assert_eq!(up.total(), 0);
    assert_eq!(
        c.get(gw.url("/x"))
            .bearer_auth(PRO)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}
