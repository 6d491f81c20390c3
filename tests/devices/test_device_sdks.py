"""Device provisioning against a real OpenDPS server with the OFFICIAL Azure IoT device SDKs.

Python: azure-iot-device (MQTT). Node: azure-iot-provisioning-device over HTTP, MQTT, AMQP (5671)
and AMQP over WebSockets (443) with the symmetric-key and X.509 security clients. Every accepted registration is checked against the
server's own record (`opendps registration show`): same hub, same device id, TLS facts. Every
refusal is checked to have left no registration record behind.

Each SDK registration runs in its own process (py_register.py, node_register.js) with a generous
timeout, so a hung SDK cannot stall the suite. Nothing here measures time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import socket
import ssl
import subprocess
import time
import urllib.parse
import warnings

import pytest
from conftest import (
    HUBS,
    derive_device_key,
    node_register,
    py_register,
    unique,
)

API_VERSION = "2019-03-31"
TRANSPORTS = ("http", "mqtt")
# The Node SDK's transports for the accepted-device matrix (AMQP on 5671, AMQP-WS on 443).
NODE_TRANSPORTS = ("http", "mqtt", "amqp", "amqpws")


# -- helpers ----------------------------------------------------------------------------------

def enroll_symmetric(server, registration_id, *extra, dps_name=None):
    args = ["enrollment", "create", "--enrollment-id", registration_id, "--attestation-type", "symmetrickey", *extra]
    if dps_name:
        args += ["--dps-name", dps_name]
    return server.cli(*args)["attestation"]["symmetricKey"]["primaryKey"]


def enroll_symmetric_group(server, group_id):
    return server.cli("enrollment-group", "create", "--group-id", group_id,
                      "--attestation-type", "symmetrickey")["attestation"]["symmetricKey"]["primaryKey"]


def enroll_x509(server, cert):
    server.cli("enrollment", "create", "--enrollment-id", cert.cn, "--attestation-type", "x509",
               "--certificate-path", str(cert.cert))


def enroll_x509_group(server, group_id, ca_cert):
    server.cli("enrollment-group", "create", "--group-id", group_id, "--attestation-type", "x509",
               "--certificate-path", str(ca_cert.cert))


def assert_assigned_py(out, registration_id, device_id=None):
    assert out["ok"], f"Python SDK registration failed: {out.get('error')}\nSDK stderr:\n{out['_stderr']}"
    r = out["result"]
    assert r["status"] == "assigned", r
    st = r["registrationState"]
    assert st["assignedHub"] in HUBS, st
    assert st["deviceId"] == (device_id or registration_id), st
    return st["assignedHub"], st["deviceId"]


def assert_assigned_node(out, registration_id, device_id=None):
    assert out["ok"], f"Node SDK registration failed: {out.get('error')}\nSDK stderr:\n{out['_stderr']}"
    r = out["result"]
    assert r["status"] == "assigned", r
    assert r["registrationId"] == registration_id, r
    assert r["assignedHub"] in HUBS, r
    assert r["deviceId"] == (device_id or registration_id), r
    return r["assignedHub"], r["deviceId"]


def assert_record(server, registration_id, hub, device_id, *, tls_version="TLSv1.2", client_cert=None,
                  dps_name=None):
    """The server's own registration record agrees with what the SDK was told, and carries the TLS
    facts of the registering connection."""
    rec = server.registration(registration_id, dps_name=dps_name)
    assert rec is not None, f"no registration record for {registration_id}"
    assert rec["registrationId"] == registration_id, rec
    assert rec["status"] == "assigned", rec
    assert rec["assignedHub"] == hub, rec
    assert rec["deviceId"] == device_id, rec
    tls = rec.get("tls")
    assert tls, f"registration record has no TLS facts: {rec}"
    assert tls["negotiated"]["version"] == tls_version, tls["negotiated"]
    assert tls["negotiated"]["cipherSuite"].startswith("TLS_"), tls["negotiated"]
    assert isinstance(tls["offered"]["cipherSuites"], list) and tls["offered"]["cipherSuites"], tls["offered"]
    assert tls_version in tls["offered"]["versions"], tls["offered"]
    if client_cert is not None:
        assert tls["negotiated"]["clientCertificate"] is client_cert, tls["negotiated"]
    return rec


def assert_refused(out, what, sdk=None):
    """The SDK reported an error (not a hang). With `sdk` given, the error must also be the
    service's authentication refusal as that SDK surfaces it, so a refusal for another reason
    (a TLS failure, a crash, a 500) does not pass:
      python-mqtt: CONNACK 5 -> CredentialError, or a 401 on the register topic -> ClientError(401)
      node-http:   HTTP 401 with the DPS error body {errorCode: 401002, ...}
      node-mqtt:   CONNACK 5 (code 5), or a 401 on the register topic (result.errorCode 401002)
      node-amqp:   sasl-outcome auth (the SDK says only NotConnectedError), or a request rejected
                   with amqp:unauthorized-access whose description is the DPS error body (401002)
    """
    assert not out["ok"], f"{what} was accepted but must be refused: {out.get('result')}"
    err = out["error"]
    assert err.get("name") != "Timeout", f"{what}: the SDK got no answer at all: {err}"
    print(f"{what}: refused with {json.dumps(err)}")
    if sdk == "python-mqtt":
        cause = (err.get("cause") or {}).get("message", "")
        assert err["name"] == "CredentialError" or (err["name"] == "ClientError" and "401" in cause), err
    elif sdk == "node-http":
        assert err.get("statusCode") == 401, err
        body = json.loads(err["responseBody"])
        assert body.get("errorCode") == 401002, body
        for field in ("message", "trackingId", "timestampUtc"):
            assert body.get(field), f"error body lacks {field}: {body}"
    elif sdk == "node-mqtt":
        assert err.get("code") == 5 or (err.get("result") or {}).get("errorCode") == 401002, err
    elif sdk == "node-amqp":
        if err["name"] != "NotConnectedError":
            assert err.get("condition") == "amqp:unauthorized-access", err
            body = json.loads(err["description"])
            assert body.get("errorCode") == 401002, body
    return err


def assert_no_record(server, registration_id, dps_name=None):
    rec = server.registration(registration_id, dps_name=dps_name)
    assert rec is None, f"a refused registration left a record behind: {rec}"


# -- Python SDK (MQTT): accepted --------------------------------------------------------------

def test_python_symmetric_individual(server):
    """Individual symmetric-key enrollment, Python SDK over MQTT: assigned to a linked hub; the
    record agrees and shows the connection was TLS 1.2."""
    rid = unique("py-sym")
    key = enroll_symmetric(server, rid)
    hub, did = assert_assigned_py(py_register(server, rid, symmetric_key=key), rid)
    assert_record(server, rid, hub, did, tls_version="TLSv1.2", client_cert=False)


def test_python_symmetric_individual_with_device_id(server):
    """An enrollment's --device-id is the device id the SDK is given (not the registration id)."""
    rid = unique("py-sym-did")
    did = unique("custom-device")
    key = enroll_symmetric(server, rid, "--device-id", did)
    hub, got = assert_assigned_py(py_register(server, rid, symmetric_key=key), rid, device_id=did)
    assert_record(server, rid, hub, got)


def test_python_same_device_twice_same_assignment(server):
    """The same device registering twice gets the same hub and device id both times (hashed
    allocation is deterministic), and the record still agrees."""
    rid = unique("py-twice")
    key = enroll_symmetric(server, rid)
    out1 = py_register(server, rid, symmetric_key=key)
    first = assert_assigned_py(out1, rid)
    assert out1["result"]["registrationState"]["subStatus"] == "initialAssignment", out1["result"]
    created = server.registration(rid)["createdDateTimeUtc"]
    out2 = py_register(server, rid, symmetric_key=key)
    second = assert_assigned_py(out2, rid)
    assert first == second
    rec = assert_record(server, rid, *second)
    assert rec["createdDateTimeUtc"] == created, "re-registration must keep the record's creation time"

    # Same hub again, and the SDK sends api-version 2019-03-31: docs/allocation.md ("Reprovisioning") says such
    # clients get initialAssignment (reprovisionedToInitialAssignment exists from 2019-04-15 on).
    sub = out2["result"]["registrationState"]["subStatus"]
    assert sub == "initialAssignment", out2["result"]


def test_python_symmetric_group(server):
    """Group symmetric-key enrollment: the device key is derived from the group key
    (HMAC-SHA256 over the registration id); two devices of the group are both assigned."""
    gid = unique("py-group")
    group_key = enroll_symmetric_group(server, gid)
    for n in range(2):
        rid = unique(f"py-gdev{n}")
        hub, did = assert_assigned_py(py_register(server, rid, symmetric_key=derive_device_key(group_key, rid)), rid)
        assert_record(server, rid, hub, did)


def test_python_x509_individual(server, certs):
    """Individual X.509 enrollment (self-signed RSA-2048 device cert, CN = registration id)."""
    rid = unique("py-x509")
    dev = certs.self_signed_leaf(rid, kind="rsa")
    enroll_x509(server, dev)
    hub, did = assert_assigned_py(py_register(server, rid, cert=dev.cert, key=dev.key), rid)
    assert_record(server, rid, hub, did, client_cert=True)


@pytest.mark.parametrize("group_ca", ["root", "intermediate"])
def test_python_x509_group_through_intermediate(server, certs, group_ca):
    """Group X.509 enrollment: the device presents an EC P-256 leaf plus the intermediate; the
    group's signing cert is the root CA (the chain is verified through the intermediate) or the
    intermediate itself."""
    root = certs.root(unique("py-root"))
    inter = certs.intermediate(unique("py-int"), root)
    gid = unique("py-x509-group")
    enroll_x509_group(server, gid, root if group_ca == "root" else inter)
    rid = unique("py-x509-gdev")
    leaf = certs.leaf(rid, inter, kind="ec")
    hub, did = assert_assigned_py(py_register(server, rid, cert=leaf.chain_file(), key=leaf.key), rid)
    rec = assert_record(server, rid, hub, did, client_cert=True)
    assert rec["tls"]["negotiated"]["clientCertificateChainLength"] >= 2, rec["tls"]["negotiated"]


# -- Node SDK (HTTP, MQTT, AMQP, AMQP-WS): accepted --------------------------------------------

@pytest.mark.parametrize("transport", NODE_TRANSPORTS)
def test_node_symmetric_individual(server, transport):
    """Individual symmetric key with the Node SDK over HTTP / MQTT / AMQP (SASL PLAIN) / AMQP-WS."""
    rid = unique(f"node-{transport}-sym")
    key = enroll_symmetric(server, rid)
    hub, did = assert_assigned_node(node_register(server, rid, transport, symmetric_key=key), rid)
    assert_record(server, rid, hub, did, client_cert=False)


@pytest.mark.parametrize("transport", NODE_TRANSPORTS)
def test_node_symmetric_group(server, transport):
    """Group-derived symmetric key with the Node SDK over HTTP / MQTT / AMQP / AMQP-WS."""
    gid = unique(f"node-{transport}-group")
    group_key = enroll_symmetric_group(server, gid)
    rid = unique(f"node-{transport}-gdev")
    hub, did = assert_assigned_node(
        node_register(server, rid, transport, symmetric_key=derive_device_key(group_key, rid)), rid)
    assert_record(server, rid, hub, did)


@pytest.mark.parametrize("transport", NODE_TRANSPORTS)
def test_node_x509_individual(server, certs, transport):
    """Individual X.509 (self-signed RSA-2048) with the Node X509Security client over HTTP / MQTT /
    AMQP (no SASL: the TLS client chain) / AMQP-WS (the chain of the 443 handshake)."""
    rid = unique(f"node-{transport}-x509")
    dev = certs.self_signed_leaf(rid, kind="rsa")
    enroll_x509(server, dev)
    hub, did = assert_assigned_node(node_register(server, rid, transport, cert=dev.cert, key=dev.key), rid)
    assert_record(server, rid, hub, did, client_cert=True)


@pytest.mark.parametrize("transport", NODE_TRANSPORTS)
def test_node_x509_group_through_intermediate(server, certs, transport):
    """Group X.509 (root CA enrolled; device sends EC leaf + intermediate) over HTTP / MQTT / AMQP /
    AMQP-WS."""
    root = certs.root(unique(f"node-{transport}-root"))
    inter = certs.intermediate(unique(f"node-{transport}-int"), root)
    gid = unique(f"node-{transport}-x509-group")
    enroll_x509_group(server, gid, root)
    rid = unique(f"node-{transport}-x509-gdev")
    leaf = certs.leaf(rid, inter, kind="ec")
    hub, did = assert_assigned_node(
        node_register(server, rid, transport, cert=leaf.chain_file(), key=leaf.key), rid)
    assert_record(server, rid, hub, did, client_cert=True)


def test_same_device_same_assignment_across_sdks(server):
    """One device registering with Python/MQTT, Node/HTTP, Node/MQTT and Node/AMQP always lands on the same
    hub with the same device id (deterministic assignment, one record)."""
    rid = unique("cross-sdk")
    key = enroll_symmetric(server, rid)
    seen = {
        "python-mqtt": assert_assigned_py(py_register(server, rid, symmetric_key=key), rid),
        "node-http": assert_assigned_node(node_register(server, rid, "http", symmetric_key=key), rid),
        "node-mqtt": assert_assigned_node(node_register(server, rid, "mqtt", symmetric_key=key), rid),
        "node-amqp": assert_assigned_node(node_register(server, rid, "amqp", symmetric_key=key), rid),
    }
    assert len(set(seen.values())) == 1, seen
    assert_record(server, rid, *seen["python-mqtt"])


# -- refused ------------------------------------------------------------------------------------

SDKS = ("python-mqtt", "node-http", "node-mqtt", "node-amqp")


def register_with(sdk, server, rid, **kw):
    if sdk == "python-mqtt":
        return py_register(server, rid, **kw)
    return node_register(server, rid, sdk.split("-")[1], **kw)


@pytest.mark.parametrize("sdk", SDKS)
def test_wrong_key_refused(server, sdk):
    """A device signing with a key that is not its enrollment's is refused; no record is made."""
    rid = unique(f"wrongkey-{sdk}")
    enroll_symmetric(server, rid)
    wrong = base64.b64encode(hashlib.sha256(rid.encode()).digest()).decode()
    assert_refused(register_with(sdk, server, rid, symmetric_key=wrong), "a wrong key", sdk)
    assert_no_record(server, rid)


@pytest.mark.parametrize("sdk", SDKS)
def test_wrong_group_derived_key_refused(server, sdk):
    """A group device whose key was derived for another registration id is refused."""
    gid = unique(f"wronggkey-{sdk}")
    group_key = enroll_symmetric_group(server, gid)
    rid = unique(f"wronggkey-dev-{sdk}")
    wrong = derive_device_key(group_key, rid + "-other")
    assert_refused(register_with(sdk, server, rid, symmetric_key=wrong), "a key derived for another id", sdk)
    assert_no_record(server, rid)


def _sas_token(scope, registration_id, key_b64, expiry):
    sr = urllib.parse.quote(f"{scope}/registrations/{registration_id}", safe="")
    to_sign = f"{sr}\n{expiry}".encode()
    sig = base64.b64encode(hmac.new(base64.b64decode(key_b64), to_sign, hashlib.sha256).digest()).decode()
    return f"SharedAccessSignature sr={sr}&sig={urllib.parse.quote(sig, safe='')}&se={expiry}&skn=registration"


def _https_register(server, scope, registration_id, authorization, max_tls=None):
    ctx = ssl.create_default_context(cafile=str(server.root_ca))
    if max_tls is not None:
        ctx.maximum_version = max_tls
    conn = http.client.HTTPSConnection(server.ip, 443, context=ctx, timeout=60)
    try:
        body = json.dumps({"registrationId": registration_id})
        conn.request("PUT", f"/{scope}/registrations/{registration_id}/register?api-version={API_VERSION}",
                     body=body, headers={"Authorization": authorization, "Content-Type": "application/json",
                                         "Accept": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, raw
    finally:
        conn.close()


def test_expired_sas_token_refused(server):
    """A correctly signed SAS token whose `se` is in the past is refused with 401 and the DPS error
    body {errorCode: 401002, message, trackingId, timestampUtc}; no record is made. The same
    request with a future expiry is accepted (202), so the refusal is the expiry alone."""
    rid = unique("expired")
    key = enroll_symmetric(server, rid)
    past = int(time.time()) - 3600
    status, raw = _https_register(server, server.id_scope, rid, _sas_token(server.id_scope, rid, key, past))
    assert status == 401, (status, raw)
    body = json.loads(raw)
    assert body.get("errorCode") == 401002, body
    for field in ("message", "trackingId", "timestampUtc"):
        assert body.get(field), f"error body lacks {field}: {body}"
    assert_no_record(server, rid)

    future = int(time.time()) + 3600
    status, raw = _https_register(server, server.id_scope, rid, _sas_token(server.id_scope, rid, key, future))
    assert status == 202, (status, raw)
    assert json.loads(raw).get("operationId"), raw


@pytest.mark.parametrize("sdk", SDKS)
def test_foreign_ca_refused(server, certs, sdk):
    """A group X.509 enrollment for one CA refuses a device whose leaf (with its intermediate) was
    issued by an unrelated CA, even though its CN is a fine registration id."""
    enrolled_root = certs.root(unique("trusted-root"))
    gid = unique(f"foreign-{sdk}")
    enroll_x509_group(server, gid, enrolled_root)
    foreign_root = certs.root(unique("foreign-root"))
    foreign_int = certs.intermediate(unique("foreign-int"), foreign_root)
    rid = unique(f"foreign-dev-{sdk}")
    leaf = certs.leaf(rid, foreign_int, kind="ec")
    assert_refused(register_with(sdk, server, rid, cert=leaf.chain_file(), key=leaf.key), "a foreign-CA device", sdk)
    assert_no_record(server, rid)


def test_mqtt_attestation_failure_reported_on_response_topic(server):
    """docs/protocol.md, "MQTT connection": like real DPS, the MQTT endpoint accepts the CONNECT and reports an
    attestation failure on the register response topic ($dps/registrations/res/401/...) with a DPS
    error body; CONNACK refusals are kept for unparsable usernames. Seen through the Node MQTT
    transport: a response-topic refusal surfaces as `result.errorCode`, a CONNACK one as `code`."""
    rid = unique("mqtt-topic")
    enroll_symmetric(server, rid)
    wrong = base64.b64encode(hashlib.sha256(rid.encode()).digest()).decode()
    err = assert_refused(node_register(server, rid, "mqtt", symmetric_key=wrong), "a wrong key", "node-mqtt")
    assert (err.get("result") or {}).get("errorCode") == 401002, err
    assert_no_record(server, rid)


@pytest.mark.parametrize("sdk", SDKS)
def test_x509_individual_other_certificate_refused(server, certs, sdk):
    """An individual X.509 enrollment refuses a device presenting a different certificate with the
    same subject CN (another key, so another thumbprint)."""
    rid = unique(f"x509-other-{sdk}")
    enrolled = certs.self_signed_leaf(rid, kind="rsa")
    enroll_x509(server, enrolled)
    impostor = certs.self_signed_leaf(rid, kind="ec")
    assert_refused(register_with(sdk, server, rid, cert=impostor.cert, key=impostor.key),
                   "a certificate other than the enrolled one", sdk)
    assert_no_record(server, rid)


def test_x509_group_leaf_without_intermediate_refused(server, certs):
    """A group enrolled with the root CA refuses a device that sends only its leaf (no
    intermediate), since the leaf cannot be chained to the enrolled CA."""
    root = certs.root(unique("noint-root"))
    inter = certs.intermediate(unique("noint-int"), root)
    enroll_x509_group(server, unique("noint-group"), root)
    rid = unique("noint-dev")
    leaf = certs.leaf(rid, inter, kind="ec")
    assert_refused(py_register(server, rid, cert=leaf.cert, key=leaf.key), "a leaf without its intermediate",
                   "python-mqtt")
    assert_no_record(server, rid)


@pytest.mark.parametrize("sdk", SDKS)
def test_disabled_enrollment_refused(server, sdk):
    """A device whose individual enrollment is disabled is refused; no record is made."""
    rid = unique(f"disabled-{sdk}")
    key = enroll_symmetric(server, rid, "--provisioning-status", "disabled")
    assert_refused(register_with(sdk, server, rid, symmetric_key=key), "a disabled enrollment", sdk)
    assert_no_record(server, rid)


def test_disabled_group_refused(server):
    """A device of a disabled symmetric-key enrollment group is refused."""
    gid = unique("disabled-group")
    group_key = server.cli("enrollment-group", "create", "--group-id", gid, "--attestation-type", "symmetrickey",
                           "--provisioning-status", "disabled")["attestation"]["symmetricKey"]["primaryKey"]
    rid = unique("disabled-gdev")
    assert_refused(py_register(server, rid, symmetric_key=derive_device_key(group_key, rid)), "a disabled group",
                   "python-mqtt")
    assert_no_record(server, rid)


def _tls_client(max_version):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = max_version
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


@pytest.mark.parametrize("port", [443, 8883, 5671])
def test_tls11_client_refused(server, port):
    """A TLS 1.1 client is refused in the handshake with a protocol_version alert on both the
    HTTPS and the MQTT port; the same client allowed TLS 1.2 connects (control)."""
    with pytest.raises(ssl.SSLError) as exc:
        with socket.create_connection((server.ip, port), timeout=30) as sock:
            with _tls_client(ssl.TLSVersion.TLSv1_1).wrap_socket(sock):
                pass
    assert exc.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION", exc.value

    with socket.create_connection((server.ip, port), timeout=30) as sock:
        with _tls_client(ssl.TLSVersion.TLSv1_2).wrap_socket(sock) as tls:
            assert tls.version() == "TLSv1.2"


@pytest.mark.parametrize("port", [443, 8883, 5671])
def test_tls11_openssl_s_client_refused(server, port):
    """The same with `openssl s_client -tls1_1`: the server answers with alert 70 (protocol_version)."""
    r = subprocess.run(["openssl", "s_client", "-connect", f"{server.ip}:{port}", "-tls1_1",
                        "-cipher", "DEFAULT:@SECLEVEL=0"], capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode != 0, r.stdout
    assert "alert protocol version" in r.stderr and "alert number 70" in r.stderr, r.stderr


# -- an instance with minTlsVersion "1.3" --------------------------------------------------------

def test_tls13_instance_refuses_python_sdk_tls12(tls13_server):
    """The Python SDK pins TLS 1.2: registering to an instance with minTlsVersion "1.3" fails and
    leaves no record. Control: the same registration id enrolled on the server's default (1.2)
    instance, same SDK, same server, is assigned."""
    s = tls13_server
    rid = unique("tls13-py")
    key = enroll_symmetric(s, rid, dps_name="tls13-dps")
    err = assert_refused(py_register(s, rid, scope=s.tls13_scope, symmetric_key=key), "TLS 1.2 to a 1.3 instance")
    # The DPS error on the response topic: 403, the instance's TLS floor (not an authentication failure).
    assert err["name"] == "ClientError" and "403" in (err.get("cause") or {}).get("message", ""), err
    assert_no_record(s, rid, dps_name="tls13-dps")

    key12 = enroll_symmetric(s, rid, dps_name="opendps")
    hub, did = assert_assigned_py(py_register(s, rid, symmetric_key=key12), rid)
    assert_record(s, rid, hub, did, tls_version="TLSv1.2", dps_name="opendps")


def test_tls13_instance_refuses_https_tls12(tls13_server):
    """Over HTTPS, a TLS 1.2 connection registering (valid SAS token) to the minTlsVersion "1.3"
    instance is refused with a DPS error that says so, and no record is made; the same request
    over TLS 1.3 is accepted (202)."""
    s = tls13_server
    rid = unique("tls13-https")
    key = enroll_symmetric(s, rid, dps_name="tls13-dps")
    token = _sas_token(s.tls13_scope, rid, key, int(time.time()) + 3600)
    status, raw = _https_register(s, s.tls13_scope, rid, token, max_tls=ssl.TLSVersion.TLSv1_2)
    print(f"TLS 1.2 to the 1.3 instance over HTTPS: {status} {raw!r}")
    assert 400 <= status < 500, (status, raw)
    body = json.loads(raw)
    assert str(body.get("errorCode", "")).startswith(str(status)), body
    assert "TLS" in body.get("message", ""), body
    assert_no_record(s, rid, dps_name="tls13-dps")

    status, raw = _https_register(s, s.tls13_scope, rid, token)
    assert status == 202, (status, raw)


@pytest.mark.parametrize("transport", NODE_TRANSPORTS)
def test_tls13_instance_accepts_node_sdk_tls13(tls13_server, transport):
    """Node negotiates TLS 1.3 with a --tls13 server, so the same kind of device is assigned by the
    minTlsVersion "1.3" instance; its record says TLSv1.3."""
    s = tls13_server
    rid = unique(f"tls13-node-{transport}")
    key = enroll_symmetric(s, rid, dps_name="tls13-dps")
    hub, did = assert_assigned_node(node_register(s, rid, transport, scope=s.tls13_scope, symmetric_key=key), rid)
    assert_record(s, rid, hub, did, tls_version="TLSv1.3", dps_name="tls13-dps")


def test_python_mqtt_over_websockets(server):
    """MQTT over WebSockets on 443 (`/$iothub/websocket`, sub-protocol mqtt) with the Python SDK."""
    rid = unique("py-ws")
    key = enroll_symmetric(server, rid)
    hub, did = assert_assigned_py(py_register(server, rid, symmetric_key=key, websockets=True), rid)
    assert_record(server, rid, hub, did)


def test_node_mqtt_over_websockets(server):
    """MQTT over WebSockets on 443 with the Node SDK's MqttWs transport."""
    rid = unique("node-ws")
    key = enroll_symmetric(server, rid)
    hub, did = assert_assigned_node(node_register(server, rid, "mqttws", symmetric_key=key), rid)
    assert_record(server, rid, hub, did)


def test_x509_the_group_of_the_closest_ca_decides(server, certs):
    """Two X.509 groups: one signed by the root, one by the intermediate. A device presenting
    leaf + intermediate belongs to the intermediate's group (the first intermediate decides,
    docs/x509.md), whichever was enrolled first."""
    root = certs.root(unique("closest-root"))
    inter = certs.intermediate(unique("closest-int"), root)
    g_root, g_int = unique("grp-root"), unique("grp-int")
    enroll_x509_group(server, g_root, root)
    enroll_x509_group(server, g_int, inter)
    rid = unique("closest-dev")
    leaf = certs.leaf(rid, inter, kind="ec")
    hub, did = assert_assigned_py(py_register(server, rid, cert=leaf.chain_file(), key=leaf.key), rid)
    rec = assert_record(server, rid, hub, did, client_cert=True)
    assert rec["enrollmentGroupId"] == g_int, rec


@pytest.mark.parametrize("transport", ("amqp", "amqpws"))
def test_node_amqp_reprovision_reports_the_links_api_version(server, transport):
    """Over AMQP the api-version arrives only on the links (after SASL); the Node SDK sends
    2019-03-31, so a device registering twice to the same hub is told `initialAssignment` (the
    pre-2019-04-15 substatus), as over MQTT and HTTP."""
    rid = unique(f"node-{transport}-again")
    key = enroll_symmetric(server, rid)
    first = assert_assigned_node(node_register(server, rid, transport, symmetric_key=key), rid)
    out = node_register(server, rid, transport, symmetric_key=key)
    assert assert_assigned_node(out, rid) == first
    assert out["result"]["substatus"] == "initialAssignment", out["result"]
