//! Commit pipelining: the thread that makes committed batches durable while the writer goes
//! on with the next batch.
//!
//! With [`Synchronous::Full`](crate::Synchronous::Full) the writer connection commits with
//! `PRAGMA synchronous = NORMAL`: `COMMIT` appends the batch's frames to the write-ahead log
//! (into the OS page cache) and returns without an fsync. The writer hands the batch's waiters
//! to this thread and starts the next batch at once. This thread takes every batch handed to
//! it so far, `fdatasync`s the WAL file, and only then replies to their waiters.
//!
//! # Why an acknowledged write survives a power loss
//! - A batch is handed over only after its `COMMIT` returned, so its frames were written to
//!   the WAL file before the sync that releases its replies began; `fdatasync` returns only
//!   when every byte written to the file before it (and the file's size) is on the disk. The
//!   reply is sent after that.
//! - A checkpoint never runs ahead of the sync: with `synchronous = NORMAL` SQLite itself
//!   syncs the WAL before it copies frames into the database file, syncs the database file
//!   after the copy, and syncs the WAL header before the WAL is reused from its start. A
//!   batch whose frames were overwritten after a checkpoint is therefore already on the disk
//!   in the database file.
//! - The WAL is a log with checksummed frames: after a power loss SQLite recovers a prefix of
//!   the commits. Every reply sent was for a commit inside the synced prefix.
//! - A new WAL file's directory entry is synced too (once per file), as SQLite does for its
//!   own first sync of a new WAL.
//!
//! Across a process crash (`kill -9`) nothing changes: a committed batch is in the OS page
//! cache and survives the process, whether or not it was synced.
//!
//! Readers (and the delivery workers) may see a batch before it is synced. A power loss in
//! that window can undo an event that a worker already delivered; its sender got no reply and
//! sends it again with the same dedup id, so it is delivered again (at-least-once).
//!
//! If `fdatasync` fails, the batches it covered were committed but are not known to be on the
//! disk: their waiters get `Unavailable` (a retry with the same dedup id is safe), and the
//! store reports itself unhealthy until a later sync succeeds.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use triggers_core::StoreError;

use super::job::{BatchFailure, Job};
use crate::error::IO_ERROR;
use crate::health::WriteHealth;

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

/// The sync thread's handle, owned by the writer thread. Dropping it lets the thread reply to
/// what it was given and stop.
pub(crate) struct Syncer {
    tx: Option<Sender<Vec<Box<dyn Job>>>>,
    thread: Option<JoinHandle<()>>,
    synced: crossbeam_channel::Receiver<usize>,
}

impl Syncer {
    /// Starts the sync thread.
    pub(crate) fn start(
        wal: Box<dyn SyncWal>,
        health: Arc<WriteHealth>,
    ) -> Result<Self, StoreError> {
        let (tx, rx) = channel::<Vec<Box<dyn Job>>>();
        let (synced_tx, synced) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("triggers-sqlite-sync".into())
            .spawn(move || run(wal, &rx, &synced_tx, &health))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the sync thread: {e}")))?;
        Ok(Self { tx: Some(tx), thread: Some(thread), synced })
    }

    /// After each sync, how many of the [`after_commit`](Self::after_commit) hand-overs it
    /// answered.
    pub(crate) fn synced(&self) -> &crossbeam_channel::Receiver<usize> {
        &self.synced
    }

    /// Hands over the waiters of a batch that has committed; they are answered after the next
    /// sync that begins from now on. `true` if a sync will answer them (and be counted in
    /// [`synced`](Self::synced)).
    pub(crate) fn after_commit(&self, jobs: Vec<Box<dyn Job>>) -> bool {
        let Some(tx) = &self.tx else { return false };
        match tx.send(jobs) {
            Ok(()) => true,
            Err(lost) => {
                // The thread is gone (it cannot panic outside a sync; see `run`): the batch
                // was committed but is not known to be durable, and no sync will answer it.
                let failure = not_durable("the sync thread has stopped");
                for job in lost.0 {
                    job.finish(Some(&failure));
                }
                tracing::error!("the sqlite sync thread has stopped");
                false
            }
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the sqlite sync thread panicked");
            }
        }
    }
}

fn not_durable(why: &str) -> BatchFailure {
    BatchFailure::not_durable(format!("{IO_ERROR}: {why}"))
}

fn run(
    mut wal: Box<dyn SyncWal>,
    rx: &Receiver<Vec<Box<dyn Job>>>,
    answered: &crossbeam_channel::Sender<usize>,
    health: &WriteHealth,
) {
    let mut waiting: Vec<Box<dyn Job>> = Vec::new();
    while let Ok(first) = rx.recv() {
        waiting.extend(first);
        let mut handovers = 1;
        while let Ok(more) = rx.try_recv() {
            waiting.extend(more);
            handovers += 1;
        }
        // Every batch in `waiting` committed before this sync begins.
        let synced = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| wal.sync()))
            .unwrap_or_else(|_| Err(io::Error::other("the sync panicked")));
        let failure = match synced {
            Ok(()) => {
                health.succeeded();
                None
            }
            Err(e) => {
                let failure = not_durable(&format!("syncing the write-ahead log failed: {e}"));
                health.failed(&failure.message);
                tracing::error!(error = %e, requests = waiting.len(), "sqlite WAL sync failed");
                Some(failure)
            }
        };
        for job in waiting.drain(..) {
            job.finish(failure.as_ref());
        }
        // The writer may hold its next commit until this sync is done. (It fails only once
        // the writer has stopped.)
        let _ = answered.send(handovers);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use rusqlite::Connection;
    use triggers_core::StoreError;

    use super::SyncWal;
    use crate::error::is_write_fault;
    use crate::writer::Writer;

    /// A sync that reports when it starts and then blocks until the test lets it finish with
    /// the given outcome.
    struct Gate {
        started: SyncSender<()>,
        finish: Arc<Mutex<Receiver<std::io::Result<()>>>>,
    }

    impl SyncWal for Gate {
        fn sync(&mut self) -> std::io::Result<()> {
            let _ = self.started.send(());
            let finish = self.finish.lock().map_err(|_| std::io::Error::other("poisoned"))?;
            finish.recv().unwrap_or(Ok(()))
        }
    }

    struct Harness {
        writer: Arc<Writer>,
        started: Receiver<()>,
        finish: SyncSender<std::io::Result<()>>,
        db: std::path::PathBuf,
        _dir: tempfile::TempDir,
    }

    fn harness() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (v INTEGER);").unwrap();
        let (started_tx, started) = sync_channel(16);
        let (finish, finish_rx) = sync_channel(16);
        let gate = Gate { started: started_tx, finish: Arc::new(Mutex::new(finish_rx)) };
        let writer = Writer::start(conn, 16, 8, Some(Box::new(gate))).unwrap();
        Harness { writer: Arc::new(writer), started, finish, db, _dir: dir }
    }

    fn insert(v: i64) -> impl FnMut(&Connection) -> Result<i64, StoreError> + Send + 'static {
        move |c| {
            c.execute("INSERT INTO t (v) VALUES (?1)", [v])
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            Ok(v)
        }
    }

    type Request = Box<dyn FnMut(&Connection) -> Result<i64, StoreError> + Send>;

    /// Rows a separate connection sees: what has committed, synced or not.
    fn committed(db: &std::path::Path) -> Vec<i64> {
        let c = Connection::open(db).unwrap();
        let mut stmt = c.prepare("SELECT v FROM t ORDER BY v").unwrap();
        let rows = stmt.query_map([], |r| r.get(0)).unwrap();
        rows.map(Result::unwrap).collect()
    }

    fn wait_until_committed(db: &std::path::Path, v: i64) {
        for _ in 0..500 {
            if committed(db).contains(&v) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{v} never committed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_durable_reply_waits_for_its_sync_while_the_writer_goes_on() {
        let h = harness();
        let w = h.writer.clone();
        let mut first = tokio::spawn(async move { w.call(insert(1)).await });
        h.started.recv_timeout(Duration::from_secs(10)).expect("the first batch is synced");
        wait_until_committed(&h.db, 1);

        // The sync of batch 1 is blocked. The writer still runs the next requests
        // (pipelining); lease bookkeeping commits at once and is answered at COMMIT, while
        // the durable request committed with it waits for a sync that begins after that.
        let w = h.writer.clone();
        let mut second = tokio::spawn(async move { w.call(insert(2)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let lease = h.writer.call_with(insert(3), |_| false).await.unwrap();
        assert_eq!(lease, 3);
        assert_eq!(committed(&h.db), vec![1, 2, 3]);
        assert!(tokio::time::timeout(Duration::from_millis(300), &mut first).await.is_err());
        assert!(tokio::time::timeout(Duration::from_millis(10), &mut second).await.is_err());

        // The first sync finishes: batch 1 is answered; batch 2 committed after that sync
        // began, so it waits for the next one.
        h.finish.send(Ok(())).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), 1);
        h.started.recv_timeout(Duration::from_secs(10)).expect("a second sync for batch 2");
        assert!(tokio::time::timeout(Duration::from_millis(300), &mut second).await.is_err());
        h.finish.send(Ok(())).unwrap();
        assert_eq!(second.await.unwrap().unwrap(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_that_arrive_during_a_sync_commit_together_when_it_ends() {
        let h = harness();
        let w = h.writer.clone();
        let first = tokio::spawn(async move { w.call(insert(1)).await });
        h.started.recv_timeout(Duration::from_secs(10)).expect("the first batch is synced");
        // Six requests (fewer than `max_batch`) while the sync is blocked: they run, but stay
        // uncommitted (one transaction, waiting for the sync), so a reader sees none yet.
        let rest: Vec<_> = (2..=7)
            .map(|v| {
                let w = h.writer.clone();
                tokio::spawn(async move { w.call(insert(v)).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(committed(&h.db), vec![1]);
        // The sync ends: they commit as one batch, which the next sync answers.
        h.finish.send(Ok(())).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), 1);
        h.started.recv_timeout(Duration::from_secs(10)).expect("one sync for the six");
        assert_eq!(committed(&h.db), (1..=7).collect::<Vec<_>>());
        h.finish.send(Ok(())).unwrap();
        for (v, r) in (2..=7).zip(rest) {
            assert_eq!(r.await.unwrap().unwrap(), v);
        }
        assert!(h.started.try_recv().is_err(), "the six needed one sync, not six");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_request_in_the_open_transaction_is_rolled_back_alone() {
        let h = harness();
        let w = h.writer.clone();
        let first = tokio::spawn(async move { w.call(insert(1)).await });
        h.started.recv_timeout(Duration::from_secs(10)).expect("the first batch is synced");
        let spawn = |f: Request| {
            let w = h.writer.clone();
            tokio::spawn(async move { w.call(f).await })
        };
        let two = spawn(Box::new(insert(2)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Writes, then fails: its own write must not survive; the others' must.
        let mut write_then_fail = insert(3);
        let bad = spawn(Box::new(move |c| {
            write_then_fail(c)?;
            Err(StoreError::InvalidInput("no".into()))
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let four = spawn(Box::new(insert(4)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        h.finish.send(Ok(())).unwrap();
        h.finish.send(Ok(())).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), 1);
        assert_eq!(two.await.unwrap().unwrap(), 2);
        assert!(matches!(bad.await.unwrap(), Err(StoreError::InvalidInput(_))));
        assert_eq!(four.await.unwrap().unwrap(), 4);
        assert_eq!(committed(&h.db), vec![1, 2, 4]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_sync_fails_its_waiters_and_the_store_is_unhealthy_until_one_succeeds() {
        let h = harness();
        h.finish.send(Err(std::io::Error::other("EIO"))).unwrap();
        let err = h.writer.call(insert(1)).await.unwrap_err();
        assert!(is_write_fault(&err), "{err}");
        assert!(err.to_string().contains("may or may not have been kept"), "{err}");
        assert!(h.writer.health().fault().is_some());

        // The write committed (a retry with a dedup id would find it); the next good sync
        // clears the fault.
        assert_eq!(committed(&h.db), vec![1]);
        h.finish.send(Ok(())).unwrap();
        h.finish.send(Ok(())).unwrap();
        assert_eq!(h.writer.call(insert(2)).await.unwrap(), 2);
        assert!(h.writer.health().fault().is_none());
    }

    /// A sync that waits while `paused` is set.
    struct Pausable(Arc<std::sync::atomic::AtomicBool>);

    impl SyncWal for Pausable {
        fn sync(&mut self) -> std::io::Result<()> {
            while self.0.load(std::sync::atomic::Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_a_claim_that_hands_out_a_fifo_line_head_waits_for_its_sync() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use triggers_core::domain::event::EventRecord;
        use triggers_core::store::NewEndpoint;
        use triggers_core::store::{
            ClaimRequest, DeliveryQueue, EndpointStore, EventLog, OrgStore,
        };
        use triggers_core::{
            ApiKey, DeliveryOrdering, EndpointId, EventId, Organization, Secret, Tier, TypeGlob,
            WorkerId,
        };

        let dir = tempfile::tempdir().unwrap();
        let paused = Arc::new(AtomicBool::new(false));
        let sync = Box::new(Pausable(paused.clone()));
        let store = crate::SqliteStore::open_with(
            &dir.path().join("t.db"),
            crate::SqliteConfig::default(),
            Some(sync),
        )
        .unwrap();
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
        // The parallel endpoint's event first, so a claim of one takes it.
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

        paused.store(true, Ordering::Release);
        let now = t0 + chrono::Duration::seconds(2);
        let req = ClaimRequest::new(WorkerId::new(), 1, Duration::from_secs(30), now);
        // A lease of the parallel endpoint is answered at COMMIT, while the sync is paused.
        let parallel = tokio::time::timeout(Duration::from_secs(10), store.claim(req))
            .await
            .expect("answered without waiting for the sync")
            .unwrap();
        assert_eq!(parallel.len(), 1);
        assert_eq!(parallel[0].event_type, "p");
        // The head of the FIFO line waits until its claim is on the disk.
        let s = store.clone();
        let mut head = tokio::spawn(async move { s.claim(req).await });
        assert!(tokio::time::timeout(Duration::from_millis(300), &mut head).await.is_err());
        paused.store(false, Ordering::Release);
        let head = head.await.unwrap().unwrap();
        assert_eq!(head.len(), 1);
        assert_eq!(head[0].event_type, "f");
    }
}
