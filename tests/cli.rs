//! End-to-end: the command line (contract section 1): `check`, `key new`, `key hash`.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::*;

fn termsgate(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .output()
        .expect("run termsgate")
}

fn check_text(text: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(&path, text).unwrap();
    termsgate(&["check", "-c", path.to_str().unwrap()])
}

fn good() -> String {
    let up = std::net::SocketAddr::from(([127, 0, 0, 1], 9000));
    jettson_config(8080, 9090, up, "")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn check_accepts_the_shipped_configs_and_prints_a_summary() {
    let root = env!("CARGO_MANIFEST_DIR");
    for f in ["conf/termsgate.toml", "conf/calliope.toml"] {
        let o = termsgate(&["check", "-c", &format!("{root}/{f}")]);
        assert!(o.status.success(), "{f}: {}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(out.lines().count(), 1, "one line: {out}");
        assert!(
            out.contains("plans") && out.contains("routes") && out.contains("keys"),
            "{out}"
        );
    }
    let o = check_text(&good());
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("2 plans, 1 routes, 3 keys"));
}

#[test]
fn check_rejects_each_kind_of_mistake_naming_it_without_panicking() {
    let g = good();
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("not toml", "[server\n".into(), vec!["t.toml"]),
        (
            "unknown field",
            g.replace(
                "drain_timeout_s = 5",
                "drain_timeout_s = 5\nlisten_backlog = 3",
            ),
            vec!["listen_backlog"],
        ),
        (
            "missing plan",
            g.replacen("plan = \"free\"", "plan = \"platinum\"", 1),
            vec!["keys[0]", "key_free_a", "platinum"],
        ),
        (
            "missing route",
            g.replacen("route = \"spawn\"", "route = \"spawns\"", 1),
            vec!["plans", "free", "spawns_per_minute", "spawns"],
        ),
        (
            "duplicate plan",
            g.replace("name = \"pro\"", "name = \"free\""),
            vec!["plans[1]", "duplicate plan"],
        ),
        (
            "duplicate key id",
            g.replace("id = \"key_pro\"", "id = \"key_free_a\""),
            vec!["keys[2]", "key_free_a", "duplicate"],
        ),
        (
            "zero max",
            g.replacen("max = 5", "max = 0", 1),
            vec!["spawns_per_minute", "max = 0"],
        ),
        (
            "bad window",
            g.replacen("window = \"1h\"", "window = \"an hour\"", 1),
            vec!["spawns_per_hour", "an hour"],
        ),
        (
            "uppercase hash",
            g.replacen(&sha256_hex(FREE), &sha256_hex(FREE).to_uppercase(), 1),
            vec!["key_free_a", "64 lowercase hex"],
        ),
        (
            "short hash",
            g.replacen(&sha256_hex(FREE), "abc123", 1),
            vec!["key_free_a", "sha256"],
        ),
        (
            "bad listen",
            g.replace("listen = \"127.0.0.1:8080\"", "listen = \"port 80\""),
            vec!["server.listen", "port 80"],
        ),
        (
            "missing keys_file",
            g.replace(
                "drain_timeout_s = 5",
                "drain_timeout_s = 5\nkeys_file = \"nope.toml\"",
            ),
            vec!["nope.toml"],
        ),
    ];
    for (what, config, needles) in cases {
        let o = check_text(&config);
        let out = text(&o);
        assert!(!o.status.success(), "{what}: accepted");
        assert!(!out.contains("panicked"), "{what}: {out}");
        assert_eq!(out.trim().lines().count(), 1, "{what}: one line: {out}");
        for n in needles {
            assert!(out.contains(n), "{what}: {out:?} does not name {n:?}");
        }
    }
    let o = termsgate(&["check", "-c", "/nonexistent/termsgate.toml"]);
    assert!(!o.status.success() && text(&o).contains("/nonexistent/termsgate.toml"));
}

#[test]
fn key_new_prints_the_key_once_and_a_block_holding_only_its_hash() {
    let o = termsgate(&["key", "new", "--plan", "pro", "--id", "key_cli"]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    let token = out
        .split_whitespace()
        .find(|w| w.starts_with("tg_live_"))
        .expect("a tg_live_ key");
    assert!(token.len() >= 8 + 22, "at least 128 bits: {token}");
    assert_eq!(out.matches(token).count(), 1, "printed once");
    assert!(out.contains(&format!("sha256 = \"{}\"", sha256_hex(token))));
    assert!(out.contains("id = \"key_cli\"") && out.contains("plan = \"pro\""));
    let other = termsgate(&["key", "new", "--plan", "pro"]);
    assert_ne!(
        String::from_utf8_lossy(&other.stdout),
        out,
        "keys are random"
    );
}

#[test]
fn key_hash_reads_stdin_and_prints_lowercase_sha256() {
    let mut child = Command::new(binary())
        .args(["key", "hash"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"tg_hash_me_please\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        sha256_hex("tg_hash_me_please")
    );
}

#[test]
fn bad_arguments_give_a_message_and_a_nonzero_exit() {
    for args in [&["frobnicate"][..], &["key", "new"], &["run", "--nope"]] {
        let o = termsgate(args);
        assert!(!o.status.success(), "{args:?}");
        assert!(!text(&o).contains("panicked"));
    }
}
