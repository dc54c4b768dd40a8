//! Organizations, keys and endpoints.

use super::state::{set_status, EndpointRow, State, Superseded, Tenant};
use crate::clock::Timestamp;
use crate::domain::event::EventStatus;
use crate::domain::key::KeyHash;
use crate::domain::org::Organization;
use crate::domain::webhook::{DeliveryOrdering, Endpoint, Secret, DISABLED_BY_REQUEST};
use crate::domain::{DeliveryId, EndpointId, EventId, OrganizationId};
use crate::store::{
    operational, EndpointPatch, EndpointUpdate, NewEndpoint, RecoverQuery, Recovered, StoreError,
    StoreResult, BACKLOG_BATCH,
};

/// The error of one endpoint too many.
pub(crate) fn endpoint_limit(max: u32) -> StoreError {
    StoreError::LimitExceeded { limit: "webhook endpoints per organization", max: max.into() }
}

impl State {
    pub(super) fn create_organization(
        &mut self,
        org: &Organization,
        key: &KeyHash,
    ) -> StoreResult<()> {
        if self.orgs.contains_key(&org.id) {
            return Err(StoreError::Conflict(format!("organization {} exists", org.id)));
        }
        if self.keys.contains_key(key.as_bytes()) {
            return Err(StoreError::Conflict("the API key hash is already in use".into()));
        }
        self.keys.insert(*key.as_bytes(), org.id);
        self.orgs.insert(org.id, Tenant::new(org.clone(), *key));
        Ok(())
    }

    pub(super) fn organization_by_key(&self, key: &KeyHash) -> Option<Organization> {
        let id = self.keys.get(key.as_bytes())?;
        self.orgs.get(id).map(|t| t.org.clone())
    }

    pub(super) fn organization(&self, id: OrganizationId) -> Option<Organization> {
        self.orgs.get(&id).map(|t| t.org.clone())
    }

    pub(super) fn replace_key(&mut self, id: OrganizationId, key: &KeyHash) -> StoreResult<bool> {
        let Some(tenant) = self.orgs.get_mut(&id) else { return Ok(false) };
        match self.keys.get(key.as_bytes()) {
            Some(owner) if *owner != id => {
                return Err(StoreError::Conflict("the API key hash is already in use".into()))
            }
            _ => {}
        }
        self.keys.remove(tenant.key.as_bytes());
        self.keys.insert(*key.as_bytes(), id);
        tenant.key = *key;
        Ok(true)
    }

    pub(super) fn create_endpoint(
        &mut self,
        org: OrganizationId,
        new: &NewEndpoint,
    ) -> StoreResult<Endpoint> {
        let Some(tenant) = self.orgs.get_mut(&org) else {
            return Err(StoreError::InvalidInput(format!("no organization {org}")));
        };
        if self.endpoints.contains_key(&new.id) {
            return Err(StoreError::Conflict(format!("endpoint {} exists", new.id)));
        }
        if tenant.endpoints.len() >= self.limits.max_endpoints as usize {
            return Err(endpoint_limit(self.limits.max_endpoints));
        }
        let endpoint = Endpoint {
            id: new.id,
            organization_id: org,
            url: new.url.clone(),
            event_type_filter: new.event_type_filter.clone(),
            secret: new.secret.clone(),
            enabled: true,
            disabled_reason: None,
            created_at: new.created_at,
            description: None,
            headers: Vec::new(),
            rate_limit: None,
            concurrency: None,
            ordering: new.ordering,
        };
        // Keep the list oldest first (stable for equal times: creation order).
        let at = tenant.endpoints.partition_point(|id| {
            self.endpoints.get(id).is_some_and(|e| e.endpoint.created_at <= new.created_at)
        });
        tenant.endpoints.insert(at, new.id);
        self.endpoints.insert(
            new.id,
            EndpointRow { endpoint: endpoint.clone(), previous: None, failing_since: None },
        );
        Ok(endpoint)
    }

    pub(super) fn endpoints(&self, org: OrganizationId) -> Vec<Endpoint> {
        let Some(tenant) = self.orgs.get(&org) else { return Vec::new() };
        tenant
            .endpoints
            .iter()
            .filter_map(|id| self.endpoints.get(id).map(|e| e.endpoint.clone()))
            .collect()
    }

    /// The endpoint `id` if it belongs to `org`.
    fn own_endpoint(&mut self, org: OrganizationId, id: EndpointId) -> Option<&mut EndpointRow> {
        self.endpoints.get_mut(&id).filter(|e| e.endpoint.organization_id == org)
    }

    pub(super) fn delete_endpoint(&mut self, org: OrganizationId, id: EndpointId) -> bool {
        if self.own_endpoint(org, id).is_none() {
            return false;
        }
        self.endpoints.remove(&id);
        if let Some(tenant) = self.orgs.get_mut(&org) {
            tenant.endpoints.retain(|e| *e != id);
        }
        let cancelled: Vec<_> =
            self.queue.by_endpoint.get(&id).map(|q| q.ids().collect()).unwrap_or_default();
        for delivery_id in cancelled {
            // An in-flight one is remembered, so that its attempt is still recorded.
            let Some(row) = self.remove_delivery(delivery_id) else { continue };
            if let Some(lease) = row.lease {
                let kept = Superseded { org, event_id: row.event_id, attempt: row.attempt, lease };
                self.queue.superseded.insert(delivery_id, kept);
            }
        }
        self.attempts.forget_endpoint(id);
        self.failed.remove_endpoint(id);
        true
    }

    /// One batch before `delete_endpoint` deletes a large backlog's endpoint: cancels at most
    /// [`BACKLOG_BATCH`] pending deliveries and forgets at most as many failed ones; returns
    /// the larger count (0 for an unknown or foreign endpoint).
    pub(super) fn cancel_backlog(&mut self, org: OrganizationId, id: EndpointId) -> u64 {
        if self.own_endpoint(org, id).is_none() {
            return 0;
        }
        let pending: Vec<DeliveryId> = self.queue.by_endpoint.get(&id).map_or_else(Vec::new, |q| {
            let leased: std::collections::HashSet<_> = q.leased.iter().map(|k| k.1).collect();
            q.ids().filter(|d| !leased.contains(d)).take(BACKLOG_BATCH).collect()
        });
        for delivery in &pending {
            self.remove_delivery(*delivery);
        }
        let failed: Vec<EventId> =
            self.failed.of_endpoint(id).map(|(event, _)| event).take(BACKLOG_BATCH).collect();
        for event in &failed {
            self.failed.remove(id, *event);
        }
        pending.len().max(failed.len()) as u64
    }

    /// One batch before a switch to parallel dissolves a long line: turns at most
    /// [`BACKLOG_BATCH`] of the endpoint's ordered deliveries, oldest first, into parallel
    /// ones; returns how many (0 for an unknown or foreign endpoint).
    pub(super) fn shorten_line(&mut self, org: OrganizationId, id: EndpointId) -> u64 {
        if self.own_endpoint(org, id).is_none() {
            return 0;
        }
        let line: Vec<DeliveryId> =
            self.queue.by_endpoint.get(&id).map_or_else(Vec::new, |q| {
                q.line.iter().map(|k| k.1).take(BACKLOG_BATCH).collect()
            });
        self.make_parallel(&line);
        line.len() as u64
    }

    /// Turns the ordered deliveries `line` into parallel ones.
    fn make_parallel(&mut self, line: &[DeliveryId]) {
        for delivery in line {
            if let Some(d) = self.queue.deliveries.get_mut(delivery) {
                self.queue.by_endpoint.remove(*delivery, d);
                d.seq = None;
                self.queue.by_endpoint.insert(*delivery, d);
            }
        }
    }

    pub(super) fn endpoint(&self, org: OrganizationId, id: EndpointId) -> Option<Endpoint> {
        self.endpoints
            .get(&id)
            .filter(|e| e.endpoint.organization_id == org)
            .map(|e| e.endpoint.clone())
    }

    pub(super) fn update_endpoint(
        &mut self,
        org: OrganizationId,
        id: EndpointId,
        patch: &EndpointPatch,
        now: Timestamp,
    ) -> Option<EndpointUpdate> {
        self.own_endpoint(org, id)?;
        if let Some(ordering) = patch.ordering {
            self.set_endpoint_ordering(org, id, ordering);
        }
        let row = self.own_endpoint(org, id)?;
        let was_enabled = row.endpoint.enabled;
        let ep = &mut row.endpoint;
        if let Some(url) = &patch.url {
            ep.url = url.clone();
        }
        if let Some(filter) = &patch.event_type_filter {
            ep.event_type_filter = filter.clone();
        }
        if let Some(description) = &patch.description {
            ep.description = description.clone();
        }
        if let Some(headers) = &patch.headers {
            ep.headers = headers.clone();
        }
        if let Some(rate) = patch.rate_limit {
            ep.rate_limit = rate;
        }
        if let Some(concurrency) = patch.concurrency {
            ep.concurrency = concurrency;
        }
        if patch.enabled == Some(false) && was_enabled {
            ep.enabled = false;
            ep.disabled_reason = Some(DISABLED_BY_REQUEST.to_owned());
        }
        // Disabling, or enabling over what a disable left behind: at most one batch here,
        // the rest in writes of their own (`store::update_in_batches`).
        let failed = match patch.enabled {
            Some(_) if !self.own_endpoint(org, id)?.endpoint.enabled => {
                self.fail_left_behind(org, id, now)
            }
            _ => 0,
        };
        let row = self.own_endpoint(org, id)?;
        if patch.enabled == Some(true) && !was_enabled {
            row.endpoint.enabled = true;
            row.endpoint.disabled_reason = None;
            row.failing_since = None;
        }
        let endpoint = row.endpoint.clone();
        if endpoint.enabled != was_enabled {
            self.announce(org, id, now);
        }
        Some(EndpointUpdate { endpoint, was_enabled, failed })
    }

    /// Inserts the operational event about endpoint `id` as it is now
    /// (`store::operational`), in the same hold of the lock as the change it announces.
    pub(super) fn announce(&mut self, org: OrganizationId, id: EndpointId, at: Timestamp) {
        let Some(row) = self.endpoints.get(&id) else { return };
        let ep = &row.endpoint;
        let reason = ep.disabled_reason.as_deref();
        let event = operational::endpoint_changed(id, &ep.url, ep.enabled, reason, at);
        let inserted =
            event.and_then(|e| self.insert_events(org, vec![e], std::time::Duration::ZERO, at));
        if let Err(e) = inserted {
            // Only for an organization that is gone, which has no endpoint either.
            tracing::warn!(organization_id = %org, endpoint_id = %id, error = %e,
                "operational event not stored");
        }
    }

    /// One batch of `EndpointStore::finish_disabling`: fails at most
    /// [`BACKLOG_BATCH`](crate::store::BACKLOG_BATCH) outstanding deliveries of a disabled
    /// endpoint with its reason; 0 for an enabled, unknown or foreign one.
    pub(super) fn fail_left_behind(
        &mut self,
        org: OrganizationId,
        id: EndpointId,
        now: Timestamp,
    ) -> u64 {
        let Some(row) = self.own_endpoint(org, id) else { return 0 };
        if row.endpoint.enabled {
            return 0;
        }
        let reason = row.endpoint.disabled_reason.clone();
        self.fail_outstanding(id, reason.as_deref().unwrap_or(DISABLED_BY_REQUEST), now)
    }

    /// `EndpointStore::unfinished_disables`.
    pub(super) fn unfinished_disables(&self) -> Vec<(OrganizationId, EndpointId)> {
        let has_backlog =
            |id| self.queue.by_endpoint.get(id).is_some_and(|q| q.ids().next().is_some());
        self.endpoints
            .iter()
            .filter(|(id, row)| !row.endpoint.enabled && has_backlog(*id))
            .map(|(id, row)| (row.endpoint.organization_id, *id))
            .collect()
    }

    pub(super) fn recover(
        &mut self,
        org: OrganizationId,
        id: EndpointId,
        query: RecoverQuery,
        now: Timestamp,
    ) -> Option<Recovered> {
        if !self.own_endpoint(org, id)?.endpoint.enabled {
            return Some(Recovered::default());
        }
        let limit = query.limit as usize;
        let mut picked: Vec<EventId> =
            self.failed.window(id, query.since, query.until).take(limit + 1).collect();
        let more = picked.len() > limit;
        picked.truncate(limit);
        let fifo = self.own_endpoint(org, id)?.endpoint.ordering == DeliveryOrdering::Fifo;
        let State { orgs, queue, failed, finished, .. } = self;
        let tenant = orgs.get_mut(&org)?;
        for event_id in &picked {
            failed.remove(id, *event_id);
            let Some(row) = tenant.events.get_mut(event_id) else { continue };
            row.outstanding.push(queue.push(org, *event_id, id, fifo, now));
            if row.event.status == EventStatus::Failed {
                let pending = EventStatus::Pending;
                set_status(&mut tenant.by_status, finished, &mut row.event, pending, None);
            }
        }
        let queued = u32::try_from(picked.len()).unwrap_or(u32::MAX);
        Some(Recovered { queued, more })
    }

    pub(super) fn set_endpoint_ordering(
        &mut self,
        org: OrganizationId,
        id: EndpointId,
        ordering: DeliveryOrdering,
    ) -> bool {
        let Some(row) = self.own_endpoint(org, id) else { return false };
        row.endpoint.ordering = ordering;
        if ordering == DeliveryOrdering::Parallel {
            // The line dissolves: its deliveries become parallel ones.
            let line: Vec<_> = self
                .queue
                .by_endpoint
                .get(&id)
                .map(|q| q.line.iter().map(|k| k.1).collect())
                .unwrap_or_default();
            self.make_parallel(&line);
        }
        true
    }

    pub(super) fn rotate_endpoint_secret(
        &mut self,
        org: OrganizationId,
        id: EndpointId,
        secret: &Secret,
        previous_valid_until: Timestamp,
    ) -> bool {
        let Some(row) = self.own_endpoint(org, id) else { return false };
        let old = std::mem::replace(&mut row.endpoint.secret, secret.clone());
        row.previous = Some((old, previous_valid_until));
        true
    }

    pub(super) fn rewrite_secrets(
        &mut self,
        rewrite: &(dyn Fn(EndpointId, &Secret) -> Option<Secret> + Send + Sync),
    ) -> u64 {
        let mut n = 0;
        for (id, row) in &mut self.endpoints {
            if let Some(new) = rewrite(*id, &row.endpoint.secret) {
                row.endpoint.secret = new;
                n += 1;
            }
            if let Some((previous, _)) = &mut row.previous {
                if let Some(new) = rewrite(*id, previous) {
                    *previous = new;
                    n += 1;
                }
            }
        }
        n
    }
}
