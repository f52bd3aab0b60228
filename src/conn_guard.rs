//! Guards each client connection against slow and idle clients, and notes when each request's
//! first byte arrived.
//!
//! Pingora only bounds each single read of a request header (60 s), so a client that sends one
//! byte every 59 s holds a connection for ever, and it hands the proxy a request only once the
//! whole header is parsed. [`GuardedApp`] wraps every HTTP/1 connection in a [`GuardedStream`]
//! that keeps the connection's phase:
//!
//! - **idle**, from accept or from the end of the previous response: the connection is closed
//!   quietly once it has been idle for `server.idle_timeout_ms`;
//! - **header**, from the first byte of a request: the whole header must arrive within
//!   `server.header_timeout_ms` of that byte, or the connection is closed;
//! - **request**, from the moment the proxy has the header ([`begin_request`]) until the
//!   response is finished: no deadline here beyond Pingora's own read and write timeouts.
//!
//! Timeouts are read from the config in force when the connection is accepted.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::early_errors::EarlyErrors;
use crate::state::Shared;

/// Ends the error a header timeout returns; `diagnostics` recognises Pingora's echo of it.
pub(crate) const HEADER_TIMEOUT_MARK: &str = "(server.header_timeout_ms)";

const IDLE: u8 = 0;
const HEADER: u8 = 1;
const REQUEST: u8 = 2;

/// Instants as nanoseconds since a process-wide origin, so they fit in an atomic.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn now_nanos() -> u64 {
    u64::try_from(origin().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn instant_at(nanos: u64) -> Instant {
    origin() + Duration::from_nanos(nanos)
}

/// The two deadlines a connection lives under, and where their expiries are counted.
#[derive(Clone)]
pub(crate) struct Timeouts {
    /// From a request's first byte to its complete header.
    pub(crate) header: Duration,
    /// Idle before the first request and between requests.
    pub(crate) idle: Duration,
    /// Counts connections closed for a slow header.
    pub(crate) header_expired: IntCounter,
    /// Counts connections closed for idleness.
    pub(crate) idle_expired: IntCounter,
}

/// A client connection with a header deadline and an idle timeout.
pub(crate) struct GuardedStream {
    inner: Stream,
    timeouts: Timeouts,
    /// `IDLE`, `HEADER` or `REQUEST`. Written by reads and by the proxy.
    phase: AtomicU8,
    /// When the current phase began (for `HEADER`: the request's first byte).
    since: AtomicU64,
    /// Armed only when a read has to wait in a phase with a deadline.
    timer: Option<Pin<Box<Sleep>>>,
}

impl GuardedStream {
    /// Wraps a freshly accepted connection; it starts idle.
    pub(crate) fn new(inner: Stream, timeouts: Timeouts) -> Self {
        GuardedStream {
            inner,
            timeouts,
            phase: AtomicU8::new(IDLE),
            since: AtomicU64::new(now_nanos()),
            timer: None,
        }
    }

    fn enter(&self, phase: u8) {
        self.since.store(now_nanos(), Ordering::Relaxed);
        self.phase.store(phase, Ordering::Relaxed);
    }

    /// The header has been parsed: returns when its first byte arrived, and lifts the header
    /// deadline. `None` if no read started this request (defensive: Pingora 0.9 closes a
    /// connection whose buffer holds a pipelined request instead of serving it).
    fn begin_request(&self) -> Option<Instant> {
        let was = self.phase.swap(REQUEST, Ordering::Relaxed);
        (was == HEADER).then(|| instant_at(self.since.load(Ordering::Relaxed)))
    }

    /// When the current request's first byte arrived, if its header is still being read.
    fn first_byte(&self) -> Option<Instant> {
        (self.phase.load(Ordering::Relaxed) == HEADER)
            .then(|| instant_at(self.since.load(Ordering::Relaxed)))
    }

    /// Called on a read that found no data: waits for the phase's deadline alongside it.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let phase = self.phase.load(Ordering::Relaxed);
        let limit = match phase {
            IDLE => self.timeouts.idle,
            HEADER => self.timeouts.header,
            _ => return Poll::Pending,
        };
        let deadline =
            tokio::time::Instant::from_std(instant_at(self.since.load(Ordering::Relaxed)) + limit);
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        // The deadline moves later with every request. The timer is reset only when the
        // deadline comes earlier; a timer that fires early is re-armed. A busy connection
        // resets its timer about once per idle period instead of once per request
        // (docs/performance.md: ~550 instructions per request).
        if timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
        }
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            timer.as_mut().reset(deadline);
        }
        if phase == IDLE {
            // End of stream: Pingora closes a connection with no request on it quietly.
            self.timeouts.idle_expired.inc();
            return Poll::Ready(Ok(()));
        }
        self.timeouts.header_expired.inc();
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "request header incomplete after {} ms {HEADER_TIMEOUT_MARK}",
                self.timeouts.header.as_millis()
            ),
        )))
    }
}

impl fmt::Debug for GuardedStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedStream")
            .field("inner", &self.inner)
            .field("phase", &self.phase.load(Ordering::Relaxed))
            .finish()
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && this.phase.load(Ordering::Relaxed) == IDLE {
                    this.enter(HEADER);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_deadline(cx),
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedStream {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for GuardedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

fn guarded(stream: &Stream) -> Option<&GuardedStream> {
    (**stream).as_any().downcast_ref::<GuardedStream>()
}

/// Marks the request on `session` as having its header, lifting the header deadline. Returns
/// when the request's first byte arrived, when known.
pub(crate) fn begin_request(session: &pingora::proxy::Session) -> Option<Instant> {
    session.stream().and_then(guarded)?.begin_request()
}

/// When the request on `session` began arriving, if admission has not taken it yet (see
/// [`begin_request`]); changes nothing.
pub(crate) fn first_byte(session: &ServerSession) -> Option<Instant> {
    session.stream().and_then(guarded)?.first_byte()
}

/// Serves HTTP/1 connections through `inner` (the proxy), each wrapped in a [`GuardedStream`].
/// HTTP/2 connections (only possible if h2 is ever offered over ALPN; it is not today) go to
/// `inner` as they are, without these timeouts.
pub(crate) struct GuardedApp<A> {
    inner: Arc<A>,
    shared: Arc<Shared>,
    /// Answers what Pingora refuses before the proxy phases (set on every HTTP/1 session).
    early_errors: &'static EarlyErrors,
    header_expired: IntCounter,
    idle_expired: IntCounter,
}

impl<A> GuardedApp<A> {
    /// Wraps the proxy application.
    pub(crate) fn new(inner: A, shared: Arc<Shared>) -> Self {
        let expired = &shared.metrics.client_timeouts;
        GuardedApp {
            inner: Arc::new(inner),
            header_expired: expired.with_label_values(&["header"]),
            idle_expired: expired.with_label_values(&["idle"]),
            early_errors: EarlyErrors::new_static(shared.clone()),
            shared,
        }
    }

    fn timeouts(&self) -> Timeouts {
        let server = &self.shared.config.load().server;
        Timeouts {
            header: server.header_timeout,
            idle: server.idle_timeout,
            header_expired: self.header_expired.clone(),
            idle_expired: self.idle_expired.clone(),
        }
    }
}

#[async_trait]
impl<A> ServerApp for GuardedApp<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return ServerApp::process_new(&self.inner, stream, shutdown).await;
        }
        // The HTTP/1 loop of Pingora's own `ServerApp` for `HttpServerApp`, with the stream
        // wrapped and set idle between requests.
        let timeouts = self.timeouts();
        // Pingora's own per-read keep-alive timeout (60 s in its loop) stays just behind ours,
        // so the idle timeout is the one that fires and is counted.
        let keepalive_secs = timeouts.idle.as_secs() + 1;
        let stream: Stream = Box::new(GuardedStream::new(stream, timeouts));
        let mut session = ServerSession::new_http1(stream);
        session.set_error_responder(self.early_errors);
        let keepalive = (!*shutdown.borrow()).then_some(keepalive_secs);
        session.set_keepalive(keepalive);
        session.set_keepalive_reuses_remaining(
            self.inner
                .server_options()
                .and_then(|o| o.keepalive_request_limit),
        );
        let mut result = self.inner.process_new_http(session, shutdown).await;
        while let Some((stream, settings)) = result.map(|r| r.consume()) {
            if let Some(g) = guarded(&stream) {
                g.enter(IDLE);
            }
            let mut session = ServerSession::new_http1(stream);
            session.set_error_responder(self.early_errors);
            if let Some(settings) = settings {
                HttpPersistentSettings::apply_to_session(settings, &mut session);
            }
            result = self.inner.process_new_http(session, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await;
    }
}
