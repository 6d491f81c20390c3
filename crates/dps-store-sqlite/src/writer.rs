//! The writer: the one connection that writes, and the thread that runs the store's writes in
//! batches (group commit). At `durability = "normal"` a write usually finds the connection free
//! and nothing queued; it then runs on the calling thread, as a batch of one, without the two
//! thread hand-offs the queue costs ([`Writer::try_inline`] says when it may).
//! docs/performance.md, "Store writes".
//!
//! Each write runs under its own savepoint inside the batch's transaction, so a write that fails
//! (a precondition, a constraint) is undone alone and the others still commit. A caller hears
//! its outcome only after the batch's COMMIT has returned: an acknowledged write is as durable
//! as with a transaction of its own (`synchronous=FULL` fsyncs each batch's commit). If the
//! COMMIT fails, or SQLite abandons the transaction, every write of the batch gets the error.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use dps_core::store::StoreError;
use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::checkpoint::Checkpointer;

/// Writes taken into one transaction at most: a batch is what queued while the previous one ran.
const MAX_BATCH: usize = 64;

/// One write waiting for the writer thread.
trait Job: Send {
    /// Runs the write on the writer's connection (inside the batch's transaction).
    fn run(self: Box<Self>, c: &Connection) -> Box<dyn Ran>;
    /// The write never ran: the batch could not begin.
    fn fail(self: Box<Self>, e: StoreError);
}

/// A write that has run, its outcome held until the batch's commit.
trait Ran: Send {
    fn failed(&self) -> bool;
    /// Hands the outcome over: the write's own if the batch committed, else the commit's error.
    fn finish(self: Box<Self>, committed: Result<(), &str>);
}

struct Pending<T, F> {
    f: F,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

struct Done<T> {
    out: Result<T, StoreError>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job for Pending<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
{
    fn run(self: Box<Self>, c: &Connection) -> Box<dyn Ran> {
        let Pending { f, reply } = *self;
        let out = std::panic::catch_unwind(AssertUnwindSafe(|| f(c)))
            .unwrap_or_else(|_| Err(unavailable("a store write panicked; it was undone")));
        Box::new(Done { out, reply })
    }

    fn fail(self: Box<Self>, e: StoreError) {
        let _ = self.reply.send(Err(e));
    }
}

impl<T: Send + 'static> Ran for Done<T> {
    fn failed(&self) -> bool {
        self.out.is_err()
    }

    fn finish(self: Box<Self>, committed: Result<(), &str>) {
        let out = match committed {
            Ok(()) => self.out,
            Err(why) => Err(unavailable(why)),
        };
        let _ = self.reply.send(out);
    }
}

fn unavailable(why: &str) -> StoreError {
    StoreError::unavailable(std::io::Error::other(why.to_owned()))
}

/// The handle the store keeps: runs a write on the calling thread when it may (see
/// [`Writer::write`]), else sends it to the thread; dropping it stops the thread once the writes
/// already sent are done.
pub(crate) struct Writer {
    jobs: Option<Sender<Box<dyn Job>>>,
    thread: Option<JoinHandle<()>>,
    conn: Arc<Mutex<Connection>>,
    checkpointer: Arc<Checkpointer>,
    /// Writes sent to the thread that it has not taken yet.
    queued: Arc<AtomicUsize>,
    /// Writes may run on the calling thread: only where a commit does not wait for the disk.
    inline: bool,
}

impl Writer {
    /// Starts the thread on `conn` (the store's writing connection, migrated), with the WAL's
    /// checkpointer. `inline`: a write may run on the calling thread when the connection is free
    /// (only where commits are not fsynced: a caller's thread must not wait for the disk).
    pub(crate) fn start(conn: Connection, checkpointer: Checkpointer, inline: bool) -> std::io::Result<Writer> {
        let (jobs, queue) = std::sync::mpsc::channel();
        let conn = Arc::new(Mutex::new(conn));
        let checkpointer = Arc::new(checkpointer);
        let queued = Arc::new(AtomicUsize::new(0));
        let (c, k, q) = (conn.clone(), checkpointer.clone(), queued.clone());
        let thread = std::thread::Builder::new().name("sqlite-writer".into()).spawn(move || run(&c, &k, &queue, &q))?;
        Ok(Writer { jobs: Some(jobs), thread: Some(thread), conn, checkpointer, queued, inline })
    }

    /// Runs `f` in a write transaction and answers once that transaction has committed.
    ///
    /// The write runs here, as a batch of one, when it may (see [`Writer::try_inline`]): the
    /// same savepoint, commit and answer as on the thread, without a hand-off to it and back.
    /// Otherwise it goes to the thread's queue and joins its next batch.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit(f, true).await
    }

    /// [`Writer::write`] for a write of unbounded size (a bulk import, an instance's deletion):
    /// always on the writer thread, never holding up a caller's thread.
    pub(crate) async fn write_queued<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit(f, false).await
    }

    async fn submit<T, F>(&self, f: F, may_inline: bool) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let mut job: Box<dyn Job> = Box::new(Pending { f, reply });
        if may_inline {
            job = match self.try_inline(job) {
                None => {
                    return answer
                        .await
                        .unwrap_or_else(|_| Err(unavailable("the store's write was dropped unanswered")))
                }
                Some(job) => job,
            };
        }
        // Counted before it is sent, so that no write runs inline ahead of it.
        self.queued.fetch_add(1, Ordering::SeqCst);
        let sent = self.jobs.as_ref().is_some_and(|j| j.send(job).is_ok());
        if !sent {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(unavailable("the store's writer has stopped"));
        }
        answer.await.unwrap_or_else(|_| Err(unavailable("the store's writer stopped before answering")))
    }

    /// Runs `job` on this thread if it may, and gives it back if not. It may when:
    /// - commits are not fsynced (`durability = "normal"`): a caller's thread never waits for
    ///   the disk;
    /// - no write is queued for the thread: none is overtaken, and writes that arrive together
    ///   are still batched there;
    /// - the checkpointer does not want the writer: neither for a copy of the WAL's last frames
    ///   nor because the WAL is about to start over (SQLite syncs the WAL's header then, even at
    ///   `normal`);
    /// - the connection is free, and the database is not locked by another connection (the
    ///   `BEGIN` here does not wait for a lock: that wait belongs on the thread).
    fn try_inline(&self, job: Box<dyn Job>) -> Option<Box<dyn Job>> {
        if !self.inline || self.queued.load(Ordering::SeqCst) > 0 || self.checkpointer.wants_writer() {
            return Some(job);
        }
        let answers = {
            let Ok(c) = self.conn.try_lock() else { return Some(job) };
            if crate::without_waiting(|| control(&c, "BEGIN IMMEDIATE")).is_err() {
                return Some(job);
            }
            run_begun(&c, vec![job])
        };
        self.checkpointer.committed();
        answers.send();
        None
    }
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(conn: &Mutex<Connection>, checkpointer: &Checkpointer, queue: &Receiver<Box<dyn Job>>, queued: &AtomicUsize) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let answers = {
            let c = conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            // Taken: from here on, writes may run inline again once the connection is free. If
            // the WAL is to start over, this batch does it.
            queued.fetch_sub(batch.len(), Ordering::SeqCst);
            checkpointer.thread_writing();
            commit_batch(&c, batch)
        };
        checkpointer.committed();
        answers.send();
        // While a copy is wanted, `wants_writer` keeps writes off the callers' threads; the
        // connection is taken again only then, not after every batch.
        if checkpointer.reset_pending() {
            checkpointer.reset_if_overgrown(&conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        }
    }
}

/// A transaction-control statement, prepared once per connection (parsing `SAVEPOINT` and
/// `RELEASE` for every write was a visible share of a registration's CPU).
fn control(c: &Connection, sql: &str) -> rusqlite::Result<()> {
    c.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Runs one batch in one transaction, a savepoint per write, and answers every write.
fn commit_batch(c: &Connection, batch: Vec<Box<dyn Job>>) -> Answers {
    if let Err(e) = control(c, "BEGIN IMMEDIATE") {
        let why = e.to_string();
        for j in batch {
            j.fail(unavailable(&why));
        }
        return Answers { ran: Vec::new(), committed: Ok(()) };
    }
    run_begun(c, batch)
}

/// The outcomes of a batch, to be handed over once the connection is let go: a caller that
/// writes again at once then finds it free.
struct Answers {
    ran: Vec<Box<dyn Ran>>,
    committed: Result<(), String>,
}

impl Answers {
    fn send(self) {
        for r in self.ran {
            r.finish(self.committed.as_ref().map(|_| ()).map_err(String::as_str));
        }
    }
}

/// Runs the jobs of a batch whose transaction has begun and commits it. A job that could not
/// run is answered at once; the others' answers are returned.
fn run_begun(c: &Connection, batch: Vec<Box<dyn Job>>) -> Answers {
    let mut ran: Vec<Box<dyn Ran>> = Vec::with_capacity(batch.len());
    let mut abandoned: Option<String> = None;
    for j in batch {
        if let Some(why) = &abandoned {
            j.fail(unavailable(why));
            continue;
        }
        if let Err(e) = control(c, "SAVEPOINT w") {
            let why = e.to_string();
            j.fail(unavailable(&why));
            abandoned = Some(why);
            continue;
        }
        let r = j.run(c);
        let closed = if r.failed() {
            control(c, "ROLLBACK TO w").and_then(|()| control(c, "RELEASE w"))
        } else {
            control(c, "RELEASE w")
        };
        ran.push(r);
        if let Err(e) = closed {
            abandoned = Some(e.to_string());
        } else if c.is_autocommit() {
            // SQLite rolled the whole transaction back (a full disk, an I/O error).
            abandoned = Some("the store's transaction was rolled back".to_owned());
        }
    }
    let committed = match abandoned {
        Some(why) => Err(why),
        None => control(c, "COMMIT").map_err(|e| e.to_string()),
    };
    if committed.is_err() && !c.is_autocommit() {
        let _ = control(c, "ROLLBACK");
    }
    Answers { ran, committed }
}
