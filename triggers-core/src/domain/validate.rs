//! Validation of client input, with precise error values.

use super::event::{EventRecord, NewEvent};
use super::EventId;
use crate::clock::Timestamp;

/// Longest event type, in characters.
pub const MAX_TYPE_LEN: usize = 255;
/// Longest dedup id, in characters.
pub const MAX_DEDUP_ID_LEN: usize = 255;
/// Default largest payload, in bytes of JSON text.
pub const DEFAULT_MAX_PAYLOAD: usize = 256 * 1024;

/// Why an event (or other input) was refused. The HTTP layer turns these into 422s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// `type` is empty or longer than 255 characters.
    #[error("type must have 1 to {MAX_TYPE_LEN} characters (got {0})")]
    TypeLength(usize),
    /// `type` contains a character outside `[A-Za-z0-9._:-]`.
    #[error("type may only contain A-Z a-z 0-9 . _ : - (found {0:?})")]
    TypeCharacter(char),
    /// The payload's JSON text is larger than allowed.
    #[error("payload is {size} bytes; the limit is {max}")]
    PayloadTooLarge {
        /// The payload's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// `dedup_id` is empty or longer than 255 characters.
    #[error("dedup_id must have 1 to {MAX_DEDUP_ID_LEN} characters (got {0})")]
    DedupIdLength(usize),
    /// `dedup_id` contains a control character.
    #[error("dedup_id may not contain control characters")]
    DedupIdCharacter,
    /// Some other field is invalid.
    #[error("{field}: {reason}")]
    Field {
        /// The field's name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl ValidationError {
    /// The name of the offending field.
    pub fn field(&self) -> &'static str {
        match self {
            Self::TypeLength(_) | Self::TypeCharacter(_) => "type",
            Self::PayloadTooLarge { .. } => "payload",
            Self::DedupIdLength(_) | Self::DedupIdCharacter => "dedup_id",
            Self::Field { field, .. } => field,
        }
    }
}

/// Whether `c` may appear in an event type.
pub fn is_type_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
}

/// Checks an event type.
pub fn validate_type(t: &str) -> Result<(), ValidationError> {
    // Valid types are ASCII, so byte length equals character count for them.
    if t.is_empty() || t.len() > MAX_TYPE_LEN {
        return Err(ValidationError::TypeLength(t.chars().count()));
    }
    match t.chars().find(|&c| !is_type_char(c)) {
        Some(c) => Err(ValidationError::TypeCharacter(c)),
        None => Ok(()),
    }
}

/// Checks a dedup id: 1–255 characters, no control characters.
pub fn validate_dedup_id(d: &str) -> Result<(), ValidationError> {
    let n = d.chars().count();
    if n == 0 || n > MAX_DEDUP_ID_LEN {
        return Err(ValidationError::DedupIdLength(n));
    }
    if d.chars().any(char::is_control) {
        return Err(ValidationError::DedupIdCharacter);
    }
    Ok(())
}

/// Validates `event` and turns it into a record with a fresh UUID v7 id and `now` as its time.
pub fn validate_event(
    event: NewEvent,
    max_payload: usize,
    now: Timestamp,
) -> Result<EventRecord, ValidationError> {
    validate_type(&event.event_type)?;
    let size = event.payload.get().len();
    if size > max_payload {
        return Err(ValidationError::PayloadTooLarge { size, max: max_payload });
    }
    if let Some(d) = &event.dedup_id {
        validate_dedup_id(d)?;
    }
    Ok(EventRecord {
        id: EventId::new(),
        event_type: event.event_type,
        payload: event.payload,
        dedup_id: event.dedup_id,
        created_at: now,
        exclude_endpoint: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, SystemClock};
    use serde_json::json;

    fn check(e: NewEvent) -> Result<EventRecord, ValidationError> {
        validate_event(e, 64, SystemClock.now())
    }

    #[test]
    fn accepts_valid_events() {
        let r = check(NewEvent::new("user.created:v1_x-y", &json!({"a": 1})).with_dedup_id("k"))
            .unwrap();
        assert_eq!(r.event_type, "user.created:v1_x-y");
        assert_eq!(r.id.0.get_version_num(), 7);
        assert!(check(NewEvent::new("t".repeat(255), &json!(null))).is_ok());
    }

    #[test]
    fn rejects_bad_types() {
        assert_eq!(
            check(NewEvent::new("", &json!(1))).unwrap_err(),
            ValidationError::TypeLength(0)
        );
        assert_eq!(
            check(NewEvent::new("t".repeat(256), &json!(1))).unwrap_err(),
            ValidationError::TypeLength(256)
        );
        assert_eq!(
            check(NewEvent::new("user created", &json!(1))).unwrap_err(),
            ValidationError::TypeCharacter(' ')
        );
        assert_eq!(
            check(NewEvent::new("ünïcode", &json!(1))).unwrap_err(),
            ValidationError::TypeCharacter('ü')
        );
    }

    #[test]
    fn rejects_large_payloads_and_bad_dedup_ids() {
        let big = json!("x".repeat(100));
        assert!(matches!(
            check(NewEvent::new("t", &big)).unwrap_err(),
            ValidationError::PayloadTooLarge { max: 64, .. }
        ));
        assert_eq!(
            check(NewEvent::new("t", &json!(1)).with_dedup_id("")).unwrap_err(),
            ValidationError::DedupIdLength(0)
        );
        assert_eq!(
            check(NewEvent::new("t", &json!(1)).with_dedup_id("d".repeat(256))).unwrap_err(),
            ValidationError::DedupIdLength(256)
        );
        assert_eq!(
            check(NewEvent::new("t", &json!(1)).with_dedup_id("a\nb")).unwrap_err(),
            ValidationError::DedupIdCharacter
        );
        assert_eq!(ValidationError::DedupIdCharacter.field(), "dedup_id");
    }
}
