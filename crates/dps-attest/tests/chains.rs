//! Device chains against OpenSSL's verifier, with certificates made at run time by OpenSSL: every
//! rule of `docs/x509.md` ("Device certificates") refuses what it should, and ordinary chains pass.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dps_attest::{leaf_facts, verify_chain, ChainError, OpensslDeviceCrypto};
use dps_core::ports::DeviceCrypto;
use dps_core::tls::{Decoded, PeerCertificates};
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName};
use openssl::x509::{X509Builder, X509Extension, X509NameBuilder, X509};

const DAY: i64 = 86_400;

fn now() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap()
}

fn at(unix: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap())
}

struct Cert {
    x509: X509,
    key: PKey<Private>,
}

impl Cert {
    fn der(&self) -> Vec<u8> {
        self.x509.to_der().unwrap()
    }

    fn pem(&self) -> String {
        String::from_utf8(self.x509.to_pem().unwrap()).unwrap()
    }
}

/// What a certificate looks like. `Spec::ca` and `Spec::leaf` give the usual ones.
#[derive(Clone)]
struct Spec<'a> {
    cn: &'a str,
    /// `Some(path length)` for a CA (`Some(None)`: no path length).
    ca: Option<Option<u32>>,
    key_usage: Option<&'a [&'a str]>,
    eku: Option<&'a [&'a str]>,
    san_dns: Option<&'a str>,
    name_constraints: Option<&'a str>,
    not_before: i64,
    not_after: i64,
    digest: fn() -> MessageDigest,
    rsa: bool,
}

impl<'a> Spec<'a> {
    fn ca(cn: &'a str) -> Self {
        Spec {
            cn,
            ca: Some(None),
            key_usage: Some(&["keyCertSign", "cRLSign", "digitalSignature"]),
            eku: None,
            san_dns: None,
            name_constraints: None,
            not_before: now() - DAY,
            not_after: now() + 30 * DAY,
            digest: MessageDigest::sha256,
            rsa: false,
        }
    }

    fn leaf(cn: &'a str) -> Self {
        Spec {
            ca: None,
            key_usage: Some(&["digitalSignature", "keyEncipherment"]),
            eku: Some(&["clientAuth"]),
            ..Spec::ca(cn)
        }
    }

    fn issue(&self, issuer: Option<&Cert>) -> Cert {
        let key = if self.rsa {
            PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap()
        } else {
            PKey::from_ec_key(EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap())
                .unwrap()
        };
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", self.cn).unwrap();
        let name = name.build();
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        let mut serial = BigNum::new().unwrap();
        serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
        b.set_serial_number(&serial.to_asn1_integer().unwrap()).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(issuer.map_or(&*name, |i| i.x509.subject_name())).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::from_unix(self.not_before).unwrap()).unwrap();
        b.set_not_after(&Asn1Time::from_unix(self.not_after).unwrap()).unwrap();
        match self.ca {
            Some(pathlen) => {
                let mut bc = BasicConstraints::new();
                bc.critical().ca();
                if let Some(n) = pathlen {
                    bc.pathlen(n);
                }
                b.append_extension(bc.build().unwrap()).unwrap();
            }
            None => b.append_extension(BasicConstraints::new().build().unwrap()).unwrap(),
        }
        if let Some(usages) = self.key_usage {
            let mut ku = KeyUsage::new();
            ku.critical();
            for u in usages {
                match *u {
                    "keyCertSign" => ku.key_cert_sign(),
                    "cRLSign" => ku.crl_sign(),
                    "digitalSignature" => ku.digital_signature(),
                    "keyEncipherment" => ku.key_encipherment(),
                    "keyAgreement" => ku.key_agreement(),
                    other => panic!("{other}"),
                };
            }
            b.append_extension(ku.build().unwrap()).unwrap();
        }
        if let Some(usages) = self.eku {
            let mut eku = ExtendedKeyUsage::new();
            for u in usages {
                match *u {
                    "clientAuth" => eku.client_auth(),
                    "serverAuth" => eku.server_auth(),
                    other => panic!("{other}"),
                };
            }
            b.append_extension(eku.build().unwrap()).unwrap();
        }
        if let Some(dns) = self.san_dns {
            let san = SubjectAlternativeName::new().dns(dns).build(&b.x509v3_context(issuer.map(|i| &*i.x509), None));
            b.append_extension(san.unwrap()).unwrap();
        }
        if let Some(nc) = self.name_constraints {
            #[allow(deprecated)]
            let ext = X509Extension::new_nid(None, Some(&b.x509v3_context(None, None)), Nid::NAME_CONSTRAINTS, nc);
            b.append_extension(ext.unwrap()).unwrap();
        }
        b.sign(issuer.map_or(&key, |i| &i.key), (self.digest)()).unwrap();
        Cert { x509: b.build(), key }
    }
}

fn ders(chain: &[&Cert]) -> Vec<Vec<u8>> {
    chain.iter().map(|c| c.der()).collect()
}

/// The reason OpenSSL (or the usage check) gives, or the depth found.
/// The chain as the TLS layer hands it over (DER, and OpenSSL's decoded certificates beside it)
/// gets the same answer as its DER alone.
fn verify(chain: &[&Cert], anchor: &Cert) -> Result<usize, ChainError> {
    let result = verify_chain(&ders(chain), &anchor.pem(), SystemTime::now());
    let decoded: Vec<X509> = chain.iter().map(|c| c.x509.clone()).collect();
    let peer = PeerCertificates(ders(chain), Decoded(Some(Arc::new(decoded))));
    assert_eq!(OpensslDeviceCrypto.chain_depth(&peer, &anchor.pem(), SystemTime::now()), result.clone().ok());
    result
}

fn refused_because(chain: &[&Cert], anchor: &Cert, words: &str) {
    match verify(chain, anchor) {
        Err(e) => assert!(e.to_string().contains(words), "expected {words:?}, got: {e}"),
        Ok(depth) => panic!("expected a refusal ({words}), got depth {depth}"),
    }
    assert_eq!(
        OpensslDeviceCrypto.chain_depth(&PeerCertificates::from(ders(chain)), &anchor.pem(), SystemTime::now()),
        None
    );
}

#[test]
fn ordinary_chains_verify_up_to_the_enrollments_ca() {
    let root = Spec::ca("root").issue(None);
    let int = Spec::ca("intermediate").issue(Some(&root));
    let leaf = Spec::leaf("device-1").issue(Some(&int));
    assert_eq!(verify(&[&leaf, &int], &root), Ok(1));
    assert_eq!(verify(&[&leaf, &int, &root], &root), Ok(1), "the anchor may be presented too");
    assert_eq!(verify(&[&leaf, &int], &int), Ok(0), "a partial chain up to an intermediate CA");
    assert_eq!(verify(&[&leaf], &int), Ok(0));
    // Leaves with neither keyUsage nor extendedKeyUsage are fine.
    let bare = Spec { key_usage: None, eku: None, ..Spec::leaf("bare") }.issue(Some(&int));
    assert_eq!(verify(&[&bare, &int], &root), Ok(1));
    // The port gives the same answer.
    assert_eq!(
        OpensslDeviceCrypto.chain_depth(&PeerCertificates::from(ders(&[&leaf, &int])), &root.pem(), SystemTime::now()),
        Some(1)
    );
    // A self-signed device certificate enrolled as its own CA.
    let own = Spec { ca: None, ..Spec::leaf("self") }.issue(None);
    assert_eq!(verify(&[&own], &own), Ok(0));
}

#[test]
fn intermediates_are_never_assumed_and_other_cas_do_not_count() {
    let root = Spec::ca("root").issue(None);
    let int = Spec::ca("intermediate").issue(Some(&root));
    let leaf = Spec::leaf("device-1").issue(Some(&int));
    refused_because(&[&leaf], &root, "unable to get local issuer certificate");
    let other = Spec::ca("other-root").issue(None);
    refused_because(&[&leaf, &int], &other, "unable to get local issuer certificate");
    // An intermediate that is not a CA cannot issue.
    let not_ca = Spec { ca: None, key_usage: None, eku: None, ..Spec::ca("not-a-ca") }.issue(Some(&root));
    let under = Spec::leaf("device-2").issue(Some(&not_ca));
    refused_because(&[&under, &not_ca], &root, "invalid CA certificate");
    // The CA certificate itself is not a device certificate of its own group.
    let int_as_leaf =
        Spec { key_usage: Some(&["digitalSignature", "keyCertSign"]), ..Spec::ca("int2") }.issue(Some(&root));
    refused_because(&[&int_as_leaf], &int_as_leaf, "the device certificate is the CA itself");
}

#[test]
fn a_ca_used_beyond_its_path_length_is_refused() {
    let root = Spec { ca: Some(Some(0)), ..Spec::ca("root-pathlen-0") }.issue(None);
    let int = Spec::ca("intermediate").issue(Some(&root));
    let leaf = Spec::leaf("device-1").issue(Some(&int));
    refused_because(&[&leaf, &int], &root, "path length constraint exceeded");
    // Within its path length the same shape passes.
    let direct = Spec::leaf("device-2").issue(Some(&root));
    assert_eq!(verify(&[&direct], &root), Ok(0));
    // An intermediate with path length 0 under which another CA issues.
    let root = Spec::ca("root").issue(None);
    let int0 = Spec { ca: Some(Some(0)), ..Spec::ca("int-pathlen-0") }.issue(Some(&root));
    let int1 = Spec::ca("int-below").issue(Some(&int0));
    let leaf = Spec::leaf("device-3").issue(Some(&int1));
    refused_because(&[&leaf, &int1, &int0], &root, "path length constraint exceeded");
}

#[test]
fn a_leaf_must_be_for_client_authentication() {
    let root = Spec::ca("root").issue(None);
    for (spec, words) in [
        (
            Spec { eku: Some(&["serverAuth"]), ..Spec::leaf("server-only") },
            "extendedKeyUsage does not include clientAuth",
        ),
        (
            Spec { key_usage: Some(&["keyEncipherment"]), ..Spec::leaf("no-digital-signature") },
            "keyUsage does not include digitalSignature",
        ),
        (
            Spec { key_usage: Some(&["keyAgreement"]), ..Spec::leaf("key-agreement-only") },
            "keyUsage does not include digitalSignature",
        ),
    ] {
        let leaf = spec.issue(Some(&root));
        refused_because(&[&leaf], &root, words);
        // Individual enrollments see the leaf only: refused there too.
        let e = leaf_facts(&leaf.der(), SystemTime::now()).expect_err("refused");
        assert!(e.to_string().contains(words), "{e}");
        assert!(OpensslDeviceCrypto.leaf(&leaf.der(), SystemTime::now()).is_err());
    }
    let both = Spec { eku: Some(&["serverAuth", "clientAuth"]), ..Spec::leaf("both") }.issue(Some(&root));
    assert_eq!(verify(&[&both], &root), Ok(0));
    assert!(leaf_facts(&both.der(), SystemTime::now()).is_ok());
}

#[test]
fn weak_signatures_below_the_anchor_are_refused() {
    let root = Spec { rsa: true, ..Spec::ca("root") }.issue(None);
    for (digest, name) in [(MessageDigest::md5 as fn() -> MessageDigest, "md5"), (MessageDigest::sha1, "sha1")] {
        let int = Spec { digest, rsa: true, ..Spec::ca("weak-intermediate") }.issue(Some(&root));
        let leaf = Spec::leaf("device-1").issue(Some(&int));
        refused_because(&[&leaf, &int], &root, "CA signature digest algorithm too weak");
        let leaf = Spec { digest, ..Spec::leaf("weak-leaf") }.issue(Some(&root));
        refused_because(&[&leaf], &root, "CA signature digest algorithm too weak");
        assert!(name == "md5" || name == "sha1");
    }
    // A trust anchor's own signature does not matter: a SHA-1 self-signed root is fine.
    let old_root = Spec { digest: MessageDigest::sha1, rsa: true, ..Spec::ca("sha1-root") }.issue(None);
    let leaf = Spec::leaf("device-2").issue(Some(&old_root));
    assert_eq!(verify(&[&leaf], &old_root), Ok(0));
}

#[test]
fn validity_is_checked_at_the_callers_time() {
    let t = now();
    let root = Spec { not_before: t - 100 * DAY, ..Spec::ca("root") }.issue(None);
    let expired = Spec { not_before: t - 30 * DAY, not_after: t - DAY, ..Spec::ca("expired-int") }.issue(Some(&root));
    let leaf = Spec { not_before: t - 20 * DAY, ..Spec::leaf("device-1") }.issue(Some(&expired));
    let chain = ders(&[&leaf, &expired]);
    match verify_chain(&chain, &root.pem(), at(t)) {
        Err(e) => assert!(e.to_string().contains("certificate has expired"), "{e}"),
        other => panic!("{other:?}"),
    }
    // Ten days ago every certificate was valid: the time is the caller's, not the system's.
    assert_eq!(verify_chain(&chain, &root.pem(), at(t - 10 * DAY)), Ok(1));
    // Before the leaf's notBefore.
    match verify_chain(&chain, &root.pem(), at(t - 25 * DAY)) {
        Err(e) => assert!(e.to_string().contains("certificate is not yet valid"), "{e}"),
        other => panic!("{other:?}"),
    }
    // An expired anchor vouches for nothing.
    let old_root = Spec { not_before: t - 30 * DAY, not_after: t - DAY, ..Spec::ca("old-root") }.issue(None);
    let leaf = Spec::leaf("device-2").issue(Some(&old_root));
    refused_because(&[&leaf], &old_root, "certificate has expired");
}

#[test]
fn name_constraints_are_enforced() {
    let root =
        Spec { name_constraints: Some("critical,permitted;DNS:.example.com"), ..Spec::ca("constrained") }.issue(None);
    let inside = Spec { san_dns: Some("device-1.example.com"), ..Spec::leaf("device-1") }.issue(Some(&root));
    assert_eq!(verify(&[&inside], &root), Ok(0));
    let outside = Spec { san_dns: Some("device-2.other.net"), ..Spec::leaf("device-2") }.issue(Some(&root));
    refused_because(&[&outside], &root, "permitted subtree violation");
    // Through an intermediate as well.
    let int = Spec::ca("intermediate").issue(Some(&root));
    let outside = Spec { san_dns: Some("device-3.other.net"), ..Spec::leaf("device-3") }.issue(Some(&int));
    refused_because(&[&outside, &int], &root, "permitted subtree violation");
}

#[test]
fn garbage_is_refused_with_a_reason() {
    let root = Spec::ca("root").issue(None);
    let leaf = Spec::leaf("device-1").issue(Some(&root));
    assert_eq!(verify_chain(&[], &root.pem(), SystemTime::now()), Err(ChainError::NoCertificate));
    assert_eq!(verify_chain(&[b"not der".to_vec()], &root.pem(), SystemTime::now()), Err(ChainError::NotDer(0)));
    assert_eq!(
        verify_chain(&[leaf.der(), vec![0x30, 0x03, 1, 2, 3]], &root.pem(), SystemTime::now()),
        Err(ChainError::NotDer(1))
    );
    assert_eq!(verify_chain(&[leaf.der()], "not a certificate", SystemTime::now()), Err(ChainError::Anchor));
    let long: Vec<Vec<u8>> = (0..11).map(|_| leaf.der()).collect();
    assert_eq!(verify_chain(&long, &root.pem(), SystemTime::now()), Err(ChainError::TooLong(11)));
    let mut truncated = leaf.der();
    truncated.truncate(truncated.len() / 2);
    assert!(leaf_facts(&truncated, SystemTime::now()).is_err());
    assert!(leaf_facts(&[], SystemTime::now()).is_err());
}

#[test]
fn leaf_facts_report_the_certificate() {
    let root = Spec::ca("root").issue(None);
    let t = now();
    let leaf = Spec { not_before: t - DAY, not_after: t + DAY, ..Spec::leaf("device-7") }.issue(Some(&root));
    let facts = leaf_facts(&leaf.der(), at(t)).unwrap();
    assert_eq!(facts.common_name, "device-7");
    assert!(facts.time_valid);
    assert_eq!(facts.info.subject_name, "CN=device-7");
    assert_eq!(facts.info.issuer_name, "CN=root");
    assert_eq!(facts.sha256_thumbprint.len(), 64);
    // Thumbprints and serial are upper-case hex of OpenSSL's own digests and serial, byte for byte.
    let upper = |b: &[u8]| b.iter().map(|x| format!("{x:02X}")).collect::<String>();
    assert_eq!(facts.sha256_thumbprint, upper(&leaf.x509.digest(MessageDigest::sha256()).unwrap()));
    assert_eq!(facts.info.sha1_thumbprint, upper(&leaf.x509.digest(MessageDigest::sha1()).unwrap()));
    // The serial as DER holds it: a leading zero byte when the first one has its top bit set.
    let mut serial = leaf.x509.serial_number().to_bn().unwrap().to_vec();
    if serial.first().is_some_and(|b| b & 0x80 != 0) {
        serial.insert(0, 0);
    }
    assert_eq!(facts.info.serial_number, upper(&serial));
    assert!(!leaf_facts(&leaf.der(), at(t + 2 * DAY)).unwrap().time_valid);
}
