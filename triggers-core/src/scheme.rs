//! [`RoutingDeliverer`]: one deliverer per endpoint URL scheme, so an application can mix
//! in-process consumers (`inproc://…`) and webhooks (`https://…`) on one Ingestor.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::deliver::{Attempt, Deliverer, Outcome};
use crate::store::Delivery;

/// Hands each delivery to the deliverer registered for the scheme of its endpoint URL (the
/// part before `://`, compared case-insensitively). A delivery whose scheme has no
/// deliverer fails permanently with a reason naming the scheme (visible in the event's
/// attempts); it is never retried, since retrying cannot register one.
///
/// ```
/// use triggers_core::{FnDeliverer, NoDeliverer, Outcome, RoutingDeliverer};
/// let deliverer = RoutingDeliverer::new()
///     .route("inproc", FnDeliverer::new(|d| async move {
///         tracing::info!(event = %d.event_id, "consumed in process");
///         Outcome::Delivered
///     }))
///     // With the `http` feature: `.webhooks(WebhookDeliverer::new(WebhookConfig::default())?)`
///     .route("test", NoDeliverer);
/// # let _ = deliverer;
/// ```
#[derive(Default, Clone)]
pub struct RoutingDeliverer {
    routes: HashMap<String, Arc<dyn Deliverer>>,
}

impl RoutingDeliverer {
    /// A router without routes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends deliveries to endpoints with URL scheme `scheme` (e.g. `"inproc"`) to
    /// `deliverer`, replacing an earlier route for the same scheme.
    pub fn route(mut self, scheme: &str, deliverer: impl Deliverer) -> Self {
        self.routes.insert(scheme.to_ascii_lowercase(), Arc::new(deliverer));
        self
    }

    /// Sends both `http` and `https` endpoints to `deliverer` (the webhook deliverer).
    pub fn webhooks(mut self, deliverer: impl Deliverer) -> Self {
        let shared: Arc<dyn Deliverer> = Arc::new(deliverer);
        self.routes.insert("http".into(), shared.clone());
        self.routes.insert("https".into(), shared);
        self
    }
}

impl fmt::Debug for RoutingDeliverer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut schemes: Vec<_> = self.routes.keys().collect();
        schemes.sort();
        f.debug_struct("RoutingDeliverer").field("schemes", &schemes).finish()
    }
}

#[async_trait]
impl Deliverer for RoutingDeliverer {
    async fn deliver(&self, delivery: &Delivery) -> Attempt {
        let scheme = delivery.url.split_once("://").map_or("", |(s, _)| s).to_ascii_lowercase();
        match self.routes.get(&scheme) {
            Some(deliverer) => deliverer.deliver(delivery).await,
            None => Outcome::Permanent(format!(
                "no deliverer for URL scheme {scheme:?} (RoutingDeliverer routes: {:?})",
                {
                    let mut s: Vec<_> = self.routes.keys().map(String::as_str).collect();
                    s.sort_unstable();
                    s
                }
            ))
            .into(),
        }
    }
}
