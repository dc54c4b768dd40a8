//! Hooks for metrics: the HTTP server implements [`Observer`] to count deliveries.

use std::time::Duration;

/// How a delivery attempt ended, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryResult {
    /// The target accepted the event.
    Delivered,
    /// The attempt failed; another is scheduled.
    Retried,
    /// The attempt failed and no more will follow.
    Failed,
    /// The completion was fenced off: another worker owns the delivery now.
    Stale,
    /// Not attempted: the deliverer deferred it (see `Outcome::Deferred`).
    Deferred,
}

impl DeliveryResult {
    /// A lowercase label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retried => "retried",
            Self::Failed => "failed",
            Self::Stale => "stale",
            Self::Deferred => "deferred",
        }
    }
}

/// Receives notifications from the worker queue. Every method has a no-op default.
pub trait Observer: Send + Sync + 'static {
    /// One delivery attempt finished.
    fn delivery(&self, result: DeliveryResult, latency: Duration) {
        let _ = (result, latency);
    }
}
