//! `dps-store-sqlite`: the embedded store. One SQLite file under the data directory, in WAL
//! mode, schema versioned by `PRAGMA user_version` and migrated on open.
//!
//! Durability: with [`Durability::Normal`] (default) a committed write survives a crash or
//! `kill -9` of the server (it is in the WAL); with [`Durability::Full`] every commit is also
//! fsynced, so it survives a power loss. Writes run one after another on the one writing
//! connection (`writer.rs`), on the caller's thread when it is free at `Normal`, else in the
//! writer thread's next batch, each under its own savepoint that checks its precondition and
//! writes, so concurrent writers never lose an update; a write is acknowledged once its
//! transaction has committed.
//!
//! Only this crate knows SQL. Rows hold the entity as JSON (`doc`) beside the columns that are
//! queried (keys lower-cased for case-insensitive ids).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use dps_core::model::{IdScope, Instance};
use dps_core::store::{
    from_doc, to_doc, DocWrite, DocumentStore, InstanceWrite, Kind, Precondition, RawPage, StoreError,
};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

mod bulk;
mod checkpoint;
mod writer;

/// Fsync policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=NORMAL`: survives a process crash (kill -9); the last commits may be lost on
    /// power loss.
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit fsynced; survives power loss.
    Full,
}

const MIGRATIONS: &[&str] = &[
    // 1: instances and one table of documents per kind.
    "CREATE TABLE instances (
        name_key TEXT PRIMARY KEY,
        id_scope TEXT NOT NULL UNIQUE,
        etag TEXT NOT NULL,
        doc TEXT NOT NULL
    );
    CREATE TABLE documents (
        kind INTEGER NOT NULL,
        instance TEXT NOT NULL,
        id_key TEXT NOT NULL,
        parent_key TEXT,
        etag TEXT NOT NULL,
        doc TEXT NOT NULL,
        PRIMARY KEY (kind, instance, id_key)
    ) WITHOUT ROWID;
    CREATE INDEX documents_by_parent ON documents (kind, instance, parent_key, id_key);",
    // 2: a version of the instances table, bumped by every write to it (whoever writes), so a
    // cache of every instance can tell in one read whether it is still current.
    "CREATE TABLE instances_version (one INTEGER PRIMARY KEY CHECK (one = 1), version INTEGER NOT NULL);
    INSERT INTO instances_version (one, version) VALUES (1, 0);
    CREATE TRIGGER instances_version_insert AFTER INSERT ON instances
        BEGIN UPDATE instances_version SET version = version + 1; END;
    CREATE TRIGGER instances_version_update AFTER UPDATE ON instances
        BEGIN UPDATE instances_version SET version = version + 1; END;
    CREATE TRIGGER instances_version_delete AFTER DELETE ON instances
        BEGIN UPDATE instances_version SET version = version + 1; END;",
    // 3: documents in a rowid table, their key in an index of its own. In the WITHOUT ROWID
    // table of 1 the key's B-tree held whole rows, so each comparison of a lookup's search read
    // a large document's overflow pages: about 40 page reads per registration
    // (docs/performance.md, "Store reads"). And a version of the enrollment groups (documents
    // of kind 2), set to a new random value by every write to one, so a node's cache of an
    // instance's groups can tell in one read whether it is still current. Random rather than
    // counted: a database restored from a backup could count again to a value a node has
    // cached, with other groups behind it.
    "CREATE TABLE documents_rowid (
        kind INTEGER NOT NULL,
        instance TEXT NOT NULL,
        id_key TEXT NOT NULL,
        parent_key TEXT,
        etag TEXT NOT NULL,
        doc TEXT NOT NULL
    );
    INSERT INTO documents_rowid (kind, instance, id_key, parent_key, etag, doc)
        SELECT kind, instance, id_key, parent_key, etag, doc FROM documents ORDER BY kind, instance, id_key;
    DROP TABLE documents;
    ALTER TABLE documents_rowid RENAME TO documents;
    CREATE UNIQUE INDEX documents_key ON documents (kind, instance, id_key);
    CREATE INDEX documents_by_parent ON documents (kind, instance, parent_key, id_key);
    CREATE TABLE groups_version (one INTEGER PRIMARY KEY CHECK (one = 1), version INTEGER NOT NULL);
    INSERT INTO groups_version (one, version) VALUES (1, 0);
    CREATE TRIGGER groups_version_insert AFTER INSERT ON documents WHEN NEW.kind = 2
        BEGIN UPDATE groups_version SET version = random(); END;
    CREATE TRIGGER groups_version_update AFTER UPDATE ON documents WHEN NEW.kind = 2 OR OLD.kind = 2
        BEGIN UPDATE groups_version SET version = random(); END;
    CREATE TRIGGER groups_version_delete AFTER DELETE ON documents WHEN OLD.kind = 2
        BEGIN UPDATE groups_version SET version = random(); END;",
    // 4: the instances version takes a new random value at each write too, for the reason given
    // at 3: counted, a restored database could come back to a value a node has cached with other
    // instances (other policy keys) behind it.
    "DROP TRIGGER instances_version_insert;
    DROP TRIGGER instances_version_update;
    DROP TRIGGER instances_version_delete;
    CREATE TRIGGER instances_version_insert AFTER INSERT ON instances
        BEGIN UPDATE instances_version SET version = random(); END;
    CREATE TRIGGER instances_version_update AFTER UPDATE ON instances
        BEGIN UPDATE instances_version SET version = random(); END;
    CREATE TRIGGER instances_version_delete AFTER DELETE ON instances
        BEGIN UPDATE instances_version SET version = random(); END;
    UPDATE instances_version SET version = random();",
];

/// The SQLite store.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    /// The writing connection and its thread, which also drives the WAL's checkpointer
    /// (`writer.rs`).
    writer: writer::Writer,
    readers: Vec<Mutex<Connection>>,
}

fn key(s: &str) -> String {
    s.to_ascii_lowercase()
}

std::thread_local! {
    /// Set while a write on a caller's thread begins (`writer.rs`): a locked database is
    /// reported at once instead of waited for.
    static NO_WAIT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with [`busy`] giving up at once on this thread.
pub(crate) fn without_waiting<T>(f: impl FnOnce() -> T) -> T {
    NO_WAIT.with(|w| w.set(true));
    let out = f();
    NO_WAIT.with(|w| w.set(false));
    out
}

/// Waits between tries of a connection that found the database locked (a checkpoint that resets
/// the WAL holds off the writer and waits for readers to move to the newest snapshot). SQLite's
/// own busy timeout sleeps 1, 2, 5, 10, 15, 20, 25 … 100 ms between tries, so a lock held for a
/// millisecond could cost the waiter 25 ms or more, and the reset waited 100 ms for readers that
/// each take microseconds (docs/performance.md, "Store writes"). Here every wait is 250 µs, for
/// 10 s in all, as before; not at all inside [`without_waiting`].
pub(crate) fn busy(tries: i32) -> bool {
    const WAIT: std::time::Duration = std::time::Duration::from_micros(250);
    const TRIES: i32 = 40_000;
    if tries >= TRIES || NO_WAIT.with(std::cell::Cell::get) {
        return false;
    }
    std::thread::sleep(WAIT);
    true
}

fn open_conn(path: &Path, durability: Durability) -> Result<Connection, StoreError> {
    let mut c = Connection::open(path).map_err(StoreError::unavailable)?;
    c.busy_handler(Some(busy)).map_err(StoreError::unavailable)?;
    let sync = match durability {
        Durability::Normal => "NORMAL",
        Durability::Full => "FULL",
    };
    // No automatic checkpoint inside a commit: the checkpointer thread does it (`checkpoint.rs`).
    c.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA foreign_keys=ON; PRAGMA wal_autocheckpoint=0;"
    ))
    .map_err(StoreError::unavailable)?;
    // Room for every statement of `DocumentStore` (see `row`, `exec`), so none is evicted.
    c.set_prepared_statement_cache_capacity(32);
    Ok(c)
}

fn migrate(c: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(StoreError::unavailable)?;
    // A negative user_version was never written by us: treat it like an unknown newer schema.
    let version = usize::try_from(version).unwrap_or(usize::MAX);
    if version > MIGRATIONS.len() {
        return Err(StoreError::Unavailable(
            format!(
                "the database schema is version {version}, newer than this build knows ({}); upgrade opendps",
                MIGRATIONS.len()
            )
            .into(),
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        if version > 0 {
            // Migration 3 rewrites every document: minutes on a store of millions.
            tracing::info!(version = i + 1, "migrating the store schema of an existing database");
        }
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(StoreError::unavailable)?;
        tx.execute_batch(sql).map_err(StoreError::unavailable)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1)).map_err(StoreError::unavailable)?;
        tx.commit().map_err(StoreError::unavailable)?;
        tracing::info!(version = i + 1, "store schema migrated");
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path, durability: Durability) -> Result<SqliteStore, StoreError> {
        private_files(path)?;
        let mut writer = open_conn(path, durability)?;
        migrate(&mut writer)?;
        let readers = (0..4).map(|_| open_conn(path, durability).map(Mutex::new)).collect::<Result<Vec<_>, _>>()?;
        let checkpointer =
            checkpoint::Checkpointer::start(open_conn(path, durability)?).map_err(StoreError::unavailable)?;
        let writer = writer::Writer::start(writer, checkpointer, durability == Durability::Normal)
            .map_err(StoreError::unavailable)?;
        let inner = Inner { path: path.to_owned(), writer, readers };
        Ok(SqliteStore { inner: Arc::new(inner) })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.inner.writer.write(f).await
    }

    /// The largest page read on the calling thread (see `page_docs`): bounded work, like a point
    /// read's. docs/performance.md, "Store reads".
    const SMALL_PAGE: usize = 100;

    /// A point read (one row by its key): done on the calling thread when a reader connection is
    /// free. SQLite answers it from its page cache in microseconds, less than the two thread
    /// hand-offs of `spawn_blocking` cost; when every reader is busy it goes the blocking way.
    /// docs/performance.md, "Store reads".
    /// One of the version counters the triggers bump (`instances_version`, `groups_version`).
    async fn counter(&self, sql: &'static str) -> Result<u64, StoreError> {
        self.read_point(move |c| {
            let v: i64 = row(c, sql, [], |r| r.get(0)).map_err(StoreError::unavailable)?;
            Ok(v as u64)
        })
        .await
    }

    async fn read_point<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        for r in &self.inner.readers {
            if let Ok(c) = r.try_lock() {
                return f(&c);
            }
        }
        self.read(f).await
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            // Any free reader, else wait for the first.
            for r in &inner.readers {
                if let Ok(c) = r.try_lock() {
                    return f(&c);
                }
            }
            let c = inner.readers[0].lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&c)
        })
        .await
        .map_err(StoreError::unavailable)?
    }
}

/// A precondition that can cross to the blocking thread.
#[derive(Debug)]
enum OwnedPre {
    Any,
    MustNotExist,
    IfMatch(String),
}

impl From<Precondition<'_>> for OwnedPre {
    fn from(p: Precondition<'_>) -> Self {
        match p {
            Precondition::Any => OwnedPre::Any,
            Precondition::MustNotExist => OwnedPre::MustNotExist,
            Precondition::IfMatch(e) => OwnedPre::IfMatch(e.to_owned()),
        }
    }
}

impl OwnedPre {
    fn check(&self, current: Option<&str>) -> Result<(), StoreError> {
        match (self, current) {
            (OwnedPre::Any, _) => Ok(()),
            (OwnedPre::MustNotExist, None) => Ok(()),
            (OwnedPre::MustNotExist, Some(_)) => Err(StoreError::AlreadyExists),
            (OwnedPre::IfMatch(_), None) => Err(StoreError::NotFound),
            (OwnedPre::IfMatch(want), Some(have)) if want == "*" || dps_core::store::etag_matches(have, want) => Ok(()),
            (OwnedPre::IfMatch(_), Some(_)) => Err(StoreError::PreconditionFailed),
        }
    }
}

/// `query_row` through the connection's statement cache: each statement is parsed once per
/// connection, not on every call.
fn row<T>(
    c: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    c.prepare_cached(sql)?.query_row(p, f)
}

/// `execute` through the connection's statement cache.
fn exec(c: &Connection, sql: &str, p: impl rusqlite::Params) -> rusqlite::Result<usize> {
    c.prepare_cached(sql)?.execute(p)
}

#[async_trait]
impl DocumentStore for SqliteStore {
    async fn instances(&self) -> Result<Vec<Instance>, StoreError> {
        self.read(|c| {
            let mut st =
                c.prepare_cached("SELECT doc FROM instances ORDER BY name_key").map_err(StoreError::unavailable)?;
            let docs = st.query_map([], |r| r.get::<_, String>(0)).map_err(StoreError::unavailable)?;
            docs.map(|d| d.map_err(StoreError::unavailable).and_then(|d| from_doc(&d))).collect()
        })
        .await
    }

    async fn instance(&self, name: &str) -> Result<Option<Instance>, StoreError> {
        let name = key(name);
        self.read_point(move |c| {
            let doc: Option<String> =
                row(c, "SELECT doc FROM instances WHERE name_key = ?1", params![name], |r| r.get(0))
                    .optional()
                    .map_err(StoreError::unavailable)?;
            doc.map(|d| from_doc(&d)).transpose()
        })
        .await
    }

    async fn instance_by_scope(&self, scope: &IdScope) -> Result<Option<Instance>, StoreError> {
        let scope = scope.as_str().to_owned();
        self.read_point(move |c| {
            let doc: Option<String> =
                row(c, "SELECT doc FROM instances WHERE id_scope = ?1", params![scope], |r| r.get(0))
                    .optional()
                    .map_err(StoreError::unavailable)?;
            doc.map(|d| from_doc(&d)).transpose()
        })
        .await
    }

    async fn write_instances(&self, writes: &[InstanceWrite]) -> Result<(), StoreError> {
        let writes = writes.to_vec();
        self.write(move |tx| {
            for w in &writes {
                match w {
                    InstanceWrite::Create(i) => {
                        let exists: Option<String> =
                            row(tx, "SELECT name_key FROM instances WHERE name_key = ?1", params![key(&i.name)], |r| {
                                r.get(0)
                            })
                            .optional()
                            .map_err(StoreError::unavailable)?;
                        if exists.is_some() {
                            return Err(StoreError::AlreadyExists);
                        }
                        let taken: Option<String> = row(
                            tx,
                            "SELECT name_key FROM instances WHERE id_scope = ?1",
                            params![i.id_scope.as_str()],
                            |r| r.get(0),
                        )
                        .optional()
                        .map_err(StoreError::unavailable)?;
                        if let Some(other) = taken {
                            return Err(StoreError::Conflict(format!("ID scope {} is used by {other}", i.id_scope)));
                        }
                        exec(
                            tx,
                            "INSERT INTO instances (name_key, id_scope, etag, doc) VALUES (?1, ?2, ?3, ?4)",
                            params![key(&i.name), i.id_scope.as_str(), i.etag, to_doc(i)?],
                        )
                        .map_err(StoreError::unavailable)?;
                    }
                    InstanceWrite::Update { instance: i, expected_etag } => {
                        let current: Option<(String, String)> = row(
                            tx,
                            "SELECT etag, id_scope FROM instances WHERE name_key = ?1",
                            params![key(&i.name)],
                            |r| Ok((r.get(0)?, r.get(1)?)),
                        )
                        .optional()
                        .map_err(StoreError::unavailable)?;
                        match current {
                            None => return Err(StoreError::NotFound),
                            Some((etag, _)) if !dps_core::store::etag_matches(&etag, expected_etag) => {
                                return Err(StoreError::PreconditionFailed)
                            }
                            Some((_, scope)) if scope != i.id_scope.as_str() => {
                                return Err(StoreError::Conflict("the ID scope of an instance never changes".into()))
                            }
                            Some(_) => {}
                        }
                        exec(
                            tx,
                            "UPDATE instances SET etag = ?2, doc = ?3 WHERE name_key = ?1",
                            params![key(&i.name), i.etag, to_doc(i)?],
                        )
                        .map_err(StoreError::unavailable)?;
                    }
                }
            }
            Ok(())
        })
        .await
    }

    async fn delete_instance(&self, name: &str) -> Result<(), StoreError> {
        let name = key(name);
        // Deletes every document of the instance: unbounded, so never on a caller's thread.
        self.inner
            .writer
            .write_queued(move |tx| {
                let n = exec(tx, "DELETE FROM instances WHERE name_key = ?1", params![name])
                    .map_err(StoreError::unavailable)?;
                if n == 0 {
                    return Err(StoreError::NotFound);
                }
                exec(tx, "DELETE FROM documents WHERE instance = ?1", params![name])
                    .map_err(StoreError::unavailable)?;
                Ok(())
            })
            .await
    }

    async fn instances_version(&self) -> Result<u64, StoreError> {
        self.counter("SELECT version FROM instances_version").await
    }

    async fn groups_version(&self) -> Result<u64, StoreError> {
        self.counter("SELECT version FROM groups_version").await
    }

    async fn get_doc(&self, kind: Kind, instance: &str, id: &str) -> Result<Option<String>, StoreError> {
        let (instance, id) = (key(instance), key(id));
        self.read_point(move |c| {
            row(
                c,
                "SELECT doc FROM documents WHERE kind = ?1 AND instance = ?2 AND id_key = ?3",
                params![kind as i64, instance, id],
                |r| r.get(0),
            )
            .optional()
            .map_err(StoreError::unavailable)
        })
        .await
    }

    async fn put_doc(
        &self,
        kind: Kind,
        instance: &str,
        d: DocWrite<'_>,
        pre: Precondition<'_>,
    ) -> Result<(), StoreError> {
        let (instance, id, parent, etag, doc) =
            (key(instance), key(d.id), d.parent.map(key), d.etag.to_owned(), d.json.to_owned());
        let pre = OwnedPre::from(pre);
        self.write(move |tx| {
            let current: Option<String> = row(tx,
                    "SELECT etag FROM documents WHERE kind = ?1 AND instance = ?2 AND id_key = ?3",
                    params![kind as i64, instance, id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(StoreError::unavailable)?;
            pre.check(current.as_deref())?;
            exec(tx,
                "INSERT INTO documents (kind, instance, id_key, parent_key, etag, doc) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (kind, instance, id_key) DO UPDATE SET parent_key = excluded.parent_key, etag = excluded.etag, doc = excluded.doc",
                params![kind as i64, instance, id, parent, etag, doc],
            )
            .map_err(StoreError::unavailable)?;
            Ok(())
        })
        .await
    }

    async fn delete_doc(&self, kind: Kind, instance: &str, id: &str, pre: Precondition<'_>) -> Result<(), StoreError> {
        let (instance, id) = (key(instance), key(id));
        let pre = OwnedPre::from(pre);
        self.write(move |tx| {
            let current: Option<String> = row(
                tx,
                "SELECT etag FROM documents WHERE kind = ?1 AND instance = ?2 AND id_key = ?3",
                params![kind as i64, instance, id],
                |r| r.get(0),
            )
            .optional()
            .map_err(StoreError::unavailable)?;
            if current.is_none() {
                return Err(StoreError::NotFound);
            }
            pre.check(current.as_deref())?;
            exec(
                tx,
                "DELETE FROM documents WHERE kind = ?1 AND instance = ?2 AND id_key = ?3",
                params![kind as i64, instance, id],
            )
            .map_err(StoreError::unavailable)?;
            Ok(())
        })
        .await
    }

    async fn page_docs(
        &self,
        kind: Kind,
        instance: &str,
        parent: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<RawPage, StoreError> {
        let (instance, parent, after) = (key(instance), parent.map(key), after.unwrap_or("").to_owned());
        let limit = limit.max(1);
        let small = limit <= Self::SMALL_PAGE;
        let read = move |c: &Connection| {
            let lim = i64::try_from(limit + 1).unwrap_or(i64::MAX);
            let mut rows: Vec<(String, String)> = Vec::new();
            let map = |r: &rusqlite::Row<'_>| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?));
            match &parent {
                Some(p) => {
                    let mut st = c
                        .prepare_cached(
                            "SELECT id_key, doc FROM documents WHERE kind = ?1 AND instance = ?2 AND parent_key = ?3 AND id_key > ?4
                             ORDER BY id_key LIMIT ?5",
                        )
                        .map_err(StoreError::unavailable)?;
                    for r in st
                        .query_map(params![kind as i64, instance, p, after, lim], map)
                        .map_err(StoreError::unavailable)?
                    {
                        rows.push(r.map_err(StoreError::unavailable)?);
                    }
                }
                None => {
                    let mut st = c
                        .prepare_cached(
                            "SELECT id_key, doc FROM documents WHERE kind = ?1 AND instance = ?2 AND id_key > ?3 ORDER BY id_key LIMIT ?4",
                        )
                        .map_err(StoreError::unavailable)?;
                    for r in st
                        .query_map(params![kind as i64, instance, after, lim], map)
                        .map_err(StoreError::unavailable)?
                    {
                        rows.push(r.map_err(StoreError::unavailable)?);
                    }
                }
            }
            let more = rows.len() > limit;
            rows.truncate(limit);
            let continuation = if more { rows.last().map(|(k, _)| k.clone()) } else { None };
            Ok(RawPage { docs: rows.into_iter().map(|(_, d)| d).collect(), continuation })
        };
        // A small page (a device's enrollment groups, read on every group registration) is a
        // read like a point read; a large one (an operator's listing) is not done on the
        // calling thread.
        if small {
            self.read_point(read).await
        } else {
            self.read(read).await
        }
    }
}

/// The store holds every key and secret: the database file is created 0600 before SQLite opens
/// it (SQLite gives its `-wal` and `-shm` files the database file's mode), and an existing
/// database and its companions are narrowed to 0600.
fn private_files(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(StoreError::unavailable)?;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let p = std::path::PathBuf::from(p);
        if let Ok(meta) = std::fs::metadata(&p) {
            if meta.permissions().mode() & 0o077 != 0 {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                    .map_err(StoreError::unavailable)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use dps_core::store::{DocWrite, DocumentStore, Kind, Precondition, StoreError};

    use super::{checkpoint, Durability, SqliteStore};

    /// A setting of the writing connection, read on the writer thread.
    fn pragma(store: &SqliteStore, name: &str) -> i64 {
        let sql = format!("PRAGMA {name}");
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        rt.block_on(store.write(move |c| c.query_row(&sql, [], |r| r.get(0)).map_err(StoreError::unavailable)))
            .expect("pragma")
    }

    /// A database put back to an earlier state (a backup restored, say) must not hand out again
    /// a version a node saw after that state, for other instances: the node would keep a policy
    /// index that no longer matches. Counted versions did exactly that.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_restored_database_does_not_repeat_an_instances_version() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("v.db"), Durability::Normal).expect("open");
        let insert = |name: &'static str| {
            let store = store.clone();
            async move {
                store
                    .write(move |c| {
                        c.execute(
                            "INSERT INTO instances (name_key, id_scope, etag, doc) VALUES (?1, ?1, 'e', '{}')",
                            [name],
                        )
                        .map_err(StoreError::unavailable)
                    })
                    .await
                    .expect("insert");
                store.instances_version().await.expect("version")
            }
        };
        let before = insert("dps-a").await;
        let seen = insert("dps-b").await;
        // The restore: dps-b and the version it brought are gone.
        store
            .write(move |c| {
                c.execute("DELETE FROM instances WHERE name_key = 'dps-b'", []).map_err(StoreError::unavailable)?;
                c.execute("UPDATE instances_version SET version = ?1", [before as i64]).map_err(StoreError::unavailable)
            })
            .await
            .expect("restore");
        let after = insert("dps-c").await;
        assert_ne!(after, seen, "another set of instances, another version");
        assert_ne!(after, before);
    }

    /// A database of schema 2 (documents in a `WITHOUT ROWID` table) keeps every document
    /// through migration 3, which moves them to a rowid table with a key index and adds the
    /// groups version.
    #[tokio::test(flavor = "multi_thread")]
    async fn migration_3_keeps_every_document_and_moves_them_to_a_rowid_table() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("v2.db");
        {
            let c = rusqlite::Connection::open(&path).expect("open");
            for sql in &super::MIGRATIONS[..2] {
                c.execute_batch(sql).expect("schema 2");
            }
            c.execute_batch("PRAGMA user_version = 2").expect("version");
            let big = format!("{{\"registrationId\":\"r-1\",\"pad\":\"{}\"}}", "x".repeat(5000));
            for (kind, id, doc) in [(2, "g-1", "{\"g\":1}".to_owned()), (3, "r-1", big), (1, "e-1", "{}".to_owned())] {
                c.execute(
                    "INSERT INTO documents (kind, instance, id_key, parent_key, etag, doc) VALUES (?1, 'dps', ?2, NULL, 'e', ?3)",
                    rusqlite::params![kind, id, doc],
                )
                .expect("insert");
            }
        }
        let store = SqliteStore::open(&path, Durability::Normal).expect("migrate");
        for (kind, id) in [(Kind::Group, "g-1"), (Kind::Registration, "r-1"), (Kind::Enrollment, "e-1")] {
            assert!(store.get_doc(kind, "dps", id).await.expect("read").is_some(), "{id} survived the migration");
        }
        let big = store.get_doc(Kind::Registration, "dps", "R-1").await.expect("read").expect("r-1");
        assert!(big.len() > 5000, "a document larger than a page reads back whole");
        let schema: String = store
            .read_point(|c| {
                c.query_row("SELECT group_concat(sql, ';') FROM sqlite_master WHERE tbl_name = 'documents'", [], |r| {
                    r.get(0)
                })
                .map_err(StoreError::unavailable)
            })
            .await
            .expect("schema");
        assert!(!schema.contains("WITHOUT ROWID"), "{schema}");
        assert!(schema.contains("documents_key") && schema.contains("documents_by_parent"), "{schema}");
        let v = store.groups_version().await.expect("version");
        let doc = DocWrite { id: "g-2", parent: None, etag: "e2", json: "{}" };
        store.put_doc(Kind::Group, "dps", doc, Precondition::MustNotExist).await.expect("write");
        assert_ne!(store.groups_version().await.expect("version"), v, "the trigger moves the groups version");
        assert!(
            matches!(
                store.put_doc(Kind::Group, "DPS", doc, Precondition::MustNotExist).await,
                Err(StoreError::AlreadyExists)
            ),
            "the key index is unique, case-insensitively"
        );
    }

    /// The writer never checkpoints inside a commit, and `full` still syncs every commit.
    #[test]
    fn the_writer_does_not_checkpoint_and_keeps_its_sync_policy() {
        let dir = tempfile::tempdir().expect("temp dir");
        let normal = SqliteStore::open(&dir.path().join("n.db"), Durability::Normal).expect("open");
        assert_eq!(pragma(&normal, "wal_autocheckpoint"), 0);
        assert_eq!(pragma(&normal, "synchronous"), 1, "NORMAL");
        let full = SqliteStore::open(&dir.path().join("f.db"), Durability::Full).expect("open");
        assert_eq!(pragma(&full, "wal_autocheckpoint"), 0);
        assert_eq!(pragma(&full, "synchronous"), 2, "FULL: the WAL is synced at every commit");
    }

    /// Commits reach the database file without any checkpoint in the commit path: the
    /// checkpointer copies them from the WAL, and what it copied reads back after a reopen.
    #[tokio::test(flavor = "multi_thread")]
    async fn the_checkpointer_copies_commits_into_the_database_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path, Durability::Normal).expect("open");
        let before = std::fs::metadata(&path).expect("db").len();
        let json = format!(r#"{{"pad":"{}"}}"#, "x".repeat(2000));
        let n = checkpoint::COMMITS as usize + 10;
        for i in 0..n {
            let doc = DocWrite { id: &format!("d-{i}"), parent: None, etag: "1", json: &json };
            store.put_doc(Kind::Registration, "dps", doc, Precondition::Any).await.expect("put");
        }
        // Bounded wait for the event (not a timing assertion): the file grows once checkpointed.
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::metadata(&path).expect("db").len() < before + (n as u64) * 2000 {
            assert!(Instant::now() < deadline, "no checkpoint copied the commits into the database file");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(store);
        let again = SqliteStore::open(&path, Durability::Normal).expect("reopen");
        for i in [0, n - 1] {
            assert!(again.get_doc(Kind::Registration, "dps", &format!("d-{i}")).await.expect("get").is_some());
        }
    }

    /// Writes sent together share a transaction (`writer.rs`); one whose precondition fails is
    /// undone alone, the others commit, and every acknowledged write is there after a reopen.
    /// At `full` every write goes through the writer thread's batches; at `normal` most run on
    /// the calling thread and the rest join a batch.
    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_writes_commit_together_and_a_refused_one_is_undone_alone() {
        for durability in [Durability::Full, Durability::Normal] {
            concurrent_writes(durability).await;
        }
    }

    async fn concurrent_writes(durability: Durability) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("g.db");
        let store = std::sync::Arc::new(SqliteStore::open(&path, durability).expect("open"));
        let taken = DocWrite { id: "taken", parent: None, etag: "1", json: r#"{"v":"first"}"# };
        store.put_doc(Kind::Registration, "dps", taken, Precondition::Any).await.expect("put");
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let id = if i % 2 == 0 { "taken".to_owned() } else { format!("d-{i}") };
                    let doc = DocWrite { id: &id, parent: None, etag: "2", json: r#"{"v":"second"}"# };
                    store.put_doc(Kind::Registration, "dps", doc, Precondition::MustNotExist).await
                })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            let r = t.await.expect("task");
            if i % 2 == 0 {
                assert!(matches!(r, Err(StoreError::AlreadyExists)), "{i}: {r:?}");
            } else {
                r.expect("a fresh document is written");
            }
        }
        drop(store);
        let again = SqliteStore::open(&path, Durability::Normal).expect("reopen");
        let first = again.get_doc(Kind::Registration, "dps", "taken").await.expect("get").expect("there");
        assert!(first.contains("first"), "{first}");
        for i in (1..64).step_by(2) {
            assert!(again.get_doc(Kind::Registration, "dps", &format!("d-{i}")).await.expect("get").is_some(), "d-{i}");
        }
    }

    /// Where writes run: at `normal` on the caller's thread when the writer is free (the first
    /// write after opening goes to the thread: it gives the empty WAL its header, which SQLite
    /// syncs); at `full` always on the writer thread, so no caller waits for an fsync; a bulk
    /// write always on the thread.
    #[tokio::test(flavor = "multi_thread")]
    async fn writes_run_on_the_callers_thread_only_at_normal_and_only_when_bounded() {
        async fn threads(store: &SqliteStore) -> Vec<Option<String>> {
            let mut names = Vec::new();
            for _ in 0..20 {
                let name = store.write(|_| Ok(std::thread::current().name().map(str::to_owned))).await;
                names.push(name.expect("write"));
            }
            names
        }
        let writer = Some("sqlite-writer".to_owned());
        let dir = tempfile::tempdir().expect("temp dir");
        let normal = SqliteStore::open(&dir.path().join("n.db"), Durability::Normal).expect("open");
        let names = threads(&normal).await;
        assert_eq!(names[0], writer, "the first write starts the WAL: on the thread");
        assert!(names.iter().any(|n| *n != writer), "no write ran on the caller's thread: {names:?}");
        let bulk = normal
            .inner
            .writer
            .write_queued(|_| Ok(std::thread::current().name().map(str::to_owned)))
            .await
            .expect("write");
        assert_eq!(bulk, writer, "an unbounded write runs on the thread");
        let full = SqliteStore::open(&dir.path().join("f.db"), Durability::Full).expect("open");
        let names = threads(&full).await;
        assert!(names.iter().all(|n| *n == writer), "at full every write is the thread's: {names:?}");
    }

    /// A write that finds the database locked by another connection (another process, say)
    /// does not wait for it on the caller's thread: it goes to the writer thread, which waits,
    /// and commits once the lock is free. On a single-threaded runtime a wait on the caller's
    /// thread would hold the lock's owner (this test) off until SQLite gave up.
    #[tokio::test(flavor = "current_thread")]
    async fn a_write_waits_for_another_writer_on_the_writer_thread_not_the_callers() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("l.db");
        let store = std::sync::Arc::new(SqliteStore::open(&path, Durability::Normal).expect("open"));
        // The first write goes to the thread (it starts the WAL); the next ones may run here.
        let first = DocWrite { id: "first", parent: None, etag: "1", json: r#"{"v":0}"# };
        store.put_doc(Kind::Registration, "dps", first, Precondition::MustNotExist).await.expect("first write");
        let other = rusqlite::Connection::open(&path).expect("second connection");
        other.execute_batch("BEGIN IMMEDIATE").expect("the other connection takes the write lock");
        let s = store.clone();
        let write = tokio::spawn(async move {
            let doc = DocWrite { id: "d", parent: None, etag: "1", json: r#"{"v":1}"# };
            s.put_doc(Kind::Registration, "dps", doc, Precondition::MustNotExist).await
        });
        // Not a speed assertion: a wait on this thread would last SQLite's whole busy timeout
        // (10 s, `busy`) before the write gave up and was queued; 200 ms here takes far less.
        let paused = Instant::now();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(paused.elapsed() < Duration::from_secs(5), "the write held the caller's thread while it waited");
        assert!(!write.is_finished(), "the write waits for the lock");
        other.execute_batch("COMMIT").expect("the other connection lets go");
        write.await.expect("task").expect("the write commits once the lock is free");
        assert!(store.get_doc(Kind::Registration, "dps", "d").await.expect("get").is_some());
    }

    /// The bundled SQLite must carry the security fixes of 3.50.2; a
    /// downgrade of rusqlite would silently bring back an older library.
    #[test]
    fn bundled_sqlite_is_at_least_3_50_2() {
        assert!(rusqlite::version_number() >= 3_050_002, "bundled SQLite is {}", rusqlite::version());
    }
}
