//! The SQL behind each store method, as plain functions over a connection.

pub(crate) mod claim;
pub(crate) mod delivery_key;
pub(crate) mod events;
pub(crate) mod history;
pub(crate) mod lifecycle;
pub(crate) mod orgs;
pub(crate) mod pending;
pub(crate) mod purge;
pub(crate) mod queue;
pub(crate) mod reads;
