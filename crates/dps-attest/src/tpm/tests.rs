//! Unit tests of the server algorithm, with the software device and committed known answers
//! (`testdata/tpm/README.md` says where each file comes from).

use super::soft_device::{self, rsa_public, SoftKey, SoftTpm, EK_ATTRIBUTES, EK_POLICY, SRK_ATTRIBUTES};
use super::*;

const SWTPM_EK: &[u8] = include_bytes!("../../testdata/tpm/swtpm-ek.pub");
const SWTPM_EK_NAME: &[u8] = include_bytes!("../../testdata/tpm/swtpm-ek.name");
const SWTPM_SRK: &[u8] = include_bytes!("../../testdata/tpm/swtpm-srk.pub");
const SWTPM_SRK_NAME: &[u8] = include_bytes!("../../testdata/tpm/swtpm-srk.name");
const SWTPM_SRK_AES256: &[u8] = include_bytes!("../../testdata/tpm/swtpm-srk-aes256.pub");
const SWTPM_EK_ECC: &[u8] = include_bytes!("../../testdata/tpm/swtpm-ek-ecc.pub");
const SWTPM_RSA3072: &[u8] = include_bytes!("../../testdata/tpm/swtpm-rsa3072.pub");
const KAT_EK_KEY: &[u8] = include_bytes!("../../testdata/tpm/kat-ek.key.pem");
const KAT_CREDENTIAL: &[u8] = include_bytes!("../../testdata/tpm/kat-credential.out");
const KAT_SECRET: &[u8] = include_bytes!("../../testdata/tpm/kat-secret.bin");

fn keys(tpm: &SoftTpm) -> (TpmRsaKey, TpmRsaKey) {
    (
        TpmRsaKey::endorsement_key(&tpm.ek.public).expect("ek"),
        TpmRsaKey::storage_root_key(&tpm.srk.public).expect("srk"),
    )
}

// ---- known answers -------------------------------------------------------------------------

#[test]
fn swtpm_keys_parse_and_their_names_match_the_tpm() {
    let ek = TpmRsaKey::endorsement_key(SWTPM_EK).expect("swtpm EK accepted");
    assert_eq!(ek.name(), SWTPM_EK_NAME, "Name = 0x000B ‖ SHA-256(TPMT_PUBLIC), as tpm2_readpublic -n");
    assert_eq!(ek.public_area().attributes, 0x0003_00B2);
    assert_eq!(ek.public_area().auth_policy, EK_POLICY);
    assert_eq!(ek.modulus().len(), 256);
    assert!(dps_core::base64::encode(SWTPM_EK).starts_with("AToAAQALAAMAsgAg"));
    let srk = TpmRsaKey::storage_root_key(SWTPM_SRK).expect("swtpm SRK accepted");
    assert_eq!(srk.name(), SWTPM_SRK_NAME);
    assert_eq!(srk.public_area().attributes, 0x0003_0472);
    assert_eq!(SWTPM_EK.len(), 316);
    assert_eq!(SWTPM_SRK.len(), 284);
    // An SRK is no EK: it is not bound to its TPM by policy, but it passes the same RSA checks.
    assert!(TpmRsaKey::endorsement_key(SWTPM_SRK).is_ok(), "fixedTPM|fixedParent are set on the SRK too");
}

/// tpm2-tools' own MakeCredential (`tpm2_makecredential -T none`) for a committed RSA key:
/// our software ActivateCredential must open it. This pins KDFa, the labels, the CFB IV and the
/// HMAC layout to an implementation that is not ours.
#[test]
fn tpm2_tools_make_credential_known_answer_opens_with_our_device_code() {
    let ek = SoftKey::from_pem(KAT_EK_KEY, 128);
    let mut r = marshal::Reader::new(KAT_CREDENTIAL);
    assert_eq!(r.u32("magic"), Ok(0xBADC_C0DE));
    assert_eq!(r.u32("version"), Ok(1));
    let rest = r.bytes(r.remaining(), "rest").expect("rest");
    let id_len = 2 + usize::from(u16::from_be_bytes([rest[0], rest[1]]));
    let (id_object, secret) = rest.split_at(id_len);
    let credential = soft_device::activate_credential(&ek, SWTPM_SRK_NAME, id_object, secret).expect("activates");
    assert_eq!(credential, KAT_SECRET);
    // Bound to the Name: another object name breaks the integrity check.
    let err = soft_device::activate_credential(&ek, SWTPM_EK_NAME, id_object, secret).expect_err("wrong name");
    assert!(err.contains("INTEGRITY"), "{err}");
}

/// Our MakeCredential, opened by the same software device that opens tpm2-tools' output.
#[test]
fn our_make_credential_opens_like_tpm2_tools_output() {
    let ek_soft = SoftKey::from_pem(KAT_EK_KEY, 128);
    let ek = TpmRsaKey::endorsement_key(&ek_soft.public).expect("ek");
    let (id_object, secret) = blob::make_credential(&ek, SWTPM_SRK_NAME, KAT_SECRET).expect("make");
    assert_eq!(id_object.len(), 2 + 52);
    assert_eq!(secret.len(), 2 + 256);
    let got = soft_device::activate_credential(&ek_soft, SWTPM_SRK_NAME, &id_object, &secret).expect("activates");
    assert_eq!(got, KAT_SECRET);
}

// ---- the blob ------------------------------------------------------------------------------

#[test]
fn challenge_round_trips_through_the_software_tpm() {
    let tpm = SoftTpm::shared(0);
    let (ek, srk) = keys(tpm);
    let c = challenge(&ek, &srk).expect("challenge");
    assert_eq!(c.blob.len(), 766, "RSA-2048 EK and SRK, 32-byte key");
    assert_eq!(c.blob_base64().len(), 1024);
    let k = tpm.activate(&c.blob).expect("activates");
    assert_eq!(k, c.key.as_bytes());
    assert_eq!(c.key.as_bytes().len(), IDENTITY_KEY_LEN);
    // What the device signs equals what the server computes.
    let data = b"0ne00000A0A%2Fregistrations%2Ftpmdev1\n1700000000";
    assert_eq!(crate::hmac_sha256(&k, data), c.key.hmac_sha256(data).expect("hmac"));
}

#[test]
fn blob_layout_is_what_the_clients_parse() {
    let tpm = SoftTpm::shared(0);
    let (ek, srk) = keys(tpm);
    let c = challenge(&ek, &srk).expect("challenge");
    let f = ActivationBlobFields::parse(&c.blob).expect("six fields, nothing trailing");
    assert_eq!(f.credential_blob.len(), 2 + 52, "TPM2B(TPM2B(32-byte HMAC) ‖ 18-byte encIdentity)");
    assert_eq!(&f.credential_blob[..4], &[0x00, 0x34, 0x00, 0x20]);
    assert_eq!(f.secret.len(), 2 + 256);
    assert_eq!(f.duplicate.len(), 2 + 142);
    assert_eq!(&f.duplicate[..4], &[0x00, 0x8E, 0x00, 0x20]);
    assert_eq!(f.in_sym_seed.len(), 2 + 256);
    assert_eq!(f.public.len(), 2 + 48);
    assert_eq!(f.uri_data, &[0x00, 0x00], "field 6 present and empty: the Node client needs it");

    // The credential (inner wrap key) is 16 bytes: C, C# and iot-identity-service import with
    // AES-128-CFB.
    let credential =
        soft_device::activate_credential(&tpm.ek, srk.name(), f.credential_blob, f.secret).expect("activate");
    assert_eq!(credential.len(), CREDENTIAL_LEN);

    // The issued key's public area.
    let area = parse_public(f.public).expect("public");
    assert_eq!(area.object_type, alg::KEYEDHASH);
    assert_eq!(area.name_alg, alg::SHA256);
    assert_eq!(area.attributes, IDENTITY_KEY_ATTRIBUTES);
    assert_eq!(area.attributes & (attr::FIXED_TPM | attr::FIXED_PARENT | attr::RESTRICTED | attr::DECRYPT), 0);
    assert!(area.auth_policy.is_empty());
    let Parameters::KeyedHash { scheme, scheme_hash, unique } = &area.parameters else { panic!("keyedHash") };
    assert_eq!((*scheme, *scheme_hash), (alg::HMAC, Some(alg::SHA256)), "a NULL scheme breaks the Node client");
    assert_eq!(unique.len(), 32);
    assert_eq!(&f.public[..12], &[0x00, 0x30, 0x00, 0x08, 0x00, 0x0B, 0x00, 0x04, 0x04, 0x40, 0x00, 0x00]);
}

#[test]
fn every_challenge_is_fresh() {
    let tpm = SoftTpm::shared(0);
    let (ek, srk) = keys(tpm);
    let a = challenge(&ek, &srk).expect("a");
    let b = challenge(&ek, &srk).expect("b");
    assert_ne!(a.key, b.key);
    assert_ne!(a.blob, b.blob);
    // The same key wrapped twice gives different blobs too (fresh credential and seeds).
    let x = activation_blob(&ek, &srk, &a.key).expect("x");
    let y = activation_blob(&ek, &srk, &a.key).expect("y");
    assert_ne!(x, y);
    assert_eq!(tpm.activate(&x).expect("x"), tpm.activate(&y).expect("y"));
}

#[test]
fn blob_is_bound_to_the_ek_and_the_srk() {
    let tpm = SoftTpm::shared(0);
    let other = SoftTpm::shared(1);
    let (ek, srk) = keys(tpm);
    let (other_ek, other_srk) = keys(other);
    let for_other_ek = challenge(&other_ek, &srk).expect("blob");
    assert!(tpm.activate(&for_other_ek.blob).expect_err("another EK").contains("does not decrypt"));
    let for_other_srk = challenge(&ek, &other_srk).expect("blob");
    assert!(tpm.activate(&for_other_srk.blob).expect_err("another SRK").contains("INTEGRITY"));
}

#[test]
fn hub_key_sizes_that_import() {
    let tpm = SoftTpm::shared(0);
    let (ek, srk) = keys(tpm);
    for (len, blob_len) in [(16, 750), (32, 766), (64, 798)] {
        let key = IdentityKey::from_bytes(&vec![0x5A; len]).expect("key");
        let blob = activation_blob(&ek, &srk, &key).expect("blob");
        assert_eq!(blob.len(), blob_len, "{len}-byte key");
        assert_eq!(tpm.activate(&blob).expect("imports"), key.as_bytes());
    }
    assert_eq!(IdentityKey::from_bytes(&[0; 65]), Err(TpmError::KeyLength(65)), "TPM2_Import refuses > 64");
    assert_eq!(IdentityKey::from_bytes(&[]), Err(TpmError::KeyLength(0)));
    // A 64-byte base64 hub key (the DPS default size) is accepted.
    let k = IdentityKey::from_base64(&dps_core::base64::encode(&[7; 64])).expect("b64");
    assert_eq!(k.as_bytes().len(), 64);
    assert_eq!(IdentityKey::from_base64("not base64!"), Err(TpmError::KeyBase64));
}

#[test]
fn aes256_protectors_use_their_key_size() {
    let ek_soft = SoftKey::new(2048, EK_ATTRIBUTES, &EK_POLICY, 256);
    let srk_soft = SoftKey::new(2048, SRK_ATTRIBUTES, &[], 256);
    let tpm = SoftTpm { ek: ek_soft, srk: srk_soft };
    let (ek, srk) = keys(&tpm);
    let c = challenge(&ek, &srk).expect("challenge");
    assert_eq!(c.blob.len(), 766);
    assert_eq!(tpm.activate(&c.blob).expect("activates"), c.key.as_bytes());
    assert_eq!(TpmRsaKey::storage_root_key(SWTPM_SRK_AES256).expect("aes256 srk").sym_bits(), 256);
}

#[test]
fn broken_variants_break_the_software_device() {
    let tpm = SoftTpm::shared(0);
    let (ek, srk) = keys(tpm);
    let no_field6 = testing::blob_variant(&ek, &srk, &[1; 32], 16, false).expect("variant");
    assert_eq!(no_field6.len(), 764);
    assert!(ActivationBlobFields::parse(&no_field6).is_none(), "a client cannot unmarshal it");
    let long_key = testing::blob_variant(&ek, &srk, &[1; 65], 16, true).expect("variant");
    assert!(tpm.activate(&long_key).expect_err("65 bytes").contains("KEY_SIZE"));
    let long_credential = testing::blob_variant(&ek, &srk, &[1; 32], 32, true).expect("variant");
    assert!(tpm.activate(&long_credential).expect_err("32-byte credential").contains("32-byte inner key"));
}

// ---- refusals ------------------------------------------------------------------------------

#[test]
fn ecc_and_large_keys_are_refused_with_a_message_that_says_so() {
    let e = TpmRsaKey::endorsement_key(SWTPM_EK_ECC).expect_err("ECC EK");
    assert_eq!(e, TpmError::Ecc(KeyRole::EndorsementKey));
    let msg = e.to_string();
    assert!(msg.contains("ECC") && msg.contains("RSA-2048") && msg.contains("endorsement key"), "{msg}");
    let e = TpmRsaKey::storage_root_key(SWTPM_RSA3072).expect_err("RSA-3072");
    assert_eq!(e, TpmError::KeySize { role: KeyRole::StorageRootKey, bits: 3072 });
    assert!(e.to_string().contains("RSA-3072") && e.to_string().contains("storage root key"), "{e}");
    // The ECC area still parses as a public area.
    assert_eq!(parse_public(SWTPM_EK_ECC).expect("parses").parameters, Parameters::Ecc);
}

fn ek_with(edit: impl FnOnce(&mut Vec<u8>)) -> Result<TpmRsaKey, TpmError> {
    let mut b = SWTPM_EK.to_vec();
    edit(&mut b);
    TpmRsaKey::endorsement_key(&b)
}

#[test]
fn malformed_and_unsuitable_keys_get_typed_errors() {
    use KeyRole::EndorsementKey as Ek;
    // Offsets in the EK: 0 size, 2 type, 4 nameAlg, 6 attributes, 10 authPolicy (2+32),
    // 44 symmetric (alg, bits, mode), 50 scheme, 52 keyBits, 54 exponent, 58 modulus (2+256).
    assert!(matches!(ek_with(|b| b[5] = 0x04), Err(TpmError::NameAlg { role: Ek, alg: 0x0004 })));
    assert!(matches!(ek_with(|b| b[7] &= !0x01), Err(TpmError::Attributes { role: Ek, .. })), "not restricted");
    assert!(matches!(ek_with(|b| b[7] |= 0x04), Err(TpmError::Attributes { role: Ek, .. })), "sign set");
    let e = ek_with(|b| b[9] &= !0x02).expect_err("fixedTPM clear");
    assert!(e.to_string().contains("fixedTPM"), "{e}");
    assert!(matches!(ek_with(|b| b[49] = 0x42), Err(TpmError::Symmetric(Ek))), "CBC mode");
    assert!(matches!(ek_with(|b| b[47] = 0xC0), Err(TpmError::Symmetric(Ek))), "AES-192");
    let rsassa = |b: &mut Vec<u8>| {
        b[51] = 0x14; // RSASSA, which carries a hash
        b.splice(52..52, [0x00, 0x0B]);
        b[1] += 2;
    };
    assert!(matches!(ek_with(rsassa), Err(TpmError::Scheme(Ek))), "RSASSA");
    let rsaes = |b: &mut Vec<u8>| b[51] = 0x15; // RSAES, which does not
    assert!(matches!(ek_with(rsaes), Err(TpmError::Scheme(Ek))), "RSAES");
    assert!(matches!(ek_with(|b| b[57] = 0x02), Err(TpmError::Exponent { exponent: 2, .. })));
    assert!(matches!(ek_with(|b| b[60] = 0x01), Err(TpmError::Modulus { .. })), "top bit clear");
    assert!(matches!(ek_with(|b| b[3] = 0x25), Err(TpmError::NotRsa { alg: 0x0025, .. })), "symcipher");
    assert!(matches!(ek_with(|b| b.push(0)), Err(TpmError::TrailingBytes { role: Ek, extra: 1 })));
    assert!(matches!(ek_with(|b| b.truncate(300)), Err(TpmError::Truncated { role: Ek, .. })));
    // Size field one too small: the area ends inside the modulus.
    assert!(matches!(ek_with(|b| b[1] -= 1), Err(TpmError::TrailingBytes { .. } | TpmError::Truncated { .. })));
    // A 2048-bit key whose modulus field is shorter than the key size says.
    let rsa = openssl::rsa::Rsa::generate(1024).expect("rsa");
    let short = rsa_public(&rsa.n().to_vec(), 2048, EK_ATTRIBUTES, &EK_POLICY, 128);
    assert!(matches!(TpmRsaKey::endorsement_key(&short), Err(TpmError::Modulus { expected: 256, actual: 128, .. })));
    let rsa1024 = rsa_public(&rsa.n().to_vec(), 1024, EK_ATTRIBUTES, &EK_POLICY, 128);
    assert!(TpmRsaKey::endorsement_key(&rsa1024).expect_err("1024").to_string().contains("RSA-1024"));
    assert_eq!(TpmRsaKey::endorsement_key_base64("!!!"), Err(TpmError::Base64(Ek)));
    let b64 = dps_core::base64::encode(SWTPM_SRK);
    assert!(TpmRsaKey::storage_root_key_base64(&format!(" {b64}\n")).is_ok());
}

#[test]
fn same_key_ignores_the_template_but_not_the_modulus() {
    let a = TpmRsaKey::endorsement_key(SWTPM_EK).expect("a");
    let mut edited = SWTPM_EK.to_vec();
    edited[9] |= 0x40; // userWithAuth: another template for the same key
    let b = TpmRsaKey::endorsement_key(&edited).expect("b");
    assert_ne!(a, b);
    assert!(a.same_key(&b));
    let c = TpmRsaKey::endorsement_key(SWTPM_SRK).expect("c");
    assert!(!a.same_key(&c));
}

#[test]
fn identity_key_debug_is_redacted() {
    let k = IdentityKey::from_bytes(b"super-secret-key-bytes").expect("key");
    let dbg = format!("{k:?}");
    assert!(!dbg.contains("super") && dbg.contains("22 bytes"), "{dbg}");
    let tpm = SoftTpm::shared(0);
    let (ek, srk) = keys(tpm);
    let c = challenge(&ek, &srk).expect("challenge");
    let dbg = format!("{c:?}");
    assert!(!dbg.contains(&dps_core::hex::lower(c.key.as_bytes())) && dbg.contains("redacted"), "{dbg}");
    assert!(!format!("{ek:?}").is_empty());
}

// ---- hostile input -------------------------------------------------------------------------

/// xorshift64*: deterministic pseudo-random bytes for the robustness tests.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next() >> 32) as u8).collect()
    }
}

#[test]
fn parse_public_never_panics_on_truncations_and_garbage() {
    for valid in [SWTPM_EK, SWTPM_SRK, SWTPM_EK_ECC, SWTPM_RSA3072] {
        for n in 0..valid.len() {
            let cut = &valid[..n];
            assert!(parse_public(cut).is_err(), "a {n}-byte prefix is not a public area");
            assert!(TpmRsaKey::endorsement_key(cut).is_err());
            assert!(TpmRsaKey::storage_root_key(cut).is_err());
        }
    }
    let mut rng = Rng(0x0D15_EA5E_F00D_CAFE);
    for i in 0..20_000 {
        let n = (rng.next() % 600) as usize;
        let mut b = rng.bytes(n);
        if i % 2 == 0 && b.len() >= 4 {
            // Plausible headers reach the deeper parsers: a consistent size and an RSA or
            // keyedHash type.
            let size = u16::try_from(b.len() - 2).expect("small");
            b[..2].copy_from_slice(&size.to_be_bytes());
            b[2..4].copy_from_slice(&[0x00, if i % 4 == 0 { 0x01 } else { 0x08 }]);
        }
        let _ = parse_public(&b);
        let _ = TpmRsaKey::endorsement_key(&b);
        let _ = ActivationBlobFields::parse(&b);
    }
    // Single-byte corruptions of a valid EK: every one parses or fails cleanly.
    for _ in 0..5_000 {
        let mut b = SWTPM_EK.to_vec();
        let i = (rng.next() as usize) % b.len();
        b[i] ^= 1 << (rng.next() % 8);
        let _ = TpmRsaKey::endorsement_key(&b);
    }
}

// ---- the port ------------------------------------------------------------------------------

#[test]
fn the_port_issues_keys_that_the_tpm_opens_and_refuses_what_it_cannot_use() {
    use dps_core::ports::{TpmActivator, TpmKeyError};
    let port = super::OpensslTpm;
    let tpm = SoftTpm::shared(0);
    let b64 = dps_core::base64::encode;
    let (ek, srk) = (b64(&tpm.ek.public), b64(&tpm.srk.public));
    let c = port.challenge(&ek, &srk).expect("challenge");
    let blob = dps_core::base64::decode(&c.authentication_key).expect("base64 blob");
    let k = tpm.activate(&blob).expect("activates");
    assert_eq!(b64(&k), c.issued_key, "the device holds the key the server keeps");
    assert!(!format!("{c:?}").contains(&c.issued_key), "Debug redacts the key");
    // The final result's blob hands the same key over again, to the same TPM only.
    let again = port.wrap_key(&ek, &srk, &c.issued_key).expect("wrap");
    assert_eq!(tpm.activate(&dps_core::base64::decode(&again).expect("b64")).expect("opens"), k);
    let other = SoftTpm::shared(1);
    assert!(other.activate(&dps_core::base64::decode(&again).expect("b64")).is_err());
    // Same key whatever template; another TPM's EK is not.
    assert!(port.same_endorsement_key(&ek, &ek));
    assert!(!port.same_endorsement_key(&ek, &b64(&other.ek.public)));
    assert!(!port.same_endorsement_key(&ek, "not base64!"));
    // Keys it cannot use: the device is told why.
    match port.check_endorsement_key(&b64(SWTPM_EK_ECC)) {
        Err(TpmKeyError::Unsupported(m)) => assert!(m.contains("ECC") && m.contains("RSA-2048"), "{m}"),
        other => panic!("{other:?}"),
    }
    match port.challenge(&ek, &b64(SWTPM_RSA3072)) {
        Err(TpmKeyError::Unsupported(m)) => assert!(m.contains("RSA-3072") && m.contains("storage root key"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(port.check_storage_root_key("%%%"), Err(TpmKeyError::Unsupported(_))));
}

#[test]
fn every_blob_the_server_makes_fits_the_sasl_exchange_the_clients_take() {
    // The AMQP clients accept at most four challenge segments (0x80|seq … 0xC0|seq); every hub
    // key size the server may hand over, with AES-128 and AES-256 protectors, must fit, and the
    // segments must reassemble into a blob the TPM opens.
    let aes256 = SoftTpm {
        ek: SoftKey::new(2048, EK_ATTRIBUTES, &EK_POLICY, 256),
        srk: SoftKey::new(2048, SRK_ATTRIBUTES, &[], 256),
    };
    for tpm in [SoftTpm::shared(0), &aes256] {
        let (ek, srk) = keys(tpm);
        for len in [16, 32, 64] {
            let key = IdentityKey::from_bytes(&vec![0xA5; len]).expect("key");
            let blob = activation_blob(&ek, &srk, &key).expect("blob");
            let segs = sasl::challenge_segments(&blob).expect("fits the SASL exchange");
            assert!((1..=sasl::MAX_SEGMENTS).contains(&segs.len()), "{len}-byte key: {} segments", segs.len());
            for (i, s) in segs.iter().enumerate() {
                let last = i + 1 == segs.len();
                assert_eq!(s[0], if last { 0xC0 } else { 0x80 } | u8::try_from(i).expect("seq"), "control byte {i}");
            }
            let joined: Vec<u8> = segs.iter().flat_map(|s| s[1..].to_vec()).collect();
            assert_eq!(tpm.activate(&joined).expect("reassembled blob opens"), key.as_bytes());
        }
    }
}
