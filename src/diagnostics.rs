//! Diagnostics on standard error through `tracing`, level from `RUST_LOG` (default `info`).
//!
//! Third-party crates (Pingora, h2, rustls, …) are capped at `info` whatever `RUST_LOG` says:
//! at `debug`/`trace` Pingora prints whole request headers, which would put bearer tokens and
//! query strings in the logs. Our own code never logs either, at any level.

use std::io::IsTerminal;

use tracing::Level;
use tracing_log::LogTracer;
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
    let subscriber = tracing_subscriber::registry().with(layer);
    if tracing::subscriber::set_global_default(subscriber).is_ok() {
        // Pingora logs through `log`; its records reach the subscriber through this bridge.
        let _ = log::set_logger(Box::leak(Box::new(PingoraLog(LogTracer::new()))));
    }
    // The cap above only filters records after they are built. Pingora logs through `log`,
    // and every `debug!`/`trace!` of its request path would still be formatted and thrown
    // away (2% of CPU under load): tell `log` itself that nothing below info is wanted.
    log::set_max_level(log::LevelFilter::Info);
}

/// The `log` bridge, minus one line: Pingora logs every failed header read at ERROR, so each
/// client cut off by the header deadline (`conn_guard`) would cost a line on stderr, one per
/// connection of a slowloris attack. `termsgate_client_timeouts_total{kind="header"}` counts
/// them instead.
struct PingoraLog(LogTracer);

impl log::Log for PingoraLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !is_header_timeout_echo(record) {
            self.0.log(record);
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

/// Whether `record` is Pingora reporting a header read that `conn_guard` timed out. Only ERROR
/// records from Pingora are formatted to check, and those are rare.
fn is_header_timeout_echo(record: &log::Record<'_>) -> bool {
    record.level() == log::Level::Error
        && record.target().starts_with("pingora")
        && record
            .args()
            .to_string()
            .contains(crate::conn_guard::HEADER_TIMEOUT_MARK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_of(level: log::Level, target: &str, text: &str) -> bool {
        is_header_timeout_echo(
            &log::Record::builder()
                .level(level)
                .target(target)
                .args(format_args!("{text}"))
                .build(),
        )
    }

    #[test]
    fn only_pingoras_header_timeout_errors_are_dropped() {
        let echo = format!(
            "Fail to proxy: Downstream ReadError context: while reading request headers cause: request header incomplete after 300 ms {}",
            crate::conn_guard::HEADER_TIMEOUT_MARK
        );
        assert!(record_of(log::Level::Error, "pingora_proxy", &echo));
        assert!(!record_of(log::Level::Warn, "pingora_proxy", &echo));
        assert!(!record_of(log::Level::Error, "termsgate::upstream", &echo));
        assert!(!record_of(
            log::Level::Error,
            "pingora_proxy",
            "Fail to proxy: Upstream ConnectRefused"
        ));
    }
}
