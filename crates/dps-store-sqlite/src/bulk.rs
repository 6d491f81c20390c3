//! Bulk writes: many documents in one transaction, for imports and benchmark fixtures, where a
//! transaction per document (what the `Store` port does) would take many minutes for a million.

use dps_core::store::{OwnedDoc, StoreError};
use rusqlite::params;

use crate::{key, SqliteStore};

impl SqliteStore {
    /// Writes `docs` into instance `instance` in one transaction: each created, or replaced if
    /// it exists (no precondition is checked). All or nothing. The instance itself is not
    /// checked either: callers write into an instance they know exists.
    pub async fn put_many(&self, instance: &str, docs: Vec<OwnedDoc>) -> Result<usize, StoreError> {
        let instance = key(instance);
        // Thousands of rows in one transaction: on the writer thread, never a caller's.
        self.inner.writer.write_queued(move |tx| {
            let mut put = tx
                .prepare_cached(
                    "INSERT INTO documents (kind, instance, id_key, parent_key, etag, doc) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (kind, instance, id_key) DO UPDATE SET parent_key = excluded.parent_key, etag = excluded.etag, doc = excluded.doc",
                )
                .map_err(StoreError::unavailable)?;
            for d in &docs {
                put.execute(params![d.kind as i64, instance, key(&d.id), d.parent.as_deref().map(key), d.etag, d.json])
                    .map_err(StoreError::unavailable)?;
            }
            Ok(docs.len())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use dps_core::model::{DeviceRegistrationState, RegistrationRecord, RegistrationStatus};
    use dps_core::store::{OwnedDoc, Precondition, Store};

    use crate::{Durability, SqliteStore};

    fn record(id: &str, group: Option<&str>, etag: &str) -> RegistrationRecord {
        RegistrationRecord {
            state: DeviceRegistrationState {
                registration_id: id.to_owned(),
                created_date_time_utc: None,
                assigned_hub: Some("hub-a.azure-devices.net".into()),
                device_id: Some(id.to_owned()),
                status: RegistrationStatus::Assigned,
                substatus: None,
                error_code: None,
                error_message: None,
                last_updated_date_time_utc: None,
                etag: Some(etag.to_owned()),
                payload: None,
                extra: Default::default(),
            },
            enrollment_group_id: group.map(str::to_owned),
            tls: None,
            operation_id: None,
            initial_twin: None,
            twin_action: None,
        }
    }

    /// Documents written in bulk read back through the `Store` port exactly like documents
    /// written one by one: same ids (case-insensitive), same parent, replaced on conflict.
    #[tokio::test(flavor = "multi_thread")]
    async fn bulk_rows_read_back_like_store_rows() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("s.db"), Durability::Normal).expect("open");
        store.put_registration("OpenDPS", &record("Dev-0", None, "\"a\""), Precondition::Any).await.expect("one");
        let docs = vec![
            OwnedDoc::of(&record("dev-0", None, "\"b\"")).expect("doc"),
            OwnedDoc::of(&record("Dev-1", Some("Group-A"), "\"c\"")).expect("doc"),
            OwnedDoc::of(&record("dev-2", Some("group-a"), "\"d\"")).expect("doc"),
        ];
        assert_eq!(store.put_many("opendps", docs).await.expect("bulk"), 3);
        let r0 = store.registration("opendps", "DEV-0").await.expect("read").expect("dev-0 exists");
        assert_eq!(r0.state.etag.as_deref(), Some("\"b\""), "replaced, not duplicated");
        let in_group = store.registrations("OpenDPS", Some("GROUP-A"), None, 10).await.expect("page");
        let ids: Vec<_> = in_group.items.iter().map(|r| r.state.registration_id.as_str()).collect();
        assert_eq!(ids, ["Dev-1", "dev-2"]);
        assert_eq!(store.registrations("opendps", None, None, 10).await.expect("page").items.len(), 3);
    }
}
