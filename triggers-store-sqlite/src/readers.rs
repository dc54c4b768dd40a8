//! A small pool of read-only connections, used off the async worker threads.
//!
//! Each read borrows one connection for the duration of one blocking closure run by
//! `tokio::task::spawn_blocking`. A semaphore with one permit per connection makes callers
//! wait (asynchronously) for a free connection. In WAL mode readers never block the writer and
//! see every transaction committed before they start, so a write that returned is visible to
//! every later read.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use tokio::sync::Semaphore;
use triggers_core::store::StoreResult;
use triggers_core::StoreError;

use crate::config::SqliteConfig;
use crate::schema::open_reader;

pub(crate) struct Readers {
    idle: Arc<Mutex<Vec<Connection>>>,
    permits: Arc<Semaphore>,
}

impl Readers {
    /// Opens `config.readers` (at least one) reader connections.
    pub(crate) fn open(path: &Path, config: &SqliteConfig) -> StoreResult<Self> {
        let n = config.readers.max(1);
        let conns = (0..n).map(|_| open_reader(path, config)).collect::<StoreResult<Vec<_>>>()?;
        Ok(Self { idle: Arc::new(Mutex::new(conns)), permits: Arc::new(Semaphore::new(n)) })
    }

    /// Runs `f` on a reader connection on the blocking thread pool.
    pub(crate) async fn call<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("the sqlite readers are closed".into()))?;
        let idle = self.idle.clone();
        let task = tokio::task::spawn_blocking(move || {
            let conn = idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let Some(conn) = conn else {
                return Err(StoreError::Unavailable("no sqlite reader connection free".into()));
            };
            let out = catch_unwind(AssertUnwindSafe(|| f(&conn))).unwrap_or_else(|_| {
                Err(StoreError::Unavailable("a sqlite read failed unexpectedly".into()))
            });
            idle.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
            drop(permit);
            out
        });
        task.await
            .map_err(|e| StoreError::Unavailable(format!("a sqlite read task failed: {e}")))?
    }
}
