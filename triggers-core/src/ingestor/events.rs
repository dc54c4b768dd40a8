//! One event and what its organization does with it: read it, acknowledge it, deliver it
//! again; and the organization's counts.

use super::Ingestor;
use crate::deliver::Deliverer;
use crate::domain::event::{EventDetail, EventStatus};
use crate::domain::org::Organization;
use crate::domain::validate::ValidationError;
use crate::domain::EventId;
use crate::error::{Error, Result};
use crate::limiter::RateDecision;
use crate::store::{AckOutcome, EventStore, QueueStats};

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

impl<S: EventStore, D: Deliverer> Ingestor<S, D> {
    /// One event with its delivery attempts.
    pub async fn event(&self, org: &Organization, id: EventId) -> Result<EventDetail> {
        self.at_store(org, move |this, org| async move {
            this.inner.store.event(org.id, id).await?.ok_or(Error::NotFound)
        })
        .await
    }

    /// Acknowledges one event (idempotent); `NotFound` for unknown or foreign ids.
    pub async fn ack(&self, org: &Organization, id: EventId) -> Result<()> {
        self.at_store(org, move |this, org| async move {
            let outcome = this.inner.store.ack(org.id, &[id], this.now()).await?;
            if outcome.acknowledged.is_empty() {
                Err(Error::NotFound)
            } else {
                this.inner.pending.forget(org.id);
                Ok(())
            }
        })
        .await
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
        let ids = ids.to_vec();
        self.at_store(org, move |this, org| async move {
            let outcome = this.inner.store.ack(org.id, &ids, this.now()).await?;
            if !outcome.acknowledged.is_empty() {
                this.inner.pending.forget(org.id);
            }
            Ok(outcome)
        })
        .await
    }

    /// Delivers an event again to its matching endpoints (also a `failed` one).
    ///
    /// Charged like an ingest: one unit of the organization's rate limit per delivery it
    /// queues (one per enabled endpoint matching the event's type, at least one); refused
    /// whole with [`Error::RateLimited`] when the allowance is spent, and then nothing
    /// changed; `LimitExceeded` (nothing charged or changed) when it would cost more than the
    /// tier's whole per-minute limit. `NotFound` (uncharged) for an unknown or foreign id.
    /// An endpoint created
    /// between the count and the replay may get a delivery that was not charged.
    pub async fn replay(&self, org: &Organization, id: EventId) -> Result<Replayed> {
        let now = self.now();
        self.at_store(
            org,
            move |this, org| async move { this.replay_at_store(&org, id, now).await },
        )
        .await
    }

    /// [`replay`](Self::replay) once the organization has its place at the store.
    async fn replay_at_store(
        &self,
        org: &Organization,
        id: EventId,
        now: crate::clock::Timestamp,
    ) -> Result<Replayed> {
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

    /// Event counts by status, and in-flight deliveries.
    pub async fn stats(&self, org: &Organization) -> Result<QueueStats> {
        self.at_store(org, |this, org| async move { Ok(this.inner.store.stats(org.id).await?) })
            .await
    }
}
