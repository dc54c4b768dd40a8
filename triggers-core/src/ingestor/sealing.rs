//! Opening sealed signing secrets just before a delivery is made.

use std::sync::Arc;

use async_trait::async_trait;

use crate::deliver::{Attempt, Deliverer, Outcome};
use crate::domain::sealed::{open_with, SecretCipher};
use crate::store::Delivery;

/// Wraps the Ingestor's deliverer: a delivery whose secrets are sealed is handed on with
/// them opened. One that cannot be opened (its key is not configured) is not attempted: it
/// is retried later, with the reason in its attempt record, so that configuring the key
/// lets it through.
pub(crate) struct Unsealing<D> {
    inner: D,
    cipher: Option<Arc<SecretCipher>>,
}

impl<D> Unsealing<D> {
    pub(crate) fn new(inner: D, cipher: Option<Arc<SecretCipher>>) -> Self {
        Self { inner, cipher }
    }
}

#[async_trait]
impl<D: Deliverer> Deliverer for Unsealing<D> {
    async fn deliver(&self, delivery: &Delivery) -> Attempt {
        if !delivery.secrets.iter().any(|s| s.is_sealed()) {
            return self.inner.deliver(delivery).await;
        }
        let opened: Result<Vec<_>, _> = delivery
            .secrets
            .iter()
            .map(|s| open_with(self.cipher.as_deref(), delivery.endpoint_id, s))
            .collect();
        match opened {
            Ok(secrets) => {
                let mut open = delivery.clone();
                open.secrets = secrets;
                self.inner.deliver(&open).await
            }
            Err(e) => {
                tracing::error!(endpoint = %delivery.endpoint_id, error = %e,
                    "cannot open the signing secret; the delivery will be retried");
                Outcome::Retry { after: None, reason: format!("signing secret: {e}") }.into()
            }
        }
    }
}
