//! The WAL checkpoint off the commit path.
//!
//! SQLite's automatic checkpoint runs inside the commit that takes the WAL past 1000 pages, on
//! the writer connection, inside the writer's transaction: every few hundred
//! registrations one of them waits for the WAL to be copied into the database file. The store
//! turns it off (`wal_autocheckpoint=0` on every connection) and runs PASSIVE checkpoints on a
//! connection of their own, on a thread of their own: at the latest [`EVERY`] after a commit,
//! sooner once [`COMMITS`] commits are waiting. PASSIVE never blocks readers or the writer;
//! a WAL past [`RESET_FRAMES`] is emptied by a TRUNCATE checkpoint, which does.
//!
//! Durability is unchanged: a commit is durable once it is in the WAL (`synchronous=NORMAL`
//! against a crash or `kill -9`; `FULL` fsyncs the WAL at every commit, and a write is
//! acknowledged only after the commit that holds it), whether or not it has
//! been checkpointed yet; the checkpoint fsyncs as SQLite's automatic one does.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
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
    /// Frames in the WAL when the last checkpoint ran (what PASSIVE reported).
    wal_frames: AtomicI64,
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

impl Checkpointer {
    /// Called by the writer thread after a commit, on its own connection, between transactions: when the checkpoint thread has seen the WAL past [`WRITER_RESET_FRAMES`] (its own
    /// TRUNCATE did not get in between the writer's transactions), the writer empties the WAL
    /// itself. No other write can start meanwhile, so this always gets through. A failure here
    /// is left to the next commit: the commit itself has succeeded.
    pub(crate) fn reset_if_overgrown(&self, writer: &Connection) {
        if self.shared.wal_frames.load(Ordering::Relaxed) <= WRITER_RESET_FRAMES {
            return;
        }
        if let Ok(0) = writer.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0)) {
            self.shared.wal_frames.store(0, Ordering::Relaxed);
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
                Ok(frames) if failing => {
                    shared.wal_frames.store(frames, Ordering::Relaxed);
                    failing = false;
                    tracing::info!("WAL checkpoints work again");
                }
                Ok(frames) => shared.wal_frames.store(frames, Ordering::Relaxed),
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

/// WAL frames (pages of 4 KiB) past which a checkpoint also resets the WAL: 64 MiB.
pub(crate) const RESET_FRAMES: i64 = 16_384;

/// WAL frames past which the writer resets the WAL itself ([`Checkpointer::reset_if_overgrown`]):
/// 256 MiB. Transactions so large and so close together that the checkpoint thread's TRUNCATE
/// never finds the writer idle (a bulk import of 50 000 devices per transaction did) would
/// otherwise grow the WAL without bound: 36 GB while seeding 2.3 M devices.
pub(crate) const WRITER_RESET_FRAMES: i64 = 4 * RESET_FRAMES;

/// One PASSIVE checkpoint: as many WAL frames as no reader still needs. If the WAL has grown
/// past [`RESET_FRAMES`], a TRUNCATE checkpoint follows. Returns the frames PASSIVE found in the WAL.
pub(crate) fn checkpoint(conn: &Connection) -> rusqlite::Result<i64> {
    checkpoint_with(conn, RESET_FRAMES)
}

fn checkpoint_with(conn: &Connection, reset_frames: i64) -> rusqlite::Result<i64> {
    // (busy, frames in the WAL, frames checkpointed): a busy or partial checkpoint is finished
    // by a later one.
    let frames: i64 = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))?;
    if frames > reset_frames {
        // SQLite starts the WAL over only when a write begins after a checkpoint has copied
        // every frame. Under writes that never pause (a bulk load, a sustained registration
        // load), a PASSIVE checkpoint never catches up with the writer, and the WAL grows
        // without bound: 45 GB for a 4 GB database while seeding 2.5 M devices. TRUNCATE
        // waits for the writer and the readers (the connection's busy timeout), copies the
        // rest, and empties the file. Writers wait meanwhile, once per 64 MiB of WAL.
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0))?;
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal_len(db: &std::path::Path) -> u64 {
        std::fs::metadata(db.with_extension("db-wal")).map(|m| m.len()).unwrap_or(0)
    }

    /// A database `t.db` in WAL mode with no automatic checkpoint, and a writer connection to it.
    fn wal_db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().expect("temp dir");
        let writer = Connection::open(dir.path().join("t.db")).expect("open");
        writer
            .execute_batch("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; CREATE TABLE t (v BLOB);")
            .expect("setup");
        (dir, writer)
    }

    /// 50 rows of 8 000 bytes, into the WAL.
    fn fill(writer: &Connection) {
        for _ in 0..50 {
            writer.execute("INSERT INTO t VALUES (zeroblob(8000))", []).expect("insert");
        }
    }

    fn rows(writer: &Connection) -> i64 {
        writer.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).expect("count")
    }

    #[test]
    fn a_wal_past_the_reset_size_is_emptied() {
        let (dir, writer) = wal_db();
        let db = dir.path().join("t.db");
        let checkpointer = Connection::open(&db).expect("open");
        checkpointer.busy_timeout(Duration::from_secs(5)).expect("busy timeout");
        fill(&writer);
        // Under the reset size: PASSIVE copies the frames, the file keeps its length.
        checkpoint_with(&checkpointer, 1_000).expect("checkpoint");
        let before = wal_len(&db);
        assert!(before > 0, "the WAL holds the inserts");
        // Past it: the WAL file is emptied, and every row is in the database.
        checkpoint_with(&checkpointer, 10).expect("checkpoint");
        assert_eq!(wal_len(&db), 0, "a TRUNCATE checkpoint empties the WAL (was {before} bytes)");
        assert_eq!(rows(&writer), 50);
    }

    #[test]
    fn the_writer_empties_a_wal_the_checkpoint_thread_could_not() {
        let (dir, writer) = wal_db();
        let db = dir.path().join("t.db");
        let checkpointer = Checkpointer::start(Connection::open(&db).expect("open")).expect("start");
        fill(&writer);
        // Under the bound the writer leaves the WAL to the thread.
        checkpointer.reset_if_overgrown(&writer);
        let before = wal_len(&db);
        assert!(before > 0, "the WAL holds the inserts");
        // The thread saw it past the bound (its own TRUNCATE kept losing to the writer).
        checkpointer.shared.wal_frames.store(WRITER_RESET_FRAMES + 1, Ordering::Relaxed);
        checkpointer.reset_if_overgrown(&writer);
        assert_eq!(wal_len(&db), 0, "the writer's TRUNCATE empties the WAL (was {before} bytes)");
        assert_eq!(checkpointer.shared.wal_frames.load(Ordering::Relaxed), 0);
        assert_eq!(rows(&writer), 50);
    }
}
