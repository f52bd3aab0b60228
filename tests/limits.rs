//! End-to-end: plan limits through the real gateway (contract section 4).

mod common;

use common::*;

fn gateway(up: &Upstream) -> Gateway {
    let addr = up.addr;
    Gateway::start(move |p, a| jettson_config(p, a, addr, ""))
}

#[tokio::test]
async fn the_sixth_free_spawn_in_a_minute_is_refused_with_envelope_and_headers() {
    let up = Upstream::start();
    let gw = gateway(&up);
    let c = client();
    let mut remaining = Vec::new();
    for _ in 0..5 {
        let r = spawn(&c, &gw, FREE).await;
        assert_eq!(r.status(), 201);
        assert!(r.headers()["ratelimit-policy"]
            .to_str()
            .unwrap()
            .contains("\"spawns_per_minute\";q=5;w=60"));
        assert!(r.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .contains("\"spawns_per_hour\";r="));
        remaining.push(
            r.headers()["x-ratelimit-remaining"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(remaining, ["4", "3", "2", "1", "0"]);

    let r = spawn(&c, &gw, FREE).await;
    assert_eq!(r.status(), 429);
    let h = r.headers().clone();
    let retry_after: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(h["x-ratelimit-limit"], "5");
    assert_eq!(h["x-ratelimit-remaining"], "0");
    assert_eq!(
        h["x-ratelimit-reset"].to_str().unwrap(),
        retry_after.to_string()
    );
    assert!(h["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with(&format!("\"spawns_per_minute\";r=0;t={retry_after}")));
    assert!(h.contains_key("x-request-id"));
    assert!(h["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let body: serde_json::Value = r.json().await.unwrap();
    let err = &body["error"];
    assert_eq!(err["code"], "rate_limited");
    assert_eq!(
        err["message"],
        format!("Too many requests. Try again in {retry_after}s.")
    );
    let d = &err["details"];
    assert_eq!(d["plan"], "free");
    assert_eq!(d["limit"], "spawns_per_minute");
    assert_eq!(d["window"], "minute");
    assert_eq!(d["retryAfterSeconds"], retry_after);
    assert_eq!(d["limitPerMinute"], 5);
    assert_eq!(d["limitPerHour"], 30);
    assert_eq!(
        up.count("POST", "/api/v1/agents"),
        5,
        "the upstream saw exactly 5 spawns"
    );
}

#[tokio::test]
async fn other_routes_are_not_counted_and_carry_no_limit_headers() {
    let up = Upstream::start();
    let gw = gateway(&up);
    let c = client();
    for _ in 0..5 {
        assert_eq!(spawn(&c, &gw, FREE).await.status(), 201);
    }
    for _ in 0..20 {
        let r = c
            .get(gw.url("/api/v1/agents"))
            .bearer_auth(FREE)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(!r.headers().contains_key("ratelimit"));
    }
    assert_eq!(spawn(&c, &gw, FREE).await.status(), 429);
}

#[tokio::test]
async fn another_key_is_unaffected() {
    let up = Upstream::start();
    let gw = gateway(&up);
    let c = client();
    for _ in 0..6 {
        spawn(&c, &gw, FREE).await;
    }
    assert_eq!(spawn(&c, &gw, FREE).await.status(), 429);
    let r = spawn(&c, &gw, FREE2).await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-ratelimit-remaining"], "4");
    assert_eq!(
        spawn(&c, &gw, PRO).await.headers()["x-ratelimit-remaining"],
        "29"
    );
}

#[tokio::test]
async fn forty_concurrent_spawns_on_a_fresh_free_key_admit_exactly_five() {
    let up = Upstream::start();
    let gw = gateway(&up);
    let c = client();
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let c = c.clone();
            let url = gw.url("/api/v1/agents");
            tokio::spawn(async move {
                c.post(url)
                    .bearer_auth(FREE)
                    .body(r#"{"task":"t"}"#)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap().unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 35);
    assert_eq!(up.count("POST", "/api/v1/agents"), 5);
}

#[tokio::test]
async fn a_limit_without_a_route_counts_every_request() {
    let up = Upstream::start();
    let addr = up.addr;
    let gw = Gateway::start(move |p, a| {
        format!(
            "[server]\nlisten = \"127.0.0.1:{p}\"\nupstream = \"{addr}\"\nwatch = false\n\n[admin]\nlisten = \"127.0.0.1:{a}\"\n\n\
             [[plans]]\nname = \"standard\"\nlimits = [\n  {{ name = \"requests_per_minute\", max = 3, window = \"1m\" }},\n  {{ name = \"requests_per_day\", max = 10000, window = \"1d\" }},\n]\n\n\
             [[keys]]\nid = \"key_c\"\nsha256 = \"{}\"\nplan = \"standard\"\n",
            sha256_hex(PRO)
        )
    });
    let c = client();
    for path in ["/a", "/b/c", "/api/v1/agents"] {
        assert_eq!(
            c.get(gw.url(path))
                .bearer_auth(PRO)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let r = c
        .delete(gw.url("/x"))
        .bearer_auth(PRO)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["details"]["limitPerMinute"], 3);
    assert_eq!(body["error"]["details"]["limitPerDay"], 10000);
    assert_eq!(up.total(), 3);
}
