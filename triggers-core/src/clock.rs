//! Time comes in through a [`Clock`], so leases, retries, the dedup window and rate limits
//! can be tested without sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

/// A point in time, UTC, with microsecond precision (what every store keeps).
pub type Timestamp = DateTime<Utc>;

/// A source of "now".
///
/// Every time-dependent decision in `triggers` (lease expiry, retry schedule, dedup window,
/// rate limits) reads time from a `Clock` handed in by the caller, never from the system clock
/// directly.
pub trait Clock: Send + Sync + 'static {
    /// The current time, truncated to whole microseconds.
    fn now(&self) -> Timestamp;
}

/// A shared clock.
pub type SharedClock = Arc<dyn Clock>;

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        truncate_micros(Utc::now())
    }
}

/// A clock that only moves when told to: for tests.
///
/// ```
/// use std::time::Duration;
/// use triggers_core::clock::{Clock, ManualClock};
/// let clock = ManualClock::new();
/// let t0 = clock.now();
/// clock.advance(Duration::from_secs(5));
/// assert_eq!((clock.now() - t0).num_seconds(), 5);
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    micros: Arc<AtomicI64>,
}

impl ManualClock {
    /// A manual clock starting at the current system time.
    pub fn new() -> Self {
        Self::at(Utc::now())
    }

    /// A manual clock starting at `t`.
    pub fn at(t: Timestamp) -> Self {
        Self { micros: Arc::new(AtomicI64::new(t.timestamp_micros())) }
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.micros.fetch_add(duration_micros(d), Ordering::SeqCst);
    }

    /// Sets the clock to `t`.
    pub fn set(&self, t: Timestamp) {
        self.micros.store(t.timestamp_micros(), Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        from_micros(self.micros.load(Ordering::SeqCst))
    }
}

/// `t` with sub-microsecond precision dropped.
pub fn truncate_micros(t: Timestamp) -> Timestamp {
    from_micros(t.timestamp_micros())
}

/// The timestamp `micros` microseconds after the Unix epoch.
pub fn from_micros(micros: i64) -> Timestamp {
    Utc.timestamp_micros(micros).single().unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The last microsecond of the year 9999, in microseconds after the Unix epoch: later than
/// any time the service stores.
pub const YEAR_9999_END_MICROS: i64 = 253_402_300_799_999_999;

/// `t + d`, saturating at the largest representable time.
///
/// ```
/// use std::time::Duration;
/// use triggers_core::clock::{add, from_micros};
/// let t = from_micros(0);
/// assert!(add(t, Duration::MAX) > add(t, Duration::from_secs(1 << 40)));
/// ```
pub fn add(t: Timestamp, d: Duration) -> Timestamp {
    let micros = t.timestamp_micros().saturating_add(duration_micros(d));
    match Utc.timestamp_micros(micros).single() {
        Some(later) => later,
        // Past chrono's range (only `d` can take it there: it is never negative).
        None => truncate_micros(DateTime::<Utc>::MAX_UTC),
    }
}

fn duration_micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}
