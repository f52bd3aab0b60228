//! Answers for the requests Pingora refuses before any proxy phase runs.
//!
//! `pingora-proxy` 0.9.1 reads and checks the request header itself, and answers on its own
//! when that fails: 400 for a header it cannot parse or that is over its limits (1 MiB, or 256
//! fields), 405 for `CONNECT`. Its answer is a bare status line. The patched `pingora-core`
//! (`vendor/README.md`, item 4) hands those answers to an [`ErrorResponder`]; this one gives
//! them what every other answer of the gateway has: the JSON envelope (`error`), an
//! `X-Request-Id`, an access log line and the request metrics (`telemetry`). A header over
//! Pingora's size limits is answered 431, like one over termsgate's own 32 KiB limit.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::protocols::http::server::ErrorResponder;
use pingora::protocols::http::ServerSession;

use crate::error::GatewayError;
use crate::header_map::X_REQUEST_ID;
use crate::state::Shared;
use crate::telemetry::{self, CLIENT_CLOSED};
use crate::{client_ip, request_id, respond};

/// Answers, logs and counts the requests Pingora refuses before the proxy phases.
pub struct EarlyErrors {
    shared: Arc<Shared>,
}

impl EarlyErrors {
    /// A responder for the life of the process: sessions hold it as `&'static`, which costs a
    /// request nothing (no reference count to touch).
    pub fn leak(shared: Arc<Shared>) -> &'static Self {
        Box::leak(Box::new(EarlyErrors { shared }))
    }
}

/// The gateway's answer in place of Pingora's `status`.
pub fn classify(status: u16, header_too_large: bool) -> GatewayError {
    match status {
        405 => GatewayError::MethodNotAllowed,
        400 if header_too_large => GatewayError::HeadersTooLarge,
        // Pingora 0.9.1 sends nothing else from where the responder is called.
        500.. => GatewayError::Internal,
        _ => GatewayError::BadRequest,
    }
}

#[async_trait]
impl ErrorResponder for EarlyErrors {
    async fn respond_error(&self, session: &mut ServerSession, status: u16) -> pingora::Result<()> {
        let err = classify(status, session.request_header_too_large());
        let req = session.req_header_if_read();
        let request_id = request_id::assign(req.and_then(|r| r.headers.get(&X_REQUEST_ID)));
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
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
            (500, false, 500, "internal_error"),
        ];
        for (status, too_large, want_status, want_code) in cases {
            let err = classify(status, too_large);
            assert_eq!(
                (err.status(), err.code()),
                (want_status, want_code),
                "{status}"
            );
        }
    }
}
