//! Decides whether a request may go upstream: request id, client IP, brute-force guard,
//! authentication, body size, then the plan's limits; an admitted request then gets the
//! headers the upstream sees. Each step is one module's call.

use std::time::Instant;

use pingora::proxy::Session;

use crate::auth;
use crate::client_ip;
use crate::conn_guard;
use crate::context::RequestCtx;
use crate::error::{GatewayError, RateLimitRefusal};
use crate::header_map::X_REQUEST_ID;
use crate::limiter::backend::Verdict;
use crate::limiter::{retry_after_secs, Decision};
use crate::request_id;
use crate::state::Shared;
use crate::upstream;

/// Runs every admission step; `Err` is the answer to send instead of proxying.
pub async fn admit(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), GatewayError> {
    ctx.started = Some(conn_guard::begin_request(session).unwrap_or_else(Instant::now));
    let req = session.req_header();
    ctx.request_id = request_id::assign(req.headers.get(&X_REQUEST_ID));
    let peer = client_ip::peer(session);
    ctx.client_ip = client_ip::resolve(peer, &req.headers, &ctx.config.server);
    ctx.route_mask = ctx.config.route_mask(&req.method, req.uri.path());

    if header_bytes(req) > MAX_HEADER_BYTES {
        return Err(GatewayError::HeadersTooLarge);
    }
    if let Some(retry_after_secs) = ctx.client_ip.and_then(|ip| shared.abuse.blocked(ip)) {
        shared.metrics.abuse_blocked.inc();
        return Err(GatewayError::TooManyInvalidKeys { retry_after_secs });
    }
    let key = auth::authenticate(&req.headers, &ctx.config).map_err(|e| {
        shared
            .metrics
            .auth_failures
            .with_label_values(&[e.reason()])
            .inc();
        if let Some(ip) = ctx.client_ip {
            shared
                .abuse
                .record_failure(ip, ctx.config.abuse.max_invalid_keys_per_minute);
        }
        GatewayError::InvalidApiKey(e)
    })?;
    ctx.key = Some(key.clone());

    check_body_size(req, ctx.config.server.max_body_bytes)?;
    if declares_unsized_body(&req.headers) && !session.is_body_empty() {
        // Boxed: the body read's state would otherwise make every request's future larger,
        // and that future is copied to the heap once per request.
        Box::pin(buffer_unsized_body(
            session,
            ctx.config.server.max_body_bytes,
        ))
        .await?;
    }
    apply_limits(shared, ctx, &key).await?;
    // Set now, not in `upstream_request_filter`: Pingora forwards a copy of the client's
    // request, and only the parsed original has room for the headers we add
    // (vendor/README.md, item 3).
    upstream::prepare_request(session.req_header_mut(), ctx)
        .map_err(|_| GatewayError::HeadersTooLarge)
}

/// Whether the headers announce a body without `Content-Length` (chunked). termsgate serves
/// HTTP/1 only, where a request with neither header has no body (RFC 9112 §6.3), and Pingora
/// drops `Content-Length` when both are present. Most requests are bodiless GETs: deciding from
/// the headers first saves asking Pingora (~400 instructions).
fn declares_unsized_body(headers: &http::HeaderMap) -> bool {
    !headers.contains_key(http::header::CONTENT_LENGTH)
        && headers.contains_key(http::header::TRANSFER_ENCODING)
}

/// Request line and headers larger than this get 431 (nginx's default buffers hold 8 KB; API
/// clients send far less). Pingora itself refuses headers of 1 MiB or more than 256 fields before
/// we see them; `early_errors` answers those with 431 too.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Size of the request line and headers as sent, near enough.
fn header_bytes(req: &pingora::http::RequestHeader) -> usize {
    let line = req.method.as_str().len() + req.raw_path().len() + 12;
    req.headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

/// Largest body without `Content-Length` the gateway holds back before proxying: Pingora's
/// body buffer, which then replays it to the upstream.
pub const MAX_UNSIZED_BODY_BYTES: u64 = 64 * 1024;

/// A body without `Content-Length` (chunked) is read whole before anything goes upstream, so
/// that one over the limit gets 413 without the upstream seeing a byte of it. Pingora replays
/// the buffered body to the upstream; its buffer holds 64 KiB, so larger unsized bodies are
/// refused too (send `Content-Length` for those).
async fn buffer_unsized_body(
    session: &mut Session,
    max_body_bytes: u64,
) -> Result<(), GatewayError> {
    let limit = max_body_bytes.min(MAX_UNSIZED_BODY_BYTES);
    session.enable_retry_buffering();
    let mut total: u64 = 0;
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                total += chunk.len() as u64;
                if total > limit {
                    return Err(GatewayError::PayloadTooLarge);
                }
            }
            Ok(None) => break,
            Err(_) => return Err(GatewayError::BadRequest),
        }
    }
    if session.retry_buffer_truncated() {
        return Err(GatewayError::PayloadTooLarge);
    }
    Ok(())
}

/// Counts body bytes as they stream to the upstream; past `max_body_bytes` the request fails
/// with 413 (a body with `Content-Length` or a buffered one never gets here over the limit).
pub fn count_body(ctx: &mut RequestCtx, chunk: Option<&bytes::Bytes>) -> pingora::Result<()> {
    ctx.body_bytes += chunk.map_or(0, |b| b.len() as u64);
    if ctx.body_bytes > ctx.config.server.max_body_bytes {
        return pingora::Error::e_explain(
            pingora::ErrorType::HTTPStatus(413),
            "request body over max_body_bytes",
        );
    }
    Ok(())
}

fn check_body_size(
    req: &pingora::http::RequestHeader,
    max_body_bytes: u64,
) -> Result<(), GatewayError> {
    let declared = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(len) if len > max_body_bytes => Err(GatewayError::PayloadTooLarge),
        _ => Ok(()),
    }
}

async fn apply_limits(
    shared: &Shared,
    ctx: &mut RequestCtx,
    key: &crate::config::ApiKey,
) -> Result<(), GatewayError> {
    let set = key.plan.limits_for(ctx.route_mask);
    if set.specs.is_empty() {
        return Ok(());
    }
    let limits = set.specs.clone();
    ctx.limits = Some(set);
    let verdict = shared
        .limiter
        .check(&key.id, &limits, &ctx.config.limiter)
        .await;
    match verdict {
        Verdict::Decided(Decision::Admitted { statuses }) => {
            ctx.statuses = statuses;
            Ok(())
        }
        Verdict::Decided(Decision::Refused {
            limit_index,
            retry_after_ms,
            statuses,
        }) => {
            ctx.statuses = statuses;
            let refusing = &limits[limit_index];
            ctx.limited = Some(refusing.name.clone());
            shared
                .metrics
                .rate_limited
                .with_label_values(&[&key.plan.name, &refusing.name])
                .inc();
            Err(GatewayError::RateLimited(Box::new(RateLimitRefusal {
                plan: key.plan.name.clone(),
                limit: refusing.name.clone(),
                window_secs: refusing.window_ms / 1000,
                retry_after_secs: retry_after_secs(retry_after_ms),
                matched: limits.iter().map(|l| (l.window_ms / 1000, l.max)).collect(),
            })))
        }
        Verdict::AdmittedUnchecked => {
            ctx.limits = None;
            Ok(())
        }
        Verdict::Unavailable => {
            ctx.limits = None;
            Err(GatewayError::LimiterUnavailable)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    http::HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn only_a_transfer_coded_body_without_length_counts_as_unsized() {
        assert!(!declares_unsized_body(&headers(&[])), "no framing: no body");
        assert!(!declares_unsized_body(&headers(&[(
            "content-length",
            "12"
        )])));
        assert!(declares_unsized_body(&headers(&[(
            "transfer-encoding",
            "chunked"
        )])));
        assert!(!declares_unsized_body(&headers(&[
            ("content-length", "0"),
            ("accept", "*/*")
        ])));
    }
}
