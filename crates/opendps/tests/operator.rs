//! The operator CLI as `az iot dps` users expect it, against a running server: global options in
//! any position, a server recorded as 0.0.0.0 or :: reached through loopback, every update verb,
//! key renewal, compute-device-key, output formats and JMESPath, completions, man page, OpenAPI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::{opendps, serve, BIN};
use serde_json::Value;

fn ok(args: &[&str]) -> String {
    let (success, out, err) = opendps(args);
    assert!(success, "opendps {}: {err}", args.join(" "));
    out
}

fn json(args: &[&str]) -> Value {
    let out = ok(args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("opendps {}: not JSON ({e}): {out}", args.join(" ")))
}

fn self_signed(dir: &Path, cn: &str, ca: bool) -> String {
    let (key, cert) = (dir.join(format!("{cn}.key")), dir.join(format!("{cn}.pem")));
    let ext = if ca { "basicConstraints=critical,CA:TRUE" } else { "basicConstraints=critical,CA:FALSE" };
    let st = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", &format!("/CN={cn}")])
        .args(["-addext", ext, "-keyout", key.to_str().unwrap(), "-out", cert.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(st.status.success());
    cert.to_str().unwrap().to_owned()
}

#[test]
fn az_like_commands_against_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data");
    let data = d.to_str().unwrap();
    let s = serve(&["--data-dir", data, "--listen-address", "127.0.0.1", "--https-port", "0", "--mqtt-port", "0"]);
    let port = s.https.port();

    // A server recorded as 0.0.0.0 is reached through loopback with the right certificate name.
    std::fs::write(d.join("endpoint"), format!("0.0.0.0:{port}\n")).unwrap();
    let v = json(&["dps", "show", "--data-dir", data]);
    assert_eq!(v["name"], "opendps");
    // Global options before the command, after it, and in between.
    let scope = ok(&["--data-dir", data, "-o", "tsv", "dps", "show", "--query", "properties.idScope"]);
    assert!(scope.trim().starts_with("0ne"), "{scope}");
    let scope2 = ok(&[
        "dps",
        "--server",
        &format!("0.0.0.0:{port}"),
        "show",
        "--data-dir",
        data,
        "--query",
        "properties.idScope",
        "-o",
        "tsv",
    ]);
    assert_eq!(scope, scope2);
    let y = ok(&["dps", "show", "-n", "opendps", "-g", "opendps", "--data-dir", data, "-o", "yaml"]);
    let yv: Value = serde_norway::from_str(&y).unwrap();
    assert_eq!(yv["properties"]["idScope"], scope.trim());
    assert!(!opendps(&["dps", "show", "-n", "opendps", "-g", "other-rg", "--data-dir", data]).0, "-g narrows");

    // Hubs: create, show, update.
    let hub = "HostName=myhub.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey=c2VjcmV0LWh1Yi1rZXktZm9yLXRoZS1leGFtcGxl";
    ok(&["dps", "linked-hub", "create", "--cs", hub, "-l", "local", "--data-dir", data]);
    let h = json(&["dps", "linked-hub", "update", "--lh", "myhub.azure-devices.net", "--aw", "7", "--data-dir", data]);
    assert_eq!(h["allocationWeight"], 7);
    let h = json(&["dps", "linked-hub", "show", "--linked-hub", "myhub.azure-devices.net", "--data-dir", data]);
    assert_eq!(h["allocationWeight"], 7);
    assert!(h["connectionString"].as_str().unwrap().contains("****"), "hub keys stay masked: {h}");

    // Instance update.
    let i = json(&[
        "dps",
        "update",
        "--tags",
        "env=lab",
        "--set",
        "properties.allocationPolicy=GeoLatency",
        "--data-dir",
        data,
    ]);
    assert_eq!(i["tags"]["env"], "lab");
    assert_eq!(i["properties"]["allocationPolicy"], "GeoLatency");

    // Policies: create, renew a key, swap, update rights.
    let p = json(&["dps", "policy", "create", "--pn", "reader", "-r", "EnrollmentRead", "--data-dir", data]);
    let (pk, sk) = (p["primaryKey"].as_str().unwrap().to_owned(), p["secondaryKey"].as_str().unwrap().to_owned());
    let p = json(&["dps", "policy", "renew-key", "--pn", "reader", "--kt", "secondary", "--data-dir", data]);
    assert_eq!(p["primaryKey"], pk.as_str());
    assert_ne!(p["secondaryKey"], sk.as_str());
    let new_sk = p["secondaryKey"].as_str().unwrap().to_owned();
    let p = json(&[
        "dps",
        "policy",
        "update",
        "--pn",
        "reader",
        "--renew-key",
        "swap",
        "-r",
        "EnrollmentRead",
        "RegistrationStatusRead",
        "--data-dir",
        data,
    ]);
    assert_eq!((p["primaryKey"].as_str(), p["secondaryKey"].as_str()), (Some(new_sk.as_str()), Some(pk.as_str())));
    assert_eq!(p["rights"], "EnrollmentRead, RegistrationStatusRead");

    // Enrollments: az spelling, keys in the create reply, update keeps them, show --show-keys.
    let e = json(&["enrollment", "create", "--eid", "dev-1", "--attestation-type", "symmetricKey", "--data-dir", data]);
    let key = e["attestation"]["symmetricKey"]["primaryKey"].as_str().expect("the create reply has the key").to_owned();
    let e = json(&[
        "enrollment",
        "update",
        "--eid",
        "dev-1",
        "--ps",
        "disabled",
        "--ee",
        "--tags",
        r#"{"floor":3}"#,
        "--data-dir",
        data,
    ]);
    assert_eq!(e["provisioningStatus"], "disabled");
    assert_eq!(e["capabilities"]["iotEdge"], true);
    assert_eq!(e["initialTwin"]["tags"]["floor"], 3);
    assert_eq!(e["attestation"]["symmetricKey"]["primaryKey"], key.as_str(), "update keeps the key");
    let shown = json(&["enrollment", "show", "--eid", "dev-1", "--data-dir", data]);
    assert!(shown["attestation"]["symmetricKey"].get("primaryKey").is_none());
    let shown = json(&["enrollment", "show", "--eid", "dev-1", "--show-keys", "--data-dir", data]);
    assert_eq!(shown["attestation"]["symmetricKey"]["primaryKey"], key.as_str());
    ok(&["enrollment", "create", "--eid", "dev-2", "--at", "symmetrickey", "--data-dir", data]);
    let disabled = ok(&[
        "enrollment",
        "list",
        "--wq",
        "SELECT * WHERE provisioningStatus = 'disabled'",
        "--query",
        "[].registrationId",
        "-o",
        "tsv",
        "--data-dir",
        data,
    ]);
    assert_eq!(disabled.trim(), "dev-1");
    let table = ok(&["enrollment", "list", "-o", "table", "--data-dir", data]);
    assert!(table.lines().count() >= 4 && table.contains("dev-2"), "{table}");
    let stale = opendps(&[
        "enrollment",
        "update",
        "--eid",
        "dev-1",
        "--ps",
        "enabled",
        "--etag",
        "\"stale\"",
        "--data-dir",
        data,
    ]);
    assert!(!stale.0 && stale.2.contains("412"), "a stale etag is refused: {}", stale.2);

    // X.509: an update (GET-modify-PUT with certificate info only) keeps the certificate.
    let cert = self_signed(dir.path(), "dev-x", false);
    ok(&["enrollment", "create", "--eid", "dev-x", "--at", "x509", "--cp", &cert, "--data-dir", data]);
    ok(&["enrollment", "update", "--eid", "dev-x", "--ps", "disabled", "--data-dir", data]);
    let a = json(&["enrollment", "show", "--eid", "dev-x", "--show-keys", "--data-dir", data]);
    assert!(a["attestation"]["x509"]["clientCertificates"]["primary"]["certificate"]
        .as_str()
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    let second = self_signed(dir.path(), "dev-x2", false);
    let a = json(&["enrollment", "update", "--eid", "dev-x", "--scp", &second, "--rcp", "--data-dir", data]);
    let certs = &a["attestation"]["x509"]["clientCertificates"];
    assert!(
        certs.get("primary").is_none()
            && certs["secondary"]["info"]["subjectName"].as_str().unwrap().contains("dev-x2"),
        "{a}"
    );

    // TPM: the EK is checked when written (an ECC EK is refused and says so); update keeps it.
    let ek = dps_core::base64::encode(include_bytes!("../../dps-attest/testdata/tpm/swtpm-ek.pub"));
    let ecc = dps_core::base64::encode(include_bytes!("../../dps-attest/testdata/tpm/swtpm-ek-ecc.pub"));
    let t =
        json(&["enrollment", "create", "--eid", "dev-t", "--at", "tpm", "--endorsement-key", &ek, "--data-dir", data]);
    assert_eq!(
        (t["attestation"]["type"].as_str(), t["attestation"]["tpm"]["endorsementKey"].as_str()),
        (Some("tpm"), Some(ek.as_str())),
        "{t}"
    );
    let (refused, _, err) = opendps(&[
        "enrollment",
        "create",
        "--eid",
        "dev-e",
        "--at",
        "tpm",
        "--endorsement-key",
        &ecc,
        "--data-dir",
        data,
    ]);
    assert!(!refused && err.contains("400") && err.contains("ECC"), "{err}");
    let (refused, _, err) = opendps(&["enrollment", "show", "--eid", "dev-e", "--data-dir", data]);
    assert!(!refused && err.contains("404"), "not stored: {err}");
    let t = json(&["enrollment", "update", "--eid", "dev-t", "--ps", "disabled", "--data-dir", data]);
    assert_eq!(
        (t["provisioningStatus"].as_str(), t["attestation"]["tpm"]["endorsementKey"].as_str()),
        (Some("disabled"), Some(ek.as_str())),
        "{t}"
    );

    // Groups and compute-device-key, both from the server's key and from a key given.
    let g = json(&["enrollment-group", "create", "--gid", "grp", "--at", "symmetricKey", "--data-dir", data]);
    let gk = g["attestation"]["symmetricKey"]["primaryKey"].as_str().unwrap().to_owned();
    let derived =
        json(&["enrollment-group", "compute-device-key", "--gid", "grp", "--rid", "dev-9", "--data-dir", data]);
    assert_eq!(derived.as_str(), dps_attest::derive_device_key(&gk, "dev-9").as_deref());
    let given = ok(&["enrollment-group", "compute-device-key", "--key", &gk, "--rid", "dev-9", "-o", "tsv"]);
    assert_eq!(Some(given.trim()), derived.as_str());
    let g = json(&[
        "enrollment-group",
        "update",
        "--gid",
        "grp",
        "--ih",
        "myhub.azure-devices.net",
        "--ap",
        "static",
        "--data-dir",
        data,
    ]);
    assert_eq!(g["iotHubs"][0], "myhub.azure-devices.net");
    assert_eq!(g["allocationPolicy"], "static");
    let ca = self_signed(dir.path(), "group-ca", true);
    let g = json(&["enrollment-group", "update", "--gid", "grp", "--at", "x509", "--cp", &ca, "--data-dir", data]);
    assert_eq!(g["attestation"]["type"], "x509");
    let g = json(&["enrollment-group", "update", "--gid", "grp", "--ps", "disabled", "--data-dir", data]);
    assert!(g["attestation"]["x509"]["signingCertificates"]["primary"]["info"]["sha256Thumbprint"].is_string(), "{g}");

    // Errors are one line with the server's message, exit status 1.
    let (success, _, err) = opendps(&["enrollment", "show", "--eid", "nobody", "--data-dir", data]);
    assert!(!success && err.starts_with("opendps: ") && err.contains("404"), "{err}");
    let (success, _, err) = opendps(&["enrollment", "list", "--query", "[?", "--data-dir", data]);
    assert!(!success && err.contains("JMESPath"), "{err}");
    drop(s);

    // A server on :: is reached on ::1.
    let d6 = dir.path().join("data6");
    let s6 = serve(&[
        "--data-dir",
        d6.to_str().unwrap(),
        "--listen-address",
        "::1",
        "--https-port",
        "0",
        "--mqtt-port",
        "0",
    ]);
    std::fs::write(d6.join("endpoint"), format!("[::]:{}\n", s6.https.port())).unwrap();
    assert_eq!(json(&["dps", "show", "--data-dir", d6.to_str().unwrap()])["name"], "opendps");
}

#[test]
fn completions_man_page_and_openapi_come_from_the_binary() {
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let out = ok(&["completions", shell]);
        assert!(out.contains("enrollment-group") && out.contains("compute-device-key"), "{shell}");
    }
    let man = ok(&["man"]);
    assert!(man.starts_with(".ie") || man.contains(".TH opendps"), "{}", &man[..200.min(man.len())]);
    let dir = tempfile::tempdir().unwrap();
    ok(&["man", "--dir", dir.path().to_str().unwrap()]);
    for page in ["opendps.1", "opendps-enrollment-update.1", "opendps-dps-policy-renew-key.1"] {
        assert!(dir.path().join(page).exists(), "{page}");
    }
    let doc = ok(&["openapi"]);
    let file = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.yaml")).unwrap();
    assert_eq!(doc, file);
    let help = std::process::Command::new(BIN).args(["enrollment", "update", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("Example:") && help.contains("--eid") && help.contains("--provisioning-status"), "{help}");
}
