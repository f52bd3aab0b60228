//! The Pingora `ProxyHttp` implementation. Each phase only delegates to one module:
//! admission (id, auth, limits), upstream (peer, headers, failures), respond (our answers and
//! response headers) and telemetry (log line, metrics).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, Result};

use crate::context::RequestCtx;
use crate::state::Shared;
use crate::{admission, respond, telemetry, upstream};

/// The gateway's proxy logic.
pub struct Gateway {
    shared: Arc<Shared>,
}

impl Gateway {
    /// A proxy over the shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Gateway { shared }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.shared.request_config(), self.shared.track_inflight())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        match admission::admit(&self.shared, session, ctx).await {
            Ok(()) => Ok(false),
            Err(err) => {
                // Boxed: only refusals need the writer's state in their future.
                Box::pin(respond::send_error(session, ctx, err)).await?;
                Ok(true)
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        admission::count_body(ctx, body.as_ref())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        Ok(upstream::peer(&ctx.config.server))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        _upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // The headers the upstream sees were set at admission.
        ctx.upstream_sent = Some(Instant::now());
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.upstream_ms = ctx
            .upstream_sent
            .map(|t| t.elapsed().as_secs_f64() * 1000.0);
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        respond::decorate(upstream_response, ctx)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        _ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // One upstream, one try: retrying a refused connection only delays the 503.
        e.set_retry(false);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let answer = upstream::on_failure(&self.shared.metrics, e, ctx);
        let already_answered = session.response_written().is_some();
        let code = match answer {
            Some(err) if !already_answered => {
                let status = err.status();
                match respond::send_error(session, ctx, err).await {
                    Ok(()) => status,
                    Err(_) => 0,
                }
            }
            _ => 0,
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        telemetry::record(&self.shared, session, ctx);
    }

    fn request_summary(&self, session: &Session, ctx: &RequestCtx) -> String {
        // Pingora's default summary includes the query string; ours never does.
        let req = session.req_header();
        format!(
            "{} {} request_id={}",
            req.method,
            req.uri.path(),
            ctx.request_id
        )
    }
}
