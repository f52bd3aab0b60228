//! Bearer-token authentication: parse `Authorization`, hash the token, look the hash up.
//!
//! The token is only ever borrowed from the request header and hashed; it is never copied
//! into a `String`, logged, or put into an error. Errors carry only the reason.

use std::sync::Arc;

use http::header::{HeaderMap, AUTHORIZATION};
use sha2::{Digest, Sha256};

use crate::config::{ApiKey, Config, KeyHash};

/// Why a request was not authenticated. The variants are the metric's `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("missing Authorization header")]
    Missing,
    /// Several headers, another scheme, an empty or non-UTF-8 token.
    #[error("malformed Authorization header")]
    Malformed,
    /// A well-formed token whose hash matches no configured key.
    #[error("unknown API key")]
    UnknownKey,
}

impl AuthError {
    /// The `reason` label of `termsgate_auth_failures_total`.
    pub fn reason(self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::UnknownKey => "unknown_key",
        }
    }
}

/// Finds the configured key for a request's `Authorization` header.
pub fn authenticate(headers: &HeaderMap, config: &Config) -> Result<Arc<ApiKey>, AuthError> {
    let token = bearer_token(headers)?;
    config
        .keys
        .get(&hash_token(token))
        .cloned()
        .ok_or(AuthError::UnknownKey)
}

/// SHA-256 of a token, as stored in the config.
pub fn hash_token(token: &[u8]) -> KeyHash {
    Sha256::digest(token).into()
}

/// Extracts the token of exactly one `Authorization: Bearer <token>` header.
pub fn bearer_token(headers: &HeaderMap) -> Result<&[u8], AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthError::Missing)?;
    if values.next().is_some() {
        return Err(AuthError::Malformed);
    }
    parse_bearer(value.as_bytes())
}

/// Parses `Bearer <token>` (scheme case-insensitive, RFC 7235) into the token bytes.
pub fn parse_bearer(value: &[u8]) -> Result<&[u8], AuthError> {
    const SCHEME: &[u8] = b"bearer";
    let value = value.trim_ascii();
    if value.len() <= SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return Err(AuthError::Malformed);
    }
    let rest = &value[SCHEME.len()..];
    if !matches!(rest.first(), Some(b' ' | b'\t')) {
        return Err(AuthError::Malformed);
    }
    let token = rest.trim_ascii_start();
    let well_formed = !token.is_empty()
        && std::str::from_utf8(token).is_ok()
        && !token
            .iter()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control());
    if well_formed {
        Ok(token)
    } else {
        Err(AuthError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                AUTHORIZATION,
                HeaderValue::from_bytes(v).expect("header value"),
            );
        }
        h
    }

    #[test]
    fn the_scheme_is_case_insensitive() {
        for v in [
            &b"Bearer tok_1"[..],
            b"bearer tok_1",
            b"BEARER tok_1",
            b"bEaReR   tok_1 ",
        ] {
            assert_eq!(
                parse_bearer(v),
                Ok(&b"tok_1"[..]),
                "{:?}",
                String::from_utf8_lossy(v)
            );
        }
    }

    #[test]
    fn malformed_headers_are_refused() {
        for v in [
            &b"Basic dXNlcjpwYXNz"[..],
            b"Bearer",
            b"Bearer ",
            b"Bearertok",
            b"Bearer two tokens",
            b"Bearer \xff\xfe",
            b"",
            b"Token abc",
        ] {
            assert_eq!(
                parse_bearer(v),
                Err(AuthError::Malformed),
                "{:?}",
                String::from_utf8_lossy(v)
            );
        }
    }

    #[test]
    fn missing_and_repeated_headers_are_refused() {
        assert_eq!(bearer_token(&headers(&[])), Err(AuthError::Missing));
        assert_eq!(
            bearer_token(&headers(&[b"Bearer a", b"Bearer b"])),
            Err(AuthError::Malformed)
        );
        assert_eq!(bearer_token(&headers(&[b"Bearer a"])), Ok(&b"a"[..]));
    }

    #[test]
    fn the_hash_is_sha256_of_the_whole_token() {
        assert_eq!(
            hex::encode(hash_token(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn errors_never_carry_the_token() {
        let err = parse_bearer(b"Bearer secret_tok with space").expect_err("malformed");
        assert!(!format!("{err} {err:?}").contains("secret_tok"));
    }
}
