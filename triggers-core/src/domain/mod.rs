//! The domain: organizations, keys, events, endpoints, and input validation.

pub mod event;
pub mod ids;
pub mod json;
pub mod key;
pub mod org;
pub mod sealed;
pub mod validate;
pub mod webhook;

pub use ids::{DeliveryId, EndpointId, EventId, OrganizationId, WorkerId};
