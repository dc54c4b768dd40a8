//! [`SqliteStore`]: the handle, and the store traits on it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use triggers_core::domain::event::{Event, EventDetail, EventRecord, EventStatus};
use triggers_core::store::{
    AckOutcome, AttemptEntry, AttemptQuery, Batch, ClaimRequest, CompletedAndClaimed, Completion,
    Delivery, DeliveryEntry, DeliveryHistory, DeliveryQuery, DeliveryQueue, EndpointPatch,
    EndpointStore, EndpointUpdate, EventLog, InsertOutcome, ListQuery, NewEndpoint, OrgStore, Page,
    QueueStats, RecoverQuery, Recovered, Retention, SecretRewrite, StoreResult,
};
use triggers_core::{
    DeliveryId, DeliveryOrdering, Endpoint, EndpointId, EventId, KeyHash, Organization,
    OrganizationId, Secret, StoreError, Timestamp, WorkerId,
};

use crate::codec::micros;
use crate::config::{SqliteConfig, Synchronous};
use crate::ops::{claim, events, history, lifecycle, orgs, purge, queue, reads};
use crate::readers::Readers;
use crate::schema;
use crate::writer::sync::{SyncWal, WalFile};
use crate::writer::{Lane, Writer};

/// An [`EventStore`](triggers_core::EventStore) in one SQLite database file.
///
/// Cheap to clone: clones share one writer thread and one reader pool. The writer thread stops
/// (after finishing the requests already queued) when the last clone is dropped.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    // Readers first: dropped before the writer, which then closes the file last (and
    // checkpoints the write-ahead log).
    readers: Readers,
    writer: Writer,
    config: SqliteConfig,
    path: PathBuf,
    node: WorkerId,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.inner.path).finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, applies schema migrations, and
    /// starts the writer thread and the reader pool.
    ///
    /// Blocks briefly on file I/O; call it at startup (or in `spawn_blocking`). It needs no
    /// tokio runtime, but the store's methods must be called inside one.
    ///
    /// Errors: `Corrupt` if the file is not a SQLite database, belongs to another application
    /// or has a newer schema than this build knows; `Backend` with a
    /// [`SqliteError::ReadOnly`](crate::SqliteError::ReadOnly) source if the file cannot be
    /// written; `Unavailable` if another process holds the write lock past `busy_timeout`.
    pub fn open(path: impl AsRef<Path>, config: SqliteConfig) -> StoreResult<Self> {
        Self::open_with(path.as_ref(), config, None)
    }

    /// [`open`](Self::open); with `Synchronous::Full`, `sync` (if given) stands in for the
    /// sync of the real WAL file: tests inject one that blocks.
    pub(crate) fn open_with(
        path: &Path,
        config: SqliteConfig,
        sync: Option<Box<dyn SyncWal>>,
    ) -> StoreResult<Self> {
        let path = path.to_path_buf();
        let conn = schema::open_writer(&path, &config)?;
        let node = schema::node_id(&conn)?;
        let readers = Readers::open(&path, &config)?;
        let wal: Option<Box<dyn SyncWal>> = match (config.synchronous, sync) {
            (Synchronous::Full, Some(sync)) => Some(sync),
            (Synchronous::Full, None) => WalFile::of(&conn)?.map(|w| Box::new(w) as _),
            (Synchronous::Normal, _) => None,
        };
        let writer =
            Writer::start(conn, config.writer_queue, config.max_batch, config.batch_budget, wal)?;
        tracing::debug!(path = %path.display(), "opened sqlite store");
        Ok(Self { inner: Arc::new(Inner { readers, writer, config, path, node }) })
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The settings the store was opened with.
    pub fn config(&self) -> &SqliteConfig {
        &self.inner.config
    }

    /// Runs `f` on the writer in the store's own lane (possibly more than once; see
    /// [`Writer::call`]).
    pub(crate) async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&rusqlite::Connection) -> StoreResult<T> + Send + 'static,
    {
        self.inner.writer.call(Lane::STORE, f).await
    }

    /// [`write`](Self::write) for `org`, in its lane, as `units` units of cost (events for an
    /// insert; see the writer's docs on fairness).
    pub(crate) async fn write_for<T, F>(
        &self,
        org: OrganizationId,
        units: usize,
        f: F,
    ) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&rusqlite::Connection) -> StoreResult<T> + Send + 'static,
    {
        self.inner.writer.call(Lane { org: Some(org), units }, f).await
    }

    /// Runs lease bookkeeping on the writer: committed without an fsync and answered at
    /// once, unless `durable` says the result must be on the disk first (see
    /// [`Writer::call_with`] and the crate docs on durability).
    pub(crate) async fn write_lease<T, F>(&self, f: F, durable: fn(&T) -> bool) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&rusqlite::Connection) -> StoreResult<T> + Send + 'static,
    {
        self.inner.writer.call_with(f, durable).await
    }

    /// Before a switch to parallel: the endpoint's line made parallel in writes of
    /// `BACKLOG_BATCH` each, oldest first, while it is still FIFO.
    async fn shorten_line(&self, org: OrganizationId, id: EndpointId) -> StoreResult<u64> {
        triggers_core::store::in_batches(|| {
            self.write_for(org, 1, move |c| orgs::shorten_line(c, org, id).map(Batch::of))
        })
        .await
    }

    pub(crate) async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> StoreResult<T> + Send + 'static,
    {
        self.inner.readers.call(f).await
    }
}

#[async_trait]
impl OrgStore for SqliteStore {
    async fn create_organization(&self, org: &Organization, key: &KeyHash) -> StoreResult<()> {
        let (org, key) = (org.clone(), *key);
        self.write(move |c| orgs::create_org(c, &org, &key)).await
    }

    async fn organization_by_key(&self, key: &KeyHash) -> StoreResult<Option<Organization>> {
        let key = *key;
        self.read(move |c| reads::org_by_key(c, &key)).await
    }

    async fn organization(&self, id: OrganizationId) -> StoreResult<Option<Organization>> {
        self.read(move |c| reads::org(c, id)).await
    }

    async fn replace_key(&self, id: OrganizationId, key: &KeyHash) -> StoreResult<bool> {
        let key = *key;
        self.write_for(id, 1, move |c| orgs::replace_key(c, id, &key)).await
    }

    /// A read round trip; while writes fail (disk full, I/O errors) `Unavailable` with the
    /// cause, probing with a one-page write at most once a second to notice that writes work
    /// again (see the `health` module).
    async fn ping(&self) -> StoreResult<()> {
        if !self.inner.writer.is_alive() {
            return Err(StoreError::Unavailable("the sqlite writer has stopped".into()));
        }
        if let Some((cause, probe)) = self.inner.writer.health().fault() {
            if !probe {
                return Err(StoreError::Unavailable(format!("writes fail: {cause}")));
            }
            self.write(schema::probe_write).await?;
        }
        self.read(reads::ping).await
    }
}

#[async_trait]
impl EndpointStore for SqliteStore {
    async fn create_endpoint(
        &self,
        org: OrganizationId,
        endpoint: &NewEndpoint,
    ) -> StoreResult<Endpoint> {
        let endpoint = endpoint.clone();
        let max = self.inner.config.limits.max_endpoints;
        self.write_for(org, 1, move |c| orgs::create_endpoint(c, org, &endpoint, max)).await
    }

    async fn endpoints(&self, org: OrganizationId) -> StoreResult<Vec<Endpoint>> {
        self.read(move |c| orgs::endpoints(c, org)).await
    }

    async fn endpoint(&self, org: OrganizationId, id: EndpointId) -> StoreResult<Option<Endpoint>> {
        self.read(move |c| lifecycle::endpoint(c, org, id)).await
    }

    async fn update_endpoint(
        &self,
        org: OrganizationId,
        id: EndpointId,
        patch: &EndpointPatch,
        now: Timestamp,
    ) -> StoreResult<Option<EndpointUpdate>> {
        // The endpoint's change is one write, failing its backlog more writes of at most
        // `BACKLOG_BATCH` deliveries each: other organizations' writes run between them.
        if patch.ordering == Some(DeliveryOrdering::Parallel) {
            self.shorten_line(org, id).await?;
        }
        let enabled = patch.enabled;
        let patch = patch.clone();
        let update =
            || self.write_for(org, 1, move |c| lifecycle::update_endpoint(c, org, id, &patch, now));
        let batch = || {
            self.write_for(org, 1, move |c| {
                lifecycle::fail_left_behind(c, org, id, now).map(Batch::of)
            })
        };
        triggers_core::store::update_in_batches(enabled, update, batch).await
    }

    async fn finish_disabling(
        &self,
        org: OrganizationId,
        id: EndpointId,
        now: Timestamp,
    ) -> StoreResult<u64> {
        triggers_core::store::in_batches(|| {
            self.write_for(org, 1, move |c| {
                lifecycle::fail_left_behind(c, org, id, now).map(Batch::of)
            })
        })
        .await
    }

    async fn unfinished_disables(&self) -> StoreResult<Vec<(OrganizationId, EndpointId)>> {
        self.read(lifecycle::unfinished_disables).await
    }

    async fn recover(
        &self,
        org: OrganizationId,
        id: EndpointId,
        query: RecoverQuery,
        now: Timestamp,
    ) -> StoreResult<Option<Recovered>> {
        self.write_for(org, 1, move |c| lifecycle::recover(c, org, id, query, now)).await
    }

    async fn delete_endpoint(&self, org: OrganizationId, id: EndpointId) -> StoreResult<bool> {
        // A large backlog first, in writes of `BACKLOG_BATCH` each.
        triggers_core::store::in_batches(|| {
            self.write_for(org, 1, move |c| orgs::cancel_backlog(c, org, id).map(Batch::of))
        })
        .await?;
        self.write_for(org, 1, move |c| orgs::delete_endpoint(c, org, id)).await
    }

    async fn set_endpoint_ordering(
        &self,
        org: OrganizationId,
        id: EndpointId,
        ordering: DeliveryOrdering,
    ) -> StoreResult<bool> {
        if ordering == DeliveryOrdering::Parallel {
            self.shorten_line(org, id).await?;
        }
        self.write_for(org, 1, move |c| orgs::set_ordering(c, org, id, ordering)).await
    }

    async fn rotate_endpoint_secret(
        &self,
        org: OrganizationId,
        id: EndpointId,
        secret: &Secret,
        previous_valid_until: Timestamp,
    ) -> StoreResult<bool> {
        let secret = secret.clone();
        self.write_for(org, 1, move |c| {
            orgs::rotate_secret(c, org, id, &secret, previous_valid_until)
        })
        .await
    }

    async fn rewrite_secrets(&self, rewrite: SecretRewrite) -> StoreResult<u64> {
        let mut after = 0;
        let mut total = 0;
        loop {
            let f = rewrite.clone();
            let (n, last) = self.write(move |c| orgs::rewrite_secrets_batch(c, after, &*f)).await?;
            total += n;
            match last {
                Some(seq) => after = seq,
                None => break,
            }
        }
        if total > 0 {
            // Move the rewritten pages into the database file and empty the write-ahead
            // log, so no replaced secret lingers in it.
            let path = self.inner.path.clone();
            let busy = self.inner.config.busy_timeout;
            tokio::task::spawn_blocking(move || schema::checkpoint_truncate(&path, busy))
                .await
                .map_err(|e| StoreError::Unavailable(format!("checkpoint task: {e}")))??;
        }
        Ok(total)
    }
}

#[async_trait]
impl EventLog for SqliteStore {
    async fn insert_events(
        &self,
        org: OrganizationId,
        events: Vec<EventRecord>,
        dedup_window: Duration,
        now: Timestamp,
    ) -> StoreResult<Vec<InsertOutcome>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let units = events.len();
        self.write_for(org, units, move |c| events::insert(c, org, &events, dedup_window, now))
            .await
    }

    async fn event(&self, org: OrganizationId, id: EventId) -> StoreResult<Option<EventDetail>> {
        self.read(move |c| reads::event(c, org, id)).await
    }

    async fn list_events(
        &self,
        org: OrganizationId,
        query: &ListQuery,
    ) -> StoreResult<Page<Event>> {
        let query = query.clone();
        self.read(move |c| reads::list(c, org, &query)).await
    }

    async fn ack(
        &self,
        org: OrganizationId,
        ids: &[EventId],
        now: Timestamp,
    ) -> StoreResult<AckOutcome> {
        if ids.is_empty() {
            return Ok(AckOutcome::default());
        }
        let ids = ids.to_vec();
        let units = ids.len();
        self.write_for(org, units, move |c| events::ack(c, org, &ids, now)).await
    }

    async fn replay(
        &self,
        org: OrganizationId,
        id: EventId,
        now: Timestamp,
    ) -> StoreResult<Option<EventStatus>> {
        let keep = self.inner.config.limits.max_attempts_kept;
        self.write_for(org, 1, move |c| events::replay(c, org, id, now, keep)).await
    }

    async fn stats(&self, org: OrganizationId) -> StoreResult<QueueStats> {
        self.read(move |c| reads::stats(c, org)).await
    }

    async fn pending_events(&self, org: OrganizationId) -> StoreResult<u64> {
        self.read(move |c| reads::pending_events(c, org)).await
    }
}

#[async_trait]
impl DeliveryQueue for SqliteStore {
    async fn claim(&self, req: ClaimRequest) -> StoreResult<Vec<Delivery>> {
        if req.limit == 0 {
            return Ok(Vec::new());
        }
        let claimed = self.write_lease(move |c| claim::claim(c, req), |c| c.hands_out_a_line_head);
        Ok(claimed.await?.deliveries)
    }

    async fn complete(&self, completions: &[Completion]) -> StoreResult<Vec<bool>> {
        if completions.is_empty() {
            return Ok(Vec::new());
        }
        let completions = completions.to_vec();
        let keep = self.inner.config.limits.max_attempts_kept;
        // A disable (and its announcement) is answered once it would survive a power loss.
        let done = self.write_lease(
            move |c| queue::complete(c, &completions, keep),
            |(_, disabled)| !disabled.is_empty(),
        );
        Ok(done.await?.0)
    }

    /// One writer request, so both run in one transaction of the group commit: the
    /// completions and the leases that take their places commit together, and a failure of
    /// either rolls back both. Answered at `COMMIT` unless it hands out the head of a FIFO
    /// line (see `claim::Claimed`).
    async fn complete_and_claim(
        &self,
        completions: &[Completion],
        req: ClaimRequest,
    ) -> StoreResult<CompletedAndClaimed> {
        let completions = completions.to_vec();
        let keep = self.inner.config.limits.max_attempts_kept;
        let ((applied, disabled), claimed) = self
            .write_lease(
                move |c| {
                    let done = queue::complete(c, &completions, keep)?;
                    let claimed = if req.limit == 0 {
                        claim::Claimed::default()
                    } else {
                        claim::claim(c, req)?
                    };
                    Ok((done, claimed))
                },
                |((_, disabled), c)| c.hands_out_a_line_head || !disabled.is_empty(),
            )
            .await?;
        Ok(CompletedAndClaimed { applied, disabled, claimed: Ok(claimed.deliveries) })
    }

    async fn release(
        &self,
        id: DeliveryId,
        owner: WorkerId,
        attempt: u32,
        due_at: Option<Timestamp>,
    ) -> StoreResult<bool> {
        self.write_lease(move |c| queue::release(c, id, owner, attempt, due_at), |_| false).await
    }

    async fn extend_lease(
        &self,
        id: DeliveryId,
        owner: WorkerId,
        attempt: u32,
        until: Timestamp,
    ) -> StoreResult<bool> {
        self.write_lease(move |c| queue::extend_lease(c, id, owner, attempt, until), |_| false)
            .await
    }

    async fn queue_depth(&self) -> StoreResult<u64> {
        self.read(reads::queue_depth).await
    }

    async fn reclaim_leases(&self, owner: WorkerId, now: Timestamp) -> StoreResult<u64> {
        self.write(move |c| queue::reclaim_leases(c, owner, now)).await
    }

    /// The node id kept in the database file: one process uses a SQLite file at a time, so
    /// leases under this id that are still live when the workers start were left by a
    /// previous run that crashed, and are reclaimed at once.
    fn node_id(&self) -> Option<WorkerId> {
        Some(self.inner.node)
    }
}

#[async_trait]
impl Retention for SqliteStore {
    async fn purge_finished_batch(&self, before: Timestamp, batch: u32) -> StoreResult<u64> {
        let cutoff = micros(before);
        self.write(move |c| purge::finished_batch(c, cutoff, batch)).await
    }

    async fn purge_dedup_batch(&self, before: Timestamp, batch: u32) -> StoreResult<u64> {
        let cutoff = micros(before);
        self.write(move |c| purge::dedup_batch(c, cutoff, batch).map(|(n, _)| n)).await
    }
}

#[async_trait]
impl DeliveryHistory for SqliteStore {
    async fn endpoint_attempts(
        &self,
        org: OrganizationId,
        endpoint: EndpointId,
        query: &AttemptQuery,
    ) -> StoreResult<Option<Vec<AttemptEntry>>> {
        let query = *query;
        self.read(move |c| history::endpoint_attempts(c, org, endpoint, &query)).await
    }

    async fn endpoint_deliveries(
        &self,
        org: OrganizationId,
        endpoint: EndpointId,
        query: &DeliveryQuery,
    ) -> StoreResult<Option<Vec<DeliveryEntry>>> {
        let query = *query;
        self.read(move |c| history::endpoint_deliveries(c, org, endpoint, &query)).await
    }
}
