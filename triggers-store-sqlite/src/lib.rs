//! `triggers-store-sqlite`: the embedded default [`EventStore`](triggers_core::EventStore) —
//! one SQLite file, durable, group-committed and crash-safe.
//!
//! ```
//! use triggers_core::store::OrgStore;
//! use triggers_store_sqlite::{SqliteConfig, SqliteStore};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = SqliteStore::open(dir.path().join("triggers.db"), SqliteConfig::default())?;
//! store.ping().await?;
//! // Hand it to `triggers_core::Ingestor::start(store, deliverer, config)`.
//! # Ok(()) }
//! ```
//!
//! # How it works
//! - **One writer thread** owns the only writing connection. Every write (event inserts,
//!   claims, completions, acks, endpoint and organization changes, purges) is a request in a
//!   bounded queue. The writer takes up to [`SqliteConfig::max_batch`] queued requests,
//!   runs them in one `BEGIN IMMEDIATE` transaction with cached prepared statements (each
//!   request in its own `SAVEPOINT`, so one failing request is rolled back alone), commits,
//!   and only then replies to each caller: **group commit**, one fsync per batch. A method
//!   that returned `Ok` has committed.
//! - **Lease bookkeeping skips the fsync** (with [`Synchronous::Full`], the default): claims,
//!   completions, heartbeats and releases of a batch run first, in a transaction of their own
//!   that commits with `synchronous = NORMAL`, and are answered at once; the batch's other
//!   requests follow in the durable transaction. A process crash loses none of it; a power
//!   loss can only make a delivery due again (at-least-once). A claim that hands out the head
//!   of a FIFO line is synced before it is answered, so a line never moves past a completion
//!   a power loss could undo. The argument is in the `writer::sync` module's docs.
//! - **Fair writes**: every request of a batch waits for the whole batch, so one
//!   organization's heavy writes (a batch of 1 000 events fanning out to 50 endpoints writes
//!   51 000 rows) must not share it with everyone else's. Requests queue per organization
//!   (those of no organization, such as claims, in the store's own lane); a batch takes them
//!   round-robin and stays within [`SqliteConfig::batch_budget`] of predicted work, a request
//!   predicted to take longer runs alone, and the lanes take turns, so another organization's
//!   request waits for at most one such request. Predictions are the measured time per event
//!   of each organization's recent requests ([`triggers_core::lanes`]).
//! - **Backpressure**: when [`SqliteConfig::writer_queue`] requests are already waiting (or
//!   half of them are one organization's, and the write is that organization's), a write
//!   fails at once with `StoreError::Overloaded`, which the Ingestor answers with 503.
//! - **Readers**: a pool of [`SqliteConfig::readers`] connections with `PRAGMA query_only`
//!   serves event lookups, the inbox, stats and health checks on tokio's blocking threads.
//!   WAL mode lets them run concurrently with the writer.
//! - **Pragmas**: `journal_mode=WAL`, `synchronous=FULL` by default (see [`Synchronous`] for
//!   the trade-off with `NORMAL`), `busy_timeout`, `foreign_keys`, a sized page cache and
//!   `journal_size_limit`.
//! - **Schema** migrations are embedded and applied on open (`PRAGMA user_version`); a
//!   database written by a newer version is refused with `StoreError::Corrupt`.
//! - **Dedup** lives in a table keyed by `(organization, dedup_id)`, so it holds across
//!   restarts; an entry older than the window is taken over by the next insert.
//! - **Batches** of events are written with multi-row `INSERT`s (up to 32 rows per
//!   statement: dedup entries first, then the events that are not duplicates, then their
//!   deliveries to parallel endpoints): a batch of 100 is a handful of statement executions
//!   instead of one or more per event. Where a chunk's dedup entries
//!   did not all go in, its events are decided one by one, so a batch answers exactly as the
//!   same events inserted singly in order.
//! - **Delivery queue**: a table of outstanding deliveries, keyed by endpoint and event (a
//!   delivery's id carries that key and a random tag, so every write after the claim finds
//!   the row by primary key). A claim reads the leases and the due pending deliveries of
//!   each endpoint under its caps through small indexed statements, chooses in Rust, and
//!   leases its choice; an expired lease makes the delivery due again. All of a claim runs
//!   in one transaction of the single writer connection, so it is as atomic as one statement
//!   would be: two claims never see the same free place (the "one statement per claim" of
//!   the PostgreSQL store, where claimers run concurrently). Due deliveries are found per
//!   endpoint (index on endpoint and due time), so the backlog of an endpoint at its
//!   concurrency cap costs a claim nothing. Completions, releases and heartbeats are fenced
//!   by the whole id and `(lease_owner, attempt)`.
//! - **Retention**: [`SqliteStore::purge`] (or [`SqliteStore::spawn_purge_task`]) deletes
//!   delivered events older than [`SqliteConfig::retention`] and dedup ids older than
//!   [`SqliteConfig::dedup_retention`], in small batches.
//!
//! # Interpretations of the store contract
//! - Event type filters of endpoints and inbox globs match case-sensitively (SQL `GLOB`; a
//!   type glob has no GLOB metacharacter other than `*`).
//! - `release` without a due time makes the delivery due at the time it was due when it was
//!   claimed, which is never later than the claim.
//! - Retry and failure completions set the endpoint's failing-since time to the attempt's
//!   time (`record.at`).
//! - Deleting an endpoint deletes its outstanding deliveries; replaying an event deletes the
//!   event's outstanding deliveries before queueing fresh ones. Attempt records stay.
//! - Errors: SQLite busy/locked → `Unavailable`; corrupt file, unreadable stored values,
//!   newer schema → `Corrupt`; a value over `SQLITE_LIMIT_LENGTH` → `InvalidInput`; a
//!   uniqueness violation → `Conflict`; a read-only database → `Backend` with a
//!   [`SqliteError::ReadOnly`] source; anything else → `Backend`.

mod codec;
mod config;
mod error;
mod health;
mod ops;
mod readers;
mod retention;
mod schema;
mod store;
mod writer;

pub use config::{SqliteConfig, Synchronous};
pub use error::SqliteError;
pub use retention::PurgeReport;
pub use schema::SCHEMA_VERSION;
pub use store::SqliteStore;
