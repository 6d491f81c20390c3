//! Writes the X.509 seed corpus (`cargo test -p dps-fuzz --test seeds -- --ignored`): chains made
//! by OpenSSL at run time, valid 2025 to 2125, in the input format of `x509_evidence`. The other
//! targets' seeds are text, written by hand.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use dps_fuzz::x509_input::join;
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName};
use openssl::x509::{X509Builder, X509Extension, X509NameBuilder, X509};

struct Cert {
    x509: X509,
    key: PKey<Private>,
}

#[derive(Clone, Copy, Default)]
struct Opts {
    ca: bool,
    pathlen: Option<u32>,
    server_only: bool,
    san: Option<&'static str>,
    name_constraints: Option<&'static str>,
    sha1: bool,
}

fn issue(cn: &str, serial: u32, issuer: Option<&Cert>, o: Opts) -> Cert {
    let key =
        PKey::from_ec_key(EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&BigNum::from_u32(serial).unwrap().to_asn1_integer().unwrap()).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(issuer.map_or(&*name, |i| i.x509.subject_name())).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::from_unix(1_735_689_600).unwrap()).unwrap();
    b.set_not_after(&Asn1Time::from_unix(4_891_363_200).unwrap()).unwrap();
    if o.ca {
        let mut bc = BasicConstraints::new();
        bc.critical().ca();
        if let Some(n) = o.pathlen {
            bc.pathlen(n);
        }
        b.append_extension(bc.build().unwrap()).unwrap();
        b.append_extension(KeyUsage::new().critical().key_cert_sign().crl_sign().build().unwrap()).unwrap();
    } else {
        b.append_extension(KeyUsage::new().critical().digital_signature().build().unwrap()).unwrap();
        let mut eku = ExtendedKeyUsage::new();
        if o.server_only {
            eku.server_auth();
        } else {
            eku.client_auth();
        }
        b.append_extension(eku.build().unwrap()).unwrap();
    }
    if let Some(dns) = o.san {
        let san = SubjectAlternativeName::new().dns(dns).build(&b.x509v3_context(issuer.map(|i| &*i.x509), None));
        b.append_extension(san.unwrap()).unwrap();
    }
    if let Some(nc) = o.name_constraints {
        #[allow(deprecated)]
        let ext = X509Extension::new_nid(None, Some(&b.x509v3_context(None, None)), Nid::NAME_CONSTRAINTS, nc);
        b.append_extension(ext.unwrap()).unwrap();
    }
    let digest = if o.sha1 { MessageDigest::sha1() } else { MessageDigest::sha256() };
    b.sign(issuer.map_or(&key, |i| &i.key), digest).unwrap();
    Cert { x509: b.build(), key }
}

fn der(c: &Cert) -> Vec<u8> {
    c.x509.to_der().unwrap()
}

#[test]
#[ignore = "writes fuzz/corpus/x509_evidence; run by hand when the seeds change"]
fn write_x509_seeds() {
    let ca = Opts { ca: true, ..Opts::default() };
    let root = issue("root", 1, None, ca);
    let int = issue("intermediate", 2, Some(&root), ca);
    let leaf = issue("device-1", 3, Some(&int), Opts::default());
    let server = issue("server-only", 4, Some(&root), Opts { server_only: true, ..Opts::default() });
    let root0 = issue("root-pathlen-0", 5, None, Opts { pathlen: Some(0), ..ca });
    let int_under0 = issue("int-under-0", 6, Some(&root0), ca);
    let leaf_under0 = issue("device-2", 7, Some(&int_under0), Opts::default());
    let nc =
        issue("constrained", 8, None, Opts { name_constraints: Some("critical,permitted;DNS:.example.com"), ..ca });
    let inside = issue("device-3", 9, Some(&nc), Opts { san: Some("device-3.example.com"), ..Opts::default() });
    let outside = issue("device-4", 10, Some(&nc), Opts { san: Some("device-4.other.net"), ..Opts::default() });
    let weak = issue("sha1-int", 11, Some(&root), Opts { sha1: true, ..ca });
    let under_weak = issue("device-5", 12, Some(&weak), Opts::default());
    let seeds: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("root-int-leaf", vec![der(&root), der(&leaf), der(&int)]),
        ("int-anchor-leaf", vec![der(&int), der(&leaf)]),
        ("root-int-leaf-root", vec![der(&root), der(&leaf), der(&int), der(&root)]),
        ("missing-intermediate", vec![der(&root), der(&leaf)]),
        ("server-only-leaf", vec![der(&root), der(&server)]),
        ("pathlen-exceeded", vec![der(&root0), der(&leaf_under0), der(&int_under0)]),
        ("name-constraints-ok", vec![der(&nc), der(&inside)]),
        ("name-constraints-violated", vec![der(&nc), der(&outside)]),
        ("sha1-intermediate", vec![der(&root), der(&under_weak), der(&weak)]),
        ("self-signed", vec![der(&root), der(&root)]),
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/x509_evidence");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, chunks) in seeds {
        let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        std::fs::write(dir.join(name), join(&refs)).unwrap();
    }
}
