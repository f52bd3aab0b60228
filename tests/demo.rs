//! End-to-end: `termsgate demo` serves the stand-in agents API behind the gateway, and the
//! keys it prints work as printed.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[tokio::test]
async fn the_demo_prints_working_keys_and_enforces_the_free_plan() {
    let (port, admin) = (free_port(), free_port());
    let mut child = Command::new(binary())
        .args([
            "demo",
            "--port",
            &port.to_string(),
            "--admin-port",
            &admin.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    while let Some(Ok(line)) = lines.next() {
        banner.push_str(&line);
        banner.push('\n');
        if line.contains("Ctrl-C") {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    let keys: Vec<&str> = banner
        .split_whitespace()
        .filter(|w| w.starts_with("tg_live_"))
        .collect();
    let free = keys.first().copied().expect("a printed key");
    assert!(banner.contains("curl") && banner.contains(free));
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if blocking_status(&format!("http://127.0.0.1:{admin}/readyz")) == Some(200) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let c = client();
    let r = c
        .post(format!("{base}/api/v1/agents"))
        .bearer_auth(free)
        .body(r#"{"task":"Say hello"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let agent: serde_json::Value = r.json().await.unwrap();
    assert_eq!(agent["status"], "spawning");
    let id = agent["agent_id"].as_str().unwrap().to_string();
    let r = c
        .get(format!("{base}/api/v1/agents/{id}"))
        .bearer_auth(free)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .delete(format!("{base}/api/v1/agents/{id}"))
        .bearer_auth(free)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["status"],
        "stopped"
    );
    let list: serde_json::Value = c
        .get(format!("{base}/api/v1/agents"))
        .bearer_auth(free)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    for _ in 0..4 {
        assert_eq!(
            c.post(format!("{base}/api/v1/agents"))
                .bearer_auth(free)
                .body(r#"{"task":"t"}"#)
                .send()
                .await
                .unwrap()
                .status(),
            201
        );
    }
    assert_eq!(
        c.post(format!("{base}/api/v1/agents"))
            .bearer_auth(free)
            .body(r#"{"task":"t"}"#)
            .send()
            .await
            .unwrap()
            .status(),
        429
    );
    assert_eq!(
        c.get(format!("{base}/api/v1/agents"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let _ = child.wait();
}
