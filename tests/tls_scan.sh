#!/usr/bin/env bash
# The outside TLS scan: a real `opendps serve` on each TLS profile, every TLS port scanned by
# tools nobody on the project wrote (sslyze, nmap's ssl-enum-ciphers, `openssl s_client`), and
# their output judged against docs/tls.md by tests/tls_judge.py. Prints the judge's lines and
# one `SUMMARY: PASS|FAIL` line per scanned port; exits non-zero if any scan fails.
#
# Installs what it needs on first run: sslyze (pinned below, from PyPI) into a venv under
# target/tools/ (the ignored build area), and Debian's nmap when it is missing (apt-get).
# Env: OPENDPS_SCAN_ADDR (default 127.0.0.43), OPENDPS_TOOLS_DIR (default target/tools),
#      OPENDPS_SCAN_KEEP=1 keeps the raw tool outputs (their directory is printed).
#
# One listener of a server someone else started (e.g. tests/devices/test_failover.py, node B
# after its promotion), with the same tools and judge:
#   tests/tls_scan.sh --one HOST:PORT ROOT_PEM JUDGE-ARGS...   (e.g. --profile dps-legacy-security
#   --client-cert optional); same output and exit status, no build and no server of its own.
set -uo pipefail
cd "$(dirname "$0")/.."

SSLYZE_VERSION=6.3.1
TOOLS="${OPENDPS_TOOLS_DIR:-$PWD/target/tools}"
ADDR="${OPENDPS_SCAN_ADDR:-127.0.0.43}"
# Every TLS port of a server started with default settings; one line per port.
PORTS=(
  443  # HTTPS: device API, service API, MQTT and AMQP over WebSockets
  8883 # MQTT
  5671 # AMQP
)

# --- tools ---------------------------------------------------------------------------------
VENV="$TOOLS/sslyze-$SSLYZE_VERSION"
if [ ! -x "$VENV/bin/sslyze" ]; then
  echo "tls_scan: installing sslyze $SSLYZE_VERSION into $VENV"
  mkdir -p "$TOOLS"
  # Two scans installing at once (the scan step and the failover test) must not share a venv
  # half made: one installs, the other waits for it.
  { flock "$TOOLS" bash -c '[ -x "$1/bin/sslyze" ] || { python3 -m venv "$1" &&
      "$1/bin/pip" install --quiet --disable-pip-version-check -r tests/tls_scan_requirements.txt; } ||
      { rm -rf "$1"; exit 1; }' _ "$VENV"; } ||
    { echo "SUMMARY: FAIL (could not install sslyze $SSLYZE_VERSION from PyPI)"; exit 1; }
fi
if ! command -v nmap >/dev/null; then
  echo "tls_scan: installing nmap (Debian)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nmap >/dev/null; } ||
    { echo "SUMMARY: FAIL (could not install nmap)"; exit 1; }
fi
command -v openssl >/dev/null || { echo "SUMMARY: FAIL (no openssl command)"; exit 1; }
echo "tls_scan: $("$VENV/bin/sslyze" --help 2>/dev/null | grep -o 'SSLyze version [0-9.]*' | head -1), $(nmap --version | head -1), $(openssl version)"

# --- one listener --------------------------------------------------------------------------
# scan_port DIR HOST PORT ROOT_PEM JUDGE-ARGS...: runs the tools against HOST:PORT into DIR
# (ROOT_PEM: the root the server's chain must verify to), then the judge.
scan_port() {
  local out="$1" host="$2" port="$3" root="$4"; shift 4
  mkdir -p "$out"
  "$VENV/bin/sslyze" --quiet --json_out "$out/sslyze.json" \
    --sslv2 --sslv3 --tlsv1 --tlsv1_1 --tlsv1_2 --tlsv1_3 --certinfo --certinfo_ca_file "$root" \
    --elliptic_curves --reneg --fallback --ems --compression --resum --heartbleed --openssl_ccs \
    "$host:$port" >"$out/sslyze.log" 2>&1
  nmap -Pn -p "$port" --script ssl-enum-ciphers -oX "$out/nmap.xml" "$host" >"$out/nmap.txt" 2>&1
  # Without a client certificate: is one requested, and does the handshake complete anyway?
  timeout 15 openssl s_client -connect "$host:$port" -tls1_2 -CAfile "$root" </dev/null \
    >"$out/probe-certreq.txt" 2>&1
  echo $? >"$out/probe-certreq.rc"
  # Which group does the server pick when the client prefers P-384?
  timeout 15 openssl s_client -connect "$host:$port" -tls1_2 -groups P-384:P-256 \
    -cipher ECDHE-RSA-AES128-GCM-SHA256 </dev/null >"$out/probe-groups.txt" 2>&1
  echo $? >"$out/probe-groups.rc"
  # A TLS 1.1 ClientHello must get a protocol_version alert.
  timeout 15 openssl s_client -connect "$host:$port" -tls1_1 -cipher 'DEFAULT:@SECLEVEL=0' </dev/null \
    >"$out/probe-tls11.txt" 2>&1
  echo $? >"$out/probe-tls11.rc"
  python3 tests/tls_judge.py --target "$host:$port" --out "$out" "$@"
}

if [ "${1:-}" = "--one" ]; then
  [ $# -ge 3 ] || { echo "usage: tests/tls_scan.sh --one HOST:PORT ROOT_PEM JUDGE-ARGS..."; exit 2; }
  target="$2" root="$3"; shift 3
  out=$(mktemp -d -t opendps-tls-scan.XXXXXX)
  echo "--- $* on $target"
  scan_port "$out" "${target%:*}" "${target##*:}" "$root" "$@"
  rc=$?
  if [ "${OPENDPS_SCAN_KEEP:-0}" = 1 ]; then echo "tls_scan: raw outputs kept in $out"; else rm -rf "$out"; fi
  exit $rc
fi

cargo build --quiet -p opendps || { echo "SUMMARY: FAIL (cargo build -p opendps failed)"; exit 1; }
BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/opendps"

status=0
KEEP_DIR=""
# scan PROFILE "SERVE FLAGS" JUDGE-ARGS...: one server, every port.
scan() {
  local profile="$1" flags="$2"; shift 2
  local data; data=$(mktemp -d -t opendps-tls-scan.XXXXXX)
  : >"$data/serve.log"
  # The scanners are one source opening about a thousand handshakes in seconds: the per-source
  # handshake rate (docs/limits.md, "Per source"; tested in crates/dps-server/tests/per_source.rs)
  # is turned off so that what is judged is the TLS policy.
  # shellcheck disable=SC2086
  OPENDPS_LIMITS__HANDSHAKES_PER_SECOND_PER_SOURCE=0 \
  "$BIN" serve --data-dir "$data" --listen-address "$ADDR" --tls-profile "$profile" $flags \
    >"$data/serve.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 150); do grep -q 'OpenDPS is serving' "$data/serve.log" && break; sleep 0.1; done
  if ! grep -q 'OpenDPS is serving' "$data/serve.log"; then
    echo "SUMMARY: FAIL $ADDR $profile $flags (the server did not start)"; cat "$data/serve.log"; status=1
  else
    ROOT_PEM="$data/pki/root.pem"
    for port in "${PORTS[@]}"; do
      echo "--- $profile $flags on $ADDR:$port"
      scan_port "$data/scan-$port" "$ADDR" "$port" "$ROOT_PEM" --profile "$profile" "$@" || status=1
    done
  fi
  kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  if [ "${OPENDPS_SCAN_KEEP:-0}" = 1 ]; then KEEP_DIR="$KEEP_DIR $data"; else rm -rf "$data"; fi
}

scan dps-legacy-security "" --client-cert optional
scan dps-legacy-performance "" --client-cert optional
scan dps-recommended "--no-client-cert-request" --client-cert none
scan dps-legacy-security "--tls13" --tls13 --client-cert optional
[ -n "$KEEP_DIR" ] && echo "tls_scan: raw outputs kept in$KEEP_DIR"
exit $status
