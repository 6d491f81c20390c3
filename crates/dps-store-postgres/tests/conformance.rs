//! The generic store rules of dps-core, on the machine's real PostgreSQL server.
//! URL: `OPENDPS_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`); each run
//! uses a schema of its own, dropped at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dps_store_postgres::PgStore;

fn base_url() -> String {
    std::env::var("OPENDPS_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn with_schema(name: &str) -> (String, tokio_postgres::Client) {
    let (client, conn) = tokio_postgres::connect(&base_url(), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is required at {} for this test: {e}", base_url()));
    tokio::spawn(conn);
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}")).await.unwrap();
    let sep = if base_url().contains('?') { '&' } else { '?' };
    (format!("{}{sep}options=-csearch_path%3D{name}", base_url()), client)
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_store_passes_the_conformance_suite() {
    let schema = format!("opendps_conf_{}", std::process::id());
    let (url, admin) = with_schema(&schema).await;
    let store = PgStore::connect(&url, 4).await.expect("connect and migrate");
    dps_core::store::conformance::run(&store).await;
    // A second node migrating the same database changes nothing and sees the same data.
    let other = PgStore::connect(&url, 2).await.expect("second node");
    use dps_core::store::Store;
    assert_eq!(other.instances().await.unwrap().len(), 2);
    admin.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
}
