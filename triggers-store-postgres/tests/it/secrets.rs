//! Webhook signing secrets encrypted at rest on PostgreSQL: the raw columns hold no
//! `whsec_` once a key is set, and plaintext ones are sealed by `seal_stored_secrets`.

use std::sync::Arc;

use triggers_core::domain::sealed::{SecretCipher, SecretKey};
use triggers_core::{Ingestor, IngestorConfig, NoDeliverer, Tier, WorkerConfig};

use crate::support::{config, connect, database};

/// Every stored secret text, current and previous.
async fn raw_secrets(pool: &sqlx::PgPool) -> Vec<String> {
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT secret, previous_secret FROM endpoints")
            .fetch_all(pool)
            .await
            .unwrap();
    rows.into_iter().flat_map(|(s, p)| std::iter::once(s).chain(p)).collect()
}

fn ingestor_config(cipher: Option<SecretCipher>) -> IngestorConfig {
    IngestorConfig {
        worker: WorkerConfig { concurrency: 0, ..WorkerConfig::default() },
        secret_cipher: cipher.map(Arc::new),
        ..IngestorConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_sealed_in_the_raw_columns() {
    let Some(db) = database("secrets_are_sealed_in_the_raw_columns").await else { return };
    let store = connect(&db, config()).await;
    let pool = store.pool().clone();
    let plain = Ingestor::start(store.clone(), NoDeliverer, ingestor_config(None));
    let (org, _) = plain.create_organization("acme", Tier::Free).await.unwrap();
    let a = plain.create_endpoint(&org, "https://hooks.example.test/a", None).await.unwrap();
    let rotated = plain.rotate_endpoint_secret(&org, a.id).await.unwrap();
    assert_eq!(raw_secrets(&pool).await.iter().filter(|s| s.starts_with("whsec_")).count(), 2);

    let cipher = SecretCipher::new(SecretKey::generate(), None);
    let sealed = Ingestor::start(store.clone(), NoDeliverer, ingestor_config(Some(cipher)));
    assert_eq!(sealed.seal_stored_secrets().await.unwrap(), 2);
    let b = sealed.create_endpoint(&org, "https://hooks.example.test/b", None).await.unwrap();
    assert!(b.secret.expose().starts_with("whsec_"), "the caller gets the plaintext once");
    sealed.rotate_endpoint_secret(&org, b.id).await.unwrap();
    let raw = raw_secrets(&pool).await;
    assert_eq!(raw.len(), 4);
    assert!(raw.iter().all(|s| s.starts_with("tsec1:") && !s.contains("whsec_")), "{raw:?}");
    // Listing opens them again for the library's users.
    let listed = sealed.endpoints(&org).await.unwrap();
    assert_eq!(listed.iter().find(|e| e.id == a.id).unwrap().secret, rotated);
    assert_eq!(sealed.seal_stored_secrets().await.unwrap(), 0);
}
