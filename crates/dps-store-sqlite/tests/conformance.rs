//! The generic store rules of dps-core, on a real SQLite file.
use dps_store_sqlite::{Durability, SqliteStore};

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_store_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("opendps.db"), Durability::Normal).expect("open");
    dps_core::store::conformance::run(&store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn data_survives_reopening_and_migrations_are_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("opendps.db");
    {
        let store = SqliteStore::open(&path, Durability::Full).expect("open");
        dps_core::store::conformance::run(&store).await;
    }
    let again = SqliteStore::open(&path, Durability::Normal).expect("reopen");
    use dps_core::store::Store;
    assert_eq!(again.instances().await.expect("list").len(), 2, "instances persisted across reopen");
}
