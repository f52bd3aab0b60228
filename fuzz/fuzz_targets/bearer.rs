//! `termsgate::auth::parse_bearer` on arbitrary bytes (and `bearer_token` on the same bytes
//! as a header value).
//!
//! Never panics, and an `Ok` token is non-empty, valid UTF-8, free of ASCII whitespace and
//! control bytes, the tail of the (trimmed) input after a case-insensitive `Bearer` scheme,
//! and parses back to itself.
#![no_main]

use http::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use libfuzzer_sys::fuzz_target;
use termsgate::auth::{bearer_token, parse_bearer, AuthError};

fuzz_target!(|data: &[u8]| {
    let parsed = parse_bearer(data);
    match parsed {
        Ok(token) => {
            assert!(!token.is_empty(), "empty token accepted");
            assert!(
                std::str::from_utf8(token).is_ok(),
                "non-UTF-8 token accepted"
            );
            assert!(
                !token
                    .iter()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control()),
                "token with whitespace or a control byte accepted"
            );
            let trimmed = data.trim_ascii();
            assert!(
                trimmed.len() > 6 && trimmed[..6].eq_ignore_ascii_case(b"bearer"),
                "accepted without the Bearer scheme"
            );
            assert!(
                trimmed.ends_with(token),
                "token is not the tail of the value"
            );
            // The token must be borrowed from the input, never copied.
            let range = data.as_ptr_range();
            assert!(
                range.contains(&token.as_ptr()),
                "token not borrowed from the input"
            );
            // Round trip: the canonical form parses to the same token.
            let mut canonical = b"Bearer ".to_vec();
            canonical.extend_from_slice(token);
            assert_eq!(parse_bearer(&canonical), Ok(token));
        }
        Err(e) => assert_eq!(e, AuthError::Malformed, "parse_bearer only says Malformed"),
    }

    // Through a header map, as the proxy sees it: one header behaves exactly like
    // parse_bearer; two headers are always malformed; none is missing.
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut one = HeaderMap::new();
        one.insert(AUTHORIZATION, value.clone());
        assert_eq!(bearer_token(&one), parsed);
        let mut two = one.clone();
        two.append(AUTHORIZATION, value);
        assert_eq!(bearer_token(&two), Err(AuthError::Malformed));
    }
    assert_eq!(bearer_token(&HeaderMap::new()), Err(AuthError::Missing));
});
