//! The error every store returns.

/// A store operation failed. Classified so callers can react without knowing the backend:
/// `Unavailable` and `Overloaded` are transient (HTTP 503 + `Retry-After`), the others are not.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend cannot be reached or is shutting down (connection lost, pool exhausted,
    /// writer thread gone). Retrying later may succeed; nothing was written.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store's intake queue is full: it cannot keep up. Nothing was written; retry later.
    #[error("store overloaded: {0}")]
    Overloaded(String),
    /// A uniqueness rule was violated (for example an organization id that exists).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The input cannot be stored as given (for example a row over the backend's size limit).
    #[error("invalid input for the store: {0}")]
    InvalidInput(String),
    /// An organization reached one of the store's [`StoreLimits`](super::StoreLimits) (for
    /// example its most endpoints). Nothing was written.
    #[error("limit exceeded: at most {max} {limit}")]
    LimitExceeded {
        /// What is limited, in words (for example "webhook endpoints per organization").
        limit: &'static str,
        /// The limit's value.
        max: u64,
    },
    /// Stored data is damaged or was written by a newer version of `triggers`.
    #[error("store data is corrupt or incompatible: {0}")]
    Corrupt(String),
    /// Any other backend failure; the backend's own error is the source.
    #[error("store backend error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl StoreError {
    /// Whether retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Overloaded(_))
    }
}

/// Result of a store call.
pub type StoreResult<T> = Result<T, StoreError>;
