//! The [`Ingestor`]: the library's front door.

mod auth;
mod config;
mod cursor;
mod gate;
mod history;
mod inbox;
mod lifecycle;
mod orgs;
mod retention;
mod sealing;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

pub use config::IngestorConfig;
pub use cursor::Cursor;
pub use history::{AttemptsPage, AttemptsQuery, DeliveriesPage, DeliveriesQuery};
pub(crate) use lifecycle::{ingest_operational, Subject};
pub use lifecycle::{MAX_RECOVER, OPERATIONAL_DISABLED, OPERATIONAL_ENABLED};

use crate::clock::{self, Timestamp};
use crate::deliver::Deliverer;
use crate::domain::event::{Event, EventDetail, EventRecord, EventStatus, NewEvent};
use crate::domain::key::ApiKey;
use crate::domain::org::{Organization, Tier};
use crate::domain::validate::{self, ValidationError};
use crate::domain::webhook::{DeliveryOrdering, Endpoint, Secret, TypeGlob};
use crate::domain::{EndpointId, EventId};
use crate::error::{Error, Result};
use crate::limiter::{RateDecision, RateLimiter};
use crate::store::{AckOutcome, EventStore, InsertOutcome, ListQuery, NewEndpoint, QueueStats};
use crate::worker::WorkerPool;

/// The answer to an accepted event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    /// The event's id; for a duplicate, the original event's id.
    pub id: EventId,
    /// The event's type (for a duplicate: the original's).
    pub event_type: String,
    /// When it was accepted (for a duplicate: the original's time).
    pub created_at: Timestamp,
    /// Whether this was a duplicate within the dedup window (nothing new was stored).
    pub duplicate: bool,
    /// The organization's rate-limit state after this call.
    pub rate: RateDecision,
}

/// The answer to a batch: one result per submitted event, in order.
#[derive(Debug, Clone)]
pub struct BatchIngested {
    /// Per event: accepted (or duplicate), or why it was invalid.
    pub results: Vec<std::result::Result<Ingested, ValidationError>>,
    /// The organization's rate-limit state after this call.
    pub rate: RateDecision,
}

/// The answer to a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    /// The event's status now (`pending`).
    pub status: EventStatus,
    /// How many deliveries were charged (one per matching enabled endpoint).
    pub deliveries: u32,
    /// The organization's rate-limit state after this call.
    pub rate: RateDecision,
}

/// What to list from the inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxQuery {
    /// Only events with this status (default `pending`); `None`: every status.
    pub status: Option<EventStatus>,
    /// Only events whose type matches this glob.
    pub type_glob: Option<TypeGlob>,
    /// Page size, 1–1000 (default 100).
    pub limit: u32,
    /// Where to continue: the previous page's `next_cursor`.
    pub cursor: Option<String>,
}

impl Default for InboxQuery {
    fn default() -> Self {
        Self { status: Some(EventStatus::Pending), type_glob: None, limit: 100, cursor: None }
    }
}

/// One inbox page, oldest event first.
#[derive(Debug, Clone)]
pub struct InboxPage {
    /// The events, in ascending id (= creation) order.
    pub events: Vec<Event>,
    /// The cursor for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
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
/// that itself holds an `Ingestor` handle keeps the workers alive: call `shutdown`.)
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
    gate: gate::StoreGate,
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
            auth: auth::AuthCache::new(config.auth_cache_ttl),
            gate: gate::StoreGate::new(config.store_concurrency),
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

    // ---- organizations and keys -------------------------------------------------------

    /// Creates an organization (with a fresh random id) and its first API key. The key is
    /// returned only here. Every call creates another organization; an application that
    /// wants the same one on every run uses [`organization_or_create`](Self::organization_or_create).
    pub async fn create_organization(
        &self,
        name: &str,
        tier: Tier,
    ) -> Result<(Organization, ApiKey)> {
        let name = orgs::checked_name(name)?;
        let org = Organization::new(name, tier, self.now());
        let key = ApiKey::generate();
        self.inner.store.create_organization(&org, &key.hash()).await?;
        Ok((org, key))
    }

    /// The organization an API key belongs to; `Unauthorized` for unknown or rotated keys.
    /// Results are cached for `auth_cache_ttl`.
    pub async fn authenticate(&self, api_key: &str) -> Result<Organization> {
        let hash = crate::domain::key::KeyHash::of(api_key);
        if let Some(org) = self.inner.auth.get(&hash) {
            return Ok(org);
        }
        match self.inner.store.organization_by_key(&hash).await? {
            Some(org) => {
                self.inner.auth.insert(hash, org.clone());
                Ok(org)
            }
            None => Err(Error::Unauthorized),
        }
    }

    /// Issues a new key for `org`; the old one stops working at once on this node (and on
    /// other nodes within `auth_cache_ttl`).
    pub async fn rotate_key(&self, org: &Organization) -> Result<ApiKey> {
        let key = ApiKey::generate();
        let _turn = self.inner.gate.enter(org.id).await;
        if !self.inner.store.replace_key(org.id, &key.hash()).await? {
            return Err(Error::NotFound);
        }
        self.inner.auth.forget(org.id);
        Ok(key)
    }

    /// The organization's rate-limit state, without charging anything.
    pub fn rate_status(&self, org: &Organization) -> RateDecision {
        let limit = self.inner.config.tier_limits.per_minute(org.tier);
        self.inner.limiter.peek(org.id, limit, self.now())
    }

    async fn charge(&self, org: &Organization, cost: u32, now: Timestamp) -> Result<RateDecision> {
        let limit = self.inner.config.tier_limits.per_minute(org.tier);
        let decision = match &self.inner.config.shared_limiter {
            // No limit: no store round trip either.
            _ if limit == crate::TierLimits::UNLIMITED => RateDecision::unlimited(),
            Some(shared) => shared.check(org.id, limit, cost, now).await?,
            None => self.inner.limiter.check(org.id, limit, cost, now),
        };
        if decision.allowed {
            Ok(decision)
        } else {
            Err(Error::RateLimited(decision))
        }
    }

    // ---- ingestion --------------------------------------------------------------------

    /// Validates, rate-limits (cost 1), dedups and stores one event. Returns only after the
    /// event is durably stored.
    pub async fn ingest(&self, org: &Organization, event: NewEvent) -> Result<Ingested> {
        let now = self.now();
        let record = validate::validate_event(event, self.inner.config.max_payload, now)?;
        let rate = self.charge(org, 1, now).await?;
        let mut outcomes = self.insert(org, vec![record], now).await?;
        let outcome = outcomes.pop().ok_or_else(|| {
            Error::Store(crate::StoreError::Corrupt("store returned no outcome".into()))
        })?;
        Ok(ingested(outcome, rate))
    }

    /// Ingests up to `max_batch` events at once. The batch costs its full length against the
    /// rate limit (or is refused whole); invalid items are reported in place and not stored.
    pub async fn ingest_batch(
        &self,
        org: &Organization,
        events: Vec<NewEvent>,
    ) -> Result<BatchIngested> {
        let n = events.len();
        if n == 0 || n > self.inner.config.max_batch {
            return Err(ValidationError::Field {
                field: "events",
                reason: format!(
                    "a batch holds 1 to {} events (got {n})",
                    self.inner.config.max_batch
                ),
            }
            .into());
        }
        let now = self.now();
        let max_payload = self.inner.config.max_payload;
        let checked: Vec<_> =
            events.into_iter().map(|e| validate::validate_event(e, max_payload, now)).collect();
        let rate = self.charge(org, u32::try_from(n).unwrap_or(u32::MAX), now).await?;
        let mut valid = Vec::with_capacity(n);
        let mut slots = Vec::with_capacity(n);
        for item in checked {
            match item {
                Ok(record) => {
                    valid.push(record);
                    slots.push(Ok(()));
                }
                Err(e) => slots.push(Err(e)),
            }
        }
        let outcomes =
            if valid.is_empty() { Vec::new() } else { self.insert(org, valid, now).await? };
        let mut outcomes = outcomes.into_iter();
        let results = slots
            .into_iter()
            .map(|slot| match slot {
                Ok(()) => outcomes.next().map(|o| ingested(o, rate)).ok_or_else(|| {
                    ValidationError::Field { field: "events", reason: "not stored".into() }
                }),
                Err(e) => Err(e),
            })
            .collect();
        Ok(BatchIngested { results, rate })
    }

    async fn insert(
        &self,
        org: &Organization,
        records: Vec<EventRecord>,
        now: Timestamp,
    ) -> Result<Vec<InsertOutcome>> {
        let outcomes = self
            .inner
            .store
            .insert_events(org.id, records, self.inner.config.dedup_window, now)
            .await?;
        if outcomes.iter().any(|o| matches!(o, InsertOutcome::Inserted { deliveries: 1.., .. })) {
            self.inner.wake.notify_one();
        }
        Ok(outcomes)
    }

    // ---- reading and consuming -----------------------------------------------------------

    /// One event with its delivery attempts.
    pub async fn event(&self, org: &Organization, id: EventId) -> Result<EventDetail> {
        let _turn = self.inner.gate.enter(org.id).await;
        self.inner.store.event(org.id, id).await?.ok_or(Error::NotFound)
    }

    /// A page of the inbox, oldest first; follow `next_cursor` for the next page. Paging
    /// visits every matching event exactly once, also while new events arrive. A page holds
    /// at most `query.limit` events and ends early at `IngestorConfig::max_page_bytes`.
    pub async fn inbox(&self, org: &Organization, query: InboxQuery) -> Result<InboxPage> {
        if !(1..=1000).contains(&query.limit) {
            return Err(ValidationError::Field {
                field: "limit",
                reason: "must be between 1 and 1000".into(),
            }
            .into());
        }
        let after = query.cursor.as_deref().map(Cursor::decode).transpose()?;
        let max_bytes = self.inner.config.max_page_bytes;
        let _turn = self.inner.gate.enter(org.id).await;

        let Some(status) = query.status else {
            return inbox::every_status(&self.inner.store, org.id, query, after, max_bytes).await;
        };
        let list =
            ListQuery { status, type_glob: query.type_glob, limit: query.limit, after, max_bytes };
        let page = self.inner.store.list_events(org.id, &list).await?;
        Ok(InboxPage { events: page.items, next_cursor: page.next_after.map(Cursor::encode) })
    }

    /// Acknowledges one event (idempotent); `NotFound` for unknown or foreign ids.
    pub async fn ack(&self, org: &Organization, id: EventId) -> Result<()> {
        let _turn = self.inner.gate.enter(org.id).await;
        let outcome = self.inner.store.ack(org.id, &[id], self.now()).await?;
        if outcome.acknowledged.is_empty() {
            Err(Error::NotFound)
        } else {
            Ok(())
        }
    }

    /// Acknowledges up to `max_batch` events.
    pub async fn ack_many(&self, org: &Organization, ids: &[EventId]) -> Result<AckOutcome> {
        if ids.len() > self.inner.config.max_batch {
            return Err(ValidationError::Field {
                field: "ids",
                reason: format!("at most {} ids", self.inner.config.max_batch),
            }
            .into());
        }
        if ids.is_empty() {
            return Ok(AckOutcome::default());
        }
        let _turn = self.inner.gate.enter(org.id).await;
        Ok(self.inner.store.ack(org.id, ids, self.now()).await?)
    }

    /// Delivers an event again to its matching endpoints (also a `failed` one).
    ///
    /// Charged like an ingest: one unit of the organization's rate limit per delivery it
    /// queues (one per enabled endpoint matching the event's type, at least one); refused
    /// whole with [`Error::RateLimited`] when the allowance is spent, and then nothing
    /// changed. `NotFound` (uncharged) for an unknown or foreign id. An endpoint created
    /// between the count and the replay may get a delivery that was not charged.
    pub async fn replay(&self, org: &Organization, id: EventId) -> Result<Replayed> {
        let now = self.now();
        let _turn = self.inner.gate.enter(org.id).await;

        let detail = self.inner.store.event(org.id, id).await?.ok_or(Error::NotFound)?;
        let deliveries = self
            .inner
            .store
            .endpoints(org.id)
            .await?
            .iter()
            .filter(|e| e.enabled)
            .filter(|e| {
                e.event_type_filter.as_ref().map_or(true, |g| g.matches(&detail.event.event_type))
            })
            .count();
        let deliveries = u32::try_from(deliveries).unwrap_or(u32::MAX);
        let rate = self.charge_deliveries(org, deliveries, now).await?;
        let status = self.inner.store.replay(org.id, id, now).await?.ok_or(Error::NotFound)?;
        self.inner.wake.notify_one();
        Ok(Replayed { status, deliveries, rate })
    }

    /// Charges the organization's rate limit for sending `deliveries` deliveries again (a
    /// replay, a recovery): one unit each, at least one, as if each were an ingested event.
    /// Refused whole with [`Error::RateLimited`] (nothing charged) when the allowance is
    /// spent. Call it before queueing the deliveries.
    pub async fn charge_deliveries(
        &self,
        org: &Organization,
        deliveries: u32,
        now: Timestamp,
    ) -> Result<RateDecision> {
        self.charge(org, deliveries.max(1), now).await
    }

    /// Event counts by status, and in-flight deliveries.
    pub async fn stats(&self, org: &Organization) -> Result<QueueStats> {
        let _turn = self.inner.gate.enter(org.id).await;
        Ok(self.inner.store.stats(org.id).await?)
    }

    // ---- endpoints ----------------------------------------------------------------------

    /// Adds a delivery target. `url` must pass
    /// [`endpoint_url`](crate::domain::validate::endpoint_url) (any scheme: which ones are
    /// usable is up to the deliverer; the HTTP API allows only
    /// [`webhook_url`](crate::domain::validate::webhook_url)s).
    pub async fn create_endpoint(
        &self,
        org: &Organization,
        url: &str,
        event_type_filter: Option<&str>,
    ) -> Result<Endpoint> {
        self.create_endpoint_with_ordering(org, url, event_type_filter, DeliveryOrdering::Parallel)
            .await
    }

    /// Adds a delivery target with the given [`DeliveryOrdering`] (`Fifo`: strictly one
    /// delivery at a time, in event order). Otherwise like [`create_endpoint`](Self::create_endpoint).
    pub async fn create_endpoint_with_ordering(
        &self,
        org: &Organization,
        url: &str,
        event_type_filter: Option<&str>,
        ordering: DeliveryOrdering,
    ) -> Result<Endpoint> {
        check_endpoint_url(url)?;
        let filter = event_type_filter
            .map(TypeGlob::parse)
            .transpose()
            .map_err(|reason| ValidationError::Field { field: "event_type_filter", reason })?;
        let id = EndpointId::new();
        let secret = Secret::generate();
        let endpoint = NewEndpoint {
            id,
            url: url.to_owned(),
            event_type_filter: filter,
            secret: self.seal(id, &secret),
            created_at: self.now(),
            ordering,
        };
        let mut created = {
            let _turn = self.inner.gate.enter(org.id).await;
            self.inner.store.create_endpoint(org.id, &endpoint).await?
        };
        created.secret = secret;
        Ok(created)
    }

    /// Changes how an endpoint's deliveries are scheduled; see
    /// [`EndpointStore::set_endpoint_ordering`](crate::store::EndpointStore::set_endpoint_ordering)
    /// for what happens to deliveries already queued.
    pub async fn set_endpoint_ordering(
        &self,
        org: &Organization,
        id: EndpointId,
        ordering: DeliveryOrdering,
    ) -> Result<()> {
        let _turn = self.inner.gate.enter(org.id).await;
        if self.inner.store.set_endpoint_ordering(org.id, id, ordering).await? {
            self.inner.wake.notify_one();
            Ok(())
        } else {
            Err(Error::NotFound)
        }
    }

    /// The organization's endpoints, oldest first. Sealed secrets are opened; one that
    /// cannot be (its key is not configured) is left sealed.
    pub async fn endpoints(&self, org: &Organization) -> Result<Vec<Endpoint>> {
        let mut endpoints = {
            let _turn = self.inner.gate.enter(org.id).await;
            self.inner.store.endpoints(org.id).await?
        };
        for e in &mut endpoints {
            if e.secret.is_sealed() {
                let cipher = self.inner.config.secret_cipher.as_deref();
                match crate::domain::sealed::open_with(cipher, e.id, &e.secret) {
                    Ok(plain) => e.secret = plain,
                    Err(err) => tracing::warn!(endpoint = %e.id, error = %err,
                        "cannot open the endpoint's signing secret"),
                }
            }
        }
        Ok(endpoints)
    }

    /// `secret` as it is to be stored: sealed when a cipher is configured.
    fn seal(&self, endpoint: EndpointId, secret: &Secret) -> Secret {
        match &self.inner.config.secret_cipher {
            Some(cipher) => cipher.seal(endpoint, secret),
            None => secret.clone(),
        }
    }

    /// Seals every stored signing secret that is in plaintext or sealed under the old key
    /// (a no-op without a cipher); run it at start. Returns how many secrets were rewritten.
    /// A secret sealed under an unknown key is left alone (and logged).
    pub async fn seal_stored_secrets(&self) -> Result<u64> {
        let Some(cipher) = self.inner.config.secret_cipher.clone() else { return Ok(0) };
        let rewrite: crate::store::SecretRewrite =
            Arc::new(move |endpoint, secret| match cipher.reseal(endpoint, secret) {
                Ok(sealed) => sealed,
                Err(e) => {
                    tracing::warn!(%endpoint, error = %e, "cannot re-seal a signing secret");
                    None
                }
            });
        Ok(self.inner.store.rewrite_secrets(rewrite).await?)
    }

    /// Deletes an endpoint and cancels its outstanding deliveries.
    pub async fn delete_endpoint(&self, org: &Organization, id: EndpointId) -> Result<()> {
        let _turn = self.inner.gate.enter(org.id).await;
        if self.inner.store.delete_endpoint(org.id, id).await? {
            Ok(())
        } else {
            Err(Error::NotFound)
        }
    }

    /// Gives an endpoint a new signing secret; the old one keeps signing (as a second
    /// signature) for `secret_grace`.
    pub async fn rotate_endpoint_secret(
        &self,
        org: &Organization,
        id: EndpointId,
    ) -> Result<Secret> {
        let secret = Secret::generate();
        let grace_until = clock::add(self.now(), self.inner.config.secret_grace);
        let stored = self.seal(id, &secret);
        let _turn = self.inner.gate.enter(org.id).await;
        if self.inner.store.rotate_endpoint_secret(org.id, id, &stored, grace_until).await? {
            Ok(secret)
        } else {
            Err(Error::NotFound)
        }
    }

    // ---- operations ---------------------------------------------------------------------

    /// A store round trip: `Ok` when the store can serve requests.
    pub async fn ready(&self) -> Result<()> {
        Ok(self.inner.store.ping().await?)
    }

    /// Outstanding deliveries across all organizations.
    pub async fn queue_depth(&self) -> Result<u64> {
        Ok(self.inner.store.queue_depth().await?)
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

/// The URL check of endpoint creation, also used when a URL is changed.
fn check_endpoint_url(url: &str) -> Result<()> {
    // The one URL check of every way an endpoint's URL is set (create and update).
    Ok(validate::endpoint_url(url)?)
}

fn ingested(outcome: InsertOutcome, rate: RateDecision) -> Ingested {
    let duplicate = matches!(outcome, InsertOutcome::Duplicate(_));
    let meta = match outcome {
        InsertOutcome::Inserted { meta, .. } | InsertOutcome::Duplicate(meta) => meta,
    };
    Ingested {
        id: meta.id,
        event_type: meta.event_type,
        created_at: meta.created_at,
        duplicate,
        rate,
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
            if let Some(shared) = &inner.config.shared_limiter {
                if let Err(e) = shared.sweep(now).await {
                    tracing::warn!(error = %e, "sweeping the shared rate limiter failed");
                }
            }
        }
    });
}
