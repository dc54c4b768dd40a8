//! `triggers`: event ingestion with durable storage, signed webhook delivery with retries, and
//! an inbox — as an embeddable library and a ready HTTP server.
//!
//! This facade re-exports [`triggers_core`] (the Ingestor, domain types and store contract)
//! and, behind features, the stores and the HTTP front end:
//!
//! | feature | module | what |
//! |---|---|---|
//! | `sqlite` (default) | `sqlite` | the embedded SQLite store |
//! | `postgres` | `postgres` | the PostgreSQL store for production and many nodes |
//! | `http` (default) | `http` | the Triggers API server and the webhook deliverer |
//! | `conformance` | `conformance`, `store_conformance_tests!` | the store conformance kit, for authors of a new backend |
//!
//! [`prelude`] has every type the [`Ingestor`] API takes and returns, plus the traits (and the
//! `async_trait` attribute) to implement a store or a deliverer.
//!
//! ```
//! use triggers::{Ingestor, IngestorConfig, MemoryStore, NewEvent, NoDeliverer, Tier};
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), triggers::Error> {
//! let ingestor = Ingestor::start(MemoryStore::new(), NoDeliverer, IngestorConfig::default());
//! let (org, _key) = ingestor.create_organization("acme", Tier::Starter).await?;
//! let first = ingestor.ingest(&org, NewEvent::new("order.paid", &serde_json::json!({"n": 1}))
//!     .with_dedup_id("order-1")).await?;
//! let again = ingestor.ingest(&org, NewEvent::new("order.paid", &serde_json::json!({"n": 1}))
//!     .with_dedup_id("order-1")).await?;
//! assert_eq!(first.id, again.id);
//! assert!(again.duplicate);
//! # ingestor.shutdown().await;
//! # Ok(()) }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

pub use triggers_core::*;

/// The embedded SQLite store.
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use triggers_store_sqlite as sqlite;

/// The PostgreSQL store.
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use triggers_store_postgres as postgres;

/// The HTTP API server and the webhook deliverer.
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use triggers_http as http;

/// The README's Rust examples, compiled as doctests so they keep matching the API.
#[cfg(all(doctest, feature = "sqlite", feature = "http"))]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;

/// `docs/http.md`'s Rust examples, compiled as doctests.
#[cfg(all(doctest, feature = "sqlite", feature = "http"))]
#[doc = include_str!("../docs/http.md")]
struct HttpDocExamples;
