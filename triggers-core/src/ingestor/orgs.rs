//! Organizations and their API keys: created over HTTP with a key, or found again by an
//! embedding application on every start.

use super::{to_the_end, Ingestor};
use crate::deliver::Deliverer;
use crate::domain::key::ApiKey;
use crate::domain::org::{Organization, Tier};
use crate::domain::validate::ValidationError;
use crate::domain::OrganizationId;
use crate::error::{Error, Result};
use crate::store::EventStore;

impl<S: EventStore, D: Deliverer> Ingestor<S, D> {
    /// Creates an organization (with a fresh random id) and its first API key. The key is
    /// returned only here. Every call creates another organization; an application that
    /// wants the same one on every run uses [`organization_or_create`](Self::organization_or_create).
    pub async fn create_organization(
        &self,
        name: &str,
        tier: Tier,
    ) -> Result<(Organization, ApiKey)> {
        let name = checked_name(name)?;
        let org = Organization::new(name, tier, self.now());
        let key = ApiKey::generate();
        self.inner.store.create_organization(&org, &key.hash()).await?;
        Ok((org, key))
    }

    /// The organization an API key belongs to; `Unauthorized` for unknown or rotated keys.
    /// Results are cached for `auth_cache_ttl`. Lookups of keys not seen valid on this node
    /// in the last day (invented keys) belong to no organization: at most half of
    /// `store_concurrency` of them (at least 1) reach the store at once, at most 64 wait for
    /// a turn, each at most a second, otherwise `Overloaded` (HTTP 503 with `Retry-After`).
    pub async fn authenticate(&self, api_key: &str) -> Result<Organization> {
        let hash = crate::domain::key::KeyHash::of(api_key);
        if let Some(org) = self.inner.auth.get(&hash) {
            return Ok(org);
        }
        let found = if self.inner.auth.is_known(&hash) {
            self.inner.store.organization_by_key(&hash).await?
        } else {
            // Held until the store is done, also when the client hangs up (see `at_store`).
            let turn = self.inner.auth.lookup_turn().await?;
            let store = self.inner.store.clone();
            to_the_end(turn, async move { Ok(store.organization_by_key(&hash).await?) }).await?
        };
        match found {
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
        let hash = key.hash();
        // The cache forgets the old key in the same task as the store replaces it: also when
        // the caller stopped waiting in between.
        self.at_store(org, move |this, org| async move {
            if !this.inner.store.replace_key(org.id, &hash).await? {
                return Err(Error::NotFound);
            }
            this.inner.auth.forget(org.id);
            Ok(())
        })
        .await?;
        Ok(key)
    }

    /// The organization with this id; `NotFound` if there is none.
    pub async fn organization(&self, id: OrganizationId) -> Result<Organization> {
        self.inner.store.organization(id).await?.ok_or(Error::NotFound)
    }

    /// The organization with id `id`, created with `name` and `tier` if it does not exist yet
    /// — the way an embedding application gets *its* organization on every start, on one
    /// node or many. Choose the id yourself (an external id) or derive it from a stable name
    /// with [`OrganizationId::named`].
    ///
    /// An existing organization is returned as stored: `name` and `tier` only apply at
    /// creation. Concurrent calls (also on other nodes) agree on one organization. No API key
    /// is returned: in-process callers need none; [`rotate_key`](Self::rotate_key) issues
    /// one when it is needed for HTTP.
    ///
    /// ```
    /// use triggers_core::{Ingestor, IngestorConfig, MemoryStore, NoDeliverer, OrganizationId, Tier};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), triggers_core::Error> {
    /// let ingestor = Ingestor::start(MemoryStore::new(), NoDeliverer, IngestorConfig::default());
    /// let id = OrganizationId::named("my-app");
    /// let first = ingestor.organization_or_create(id, "my-app", Tier::Enterprise).await?;
    /// let again = ingestor.organization_or_create(id, "my-app", Tier::Enterprise).await?;
    /// assert_eq!(first, again);
    /// # ingestor.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn organization_or_create(
        &self,
        id: OrganizationId,
        name: &str,
        tier: Tier,
    ) -> Result<Organization> {
        if let Some(org) = self.inner.store.organization(id).await? {
            return Ok(org);
        }
        let org = Organization { id, ..Organization::new(checked_name(name)?, tier, self.now()) };
        match self.inner.store.create_organization(&org, &ApiKey::generate().hash()).await {
            Ok(()) => Ok(org),
            // Another caller created it first (the store lets exactly one creation win).
            Err(crate::StoreError::Conflict(_)) => {
                self.inner.store.organization(id).await?.ok_or(Error::NotFound)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// A trimmed organization name of 1–255 characters without control characters. The limit
/// and the control characters apply to the name as sent (as the OpenAPI document says),
/// before trimming: a trailing newline is refused, not trimmed away.
pub(super) fn checked_name(name: &str) -> Result<&str> {
    let sent = name.chars().count();
    let controls = name.chars().any(char::is_control);
    let name = name.trim();
    if name.is_empty() || sent > 255 || controls {
        return Err(ValidationError::Field {
            field: "organization_name",
            reason: "must have 1 to 255 characters and no control characters".into(),
        }
        .into());
    }
    Ok(name)
}
