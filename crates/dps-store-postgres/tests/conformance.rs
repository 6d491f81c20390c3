//! The generic store rules of dps-core, on a real PostgreSQL server: a throwaway cluster of its
//! own (`test_cluster`), or `OPENDPS_TEST_POSTGRES_URL` when set. Each run uses a schema of its
//! own, dropped at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dps_store_postgres::test_cluster::test_database;
use dps_store_postgres::PgStore;

#[tokio::test(flavor = "multi_thread")]
async fn postgres_store_passes_the_conformance_suite() {
    let (base, _cluster) = test_database().unwrap_or_else(|e| panic!("{e}"));
    let (admin, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is required for this test: {e}"));
    tokio::spawn(conn);
    let schema = format!("opendps_conf_{}", std::process::id());
    admin.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")).await.unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-csearch_path%3D{schema}");

    let store = PgStore::connect(&url, 4).await.expect("connect and migrate");
    dps_core::store::conformance::run(&store).await;
    // A second node migrating the same database changes nothing and sees the same data.
    let other = PgStore::connect(&url, 2).await.expect("second node");
    use dps_core::store::Store;
    assert_eq!(other.instances().await.unwrap().len(), 2);
    // An instance written through one node moves the instances version the other reads (the
    // trigger, whoever writes).
    let before = other.instances_version().await.unwrap();
    assert_eq!(store.instances_version().await.unwrap(), before);
    let mut a = other.instance("dps-a").await.unwrap().expect("dps-a");
    let expected_etag = std::mem::replace(&mut a.etag, "\"dps-a-3\"".into());
    a.sku.capacity = 3;
    store.write_instances(&[dps_core::store::InstanceWrite::Update { instance: a, expected_etag }]).await.unwrap();
    let seen = other.instances_version().await.unwrap();
    assert_ne!(seen, before, "the other node sees the change");
    // A replica that took over without that commit holds the version from before it. Its next
    // write of another instance must not hand out the version the nodes saw for the lost one.
    admin.batch_execute(&format!("UPDATE {schema}.instances_version SET version = {before}")).await.unwrap();
    let mut b = other.instance("dps-b").await.unwrap().expect("dps-b");
    let expected_etag = std::mem::replace(&mut b.etag, "\"dps-b-2\"".into());
    b.sku.capacity = 5;
    store.write_instances(&[dps_core::store::InstanceWrite::Update { instance: b, expected_etag }]).await.unwrap();
    let after = other.instances_version().await.unwrap();
    assert!(after != seen && after != before, "a version is not handed out twice: {before} {seen} {after}");

    // The registration quota is one bucket per instance for every node: 3 per minute, taken
    // twice through this node and once through the other, is spent for both.
    use dps_core::service::RegistrationQuota;
    let t0 = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
    let (qa, qb) = (store.quota(3), other.quota(3));
    assert!(qa.take("dps-a", t0).await.unwrap().is_ok());
    assert!(qa.take("DPS-A", t0).await.unwrap().is_ok());
    assert!(qb.take("dps-a", t0).await.unwrap().is_ok());
    assert_eq!(qb.take("dps-a", t0).await.unwrap(), Err(std::time::Duration::from_secs(20)));
    assert!(qa.take("dps-a", t0).await.unwrap().is_err());
    assert!(qa.take("dps-b", t0).await.unwrap().is_ok(), "instances are independent");
    assert!(qb.take("dps-a", t0 + std::time::Duration::from_secs(20)).await.unwrap().is_ok(), "refilled");
    assert!(store.quota(0).take("dps-a", t0).await.unwrap().is_ok(), "0 = unlimited");
    admin.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
}
