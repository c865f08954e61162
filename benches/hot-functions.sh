#!/usr/bin/env bash
# Writes benches/hot-functions.txt: the functions of wasp's release binary that the load
# benchmark's workloads spend their time in, hottest first. build.rs hands the list to the
# linker for release builds (`--symbol-ordering-file`), which places those functions next to
# each other at the start of the code, instead of wherever they fall among the ~22 MB of the
# binary's code (wasmtime, cranelift, rustls, ...). Why, and what it changed: docs/benchmarks.md.
#
#   benches/hot-functions.sh     # about 5 minutes after the release build
#
# Environment:
#   TRAIN   which workloads are sampled, any of "http tls tcp" (default all three):
#           http = benches/load.sh QUICK=1 with PROXIES="wasp wasp+log" (HTTP/1.1 keep-alive on
#           lab 2's routing, with and without the access log); tls = load.sh TLS=1 QUICK=1
#           (HTTPS keep-alive, handshakes, h2); tcp = load.sh TCP=1 QUICK=1 (mode tcp)
#   OUT     where the list goes (default benches/hot-functions.txt)
#
# The names are the binary's own (mangled, with the hash the compiler gives each function),
# so the list holds for the Cargo.lock and toolchain it was made with: after upgrading either,
# run this again. A name the binary no longer has is skipped by the linker; a list that matches
# nothing leaves the plain layout. `benches/load.sh` prints how many of the names the binary
# it measures has.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-$ROOT/benches/hot-functions.txt}
TRAIN=${TRAIN:-"http tls tcp"}
for t in $TRAIN; do
    case $t in
        http | tls | tcp) ;;
        *) echo "hot-functions.sh: unknown workload '$t' in TRAIN (http, tls, tcp)" >&2; exit 2 ;;
    esac
done
[[ -n ${TRAIN// /} ]] || { echo "hot-functions.sh: TRAIN names no workload" >&2; exit 2; }

log() { printf '[hot] %s\n' "$*" >&2; }
die() { printf 'hot-functions.sh: error: %s\n' "$*" >&2; exit 1; }

if ! command -v perf >/dev/null; then
    [[ $(id -u) == 0 ]] || die "perf is missing (Debian package linux-perf); run as root to install it"
    log "installing linux-perf with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends linux-perf >/dev/null
fi

tmp=$(mktemp -d /tmp/wasp-hot.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

log "release build"
(cd "$ROOT" && cargo build --release --quiet)
bin=$ROOT/target/release/wasp

# Sampled system-wide (wasp is started by load.sh), at a fixed rate of CPU time; only the
# samples that fall in wasp's own code are kept below.
log "sampling: $TRAIN"
for t in $TRAIN; do
    case $t in
        http) set -- env QUICK=1 PROXIES="wasp wasp+log" ;;
        tls) set -- env QUICK=1 TLS=1 ;;
        tcp) set -- env QUICK=1 TCP=1 ;;
    esac
    perf record -a -e cpu-clock -F 1999 -o "$tmp/$t.data" -- \
        "$@" WASP_BIN="$bin" "$ROOT/benches/load.sh" >"$tmp/$t.log" 2>&1 || {
        sed 's/^/    /' "$tmp/$t.log" >&2
        die "workload '$t' failed"
    }
done

# Each workload's functions by samples, most first, in TRAIN's order: a function already
# listed for an earlier workload keeps its place. So the HTTP/1.1 path (the first, by
# default) lies in one stretch rather than interleaved with TLS's cryptography.
for t in $TRAIN; do
    perf report -i "$tmp/$t.data" --no-demangle --dsos wasp --sort sym --stdio -F sample,sym \
        2>/dev/null | awk '$2 == "[.]" { print $1, $3 }' | sort -k1,1nr -k2
done | awk '!seen[$2]++ { print $2 }' >"$tmp/order"
count=$(wc -l <"$tmp/order")
[[ $count -gt 0 ]] || die "no samples in wasp's code"

{
    echo "# wasp's hottest functions, hottest first: the order the release link places them in"
    echo "# (build.rs). Written by benches/hot-functions.sh (TRAIN=\"$TRAIN\"), for the Cargo.lock"
    echo "# and toolchain ($(rustc --version)) it was made with."
    cat "$tmp/order"
} >"$OUT"
log "$count functions written to $OUT"
