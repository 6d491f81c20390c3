//! The cost of a service-API token check as instances grow
//! (bench/results/2026-12-02-service-token.md): `service_token [INSTANCES] [CALLS]` (default
//! 10001 and 200) writes INSTANCES instances, each with the default policy
//! `provisioningserviceowner` and keys of its own, into a fresh SQLite database in a temporary
//! directory, then times CALLS calls of `Services::service_caller` (the real OpenSSL-backed
//! crypto) for each kind of token and prints the median and 90th percentile of each, and the CPU
//! time the whole process spent per call (every thread's, from `/proc/self/task/*/schedstat`:
//! on a shared machine the CPU time is the figure that does not depend on the load):
//! - `bad, shared host`: a wrong key, `sr` and `Host` the server's shared host name (no instance
//!   named, so every instance's policy of that name is tried);
//! - `good, shared host`: the key of the last instance, through the shared host name;
//! - `bad, named host`: a wrong key, `Host` `{instance}.{host}` (one instance tried).
//!
//! The first call of each kind is not counted (it builds what later calls reuse).
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dps_core::model::{AccessPolicy, AccessRight, IdScope, Instance, ServiceAllocationPolicy, Sku};
use dps_core::service::Services;
use dps_core::store::{DocumentStore, InstanceWrite};
use dps_store_sqlite::{Durability, SqliteStore};

const HOST: &str = "dps.bench.example";

/// Nanoseconds on CPU of every thread of this process (Linux).
fn cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn instance(n: u32) -> Instance {
    let key = |which: u8| {
        let mut k = [which; 32];
        k[..4].copy_from_slice(&n.to_be_bytes());
        dps_core::base64::encode(&k)
    };
    Instance {
        name: format!("dps{n:05}"),
        resource_group: "rg".into(),
        location: "local".into(),
        sku: Sku { name: "S1".into(), capacity: 1 },
        tags: Default::default(),
        id_scope: IdScope::from_bytes(n.to_be_bytes()),
        min_tls_version: None,
        allocation_policy: ServiceAllocationPolicy::Hashed,
        iot_hubs: vec![],
        authorization_policies: vec![AccessPolicy {
            key_name: "provisioningserviceowner".into(),
            primary_key: key(1),
            secondary_key: key(2),
            rights: AccessRight::ALL.to_vec(),
        }],
        enable_data_residency: false,
        public_network_access: "Enabled".into(),
        ip_filter_rules: vec![],
        state: "Active".into(),
        created: "2026-12-02T00:00:00Z".into(),
        updated: "2026-12-02T00:00:00Z".into(),
        etag: format!("\"{n}\""),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let instances: u32 = args.next().unwrap_or_else(|| "10001".into()).parse()?;
    let calls: usize = args.next().unwrap_or_else(|| "200".into()).parse()?;
    let dir = tempfile::tempdir()?;
    let store = Arc::new(SqliteStore::open(&dir.path().join("opendps.db"), Durability::Normal)?);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    rt.block_on(async {
        let all: Vec<u32> = (0..instances).collect();
        for chunk in all.chunks(1000) {
            let writes: Vec<InstanceWrite> = chunk.iter().map(|&n| InstanceWrite::Create(instance(n))).collect();
            store.write_instances(&writes).await?;
        }
        let s = Services::new(
            store.clone(),
            Arc::new(dps_attest::SystemClock),
            Arc::new(dps_attest::OpensslEntropy),
            Arc::new(dps_attest::OpensslX509),
            Arc::new(dps_attest::OpensslDeviceCrypto),
        )
        .with_host_names(vec![HOST.into()]);
        let expiry = (SystemTime::now() + Duration::from_secs(3600)).duration_since(UNIX_EPOCH)?.as_secs();
        let skn = Some("provisioningserviceowner");
        let wrong = dps_core::base64::encode(&[7; 32]);
        let last = instance(instances - 1);
        let named = format!("{}.{HOST}", last.name);
        let cases = [
            ("bad, shared host", dps_attest::sas::make_token(HOST, &wrong, expiry, skn), HOST, false),
            (
                "good, shared host",
                dps_attest::sas::make_token(HOST, &last.authorization_policies[0].primary_key, expiry, skn),
                HOST,
                true,
            ),
            ("bad, named host", dps_attest::sas::make_token(&named, &wrong, expiry, skn), named.as_str(), false),
        ];
        println!("{instances} instances, {calls} calls each");
        for (what, token, host, ok) in cases {
            let token = token.ok_or("token")?;
            let mut times = Vec::with_capacity(calls);
            let mut cpu = 0;
            for i in 0..=calls {
                let cpu_before = cpu_ns();
                let started = Instant::now();
                let r = s.service_caller(Some(&token), host, AccessRight::EnrollmentRead).await;
                let took = started.elapsed();
                assert_eq!(r.is_ok(), ok, "{what}: {r:?}");
                if i > 0 {
                    times.push(took);
                    cpu += cpu_ns() - cpu_before;
                }
            }
            times.sort();
            let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0;
            let cpu_ms = cpu as f64 / 1e6 / times.len() as f64;
            println!("{what:<18} median {:8.3} ms  p90 {:8.3} ms  cpu {cpu_ms:8.3} ms/call", at(0.5), at(0.9));
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    Ok(())
}
