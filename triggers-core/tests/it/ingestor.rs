use serde_json::json;
use triggers_core::store::{EndpointPatch, StoreResult};
use triggers_core::*;

use crate::eventually;

fn config(clock: &ManualClock) -> IngestorConfig {
    IngestorConfig {
        clock: std::sync::Arc::new(clock.clone()),
        tier_limits: TierLimits::default().with(Tier::Free, 5),
        worker: WorkerConfig { concurrency: 0, ..WorkerConfig::default() },
        ..IngestorConfig::default()
    }
}

fn start(clock: &ManualClock) -> Ingestor<MemoryStore, NoDeliverer> {
    Ingestor::start(MemoryStore::new(), NoDeliverer, config(clock))
}

fn ev(t: &str) -> NewEvent {
    NewEvent::new(t, &json!({"k": "v"}))
}

#[tokio::test]
async fn keys_authenticate_and_rotation_revokes_at_once() {
    let clock = ManualClock::new();
    let ing = start(&clock);
    let (org, key) = ing.create_organization("acme", Tier::Starter).await.unwrap();
    assert_eq!(ing.authenticate(key.expose()).await.unwrap(), org);
    assert!(matches!(ing.authenticate("trg_nope").await, Err(Error::Unauthorized)));
    let new_key = ing.rotate_key(&org).await.unwrap();
    // The old key was cached by the successful call above; rotation must still revoke it.
    assert!(matches!(ing.authenticate(key.expose()).await, Err(Error::Unauthorized)));
    assert_eq!(ing.authenticate(new_key.expose()).await.unwrap().id, org.id);
    assert!(matches!(
        ing.create_organization("  ", Tier::Free).await,
        Err(Error::Invalid(ValidationError::Field { field: "organization_name", .. }))
    ));
}

#[tokio::test]
async fn ingest_validates_limits_and_dedups() {
    let clock = ManualClock::new();
    let ing = start(&clock);
    let (org, _) = ing.create_organization("acme", Tier::Free).await.unwrap();
    let bad = ing.ingest(&org, ev("bad type")).await;
    assert!(matches!(bad, Err(Error::Invalid(ValidationError::TypeCharacter(' ')))));
    let first = ing.ingest(&org, ev("a").with_dedup_id("d1")).await.unwrap();
    assert!(!first.duplicate);
    assert_eq!(first.rate.remaining, 4, "the invalid event cost nothing");
    let dup = ing.ingest(&org, ev("a").with_dedup_id("d1")).await.unwrap();
    assert!(dup.duplicate);
    assert_eq!(dup.id, first.id);
    for _ in 0..3 {
        ing.ingest(&org, ev("a")).await.unwrap();
    }
    let Err(Error::RateLimited(d)) = ing.ingest(&org, ev("a")).await else {
        panic!("expected a rate limit")
    };
    assert_eq!((d.limit, d.remaining), (5, 0));
    assert_eq!(d.retry_after, Some(std::time::Duration::from_secs(12)));
    // Refused events are not stored.
    assert_eq!(ing.stats(&org).await.unwrap().pending, 4);
    // Another organization is unaffected.
    let (other, _) = ing.create_organization("other", Tier::Free).await.unwrap();
    assert!(ing.ingest(&other, ev("a")).await.is_ok());
    clock.advance(std::time::Duration::from_secs(12));
    assert!(ing.ingest(&org, ev("a")).await.is_ok(), "one unit refilled");
}

#[tokio::test]
async fn batches_report_per_item_and_cost_their_length() {
    let clock = ManualClock::new();
    let ing = start(&clock);
    let (org, _) = ing.create_organization("acme", Tier::Free).await.unwrap();
    let out = ing
        .ingest_batch(
            &org,
            vec![ev("ok"), ev(""), ev("ok").with_dedup_id("x"), ev("ok").with_dedup_id("x")],
        )
        .await
        .unwrap();
    assert_eq!(out.results.len(), 4);
    assert!(out.results[0].is_ok());
    assert_eq!(out.results[1].as_ref().unwrap_err(), &ValidationError::TypeLength(0));
    let (third, fourth) = (out.results[2].as_ref().unwrap(), out.results[3].as_ref().unwrap());
    assert!(!third.duplicate && fourth.duplicate);
    assert_eq!(third.id, fourth.id);
    assert_eq!(out.rate.remaining, 1, "a batch of 4 costs 4");
    assert!(matches!(
        ing.ingest_batch(&org, vec![ev("a"), ev("b")]).await,
        Err(Error::RateLimited(_))
    ));
    assert!(matches!(ing.ingest_batch(&org, vec![]).await, Err(Error::Invalid(_))));
    assert_eq!(ing.stats(&org).await.unwrap().pending, 2);
}

#[tokio::test]
async fn inbox_pages_with_cursors_and_acks() {
    let clock = ManualClock::new();
    let ing = start(&clock);
    let (org, _) = ing.create_organization("acme", Tier::Enterprise).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..7 {
        let t = if i % 2 == 0 { "user.created" } else { "order.paid" };
        ids.push(ing.ingest(&org, ev(t)).await.unwrap().id);
    }
    let mut seen = Vec::new();
    let mut q = InboxQuery { limit: 3, ..InboxQuery::default() };
    loop {
        let page = ing.inbox(&org, q.clone()).await.unwrap();
        seen.extend(page.events.iter().map(|e| e.id));
        match page.next_cursor {
            Some(c) => q.cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    let users =
        InboxQuery { type_glob: Some(TypeGlob::parse("user.*").unwrap()), ..InboxQuery::default() };
    assert_eq!(ing.inbox(&org, users).await.unwrap().events.len(), 4);
    assert!(matches!(
        ing.inbox(&org, InboxQuery { cursor: Some("garbage!".into()), ..InboxQuery::default() })
            .await,
        Err(Error::Invalid(ValidationError::Field { field: "cursor", .. }))
    ));
    assert!(matches!(
        ing.inbox(&org, InboxQuery { limit: 0, ..InboxQuery::default() }).await,
        Err(Error::Invalid(_))
    ));

    ing.ack(&org, ids[0]).await.unwrap();
    ing.ack(&org, ids[0]).await.unwrap();
    let (other, _) = ing.create_organization("other", Tier::Free).await.unwrap();
    assert!(matches!(ing.ack(&other, ids[1]).await, Err(Error::NotFound)));
    assert!(matches!(ing.event(&other, ids[1]).await, Err(Error::NotFound)));
    let unknown = EventId::new();
    let many = ing.ack_many(&org, &[ids[1], unknown]).await.unwrap();
    assert_eq!(many.acknowledged, vec![ids[1]]);
    assert_eq!(many.not_found, vec![unknown]);
    let detail = ing.event(&org, ids[0]).await.unwrap();
    assert_eq!(detail.event.status, EventStatus::Delivered);
    assert_eq!(detail.event.delivered_at, Some(clock.now()));
    let stats = ing.stats(&org).await.unwrap();
    assert_eq!((stats.pending, stats.delivered), (5, 2));
}

#[tokio::test]
async fn endpoints_validate_and_rotate() {
    let clock = ManualClock::new();
    let ing = start(&clock);
    let (org, _) = ing.create_organization("acme", Tier::Free).await.unwrap();
    assert!(matches!(ing.create_endpoint(&org, "", None).await, Err(Error::Invalid(_))));
    assert!(matches!(
        ing.create_endpoint(&org, "http://127.0.0.1:1/x", Some("bad filter!")).await,
        Err(Error::Invalid(ValidationError::Field { field: "event_type_filter", .. }))
    ));
    let ep = ing.create_endpoint(&org, "http://127.0.0.1:1/x", Some("user.*")).await.unwrap();
    assert!(ep.enabled);
    let secret = ing.rotate_endpoint_secret(&org, ep.id).await.unwrap();
    assert_ne!(secret, ep.secret);
    let (other, _) = ing.create_organization("other", Tier::Free).await.unwrap();
    assert!(matches!(ing.rotate_endpoint_secret(&other, ep.id).await, Err(Error::NotFound)));
    assert!(matches!(ing.delete_endpoint(&other, ep.id).await, Err(Error::NotFound)));
    ing.delete_endpoint(&org, ep.id).await.unwrap();
    assert!(ing.endpoints(&org).await.unwrap().is_empty());
    ing.ready().await.unwrap();
}

/// `status: None` lists every status in id order, paging exactly once, also when the byte
/// budget ends pages early and statuses interleave.
#[tokio::test]
async fn inbox_of_every_status_merges_by_id_within_the_budget() {
    let clock = ManualClock::new();
    let mut config = config(&clock);
    config.tier_limits = TierLimits::unlimited();
    // Room for about two small events per page (each counts its payload + 256 bytes).
    config.max_page_bytes = 600;
    let ing = Ingestor::start(MemoryStore::new(), NoDeliverer, config);
    let (org, _) = ing.create_organization("acme", Tier::Free).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..11 {
        ids.push(ing.ingest(&org, NewEvent::new("t", &json!({ "i": i }))).await.unwrap().id);
    }
    // Every third event acknowledged: pending and delivered interleave.
    for id in ids.iter().step_by(3) {
        ing.ack(&org, *id).await.unwrap();
    }
    for limit in [1, 2, 4, 1000] {
        let mut q = InboxQuery { status: None, limit, ..InboxQuery::default() };
        let mut seen = Vec::new();
        loop {
            let page = ing.inbox(&org, q.clone()).await.unwrap();
            assert!(!page.events.is_empty() || page.next_cursor.is_none(), "an empty page ends");
            assert!(page.events.len() <= limit as usize);
            seen.extend(page.events.iter().map(|e| (e.id, e.status)));
            match page.next_cursor {
                Some(c) => q.cursor = Some(c),
                None => break,
            }
        }
        let expected: Vec<(EventId, EventStatus)> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                (*id, if i % 3 == 0 { EventStatus::Delivered } else { EventStatus::Pending })
            })
            .collect();
        assert_eq!(seen, expected, "limit {limit}");
    }
}

/// An Ingestor with three places at the store over a counting store whose `stats` reads
/// wait to be released, and two organizations, "busy" and "other".
async fn three_places_reads_held() -> (
    crate::counting::Counting,
    Ingestor<crate::counting::Counting, NoDeliverer>,
    Organization,
    Organization,
) {
    let store = crate::counting::Counting::default();
    let config = IngestorConfig { store_concurrency: 3, ..IngestorConfig::default() };
    let ing = Ingestor::start(store.clone(), NoDeliverer, config);
    let (busy, _) = ing.create_organization("busy", Tier::Free).await.unwrap();
    let (other, _) = ing.create_organization("other", Tier::Free).await.unwrap();
    store.hold_reads();
    (store, ing, busy, other)
}

/// `org`'s `stats`, as a request of its own.
fn stats_read(
    ing: &Ingestor<crate::counting::Counting, NoDeliverer>,
    org: &Organization,
) -> tokio::task::JoinHandle<triggers_core::Result<triggers_core::store::QueueStats>> {
    let (ing, org) = (ing.clone(), org.clone());
    tokio::spawn(async move { ing.stats(&org).await })
}

/// One organization may hold all of the store's places but one: six reads of a busy
/// organization reach the store two at a time (of three places), and another
/// organization's read takes the third at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_organization_leaves_a_place_at_the_store_for_the_others() {
    let (store, ing, busy, other) = three_places_reads_held().await;
    let stats = |org: &Organization| stats_read(&ing, org);
    let reads: Vec<_> = (0..6).map(|_| stats(&busy)).collect();
    let running = |org: OrganizationId| store.reads_of(org).0;
    eventually("two of busy's reads reach the store", || async { running(busy.id) == 2 }).await;
    let theirs = stats(&other);
    eventually("the other organization's read reaches the store", || async {
        running(other.id) == 1
    })
    .await;
    store.release_reads(100);
    theirs.await.unwrap().unwrap();
    for read in reads {
        read.await.unwrap().unwrap();
    }
    assert_eq!(store.reads_of(busy.id), (0, 2), "never more than two of busy's reads at once");
    ing.shutdown().await;
}

/// A request dropped midway (the HTTP server drops a handler whose client hung up) keeps its
/// place at the store until the store is done with it: a SQLite read goes on on the
/// blocking pool, a PostgreSQL query on the server, whoever waits. (The test store's held
/// reads stay counted as running when their future is dropped, like those.) Hanging up and
/// asking again buys the organization no more than its share, and the place kept for the
/// others stays free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_dropped_midway_keeps_its_place_until_the_store_is_done() {
    let (store, ing, busy, other) = three_places_reads_held().await;
    let stats = |org: &Organization| stats_read(&ing, org);
    let running = |org: OrganizationId| store.reads_of(org).0;
    let hung_up: Vec<_> = (0..2).map(|_| stats(&busy)).collect();
    eventually("two of busy's reads reach the store", || async { running(busy.id) == 2 }).await;
    for request in &hung_up {
        request.abort();
    }
    for request in hung_up {
        assert!(request.await.unwrap_err().is_cancelled());
    }
    let again: Vec<_> = (0..2).map(|_| stats(&busy)).collect();
    let theirs = stats(&other);
    eventually("the place kept for the others is free", || async { running(other.id) == 1 }).await;
    assert_eq!(running(busy.id), 2, "busy's new reads wait for the old ones");
    store.release_reads(100);
    theirs.await.unwrap().unwrap();
    for read in again {
        read.await.unwrap().unwrap();
    }
    eventually("the dropped reads end too", || async { running(busy.id) == 0 }).await;
    assert_eq!(store.reads_of(busy.id), (0, 2), "never more than two of busy's reads at once");
    ing.shutdown().await;
}

/// Lookups of keys never seen valid belong to no organization: a flood of invented keys
/// reaches the store at most half of `store_concurrency` at a time (here 2 of 4), at most
/// 64 more wait (each at most a second), the rest are refused at once with `Overloaded`, and
/// an organization's read still reaches the store meanwhile. A key seen valid before whose
/// cache entry expired is looked up beside them, without a turn. Every invented key is
/// refused, the real one accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_keys_reach_the_store_a_few_at_a_time() {
    let store = crate::counting::Counting::default();
    let config = IngestorConfig {
        store_concurrency: 4,
        auth_cache_ttl: std::time::Duration::from_millis(1),
        ..IngestorConfig::default()
    };
    let ing = Ingestor::start(store.clone(), NoDeliverer, config);
    let (org, key) = ing.create_organization("acme", Tier::Free).await.unwrap();
    assert_eq!(ing.authenticate(key.expose()).await.unwrap().id, org.id, "seen valid");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    store.hold_key_lookups();
    let flood: Vec<_> = (0..80)
        .map(|i| {
            let ing = ing.clone();
            tokio::spawn(async move { ing.authenticate(&format!("tk_invented_{i}")).await })
        })
        .collect();
    eventually("two lookups reach the store", || async { store.key_lookups().0 == 2 }).await;
    let finished = || flood.iter().filter(|f| f.is_finished()).count();
    eventually("those beyond 64 waiting are refused at once", || async { finished() >= 14 }).await;
    ing.stats(&org).await.unwrap();
    let known = {
        let (ing, key) = (ing.clone(), key.expose().to_owned());
        tokio::spawn(async move { ing.authenticate(&key).await })
    };
    eventually("the known key's lookup runs beside them", || async { store.key_lookups().0 == 3 })
        .await;
    store.release_key_lookups(1000);
    assert_eq!(known.await.unwrap().unwrap().id, org.id);
    let (mut refused, mut unknown) = (0, 0);
    for attempt in flood {
        match attempt.await.unwrap() {
            Err(Error::Overloaded(_)) => refused += 1,
            Err(Error::Unauthorized) => unknown += 1,
            other => panic!("an invented key got {other:?}"),
        }
    }
    assert!(refused >= 14 && refused + unknown == 80, "{refused} refused, {unknown} unknown");
    assert_eq!(store.key_lookups(), (0, 3), "never more than two turns, and the known key");
    assert_eq!(ing.authenticate(key.expose()).await.unwrap().id, org.id);
    ing.shutdown().await;
}

/// A shared limiter kept in this process: what a store-backed one decides, without the store.
struct InProcessShared(RateLimiter);

#[async_trait::async_trait]
impl SharedRateLimiter for InProcessShared {
    async fn check(
        &self,
        org: OrganizationId,
        limit_per_minute: u32,
        cost: u32,
        now: Timestamp,
    ) -> StoreResult<RateDecision> {
        Ok(self.0.check(org, limit_per_minute, cost, now))
    }
}

/// An Ingestor like [`start`]'s, rate-limited by an [`InProcessShared`] limiter.
fn start_shared(clock: &ManualClock) -> Ingestor<MemoryStore, NoDeliverer> {
    let shared = std::sync::Arc::new(InProcessShared(RateLimiter::new()));
    let config = IngestorConfig { shared_limiter: Some(shared), ..config(clock) };
    Ingestor::start(MemoryStore::new(), NoDeliverer, config)
}

/// With a shared limiter (the PostgreSQL default), this node's own limiter is never charged:
/// a recover sized by it saw a full allowance on every call and re-queued up to the tier's
/// whole limit each time. It is sized by what the shared limiter says is left.
#[tokio::test]
async fn a_recover_with_a_shared_limiter_queues_no_more_than_the_allowance() {
    let clock = ManualClock::new();
    let ing = start_shared(&clock);
    // Free tier here: 5 per minute. Disable (1), two events with a failed delivery each (2),
    // enable (1): one unit is left, so the recover queues one of the two and says more.
    let (org, _) = ing.create_organization("acme", Tier::Free).await.unwrap();
    let id = ing.create_endpoint(&org, "inproc://down", None).await.unwrap().id;
    let toggle = |enabled| EndpointPatch { enabled: Some(enabled), ..EndpointPatch::default() };
    ing.update_endpoint(&org, id, &toggle(false)).await.unwrap();
    for _ in 0..2 {
        ing.ingest(&org, ev("order.paid")).await.unwrap();
    }
    ing.update_endpoint(&org, id, &toggle(true)).await.unwrap();
    let recovered = ing.recover(&org, id, Timestamp::UNIX_EPOCH, None).await.unwrap();
    assert_eq!((recovered.queued, recovered.more), (1, true));
    assert!(matches!(
        ing.recover(&org, id, Timestamp::UNIX_EPOCH, None).await,
        Err(Error::RateLimited(_))
    ));
    // A minute later the allowance is full again, and a call that finds nothing costs one.
    clock.advance(std::time::Duration::from_secs(60));
    let recovered = ing.recover(&org, id, Timestamp::UNIX_EPOCH, None).await.unwrap();
    assert_eq!((recovered.queued, recovered.more), (1, false));
    for _ in 0..4 {
        let empty = ing.recover(&org, id, Timestamp::UNIX_EPOCH, None).await.unwrap();
        assert_eq!(empty.queued, 0);
    }
    assert!(matches!(
        ing.recover(&org, id, Timestamp::UNIX_EPOCH, None).await,
        Err(Error::RateLimited(_))
    ));
}

/// With a shared limiter, the state reported for responses that charge nothing (the
/// `X-RateLimit-*` headers of other routes) is what the shared limiter last said, not this
/// node's own limiter, which that mode never charges.
#[tokio::test]
async fn rate_status_follows_the_shared_limiter() {
    let clock = ManualClock::new();
    let ing = start_shared(&clock);
    let (org, _) = ing.create_organization("acme", Tier::Free).await.unwrap();
    assert_eq!(ing.rate_status(&org).remaining, 5);
    for _ in 0..3 {
        ing.ingest(&org, ev("t")).await.unwrap();
    }
    assert_eq!(ing.rate_status(&org).remaining, 2, "free tier here: 5 a minute, 3 spent");
    clock.advance(std::time::Duration::from_secs(24));
    assert_eq!(ing.rate_status(&org).remaining, 4, "two units refilled");
}

/// An organization keeps at most its tier's rate times `max_pending` pending events: past
/// that, ingests are refused whole (nothing stored or charged) until some are acknowledged;
/// another organization is not affected.
#[tokio::test]
async fn pending_events_are_bounded_per_organization() {
    let clock = ManualClock::new();
    // 5 a minute for two minutes: 10 pending events.
    let two_minutes = Some(std::time::Duration::from_secs(120));
    let ing = Ingestor::start(
        MemoryStore::new(),
        NoDeliverer,
        IngestorConfig { max_pending: two_minutes, ..config(&clock) },
    );
    let (org, _) = ing.create_organization("hoarder", Tier::Free).await.unwrap();
    let (other, _) = ing.create_organization("other", Tier::Free).await.unwrap();
    let batch = |n: usize| (0..n).map(|i| ev(&format!("kept.{i}"))).collect::<Vec<_>>();
    ing.ingest_batch(&org, batch(5)).await.unwrap();
    clock.advance(std::time::Duration::from_secs(60));
    ing.ingest_batch(&org, batch(4)).await.unwrap();
    let refused = |r: Result<_>| match r {
        Err(Error::LimitExceeded { limit, max }) => {
            assert_eq!(max, 10);
            assert!(limit.starts_with("pending events per organization"), "{limit}");
        }
        other => panic!("expected LimitExceeded, got {other:?}"),
    };
    refused(ing.ingest_batch(&org, batch(2)).await.map(|_| ()));
    let last = ing.ingest(&org, ev("kept.last")).await.unwrap();
    refused(ing.ingest(&org, ev("one.too.many")).await.map(|_| ()));
    assert_eq!(ing.stats(&org).await.unwrap().pending, 10, "nothing stored");
    ing.ingest(&other, ev("theirs")).await.unwrap();

    // A full allowance does not help, and is not touched by the refusal.
    clock.advance(std::time::Duration::from_secs(60));
    refused(ing.ingest(&org, ev("still.full")).await.map(|_| ()));
    assert_eq!(ing.rate_status(&org).remaining, 5, "nothing charged");
    // An acknowledgement on this node makes room at once.
    ing.ack(&org, last.id).await.unwrap();
    ing.ingest(&org, ev("room.again")).await.unwrap();
    refused(ing.ingest(&org, ev("full.again")).await.map(|_| ()));
    // Room made another way (a delivery, another node) is seen once the count is read
    // again: a second after the last read, in the background, so the ingest that finds
    // the count old is still decided by it.
    let page = ing.inbox(&org, InboxQuery::default()).await.unwrap();
    let ids: Vec<_> = page.events.iter().take(3).map(|e| e.id).collect();
    triggers_core::store::EventLog::ack(ing.store(), org.id, &ids, clock.now()).await.unwrap();
    eventually("the room made elsewhere is seen", || async {
        match ing.ingest_batch(&org, batch(3)).await {
            Ok(_) => true,
            Err(Error::LimitExceeded { .. }) => false,
            Err(e) => panic!("{e:?}"),
        }
    })
    .await;
    refused(ing.ingest(&org, ev("full.once.more")).await.map(|_| ()));
}

/// Only an organization's first ingest on a node waits for its pending count: later ones
/// decide by the count they have while a new one is read in the background, so a store
/// whose reads are slow (its readers busy) does not hold up ingestion; a read that never
/// ends is read again by nobody else meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingestion_does_not_wait_for_a_slow_pending_count() {
    let clock = ManualClock::new();
    let ing = Ingestor::start(crate::counting::Counting::default(), NoDeliverer, config(&clock));
    let (org, _) = ing.create_organization("steady", Tier::Starter).await.unwrap();
    ing.ingest(&org, ev("first")).await.unwrap();
    assert_eq!(ing.store().pending_reads(), 1, "the first ingest read the count");
    ing.store().hold_pending_reads();
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    // The count is old: one read begins in the background and hangs; ingests go on.
    for i in 0..5 {
        let ingest = ing.ingest(&org, ev(&format!("later.{i}")));
        let ingested = tokio::time::timeout(std::time::Duration::from_secs(10), ingest).await;
        ingested.expect("an ingest waited for the held read").unwrap();
    }
    eventually("the background read begins", || async { ing.store().pending_reads() == 2 }).await;
    ing.store().release_pending_reads(1);
    assert_eq!(ing.stats(&org).await.unwrap().pending, 6);
    assert_eq!(ing.store().pending_reads(), 2, "one read at a time");
}

/// Concurrent ingests of one organization never pass its pending bound together (each
/// reserves its events before inserting), and a reservation refused by the rate limit is
/// given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ingests_never_pass_the_pending_bound_together() {
    let clock = ManualClock::new();
    let ing = bounded(&clock, 100);
    let (org, _) = ing.create_organization("racer", Tier::Free).await.unwrap();
    let batch = (0..95).map(|i| ev(&format!("kept.{i}"))).collect();
    ing.ingest_batch(&org, batch).await.unwrap();
    clock.advance(std::time::Duration::from_secs(60));
    let racers: Vec<_> = (0..20)
        .map(|i| {
            let (ing, org) = (ing.clone(), org.clone());
            tokio::spawn(async move { ing.ingest(&org, ev(&format!("race.{i}"))).await })
        })
        .collect();
    let (mut passed, mut refused) = (0, 0);
    for racer in racers {
        match racer.await.unwrap() {
            Ok(_) => passed += 1,
            Err(Error::LimitExceeded { max: 100, .. }) => refused += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!((passed, refused), (5, 15));
    assert_eq!(ing.stats(&org).await.unwrap().pending, 100);

    // One slot made; the rate limit refuses the ingest that reserved it, which gives it back.
    let page = ing.inbox(&org, InboxQuery::default()).await.unwrap();
    ing.ack(&org, page.events[0].id).await.unwrap();
    // Invalid items spend the allowance (95 left) and reserve nothing.
    let invalid = (0..95).map(|_| ev("")).collect::<Vec<_>>();
    let spent = ing.ingest_batch(&org, invalid).await.unwrap();
    assert!(spent.results.iter().all(|r| r.is_err()));
    assert!(matches!(ing.ingest(&org, ev("rate.refused")).await, Err(Error::RateLimited(_))));
    clock.advance(std::time::Duration::from_secs(60));
    ing.ingest(&org, ev("the.given.back.slot")).await.unwrap();
    assert!(matches!(ing.ingest(&org, ev("full")).await, Err(Error::LimitExceeded { .. })));
}

/// An organization's first ingests on a node wait for one read of its count; when that read
/// fails, the next of them reads, and none is left waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_first_count_is_read_again_by_a_waiting_ingest() {
    let clock = ManualClock::new();
    let ing = Ingestor::start(crate::counting::Counting::default(), NoDeliverer, config(&clock));
    let (org, _) = ing.create_organization("first", Tier::Starter).await.unwrap();
    ing.store().hold_pending_reads();
    let firsts: Vec<_> = (0..3)
        .map(|i| {
            let (ing, org) = (ing.clone(), org.clone());
            tokio::spawn(async move { ing.ingest(&org, ev(&format!("first.{i}"))).await })
        })
        .collect();
    eventually("one read begins", || async { ing.store().pending_reads() >= 1 }).await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(ing.store().pending_reads(), 1, "the others wait for it");
    ing.store().fail_pending_reads(1);
    ing.store().release_pending_reads(10);
    let mut outcomes = Vec::new();
    for first in firsts {
        let done = tokio::time::timeout(std::time::Duration::from_secs(10), first).await;
        outcomes.push(done.expect("an ingest was left waiting").unwrap().is_ok());
    }
    outcomes.sort();
    assert_eq!(outcomes, [false, true, true], "the failed read's ingest fails, the others read");
    assert_eq!(ing.store().pending_reads(), 2);
}

/// A count read while a reservation's insert is still running does not forget that
/// reservation (the read may not see the insert).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_count_read_during_an_insert_keeps_its_reservation() {
    let clock = ManualClock::new();
    let ing = bounded(&clock, 10);
    let (org, _) = ing.create_organization("slow", Tier::Free).await.unwrap();
    ing.ingest(&org, ev("one")).await.unwrap();
    ing.store().hold_inserts();
    let slow = {
        let (ing, org) = (ing.clone(), org.clone());
        let batch = (0..8).map(|i| ev(&format!("slow.{i}"))).collect();
        tokio::spawn(async move { ing.ingest_batch(&org, batch).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    // Refused by the old count (1 + 8 reserved + 2), and starts a new read, which counts 1.
    let two = || (0..2).map(|i| ev(&format!("two.{i}"))).collect::<Vec<_>>();
    assert!(matches!(ing.ingest_batch(&org, two()).await, Err(Error::LimitExceeded { .. })));
    eventually("the new read begins", || async { ing.store().pending_reads() == 2 }).await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(
        matches!(ing.ingest_batch(&org, two()).await, Err(Error::LimitExceeded { .. })),
        "the 8 in flight still count"
    );
    ing.store().release_inserts(10);
    slow.await.unwrap().unwrap();
    assert_eq!(ing.stats(&org).await.unwrap().pending, 9);
}

/// An ingest dropped while its insert runs (its client hung up) hands its reservation back:
/// the organization's room is not lost until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_dropped_midway_hands_its_reservation_back() {
    let clock = ManualClock::new();
    let ing = bounded(&clock, 10);
    let (org, _) = ing.create_organization("hangs-up", Tier::Free).await.unwrap();
    ing.ingest(&org, ev("one")).await.unwrap();
    ing.store().hold_inserts();
    let nine = || (0..9).map(|i| ev(&format!("nine.{i}"))).collect::<Vec<_>>();
    let dropped = {
        let (ing, org, batch) = (ing.clone(), org.clone(), nine());
        tokio::spawn(async move { ing.ingest_batch(&org, batch).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    dropped.abort();
    assert!(dropped.await.unwrap_err().is_cancelled());
    ing.store().release_inserts(10);
    clock.advance(std::time::Duration::from_secs(60));
    ing.ingest_batch(&org, nine()).await.unwrap();
    assert_eq!(ing.stats(&org).await.unwrap().pending, 10);
}

/// An Ingestor over a [`Counting`](crate::counting::Counting) store whose free tier sends
/// `per_minute` events a minute and keeps as many pending (a minute's worth).
fn bounded(
    clock: &ManualClock,
    per_minute: u32,
) -> Ingestor<crate::counting::Counting, NoDeliverer> {
    let config = IngestorConfig {
        tier_limits: TierLimits::default().with(Tier::Free, per_minute),
        max_pending: Some(std::time::Duration::from_secs(60)),
        ..config(clock)
    };
    Ingestor::start(crate::counting::Counting::default(), NoDeliverer, config)
}
