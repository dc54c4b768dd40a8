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

/// Result of an Ingestor call.
pub type Result<T, E = Error> = std::result::Result<T, E>;
