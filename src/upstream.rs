//! The way to the upstream: the peer for a request, the headers it receives, and what a
//! failure on the way means for the client.

use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONNECTION};
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};

use crate::config::ServerSettings;
use crate::context::RequestCtx;
use crate::error::GatewayError;
use crate::header_map::{self, X_API_KEY_ID, X_API_PLAN, X_REQUEST_ID};

/// The upstream peer, with the current config's address and timeouts.
pub fn peer(server: &ServerSettings) -> Box<HttpPeer> {
    // SNI means something only over TLS; an empty one costs no allocation per request.
    let sni = if server.upstream_tls {
        server.upstream_sni.clone()
    } else {
        String::new()
    };
    let mut peer = HttpPeer::new(server.upstream_addr, server.upstream_tls, sni);
    let timeout = Some(server.upstream_timeout);
    peer.options.connection_timeout = timeout;
    peer.options.total_connection_timeout = timeout;
    peer.options.read_timeout = timeout;
    peer.options.write_timeout = timeout;
    peer.group_key = worker_pool_key();
    // No idle_timeout: an idle pooled connection is closed when the upstream closes it (the
    // pool's watcher sees the end of stream). Before vendor/pingora-core's patch, an idle
    // timeout made Pingora's pool fail to take connections back under load.
    Box::new(peer)
}

/// The keep-alive pool group of this worker thread (`HttpPeer::group_key`): each worker reuses
/// only the upstream connections it opened, which its own I/O driver watches, so no request
/// waits on a wake-up from another thread (vendor/README.md). The benchmark's bare
/// pass-through uses it too.
pub fn worker_pool_key() -> u64 {
    thread_local! {
        static KEY: u64 = {
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        };
    }
    KEY.with(|k| *k)
}

/// Sets the identity and request id headers the upstream sees; the client's copies go first.
pub fn prepare_request(req: &mut RequestHeader, ctx: &RequestCtx) -> pingora::Result<()> {
    let request_id = ctx.request_id.header();
    let identity = ctx
        .key
        .as_ref()
        .map(|key| (key.header.clone(), key.plan.header.clone()));
    let strip_authorization = ctx.config.server.strip_authorization;
    header_map::edit_request(req, 3, |headers| {
        if strip_authorization {
            headers.remove(AUTHORIZATION);
        }
        for name in lookalikes(headers) {
            headers.remove(name);
        }
        keep_ours_end_to_end(headers);
        // `insert` replaces every copy the client sent.
        headers.insert(X_REQUEST_ID, request_id);
        match identity {
            Some((key_id, plan)) => {
                headers.insert(X_API_KEY_ID, key_id);
                headers.insert(X_API_PLAN, plan);
            }
            None => {
                headers.remove(X_API_KEY_ID);
                headers.remove(X_API_PLAN);
            }
        }
    })
}

/// The gateway's own headers, as the upstream receives them.
const IDENTITY: [HeaderName; 3] = [X_REQUEST_ID, X_API_KEY_ID, X_API_PLAN];

/// Takes the gateway's identity headers out of the client's `Connection` list. Pingora drops
/// from the request it forwards every header named there (hop-by-hop), and these headers are
/// set before that happens: a client could otherwise keep them from the upstream.
fn keep_ours_end_to_end(headers: &mut HeaderMap) {
    if !nominations(headers).any(is_ours) {
        return;
    }
    let kept = nominations(headers)
        .filter(|token| !is_ours(token))
        .collect::<Vec<_>>()
        .join(&b", "[..]);
    match HeaderValue::from_bytes(&kept) {
        Ok(value) if !kept.is_empty() => {
            headers.insert(CONNECTION, value);
        }
        _ => {
            headers.remove(CONNECTION);
        }
    }
}

/// The header names the request's `Connection` headers list.
fn nominations(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
}

fn is_ours(name: &[u8]) -> bool {
    IDENTITY
        .iter()
        .any(|ours| name.eq_ignore_ascii_case(ours.as_str().as_bytes()))
}

/// Client headers that would pass for the gateway's identity headers at an upstream that
/// treats `_` as `-` (CGI, WSGI and Rack turn both `X_Api_Plan` and `X-Api-Plan` into
/// `HTTP_X_API_PLAN`). nginx drops such headers by default for the same reason.
fn lookalikes(headers: &HeaderMap) -> Vec<HeaderName> {
    let passes_for = |name: &HeaderName, ours: &HeaderName| {
        name.as_str().len() == ours.as_str().len()
            && name
                .as_str()
                .bytes()
                .zip(ours.as_str().bytes())
                .all(|(a, b)| a == b || (a == b'_' && b == b'-'))
    };
    headers
        .keys()
        .filter(|name| name.as_str().contains('_'))
        .filter(|name| IDENTITY.iter().any(|ours| passes_for(name, ours)))
        .cloned()
        .collect()
}

/// Records a proxying failure (metric and a diagnostic line without secrets) and returns the
/// answer for the client, if there is one to give.
pub fn on_failure(
    metrics: &crate::metrics::Metrics,
    e: &Error,
    ctx: &RequestCtx,
) -> Option<GatewayError> {
    let (answer, upstream_kind) = classify(e);
    if let Some(kind) = upstream_kind {
        metrics.upstream_errors.with_label_values(&[kind]).inc();
        tracing::warn!(request_id = %ctx.request_id, error = ?e.etype(), "upstream error: {kind}");
    }
    answer
}

/// What a proxying failure means: the answer for the client (if it is still there) and the
/// `kind` label of `termsgate_upstream_errors_total` (if the upstream was at fault).
pub fn classify(e: &Error) -> (Option<GatewayError>, Option<&'static str>) {
    use ErrorType::*;
    match e.etype() {
        HTTPStatus(413) => (Some(GatewayError::PayloadTooLarge), None),
        HTTPStatus(431) => (Some(GatewayError::HeadersTooLarge), None),
        ConnectTimedout | TLSHandshakeTimedout => {
            (Some(GatewayError::UpstreamTimeout), Some("timeout"))
        }
        ConnectRefused | ConnectNoRoute | ConnectError | TLSHandshakeFailure | InvalidCert
        | HandshakeError | SocketError | BindError | ConnectProxyFailure => {
            (Some(GatewayError::UpstreamUnavailable), Some("connect"))
        }
        ReadTimedout | WriteTimedout if e.esource() == &ErrorSource::Upstream => {
            (Some(GatewayError::UpstreamTimeout), Some("timeout"))
        }
        _ => match e.esource() {
            // The client went away: nobody to answer, nothing upstream's fault.
            ErrorSource::Downstream
                if matches!(
                    e.etype(),
                    ReadError | WriteError | ConnectionClosed | ReadTimedout | WriteTimedout
                ) =>
            {
                (None, None)
            }
            ErrorSource::Downstream => (Some(GatewayError::BadRequest), None),
            ErrorSource::Upstream => (Some(GatewayError::Internal), Some("other")),
            _ => (Some(GatewayError::Internal), None),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(CONNECTION, HeaderValue::from_str(v).expect("value"));
        }
        keep_ours_end_to_end(&mut headers);
        headers
    }

    #[test]
    fn only_our_names_leave_the_connection_list() {
        let h = connection(&[
            "keep-alive, X-Api-Key-Id ,x-api-plan",
            "X-REQUEST-ID, X-Other",
        ]);
        assert_eq!(
            h.get_all(CONNECTION).iter().collect::<Vec<_>>(),
            ["keep-alive, X-Other"]
        );
        assert!(connection(&["x-request-id", " , X-Api-Plan"])
            .get(CONNECTION)
            .is_none());
        // Without our names the header is left exactly as it came.
        let h = connection(&["keep-alive", "Upgrade,  ,x-other"]);
        assert_eq!(
            h.get_all(CONNECTION).iter().collect::<Vec<_>>(),
            ["keep-alive", "Upgrade,  ,x-other"]
        );
    }

    #[test]
    fn each_worker_thread_has_its_own_pool_group() {
        let here = worker_pool_key();
        assert_eq!(worker_pool_key(), here, "stable within a thread");
        let there = std::thread::spawn(worker_pool_key).join().unwrap();
        assert_ne!(there, here);
    }
}
