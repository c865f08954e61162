#!/usr/bin/env bash
# TLS scan: Debian's testssl.sh against wasp's TLS listener, failing on any finding rated worse
# than OK.
#
#   benches/testssl.sh            # builds wasp (release), scans, prints the findings
#   OUT_DIR=dir benches/testssl.sh  # keeps the JSON report and logs in dir
#   WASP_BIN=path benches/testssl.sh  # scans that binary instead of building one
#
# What it does: installs testssl.sh, openssl and python3 with apt-get when missing (Debian,
# root), builds wasp, makes a test CA and a certificate for "wasp.test" (ECDSA P-256, 90 days,
# with openssl), starts `wasp echo` as the backend and `wasp run` with one TLS bind on a free
# loopback port, and runs `testssl.sh --add-ca CA --ip 127.0.0.1 https://wasp.test:PORT` (the
# test CA is trusted and the name matches, so the chain of trust is judged like a real
# deployment's). Every finding of the JSON report with severity LOW, MEDIUM, HIGH, CRITICAL or
# WARN is listed, and the script exits 1 if there is any. The only finding ids ignored (listed
# with the reason in the output) are those that are not about wasp's TLS listener: revocation
# information and the DNS CAA record of the test certificate (a private CA and a name without
# DNS have neither), HTTP security headers such as HSTS (the application's response headers;
# the test backend sends none), and the scanner's own openssl engine warning.
# Everything it started is stopped on exit.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT_DIR=${OUT_DIR:-}
# Findings about the test certificate, not the TLS configuration: id -> why it is ignored.
declare -A IGNORED=(
    [cert_crlDistributionPoints]="the private test CA publishes no CRL"
    [cert_ocspURL]="the private test CA runs no OCSP responder"
    [cert_revocation]="the private test CA offers neither CRL nor OCSP"
    [DNS_CAArecord]="wasp.test has no DNS, so no CAA record"
    [HSTS]="an HTTP response header of the application (the test backend sends none), not of the TLS stack"
    [security_headers]="HTTP response headers of the application (the test backend sends none), not of the TLS stack"
    [engine_problem]="about the scanner's own openssl (no GOST engine), not the server"
)

log() { printf '[testssl] %s\n' "$*" >&2; }
die() { printf 'testssl.sh: error: %s\n' "$*" >&2; exit 1; }

missing=()
command -v testssl >/dev/null || [[ -x /usr/bin/testssl ]] || missing+=(testssl.sh)
command -v openssl >/dev/null || missing+=(openssl)
command -v python3 >/dev/null || missing+=(python3)
command -v curl >/dev/null || missing+=(curl)
if ((${#missing[@]} > 0)); then
    [[ $EUID -eq 0 ]] || die "missing ${missing[*]}; run as root or install them first"
    log "installing ${missing[*]} with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
TESTSSL=$(command -v testssl || echo /usr/bin/testssl)

if [[ -n ${WASP_BIN:-} ]]; then
    WASP=$WASP_BIN
else
    log "building wasp (cargo build --release)"
    (cd "$ROOT" && cargo build --release --quiet)
    WASP=$ROOT/target/release/wasp
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/wasp-testssl.XXXXXX")
PIDS=()
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n $OUT_DIR ]] && mkdir -p "$OUT_DIR"; then cp -r "$TMP"/. "$OUT_DIR"/ || true; fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

read -r BACKEND_PORT PORT < <(python3 -c '
import socket
a, b = socket.socket(), socket.socket()
a.bind(("127.0.0.1", 0)); b.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1])')

# A test CA and a certificate for wasp.test signed by it.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 90 \
    -subj "/CN=wasp testssl CA" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$TMP/ca.key" -out "$TMP/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=wasp.test" -keyout "$TMP/site.key" -out "$TMP/site.csr" 2>/dev/null
printf 'subjectAltName=DNS:wasp.test\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' >"$TMP/ext.cnf"
openssl x509 -req -in "$TMP/site.csr" -CA "$TMP/ca.pem" -CAkey "$TMP/ca.key" -CAcreateserial \
    -days 90 -extfile "$TMP/ext.cnf" -out "$TMP/site.pem" 2>/dev/null

cat >"$TMP/wasp.toml" <<EOF
[global]
workers = 2
access_log = false
[frontend.web]
bind = [{ addr = "127.0.0.1:$PORT", tls = { cert = "site.pem", key = "site.key" } }]
default_backend = "app"
[backend.app]
servers = [{ name = "echo", addr = "127.0.0.1:$BACKEND_PORT" }]
EOF
"$WASP" check -c "$TMP/wasp.toml"
"$WASP" echo --name echo --listen "127.0.0.1:$BACKEND_PORT" >"$TMP/echo.log" 2>&1 &
PIDS+=("$!")
"$WASP" run -c "$TMP/wasp.toml" >"$TMP/wasp.log" 2>&1 &
PIDS+=("$!")
for ((i = 0; i < 100; i++)); do
    curl -fsS -o /dev/null --max-time 1 --cacert "$TMP/ca.pem" --resolve "wasp.test:$PORT:127.0.0.1" \
        "https://wasp.test:$PORT/" 2>/dev/null && break
    sleep 0.1
done
curl -fsS -o /dev/null --cacert "$TMP/ca.pem" --resolve "wasp.test:$PORT:127.0.0.1" \
    "https://wasp.test:$PORT/" || { cat "$TMP/wasp.log" >&2; die "wasp did not serve https"; }

log "running $("$TESTSSL" --version 2>/dev/null | awk '/testssl.sh/ {print $0; exit}' | tr -s ' ') against wasp.test:$PORT"
"$TESTSSL" --quiet --color 0 --warnings batch --add-ca "$TMP/ca.pem" --ip 127.0.0.1 \
    --jsonfile "$TMP/report.json" "https://wasp.test:$PORT" >"$TMP/report.txt" 2>&1 || true
[[ -s $TMP/report.json ]] || { cat "$TMP/report.txt" >&2; die "testssl.sh wrote no report"; }

ignored=$(for k in "${!IGNORED[@]}"; do printf '%s\t%s\n' "$k" "${IGNORED[$k]}"; done)
IGNORED_TSV=$ignored python3 - "$TMP/report.json" <<'PY'
import json, os, sys
bad_levels = {"LOW", "MEDIUM", "HIGH", "CRITICAL", "WARN"}
ignored = dict(l.split("\t", 1) for l in os.environ["IGNORED_TSV"].splitlines() if l)
findings = json.load(open(sys.argv[1]))
counts = {}
bad = []
for f in findings:
    sev = f.get("severity", "")
    counts[sev] = counts.get(sev, 0) + 1
    if sev in bad_levels:
        bad.append(f)
for key in ("SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3"):
    for f in findings:
        if f["id"] == key:
            print(f"protocol {key:7} {f['finding']}")
for key in ("secure_renego", "secure_client_renego", "CRIME_TLS", "BREACH", "cipherlist_NULL",
            "cipherlist_aNULL", "cipherlist_EXPORT", "cipherlist_LOW", "cipherlist_3DES_IDEA",
            "cipherlist_AVERAGE", "cipherlist_STRONG", "FS", "HSTS"):
    for f in findings:
        if f["id"] == key:
            print(f"{key:22} {f['severity']:8} {f['finding']}")
print("severity counts:", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
failing = [f for f in bad if f["id"] not in ignored]
for f in bad:
    why = ignored.get(f["id"])
    tag = f"ignored ({why})" if why else "FINDING"
    print(f"{tag}: {f['id']} [{f['severity']}] {f['finding']}")
if failing:
    print(f"testssl: {len(failing)} finding(s) worse than OK")
    sys.exit(1)
print("testssl: no finding worse than OK" + (f" ({len(bad)} ignored, see above)" if bad else ""))
PY
