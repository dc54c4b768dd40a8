//! Standard Webhooks signing: the request body and the `webhook-signature` header.
//!
//! The signed content is `"{webhook-id}.{webhook-timestamp}.{body}"`; each signature is
//! `v1,` + base64 of HMAC-SHA256 over it, keyed by the base64-decoded part of a `whsec_`
//! secret. While a secret is being rotated the header carries one signature per valid secret,
//! separated by spaces, the current secret first; a receiver accepts the request if any of
//! them verifies with a secret it knows.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::value::RawValue;
use sha2::Sha256;
use triggers_core::store::Delivery;
use triggers_core::{EventId, Secret, Timestamp};

type HmacSha256 = Hmac<Sha256>;

/// Signs webhook requests with one key (the decoded bytes of a `whsec_` secret).
///
/// ```
/// use triggers_core::Secret;
/// use triggers_http::webhook::Signer;
/// let secret = Secret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
/// let body = br#"{"email":"test@example.com","username":"test_user"}"#;
/// let sig = Signer::new(&secret).sign("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, body);
/// assert_eq!(sig, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
/// ```
#[derive(Clone)]
pub struct Signer {
    /// The HMAC state after absorbing the key, cloned for every message.
    mac: HmacSha256,
}

impl Signer {
    /// A signer for `secret`.
    pub fn new(secret: &Secret) -> Self {
        Self::from_key(&secret.key_bytes())
    }

    /// A signer for raw key bytes.
    pub fn from_key(key: &[u8]) -> Self {
        // HMAC pads or hashes keys of any length: `new_from_slice` never fails for it.
        #[allow(clippy::expect_used)]
        let mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
        Self { mac }
    }

    /// The signature `v1,<base64>` of one message.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = self.mac.clone();
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(3 + 44);
        out.push_str("v1,");
        STANDARD.encode_string(digest, &mut out);
        out
    }
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(…)")
    }
}

/// The `webhook-signature` header value: one `v1,…` signature per secret, space-separated,
/// in the order given (the current secret first).
pub fn signature_header(secrets: &[Secret], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut out = String::with_capacity(secrets.len() * 48);
    for secret in secrets {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&Signer::new(secret).sign(msg_id, timestamp, body));
    }
    out
}

/// The JSON body sent to an endpoint.
#[derive(Serialize)]
struct Body<'a> {
    id: EventId,
    #[serde(rename = "type")]
    event_type: &'a str,
    created_at: &'a Timestamp,
    payload: &'a RawValue,
}

/// The webhook body `{"id","type","created_at","payload"}` of a delivery. `created_at` is
/// RFC 3339 UTC as serde writes a timestamp everywhere else in the API; `payload` is the
/// stored JSON text, embedded verbatim.
pub fn webhook_body(delivery: &Delivery) -> Vec<u8> {
    let body = Body {
        id: delivery.event_id,
        event_type: &delivery.event_type,
        created_at: &delivery.created_at,
        payload: &delivery.payload,
    };
    // Serialising strings, a timestamp and already-valid raw JSON into a Vec cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const TS: i64 = 1649367553;
    const BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;

    #[test]
    fn reproduces_the_published_test_vector() {
        let secret = Secret::parse(SECRET).unwrap();
        assert_eq!(
            Signer::new(&secret).sign(ID, TS, BODY),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn any_change_changes_the_signature() {
        let s = Signer::new(&Secret::parse(SECRET).unwrap());
        let good = s.sign(ID, TS, BODY);
        assert_ne!(s.sign(ID, TS + 1, BODY), good);
        assert_ne!(s.sign("msg_other", TS, BODY), good);
        assert_ne!(s.sign(ID, TS, b"{}"), good);
        assert_ne!(Signer::new(&Secret::generate()).sign(ID, TS, BODY), good);
    }

    #[test]
    fn rotation_header_lists_every_secret_current_first() {
        let old = Secret::parse(SECRET).unwrap();
        let new = Secret::generate();
        let header = signature_header(&[new.clone(), old.clone()], ID, TS, BODY);
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], Signer::new(&new).sign(ID, TS, BODY));
        assert_eq!(parts[1], "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
        assert_eq!(signature_header(&[], ID, TS, BODY), "");
    }

    #[test]
    fn body_embeds_the_payload_verbatim() {
        let payload = RawValue::from_string(r#"{ "b":1,  "a" : [1.50, "x"] }"#.to_owned()).unwrap();
        let created_at = chrono::DateTime::parse_from_rfc3339("2024-05-06T07:08:09.123456Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let delivery = Delivery {
            id: triggers_core::DeliveryId::new(),
            attempt: 1,
            lease_owner: triggers_core::WorkerId::new(),
            lease_expires_at: created_at,
            event_id: EventId::new(),
            organization_id: triggers_core::OrganizationId::new(),
            event_type: "user.created".into(),
            payload,
            created_at,
            endpoint_id: triggers_core::EndpointId::new(),
            url: "http://127.0.0.1/".into(),
            secrets: vec![],
            endpoint_failing_since: None,
            headers: Vec::new(),
            endpoint_rate_limit: None,
            endpoint_concurrency: None,
        };
        let body = String::from_utf8(webhook_body(&delivery)).unwrap();
        assert_eq!(
            body,
            format!(
                r#"{{"id":"{}","type":"user.created","created_at":"2024-05-06T07:08:09.123456Z","payload":{{ "b":1,  "a" : [1.50, "x"] }}}}"#,
                delivery.event_id
            )
        );
    }
}
