//! Writes the gateway's own answers, and stamps the headers every response carries.

use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use crate::context::RequestCtx;
use crate::error::GatewayError;
use crate::ratelimit_headers;

/// Adds `X-Request-Id` (replacing the upstream's) and, when limits matched, the RateLimit headers.
pub fn decorate(header: &mut ResponseHeader, ctx: &RequestCtx) -> pingora::Result<()> {
    header.insert_header("X-Request-Id", ctx.request_id.as_str())?;
    if let Some(limits) = &ctx.limits {
        ratelimit_headers::apply(header, limits, &ctx.statuses)?;
    }
    Ok(())
}

/// Answers the request with `err` in the API's envelope.
pub async fn send_error(
    session: &mut Session,
    ctx: &mut RequestCtx,
    err: GatewayError,
) -> pingora::Result<()> {
    let (mut header, body) = err.response()?;
    decorate(&mut header, ctx)?;
    if err.status() >= 500 || err.status() == 413 || err.status() == 431 {
        // The connection may hold an unread body or a broken upstream exchange: do not reuse it.
        session.set_keepalive(None);
    }
    ctx.error = Some(err);
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await
}
