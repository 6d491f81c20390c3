#!/usr/bin/env bash
# Scans a real `opendps serve` with the outside scanners of ../shared/tools (sslyze, nmap,
# openssl s_client) on each TLS profile, HTTPS and MQTT ports, on its own loopback address.
# Prints each scanner SUMMARY line; exits non-zero if any scan fails.
set -uo pipefail
cd "$(dirname "$0")/.."
TOOLS="${OPENDPS_SHARED_TOOLS:-../shared/tools}"
if [ ! -x "$TOOLS/tls_policy_check.sh" ] && [ ! -f "$TOOLS/tls_policy_check.sh" ]; then
  echo "tls_scan: no $TOOLS/tls_policy_check.sh beside this checkout; cannot run the outside scan" >&2
  exit 1
fi
bash "$TOOLS/setup_tls_tools.sh" >/dev/null || { echo "tls_scan: installing the scanners failed" >&2; exit 1; }
cargo build --quiet -p opendps
BIN=target/debug/opendps
ADDR="${OPENDPS_SCAN_ADDR:-127.0.0.43}"
status=0
scan() { # profile, extra serve flags, check options...
  local profile="$1" flags="$2"; shift 2
  local data; data=$(mktemp -d)
  # shellcheck disable=SC2086
  "$BIN" serve --data-dir "$data" --listen-address "$ADDR" --tls-profile "$profile" $flags >"$data/serve.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 100); do grep -q 'OpenDPS is serving' "$data/serve.log" && break; sleep 0.1; done
  if ! grep -q 'OpenDPS is serving' "$data/serve.log"; then
    echo "SUMMARY: FAIL $ADDR ($profile: server did not start)"; cat "$data/serve.log"; status=1
  else
    for port in 443 8883; do
      echo "--- $profile $flags on $ADDR:$port"
      out=$(bash "$TOOLS/tls_policy_check.sh" "$ADDR" "$port" --ca "$data/pki/root.pem" "$@" 2>&1) || status=1
      printf '%s\n' "$out" | grep -E '^(FAIL|SUMMARY)' || true
    done
  fi
  kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  rm -rf "$data"
}
scan dps-legacy-security "" --expect-order option1 --expect-client-cert-request=optional --expect-groups secp256r1,secp384r1
scan dps-legacy-performance "" --expect-order option2 --expect-client-cert-request=optional
scan dps-legacy-security "--tls13" --expect-order option1 --require-tls13
scan dps-recommended "--no-client-cert-request" --expect-order recommended
exit $status
