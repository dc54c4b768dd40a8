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
