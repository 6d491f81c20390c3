//! The growth benchmark's fixture: N individual enrollments (symmetric key) and their
//! registration records, written into a stopped server's SQLite file.
//!
//! This is a benchmark fixture, not an operator path: the server must NOT be running. The rows
//! go in through the store crate itself (`SqliteStore::put_many`, many documents per
//! transaction), so they are exactly what the server writes; the `Store` trait commits one row
//! per call, which makes a million rows take many minutes. `--seed-via store` uses the trait
//! instead (slow, for checking).
//!
//! Registration ids are spread over the key space like real serial numbers (a hash of the
//! index), so lookups and inserts land all over the B-tree, not at its end. Device keys are
//! derived from the id (HMAC-SHA512 under a fixed bench secret): 64 bytes, as DPS makes them,
//! and the load generator can recompute them without storing a million keys.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use dps_core::model::{
    AttestationMechanism, AttestationType, DeviceRegistrationState, IndividualEnrollment, ProvisioningStatus,
    RegistrationRecord, RegistrationStatus, ReprovisionPolicy, SymmetricKeyAttestation,
};
use dps_core::store::{OwnedDoc, Precondition, Store};
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;

thread_local! {
    /// [`bench_tls_facts`], built once per seeding thread.
    static TLS_FACTS: dps_core::tls::RecordFacts = bench_tls_facts();
}

/// The hub every seeded registration is assigned to (the one the bench links).
pub const HUB: &str = "hub-a.azure-devices.net";
const SECRET_PRIMARY: &[u8] = b"opendps-bench growth fixture primary";
const SECRET_SECONDARY: &[u8] = b"opendps-bench growth fixture secondary";

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The registration id of seeded device `i`.
pub fn id(i: u64) -> String {
    format!("grow-{:016x}-{i}", splitmix64(i))
}

fn hmac512(secret: &[u8], data: &str) -> anyhow::Result<String> {
    let k = PKey::hmac(secret)?;
    let mut s = Signer::new(MessageDigest::sha512(), &k)?;
    s.update(data.as_bytes())?;
    Ok(dps_core::base64::encode(&s.sign_to_vec()?))
}

/// The primary key (base64, 64 bytes) of seeded device `id`.
pub fn primary_key(id: &str) -> anyhow::Result<String> {
    hmac512(SECRET_PRIMARY, id)
}

/// The `k`-th of a pseudo-random walk over 0..n that starts where `salt` says: distinct for
/// k < n (the step is coprime with n), so that no two devices of one load share an id (the
/// same device registering twice at once would supersede its own operation).
pub fn spread(salt: u64, k: u64, n: u64) -> u64 {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    let n = n.max(1);
    let step = [7919u64, 7927, 7933, 7937, 7949, 7951].into_iter().find(|p| gcd(*p, n) == 1).unwrap_or(1);
    (splitmix64(salt ^ 0x5eed) % n + (k % n) * (step % n)) % n
}

/// A quoted 32-hex-digit etag, as the service makes them, derived from the id.
fn etag(id: &str, salt: u64) -> String {
    let h = id.bytes().fold(salt, |h, b| splitmix64(h ^ u64::from(b)));
    format!("\"{:016x}{:016x}\"", h, splitmix64(h))
}

/// The enrollment of seeded device `id`, as the service would have stored it.
pub fn enrollment(id: &str, now: &str) -> anyhow::Result<IndividualEnrollment> {
    Ok(IndividualEnrollment {
        registration_id: id.to_owned(),
        device_id: None,
        registration_state: None,
        attestation: AttestationMechanism {
            kind: AttestationType::SymmetricKey,
            tpm: None,
            x509: None,
            symmetric_key: Some(SymmetricKeyAttestation {
                primary_key: Some(primary_key(id)?),
                secondary_key: Some(hmac512(SECRET_SECONDARY, id)?),
            }),
        },
        optional_device_information: None,
        capabilities: Some(Default::default()),
        iot_hub_host_name: None,
        initial_twin: None,
        etag: Some(etag(id, 1)),
        provisioning_status: Some(ProvisioningStatus::Enabled),
        reprovision_policy: Some(ReprovisionPolicy { update_hub_assignment: true, migrate_device_data: true }),
        created_date_time_utc: Some(now.to_owned()),
        last_updated_date_time_utc: Some(now.to_owned()),
        allocation_policy: None,
        iot_hubs: None,
        custom_allocation_definition: None,
        extra: Default::default(),
    })
}

/// The handshake facts a registration through the bench's own TLS client records (its
/// ClientHello; TLS 1.2, ECDHE-RSA with AES-256-GCM), as the server writes them: the record
/// keeps what was negotiated and the offer's id; the offer is stored once
/// (docs/performance.md, "Offers stored once"). Seeded records must be the size real ones are:
/// when they were smaller, each re-registration of a seeded device grew its row and split B-tree
/// pages, which no re-registration of a real device does (docs/performance.md, "Documents in a
/// rowid table").
fn bench_tls_facts() -> dps_core::tls::RecordFacts {
    use dps_core::tls::{facts_for_record, HandshakeFacts, Negotiated, Offered, PeerCertificates, TlsVersion};
    let offered = Offered {
        legacy_version: 0x0303,
        supported_versions: None,
        cipher_suites: vec![
            0xC02C, 0xC030, 0x009F, 0xCCA9, 0xCCA8, 0xCCAA, 0xC02B, 0xC02F, 0x009E, 0xC024, 0xC028, 0x006B, 0xC023,
            0xC027, 0x0067, 0xC00A, 0xC014, 0x0039, 0xC009, 0xC013, 0x0033, 0x009D, 0x009C, 0x003D, 0x003C, 0x0035,
            0x002F, 0x00FF,
        ],
        groups: vec![0x0017],
        signature_algorithms: vec![
            0x0403, 0x0503, 0x0603, 0x0807, 0x0808, 0x0809, 0x080A, 0x080B, 0x0804, 0x0805, 0x0806, 0x0401, 0x0501,
            0x0601, 0x0303, 0x0301, 0x0302, 0x0402, 0x0502, 0x0602,
        ],
        sni: None,
        alpn: Vec::new(),
    };
    let negotiated = Negotiated {
        version: TlsVersion::Tls12,
        cipher_suite: 0xC030,
        group: Some("secp256r1".into()),
        alpn: None,
        resumed: false,
        client_certificate: false,
    };
    facts_for_record(&HandshakeFacts { offered: Some(offered), negotiated }, &PeerCertificates::default())
}

/// An operation id of the server's shape (`4.<16 hex>.<GUID>`), fixed by `id`.
fn operation_id(id: &str) -> String {
    let h = id.bytes().fold(7, |h, b| splitmix64(h ^ u64::from(b)));
    let g = format!("{:016x}{:016x}", splitmix64(h), splitmix64(h ^ 1));
    format!("4.{h:016x}.{}-{}-{}-{}-{}", &g[0..8], &g[8..12], &g[12..16], &g[16..20], &g[20..32])
}

/// The registration record of seeded device `id`: assigned to [`HUB`], with the handshake
/// facts, the operation id and the etag (base64 of a quoted one) a real first registration
/// records, so that it is the size of the record the server writes (a re-registration then
/// changes its length only by what a real one changes: the substatus and the twin action).
pub fn registration(id: &str, now: &str) -> RegistrationRecord {
    RegistrationRecord {
        state: DeviceRegistrationState {
            registration_id: id.to_owned(),
            created_date_time_utc: Some(now.to_owned()),
            assigned_hub: Some(HUB.to_owned()),
            device_id: Some(id.to_owned()),
            status: RegistrationStatus::Assigned,
            substatus: Some("initialAssignment".to_owned()),
            error_code: None,
            error_message: None,
            last_updated_date_time_utc: Some(now.to_owned()),
            etag: Some(dps_core::base64::encode(etag(id, 3).as_bytes())),
            payload: None,
            extra: Default::default(),
        },
        enrollment_group_id: None,
        tls: Some(TLS_FACTS.with(|f| f.facts.clone())),
        operation_id: Some(operation_id(id)),
        initial_twin: None,
        twin_action: Some("initial".to_owned()),
    }
}

/// Stores the offer every seeded registration names, as a registration's first use of it does.
async fn put_offer(store: &dyn Store) -> anyhow::Result<()> {
    if let Some(offer) = TLS_FACTS.with(|f| f.offer.clone()) {
        store.put_offer(&offer).await?;
    }
    Ok(())
}

/// What seeding did.
#[derive(Clone, Debug, Default)]
pub struct Seeded {
    pub enrollments: u64,
    pub registrations: u64,
    pub seconds: f64,
    pub db_bytes: u64,
}

/// Size of the database with its WAL.
pub fn db_bytes(db: &Path) -> u64 {
    let wal = db.with_extension("db-wal");
    [db.to_owned(), wal].iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum()
}

/// Writes devices 0..`enrolled` as enrollments and 0..`registered` also as registrations into
/// instance `instance` of the stopped server's database `db`, `batch` devices per transaction,
/// giving up after `max`.
pub async fn seed_bulk(
    db: &Path,
    instance: &str,
    enrolled: u64,
    registered: u64,
    batch: u64,
    max: Duration,
) -> anyhow::Result<Seeded> {
    let t0 = Instant::now();
    let store = dps_store_sqlite::SqliteStore::open(db, dps_store_sqlite::Durability::Normal)
        .with_context(|| format!("opening {}", db.display()))?;
    let now = dps_core::time::format_utc(std::time::SystemTime::now());
    put_offer(&store).await?;
    let mut out = Seeded::default();
    let mut last_note = Instant::now();
    // Devices are written in the order of their keys (`id` sorts as `splitmix64` does, and
    // `splitmix64` is one-to-one), as a bulk import would: each transaction then appends to the
    // B-trees. In device order the keys are random, every transaction touches pages all over the
    // B-trees, and the rate fell from 7 000 to 1 300 devices/s by 2 M devices.
    let mut order: Vec<u64> = (0..enrolled).collect();
    order.sort_unstable_by_key(|&k| splitmix64(k));
    let mut i = 0;
    while i < enrolled {
        if t0.elapsed() > max {
            bail!("seeding stopped at the time bound ({} s) after {i} of {enrolled} devices", max.as_secs());
        }
        let end = (i + batch.max(1)).min(enrolled);
        let mut docs = Vec::new();
        for &k in &order[usize::try_from(i)?..usize::try_from(end)?] {
            let id = id(k);
            docs.push(OwnedDoc::of(&enrollment(&id, &now)?)?);
            out.enrollments += 1;
            if k < registered {
                docs.push(OwnedDoc::of(&registration(&id, &now))?);
                out.registrations += 1;
            }
        }
        store.put_many(instance, docs).await?;
        i = end;
        if last_note.elapsed() > Duration::from_secs(5) {
            eprintln!("  seeding: {i}/{enrolled} devices in {:.0} s", t0.elapsed().as_secs_f64());
            last_note = Instant::now();
        }
    }
    // Closing the last connection checkpoints the WAL into the database file.
    drop(store);
    sync_to_disk(db)?;
    out.seconds = t0.elapsed().as_secs_f64();
    out.db_bytes = db_bytes(db);
    Ok(out)
}

/// The same rows through the store's own `Store` trait (one transaction per row).
pub async fn seed_store(
    db: &Path,
    instance: &str,
    enrolled: u64,
    registered: u64,
    max: Duration,
) -> anyhow::Result<Seeded> {
    let t0 = Instant::now();
    let store = dps_store_sqlite::SqliteStore::open(db, dps_store_sqlite::Durability::Normal)?;
    let now = dps_core::time::format_utc(std::time::SystemTime::now());
    put_offer(&store).await?;
    let mut out = Seeded::default();
    for k in 0..enrolled {
        if t0.elapsed() > max {
            bail!("seeding stopped at the time bound ({} s) after {k} of {enrolled} devices", max.as_secs());
        }
        let id = id(k);
        store.put_enrollment(instance, &enrollment(&id, &now)?, Precondition::Any).await?;
        out.enrollments += 1;
        if k < registered {
            store.put_registration(instance, &registration(&id, &now), Precondition::Any).await?;
            out.registrations += 1;
        }
    }
    drop(store);
    sync_to_disk(db)?;
    out.seconds = t0.elapsed().as_secs_f64();
    out.db_bytes = db_bytes(db);
    Ok(out)
}

/// Writes the seeded database to disk before anything is measured, so that no write-back of
/// the seeding can overlap the first round. SQLite syncs the file after its last checkpoint
/// already; this makes sure of it whatever the store's settings. (One run's first round was far
/// slower than the others, `bench/results/2026-12-03-growth-10m-seed-as-server.md`; its cause
/// was not found, and the run with this sync had under 1 MB dirty when seeding ended.)
fn sync_to_disk(db: &Path) -> anyhow::Result<()> {
    for path in [db.to_owned(), db.with_extension("db-wal")] {
        match std::fs::File::open(&path) {
            Ok(f) => f.sync_all().with_context(|| format!("syncing {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        }
    }
    Ok(())
}

/// Reads devices back through the store's own code: they must deserialize, with their key.
pub async fn verify(db: &Path, instance: &str, ids: &[String], registered: &[String]) -> anyhow::Result<()> {
    let store = dps_store_sqlite::SqliteStore::open(db, dps_store_sqlite::Durability::Normal)?;
    for id in ids {
        let e = store.enrollment(instance, id).await?.with_context(|| format!("seeded enrollment {id} not found"))?;
        let key = e.attestation.symmetric_key.and_then(|k| k.primary_key);
        if key.as_deref() != Some(primary_key(id)?.as_str()) {
            bail!("seeded enrollment {id} has the wrong key");
        }
    }
    for id in registered {
        let r =
            store.registration(instance, id).await?.with_context(|| format!("seeded registration {id} not found"))?;
        if r.state.assigned_hub.as_deref() != Some(HUB) {
            bail!("seeded registration {id} is not assigned to {HUB}");
        }
        let offer =
            r.tls.and_then(|t| t.offer_ref()).with_context(|| format!("seeded registration {id} names no offer"))?;
        store
            .offer(&offer)
            .await?
            .with_context(|| format!("the offer seeded registration {id} names is not stored"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A seeded record has the fields, and their lengths, of one the server writes.
    #[test]
    fn seeded_records_are_shaped_like_the_servers() {
        let r = registration(&id(5), "2026-12-03T12:00:00.0000000Z");
        let op = r.operation_id.expect("an operation id");
        let parts: Vec<&str> = op.split('.').collect();
        assert_eq!(parts.len(), 3, "{op}");
        assert_eq!((parts[0], parts[1].len()), ("4", 16));
        assert_eq!(parts[2].split('-').map(str::len).collect::<Vec<_>>(), [8, 4, 4, 4, 12]);
        let etag = r.state.etag.expect("an etag");
        let quoted = String::from_utf8(dps_core::base64::decode(&etag).expect("base64")).expect("text");
        assert_eq!(quoted.len(), 34);
        assert!(quoted.starts_with('"') && quoted.ends_with('"'));
        assert!(r.tls.and_then(|t| t.offer_ref()).is_some(), "the record names the bench's offer");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn bulk_rows_read_back_through_the_store_like_store_rows() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
        let s = seed_bulk(&a, "OpenDPS", 30, 20, 7, Duration::from_secs(60)).await?;
        assert_eq!((s.enrollments, s.registrations), (30, 20));
        let b_seeded = seed_store(&b, "OpenDPS", 30, 20, Duration::from_secs(60)).await?;
        assert_eq!((b_seeded.enrollments, b_seeded.registrations), (30, 20));
        let ids: Vec<String> = (0..30).map(id).collect();
        verify(&a, "opendps", &ids, &ids[..20]).await?;
        verify(&b, "opendps", &ids, &ids[..20]).await?;
        // Device 25 is enrolled but not registered.
        let (sa, sb) = (
            dps_store_sqlite::SqliteStore::open(&a, dps_store_sqlite::Durability::Normal)?,
            dps_store_sqlite::SqliteStore::open(&b, dps_store_sqlite::Durability::Normal)?,
        );
        assert!(sa.registration("opendps", &ids[25]).await?.is_none());
        // Both paths wrote the same documents (but for their timestamps), as the store lists them.
        let enrollments = |s: dps_core::store::Page<IndividualEnrollment>| -> Vec<(String, Option<String>, String)> {
            s.items
                .into_iter()
                .map(|e| (e.registration_id, e.etag, serde_json::to_string(&e.attestation).unwrap_or_default()))
                .collect()
        };
        assert_eq!(
            enrollments(sa.enrollments("opendps", None, 100).await?),
            enrollments(sb.enrollments("opendps", None, 100).await?)
        );
        let registrations =
            |s: dps_core::store::Page<RegistrationRecord>| -> Vec<(String, Option<String>, Option<String>)> {
                s.items.into_iter().map(|r| (r.state.registration_id, r.state.etag, r.state.assigned_hub)).collect()
            };
        let (ra, rb) = (
            registrations(sa.registrations("opendps", None, None, 100).await?),
            registrations(sb.registrations("opendps", None, None, 100).await?),
        );
        assert_eq!(ra.len(), 20);
        assert_eq!(ra, rb);
        Ok(())
    }

    #[test]
    fn ids_sort_as_their_splitmix64_values() {
        // `seed_bulk` writes devices in key order by sorting on `splitmix64` alone.
        let mut by_mix: Vec<u64> = (0..2000).collect();
        by_mix.sort_unstable_by_key(|&k| splitmix64(k));
        let mut by_id: Vec<u64> = (0..2000).collect();
        by_id.sort_by_cached_key(|&k| id(k).to_lowercase());
        assert_eq!(by_mix, by_id);
    }

    #[test]
    fn ids_and_keys_are_stable_and_spread() -> anyhow::Result<()> {
        assert_eq!(id(1), id(1));
        assert_ne!(id(1)[..10], id(2)[..10]);
        assert!(dps_core::model::validate_registration_id(&id(123)).is_ok());
        let k = primary_key("x")?;
        assert_eq!(dps_core::base64::decode(&k).map(|b| b.len()), Some(64));
        for n in [1u64, 10, 7919, 10_000] {
            let picked: std::collections::BTreeSet<u64> = (0..n).map(|k| spread(3, k, n)).collect();
            assert_eq!(picked.len() as u64, n, "a walk over {n} repeats");
            assert!(picked.iter().all(|&i| i < n));
        }
        Ok(())
    }
}
