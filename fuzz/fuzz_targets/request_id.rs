//! `termsgate::request_id::{is_valid, assign}` on arbitrary bytes (as a header value, for `assign`).
//!
//! `assign` always returns an id for which `is_valid` holds; a valid client id is returned
//! unchanged and uncopied; anything else is replaced by a fresh 32-hex-digit id. `is_valid` agrees with
//! `^[A-Za-z0-9._:-]{1,128}$`, written here independently over chars.
#![no_main]

use libfuzzer_sys::fuzz_target;
use termsgate::request_id::{assign, is_valid};

fn reference(id: &str) -> bool {
    let n = id.chars().count();
    (1..=128).contains(&n)
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_:".contains(c))
}

fn is_generated(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fuzz_target!(|data: &[u8]| {
    // Pingora only hands over values httparse accepted; `from_bytes` rejects the control bytes
    // httparse rejects too. The regex check below still sees every input.
    let kept = http::HeaderValue::from_bytes(data).ok();
    if let Ok(s) = std::str::from_utf8(data) {
        assert_eq!(
            is_valid(s),
            reference(s),
            "is_valid disagrees with the regex on {s:?}"
        );
    }
    if let Some(value) = kept {
        let id = assign(Some(&value));
        let id_str = id.as_str();
        assert!(is_valid(id_str), "assign returned an invalid id {id_str:?}");
        match std::str::from_utf8(data) {
            Ok(s) if is_valid(s) => {
                assert_eq!(id_str, s, "a valid client id was not kept");
                assert_eq!(
                    id.header().as_bytes().as_ptr(),
                    value.as_bytes().as_ptr(),
                    "a kept id was copied"
                );
            }
            _ => assert!(
                is_generated(id_str),
                "invalid input not replaced: {id_str:?}"
            ),
        }
    }
    assert!(is_generated(assign(None).as_str()));
});
