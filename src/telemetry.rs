//! The end of every request: one access log line and the request metrics.

use pingora::protocols::http::ServerSession;
use pingora::proxy::Session;

use std::cell::Cell;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use crate::access_log::AccessRecord;
use crate::conn_guard;
use crate::context::RequestCtx;
use crate::metrics::RequestLabels;
use crate::state::Shared;

/// Status logged when the client left before any answer was written (nginx's convention).
pub const CLIENT_CLOSED: u16 = 499;

/// Records a finished request in the access log and the metrics.
pub fn record(shared: &Shared, session: &Session, ctx: &RequestCtx) {
    let status = session
        .response_written()
        .map(|h| h.status.as_u16())
        .unwrap_or(CLIENT_CLOSED);
    let now = Instant::now();
    // Only a request that ended before admission has no start yet: its header's first byte, if
    // the connection guard saw it, else now. In Pingora 0.9.1 that takes a failing
    // `early_request_filter` (termsgate has none) or downstream module (the default compression
    // module's request filter cannot fail); the fallback keeps the line truthful if that changes.
    let started = ctx
        .started
        .or_else(|| conn_guard::first_byte(session))
        .unwrap_or(now);
    let latency = now.saturating_duration_since(started);
    let req = session.req_header();
    let route = ctx.config.route_label(ctx.route_mask);
    let plan = ctx.plan_name();

    let record = AccessRecord {
        ts: wall_clock(now),
        request_id: ctx.request_id.as_str(),
        client_ip: ctx.client_ip,
        method: Some(req.method.as_str()),
        path: Some(req.uri.path()),
        status,
        latency_ms: round_ms(latency.as_secs_f64() * 1000.0),
        key_id: ctx.key.as_ref().map(|k| &*k.id),
        plan,
        limited: ctx.limited.as_deref(),
        upstream_ms: ctx.upstream_ms.map(round_ms),
    };
    observe_and_log(shared, route, latency, &record);
}

/// Records a request Pingora refused before the proxy phases (`early_errors`): no key, no
/// route, not proxied. `status` is what was answered (or [`CLIENT_CLOSED`]). Method and path
/// are logged when the request line was parsed.
pub(crate) fn record_refused(
    shared: &Shared,
    session: &ServerSession,
    request_id: &str,
    client_ip: Option<IpAddr>,
    status: u16,
) {
    let now = Instant::now();
    let latency = conn_guard::first_byte(session)
        .map_or(Duration::ZERO, |first| now.saturating_duration_since(first));
    let req = session.req_header_if_read();
    let record = AccessRecord {
        ts: wall_clock(now),
        request_id,
        client_ip,
        method: req.map(|r| r.method.as_str()),
        path: req.map(|r| r.uri.path()),
        status,
        latency_ms: round_ms(latency.as_secs_f64() * 1000.0),
        key_id: None,
        plan: None,
        limited: None,
        upstream_ms: None,
    };
    observe_and_log(
        shared,
        shared.config.load().route_label(0),
        latency,
        &record,
    );
}

fn observe_and_log(shared: &Shared, route: &str, latency: Duration, record: &AccessRecord) {
    let labels = RequestLabels {
        plan: record.plan.unwrap_or("none"),
        route,
        status: status_label(record.status),
    };
    shared.metrics.observe_request(
        labels,
        latency.as_secs_f64(),
        record.upstream_ms.map(|ms| ms / 1000.0),
    );
    shared.access_log.log(record);
}

/// The wall-clock time at `now`, from a pair of readings of both clocks taken once a second per
/// thread: one clock read per request instead of two. A step of the wall clock shows within a
/// second; between readings the two clocks drift apart by far less than the millisecond logged.
fn wall_clock(now: Instant) -> SystemTime {
    thread_local! {
        static ANCHOR: Cell<Option<(Instant, SystemTime)>> = const { Cell::new(None) };
    }
    ANCHOR.with(|anchor| match anchor.get() {
        Some((at, wall)) if now >= at && now - at < Duration::from_secs(1) => wall + (now - at),
        _ => {
            let wall = SystemTime::now();
            anchor.set(Some((now, wall)));
            wall
        }
    })
}

/// Three decimals: microsecond resolution is plenty, and lines stay short.
fn round_ms(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// Status codes as static label strings, without allocating for the common ones.
fn status_label(status: u16) -> &'static str {
    const KNOWN: &[(u16, &str)] = &[
        (200, "200"),
        (201, "201"),
        (202, "202"),
        (204, "204"),
        (301, "301"),
        (302, "302"),
        (304, "304"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (405, "405"),
        (409, "409"),
        (413, "413"),
        (422, "422"),
        (429, "429"),
        (431, "431"),
        (499, "499"),
        (500, "500"),
        (502, "502"),
        (503, "503"),
        (504, "504"),
    ];
    KNOWN
        .iter()
        .find(|(code, _)| *code == status)
        .map(|(_, label)| *label)
        .unwrap_or_else(|| class_label(status))
}

/// Rare codes are folded into their class, keeping label cardinality bounded.
fn class_label(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gap(a: SystemTime, b: SystemTime) -> Duration {
        a.duration_since(b).unwrap_or_else(|e| e.duration())
    }

    #[test]
    fn the_wall_clock_follows_the_instant_it_is_asked_about() {
        let now = Instant::now();
        let wall = wall_clock(now);
        assert!(gap(wall, SystemTime::now()) < Duration::from_millis(50));
        // Within the anchor's second: the same offset as the instants.
        let later = now + Duration::from_millis(300);
        assert_eq!(wall_clock(later), wall + Duration::from_millis(300));
        // Past it, or before it: a fresh reading of the wall clock.
        let much_later = now + Duration::from_secs(5);
        assert!(gap(wall_clock(much_later), SystemTime::now()) < Duration::from_millis(50));
        assert!(gap(wall_clock(now), SystemTime::now()) < Duration::from_millis(50));
    }
}
