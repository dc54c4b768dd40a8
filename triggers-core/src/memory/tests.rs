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
            endpoint.endpoint.concurrency.unwrap_or(u32::MAX).max(1).min(req.endpoint_concurrency)
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
