//! `termsgate::config::load_str` on arbitrary UTF-8: it must never panic, and a refusal is
//! one line (the CLI and the reload log promise one line naming the entry at fault).
//!
//! Two kinds of input are skipped because they would reach outside the process, not because
//! they are wrong: an upstream that is a host name (a DNS query for every such input), and a
//! TLS pair (it reads arbitrary paths, such as /dev/zero or a FIFO). The skip is decided on the
//! same TOML parse that `load_str` does, so every other input goes through whole.
#![no_main]

use std::net::SocketAddr;
use std::path::Path;

use libfuzzer_sys::fuzz_target;

/// Whether `load_str` would call getaddrinfo for this upstream (what std's `to_socket_addrs`
/// does for `host:port` that is not an IP literal).
fn needs_dns(upstream: &str) -> bool {
    upstream.parse::<SocketAddr>().is_err()
        && upstream
            .rsplit_once(':')
            .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
}

fn reaches_outside(text: &str) -> bool {
    let Ok(doc) = text.parse::<toml::Table>() else {
        return false; // load_str refuses it at the same parse
    };
    let Some(server) = doc.get("server").and_then(|s| s.as_table()) else {
        return false;
    };
    let dns = server
        .get("upstream")
        .and_then(|u| u.as_str())
        .is_some_and(needs_dns);
    let tls = server.contains_key("tls_cert") && server.contains_key("tls_key");
    dns || tls
}

fuzz_target!(|text: &str| {
    if reaches_outside(text) {
        return;
    }
    match termsgate::config::load_str(text, Path::new("fuzz.toml")) {
        Ok(cfg) => {
            let _ = cfg.summary();
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "multi-line config error: {msg:?}");
        }
    }
});
