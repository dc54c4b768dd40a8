//! Cases for the per-organization bounds ([`StoreLimits`](crate::store::StoreLimits)), the
//! attempts of superseded deliveries, and retention.
//!
//! The cases assume the store was built with the default limits.

use super::support::*;
use crate::domain::event::{EventRecord, EventStatus};
use crate::domain::WorkerId;
use crate::store::{CompletionState, EventStore, InsertOutcome, StoreError, StoreLimits};

/// An organization with `max_endpoints` endpoints gets `LimitExceeded` for one more, and
/// nothing is stored; other organizations are not affected.
pub async fn endpoints_per_organization_are_capped<S: EventStore>(store: &S) {
    let max = StoreLimits::default().max_endpoints;
    let (org, other) = (new_org(store).await, new_org(store).await);
    for _ in 0..max {
        endpoint(store, org, None, t(0)).await;
    }
    let new = crate::store::NewEndpoint {
        id: crate::domain::EndpointId::new(),
        url: "https://hooks.example.test/one-too-many".into(),
        event_type_filter: None,
        secret: crate::domain::webhook::Secret::generate(),
        created_at: t(1),
        ordering: crate::domain::webhook::DeliveryOrdering::Parallel,
    };
    match store.create_endpoint(org, &new).await {
        Err(StoreError::LimitExceeded { max: got, .. }) => assert_eq!(got, u64::from(max)),
        other => panic!("expected LimitExceeded, got {other:?}"),
    }
    let listed = store.endpoints(org).await.unwrap();
    assert_eq!(listed.len(), max as usize);
    assert!(listed.iter().all(|e| e.id != new.id), "nothing stored");
    endpoint(store, other, None, t(1)).await;
    // A deleted endpoint frees its place.
    assert!(store.delete_endpoint(org, listed[0].id).await.unwrap());
    assert_eq!(store.create_endpoint(org, &new).await.unwrap().id, new.id);
}

/// An event keeps at most `max_attempts_kept` attempts per endpoint: the oldest are dropped,
/// the newest kept in order; another endpoint's attempts are counted on their own.
pub async fn attempts_beyond_the_cap_drop_the_oldest<S: EventStore>(store: &S) {
    let keep = StoreLimits::default().max_attempts_kept as usize;
    let org = new_org(store).await;
    let busy = endpoint(store, org, Some("capped"), t(0)).await;
    let quiet = endpoint(store, org, None, t(0)).await;
    let id = insert_one(store, org, "capped", t(0)).await;
    let first = claim(store, WorkerId::new(), 10, t(0)).await;
    assert_eq!(first.len(), 2);
    let quiet_d = first.iter().find(|d| d.endpoint_id == quiet.id).unwrap().clone();
    let mut d = first.into_iter().find(|d| d.endpoint_id == busy.id).unwrap();
    let quiet_c = completion(&quiet_d, CompletionState::Delivered, t(0));
    assert!(complete(store, quiet_c.clone()).await);
    let total = keep + 3;
    let mut records = Vec::new();
    for i in 1..=total as i64 {
        let state = if i == total as i64 {
            CompletionState::Delivered
        } else {
            CompletionState::Retry { at: t(i) }
        };
        let c = completion(&d, state, just_before(t(i)));
        records.push(c.record.clone());
        assert!(complete(store, c).await, "completion {i}");
        if i < total as i64 {
            d = claim_one(store, WorkerId::new(), t(i)).await;
        }
    }
    let detail = detail(store, org, id).await;
    assert_eq!(detail.event.status, EventStatus::Delivered);
    let busy_kept: Vec<_> =
        detail.attempts.iter().filter(|a| a.endpoint_id == busy.id).cloned().collect();
    assert_eq!(busy_kept, records[total - keep..].to_vec(), "the newest, oldest first");
    assert!(detail.attempts.contains(&quiet_c.record), "other endpoints keep theirs");
    assert_eq!(detail.attempts.len(), keep + 1);
}

/// The attempts of deleted endpoints count together: a replay keeps the newest
/// `max_attempts_kept` of them, so deleting and recreating endpoints between replays cannot
/// grow one event's history without bound. Live endpoints keep theirs.
pub async fn replays_trim_the_attempts_of_deleted_endpoints<S: EventStore>(store: &S) {
    let keep = StoreLimits::default().max_attempts_kept as usize;
    let org = new_org(store).await;
    let live = endpoint(store, org, Some("kept.*"), t(0)).await;
    let id = insert_one(store, org, "kept.x", t(0)).await;
    let first = claim_one(store, WorkerId::new(), t(0)).await;
    let live_c = completion(&first, CompletionState::Delivered, t(0));
    assert!(complete(store, live_c.clone()).await);

    // Three endpoints in turn, each given the event by a replay, failing 40 times, deleted.
    let mut gone = Vec::new();
    let mut at = 1;
    for round in 0..3 {
        let doomed = endpoint(store, org, Some("kept.*"), t(at)).await;
        assert_eq!(store.replay(org, id, t(at)).await.unwrap(), Some(EventStatus::Pending));
        // The live endpoint's fresh delivery succeeds; the doomed one retries.
        for d in claim(store, WorkerId::new(), 10, t(at)).await {
            let state = if d.endpoint_id == live.id {
                CompletionState::Delivered
            } else {
                CompletionState::Retry { at: t(at) }
            };
            let c = completion(&d, state, t(at));
            if d.endpoint_id != live.id {
                gone.push(c.record.clone());
            }
            assert!(complete(store, c).await);
        }
        for _ in 1..40 {
            at += 1;
            let d = claim_one(store, WorkerId::new(), t(at)).await;
            assert_eq!(d.endpoint_id, doomed.id, "round {round}");
            let c = completion(&d, CompletionState::Retry { at: t(at) }, t(at));
            gone.push(c.record.clone());
            assert!(complete(store, c).await);
        }
        assert!(store.delete_endpoint(org, doomed.id).await.unwrap());
        at += 1;
    }
    let before = detail(store, org, id).await.attempts;
    assert_eq!(before.iter().filter(|a| a.endpoint_id != live.id).count(), 120);

    assert_eq!(store.replay(org, id, t(at)).await.unwrap(), Some(EventStatus::Pending));
    let after = detail(store, org, id).await.attempts;
    let of_gone: Vec<_> = after.iter().filter(|a| a.endpoint_id != live.id).cloned().collect();
    assert_eq!(of_gone.len(), keep, "the deleted endpoints' attempts are trimmed");
    assert!(of_gone == gone[gone.len() - keep..], "the newest, oldest first");
    let of_live: Vec<_> = after.iter().filter(|a| a.endpoint_id == live.id).collect();
    assert_eq!(of_live.len(), 4, "the live endpoint keeps all of its own");
    assert_eq!(of_live[0], &live_c.record);
}

/// A delivery in flight when a replay supersedes it: its completion is stale but its attempt
/// is recorded (once; a wrong fence records nothing), and it decides nothing.
pub async fn superseded_attempts_are_recorded<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    endpoint(store, org, None, t(0)).await;
    let id = insert_one(store, org, "superseded", t(0)).await;
    let old = claim_one(store, WorkerId::new(), t(0)).await;
    assert_eq!(store.replay(org, id, t(1)).await.unwrap(), Some(EventStatus::Pending));
    let mut wrong = completion(&old, CompletionState::Failed, t(2));
    wrong.attempt += 1;
    assert!(!complete(store, wrong).await);
    assert!(detail(store, org, id).await.attempts.is_empty(), "a wrong fence records nothing");
    let late = completion(&old, CompletionState::Failed, t(2));
    assert!(!complete(store, late.clone()).await);
    assert!(!complete(store, late.clone()).await, "recorded once");
    let d = detail(store, org, id).await;
    assert_eq!(d.attempts, vec![late.record]);
    assert_eq!(d.event.status, EventStatus::Pending, "a superseded failure fails nothing");
    let fresh = claim_one(store, WorkerId::new(), t(2)).await;
    assert_ne!(fresh.id, old.id);
    assert!(complete(store, completion(&fresh, CompletionState::Delivered, t(3))).await);
    assert_eq!(status(store, org, id).await, EventStatus::Delivered);

    // A superseded lease that expired is forgotten by the next replay: its completion
    // (a worker presumed dead) records nothing.
    assert_eq!(store.replay(org, id, t(10)).await.unwrap(), Some(EventStatus::Pending));
    let held = claim_one(store, WorkerId::new(), t(10)).await;
    assert_eq!(store.replay(org, id, t(11)).await.unwrap(), Some(EventStatus::Pending));
    let expired = plus(t(10), LEASE);
    assert_eq!(store.replay(org, id, expired).await.unwrap(), Some(EventStatus::Pending));
    let before = detail(store, org, id).await.attempts.len();
    assert!(!complete(store, completion(&held, CompletionState::Delivered, expired)).await);
    assert_eq!(detail(store, org, id).await.attempts.len(), before);
}

/// `purge_finished_batch` deletes delivered and failed events created before the cutoff,
/// oldest first, batch by batch, with their attempts and outstanding deliveries; pending
/// and newer events stay.
pub async fn purge_deletes_old_finished_events_only<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    endpoint(store, org, Some("hook.*"), t(0)).await;
    let delivered = insert_one(store, org, "hook.ok", t(0)).await;
    let failed = insert_one(store, org, "hook.bad", t(1)).await;
    let pending = insert_one(store, org, "inbox", t(2)).await;
    let acked = insert_one(store, org, "hook.acked", t(3)).await;
    let young = insert_one(store, org, "inbox", t(20)).await;
    let claimed = claim(store, WorkerId::new(), 10, t(5)).await;
    for d in &claimed {
        let state = if d.event_id == delivered {
            CompletionState::Delivered
        } else if d.event_id == failed {
            CompletionState::Failed
        } else {
            continue;
        };
        assert!(complete(store, completion(d, state, t(6))).await);
    }
    // Acknowledged while its webhook delivery is still outstanding.
    store.ack(org, &[acked, young], t(6)).await.unwrap();
    assert_eq!(store.queue_depth().await.unwrap(), 1);

    assert_eq!(store.purge_finished_batch(t(10), 2).await.unwrap(), 2, "a full batch");
    assert!(store.event(org, delivered).await.unwrap().is_none(), "oldest first");
    assert!(store.event(org, failed).await.unwrap().is_none());
    assert!(store.event(org, acked).await.unwrap().is_some());
    assert_eq!(store.purge_finished_batch(t(10), 2).await.unwrap(), 1, "the rest");
    assert!(store.event(org, acked).await.unwrap().is_none());
    assert_eq!(store.queue_depth().await.unwrap(), 0, "its outstanding delivery went too");
    assert_eq!(store.purge_finished_batch(t(10), 2).await.unwrap(), 0);
    assert_eq!(status(store, org, pending).await, EventStatus::Pending, "pending stays");
    assert_eq!(status(store, org, young).await, EventStatus::Delivered, "young stays");
    let stats = store.stats(org).await.unwrap();
    assert_eq!((stats.pending, stats.delivered, stats.failed), (1, 1, 0));
    assert_eq!(list_all(store, org, EventStatus::Delivered, None).await, vec![young]);
}

/// `purge_dedup_batch` forgets dedup entries created before the cutoff, and only those: an
/// event with a forgotten id is stored as new, a younger id is still a duplicate.
pub async fn purge_forgets_expired_dedup_entries<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    let old = dedup_record("d", "old-id", t(0));
    let old_id = old.id;
    insert(store, org, vec![old], t(0)).await;
    let young: EventRecord = dedup_record("d", "young-id", t(10));
    insert(store, org, vec![young], t(10)).await;
    assert_eq!(store.purge_dedup_batch(t(5), 100).await.unwrap(), 1);
    assert_eq!(store.purge_dedup_batch(t(5), 100).await.unwrap(), 0);
    let again = insert(
        store,
        org,
        vec![dedup_record("d", "old-id", t(11)), dedup_record("d", "young-id", t(11))],
        t(11),
    )
    .await;
    assert!(matches!(&again[0], InsertOutcome::Inserted { meta, .. } if meta.id != old_id));
    assert!(matches!(&again[1], InsertOutcome::Duplicate(_)));
    assert!(store.event(org, old_id).await.unwrap().is_some(), "events are not touched");
}

/// Secrets are opaque text to a store: a sealed secret comes back exactly as stored (from
/// `create_endpoint`, `endpoints` and `claim`), and `rewrite_secrets` replaces current and
/// previous secrets of every endpoint, skipping those it is told to keep.
pub async fn sealed_secrets_round_trip_and_are_rewritten<S: EventStore>(store: &S) {
    use crate::domain::sealed::{SecretCipher, SecretKey};
    use crate::domain::webhook::Secret;
    use std::sync::Arc;

    let cipher = Arc::new(SecretCipher::new(SecretKey::generate(), None));
    let org = new_org(store).await;
    let id = crate::domain::EndpointId::new();
    let plain = Secret::generate();
    let sealed = cipher.seal(id, &plain);
    let new = crate::store::NewEndpoint {
        id,
        url: "https://hooks.example.test/sealed".into(),
        event_type_filter: Some(glob("sealed")),
        secret: sealed.clone(),
        created_at: t(0),
        ordering: crate::domain::webhook::DeliveryOrdering::Parallel,
    };
    assert_eq!(store.create_endpoint(org, &new).await.unwrap().secret, sealed);
    let listed = store.endpoints(org).await.unwrap();
    assert_eq!(listed[0].secret, sealed);
    // A second endpoint still in plaintext, rotated: both its secrets are plaintext.
    let legacy = endpoint(store, org, Some("legacy"), t(0)).await;
    let rotated = Secret::generate();
    assert!(store.rotate_endpoint_secret(org, legacy.id, &rotated, t(100)).await.unwrap());

    insert_one(store, org, "sealed", t(1)).await;
    let d = claim_one(store, WorkerId::new(), t(1)).await;
    assert_eq!(d.secrets, vec![sealed.clone()]);
    assert_eq!(cipher.open(id, &d.secrets[0]).unwrap(), plain);

    let reseal = cipher.clone();
    let rewrite: crate::store::SecretRewrite =
        Arc::new(move |endpoint, secret| reseal.reseal(endpoint, secret).ok().flatten());
    assert_eq!(store.rewrite_secrets(rewrite.clone()).await.unwrap(), 2, "the two plaintexts");
    assert_eq!(store.rewrite_secrets(rewrite).await.unwrap(), 0, "nothing left to do");
    let listed = store.endpoints(org).await.unwrap();
    assert!(listed.iter().all(|e| e.secret.is_sealed()));
    assert_eq!(listed.iter().find(|e| e.id == id).unwrap().secret, sealed, "kept as it was");

    insert_one(store, org, "legacy", t(2)).await;
    let d = claim_one(store, WorkerId::new(), t(2)).await;
    assert_eq!(d.endpoint_id, legacy.id);
    assert!(d.secrets.iter().all(Secret::is_sealed));
    let opened: Vec<_> = d.secrets.iter().map(|s| cipher.open(legacy.id, s).unwrap()).collect();
    assert_eq!(opened, vec![rotated, legacy.secret], "current first, then the previous one");
}

/// `pending_events` is the `pending` of `stats` after every kind of write that changes an
/// event's status — insert (also of an event failed at once by a disabled endpoint),
/// completion, ack, replay, disable, enable and recover, endpoint deletion, purge — and
/// counts no other organization's events.
pub async fn pending_events_follow_every_status_change<S: EventStore>(store: &S) {
    use crate::store::{EndpointPatch, RecoverQuery};
    let (org, other) = (new_org(store).await, new_org(store).await);
    // Both counts after a step; returns them.
    let agree = |step: &'static str| async move {
        let counted = store.stats(org).await.unwrap().pending;
        assert_eq!(store.pending_events(org).await.unwrap(), counted, "after {step}");
        counted
    };
    assert_eq!(agree("nothing").await, 0);
    let hook = endpoint(store, org, Some("hook.*"), t(0)).await;
    let off = endpoint(store, org, Some("off.*"), t(0)).await;
    let disable = EndpointPatch { enabled: Some(false), ..EndpointPatch::default() };
    let enable = EndpointPatch { enabled: Some(true), ..EndpointPatch::default() };
    store.update_endpoint(org, off.id, &disable, t(0)).await.unwrap().unwrap();
    // The disable's announcement is a pending event of the organization.
    let base = agree("a disable").await;
    assert!(base >= 1, "the announcement is pending");

    let batch = (0..4).map(|i| record(if i < 3 { "hook.a" } else { "inbox" }, t(1))).collect();
    let ids: Vec<_> = insert(store, org, batch, t(1)).await.iter().map(inserted).collect();
    insert_one(store, other, "hook.a", t(1)).await;
    assert_eq!(agree("a batch insert").await, base + 4);
    insert_one(store, org, "off.a", t(1)).await;
    assert_eq!(agree("an insert failed by a disabled endpoint").await, base + 4);

    let claimed = claim(store, WorkerId::new(), 10, t(2)).await;
    let mine: Vec<_> = claimed.iter().filter(|d| d.endpoint_id == hook.id).collect();
    assert_eq!(mine.len(), 3);
    assert!(complete(store, completion(mine[0], CompletionState::Delivered, t(3))).await);
    assert!(complete(store, completion(mine[1], CompletionState::Failed, t(3))).await);
    assert_eq!(agree("completions").await, base + 2);
    store.ack(org, &[ids[3]], t(4)).await.unwrap();
    assert_eq!(agree("an ack").await, base + 1);
    assert_eq!(store.replay(org, ids[3], t(5)).await.unwrap(), Some(EventStatus::Pending));
    assert_eq!(agree("a replay").await, base + 2);

    // Disabling fails the third delivery (still in flight), and is announced.
    store.update_endpoint(org, hook.id, &disable, t(6)).await.unwrap().unwrap();
    agree("a disable with a delivery in flight").await;
    store.update_endpoint(org, hook.id, &enable, t(7)).await.unwrap().unwrap();
    let enabled = agree("an enable").await;
    // The failed delivery and the one failed by the disable are queued again.
    let window = RecoverQuery { since: t(1), until: Some(t(2)), limit: 10 };
    let recovered = store.recover(org, hook.id, window, t(8)).await.unwrap().unwrap();
    assert_eq!(recovered.queued, 2);
    assert_eq!(agree("a recover").await, enabled + 2);

    assert!(store.delete_endpoint(org, hook.id).await.unwrap());
    let deleted = agree("an endpoint deletion").await;
    store.purge_finished_batch(t(100), 100).await.unwrap();
    assert_eq!(agree("a purge").await, deleted);
    assert_eq!(store.pending_events(other).await.unwrap(), 1);
    assert_eq!(store.pending_events(new_org(store).await).await.unwrap(), 0);
}
