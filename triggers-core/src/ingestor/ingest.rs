//! Accepting events: validation, the rate limit, dedup and the durable insert.

use super::pending::Reservation;
use super::Ingestor;
use crate::clock::Timestamp;
use crate::deliver::Deliverer;
use crate::domain::event::{EventRecord, NewEvent};
use crate::domain::org::Organization;
use crate::domain::validate::{self, ValidationError};
use crate::domain::EventId;
use crate::error::{Error, Result};
use crate::limiter::RateDecision;
use crate::store::{EventStore, InsertOutcome};

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

impl<S: EventStore, D: Deliverer> Ingestor<S, D> {
    /// The organization's rate-limit state, without charging anything. With a shared limiter,
    /// the state its last answer to this node left, refilled since (other nodes' charges
    /// since then are not seen).
    pub fn rate_status(&self, org: &Organization) -> RateDecision {
        let limit = self.inner.config.tier_limits.per_minute(org.tier);
        self.inner.limiter.peek(org.id, limit, self.now())
    }

    pub(super) async fn charge(
        &self,
        org: &Organization,
        cost: u32,
        now: Timestamp,
    ) -> Result<RateDecision> {
        let limit = self.inner.config.tier_limits.per_minute(org.tier);
        // The limiter takes a limit of 0 as 1.
        if limit != crate::TierLimits::UNLIMITED && cost > limit.max(1) {
            // More than a whole minute's allowance never passes: a 429 would have a client
            // that honours `Retry-After` retry it forever.
            return Err(Error::LimitExceeded {
                limit: "rate-limit units in one request (the tier's per-minute limit)",
                max: u64::from(limit.max(1)),
            });
        }
        let decision = match &self.inner.config.shared_limiter {
            // No limit: no store round trip either.
            _ if limit == crate::TierLimits::UNLIMITED => RateDecision::unlimited(),
            Some(shared) => {
                let decision = shared.check(org.id, limit, cost, now).await?;
                // This node's view, for the headers of responses that charge nothing.
                self.inner.limiter.mirror(org.id, &decision, now);
                decision
            }
            None => self.inner.limiter.check(org.id, limit, cost, now),
        };
        if decision.allowed {
            Ok(decision)
        } else {
            Err(Error::RateLimited(decision))
        }
    }

    /// Validates, rate-limits (cost 1), dedups and stores one event. Returns only after the
    /// event is durably stored. `LimitExceeded` (nothing stored or charged) when the
    /// organization keeps as many pending events as
    /// [`IngestorConfig::max_pending`](crate::IngestorConfig::max_pending) allows.
    pub async fn ingest(&self, org: &Organization, event: NewEvent) -> Result<Ingested> {
        let now = self.now();
        let record = validate::validate_event(event, self.inner.config.max_payload, now)?;
        let (reserved, rate) = self.reserve_and_charge(org, 1, 1, now).await?;
        let mut outcomes = self.insert(org, vec![record], now, reserved).await?;
        let outcome = outcomes.pop().ok_or_else(|| {
            Error::Store(crate::StoreError::Corrupt("store returned no outcome".into()))
        })?;
        Ok(ingested(outcome, rate))
    }

    /// Ingests up to `max_batch` events at once. The batch costs its full length against the
    /// rate limit (or is refused whole); invalid items are reported in place and not stored.
    /// A batch longer than the tier's per-minute limit can never pass: `LimitExceeded`,
    /// nothing charged; so is one whose valid events would take the organization past
    /// [`IngestorConfig::max_pending`](crate::IngestorConfig::max_pending).
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
        // Invalid items cost a unit of the rate limit but store nothing.
        let valid = checked.iter().filter(|c| c.is_ok()).count() as u64;
        let (reserved, rate) =
            self.reserve_and_charge(org, valid, u32::try_from(n).unwrap_or(u32::MAX), now).await?;
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
        let outcomes = if valid.is_empty() {
            Vec::new()
        } else {
            self.insert(org, valid, now, reserved).await?
        };
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

    /// Inserts `records`, which hold `reserved` pending events of `org`'s bound: what was
    /// not inserted (duplicates, or everything when the store fails) is given back.
    async fn insert(
        &self,
        org: &Organization,
        records: Vec<EventRecord>,
        now: Timestamp,
        reserved: Reservation,
    ) -> Result<Vec<InsertOutcome>> {
        let outcomes = self
            .inner
            .store
            .insert_events(org.id, records, self.inner.config.dedup_window, now)
            .await?;
        if outcomes.iter().any(|o| matches!(o, InsertOutcome::Inserted { deliveries: 1.., .. })) {
            self.inner.wake.notify_one();
        }
        let inserted = outcomes.iter().filter(|o| matches!(o, InsertOutcome::Inserted { .. }));
        reserved.settle(inserted.count() as u64);
        Ok(outcomes)
    }

    /// Reserves `n` more pending events of `org` under
    /// [`IngestorConfig::max_pending`](crate::IngestorConfig::max_pending) (`pending.rs`),
    /// or `LimitExceeded`; then charges `cost` against the rate limit, giving the
    /// reservation back when that refuses. Returns the reservation (empty when unbounded).
    async fn reserve_and_charge(
        &self,
        org: &Organization,
        n: u64,
        cost: u32,
        now: Timestamp,
    ) -> Result<(Reservation, RateDecision)> {
        let per_minute = self.inner.config.tier_limits.per_minute(org.tier);
        let limit = super::pending::limit_for(per_minute, self.inner.config.max_pending);
        let reserved = match limit {
            Some(limit) if n > 0 => {
                self.inner.pending.reserve(&self.inner.store, org.id, n, limit).await?
            }
            _ => Reservation::none(org.id),
        };
        // A refusal drops the reservation, which hands it back.
        let rate = self.charge(org, cost, now).await?;
        Ok((reserved, rate))
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
