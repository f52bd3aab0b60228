//! Which address a request comes from.
//!
//! The socket peer, unless the peer is a trusted proxy: then the right-most address of
//! `X-Forwarded-For` that is not itself a trusted proxy. A client can prepend anything it likes
//! to `X-Forwarded-For`, so only hops added by trusted proxies (on the right) are believed.

use std::net::IpAddr;

use http::HeaderMap;
use pingora::protocols::http::ServerSession;

use crate::config::ServerSettings;

/// The address of the socket peer of `session` (none on a Unix socket).
pub fn peer(session: &ServerSession) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// The client address of a request whose socket peer is `peer`.
pub fn resolve(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    server: &ServerSettings,
) -> Option<IpAddr> {
    let peer = peer?;
    if server.trusted_proxies.is_empty() || !server.is_trusted_proxy(peer) {
        return Some(peer);
    }
    let mut client = peer;
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            // An unparsable hop: stop believing the chain here.
            break;
        };
        client = ip;
        if !server.is_trusted_proxy(ip) {
            break;
        }
    }
    Some(client)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn server(trusted: &str) -> ServerSettings {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:1\"\nupstream = \"127.0.0.1:2\"\ntrusted_proxies = [{trusted}]\n\n[admin]\nlisten = \"127.0.0.1:3\"\n"
        );
        crate::config::load_str(&text, Path::new("t.toml"))
            .expect("config")
            .server
    }

    fn xff(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", value.parse().expect("header"));
        h
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("ip"))
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client() {
        assert_eq!(
            resolve(ip("10.1.1.1"), &xff("1.2.3.4"), &server("")),
            ip("10.1.1.1")
        );
    }

    #[test]
    fn an_untrusted_peer_cannot_choose_its_ip() {
        let s = server("\"10.0.0.0/8\"");
        assert_eq!(
            resolve(ip("192.0.2.7"), &xff("1.2.3.4"), &s),
            ip("192.0.2.7")
        );
    }

    #[test]
    fn the_rightmost_untrusted_hop_counts() {
        let s = server("\"10.0.0.0/8\", \"192.168.1.1\"");
        // The client wrote "6.6.6.6" itself; the proxies appended the real hops on the right.
        let h = xff("6.6.6.6, 203.0.113.9, 10.2.3.4");
        assert_eq!(resolve(ip("192.168.1.1"), &h, &s), ip("203.0.113.9"));
        // Every hop trusted: the left-most one is the best we know.
        assert_eq!(
            resolve(ip("10.9.9.9"), &xff("10.1.1.1"), &s),
            ip("10.1.1.1")
        );
        // A garbled hop stops the walk at the last good address.
        assert_eq!(
            resolve(ip("10.9.9.9"), &xff("1.1.1.1, garbage"), &s),
            ip("10.9.9.9")
        );
    }
}
