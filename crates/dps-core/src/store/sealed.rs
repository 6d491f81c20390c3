//! Secrets at rest: [`SealedStore`] wraps any [`DocumentStore`] and seals the secret values of
//! what it writes (keys, linked hubs' connection strings, webhook URLs) with the
//! [`SecretSealer`] port, and opens them again on read. A value not in sealed form is read as it
//! is, so a database written before sealing keeps working and is sealed on its next write.
//! Every other field (ids, etags, queried keys) stays as it was, so backends index as before.
//! Each value is sealed for its slot (the kind and the field), so a sealed value cannot be moved
//! to a field of another kind.

use std::sync::Arc;

use serde_json::Value;

use super::{DocWrite, DocumentStore, InstanceWrite, Kind, Precondition, RawPage, StoreError};
use crate::model::{IdScope, Instance};
use crate::ports::{SealError, SecretSealer};

/// The prefix of a sealed value as stored.
pub const SEALED_PREFIX: &str = "sealed:v1:";

/// A [`DocumentStore`] whose secrets are sealed at rest.
#[derive(Debug)]
pub struct SealedStore<D> {
    inner: D,
    sealer: Arc<dyn SecretSealer>,
}

/// A secret field: a path of object keys, where `[]` steps into every element of an array.
type Path = &'static [&'static str];

/// The secret fields of each kind of document (JSON names).
fn secret_paths(kind: Kind) -> &'static [Path] {
    match kind {
        Kind::Enrollment | Kind::Group => &[
            &["attestation", "symmetricKey", "primaryKey"],
            &["attestation", "symmetricKey", "secondaryKey"],
            &["customAllocationDefinition", "webhookUrl"],
        ],
        Kind::Hub => &[&["policies", "[]", "primaryKey"], &["policies", "[]", "secondaryKey"]],
        Kind::HubDevice => &[&["primaryKey"], &["secondaryKey"]],
        Kind::TpmKeys => &[&["keys", "[]", "key"]],
        // Shared documents seal their own secrets (dps-server's shared.rs); the rest hold none.
        Kind::Registration | Kind::Certificate | Kind::Shared | Kind::Offer => &[],
    }
}

fn store_error(e: SealError) -> StoreError {
    StoreError::corrupt(e)
}

fn slot(kind: &str, path: Path) -> String {
    format!("store/{kind}/{}", path.join("."))
}

/// Applies `f` to every string at `path` under `v`.
fn visit(
    v: &mut Value,
    path: &[&str],
    f: &mut dyn FnMut(&mut String) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let Some((first, rest)) = path.split_first() else {
        if let Value::String(s) = v {
            f(s)?;
        }
        return Ok(());
    };
    if *first == "[]" {
        if let Value::Array(items) = v {
            for item in items {
                visit(item, rest, f)?;
            }
        }
    } else if let Some(next) = v.get_mut(*first) {
        visit(next, rest, f)?;
    }
    Ok(())
}

impl<D: DocumentStore> SealedStore<D> {
    pub fn new(inner: D, sealer: Arc<dyn SecretSealer>) -> Self {
        SealedStore { inner, sealer }
    }

    /// The backend underneath.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    fn seal_value(&self, slot: &str, s: &mut String) -> Result<(), StoreError> {
        if !s.is_empty() && !s.starts_with(SEALED_PREFIX) {
            let sealed = self.sealer.seal(slot, s.as_bytes()).map_err(store_error)?;
            *s = format!("{SEALED_PREFIX}{sealed}");
        }
        Ok(())
    }

    fn open_value(&self, slot: &str, s: &mut String) -> Result<(), StoreError> {
        if let Some(sealed) = s.strip_prefix(SEALED_PREFIX) {
            let plain = self.sealer.open(slot, sealed).map_err(store_error)?;
            *s = String::from_utf8(plain).map_err(|_| store_error(SealError::Damaged))?;
        }
        Ok(())
    }

    fn doc_paths(&self, kind: Kind, json: &str, seal: bool) -> Result<Option<String>, StoreError> {
        let paths = secret_paths(kind);
        if paths.is_empty() {
            return Ok(None);
        }
        let mut v: Value = serde_json::from_str(json).map_err(StoreError::corrupt)?;
        for path in paths {
            let slot = slot(&format!("{kind:?}"), path);
            visit(&mut v, path, &mut |s| {
                if seal {
                    self.seal_value(&slot, s)
                } else {
                    self.open_value(&slot, s)
                }
            })?;
        }
        serde_json::to_string(&v).map(Some).map_err(StoreError::corrupt)
    }

    fn open_doc(&self, kind: Kind, json: String) -> Result<String, StoreError> {
        Ok(self.doc_paths(kind, &json, false)?.unwrap_or(json))
    }

    fn instance_secrets(
        &self,
        i: &mut Instance,
        f: fn(&Self, &str, &mut String) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for p in &mut i.authorization_policies {
            f(self, "store/Instance/authorizationPolicies.[].primaryKey", &mut p.primary_key)?;
            f(self, "store/Instance/authorizationPolicies.[].secondaryKey", &mut p.secondary_key)?;
        }
        for h in &mut i.iot_hubs {
            f(self, "store/Instance/iotHubs.[].connectionString", &mut h.connection_string)?;
        }
        Ok(())
    }

    fn open_instance(&self, mut i: Instance) -> Result<Instance, StoreError> {
        self.instance_secrets(&mut i, Self::open_value)?;
        Ok(i)
    }

    fn seal_instance(&self, i: &Instance) -> Result<Instance, StoreError> {
        let mut i = i.clone();
        self.instance_secrets(&mut i, Self::seal_value)?;
        Ok(i)
    }
}

#[async_trait::async_trait]
impl<D: DocumentStore> DocumentStore for SealedStore<D> {
    async fn instances(&self) -> Result<Vec<Instance>, StoreError> {
        self.inner.instances().await?.into_iter().map(|i| self.open_instance(i)).collect()
    }

    async fn instance(&self, name: &str) -> Result<Option<Instance>, StoreError> {
        self.inner.instance(name).await?.map(|i| self.open_instance(i)).transpose()
    }

    async fn instance_by_scope(&self, scope: &IdScope) -> Result<Option<Instance>, StoreError> {
        self.inner.instance_by_scope(scope).await?.map(|i| self.open_instance(i)).transpose()
    }

    async fn write_instances(&self, writes: &[InstanceWrite]) -> Result<(), StoreError> {
        let sealed = writes
            .iter()
            .map(|w| {
                Ok(match w {
                    InstanceWrite::Create(i) => InstanceWrite::Create(self.seal_instance(i)?),
                    InstanceWrite::Update { instance, expected_etag } => InstanceWrite::Update {
                        instance: self.seal_instance(instance)?,
                        expected_etag: expected_etag.clone(),
                    },
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.inner.write_instances(&sealed).await
    }

    async fn delete_instance(&self, name: &str) -> Result<(), StoreError> {
        self.inner.delete_instance(name).await
    }

    async fn instances_version(&self) -> Result<u64, StoreError> {
        self.inner.instances_version().await
    }

    async fn groups_version(&self) -> Result<u64, StoreError> {
        self.inner.groups_version().await
    }

    async fn get_doc(&self, kind: Kind, instance: &str, id: &str) -> Result<Option<String>, StoreError> {
        self.inner.get_doc(kind, instance, id).await?.map(|d| self.open_doc(kind, d)).transpose()
    }

    async fn put_doc(
        &self,
        kind: Kind,
        instance: &str,
        doc: DocWrite<'_>,
        pre: Precondition<'_>,
    ) -> Result<(), StoreError> {
        match self.doc_paths(kind, doc.json, true)? {
            Some(json) => self.inner.put_doc(kind, instance, DocWrite { json: &json, ..doc }, pre).await,
            None => self.inner.put_doc(kind, instance, doc, pre).await,
        }
    }

    async fn delete_doc(&self, kind: Kind, instance: &str, id: &str, pre: Precondition<'_>) -> Result<(), StoreError> {
        self.inner.delete_doc(kind, instance, id, pre).await
    }

    async fn page_docs(
        &self,
        kind: Kind,
        instance: &str,
        parent: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<RawPage, StoreError> {
        let page = self.inner.page_docs(kind, instance, parent, after, limit).await?;
        let docs = page.docs.into_iter().map(|d| self.open_doc(kind, d)).collect::<Result<_, _>>()?;
        Ok(RawPage { docs, continuation: page.continuation })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::base64;
    use crate::store::memory::MemoryStore;
    use crate::store::Store;

    /// Reversible but visibly different: the secret never appears as it is.
    #[derive(Debug)]
    struct TestSealer;

    impl SecretSealer for TestSealer {
        fn seal(&self, slot: &str, plain: &[u8]) -> Result<String, SealError> {
            let mut v = slot.as_bytes().to_vec();
            v.push(0);
            v.extend(plain.iter().map(|b| b ^ 0x5a));
            Ok(base64::encode(&v))
        }
        fn open(&self, slot: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
            let v = base64::decode(sealed).ok_or(SealError::Damaged)?;
            let rest = v.strip_prefix(slot.as_bytes()).and_then(|r| r.strip_prefix(&[0])).ok_or(SealError::Damaged)?;
            Ok(rest.iter().map(|b| b ^ 0x5a).collect())
        }
    }

    fn sealed(inner: MemoryStore) -> SealedStore<MemoryStore> {
        SealedStore::new(inner, Arc::new(TestSealer))
    }

    #[tokio::test]
    async fn passes_the_conformance_suite() {
        crate::store::conformance::run(&sealed(MemoryStore::new())).await;
    }

    #[tokio::test]
    async fn secrets_are_sealed_in_the_raw_documents_and_legacy_plaintext_reads() {
        let s = sealed(MemoryStore::new());
        let secret = "c2VjcmV0LWVucm9sbG1lbnQta2V5";
        let hub_key = "aHViLXBvbGljeS1rZXktc2VjcmV0";
        let mut i = crate::store::conformance::instance("dps1", 1);
        i.iot_hubs.push(crate::model::LinkedHub {
            name: "h.example".into(),
            connection_string: format!("HostName=h.example;SharedAccessKeyName=o;SharedAccessKey={hub_key}"),
            location: "westus".into(),
            allocation_weight: None,
            apply_allocation_policy: None,
        });
        Store::write_instances(&s, &[InstanceWrite::Create(i.clone())]).await.unwrap();
        let mut e = crate::store::conformance::enrollment("dev1", "\"1\"");
        e.attestation.symmetric_key.as_mut().unwrap().primary_key = Some(secret.into());
        s.put_enrollment("dps1", &e, Precondition::Any).await.unwrap();

        let raw_instance = serde_json::to_string(&Store::instance(s.inner(), "dps1").await.unwrap().unwrap()).unwrap();
        assert!(!raw_instance.contains(hub_key), "{raw_instance}");
        assert!(raw_instance.contains(SEALED_PREFIX));
        let raw = s.inner().get_doc(Kind::Enrollment, "dps1", "dev1").await.unwrap().unwrap();
        assert!(!raw.contains(secret) && raw.contains(SEALED_PREFIX), "{raw}");

        // Read back through the wrapper: as written.
        assert_eq!(Store::instance(&s, "dps1").await.unwrap().unwrap(), i);
        assert_eq!(s.enrollment("dps1", "dev1").await.unwrap().unwrap(), e);
        let page = s.page_docs(Kind::Enrollment, "dps1", None, None, 10).await.unwrap();
        assert!(page.docs[0].contains(secret));

        // A plaintext document written before sealing reads as it is.
        let mut legacy = crate::store::conformance::enrollment("old", "\"1\"");
        legacy.attestation.symmetric_key.as_mut().unwrap().primary_key = Some(secret.into());
        s.inner().put_enrollment("dps1", &legacy, Precondition::Any).await.unwrap();
        assert_eq!(s.enrollment("dps1", "old").await.unwrap().unwrap(), legacy);

        // A sealed value moved to another field does not open.
        let sealed_key = s.sealer.seal("store/Hub/policies.[].primaryKey", b"x").unwrap();
        let mut moved = legacy.clone();
        moved.attestation.symmetric_key.as_mut().unwrap().primary_key = Some(format!("{SEALED_PREFIX}{sealed_key}"));
        s.inner().put_enrollment("dps1", &moved, Precondition::Any).await.unwrap();
        assert!(matches!(s.enrollment("dps1", "old").await, Err(StoreError::Corrupt(_))));
    }
}
