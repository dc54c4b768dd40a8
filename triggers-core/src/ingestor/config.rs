//! The Ingestor's settings.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::{SharedClock, SystemClock};
use crate::domain::org::TierLimits;
use crate::domain::sealed::SecretCipher;
use crate::domain::validate::DEFAULT_MAX_PAYLOAD;
use crate::limiter::SharedRateLimiter;
use crate::observe::Observer;
use crate::retry::RetryPolicy;
use crate::worker::WorkerConfig;

/// The default of [`IngestorConfig::max_pending`]: 7 days of the tier's rate.
pub const DEFAULT_MAX_PENDING: Duration = Duration::from_secs(7 * 24 * 3600);

/// Everything the [`Ingestor`](super::Ingestor) can be tuned with. `Default` gives the
/// documented defaults of SPEC §5.
#[derive(Clone)]
pub struct IngestorConfig {
    /// Per-minute limits per tier.
    pub tier_limits: TierLimits,
    /// How long a dedup id is remembered (default 24 h).
    pub dedup_window: Duration,
    /// Largest payload, in bytes of JSON text (default 256 KiB).
    pub max_payload: usize,
    /// Most events in one batch or ack call (default 1000).
    pub max_batch: usize,
    /// How long a rotated-out webhook secret still signs (default 24 h).
    pub secret_grace: Duration,
    /// How long an authenticated key is cached in memory (default 2 s). Rotation on this node
    /// invalidates at once; other nodes sharing the store notice within this time.
    pub auth_cache_ttl: Duration,
    /// When retries are due.
    pub retry: RetryPolicy,
    /// The delivery workers.
    pub worker: WorkerConfig,
    /// The source of time.
    pub clock: SharedClock,
    /// A store-backed limiter for one exact limit across nodes; `None` uses the in-process one.
    pub shared_limiter: Option<Arc<dyn SharedRateLimiter>>,
    /// Receives delivery outcomes for metrics.
    pub observer: Option<Arc<dyn Observer>>,
    /// Purge `delivered` and `failed` events (with their attempts) created longer ago than
    /// this; `None` keeps every event (the default; the example server defaults to 30 days).
    /// Applied by the purge task, see [`purge_interval`](Self::purge_interval).
    pub retention: Option<Duration>,
    /// Run a purge task this often (default `None`: no task): it deletes finished events past
    /// [`retention`](Self::retention) and dedup entries past
    /// [`dedup_window`](Self::dedup_window), in batches of 500 rows, each its own short
    /// store write, yielding between batches so ingestion is never held up for long.
    pub purge_interval: Option<Duration>,
    /// Encrypt webhook signing secrets at rest: new and rotated secrets are stored sealed,
    /// deliveries open them just before signing, and
    /// [`Ingestor::seal_stored_secrets`](super::Ingestor::seal_stored_secrets) seals the
    /// ones already stored. `None` (the default) stores them in plaintext.
    pub secret_cipher: Option<Arc<SecretCipher>>,
    /// Bound each organization's `pending` events to what its tier's per-minute limit lets
    /// it send in this time (default 7 days: 100 800 on the free tier's 10 a minute): an
    /// ingest that would pass it is refused with
    /// [`Error::LimitExceeded`](crate::Error::LimitExceeded), nothing stored or charged,
    /// until deliveries finish or the organization acknowledges events. Concurrent ingests
    /// on one node never pass it together; across nodes it is approximate by what the other
    /// nodes let in within about a second (the count is read from the store in the
    /// background once a second per organization). `None` keeps any number; an unlimited
    /// tier is never bounded.
    pub max_pending: Option<Duration>,
    /// Byte budget of one inbox page (default 4 MiB): a page ends early once its events
    /// would exceed it (always at least one event), see
    /// [`ListQuery::max_bytes`](crate::store::ListQuery::max_bytes).
    pub max_page_bytes: u64,
    /// How many organization requests other than ingestion (inbox pages, event and history
    /// lookups, acks, replays, endpoint and key changes) reach the store at once on this node
    /// (default 4, at least 1). One organization may hold all places but one, which is kept
    /// for the others; once requests wait, a freed place goes to the waiting organization
    /// with the fewest running. So one organization's heavy use of the store's small shared
    /// pools never makes another's request queue behind it. At most 64 requests of one
    /// organization wait at once; more fail at once with [`Error::Overloaded`](crate::Error).
    /// Ingestion is queued fairly by the stores themselves. Lookups of API keys not seen
    /// valid on this node in the last day belong to no organization: at most half this many
    /// (at least 1) run at once and at most 64 wait, each at most a second (then
    /// `Overloaded`), so a flood of invented keys cannot take the store's pools.
    pub store_concurrency: usize,
}

impl Default for IngestorConfig {
    fn default() -> Self {
        Self {
            tier_limits: TierLimits::default(),
            dedup_window: Duration::from_secs(24 * 3600),
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_batch: 1000,
            secret_grace: Duration::from_secs(24 * 3600),
            auth_cache_ttl: Duration::from_secs(2),
            retry: RetryPolicy::default(),
            worker: WorkerConfig::default(),
            clock: Arc::new(SystemClock),
            shared_limiter: None,
            observer: None,
            retention: None,
            purge_interval: None,
            secret_cipher: None,
            max_page_bytes: crate::store::DEFAULT_MAX_PAGE_BYTES,
            store_concurrency: 4,
            max_pending: Some(DEFAULT_MAX_PENDING),
        }
    }
}

impl std::fmt::Debug for IngestorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestorConfig")
            .field("tier_limits", &self.tier_limits)
            .field("dedup_window", &self.dedup_window)
            .field("max_payload", &self.max_payload)
            .field("max_batch", &self.max_batch)
            .field("secret_grace", &self.secret_grace)
            .field("auth_cache_ttl", &self.auth_cache_ttl)
            .field("retry", &self.retry)
            .field("worker", &self.worker)
            .field("shared_limiter", &self.shared_limiter.is_some())
            .field("retention", &self.retention)
            .field("purge_interval", &self.purge_interval)
            .field("secret_cipher", &self.secret_cipher.as_ref().map(|c| c.key_id().to_owned()))
            .field("max_page_bytes", &self.max_page_bytes)
            .field("store_concurrency", &self.store_concurrency)
            .field("max_pending", &self.max_pending)
            .finish_non_exhaustive()
    }
}
