//! The store conformance kit over [`MemoryStore`].

use super::MemoryStore;

crate::store_conformance_tests!(|| async { MemoryStore::new() });

/// A claim looks at what it can take, not at what the caps hold back: neither the backlog of
/// an endpoint at its cap nor a FIFO line behind its head (`DeliveryQueue::claim`: "one
/// endpoint's backlog at its cap must not make every claim slower").
#[tokio::test]
async fn claims_do_not_visit_held_back_backlogs() {
    use crate::conformance::support::{
        claim_capped, endpoint, endpoint_with, insert, new_org, record, t,
    };
    use crate::domain::webhook::DeliveryOrdering;
    use crate::WorkerId;

    let store = MemoryStore::new();
    let (noisy, quiet) = (new_org(&store).await, new_org(&store).await);
    let capped = endpoint(&store, noisy, Some("p.*"), t(0)).await;
    let fifo = endpoint_with(&store, noisy, Some("f.*"), DeliveryOrdering::Fifo, t(0)).await;
    let other = endpoint(&store, quiet, None, t(0)).await;
    for kind in ["p", "f"] {
        let records = (0..5_000).map(|i| record(&format!("{kind}.{i}"), t(0))).collect();
        insert(&store, noisy, records, t(0)).await;
    }
    let caps = (100, 16);
    let worker = WorkerId::new();
    let first = claim_capped(&store, worker, 100, t(1), caps).await;
    let per = |id| first.iter().filter(|d| d.endpoint_id == id).count();
    assert_eq!((per(capped.id), per(fifo.id)), (16, 1), "the cap, and the head of the line");

    insert(&store, quiet, vec![record("q", t(2))], t(2)).await;
    let visits = |store: &MemoryStore| store.lock().unwrap().visited.get();
    let before = visits(&store);
    let next = claim_capped(&store, worker, 100, t(2), caps).await;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].endpoint_id, other.id, "the other organization's delivery");
    let looked_at = visits(&store) - before;
    assert!(looked_at <= 3, "looked at {looked_at} deliveries; 9 983 were held back");
}

/// What a claim picks by the rule `DeliveryQueue::claim` states: every due delivery in due
/// order, each taken unless its endpoint is disabled or gone, its organization or endpoint
/// is at its cap, or it is an ordered delivery behind the head of its line. (The memory
/// store's claim before it looked per endpoint.)
fn pick_by_walking(
    state: &super::state::State,
    req: &crate::store::ClaimRequest,
) -> Vec<crate::DeliveryId> {
    use std::collections::HashMap;
    let live = |row: &super::state::DeliveryRow| row.lease.is_some_and(|l| l.expires_at > req.now);
    let (mut org_busy, mut endpoint_busy) = (HashMap::new(), HashMap::new());
    for row in state.queue.deliveries.values().filter(|row| live(row)) {
        *org_busy.entry(row.org).or_insert(0u32) += 1;
        *endpoint_busy.entry(row.endpoint_id).or_insert(0u32) += 1;
    }
    let mut due: Vec<_> = state
        .queue
        .deliveries
        .iter()
        .map(|(id, row)| (row.due_key(*id), row))
        .filter(|((at, _), _)| *at <= req.now)
        .collect();
    due.sort_unstable_by_key(|(key, _)| *key);
    let mut picked = Vec::new();
    for ((_, id), d) in due {
        if picked.len() == req.limit as usize {
            break;
        }
        let Some(endpoint) = state.endpoints.get(&d.endpoint_id) else { continue };
        if !endpoint.endpoint.enabled {
            continue;
        }
        let cap = if d.seq.is_some() || endpoint.failing_since.is_some() {
            1
        } else {
            let paced = endpoint.endpoint.rate_limit.map_or(u32::MAX, |r| r.saturating_mul(2));
            let own = endpoint.endpoint.concurrency.unwrap_or(u32::MAX).max(1);
            own.min(paced.max(1)).min(req.endpoint_concurrency)
        };
        let org_n = org_busy.entry(d.org).or_insert(0);
        let ep_n = endpoint_busy.entry(d.endpoint_id).or_insert(0);
        if *org_n >= req.org_concurrency || *ep_n >= cap {
            continue;
        }
        if let Some(seq) = d.seq {
            let line = state.queue.by_endpoint.get(&d.endpoint_id).map(|q| &q.line);
            if line.and_then(|l| l.first()).map(|h| h.0) != Some(seq) {
                continue;
            }
        }
        *org_n += 1;
        *ep_n += 1;
        picked.push(id);
    }
    picked
}

/// The per-endpoint claim picks exactly what walking every due delivery picks, over random
/// queues: parallel and FIFO endpoints (and endpoints whose ordering changes with deliveries
/// queued), endpoints with a lower limit of their own, failing and disabled ones, live and
/// expired leases, retries, several organizations and claimers.
#[tokio::test]
async fn claims_pick_what_walking_every_due_delivery_picks() {
    use crate::conformance::support::{
        completion, endpoint_with, insert, new_org, plus, record, t,
    };
    use crate::domain::webhook::DeliveryOrdering;
    use crate::store::{ClaimRequest, CompletionState, DeliveryQueue};
    use crate::WorkerId;

    // xorshift: the same sequence on every run, so a failure reproduces.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let store = MemoryStore::new();
    let mut orgs = Vec::new();
    let mut endpoints = Vec::new();
    for _ in 0..3 {
        let org = new_org(&store).await;
        for k in 0..3 {
            let ordering = if k == 2 { DeliveryOrdering::Fifo } else { DeliveryOrdering::Parallel };
            endpoints.push(endpoint_with(&store, org, None, ordering, t(0)).await.id);
        }
        orgs.push(org);
    }
    {
        // A lower limit of its own on one endpoint; another disabled later on.
        let mut state = store.lock().unwrap();
        state.endpoints.get_mut(&endpoints[0]).unwrap().endpoint.concurrency = Some(2);
        // A rate of its own on another: twice it caps its leases.
        state.endpoints.get_mut(&endpoints[3]).unwrap().endpoint.rate_limit = Some(1);
    }
    let workers = [WorkerId::new(), WorkerId::new()];
    let mut held = Vec::new();
    let mut compared = 0;
    for step in 0..400i64 {
        let now = plus(t(step), std::time::Duration::from_millis(rand(900)));
        match rand(10) {
            0..=2 => {
                let org = orgs[rand(3) as usize];
                let records = (0..1 + rand(6)).map(|i| record(&format!("r.{i}"), now)).collect();
                insert(&store, org, records, now).await;
            }
            3..=6 => {
                let lease = std::time::Duration::from_secs(1 + rand(20));
                let req =
                    ClaimRequest::new(workers[rand(2) as usize], 1 + rand(12) as u32, lease, now)
                        .with_caps(1 + rand(6) as u32, 1 + rand(4) as u32);
                let (expected, actual) = {
                    let state = store.lock().unwrap();
                    (pick_by_walking(&state, &req), state.pick(&req, req.limit as usize))
                };
                assert_eq!(actual, expected, "step {step}: {req:?}");
                compared += usize::from(!expected.is_empty());
                held.extend(store.claim(req).await.unwrap());
            }
            _ if !held.is_empty() => {
                let d = held.swap_remove(rand(held.len() as u64) as usize);
                let state = match rand(4) {
                    0 => CompletionState::Retry {
                        at: plus(now, std::time::Duration::from_secs(rand(5))),
                    },
                    1 => CompletionState::Failed,
                    _ => CompletionState::Delivered,
                };
                store.complete(&[completion(&d, state, now)]).await.unwrap();
            }
            _ => {}
        }
        let mut state = store.lock().unwrap();
        match step {
            // A parallel endpoint turns FIFO with parallel deliveries still queued (its line
            // and those then share it), a FIFO one parallel (its line dissolves), one is
            // disabled.
            100 => {
                assert!(state.set_endpoint_ordering(orgs[0], endpoints[1], DeliveryOrdering::Fifo))
            }
            200 => state.endpoints.get_mut(&endpoints[4]).unwrap().endpoint.enabled = false,
            300 => assert!(state.set_endpoint_ordering(
                orgs[2],
                endpoints[8],
                DeliveryOrdering::Parallel
            )),
            _ => {}
        }
    }
    assert!(compared > 50, "only {compared} claims took anything: the scenario tests too little");
}

/// Walks the whole state and checks the event indexes against it: each organization's ids
/// per status, the finished index (exactly the delivered and failed events), the dedup
/// expiry index (exactly the dedup entries), and no failed delivery outlives its event.
fn assert_event_indexes(state: &super::state::State, step: i64) {
    use crate::domain::event::EventStatus;
    use std::collections::BTreeSet;
    let mut finished = BTreeSet::new();
    let mut dedup = BTreeSet::new();
    for (org, tenant) in &state.orgs {
        for status in [EventStatus::Pending, EventStatus::Delivered, EventStatus::Failed] {
            let ids: BTreeSet<_> = tenant
                .events
                .values()
                .filter(|r| r.event.status == status)
                .map(|r| r.event.id)
                .collect();
            assert_eq!(tenant.by_status.ids(status), &ids, "step {step}: {status:?} ids");
        }
        for row in tenant.events.values().filter(|r| r.event.status != EventStatus::Pending) {
            finished.insert((row.event.created_at, *org, row.event.id));
        }
        for (id, meta) in &tenant.dedup {
            dedup.insert((meta.created_at, *org, std::sync::Arc::clone(id)));
        }
    }
    for id in state.endpoints.keys() {
        let walked: BTreeSet<_> = state
            .orgs
            .values()
            .flat_map(|tenant| tenant.events.values())
            .flat_map(|row| row.attempts.iter().map(move |(seq, a)| (row.event.id, *seq, a)))
            .filter(|(_, _, a)| a.endpoint_id == *id)
            .map(|(event, seq, a)| (crate::store::AttemptPosition { at: a.at, seq }, event))
            .collect();
        let indexed = state.attempts.of(*id).cloned().unwrap_or_default();
        assert_eq!(indexed, walked, "step {step}: the attempt index of an endpoint");
    }
    assert_eq!(state.finished.keys(), finished, "step {step}: the finished index");
    assert_eq!(state.dedup_expiry.keys(), dedup, "step {step}: the dedup expiry index");
    state.failed.check_index();
    for (endpoint, event) in state.failed.keys() {
        let org = state.endpoints.get(endpoint).map(|e| e.endpoint.organization_id);
        let kept = org.and_then(|org| state.orgs.get(&org)).map(|t| t.events.contains_key(event));
        assert_eq!(kept, Some(true), "step {step}: a failed delivery of a deleted event");
    }
}

/// Inbox pages, counts and retention read indexes that every change keeps in step, over
/// random histories: inserts with dedup ids taken over once their window is over,
/// deliveries that succeed, retry and fail, acks, replays, recovers, deleted endpoints, and
/// purges in batches. After each step the indexes match a walk of the state, and each purge
/// deletes exactly the oldest finished events the walk finds.
#[tokio::test]
async fn event_indexes_stay_in_step_with_the_events() {
    use crate::conformance::support::{claim, completion, endpoint, new_org, plus, record_with, t};
    use crate::domain::event::EventStatus;
    use crate::store::Retention;
    use crate::store::{AttemptQuery, DeliveryQuery, DeliveryStatus};
    use crate::store::{CompletionState, DeliveryQueue, EndpointStore, EventLog, RecoverQuery};
    use crate::WorkerId;
    use std::time::Duration;

    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    // Few attempts kept per endpoint, so that records are dropped from events (and from
    // the attempt index) as retries pile up.
    let limits = crate::store::StoreLimits { max_attempts_kept: 2, ..Default::default() };
    let store = MemoryStore::with_limits(limits);
    let mut orgs = Vec::new();
    for _ in 0..3 {
        let org = new_org(&store).await;
        let endpoints = vec![
            endpoint(&store, org, Some("a.*"), t(0)).await.id,
            endpoint(&store, org, None, t(0)).await.id,
        ];
        orgs.push((org, endpoints));
    }
    let window = Duration::from_secs(20);
    let worker = WorkerId::new();
    let (mut purged, mut forgotten, mut histories) = (0, 0, 0);
    for step in 0..1_500i64 {
        let now = plus(t(step), Duration::from_millis(rand(900)));
        let (org, endpoints) = &mut orgs[rand(3) as usize];
        let org = *org;
        match rand(16) {
            0..=4 => {
                let records = (0..1 + rand(4))
                    .map(|_| {
                        let kind = ["a.x", "b.y"][rand(2) as usize];
                        let dedup = format!("d{}", rand(40));
                        record_with(kind, "{}", (rand(3) > 0).then_some(dedup.as_str()), now)
                    })
                    .collect();
                store.insert_events(org, records, window, now).await.unwrap();
            }
            5..=8 => {
                for d in claim(&store, worker, 1 + rand(24) as u32, now).await {
                    let state = match rand(5) {
                        0 => CompletionState::Retry { at: plus(now, Duration::from_secs(2)) },
                        1 | 2 => CompletionState::Failed,
                        _ => CompletionState::Delivered,
                    };
                    store.complete(&[completion(&d, state, now)]).await.unwrap();
                }
            }
            9 | 10 => {
                let ids: Vec<_> = store.lock().unwrap().orgs[&org].events.keys().copied().collect();
                if !ids.is_empty() {
                    let id = ids[rand(ids.len() as u64) as usize];
                    if rand(2) == 0 {
                        store.ack(org, &[id], now).await.unwrap();
                    } else {
                        store.replay(org, id, now).await.unwrap();
                    }
                }
            }
            11 => {
                if let Some(&id) = endpoints.get(rand(2) as usize) {
                    let query =
                        RecoverQuery { since: t(0), until: None, limit: 1 + rand(5) as u32 };
                    store.recover(org, id, query, now).await.unwrap();
                }
            }
            12 => {
                // The histories of one endpoint, compared with the walk they replaced.
                let Some(&endpoint) = endpoints.get(rand(2) as usize) else { continue };
                let state = store.lock().unwrap();
                let success = [None, Some(true), Some(false)][rand(3) as usize];
                let since = (rand(2) == 0).then(|| t(step - rand(200) as i64));
                let limit = 1 + rand(12) as u32;
                let mut query = AttemptQuery { success, since, before: None, limit };
                for page in 0..3 {
                    let walked = walked_history::attempts_by_walking(&state, org, endpoint, &query);
                    let read = state.endpoint_attempts(org, endpoint, &query);
                    assert_eq!(read, walked, "step {step}, attempts page {page}: {query:?}");
                    match walked.and_then(|entries| entries.last().map(|e| e.position)) {
                        Some(position) => query.before = Some(position),
                        None => break,
                    }
                }
                let status = [
                    None,
                    Some(DeliveryStatus::Pending),
                    Some(DeliveryStatus::InFlight),
                    Some(DeliveryStatus::Delivered),
                    Some(DeliveryStatus::Failed),
                ][rand(5) as usize];
                let mut query = DeliveryQuery { status, before: None, limit };
                for page in 0..3 {
                    let walked =
                        walked_history::deliveries_by_walking(&state, org, endpoint, &query);
                    let read = state.endpoint_deliveries(org, endpoint, &query);
                    assert_eq!(read, walked, "step {step}, deliveries page {page}: {query:?}");
                    histories += usize::from(read.is_some_and(|entries| !entries.is_empty()));
                    match walked.and_then(|entries| entries.last().map(|e| e.position)) {
                        Some(position) => query.before = Some(position),
                        None => break,
                    }
                }
            }
            13 | 14 => {
                let before = plus(t(step - 150 - rand(150) as i64), Duration::ZERO);
                let batch = 1 + rand(8) as u32;
                let expected: Vec<_> = {
                    let state = store.lock().unwrap();
                    let mut old: Vec<_> = state
                        .orgs
                        .values()
                        .flat_map(|tenant| tenant.events.values())
                        .map(|row| &row.event)
                        .filter(|e| e.status != EventStatus::Pending && e.created_at < before)
                        .map(|e| (e.created_at, e.organization_id, e.id))
                        .collect();
                    old.sort_unstable();
                    old.truncate(batch as usize);
                    old
                };
                let n = store.purge_finished_batch(before, batch).await.unwrap();
                assert_eq!(n, expected.len() as u64, "step {step}: purged");
                let state = store.lock().unwrap();
                for (_, org, id) in &expected {
                    assert!(!state.orgs[org].events.contains_key(id), "step {step}: not purged");
                }
                purged += n;
            }
            _ => {
                let before = plus(t(step - rand(40) as i64), Duration::ZERO);
                let batch = 1 + rand(10) as u32;
                let expired = |store: &MemoryStore| {
                    let state = store.lock().unwrap();
                    let tenants = state.orgs.values();
                    tenants.flat_map(|t| t.dedup.values()).filter(|m| m.created_at < before).count()
                };
                let left = expired(&store) as u64;
                let n = store.purge_dedup_batch(before, batch).await.unwrap();
                assert_eq!(n, left.min(u64::from(batch)), "step {step}: forgotten");
                assert_eq!(expired(&store) as u64, left - n, "step {step}: expired entries left");
                forgotten += n;
            }
        }
        if step % 300 == 150 {
            // Now and then an endpoint goes, and a new one takes its place.
            let (org, endpoints) = &mut orgs[rand(3) as usize];
            let gone = endpoints.remove(0);
            assert!(store.delete_endpoint(*org, gone).await.unwrap());
            endpoints.push(endpoint(&store, *org, None, now).await.id);
        }
        assert_event_indexes(&store.lock().unwrap(), step);
    }
    assert!(
        purged > 100 && forgotten > 50 && histories > 50,
        "purged {purged}, forgot {forgotten}, {histories} history pages: too little"
    );
}

/// The attempt and delivery histories as the memory store read them before it kept an
/// attempt index and walked events newest first: every event of the organization, every
/// attempt, the failed deliveries and the queue. The reference the randomized test holds
/// the reads to.
mod walked_history {
    use std::collections::BTreeMap;

    use super::super::state::State;
    use crate::domain::{EndpointId, EventId, OrganizationId};
    use crate::store::{
        AttemptEntry, AttemptPosition, AttemptQuery, DeliveryEntry, DeliveryQuery, DeliveryState,
    };

    pub(super) fn attempts_by_walking(
        state: &State,
        org: OrganizationId,
        endpoint: EndpointId,
        query: &AttemptQuery,
    ) -> Option<Vec<AttemptEntry>> {
        state.endpoint(org, endpoint)?;
        let tenant = state.orgs.get(&org)?;
        let mut found: Vec<AttemptEntry> = tenant
            .events
            .values()
            .flat_map(|row| row.attempts.iter().map(move |(seq, a)| (row, *seq, a)))
            .filter(|(_, _, a)| a.endpoint_id == endpoint)
            .filter(|(_, _, a)| query.success.map_or(true, |ok| a.error.is_none() == ok))
            .filter(|(_, _, a)| query.since.map_or(true, |since| a.at >= since))
            .map(|(row, seq, a)| AttemptEntry {
                position: AttemptPosition { at: a.at, seq },
                event_id: row.event.id,
                event_type: row.event.event_type.clone(),
                record: a.clone(),
            })
            .filter(|e| query.before.map_or(true, |before| e.position < before))
            .collect();
        found.sort_unstable_by_key(|e| std::cmp::Reverse(e.position));
        found.truncate(query.limit as usize);
        Some(found)
    }

    pub(super) fn deliveries_by_walking(
        state: &State,
        org: OrganizationId,
        endpoint: EndpointId,
        query: &DeliveryQuery,
    ) -> Option<Vec<DeliveryEntry>> {
        state.endpoint(org, endpoint)?;
        let tenant = state.orgs.get(&org)?;
        let below = |id: &EventId| query.before.map_or(true, |before| id.0.as_u128() < before);
        // The state of each listed event, most specific first: outstanding, failed, delivered.
        let mut states: BTreeMap<EventId, DeliveryState> = BTreeMap::new();
        for (event_id, row) in &tenant.events {
            if !below(event_id) {
                continue;
            }
            let success = row
                .attempts
                .iter()
                .filter(|(_, a)| a.endpoint_id == endpoint && a.error.is_none())
                .map(|(_, a)| a.at)
                .max();
            if let Some(at) = success {
                states.insert(*event_id, DeliveryState::Delivered { at });
            }
        }
        for (event_id, failed) in state.failed.of_endpoint(endpoint) {
            if below(&event_id) {
                let state = DeliveryState::Failed { at: failed.at, reason: failed.reason.clone() };
                states.insert(event_id, state);
            }
        }
        let outstanding = state.queue.by_endpoint.get(&endpoint).into_iter().flat_map(|q| q.ids());
        for row in outstanding.filter_map(|id| state.queue.deliveries.get(&id)) {
            if !below(&row.event_id) {
                continue;
            }
            let state = match row.lease {
                Some(lease) => DeliveryState::InFlight {
                    attempt: row.attempt,
                    lease_expires_at: lease.expires_at,
                },
                None => DeliveryState::Pending {
                    attempts: row.attempt,
                    next_attempt_at: row.next_attempt_at,
                },
            };
            states.insert(row.event_id, state);
        }
        let listed = states
            .into_iter()
            .rev()
            .filter(|(_, state)| query.status.map_or(true, |s| state.status() == s))
            .filter_map(|(event_id, state)| {
                let event = &tenant.events.get(&event_id)?.event;
                Some(DeliveryEntry {
                    position: event_id.0.as_u128(),
                    event_id,
                    event_type: event.event_type.clone(),
                    event_created_at: event.created_at,
                    endpoint_id: endpoint,
                    state,
                })
            })
            .take(query.limit as usize)
            .collect();
        Some(listed)
    }
}
