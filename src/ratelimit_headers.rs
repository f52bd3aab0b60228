//! The IETF RateLimit header fields (draft-ietf-httpapi-ratelimit-headers) and the common
//! `X-RateLimit-*` trio, on every response to a request that matched a limit.
//!
//! `r` is what is left after this request; `t` is the seconds until that limit has room for one
//! more (0 when it has room now), rounded up. The `X-RateLimit-*` trio describes the matching
//! limit with the least left, and `X-RateLimit-Reset` is that limit's `t`.

use bytes::{BufMut, BytesMut};
use http::header::InvalidHeaderValue;
use http::{HeaderMap, HeaderValue};

use crate::config::LimitSet;
use crate::header_bytes;
use crate::header_map::{
    RATELIMIT, RATELIMIT_POLICY, X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, X_RATELIMIT_RESET,
};
use crate::limiter::{retry_after_secs, LimitSpec, LimitStatus};

/// How many headers [`apply`] adds at most.
pub const COUNT: usize = 5;

/// Whole seconds until room, rounded up; 0 when there is room now.
fn wait_secs(status: &LimitStatus) -> u64 {
    if status.wait_ms == 0 {
        0
    } else {
        retry_after_secs(status.wait_ms)
    }
}

/// Appends `"name";k1=v1;k2=v2` to a list item by item (itoa, not `format!`: this runs on every
/// limited request).
fn push_item(out: &mut BytesMut, name: &str, (k1, v1): (&str, u64), (k2, v2): (&str, u64)) {
    if !out.is_empty() {
        out.put_slice(b", ");
    }
    let mut num = itoa::Buffer::new();
    out.put_u8(b'"');
    out.put_slice(name.as_bytes());
    out.put_slice(b"\";");
    out.put_slice(k1.as_bytes());
    out.put_u8(b'=');
    out.put_slice(num.format(v1).as_bytes());
    out.put_u8(b';');
    out.put_slice(k2.as_bytes());
    out.put_u8(b'=');
    out.put_slice(num.format(v2).as_bytes());
}

/// Longest item [`push_item`] writes for a limit named `name`, with its separator.
fn item_len(name: &str) -> usize {
    // `, "` + name + `";` + two keys of one letter, `=`, up to 20 digits, and one `;`.
    name.len() + 5 + 2 * 22 + 1
}

/// The `RateLimit-Policy` value for `limits`: it depends only on the config, so it is built
/// once per limit set (`config::LimitSet`) at load; only a request matching several routes at
/// once has its set built, and this called, per request.
pub fn policy(limits: &[LimitSpec]) -> HeaderValue {
    let mut policy = BytesMut::with_capacity(limits.iter().map(|s| item_len(&s.name)).sum());
    for spec in limits {
        let max = u64::from(spec.max);
        push_item(
            &mut policy,
            &spec.name,
            ("q", max),
            ("w", spec.window_ms / 1000),
        );
    }
    HeaderValue::from_maybe_shared(policy.freeze())
        .expect("limit names are printable ASCII without quotes (config validation)")
}

/// Adds the rate limit headers for `limits` and their `statuses` (one per limit, in order).
pub fn apply(
    headers: &mut HeaderMap,
    limits: &LimitSet,
    statuses: &[LimitStatus],
) -> Result<(), InvalidHeaderValue> {
    let specs = &limits.specs[..];
    if specs.is_empty() || specs.len() != statuses.len() {
        return Ok(());
    }
    let state_len = specs.iter().map(|spec| item_len(&spec.name)).sum();
    let state = header_bytes::build(state_len, |buf| {
        for (spec, status) in specs.iter().zip(statuses) {
            let remaining = u64::from(status.remaining);
            push_item(buf, &spec.name, ("r", remaining), ("t", wait_secs(status)));
        }
    })?;
    let tightest = specs
        .iter()
        .zip(statuses)
        .enumerate()
        .min_by_key(|(_, (spec, status))| {
            (status.remaining, u64::MAX - wait_secs(status), spec.max)
        });
    headers.insert(RATELIMIT_POLICY, limits.policy.clone());
    headers.insert(RATELIMIT, state);
    if let Some((i, (spec, status))) = tightest {
        let max = match limits.maxima.as_ref().and_then(|maxima| maxima.get(i)) {
            Some(max) => max.clone(),
            None => HeaderValue::from(spec.max),
        };
        headers.insert(X_RATELIMIT_LIMIT, max);
        headers.insert(
            X_RATELIMIT_REMAINING,
            header_bytes::number(status.remaining.into()),
        );
        headers.insert(X_RATELIMIT_RESET, seconds_value(wait_secs(status)));
    }
    Ok(())
}

/// A count of seconds as a header value; the common 0 is a constant.
fn seconds_value(secs: u64) -> HeaderValue {
    if secs == 0 {
        HeaderValue::from_static("0")
    } else {
        header_bytes::number(secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn spec(name: &str, max: u32, window_secs: u64) -> LimitSpec {
        LimitSpec {
            name: Arc::from(name),
            max,
            window_ms: window_secs * 1000,
        }
    }

    fn free_limits() -> [LimitSpec; 2] {
        [
            spec("spawns_per_minute", 5, 60),
            spec("spawns_per_hour", 30, 3600),
        ]
    }

    fn headers(limits: &LimitSet, statuses: [(u32, u64); 2]) -> HeaderMap {
        let statuses = statuses.map(|(remaining, wait_ms)| LimitStatus { remaining, wait_ms });
        let mut h = HeaderMap::new();
        apply(&mut h, limits, &statuses).expect("apply");
        h
    }

    /// Jettson's Free spawn limits, with the given state of each.
    fn free_spawns(statuses: [(u32, u64); 2]) -> HeaderMap {
        headers(&LimitSet::new(free_limits().into()), statuses)
    }

    #[test]
    fn headers_follow_the_draft() {
        let h = free_spawns([(0, 41_200), (25, 0)]);
        assert_eq!(h.len(), COUNT);
        let get = |n: &str| h.get(n).expect(n).to_str().expect("ascii").to_string();
        assert_eq!(
            get("RateLimit-Policy"),
            "\"spawns_per_minute\";q=5;w=60, \"spawns_per_hour\";q=30;w=3600"
        );
        assert_eq!(
            get("RateLimit"),
            "\"spawns_per_minute\";r=0;t=42, \"spawns_per_hour\";r=25;t=0"
        );
        assert_eq!(get("X-RateLimit-Limit"), "5");
        assert_eq!(get("X-RateLimit-Remaining"), "0");
        assert_eq!(get("X-RateLimit-Reset"), "42");
    }

    #[test]
    fn the_trio_describes_the_tightest_limit_wherever_it_is() {
        let h = free_spawns([(4, 0), (2, 0)]);
        assert_eq!(h["X-RateLimit-Limit"], "30");
        assert_eq!(h["X-RateLimit-Remaining"], "2");
        assert_eq!(h["X-RateLimit-Reset"], "0");
        assert_eq!(seconds_value(3600), "3600");
    }

    #[test]
    fn the_limit_value_is_the_one_built_at_load_or_made_for_one_request() {
        let at_load = LimitSet::new(free_limits().into());
        let h = headers(&at_load, [(4, 0), (2, 0)]);
        let built = &at_load.maxima.as_ref().expect("built at load")[1];
        assert_eq!(
            h["X-RateLimit-Limit"].as_bytes().as_ptr(),
            built.as_bytes().as_ptr()
        );

        let one_request = LimitSet::for_one_request(free_limits().into());
        assert!(one_request.maxima.is_none());
        let h = headers(&one_request, [(4, 0), (2, 0)]);
        assert_eq!(h["X-RateLimit-Limit"], "30");
        assert_eq!(h["RateLimit-Policy"], at_load.policy);
    }

    #[test]
    fn no_limits_no_headers() {
        let mut h = HeaderMap::new();
        apply(&mut h, &LimitSet::new(Arc::from([])), &[]).expect("apply");
        assert!(h.is_empty());
    }
}
