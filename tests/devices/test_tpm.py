"""TPM attestation with the OFFICIAL Node TPM client against a real OpenDPS server (docs/tpm.md).

`azure-iot-provisioning-device` with `-http` / `-amqp` and `azure-iot-security-tpm` (unmodified, pinned in
tests/tpm/package-lock.json) on a software TPM: one `swtpm` per test, with its own state directory
(a fresh EK) and port. The device's EK is enrolled through the CLI; the SDK then registers over HTTPS
(401 challenge -> activation in the TPM -> SAS signed by the TPM -> 202 -> assigned), AMQP or
AMQP over WebSockets (the same exchange inside SASL `TPM`), and the final result's
`tpm.authenticationKey` goes into the TPM too. Proof that the server and the TPM hold the
same key afterwards: a SAS token signed by the TPM (`signWithIdentity`) is accepted by the server
on a raw HTTPS register.

Installs what it needs when missing: Debian's swtpm and tpm2-tools (apt-get), and the npm
packages of tests/tpm (`npm ci --ignore-scripts`), each under a file lock.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path

import pytest
from conftest import HUBS, REGISTER_TIMEOUT, node_register, py_register, start_server

HERE = Path(__file__).resolve().parent
TPM_DIR = HERE.parent / "tpm"
# The TPM tests' loopback range is 127.0.0.120-139; the server takes .139 (fixed port 443), the
# software TPMs a free port on .138.
SERVER_IP = os.environ.get("OPENDPS_TPM_IP", "127.0.0.139")
TPM_IP = "127.0.0.138"
API_VERSION = "2019-03-31"


def _run(cmd, timeout=600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw)


@pytest.fixture(scope="module", autouse=True)
def tpm_tools():
    """swtpm + tpm2-tools from Debian and tests/tpm's node_modules, installed when missing."""
    if not (shutil.which("swtpm") and shutil.which("tpm2_createek")):
        script = ("export DEBIAN_FRONTEND=noninteractive; apt-get install -y -qq swtpm swtpm-tools tpm2-tools "
                  "|| { apt-get update -qq && apt-get install -y -qq swtpm swtpm-tools tpm2-tools; }")
        r = _run(["flock", "/tmp/opendps-apt.lock", "sh", "-c", script], timeout=900)
        assert r.returncode == 0 and shutil.which("swtpm"), f"installing swtpm failed:\n{r.stderr[-3000:]}"
    if not (TPM_DIR / "node_modules" / "azure-iot-security-tpm" / "package.json").exists():
        r = _run(["flock", str(TPM_DIR / "package-lock.json"), "npm", "ci", "--ignore-scripts", "--no-audit",
                  "--no-fund"], cwd=TPM_DIR)
        assert r.returncode == 0, f"npm ci in tests/tpm failed:\n{r.stderr[-3000:]}"


class Swtpm:
    """One `swtpm socket` on TPM_IP with a fresh state directory (a fresh EK)."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="opendps-swtpm-"))
        self.port = self._free_pair()
        self.proc = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.dir}",
             "--server", f"type=tcp,port={self.port},bindaddr={TPM_IP}",
             "--ctrl", f"type=tcp,port={self.port + 1},bindaddr={TPM_IP}",
             "--flags", "not-need-init,startup-clear", "--log", f"file={self.dir}/swtpm.log,level=1"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((TPM_IP, self.port), timeout=1).close()
                break
            except OSError:
                assert self.proc.poll() is None, "swtpm exited at start"
                assert time.monotonic() < deadline, "swtpm did not listen within 30 s"
                time.sleep(0.1)

    @staticmethod
    def _free_pair() -> int:
        for _ in range(100):
            with socket.socket() as a:
                a.bind((TPM_IP, 0))
                port = a.getsockname()[1]
                try:
                    with socket.socket() as b:
                        b.bind((TPM_IP, port + 1))
                except OSError:
                    continue
                return port
        raise RuntimeError("no free port pair for swtpm")

    def keys(self) -> dict:
        """The Node TPM client's EK, SRK and registration id (it creates them on the TPM)."""
        r = _run(["node", "tpm_client.js", TPM_IP, str(self.port), "keys"], timeout=REGISTER_TIMEOUT, cwd=TPM_DIR)
        assert r.returncode == 0, r.stdout + r.stderr[-2000:]
        return json.loads(r.stdout.strip().splitlines()[-1])

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def swtpm():
    t = Swtpm()
    yield t
    t.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = start_server(tmp_path_factory, SERVER_IP)
    yield s
    s.stop()


def sas_parts(scope: str, registration_id: str) -> tuple[str, int, str]:
    """(sr as the Node client writes it, expiry, the string the TPM signs)."""
    sr = urllib.parse.quote(f"{scope}/registrations/{registration_id}", safe="")
    se = int(time.time()) + 3600
    return sr, se, f"{sr}\n{se}"


def node_tpm_register(server, swtpm: Swtpm, transport: str, sign: str, timeout_ms: int = 80000) -> dict:
    cmd = ["node", "tpm_register.js", server.ip, server.id_scope, TPM_IP, str(swtpm.port), transport,
           base64.b64encode(sign.encode()).decode(), str(timeout_ms)]
    env = {**os.environ, "NODE_EXTRA_CA_CERTS": str(server.root_ca)}
    r = _run(cmd, timeout=REGISTER_TIMEOUT, cwd=TPM_DIR, env=env)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert r.returncode == 0 and lines, f"tpm_register.js exited {r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}"
    return json.loads(lines[-1])


def raw_register(server, registration_id: str, authorization: str | None, body: dict) -> tuple[int, dict]:
    ctx = ssl.create_default_context(cafile=str(server.root_ca))
    ctx.check_hostname = False
    conn = http.client.HTTPSConnection(server.ip, 443, context=ctx, timeout=30)
    headers = {"Content-Type": "application/json"}
    if authorization:
        headers["Authorization"] = authorization
    conn.request("PUT", f"/{server.id_scope}/registrations/{registration_id}/register?api-version={API_VERSION}",
                 body=json.dumps(body), headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, (json.loads(data) if data else {})


@pytest.mark.parametrize("transport", ["http", "amqp", "amqpws"])
def test_node_tpm_client_registers(server, swtpm, transport):
    """Over HTTPS (401 challenge), AMQP and AMQP over WebSockets (SASL `TPM`)."""
    keys = swtpm.keys()
    rid = keys["registrationId"]
    server.cli("enrollment", "create", "--enrollment-id", rid, "--attestation-type", "tpm",
               "--endorsement-key", keys["endorsementKey"])
    sr, se, to_sign = sas_parts(server.id_scope, rid)
    out = node_tpm_register(server, swtpm, transport, to_sign)
    assert out["ok"], out
    # The TPM flow hands back the whole operation result (the symmetric-key flow only its state).
    assert out["result"]["status"] == "assigned", out
    result = out["result"]["registrationState"]
    assert result["assignedHub"] in HUBS, result
    assert result["deviceId"] == rid
    rec = server.registration(rid)
    assert rec is not None and rec["status"] == "assigned" and rec["assignedHub"] == result["assignedHub"], rec
    assert "authenticationKey" not in json.dumps(rec), "the service API shows no key material"
    # It came over the transport asked for (the server logs one line per registration).
    name = {"http": "https", "amqp": "amqp", "amqpws": "amqp-ws"}[transport]
    log = server.stderr_path.read_text(errors="replace")
    assert any(f'transport="{name}"' in ln and rid in ln and "device registered" in ln for ln in log.splitlines()), \
        f"no registration of {rid} over {name} in the server log"
    # The TPM now holds the key of the final result; the server accepts what the TPM signs with it.
    sig = urllib.parse.quote(out["signature"], safe="")
    token = f"SharedAccessSignature sr={sr}&sig={sig}&se={se}&skn=registration"
    status, body = raw_register(server, rid, token, {"registrationId": rid})
    assert status == 202, body
    # And a SAS the TPM did not sign is not: no tpm block, so the plain 401.
    forged = f"SharedAccessSignature sr={sr}&sig={urllib.parse.quote(base64.b64encode(b'x' * 32).decode(), safe='')}&se={se}&skn=registration"
    status, body = raw_register(server, rid, forged, {"registrationId": rid})
    assert status == 401 and body.get("errorCode") == 401002 and "authenticationKey" not in body, body


def test_node_tpm_client_with_an_unenrolled_ek_is_refused(server, swtpm):
    keys = swtpm.keys()
    rid = keys["registrationId"]
    _, _, to_sign = sas_parts(server.id_scope, rid)
    out = node_tpm_register(server, swtpm, "http", to_sign)
    # The Node client reports any answer but a 401 challenge as "not an unauthorized error".
    assert not out["ok"] and out["error"]["name"] != "Timeout", out
    assert server.registration(rid) is None
    # What it got: 404201, as DPS answers an unknown TPM device, and no challenge.
    body = {"registrationId": rid, "tpm": {"endorsementKey": keys["endorsementKey"],
                                          "storageRootKey": keys["storageRootKey"]}}
    status, answer = raw_register(server, rid, None, body)
    assert status == 404 and answer.get("errorCode") == 404201 and "authenticationKey" not in answer, answer


def test_node_tpm_client_with_another_tpms_ek_is_refused(server, swtpm):
    """The id is enrolled, but with another TPM's EK: no challenge, nothing recorded."""
    other = Swtpm()
    try:
        other_ek = other.keys()["endorsementKey"]
    finally:
        other.stop()
    keys = swtpm.keys()
    rid = keys["registrationId"]
    server.cli("enrollment", "create", "--enrollment-id", rid, "--attestation-type", "tpm",
               "--endorsement-key", other_ek)
    _, _, to_sign = sas_parts(server.id_scope, rid)
    out = node_tpm_register(server, swtpm, "http", to_sign)
    # The Node client reports any answer but a 401 challenge as "not an unauthorized error".
    assert not out["ok"] and out["error"]["name"] != "Timeout", out
    assert server.registration(rid) is None


def test_a_tpm_enrollment_over_mqtt_gets_a_clear_error(server, swtpm):
    """DPS offers no TPM exchange over MQTT: an SDK reaching a TPM enrollment over MQTT (here with
    a SAS, the only credential an MQTT TPM device could bring) is told to use HTTPS or AMQP."""
    keys = swtpm.keys()
    rid = keys["registrationId"]
    server.cli("enrollment", "create", "--enrollment-id", rid, "--attestation-type", "tpm",
               "--endorsement-key", keys["endorsementKey"])
    out = node_register(server, rid, "mqtt", symmetric_key=base64.b64encode(b"k" * 32).decode())
    assert not out["ok"], out
    assert "TPM attestation is not available over MQTT" in json.dumps(out["error"]), out
    out = py_register(server, rid, symmetric_key=base64.b64encode(b"k" * 32).decode())
    assert not out["ok"], out
    assert server.registration(rid) is None


def test_an_unenrolled_ek_over_amqp_gets_a_sasl_outcome(server, swtpm):
    """Over AMQP the refusal is a SASL outcome (auth) naming 404201, sent before the connection
    closes. The Node AMQP client does not report it: a TPM connection that fails before the
    challenge emits its completion to no listener (azure-iot-provisioning-device-amqp 1.9.1,
    `connectingTpm`), so the client waits until our timeout; the server's side is checked in its
    log instead, and nothing may be recorded."""
    keys = swtpm.keys()
    rid = keys["registrationId"]
    _, _, to_sign = sas_parts(server.id_scope, rid)
    out = node_tpm_register(server, swtpm, "amqp", to_sign, timeout_ms=15000)
    assert not out["ok"], out
    assert server.registration(rid) is None
    log = server.stderr_path.read_text(errors="replace")
    assert any('transport="amqp"' in ln and rid in ln and "404201" in ln for ln in log.splitlines()), \
        f"no AMQP refusal of {rid} in the server log"


def test_node_tpm_client_of_a_disabled_enrollment_is_refused(server, swtpm):
    """Challenged like any TPM device; the register that follows is refused (enrollment disabled)."""
    keys = swtpm.keys()
    rid = keys["registrationId"]
    server.cli("enrollment", "create", "--enrollment-id", rid, "--attestation-type", "tpm",
               "--endorsement-key", keys["endorsementKey"], "--provisioning-status", "disabled")
    _, _, to_sign = sas_parts(server.id_scope, rid)
    out = node_tpm_register(server, swtpm, "http", to_sign)
    assert not out["ok"] and out["error"]["name"] != "Timeout", out
    assert server.registration(rid) is None
    log = server.stderr_path.read_text(errors="replace")
    assert any(rid in ln and "is disabled" in ln for ln in log.splitlines()), "refused for being disabled"
