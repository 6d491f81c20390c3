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
    assert_eq!(c.amqp.port, 5671);
    assert!(c.amqp.enabled && c.amqp.tls.request_client_cert);
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
    let p = invalid("[mqtt]\nport = 9000\n[amqp]\nport = 9000\n");
    assert_eq!(p[0].path, "amqp.port");
    let p = invalid("[amqp]\nport = 443\n");
    assert_eq!(p[0].path, "amqp.port");
}

fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

#[test]
fn environment_sets_every_kind_of_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "[https]\nport = 8443\n[tls]\nprofile = \"dps-recommended\"\n").expect("write");
    let env = vars(&[
        ("OPENDPS_HTTPS__PORT", "9443"),
        ("OPENDPS_TLS__TLS13", "true"),
        ("OPENDPS_TLS__GROUPS", "P-384,P-256"),
        ("OPENDPS_TLS__BUILTIN__DNS_NAMES", "[\"dps.example.com\"]"),
        ("OPENDPS_SERVICE__PUBLIC_HOST", "1.2"),
        ("OPENDPS_LOG__FILTER", "opendps=debug"),
        // Not configuration keys: ignored.
        ("OPENDPS_LOG", "warn"),
        ("OPENDPS_BIN", "/x"),
        ("PATH", "/bin"),
    ]);
    let o = Overrides { mqtt_port: Some(1883), ..Overrides::default() };
    let c = Config::load_with_env(Some(&file), env, &o).expect("valid");
    assert_eq!(c.https.port, 9443, "environment beats the file");
    assert_eq!(c.mqtt.port, 1883, "flags beat the environment");
    assert_eq!(c.https.tls.profile, ProfileName::Recommended, "the file's other keys stay");
    assert!(c.https.tls.tls13);
    assert_eq!(c.tls.groups, vec![Group::P384, Group::P256]);
    assert_eq!(c.service.public_host, "1.2", "text where the key is text");
    assert_eq!(c.log.filter, "opendps=debug");
    let CertificateSource::BuiltIn(b) = &c.tls.certificate else { panic!("built-in CA") };
    assert_eq!(b.dns_names, ["dps.example.com"]);
    // A key of a section with one key.
    let c = Config::load_with_env(None, vars(&[("OPENDPS_LISTEN__ADDRESS", "127.0.0.5")]), &Overrides::default())
        .expect("valid");
    assert_eq!(c.https.address.to_string(), "127.0.0.5");
}

#[test]
fn environment_problems_name_the_variable_in_one_pass() {
    let env = vars(&[
        ("OPENDPS_TLS__PROFILEX", "dps-recommended"),
        ("OPENDPS_HTTPS__PORT", "eighty"),
        ("OPENDPS_TLS__PROFILE", "modern"),
        ("OPENDPS_NOSUCH__KEY", "1"),
    ]);
    let raw_file = "[tls]\nhandshake_timeout = \"soon\"\n";
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("c.toml");
    std::fs::write(&file, raw_file).expect("write");
    let Err(ConfigError::Invalid(p)) = Config::load_with_env(Some(&file), env, &Overrides::default()) else {
        panic!("expected problems")
    };
    let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "OPENDPS_HTTPS__PORT (https.port)",
            "OPENDPS_NOSUCH__KEY (nosuch.key)",
            "OPENDPS_TLS__PROFILEX (tls.profilex)",
            "tls.profile (OPENDPS_TLS__PROFILE)",
            "tls.handshake_timeout",
        ],
        "{p:#?}"
    );
    assert!(p[2].message.contains("unknown field"), "{}", p[2].message);
}

#[test]
fn admin_listener_stays_on_loopback_and_needs_its_own_port() {
    let load = |text: &str| Config::from_raw(raw::Raw::parse(text).expect("parses")).expect("valid");
    let c = load("");
    assert!(c.admin.enabled);
    assert_eq!((c.admin.address, c.admin.port), (IpAddr::from([127, 0, 0, 1]), 9464), "0.0.0.0 → 127.0.0.1");
    let c = load("[listen]\naddress = \"127.0.0.185\"\n");
    assert_eq!(c.admin.address, IpAddr::from([127, 0, 0, 185]), "a loopback listen address is kept");
    let c = load("[listen]\naddress = \"192.0.2.1\"\n[admin]\nenabled = false\n");
    assert!(!c.admin.enabled);
    assert_eq!(c.admin.address, IpAddr::from([127, 0, 0, 1]));
    let p = invalid("[admin]\nport = 443\naddress = \"not-an-ip\"\n");
    let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, ["admin.address", "admin.port"], "443 is the HTTPS port on 0.0.0.0, which covers every address");
    let p = invalid("[listen]\naddress = \"127.0.0.1\"\n[admin]\nport = 8883\n");
    assert!(p.iter().any(|p| p.path == "admin.port" && p.message.contains("mqtt")), "{p:?}");
    let o = Overrides { admin_port: Some(0), ..Overrides::default() };
    assert_eq!(Config::load(None, &o).expect("valid").admin.port, 0);
}

#[test]
fn per_source_and_log_limits_are_settings_checked_in_one_pass() {
    let c = Config::load(None, &Overrides::default()).expect("defaults are valid");
    assert_eq!(
        (
            c.limits.max_connections_per_source,
            c.limits.handshakes_per_second_per_source,
            c.limits.handshake_burst_per_source
        ),
        (1000, 100, 500)
    );
    assert_eq!(c.limits.log_line_max, 8192);
    assert_eq!(c.limits.log_failed_handshakes_per_second, 20);
    assert_eq!(c.limits.log_refusals_interval, Duration::from_secs(10));
    let off = Config::from_raw(
        raw::Raw::parse("[limits]\nmax_connections_per_source = 0\nhandshakes_per_second_per_source = 0\n")
            .expect("parses"),
    )
    .expect("0 turns the per-source limits off");
    assert_eq!((off.limits.max_connections_per_source, off.limits.handshakes_per_second_per_source), (0, 0));
    let p = invalid(
        r#"
        [limits]
        max_connections_per_source = -1
        handshakes_per_second_per_source = 5000000000
        handshake_burst_per_source = 0
        log_line_max = 10
        log_failed_handshakes_per_second = 0
        log_refusals_interval = "1ms"
        "#,
    );
    let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "limits.max_connections_per_source",
            "limits.handshakes_per_second_per_source",
            "limits.handshake_burst_per_source",
            "limits.log_line_max",
            "limits.log_failed_handshakes_per_second",
            "limits.log_refusals_interval"
        ]
    );
    let env = Config::load_with_env(
        None,
        vars(&[("OPENDPS_LIMITS__MAX_CONNECTIONS_PER_SOURCE", "20000"), ("OPENDPS_LIMITS__LOG_LINE_MAX", "4096")]),
        &Overrides::default(),
    )
    .expect("valid");
    assert_eq!((env.limits.max_connections_per_source, env.limits.log_line_max), (20_000, 4096));
}
