//! Organizations (tenants) and their tiers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::OrganizationId;
use crate::clock::Timestamp;

/// A tenant. Every event, key and endpoint belongs to exactly one organization, and no
/// organization can see another's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Organization {
    /// The organization's id.
    pub id: OrganizationId,
    /// A display name, 1–255 characters.
    pub name: String,
    /// The pricing tier, which sets the default rate limit.
    pub tier: Tier,
    /// When the organization was created.
    pub created_at: crate::clock::Timestamp,
}

impl Organization {
    /// A new organization with a fresh id.
    pub fn new(name: impl Into<String>, tier: Tier, created_at: Timestamp) -> Self {
        Self { id: OrganizationId::new(), name: name.into(), tier, created_at }
    }
}

/// A pricing tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// 10 events per minute by default.
    Free,
    /// 60 events per minute by default.
    Starter,
    /// 600 events per minute by default.
    Professional,
    /// 6000 events per minute by default.
    Enterprise,
}

impl Tier {
    /// Every tier, cheapest first.
    pub const ALL: [Tier; 4] = [Tier::Free, Tier::Starter, Tier::Professional, Tier::Enterprise];

    /// The tier's lowercase name, as used in the API and in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Starter => "starter",
            Tier::Professional => "professional",
            Tier::Enterprise => "enterprise",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name given is not a tier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown tier {0:?}: expected one of free, starter, professional, enterprise")]
pub struct UnknownTier(pub String);

impl FromStr for Tier {
    type Err = UnknownTier;
    /// A tier by its name; `pro` (the original API's name) is `professional`.
    ///
    /// ```
    /// use triggers_core::Tier;
    /// assert_eq!("pro".parse::<Tier>(), Ok(Tier::Professional));
    /// assert!("gold".parse::<Tier>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "pro" {
            return Ok(Tier::Professional);
        }
        Tier::ALL.into_iter().find(|t| t.as_str() == s).ok_or_else(|| UnknownTier(s.to_owned()))
    }
}

/// Per-minute event allowance of each tier. The allowance may be spent in one burst and
/// refills evenly over the minute.
///
/// ```
/// use triggers_core::{Tier, TierLimits};
/// let limits: TierLimits = "free=5,enterprise=100".parse().unwrap();
/// assert_eq!(limits.per_minute(Tier::Free), 5);
/// assert_eq!(limits.per_minute(Tier::Starter), 60); // unchanged default
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierLimits {
    per_minute: [u32; 4],
}

impl TierLimits {
    /// The per-minute value that means "no limit": the limiter never refuses and keeps no
    /// state for it (see [`TierLimits::unlimited`]).
    pub const UNLIMITED: u32 = u32::MAX;

    /// No limit for any tier: for an in-process embedder whose callers are trusted. The
    /// limiter is bypassed (nothing is counted), and `X-RateLimit-Limit` reads `4294967295`.
    ///
    /// ```
    /// use triggers_core::{Tier, TierLimits};
    /// let limits = TierLimits::unlimited();
    /// assert_eq!(limits.per_minute(Tier::Free), TierLimits::UNLIMITED);
    /// // Or only one tier:
    /// let mixed = TierLimits::default().with(Tier::Enterprise, TierLimits::UNLIMITED);
    /// assert!(mixed.is_unlimited(Tier::Enterprise) && !mixed.is_unlimited(Tier::Free));
    /// // The server's TRIGGERS_TIER_LIMITS syntax:
    /// assert_eq!("enterprise=unlimited".parse::<TierLimits>().unwrap(), mixed);
    /// assert!("enterprise=infinite".parse::<TierLimits>().is_err());
    /// ```
    pub fn unlimited() -> Self {
        Self { per_minute: [Self::UNLIMITED; 4] }
    }

    /// Whether `tier` has no limit.
    pub fn is_unlimited(&self, tier: Tier) -> bool {
        self.per_minute(tier) == Self::UNLIMITED
    }

    /// The limit for `tier`, in events per minute.
    pub fn per_minute(&self, tier: Tier) -> u32 {
        self.per_minute[tier as usize]
    }

    /// Sets the limit for `tier`.
    pub fn with(mut self, tier: Tier, per_minute: u32) -> Self {
        self.per_minute[tier as usize] = per_minute;
        self
    }
}

impl Default for TierLimits {
    fn default() -> Self {
        Self { per_minute: [10, 60, 600, 6000] }
    }
}

/// A tier-limits string was not `tier=N,tier=N,…`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid tier limits {input:?}: {reason}")]
pub struct InvalidTierLimits {
    /// The text that failed to parse.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FromStr for TierLimits {
    type Err = InvalidTierLimits;
    /// Parses `free=10,starter=60,…`; tiers not named keep their default; `unlimited` as a
    /// value lifts the tier's limit ([`TierLimits::UNLIMITED`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| InvalidTierLimits { input: s.to_owned(), reason };
        let mut limits = TierLimits::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) =
                part.split_once('=').ok_or_else(|| err(format!("{part:?} is not tier=N")))?;
            let tier: Tier = name.trim().parse().map_err(|e: UnknownTier| err(e.to_string()))?;
            let n: u32 = match value.trim() {
                "unlimited" => Self::UNLIMITED,
                v => v.parse().map_err(|_| {
                    err(format!("{value:?} is not a whole number or \"unlimited\""))
                })?,
            };
            if n == 0 {
                return Err(err(format!("the limit of {tier} must be at least 1")));
            }
            limits = limits.with(tier, n);
        }
        Ok(limits)
    }
}
