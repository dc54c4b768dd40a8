//! Organizations, API keys and the health check.

use crate::domain::key::ApiKey;
use crate::domain::org::{Organization, Tier};
use crate::domain::OrganizationId;
use crate::store::{EventStore, StoreError};

use super::support::{org_with_key, t};

/// An organization is found by its id and by the hash of its current key, with every field
/// exact; unknown ids and keys find nothing.
pub async fn organizations_are_found_by_id_and_key<S: EventStore>(store: &S) {
    for (i, tier) in Tier::ALL.into_iter().enumerate() {
        let org = Organization::new(format!("Ünïcode & Co — {tier}"), tier, t(i as i64));
        let key = ApiKey::generate();
        store.create_organization(&org, &key.hash()).await.unwrap();
        assert_eq!(store.organization(org.id).await.unwrap(), Some(org.clone()));
        assert_eq!(store.organization_by_key(&key.hash()).await.unwrap(), Some(org));
    }
    assert_eq!(store.organization_by_key(&ApiKey::generate().hash()).await.unwrap(), None);
    assert_eq!(store.organization(OrganizationId::new()).await.unwrap(), None);
}

/// After `replace_key` the new key finds the organization and the old one finds nothing;
/// replacing the key of an unknown organization answers `false`.
pub async fn replace_key_revokes_the_old_key<S: EventStore>(store: &S) {
    let (org, old) = org_with_key(store).await;
    let (other, other_key) = org_with_key(store).await;
    let new = ApiKey::generate();
    assert!(store.replace_key(org.id, &new.hash()).await.unwrap());
    assert_eq!(store.organization_by_key(&old.hash()).await.unwrap(), None);
    assert_eq!(store.organization_by_key(&new.hash()).await.unwrap(), Some(org.clone()));
    assert_eq!(store.organization(org.id).await.unwrap(), Some(org.clone()));
    // The other organization is untouched.
    assert_eq!(store.organization_by_key(&other_key.hash()).await.unwrap(), Some(other));

    let newer = ApiKey::generate();
    assert!(store.replace_key(org.id, &newer.hash()).await.unwrap());
    assert_eq!(store.organization_by_key(&new.hash()).await.unwrap(), None);
    assert_eq!(store.organization_by_key(&newer.hash()).await.unwrap(), Some(org));

    let stray = ApiKey::generate();
    assert!(!store.replace_key(OrganizationId::new(), &stray.hash()).await.unwrap());
    assert_eq!(store.organization_by_key(&stray.hash()).await.unwrap(), None);
}

/// Creating an organization whose id or key hash is already stored is a `Conflict` and
/// stores nothing.
pub async fn duplicate_organizations_conflict<S: EventStore>(store: &S) {
    let (org, key) = org_with_key(store).await;

    let same_id = Organization { name: "impostor".into(), ..org.clone() };
    let fresh_key = ApiKey::generate();
    let err = store.create_organization(&same_id, &fresh_key.hash()).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "same id: expected Conflict, got {err:?}");
    assert_eq!(store.organization_by_key(&fresh_key.hash()).await.unwrap(), None);
    assert_eq!(store.organization(org.id).await.unwrap(), Some(org.clone()));

    let same_key = Organization::new("other", Tier::Free, t(1));
    let err = store.create_organization(&same_key, &key.hash()).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "same key: expected Conflict, got {err:?}");
    assert_eq!(store.organization(same_key.id).await.unwrap(), None);
    assert_eq!(store.organization_by_key(&key.hash()).await.unwrap(), Some(org));
}

/// `ping` answers `Ok` on a working store.
pub async fn ping_answers<S: EventStore>(store: &S) {
    store.ping().await.unwrap();
}

/// Of eight concurrent creations of one organization id, exactly one succeeds; the others
/// get `Conflict`, and the stored organization is the winner's.
pub async fn concurrent_creations_of_one_id_have_one_winner<S: EventStore>(
    store: std::sync::Arc<S>,
) {
    let id = OrganizationId::new();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let org = Organization {
                    id,
                    ..Organization::new(format!("racer {i}"), Tier::Starter, t(0))
                };
                let key = ApiKey::generate();
                match store.create_organization(&org, &key.hash()).await {
                    Ok(()) => Some((org, key)),
                    Err(StoreError::Conflict(_)) => None,
                    Err(e) => panic!("expected Ok or Conflict, got {e:?}"),
                }
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        winners.extend(task.await.unwrap());
    }
    assert_eq!(winners.len(), 1, "exactly one creation wins");
    let (org, key) = winners.pop().unwrap();
    assert_eq!(store.organization(id).await.unwrap(), Some(org.clone()));
    assert_eq!(store.organization_by_key(&key.hash()).await.unwrap(), Some(org));
}
