"""Custom allocation with a real HTTPS webhook started by the test: the hub the webhook chooses
and the payload it returns reach an official SDK device; a failing webhook's message reaches the
device too (issue: allocation beyond hashing)."""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import DEVICE_IPS, HUBS, Server, node_register, py_register, unique


def _webhook_cert(d: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 (the webhook's own PKI)."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d, timeout=60)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=Webhook CA",
        "-days", "2", "-addext", "basicConstraints=critical,CA:TRUE")
    run("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    run("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "srv.pem",
        "-days", "1", "-extfile", "san.ext")
    return d / "ca.pem", d / "srv.pem", d / "srv.key"


class _Hook(BaseHTTPRequestHandler):
    seen: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"null")
        _Hook.seen.append(body)
        if self.path.startswith("/ok"):
            answer = {"iotHubHostName": HUBS[1], "payload": {"welcome": "from the webhook", "slot": 7},
                      "initialTwin": {"tags": {"line": "A"}}}
            status = 200
        else:
            answer, status = {"reason": "inventory service down"}, 503
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.fixture(scope="module")
def webhook(tmp_path_factory):
    d = tmp_path_factory.mktemp("webhook")
    ca, cert, key = _webhook_cert(d)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield httpd.server_address[1], ca
    httpd.shutdown()


@pytest.fixture(scope="module")
def hook_server(tmp_path_factory, webhook):
    port, ca = webhook
    cfg = tmp_path_factory.mktemp("hookcfg") / "opendps.toml"
    cfg.write_text(f'[allocation]\nwebhook_ca_file = "{ca}"\nwebhook_timeout = "5s"\n')
    s = Server(DEVICE_IPS[2], tmp_path_factory.mktemp(f"opendps-{DEVICE_IPS[2]}"), ("--config", str(cfg))).start()
    s.link_hubs()
    s.webhook_port = port
    yield s
    s.stop()


def _enroll_custom(s: Server, rid: str, path: str) -> str:
    e = s.cli("enrollment", "create", "--enrollment-id", rid, "--attestation-type", "symmetrickey",
              "--allocation-policy", "custom", "--webhook-url", f"https://127.0.0.1:{s.webhook_port}{path}?code=fn-key",
              "--api-version", "2021-10-01")
    return e["attestation"]["symmetricKey"]["primaryKey"]


def test_webhook_chooses_the_hub_and_its_payload_reaches_the_python_sdk(hook_server):
    s = hook_server
    rid = unique("hook-py")
    key = _enroll_custom(s, rid, "/ok")
    out = py_register(s, rid, symmetric_key=key)
    assert out["ok"], out
    state = out["result"]["registrationState"]
    assert out["result"]["status"] == "assigned"
    assert state["assignedHub"] == HUBS[1], "the webhook's choice"
    payload = state["payload"]
    # The Python SDK hands the payload over as JSON text.
    assert (json.loads(payload) if isinstance(payload, str) else payload) == {"welcome": "from the webhook", "slot": 7}
    sent = _Hook.seen[-1]
    assert sent["deviceRuntimeContext"]["registrationId"] == rid
    assert sorted(sent["linkedHubs"]) == sorted(HUBS)
    rec = s.registration(rid)
    assert rec["initialTwin"] == {"tags": {"line": "A"}}


def test_webhook_payload_reaches_the_node_sdk(hook_server):
    s = hook_server
    rid = unique("hook-node")
    key = _enroll_custom(s, rid, "/ok")
    out = node_register(s, rid, "http", symmetric_key=key)
    assert out["ok"], out
    assert out["result"]["assignedHub"] == HUBS[1]
    assert out["result"]["payload"] == {"welcome": "from the webhook", "slot": 7}, out["result"]


def test_a_failing_webhook_says_what_happened_to_the_device(hook_server):
    s = hook_server
    rid = unique("hook-fail")
    key = _enroll_custom(s, rid, "/down")
    out = node_register(s, rid, "http", symmetric_key=key)
    assert not out["ok"], out
    text = json.dumps(out["error"])
    assert "Custom allocation failed" in text and "HTTP 503" in text and "inventory service down" in text, text
    assert "fn-key" not in text, "the function key never reaches the device"
    rec = s.registration(rid)
    assert rec["status"] == "failed" and rec["errorCode"] == 400209, rec
