//! Diagnostics on standard error through `tracing`, level from `RUST_LOG` (default `info`).
//!
//! Third-party crates (Pingora, h2, rustls, …) are capped at `info` whatever `RUST_LOG` says:
//! at `debug`/`trace` Pingora prints whole request headers, which would put bearer tokens and
//! query strings in the logs. Our own code never logs either, at any level.

use std::io::IsTerminal;

use tracing::Level;
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::prelude::*;

/// Installs the stderr subscriber. Safe to call once per process.
pub fn init() {
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let cap_third_party =
        filter_fn(|meta| meta.target().starts_with("termsgate") || *meta.level() <= Level::INFO);
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true)
        .with_filter(env)
        .with_filter(cap_third_party);
    let _ = tracing_subscriber::registry().with(layer).try_init();
    // The cap above only filters records after they are built. Pingora logs through `log`,
    // and every `debug!`/`trace!` of its request path would still be formatted and thrown
    // away (2% of CPU under load): tell `log` itself that nothing below info is wanted.
    log::set_max_level(log::LevelFilter::Info);
}
