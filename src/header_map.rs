//! Adding the gateway's headers to a request or response cheaply.
//!
//! Pingora's `insert_header` re-parses the name on every call, allocates a lower-case copy of a
//! non-standard one, keeps a second, case-preserving map in step, and grows both maps once the
//! headers parsed from the wire fill them: about 1,500 instructions per header, and termsgate
//! adds nine to every request (`docs/performance.md`). Here the header is edited as the plain
//! `http::HeaderMap` under it, with names built at compile time and room reserved once.
//!
//! Implementation notes: Pingora only hands out the map by value, through `http`'s `Parts`, and
//! `Parts` has no case-preserving map, so an edited message is written with lower-case names,
//! except the standard ones Pingora writes title-cased (`Content-Type`, `Content-Length`,
//! `Date`, `Server`, ...). Header names are case-insensitive (RFC 9110 §5.1), HTTP/2 requires
//! lower case, and Envoy forwards HTTP/1 headers in lower case too. What `Parts` cannot hold is
//! carried across: a non-standard reason phrase, a request-target the URI does not reproduce
//! (absolute-form, or not UTF-8), and the HTTP/2 end-of-stream flag.

use http::header::{HeaderMap, HeaderName};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::{ErrorType, OrErr};

/// `X-Request-Id`.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `X-Api-Key-Id`: the authenticated key's id, for the upstream.
pub const X_API_KEY_ID: HeaderName = HeaderName::from_static("x-api-key-id");
/// `X-Api-Plan`: the authenticated key's plan, for the upstream.
pub const X_API_PLAN: HeaderName = HeaderName::from_static("x-api-plan");
/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers).
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// `X-RateLimit-Limit`.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset`.
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Runs `edit` on the headers of `header`, with room for `additional` more reserved first.
pub fn edit_response<R>(
    header: &mut ResponseHeader,
    additional: usize,
    edit: impl FnOnce(&mut HeaderMap) -> R,
) -> pingora::Result<R> {
    let reason = header
        .get_reason_phrase()
        .filter(|reason| Some(*reason) != header.status.canonical_reason())
        .map(str::to_owned);
    let mut parts: http::response::Parts = std::mem::replace(header, empty_response()).into();
    // On failure the header still goes back, unedited apart from its case.
    let out = reserve(&mut parts.headers, additional).map(|()| edit(&mut parts.headers));
    *header = ResponseHeader::from(parts);
    if reason.is_some() {
        header.set_reason_phrase(reason.as_deref())?;
    }
    out
}

/// Runs `edit` on the headers of `header`, with room for `additional` more reserved first.
pub fn edit_request<R>(
    header: &mut RequestHeader,
    additional: usize,
    edit: impl FnOnce(&mut HeaderMap) -> R,
) -> pingora::Result<R> {
    // `Parts` keeps only the URI: keep a target it does not reproduce (absolute-form, or not
    // UTF-8). An authority-only URI (HTTP/2 CONNECT) would not survive, but Pingora answers
    // CONNECT with 405 unless `allow_connect_method_proxying` is set, and termsgate never sets it.
    let from_uri = header
        .uri
        .path_and_query()
        .map_or(&b"/"[..], |pq| pq.as_str().as_bytes());
    let raw_target = (header.raw_path() != from_uri).then(|| header.raw_path().to_vec());
    let end_stream = header.send_end_stream();
    let mut parts: http::request::Parts = std::mem::replace(header, empty_request()).into();
    // On failure the header still goes back, unedited apart from its case.
    let out = reserve(&mut parts.headers, additional).map(|()| edit(&mut parts.headers));
    *header = RequestHeader::from(parts);
    if let Some(target) = raw_target {
        header.set_raw_path(&target)?;
    }
    if let Some(end_stream) = end_stream {
        header.set_send_end_stream(end_stream);
    }
    out
}

fn reserve(headers: &mut HeaderMap, additional: usize) -> pingora::Result<()> {
    headers
        .try_reserve(additional)
        .or_err(ErrorType::InvalidHTTPHeader, "too many headers")
}

/// A placeholder while the real header is out being edited (allocates nothing).
fn empty_response() -> ResponseHeader {
    ResponseHeader::from(http::Response::new(()).into_parts().0)
}

/// A placeholder while the real header is out being edited (allocates nothing).
fn empty_request() -> RequestHeader {
    RequestHeader::from(http::Request::new(()).into_parts().0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(header: &ResponseHeader) -> String {
        let mut buf = Vec::new();
        header.header_to_h1_wire(&mut buf);
        String::from_utf8(buf).expect("utf8")
    }

    #[test]
    fn response_edits_keep_existing_headers_and_replace_ours() {
        let mut h = ResponseHeader::build(201, Some(2)).expect("header");
        h.append_header("Content-Type", "application/json")
            .expect("ct");
        h.append_header("X-Upstream", "a").expect("x");
        h.append_header("x-request-id", "from-upstream")
            .expect("id");
        edit_response(&mut h, 2, |m| {
            m.insert(X_REQUEST_ID, http::HeaderValue::from_static("ours"));
            m.insert(RATELIMIT, http::HeaderValue::from_static("\"x\";r=1;t=0"));
        })
        .expect("edit");
        assert_eq!(h.status, 201);
        assert_eq!(h.headers["content-type"], "application/json");
        assert_eq!(h.headers["x-upstream"], "a");
        assert_eq!(h.headers.get_all("x-request-id").iter().count(), 1);
        assert_eq!(h.headers["x-request-id"], "ours");
        let wire = wire(&h);
        assert!(
            wire.contains("Content-Type: application/json\r\n"),
            "{wire}"
        );
        assert!(wire.contains("x-request-id: ours\r\n"), "{wire}");
    }

    #[test]
    fn response_edits_keep_a_custom_reason_phrase() {
        let mut h = ResponseHeader::build(200, None).expect("header");
        h.set_reason_phrase(Some("Fine")).expect("reason");
        edit_response(&mut h, 1, |_| ()).expect("edit");
        assert_eq!(h.get_reason_phrase(), Some("Fine"));

        let mut h = ResponseHeader::build(404, None).expect("header");
        edit_response(&mut h, 1, |_| ()).expect("edit");
        assert_eq!(h.get_reason_phrase(), Some("Not Found"));
    }

    #[test]
    fn request_edits_keep_method_target_and_headers() {
        for target in [
            &b"/api/v1/agents?x=1"[..],
            b"/p\xffth",
            b"http://example.com/abs?q",
            b"*",
        ] {
            let mut h = RequestHeader::build("POST", target, Some(1)).expect("header");
            h.append_header("Host", "example.com").expect("host");
            h.append_header("X-Api-Plan", "spoofed").expect("plan");
            edit_request(&mut h, 3, |m| {
                m.insert(X_API_PLAN, http::HeaderValue::from_static("free"));
            })
            .expect("edit");
            assert_eq!(h.method, "POST");
            assert_eq!(h.raw_path(), target, "{}", String::from_utf8_lossy(target));
            assert_eq!(h.headers["host"], "example.com");
            assert_eq!(h.headers.get_all("x-api-plan").iter().count(), 1);
            assert_eq!(h.headers["x-api-plan"], "free");
        }
    }

    #[test]
    fn h2_end_of_stream_flag_survives() {
        let mut h = RequestHeader::build("GET", b"/", None).expect("header");
        h.set_version(http::Version::HTTP_2);
        h.set_send_end_stream(false);
        edit_request(&mut h, 1, |_| ()).expect("edit");
        assert_eq!(h.send_end_stream(), Some(false));
    }
}
