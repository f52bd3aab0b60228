//! Unit tests of config validation: each kind of mistake is refused with a message naming it.

use std::path::Path;
use std::time::Duration;

use super::*;

const HASH: &str = "8b1a9953c4611296a827abf8c47804d7e6c49c6b8b1a9953c4611296a827abf8";

pub(super) fn base(extra_plans: &str, extra_keys: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:8080"
upstream = "127.0.0.1:9000"

[admin]
listen = "127.0.0.1:9090"

[[routes]]
name = "spawn"
method = "POST"
path = "/api/v1/agents"

[[plans]]
name = "free"
limits = [
  {{ name = "spawns_per_minute", route = "spawn", max = 5, window = "1m" }},
  {{ name = "spawns_per_hour", route = "spawn", max = 30, window = "1h" }},
]
{extra_plans}
[[keys]]
id = "key_free"
sha256 = "{HASH}"
plan = "free"
{extra_keys}
"#
    )
}

fn check(text: &str) -> Result<Config, String> {
    load_str(text, Path::new("test.toml")).map_err(|e| e.to_string())
}

fn refused_with(text: &str, needles: &[&str]) {
    let err = check(text).expect_err("config should be refused");
    for n in needles {
        assert!(err.contains(n), "error {err:?} does not mention {n:?}");
    }
}

#[test]
fn a_good_config_loads() {
    let cfg = check(&base("", "")).expect("valid");
    assert_eq!(cfg.plans.len(), 1);
    assert_eq!(cfg.keys.len(), 1);
    let plan = &cfg.plans["free"];
    assert_eq!(plan.by_route[0].specs.len(), 2);
    assert!(plan.unrouted.specs.is_empty());
}

#[test]
fn shipped_configs_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for f in ["conf/termsgate.toml", "conf/calliope.toml"] {
        load(&root.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    }
}

#[test]
fn unknown_fields_are_refused() {
    refused_with(
        &base("", "").replace("[admin]", "[admin]\ncolour = \"red\""),
        &["colour"],
    );
}

#[test]
fn a_key_on_a_missing_plan_is_refused() {
    let extra = format!(
        "[[keys]]\nid = \"k2\"\nsha256 = \"{}\"\nplan = \"platinum\"\n",
        HASH.replace('8', "9")
    );
    refused_with(&base("", &extra), &["keys[1]", "k2", "platinum"]);
}

#[test]
fn duplicate_ids_and_hashes_are_refused() {
    let dup_id = format!(
        "[[keys]]\nid = \"key_free\"\nsha256 = \"{}\"\nplan = \"free\"\n",
        HASH.replace('8', "9")
    );
    refused_with(&base("", &dup_id), &["key_free", "duplicate key id"]);
    let dup_hash = format!("[[keys]]\nid = \"k3\"\nsha256 = \"{HASH}\"\nplan = \"free\"\n");
    refused_with(&base("", &dup_hash), &["k3", "sha256"]);
}

#[test]
fn duplicate_plans_routes_and_limits_are_refused() {
    refused_with(
        &base("[[plans]]\nname = \"free\"\n", ""),
        &["plans[1]", "duplicate plan"],
    );
    let dup_route = base("", "").replace(
        "[[plans]]",
        "[[routes]]\nname = \"spawn\"\npath = \"/x\"\n\n[[plans]]",
    );
    refused_with(&dup_route, &["routes[1]", "duplicate route"]);
    let dup_limit = "[[plans]]\nname = \"pro\"\nlimits = [ { name = \"a\", max = 1, window = 60 }, { name = \"a\", max = 2, window = 60 } ]\n";
    refused_with(
        &base(dup_limit, ""),
        &["\"pro\"", "limits[1]", "duplicate limit"],
    );
}

#[test]
fn a_limit_on_a_missing_route_is_refused() {
    let plan = "[[plans]]\nname = \"pro\"\nlimits = [ { name = \"a\", route = \"nowhere\", max = 1, window = 60 } ]\n";
    refused_with(&base(plan, ""), &["\"pro\"", "nowhere"]);
}

#[test]
fn bad_max_and_windows_are_refused() {
    for (limit, needle) in [
        ("max = 0, window = \"1m\"", "max = 0"),
        ("max = -3, window = \"1m\"", "max = -3"),
        ("max = 70000, window = \"1m\"", "max = 70000"),
        ("max = 1, window = \"1y\"", "1y"),
        ("max = 1, window = 0", "window"),
    ] {
        let plan =
            format!("[[plans]]\nname = \"pro\"\nlimits = [ {{ name = \"lim\", {limit} }} ]\n");
        refused_with(&base(&plan, ""), &["\"pro\"", "\"lim\"", needle]);
    }
}

#[test]
fn malformed_hashes_are_refused() {
    for bad in [&HASH[..63], &HASH.to_uppercase(), &HASH.replace('a', "g")] {
        refused_with(
            &base("", "").replace(HASH, bad),
            &["key_free", "64 lowercase hex"],
        );
    }
}

#[test]
fn bad_addresses_and_sections_are_refused() {
    refused_with(
        &base("", "").replace("127.0.0.1:9090", "nowhere"),
        &["admin.listen"],
    );
    refused_with(
        &base("", "").replace("listen = \"127.0.0.1:8080\"", "listen = []"),
        &["server.listen"],
    );
    let limiter = "[limiter]\nbackend = \"etcd\"\n";
    refused_with(
        &format!("{}{limiter}", base("", "")),
        &["limiter.backend", "etcd"],
    );
    let policy = "[limiter]\non_backend_error = \"maybe\"\n";
    refused_with(
        &format!("{}{policy}", base("", "")),
        &["on_backend_error", "maybe"],
    );
}

#[test]
fn listen_takes_one_address_or_a_list() {
    let text = base("", "").replace(
        "listen = \"127.0.0.1:8080\"",
        "listen = [\"127.0.0.1:8080\", \"127.0.0.1:8081\"]",
    );
    assert_eq!(check(&text).expect("valid").server.listen.len(), 2);
}

#[test]
fn routes_match_exactly_or_by_prefix() {
    let cfg = check(&base("", "").replace(
        "[[plans]]",
        "[[routes]]\nname = \"agents\"\npath = \"/api/v1/agents/*\"\n\n[[plans]]",
    ))
    .expect("valid");
    let post = http::Method::POST;
    let get = http::Method::GET;
    assert_eq!(cfg.route_mask(&post, "/api/v1/agents"), 0b11);
    assert_eq!(cfg.route_mask(&get, "/api/v1/agents"), 0b10);
    assert_eq!(cfg.route_mask(&get, "/api/v1/agents/ag_1"), 0b10);
    assert_eq!(cfg.route_mask(&get, "/api/v1/agentsx"), 0);
    assert_eq!(cfg.route_label(0b10), "agents");
    assert_eq!(cfg.route_label(0), "other");
    assert_eq!(cfg.plans["free"].limits_for(0b11).specs.len(), 2);
}

#[test]
fn a_missing_keys_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.toml");
    let text = base("", "").replace(
        "upstream = \"127.0.0.1:9000\"",
        "upstream = \"127.0.0.1:9000\"\nkeys_file = \"missing.toml\"",
    );
    std::fs::write(&path, text).expect("write");
    let err = load(&path).expect_err("missing keys_file").to_string();
    assert!(err.contains("missing.toml"), "{err}");
}

#[test]
fn client_timeouts_default_and_are_bounded() {
    let cfg = check(&base("", "")).expect("valid");
    assert_eq!(cfg.server.header_timeout, Duration::from_secs(10));
    assert_eq!(cfg.server.idle_timeout, Duration::from_secs(60));
    let with = |line: &str| {
        base("", "").replace(
            "upstream = \"127.0.0.1:9000\"",
            &format!("upstream = \"127.0.0.1:9000\"\n{line}"),
        )
    };
    let cfg = check(&with("header_timeout_ms = 250\nidle_timeout_ms = 1500")).expect("valid");
    assert_eq!(cfg.server.header_timeout, Duration::from_millis(250));
    assert_eq!(cfg.server.idle_timeout, Duration::from_millis(1500));
    refused_with(
        &with("header_timeout_ms = 0"),
        &["server.header_timeout_ms"],
    );
    refused_with(&with("idle_timeout_ms = 0"), &["server.idle_timeout_ms"]);
    refused_with(
        &with("idle_timeout_ms = 3600001"),
        &["server.idle_timeout_ms", "3600000"],
    );
    refused_with(
        &with("header_timeout_ms = 3600001"),
        &["server.header_timeout_ms"],
    );
    assert!(check(&with("idle_timeout_ms = 120000")).is_ok());
}

#[test]
fn a_limit_name_that_cannot_be_quoted_in_headers_is_refused() {
    for bad in ["per minute", "a\\\"b", "back\\\\slash", "caf\u{e9}"] {
        let plan = format!(
            "[[plans]]\nname = \"pro\"\nlimits = [ {{ name = \"{bad}\", max = 1, window = 60 }} ]\n"
        );
        refused_with(&base(&plan, ""), &["\"pro\"", "limit name"]);
    }
}

#[test]
fn a_plan_name_that_cannot_be_a_header_value_is_refused() {
    for bad in ["line\\nbreak", "nul\\u0000", "del\\u007f"] {
        let plan = format!("[[plans]]\nname = \"{bad}\"\n");
        refused_with(&base(&plan, ""), &["plans[1]", "X-Api-Plan"]);
    }
    let fine = "[[plans]]\nname = \"Entreprise \u{e9}t\u{e9}\"\n";
    assert!(check(&base(fine, "")).is_ok());
}
