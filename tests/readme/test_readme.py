"""The README's first start and first device, run exactly as written.

The README's server listens on 0.0.0.0 ports 443 and 8883 and keeps its state in
/var/lib/opendps. Run as is on this machine, it would collide with the other test servers (they
hold 443 and 8883 on their own 127.0.0.x addresses, which 0.0.0.0 overlaps) and with whatever is
in /var/lib/opendps. So the snippets run, unchanged, inside a network namespace of their own
(`unshare --net`: a fresh loopback, no other listener) and a private mount namespace in which
/var/lib is an empty tmpfs (so /var/lib/opendps is a fresh data directory). Nothing in the
snippets is substituted; the environment provides what the README says the reader has:
`opendps` on PATH (target/release, the binary `cargo run --release` builds), `python3` with
azure-iot-device (tests/devices/.venv) and `node` with the device SDKs (tests/devices/node_modules
through NODE_PATH).

Needs root (namespaces), like the rest of scripts/test. Run:
  cargo build --release -p opendps && tests/devices/.venv/bin/python -m pytest tests/readme
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
README = REPO / "README.md"
VENV = REPO / "tests" / "devices" / ".venv"
NODE_MODULES = REPO / "tests" / "devices" / "node_modules"
TIMEOUT = 900  # seconds for the whole run in the namespace (server start, two SDK registrations)


def section(text: str, title: str) -> str:
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def blocks(text: str) -> list[tuple[str, str, str]]:
    """Fenced blocks as (language, code, the text before the block); indentation removed."""
    out = []
    for m in re.finditer(r"(?ms)^( *)```(\w*)\n(.*?)^\1```", text):
        indent, lang, body = m.group(1), m.group(2), m.group(3)
        code = "\n".join(line[len(indent):] if line.startswith(indent) else line for line in body.splitlines())
        out.append((lang, code + "\n", text[: m.start()]))
    return out


def test_readme_first_start_and_first_device(tmp_path):
    text = README.read_text()
    serve = [code for lang, code, _ in blocks(section(text, "The two commands")) if lang == "sh"][0].strip()
    assert serve == "cargo run --release -p opendps -- serve", serve
    banner = [code for lang, code, _ in blocks(section(text, "First start")) if lang == ""][0]
    device = blocks(section(text, "Provision a first device"))
    shell: list[str] = []
    for lang, code, before in device:
        if lang == "sh":
            shell.append(code)
        else:
            name = re.findall(r"saved as `([^`]+)`", before)[-1]
            (tmp_path / name).write_text(code)
    assert len(shell) == 4 and (tmp_path / "register.py").exists() and (tmp_path / "register.js").exists()
    # Then the metrics snippet, after the devices registered.
    metrics = [code for lang, code, _ in blocks(section(text, "Metrics and health")) if lang == "sh"]
    assert len(metrics) == 1, metrics
    shell += metrics

    if not (VENV / "bin" / "python").exists() or not NODE_MODULES.exists():
        pytest.fail("tests/devices/.venv and tests/devices/node_modules are needed (scripts/test installs them)")
    # The binary `cargo run --release` runs, built before the clock of the namespaced run starts.
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "opendps"], cwd=REPO, check=True, timeout=3600)
    if shutil.which("ip") is None:  # iproute2 brings the namespace's loopback up
        subprocess.run(["sh", "-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2"],
                       capture_output=True, timeout=600)
    probe = subprocess.run(["unshare", "--net", "--mount", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.fail(f"cannot make network and mount namespaces (root is needed): {probe.stderr.strip()}")

    steps = "\n".join(f'echo "=== step {i}"\n{code}' for i, code in enumerate(shell, 1))
    script = f"""set -euo pipefail
ip link set lo up
mount -t tmpfs tmpfs /var/lib
cd {shlex.quote(str(REPO))}
{serve} > {tmp_path}/server.out 2> {tmp_path}/server.err &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true; wait $SERVER || true' EXIT
for i in $(seq 1 1500); do
  grep -q "service connection string:" {tmp_path}/server.out && break
  kill -0 $SERVER 2>/dev/null || {{ echo "server exited"; exit 90; }}
  sleep 0.2
done
cd {shlex.quote(str(tmp_path))}
{steps}
echo "=== done"
"""
    (tmp_path / "run.sh").write_text(script)
    env = {
        **os.environ,
        "PATH": f"{REPO}/target/release:{VENV}/bin:{os.environ.get('PATH', '')}",
        "NODE_PATH": str(NODE_MODULES),
        "NO_COLOR": "1",
    }
    env.pop("OPENDPS_DATA_DIR", None)
    run = subprocess.run(
        ["unshare", "--net", "--mount", "--propagation", "private", "bash", str(tmp_path / "run.sh")],
        capture_output=True, text=True, env=env, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
    )
    server_out = (tmp_path / "server.out").read_text() if (tmp_path / "server.out").exists() else ""
    server_err = (tmp_path / "server.err").read_text() if (tmp_path / "server.err").exists() else ""
    report = f"exit {run.returncode}\nstdout:\n{run.stdout}\nstderr:\n{run.stderr}\nserver:\n{server_out}\n{server_err[-4000:]}"
    assert run.returncode == 0 and "=== done" in run.stdout, report

    # First start: the banner has the README's lines, in its order, with its values where they
    # are not generated (the ID scope is).
    def lines(b: str) -> list[tuple[str, str]]:
        out = []
        for line in b.splitlines():
            if ":" in line and line.startswith("  "):
                k, _, v = line.strip().partition(": ")
                out.append((k.strip().rstrip(":"), v.strip()))
        return out

    want, got = lines(banner), lines(server_out)
    assert [k for k, _ in got] == [k for k, _ in want], f"banner labels differ:\n{server_out}\nREADME:\n{banner}"
    for (k, w), (_, g) in zip(want, got):
        if k == "ID scope":
            assert re.fullmatch(r"0ne[0-9A-F]{8}", g), g
        else:
            assert g == w, f"{k}: {g!r} (README: {w!r})"

    # First device: both SDKs were assigned to the README's embedded hub; the record shows it and
    # TLS.
    out = run.stdout
    py_out = out.split("=== step 2")[1].split("=== step 3")[0]
    node_out = out.split("=== step 3")[1].split("=== step 4")[0]
    show = out.split("=== step 4")[1].split("=== step 5")[0]
    scraped = out.split("=== step 5")[1].split("=== done")[0]
    assert "assigned localhost my-device" in py_out, report
    assert "assigned localhost my-device" in node_out, report
    assert "localhost" in show and "TLSv1.2" in show and "assigned" in show, report
    # The device is in the embedded hub, with a SAS identity (docs/hub.md).
    assert "my-device" in show.split("TLSv1.2", 1)[1] and "sas" in show, report
    # Metrics: both devices counted as assigned to the README's hub; the store is ready.
    assigned = [line for line in scraped.splitlines() if line.startswith("opendps_device_assignments_total{")]
    assert assigned and all('hub="localhost"' in line for line in assigned), report
    assert sum(float(line.rsplit(" ", 1)[1]) for line in assigned) >= 2, report
    assert "ready" in scraped, report
