//! The WAL checkpoint off the commit path.
//!
//! SQLite's automatic checkpoint runs inside the commit that takes the WAL past 1000 pages, on
//! the writer connection, while the store's writer lock is held: every few hundred
//! registrations one of them waits for the WAL to be copied into the database file. The store
//! turns it off (`wal_autocheckpoint=0` on every connection) and runs PASSIVE checkpoints on a
//! connection of their own, on a thread of their own: at the latest [`EVERY`] after a commit,
//! sooner once [`COMMITS`] commits are waiting. PASSIVE never blocks readers or the writer.
//!
//! Durability is unchanged: a commit is durable once it is in the WAL (`synchronous=NORMAL`
//! against a crash or `kill -9`; `FULL` fsyncs the WAL at every commit), whether or not it has
//! been checkpointed yet; the checkpoint fsyncs as SQLite's automatic one does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

/// Longest wait between a commit and the checkpoint that copies it.
pub(crate) const EVERY: Duration = Duration::from_secs(1);
/// Commits after which the checkpointer is woken at once (a registration is two commits of a
/// few pages each: this keeps the WAL near SQLite's own 1000-page threshold).
pub(crate) const COMMITS: u64 = 256;

#[derive(Debug, Default)]
struct Shared {
    commits: AtomicU64,
    stop: Mutex<bool>,
    wake: Condvar,
}

/// The checkpoint thread; stopped (after a last checkpoint) when dropped.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread on `conn`, a connection to the store's database.
    pub(crate) fn start(conn: Connection) -> std::io::Result<Checkpointer> {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let thread = std::thread::Builder::new().name("sqlite-checkpoint".into()).spawn(move || run(&conn, &s))?;
        Ok(Checkpointer { shared, thread: Some(thread) })
    }

    /// Called after each commit of the writer.
    pub(crate) fn committed(&self) {
        if self.shared.commits.fetch_add(1, Ordering::Relaxed) + 1 == COMMITS {
            let _guard = self.shared.stop.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        *self.shared.stop.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(conn: &Connection, shared: &Shared) {
    let mut failing = false;
    loop {
        let stop = {
            let mut stop = shared.stop.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if !*stop && shared.commits.load(Ordering::Relaxed) < COMMITS {
                stop = shared.wake.wait_timeout(stop, EVERY).unwrap_or_else(std::sync::PoisonError::into_inner).0;
            }
            *stop
        };
        if shared.commits.swap(0, Ordering::Relaxed) > 0 || stop {
            match checkpoint(conn) {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("WAL checkpoints work again");
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    // Logged once until it works again; the WAL keeps every commit meanwhile.
                    failing = true;
                    tracing::warn!(error = %e, "WAL checkpoint failed; retrying after the next commits");
                }
                Err(_) => {}
            }
        }
        if stop {
            return;
        }
    }
}

/// One PASSIVE checkpoint: as many WAL frames as no reader still needs.
pub(crate) fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    // (busy, frames in the WAL, frames checkpointed): a busy or partial checkpoint is finished
    // by a later one.
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0)).map(|_| ())
}
