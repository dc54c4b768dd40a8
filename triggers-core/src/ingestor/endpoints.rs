//! Delivery targets: creating, listing, changing ordering, rotating secrets (sealed at rest
//! when a cipher is configured) and deleting.

use std::sync::Arc;

use super::Ingestor;
use crate::clock;
use crate::deliver::Deliverer;
use crate::domain::org::Organization;
use crate::domain::validate::{self, ValidationError};
use crate::domain::webhook::{DeliveryOrdering, Endpoint, Secret, TypeGlob};
use crate::domain::EndpointId;
use crate::error::{Error, Result};
use crate::store::{EventStore, NewEndpoint};

impl<S: EventStore, D: Deliverer> Ingestor<S, D> {
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
        let mut created = self
            .at_store(org, move |this, org| async move {
                Ok(this.inner.store.create_endpoint(org.id, &endpoint).await?)
            })
            .await?;
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
        self.at_store(org, move |this, org| async move {
            if this.inner.store.set_endpoint_ordering(org.id, id, ordering).await? {
                this.inner.wake.notify_one();
                Ok(())
            } else {
                Err(Error::NotFound)
            }
        })
        .await
    }

    /// The organization's endpoints, oldest first. Sealed secrets are opened; one that
    /// cannot be (its key is not configured) is left sealed.
    pub async fn endpoints(&self, org: &Organization) -> Result<Vec<Endpoint>> {
        let mut endpoints = self
            .at_store(org, |this, org| async move { Ok(this.inner.store.endpoints(org.id).await?) })
            .await?;
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
        self.at_store(org, move |this, org| async move {
            if this.inner.store.delete_endpoint(org.id, id).await? {
                Ok(())
            } else {
                Err(Error::NotFound)
            }
        })
        .await
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
        let rotated = self
            .at_store(org, move |this, org| async move {
                Ok(this
                    .inner
                    .store
                    .rotate_endpoint_secret(org.id, id, &stored, grace_until)
                    .await?)
            })
            .await?;
        if rotated {
            Ok(secret)
        } else {
            Err(Error::NotFound)
        }
    }
}

/// The URL check of endpoint creation, also used when a URL is changed.
pub(super) fn check_endpoint_url(url: &str) -> Result<()> {
    // The one URL check of every way an endpoint's URL is set (create and update).
    Ok(validate::endpoint_url(url)?)
}
