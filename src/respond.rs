//! Writes the gateway's own answers, and stamps the headers every response carries.

use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::proxy::Session;
use pingora::{ErrorType, OrErr};

use crate::context::RequestCtx;
use crate::error::GatewayError;
use crate::header_map::{self, X_REQUEST_ID};
use crate::ratelimit_headers;
use crate::request_id::RequestId;

/// Adds `X-Request-Id` (replacing the upstream's) and, when limits matched, the RateLimit headers.
pub fn decorate(header: &mut ResponseHeader, ctx: &RequestCtx) -> pingora::Result<()> {
    let request_id = ctx.request_id.header();
    header_map::edit_response(header, 1 + ratelimit_headers::COUNT, |headers| {
        headers.insert(X_REQUEST_ID, request_id);
        match &ctx.limits {
            Some(limits) => ratelimit_headers::apply(headers, limits, &ctx.statuses),
            None => Ok(()),
        }
    })?
    .or_err(ErrorType::InvalidHTTPHeader, "invalid RateLimit header")
}

/// Answers the request with `err` in the API's envelope.
pub async fn send_error(
    session: &mut Session,
    ctx: &RequestCtx,
    err: GatewayError,
) -> pingora::Result<()> {
    let (mut header, body) = err.response()?;
    decorate(&mut header, ctx)?;
    if err.status() >= 500 || err.status() == 413 || err.status() == 431 {
        // The connection may hold an unread body or a broken upstream exchange: do not reuse it.
        session.set_keepalive(None);
    }
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await
}

/// Answers a request Pingora refused before the proxy phases (`early_errors`) with `err`,
/// carrying `request_id`. The connection is closed afterwards.
pub(crate) async fn send_refusal(
    session: &mut ServerSession,
    request_id: &RequestId,
    err: &GatewayError,
) -> pingora::Result<()> {
    let (mut header, body) = err.response()?;
    header_map::edit_response(&mut header, 1, |headers| {
        headers.insert(X_REQUEST_ID, request_id.header())
    })?;
    session.write_error_response(header, body).await
}
