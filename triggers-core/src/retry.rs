//! The retry schedule: when each attempt of a delivery is due.

use std::str::FromStr;
use std::time::Duration;

/// Delays before each attempt, with jitter, and bounds for a target's own retry hint.
///
/// `delays[k]` is the wait before attempt `k + 1` (the first entry is usually 0: deliver at
/// once). After the last attempt fails, the delivery is `failed`.
///
/// ```
/// use std::time::Duration;
/// use triggers_core::RetryPolicy;
/// let p = RetryPolicy::default();
/// assert_eq!(p.max_attempts(), 8);
/// // After attempt 1 fails, attempt 2 is due ~5 s later (±jitter).
/// let d = p.delay_after(1, None, 0.5).unwrap();
/// assert_eq!(d, Duration::from_secs(5));
/// assert!(p.delay_after(8, None, 0.5).is_none(), "no attempt 9");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Wait before each attempt; the length is the number of attempts.
    pub delays: Vec<Duration>,
    /// Each delay is spread uniformly over `delay × (1 ± jitter)`; 0.0 disables jitter.
    pub jitter: f64,
    /// A target's `Retry-After` hint is clamped to at most this.
    pub max_hint: Duration,
}

impl Default for RetryPolicy {
    /// Like the established webhook services: at once, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h,
    /// 10 h; ±10 % jitter; hints honoured up to one hour.
    fn default() -> Self {
        let s = Duration::from_secs;
        Self {
            delays: vec![s(0), s(5), s(300), s(1800), s(7200), s(18000), s(36000), s(36000)],
            jitter: 0.1,
            max_hint: s(3600),
        }
    }
}

impl RetryPolicy {
    /// A policy with these delays and the default jitter and hint bound.
    pub fn with_delays(delays: Vec<Duration>) -> Self {
        Self { delays, ..Self::default() }
    }

    /// How many attempts a delivery gets in all.
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.delays.len()).unwrap_or(u32::MAX)
    }

    /// The wait after failed attempt `attempt` (1-based) before the next one, or `None` when
    /// it was the last. `hint` is the target's own `Retry-After`: the wait is the larger of the
    /// scheduled delay and the hint clamped to `max_hint`. `unit` in `[0, 1)` picks the jitter
    /// (pass a random number; tests pass a fixed one); 0.5 means none.
    pub fn delay_after(&self, attempt: u32, hint: Option<Duration>, unit: f64) -> Option<Duration> {
        let base = *self.delays.get(usize::try_from(attempt).ok()?)?;
        let factor = 1.0 + self.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        let jittered = base.mul_f64(factor.max(0.0));
        let hinted = hint.map(|h| h.min(self.max_hint)).unwrap_or_default();
        Some(jittered.max(hinted))
    }
}

/// A retry schedule string was not a comma-separated list of durations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid retry schedule {0:?}: expected durations like 0s,5s,5m,30m,2h")]
pub struct InvalidSchedule(pub String);

impl FromStr for RetryPolicy {
    type Err = InvalidSchedule;
    /// Parses `0s,5s,5m,30m,2h,5h,10h,10h` (at least one entry).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let delays = s
            .split(',')
            .map(|p| parse_duration(p.trim()).ok_or_else(|| InvalidSchedule(s.to_owned())))
            .collect::<Result<Vec<_>, _>>()?;
        if delays.is_empty() {
            return Err(InvalidSchedule(s.to_owned()));
        }
        Ok(Self::with_delays(delays))
    }
}

/// Parses a duration such as `250ms`, `5s`, `5m`, `2h` or `1d`; a bare number means seconds.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(triggers_core::retry::parse_duration("5m"), Some(Duration::from_secs(300)));
/// assert_eq!(triggers_core::retry::parse_duration("soon"), None);
/// ```
pub fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let secs = |k: u64| n.checked_mul(k).map(Duration::from_secs);
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86400),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schedule_matches_the_spec() {
        let p = RetryPolicy::default();
        let mins: Vec<u64> =
            (1..8).map(|a| p.delay_after(a, None, 0.5).unwrap().as_secs()).collect();
        assert_eq!(mins, vec![5, 300, 1800, 7200, 18000, 36000, 36000]);
        assert_eq!(p.delay_after(8, None, 0.5), None);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let p = RetryPolicy::default();
        let lo = p.delay_after(2, None, 0.0).unwrap();
        let hi = p.delay_after(2, None, 0.999_999).unwrap();
        assert_eq!(lo, Duration::from_secs(270));
        assert!(hi > Duration::from_secs(329) && hi <= Duration::from_secs(330));
    }

    #[test]
    fn hints_are_honoured_within_bounds() {
        let p = RetryPolicy::default();
        // A hint longer than the schedule wins…
        assert_eq!(
            p.delay_after(1, Some(Duration::from_secs(60)), 0.5),
            Some(Duration::from_secs(60))
        );
        // …but never beyond max_hint, and a shorter hint does not shorten the schedule.
        assert_eq!(
            p.delay_after(1, Some(Duration::from_secs(99_999)), 0.5),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            p.delay_after(2, Some(Duration::from_secs(1)), 0.5),
            Some(Duration::from_secs(300))
        );
    }

    #[test]
    fn parses_schedules() {
        let p: RetryPolicy = "0s,5s,5m,30m,2h,5h,10h,10h".parse().unwrap();
        assert_eq!(p, RetryPolicy::default());
        assert!("5s,,1m".parse::<RetryPolicy>().is_err());
        assert!("5x".parse::<RetryPolicy>().is_err());
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86400)));
    }
}
