//! The built-in CA: on first start it creates root → intermediate → RSA-2048 leaf under
//! `data_dir/pki`, and from then on renews what is close to expiry. Devices trust the root only
//! (`opendps ca export-root`), so leaf and intermediate can roll freely.
//!
//! Files (keys written 0600, every write atomic: temp file + rename):
//! `root.pem root.key intermediate.pem intermediate.key server.pem server.key`.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, PKeyRef, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName, SubjectKeyIdentifier,
};
use openssl::x509::{X509Builder, X509NameBuilder, X509Ref, X509};

use crate::credentials::{certs_from_pem, key_from_pem, read, unix, ServerCredentials};
use crate::error::TlsError;

const ROOT_LIFETIME: i64 = 20 * 365 * 86_400;
const INTERMEDIATE_LIFETIME: i64 = 3 * 365 * 86_400;
/// Certificates start this much in the past, for devices whose clock lags.
const BACKDATE: i64 = 300;

/// What the built-in CA issues.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltInCaSettings {
    /// The PKI directory (`data_dir/pki`).
    pub dir: PathBuf,
    /// DNS names for the leaf, besides `localhost` and the host name.
    pub dns_names: Vec<String>,
    /// IPs for the leaf, besides 127.0.0.1 and ::1.
    pub ip_addresses: Vec<IpAddr>,
    pub leaf_lifetime: Duration,
}

/// What a renewal check did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    Unchanged,
    /// A new leaf (and perhaps more) was issued.
    Issued {
        root: bool,
        intermediate: bool,
    },
}

/// The path of the root certificate in `dir`.
pub fn root_path(dir: &Path) -> PathBuf {
    dir.join("root.pem")
}

impl BuiltInCaSettings {
    /// The DNS names and IPs the leaf must carry.
    pub fn wanted_names(&self) -> (BTreeSet<String>, BTreeSet<IpAddr>) {
        let mut dns: BTreeSet<String> = self.dns_names.iter().map(|n| n.to_ascii_lowercase()).collect();
        dns.insert("localhost".into());
        if let Ok(h) = gethostname::gethostname().into_string() {
            if !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
                dns.insert(h.to_ascii_lowercase());
            }
        }
        let mut ips: BTreeSet<IpAddr> = self.ip_addresses.iter().copied().filter(|ip| !ip.is_unspecified()).collect();
        ips.insert(IpAddr::from([127, 0, 0, 1]));
        ips.insert("::1".parse().unwrap_or(IpAddr::from([127, 0, 0, 1])));
        (dns, ips)
    }

    /// Loads what exists, creates what is missing, renews what is due, and returns the
    /// credentials to serve (leaf + intermediate) and the root.
    pub fn ensure(&self, now: i64) -> Result<(ServerCredentials, X509, Renewal), TlsError> {
        let Authority { root, inter, inter_key, new_root, new_inter } = self.authority(now)?;
        let (dns, ips) = self.wanted_names();
        let leaf = self.load_pair("server", now)?.filter(|(c, _)| {
            !new_inter && issued_by(c, &inter) && remaining_fraction_ok(c, now) && has_names(c, &dns, &ips)
        });
        let (leaf, leaf_key, renewal) = match leaf {
            Some((c, k)) => (c, k, Renewal::Unchanged),
            None => {
                let key = rsa(2048)?;
                let lifetime = i64::try_from(self.leaf_lifetime.as_secs()).unwrap_or(i64::MAX / 4);
                let cert = issue(&Spec::leaf(now, lifetime, &dns, &ips), &key, Some((&inter, &inter_key)))?;
                self.store_pair("server", &cert, &key)?;
                (cert, key, Renewal::Issued { root: new_root, intermediate: new_inter })
            }
        };
        Ok((ServerCredentials { leaf, chain: vec![inter], key: leaf_key }, root, renewal))
    }

    /// Only the root and the intermediate: loaded, created or renewed as [`Self::ensure`] would
    /// (nodes sharing one CA create it once and copy it to the others' directories).
    pub fn ensure_authority(&self, now: i64) -> Result<(), TlsError> {
        self.authority(now).map(|_| ())
    }

    fn authority(&self, now: i64) -> Result<Authority, TlsError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| TlsError::Write { path: self.dir.clone(), source })?;
        let _ = std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700));

        let (root, root_key, new_root) = match self.load_pair("root", now)? {
            Some((c, k)) => (c, k, false),
            None => {
                let key = rsa(3072)?;
                let cert = issue(&Spec::root(now), &key, None)?;
                self.store_pair("root", &cert, &key)?;
                (cert, key, true)
            }
        };

        let intermediate = self
            .load_pair("intermediate", now)?
            .filter(|(c, _)| !new_root && issued_by(c, &root) && remaining_fraction_ok(c, now));
        let (inter, inter_key, new_inter) = match intermediate {
            Some((c, k)) => (c, k, false),
            None => {
                let key = rsa(3072)?;
                let cert = issue(&Spec::intermediate(now), &key, Some((&root, &root_key)))?;
                self.store_pair("intermediate", &cert, &key)?;
                (cert, key, true)
            }
        };
        Ok(Authority { root, inter, inter_key, new_root, new_inter })
    }

    /// A (cert, key) pair, if both files exist, parse, match and the cert has not expired.
    /// A damaged pair is reported by the caller's re-issue, never served.
    fn load_pair(&self, name: &str, now: i64) -> Result<Option<(X509, PKey<Private>)>, TlsError> {
        let (cp, kp) = (self.dir.join(format!("{name}.pem")), self.dir.join(format!("{name}.key")));
        if !cp.exists() || !kp.exists() {
            return Ok(None);
        }
        let cert = match certs_from_pem(&cp, &read(&cp)?) {
            Ok(mut c) => c.remove(0),
            Err(e) => {
                tracing::warn!(file = %cp.display(), error = %e, "built-in CA file unreadable; issuing a new one");
                return Ok(None);
            }
        };
        let key = match key_from_pem(&kp, &read(&kp)?) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(file = %kp.display(), error = %e, "built-in CA key unreadable; issuing a new one");
                return Ok(None);
            }
        };
        let matches = cert.public_key().map(|p| p.public_eq(&key)).unwrap_or(false);
        if !matches || unix(cert.not_after()) <= now {
            return Ok(None);
        }
        Ok(Some((cert, key)))
    }

    fn store_pair(&self, name: &str, cert: &X509, key: &PKeyRef<Private>) -> Result<(), TlsError> {
        let key_pem = key.private_key_to_pem_pkcs8().map_err(TlsError::openssl("encoding a key"))?;
        let cert_pem = cert.to_pem().map_err(TlsError::openssl("encoding a certificate"))?;
        // Key first: a crash between the two renames leaves a mismatched pair, which the next
        // start detects and re-issues; it never leaves a certificate without its key.
        write_atomic(&self.dir.join(format!("{name}.key")), &key_pem, 0o600)?;
        write_atomic(&self.dir.join(format!("{name}.pem")), &cert_pem, 0o644)
    }
}

/// A built-in CA's root and intermediate as PEM (keys PKCS#8), for nodes that share one CA.
/// `Debug` leaves the keys out.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthorityPem {
    pub root: String,
    pub root_key: String,
    pub intermediate: String,
    pub intermediate_key: String,
}

impl std::fmt::Debug for AuthorityPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorityPem").finish_non_exhaustive()
    }
}

impl BuiltInCaSettings {
    /// The root and intermediate of this directory (after [`Self::ensure_authority`]).
    pub fn export_authority(&self) -> Result<AuthorityPem, TlsError> {
        let text = |name: &str| {
            let p = self.dir.join(name);
            String::from_utf8(read(&p)?).map_err(|_| TlsError::Invalid(format!("{} is not PEM text", p.display())))
        };
        Ok(AuthorityPem {
            root: text("root.pem")?,
            root_key: text("root.key")?,
            intermediate: text("intermediate.pem")?,
            intermediate_key: text("intermediate.key")?,
        })
    }

    /// Installs a shared root and intermediate in this directory, after checking that each
    /// key matches its certificate and the intermediate was issued by the root. Returns whether
    /// anything changed (the next [`Self::ensure`] then issues this node's leaf from it).
    pub fn import_authority(&self, a: &AuthorityPem) -> Result<bool, TlsError> {
        if self.export_authority().is_ok_and(|have| &have == a) {
            return Ok(false);
        }
        let pair = |name: &str, cert: &str, key: &str| -> Result<(X509, PKey<Private>), TlsError> {
            let p = self.dir.join(format!("{name}.pem"));
            let c = certs_from_pem(&p, cert.as_bytes())?.remove(0);
            let k = key_from_pem(&self.dir.join(format!("{name}.key")), key.as_bytes())?;
            if !c.public_key().map(|p| p.public_eq(&k)).unwrap_or(false) {
                return Err(TlsError::Invalid(format!("the shared {name} key does not match its certificate")));
            }
            Ok((c, k))
        };
        let (root, root_key) = pair("root", &a.root, &a.root_key)?;
        let (inter, inter_key) = pair("intermediate", &a.intermediate, &a.intermediate_key)?;
        if !issued_by(&inter, &root) {
            return Err(TlsError::Invalid("the shared intermediate was not issued by the shared root".into()));
        }
        std::fs::create_dir_all(&self.dir).map_err(|source| TlsError::Write { path: self.dir.clone(), source })?;
        let _ = std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700));
        self.store_pair("root", &root, &root_key)?;
        self.store_pair("intermediate", &inter, &inter_key)?;
        Ok(true)
    }
}

/// The root and the intermediate (with its key) a leaf is issued from.
struct Authority {
    root: X509,
    inter: X509,
    inter_key: PKey<Private>,
    new_root: bool,
    new_inter: bool,
}

/// Renew when less than a third of the certificate's lifetime is left.
fn remaining_fraction_ok(c: &X509Ref, now: i64) -> bool {
    let (nb, na) = (unix(c.not_before()), unix(c.not_after()));
    let span = (na - nb).max(1);
    (na - now) * 3 > span
}

fn issued_by(c: &X509Ref, issuer: &X509Ref) -> bool {
    issuer.public_key().and_then(|k| c.verify(&k)).unwrap_or(false)
}

fn has_names(c: &X509Ref, dns: &BTreeSet<String>, ips: &BTreeSet<IpAddr>) -> bool {
    let mut have_dns = BTreeSet::new();
    let mut have_ips = BTreeSet::new();
    for n in c.subject_alt_names().iter().flatten() {
        if let Some(d) = n.dnsname() {
            have_dns.insert(d.to_ascii_lowercase());
        }
        if let Some(ip) = n.ipaddress() {
            let ip = match ip.len() {
                4 => <[u8; 4]>::try_from(ip).ok().map(IpAddr::from),
                16 => <[u8; 16]>::try_from(ip).ok().map(IpAddr::from),
                _ => None,
            };
            have_ips.extend(ip);
        }
    }
    &have_dns == dns && &have_ips == ips
}

fn rsa(bits: u32) -> Result<PKey<Private>, TlsError> {
    let rsa = Rsa::generate(bits).map_err(TlsError::openssl("generating an RSA key"))?;
    PKey::from_rsa(rsa).map_err(TlsError::openssl("wrapping an RSA key"))
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let werr = |source| TlsError::Write { path: path.to_owned(), source };
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp).map_err(werr)?;
    f.write_all(bytes).map_err(werr)?;
    f.sync_all().map_err(werr)?;
    drop(f);
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(werr)?;
    std::fs::rename(&tmp, path).map_err(werr)
}

struct Spec<'a> {
    cn: &'a str,
    not_before: i64,
    not_after: i64,
    ca: Option<Option<u32>>,
    dns: Option<&'a BTreeSet<String>>,
    ips: Option<&'a BTreeSet<IpAddr>>,
}

impl<'a> Spec<'a> {
    fn root(now: i64) -> Self {
        Spec {
            cn: "OpenDPS Root CA",
            not_before: now - BACKDATE,
            not_after: now + ROOT_LIFETIME,
            ca: Some(None),
            dns: None,
            ips: None,
        }
    }
    fn intermediate(now: i64) -> Self {
        Spec {
            cn: "OpenDPS Intermediate CA",
            not_before: now - BACKDATE,
            not_after: now + INTERMEDIATE_LIFETIME,
            ca: Some(Some(0)),
            dns: None,
            ips: None,
        }
    }
    fn leaf(now: i64, lifetime: i64, dns: &'a BTreeSet<String>, ips: &'a BTreeSet<IpAddr>) -> Self {
        // Backdate by at most a tenth of the lifetime, so a short-lived leaf is not born "due".
        let backdate = BACKDATE.min(lifetime / 10);
        Spec {
            cn: "OpenDPS server",
            not_before: now - backdate,
            not_after: now + lifetime,
            ca: None,
            dns: Some(dns),
            ips: Some(ips),
        }
    }
}

fn issue(spec: &Spec<'_>, key: &PKeyRef<Private>, issuer: Option<(&X509, &PKey<Private>)>) -> Result<X509, TlsError> {
    let e = TlsError::openssl;
    let mut name = X509NameBuilder::new().map_err(e("certificate name"))?;
    name.append_entry_by_text("O", "OpenDPS").map_err(e("certificate name"))?;
    name.append_entry_by_text("CN", spec.cn).map_err(e("certificate name"))?;
    let name = name.build();

    let mut b = X509Builder::new().map_err(e("certificate builder"))?;
    b.set_version(2).map_err(e("certificate version"))?;
    let mut serial = BigNum::new().map_err(e("serial"))?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false).map_err(e("serial"))?;
    let serial = serial.to_asn1_integer().map_err(e("serial"))?;
    b.set_serial_number(&serial).map_err(e("serial"))?;
    b.set_subject_name(&name).map_err(e("subject"))?;
    match issuer {
        Some((ic, _)) => b.set_issuer_name(ic.subject_name()).map_err(e("issuer"))?,
        None => b.set_issuer_name(&name).map_err(e("issuer"))?,
    }
    b.set_pubkey(key).map_err(e("public key"))?;
    let not_before = Asn1Time::from_unix(spec.not_before).map_err(e("notBefore"))?;
    let not_after = Asn1Time::from_unix(spec.not_after).map_err(e("notAfter"))?;
    b.set_not_before(&not_before).map_err(e("notBefore"))?;
    b.set_not_after(&not_after).map_err(e("notAfter"))?;

    match spec.ca {
        Some(pathlen) => {
            let mut bc = BasicConstraints::new();
            bc.critical().ca();
            if let Some(n) = pathlen {
                bc.pathlen(n);
            }
            b.append_extension(bc.build().map_err(e("basicConstraints"))?).map_err(e("basicConstraints"))?;
            let ku = KeyUsage::new().critical().key_cert_sign().crl_sign().build().map_err(e("keyUsage"))?;
            b.append_extension(ku).map_err(e("keyUsage"))?;
        }
        None => {
            let bc = BasicConstraints::new().critical().build().map_err(e("basicConstraints"))?;
            b.append_extension(bc).map_err(e("basicConstraints"))?;
            // keyEncipherment: the RSA key-exchange suites (7-12) encrypt the premaster secret to this key.
            let ku =
                KeyUsage::new().critical().digital_signature().key_encipherment().build().map_err(e("keyUsage"))?;
            b.append_extension(ku).map_err(e("keyUsage"))?;
            let eku = ExtendedKeyUsage::new().server_auth().build().map_err(e("extendedKeyUsage"))?;
            b.append_extension(eku).map_err(e("extendedKeyUsage"))?;
        }
    }
    let ctx = b.x509v3_context(issuer.map(|(c, _)| c.as_ref()), None);
    let ski = SubjectKeyIdentifier::new().build(&ctx).map_err(e("subjectKeyIdentifier"))?;
    let aki = issuer
        .map(|_| AuthorityKeyIdentifier::new().keyid(false).build(&ctx))
        .transpose()
        .map_err(e("authorityKeyIdentifier"))?;
    let san = match (spec.dns, spec.ips) {
        (Some(dns), Some(ips)) => {
            let mut san = SubjectAlternativeName::new();
            for d in dns {
                san.dns(d);
            }
            for ip in ips {
                san.ip(&ip.to_string());
            }
            Some(san.build(&ctx).map_err(e("subjectAltName"))?)
        }
        _ => None,
    };
    b.append_extension(ski).map_err(e("subjectKeyIdentifier"))?;
    if let Some(aki) = aki {
        b.append_extension(aki).map_err(e("authorityKeyIdentifier"))?;
    }
    if let Some(san) = san {
        b.append_extension(san).map_err(e("subjectAltName"))?;
    }
    let signer = issuer.map_or(key, |(_, k)| k.as_ref());
    b.sign(signer, MessageDigest::sha256()).map_err(e("signing"))?;
    Ok(b.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path) -> BuiltInCaSettings {
        BuiltInCaSettings {
            dir: dir.to_owned(),
            dns_names: vec!["dps.example.test".into()],
            ip_addresses: vec!["127.0.0.7".parse().expect("ip")],
            leaf_lifetime: Duration::from_secs(3600),
        }
    }

    fn now() -> i64 {
        i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs())
            .expect("time")
    }

    #[test]
    fn first_start_creates_a_valid_chain_with_private_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = settings(dir.path());
        let (creds, root, renewal) = s.ensure(now()).expect("ca");
        assert_eq!(renewal, Renewal::Issued { root: true, intermediate: true });
        creds.validate(Some(&root), now()).expect("chain verifies to the root");
        for k in ["root.key", "intermediate.key", "server.key"] {
            let mode = std::fs::metadata(dir.path().join(k)).expect("key file").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{k} must be private");
        }
        let (dns, ips) = s.wanted_names();
        assert!(has_names(&creds.leaf, &dns, &ips));
        assert!(dns.contains("localhost") && ips.contains(&"127.0.0.7".parse::<IpAddr>().expect("ip")));
        assert_eq!(creds.key.bits(), 2048);
    }

    #[test]
    fn second_start_reuses_and_renewal_keeps_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = settings(dir.path());
        let t = now();
        let (first, root, _) = s.ensure(t).expect("ca");
        let (again, _, renewal) = s.ensure(t + 60).expect("ca");
        assert_eq!(renewal, Renewal::Unchanged);
        assert_eq!(first.fingerprint(), again.fingerprint());
        // Two thirds of the leaf's life later it is renewed under the same root and intermediate.
        let (renewed, root2, renewal) = s.ensure(t + 2500).expect("ca");
        assert_eq!(renewal, Renewal::Issued { root: false, intermediate: false });
        assert_ne!(renewed.fingerprint(), first.fingerprint());
        assert_eq!(root.to_der().expect("der"), root2.to_der().expect("der"));
        renewed.validate(Some(&root), t + 2500).expect("renewed leaf verifies");
    }

    #[test]
    fn validation_refuses_expired_and_not_yet_valid_certificates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (creds, root, _) = settings(dir.path()).ensure(now()).expect("ca");
        let late = creds.validate(Some(&root), now() + 7200).expect_err("expired");
        assert!(late.to_string().contains("expired"), "{late}");
        let early = creds.validate(Some(&root), now() - 86_400).expect_err("not yet valid");
        assert!(early.to_string().contains("not valid yet"), "{early}");
        let (other, other_root, _) = settings(tempfile::tempdir().expect("tempdir").path()).ensure(now()).expect("ca");
        let foreign = creds.validate(Some(&other_root), now()).expect_err("foreign root");
        assert!(foreign.to_string().contains("does not verify"), "{foreign}");
        let swapped = ServerCredentials { key: other.key, ..creds };
        assert!(swapped.validate(Some(&root), now()).expect_err("wrong key").to_string().contains("does not match"));
    }

    #[test]
    fn new_names_reissue_the_leaf() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = settings(dir.path());
        let (first, _, _) = s.ensure(now()).expect("ca");
        s.ip_addresses.push("127.0.0.8".parse().expect("ip"));
        let (second, _, renewal) = s.ensure(now()).expect("ca");
        assert!(matches!(renewal, Renewal::Issued { .. }));
        assert_ne!(first.fingerprint(), second.fingerprint());
    }

    #[test]
    fn damaged_leaf_is_reissued_not_served() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = settings(dir.path());
        s.ensure(now()).expect("ca");
        std::fs::write(dir.path().join("server.pem"), b"garbage").expect("write");
        let (creds, root, renewal) = s.ensure(now()).expect("ca");
        assert!(matches!(renewal, Renewal::Issued { .. }));
        creds.validate(Some(&root), now()).expect("valid");
    }
}
