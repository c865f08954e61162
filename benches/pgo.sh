#!/usr/bin/env bash
# Profile-guided release build of wasp (PGO): build wasp instrumented, run it under the load
# benchmark's workloads to record which code is hot, then build it again with that profile.
# The result is the same program, laid out and inlined for the paths a proxy takes per request.
#
#   benches/pgo.sh          # writes target/pgo/use/release/wasp (about 20 minutes on 2 cores)
#   PGO=1 benches/load.sh   # builds it this way, then benchmarks it
#
# Environment:
#   PGO_DIR      where the builds, raw profiles and the merged profile go (default target/pgo)
#   TRAIN        which workloads train the profile, any of "http tls tcp" (default all three):
#                http = benches/load.sh QUICK=1 with PROXIES="wasp wasp+log wasp+plugin"
#                (HTTP/1.1 keep-alive on lab 2's routing, with the access log, with the Wasm
#                router); tls = load.sh TLS=1 QUICK=1 (HTTPS keep-alive, handshakes, h2);
#                tcp = load.sh TCP=1 QUICK=1 (mode tcp). A path no workload takes is built
#                as if cold: it still works, and may be slower than in a plain build.
#
# What it needs beyond load.sh's own tools: the llvm-tools component of the active toolchain
# (for llvm-profdata, which must match rustc's LLVM), added with rustup when missing.
# The plain `cargo build --release` is untouched: the PGO builds use their own target dirs.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGO_DIR=${PGO_DIR:-$ROOT/target/pgo}
TRAIN=${TRAIN:-"http tls tcp"}
for t in $TRAIN; do
    case $t in
        http | tls | tcp) ;;
        *) echo "pgo.sh: unknown workload '$t' in TRAIN (http, tls, tcp)" >&2; exit 2 ;;
    esac
done
[[ -n ${TRAIN// /} ]] || { echo "pgo.sh: TRAIN names no workload" >&2; exit 2; }

# The training runs take only the settings given below. `PGO=1 benches/load.sh` hands its whole
# environment down, so without this its ROUNDS, DURATION, PROXIES, TLS, OUT_DIR and the rest
# would decide how long and on what the profile is trained (ROUNDS=10 DURATION=10 made the
# training take 25 minutes instead of one).
unset BIG_MB CLIENT_CLOSE CONNECTIONS DURATION FORWARDFOR IDLE IDLE_CONNS OUT_DIR PGO PROXIES QUICK ROUNDS \
    ROUTING_CHECK SCHED_SLICE SCRAPE SCRAPER_NICE SERVER_CLOSE STREAMS TCP THREADS TLS WASP_BASE_BIN \
    WASP_BIN

log() { printf '[pgo] %s\n' "$*" >&2; }
die() { printf 'pgo.sh: error: %s\n' "$*" >&2; exit 1; }

# llvm-profdata of the toolchain that compiles wasp (a profile written by one LLVM version is
# not always readable by another).
host=$(rustc -vV | awk '$1 == "host:" {print $2}')
profdata=$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata
if [[ ! -x $profdata ]]; then
    log "adding the llvm-tools component (rustup component add llvm-tools)"
    rustup component add llvm-tools >&2 || die "could not add llvm-tools with rustup"
fi
[[ -x $profdata ]] || die "llvm-profdata not found at $profdata"

raw=$PGO_DIR/profraw
rm -rf "$raw"
mkdir -p "$raw"

log "1/4 instrumented build (target dir $PGO_DIR/gen)"
(cd "$ROOT" && RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$raw" \
    cargo build --release --quiet --target-dir "$PGO_DIR/gen")
gen=$PGO_DIR/gen/release/wasp
[[ -x $gen ]] || die "$gen missing after the instrumented build"

# Each wasp process writes its profile when it exits (load.sh stops it with SIGTERM, on which
# wasp drains and exits normally).
log "2/4 training: $TRAIN"
for t in $TRAIN; do
    case $t in
        http) WASP_BIN=$gen QUICK=1 PROXIES="wasp wasp+log wasp+plugin" "$ROOT/benches/load.sh" ;;
        tls) WASP_BIN=$gen QUICK=1 TLS=1 "$ROOT/benches/load.sh" ;;
        tcp) WASP_BIN=$gen QUICK=1 TCP=1 "$ROOT/benches/load.sh" ;;
    esac >"$PGO_DIR/train-$t.log" 2>&1 || {
        sed 's/^/    /' "$PGO_DIR/train-$t.log" >&2
        die "training run '$t' failed"
    }
done
compgen -G "$raw/*.profraw" >/dev/null || die "the training runs left no profile in $raw"

log "3/4 merging the profiles"
"$profdata" merge -o "$PGO_DIR/merged.profdata" "$raw"/*.profraw
# Named by its content: cargo rebuilds when RUSTFLAGS change, not when a file they name does,
# so a new profile gets a new name and the optimized build is redone with it.
profile=$PGO_DIR/wasp-$(sha256sum "$PGO_DIR/merged.profdata" | cut -c1-16).profdata
rm -f "$PGO_DIR"/wasp-*.profdata
mv "$PGO_DIR/merged.profdata" "$profile"

log "4/4 optimized build with the profile (target dir $PGO_DIR/use)"
(cd "$ROOT" && RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$profile" \
    cargo build --release --quiet --target-dir "$PGO_DIR/use")
[[ -x $PGO_DIR/use/release/wasp ]] || die "$PGO_DIR/use/release/wasp missing after the build"
echo "$PGO_DIR/use/release/wasp"
