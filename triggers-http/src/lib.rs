//! Triggers over HTTP: the API server on hyper, and the signed webhook [`WebhookDeliverer`].
pub mod webhook;
pub use webhook::{WebhookConfig, WebhookDeliverer};
