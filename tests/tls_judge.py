#!/usr/bin/env python3
"""Judges one TLS listener of OpenDPS against the TLS contract of docs/tls.md, from what outside
tools saw: sslyze's JSON, nmap's ssl-enum-ciphers XML, and three `openssl s_client` probes
(tests/tls_scan.sh runs them all and then this script).

The expected values are written here from docs/tls.md, not read from the server: the server is
what is being checked.

    tls_judge.py --target 127.0.0.43:443 --profile dps-legacy-security [--tls13]
                 [--client-cert optional|none] --out DIR

DIR holds sslyze.json, nmap.xml, probe-certreq.txt (+ .rc), probe-groups.txt, probe-tls11.txt.
Prints one line per check (PASS / FAIL / INFO), then exactly one summary line:

    SUMMARY: PASS <target> <profile> (N checks passed)
    SUMMARY: FAIL <target> <profile> (K of N checks failed: name,name)

Exit status: 0 pass, 1 fail, 2 could not judge (a tool produced nothing).
"""
import argparse
import json
import os
import sys
import xml.etree.ElementTree as ET

# docs/tls.md, "Cipher suites": the twelve TLS 1.2 suites, by their number there.
SUITES = {
    1: "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    2: "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    3: "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384",
    4: "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
    5: "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    6: "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    7: "TLS_RSA_WITH_AES_256_GCM_SHA384",
    8: "TLS_RSA_WITH_AES_128_GCM_SHA256",
    9: "TLS_RSA_WITH_AES_256_CBC_SHA256",
    10: "TLS_RSA_WITH_AES_128_CBC_SHA256",
    11: "TLS_RSA_WITH_AES_256_CBC_SHA",
    12: "TLS_RSA_WITH_AES_128_CBC_SHA",
}
# docs/tls.md, "Profiles": server-preference order of each named profile.
PROFILES = {
    "dps-legacy-security": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
    "dps-legacy-performance": [1, 2, 3, 4, 6, 5, 8, 7, 10, 9, 12, 11],
    "dps-recommended": [1, 2, 3, 4],
}
# docs/tls.md, "Protocol versions": the TLS 1.3 suites when 1.3 is enabled.
TLS13_SUITES = {"TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256"}
# docs/tls.md, "Key exchange groups": P-256 then P-384, nothing else by default.
GROUPS = ["secp256r1", "secp384r1"]
GROUP_ALIASES = {"prime256v1": "secp256r1", "P-256": "secp256r1", "secp384r1": "secp384r1", "P-384": "secp384r1"}


class Verdicts:
    def __init__(self):
        self.passed, self.failed = [], []

    @staticmethod
    def _line(tag, name, detail):
        print(f"{tag:<4} {name:<26} {detail}".rstrip(), flush=True)

    def check(self, ok, name, detail):
        (self.passed if ok else self.failed).append(name)
        self._line("PASS" if ok else "FAIL", name, detail)

    def info(self, name, detail):
        self._line("INFO", name, detail)


def read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def sslyze_result(out_dir):
    doc = json.loads(read(os.path.join(out_dir, "sslyze.json")) or "{}")
    results = doc.get("server_scan_results") or []
    return results[0] if results else None


def accepted(scan, key):
    """IANA names sslyze saw accepted by one protocol scan, or None if that scan did not run."""
    entry = scan.get(key) or {}
    if entry.get("status") != "COMPLETED" or entry.get("result") is None:
        return None
    return [a["cipher_suite"]["name"] for a in entry["result"]["accepted_cipher_suites"]]


def result_of(scan, key):
    entry = scan.get(key) or {}
    return entry.get("result") if entry.get("status") == "COMPLETED" else None


def nmap_tables(out_dir):
    """{protocol: (preference, [suite names in the order nmap lists them])} from the XML."""
    text = read(os.path.join(out_dir, "nmap.xml"))
    if not text:
        return None
    tables = {}
    for script in ET.fromstring(text).iter("script"):
        if script.get("id") != "ssl-enum-ciphers":
            continue
        for proto in script.findall("table"):
            pref, names = None, []
            for child in proto:
                if child.tag == "elem" and child.get("key") == "cipher preference":
                    pref = child.text
                elif child.tag == "table" and child.get("key") == "ciphers":
                    for c in child.findall("table"):
                        names += [e.text for e in c.findall("elem") if e.get("key") == "name"]
            tables[proto.get("key")] = (pref, names)
    return tables


def probe(out_dir, name):
    """(output, exit code) of an s_client probe."""
    text = read(os.path.join(out_dir, f"probe-{name}.txt")) or ""
    rc = (read(os.path.join(out_dir, f"probe-{name}.rc")) or "").strip()
    return text, int(rc) if rc.lstrip("-").isdigit() else None


def judge(a):
    v = Verdicts()
    res = sslyze_result(a.out)
    if res is None or res.get("connectivity_status") != "COMPLETED":
        why = "no sslyze result" if res is None else (res.get("connectivity_error_trace") or "").strip()[-200:]
        print(f"FAIL sslyze-connect             sslyze could not scan: {why}")
        return v, 2
    scan = res.get("scan_result") or {}
    want = [SUITES[n] for n in PROFILES[a.profile]]

    # Protocol versions.
    for key, name in (("ssl_2_0_cipher_suites", "sslv2-refused"), ("ssl_3_0_cipher_suites", "sslv3-refused"),
                      ("tls_1_0_cipher_suites", "tls1.0-refused"), ("tls_1_1_cipher_suites", "tls1.1-refused")):
        got = accepted(scan, key)
        v.check(got == [], name, "scan did not run" if got is None else
                ("refused" if not got else f"ACCEPTED: {','.join(got)}"))
    text, rc = probe(a.out, "tls11")
    v.check(rc not in (None, 0) and "alert protocol version" in text, "old-hello-alert",
            "a TLS 1.1 ClientHello gets a protocol_version alert" if "alert protocol version" in text
            else f"no protocol_version alert (s_client exit {rc})")

    got12 = accepted(scan, "tls_1_2_cipher_suites")
    if got12 is None:
        v.check(False, "tls1.2-suites-exact", "the TLS 1.2 scan did not run")
        got12 = []
    else:
        missing = [s for s in want if s not in got12]
        extra = sorted(set(got12) - set(want))
        v.check(not missing and not extra, "tls1.2-suites-exact",
                f"exactly the {len(want)} suites of {a.profile}" if not missing and not extra
                else f"missing {missing} extra {extra}")

    got13 = accepted(scan, "tls_1_3_cipher_suites")
    if got13 is None:
        v.check(False, "tls1.3-as-configured", "the TLS 1.3 scan did not run")
    elif a.tls13:
        v.check(set(got13) == TLS13_SUITES, "tls1.3-as-configured",
                f"enabled, suites {sorted(got13)} (expected {sorted(TLS13_SUITES)})")
    else:
        v.check(not got13, "tls1.3-as-configured", "refused (not enabled)" if not got13 else
                f"ACCEPTED although not enabled: {got13}")

    # Server preference order, from nmap (an independent tool).
    tables = nmap_tables(a.out)
    if tables is None:
        v.check(False, "tls1.2-server-order", "nmap wrote no XML")
    else:
        pref, order = tables.get("TLSv1.2", (None, []))
        if pref == "server" and order == want:
            detail = f"server preference, in {a.profile} order"
        else:
            at = next((i for i, (x, y) in enumerate(zip(order, want)) if x != y), min(len(order), len(want)))
            detail = (f"preference {pref!r}; from position {at + 1} the server prefers {order[at:at + 3]}, "
                      f"{a.profile} wants {want[at:at + 3]}")
        v.check(pref == "server" and order == want, "tls1.2-server-order", detail)
        v.check(set(order) == set(got12), "scanners-agree",
                "nmap and sslyze saw the same TLS 1.2 suites" if set(order) == set(got12)
                else f"only nmap {sorted(set(order) - set(got12))}, only sslyze {sorted(set(got12) - set(order))}")
        protocols = sorted(tables)
        v.check(protocols == (["TLSv1.2", "TLSv1.3"] if a.tls13 else ["TLSv1.2"]), "nmap-protocols",
                f"nmap saw {','.join(protocols) or 'nothing'}")

    # Key exchange groups: exactly P-256 and P-384, P-256 preferred.
    ec = result_of(scan, "elliptic_curves")
    groups = [c["name"] for c in (ec or {}).get("supported_curves") or []]
    v.check(sorted(groups) == sorted(GROUPS), "groups-exact",
            f"supported {groups} (expected {GROUPS})")
    text, _ = probe(a.out, "groups")
    temp = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Server Temp Key:")), "")
    picked = next((GROUP_ALIASES[w.strip(",")] for w in temp.split() if w.strip(",") in GROUP_ALIASES), None)
    v.check(picked == GROUPS[0], "group-preference",
            f"client offering P-384 first got {picked or temp or 'no ECDHE key'} (expected {GROUPS[0]})")

    # Certificates: leaf + intermediate, RSA, verifying to the root the server made.
    ci = result_of(scan, "certificate_info")
    if not ci:
        v.check(False, "certificate-chain", "sslyze certinfo did not run")
    else:
        dep = ci["certificate_deployments"][0]
        chain = dep["received_certificate_chain"]
        key = chain[0]["public_key"] if chain else {}
        supplied = [p for p in dep["path_validation_results"] if p["trust_store"]["name"] == "Supplied CA file"]
        verified = bool(supplied) and supplied[0]["was_validation_successful"]
        ok = len(chain) >= 2 and dep.get("received_chain_has_valid_order") is not False and verified
        subjects = " <- ".join(c["subject"]["rfc4514_string"] for c in chain)
        v.check(ok, "certificate-chain",
                f"{len(chain)} certificates ({subjects}); verifies to the server's root: {'yes' if verified else 'NO'}")
        rsa = key.get("algorithm") == "RSAPublicKey" and (key.get("key_size") or 0) >= 2048
        v.check(rsa, "certificate-rsa", f"leaf key {key.get('algorithm')} {key.get('key_size')} bits")
        v.info("root-sent", str(dep.get("received_chain_contains_anchor_certificate")))

    # Client certificate: requested (empty CA list) but never required, or not requested at all.
    auth = (res.get("connectivity_result") or {}).get("client_auth_requirement")
    text, rc = probe(a.out, "certreq")
    requested = "Client Certificate Types" in text
    no_ca_names = "No client certificate CA names sent" in text
    if a.client_cert == "optional":
        ok = auth == "OPTIONAL" and requested and rc == 0 and no_ca_names
        v.check(ok, "client-cert-optional",
                f"sslyze {auth}; s_client without a certificate: request {'sent' if requested else 'NOT sent'}, "
                f"handshake {'completed' if rc == 0 else f'failed ({rc})'}"
                + (f", CA list {'empty' if no_ca_names else 'NOT empty'}" if requested else ""))
    else:
        ok = auth == "DISABLED" and not requested and rc == 0
        v.check(ok, "client-cert-not-requested",
                f"sslyze {auth}; s_client: request {'SENT' if requested else 'not sent'}, exit {rc}")

    # Everything else in the handshake.
    rn = result_of(scan, "session_renegotiation") or {}
    v.check(rn.get("is_vulnerable_to_client_renegotiation_dos") is False, "client-renegotiation-refused",
            f"client renegotiations accepted: {rn.get('client_renegotiations_success_count')}")
    v.check(rn.get("supports_secure_renegotiation") is True, "secure-renegotiation",
            f"supported: {rn.get('supports_secure_renegotiation')}")
    comp = result_of(scan, "tls_compression") or {}
    v.check(comp.get("supports_compression") is False, "no-compression", f"supported: {comp.get('supports_compression')}")
    ems = result_of(scan, "tls_extended_master_secret") or {}
    v.check(ems.get("supports_ems_extension") is True, "extended-master-secret",
            f"supported: {ems.get('supports_ems_extension')}")
    resum = result_of(scan, "session_resumption") or {}
    v.check(resum.get("tls_ticket_resumption_result") == "FULLY_SUPPORTED", "ticket-resumption",
            f"tickets {resum.get('tls_ticket_resumption_result')}, session ids {resum.get('session_id_resumption_result')}")
    hb = result_of(scan, "heartbleed") or {}
    v.check(hb.get("is_vulnerable_to_heartbleed") is False, "no-heartbleed", f"vulnerable: {hb.get('is_vulnerable_to_heartbleed')}")
    ccs = result_of(scan, "openssl_ccs_injection") or {}
    v.check(ccs.get("is_vulnerable_to_ccs_injection") is False, "no-ccs-injection",
            f"vulnerable: {ccs.get('is_vulnerable_to_ccs_injection')}")
    fb = result_of(scan, "tls_fallback_scsv") or {}
    v.info("fallback-scsv", f"supported: {fb.get('supports_fallback_scsv')}")
    return v, None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True)
    ap.add_argument("--profile", required=True, choices=sorted(PROFILES))
    ap.add_argument("--tls13", action="store_true", help="TLS 1.3 is enabled on the listener")
    ap.add_argument("--client-cert", choices=["optional", "none"], default="optional",
                    help="optional: a certificate is requested, never required; none: not requested")
    ap.add_argument("--out", required=True, help="directory with the tools' outputs")
    a = ap.parse_args()
    label = f"{a.target} {a.profile}{' +tls13' if a.tls13 else ''}"
    v, code = judge(a)
    n = len(v.passed) + len(v.failed)
    if code == 2:
        print(f"SUMMARY: FAIL {label} (could not judge: a scanner produced nothing)")
        return 2
    if v.failed:
        print(f"SUMMARY: FAIL {label} ({len(v.failed)} of {n} checks failed: {','.join(v.failed)})")
        return 1
    print(f"SUMMARY: PASS {label} ({n} checks passed)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit:
        raise
    except Exception as e:  # the summary line is a contract: always print one
        import traceback

        traceback.print_exc()
        print(f"SUMMARY: FAIL (could not judge: {type(e).__name__}: {e})")
        sys.exit(2)
