//! termsgate: an edge gateway on Pingora that enforces an HTTP API's terms of use: hashed
//! bearer keys, exact per-plan rolling-window limits, request ids, an access log without
//! secrets, Prometheus metrics and hot reload.
//!
//! A request's path: [`proxy`] → [`admission`] ([`request_id`], [`client_ip`], [`abuse`],
//! [`auth`], [`limiter`]) → [`upstream`] → [`respond`] → [`telemetry`] ([`access_log`],
//! [`metrics`]). Errors become responses in one place, [`error`].

pub mod abuse;
pub mod access_log;
pub mod admin;
pub mod admission;
pub mod auth;
pub mod client_ip;
pub mod config;
pub mod conn_guard;
pub mod context;
pub mod control;
pub mod demo;
pub mod diagnostics;
pub mod early_errors;
pub mod error;
pub mod header_bytes;
pub mod header_map;
pub mod keys;
pub mod limiter;
pub mod metrics;
pub mod own_listener;
pub mod proxy;
pub mod ratelimit_headers;
pub mod request_id;
pub mod request_stats;
pub mod respond;
pub mod server;
pub mod state;
pub mod sync;
pub mod telemetry;
pub mod tls;
pub mod upstream;
