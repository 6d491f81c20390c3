//! The WAL checkpoint off the commit path.
//!
//! SQLite's automatic checkpoint runs inside the commit that takes the WAL past 1000 pages, on
//! the writer connection, inside the writer's transaction: every few hundred
//! registrations one of them waits for the WAL to be copied into the database file. The store
//! turns it off (`wal_autocheckpoint=0` on every connection) and runs PASSIVE checkpoints on a
//! connection of their own, on a thread of their own: at the latest [`EVERY`] after a commit,
//! sooner once [`COMMITS`] commits are waiting. PASSIVE never blocks readers or the writer.
//!
//! SQLite starts the WAL over only when a write begins after a checkpoint has copied every
//! frame. Under writes that never pause, a PASSIVE checkpoint never quite catches up, and the
//! WAL grows without bound. Past [`RESET_FRAMES`], the thread catches up as far as it can and
//! asks the writer thread to copy the last frames itself, between two of its transactions
//! ([`Checkpointer::reset_if_overgrown`]), once per request: no frame can be added meanwhile,
//! so the copy is complete unless a reader still needs a frame (then the thread asks again),
//! and the next write starts the WAL over without waiting for anyone. A
//! TRUNCATE checkpoint (which holds writers off while it waits for readers) is the last resort,
//! past [`WRITER_RESET_FRAMES`].
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
    /// The WAL is past [`RESET_FRAMES`]: the writer should copy the last frames itself.
    reset_wanted: std::sync::atomic::AtomicBool,
    /// The next write may start the WAL over (a checkpoint copied every frame, or one may be
    /// copying them now), and SQLite then syncs the WAL's new header even at `normal`: writes go
    /// to the writer thread until one of its batches runs.
    restart_next: std::sync::atomic::AtomicBool,
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
        // An empty WAL (a new database, or one truncated) gets its header at the first write.
        let shared = Arc::new(Shared { restart_next: true.into(), ..Shared::default() });
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
    /// Whether writes should go to the writer thread: [`Checkpointer::reset_if_overgrown`] has
    /// work to do there between two batches, or the next write may start the WAL over (and sync
    /// it).
    pub(crate) fn wants_writer(&self) -> bool {
        self.shared.restart_next.load(Ordering::SeqCst) || self.reset_pending()
    }

    /// Whether [`Checkpointer::reset_if_overgrown`] would do anything: the writer thread takes
    /// the connection for it only then.
    pub(crate) fn reset_pending(&self) -> bool {
        self.shared.reset_wanted.load(Ordering::Relaxed)
            || self.shared.wal_frames.load(Ordering::Relaxed) > WRITER_RESET_FRAMES
    }

    /// Called by the writer thread as each of its batches begins (it holds the connection): if
    /// the WAL is to start over, that batch does it.
    pub(crate) fn thread_writing(&self) {
        self.shared.restart_next.store(false, Ordering::SeqCst);
    }

    /// Called by the writer thread after a commit, on its own connection, between transactions.
    ///
    /// When the checkpoint thread has asked for it (the WAL is past [`RESET_FRAMES`]), a PASSIVE
    /// checkpoint here copies the frames the thread could not: no write can add any meanwhile,
    /// so it copies them all (unless a reader still needs one), and the next write starts the
    /// WAL over. When the WAL is past [`WRITER_RESET_FRAMES`] all the same (a reader kept the
    /// restart from happening, or transactions so large and so close together that the thread
    /// never caught up: a bulk import of 50 000 devices per transaction did), a TRUNCATE
    /// checkpoint empties it, waiting for readers. A failure here is left to the next commit:
    /// the commit itself has succeeded.
    pub(crate) fn reset_if_overgrown(&self, writer: &Connection) {
        if self.shared.wal_frames.load(Ordering::Relaxed) > WRITER_RESET_FRAMES {
            if let Ok(0) = writer.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0)) {
                self.shared.wal_frames.store(0, Ordering::Relaxed);
                self.shared.reset_wanted.store(false, Ordering::Relaxed);
                self.shared.restart_next.store(true, Ordering::SeqCst);
            }
            return;
        }
        // One try per request: if a reader still needs a frame, or the thread's own pass holds
        // the checkpoint lock, the thread asks again after its next pass (at most a second or
        // 256 commits later) rather than the writer syncing after every commit.
        if !self.shared.reset_wanted.swap(false, Ordering::Relaxed) {
            return;
        }
        let started = std::time::Instant::now();
        let r = passive(writer);
        if matches!(r, Ok((frames, copied)) if frames == copied) {
            self.shared.restart_next.store(true, Ordering::SeqCst);
        }
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        tracing::debug!(?r, ms, "the writer copied the WAL's last frames so that it starts over");
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
            // Writes go to the writer thread while this pass may copy the last frame, and after
            // it if it did (`restart_next`).
            shared.restart_next.store(true, Ordering::SeqCst);
            let pass = checkpoint(conn);
            shared.restart_next.store(matches!(pass, Ok((_, true))), Ordering::SeqCst);
            match pass {
                Ok((frames, _)) => {
                    shared.wal_frames.store(frames, Ordering::Relaxed);
                    if frames > RESET_FRAMES {
                        shared.reset_wanted.store(true, Ordering::Relaxed);
                    }
                    if failing {
                        failing = false;
                        tracing::info!("WAL checkpoints work again");
                    }
                }
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

/// WAL frames (pages of 4 KiB) past which the WAL is started over: 64 MiB. Without it, writes
/// that never pause grew the WAL without bound: 45 GB for a 4 GB database while seeding 2.5 M
/// devices.
pub(crate) const RESET_FRAMES: i64 = 16_384;

/// WAL frames past which the writer empties the WAL with a TRUNCATE checkpoint, waiting for
/// readers ([`Checkpointer::reset_if_overgrown`]): 256 MiB, when starting over at
/// [`RESET_FRAMES`] has not happened (readers kept holding old frames).
pub(crate) const WRITER_RESET_FRAMES: i64 = 4 * RESET_FRAMES;

/// Frames the writer may be left to copy (256 KiB); more, and PASSIVE runs again first.
const CATCH_UP_FRAMES: i64 = 64;
/// PASSIVE passes at most in one catch-up, whatever is left.
const CATCH_UP_PASSES: usize = 32;

/// (frames in the WAL, frames copied into the database) after one PASSIVE checkpoint: as many
/// frames as no reader still needs.
fn passive(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get(1)?, r.get(2)?)))
}

/// One PASSIVE checkpoint. If the WAL has grown past [`RESET_FRAMES`], more follow until at
/// most [`CATCH_UP_FRAMES`] are left for the writer to copy (a pass over 64 MiB takes long
/// enough for the writer to add thousands of frames). Returns the frames the first pass found
/// in the WAL, and whether the last pass copied every frame (then the next write starts the
/// WAL over).
pub(crate) fn checkpoint(conn: &Connection) -> rusqlite::Result<(i64, bool)> {
    checkpoint_with(conn, RESET_FRAMES)
}

fn checkpoint_with(conn: &Connection, reset_frames: i64) -> rusqlite::Result<(i64, bool)> {
    let (frames, copied) = passive(conn)?;
    let mut behind = frames - copied;
    if frames > reset_frames {
        for _ in 0..CATCH_UP_PASSES {
            if behind <= CATCH_UP_FRAMES {
                break;
            }
            let (f, c) = passive(conn)?;
            behind = f - c;
        }
    }
    Ok((frames, behind == 0))
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

    /// Past the reset size, the writer copies the last frames between its transactions, and
    /// the next write starts the WAL over: the file stops growing, no one waited.
    #[test]
    fn a_wal_past_the_reset_size_starts_over_at_the_next_write() {
        let (dir, writer) = wal_db();
        let db = dir.path().join("t.db");
        let checkpointer = Checkpointer::start(Connection::open(&db).expect("open")).expect("start");
        fill(&writer);
        let before = wal_len(&db);
        assert!(before > 50 * 8000, "the WAL holds the inserts ({before} bytes)");
        // Not asked: the writer leaves the WAL to the thread.
        checkpointer.reset_if_overgrown(&writer);
        fill(&writer);
        assert!(wal_len(&db) > before, "the WAL grew");
        let grown = wal_len(&db);
        // Asked (the thread saw it past the reset size): the writer copies every frame, once ...
        checkpointer.shared.reset_wanted.store(true, Ordering::Relaxed);
        checkpointer.reset_if_overgrown(&writer);
        assert!(!checkpointer.shared.reset_wanted.load(Ordering::Relaxed), "one try per request");
        // ... and the next write starts at the beginning of the file.
        writer.execute("INSERT INTO t VALUES (zeroblob(10))", []).expect("insert");
        let (frames, _) = passive(&writer).expect("passive");
        assert!(frames < 10, "the WAL started over ({frames} frames)");
        assert_eq!(wal_len(&db), grown, "the file is reused, not grown");
        assert_eq!(rows(&writer), 101);
        // The thread's catch-up passes copy what they can without being asked to wait.
        let reader = Connection::open(&db).expect("open");
        fill(&writer);
        assert!(checkpoint_with(&reader, 10).expect("checkpoint").0 > 10);
        assert_eq!(rows(&reader), 151);
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
        // The thread saw it past the last-resort bound (the WAL never started over).
        checkpointer.shared.wal_frames.store(WRITER_RESET_FRAMES + 1, Ordering::Relaxed);
        checkpointer.reset_if_overgrown(&writer);
        assert_eq!(wal_len(&db), 0, "the writer's TRUNCATE empties the WAL (was {before} bytes)");
        assert_eq!(checkpointer.shared.wal_frames.load(Ordering::Relaxed), 0);
        assert_eq!(rows(&writer), 50);
    }
}
