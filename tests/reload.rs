//! End-to-end: hot reload (contract section 6) on the real gateway.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;

const KEYS: &[(&str, &str, &str)] = &[
    ("key_free_a", FREE, "free"),
    ("key_free_b", FREE2, "free"),
    ("key_pro", PRO, "pro"),
];

fn config(
    gw_ports: (u16, u16),
    up: std::net::SocketAddr,
    extra: &str,
    free_per_minute: u32,
    keys: &[(&str, &str, &str)],
) -> String {
    jettson_config_with(gw_ports.0, gw_ports.1, up, extra, free_per_minute, keys)
}

fn start(up: &Upstream, extra: &'static str) -> Gateway {
    let addr = up.addr;
    Gateway::start(move |p, a| config((p, a), addr, extra, 5, KEYS))
}

#[tokio::test]
async fn sighup_raises_a_limit_and_the_raise_applies_to_existing_history() {
    let up = Upstream::start();
    let gw = start(&up, "");
    let c = client();
    for _ in 0..5 {
        assert_eq!(spawn(&c, &gw, FREE).await.status(), 201);
    }
    assert_eq!(spawn(&c, &gw, FREE).await.status(), 429);
    gw.write_config(&config((gw.port, gw.admin), up.addr, "", 7, KEYS));
    gw.signal("HUP");
    wait_for(|| reloads(&gw, "success") == 1.0, "the reload");
    assert_eq!(spawn(&c, &gw, FREE).await.status(), 201);
    let r = spawn(&c, &gw, FREE).await;
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.headers()["x-ratelimit-remaining"],
        "0",
        "7 - 7 spawns, history kept"
    );
    assert_eq!(spawn(&c, &gw, FREE).await.status(), 429);
    assert!(
        metric(
            &gw.metrics(),
            "termsgate_config_last_reload_success_timestamp_seconds",
            &[]
        )
        .unwrap()
            > 1.7e9
    );
}

#[tokio::test]
async fn a_file_change_is_picked_up_without_sighup_in_place_or_by_rename() {
    let up = Upstream::start();
    let gw = start(&up, "watch = true");
    let c = client();
    assert_eq!(get_status(&c, &gw.url("/x"), FREE2).await, 200);
    // Write then rename (editors, `kubectl` config maps): key_free_b removed.
    let without_b = config(
        (gw.port, gw.admin),
        up.addr,
        "watch = true",
        5,
        &[KEYS[0], KEYS[2]],
    );
    gw.write_config(&without_b);
    wait_for(|| reloads(&gw, "success") == 1.0, "a reload after rename");
    assert_eq!(get_status(&c, &gw.url("/x"), FREE2).await, 401);
    // Written in place: key_free_b back.
    std::fs::write(
        gw.config_path(),
        config((gw.port, gw.admin), up.addr, "watch = true", 5, KEYS),
    )
    .unwrap();
    wait_for(
        || reloads(&gw, "success") == 2.0,
        "a reload after an in-place write",
    );
    assert_eq!(get_status(&c, &gw.url("/x"), FREE2).await, 200);
}

#[tokio::test]
async fn a_changed_keys_file_is_picked_up() {
    let up = Upstream::start();
    let addr = up.addr;
    let keys_block = |keys: &[(&str, &str, &str)]| {
        keys.iter()
            .map(|(id, token, plan)| {
                format!(
                    "[[keys]]\nid = \"{id}\"\nsha256 = \"{}\"\nplan = \"{plan}\"\n",
                    sha256_hex(token)
                )
            })
            .collect::<String>()
    };
    let dir = tempfile::tempdir().unwrap();
    let keys_path = dir.path().join("keys.toml");
    std::fs::write(&keys_path, keys_block(&[KEYS[0]])).unwrap();
    let extra = format!("watch = true\nkeys_file = \"{}\"", keys_path.display());
    let gw = Gateway::start(move |p, a| config((p, a), addr, &extra, 5, &[]));
    let c = client();
    assert_eq!(get_status(&c, &gw.url("/x"), FREE).await, 200);
    assert_eq!(get_status(&c, &gw.url("/x"), PRO).await, 401);
    write_atomically(&keys_path, &keys_block(&[KEYS[2]]));
    wait_for(
        || reloads(&gw, "success") == 1.0,
        "a reload after the keys file changed",
    );
    assert_eq!(get_status(&c, &gw.url("/x"), PRO).await, 200);
    assert_eq!(get_status(&c, &gw.url("/x"), FREE).await, 401);
}

#[tokio::test]
async fn a_removed_key_is_refused_right_after_the_reload() {
    let up = Upstream::start();
    let gw = start(&up, "");
    let c = client();
    assert_eq!(get_status(&c, &gw.url("/x"), PRO).await, 200);
    gw.write_config(&config((gw.port, gw.admin), up.addr, "", 5, &KEYS[..2]));
    gw.signal("HUP");
    wait_for(|| reloads(&gw, "success") == 1.0, "the reload");
    let r = c.get(gw.url("/x")).bearer_auth(PRO).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn a_key_moved_from_free_to_pro_keeps_its_minute_history() {
    let up = Upstream::start();
    let gw = start(&up, "");
    let c = client();
    for _ in 0..5 {
        spawn(&c, &gw, FREE).await;
    }
    assert_eq!(spawn(&c, &gw, FREE).await.status(), 429);
    let moved = [("key_free_a", FREE, "pro"), KEYS[1], KEYS[2]];
    gw.write_config(&config((gw.port, gw.admin), up.addr, "", 5, &moved));
    gw.signal("HUP");
    wait_for(|| reloads(&gw, "success") == 1.0, "the reload");
    let r = spawn(&c, &gw, FREE).await;
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.headers()["x-ratelimit-remaining"],
        "24",
        "30 per minute minus the 6 counted"
    );
    assert!(r.headers()["ratelimit-policy"]
        .to_str()
        .unwrap()
        .contains("q=30"));
}

#[tokio::test]
async fn each_kind_of_invalid_file_is_refused_while_traffic_is_served() {
    let up = Upstream::start();
    let gw = start(&up, "");
    let c = client();
    let good = config((gw.port, gw.admin), up.addr, "", 5, KEYS);
    let bad_files = [
        (
            "syntax",
            "[server]\nthis is = not valid toml [[[\n".to_string(),
        ),
        (
            "unknown field",
            good.replace(
                "drain_timeout_s = 5",
                "drain_timeout_s = 5\ncolour = \"red\"",
            ),
        ),
        (
            "missing plan",
            good.replacen("plan = \"free\"", "plan = \"platinum\"", 1),
        ),
        (
            "missing route",
            good.replacen("route = \"spawn\"", "route = \"nowhere\"", 1),
        ),
        ("zero max", good.replacen("max = 5", "max = 0", 1)),
        (
            "bad window",
            good.replacen("window = \"1m\"", "window = \"1x\"", 1),
        ),
        ("bad hash", good.replacen(&sha256_hex(FREE), "ABC", 1)),
        (
            "duplicate id",
            good.replace("id = \"key_free_b\"", "id = \"key_free_a\""),
        ),
        (
            "missing keys_file",
            good.replace(
                "drain_timeout_s = 5",
                "drain_timeout_s = 5\nkeys_file = \"absent.toml\"",
            ),
        ),
    ];
    let mut failures = 0.0;
    for (what, text) in &bad_files {
        gw.write_config(text);
        gw.signal("HUP");
        failures += 1.0;
        wait_for(|| reloads(&gw, "failure") == failures, what);
        assert_eq!(
            get_status(&c, &gw.url("/x"), PRO).await,
            200,
            "{what}: old config still serves"
        );
        assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 401);
    }
    // An unreadable (here: missing) file changes nothing either.
    std::fs::remove_file(gw.config_path()).unwrap();
    gw.signal("HUP");
    wait_for(
        || reloads(&gw, "failure") == failures + 1.0,
        "a missing file",
    );
    assert_eq!(get_status(&c, &gw.url("/x"), PRO).await, 200);
    assert_eq!(reloads(&gw, "success"), 0.0);
    let stderr = gw.stderr();
    for needle in ["platinum", "nowhere", "colour", "absent.toml", "1x"] {
        assert!(
            stderr.contains(needle),
            "stderr does not name {needle}: {stderr}"
        );
    }
}

#[tokio::test]
async fn listen_changes_need_a_restart_and_the_rest_still_applies() {
    let up = Upstream::start();
    let gw = start(&up, "");
    let c = client();
    let moved = config(
        (free_port(), gw.admin),
        up.addr,
        "strip_authorization = true",
        5,
        KEYS,
    );
    gw.write_config(&moved);
    gw.signal("HUP");
    wait_for(|| reloads(&gw, "success") == 1.0, "the reload");
    assert!(gw
        .stderr()
        .contains("server.listen changed: this needs a restart"));
    assert_eq!(get_status(&c, &gw.url("/x"), PRO).await, 200);
    assert!(
        up.last().unwrap().header("authorization").is_empty(),
        "strip_authorization applied live"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_reloads_under_load_cause_no_error_and_no_mixed_config() {
    let up = Upstream::start();
    let addr = up.addr;
    // Two configs that differ in the plan of key_pro; each plan has a limit on every request
    // named after the plan, so a response whose policy names one plan while the upstream saw
    // the other would be a request that mixed two configs.
    let make = move |p: u16, a: u16, plan: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:{p}\"\nupstream = \"{addr}\"\nwatch = false\n\n[admin]\nlisten = \"127.0.0.1:{a}\"\n\n\
             [[plans]]\nname = \"gold\"\nlimits = [ {{ name = \"gold_limit\", max = 60000, window = \"1m\" }} ]\n\n\
             [[plans]]\nname = \"silver\"\nlimits = [ {{ name = \"silver_limit\", max = 60000, window = \"1m\" }} ]\n\n\
             [[keys]]\nid = \"key_pro\"\nsha256 = \"{}\"\nplan = \"{plan}\"\n",
            sha256_hex(PRO)
        )
    };
    let gw = Gateway::start(move |p, a| make(p, a, "gold"));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (url, stop, errors, sent) =
            (gw.url("/load"), stop.clone(), errors.clone(), sent.clone());
        let seen = up.seen.clone();
        clients.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                sent.fetch_add(1, Ordering::Relaxed);
                let r = match c.get(&url).bearer_auth(PRO).send().await {
                    Ok(r) => r,
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                let policy = r.headers()["ratelimit-policy"]
                    .to_str()
                    .unwrap_or("")
                    .to_string();
                let id = r.headers()["x-request-id"]
                    .to_str()
                    .unwrap_or("")
                    .to_string();
                if r.status() != 200 {
                    errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let upstream_plan = seen
                    .lock()
                    .unwrap()
                    .iter()
                    .rev()
                    .find(|s| s.header("x-request-id") == vec![id.as_str()])
                    .map(|s| s.header("x-api-plan").concat());
                match upstream_plan {
                    Some(plan) if policy.contains(&format!("\"{plan}_limit\"")) => {}
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let (port, admin) = (gw.port, gw.admin);
    for i in 0..50 {
        let text = if i % 2 == 0 {
            "[server]\nbroken = [[[\n".to_string()
        } else if i % 4 == 1 {
            make(port, admin, "silver")
        } else {
            make(port, admin, "gold")
        };
        gw.write_config(&text);
        gw.signal("HUP");
        let want = (i / 2 + 1) as f64;
        let result = if i % 2 == 0 { "failure" } else { "success" };
        wait_for(|| reloads(&gw, result) == want, "reload");
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert!(
        sent.load(Ordering::Relaxed) > 100,
        "load was too light to mean anything"
    );
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "requests failed or mixed configs during reloads"
    );
    assert_eq!(reloads(&gw, "success"), 25.0);
    assert_eq!(reloads(&gw, "failure"), 25.0);
}
