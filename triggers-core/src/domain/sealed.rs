//! Webhook signing secrets encrypted at rest.
//!
//! A [`SecretCipher`] seals a secret with XChaCha20-Poly1305 (RustCrypto `chacha20poly1305`;
//! a random 24-byte nonce per seal, so nonces never repeat in practice) under the current
//! [`SecretKey`]. The endpoint's id is the associated data: a sealed secret copied onto
//! another endpoint does not open. The stored text is
//! `tsec1:<key id>:<base64(nonce ‖ ciphertext ‖ tag)>`; the key id (8 hex digits of a SHA-256
//! of the key) says which key opens it, so the key can be rotated: a cipher built with the
//! previous key as `old` still opens what it sealed, and [`SecretCipher::reseal`] moves a
//! secret to the current key. Stores keep sealed secrets as opaque text.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::webhook::{Secret, SEALED_PREFIX};
use super::EndpointId;

/// Why a key or a sealed secret cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CipherError {
    /// The key is not base64 of exactly 32 bytes.
    #[error("a secret key is the base64 of 32 random bytes")]
    InvalidKey,
    /// The secret was sealed under a key this cipher does not have.
    #[error("the secret was sealed with key {0}, which is not configured")]
    UnknownKey(String),
    /// The sealed text is malformed or fails authentication (tampered, or another endpoint's).
    #[error("the sealed secret is damaged or belongs to another endpoint")]
    Damaged,
    /// The secret is sealed and no cipher is configured.
    #[error("the secret is sealed and no secret key is configured")]
    NoKey,
}

/// A 32-byte key for sealing webhook secrets. `Debug` shows only its id.
#[derive(Clone)]
pub struct SecretKey {
    cipher: XChaCha20Poly1305,
    id: String,
}

impl SecretKey {
    /// Parses the base64 (standard alphabet, padded or not) of exactly 32 bytes.
    pub fn from_base64(text: &str) -> Result<Self, CipherError> {
        let text = text.trim();
        let bytes = STANDARD
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
            .map_err(|_| CipherError::InvalidKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| CipherError::InvalidKey)?;
        let digest =
            Sha256::new().chain_update(b"triggers secret key id\0").chain_update(key).finalize();
        let id = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self { cipher: XChaCha20Poly1305::new(&key.into()), id })
    }

    /// A new random key (for tests and key generation).
    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        // Cannot fail: 32 bytes.
        Self::from_base64(&STANDARD.encode(key)).unwrap_or_else(|_| unreachable!())
    }

    /// The key id stored with each ciphertext (8 hex digits).
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({})", self.id)
    }
}

/// Seals and opens webhook signing secrets (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct SecretCipher {
    current: SecretKey,
    old: Option<SecretKey>,
}

impl SecretCipher {
    /// Seals with `current`; opens what `current` or `old` sealed.
    pub fn new(current: SecretKey, old: Option<SecretKey>) -> Self {
        Self { current, old }
    }

    /// The current key's id.
    pub fn key_id(&self) -> &str {
        self.current.id()
    }

    /// `secret` sealed for `endpoint` under the current key. A sealed secret is returned as is.
    pub fn seal(&self, endpoint: EndpointId, secret: &Secret) -> Secret {
        if secret.is_sealed() {
            return secret.clone();
        }
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let payload = Payload { msg: secret.expose().as_bytes(), aad: endpoint.0.as_bytes() };
        // Encryption of a short message cannot fail.
        let sealed =
            self.current.cipher.encrypt(XNonce::from_slice(&nonce), payload).unwrap_or_default();
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&sealed);
        Secret::from_sealed(format!("{SEALED_PREFIX}{}:{}", self.current.id, STANDARD.encode(blob)))
    }

    /// The plaintext of `secret` (a plaintext secret is returned as is).
    pub fn open(&self, endpoint: EndpointId, secret: &Secret) -> Result<Secret, CipherError> {
        let Some(rest) = secret.expose().strip_prefix(SEALED_PREFIX) else {
            return Ok(secret.clone());
        };
        let (id, blob) = rest.split_once(':').ok_or(CipherError::Damaged)?;
        let key = [Some(&self.current), self.old.as_ref()]
            .into_iter()
            .flatten()
            .find(|k| k.id == id)
            .ok_or_else(|| CipherError::UnknownKey(id.to_owned()))?;
        let blob = STANDARD.decode(blob).map_err(|_| CipherError::Damaged)?;
        if blob.len() < 24 {
            return Err(CipherError::Damaged);
        }
        let (nonce, sealed) = blob.split_at(24);
        let payload = Payload { msg: sealed, aad: endpoint.0.as_bytes() };
        let plain = key
            .cipher
            .decrypt(XNonce::from_slice(nonce), payload)
            .map_err(|_| CipherError::Damaged)?;
        let text = String::from_utf8(plain).map_err(|_| CipherError::Damaged)?;
        Secret::parse(text).map_err(|_| CipherError::Damaged)
    }

    /// What `secret` should be stored as: `Some` sealed under the current key when it is
    /// plaintext or sealed under the old key; `None` when it is already current.
    pub fn reseal(
        &self,
        endpoint: EndpointId,
        secret: &Secret,
    ) -> Result<Option<Secret>, CipherError> {
        let current = format!("{SEALED_PREFIX}{}:", self.current.id);
        if secret.expose().starts_with(&current) {
            return Ok(None);
        }
        let plain = self.open(endpoint, secret)?;
        Ok(Some(self.seal(endpoint, &plain)))
    }
}

/// Opens `secret` with `cipher`, if any: a plaintext secret needs none.
pub fn open_with(
    cipher: Option<&SecretCipher>,
    endpoint: EndpointId,
    secret: &Secret,
) -> Result<Secret, CipherError> {
    match cipher {
        Some(c) => c.open(endpoint, secret),
        None if secret.is_sealed() => Err(CipherError::NoKey),
        None => Ok(secret.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_rotate_and_refuse_tampering() {
        let (k1, k2) = (SecretKey::generate(), SecretKey::generate());
        let (a, b) = (EndpointId::new(), EndpointId::new());
        let secret = Secret::generate();
        let old = SecretCipher::new(k1.clone(), None);
        let sealed = old.seal(a, &secret);
        assert!(sealed.is_sealed());
        assert!(!sealed.expose().contains("whsec_"));
        assert!(sealed.expose().contains(k1.id()));
        assert_eq!(Secret::parse(sealed.expose()).unwrap(), sealed, "stores can read it back");
        assert_eq!(old.open(a, &sealed).unwrap(), secret);
        assert_eq!(old.open(b, &sealed), Err(CipherError::Damaged), "bound to its endpoint");
        assert_ne!(old.seal(a, &secret), sealed, "fresh nonce per seal");

        let rotated = SecretCipher::new(k2.clone(), Some(k1.clone()));
        assert_eq!(rotated.open(a, &sealed).unwrap(), secret, "the old key still opens");
        let moved = rotated.reseal(a, &sealed).unwrap().unwrap();
        assert!(moved.expose().contains(k2.id()));
        assert_eq!(rotated.reseal(a, &moved).unwrap(), None, "already current");
        assert!(rotated.reseal(a, &secret).unwrap().is_some(), "plaintext gets sealed");
        let without_old = SecretCipher::new(k2, None);
        assert!(matches!(without_old.open(a, &sealed), Err(CipherError::UnknownKey(_))));
        assert_eq!(open_with(None, a, &sealed), Err(CipherError::NoKey));
        assert_eq!(open_with(None, a, &secret).unwrap(), secret);

        let mut text = sealed.expose().to_owned();
        let last = text.pop().unwrap();
        text.push(if last == 'A' { 'B' } else { 'A' });
        let tampered = Secret::parse(text).unwrap();
        assert!(old.open(a, &tampered).is_err());
        assert_eq!(SecretKey::from_base64("c2hvcnQ=").unwrap_err(), CipherError::InvalidKey);
        assert_eq!(format!("{k1:?}"), format!("SecretKey({})", k1.id()));
    }
}
