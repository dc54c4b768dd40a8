//! The error of the Ingestor's operations.

use std::time::Duration;

use crate::domain::validate::ValidationError;
use crate::limiter::RateDecision;
use crate::store::StoreError;

/// Why an [`Ingestor`](crate::Ingestor) call failed. The HTTP layer maps each variant to one
/// status code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input is invalid (HTTP 422); nothing changed.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The organization's rate limit is spent (HTTP 429); nothing changed.
    #[error("rate limit exceeded: retry in {:?}", .0.retry_after.unwrap_or_default())]
    RateLimited(RateDecision),
    /// The API key is unknown or was rotated away (HTTP 401).
    #[error("invalid API key")]
    Unauthorized,
    /// No such item for this organization (HTTP 404).
    #[error("not found")]
    NotFound,
    /// The system is overloaded (HTTP 503); retry after the given time. Nothing changed.
    #[error("overloaded: retry in {0:?}")]
    Overloaded(Duration),
    /// A per-organization limit is reached (HTTP 422 `limit_exceeded`); nothing changed.
    #[error("limit exceeded: at most {max} {limit}")]
    LimitExceeded {
        /// What is limited, in words (for example "webhook endpoints per organization").
        limit: &'static str,
        /// The limit's value.
        max: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Overloaded(_) => Error::Overloaded(Duration::from_secs(1)),
            StoreError::LimitExceeded { limit, max } => Error::LimitExceeded { limit, max },
            other => Error::Store(other),
        }
    }
}

impl Error {
    /// Whether the same call may succeed later without any change: rate limited, overloaded,
    /// or a transient store failure ([`StoreError::is_transient`]). Invalid input, a bad key
    /// or a missing item will fail again.
    ///
    /// ```
    /// use std::time::Duration;
    /// let e = triggers_core::Error::Overloaded(Duration::from_secs(1));
    /// assert!(e.is_transient());
    /// assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
    /// assert!(!triggers_core::Error::NotFound.is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        match self {
            Error::RateLimited(_) | Error::Overloaded(_) => true,
            Error::Store(e) => e.is_transient(),
            Error::Invalid(_)
            | Error::Unauthorized
            | Error::NotFound
            | Error::LimitExceeded { .. } => false,
        }
    }

    /// How long to wait before retrying a transient failure: the limiter's `Retry-After` for
    /// `RateLimited`, the store's hint for `Overloaded`, one second for a transient store
    /// failure; `None` when retrying cannot help.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::RateLimited(d) => Some(d.retry_after.unwrap_or(Duration::from_secs(1))),
            Error::Overloaded(after) => Some(*after),
            Error::Store(e) if e.is_transient() => Some(Duration::from_secs(1)),
            _ => None,
        }
    }
}

/// Result of an Ingestor call.
pub type Result<T, E = Error> = std::result::Result<T, E>;
