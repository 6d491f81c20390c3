use super::*;

fn invalid(text: &str) -> Vec<Problem> {
    match Config::from_raw(raw::Raw::parse(text).expect("parses")) {
        Err(ConfigError::Invalid(p)) => p,
        other => panic!("expected validation problems, got {other:?}"),
    }
}

#[test]
fn defaults_need_no_file() {
    let c = Config::load(None, &Overrides::default()).expect("defaults are valid");
    assert_eq!(c.https.port, 443);
    assert_eq!(c.mqtt.port, 8883);
    assert_eq!(c.https.tls.profile, ProfileName::LegacySecurity);
    assert!(!c.https.tls.tls13);
    assert!(c.https.tls.request_client_cert);
    assert_eq!(c.tls.groups, vec![Group::P256, Group::P384]);
    assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    assert!(matches!(c.tls.certificate, CertificateSource::BuiltIn(_)));
}

#[test]
fn example_file_parses_to_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../opendps.example.toml");
    let from_file = Config::load(Some(&path), &Overrides::default()).expect("example is valid");
    let defaults = Config::load(None, &Overrides::default()).expect("defaults are valid");
    assert_eq!(from_file, defaults, "the example documents the defaults");
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let p = invalid(
        r#"
        [listen]
        address = "not-an-ip"
        [tls]
        profile = "modern"
        groups = ["P-256", "brainpool"]
        handshake_timeout = "soon"
        max_connections = 0
        "#,
    );
    let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        ["listen.address", "tls.profile", "tls.groups[1]", "tls.handshake_timeout", "tls.max_connections"]
    );
}

#[test]
fn unknown_keys_are_refused() {
    assert!(raw::Raw::parse("[tls]\nclient_auth = true\n").is_err());
}

#[test]
fn overrides_win_and_move_every_listener() {
    let o = Overrides {
        listen_address: Some("127.0.0.9".into()),
        https_port: Some(8443),
        tls_profile: Some("dps-recommended".into()),
        tls13: Some(true),
        ..Overrides::default()
    };
    let text = "[mqtt]\nprofile = \"dps-legacy-performance\"\n";
    let c = Config::from_raw(raw::Raw::parse(text).expect("parses").with_overrides(&o)).expect("valid");
    assert_eq!(c.https.address, "127.0.0.9".parse::<IpAddr>().expect("ip"));
    assert_eq!(c.mqtt.address, c.https.address);
    assert_eq!(c.https.port, 8443);
    assert_eq!(c.mqtt.tls.profile, ProfileName::Recommended, "the flag applies to every listener");
    assert!(c.mqtt.tls.tls13);
}

#[test]
fn per_listener_settings_default_to_tls_section() {
    let c = Config::from_raw(
        raw::Raw::parse("[tls]\nprofile = \"dps-recommended\"\n[mqtt]\nrequest_client_cert = false\n").expect("parses"),
    )
    .expect("valid");
    assert_eq!(c.https.tls.profile, ProfileName::Recommended);
    assert!(c.https.tls.request_client_cert);
    assert!(!c.mqtt.tls.request_client_cert);
}

#[test]
fn files_and_builtin_are_exclusive_and_files_need_paths() {
    let p = invalid("[tls.files]\nchain = \"a.pem\"\n");
    assert_eq!(p[0].path, "tls.files.key");
    let p = invalid("[tls.files]\nchain = \"a\"\nkey = \"b\"\n[tls.builtin]\n");
    assert_eq!(p[0].path, "tls");
}

#[test]
fn leaf_lifetime_has_a_floor_of_one_minute() {
    let p = invalid("[tls.builtin]\nleaf_lifetime = \"10s\"\n");
    assert_eq!(p[0].path, "tls.builtin.leaf_lifetime");
}

#[test]
fn same_port_twice_is_refused() {
    let p = invalid("[https]\nport = 9000\n[mqtt]\nport = 9000\n");
    assert_eq!(p[0].path, "mqtt.port");
}
