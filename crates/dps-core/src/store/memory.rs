//! A [`DocumentStore`] in memory: for the domain's own unit tests (no files, no sockets) and
//! for anyone embedding the core who needs no persistence. It passes the same conformance
//! suite as the SQLite and PostgreSQL backends.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{from_doc, to_doc, DocWrite, DocumentStore, InstanceWrite, Kind, Precondition, RawPage, StoreError};
use crate::model::{IdScope, Instance};

/// A document: (lower-cased parent, etag, JSON).
type Doc = (Option<String>, String, String);

#[derive(Clone, Debug, Default)]
struct State {
    /// Lower-cased name → (id scope, etag, JSON).
    instances: BTreeMap<String, (String, String, String)>,
    /// (kind, lower-cased instance, lower-cased id) → (lower-cased parent, etag, JSON).
    docs: BTreeMap<(u8, String, String), Doc>,
    /// Bumped by every instance write and delete.
    instances_version: u64,
    groups_version: u64,
}

/// The in-memory store.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut s = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut s)
    }
}

fn key(s: &str) -> String {
    s.to_ascii_lowercase()
}

fn check(pre: Precondition<'_>, current: Option<&str>) -> Result<(), StoreError> {
    match (pre, current) {
        (Precondition::Any, _) | (Precondition::MustNotExist, None) => Ok(()),
        (Precondition::MustNotExist, Some(_)) => Err(StoreError::AlreadyExists),
        (Precondition::IfMatch(_), None) => Err(StoreError::NotFound),
        (Precondition::IfMatch(want), Some(have)) if want == "*" || super::etag_matches(have, want) => Ok(()),
        (Precondition::IfMatch(_), Some(_)) => Err(StoreError::PreconditionFailed),
    }
}

#[async_trait::async_trait]
impl DocumentStore for MemoryStore {
    async fn instances(&self) -> Result<Vec<Instance>, StoreError> {
        self.with(|s| s.instances.values().map(|(_, _, d)| from_doc(d)).collect())
    }

    async fn instance(&self, name: &str) -> Result<Option<Instance>, StoreError> {
        self.with(|s| s.instances.get(&key(name)).map(|(_, _, d)| from_doc(d)).transpose())
    }

    async fn instance_by_scope(&self, scope: &IdScope) -> Result<Option<Instance>, StoreError> {
        self.with(|s| {
            s.instances.values().find(|(sc, _, _)| sc == scope.as_str()).map(|(_, _, d)| from_doc(d)).transpose()
        })
    }

    async fn write_instances(&self, writes: &[InstanceWrite]) -> Result<(), StoreError> {
        self.with(|s| {
            // All or nothing: apply to a copy, keep it only if every write applied.
            let mut next = s.instances.clone();
            for w in writes {
                match w {
                    InstanceWrite::Create(i) => {
                        if next.contains_key(&key(&i.name)) {
                            return Err(StoreError::AlreadyExists);
                        }
                        if let Some((other, _)) = next.iter().find(|(_, (sc, _, _))| sc == i.id_scope.as_str()) {
                            return Err(StoreError::Conflict(format!("ID scope {} is used by {other}", i.id_scope)));
                        }
                        next.insert(key(&i.name), (i.id_scope.as_str().to_owned(), i.etag.clone(), to_doc(i)?));
                    }
                    InstanceWrite::Update { instance: i, expected_etag } => {
                        let (scope, etag, _) = next.get(&key(&i.name)).ok_or(StoreError::NotFound)?;
                        if !super::etag_matches(etag, expected_etag) {
                            return Err(StoreError::PreconditionFailed);
                        }
                        if scope != i.id_scope.as_str() {
                            return Err(StoreError::Conflict("the ID scope of an instance never changes".into()));
                        }
                        next.insert(key(&i.name), (scope.clone(), i.etag.clone(), to_doc(i)?));
                    }
                }
            }
            s.instances = next;
            s.instances_version += 1;
            Ok(())
        })
    }

    async fn delete_instance(&self, name: &str) -> Result<(), StoreError> {
        let name = key(name);
        self.with(|s| {
            s.instances.remove(&name).ok_or(StoreError::NotFound)?;
            s.instances_version += 1;
            s.groups_version += 1;
            s.docs.retain(|(_, inst, _), _| *inst != name);
            Ok(())
        })
    }

    async fn instances_version(&self) -> Result<u64, StoreError> {
        self.with(|s| Ok(s.instances_version))
    }

    async fn groups_version(&self) -> Result<u64, StoreError> {
        self.with(|s| Ok(s.groups_version))
    }

    async fn get_doc(&self, kind: Kind, instance: &str, id: &str) -> Result<Option<String>, StoreError> {
        self.with(|s| Ok(s.docs.get(&(kind as u8, key(instance), key(id))).map(|(_, _, d)| d.clone())))
    }

    async fn put_doc(
        &self,
        kind: Kind,
        instance: &str,
        d: DocWrite<'_>,
        pre: Precondition<'_>,
    ) -> Result<(), StoreError> {
        let k = (kind as u8, key(instance), key(d.id));
        self.with(|s| {
            check(pre, s.docs.get(&k).map(|(_, e, _)| e.as_str()))?;
            s.docs.insert(k, (d.parent.map(key), d.etag.to_owned(), d.json.to_owned()));
            s.groups_version += u64::from(kind == Kind::Group);
            Ok(())
        })
    }

    async fn delete_doc(&self, kind: Kind, instance: &str, id: &str, pre: Precondition<'_>) -> Result<(), StoreError> {
        let k = (kind as u8, key(instance), key(id));
        self.with(|s| {
            let current = s.docs.get(&k).map(|(_, e, _)| e.clone()).ok_or(StoreError::NotFound)?;
            check(pre, Some(&current))?;
            s.docs.remove(&k);
            s.groups_version += u64::from(kind == Kind::Group);
            Ok(())
        })
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
        self.with(|s| {
            let mut rows: Vec<(String, String)> = s
                .docs
                .iter()
                .filter(|((k, i, id), (p, _, _))| {
                    *k == kind as u8 && *i == instance && *id > after && (parent.is_none() || *p == parent)
                })
                .take(limit + 1)
                .map(|((_, _, id), (_, _, d))| (id.clone(), d.clone()))
                .collect();
            let more = rows.len() > limit;
            rows.truncate(limit);
            let continuation = if more { rows.last().map(|(k, _)| k.clone()) } else { None };
            Ok(RawPage { docs: rows.into_iter().map(|(_, d)| d).collect(), continuation })
        })
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_store_passes_the_conformance_suite() {
        super::super::conformance::run(&super::MemoryStore::new()).await;
    }
}
