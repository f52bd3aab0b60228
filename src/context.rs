//! Per-request state carried through the proxy phases.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::config::{ApiKey, Config, LimitSet};
use crate::limiter::Statuses;
use crate::request_id::RequestId;
use crate::state::InflightGuard;

/// What one request has learnt so far. Holds the config snapshot it started with, so every
/// phase of the request sees the same config even if a reload happens meanwhile.
pub struct RequestCtx {
    /// When the request's first byte arrived (or, failing that, when admission began); set by
    /// admission, so that making a context reads no clock.
    pub started: Option<Instant>,
    /// The config snapshot for this request, loaded once.
    pub config: Arc<Config>,
    /// The request id (client's, if valid; else generated).
    pub request_id: RequestId,
    /// Client address, after `trusted_proxies`.
    pub client_ip: Option<IpAddr>,
    /// The authenticated key.
    pub key: Option<Arc<ApiKey>>,
    /// Routes the request matched (bit per route).
    pub route_mask: u64,
    /// Limits that matched, and their state after this request.
    pub limits: Option<LimitSet>,
    /// One status per matched limit.
    pub statuses: Statuses,
    /// Name of the limit that refused the request.
    pub limited: Option<Arc<str>>,
    /// When the request was handed to the upstream.
    pub upstream_sent: Option<Instant>,
    /// Time to the upstream's response header.
    pub upstream_ms: Option<f64>,
    /// Body bytes seen so far (for `max_body_bytes` on bodies without Content-Length).
    pub body_bytes: u64,
    /// Keeps the request counted as in flight.
    pub _inflight: InflightGuard,
}

impl RequestCtx {
    /// A fresh context on the current config.
    pub fn new(config: Arc<Config>, inflight: InflightGuard) -> Self {
        RequestCtx {
            started: None,
            config,
            request_id: RequestId::default(),
            client_ip: None,
            key: None,
            route_mask: 0,
            limits: None,
            statuses: Statuses::new(),
            limited: None,
            upstream_sent: None,
            upstream_ms: None,
            body_bytes: 0,
            _inflight: inflight,
        }
    }

    /// The plan name, for logs and labels.
    pub fn plan_name(&self) -> Option<&str> {
        self.key.as_ref().map(|k| &*k.plan.name)
    }
}
