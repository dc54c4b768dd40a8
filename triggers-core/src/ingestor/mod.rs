//! The [`Ingestor`]: the library's front door.

mod auth;
mod config;
mod cursor;
mod endpoints;
mod events;
mod gate;
mod history;
mod inbox;
mod ingest;
mod lifecycle;
mod orgs;
mod pending;
mod retention;
mod sealing;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

pub use config::{IngestorConfig, DEFAULT_MAX_PENDING};
pub use cursor::Cursor;
use endpoints::check_endpoint_url;
pub use events::Replayed;
pub use history::{AttemptsPage, AttemptsQuery, DeliveriesPage, DeliveriesQuery};
pub use inbox::{InboxPage, InboxQuery};
pub use ingest::{BatchIngested, Ingested};
pub use lifecycle::{MAX_RECOVER, OPERATIONAL_DISABLED, OPERATIONAL_ENABLED};

use crate::clock::Timestamp;
use crate::deliver::Deliverer;
use crate::domain::org::Organization;
use crate::error::{Error, Result};
use crate::limiter::RateLimiter;
use crate::store::EventStore;
use crate::worker::WorkerPool;

/// Runs `work` in a task of its own, holding `turn` until `work` is done even if the caller
/// stops waiting; its result, or its panic, as if it had run in the caller.
async fn to_the_end<T, P, Fut>(turn: P, work: Fut) -> Result<T>
where
    P: Send + 'static,
    Fut: std::future::Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let task = tokio::spawn(async move {
        let out = work.await;
        drop(turn);
        out
    });
    match task.await {
        Ok(out) => out,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Only when the runtime shuts down.
        Err(_) => Err(Error::Store(crate::store::StoreError::Unavailable(
            "the server is shutting down".into(),
        ))),
    }
}

/// Validates, rate-limits, dedups and durably stores events, and runs the delivery workers.
///
/// Cheap to clone (all clones share one instance). Must be started inside a Tokio runtime.
/// See the crate docs for an example.
///
/// **Stopping**: [`shutdown`](Self::shutdown)`.await` is the clean way: in-flight deliveries
/// finish (or are released) before it returns. Dropping the last handle also stops the
/// delivery workers — they stop claiming, give in-flight deliveries `shutdown_grace` and
/// release the rest — but in the background: a process that exits right after the drop may
/// leave leases behind, which the next start reclaims at once when the workers lease under a
/// stable node id (see `WorkerConfig::node_id`), else after the lease length. (A deliverer
/// that itself holds an `Ingestor` handle keeps the workers alive: call `shutdown`. So does,
/// until the store answers it, a store call still running for a request whose caller
/// stopped waiting: see `at_store`.)
pub struct Ingestor<S, D> {
    inner: Arc<Inner<S>>,
    workers: Arc<tokio::sync::Mutex<Option<WorkerPool>>>,
    _deliverer: std::marker::PhantomData<fn() -> D>,
}

impl<S, D> Clone for Ingestor<S, D> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            workers: self.workers.clone(),
            _deliverer: std::marker::PhantomData,
        }
    }
}

struct Inner<S> {
    store: Arc<S>,
    config: IngestorConfig,
    limiter: RateLimiter,
    auth: auth::AuthCache,
    /// Shares `config.store_concurrency` places at the store among the organizations.
    gate: Arc<gate::StoreGate>,
    /// This node's view of each organization's pending events (`max_pending`).
    pending: Arc<pending::PendingCounts>,
    wake: Arc<Notify>,
}

impl<S: EventStore, D: Deliverer> Ingestor<S, D> {
    /// Starts an Ingestor over `store`, delivering through `deliverer` with
    /// `config.worker.concurrency` workers (0: store only, no deliveries are made).
    pub fn start(store: S, deliverer: D, config: IngestorConfig) -> Self {
        let store = Arc::new(store);
        let wake = Arc::new(Notify::new());
        let workers = (config.worker.concurrency > 0).then(|| {
            WorkerPool::spawn(
                store.clone(),
                Arc::new(sealing::Unsealing::new(deliverer, config.secret_cipher.clone())),
                config.worker.clone(),
                config.retry.clone(),
                config.clock.clone(),
                wake.clone(),
                config.observer.clone(),
            )
        });
        let inner = Arc::new(Inner {
            store,
            limiter: RateLimiter::new(),
            // Key lookups that miss the cache: half the organizations' places (at least 1).
            auth: auth::AuthCache::new(config.auth_cache_ttl, config.store_concurrency / 2),
            gate: Arc::new(gate::StoreGate::new(config.store_concurrency)),
            pending: Arc::default(),
            config,
            wake,
        });
        spawn_limiter_sweeper(Arc::downgrade(&inner));
        if let Some(every) = inner.config.purge_interval {
            retention::spawn(Arc::downgrade(&inner), every);
        }
        Self {
            inner,
            workers: Arc::new(tokio::sync::Mutex::new(workers)),
            _deliverer: std::marker::PhantomData,
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &IngestorConfig {
        &self.inner.config
    }

    fn now(&self) -> Timestamp {
        self.inner.config.clock.now()
    }

    // ---- operations ---------------------------------------------------------------------

    /// A store round trip: `Ok` when the store can serve requests.
    pub async fn ready(&self) -> Result<()> {
        Ok(self.inner.store.ping().await?)
    }

    /// Runs `work` — an organization request's store calls, given this Ingestor and `org` —
    /// once `org` has a place at the store (`gate.rs`), in a task of its own that keeps the
    /// place until `work` is done. So a request dropped midway (its client hung up) frees its
    /// place only when the store is done with it: a SQLite read goes on on the blocking pool
    /// and a PostgreSQL query on the server whether or not anyone waits for them, and an
    /// organization that hung up and asked again would otherwise keep any number of them
    /// running. A panic in `work` reaches the caller as if `work` had run in its place.
    pub(super) async fn at_store<T, F, Fut>(&self, org: &Organization, work: F) -> Result<T>
    where
        F: FnOnce(Self, Organization) -> Fut,
        Fut: std::future::Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let turn = self.inner.gate.enter(org.id).await?;
        to_the_end(turn, work(self.clone(), org.clone())).await
    }

    /// Outstanding deliveries across all organizations.
    pub async fn queue_depth(&self) -> Result<u64> {
        Ok(self.inner.store.queue_depth().await?)
    }

    /// Announcements of endpoint changes not yet in their organization's stream, across all
    /// organizations (see
    /// [`EndpointStore::announcement_backlog`](crate::store::EndpointStore::announcement_backlog)).
    pub async fn announcement_backlog(
        &self,
    ) -> Result<crate::store::operational::AnnouncementBacklog> {
        Ok(self.inner.store.announcement_backlog().await?)
    }

    /// Stops the workers: no new claims; in-flight deliveries get `shutdown_grace` to finish,
    /// the rest are released for another worker. Ingestion keeps working. Idempotent.
    pub async fn shutdown(&self) {
        let pool = self.workers.lock().await.take();
        if let Some(pool) = pool {
            pool.shutdown().await;
        }
    }
}

/// Drops idle rate-limit state once a minute, until the Ingestor is gone.
fn spawn_limiter_sweeper<S: Send + Sync + 'static>(inner: std::sync::Weak<Inner<S>>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(inner) = inner.upgrade() else { break };
            let now = inner.config.clock.now();
            inner.limiter.sweep(now);
            inner.pending.sweep();
            if let Some(shared) = &inner.config.shared_limiter {
                if let Err(e) = shared.sweep(now).await {
                    tracing::warn!(error = %e, "sweeping the shared rate limiter failed");
                }
            }
        }
    });
}
