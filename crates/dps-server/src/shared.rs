//! What the nodes of a shared store share through the database instead of their data
//! directories: the built-in CA's root and intermediate (keys sealed with the operator's node
//! key), the admin credential (sealed too) and the session-ticket keys (sealed). The first node
//! to start writes them (first writer wins), every other node adopts them, and each node still
//! issues its own leaf, for its own names, from the shared intermediate. The data directory
//! keeps only a copy.
//!
//! Ticket keys (docs/tls.md, "Handshake behaviour"): one document holds the current key, the
//! time it was made and the previous key. Every node reads it every `ticket_key_lifetime` / 8
//! (between 1 s and 60 s) into its listeners' [`TicketKeyRing`]; a node whose database is
//! primary replaces a current key older than `ticket_key_lifetime`, keeping the old one as
//! previous (an etag-conditional write: one node wins, the others adopt its key).

use dps_attest::secret_box::SecretBox;
use dps_config::Config;
use dps_core::store::{Precondition, SharedDoc, Store, StoreError};
use dps_tls::builtin_ca::{AuthorityPem, BuiltInCaSettings};
use dps_tls::{TicketKey, TicketKeyRing, TicketKeys};
use serde_json::{json, Value};

use crate::ServerError;

const CA: &str = "builtin-ca";
const ADMIN: &str = "admin-token";
const TICKETS: &str = "tls-ticket-keys";
/// Writers that lose a first-writer race re-read; more than this many losses is a fault.
const ATTEMPTS: usize = 3;

/// The operator's node key: the variable `OPENDPS_NODE_KEY` (the key itself), else
/// `[store] node_key_file`. `Ok(None)` when neither is given.
pub(crate) fn node_key(config: &Config) -> Result<Option<SecretBox>, ServerError> {
    let material = match std::env::var("OPENDPS_NODE_KEY") {
        Ok(v) => zeroize::Zeroizing::new(v.into_bytes()),
        Err(_) => match &config.store.node_key_file {
            Some(p) => zeroize::Zeroizing::new(
                std::fs::read(p).map_err(|source| ServerError::Read { path: p.clone(), source })?,
            ),
            None => return Ok(None),
        },
    };
    SecretBox::from_material(&material).map(Some).map_err(|e| ServerError::NodeKey(e.to_string()))
}

/// The node key of an embedded store the operator gave no key for: `<data_dir>/node.key`,
/// 32 random bytes (base64), created once, 0600, atomically (a second start reads it). The
/// database alone (a backup, a copied file) then reveals no secret; keep the key with backups.
pub(crate) fn local_node_key(data_dir: &std::path::Path) -> Result<SecretBox, ServerError> {
    use dps_core::ports::Entropy;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("node.key");
    if !path.exists() {
        let mut raw = zeroize::Zeroizing::new([0u8; 32]);
        dps_attest::OpensslEntropy.fill(raw.as_mut());
        let text = zeroize::Zeroizing::new(dps_core::base64::encode(raw.as_ref()));
        let tmp = data_dir.join(format!("node.key.{}.tmp", std::process::id()));
        let werr = |source| ServerError::Write { path: tmp.clone(), source };
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(werr)?;
        f.write_all(text.as_bytes()).map_err(werr)?;
        f.sync_all().map_err(werr)?;
        // A hard link never replaces: if another start won the race, its key stays.
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(ServerError::Write { path, source }),
        }
    }
    let material = zeroize::Zeroizing::new(
        std::fs::read(&path).map_err(|source| ServerError::Read { path: path.clone(), source })?,
    );
    SecretBox::from_material(&material).map_err(|e| ServerError::NodeKey(format!("{}: {e}", path.display())))
}

/// The node key a shared store requires, or the error that says how to give it.
pub(crate) fn require_node_key(config: &Config) -> Result<SecretBox, ServerError> {
    node_key(config)?.ok_or_else(|| {
        ServerError::NodeKey(
            "this node shares its store (store.url) with other nodes, and they share the built-in CA and the \
             admin credential sealed with the operator's node key: give every node the same key in the variable \
             OPENDPS_NODE_KEY or in the file named by [store] node_key_file (at least 32 characters, e.g. \
             `openssl rand -base64 32`)"
                .into(),
        )
    })
}

fn store_err(what: &'static str) -> impl FnOnce(StoreError) -> ServerError {
    move |source| ServerError::Shared { what, source }
}

fn sealed(b: &SecretBox, slot: &str, v: &Value, field: &str) -> Result<String, ServerError> {
    let text = v[field].as_str().ok_or_else(|| ServerError::NodeKey(format!("shared {slot}: {field} is missing")))?;
    let plain = b.open(slot, text).map_err(|e| ServerError::NodeKey(format!("shared {slot}: {e}")))?;
    String::from_utf8(plain.to_vec()).map_err(|_| ServerError::NodeKey(format!("shared {slot} is not text")))
}

fn seal(b: &SecretBox, slot: &str, plain: &str) -> Result<String, ServerError> {
    b.seal(slot, plain.as_bytes()).map_err(|e| ServerError::NodeKey(e.to_string()))
}

fn text(v: &Value, field: &str) -> Result<String, ServerError> {
    v[field].as_str().map(str::to_owned).ok_or_else(|| ServerError::NodeKey(format!("shared {CA}: {field} is missing")))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, dps_tls::TlsError> + Send + 'static,
) -> Result<T, ServerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServerError::Tls(dps_tls::TlsError::Invalid(format!("CA task failed: {e}"))))?
        .map_err(ServerError::Tls)
}

/// Makes `settings.dir` hold the deployment's shared root and intermediate: adopts the stored
/// ones, or publishes this node's (created if missing) when no node has yet.
pub(crate) async fn share_builtin_ca(
    store: &dyn Store,
    b: &SecretBox,
    settings: &BuiltInCaSettings,
    now: i64,
) -> Result<(), ServerError> {
    for _ in 0..ATTEMPTS {
        if let Some(doc) = store.shared(CA).await.map_err(store_err("reading the shared CA"))? {
            let body = &doc.body;
            let a = AuthorityPem {
                root: text(body, "root")?,
                root_key: sealed(b, "builtin-ca/root", body, "rootKey")?,
                intermediate: text(body, "intermediate")?,
                intermediate_key: sealed(b, "builtin-ca/intermediate", body, "intermediateKey")?,
            };
            let s = settings.clone();
            if blocking(move || s.import_authority(&a)).await? {
                tracing::info!(dir = %settings.dir.display(), "adopted the shared built-in CA");
            }
            return Ok(());
        }
        let s = settings.clone();
        let a = blocking(move || s.ensure_authority(now).and_then(|()| s.export_authority())).await?;
        let doc = SharedDoc {
            name: CA.into(),
            etag: "1".into(),
            body: json!({
                "root": a.root,
                "rootKey": seal(b, "builtin-ca/root", &a.root_key)?,
                "intermediate": a.intermediate,
                "intermediateKey": seal(b, "builtin-ca/intermediate", &a.intermediate_key)?,
                "keyId": b.key_id(),
            }),
        };
        match store.put_shared(&doc, Precondition::MustNotExist).await {
            Ok(()) => {
                tracing::info!("published this node's built-in CA to the shared store");
                return Ok(());
            }
            Err(StoreError::AlreadyExists) => continue,
            Err(e) => return Err(store_err("publishing the built-in CA")(e)),
        }
    }
    Err(ServerError::NodeKey("the shared built-in CA kept changing while this node read it".into()))
}

/// The deployment's admin credential: the stored one, or `local` (this node's existing or new
/// token) published when no node has yet.
pub(crate) async fn share_admin_token(store: &dyn Store, b: &SecretBox, local: String) -> Result<String, ServerError> {
    for _ in 0..ATTEMPTS {
        if let Some(doc) = store.shared(ADMIN).await.map_err(store_err("reading the shared admin credential"))? {
            return sealed(b, ADMIN, &doc.body, "token");
        }
        let doc = SharedDoc {
            name: ADMIN.into(),
            etag: "1".into(),
            body: json!({ "token": seal(b, ADMIN, &local)?, "keyId": b.key_id() }),
        };
        match store.put_shared(&doc, Precondition::MustNotExist).await {
            Ok(()) => return Ok(local),
            Err(StoreError::AlreadyExists) => continue,
            Err(e) => return Err(store_err("publishing the admin credential")(e)),
        }
    }
    Err(ServerError::NodeKey("the shared admin credential kept changing while this node read it".into()))
}

/// The ticket-key document as read: its keys, when the current one was made, its etag.
struct StoredTickets {
    keys: TicketKeys,
    created: i64,
    etag: String,
}

fn open_ticket_key(b: &SecretBox, v: &Value) -> Result<TicketKey, ServerError> {
    let text = v.as_str().ok_or_else(|| ServerError::NodeKey(format!("shared {TICKETS}: a key is missing")))?;
    let plain = b.open(TICKETS, text).map_err(|e| ServerError::NodeKey(format!("shared {TICKETS}: {e}")))?;
    TicketKey::from_bytes(&plain).map_err(|e| ServerError::NodeKey(format!("shared {TICKETS}: {e}")))
}

fn read_tickets(b: &SecretBox, doc: &SharedDoc) -> Result<StoredTickets, ServerError> {
    let current = open_ticket_key(b, &doc.body["current"])?;
    let previous = match &doc.body["previous"] {
        Value::Null => None,
        v => Some(open_ticket_key(b, v)?),
    };
    let created = doc.body["created"].as_i64().unwrap_or(0);
    Ok(StoredTickets { keys: TicketKeys { current, previous }, created, etag: doc.etag.clone() })
}

fn tickets_doc(b: &SecretBox, etag: String, keys: &TicketKeys, created: i64) -> Result<SharedDoc, ServerError> {
    let sealed = |k: &TicketKey| b.seal(TICKETS, k.as_bytes()).map_err(|e| ServerError::NodeKey(e.to_string()));
    let previous = match &keys.previous {
        Some(k) => Value::String(sealed(k)?),
        None => Value::Null,
    };
    Ok(SharedDoc {
        name: TICKETS.into(),
        etag,
        body: json!({ "current": sealed(&keys.current)?, "created": created, "previous": previous, "keyId": b.key_id() }),
    })
}

fn new_ticket_key() -> Result<TicketKey, ServerError> {
    TicketKey::generate().map_err(ServerError::Tls)
}

/// The deployment's session-ticket keys at start-up: the stored ones, or a new key published
/// when no node has yet. A node that cannot publish (its database is a standby that has none
/// yet) starts with its own key and adopts the shared one when it appears.
pub(crate) async fn share_ticket_keys(
    store: &dyn Store,
    b: &SecretBox,
    now: i64,
) -> Result<std::sync::Arc<TicketKeyRing>, ServerError> {
    for _ in 0..ATTEMPTS {
        if let Some(doc) = store.shared(TICKETS).await.map_err(store_err("reading the shared ticket keys"))? {
            return Ok(TicketKeyRing::new(read_tickets(b, &doc)?.keys));
        }
        let keys = TicketKeys { current: new_ticket_key()?, previous: None };
        match store.put_shared(&tickets_doc(b, "1".into(), &keys, now)?, Precondition::MustNotExist).await {
            Ok(()) => return Ok(TicketKeyRing::new(keys)),
            Err(StoreError::AlreadyExists) => continue,
            Err(e) => {
                tracing::info!(error = %dps_core::error::DisplayChain(&e), "no shared session-ticket keys yet, and none could be published; using this node's own until they appear");
                return Ok(TicketKeyRing::new(keys));
            }
        }
    }
    Err(ServerError::NodeKey("the shared session-ticket keys kept changing while this node read them".into()))
}

/// One look at the shared ticket keys: adopt them, and, when `may_write` (the database is
/// primary) and the current key is `lifetime` old, replace it (the old one stays as previous).
/// `Ok(true)` when the ring changed.
pub(crate) async fn refresh_ticket_keys(
    store: &dyn Store,
    b: &SecretBox,
    ring: &TicketKeyRing,
    lifetime: std::time::Duration,
    now: i64,
    may_write: bool,
) -> Result<bool, ServerError> {
    let Some(doc) = store.shared(TICKETS).await.map_err(store_err("reading the shared ticket keys"))? else {
        if may_write {
            // A node that started on a standby with no document, now primary: publish its key.
            let keys = TicketKeys { current: ring.get().current.clone(), previous: None };
            match store.put_shared(&tickets_doc(b, "1".into(), &keys, now)?, Precondition::MustNotExist).await {
                Ok(()) | Err(StoreError::AlreadyExists) => {}
                Err(e) => return Err(store_err("publishing the session-ticket keys")(e)),
            }
        }
        return Ok(false);
    };
    let stored = read_tickets(b, &doc)?;
    let age = now.saturating_sub(stored.created);
    if may_write && age >= i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX) {
        let keys = TicketKeys { current: new_ticket_key()?, previous: Some(stored.keys.current.clone()) };
        let etag = stored.etag.parse::<u64>().map_or(1, |n| n.wrapping_add(1)).to_string();
        match store.put_shared(&tickets_doc(b, etag, &keys, now)?, Precondition::IfMatch(&stored.etag)).await {
            Ok(()) => {
                tracing::info!(key = %keys.current.name_hex(), "session-ticket key rotated for every node");
                return Ok(ring.set(keys));
            }
            // Another node rotated first: adopt its key on the next look.
            Err(StoreError::PreconditionFailed) => {}
            Err(e) => return Err(store_err("rotating the session-ticket keys")(e)),
        }
    }
    Ok(ring.set(stored.keys))
}

/// How often nodes look at the shared ticket keys: an eighth of their lifetime, 1 s to 60 s.
pub(crate) fn ticket_key_poll(lifetime: std::time::Duration) -> std::time::Duration {
    (lifetime / 8).clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(60))
}

/// [`refresh_ticket_keys`] every [`ticket_key_poll`] until `shutdown`; a failure is logged
/// once per run of failures and the keys in use stay.
pub(crate) async fn ticket_key_loop(
    store: std::sync::Arc<dyn Store>,
    b: std::sync::Arc<SecretBox>,
    ring: std::sync::Arc<TicketKeyRing>,
    lifetime: std::time::Duration,
    services: dps_core::service::Services,
    clock: std::sync::Arc<dyn dps_core::ports::Clock>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(ticket_key_poll(lifetime));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut failing = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let may_write = services.role() == dps_core::service::Role::Primary;
        let now = dps_tls::unix(clock.as_ref());
        match refresh_ticket_keys(store.as_ref(), &b, &ring, lifetime, now, may_write).await {
            Ok(changed) => {
                if changed {
                    tracing::debug!(key = %ring.get().current.name_hex(), "adopted the shared session-ticket keys");
                }
                failing = false;
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %dps_core::error::DisplayChain(&e), "could not read or rotate the shared session-ticket keys; keeping the current ones");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use dps_core::store::memory::MemoryStore;
    use std::time::Duration;

    fn key() -> SecretBox {
        SecretBox::from_material(b"shared ticket key test node key, 32+ characters").unwrap()
    }

    #[tokio::test]
    async fn ticket_keys_are_shared_sealed_and_rotated_once_per_lifetime() {
        let store = MemoryStore::default();
        let b = key();
        let a = share_ticket_keys(&store, &b, 1000).await.unwrap();
        let other = share_ticket_keys(&store, &b, 1001).await.unwrap();
        assert_eq!(a.get(), other.get(), "the second node adopts the first node's key");
        let doc = store.shared(TICKETS).await.unwrap().unwrap();
        let raw = doc.body.to_string();
        assert!(doc.body["current"].as_str().is_some_and(|s| s.starts_with("v1:")), "sealed at rest: {raw}");
        assert!(!raw.contains(&a.get().current.name_hex()), "no key bytes in the clear");

        let life = Duration::from_secs(3600);
        // Not due: nothing changes, even on a primary.
        assert!(!refresh_ticket_keys(&store, &b, &a, life, 4000, true).await.unwrap());
        // Due, but a standby never writes.
        assert!(!refresh_ticket_keys(&store, &b, &other, life, 5000, false).await.unwrap());
        let first = a.get().current.clone();
        // Due on a primary: a new current key, the old one kept as previous.
        assert!(refresh_ticket_keys(&store, &b, &a, life, 5000, true).await.unwrap());
        assert_eq!(a.get().previous.as_ref(), Some(&first));
        assert_ne!(a.get().current, first);
        // The other node adopts it on its next look, and does not rotate again.
        assert!(refresh_ticket_keys(&store, &b, &other, life, 5001, true).await.unwrap());
        assert_eq!(a.get(), other.get());
        // A node sealing with another key cannot read them.
        let stranger = SecretBox::from_material(b"another node key, also 32+ characters long").unwrap();
        assert!(share_ticket_keys(&store, &stranger, 6000).await.is_err());
        assert_eq!(ticket_key_poll(Duration::from_secs(43_200)), Duration::from_secs(60));
        assert_eq!(ticket_key_poll(Duration::from_secs(2)), Duration::from_secs(1));
    }
}
