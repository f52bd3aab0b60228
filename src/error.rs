//! The one place where a gateway error becomes a status code, headers and a JSON envelope.
//!
//! Every response the gateway writes itself goes through [`GatewayError::response`], in the
//! API's envelope `{"error": {"code", "message", "details"}}` (Jettson error catalog).

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::{ErrorType, OrErr};
use serde_json::{json, Map, Value};

use crate::auth::AuthError;
use crate::config::window_label;

/// An error the gateway answers itself, without (or instead of) the upstream.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    /// 401: the request is not authenticated.
    #[error("invalid API key: {0}")]
    InvalidApiKey(AuthError),
    /// 429: this client IP failed authentication too often.
    #[error("too many invalid keys")]
    TooManyInvalidKeys {
        /// Seconds until the client IP may try again.
        retry_after_secs: u64,
    },
    /// 429: a limit of the key's plan is exhausted.
    #[error("rate limited by {}", .0.limit)]
    RateLimited(Box<RateLimitRefusal>),
    /// 400: the request could not be parsed.
    #[error("bad request")]
    BadRequest,
    /// 405: a method the gateway does not proxy (`CONNECT`).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 413: the body is larger than `max_body_bytes`.
    #[error("payload too large")]
    PayloadTooLarge,
    /// 431: the request headers are too large.
    #[error("request headers too large")]
    HeadersTooLarge,
    /// 503: the limiter backend failed and the policy is `deny`.
    #[error("limiter backend unavailable")]
    LimiterUnavailable,
    /// 503: the upstream refused the connection or could not be reached.
    #[error("upstream unavailable")]
    UpstreamUnavailable,
    /// 504: the upstream did not answer in time.
    #[error("upstream timeout")]
    UpstreamTimeout,
    /// 500: anything else.
    #[error("internal error")]
    Internal,
}

/// What a `rate_limited` answer reports in its `details`.
#[derive(Debug, Clone)]
pub struct RateLimitRefusal {
    /// The key's plan.
    pub plan: Arc<str>,
    /// The limit that refused.
    pub limit: Arc<str>,
    /// That limit's window.
    pub window_secs: u64,
    /// Whole seconds, at least 1.
    pub retry_after_secs: u64,
    /// `(window_secs, max)` of every limit that matched the request.
    pub matched: Vec<(u64, u32)>,
}

impl GatewayError {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::InvalidApiKey(_) => 401,
            GatewayError::TooManyInvalidKeys { .. } | GatewayError::RateLimited(_) => 429,
            GatewayError::BadRequest => 400,
            GatewayError::MethodNotAllowed => 405,
            GatewayError::PayloadTooLarge => 413,
            GatewayError::HeadersTooLarge => 431,
            GatewayError::LimiterUnavailable | GatewayError::UpstreamUnavailable => 503,
            GatewayError::UpstreamTimeout => 504,
            GatewayError::Internal => 500,
        }
    }

    /// The envelope's stable `code`.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::InvalidApiKey(_) => "invalid_api_key",
            GatewayError::TooManyInvalidKeys { .. } => "too_many_invalid_keys",
            GatewayError::RateLimited(_) => "rate_limited",
            GatewayError::BadRequest => "invalid_request",
            GatewayError::MethodNotAllowed => "method_not_allowed",
            GatewayError::PayloadTooLarge | GatewayError::HeadersTooLarge => "payload_too_large",
            GatewayError::LimiterUnavailable | GatewayError::UpstreamUnavailable => {
                "temporarily_unavailable"
            }
            GatewayError::UpstreamTimeout => "upstream_timeout",
            GatewayError::Internal => "internal_error",
        }
    }

    fn retry_after_secs(&self) -> Option<u64> {
        match self {
            GatewayError::TooManyInvalidKeys { retry_after_secs } => Some(*retry_after_secs),
            GatewayError::RateLimited(r) => Some(r.retry_after_secs),
            _ => None,
        }
    }

    fn message(&self) -> String {
        match self {
            GatewayError::InvalidApiKey(_) => "Missing, malformed, or revoked API key.".into(),
            GatewayError::TooManyInvalidKeys { retry_after_secs } => format!(
                "Too many requests with invalid API keys from this address. Try again in {retry_after_secs}s."
            ),
            GatewayError::RateLimited(r) => {
                format!("Too many requests. Try again in {}s.", r.retry_after_secs)
            }
            GatewayError::BadRequest => "The request could not be parsed.".into(),
            GatewayError::MethodNotAllowed => "This method is not supported.".into(),
            GatewayError::PayloadTooLarge => "Request body is too large.".into(),
            GatewayError::HeadersTooLarge => "Request headers are too large.".into(),
            GatewayError::LimiterUnavailable | GatewayError::UpstreamUnavailable => {
                "The service is temporarily unavailable. Retry with backoff.".into()
            }
            GatewayError::UpstreamTimeout => "The upstream did not answer in time.".into(),
            GatewayError::Internal => "Unexpected error.".into(),
        }
    }

    fn details(&self) -> Option<Value> {
        match self {
            GatewayError::RateLimited(r) => Some(r.details()),
            GatewayError::TooManyInvalidKeys { retry_after_secs } => {
                Some(json!({ "retryAfterSeconds": retry_after_secs }))
            }
            _ => None,
        }
    }

    /// The JSON envelope.
    pub fn body(&self) -> Bytes {
        let mut error = Map::new();
        error.insert("code".into(), Value::from(self.code()));
        error.insert("message".into(), Value::from(self.message()));
        if let Some(details) = self.details() {
            error.insert("details".into(), details);
        }
        Bytes::from(json!({ "error": error }).to_string())
    }

    /// Status line, headers and body of the answer.
    pub fn response(&self) -> pingora::Result<(ResponseHeader, Bytes)> {
        use http::header::{
            CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
        };
        let body = self.body();
        // Built as plain `http` parts, as `header_map` edits them: no case-preserving map to
        // fill, and `respond::decorate` would drop one anyway.
        let mut parts = http::Response::new(()).into_parts().0;
        parts.status = http::StatusCode::from_u16(self.status())
            .or_err(ErrorType::InternalError, "gateway error status")?;
        let headers = &mut parts.headers;
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if matches!(self, GatewayError::InvalidApiKey(_)) {
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after_secs() {
            headers.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        Ok((ResponseHeader::from(parts), body))
    }
}

impl RateLimitRefusal {
    fn details(&self) -> Value {
        let mut d = Map::new();
        d.insert("plan".into(), Value::from(&*self.plan));
        d.insert("limit".into(), Value::from(&*self.limit));
        d.insert("window".into(), Value::from(window_label(self.window_secs)));
        d.insert(
            "retryAfterSeconds".into(),
            Value::from(self.retry_after_secs),
        );
        for (window_secs, max) in &self.matched {
            let field = match window_secs {
                60 => "limitPerMinute",
                3_600 => "limitPerHour",
                86_400 => "limitPerDay",
                _ => continue,
            };
            // Two matched limits on the same window: the tighter one is the one that binds.
            let tighter = d
                .get(field)
                .and_then(Value::as_u64)
                .map_or(*max, |m| m.min(u64::from(*max)) as u32);
            d.insert(field.into(), Value::from(tighter));
        }
        Value::Object(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limited_has_the_full_envelope() {
        let err = GatewayError::RateLimited(Box::new(RateLimitRefusal {
            plan: Arc::from("free"),
            limit: Arc::from("spawns_per_minute"),
            window_secs: 60,
            retry_after_secs: 12,
            matched: vec![(60, 5), (3_600, 30)],
        }));
        let body: Value = serde_json::from_slice(&err.body()).expect("json");
        assert_eq!(
            body,
            json!({"error": {"code": "rate_limited", "message": "Too many requests. Try again in 12s.",
                "details": {"plan": "free", "limit": "spawns_per_minute", "window": "minute",
                    "retryAfterSeconds": 12, "limitPerMinute": 5, "limitPerHour": 30}}})
        );
        let (header, _) = err.response().expect("header");
        assert_eq!(header.status.as_u16(), 429);
        assert_eq!(
            header.headers.get("Retry-After").expect("retry-after"),
            "12"
        );
    }

    #[test]
    fn limit_per_window_reports_the_tighter_of_two_limits() {
        let err = GatewayError::RateLimited(Box::new(RateLimitRefusal {
            plan: Arc::from("p"),
            limit: Arc::from("spawns_per_minute"),
            window_secs: 60,
            retry_after_secs: 3,
            matched: vec![(60, 100), (60, 5), (86_400, 10_000)],
        }));
        let body: Value = serde_json::from_slice(&err.body()).expect("json");
        assert_eq!(body["error"]["details"]["limitPerMinute"], 5);
        assert_eq!(body["error"]["details"]["limitPerDay"], 10_000);
    }

    #[test]
    fn each_error_has_its_status_and_code() {
        let cases = [
            (
                GatewayError::InvalidApiKey(AuthError::Missing),
                401,
                "invalid_api_key",
            ),
            (
                GatewayError::UpstreamUnavailable,
                503,
                "temporarily_unavailable",
            ),
            (GatewayError::UpstreamTimeout, 504, "upstream_timeout"),
            (GatewayError::PayloadTooLarge, 413, "payload_too_large"),
            (GatewayError::HeadersTooLarge, 431, "payload_too_large"),
            (GatewayError::BadRequest, 400, "invalid_request"),
            (GatewayError::MethodNotAllowed, 405, "method_not_allowed"),
            (GatewayError::Internal, 500, "internal_error"),
        ];
        for (err, status, code) in cases {
            let (header, body) = err.response().expect("header");
            assert_eq!(header.status.as_u16(), status);
            assert_eq!(
                header.headers.get("Content-Type").expect("type"),
                "application/json"
            );
            let v: Value = serde_json::from_slice(&body).expect("json");
            assert_eq!(v["error"]["code"], code);
        }
        let (h, _) = GatewayError::InvalidApiKey(AuthError::UnknownKey)
            .response()
            .expect("h");
        assert_eq!(
            h.headers.get("WWW-Authenticate").expect("www-auth"),
            "Bearer"
        );
    }
}
