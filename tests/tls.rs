//! End-to-end: HTTPS termination with a certificate made in the test (rcgen): TLS 1.2+ only,
//! and the certificate pair re-read on reload, a bad pair refused like any bad config.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

struct Pair {
    cert_pem: String,
    key_pem: String,
}

fn self_signed() -> Pair {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("rcgen");
    Pair {
        cert_pem: ck.cert.pem(),
        key_pem: ck.key_pair.serialize_pem(),
    }
}

fn write_pair(dir: &std::path::Path, pair: &Pair) {
    write_atomically(&dir.join("cert.pem"), &pair.cert_pem);
    write_atomically(&dir.join("key.pem"), &pair.key_pem);
}

fn https_client(pair: &Pair) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pair.cert_pem.as_bytes()).unwrap())
        .resolve("localhost", "127.0.0.1:0".parse().unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Offers one TLS version with `openssl s_client`; returns whether a session was set up.
fn openssl_handshake(port: u16, version_flag: &str) -> (bool, String) {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            version_flag,
            "-cipher",
            "DEFAULT:@SECLEVEL=0",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client (scripts/deps.sh installs openssl)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ok =
        out.status.success() && text.contains("Cipher is") && !text.contains("Cipher is (NONE)");
    (ok, text)
}

fn start_tls(up: &Upstream, dir: &tempfile::TempDir, pair: &Pair) -> Gateway {
    write_pair(dir.path(), pair);
    let (addr, d) = (up.addr, dir.path().to_path_buf());
    Gateway::start(move |p, a| {
        let extra = format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            d.join("cert.pem").display(),
            d.join("key.pem").display()
        );
        jettson_config(p, a, addr, &extra)
    })
}

#[tokio::test]
async fn https_works_and_tls_1_1_is_refused() {
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let pair = self_signed();
    let gw = start_tls(&up, &dir, &pair);
    let url = format!("https://localhost:{}/api/v1/agents", gw.port);
    let r = https_client(&pair)
        .get(&url)
        .bearer_auth(PRO)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().unwrap().header("x-api-key-id"), vec!["key_pro"]);

    let (ok12, text12) = openssl_handshake(gw.port, "-tls1_2");
    assert!(ok12, "TLS 1.2 should work: {text12}");
    let (ok11, text11) = openssl_handshake(gw.port, "-tls1_1");
    assert!(!ok11, "a TLS 1.1 handshake was accepted: {text11}");
}

#[tokio::test]
async fn a_reload_serves_a_new_certificate_and_refuses_a_bad_pair() {
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let first = self_signed();
    let gw = start_tls(&up, &dir, &first);
    let url = format!("https://localhost:{}/x", gw.port);
    assert_eq!(
        https_client(&first)
            .get(&url)
            .bearer_auth(PRO)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let second = self_signed();
    write_pair(dir.path(), &second);
    gw.signal("HUP");
    wait_for(|| reloads(&gw, "success") == 1.0, "reload did not succeed");
    assert_eq!(
        https_client(&second)
            .get(&url)
            .bearer_auth(PRO)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(
        https_client(&first)
            .get(&url)
            .bearer_auth(PRO)
            .send()
            .await
            .is_err(),
        "the old certificate is still served"
    );

    // A key that does not belong to the certificate: refused, the running pair stays.
    let third = self_signed();
    write_atomically(&dir.path().join("key.pem"), &third.key_pem);
    gw.signal("HUP");
    wait_for(|| reloads(&gw, "failure") == 1.0, "bad pair not refused");
    assert!(gw.stderr().contains("does not match"), "{}", gw.stderr());
    assert_eq!(
        https_client(&second)
            .get(&url)
            .bearer_auth(PRO)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}
