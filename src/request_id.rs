//! Request ids: keep a well-formed client id, otherwise mint a new one.

use bytes::BufMut;
use http::HeaderValue;

use crate::header_bytes;

/// Longest id kept from a client.
const MAX_LEN: usize = 128;

/// Whether `id` matches `^[A-Za-z0-9._:-]{1,128}$`.
pub fn is_valid(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A request's id, held as the header value it is sent in: the upstream request and the
/// response each get a clone, which copies no bytes. A generated id is cut from the worker's
/// buffer of per-request values (`header_bytes`), which allocates nothing for most requests.
#[derive(Clone, Debug)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The `X-Request-Id` value.
    pub fn header(&self) -> HeaderValue {
        self.0.clone()
    }

    /// The id as text (logs).
    pub fn as_str(&self) -> &str {
        // Only ids that passed `is_valid` (ASCII), hex digits and the empty default get here.
        std::str::from_utf8(self.0.as_bytes()).unwrap_or_default()
    }
}

impl Default for RequestId {
    /// Empty, until admission assigns the real id.
    fn default() -> Self {
        RequestId(HeaderValue::from_static(""))
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The id for a request: the client's own if it is valid, else a new random one. A kept id
/// shares the bytes of the request header it came in.
pub fn assign(client_id: Option<&HeaderValue>) -> RequestId {
    match client_id {
        Some(id) if std::str::from_utf8(id.as_bytes()).is_ok_and(is_valid) => RequestId(id.clone()),
        _ => generate(),
    }
}

/// A new id: 128 random bits as 32 hex characters (unique across instances, no coordination).
pub fn generate() -> RequestId {
    let bits: u128 = rand::random();
    let mut text = [0u8; 32];
    hex::encode_to_slice(bits.to_be_bytes(), &mut text)
        .expect("32 hex digits fill 32 bytes exactly");
    // Not `hex::encode`: it collects `char`s one at a time, a third of this module's cost.
    match header_bytes::build(text.len(), |buf| buf.put_slice(&text)) {
        Ok(value) => RequestId(value),
        // Unreachable: hex digits are valid header bytes.
        Err(_) => {
            debug_assert!(false, "hex digits rejected as a header value");
            RequestId::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assign_bytes(id: &[u8]) -> RequestId {
        assign(Some(&HeaderValue::from_bytes(id).expect("header value")))
    }

    #[test]
    fn valid_client_ids_are_kept() {
        for id in ["a", "client-id.42:a_b", &"x".repeat(128)] {
            let client = HeaderValue::from_bytes(id.as_bytes()).expect("header value");
            let got = assign(Some(&client));
            assert_eq!(got.as_str(), id);
            assert_eq!(got.header(), id);
            // Kept without a copy: the header shares the client's bytes.
            assert_eq!(got.header().as_bytes().as_ptr(), client.as_bytes().as_ptr());
        }
    }

    #[test]
    fn invalid_client_ids_are_replaced() {
        for id in [
            &b""[..],
            b"not valid <script>",
            "y".repeat(129).as_bytes(),
            b"caf\xc3\xa9",
            b"\xff",
        ] {
            let got = assign_bytes(id);
            assert_ne!(got.as_str().as_bytes(), id);
            assert!(is_valid(got.as_str()), "{got}");
            assert_eq!(got.header(), got.as_str());
        }
        assert!(is_valid(assign(None).as_str()));
    }

    #[test]
    fn generated_ids_are_unique_hex() {
        let ids: std::collections::HashSet<String> =
            (0..10_000).map(|_| generate().to_string()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids
            .iter()
            .all(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())));
    }
}
