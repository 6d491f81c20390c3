use super::names::{cipher_suite_name, group_name, signature_scheme_name};
use super::version::TlsVersion;

/// What a client offered in its ClientHello (GREASE values removed).
///
/// Captured for every connection, so the readiness evaluator can say later what this device
/// would do under a stricter policy, without the device having to connect again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Offered {
    /// `legacy_version` of the ClientHello (`0x0303` for TLS 1.2 and 1.3 clients).
    pub legacy_version: u16,
    /// The `supported_versions` extension, or `None` if the client did not send one (then it
    /// supports every version up to `legacy_version`).
    pub supported_versions: Option<Vec<u16>>,
    /// Cipher suite codes, in the client's order.
    pub cipher_suites: Vec<u16>,
    /// `supported_groups`; empty when the extension is absent.
    pub groups: Vec<u16>,
    /// `signature_algorithms`; empty when the extension is absent.
    pub signature_algorithms: Vec<u16>,
    /// Server name indication, if any.
    pub sni: Option<String>,
    /// ALPN protocol names, in the client's order.
    pub alpn: Vec<String>,
}

impl Offered {
    /// Whether the client is willing to speak `version`.
    pub fn offers_version(&self, version: TlsVersion) -> bool {
        match &self.supported_versions {
            Some(list) => list.contains(&version.code()),
            // Without the extension a client speaks every version up to legacy_version; TLS 1.3
            // can only be offered through the extension.
            None => version != TlsVersion::Tls13 && version.code() <= self.legacy_version,
        }
    }

    /// The versions the client offers, newest first, as names (`TLSv1.2`).
    pub fn version_names(&self) -> Vec<String> {
        let mut all = [TlsVersion::Tls13, TlsVersion::Tls12, TlsVersion::Tls11, TlsVersion::Tls10, TlsVersion::Ssl3]
            .into_iter()
            .filter(|v| self.offers_version(*v))
            .map(|v| v.name().to_owned())
            .collect::<Vec<_>>();
        if let Some(list) = &self.supported_versions {
            // Unknown codes (drafts) are kept visible rather than silently dropped.
            all.extend(list.iter().filter(|c| TlsVersion::from_code(**c).is_none()).map(|c| format!("0x{c:04X}")));
        }
        all
    }

    /// The offered cipher suites by name, in the client's order (lazily: written into a log
    /// line or a record without collecting them first).
    pub fn cipher_suite_names(&self) -> OfferedNames<'_> {
        self.cipher_suites.iter().map(|c| cipher_suite_name(*c))
    }

    pub fn group_names(&self) -> OfferedNames<'_> {
        self.groups.iter().map(|c| group_name(*c))
    }

    pub fn signature_algorithm_names(&self) -> OfferedNames<'_> {
        self.signature_algorithms.iter().map(|c| signature_scheme_name(*c))
    }
}

/// The names of one of an [`Offered`]'s lists of wire codes, in order.
pub type OfferedNames<'a> = std::iter::Map<std::slice::Iter<'a, u16>, fn(&u16) -> std::borrow::Cow<'static, str>>;

/// What the handshake settled on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Negotiated {
    pub version: TlsVersion,
    /// Cipher suite wire code.
    pub cipher_suite: u16,
    /// Key-exchange group name as OpenSSL reports it (`secp256r1`), if any (none for RSA key exchange).
    pub group: Option<String>,
    pub alpn: Option<String>,
    /// The session was resumed (ticket), so no certificate or key exchange was done.
    pub resumed: bool,
    /// The client sent a certificate and proved possession of its key.
    pub client_certificate: bool,
}

impl Negotiated {
    pub fn cipher_suite_name(&self) -> std::borrow::Cow<'static, str> {
        cipher_suite_name(self.cipher_suite)
    }
}

/// The TLS facts of one connection: offered and negotiated. The value protocol layers attach to
/// a registration record (docs/tls.md, "Handshake facts").
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HandshakeFacts {
    /// `None` when the ClientHello never arrived or could not be parsed.
    pub offered: Option<Offered>,
    pub negotiated: Negotiated,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_without_certificates_share_one_empty_value() {
        let a = PeerCertificates::default().into_shared();
        let b = PeerCertificates::default().into_shared();
        assert!(std::sync::Arc::ptr_eq(&a, &b));
        let chain = PeerCertificates::from(vec![vec![0x30, 0x00]]).into_shared();
        assert!(!std::sync::Arc::ptr_eq(&a, &chain));
        assert_eq!(chain.leaf(), Some(&[0x30, 0x00][..]));
    }

    #[test]
    fn versions_without_extension_run_up_to_legacy_version() {
        let o = Offered { legacy_version: 0x0303, ..Offered::default() };
        assert!(o.offers_version(TlsVersion::Tls12));
        assert!(o.offers_version(TlsVersion::Tls10));
        assert!(!o.offers_version(TlsVersion::Tls13));
        assert_eq!(o.version_names(), ["TLSv1.2", "TLSv1.1", "TLSv1", "SSLv3"]);
    }

    #[test]
    fn versions_with_extension_are_exactly_the_list() {
        let o =
            Offered { legacy_version: 0x0303, supported_versions: Some(vec![0x0304, 0x7f1c]), ..Offered::default() };
        assert!(o.offers_version(TlsVersion::Tls13));
        assert!(!o.offers_version(TlsVersion::Tls12));
        assert_eq!(o.version_names(), ["TLSv1.3", "0x7F1C"]);
    }
}

/// The certificates a client presented, DER, leaf first. Possession of the leaf's key was
/// proved in the handshake; whether the chain is *trusted* is decided by attestation against an
/// enrollment, never by the TLS layer.
///
/// The second field is the same chain as the TLS layer decoded it, if it kept it: opaque to core,
/// read only by a `DeviceCrypto` adapter that knows its type, so that attestation does not decode
/// the chain a second time (docs/performance.md, "X.509 registrations"). Equality is the DER's.
#[derive(Clone, Debug, Default)]
pub struct PeerCertificates(pub Vec<Vec<u8>>, pub Decoded);

/// A chain as some TLS library decoded it (see [`PeerCertificates`]).
#[derive(Clone, Default)]
pub struct Decoded(pub Option<std::sync::Arc<dyn std::any::Any + Send + Sync>>);

impl std::fmt::Debug for Decoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Decoded(..)" } else { "Decoded(None)" })
    }
}

impl PartialEq for PeerCertificates {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for PeerCertificates {}

impl From<Vec<Vec<u8>>> for PeerCertificates {
    fn from(der: Vec<Vec<u8>>) -> Self {
        PeerCertificates(der, Decoded::default())
    }
}

impl PeerCertificates {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The client's own certificate, DER.
    pub fn leaf(&self) -> Option<&[u8]> {
        self.0.first().map(Vec::as_slice)
    }

    /// These certificates behind an `Arc`, as a connection keeps them. Most connections have
    /// none (every device but an X.509 one), and those share one empty value instead of holding
    /// an allocation each for their whole life.
    pub fn into_shared(self) -> std::sync::Arc<Self> {
        static NONE: std::sync::OnceLock<std::sync::Arc<PeerCertificates>> = std::sync::OnceLock::new();
        if self.0.is_empty() && self.1 .0.is_none() {
            NONE.get_or_init(Default::default).clone()
        } else {
            std::sync::Arc::new(self)
        }
    }
}

/// The TLS facts of a connection as JSON (camelCase, IANA names): what `/health` shows a
/// client about its own connection.
pub fn facts_json(facts: &HandshakeFacts, peer_certificates: &PeerCertificates) -> serde_json::Value {
    serde_json::to_value(FactsOut::of(facts, peer_certificates)).unwrap_or(serde_json::Value::Null)
}

/// The same facts as [`facts_json`], written straight to text, the offer in place: what a record
/// held before offers were stored once, and what [`StoredFacts::with_offer`] gives back. Records
/// are written by [`facts_for_record`]; this whole form is kept for the tests that hold the
/// two to each other.
#[cfg(test)]
pub fn facts_record(facts: &HandshakeFacts, peer_certificates: &PeerCertificates) -> StoredFacts {
    match serde_json::value::to_raw_value(&FactsOut::of(facts, peer_certificates)) {
        Ok(raw) => StoredFacts(raw),
        // Serializing plain strings, numbers and lists cannot fail; keep the record valid anyway.
        Err(_) => StoredFacts::from_value(&serde_json::Value::Null),
    }
}

/// One distinct offer as registration records share it: stored once, under an id derived from
/// its text, and named by that id from the facts of every record whose connection offered it
/// (docs/performance.md, "Offers stored once"). A fleet's devices share one TLS stack, so their
/// ClientHellos, by far the bulk of the facts, are identical.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredOffer {
    /// The first 128 bits of the text's SHA-256, hex: another text cannot be made to take the
    /// id of a fleet's offer.
    pub id: String,
    /// The `offered` object of [`facts_json`], as JSON text.
    pub json: String,
}

impl StoredOffer {
    /// The offer of `json` (the `offered` object's text) with its id.
    pub fn of(json: String) -> StoredOffer {
        StoredOffer { id: StoredOffer::id_of(&json), json }
    }

    /// The id of the offer whose text is `json`.
    pub fn id_of(json: &str) -> String {
        use sha2::Digest;
        crate::hex::lower(&sha2::Sha256::digest(json.as_bytes())[..16])
    }
}

/// What a registration writes for its connection: the record's facts, which name the offer by
/// id, and the offer itself, to be stored once (`None` when no ClientHello was captured; then the
/// facts say `"offered": null` as before).
#[derive(Clone, Debug, PartialEq)]
pub struct RecordFacts {
    pub facts: StoredFacts,
    pub offer: Option<StoredOffer>,
}

/// The facts of [`facts_json`], written straight to text (no JSON tree is built on the way:
/// docs/performance.md, "Registration records") with the offer split out: the record keeps
/// `negotiated` and `offeredRef` (the offer's id); [`StoredFacts::with_offer`] puts the offer back.
pub fn facts_for_record(facts: &HandshakeFacts, peer_certificates: &PeerCertificates) -> RecordFacts {
    let all = FactsOut::of(facts, peer_certificates);
    let offer = all.offered.as_ref().and_then(|o| serde_json::to_string(o).ok()).map(StoredOffer::of);
    let text = match &offer {
        Some(offer) => {
            serde_json::value::to_raw_value(&FactsRefOut { negotiated: all.negotiated, offered_ref: &offer.id })
        }
        None => serde_json::value::to_raw_value(&all),
    };
    match text {
        Ok(raw) => RecordFacts { facts: StoredFacts(raw), offer },
        // Serializing plain strings, numbers and lists cannot fail; keep the record valid anyway.
        Err(_) => RecordFacts { facts: StoredFacts::from_value(&serde_json::Value::Null), offer: None },
    }
}

/// The TLS facts a registration record keeps, as the JSON text [`facts_for_record`] wrote. Kept as
/// text: a registration is read on every poll, and only the readiness report and the service
/// API's registration view look inside (through [`StoredFacts::to_value`]).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct StoredFacts(Box<serde_json::value::RawValue>);

impl StoredFacts {
    /// Facts given as a JSON value (tests, seeded data).
    pub fn from_value(v: &serde_json::Value) -> StoredFacts {
        #[allow(clippy::expect_used)] // a `Value` always serializes
        StoredFacts(serde_json::value::to_raw_value(v).expect("a JSON value serializes"))
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The facts as a JSON value (`Null` if the stored text is not JSON, which a record read
    /// back through serde cannot be).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(self.0.get()).unwrap_or(serde_json::Value::Null)
    }

    /// The id of the offer these facts name, if they name one rather than holding it (records
    /// written before offers were stored once hold it).
    pub fn offer_ref(&self) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Ref {
            #[serde(rename = "offeredRef")]
            offered_ref: Option<String>,
        }
        serde_json::from_str::<Ref>(self.0.get()).ok()?.offered_ref
    }

    /// These facts with the named offer put back in place of its id: the text the record held
    /// before offers were stored once, keys sorted as a JSON tree writes them. `offer` is the stored offer's JSON text; facts that
    /// name no offer, and an offer that is not JSON, leave the facts as they are.
    pub fn with_offer(&self, offer: &str) -> StoredFacts {
        self.offer_in_place(offer)
    }

    /// These facts with `"offered": null` in place of the id of an offer the store does not
    /// hold: what facts say when no offer was captured.
    pub fn without_offer(&self) -> StoredFacts {
        self.offer_in_place("null")
    }

    fn offer_in_place(&self, offer: &str) -> StoredFacts {
        let Some(id) = self.offer_ref() else { return self.clone() };
        // `offeredRef` is the last key [`facts_for_record`] writes, and `offered` sorts where it
        // was: the record's text with its end replaced is the whole text.
        let head = self.0.get().strip_suffix(&format!(",\"offeredRef\":\"{id}\"}}"));
        // Only one JSON value goes in (a text such as `1,"x":2` would splice into valid JSON),
        // and never beside an `offered` key some other writer left.
        let one_value = serde_json::from_str::<&serde_json::value::RawValue>(offer).is_ok();
        let whole = match head {
            Some(head) if !one_value || head.contains("\"offered\":") => return self.clone(),
            Some(head) => serde_json::value::RawValue::from_string(format!("{head},\"offered\":{offer}}}")).ok(),
            // Text some other writer laid out: through a JSON tree.
            None => {
                let (mut facts, Ok(offer)) = (self.to_value(), serde_json::from_str::<serde_json::Value>(offer)) else {
                    return self.clone();
                };
                let Some(o) = facts.as_object_mut() else { return self.clone() };
                o.remove("offeredRef");
                o.insert("offered".into(), offer);
                serde_json::value::to_raw_value(&facts).ok()
            }
        };
        whole.map_or_else(|| self.clone(), StoredFacts)
    }
}

impl PartialEq for StoredFacts {
    fn eq(&self, other: &Self) -> bool {
        self.to_value() == other.to_value()
    }
}

/// The shape of the facts JSON. Keys are declared in sorted order, the order a
/// `serde_json::Value` object (a `BTreeMap`) writes them in, so the stored text is the same as
/// when the record kept a JSON tree.
#[derive(serde::Serialize)]
struct FactsOut<'a> {
    negotiated: NegotiatedOut<'a>,
    offered: Option<OfferedOut<'a>>,
}

/// The facts a record keeps when the offer is stored on its own (sorted keys, as [`FactsOut`]).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct FactsRefOut<'a> {
    negotiated: NegotiatedOut<'a>,
    offered_ref: &'a str,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct NegotiatedOut<'a> {
    alpn: &'a Option<String>,
    cipher_suite: std::borrow::Cow<'static, str>,
    client_certificate: bool,
    client_certificate_chain_length: usize,
    group: &'a Option<String>,
    resumed: bool,
    version: &'static str,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct OfferedOut<'a> {
    alpn: &'a [String],
    cipher_suites: Names<OfferedNames<'a>>,
    /// Wire codes, so the readiness report can re-evaluate this offer later.
    codes: CodesOut<'a>,
    groups: Names<OfferedNames<'a>>,
    signature_algorithms: Names<OfferedNames<'a>>,
    sni: &'a Option<String>,
    versions: Vec<String>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct CodesOut<'a> {
    cipher_suites: &'a [u16],
    groups: &'a [u16],
    legacy_version: u16,
    signature_algorithms: &'a [u16],
    supported_versions: &'a Option<Vec<u16>>,
}

/// Names written as a JSON list straight from an [`Offered`] name iterator.
struct Names<I>(I);

impl<I: Iterator<Item = std::borrow::Cow<'static, str>> + Clone> serde::Serialize for Names<I> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.clone())
    }
}

impl<'a> FactsOut<'a> {
    fn of(facts: &'a HandshakeFacts, peer_certificates: &PeerCertificates) -> FactsOut<'a> {
        let n = &facts.negotiated;
        FactsOut {
            negotiated: NegotiatedOut {
                alpn: &n.alpn,
                cipher_suite: n.cipher_suite_name(),
                client_certificate: n.client_certificate,
                client_certificate_chain_length: peer_certificates.0.len(),
                group: &n.group,
                resumed: n.resumed,
                version: n.version.name(),
            },
            offered: facts.offered.as_ref().map(|o| OfferedOut {
                alpn: &o.alpn,
                cipher_suites: Names(o.cipher_suite_names()),
                codes: CodesOut {
                    cipher_suites: &o.cipher_suites,
                    groups: &o.groups,
                    legacy_version: o.legacy_version,
                    signature_algorithms: &o.signature_algorithms,
                    supported_versions: &o.supported_versions,
                },
                groups: Names(o.group_names()),
                signature_algorithms: Names(o.signature_algorithm_names()),
                sni: &o.sni,
                versions: o.version_names(),
            }),
        }
    }
}

impl Offered {
    /// Rebuilds an offer from the `offered` object of [`facts_json`] (its `codes`).
    pub fn from_json(offered: &serde_json::Value) -> Option<Offered> {
        let codes = offered.get("codes")?;
        let list = |k: &str| -> Option<Vec<u16>> {
            codes.get(k)?.as_array()?.iter().map(|v| v.as_u64().and_then(|n| u16::try_from(n).ok())).collect()
        };
        Some(Offered {
            legacy_version: u16::try_from(codes.get("legacyVersion")?.as_u64()?).ok()?,
            supported_versions: match codes.get("supportedVersions") {
                Some(serde_json::Value::Null) | None => None,
                Some(_) => Some(list("supportedVersions")?),
            },
            cipher_suites: list("cipherSuites")?,
            groups: list("groups").unwrap_or_default(),
            signature_algorithms: list("signatureAlgorithms").unwrap_or_default(),
            sni: offered.get("sni").and_then(serde_json::Value::as_str).map(str::to_owned),
            alpn: Vec::new(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod json_tests {
    use super::*;

    /// A TLS 1.2 and 1.3 client's offer, without ALPN.
    fn sample_offer() -> Offered {
        Offered {
            legacy_version: 0x0303,
            supported_versions: Some(vec![0x0304, 0x0303]),
            cipher_suites: vec![0xC02F, 0x002F],
            groups: vec![0x0017],
            signature_algorithms: vec![0x0804],
            sni: Some("dps.example".into()),
            alpn: vec![],
        }
    }

    #[test]
    fn offers_round_trip_through_json() {
        let o = sample_offer();
        let facts = HandshakeFacts {
            offered: Some(o.clone()),
            negotiated: Negotiated {
                version: TlsVersion::Tls12,
                cipher_suite: 0xC02F,
                group: None,
                alpn: None,
                resumed: false,
                client_certificate: false,
            },
        };
        let v = facts_json(&facts, &PeerCertificates::default());
        assert_eq!(Offered::from_json(&v["offered"]), Some(o));
        let stored = facts_record(&facts, &PeerCertificates::default());
        assert_eq!(stored.to_value(), v);
        assert_eq!(Offered::from_json(&stored.to_value()["offered"]), facts.offered);
    }

    /// The facts as the record built them before the typed writer, key by key: the oracle the
    /// writer's text is held to.
    fn tree_as_built_before(facts: &HandshakeFacts, peer_certificates: &PeerCertificates) -> serde_json::Value {
        let n = &facts.negotiated;
        let offered = facts.offered.as_ref().map(|o| {
            serde_json::json!({
                "versions": o.version_names(),
                "cipherSuites": o.cipher_suite_names().collect::<Vec<_>>(),
                "groups": o.group_names().collect::<Vec<_>>(),
                "signatureAlgorithms": o.signature_algorithm_names().collect::<Vec<_>>(),
                "sni": o.sni,
                "alpn": o.alpn,
                "codes": {
                    "legacyVersion": o.legacy_version,
                    "supportedVersions": o.supported_versions,
                    "cipherSuites": o.cipher_suites,
                    "groups": o.groups,
                    "signatureAlgorithms": o.signature_algorithms,
                },
            })
        });
        serde_json::json!({
            "negotiated": {
                "version": n.version.name(),
                "cipherSuite": n.cipher_suite_name(),
                "group": n.group,
                "alpn": n.alpn,
                "resumed": n.resumed,
                "clientCertificate": n.client_certificate,
                "clientCertificateChainLength": peer_certificates.0.len(),
            },
            "offered": offered,
        })
    }

    /// The record's text is what a JSON tree of the same facts writes (sorted keys, nulls kept):
    /// records written before and after the typed writer read the same.
    #[test]
    fn stored_facts_are_written_as_a_json_tree_would_write_them() {
        for offered in [
            None,
            Some(Offered::default()),
            Some(Offered {
                legacy_version: 0x0303,
                supported_versions: None,
                cipher_suites: vec![0xC030, 0x1301, 0x0A0A],
                groups: vec![0x001D, 0x0017],
                signature_algorithms: vec![0x0401, 0x0804],
                sni: Some("a\"b".into()),
                alpn: vec!["mqtt".into(), "h2".into()],
            }),
        ] {
            let facts = HandshakeFacts {
                offered,
                negotiated: Negotiated {
                    version: TlsVersion::Tls13,
                    cipher_suite: 0x1302,
                    group: Some("x25519".into()),
                    alpn: Some("mqtt".into()),
                    resumed: true,
                    client_certificate: true,
                },
            };
            let peers = PeerCertificates::from(vec![vec![1u8], vec![2u8]]);
            let stored = facts_record(&facts, &peers);
            let tree = facts_json(&facts, &peers);
            assert_eq!(stored.get(), serde_json::to_string(&tree).unwrap());
            assert_eq!(stored.get(), serde_json::to_string(&tree_as_built_before(&facts, &peers)).unwrap());
            assert_eq!(tree["negotiated"]["clientCertificateChainLength"], 2);
            assert_eq!(tree["negotiated"]["version"], "TLSv1.3");
            // Through a record and back.
            let back: StoredFacts = serde_json::from_str(&serde_json::to_string(&stored).unwrap()).unwrap();
            assert_eq!(back, stored);
            assert_eq!(back.get(), stored.get());
        }
    }

    /// A record's facts with the offer split out read, once the offer is put back, exactly as
    /// the facts kept whole: the readiness report and the service API see no difference.
    #[test]
    fn split_facts_put_back_read_as_whole_facts() {
        let offered = Offered { alpn: vec!["mqtt".into()], ..sample_offer() };
        let negotiated = Negotiated {
            version: TlsVersion::Tls12,
            cipher_suite: 0xC02F,
            group: Some("secp256r1".into()),
            alpn: None,
            resumed: false,
            client_certificate: true,
        };
        let peers = PeerCertificates::from(vec![vec![1u8]]);
        let facts = HandshakeFacts { offered: Some(offered.clone()), negotiated: negotiated.clone() };
        let whole = facts_record(&facts, &peers);
        let split = facts_for_record(&facts, &peers);
        let offer = split.offer.clone().unwrap();
        assert_eq!(offer.id.len(), 32);
        assert!(offer.id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(serde_json::from_str::<serde_json::Value>(&offer.json).unwrap(), whole.to_value()["offered"]);
        assert_eq!(split.facts.offer_ref().as_deref(), Some(offer.id.as_str()));
        assert!(split.facts.to_value().get("offered").is_none(), "the record does not hold the offer");
        assert!(split.facts.get().len() < whole.get().len());
        assert_eq!(split.facts.with_offer(&offer.json).get(), whole.get());
        assert_eq!(whole.offer_ref(), None);
        assert_eq!(whole.with_offer(&offer.json).get(), whole.get(), "whole facts stay as they are");
        assert_eq!(split.facts.with_offer("not json").get(), split.facts.get());
        assert_eq!(split.facts.with_offer("1,\"x\":2").get(), split.facts.get(), "one value or nothing");
        let missing = split.facts.without_offer().to_value();
        assert_eq!(missing["offered"], serde_json::Value::Null);
        assert!(missing.get("offeredRef").is_none());
        assert_eq!(missing["negotiated"], whole.to_value()["negotiated"]);
        // Facts laid out by another writer (keys in another order) are put back through a tree.
        let text = format!("{{\"offeredRef\":\"{}\",\"negotiated\":{}}}", offer.id, whole.to_value()["negotiated"]);
        let reordered = StoredFacts(serde_json::value::RawValue::from_string(text).unwrap());
        assert_eq!(reordered.with_offer(&offer.json).get(), whole.get());

        // The id follows the offer: the same offer, the same id; another offer, another id.
        let again = facts_for_record(
            &HandshakeFacts { offered: Some(offered.clone()), negotiated: negotiated.clone() },
            &PeerCertificates::default(),
        );
        assert_eq!(again.offer.as_ref().map(|o| &o.id), Some(&offer.id));
        let other = Offered { cipher_suites: vec![0xC02F], ..offered };
        let other = facts_for_record(&HandshakeFacts { offered: Some(other), negotiated: negotiated.clone() }, &peers);
        assert_ne!(other.offer.map(|o| o.id), Some(offer.id));

        // No ClientHello: nothing to share, the facts say so in place.
        let none = HandshakeFacts { offered: None, negotiated };
        let split = facts_for_record(&none, &peers);
        assert_eq!(split.offer, None);
        assert_eq!(split.facts.get(), facts_record(&none, &peers).get());
    }
}
