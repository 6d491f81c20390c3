//! Who is calling the service and management APIs (docs/protocol.md, "Service API
//! authentication"): a SAS token signed by one of an instance's shared access policies, or the
//! management API's bearer credential.

use std::collections::HashMap;
use std::sync::Arc;

use super::Services;
use crate::error::{Error, Result};
use crate::model::{AccessPolicy, AccessRight, Instance};

/// Compares secrets in constant time (lengths compared first, which leaks only the length).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

fn unauthorized(m: impl Into<String>) -> Error {
    Error::Unauthorized(m.into())
}

/// Every instance's shared access policies by policy name (lower-cased), built from one read of
/// every instance and used while the store's [`instances_version`] is the one it was built at
/// (docs/protocol.md, "Service API authentication").
///
/// [`instances_version`]: crate::store::Store::instances_version
#[derive(Debug)]
struct PolicyIndex {
    version: u64,
    /// Policy name → (instance name, that instance's policy of that name).
    by_policy: HashMap<String, Vec<(String, AccessPolicy)>>,
}

impl PolicyIndex {
    fn build(version: u64, instances: Vec<Instance>) -> Self {
        let mut by_policy: HashMap<String, Vec<(String, AccessPolicy)>> = HashMap::new();
        for inst in instances {
            for p in inst.authorization_policies {
                by_policy.entry(p.key_name.to_ascii_lowercase()).or_default().push((inst.name.clone(), p));
            }
        }
        PolicyIndex { version, by_policy }
    }
}

/// The [`PolicyIndex`] shared by every clone of [`Services`]; rebuilt by a caller that finds it
/// stale (never locked across a store read).
#[derive(Debug, Default)]
pub(crate) struct PolicyIndexCell(std::sync::Mutex<Option<Arc<PolicyIndex>>>);

impl PolicyIndexCell {
    fn current(&self, version: u64) -> Option<Arc<PolicyIndex>> {
        let cell = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        cell.as_ref().filter(|i| i.version == version).cloned()
    }

    fn set(&self, index: Arc<PolicyIndex>) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(index);
    }
}

impl Services {
    /// Authenticates a service API call (`authorization`: the `Authorization` header) for
    /// `right`, and resolves the instance it addresses.
    ///
    /// The instance is the one whose name prefixes the addressed host (`mydps.example.com`) or
    /// the token's resource, looked up by name; or else the one whose policy key signed the
    /// token: connection strings printed by opendps carry the server's address, shared by every
    /// instance, so the key is what tells instances apart. The token's resource must be one of
    /// this server's own host names (or `{instance}.…`), never merely the `Host` the client
    /// chose to send.
    pub async fn service_caller(
        &self,
        authorization: Option<&str>,
        host: &str,
        right: AccessRight,
    ) -> Result<Instance> {
        self.service_caller_rights(authorization, host, right).await.map(|(i, _)| i)
    }

    /// [`Services::service_caller`], with every right of the policy that signed the token (a
    /// reader is shown less than a writer).
    pub async fn service_caller_rights(
        &self,
        authorization: Option<&str>,
        host: &str,
        right: AccessRight,
    ) -> Result<(Instance, Vec<AccessRight>)> {
        let token = authorization
            .ok_or_else(|| unauthorized("the request has no Authorization header (SharedAccessSignature)"))?;
        let claims = self.crypto.sas_claims(token, self.clock.now()).map_err(|e| unauthorized(e.to_string()))?;
        let skn = claims.key_name.clone().unwrap_or_default();
        let host = host.to_ascii_lowercase();
        let resource = claims.resource.to_ascii_lowercase();
        let resource_host = resource.split('/').next().unwrap_or("").to_owned();
        let named =
            |i: &Instance, h: &str| h.strip_prefix(&i.name.to_ascii_lowercase()).is_some_and(|r| r.starts_with('.'));
        // An instance named by the host or the token is found by name: a bad token costs one
        // lookup, not a pass over every instance.
        let mut candidates = Vec::new();
        for h in [&host, &resource_host] {
            if let Some((label, _)) = h.split_once('.') {
                if let Some(i) = self.store.instance(label).await? {
                    candidates.push(i);
                    break;
                }
            }
        }
        if candidates.is_empty() {
            // The instances one of whose policies named `skn` signed the token (normally one),
            // read afresh and checked again below.
            for name in self.instances_signing(token, &skn).await? {
                if let Some(i) = self.store.instance(&name).await? {
                    candidates.push(i);
                }
            }
        }
        for inst in candidates {
            let Some(policy) = inst.authorization_policies.iter().find(|p| p.key_name.eq_ignore_ascii_case(&skn))
            else {
                continue;
            };
            // Both keys are tried, so timing does not tell which one matched.
            let primary = self.crypto.sas_signed_with(token, &policy.primary_key);
            let secondary = self.crypto.sas_signed_with(token, &policy.secondary_key);
            if !(primary | secondary) {
                continue;
            }
            let own_host = named(&inst, &resource_host) || self.host_names.contains(&resource_host);
            if !own_host {
                return Err(unauthorized(format!(
                    "the SAS token is for {:?}, which is not a host name of this service",
                    crate::device::excerpt(&resource_host, 100)
                )));
            }
            if !policy.rights.contains(&right) {
                return Err(unauthorized(format!(
                    "shared access policy {} does not have the {} right",
                    policy.key_name,
                    right.as_str()
                )));
            }
            let rights = policy.rights.clone();
            return Ok((inst, rights));
        }
        Err(unauthorized("the SAS token was not signed by a shared access policy of this service"))
    }

    /// The names of the instances whose policy `skn` signed `token` (both keys of every such
    /// policy tried), from the policy index: one store read of the instances version, and of
    /// every instance only when that changed.
    async fn instances_signing(&self, token: &str, skn: &str) -> Result<Vec<String>> {
        let version = self.store.instances_version().await?;
        let index = match self.policy_index.current(version) {
            Some(index) => index,
            None => {
                // Built from instances read after the version: if they changed meanwhile, the
                // next call sees another version and builds again.
                let index = Arc::new(PolicyIndex::build(version, self.store.instances().await?));
                self.policy_index.set(index.clone());
                index
            }
        };
        let Some(policies) = index.by_policy.get(&skn.to_ascii_lowercase()) else {
            return Ok(Vec::new());
        };
        Ok(policies
            .iter()
            .filter(|(_, p)| {
                let primary = self.crypto.sas_signed_with(token, &p.primary_key);
                let secondary = self.crypto.sas_signed_with(token, &p.secondary_key);
                primary | secondary
            })
            .map(|(name, _)| name.clone())
            .collect())
    }

    /// Checks the management API's bearer credential (`authorization`: the `Authorization`
    /// header; the scheme is case-insensitive).
    pub fn check_admin(&self, authorization: Option<&str>) -> Result<()> {
        let given = authorization
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .ok_or_else(|| {
                unauthorized("the management API needs Authorization: Bearer <admin token> (opendps reads it from the data directory)")
            })?;
        match &self.admin_token {
            Some(t) if ct_eq(given.as_bytes(), t.as_bytes()) => Ok(()),
            _ => Err(unauthorized("the admin token is not valid")),
        }
    }

    /// Every instance (management API listing).
    pub async fn instances(&self) -> Result<Vec<Instance>> {
        Ok(self.store.instances().await?)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::ct_eq;
    use crate::model::AccessRight;

    /// 30 instances, each with the default owner policy; returns the services and the crypto.
    async fn many() -> (super::Services, std::sync::Arc<crate::testing::TextCrypto>) {
        let (s, _, crypto) = crate::testing::services();
        for n in 0..30 {
            let body = serde_json::json!({ "name": format!("dps{n:02}"), "location": "local", "sku": {"name": "S1", "capacity": 1}, "properties": {} });
            s.put_instance("rg", "local", body, None).await.expect("instance");
        }
        (s, crypto)
    }

    fn token(sr: &str, key: &str) -> String {
        let expiry = std::time::SystemTime::now() + Duration::from_secs(86_400 * 365 * 30);
        crate::testing::token(sr, key, expiry).replace("skn=registration", "skn=provisioningserviceowner")
    }

    #[tokio::test]
    async fn a_bad_token_for_a_named_instance_is_checked_against_that_instance_only() {
        let (s, crypto) = many().await;
        let s = s.with_host_names(vec!["dps.example".into()]);
        // Addressed by host name, or by the token's resource: one instance's keys are tried.
        for (host, sr) in [("dps07.dps.example", "dps.example"), ("dps.example", "dps07.dps.example")] {
            crypto.sas_checks.store(0, Ordering::Relaxed);
            let r = s.service_caller(Some(&token(sr, "wrong")), host, AccessRight::EnrollmentRead).await;
            assert!(r.is_err());
            assert_eq!(crypto.sas_checks.load(Ordering::Relaxed), 2, "{host} / {sr}: primary and secondary of one");
        }
        // The right key of that instance is accepted.
        let inst = s.instance("dps07").await.expect("accepted");
        let key = inst.authorization_policies[0].primary_key.clone();
        let t = token("dps07.dps.example", &key);
        assert_eq!(
            s.service_caller(Some(&t), "dps.example", AccessRight::EnrollmentRead).await.expect("accepted").name,
            "dps07"
        );
        // Through the shared host name the key finds its instance.
        let t = token("dps.example", &key);
        assert_eq!(
            s.service_caller(Some(&t), "dps.example", AccessRight::EnrollmentRead).await.expect("accepted").name,
            "dps07"
        );
    }

    #[tokio::test]
    async fn through_the_shared_host_name_the_key_picks_the_instance() {
        let (s, crypto) = many().await;
        let s = s.with_host_names(vec!["dps.example".into()]);
        for name in ["dps00", "dps13", "dps29"] {
            let inst = s.instance(name).await.expect("instance");
            // Either key of the instance's policy finds it.
            for key in [&inst.authorization_policies[0].primary_key, &inst.authorization_policies[0].secondary_key] {
                let t = token("dps.example", key);
                let got = s.service_caller(Some(&t), "dps.example", AccessRight::EnrollmentWrite).await;
                assert_eq!(got.expect("accepted").name, name);
            }
        }
        // A bad token is refused after both keys of every policy of that name were tried (each
        // of the 30 instances has one).
        crypto.sas_checks.store(0, Ordering::Relaxed);
        let r =
            s.service_caller(Some(&token("dps.example", "wrong")), "dps.example", AccessRight::EnrollmentRead).await;
        assert!(matches!(r, Err(crate::error::Error::Unauthorized(_))), "{r:?}");
        assert_eq!(crypto.sas_checks.load(Ordering::Relaxed), 60);
        // A policy name no instance has costs no key check at all.
        crypto.sas_checks.store(0, Ordering::Relaxed);
        let t = token("dps.example", "wrong").replace("skn=provisioningserviceowner", "skn=nosuchpolicy");
        assert!(s.service_caller(Some(&t), "dps.example", AccessRight::EnrollmentRead).await.is_err());
        assert_eq!(crypto.sas_checks.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn instances_created_changed_or_deleted_by_another_node_are_seen_at_once() {
        // Two nodes sharing one store: `a` changes instances, `b` authenticates.
        let store: std::sync::Arc<dyn crate::store::Store> =
            std::sync::Arc::new(crate::store::memory::MemoryStore::new());
        let node = || {
            let (_, clock, crypto) = crate::testing::services();
            let s = super::Services::new(
                store.clone(),
                clock,
                std::sync::Arc::new(crate::testing::CountingEntropy::default()),
                crypto.clone(),
                crypto,
            );
            s.with_host_names(vec!["dps.example".into()])
        };
        let (a, b) = (node(), node());
        let create = |name: &str| {
            let body = serde_json::json!({ "name": name, "location": "local", "sku": {"name": "S1", "capacity": 1}, "properties": {} });
            let a = a.clone();
            async move { a.put_instance("rg", "local", body, None).await.expect("instance") }
        };
        let key_of = |i: &crate::model::Instance| i.authorization_policies[0].primary_key.clone();
        let caller = |t: String| {
            let b = b.clone();
            async move { b.service_caller(Some(&t), "dps.example", AccessRight::EnrollmentRead).await }
        };
        create("first").await;
        let first = a.instance("first").await.expect("first");
        assert_eq!(caller(token("dps.example", &key_of(&first))).await.expect("first").name, "first");
        // Created on `a`: `b`, whose index was built before, knows it on the next call.
        create("second").await;
        let second = a.instance("second").await.expect("second");
        assert_eq!(caller(token("dps.example", &key_of(&second))).await.expect("second").name, "second");
        // A key rotated on `a`: the old one is refused by `b` at once, the new one accepted.
        let mut rotated = second.clone();
        rotated.authorization_policies[0].primary_key = "rotated-key".into();
        rotated.etag = "\"rotated\"".into();
        let update = crate::store::InstanceWrite::Update { instance: rotated, expected_etag: second.etag.clone() };
        store.write_instances(&[update]).await.expect("rotated");
        assert!(caller(token("dps.example", &key_of(&second))).await.is_err(), "the old key is refused");
        assert_eq!(caller(token("dps.example", "rotated-key")).await.expect("new key").name, "second");
        // Deleted on `a`: its key is refused by `b` at once; the other instance still works.
        a.delete_instance("second").await.expect("deleted");
        let r = caller(token("dps.example", "rotated-key")).await;
        assert!(matches!(r, Err(crate::error::Error::Unauthorized(_))), "{r:?}");
        assert_eq!(caller(token("dps.example", &key_of(&first))).await.expect("first").name, "first");
    }

    #[test]
    fn constant_time_equality() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
