//! The server's activation blobs against a real TPM implementation: swtpm, driven by
//! tpm2-tools doing what the SDK clients do (ActivateCredential with the EK's policy, Import
//! under the SRK with the credential as the inner key, Load, persist, HMAC). Each test has its
//! own swtpm (tests/support/swtpm.rs installs it when missing).

#[path = "support/swtpm.rs"]
mod swtpm;

use dps_attest::tpm::{self, testing, ActivationBlobFields, IdentityKey, TpmRsaKey};
use swtpm::{Swtpm, EK_HANDLE, ID_KEY_HANDLE, SRK_HANDLE};

/// tpm2-tools' credential file: magic, version, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET.
fn credential_file(f: &ActivationBlobFields<'_>) -> Vec<u8> {
    let mut b = vec![0xBA, 0xDC, 0xC0, 0xDE, 0, 0, 0, 1];
    b.extend_from_slice(f.credential_blob);
    b.extend_from_slice(f.secret);
    b
}

/// ActivateCredential(SRK, EK) in a policy session satisfied by PolicySecret(endorsement), as
/// the clients do: the credential, or the TPM's error.
fn activate(tpm: &Swtpm, blob: &[u8]) -> Result<Vec<u8>, String> {
    let f = ActivationBlobFields::parse(blob).ok_or("could not unmarshal activation data")?;
    std::fs::write(tpm.path("cred.in"), credential_file(&f)).expect("write");
    let _ = std::fs::remove_file(tpm.path("cred.out"));
    tpm.must("tpm2_startauthsession", &["--policy-session", "-S", "session.ctx"]);
    tpm.must("tpm2_policysecret", &["-S", "session.ctx", "-c", "e"]);
    let r = tpm.tool(
        "tpm2_activatecredential",
        &["-c", SRK_HANDLE, "-C", EK_HANDLE, "-i", "cred.in", "-o", "cred.out", "-P", "session:session.ctx"],
    );
    tpm.flush();
    if !r.ok {
        return Err(r.stderr);
    }
    Ok(std::fs::read(tpm.path("cred.out")).expect("cred.out"))
}

/// Import (inner key = the credential) + Load + persist at 0x81000100, replacing an older key,
/// as the clients do.
fn import(tpm: &Swtpm, blob: &[u8], credential: &[u8]) -> Result<(), String> {
    let f = ActivationBlobFields::parse(blob).ok_or("could not unmarshal activation data")?;
    std::fs::write(tpm.path("id.pub"), f.public).expect("write");
    std::fs::write(tpm.path("id.dpriv"), f.duplicate).expect("write");
    std::fs::write(tpm.path("id.seed"), f.in_sym_seed).expect("write");
    std::fs::write(tpm.path("inner.key"), credential).expect("write");
    let r = tpm.tool(
        "tpm2_import",
        &[
            "-C",
            SRK_HANDLE,
            "-G",
            "hmac",
            "-u",
            "id.pub",
            "-i",
            "id.dpriv",
            "-s",
            "id.seed",
            "-k",
            "inner.key",
            "-r",
            "id.priv",
        ],
    );
    if !r.ok {
        tpm.flush();
        return Err(r.stderr);
    }
    tpm.must("tpm2_load", &["-C", SRK_HANDLE, "-u", "id.pub", "-r", "id.priv", "-c", "id.ctx"]);
    // An older identity key is evicted first (the clients ignore this call's failure).
    let _ = tpm.tool("tpm2_evictcontrol", &["-C", "o", "-c", ID_KEY_HANDLE]);
    tpm.must("tpm2_evictcontrol", &["-C", "o", "-c", "id.ctx", ID_KEY_HANDLE]);
    tpm.flush();
    Ok(())
}

/// TPM2_HMAC with the persisted identity key.
fn tpm_hmac(tpm: &Swtpm, data: &[u8]) -> Vec<u8> {
    std::fs::write(tpm.path("data.bin"), data).expect("write");
    tpm.must("tpm2_hmac", &["-c", ID_KEY_HANDLE, "-g", "sha256", "-o", "mac.bin", "data.bin"]);
    tpm.flush();
    std::fs::read(tpm.path("mac.bin")).expect("mac.bin")
}

fn keys(ek: &[u8], srk: &[u8]) -> (TpmRsaKey, TpmRsaKey) {
    (TpmRsaKey::endorsement_key(ek).expect("EK accepted"), TpmRsaKey::storage_root_key(srk).expect("SRK accepted"))
}

#[test]
fn swtpm_activates_our_blob_and_signs_with_the_issued_key() {
    let tpm = Swtpm::start();
    let (ek_pub, srk_pub) = tpm.provision_ek_srk();
    let (ek, srk) = keys(&ek_pub, &srk_pub);
    let c = tpm::challenge(&ek, &srk).expect("challenge");

    let credential = activate(&tpm, &c.blob).expect("ActivateCredential accepts the blob");
    assert_eq!(credential.len(), tpm::CREDENTIAL_LEN);
    import(&tpm, &c.blob, &credential).expect("Import accepts the duplicate");

    // A SAS string-to-sign, as the Node client builds it.
    let data = b"0ne00000A0A%2Fregistrations%2Ftpm-dev-1\n1893456000";
    assert_eq!(tpm_hmac(&tpm, data), c.key.hmac_sha256(data).expect("hmac"), "the TPM signs with K");

    // The final result's blob (the hub device key, 64 bytes as DPS generates them) replaces the
    // identity key at the same handle.
    let hub_key = IdentityKey::from_bytes(&[0xA5; 64]).expect("hub key");
    let blob2 = tpm::activation_blob(&ek, &srk, &hub_key).expect("second blob");
    let credential2 = activate(&tpm, &blob2).expect("second activation");
    import(&tpm, &blob2, &credential2).expect("second import");
    let data = b"hub.example/devices/tpm-dev-1\n1893456000";
    assert_eq!(tpm_hmac(&tpm, data), hub_key.hmac_sha256(data).expect("hmac"));
}

#[test]
fn swtpm_refuses_a_blob_made_for_another_tpm() {
    let a = Swtpm::start();
    let b = Swtpm::start();
    let (a_ek, a_srk) = a.provision_ek_srk();
    let (b_ek, b_srk) = b.provision_ek_srk();
    let (a_ek, a_srk) = keys(&a_ek, &a_srk);
    let (b_ek, b_srk) = keys(&b_ek, &b_srk);
    assert!(!a_ek.same_key(&b_ek), "a fresh state directory is a fresh endorsement seed");

    // Another TPM's EK: the seed does not decrypt.
    let e = activate(&a, &tpm::challenge(&b_ek, &a_srk).expect("blob").blob).expect_err("wrong EK");
    // libtpms answers an OAEP failure with TPM_RC_FAILURE (0x101), and keeps working.
    assert!(e.contains("(0x101)"), "{e}");
    // This TPM's EK but another TPM's SRK: the credential is bound to the SRK's Name.
    let e = activate(&a, &tpm::challenge(&a_ek, &b_srk).expect("blob").blob).expect_err("wrong SRK");
    // TPM_RC_INTEGRITY on parameter 1 (credentialBlob).
    assert!(e.contains("(0x1DF)"), "{e}");
    // The TPM keeps working, and its own blob still activates.
    let own = tpm::challenge(&a_ek, &a_srk).expect("blob");
    assert_eq!(activate(&a, &own.blob).expect("own blob").len(), tpm::CREDENTIAL_LEN);
}

#[test]
fn client_breaking_variants_are_refused_by_the_tpm() {
    let tpm = Swtpm::start();
    let (ek_pub, srk_pub) = tpm.provision_ek_srk();
    let (ek, srk) = keys(&ek_pub, &srk_pub);

    // Keys longer than the SHA-256 block: the TPM refuses the import, so the server refuses to
    // issue them.
    assert_eq!(IdentityKey::from_bytes(&[1; 65]), Err(tpm::TpmError::KeyLength(65)));
    let long = testing::blob_variant(&ek, &srk, &[1; 65], 16, true).expect("variant");
    let credential = activate(&tpm, &long).expect("the credential part is fine");
    let e = import(&tpm, &long, &credential).expect_err("65-byte HMAC key");
    // TPM_RC_KEY_SIZE on parameter 3 (objectPublic).
    assert!(e.contains("0x3C7") || e.contains("0x3c7"), "{e}");
    // 64 bytes is the limit and imports.
    let max = testing::blob_variant(&ek, &srk, &[1; 64], 16, true).expect("variant");
    let credential = activate(&tpm, &max).expect("activates");
    import(&tpm, &max, &credential).expect("a 64-byte key imports");

    // A 32-byte credential comes out of ActivateCredential as 32 bytes; the C, C# and
    // iot-identity-service clients then import with AES-128-CFB, which the TPM refuses.
    let wide = testing::blob_variant(&ek, &srk, &[1; 32], 32, true).expect("variant");
    let credential = activate(&tpm, &wide).expect("the TPM activates any credential up to a digest");
    assert_eq!(credential.len(), 32);
    let rc = import_aes128(&tpm, &wide, &credential).expect_err("AES-128-CFB import with a 32-byte inner key");
    // TPM_RC_SIZE on parameter 1 (encryptionKey).
    assert_eq!(rc, 0x1D5, "TPM response code 0x{rc:x}");
    // Ours is always 16 bytes, which that import takes.
    let c = tpm::challenge(&ek, &srk).expect("challenge");
    let credential = activate(&tpm, &c.blob).expect("activates");
    import_aes128(&tpm, &c.blob, &credential).expect("AES-128-CFB import with our credential");

    // Without field 6 the blob cannot be unmarshalled the way the clients read it (the Node
    // client's refusal is shown in tpm_node.rs); ours always has it, empty.
    let f = ActivationBlobFields::parse(&c.blob).expect("six fields");
    assert_eq!(f.uri_data, [0, 0]);
    let no_field6 = testing::blob_variant(&ek, &srk, &[1; 32], 16, false).expect("variant");
    assert!(ActivationBlobFields::parse(&no_field6).is_none());
}

/// TPM2_Import with the symmetric algorithm fixed to AES-128-CFB, as the C, C# and
/// iot-identity-service clients call it, sent raw with `tpm2_send` (tpm2_import refuses a key
/// file that is not 16 bytes before the TPM sees it). `Err` holds the TPM's response code.
fn import_aes128(tpm: &Swtpm, blob: &[u8], credential: &[u8]) -> Result<(), u32> {
    let f = ActivationBlobFields::parse(blob).expect("six fields");
    let mut params = Vec::new();
    params.extend_from_slice(&u16::try_from(credential.len()).expect("short").to_be_bytes());
    params.extend_from_slice(credential); // encryptionKey (TPM2B_DATA)
    params.extend_from_slice(f.public); // objectPublic
    params.extend_from_slice(f.duplicate); // duplicate
    params.extend_from_slice(f.in_sym_seed); // inSymSeed
    params.extend_from_slice(&[0x00, 0x06, 0x00, 0x80, 0x00, 0x43]); // AES, 128, CFB
                                                                     // One password session (TPM_RS_PW, empty nonce, attributes 0, empty auth) for the parent.
    let auth = [0x40, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00, 0x00, 0x00];
    let mut cmd = vec![0x80, 0x02, 0, 0, 0, 0, 0x00, 0x00, 0x01, 0x56]; // TPM_ST_SESSIONS, TPM2_CC_Import
    cmd.extend_from_slice(&0x8100_0001u32.to_be_bytes()); // parentHandle: the SRK
    cmd.extend_from_slice(&u32::try_from(auth.len()).expect("short").to_be_bytes());
    cmd.extend_from_slice(&auth);
    cmd.extend_from_slice(&params);
    let size = u32::try_from(cmd.len()).expect("short").to_be_bytes();
    cmd[2..6].copy_from_slice(&size);
    std::fs::write(tpm.path("import.cmd"), &cmd).expect("write");
    tpm.must("tpm2_send", &["-o", "import.rsp", "import.cmd"]);
    let rsp = std::fs::read(tpm.path("import.rsp")).expect("response");
    let rc = u32::from_be_bytes(rsp.get(6..10).expect("response header").try_into().expect("4 bytes"));
    if rc == 0 {
        Ok(())
    } else {
        Err(rc)
    }
}
