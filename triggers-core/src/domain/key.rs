//! API keys: random secrets of which only a SHA-256 hash is stored.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Every API key starts with this prefix, so leaked keys are easy to recognise.
pub const API_KEY_PREFIX: &str = "trg_";

/// An API key in clear text. It is shown to the user once and never stored or logged
/// (`Debug` prints only the prefix).
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// A new key: `trg_` followed by 32 random bytes (256 bits) in URL-safe base64.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(format!("{API_KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// The key text, to hand to the user.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The hash that is stored in place of the key.
    pub fn hash(&self) -> KeyHash {
        KeyHash::of(&self.0)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({API_KEY_PREFIX}…)")
    }
}

/// SHA-256 of an API key. A key has at least 256 bits of entropy, so a plain hash is enough:
/// the stored value cannot be reversed or brute-forced.
#[derive(Clone, Copy)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    /// The hash of `key` as presented by a client.
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The hash in lowercase hex.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl PartialEq for KeyHash {
    /// Constant-time comparison, so comparing hashes leaks nothing through timing.
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for KeyHash {}

impl std::hash::Hash for KeyHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({}…)", &self.to_hex()[..8])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_random_and_hash_stably() {
        let a = ApiKey::generate();
        let b = ApiKey::generate();
        assert!(a.expose().starts_with(API_KEY_PREFIX));
        assert!(a.expose().len() >= API_KEY_PREFIX.len() + 43);
        assert_ne!(a, b);
        assert_eq!(a.hash(), KeyHash::of(a.expose()));
        assert_ne!(a.hash(), b.hash());
        assert!(!format!("{a:?}").contains(&a.expose()[4..]));
    }
}
