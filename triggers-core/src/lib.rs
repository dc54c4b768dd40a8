//! `triggers-core`: the domain, the storage and delivery contracts, and the [`Ingestor`] that
//! ties them together (validation, per-organization rate limits, dedup, durable storage and
//! the delivery worker queue).
//!
//! Everything an application needs is also in [`prelude`]: `use triggers_core::prelude::*;`.
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

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod chunked;
pub mod clock;
pub mod deliver;
pub mod domain;
pub mod error;
pub mod ingestor;
pub mod lanes;
pub mod limiter;
pub mod memory;
pub mod observe;
pub mod retry;
pub mod scheme;
pub mod store;
pub mod worker;

/// The types the [`Ingestor`] API takes and returns, the traits to implement a store or a
/// deliverer, and the `async_trait` attribute and `serde_json` crate those need — one `use`
/// for an embedding application or a backend author.
pub mod prelude {
    pub use crate::deliver::{
        Attempt, ChannelDeliverer, Deliverer, FnDeliverer, Handoff, NoDeliverer, Outcome,
    };
    pub use crate::domain::event::{Event, EventDetail, EventStatus, NewEvent};
    pub use crate::domain::key::ApiKey;
    pub use crate::domain::org::{Organization, Tier, TierLimits};
    pub use crate::domain::webhook::{Endpoint, Secret, TypeGlob};
    pub use crate::domain::{EndpointId, EventId, OrganizationId};
    pub use crate::error::{Error, Result};
    pub use crate::ingestor::{
        BatchIngested, InboxPage, InboxQuery, Ingested, Ingestor, IngestorConfig,
    };
    pub use crate::limiter::RateDecision;
    pub use crate::memory::MemoryStore;
    pub use crate::retry::RetryPolicy;
    pub use crate::scheme::RoutingDeliverer;
    pub use crate::store::{
        AckOutcome, Delivery, DeliveryQueue, DynStore, EndpointStore, EventLog, EventStore,
        OrgStore, QueueStats, StoreError, StoreResult,
    };
    pub use crate::worker::WorkerConfig;
    pub use async_trait::async_trait;
    pub use serde_json;
}

#[cfg(any(test, feature = "conformance"))]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;

// Lets doc examples and tests inside this crate name `triggers_core::…`.
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
pub use domain::webhook::{
    check_headers, DeliveryOrdering, Endpoint, Secret, TypeGlob, DISABLED_BY_REQUEST,
    ENDPOINT_DISABLED,
};
pub use domain::{DeliveryId, EndpointId, EventId, OrganizationId, WorkerId};
pub use error::{Error, Result};

/// Re-exported so that implementing [`EventStore`] or [`Deliverer`] needs no extra dependency.
pub use async_trait::async_trait;
pub use chunked::ChunkedLimiter;
pub use ingestor::{
    AttemptsPage, AttemptsQuery, BatchIngested, Cursor, DeliveriesPage, DeliveriesQuery, InboxPage,
    InboxQuery, Ingested, Ingestor, IngestorConfig, Replayed, DEFAULT_MAX_PENDING,
};
pub use limiter::{RateDecision, RateLimiter, SharedRateLimiter};
pub use memory::MemoryStore;
pub use observe::{DeliveryResult, Observer};
pub use retry::RetryPolicy;
pub use scheme::RoutingDeliverer;
/// Re-exported: payloads are `serde_json` values.
pub use serde_json;
pub use store::{AckOutcome, Delivery, DynStore, EventStore, QueueStats, StoreError};
pub use worker::WorkerConfig;
