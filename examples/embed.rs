//! Ingestion inside your own application, without HTTP.
//!
//! The Ingestor runs over a SQLite file (in a temporary directory here). Events of type
//! `invoice.*` are pushed to an in-process consumer through a [`ChannelDeliverer`] (an
//! endpoint whose URL is just a label, `inproc://billing`); everything is also in the inbox,
//! where another part of the app pulls and acknowledges what no endpoint consumed.
//!
//! ```text
//! cargo run --example embed
//! ```

use std::time::Duration;

use serde_json::json;
use triggers::sqlite::{SqliteConfig, SqliteStore};
use triggers::{
    ChannelDeliverer, EventStatus, InboxQuery, Ingestor, IngestorConfig, NewEvent, Outcome, Tier,
    TypeGlob, WorkerConfig,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(dir.path().join("app.db"), SqliteConfig::default())?;

    // Deliveries arrive on `handoffs`; answering `Delivered` marks them done.
    let (deliverer, mut handoffs) = ChannelDeliverer::new(64);
    let config = IngestorConfig {
        worker: WorkerConfig { concurrency: 4, ..WorkerConfig::default() },
        ..IngestorConfig::default()
    };
    let ingestor = Ingestor::start(store, deliverer, config);

    let (org, _api_key) = ingestor.create_organization("my-app", Tier::Enterprise).await?;
    let billing = ingestor.create_endpoint(&org, "inproc://billing", Some("invoice.*")).await?;
    println!("endpoint {} receives invoice.* events", billing.url);

    // The billing consumer: a task of this application.
    let consumer = tokio::spawn(async move {
        let mut handled = Vec::new();
        while let Some(handoff) = handoffs.recv().await {
            let d = &handoff.delivery;
            println!("billing: {} {} payload={}", d.event_type, d.event_id, d.payload.get());
            handled.push(d.event_id);
            handoff.respond(Outcome::Delivered);
        }
        handled
    });

    // Ingest: each call returns once the event is durably stored.
    for n in 1..=3 {
        let e = NewEvent::new("invoice.paid", &json!({"invoice": n, "amount_cents": 1250 * n}))
            .with_dedup_id(format!("invoice-{n}"));
        let ingested = ingestor.ingest(&org, e).await?;
        println!("stored {} (duplicate: {})", ingested.id, ingested.duplicate);
    }
    // A retry of the same invoice is recognised by its dedup id.
    let again = ingestor
        .ingest(
            &org,
            NewEvent::new("invoice.paid", &json!({"invoice": 1})).with_dedup_id("invoice-1"),
        )
        .await?;
    println!("stored {} again? duplicate: {}", again.id, again.duplicate);
    let signup =
        ingestor.ingest(&org, NewEvent::new("user.signed_up", &json!({"user": 7}))).await?;

    // Wait until the three invoices are delivered (pushed to the consumer).
    let delivered_invoices = InboxQuery {
        status: Some(EventStatus::Delivered),
        type_glob: Some(TypeGlob::parse("invoice.*")?),
        ..InboxQuery::default()
    };
    for _ in 0..500 {
        if ingestor.inbox(&org, delivered_invoices.clone()).await?.events.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Pull what nobody consumed from the inbox, and acknowledge it.
    let pending = ingestor.inbox(&org, InboxQuery::default()).await?;
    for event in &pending.events {
        println!("inbox: {} {} payload={}", event.event_type, event.id, event.payload.get());
        ingestor.ack(&org, event.id).await?;
    }
    assert_eq!(pending.events.len(), 1);
    assert_eq!(pending.events[0].id, signup.id);

    let stats = ingestor.stats(&org).await?;
    println!("stats: {stats:?}");

    // Stop the workers (in-flight deliveries finish), which also closes the consumer's channel.
    ingestor.shutdown().await;
    drop(ingestor);
    let handled = consumer.await?;
    println!("billing handled {} deliveries", handled.len());
    assert_eq!(stats.delivered, 4);
    assert_eq!(handled.len(), 3);
    Ok(())
}
