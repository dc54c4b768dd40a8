//! Which writes skip the fsync, and the one sync the writer makes itself.
//!
//! With [`Synchronous::Full`](crate::Synchronous::Full) every transaction of the writer
//! commits with `synchronous = FULL` (the write-ahead log is fsynced before the reply) —
//! except lease bookkeeping: claims, completions, heartbeats and releases run in transactions
//! of their own that commit with `synchronous = NORMAL`, and are answered at `COMMIT`.
//!
//! # Why that is safe
//! - A process crash (`kill -9`) loses nothing either way: a committed transaction is in the
//!   OS page cache.
//! - A power loss or OS crash may undo the last lease transactions that no later fsync
//!   covered. WAL frames are checksummed and SQLite recovers a prefix of the commits, so what
//!   is lost is a suffix of lease bookkeeping (and never an acknowledged durable write: every
//!   durable commit fsyncs the log, including every earlier lease frame). Lost lease
//!   bookkeeping makes a delivery due again: a repeat, which at-least-once delivery allows,
//!   never a loss.
//! - FIFO lines: a lost completion would make a line's last delivery outstanding again while
//!   its successor may already be out — a repeat *after* its successor. So a lease result
//!   that hands out the head of a FIFO line is synced ([`SyncWal`]) before it is answered:
//!   its predecessor's completion committed before it, so the line never moves on past a
//!   completion that a power loss could undo. After a power loss a line may repeat its last
//!   deliveries, in order.
//! - Checkpoints never run ahead of a sync: SQLite syncs the log before it copies frames into
//!   the database file, whatever the commit's `synchronous` level.
//!
//! If that sync fails, the claim was committed but is not known to be on the disk: it is
//! answered `Unavailable` (its lease then expires and the delivery is claimed again), and the
//! store reports itself unhealthy until a write succeeds again.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use triggers_core::StoreError;

use super::job::BatchFailure;
use crate::error::IO_ERROR;

/// Makes everything written to the WAL so far durable.
pub(crate) trait SyncWal: Send + 'static {
    /// Returns once every commit that returned before this call is on the disk.
    fn sync(&mut self) -> io::Result<()>;
}

/// Syncs the WAL file next to a database file (`<db>-wal`).
pub(crate) struct WalFile {
    wal: PathBuf,
    dir: PathBuf,
    /// The WAL as last opened, with its inode number: if SQLite ever replaces the file (it
    /// deletes it only when the last connection closes), the new one is opened and its
    /// directory entry synced.
    open: Option<(File, u64)>,
}

impl WalFile {
    /// The WAL of the writer connection `conn`'s database, if it has one to sync: `None` for
    /// an in-memory database or one that is not in WAL mode (its commits are then left to
    /// the connection's `synchronous` setting, which stays `FULL`).
    pub(crate) fn of(conn: &rusqlite::Connection) -> Result<Option<Self>, StoreError> {
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(|e| StoreError::Unavailable(format!("cannot read the journal mode: {e}")))?;
        let db = match conn.path() {
            Some(db) if !db.is_empty() && mode.eq_ignore_ascii_case("wal") => Path::new(db),
            _ => return Ok(None),
        };
        Ok(Some(Self::new(db)))
    }

    /// The WAL of the database file at `db` (`<db>-wal`).
    pub(crate) fn new(db: &Path) -> Self {
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        let dir = match db.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Self { wal: PathBuf::from(wal), dir, open: None }
    }
}

impl SyncWal for WalFile {
    fn sync(&mut self) -> io::Result<()> {
        let ino = std::fs::metadata(&self.wal)?.ino();
        if !matches!(&self.open, Some((_, held)) if *held == ino) {
            let file = File::open(&self.wal)?;
            let held = file.metadata()?.ino();
            file.sync_data()?;
            File::open(&self.dir)?.sync_all()?;
            self.open = Some((file, held));
            return Ok(());
        }
        match &self.open {
            Some((file, _)) => file.sync_data(),
            None => Ok(()),
        }
    }
}

/// The failure of a committed request that could not be made durable.
pub(super) fn not_durable(why: &str) -> BatchFailure {
    BatchFailure::not_durable(format!("{IO_ERROR}: {why}"))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use triggers_core::domain::event::EventRecord;
    use triggers_core::store::{
        ClaimRequest, DeliveryQueue, EndpointStore, EventLog, NewEndpoint, OrgStore,
    };
    use triggers_core::{
        ApiKey, DeliveryOrdering, EndpointId, EventId, Organization, Secret, StoreError, Tier,
        TypeGlob, WorkerId,
    };

    use super::SyncWal;
    use crate::{SqliteConfig, SqliteStore};

    /// A sync that waits while `paused` is set, then fails if `fail` is set.
    #[derive(Clone, Default)]
    struct Controlled {
        paused: Arc<AtomicBool>,
        fail: Arc<AtomicBool>,
    }

    impl SyncWal for Controlled {
        fn sync(&mut self) -> std::io::Result<()> {
            while self.paused.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
            }
            match self.fail.load(Ordering::Acquire) {
                true => Err(std::io::Error::other("EIO")),
                false => Ok(()),
            }
        }
    }

    /// A store with one parallel endpoint (`p`) and one FIFO endpoint (`f`), one event for
    /// each (the parallel one due first), and `sync` in place of the WAL file's sync.
    async fn store_with_both(sync: Controlled) -> (tempfile::TempDir, SqliteStore, ClaimRequest) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store =
            SqliteStore::open_with(&path, SqliteConfig::default(), Some(Box::new(sync))).unwrap();
        let t0 = chrono::Utc::now();
        let org = Organization::new("sync", Tier::Professional, t0);
        store.create_organization(&org, &ApiKey::generate().hash()).await.unwrap();
        for (filter, ordering) in [("p", DeliveryOrdering::Parallel), ("f", DeliveryOrdering::Fifo)]
        {
            let id = EndpointId::new();
            let new = NewEndpoint {
                id,
                url: format!("http://127.0.0.1:9/{id}"),
                event_type_filter: Some(TypeGlob::parse(filter).unwrap()),
                secret: Secret::generate(),
                created_at: t0,
                ordering,
            };
            store.create_endpoint(org.id, &new).await.unwrap();
        }
        for (ty, at) in [("p", t0), ("f", t0 + chrono::Duration::seconds(1))] {
            let record = EventRecord {
                id: EventId::new(),
                event_type: ty.into(),
                payload: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
                dedup_id: None,
                created_at: at,
                exclude_endpoint: None,
            };
            store.insert_events(org.id, vec![record], Duration::from_secs(60), at).await.unwrap();
        }
        let now = t0 + chrono::Duration::seconds(2);
        let req = ClaimRequest::new(WorkerId::new(), 1, Duration::from_secs(30), now);
        (dir, store, req)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_a_claim_that_hands_out_a_fifo_line_head_waits_for_a_sync() {
        let sync = Controlled::default();
        let (_dir, store, req) = store_with_both(sync.clone()).await;
        sync.paused.store(true, Ordering::Release);
        // A lease of the parallel endpoint is answered at COMMIT: the paused sync is not
        // involved.
        let parallel = tokio::time::timeout(Duration::from_secs(10), store.claim(req))
            .await
            .expect("answered without a sync")
            .unwrap();
        assert_eq!(parallel.len(), 1);
        assert_eq!(parallel[0].event_type, "p");
        // The head of the FIFO line is answered only once its claim is on the disk.
        let s = store.clone();
        let mut head = tokio::spawn(async move { s.claim(req).await });
        assert!(tokio::time::timeout(Duration::from_millis(300), &mut head).await.is_err());
        sync.paused.store(false, Ordering::Release);
        let head = head.await.unwrap().unwrap();
        assert_eq!(head.len(), 1);
        assert_eq!(head[0].event_type, "f");
    }

    /// A completion is answered at COMMIT, unless it disables its endpoint: its write then
    /// holds the disable's announcement, an event, answered once on the disk like any insert.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_a_completion_that_disables_waits_for_a_sync() {
        use triggers_core::store::{Completion, CompletionState, Delivery};
        let sync = Controlled::default();
        let (_dir, store, req) = store_with_both(sync.clone()).await;
        let p = store.claim(req).await.unwrap().remove(0);
        let f = store.claim(req).await.unwrap().remove(0);
        let failed = |d: &Delivery, disable: Option<&str>| Completion {
            delivery_id: d.id,
            lease_owner: d.lease_owner,
            attempt: d.attempt,
            state: CompletionState::Failed,
            record: triggers_core::AttemptRecord {
                endpoint_id: d.endpoint_id,
                at: req.now,
                status_code: Some(410),
                latency_ms: 1,
                error: Some("HTTP 410".into()),
            },
            disable_endpoint: disable.map(str::to_owned),
        };
        sync.paused.store(true, Ordering::Release);
        let plain =
            tokio::time::timeout(Duration::from_secs(10), store.complete(&[failed(&p, None)]))
                .await
                .expect("answered without a sync");
        assert_eq!(plain.unwrap(), [true]);
        let (s, c) = (store.clone(), failed(&f, Some("410 Gone")));
        let mut disabling = tokio::spawn(async move { s.complete(&[c]).await });
        assert!(tokio::time::timeout(Duration::from_millis(300), &mut disabling).await.is_err());
        sync.paused.store(false, Ordering::Release);
        assert_eq!(disabling.await.unwrap().unwrap(), [true]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fifo_head_whose_sync_fails_is_not_handed_out() {
        let sync = Controlled::default();
        let (_dir, store, req) = store_with_both(sync.clone()).await;
        assert_eq!(store.claim(req).await.unwrap()[0].event_type, "p");
        sync.fail.store(true, Ordering::Release);
        let err = store.claim(req).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        assert!(err.to_string().contains("syncing the write-ahead log failed"), "{err}");
        // The store says so until a write succeeds again.
        assert!(store.ping().await.is_err());
    }
}
