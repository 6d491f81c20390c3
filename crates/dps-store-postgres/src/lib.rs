//! `dps-store-postgres`: the `Store` port on PostgreSQL, for several stateless OpenDPS nodes
//! sharing one database. Same schema shape as the SQLite store (entities as JSON beside the
//! queried keys); every precondition is part of the statement that writes (`INSERT … ON
//! CONFLICT DO NOTHING`, `UPDATE … WHERE etag = …`), so concurrent nodes never lose an update.
//! Migrations run under an advisory lock, so nodes starting together migrate once.
//!
//! Only this crate and `dps-store-sqlite` know SQL. The connection URL is never logged (it may
//! hold a password).

use std::future::Future;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use dps_core::model::{IdScope, Instance};
use dps_core::service::Role;
use dps_core::store::{
    from_doc, to_doc, DocWrite, DocumentStore, InstanceWrite, Kind, Precondition, RawPage, StoreError,
};

mod connect;
mod quota;
use connect::{driver, message};
pub use connect::{PgError, SslMode, Timeouts};
pub use quota::PgQuota;

#[cfg(feature = "test-cluster")]
pub mod test_cluster;

const MIGRATIONS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS instances (
        name_key TEXT PRIMARY KEY,
        id_scope TEXT NOT NULL UNIQUE,
        etag TEXT NOT NULL,
        doc TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS documents (
        kind SMALLINT NOT NULL,
        instance TEXT NOT NULL,
        id_key TEXT NOT NULL,
        parent_key TEXT,
        etag TEXT NOT NULL,
        doc TEXT NOT NULL,
        PRIMARY KEY (kind, instance, id_key)
    );
    CREATE INDEX IF NOT EXISTS documents_by_parent ON documents (kind, instance, parent_key, id_key);",
    // 2: the registration quota's token buckets, shared by every node (quota.rs).
    "CREATE TABLE IF NOT EXISTS quota (
        key TEXT PRIMARY KEY,
        tokens DOUBLE PRECISION NOT NULL,
        at DOUBLE PRECISION NOT NULL
    );",
    // 3: a version of the instances table, bumped by every statement that writes it (on any
    // node), so a node's cache of every instance can tell in one read whether it is current.
    "CREATE TABLE IF NOT EXISTS instances_version (
        one SMALLINT PRIMARY KEY CHECK (one = 1),
        version BIGINT NOT NULL
    );
    INSERT INTO instances_version (one, version) VALUES (1, 0) ON CONFLICT DO NOTHING;
    CREATE OR REPLACE FUNCTION instances_version_bump() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN UPDATE instances_version SET version = version + 1; RETURN NULL; END $$;
    DROP TRIGGER IF EXISTS instances_version_bump ON instances;
    CREATE TRIGGER instances_version_bump AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON instances
        FOR EACH STATEMENT EXECUTE FUNCTION instances_version_bump();",
    // 4: a version of the enrollment groups (documents of kind 2), so a node's cache of an
    // instance's groups can tell in one read whether it is still current. Row triggers, so
    // that writes of other documents leave it alone. Each write sets a new random value rather
    // than counting on: after a failover that lost commits, a count could come back to a value
    // a node has cached, with other groups behind it.
    "CREATE TABLE IF NOT EXISTS groups_version (
        one SMALLINT PRIMARY KEY CHECK (one = 1),
        version BIGINT NOT NULL
    );
    INSERT INTO groups_version (one, version) VALUES (1, 0) ON CONFLICT DO NOTHING;
    CREATE OR REPLACE FUNCTION groups_version_bump() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN UPDATE groups_version SET version = (random() * 9.2e18)::bigint; RETURN NULL; END $$;
    DROP TRIGGER IF EXISTS groups_version_write ON documents;
    CREATE TRIGGER groups_version_write AFTER INSERT OR UPDATE ON documents
        FOR EACH ROW WHEN (NEW.kind = 2) EXECUTE FUNCTION groups_version_bump();
    DROP TRIGGER IF EXISTS groups_version_delete ON documents;
    CREATE TRIGGER groups_version_delete AFTER DELETE ON documents
        FOR EACH ROW WHEN (OLD.kind = 2) EXECUTE FUNCTION groups_version_bump();
    DROP TRIGGER IF EXISTS groups_version_truncate ON documents;
    CREATE TRIGGER groups_version_truncate AFTER TRUNCATE ON documents
        FOR EACH STATEMENT EXECUTE FUNCTION groups_version_bump();",
    // 5: the instances version takes a new random value at each write too, for the reason given
    // at 4: counted, a replica that took over without the last commits could come back to a
    // value a node has cached with other instances (other policy keys) behind it.
    "CREATE OR REPLACE FUNCTION instances_version_bump() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN UPDATE instances_version SET version = (random() * 9.2e18)::bigint; RETURN NULL; END $$;
    UPDATE instances_version SET version = (random() * 9.2e18)::bigint;",
];

/// The PostgreSQL store.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    timeouts: Timeouts,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("url", &"<redacted>").finish()
    }
}

fn key(s: &str) -> String {
    s.to_ascii_lowercase()
}

/// Etags compare with or without their quotes.
const ETAG_EQ: &str = "btrim(etag, '\"') = btrim($4, '\"')";

impl PgStore {
    /// Connects (a pool of at most `max_connections`, the default [`Timeouts`]) and migrates.
    /// The URL's `sslmode` and `sslrootcert` work as in libpq (see [`SslMode`]).
    pub async fn connect(url: &str, max_connections: usize) -> Result<PgStore, StoreError> {
        PgStore::connect_with(url, max_connections, Timeouts::default()).await
    }

    /// [`PgStore::connect`] with other bounds.
    pub async fn connect_with(url: &str, max_connections: usize, timeouts: Timeouts) -> Result<PgStore, StoreError> {
        let pool = connect::pool_for(url, max_connections, timeouts)?;
        let store = PgStore { pool, timeouts };
        // A hot standby is read-only: its schema comes from the primary (checked, not migrated).
        if store.timed(store.in_recovery()).await? {
            store.timed(store.check_schema()).await?;
        } else {
            store.timed(store.migrate()).await?;
        }
        Ok(store)
    }

    /// The database's role: `Primary` (writable), `Standby` (in recovery, read-only), or
    /// `Unreachable` (an error, or no answer within the operation deadline).
    pub async fn role(&self) -> Role {
        match self.timed(self.in_recovery()).await {
            Ok(false) => Role::Primary,
            Ok(true) => Role::Standby,
            Err(e) => {
                tracing::debug!(error = %dps_core::error::DisplayChain(&e), "database role probe failed");
                Role::Unreachable
            }
        }
    }

    /// A store for watching another database (a peer region's): no connection is made and
    /// nothing is migrated until [`PgStore::role`] or [`PgStore::timeline`] asks.
    pub fn observer(url: &str, timeouts: Timeouts) -> Result<PgStore, StoreError> {
        Ok(PgStore { pool: connect::pool_for(url, 1, timeouts)?, timeouts })
    }

    /// The timeline a primary writes on (each promotion starts a higher one); an error on a
    /// standby.
    pub async fn timeline(&self) -> Result<u32, StoreError> {
        self.timed(async {
            let c = self.client().await?;
            let row = c
                .query_one("SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int", &[])
                .await
                .map_err(driver)?;
            Ok(u32::try_from(row.get::<_, i32>(0)).unwrap_or(0))
        })
        .await
    }

    async fn in_recovery(&self) -> Result<bool, StoreError> {
        let c = self.client().await?;
        let row = c.query_one("SELECT pg_is_in_recovery()", &[]).await.map_err(driver)?;
        Ok(row.get(0))
    }

    /// After the database became primary (promotion): drops every pooled connection (they were
    /// opened on a standby) and brings the schema up to date.
    pub async fn after_promotion(&self) -> Result<(), StoreError> {
        self.pool.retain(|_, _| false);
        self.timed(self.migrate()).await
    }

    async fn check_schema(&self) -> Result<(), StoreError> {
        let c = self.client().await?;
        let version: i32 = match c.query_opt("SELECT version FROM opendps_schema", &[]).await {
            Ok(row) => row.map_or(0, |r| r.get(0)),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => 0,
            Err(e) => return Err(driver(e)),
        };
        let known = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
        if version == 0 {
            return Err(message(
                "the database is a standby with no OpenDPS schema: start a node on the primary first".into(),
            ));
        }
        if version > known {
            return Err(message(format!(
                "the database schema is version {version}, newer than this build knows ({known}); upgrade opendps"
            )));
        }
        Ok(())
    }

    /// One of the version counters the triggers bump (`instances_version`, `groups_version`).
    async fn counter(&self, sql: &'static str) -> Result<u64, StoreError> {
        self.read(|| async {
            let c = self.client().await?;
            let row = c.query_one(sql, &[]).await.map_err(driver)?;
            Ok(row.get::<_, i64>(0) as u64)
        })
        .await
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(connect::pool)
    }

    /// A read under the operation deadline, retried with backoff while the connection was lost
    /// or the server was restarting (idempotent: nothing is written).
    async fn read<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        self.timed(async {
            let mut backoff = std::time::Duration::from_millis(50);
            loop {
                match op().await {
                    Err(e) if PgError::is_retryable(&e) => {
                        tracing::debug!(error = %dps_core::error::DisplayChain(&e), "database read retried");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
                    }
                    r => return r,
                }
            }
        })
        .await
    }

    /// Runs one store operation under the operation deadline.
    async fn timed<T>(&self, op: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeouts.operation, op).await {
            Ok(r) => r,
            Err(_) => {
                Err(message(format!("the database did not answer within {} ms", self.timeouts.operation.as_millis())))
            }
        }
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(driver)?;
        tx.execute("SELECT pg_advisory_xact_lock(7402655)", &[]).await.map_err(driver)?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS opendps_schema (version INTEGER NOT NULL)")
            .await
            .map_err(driver)?;
        let version: i32 =
            tx.query_opt("SELECT version FROM opendps_schema", &[]).await.map_err(driver)?.map_or(0, |r| r.get(0));
        let known = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
        if version > known {
            return Err(message(format!(
                "the database schema is version {version}, newer than this build knows ({known}); upgrade opendps"
            )));
        }
        if version < known {
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(usize::try_from(version).unwrap_or(0)) {
                tx.batch_execute(sql).await.map_err(driver)?;
                tracing::info!(version = i + 1, "store schema migrated");
            }
            tx.execute("DELETE FROM opendps_schema", &[]).await.map_err(driver)?;
            tx.execute("INSERT INTO opendps_schema (version) VALUES ($1)", &[&known]).await.map_err(driver)?;
        }
        // Up to date: nothing was written, so the commit waits for no standby.
        tx.commit().await.map_err(driver)
    }

    /// The outcome of a conditional write that touched `n` rows: none means the precondition
    /// failed (the document exists) or the document is missing.
    async fn written(&self, n: u64, kind: Kind, instance: &str, id: &str) -> Result<(), StoreError> {
        if n == 1 {
            Ok(())
        } else if self.exists(kind, instance, id).await? {
            Err(StoreError::PreconditionFailed)
        } else {
            Err(StoreError::NotFound)
        }
    }

    async fn exists(&self, kind: Kind, instance: &str, id: &str) -> Result<bool, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "SELECT 1 FROM documents WHERE kind = $1 AND instance = $2 AND id_key = $3",
                &[&(kind as i16), &key(instance), &key(id)],
            )
            .await
            .map_err(driver)?;
        Ok(row.is_some())
    }
}

#[async_trait]
impl DocumentStore for PgStore {
    async fn instances(&self) -> Result<Vec<Instance>, StoreError> {
        self.read(|| async {
            let c = self.client().await?;
            let rows = c.query("SELECT doc FROM instances ORDER BY name_key", &[]).await.map_err(driver)?;
            rows.iter().map(|r| from_doc(r.get::<_, &str>(0))).collect()
        })
        .await
    }

    async fn instance(&self, name: &str) -> Result<Option<Instance>, StoreError> {
        self.read(|| async {
            let c = self.client().await?;
            let row =
                c.query_opt("SELECT doc FROM instances WHERE name_key = $1", &[&key(name)]).await.map_err(driver)?;
            row.map(|r| from_doc(r.get::<_, &str>(0))).transpose()
        })
        .await
    }

    async fn instance_by_scope(&self, scope: &IdScope) -> Result<Option<Instance>, StoreError> {
        self.read(|| async {
            let c = self.client().await?;
            let row = c
                .query_opt("SELECT doc FROM instances WHERE id_scope = $1", &[&scope.as_str()])
                .await
                .map_err(driver)?;
            row.map(|r| from_doc(r.get::<_, &str>(0))).transpose()
        })
        .await
    }

    async fn write_instances(&self, writes: &[InstanceWrite]) -> Result<(), StoreError> {
        self.timed(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(driver)?;
            for w in writes {
                match w {
                    InstanceWrite::Create(i) => {
                        let taken = tx
                            .query_opt(
                                "SELECT name_key FROM instances WHERE name_key = $1 OR id_scope = $2 FOR UPDATE",
                                &[&key(&i.name), &i.id_scope.as_str()],
                            )
                            .await
                            .map_err(driver)?;
                        if let Some(row) = taken {
                            let other: String = row.get(0);
                            return Err(if other == key(&i.name) {
                                StoreError::AlreadyExists
                            } else {
                                StoreError::Conflict(format!("ID scope {} is used by {other}", i.id_scope))
                            });
                        }
                        tx.execute(
                            "INSERT INTO instances (name_key, id_scope, etag, doc) VALUES ($1, $2, $3, $4)",
                            &[&key(&i.name), &i.id_scope.as_str(), &i.etag, &to_doc(i)?],
                        )
                        .await
                        .map_err(|e| match e.code() {
                            Some(c) if *c == tokio_postgres::error::SqlState::UNIQUE_VIOLATION => {
                                StoreError::Conflict("instance name or ID scope taken concurrently".into())
                            }
                            _ => driver(e),
                        })?;
                    }
                    InstanceWrite::Update { instance: i, expected_etag } => {
                        let cur = tx
                            .query_opt(
                                "SELECT etag, id_scope FROM instances WHERE name_key = $1 FOR UPDATE",
                                &[&key(&i.name)],
                            )
                            .await
                            .map_err(driver)?
                            .ok_or(StoreError::NotFound)?;
                        let (etag, scope): (String, String) = (cur.get(0), cur.get(1));
                        if !dps_core::store::etag_matches(&etag, expected_etag) {
                            return Err(StoreError::PreconditionFailed);
                        }
                        if scope != i.id_scope.as_str() {
                            return Err(StoreError::Conflict("the ID scope of an instance never changes".into()));
                        }
                        tx.execute(
                            "UPDATE instances SET etag = $2, doc = $3 WHERE name_key = $1",
                            &[&key(&i.name), &i.etag, &to_doc(i)?],
                        )
                        .await
                        .map_err(driver)?;
                    }
                }
            }
            tx.commit().await.map_err(driver)
        })
        .await
    }

    async fn delete_instance(&self, name: &str) -> Result<(), StoreError> {
        self.timed(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(driver)?;
            let n = tx.execute("DELETE FROM instances WHERE name_key = $1", &[&key(name)]).await.map_err(driver)?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            tx.execute("DELETE FROM documents WHERE instance = $1", &[&key(name)]).await.map_err(driver)?;
            tx.commit().await.map_err(driver)
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
        self.read(|| async {
            let c = self.client().await?;
            let row = c
                .query_opt(
                    "SELECT doc FROM documents WHERE kind = $1 AND instance = $2 AND id_key = $3",
                    &[&(kind as i16), &key(instance), &key(id)],
                )
                .await
                .map_err(driver)?;
            Ok(row.map(|r| r.get::<_, String>(0)))
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
        self.timed(async {
            let c = self.client().await?;
            let (id, etag, doc) = (d.id, d.etag, d.json);
            let (k, inst, idk, parent) = (kind as i16, key(instance), key(id), d.parent.map(key));
            match pre {
                Precondition::Any => {
                    c.execute(
                        "INSERT INTO documents (kind, instance, id_key, parent_key, etag, doc) VALUES ($1, $2, $3, $4, $5, $6)
                         ON CONFLICT (kind, instance, id_key) DO UPDATE SET parent_key = EXCLUDED.parent_key, etag = EXCLUDED.etag, doc = EXCLUDED.doc",
                        &[&k, &inst, &idk, &parent, &etag, &doc],
                    )
                    .await
                    .map_err(driver)?;
                    Ok(())
                }
                Precondition::MustNotExist => {
                    let n = c
                        .execute(
                            "INSERT INTO documents (kind, instance, id_key, parent_key, etag, doc) VALUES ($1, $2, $3, $4, $5, $6)
                             ON CONFLICT (kind, instance, id_key) DO NOTHING",
                            &[&k, &inst, &idk, &parent, &etag, &doc],
                        )
                        .await
                        .map_err(driver)?;
                    if n == 1 {
                        Ok(())
                    } else {
                        Err(StoreError::AlreadyExists)
                    }
                }
                Precondition::IfMatch(want) => {
                    let n = if want == "*" {
                        c.execute(
                            "UPDATE documents SET parent_key = $4, etag = $5, doc = $6 WHERE kind = $1 AND instance = $2 AND id_key = $3",
                            &[&k, &inst, &idk, &parent, &etag, &doc],
                        )
                        .await
                    } else {
                        c.execute(
                            "UPDATE documents SET parent_key = $5, etag = $6, doc = $7
                             WHERE kind = $1 AND instance = $2 AND id_key = $3 AND btrim(etag, '\"') = btrim($4, '\"')",
                            &[&k, &inst, &idk, &want, &parent, &etag, &doc],
                        )
                        .await
                    }
                    .map_err(driver)?;
                    self.written(n, kind, instance, id).await
                }
            }
        })
        .await
    }

    async fn delete_doc(&self, kind: Kind, instance: &str, id: &str, pre: Precondition<'_>) -> Result<(), StoreError> {
        self.timed(async {
            let c = self.client().await?;
            let (k, inst, idk) = (kind as i16, key(instance), key(id));
            let n = match pre {
                Precondition::IfMatch(want) if want != "*" => c
                    .execute(
                        &format!(
                            "DELETE FROM documents WHERE kind = $1 AND instance = $2 AND id_key = $3 AND {ETAG_EQ}"
                        ),
                        &[&k, &inst, &idk, &want],
                    )
                    .await
                    .map_err(driver)?,
                _ => c
                    .execute(
                        "DELETE FROM documents WHERE kind = $1 AND instance = $2 AND id_key = $3",
                        &[&k, &inst, &idk],
                    )
                    .await
                    .map_err(driver)?,
            };
            self.written(n, kind, instance, id).await
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
        self.read(|| async {
            let c = self.client().await?;
            let limit = limit.max(1);
            let lim = i64::try_from(limit + 1).unwrap_or(i64::MAX);
            let (k, inst, after) = (kind as i16, key(instance), after.unwrap_or("").to_owned());
            let rows = match parent.map(key) {
                Some(p) => c
                    .query(
                        "SELECT id_key, doc FROM documents WHERE kind = $1 AND instance = $2 AND parent_key = $3 AND id_key > $4
                         ORDER BY id_key LIMIT $5",
                        &[&k, &inst, &p, &after, &lim],
                    )
                    .await,
                None => c
                    .query(
                        "SELECT id_key, doc FROM documents WHERE kind = $1 AND instance = $2 AND id_key > $3 ORDER BY id_key LIMIT $4",
                        &[&k, &inst, &after, &lim],
                    )
                    .await,
            }
            .map_err(driver)?;
            let mut rows: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            let more = rows.len() > limit;
            rows.truncate(limit);
            let continuation = if more { rows.last().map(|(k, _)| k.clone()) } else { None };
            Ok(RawPage { docs: rows.into_iter().map(|(_, d)| d).collect(), continuation })
        })
        .await
    }
}
