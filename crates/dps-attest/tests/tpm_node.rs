//! The server's activation blobs against the official Node TPM client (azure-iot-security-tpm,
//! unmodified, pinned in tests/tpm/package-lock.json) on swtpm: the client's own EK and SRK are
//! accepted, its `activateIdentityKey` takes our blob, and its `signWithIdentity` equals
//! HMAC-SHA256 under the key the server issued. Installs the npm packages (npm ci
//! --ignore-scripts) and swtpm when missing.

#[path = "support/swtpm.rs"]
mod swtpm;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use dps_attest::tpm::{self, sasl, testing, IdentityKey, TpmRsaKey};
use swtpm::{run, Swtpm};

/// tests/tpm in the repository.
fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/tpm")
}

/// `npm ci --ignore-scripts` once per process (ffi-napi, a tss.js dependency only loaded on
/// Windows, does not build on Node 20; its install script must not run).
fn ensure_node_modules() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let r = DONE.get_or_init(|| {
        let dir = node_dir();
        let installed = dir.join("node_modules/.package-lock.json");
        let fresh = match (std::fs::metadata(&installed), std::fs::metadata(dir.join("package-lock.json"))) {
            (Ok(a), Ok(b)) => a.modified().ok() >= b.modified().ok(),
            _ => false,
        };
        if fresh && dir.join("node_modules/azure-iot-security-tpm/package.json").exists() {
            return Ok(());
        }
        let ran = run(
            Command::new("flock")
                .arg(dir.join("package-lock.json"))
                .args(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"])
                .current_dir(&dir),
            Duration::from_secs(600),
        );
        if ran.ok {
            Ok(())
        } else {
            Err(format!("npm ci in tests/tpm failed: {}", ran.stderr))
        }
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// Runs tests/tpm/tpm_client.js against `tpm`; `Ok(json)` or `Err(the client's message)`.
fn node(tpm: &Swtpm, args: &[&str]) -> Result<serde_json::Value, String> {
    ensure_node_modules();
    let port = tpm.port.to_string();
    let host = tpm.host.to_string();
    let ran = run(
        Command::new("node").arg("tpm_client.js").arg(&host).arg(&port).args(args).current_dir(node_dir()),
        Duration::from_secs(120),
    );
    let line = String::from_utf8_lossy(&ran.stdout);
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line.trim()) else {
        // The client can die of an uncaught exception inside its callbacks.
        assert!(!ran.ok, "tpm_client.js {args:?} printed no JSON: {line}");
        return Err(format!("tpm_client.js crashed: {}", ran.stderr));
    };
    match v.get("error").and_then(|e| e.as_str()) {
        Some(e) => Err(e.to_owned()),
        None if ran.ok => Ok(v),
        None => panic!("tpm_client.js {args:?} failed: {}", ran.stderr),
    }
}

fn b64(b: &[u8]) -> String {
    dps_core::base64::encode(b)
}

fn str_field(v: &serde_json::Value, name: &str) -> String {
    v.get(name).and_then(|x| x.as_str()).unwrap_or_else(|| panic!("no {name} in {v}")).to_owned()
}

/// The client's EK and SRK, as it would send them to DPS.
fn client_keys(tpm: &Swtpm) -> (TpmRsaKey, TpmRsaKey) {
    let v = node(tpm, &["keys"]).expect("keys");
    let ek = str_field(&v, "endorsementKey");
    assert!(ek.starts_with("AToAAQALAAMAsgAg"), "RSA-2048 SHA-256 EK with the TCG attributes: {ek}");
    (
        TpmRsaKey::endorsement_key_base64(&ek).expect("the Node client's EK is accepted"),
        TpmRsaKey::storage_root_key_base64(&str_field(&v, "storageRootKey"))
            .expect("the Node client's SRK is accepted"),
    )
}

/// activateIdentityKey(blob) then signWithIdentity(data): the signature, or the client's error.
fn activate_and_sign(tpm: &Swtpm, blob: &[u8], data: &[u8]) -> Result<Vec<u8>, String> {
    let v = node(tpm, &["activate", &b64(blob), &b64(data)])?;
    Ok(dps_core::base64::decode(&str_field(&v, "signature")).expect("base64 signature"))
}

#[test]
fn node_client_activates_our_blob_and_signs_with_the_issued_key() {
    let tpm = Swtpm::start();
    let (ek, srk) = client_keys(&tpm);
    let c = tpm::challenge(&ek, &srk).expect("challenge");
    // The SAS string-to-sign of the Node TPM client.
    let data = b"0ne00000A0A%2Fregistrations%2Ftpm-node-1\n1893456000";
    let sig = activate_and_sign(&tpm, &c.blob, data).expect("activateIdentityKey accepts the blob");
    assert_eq!(sig, c.key.hmac_sha256(data).expect("hmac"), "signWithIdentity = HMAC-SHA256 under K");

    // The final result's blob: the hub device key (64 bytes, as DPS makes them) replaces it.
    let hub_key = IdentityKey::from_bytes(&[0x3C; 64]).expect("hub key");
    let blob = tpm::activation_blob(&ek, &srk, &hub_key).expect("second blob");
    let data = b"hub.example%2Fdevices%2Ftpm-node-1\n1893456000";
    assert_eq!(
        activate_and_sign(&tpm, &blob, data).expect("second activation"),
        hub_key.hmac_sha256(data).expect("hmac")
    );
    // A later process (a device restart) signs with the persisted key.
    let v = node(&tpm, &["sign", &b64(b"after restart")]).expect("sign");
    let sig = dps_core::base64::decode(&str_field(&v, "signature")).expect("b64");
    assert_eq!(sig, hub_key.hmac_sha256(b"after restart").expect("hmac"));
}

#[test]
fn node_client_refuses_client_breaking_variants() {
    let tpm = Swtpm::start();
    let (ek, srk) = client_keys(&tpm);
    let data = b"x";

    let no_field6 = testing::blob_variant(&ek, &srk, &[7; 32], 16, false).expect("variant");
    let e = activate_and_sign(&tpm, &no_field6, data).expect_err("field 6 missing");
    assert!(e.contains("Could not unmarshal activation data"), "{e}");

    let long_key = testing::blob_variant(&ek, &srk, &[7; 65], 16, true).expect("variant");
    let e = activate_and_sign(&tpm, &long_key, data).expect_err("65-byte key");
    // TPM2_Import fails (TPM_RC_KEY_SIZE) and the client dies of a TypeError in its Import
    // callback: no error reaches the application.
    assert!(e.contains("crashed") && e.contains("Import()"), "{e}");

    // A 32-byte credential: this client alone sizes AES by the credential and imports with
    // AES-256-CFB, so it copes; C, C# and iot-identity-service import with AES-128-CFB and the
    // TPM refuses (tpm_swtpm.rs shows that refusal). Ours is 16 bytes for that reason.
    let wide = testing::blob_variant(&ek, &srk, &[7; 32], 32, true).expect("variant");
    assert_eq!(
        activate_and_sign(&tpm, &wide, data).expect("Node imports it"),
        IdentityKey::from_bytes(&[7; 32]).expect("k").hmac_sha256(data).expect("hmac")
    );

    // After all that, our own blob still works on this TPM.
    let c = tpm::challenge(&ek, &srk).expect("challenge");
    assert_eq!(activate_and_sign(&tpm, &c.blob, data).expect("ours"), c.key.hmac_sha256(data).expect("hmac"));
}

/// The AMQP transport's own SASL `TPM` mechanism (SaslTpm from azure-iot-provisioning-device-amqp)
/// fed our challenges: its init and responses parse, and it reassembles the segmented blob into
/// one the TPM activates. Only the AMQP framing is left to the listener.
#[test]
fn node_amqp_sasl_tpm_mechanism_reassembles_our_segments() {
    let tpm = Swtpm::start();
    let (ek, srk) = client_keys(&tpm);
    let c = tpm::challenge(&ek, &srk).expect("challenge");
    let segments = sasl::challenge_segments(&c.blob).expect("segments");
    assert_eq!(segments.len(), 2, "a 766-byte blob in two challenges");
    let list: Vec<String> = segments.iter().map(|s| b64(s)).collect();
    let data = b"0ne00000A0A%2Fregistrations%2Ftpm-amqp-1\n1893456000";
    let v = node(&tpm, &["sasl", "0ne00000A0A", "tpm-amqp-1", &list.join(","), &b64(data)]).expect("sasl");

    let init = dps_core::base64::decode(&str_field(&v, "init")).expect("b64");
    let init = sasl::parse_init(&init).expect("the client's init parses");
    assert_eq!((init.id_scope, init.registration_id), ("0ne00000A0A", "tpm-amqp-1"));
    assert!(TpmRsaKey::endorsement_key(init.endorsement_key).expect("EK").same_key(&ek));
    assert_eq!(str_field(&v, "hostname"), "0ne00000A0A/registrations/tpm-amqp-1");

    let responses: Vec<Vec<u8>> = v["responses"]
        .as_array()
        .expect("responses")
        .iter()
        .map(|r| dps_core::base64::decode(r.as_str().expect("str")).expect("b64"))
        .collect();
    assert_eq!(responses.len(), 1 + segments.len());
    assert_eq!(sasl::parse_srk_response(&responses[0]).expect("SRK response"), srk.tpm2b());
    assert_eq!(responses[1], [0x00], "a non-final segment is acknowledged with 0x00");
    let last = sasl::parse_sas_response(&responses[2]).expect("final response");
    assert_eq!(last, format!("sig={}", b64(&c.key.hmac_sha256(data).expect("hmac"))));
}
