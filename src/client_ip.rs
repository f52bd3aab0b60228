//! Which address a request comes from.
//!
//! The socket peer, unless the peer is a trusted proxy: then the right-most address of
//! `X-Forwarded-For` that is not itself a trusted proxy. A client can prepend anything it likes
//! to `X-Forwarded-For`, so only hops added by trusted proxies (on the right) are believed.

use std::net::IpAddr;

use http::HeaderMap;

use crate::config::ServerSettings;

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
