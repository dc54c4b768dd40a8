//! Typed identifiers. All are UUIDs; event ids are UUID v7 (time-ordered).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new, time-ordered (UUID v7) id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }
    };
}

uuid_id!(
    /// Identifies an organization (tenant).
    OrganizationId
);
uuid_id!(
    /// Identifies an event. Always UUID v7, so ids sort by creation time.
    EventId
);
uuid_id!(
    /// Identifies a webhook endpoint (or any other delivery target).
    EndpointId
);
uuid_id!(
    /// Identifies one delivery: one event to one endpoint.
    DeliveryId
);
uuid_id!(
    /// Identifies a worker that holds leases.
    WorkerId
);

/// The namespace of [`OrganizationId::named`] (a fixed, random UUID).
const ORGANIZATION_NAMESPACE: Uuid = Uuid::from_u128(0x7c1e_64a2_3b0f_4f6e_9d51_a8e2_c4f0_1b37);

impl OrganizationId {
    /// The id an embedding application uses for its organization called `key`: the same key
    /// gives the same id in every run and on every node (a name-based UUID v5), so
    /// [`Ingestor::organization_or_create`](crate::Ingestor::organization_or_create) finds the
    /// organization again after a restart. Organizations created over HTTP get random ids,
    /// so a key cannot collide with them.
    ///
    /// ```
    /// use triggers_core::OrganizationId;
    /// assert_eq!(OrganizationId::named("my-app"), OrganizationId::named("my-app"));
    /// assert_ne!(OrganizationId::named("my-app"), OrganizationId::named("my-app-2"));
    /// ```
    pub fn named(key: &str) -> Self {
        Self(Uuid::new_v5(&ORGANIZATION_NAMESPACE, key.as_bytes()))
    }
}
