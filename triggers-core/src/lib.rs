//! `triggers-core`: the domain, the storage and delivery contracts, and the [`Ingestor`] that
//! ties them together (validation, per-organization rate limits, dedup, durable storage and
//! the delivery worker queue).
//!
//! ```
//! use triggers_core::{Ingestor, IngestorConfig, MemoryStore, NewEvent, NoDeliverer, Tier};
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), triggers_core::Error> {
//! let ingestor = Ingestor::start(MemoryStore::new(), NoDeliverer, IngestorConfig::default());
//! let (org, _key) = ingestor.create_organization("acme", Tier::Free).await?;
//! let ingested = ingestor
//!     .ingest(&org, NewEvent::new("user.created", &serde_json::json!({"id": 1})))
//!     .await?;
//! assert!(!ingested.duplicate);
//! ingestor.shutdown().await;
//! # Ok(()) }
//! ```

pub mod clock;
pub mod deliver;
pub mod domain;
pub mod error;
pub mod ingestor;
pub mod limiter;
pub mod memory;
pub mod observe;
pub mod retry;
pub mod store;
pub mod worker;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

// Lets the conformance macros name `triggers_core::…` also inside this crate's own tests.
extern crate self as triggers_core;

pub use clock::{Clock, ManualClock, SharedClock, SystemClock, Timestamp};
pub use deliver::{
    Attempt, ChannelDeliverer, Deliverer, FnDeliverer, Handoff, NoDeliverer, Outcome,
};
pub use domain::event::{
    AttemptRecord, Event, EventDetail, EventMeta, EventRecord, EventStatus, NewEvent,
};
pub use domain::key::{ApiKey, KeyHash};
pub use domain::org::{Organization, Tier, TierLimits};
pub use domain::validate::ValidationError;
pub use domain::webhook::{DeliveryOrdering, Endpoint, Secret, TypeGlob};
pub use domain::{DeliveryId, EndpointId, EventId, OrganizationId, WorkerId};
pub use error::{Error, Result};

pub use ingestor::{
    BatchIngested, Cursor, InboxPage, InboxQuery, Ingested, Ingestor, IngestorConfig,
};
pub use limiter::{RateDecision, RateLimiter, SharedRateLimiter};
pub use memory::MemoryStore;
pub use observe::{DeliveryResult, Observer};
pub use retry::RetryPolicy;
pub use store::{EventStore, StoreError};
pub use worker::WorkerConfig;

/// Re-exports for the conformance macros; not part of the public API.
#[cfg(any(test, feature = "conformance"))]
#[doc(hidden)]
pub mod __private {
    pub use tokio;
}
