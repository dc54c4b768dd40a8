//! Endpoint lifecycle on the [`Ingestor`]: lookup, patching (with re-enabling and
//! disabling), and recovering failed deliveries. (The operational events that tell an
//! organization about a change are written by the store with it: `store::operational`.)

use super::{check_endpoint_url, Ingestor};
use crate::clock::Timestamp;
use crate::deliver::Deliverer;
use crate::domain::org::Organization;
use crate::domain::validate::ValidationError;
use crate::domain::webhook::{check_headers, Endpoint};
use crate::domain::EndpointId;
use crate::error::{Error, Result};
use crate::store::{EndpointPatch, EventStore, RecoverQuery, Recovered};

/// At most this many failed deliveries are queued again by one recover call.
pub const MAX_RECOVER: u32 = 10_000;

pub use crate::store::operational::{OPERATIONAL_DISABLED, OPERATIONAL_ENABLED};

/// Per-endpoint rate limits accepted: deliveries per second.
const RATE_RANGE: std::ops::RangeInclusive<u32> = 1..=10_000;
/// Per-endpoint concurrency limits accepted.
const CONCURRENCY_RANGE: std::ops::RangeInclusive<u32> = 1..=1_000;

fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
    ValidationError::Field { field, reason: reason.into() }.into()
}

/// Checks everything in a patch (the filter is already parsed).
fn check_patch(patch: &EndpointPatch) -> Result<()> {
    if let Some(url) = &patch.url {
        check_endpoint_url(url)?;
    }
    if let Some(Some(d)) = &patch.description {
        if d.chars().count() > 1024 || d.chars().any(char::is_control) {
            return Err(invalid("description", "at most 1024 characters, no control characters"));
        }
    }
    if let Some(headers) = &patch.headers {
        check_headers(headers).map_err(|reason| invalid("headers", reason))?;
    }
    if let Some(Some(rate)) = patch.rate_limit {
        if !RATE_RANGE.contains(&rate) {
            return Err(invalid("rate_limit", "must be 1 to 10000 deliveries per second"));
        }
    }
    if let Some(Some(n)) = patch.concurrency {
        if !CONCURRENCY_RANGE.contains(&n) {
            return Err(invalid("concurrency", "must be 1 to 1000"));
        }
    }
    Ok(())
}

impl<S: EventStore, D: Deliverer> Ingestor<S, D> {
    /// One endpoint of the organization.
    pub async fn endpoint(&self, org: &Organization, id: EndpointId) -> Result<Endpoint> {
        self.at_store(org, move |this, org| async move {
            this.inner.store.endpoint(org.id, id).await?.ok_or(Error::NotFound)
        })
        .await
    }

    /// Changes an endpoint (see [`EndpointPatch`]); every field is validated as on creation
    /// (`Invalid`, nothing changed). A new `ordering` takes effect like
    /// [`set_endpoint_ordering`](Self::set_endpoint_ordering), in the same store write. Enabling a disabled endpoint clears its reason; disabling
    /// one fails its outstanding deliveries (recover them later with
    /// [`recover`](Self::recover)). Either change writes an operational event
    /// ([`OPERATIONAL_ENABLED`] / [`OPERATIONAL_DISABLED`]) into the organization's stream,
    /// in the store write that makes the change; a patch with `enabled` therefore costs one
    /// unit of the rate limit (`RateLimited` before anything changes).
    pub async fn update_endpoint(
        &self,
        org: &Organization,
        id: EndpointId,
        patch: &EndpointPatch,
    ) -> Result<Endpoint> {
        check_patch(patch)?;
        let now = self.now();
        let patch = patch.clone();
        self.at_store(org, move |this, org| async move {
            this.update_at_store(&org, id, &patch, now).await
        })
        .await
    }

    /// [`update_endpoint`](Self::update_endpoint) once the organization has its place at
    /// the store.
    async fn update_at_store(
        &self,
        org: &Organization,
        id: EndpointId,
        patch: &EndpointPatch,
        now: Timestamp,
    ) -> Result<Endpoint> {
        if patch.enabled.is_some() {
            // A state change ingests an operational event: it costs one unit, like any
            // event, so toggling cannot grow the organization's stream without bound.
            self.charge(org, 1, now).await?;
        }
        let update = self
            .inner
            .store
            .update_endpoint(org.id, id, patch, now)
            .await?
            .ok_or(Error::NotFound)?;
        let ep = &update.endpoint;
        if patch.ordering.is_some() {
            // Switching to parallel may release a line's deliveries.
            self.inner.wake.notify_one();
        }
        if update.was_enabled != ep.enabled {
            // The store wrote the operational event with the change.
            tracing::info!(
                organization_id = %org.id, endpoint_id = %id, enabled = ep.enabled,
                failed = update.failed, "endpoint enabled state changed"
            );
            self.inner.wake.notify_one();
        }
        Ok(update.endpoint)
    }

    /// Queues again the failed deliveries of an (enabled) endpoint whose event was created in
    /// `[since, until)`, oldest first (`more` says whether some remain). Charged like a
    /// replay, one unit per delivery it queues, and at least one per call (a call that finds
    /// nothing still had the store look): a call queues at most [`MAX_RECOVER`], the tier's
    /// per-minute limit and what the organization's allowance has left, and is refused with
    /// `RateLimited` before anything changes when nothing is left. The first unit is paid
    /// before the store is asked, and its answer (from the shared limiter, when there is one)
    /// sizes the call; the rest is charged for what was queued, so concurrent calls (also on
    /// other nodes) may overshoot the allowance by at most one call's batch each.
    pub async fn recover(
        &self,
        org: &Organization,
        id: EndpointId,
        since: Timestamp,
        until: Option<Timestamp>,
    ) -> Result<Recovered> {
        // `until <= since` is an empty window: nothing to queue (still 404 for a foreign id).
        let now = self.now();
        self.at_store(org, move |this, org| async move {
            this.recover_at_store(&org, id, since, until, now).await
        })
        .await
    }

    /// [`recover`](Self::recover) once the organization has its place at the store.
    async fn recover_at_store(
        &self,
        org: &Organization,
        id: EndpointId,
        since: Timestamp,
        until: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Recovered> {
        // Spent: 429 with the limiter's headers. (Not `rate_status`: with a shared limiter,
        // that is only this node's last view, blind to other nodes' charges since.)
        let paid = self.charge(org, 1, now).await?;
        let batch = MAX_RECOVER.min(paid.limit).min(paid.remaining.saturating_add(1));
        let query = RecoverQuery { since, until, limit: batch };
        let recovered =
            self.inner.store.recover(org.id, id, query, now).await?.ok_or(Error::NotFound)?;
        let owed = recovered.queued.saturating_sub(1);
        if owed > 0 {
            if let Err(e) = self.charge(org, owed, now).await {
                // Only when another request spent the allowance in between (or another node,
                // with a shared limiter): the deliveries are queued; the overshoot is bounded
                // by this call's batch.
                tracing::debug!(organization_id = %org.id, error = %e, "recover overshot the rate limit");
            }
        }
        if recovered.queued > 0 {
            self.inner.wake.notify_one();
        }
        Ok(recovered)
    }
}
