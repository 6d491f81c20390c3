//! The writer thread: the one connection that writes, owned by one thread that runs the store's
//! writes in batches (group commit). docs/performance.md, "Store writes".
//!
//! Each write runs under its own savepoint inside the batch's transaction, so a write that fails
//! (a precondition, a constraint) is undone alone and the others still commit. A caller hears
//! its outcome only after the batch's COMMIT has returned: an acknowledged write is as durable
//! as with a transaction of its own (`synchronous=FULL` fsyncs each batch's commit). If the
//! COMMIT fails, or SQLite abandons the transaction, every write of the batch gets the error.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, Sender};
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

/// The handle the store keeps: sends writes to the thread; dropping it stops the thread once
/// the writes already sent are done.
pub(crate) struct Writer {
    jobs: Option<Sender<Box<dyn Job>>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the thread on `conn` (the store's writing connection, migrated), with the WAL's
    /// checkpointer.
    pub(crate) fn start(conn: Connection, checkpointer: Checkpointer) -> std::io::Result<Writer> {
        let (jobs, queue) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(&conn, &checkpointer, &queue))?;
        Ok(Writer { jobs: Some(jobs), thread: Some(thread) })
    }

    /// Runs `f` in a write transaction (shared with other writes queued meanwhile) and answers
    /// once that transaction has committed.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(Pending { f, reply });
        let sent = self.jobs.as_ref().is_some_and(|j| j.send(job).is_ok());
        if !sent {
            return Err(unavailable("the store's writer has stopped"));
        }
        answer.await.unwrap_or_else(|_| Err(unavailable("the store's writer stopped before answering")))
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

fn run(c: &Connection, checkpointer: &Checkpointer, queue: &Receiver<Box<dyn Job>>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        commit_batch(c, batch);
        checkpointer.committed();
        checkpointer.reset_if_overgrown(c);
    }
}

/// A transaction-control statement, prepared once per connection (parsing `SAVEPOINT` and
/// `RELEASE` for every write was a visible share of a registration's CPU).
fn control(c: &Connection, sql: &str) -> rusqlite::Result<()> {
    c.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Runs one batch in one transaction, a savepoint per write, and answers every write.
fn commit_batch(c: &Connection, batch: Vec<Box<dyn Job>>) {
    if let Err(e) = control(c, "BEGIN IMMEDIATE") {
        let why = e.to_string();
        for j in batch {
            j.fail(unavailable(&why));
        }
        return;
    }
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
    for r in ran {
        r.finish(committed.as_ref().map(|_| ()).map_err(String::as_str));
    }
}
