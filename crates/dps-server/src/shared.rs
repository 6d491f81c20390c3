//! What the nodes of a shared store share through the database instead of their data
//! directories: the built-in CA's root and intermediate (keys sealed with the operator's node
//! key) and the admin credential (sealed too). The first node to start writes them (first writer
//! wins), every other node adopts them, and each node still issues its own leaf, for its own
//! names, from the shared intermediate. The data directory keeps only a copy.

use dps_attest::secret_box::SecretBox;
use dps_config::Config;
use dps_core::store::{Precondition, SharedDoc, Store, StoreError};
use dps_tls::builtin_ca::{AuthorityPem, BuiltInCaSettings};
use serde_json::{json, Value};

use crate::ServerError;

const CA: &str = "builtin-ca";
const ADMIN: &str = "admin-token";
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
