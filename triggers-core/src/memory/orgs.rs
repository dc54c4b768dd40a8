//! Organizations, keys and endpoints.

use super::state::{EndpointRow, State, Tenant};
use crate::clock::Timestamp;
use crate::domain::key::KeyHash;
use crate::domain::org::Organization;
use crate::domain::webhook::{DeliveryOrdering, Endpoint, Secret};
use crate::domain::{EndpointId, OrganizationId};
use crate::store::{NewEndpoint, StoreError, StoreResult};

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
        let endpoint = Endpoint {
            id: new.id,
            organization_id: org,
            url: new.url.clone(),
            event_type_filter: new.event_type_filter.clone(),
            secret: new.secret.clone(),
            enabled: true,
            disabled_reason: None,
            created_at: new.created_at,
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
        // Deleting an endpoint is rare: a scan of the outstanding deliveries is fine.
        let cancelled: Vec<_> = self
            .queue
            .deliveries
            .iter()
            .filter(|(_, d)| d.endpoint_id == id)
            .map(|(delivery_id, _)| *delivery_id)
            .collect();
        for delivery_id in cancelled {
            self.remove_delivery(delivery_id);
        }
        true
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
            for (_, delivery) in self.queue.lines.remove(&id).unwrap_or_default() {
                if let Some(d) = self.queue.deliveries.get_mut(&delivery) {
                    d.seq = None;
                }
            }
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
}
