//! Minting and hashing API keys for `termsgate key new` and `termsgate key hash`.

use rand::distributions::Alphanumeric;
use rand::Rng;

/// Every minted key starts with this, so a leaked key is recognisable (secret scanners).
pub const KEY_PREFIX: &str = "tg_live_";
/// 32 base-62 characters: about 190 bits of entropy.
const RANDOM_CHARS: usize = 32;

/// A new random token from the OS-seeded CSPRNG.
pub fn mint_token() -> String {
    let random: String = rand::rngs::OsRng
        .sample_iter(&Alphanumeric)
        .take(RANDOM_CHARS)
        .map(char::from)
        .collect();
    format!("{KEY_PREFIX}{random}")
}

/// Lowercase hex SHA-256 of a token, as the config stores it.
pub fn hash_hex(token: &str) -> String {
    hex::encode(crate::auth::hash_token(token.as_bytes()))
}

/// The `[[keys]]` block to paste into a config: only the hash, never the token.
pub fn toml_block(id: &str, plan: &str, token: &str) -> String {
    format!(
        "[[keys]]\nid = \"{id}\"\nsha256 = \"{}\"\nplan = \"{plan}\"\n",
        hash_hex(token)
    )
}

/// A fresh key id when none is given.
pub fn default_id() -> String {
    let random: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(10)
        .map(char::from)
        .collect();
    format!("key_{}", random.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_are_prefixed_random_and_hash_as_printed() {
        let a = mint_token();
        let b = mint_token();
        assert!(a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + RANDOM_CHARS);
        assert_ne!(a, b);
        assert!(toml_block("k", "free", &a).contains(&hash_hex(&a)));
        assert!(!toml_block("k", "free", &a).contains(&a));
    }
}
