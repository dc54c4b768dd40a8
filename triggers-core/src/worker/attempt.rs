//! Turning one attempt's outcome into a fenced completion.

use std::time::Duration;

use crate::clock::{self, Timestamp};
use crate::deliver::{Attempt, Outcome};
use crate::domain::event::AttemptRecord;
use crate::observe::DeliveryResult;
use crate::retry::RetryPolicy;
use crate::store::{Completion, CompletionState, Delivery};

/// Longest error text kept in an attempt record.
const MAX_ERROR_LEN: usize = 500;

/// The completion for `delivery` after `attempt` finished at `at`, having taken `latency`.
/// `unit` is the jitter draw in `[0, 1)`.
pub(crate) fn completion(
    delivery: &Delivery,
    attempt: Attempt,
    at: Timestamp,
    latency: Duration,
    policy: &RetryPolicy,
    disable_after: Duration,
    unit: f64,
) -> (Completion, DeliveryResult) {
    let retry = |hint: Option<Duration>, reason: String| match policy.delay_after(
        delivery.attempt,
        hint,
        unit,
    ) {
        Some(delay) => (CompletionState::Retry { at: clock::add(at, delay) }, Some(reason), None),
        None => (CompletionState::Failed, Some(reason), None),
    };
    let (state, error, mut disable) = match attempt.outcome {
        Outcome::Delivered => (CompletionState::Delivered, None, None),
        Outcome::Retry { after, reason } => retry(after, reason),
        // The worker releases deferrals instead of completing them; should one get here it
        // counts as a retry with its delay as the hint.
        Outcome::Deferred { after, reason } => retry(Some(after), reason),
        Outcome::Permanent(reason) => (CompletionState::Failed, Some(reason), None),
        Outcome::Gone(reason) => (
            CompletionState::Failed,
            Some(reason.clone()),
            Some(format!("endpoint gone: {reason}")),
        ),
    };
    if state != CompletionState::Delivered && disable.is_none() {
        if let Some(since) = delivery.endpoint_failing_since {
            let failing_for = (at - since).to_std().unwrap_or_default();
            if failing_for >= disable_after {
                disable = Some(format!(
                    "failing without success since {}",
                    since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ));
            }
        }
    }
    let result = match state {
        CompletionState::Delivered => DeliveryResult::Delivered,
        CompletionState::Retry { .. } => DeliveryResult::Retried,
        CompletionState::Failed => DeliveryResult::Failed,
    };
    let record = AttemptRecord {
        endpoint_id: delivery.endpoint_id,
        at,
        status_code: attempt.status_code,
        latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
        error: error.map(|mut e| {
            if e.len() > MAX_ERROR_LEN {
                let mut cut = MAX_ERROR_LEN;
                while !e.is_char_boundary(cut) {
                    cut -= 1;
                }
                e.truncate(cut);
            }
            e
        }),
    };
    let completion = Completion {
        delivery_id: delivery.id,
        lease_owner: delivery.lease_owner,
        attempt: delivery.attempt,
        state,
        record,
        disable_endpoint: disable,
    };
    (completion, result)
}
