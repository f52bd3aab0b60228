//! `termsgate::request_id::{is_valid, assign}` on arbitrary bytes.
//!
//! `assign` always returns an id for which `is_valid` holds; a valid client id is returned
//! unchanged; anything else is replaced by a fresh 32-hex-digit id. `is_valid` agrees with
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
    let id = assign(Some(data));
    assert!(is_valid(&id), "assign returned an invalid id {id:?}");
    match std::str::from_utf8(data) {
        Ok(s) => {
            let valid = is_valid(s);
            assert_eq!(
                valid,
                reference(s),
                "is_valid disagrees with the regex on {s:?}"
            );
            if valid {
                assert_eq!(id, s, "a valid client id was not kept");
            } else {
                assert!(is_generated(&id), "invalid input not replaced: {id:?}");
            }
        }
        Err(_) => assert!(is_generated(&id), "non-UTF-8 input not replaced: {id:?}"),
    }
    assert!(is_generated(&assign(None)));
});
