//! Answers for the requests Pingora refuses before any proxy phase runs.
//!
//! `pingora-proxy` 0.9.1 reads and checks the request header itself, and answers on its own
//! when that fails: 400 for a header it cannot parse or that reaches its limits (1 MiB, or more
//! than 256 fields), 405 for `CONNECT`. Its answer is a bare status line. The patched `pingora-core`
//! (`vendor/README.md`, item 4) hands those answers to an [`ErrorResponder`]; this one gives
//! them what every other answer of the gateway has: the JSON envelope (`error`), an
//! `X-Request-Id`, an access log line and the request metrics (`telemetry`). A header over
//! Pingora's size limits is answered 431, like one over termsgate's own 32 KiB limit.
//!
//! Only those refusals are taken over. Pingora's `respond_error` has other callers (a
//! `ProxyHttp` default, the cache); if one of them ever reaches here, or an answer is already
//! on its way, Pingora's own answer goes out, as without the hook: the request is then inside
//! the proxy phases, whose `logging` phase logs it.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::protocols::http::server::ErrorResponder;
use pingora::protocols::http::ServerSession;

use crate::error::GatewayError;
use crate::header_map::X_REQUEST_ID;
use crate::state::Shared;
use crate::telemetry::{self, CLIENT_CLOSED};
use crate::{client_ip, request_id, respond};

/// Answers, logs and counts the requests Pingora refuses before the proxy phases.
pub(crate) struct EarlyErrors {
    shared: Arc<Shared>,
}

impl EarlyErrors {
    /// A responder for the life of the process: sessions hold it as `&'static`, which costs a
    /// request nothing to hand out (no reference count to touch).
    pub(crate) fn new_static(shared: Arc<Shared>) -> &'static Self {
        Box::leak(Box::new(EarlyErrors { shared }))
    }
}

/// The gateway's answer in place of Pingora's `status`, for the two refusals Pingora's proxy
/// makes before its phases; `None` for any other status.
pub(crate) fn classify(status: u16, header_too_large: bool) -> Option<GatewayError> {
    match status {
        400 if header_too_large => Some(GatewayError::HeadersTooLarge),
        400 => Some(GatewayError::BadRequest),
        405 => Some(GatewayError::MethodNotAllowed),
        _ => None,
    }
}

#[async_trait]
impl ErrorResponder for EarlyErrors {
    async fn respond_error(&self, session: &mut ServerSession, status: u16) -> pingora::Result<()> {
        let refusal = classify(status, session.request_header_too_large())
            .filter(|_| session.response_written().is_none());
        let Some(err) = refusal else {
            // Pingora's own answer, as without the hook (it does not call the responder).
            return session.respond_error_with_body(status, Bytes::new()).await;
        };
        let req = session.req_header_if_read();
        let request_id = request_id::assign(req.and_then(|r| r.headers.get(&X_REQUEST_ID)));
        let peer = client_ip::peer(session);
        let client_ip = match req {
            Some(req) => client_ip::resolve(peer, &req.headers, &self.shared.config.load().server),
            None => peer,
        };
        let sent = respond::send_refusal(session, &request_id, &err).await;
        let answered = if sent.is_ok() {
            err.status()
        } else {
            CLIENT_CLOSED
        };
        telemetry::record_refused(
            &self.shared,
            session,
            request_id.as_str(),
            client_ip,
            answered,
        );
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_of_pingora_gets_the_gateway_error_for_it() {
        let cases = [
            (400, false, 400, "invalid_request"),
            (400, true, 431, "payload_too_large"),
            (405, false, 405, "method_not_allowed"),
        ];
        for (status, too_large, want_status, want_code) in cases {
            let err = classify(status, too_large).expect("taken over");
            assert_eq!(
                (err.status(), err.code()),
                (want_status, want_code),
                "{status}"
            );
        }
    }

    #[test]
    fn other_statuses_are_left_to_pingora() {
        for status in [403, 404, 500, 502, 503] {
            assert!(classify(status, false).is_none(), "{status}");
        }
    }
}
