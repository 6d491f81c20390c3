//! Deployments the way the DPS document shows them, through the CLI and the running server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::{opendps, serve};
use serde_json::Value;

fn data(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name).to_str().unwrap().to_owned()
}

fn filled(dir: &Path, name: &str, location: &str, min_tls: &str) -> String {
    let text = std::fs::read_to_string(data("dps-tls-document.json")).unwrap();
    let text = text
        .replace("<provide-a-valid-DPS-resource-name>", name)
        .replace("<any-region>", location)
        .replace("\"minTlsVersion\": \"1.2\"", &format!("\"minTlsVersion\": \"{min_tls}\""));
    let path = dir.join(format!("{name}-{min_tls}-{location}.json"));
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

fn start(dir: &Path) -> common::Running {
    serve(&[
        "--data-dir",
        dir.to_str().unwrap(),
        "--listen-address",
        "127.0.0.1",
        "--https-port",
        "0",
        "--mqtt-port",
        "0",
    ])
}

fn cli(dir: &Path, args: &[&str]) -> (bool, Value, String) {
    let mut all = args.to_vec();
    all.extend_from_slice(&["--data-dir", dir.to_str().unwrap()]);
    let (ok, out, err) = opendps(&all);
    (ok, serde_json::from_str(&out).unwrap_or(Value::Null), err)
}

fn show(dir: &Path, name: &str) -> Value {
    let (ok, v, err) = cli(dir, &["dps", "show", "--dps-name", name]);
    assert!(ok, "{err}");
    v
}

#[test]
fn the_dps_document_template_deploys_verbatim_and_min_tls_version_is_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let _server = start(d);

    // Unfilled, each placeholder is named.
    let (ok, _, err) = cli(d, &["deployment", "create", "-g", "rg-doc", "-f", &data("dps-tls-document.json")]);
    assert!(!ok);
    assert!(err.contains("resources[0].name") && err.contains("resources[0].location"), "{err}");

    // Filled (trailing comma and all): deployed.
    let t = filled(d, "contoso-dps", "westus", "1.2");
    let (ok, v, err) = cli(d, &["deployment", "create", "-g", "rg-doc", "-f", &t]);
    assert!(ok, "{err}");
    assert_eq!(v["properties"]["provisioningState"], "Succeeded");
    assert_eq!(v["properties"]["changes"][0]["change"], "Created");
    let inst = show(d, "contoso-dps");
    assert_eq!(inst["properties"]["minTlsVersion"], "1.2");
    assert_eq!(inst["location"], "westus");
    assert_eq!(inst["sku"]["capacity"], 1);
    let scope = inst["properties"]["idScope"].as_str().unwrap().to_owned();
    assert!(scope.starts_with("0ne") && scope.len() == 11, "{scope}");

    // Redeploy: nothing changes.
    let (ok, v, err) = cli(d, &["deployment", "create", "-g", "rg-doc", "-f", &t]);
    assert!(ok, "{err}");
    assert_eq!(v["properties"]["changes"][0]["change"], "Unchanged");
    assert_eq!(show(d, "contoso-dps")["etag"], inst["etag"], "a no-op redeploy leaves the etag alone");

    // Changing minTlsVersion is refused, naming the property, and nothing changes.
    let t13 = filled(d, "contoso-dps", "westus", "1.3");
    let (ok, _, err) = cli(d, &["deployment", "create", "-g", "rg-doc", "-f", &t13]);
    assert!(!ok);
    assert!(err.contains("minTlsVersion"), "{err}");
    let after = show(d, "contoso-dps");
    assert_eq!(after["properties"]["minTlsVersion"], "1.2");
    assert_eq!(after["etag"], inst["etag"]);
    assert_eq!(after["properties"]["idScope"], scope.as_str());
}

#[test]
fn min_tls_version_other_than_12_or_13_is_refused_at_creation() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let _server = start(d);
    for bad in ["1.0", "1.1", "banana"] {
        let t = filled(d, "refused-dps", "westus", bad);
        let (ok, _, err) = cli(d, &["deployment", "create", "-g", "rg", "-f", &t]);
        assert!(!ok, "{bad} must be refused");
        assert!(err.contains("minTlsVersion") && err.contains(bad), "{err}");
        let (ok, _, _) = cli(d, &["dps", "show", "--dps-name", "refused-dps"]);
        assert!(!ok, "nothing was created for {bad}");
    }
    let t = filled(d, "tls13-dps", "westus", "1.3");
    let (ok, _, err) = cli(d, &["deployment", "create", "-g", "rg", "-f", &t]);
    assert!(ok, "1.3 is allowed: {err}");
}

#[test]
fn a_deployment_is_all_or_nothing_and_parameters_and_expressions_evaluate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let _server = start(d);
    let (ok, v, err) = cli(
        d,
        &[
            "deployment",
            "create",
            "-g",
            "rg-p",
            "--location",
            "northeurope",
            "-f",
            &data("parameterized.json"),
            "--parameters",
            "dpsName=param-dps",
            "units=2",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(v["properties"]["parameters"]["location"], "northeurope");
    let inst = show(d, "param-dps");
    assert_eq!(inst["location"], "northeurope");
    assert_eq!(inst["sku"]["capacity"], 2);
    let hub = &inst["properties"]["iotHubs"][0];
    assert_eq!(hub["name"], "param-dps-hub.azure-devices.net");
    assert!(hub["connectionString"].as_str().unwrap().ends_with("SharedAccessKey=****"), "hub keys are masked");

    // A disallowed value is refused before anything is written.
    let (ok, _, err) = cli(
        d,
        &[
            "deployment",
            "create",
            "-g",
            "rg-p",
            "-f",
            &data("parameterized.json"),
            "--parameters",
            "dpsName=other-dps",
            "units=7",
        ],
    );
    assert!(!ok && err.contains("units"), "{err}");
    // A template with two resources, the second invalid: neither is created.
    let text = r#"{"resources": [
        {"type": "Microsoft.Devices/provisioningServices", "name": "first-dps", "location": "westus", "sku": {"name": "S1", "capacity": 1}},
        {"type": "Microsoft.Devices/provisioningServices", "name": "second-dps", "location": "westus", "sku": {"name": "S2", "capacity": 1}}
    ]}"#;
    let path = d.join("two.json");
    std::fs::write(&path, text).unwrap();
    let (ok, _, err) = cli(d, &["deployment", "create", "-g", "rg-p", "-f", path.to_str().unwrap()]);
    assert!(!ok && err.contains("resources[1].sku.name"), "{err}");
    assert!(!cli(d, &["dps", "show", "--dps-name", "first-dps"]).0, "all or nothing");

    // Updating a mutable property (capacity) works, via a redeploy.
    let (ok, v, err) = cli(
        d,
        &[
            "deployment",
            "create",
            "-g",
            "rg-p",
            "-f",
            &data("parameterized.json"),
            "--parameters",
            "dpsName=param-dps",
            "units=3",
            "--location",
            "northeurope",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(v["properties"]["changes"][0]["change"], "Updated");
    assert_eq!(show(d, "param-dps")["sku"]["capacity"], 3);
    // The same name in another resource group is a conflict.
    let (ok, _, err) = cli(
        d,
        &[
            "deployment",
            "create",
            "-g",
            "rg-other",
            "-f",
            &data("parameterized.json"),
            "--parameters",
            "dpsName=param-dps",
            "units=3",
        ],
    );
    assert!(!ok && err.contains("taken"), "{err}");
}

#[test]
fn first_start_creates_a_default_instance_and_prints_how_to_use_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = start(d);
    let scope = server.banner_value("ID scope").expect("banner shows the ID scope");
    // stdout is a pipe here (as under systemd or in a container): the banner says where the
    // connection string is instead of printing the owner key.
    let shown = server.banner_value("service connection string").expect("banner names the connection string");
    assert_eq!(shown, format!("opendps dps connection-string --data-dir {}", d.display()));
    assert!(server.banner.iter().all(|l| !l.contains("SharedAccessKey")), "{:#?}", server.banner);
    let (ok, v, err) = cli(d, &["dps", "connection-string"]);
    assert!(ok, "{err}");
    let cs = v["connectionString"].as_str().expect("connection string");
    assert!(cs.starts_with("HostName=127.0.0.1;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey="), "{cs}");
    assert_eq!(v["idScope"], scope.as_str());
    let token = d.join("admin.token");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&token).unwrap().permissions().mode() & 0o777, 0o600, "admin token is private");
}

#[test]
fn linked_hubs_policies_and_ca_certificates_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let _server = start(d);
    let cs = "HostName=hub-a.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey=aHViLWtleS1mb3ItdGVzdHMtMDEyMzQ1Njc4OQ==";
    let (ok, v, err) = cli(
        d,
        &[
            "dps",
            "linked-hub",
            "create",
            "--connection-string",
            cs,
            "--location",
            "westus",
            "--allocation-weight",
            "10",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(v[0]["name"], "hub-a.azure-devices.net");
    let (ok, _, err) = cli(
        d,
        &[
            "dps",
            "linked-hub",
            "create",
            "--connection-string",
            "HostName=x;SharedAccessKey=notbase64!",
            "--location",
            "westus",
        ],
    );
    assert!(!ok && err.contains("iotHubs[1]"), "{err}");
    // The masked key of hub-a survives the GET-modify-PUT of the next change.
    let (ok, _, err) = cli(
        d,
        &["dps", "policy", "create", "--policy-name", "reader", "--rights", "EnrollmentRead", "RegistrationStatusRead"],
    );
    assert!(ok, "{err}");
    let (ok, v, err) = cli(d, &["dps", "policy", "show", "--policy-name", "reader"]);
    assert!(ok, "{err}");
    assert!(v["primaryKey"].as_str().unwrap().len() >= 40);
    assert_eq!(v["rights"], "EnrollmentRead, RegistrationStatusRead");
    let (ok, _, err) = cli(d, &["dps", "policy", "create", "--policy-name", "bad", "--rights", "Everything"]);
    assert!(!ok && err.contains("unknown right"), "{err}");

    // CA certificate with proof of possession, with the openssl CLI as the operator's tool.
    let run = |args: &[&str]| {
        assert!(std::process::Command::new("openssl").args(args).current_dir(d).output().unwrap().status.success())
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=Test CA",
        "-days",
        "2",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
    ]);
    // `req -x509` adds CA:TRUE from openssl.cnf, so the non-CA is issued from a CSR instead.
    run(&[
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=not-a-ca",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "1",
    ]);
    let p = |f: &str| d.join(f).to_str().unwrap().to_owned();
    let (ok, _, err) =
        cli(d, &["dps", "certificate", "create", "--certificate-name", "leaf", "--path", &p("leaf.pem")]);
    assert!(!ok && err.contains("not a CA"), "{err}");
    let (ok, v, err) = cli(d, &["dps", "certificate", "create", "--certificate-name", "root", "--path", &p("ca.pem")]);
    assert!(ok, "{err}");
    assert_eq!(v["properties"]["isVerified"], false);
    let (ok, v, err) = cli(d, &["dps", "certificate", "generate-verification-code", "--certificate-name", "root"]);
    assert!(ok, "{err}");
    let code = v["properties"]["verificationCode"].as_str().unwrap().to_owned();
    // A proof signed by another key is refused; the right one verifies.
    run(&[
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "v.key",
        "-out",
        "v.csr",
        "-subj",
        &format!("/CN={code}"),
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "v.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "v.pem",
        "-days",
        "1",
    ]);
    run(&["x509", "-req", "-in", "v.csr", "-signkey", "v.key", "-out", "self.pem", "-days", "1"]);
    let (ok, _, err) =
        cli(d, &["dps", "certificate", "verify", "--certificate-name", "root", "--path", &p("self.pem")]);
    assert!(!ok && err.contains("not signed by"), "{err}");
    let (ok, v, err) = cli(d, &["dps", "certificate", "verify", "--certificate-name", "root", "--path", &p("v.pem")]);
    assert!(ok, "{err}");
    assert_eq!(v["properties"]["isVerified"], true);
    // A group can reference the verified CA by name.
    let (ok, v, err) = cli(
        d,
        &["enrollment-group", "create", "--group-id", "by-ca", "--attestation-type", "x509", "--ca-name", "root"],
    );
    assert!(ok, "{err}");
    assert_eq!(v["attestation"]["x509"]["caReferences"]["primary"], "root");
}
