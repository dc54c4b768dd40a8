//! Settings of a [`SqliteStore`](crate::SqliteStore).

use std::time::Duration;

use triggers_core::store::StoreLimits;

/// How hard SQLite works to make each commit durable (`PRAGMA synchronous`).
///
/// The store runs in WAL mode. The trade-off:
/// - [`Full`](Self::Full) (the default): every commit fsyncs the write-ahead log before the
///   writer replies. An acknowledged event survives a process crash **and** a power loss or OS
///   crash. Group commit keeps this affordable: one fsync covers every request in a batch.
///   Lease bookkeeping of the delivery queue is the exception: it commits without an fsync
///   (losing it to a power loss only makes a delivery due again; see the crate docs).
/// - [`Normal`](Self::Normal): commits are written to the WAL but fsynced only at checkpoints.
///   An acknowledged event survives a process crash (`kill -9`), but the last commits before a
///   power loss or OS crash may be lost. The database is never corrupted either way. Faster
///   when fsync is slow, and lower latency for single callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// `PRAGMA synchronous = FULL`: durable across power loss (default).
    #[default]
    Full,
    /// `PRAGMA synchronous = NORMAL`: durable across process crashes only.
    Normal,
}

impl Synchronous {
    pub(crate) fn pragma_value(self) -> &'static str {
        match self {
            Self::Full => "FULL",
            Self::Normal => "NORMAL",
        }
    }
}

/// Settings of a [`SqliteStore`](crate::SqliteStore). Every field has a sensible default.
///
/// ```
/// use std::time::Duration;
/// use triggers_store_sqlite::{SqliteConfig, Synchronous};
/// let config = SqliteConfig {
///     synchronous: Synchronous::Normal,
///     retention: Some(Duration::from_secs(7 * 24 * 3600)),
///     ..SqliteConfig::default()
/// };
/// assert_eq!(config.readers, 4);
/// ```
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// Commit durability; see [`Synchronous`]. Default `Full`.
    pub synchronous: Synchronous,
    /// How many write requests may wait for the writer thread. When the queue is full, writes
    /// fail at once with `StoreError::Overloaded` (the Ingestor answers HTTP 503) instead of
    /// queueing without bound; so do an organization's writes once it holds half of the
    /// places. Default 1024.
    pub writer_queue: usize,
    /// At most this many queued write requests are committed together in one transaction
    /// (group commit). Default 256.
    pub max_batch: usize,
    /// The predicted work one transaction of several requests stays within; a request
    /// predicted to take longer runs in a transaction of its own. Every request of a
    /// transaction waits for all of it, so this bounds how long one organization's requests
    /// can make another's wait: requests queue per organization, a transaction takes them
    /// round-robin, and an organization whose requests run alone takes turns with
    /// transactions of everyone else (see the crate docs, "Fair writes"). Predictions are
    /// the measured time per event (per request for other writes) of each organization's
    /// recent requests. Smaller values split heavy traffic into more transactions (one
    /// fsync each). Default 20 ms.
    pub batch_budget: Duration,
    /// Read-only connections for lookups, the inbox and stats (at least 1). Default 4.
    pub readers: usize,
    /// Page cache of each connection (the writer and every reader), in KiB (`PRAGMA
    /// cache_size = -N`; at least 64). Default 4 MiB.
    ///
    /// Larger is not better for the writer: whenever a b-tree split reorders sibling pages,
    /// SQLite parks a page under a page number far past the end of the file, and the next
    /// commit then scans the cache's whole hash table to drop it. With 32 MiB (the default
    /// until 2026-12) that scan took ≈ 10 % of the writer's time end to end; 4 MiB measured
    /// 7 – 11 % more end-to-end deliveries and 2 – 10 % more batch ingest, on a fresh and on a
    /// 1 GB database (BENCHMARKS.md, "Issue #17, seventh sitting"). Readers lose their cache
    /// whenever the database changed since their last read anyway (WAL mode).
    pub cache_size_kib: u32,
    /// How long a connection waits for a lock held by another process before failing with
    /// `StoreError::Unavailable` (`PRAGMA busy_timeout`). Default 5 s.
    pub busy_timeout: Duration,
    /// The write-ahead log is truncated to this size after checkpoints
    /// (`PRAGMA journal_size_limit`). Default 64 MiB.
    pub journal_size_limit: u64,
    /// The writer copies the write-ahead log into the database file once the log holds this
    /// many pages (`PRAGMA wal_autocheckpoint`; a page is 4 KiB). Larger values mean fewer,
    /// larger checkpoints, which copy a page written by many commits once and cost the writer
    /// less per write, but the batch that runs one waits longer: 4000 measured +6 % batch
    /// ingest and +10 % end-to-end delivery, and ≈ +1 ms p99 at 64 connections, which took it
    /// past 10 ms on a noisy day (BENCHMARKS.md, "Issue #17, second sitting"). At least 1 (0
    /// counts as 1: the log must not grow without bound). Default 1000 (≈ 4 MiB, SQLite's own).
    pub checkpoint_pages: u32,
    /// Largest string or blob SQLite accepts, in bytes (`SQLITE_LIMIT_LENGTH`); larger values
    /// fail with `StoreError::InvalidInput`. `None` keeps SQLite's limit (1 GB). Default `None`.
    pub max_value_len: Option<u32>,
    /// [`SqliteStore::purge`](crate::SqliteStore::purge) deletes `delivered` events created
    /// longer ago than this (with their attempt records). `None` keeps them forever. Default
    /// `None`.
    pub retention: Option<Duration>,
    /// [`SqliteStore::purge`](crate::SqliteStore::purge) forgets dedup ids older than this.
    /// Must be at least the Ingestor's dedup window, or duplicates of older events are no
    /// longer recognised. Default 7 days.
    pub dedup_retention: Duration,
    /// Rows deleted per purge transaction; small batches keep the writer responsive.
    /// Default 500.
    pub purge_batch: u32,
    /// The per-organization bounds the store keeps (most endpoints, attempts kept per event
    /// and endpoint). Default [`StoreLimits::default`].
    pub limits: StoreLimits,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Full,
            writer_queue: 1024,
            max_batch: 256,
            batch_budget: Duration::from_millis(20),
            readers: 4,
            cache_size_kib: 4 * 1024,
            busy_timeout: Duration::from_secs(5),
            journal_size_limit: 64 * 1024 * 1024,
            checkpoint_pages: 1000,
            max_value_len: None,
            retention: None,
            dedup_retention: Duration::from_secs(7 * 24 * 3600),
            purge_batch: 500,
            limits: StoreLimits::default(),
        }
    }
}
