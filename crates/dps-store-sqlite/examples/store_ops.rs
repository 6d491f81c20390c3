//! A bounded, registration-shaped sequence of store calls, for counting instructions per
//! registration under callgrind (bench/results/2026-12-01-sqlite-prepare-cached.md):
//! `store_ops N` opens a fresh database in a temporary directory and, N times, looks up an
//! enrollment (absent), its group (present) and the registration (absent), writes the
//! registration twice (assigning, then assigned) and reads it back (the poll).
use dps_core::store::{DocWrite, DocumentStore, Kind, Precondition};
use dps_store_sqlite::{Durability, SqliteStore};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args().nth(1).unwrap_or_else(|| "1000".into()).parse()?;
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(&dir.path().join("opendps.db"), Durability::Normal)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    rt.block_on(async {
        let group = DocWrite { id: "bench-sym", parent: None, etag: "1", json: r#"{"g":1}"# };
        store.put_doc(Kind::Group, "dps", group, Precondition::Any).await?;
        for i in 0..n {
            let id = format!("device-{i:08}");
            let json = format!(r#"{{"registrationId":"{id}","status":"assigned"}}"#);
            assert!(store.get_doc(Kind::Enrollment, "dps", &id).await?.is_none());
            assert!(store.get_doc(Kind::Group, "dps", "bench-sym").await?.is_some());
            assert!(store.get_doc(Kind::Registration, "dps", &id).await?.is_none());
            for etag in ["1", "2"] {
                let doc = DocWrite { id: &id, parent: Some("bench-sym"), etag, json: &json };
                store.put_doc(Kind::Registration, "dps", doc, Precondition::Any).await?;
            }
            assert!(store.get_doc(Kind::Registration, "dps", &id).await?.is_some());
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    println!("{n} registration-shaped sequences done");
    Ok(())
}
