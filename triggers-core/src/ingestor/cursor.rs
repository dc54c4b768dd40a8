//! Opaque inbox cursors.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use uuid::Uuid;

use crate::domain::validate::ValidationError;
use crate::domain::EventId;

/// An inbox position: the last event id of a page, as opaque URL-safe text.
///
/// ```
/// use triggers_core::{Cursor, EventId};
/// let id = EventId::new();
/// assert_eq!(Cursor::decode(&Cursor::encode(id)).unwrap(), id);
/// assert!(Cursor::decode("not a cursor").is_err());
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Cursor;

impl Cursor {
    /// The cursor text for "after `id`".
    pub fn encode(id: EventId) -> String {
        URL_SAFE_NO_PAD.encode(id.0.as_bytes())
    }

    /// The id a cursor text stands for.
    pub fn decode(s: &str) -> Result<EventId, ValidationError> {
        let invalid =
            || ValidationError::Field { field: "cursor", reason: "invalid cursor".into() };
        let bytes = URL_SAFE_NO_PAD.decode(s).map_err(|_| invalid())?;
        let bytes: [u8; 16] = bytes.try_into().map_err(|_| invalid())?;
        Ok(EventId(Uuid::from_bytes(bytes)))
    }
}
