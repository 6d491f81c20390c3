"""One real `opendps serve` for the official Python service SDKs, on its own loopback address and
port 443 (the SDKs always talk to https://<HostName>:443, HostName from the connection string).

Both SDKs send requests through `requests`, which trusts the CA bundle named by REQUESTS_CA_BUNDLE:
the server's built-in root is put there, nothing else about the SDKs is altered.

Environment:
  OPENDPS_BIN            the opendps binary (default: <repo>/target/debug/opendps)
  OPENDPS_SERVICE_PY_IP  loopback address for the server (default 127.0.0.181)
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
OPENDPS_BIN = os.environ.get("OPENDPS_BIN", str(REPO / "target" / "debug" / "opendps"))
IP = os.environ.get("OPENDPS_SERVICE_PY_IP", "127.0.0.181")
START_TIMEOUT = 60


def _die_with_parent() -> None:
    """In the server process: SIGTERM when pytest dies (Linux PR_SET_PDEATHSIG), so no server
    outlives a killed run and keeps port 443 on its address."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except Exception:  # noqa: BLE001 - best effort
        pass


class Server:
    def __init__(self, base: Path):
        self.data_dir = base / "data"
        self.log = base / "server.log"
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []

    def start(self) -> "Server":
        log = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [OPENDPS_BIN, "serve", "--data-dir", str(self.data_dir), "--listen-address", IP, "--mqtt-port", "0", "--amqp-port", "0"],
            stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True,
            env={**os.environ, "NO_COLOR": "1"}, preexec_fn=_die_with_parent,
        )
        ready = threading.Event()

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                if line.strip().startswith("service connection string:"):
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        while not ready.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"opendps serve on {IP} did not start:\n" + "\n".join(self.lines) + "\n" + self.log.read_text(errors="replace")[-4000:]
                )
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [OPENDPS_BIN, *args, "--data-dir", str(self.data_dir)],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )
        if out.returncode != 0:
            raise RuntimeError(f"opendps {' '.join(args)}: {out.stderr}")
        return out.stdout

    @property
    def connection_string(self) -> str:
        return self.cli("dps", "connection-string", "--query", "connectionString", "-o", "tsv").strip()

    @property
    def root_pem(self) -> Path:
        return self.data_dir / "pki" / "root.pem"


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("opendps-service-py")).start()
    os.environ["REQUESTS_CA_BUNDLE"] = str(s.root_pem)
    yield s
    s.stop()
