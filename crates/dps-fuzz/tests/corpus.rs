//! Replays every committed fuzz corpus (`fuzz/corpus/<target>/*`) through the target's body, on
//! stable Rust, as part of `cargo test`; and checks that every target is wired up in `fuzz/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use dps_fuzz::{target, TARGETS};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

#[test]
fn every_target_has_a_binary_a_manifest_entry_and_a_seed_corpus() {
    let fuzz = fuzz_dir();
    let manifest = std::fs::read_to_string(fuzz.join("Cargo.toml")).unwrap();
    for (name, _) in TARGETS {
        let source = std::fs::read_to_string(fuzz.join("fuzz_targets").join(format!("{name}.rs")))
            .unwrap_or_else(|e| panic!("fuzz/fuzz_targets/{name}.rs: {e}"));
        assert!(
            source.contains(&format!("dps_fuzz::{name}(")),
            "fuzz/fuzz_targets/{name}.rs must call dps_fuzz::{name}"
        );
        assert!(manifest.contains(&format!("name = \"{name}\"")), "fuzz/Cargo.toml has no [[bin]] {name}");
        assert!(!files(&fuzz.join("corpus").join(name)).is_empty(), "fuzz/corpus/{name} has no seed");
    }
    for dir in std::fs::read_dir(fuzz.join("corpus")).unwrap() {
        let name = dir.unwrap().file_name().into_string().unwrap();
        assert!(target(&name).is_some(), "fuzz/corpus/{name} belongs to no target of dps_fuzz::TARGETS");
    }
    for file in files(&fuzz.join("fuzz_targets")) {
        let name = file.file_stem().unwrap().to_str().unwrap().to_owned();
        assert!(target(&name).is_some(), "fuzz/fuzz_targets/{name}.rs is not in dps_fuzz::TARGETS");
    }
}

#[test]
fn every_corpus_replays_without_a_finding() {
    let corpus = fuzz_dir().join("corpus");
    let mut failures = Vec::new();
    for (name, run) in TARGETS {
        let inputs = files(&corpus.join(name));
        for input in &inputs {
            let data = std::fs::read(input).unwrap();
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                failures.push(input.display().to_string());
            }
        }
        println!("{name}: {} inputs replayed", inputs.len());
    }
    assert!(failures.is_empty(), "inputs that fail: {failures:#?}");
}

#[test]
fn the_x509_seeds_reach_both_outcomes() {
    use dps_fuzz::x509_input::{chunks, fuzz_now};
    let dir = fuzz_dir().join("corpus/x509_evidence");
    let depth = |name: &str| {
        let data = std::fs::read(dir.join(name)).unwrap();
        let parts = chunks(&data);
        let chain: Vec<Vec<u8>> = parts[1..].iter().map(|c| c.to_vec()).collect();
        dps_attest::verify_chain(&chain, &dps_core::base64::encode(parts[0]), fuzz_now()).ok()
    };
    assert_eq!(depth("root-int-leaf"), Some(1));
    assert_eq!(depth("int-anchor-leaf"), Some(0));
    assert_eq!(depth("name-constraints-ok"), Some(0));
    for refused in [
        "missing-intermediate",
        "server-only-leaf",
        "pathlen-exceeded",
        "name-constraints-violated",
        "sha1-intermediate",
    ] {
        assert_eq!(depth(refused), None, "{refused}");
    }
}
