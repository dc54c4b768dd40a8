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
