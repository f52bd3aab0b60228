//! Request ids: keep a well-formed client id, otherwise mint a new one.

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

/// The id for a request: the client's own if it is valid, else a new random one.
pub fn assign(client_id: Option<&[u8]>) -> String {
    match client_id.and_then(|v| std::str::from_utf8(v).ok()) {
        Some(id) if is_valid(id) => id.to_string(),
        _ => generate(),
    }
}

/// A new id: 128 random bits as 32 hex characters (unique across instances, no coordination).
pub fn generate() -> String {
    let bits: u128 = rand::random();
    let mut text = [0u8; 32];
    hex::encode_to_slice(bits.to_be_bytes(), &mut text)
        .expect("32 hex digits fill 32 bytes exactly");
    // Not `hex::encode`: it collects `char`s one at a time, a third of this module's cost.
    std::str::from_utf8(&text)
        .expect("hex digits are ASCII")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_client_ids_are_kept() {
        for id in ["a", "client-id.42:a_b", &"x".repeat(128)] {
            assert_eq!(assign(Some(id.as_bytes())), id);
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
            let got = assign(Some(id));
            assert_ne!(got.as_bytes(), id);
            assert!(is_valid(&got), "{got}");
        }
        assert!(is_valid(&assign(None)));
    }

    #[test]
    fn generated_ids_are_unique() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| generate()).collect();
        assert_eq!(ids.len(), 10_000);
    }
}
