"""Devices written into their IoT hub, checked with the OFFICIAL hub service SDK (docs/hub.md).

Two OpenDPS servers on their own loopback addresses, each with an embedded hub on its address:
`hub-a` on the DPS server itself, `hub-b` on a second server. Devices provision with the official
device SDKs (Python MQTT, Node HTTP and MQTT; symmetric key and X.509, individual and group) and
are then looked up with the official hub service SDKs, Python `azure-iot-hub`
(IoTHubRegistryManager) and Node `azure-iothub` (Registry, through node_hub.js): authentication
type, keys or thumbprints, iotEdge and the initial twin.
Reprovisioning moves devices between the two hubs (migrate, reset, never); hubs that refuse (a
wrong key, an address nobody answers on, HTTP 500) fail the registration with the hub's answer,
and a retry after the fix succeeds. Bad input to the embedded registry gets IoT Hub's error shape.

Environment: OPENDPS_HUB_IPS (default 127.0.0.140,127.0.0.141) moves the servers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import ssl
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import QuerySpecification, Twin, TwinProperties

from conftest import Server, derive_device_key, node_register, py_register, unique

HERE = Path(__file__).resolve().parent
HUB_IPS = os.environ.get("OPENDPS_HUB_IPS", "127.0.0.140,127.0.0.141").split(",")


# -- fixtures -----------------------------------------------------------------------------------

def _cs(server: Server, hub: str, policy: str = "iothubowner") -> str:
    return server.cli("hub", "connection-string", "-n", hub, "--policy-name", policy)["connectionString"]


def _key_of(cs: str) -> str:
    return dict(p.split("=", 1) for p in cs.split(";"))["SharedAccessKey"]


class _Hub500(BaseHTTPRequestHandler):
    """A "hub" that fails every request with HTTP 500."""

    def _fail(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
        data = json.dumps({"Message": "ErrorCode:ServerError;the registry is on fire"}).encode()
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_PATCH = _fail  # noqa: N815 - http.server API

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def hub500(tmp_path_factory):
    """An HTTPS server on 127.0.0.1 answering 500, with its own CA (trusted by the DPS server)."""
    d = tmp_path_factory.mktemp("hub500")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=Hub500 CA",
        "-days", "2", "-addext", "basicConstraints=critical,CA:TRUE")
    run("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    run("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "srv.pem",
        "-days", "1", "-extfile", "san.ext")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Hub500)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "srv.pem", d / "srv.key")
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1], d / "ca.pem"
    httpd.shutdown()


@pytest.fixture(scope="module")
def hubs(tmp_path_factory, hub500):
    """(dps server with hub-a, server with hub-b); both hubs linked to the DPS server's instance,
    the service SDK trusting both servers' roots."""
    port500, ca500 = hub500
    other = Server(HUB_IPS[1], tmp_path_factory.mktemp(f"opendps-{HUB_IPS[1]}"), register_devices=True).start()
    other.cli("hub", "create", "-n", "hub-b")
    trust = tmp_path_factory.mktemp("trust") / "hub-ca.pem"
    trust.write_text(other.root_ca.read_text() + Path(ca500).read_text())
    cfg = tmp_path_factory.mktemp("hubcfg") / "opendps.toml"
    cfg.write_text(f'[hub_registry]\nca_file = "{trust}"\ntimeout = "5s"\n')
    dps = Server(HUB_IPS[0], tmp_path_factory.mktemp(f"opendps-{HUB_IPS[0]}"), ("--config", str(cfg)),
                 register_devices=True).start()
    dps.cli("hub", "create", "-n", "hub-a")
    dps.hub_a_cs = _cs(dps, "hub-a")
    dps.hub_b_cs = _cs(other, "hub-b")
    for cs in (dps.hub_a_cs, dps.hub_b_cs):
        dps.cli("dps", "linked-hub", "create", "--connection-string", cs, "--location", "local")
    dps.hub500 = f"127.0.0.1:{port500}"
    bundle = tmp_path_factory.mktemp("bundle") / "roots.pem"
    bundle.write_text(dps.root_ca.read_text() + other.root_ca.read_text())
    dps.bundle = bundle
    old = os.environ.get("REQUESTS_CA_BUNDLE")
    os.environ["REQUESTS_CA_BUNDLE"] = str(bundle)
    yield dps, other
    if old is None:
        os.environ.pop("REQUESTS_CA_BUNDLE", None)
    else:
        os.environ["REQUESTS_CA_BUNDLE"] = old
    dps.stop()
    other.stop()


def registry(cs: str) -> IoTHubRegistryManager:
    return IoTHubRegistryManager.from_connection_string(cs)


def node_lookup(dps: Server, cs: str, device_id: str) -> dict:
    """The device as the official Node hub service SDK (azure-iothub Registry) sees it."""
    r = subprocess.run(["node", str(HERE / "node_hub.js"), "--connection-string", cs, "--device-id", device_id],
                       capture_output=True, text=True, timeout=90, cwd=HERE, stdin=subprocess.DEVNULL,
                       env={**os.environ, "NODE_EXTRA_CA_CERTS": str(dps.bundle)})
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"node_hub.js exited {r.returncode}: {r.stderr[-2000:]}"
    out = json.loads(lines[-1])
    assert out["ok"], out
    return out


def assigned(result: dict, rid: str) -> dict:
    assert result["ok"], f"{rid} was not assigned: {result.get('error')}\n{result.get('_stderr', '')[-1500:]}"
    r = result["result"]
    state = r.get("registrationState") or r.get("registration_state") or r
    status = r.get("status") or state.get("status")
    assert status == "assigned", r
    return state


def hub_of(state: dict) -> str:
    return state.get("assignedHub") or state.get("assigned_hub")


def twin_parts(twin) -> tuple[dict, dict]:
    desired = {k: v for k, v in (twin.properties.desired or {}).items() if not k.startswith("$")}
    return dict(twin.tags or {}), desired


def sha1_thumbprint(pem: Path) -> str:
    out = subprocess.run(["openssl", "x509", "-in", str(pem), "-noout", "-fingerprint", "-sha1"],
                         capture_output=True, text=True, check=True).stdout
    return out.split("=", 1)[1].strip().replace(":", "").upper()


TAGS = {"building": "43", "floor": {"room": "1.12"}}
DESIRED = {"telemetryInterval": 30, "mode": "eco"}
TWIN_ARGS = ("--initial-twin-tags", json.dumps(TAGS), "--initial-twin-properties", json.dumps(DESIRED))


# -- devices in their hub -----------------------------------------------------------------------

def test_python_symmetric_individual_is_in_its_hub(hubs):
    dps, _ = hubs
    rid = unique("hub-py-sym")
    key = dps.cli("enrollment", "create", "--enrollment-id", rid, "--attestation-type", "symmetrickey",
                  "--iot-hubs", HUB_IPS[0], "--edge-enabled", "true", *TWIN_ARGS)["attestation"]["symmetricKey"]
    state = assigned(py_register(dps, rid, symmetric_key=key["primaryKey"]), rid)
    assert hub_of(state) == HUB_IPS[0]
    rm = registry(dps.hub_a_cs)
    d = rm.get_device(rid)
    assert d.authentication.type == "sas"
    assert d.authentication.symmetric_key.primary_key == key["primaryKey"]
    assert d.authentication.symmetric_key.secondary_key == key["secondaryKey"]
    assert d.capabilities.iot_edge is True
    assert twin_parts(rm.get_twin(rid)) == (TAGS, DESIRED)
    # The CLI shows the same identity.
    shown = dps.cli("hub", "device-identity", "show", "-n", "hub-a", "-d", rid)
    assert shown["authentication"]["symmetricKey"]["primaryKey"] == key["primaryKey"]
    assert rid in [x["deviceId"] for x in dps.cli("hub", "device-identity", "list", "-n", "hub-a")]
    assert dps.cli("hub", "device-twin", "show", "-n", "hub-a", "-d", rid)["tags"] == TAGS


@pytest.mark.parametrize("transport", ["http", "mqtt"])
def test_node_symmetric_group_device_has_its_derived_key(hubs, transport):
    dps, _ = hubs
    gid = unique(f"hub-grp-{transport}")
    group = dps.cli("enrollment-group", "create", "--group-id", gid, "--attestation-type", "symmetrickey",
                    "--iot-hubs", HUB_IPS[0], *TWIN_ARGS)["attestation"]["symmetricKey"]
    rid = unique("hub-node-member")
    derived = derive_device_key(group["primaryKey"], rid)
    state = assigned(node_register(dps, rid, transport, symmetric_key=derived), rid)
    assert hub_of(state) == HUB_IPS[0]
    rm = registry(dps.hub_a_cs)
    d = rm.get_device(rid)
    assert d.authentication.type == "sas"
    assert d.authentication.symmetric_key.primary_key == derived
    assert d.authentication.symmetric_key.secondary_key == derive_device_key(group["secondaryKey"], rid)
    assert d.capabilities.iot_edge is False
    assert twin_parts(rm.get_twin(rid)) == (TAGS, DESIRED)
    # The Node hub service SDK sees the same.
    seen = node_lookup(dps, dps.hub_a_cs, rid)
    assert seen["device"]["authentication"]["type"] == "sas"
    assert seen["device"]["authentication"]["symmetricKey"]["primaryKey"] == derived
    assert seen["device"]["capabilities"]["iotEdge"] is False
    assert seen["twin"]["tags"] == TAGS
    assert {k: v for k, v in seen["twin"]["desired"].items() if not k.startswith("$")} == DESIRED
    assert seen["listed"] and seen["queried"]


def test_x509_individual_and_group_devices_are_self_signed_with_their_thumbprint(hubs, certs):
    dps, _ = hubs
    dev = certs.self_signed_leaf(unique("hub-x509"))
    dps.cli("enrollment", "create", "--enrollment-id", dev.cn, "--attestation-type", "x509",
            "--certificate-path", str(dev.cert), "--iot-hubs", HUB_IPS[0], *TWIN_ARGS)
    assigned(node_register(dps, dev.cn, "mqtt", cert=dev.cert, key=dev.key), dev.cn)

    root = certs.root(unique("hub-root"))
    gid = unique("hub-x509-grp")
    dps.cli("enrollment-group", "create", "--group-id", gid, "--attestation-type", "x509",
            "--certificate-path", str(root.cert), "--iot-hubs", HUB_IPS[0], "--edge-enabled", "true")
    member = certs.leaf(unique("hub-x509-member"), root)
    assigned(py_register(dps, member.cn, cert=member.chain_file(), key=member.key), member.cn)

    rm = registry(dps.hub_a_cs)
    for cert, edge in ((dev, False), (member, True)):
        d = rm.get_device(cert.cn)
        assert d.authentication.type == "selfSigned", cert.cn
        assert d.authentication.x509_thumbprint.primary_thumbprint == sha1_thumbprint(cert.cert)
        assert d.capabilities.iot_edge is edge
    assert twin_parts(rm.get_twin(dev.cn)) == (TAGS, DESIRED)
    seen = node_lookup(dps, dps.hub_a_cs, member.cn)
    assert seen["device"]["authentication"]["type"] == "selfSigned"
    assert seen["device"]["authentication"]["x509Thumbprint"]["primaryThumbprint"] == sha1_thumbprint(member.cert)
    assert seen["device"]["capabilities"]["iotEdge"] is True
    # The query sees them too.
    ids = [t.device_id for t in rm.query_iot_hub(QuerySpecification(query="SELECT * FROM devices"), None, 1000).items]
    assert dev.cn in ids and member.cn in ids


# -- reprovisioning across two embedded hubs ----------------------------------------------------

@pytest.mark.parametrize("policy", ["reprovisionandmigratedata", "reprovisionandresetdata", "never"])
def test_reprovisioning_between_two_embedded_hubs(hubs, policy):
    dps, _ = hubs
    rid = unique(f"hub-reprov-{policy[:16]}")
    key = dps.cli("enrollment", "create", "--enrollment-id", rid, "--attestation-type", "symmetrickey",
                  "--iot-hubs", HUB_IPS[0], "--reprovision-policy", policy,
                  *TWIN_ARGS)["attestation"]["symmetricKey"]["primaryKey"]
    assert hub_of(assigned(py_register(dps, rid, symmetric_key=key), rid)) == HUB_IPS[0]
    a, b = registry(dps.hub_a_cs), registry(dps.hub_b_cs)
    # The device's data changes in hub A after provisioning.
    twin = a.get_twin(rid)
    a.update_twin(rid, Twin(tags={"owner": "ops"}, properties=TwinProperties(desired={"mode": "turbo"})), twin.etag)
    changed = ({**TAGS, "owner": "ops"}, {**DESIRED, "mode": "turbo"})
    assert twin_parts(a.get_twin(rid)) == changed

    dps.cli("enrollment", "update", "--enrollment-id", rid, "--iot-hubs", HUB_IPS[1])
    state = assigned(py_register(dps, rid, symmetric_key=key), rid)
    if policy == "never":
        assert hub_of(state) == HUB_IPS[0]
        assert twin_parts(a.get_twin(rid)) == changed, "never: hub A is left as it was"
        assert rid not in [d.device_id for d in b.get_devices()], "never: hub B is left as it was"
        return
    assert hub_of(state) == HUB_IPS[1]
    d = b.get_device(rid)
    assert d.authentication.type == "sas" and d.authentication.symmetric_key.primary_key == key
    expected = changed if policy == "reprovisionandmigratedata" else (TAGS, DESIRED)
    assert twin_parts(b.get_twin(rid)) == expected


# -- hubs that refuse ---------------------------------------------------------------------------

def _record(dps: Server, rid: str) -> dict:
    rec = dps.registration(rid)
    assert rec is not None, f"no registration record for {rid}"
    return rec


def test_a_refusing_hub_fails_the_device_with_its_answer_and_a_retry_after_the_fix_succeeds(hubs):
    dps, _ = hubs
    right_key = _key_of(dps.hub_a_cs)
    wrong_key = base64.b64encode(b"w" * 32).decode()
    dps.cli("deployment", "create", "-g", "rg", "-f", str(_template(dps, "refuse-dps")))
    scope = dps.cli("dps", "show", "--dps-name", "refuse-dps")["properties"]["idScope"]
    wrong_cs = dps.hub_a_cs.replace(right_key, wrong_key)
    dps.cli("dps", "linked-hub", "create", "--dps-name", "refuse-dps", "--connection-string", wrong_cs,
            "--location", "local")
    for host in ("127.0.0.1:1", dps.hub500):
        dps.cli("dps", "linked-hub", "create", "--dps-name", "refuse-dps", "--location", "local",
                "--connection-string", f"HostName={host};SharedAccessKeyName=iothubowner;SharedAccessKey={wrong_key}")

    cases = [
        (HUB_IPS[0], ["401", "IotHubUnauthorizedAccess"]),
        ("127.0.0.1:1", ["not reachable"]),
        (dps.hub500, ["500", "the registry is on fire"]),
    ]
    refused = {}
    for hub, words in cases:
        rid = unique("hub-refused")
        key = dps.cli("enrollment", "create", "--dps-name", "refuse-dps", "--enrollment-id", rid,
                      "--attestation-type", "symmetrickey", "--iot-hubs", hub)["attestation"]["symmetricKey"]["primaryKey"]
        r = py_register(dps, rid, scope=scope, symmetric_key=key)
        assert not r["ok"], f"{hub}: the device was assigned by a refusing hub: {r}"
        rec = dps.cli("registration", "show", "--dps-name", "refuse-dps", "--registration-id", rid)
        assert rec["status"] == "failed", rec
        for w in words:
            assert w in rec["errorMessage"], (hub, rec["errorMessage"])
        assert wrong_key not in rec["errorMessage"] and right_key not in rec["errorMessage"]
        assert wrong_key not in json.dumps(r) and right_key not in json.dumps(r)
        refused[hub] = (rid, key)

    # The fix: hub-a linked with its right key; the refused device retries and is assigned.
    dps.cli("dps", "linked-hub", "delete", "--dps-name", "refuse-dps", "--linked-hub", HUB_IPS[0])
    dps.cli("dps", "linked-hub", "create", "--dps-name", "refuse-dps", "--connection-string", dps.hub_a_cs,
            "--location", "local")
    rid, key = refused[HUB_IPS[0]]
    assert hub_of(assigned(py_register(dps, rid, scope=scope, symmetric_key=key), rid)) == HUB_IPS[0]
    assert dps.cli("registration", "show", "--dps-name", "refuse-dps", "--registration-id", rid)["status"] == "assigned"
    assert registry(dps.hub_a_cs).get_device(rid).authentication.symmetric_key.primary_key == key
    # Nothing secret in the server's log.
    log = dps.stderr_path.read_text(errors="replace")
    for secret in (right_key, wrong_key, key):
        assert secret not in log


def _template(dps: Server, name: str) -> Path:
    tpl = dps.data_dir.parent / f"{name}.json"
    tpl.write_text(json.dumps({"resources": [{"type": "Microsoft.Devices/provisioningServices", "name": name,
                                              "location": "local", "sku": {"name": "S1", "capacity": 1}}]}))
    return tpl


# -- bad input to the embedded registry ---------------------------------------------------------

def _sas(host: str, key: str, policy: str) -> str:
    sr = urllib.parse.quote(host, safe="")
    se = str(int(time.time()) + 600)
    sig = base64.b64encode(hmac.new(base64.b64decode(key), f"{sr}\n{se}".encode(), hashlib.sha256).digest()).decode()
    return f"SharedAccessSignature sr={sr}&sig={urllib.parse.quote(sig, safe='')}&se={se}&skn={policy}"


def _raw(dps: Server, method: str, path: str, token: str, body: bytes | None = None,
         if_match: str | None = None) -> tuple[int, dict, dict]:
    ctx = ssl.create_default_context(cafile=str(dps.root_ca))
    req = urllib.request.Request(f"https://{HUB_IPS[0]}{path}?api-version=2021-04-12", data=body, method=method)
    req.add_header("Authorization", token)
    req.add_header("Content-Type", "application/json")
    if if_match:
        req.add_header("If-Match", if_match)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
            return r.status, dict(r.headers), json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read() or b"null")


def _assert_hub_error(status: int, headers: dict, body: dict, want_status: int, code: str) -> None:
    assert status == want_status, (status, body)
    assert body["Message"].startswith(f"ErrorCode:{code};"), body
    assert body["ExceptionMessage"].startswith("Tracking ID:"), body
    assert {k.lower(): v for k, v in headers.items()}["iothub-errorcode"] == code


def test_bad_input_to_the_embedded_registry_gets_iot_hub_errors_and_changes_nothing(hubs):
    dps, _ = hubs
    host = HUB_IPS[0]
    owner = _key_of(dps.hub_a_cs)
    rid = unique("hub-bad-input")
    rm = registry(dps.hub_a_cs)
    created = rm.create_device_with_sas(rid, None, None, "enabled")
    before = rm.get_device(rid)
    assert before.etag == created.etag

    # A token signed with a wrong key, and one for another host.
    wrong = base64.b64encode(b"x" * 32).decode()
    _assert_hub_error(*_raw(dps, "GET", f"/devices/{rid}", _sas(host, wrong, "iothubowner")), 401,
                      "IotHubUnauthorizedAccess")
    _assert_hub_error(*_raw(dps, "GET", f"/devices/{rid}", _sas("elsewhere.example", owner, "iothubowner")), 401,
                      "IotHubUnauthorizedAccess")
    # Read-only rights cannot write, with the SDK and raw.
    read_only = _cs(dps, "hub-a", "registryRead")
    with pytest.raises(Exception) as refused:
        registry(read_only).create_device_with_sas(unique("hub-ro"), None, None, "enabled")
    assert "401" in str(refused.value) or "Unauthorized" in str(refused.value)
    ro_token = _sas(host, _key_of(read_only), "registryRead")
    _assert_hub_error(*_raw(dps, "DELETE", f"/devices/{rid}", ro_token), 401, "IotHubUnauthorizedAccess")
    assert _raw(dps, "GET", f"/devices/{rid}", ro_token)[0] == 200, "registryRead may read"
    # registryReadWrite may write.
    rw = _cs(dps, "hub-a", "registryReadWrite")
    rw_id = unique("hub-rw")
    assert registry(rw).create_device_with_sas(rw_id, None, None, "enabled").device_id == rw_id
    # Malformed JSON, a bad api-version, an etag mismatch.
    token = _sas(host, owner, "iothubowner")
    _assert_hub_error(*_raw(dps, "PUT", f"/devices/{rid}", token, b"{not json", if_match="*"), 400, "ArgumentInvalid")
    status, _, body = _raw(dps, "PUT", f"/devices/{rid}", token, b'{"deviceId": "%s"}' % rid.encode(),
                           if_match='"not-the-etag"')
    _assert_hub_error(status, _, body, 412, "PreconditionFailed")
    with pytest.raises(Exception) as mismatch:
        rm.update_device_with_sas(rid, "not-the-etag", None, None, "disabled")
    assert "412" in str(mismatch.value) or "Precondition" in str(mismatch.value)
    _assert_hub_error(*_raw(dps, "GET", "/twins/nobody-here", token), 404, "DeviceNotFound")
    # Nothing changed.
    after = rm.get_device(rid)
    assert (after.etag, after.status, after.authentication.symmetric_key.primary_key) == (
        before.etag, before.status, before.authentication.symmetric_key.primary_key)
    # DELETE with the right etag works; the device is gone.
    rm.delete_device(rid, before.etag)
    assert rid not in [d.device_id for d in rm.get_devices()]
