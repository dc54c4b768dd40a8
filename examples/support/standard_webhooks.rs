//! Standard Webhooks verification for the examples, written from the specification (not with
//! the crate's signer): a `v1,<base64>` signature is the HMAC-SHA256 of
//! `"{webhook-id}.{webhook-timestamp}.{body}"` under the base64-decoded `whsec_` secret.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The HMAC key inside a `whsec_…` secret.
pub(crate) fn secret_key(secret: &str) -> Result<Vec<u8>, String> {
    let b64 = secret.strip_prefix("whsec_").ok_or("the secret lacks the whsec_ prefix")?;
    STANDARD.decode(b64).map_err(|e| format!("the secret is not base64: {e}"))
}

/// Whether any of the space-separated `signatures` signs `id`, `ts` and `body` under `key`.
pub(crate) fn verify(key: &[u8], id: &str, ts: &str, body: &[u8], signatures: &str) -> bool {
    signatures.split(' ').any(|s| {
        let Some(("v1", b64)) = s.split_once(',') else { return false };
        let Ok(expected) = STANDARD.decode(b64) else { return false };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else { return false };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(ts.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.verify_slice(&expected).is_ok()
    })
}
