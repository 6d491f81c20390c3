"""Fixtures for the official-device-SDK tests: a real OpenDPS server per module on its own loopback
address with the real DPS ports (443 and 8883, which the SDKs fix), the operator CLI, certificates
made with the openssl CLI, and runners for the Python and Node device SDKs (each registration in
its own process, with a generous timeout).

Environment:
  OPENDPS_BIN        the opendps binary (default: <repo>/target/debug/opendps)
  OPENDPS_DEVICE_IPS comma-separated loopback addresses for the servers (default 127.0.0.71,...)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
OPENDPS_BIN = os.environ.get("OPENDPS_BIN", str(REPO / "target" / "debug" / "opendps"))
DEVICE_IPS = os.environ.get("OPENDPS_DEVICE_IPS", "127.0.0.71,127.0.0.72,127.0.0.73,127.0.0.74").split(",")

HUB_KEY = "aHViLWtleS1mb3ItdGVzdHMtMDEyMzQ1Njc4OQ=="
HUBS = ("hub-a.azure-devices.net", "hub-b.azure-devices.net")

REGISTER_TIMEOUT = 90  # seconds for one SDK registration process (the SDK itself gets 60)
CLI_TIMEOUT = 60
START_TIMEOUT = 60

_live_servers: list["Server"] = []


def hub_connection_string(host: str) -> str:
    return f"HostName={host};SharedAccessKeyName=iothubowner;SharedAccessKey={HUB_KEY}"


def derive_device_key(group_key: str, registration_id: str) -> str:
    """The DPS group key derivation: base64(HMAC-SHA256(base64decode(groupKey), registrationId))."""
    mac = hmac.new(base64.b64decode(group_key), registration_id.encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


class CliError(Exception):
    def __init__(self, args, rc, stdout, stderr):
        super().__init__(f"opendps {' '.join(args)} exited {rc}: {stderr.strip()}")
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr


def _die_with_parent() -> None:
    """In the server's child process: get SIGTERM when pytest dies, so no server outlives a killed
    run and keeps the DPS ports on its address (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except Exception:  # noqa: BLE001 - best effort
        pass


class Server:
    """One `opendps serve` process with its own data directory and loopback address."""

    def __init__(self, ip: str, base_dir: Path, extra_args: tuple[str, ...] = (), register_devices: bool = False):
        self.ip = ip
        self.extra_args = extra_args
        # The linked hubs of most tests here are names only (hub-a.azure-devices.net), so the
        # server does not write devices into them; test_hub.py turns it on with embedded hubs.
        self.register_devices = register_devices
        self.data_dir = base_dir / "data"
        self.data_dir.mkdir(parents=True)
        self.stderr_path = base_dir / "server.stderr.log"
        self.stdout_lines: list[str] = []
        self.info: dict[str, str] = {}
        self.proc: subprocess.Popen | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "Server":
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [OPENDPS_BIN, "serve", "--data-dir", str(self.data_dir), "--listen-address", self.ip, *self.extra_args],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "NO_COLOR": "1",
                 "OPENDPS_HUB_REGISTRY__REGISTER_DEVICES": "true" if self.register_devices else "false"},
            preexec_fn=_die_with_parent,
        )
        ready = threading.Event()

        def read_stdout():
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                line = line.rstrip("\n")
                self.stdout_lines.append(line)
                if ":" in line and line.startswith("  "):
                    k, _, v = line.strip().partition(":")
                    self.info.setdefault(k.strip(), v.strip())
                if line.strip().startswith("service connection string:"):
                    ready.set()

        threading.Thread(target=read_stdout, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        while not ready.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"opendps serve on {self.ip} did not become ready (exit {self.proc.returncode}).\n"
                    f"stdout:\n" + "\n".join(self.stdout_lines) + "\nstderr tail:\n" + self.log_tail()
                )
        _live_servers.append(self)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self in _live_servers:
            _live_servers.remove(self)
        try:
            self._stderr.close()
        except Exception:  # noqa: BLE001
            pass

    def log_tail(self, lines: int = 40, width: int = 400) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        text = re.sub(r"\x1b\[[0-9;]*m", "", text)
        return "\n".join(ln if len(ln) <= width else ln[:width] + " ..." for ln in text.splitlines()[-lines:])

    # -- facts printed at start --------------------------------------------------------------
    @property
    def id_scope(self) -> str:
        return self.info["ID scope"]

    @property
    def root_ca(self) -> Path:
        return self.data_dir / "pki" / "root.pem"

    # -- operator CLI ------------------------------------------------------------------------
    def cli_raw(self, *args: str) -> subprocess.CompletedProcess:
        full = [*args, "--data-dir", str(self.data_dir)]
        return subprocess.run(
            [OPENDPS_BIN, *full], capture_output=True, text=True, timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL
        )

    def cli(self, *args: str):
        r = self.cli_raw(*args)
        if r.returncode != 0:
            raise CliError(args, r.returncode, r.stdout, r.stderr)
        out = r.stdout.strip()
        return json.loads(out) if out else None

    def link_hubs(self, dps_name: str | None = None) -> None:
        extra = ("--dps-name", dps_name) if dps_name else ()
        for hub in HUBS:
            self.cli("dps", "linked-hub", "create", "--connection-string", hub_connection_string(hub),
                     "--location", "local", *extra)

    def registration(self, registration_id: str, dps_name: str | None = None):
        """The registration record, or None when the server answers not-found (any other error raises)."""
        extra = ("--dps-name", dps_name) if dps_name else ()
        r = self.cli_raw("registration", "show", "--registration-id", registration_id, "--show-tls", *extra)
        if r.returncode == 0:
            return json.loads(r.stdout)
        if "not found" in r.stderr or "404" in r.stderr:
            return None
        raise CliError(("registration", "show", registration_id), r.returncode, r.stdout, r.stderr)


def start_server(tmp_path_factory, ip: str, *extra_args: str) -> Server:
    s = Server(ip, tmp_path_factory.mktemp(f"opendps-{ip}"), tuple(extra_args)).start()
    s.link_hubs()
    return s


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The main server: DPS defaults (TLS 1.2 only), two linked hubs on the default instance."""
    s = start_server(tmp_path_factory, DEVICE_IPS[0])
    yield s
    s.stop()


@pytest.fixture(scope="module")
def tls13_server(tmp_path_factory):
    """A second server offering TLS 1.3 (--tls13) with an instance `tls13-dps` that has
    minTlsVersion "1.3", two hubs linked to it."""
    s = start_server(tmp_path_factory, DEVICE_IPS[1], "--tls13")
    template = {
        "resources": [
            {
                "type": "Microsoft.Devices/provisioningServices",
                "name": "tls13-dps",
                "location": "local",
                "sku": {"name": "S1", "capacity": 1},
                "properties": {"minTlsVersion": "1.3"},
            }
        ]
    }
    tpl = s.data_dir.parent / "tls13-template.json"
    tpl.write_text(json.dumps(template))
    s.cli("deployment", "create", "-g", "rg", "-f", str(tpl))
    s.tls13_scope = s.cli("dps", "show", "--dps-name", "tls13-dps")["properties"]["idScope"]
    s.link_hubs("tls13-dps")
    yield s
    s.stop()


# -- certificates (openssl CLI) ----------------------------------------------------------------

_OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = placeholder
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[v3_intermediate]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[v3_leaf]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""


class Cert:
    def __init__(self, cert: Path, key: Path, cn: str, issuer: "Cert | None"):
        self.cert = cert
        self.key = key
        self.cn = cn
        self.issuer = issuer

    def chain_file(self) -> Path:
        """This cert followed by its issuers up to, but not including, the self-signed root."""
        parts = [self.cert.read_text()]
        c = self.issuer
        while c is not None and c.issuer is not None:
            parts.append(c.cert.read_text())
            c = c.issuer
        p = self.cert.with_name(self.cert.stem + "-chain.pem")
        p.write_text("".join(parts))
        return p


class CertFactory:
    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cnf = self.dir / "openssl.cnf"
        self.cnf.write_text(_OPENSSL_CNF)

    def _openssl(self, *args: str) -> None:
        r = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"openssl {' '.join(args)} failed: {r.stderr}")

    def _key(self, name: str, kind: str) -> Path:
        key = self.dir / f"{name}.key"
        if kind == "rsa":
            self._openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key))
        else:
            self._openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key))
        return key

    def root(self, cn: str, kind: str = "rsa") -> Cert:
        name = f"root-{cn}"
        key = self._key(name, kind)
        cert = self.dir / f"{name}.pem"
        self._openssl("req", "-x509", "-new", "-key", str(key), "-subj", f"/CN={cn}", "-days", "30",
                      "-sha256", "-config", str(self.cnf), "-extensions", "v3_ca", "-out", str(cert))
        return Cert(cert, key, cn, None)

    def _issue(self, cn: str, issuer: Cert, section: str, kind: str, prefix: str) -> Cert:
        name = f"{prefix}-{cn}"
        key = self._key(name, kind)
        csr = self.dir / f"{name}.csr"
        cert = self.dir / f"{name}.pem"
        self._openssl("req", "-new", "-key", str(key), "-subj", f"/CN={cn}", "-config", str(self.cnf), "-out", str(csr))
        self._openssl("x509", "-req", "-in", str(csr), "-CA", str(issuer.cert), "-CAkey", str(issuer.key),
                      "-set_serial", "0x" + secrets.token_hex(8), "-days", "30", "-sha256",
                      "-extfile", str(self.cnf), "-extensions", section, "-out", str(cert))
        return Cert(cert, key, cn, issuer)

    def intermediate(self, cn: str, issuer: Cert, kind: str = "rsa") -> Cert:
        return self._issue(cn, issuer, "v3_intermediate", kind, "int")

    def leaf(self, cn: str, issuer: Cert, kind: str = "ec") -> Cert:
        return self._issue(cn, issuer, "v3_leaf", kind, "leaf")

    def self_signed_leaf(self, cn: str, kind: str = "rsa") -> Cert:
        """A self-signed device certificate with CA:FALSE (an individual X.509 enrollment)."""
        name = f"self-{cn}"
        key = self._key(name, kind)
        cert = self.dir / f"{name}.pem"
        self._openssl("req", "-x509", "-new", "-key", str(key), "-subj", f"/CN={cn}", "-days", "30",
                      "-sha256", "-config", str(self.cnf), "-extensions", "v3_leaf", "-out", str(cert))
        return Cert(cert, key, cn, None)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> CertFactory:
    return CertFactory(tmp_path_factory.mktemp("certs"))


# -- SDK runners --------------------------------------------------------------------------------

def _run_json(cmd: list[str], env: dict | None = None, cwd: Path = HERE) -> dict:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=REGISTER_TIMEOUT, cwd=cwd,
                           env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"{cmd[:2]} gave no answer in {REGISTER_TIMEOUT} s; stderr: {e.stderr!r}") from None
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        raise AssertionError(f"{' '.join(cmd)} exited {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr[-4000:]}")
    out = json.loads(lines[-1])
    out["_stderr"] = r.stderr[-4000:]
    return out


def py_register(server: Server, registration_id: str, *, scope: str | None = None,
                symmetric_key: str | None = None, cert: Path | None = None, key: Path | None = None,
                websockets: bool = False) -> dict:
    """Register with azure-iot-device (Python, MQTT). Returns {"ok": bool, "result"|"error": ...}."""
    cmd = [sys.executable, str(HERE / "py_register.py"), "--host", server.ip, "--id-scope", scope or server.id_scope,
           "--registration-id", registration_id, "--root-ca", str(server.root_ca)]
    if symmetric_key is not None:
        cmd += ["--symmetric-key", symmetric_key]
    else:
        cmd += ["--cert", str(cert), "--key", str(key)]
    if websockets:
        cmd.append("--websockets")
    return _run_json(cmd)


def node_register(server: Server, registration_id: str, transport: str, *, scope: str | None = None,
                  symmetric_key: str | None = None, cert: Path | None = None, key: Path | None = None) -> dict:
    """Register with azure-iot-provisioning-device (Node) over `http`, `mqtt`, `mqttws`, `amqp` or `amqpws`."""
    cmd = ["node", str(HERE / "node_register.js"), "--host", server.ip, "--id-scope", scope or server.id_scope,
           "--registration-id", registration_id, "--transport", transport, "--timeout-ms", "60000"]
    if symmetric_key is not None:
        cmd += ["--symmetric-key", symmetric_key]
    else:
        cmd += ["--cert", str(cert), "--key", str(key)]
    env = {**os.environ, "NODE_EXTRA_CA_CERTS": str(server.root_ca)}
    return _run_json(cmd, env=env)


@pytest.fixture(scope="session", autouse=True)
def _node_modules_present():
    if not (HERE / "node_modules" / "azure-iot-provisioning-device").is_dir():
        pytest.exit("tests/devices/node_modules is missing: run `npm ci` in tests/devices", returncode=3)


# -- server log tail on failure ------------------------------------------------------------------

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and _live_servers:
        for s in _live_servers:
            report.sections.append((f"opendps server {s.ip} stderr (tail)", s.log_tail()))
