//! The shared (store-backed) rate limiter.

use std::time::Duration;

use triggers_core::{OrganizationId, RateLimiter, SharedRateLimiter};

use crate::support::{self, at};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_exact_limit_across_nodes() {
    let Some(db) = support::database("shared_limit_across_nodes").await else { return };
    let a = support::connect(&db, support::config()).await;
    let b = support::connect(&db, support::config()).await;
    let org = OrganizationId::new();
    let mut tasks = tokio::task::JoinSet::new();
    for limiter in [a.rate_limiter(), b.rate_limiter()] {
        for _ in 0..4 {
            let limiter = limiter.clone();
            tasks.spawn(async move {
                let mut allowed = 0;
                for _ in 0..40 {
                    allowed +=
                        usize::from(limiter.check(org, 100, 1, at(0)).await.unwrap().allowed);
                }
                allowed
            });
        }
    }
    let mut allowed = 0;
    while let Some(n) = tasks.join_next().await {
        allowed += n.unwrap();
    }
    assert_eq!(allowed, 100, "320 requests against one limit of 100, from two nodes");
    let refused = a.rate_limiter().check(org, 100, 1, at(0)).await.unwrap();
    assert!(!refused.allowed);
    assert_eq!(refused.retry_after, Some(Duration::from_millis(600)));
    drop((a, b));
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn decisions_match_the_in_process_limiter() {
    let Some(db) = support::database("shared_limit_semantics").await else { return };
    let store = support::connect(&db, support::config()).await;
    let shared = store.rate_limiter();
    let local = RateLimiter::new();
    let (org, other) = (OrganizationId::new(), OrganizationId::new());
    // (organization, seconds, limit, cost)
    let script = [
        (org, 0, 10, 7),
        (org, 0, 10, 4),
        (org, 0, 10, 3),
        (org, 0, 10, 1),
        (org, 0, 10, 11),
        (other, 0, 1, 1),
        (other, 1, 1, 1),
        (org, 6, 10, 1),
        (org, 7, 10, 2),
        (org, 30, 10, 5),
        (org, 30, 60, 5),
        (other, 61, 1, 1),
        (org, 500, 10, 10),
        (org, 500, 10, 1),
    ];
    for (step, (who, secs, limit, cost)) in script.into_iter().enumerate() {
        let expected = local.check(who, limit, cost, at(secs));
        let got = shared.check(who, limit, cost, at(secs)).await.unwrap();
        assert_eq!(got, expected, "step {step}");
    }
    assert_eq!(shared.sweep(at(10_000)).await.unwrap(), 2);
    drop(store);
    db.drop_database().await.unwrap();
}
