//! The store conformance kit: one async test per rule of the store contract
//! ([`crate::store`]), run unchanged by every backend. A backend is done when the kit passes.
//!
//! Each case is a `pub async fn` generic over the store. Run them all with
//! [`store_conformance_tests!`](crate::store_conformance_tests), for example in a backend's
//! `tests/conformance.rs`:
//!
//! ```ignore
//! triggers_core::store_conformance_tests!(|| async { MyStore::open_fresh().await });
//! ```
//!
//! What the cases assume of the store they are given:
//! - **A fresh, private store per case.** Claims and the queue depth span all organizations,
//!   so the factory must return a store whose delivery queue is empty and which no other test
//!   touches at the same time (for example a new temporary database or schema per call).
//!   Each case still creates its own organizations.
//! - **Times are explicit.** Every case passes `now` from fixed timestamps (2026-01-01 plus
//!   whole seconds, with a microsecond part) and never sleeps, so a store must not read the
//!   clock and must keep timestamps to the microsecond.
//! - **Concurrency.** Three cases (`concurrent_dedup_has_exactly_one_winner`,
//!   `concurrent_claimers_never_share_a_delivery`, `concurrent_claimers_keep_a_fifo_line`) take the store as `Arc<S>` and call it from
//!   several Tokio tasks on a multi-thread runtime; the others take `&S`.

// A test suite: a failed store call is a failed test.
#![allow(clippy::unwrap_used)]

mod completion;
mod endpoints;
mod events;
mod fairness;
mod history;
mod inbox;
mod lifecycle;
mod orgs;
mod queue;
mod quotas;
pub(crate) mod support;

pub use completion::{
    acknowledged_events_keep_their_status, completions_can_disable_an_endpoint,
    endpoint_failure_time_is_tracked, events_are_delivered_when_every_delivery_is,
    failed_deliveries_fail_the_event, queue_depth_counts_outstanding_deliveries,
    replay_of_a_single_delivery_supersedes_it, replay_supersedes_outstanding_deliveries,
    retries_are_due_at_their_time,
};
pub use endpoints::{
    deleting_an_endpoint_cancels_its_deliveries, disabled_endpoints_get_no_deliveries,
    endpoints_are_created_listed_and_deleted, events_fan_out_to_matching_endpoints,
    rotated_secrets_sign_during_the_grace_period,
};
pub use events::{
    a_large_batch_is_decided_like_single_inserts, concurrent_dedup_has_exactly_one_winner,
    dedup_applies_inside_one_batch, dedup_entry_outside_the_window_is_taken_over,
    dedup_inside_the_window_returns_the_original, dedup_is_per_organization,
    events_round_trip_exactly,
};
pub use fairness::{
    claims_hold_a_rate_limited_endpoint_to_twice_its_rate,
    claims_respect_an_endpoints_own_concurrency,
    claims_respect_endpoint_concurrency_and_the_breaker, claims_respect_the_organization_share,
    completing_and_claiming_takes_the_freed_places, concurrent_claimers_keep_a_fifo_line,
    endpoint_ordering_can_be_switched, expired_leases_are_claimed_in_due_order_within_the_caps,
    fifo_endpoints_deliver_one_at_a_time_in_event_order,
    held_back_deliveries_never_crowd_out_a_claim, recovered_deliveries_join_the_fifo_line,
};
pub use history::{attempt_history_pages_newest_first, delivery_listing_reports_each_status};
pub use inbox::{
    ack_is_idempotent_and_reports_unknown_ids, inbox_filters_by_status_and_type_glob,
    inbox_pages_stop_at_the_byte_budget, inbox_pages_visit_every_event_once,
    organizations_cannot_reach_each_others_events, replay_sets_events_pending_again,
    stats_count_events_and_in_flight_deliveries,
};
pub use lifecycle::{
    a_disabled_endpoint_keeps_its_first_reason, a_recovered_delivery_keeps_its_event_open,
    deleting_cancels_a_large_backlog, disables_are_reported_by_the_call_that_makes_them,
    disabling_an_endpoint_fails_its_outstanding_deliveries,
    disabling_fails_a_large_backlog_in_batches,
    endpoint_changes_are_announced_by_the_write_that_makes_them, endpoints_are_found_and_patched,
    excluded_endpoints_get_nothing, recover_requeues_failed_deliveries,
    recover_takes_the_oldest_by_creation_time, switching_a_long_line_to_parallel,
};
pub use orgs::{
    concurrent_creations_of_one_id_have_one_winner, duplicate_organizations_conflict,
    organizations_are_found_by_id_and_key, ping_answers, replace_key_revokes_the_old_key,
};
pub use queue::{
    claims_take_due_deliveries_earliest_first, concurrent_claimers_never_share_a_delivery,
    expired_leases_are_reclaimed_with_the_next_attempt, lease_extension_is_fenced,
    reclaimed_leases_are_due_at_once, released_deliveries_are_due_again_with_their_attempt,
    stale_completions_change_nothing,
};
pub use quotas::{
    attempts_beyond_the_cap_drop_the_oldest, endpoints_per_organization_are_capped,
    pending_events_follow_every_status_change, purge_deletes_old_finished_events_only,
    purge_forgets_expired_dedup_entries, replays_trim_the_attempts_of_deleted_endpoints,
    sealed_secrets_round_trip_and_are_rewritten, superseded_attempts_are_recorded,
};

/// Expands into one `#[test]` per conformance case, each running on its own multi-thread
/// Tokio runtime with 2 workers.
///
/// `$factory` is an expression such that `($factory)().await` returns a fresh store `S:
/// EventStore`, for example `|| async { MemoryStore::new() }`. It is called once per case.
/// Most cases receive `&S`; the concurrent ones receive `Arc<S>`, so the store need not be
/// `Clone`. See the [module docs](crate::conformance) for what "fresh" must mean.
///
/// The expansion names only `$crate` paths: invoke it as `triggers::store_conformance_tests!`
/// (facade feature `conformance`) or `triggers_core::store_conformance_tests!`; the test
/// crate needs no `tokio` dependency of its own.
///
/// ```ignore
/// // tests/conformance.rs of a backend crate (dev-dependency: triggers, features = ["conformance"])
/// triggers::store_conformance_tests!(|| async { MyStore::open_fresh().await });
/// ```
#[macro_export]
macro_rules! store_conformance_tests {
    ($factory:expr $(,)?) => {
        $crate::store_conformance_tests!(@cases $factory;
            borrowed: [
                organizations_are_found_by_id_and_key,
                replace_key_revokes_the_old_key,
                duplicate_organizations_conflict,
                ping_answers,
                events_round_trip_exactly,
                dedup_inside_the_window_returns_the_original,
                dedup_entry_outside_the_window_is_taken_over,
                dedup_applies_inside_one_batch,
                a_large_batch_is_decided_like_single_inserts,
                dedup_is_per_organization,
                inbox_pages_visit_every_event_once,
                inbox_filters_by_status_and_type_glob,
                ack_is_idempotent_and_reports_unknown_ids,
                replay_sets_events_pending_again,
                stats_count_events_and_in_flight_deliveries,
                pending_events_follow_every_status_change,
                organizations_cannot_reach_each_others_events,
                endpoints_are_created_listed_and_deleted,
                rotated_secrets_sign_during_the_grace_period,
                events_fan_out_to_matching_endpoints,
                disabled_endpoints_get_no_deliveries,
                deleting_an_endpoint_cancels_its_deliveries,
                claims_take_due_deliveries_earliest_first,
                expired_leases_are_reclaimed_with_the_next_attempt,
                stale_completions_change_nothing,
                released_deliveries_are_due_again_with_their_attempt,
                lease_extension_is_fenced,
                events_are_delivered_when_every_delivery_is,
                retries_are_due_at_their_time,
                failed_deliveries_fail_the_event,
                acknowledged_events_keep_their_status,
                endpoint_failure_time_is_tracked,
                completions_can_disable_an_endpoint,
                replay_supersedes_outstanding_deliveries,
                replay_of_a_single_delivery_supersedes_it,
                queue_depth_counts_outstanding_deliveries,
                reclaimed_leases_are_due_at_once,
                endpoints_are_found_and_patched,
                disabling_an_endpoint_fails_its_outstanding_deliveries,
                disabling_fails_a_large_backlog_in_batches,
                deleting_cancels_a_large_backlog,
                a_disabled_endpoint_keeps_its_first_reason,
                endpoint_changes_are_announced_by_the_write_that_makes_them,
                disables_are_reported_by_the_call_that_makes_them,
                switching_a_long_line_to_parallel,
                recover_requeues_failed_deliveries,
                recover_takes_the_oldest_by_creation_time,
                a_recovered_delivery_keeps_its_event_open,
                excluded_endpoints_get_nothing,
                endpoints_per_organization_are_capped,
                attempts_beyond_the_cap_drop_the_oldest,
                superseded_attempts_are_recorded,
                replays_trim_the_attempts_of_deleted_endpoints,
                purge_deletes_old_finished_events_only,
                purge_forgets_expired_dedup_entries,
                sealed_secrets_round_trip_and_are_rewritten,
                inbox_pages_stop_at_the_byte_budget,
                claims_respect_the_organization_share,
                claims_respect_endpoint_concurrency_and_the_breaker,
                fifo_endpoints_deliver_one_at_a_time_in_event_order,
                endpoint_ordering_can_be_switched,
                attempt_history_pages_newest_first,
                delivery_listing_reports_each_status,
                completing_and_claiming_takes_the_freed_places,
                claims_respect_an_endpoints_own_concurrency,
                claims_hold_a_rate_limited_endpoint_to_twice_its_rate,
                recovered_deliveries_join_the_fifo_line,
                held_back_deliveries_never_crowd_out_a_claim,
                expired_leases_are_claimed_in_due_order_within_the_caps,
            ];
            shared: [
                concurrent_dedup_has_exactly_one_winner,
                concurrent_claimers_never_share_a_delivery,
                concurrent_creations_of_one_id_have_one_winner,
                concurrent_claimers_keep_a_fifo_line,
            ];
        );
    };
    (@cases $factory:expr;
        borrowed: [$($borrowed:ident),* $(,)?];
        shared: [$($shared:ident),* $(,)?];
    ) => {
        $(
            #[test]
            fn $borrowed() {
                $crate::conformance::run(async {
                    let store = ($factory)().await;
                    $crate::conformance::$borrowed(&store).await;
                });
            }
        )*
        $(
            #[test]
            fn $shared() {
                $crate::conformance::run(async {
                    let store = ::std::sync::Arc::new(($factory)().await);
                    $crate::conformance::$shared(store).await;
                });
            }
        )*
    };
}

/// Runs one conformance case to completion on a fresh multi-thread runtime (2 workers); what
/// [`store_conformance_tests!`](crate::store_conformance_tests) expands to.
pub fn run<F: std::future::Future<Output = ()>>(case: F) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime for a conformance case");
    runtime.block_on(case);
}
