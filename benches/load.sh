#!/usr/bin/env bash
# Side-by-side load benchmark: wasp vs HAProxy vs nginx on the reference lab 2 routing.
#
#   benches/load.sh                  # defaults: DURATION=10 ROUNDS=3, about 3 minutes + build
#   QUICK=1 benches/load.sh          # smoke run: DURATION=2 ROUNDS=1, about 20 s + build
#   DURATION=30 ROUNDS=5 benches/load.sh
#
# Environment:
#   DURATION     seconds per wrk run (default 10)
#   ROUNDS       interleaved rounds (default 3); the table shows the median over rounds
#   CONNECTIONS  wrk connections (default 50); THREADS wrk threads (default 2)
#   PROXIES      which proxies to run, in round order (default "wasp haproxy nginx wasp+log");
#                also wasp+plugin: wasp with lab 2's routing taken by the path-router Wasm
#                plugin (plugins/examples/path-router), e.g. PROXIES="wasp wasp+plugin";
#                wasp+slice: wasp with `[global] sched_slice = SCHED_SLICE` (default
#                "100us"), e.g. PROXIES="wasp wasp+slice haproxy"; wasp+pin: wasp with
#                `[global] cpu_affinity = "auto"` (each worker on a CPU of its own: what
#                wasp's default is here, with 2 workers on 2 CPUs); and wasp+nopin: wasp with
#                `cpu_affinity = "none"` (workers left to the scheduler)
#   QUICK=1      DURATION=2 ROUNDS=1
#   OUT_DIR      if set, generated configs, logs and raw wrk outputs are copied there
#   ROUTING_CHECK  strict (default): stop if a proxy misroutes a lab 2 path before the load;
#                warn: report it, mark the proxy with '!' in the table, and measure it anyway
#   SCRAPE=1     the control-plane cost check: PROXIES defaults to "wasp wasp+scrape", where
#                wasp+scrape is wasp with its [admin] listener on and a scraper fetching
#                /metrics every 100 ms for the whole wrk run (the scrape count is reported)
#   WASP_BASE_BIN  path to another wasp binary (e.g. a build of main); adds it as proxy
#                "wasp-base" when PROXIES names it, for before/after comparisons (with TCP=1
#                it is always measured, in each round after wasp)
#   TCP=1        the TCP-mode benchmark instead (see "TCP mode" below): wasp and HAProxy in
#                `mode tcp` in front of the same nginx backends; throughput of a BIG_MB file
#                (default 1024) over one connection and over STREAMS (default 4) at once, and
#                new connections per second (wrk with `Connection: close`, -c CONNECTIONS)
#   SERVER_CLOSE=1  the nginx backends close every connection after one response
#                (`keepalive_requests 1`), so that each request through a proxy needs a new
#                connection to a server: the cost of server connects
#   CLIENT_CLOSE=1  wrk's requests ask for `Connection: close`, so that every request comes on
#                a new client connection: the cost of accepting and serving new connections
#   IDLE=1       the idle-connection benchmark instead (see "Idle connections" below): the
#                memory each of wasp and HAProxy holds per idle connection, HTTP keep-alive
#                and TCP mode, for IDLE_CONNS (default 2000) connections
#   WASP_BIN     use this wasp binary instead of building one
#   PGO=1        benchmark the profile-guided build instead of the plain release build: runs
#                benches/pgo.sh first (about 20 minutes on 2 cores), which trains with this script's
#                QUICK runs; with WASP_BASE_BIN=target/release/wasp and wasp-base in PROXIES
#                the plain build runs alongside
#   FORWARDFOR   which forwarding headers the proxies add: "lab" (default) runs lab 2's configs
#                as they are: wasp adds X-Forwarded-For/-Proto/-Host (its default), HAProxy and
#                nginx add none (theirs); "same": HAProxy and nginx add the same three headers
#                (HAProxy: option forwardfor + http-request set-header), so every proxy does the
#                same header work; "off": wasp with forwardfor = false, no proxy adds any
#   TLS=1        the TLS benchmark instead: wasp and HAProxy terminating TLS with the same
#                certificate (ECDSA P-256, made with openssl) in front of the same nginx
#                backends, measured three ways per round: HTTPS keep-alive (wrk, lab 2 paths),
#                new TLS handshakes (wrk with "Connection: close": one request per
#                connection), and HTTP/2 over TLS (h2load -c CONNECTIONS -m 10); installs
#                nghttp2-client (h2load) and openssl when missing
#
# What it does: installs wrk, haproxy, nginx, curl and python3 with apt-get when missing (Debian,
# root), builds wasp with `cargo build --release`, starts four nginx backends (node1..node4, one
# nginx process, four server blocks) on free loopback ports, then wasp, wasp with its access log
# on (`wasp+log`, stdout to /dev/null), HAProxy and nginx as proxies, all with lab 2's routing:
# /item* -> items (node1, node2), /basket* -> baskets (node3, node4), anything else ->
# webservers (node1..node3), round-robin, keep-alive to the backends, no active health checks
# (nginx OSS has none, so none of the three runs them). Each round runs wrk against every proxy
# in turn, plus once straight at node1 (`direct`). Everything lives in a temp dir that is
# removed on exit; every process the script starts is stopped on exit, Ctrl-C or failure.
#
# Runtime per round is (number of proxies + 1) x DURATION plus a second or so of pauses, so the
# default (5 runs x 10 s x 3 rounds) is about 2.8 minutes after the build.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [[ ${QUICK:-0} == 1 ]]; then
    DURATION=${DURATION:-2}
    ROUNDS=${ROUNDS:-1}
fi
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-2}
if [[ ${SCRAPE:-0} == 1 ]]; then
    PROXIES=${PROXIES:-"wasp wasp+scrape"}
fi
PROXIES=${PROXIES:-"wasp haproxy nginx wasp+log"}
WASP_BASE_BIN=${WASP_BASE_BIN:-}
OUT_DIR=${OUT_DIR:-}
ROUTING_CHECK=${ROUTING_CHECK:-strict}
FORWARDFOR=${FORWARDFOR:-lab}
SCHED_SLICE=${SCHED_SLICE:-100us}
# SERVER_CLOSE=1: the backends close every connection after one response.
if [[ ${SERVER_CLOSE:-0} == 1 ]]; then BACKEND_REQUESTS=1; else BACKEND_REQUESTS=1000000; fi

[[ $DURATION =~ ^[1-9][0-9]*$ ]] || { echo "load.sh: DURATION must be a positive integer" >&2; exit 2; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "load.sh: ROUNDS must be a positive integer" >&2; exit 2; }
[[ $ROUTING_CHECK == strict || $ROUTING_CHECK == warn ]] ||
    { echo "load.sh: ROUTING_CHECK must be strict or warn" >&2; exit 2; }
[[ $FORWARDFOR == lab || $FORWARDFOR == same || $FORWARDFOR == off ]] ||
    { echo "load.sh: FORWARDFOR must be lab, same or off" >&2; exit 2; }
for p in $PROXIES; do
    case $p in
        wasp | wasp+log | wasp+scrape | wasp+plugin | wasp+slice | wasp+pin | wasp+nopin | haproxy | nginx) ;;
        wasp-base) [[ -x $WASP_BASE_BIN ]] || { echo "load.sh: wasp-base needs WASP_BASE_BIN=PATH to a wasp binary" >&2; exit 2; } ;;
        *) echo "load.sh: unknown proxy '$p' in PROXIES (wasp, wasp+log, wasp+scrape, wasp+plugin, wasp+slice, wasp+pin, wasp+nopin, wasp-base, haproxy, nginx)" >&2; exit 2 ;;
    esac
done

log() { printf '[load] %s\n' "$*" >&2; }
die() { printf 'load.sh: error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# Tools

ensure_tools() {
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    command -v haproxy >/dev/null || missing+=(haproxy)
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
    command -v curl >/dev/null || missing+=(curl)
    command -v python3 >/dev/null || missing+=(python3)
    command -v ps >/dev/null || missing+=(procps)
    if [[ ${TLS:-0} == 1 ]]; then
        command -v h2load >/dev/null || missing+=(nghttp2-client)
        command -v openssl >/dev/null || missing+=(openssl)
    fi
    if ((${#missing[@]} > 0)); then
        [[ $EUID -eq 0 ]] || die "missing ${missing[*]}; run as root or install them first"
        log "installing ${missing[*]} with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    # Debian keeps the daemons in /usr/sbin, which a non-login root shell may lack.
    PATH=$PATH:/usr/sbin:/sbin
    command -v cargo >/dev/null || die "cargo not found (install Rust to build wasp)"
}

# ---------------------------------------------------------------------------------------------
# Processes and cleanup

TMP=""
PIDS=()    # every long-running process this script started

alive() {
    local state
    [[ -r /proc/$1/stat ]] || return 1
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

children_of() { ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' ' || true; }

stop_pid() {
    local pid=$1 kids i
    alive "$pid" || { wait "$pid" 2>/dev/null || true; return 0; }
    kids=$(children_of "$pid")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        log "pid $pid ignored SIGTERM for 5 s, killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    for k in $kids; do
        if alive "$k"; then kill -KILL "$k" 2>/dev/null || true; fi
    done
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${PIDS[@]}"; do
        stop_pid "$pid"
    done
    if [[ -n $TMP && -d $TMP ]]; then
        if [[ -n $OUT_DIR ]]; then
            if mkdir -p "$OUT_DIR"; then cp -r "$TMP"/. "$OUT_DIR"/ 2>/dev/null || true; fi
            log "configs, logs and raw wrk output copied to $OUT_DIR"
        fi
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "failed (line $LINENO): $BASH_COMMAND"' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

# N free TCP ports on 127.0.0.1, held open together so they are distinct.
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# Wait until URL answers 2xx, or fail after 15 s; PID must stay alive meanwhile.
wait_http() {
    local name=$1 pid=$2 url=$3 logf=$4 i
    for ((i = 0; i < 150; i++)); do
        if ! alive "$pid"; then
            log "$name exited during startup; its output:"
            sed 's/^/    /' "$logf" >&2 || true
            die "$name did not start"
        fi
        curl -kfsS -o /dev/null --max-time 1 "$url" 2>/dev/null && return 0
        sleep 0.1
    done
    log "$name did not answer $url within 15 s; its output:"
    sed 's/^/    /' "$logf" >&2 || true
    die "$name did not become ready"
}

# Sum over PID and its direct children (nginx workers) of what the awk program PROG prints
# for /proc/PID/FILE.
proc_sum() {
    local pid=$1 file=$2 prog=$3 total=0 p v
    for p in "$pid" $(children_of "$pid"); do
        v=$(awk "$prog" "/proc/$p/$file" 2>/dev/null || true)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# Resident memory in KiB of PID plus its direct children.
rss_kib() { proc_sum "$1" status '/^VmRSS:/ {print $2}'; }

# ---------------------------------------------------------------------------------------------
# Configs

write_backends_conf() {
    local f=$TMP/backends/nginx.conf i
    mkdir -p "$TMP/backends"
    {
        cat <<EOF
worker_processes 1;
pid $TMP/backends/nginx.pid;
error_log $TMP/backends/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    default_type text/plain;
    keepalive_requests $BACKEND_REQUESTS;
    keepalive_timeout 75s;
    sendfile on;
    client_body_temp_path $TMP/backends/client_body;
    proxy_temp_path $TMP/backends/proxy;
    fastcgi_temp_path $TMP/backends/fastcgi;
    uwsgi_temp_path $TMP/backends/uwsgi;
    scgi_temp_path $TMP/backends/scgi;
EOF
        for i in 1 2 3 4; do
            printf '    server { listen 127.0.0.1:%s; location / { return 200 "node%s\\n"; } location = /big.bin { root %s; } }\n' \
                "${NODE_PORT[$i]}" "$i" "$TMP/backends/www"
        done
        echo "}"
    } >"$f"
}

write_wasp_conf() {
    local f=$1 port=$2 access_log=$3 admin_port=${4:-} plugin=${5:-} slice=${6:-} pin=${7:-}
    cat >"$f" <<EOF
# lab 2 routing, generated by benches/load.sh
[global]
workers = 2
access_log = $access_log
$([[ -n $slice ]] && printf 'sched_slice = "%s"\n' "$slice")
$([[ -n $pin ]] && printf 'cpu_affinity = "%s"\n' "$pin")
$([[ -n $admin_port ]] && printf '\n[admin]\nbind = "127.0.0.1:%s"\n' "$admin_port")

[defaults]
mode = "http"
timeout = { client = "10s", connect = "5s", server = "10s", http_request = "10s" }

[frontend.myfrontend]
bind = ["127.0.0.1:$port"]
default_backend = "webservers"
acl = { is_item = "path_beg /item", is_basket = "path_beg /basket" }
use_backend = [
  { backend = "items",   if = "is_item" },
  { backend = "baskets", if = "is_basket" },
]

[backend.webservers]
balance = "roundrobin"
servers = [
  { name = "s1", addr = "127.0.0.1:${NODE_PORT[1]}" },
  { name = "s2", addr = "127.0.0.1:${NODE_PORT[2]}" },
  { name = "s3", addr = "127.0.0.1:${NODE_PORT[3]}" },
]

[backend.items]
balance = "roundrobin"
servers = [
  { name = "s1", addr = "127.0.0.1:${NODE_PORT[1]}" },
  { name = "s2", addr = "127.0.0.1:${NODE_PORT[2]}" },
]

[backend.baskets]
balance = "roundrobin"
servers = [
  { name = "s3", addr = "127.0.0.1:${NODE_PORT[3]}" },
  { name = "s4", addr = "127.0.0.1:${NODE_PORT[4]}" },
]
EOF
    if [[ $FORWARDFOR == off ]]; then
        sed -i 's/^default_backend = "webservers"$/default_backend = "webservers"\nforwardfor = false/' "$f"
    fi
    if [[ -n $plugin ]]; then
        # The same routing taken by a plugin: its table, then (defer) the default backend.
        sed -i 's/^default_backend = "webservers"$/default_backend = "webservers"\nrouter = "paths"/' "$f"
        cat >>"$f" <<EOF

[plugin.paths]
path = "$plugin"
config = { routes = "/item=items,/basket=baskets" }
EOF
    fi
}

write_haproxy_conf() {
    local f=$1 port=$2
    cat >"$f" <<EOF
# lab 2 routing, generated by benches/load.sh; no log target, so HAProxy logs nothing
global
    nbthread 2
    maxconn 4096
    pidfile $TMP/haproxy/haproxy.pid

defaults
    mode http
    option http-keep-alive
    http-reuse safe
    timeout client 10s
    timeout connect 5s
    timeout server 10s
    timeout http-request 10s

frontend myfrontend
    bind 127.0.0.1:$port
    default_backend webservers
    acl is_item path_beg /item
    acl is_basket path_beg /basket
    use_backend items if is_item
    use_backend baskets if is_basket

backend webservers
    balance roundrobin
    server s1 127.0.0.1:${NODE_PORT[1]}
    server s2 127.0.0.1:${NODE_PORT[2]}
    server s3 127.0.0.1:${NODE_PORT[3]}

backend items
    balance roundrobin
    server s1 127.0.0.1:${NODE_PORT[1]}
    server s2 127.0.0.1:${NODE_PORT[2]}

backend baskets
    balance roundrobin
    server s3 127.0.0.1:${NODE_PORT[3]}
    server s4 127.0.0.1:${NODE_PORT[4]}
EOF
    if [[ $FORWARDFOR == same ]]; then
        # The three headers wasp adds by default, so both proxies do the same header work.
        sed -i "s|^    default_backend webservers\$|    default_backend webservers\n    option forwardfor\n    http-request set-header X-Forwarded-Proto ${3:-http}\n    http-request set-header X-Forwarded-Host %[req.hdr(host)]|" "$f"
        grep -q "option forwardfor" "$f" || die "could not add forwardfor to the HAProxy config"
    fi
}

write_nginx_proxy_conf() {
    local f=$1 port=$2 d
    d=$(dirname "$f")
    cat >"$f" <<EOF
# lab 2 routing, generated by benches/load.sh
worker_processes 2;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;   # as HAProxy: do not close client connections every 1000 requests
    keepalive_timeout 10s;        # HAProxy's http-keep-alive defaults to timeout http-request
    client_header_timeout 10s;
    client_body_timeout 10s;
    send_timeout 10s;
    client_body_temp_path $d/client_body;
    proxy_temp_path $d/proxy;
    fastcgi_temp_path $d/fastcgi;
    uwsgi_temp_path $d/uwsgi;
    scgi_temp_path $d/scgi;

    upstream webservers {
        server 127.0.0.1:${NODE_PORT[1]};
        server 127.0.0.1:${NODE_PORT[2]};
        server 127.0.0.1:${NODE_PORT[3]};
        keepalive 64;
        keepalive_requests 1000000;
    }
    upstream items {
        server 127.0.0.1:${NODE_PORT[1]};
        server 127.0.0.1:${NODE_PORT[2]};
        keepalive 64;
        keepalive_requests 1000000;
    }
    upstream baskets {
        server 127.0.0.1:${NODE_PORT[3]};
        server 127.0.0.1:${NODE_PORT[4]};
        keepalive 64;
        keepalive_requests 1000000;
    }

    server {
        listen 127.0.0.1:$port;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
$([[ $FORWARDFOR == same ]] && printf '        proxy_set_header X-Forwarded-For $remote_addr;\n        proxy_set_header X-Forwarded-Proto $scheme;\n        proxy_set_header X-Forwarded-Host $http_host;\n')
        proxy_connect_timeout 5s;
        proxy_read_timeout 10s;
        proxy_send_timeout 10s;
        location /item   { proxy_pass http://items; }
        location /basket { proxy_pass http://baskets; }
        location /       { proxy_pass http://webservers; }
    }
}
EOF
}

write_wrk_script() {
    local headers=nil
    # CLIENT_CLOSE=1: every request asks for the connection's close, so wrk opens a new one
    # for the next.
    [[ ${CLIENT_CLOSE:-0} == 1 ]] && headers='{ ["Connection"] = "close" }'
    cat >"$TMP/mix.lua" <<EOF
-- Rotate over lab 2's three routes so every request path is exercised in equal shares.
local paths = { "/item/1", "/basket/1", "/" }
local headers = $headers
local i = 0
request = function()
    i = i % #paths + 1
    return wrk.format(nil, paths[i], headers)
end
EOF
}

# ---------------------------------------------------------------------------------------------
# Starting things

declare -A NODE_PORT=()
declare -A PORT=()      # proxy name -> listening port
declare -A PID_OF=()    # proxy name -> pid
declare -A LOG_OF=()    # proxy name -> its log file
declare -A RSS_IDLE=()  # proxy name -> KiB

start_bg() {
    # start_bg NAME LOGFILE CMD... : start CMD in the background, remember its pid. setsid keeps
    # a terminal's Ctrl-C away from the daemons (nginx would act on it), so only cleanup stops
    # them; it execs in place here, so $! is the daemon's own pid.
    local name=$1 logf=$2
    shift 2
    setsid "$@" >"$logf" 2>&1 </dev/null &
    local pid=$!
    PIDS+=("$pid")
    PID_OF[$name]=$pid
    LOG_OF[$name]=$logf
}

start_backends() {
    write_backends_conf
    mkdir -p "$TMP/backends"
    start_bg backends "$TMP/backends/stdout.log" \
        nginx -p "$TMP/backends" -e "$TMP/backends/error.log" -c "$TMP/backends/nginx.conf" -g 'daemon off;'
    local i
    for i in 1 2 3 4; do
        wait_http "backend node$i" "${PID_OF[backends]}" "http://127.0.0.1:${NODE_PORT[$i]}/" "$TMP/backends/error.log"
        [[ $(curl -fsS "http://127.0.0.1:${NODE_PORT[$i]}/") == "node$i" ]] || die "backend node$i answers wrongly"
    done
}

start_proxy() {
    local name=$1 port=${PORT[$1]} d=$TMP/$1
    mkdir -p "$d"
    case $name in
        wasp | wasp+log | wasp+scrape | wasp+plugin | wasp+slice | wasp+pin | wasp+nopin | wasp-base)
            local access_log=false admin_port="" plugin="" slice="" pin="" bin=$WASP_BIN
            [[ $name == wasp+log ]] && access_log=true
            [[ $name == wasp+scrape ]] && admin_port=$ADMIN_PORT
            [[ $name == wasp+plugin ]] && plugin=$ROOT/plugins/target/wasm32-wasip2/release/path_router.wasm
            [[ $name == wasp+slice ]] && slice=$SCHED_SLICE
            [[ $name == wasp+pin ]] && pin=auto
            [[ $name == wasp+nopin ]] && pin=none
            [[ $name == wasp-base ]] && bin=$WASP_BASE_BIN
            write_wasp_conf "$d/wasp.toml" "$port" "$access_log" "$admin_port" "$plugin" "$slice" "$pin"
            if [[ $name == wasp+log ]]; then
                # The access log goes to stdout; /dev/null keeps the terminal out of the measurement.
                setsid "$WASP_BIN" run -c "$d/wasp.toml" >/dev/null 2>"$d/stderr.log" </dev/null &
                PIDS+=("$!")
                PID_OF[$name]=$!
                LOG_OF[$name]=$d/stderr.log
            else
                start_bg "$name" "$d/output.log" "$bin" run -c "$d/wasp.toml"
            fi
            ;;
        haproxy)
            write_haproxy_conf "$d/haproxy.cfg" "$port"
            haproxy -c -q -f "$d/haproxy.cfg" || die "haproxy rejected $d/haproxy.cfg"
            start_bg "$name" "$d/output.log" haproxy -db -f "$d/haproxy.cfg"
            ;;
        nginx)
            write_nginx_proxy_conf "$d/nginx.conf" "$port"
            start_bg "$name" "$d/output.log" \
                nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf" -g 'daemon off;'
            ;;
    esac
    wait_http "$name" "${PID_OF[$name]}" "http://127.0.0.1:$port/" "${LOG_OF[$name]}"
}

# Check lab 2 routing through a proxy: each route must answer only from its backend's nodes.
# A misroute stops the script (ROUTING_CHECK=strict), or with ROUTING_CHECK=warn is reported,
# marked in the table, and the proxy is measured anyway.
declare -A MISROUTED=()
check_routing() {
    local name=$1 port=${PORT[$1]} path allowed i body seen bad
    for path in /item/1 /basket/1 /; do
        case $path in
            /item/1) allowed="node1 node2" ;;
            /basket/1) allowed="node3 node4" ;;
            /) allowed="node1 node2 node3" ;;
        esac
        seen=""
        bad=""
        for ((i = 0; i < 6; i++)); do
            body=$(curl -fsS --max-time 2 "http://127.0.0.1:$port$path") ||
                die "$name: GET $path failed"
            [[ " $allowed " == *" $body "* ]] || bad=$body
            seen+="$body "
        done
        log "$name: GET $path x6 -> $seen"
        if [[ -n $bad ]]; then
            local msg="$name: GET $path answered '$bad', expected one of: $allowed"
            [[ $ROUTING_CHECK == warn ]] || die "$msg (ROUTING_CHECK=warn measures it anyway)"
            log "WARNING: $msg; measuring it anyway (ROUTING_CHECK=warn)"
            MISROUTED[$name]=1
        fi
    done
}

# ---------------------------------------------------------------------------------------------
# Running and parsing wrk

# Latency string from wrk (e.g. 812.00us, 1.23ms, 2.01s) -> milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000
        else if (u == "m") n *= 60000; else if (u == "h") n *= 3600000
        printf "%.3f", n }'
}

# Prints: rps p50_ms p99_ms non2xx socket_errors
parse_wrk() {
    local f=$1 rps p50 p99 non2xx sockerr
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$f")
    p50=$(awk '$1 == "50%" {print $2}' "$f")
    p99=$(awk '$1 == "99%" {print $2}' "$f")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$f")
    sockerr=$(awk '/Socket errors:/ {gsub(/,/, ""); print $4 + $6 + $8 + $10}' "$f")
    [[ -n $rps && -n $p50 && -n $p99 ]] || { sed 's/^/    /' "$f" >&2; die "could not parse wrk output $f"; }
    echo "$rps $(to_ms "$p50") $(to_ms "$p99") ${non2xx:-0} ${sockerr:-0}"
}

declare -A RESULTS=()   # name -> lines "rps p50 p99 non2xx sockerr"

run_wrk() {
    local name=$1 round=$2 url=$3 out=$TMP/wrk/$1.round$2.txt
    mkdir -p "$TMP/wrk"
    local scraper=""
    if [[ $name == wasp+scrape ]]; then
        # Poll /metrics every 100 ms while wrk runs, on one keep-alive connection (as Prometheus
        # does; a curl process per scrape would cost this shared machine more than wasp's side).
        # Prometheus runs on another machine; here the scraper shares the 2 CPUs with wrk and
        # the proxy, so it runs at the lowest priority (SCRAPER_NICE, default 19): what is
        # measured is wasp's side of a scrape, not the scraper's CPU.
        nice -n "${SCRAPER_NICE:-19}" python3 - "$ADMIN_PORT" "$out.scrapes" <<'PY' &
import http.client, sys, time
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=2)
n = 0
try:
    while True:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        resp.read()
        n += resp.status == 200
        with open(sys.argv[2], "w") as f:
            f.write(f"{n}\n")
        time.sleep(0.1)
except KeyboardInterrupt:
    pass
PY
        scraper=$!
    fi
    # timeout bounds a stuck run; wrk itself stops after DURATION.
    if ! timeout --foreground --signal=INT --kill-after=5 $((DURATION + 30)) \
        wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$TMP/mix.lua" "$url" >"$out" 2>&1; then
        sed 's/^/    /' "$out" >&2
        die "wrk against $name failed"
    fi
    if [[ -n $scraper ]]; then
        kill "$scraper" 2>/dev/null || true
        wait "$scraper" 2>/dev/null || true
        log "round $round wasp+scrape: $(cat "$out.scrapes" 2>/dev/null || echo 0) scrapes of /metrics during the run"
    fi
    if [[ $name != direct ]] && ! alive "${PID_OF[$name]}"; then
        log "$name died during the run; its output:"
        sed 's/^/    /' "${LOG_OF[$name]}" >&2 || true
        die "$name died under load"
    fi
    local r
    r=$(parse_wrk "$out")
    RESULTS[$name]+="$r"$'\n'
    log "round $round $(printf '%-9s' "$name") req/s, p50 ms, p99 ms, non-2xx, socket errors: $r"
    grep -E 'Socket errors|Non-2xx' "$out" | sed "s/^ */[load]   $name: /" >&2 || true
}

# Round by round, A's req/s over B's (both ran in every round, minutes apart at most): the
# ratios, their median, and in how many rounds A served at least as many requests as B.
paired() {
    local a=$1 b=$2 ratios
    ratios=$(paste -d' ' <(awk 'NF {print $1, $3}' <<<"${RESULTS[$a]}") <(awk 'NF {print $1, $3}' <<<"${RESULTS[$b]}") |
        awk '{printf "%.4f %d %d\n", $1 / $3, ($1 >= $3), ($2 <= $4)}')
    printf '%-9s / %-9s round by round: req/s%s; median x%.2f, ahead in %d of %d; p99 as low or lower in %d\n' \
        "$a" "$b" "$(awk '{printf " x%.2f", $1}' <<<"$ratios")" "$(median "$ratios" 1)" \
        "$(awk '{s += $2} END {print s}' <<<"$ratios")" "$(grep -c . <<<"$ratios")" \
        "$(awk '{s += $3} END {print s}' <<<"$ratios")"
}

# Median of column COL (1-based) of the lines in $1.
median() {
    printf '%s' "$1" | awk -v c="$2" 'NF {print $c}' | sort -g | awk '
        { v[NR] = $1 }
        END { if (NR == 0) { print "-"; exit }
              if (NR % 2) m = v[(NR + 1) / 2]; else m = (v[NR / 2] + v[NR / 2 + 1]) / 2
              print m }'
}

# ---------------------------------------------------------------------------------------------
# TCP mode (TCP=1)
#
# wasp and HAProxy relay whole connections (`mode tcp`, round-robin over node1..node4, no
# checks) to the same nginx backends. Measured per round, in turn for wasp, haproxy and direct
# (no proxy): one BIG_MB download over one connection (curl, MB/s), STREAMS such downloads at
# once (aggregate MB/s), and wrk -c CONNECTIONS with `Connection: close`, so that every request
# is a new connection through the proxy (requests/s = connections/s). The proxy's CPU time over
# the transfers is reported too (MiB per CPU-second): on a shared machine it says more than MB/s.

write_wasp_tcp_conf() {
    cat >"$1" <<EOF
# TCP mode, generated by benches/load.sh
[global]
workers = 2
access_log = false

[defaults]
mode = "tcp"
timeout = { client = "30s", connect = "5s", server = "30s" }

[frontend.tcp_in]
bind = ["127.0.0.1:$2"]
default_backend = "nodes"

[backend.nodes]
balance = "roundrobin"
servers = [
  { name = "s1", addr = "127.0.0.1:${NODE_PORT[1]}" },
  { name = "s2", addr = "127.0.0.1:${NODE_PORT[2]}" },
  { name = "s3", addr = "127.0.0.1:${NODE_PORT[3]}" },
  { name = "s4", addr = "127.0.0.1:${NODE_PORT[4]}" },
]
EOF
}

write_haproxy_tcp_conf() {
    cat >"$1" <<EOF
# TCP mode, generated by benches/load.sh; no log target, so HAProxy logs nothing
global
    nbthread 2
    maxconn 4096
    pidfile $TMP/haproxy-tcp/haproxy.pid
defaults
    mode tcp
    timeout client 30s
    timeout connect 5s
    timeout server 30s
frontend tcp_in
    bind 127.0.0.1:$2
    default_backend nodes
backend nodes
    balance roundrobin
    server s1 127.0.0.1:${NODE_PORT[1]}
    server s2 127.0.0.1:${NODE_PORT[2]}
    server s3 127.0.0.1:${NODE_PORT[3]}
    server s4 127.0.0.1:${NODE_PORT[4]}
EOF
}

# CPU time (user + system) of PID and its children so far, in clock ticks.
cpu_ticks() { proc_sum "$1" stat '{print $14 + $15}'; }

# Prints the aggregate MB/s (10^6 bytes) of N parallel downloads of /big.bin from PORT.
download_mbs() {
    local port=$1 n=$2 i start end bytes=0 out
    start=$(date +%s.%N)
    for ((i = 0; i < n; i++)); do
        curl -fsS -o /dev/null -w '%{size_download}\n' --max-time 300 \
            "http://127.0.0.1:$port/big.bin" >"$TMP/tcp/dl.$i" &
    done
    wait
    end=$(date +%s.%N)
    for ((i = 0; i < n; i++)); do
        out=$(cat "$TMP/tcp/dl.$i")
        [[ $out == "$((BIG_MB * 1048576))" ]] || die "download through port $port got $out bytes"
        bytes=$((bytes + out))
    done
    awk -v b="$bytes" -v s="$start" -v e="$end" 'BEGIN { printf "%.0f", b / 1e6 / (e - s) }'
}

declare -A TCP_RESULTS=()   # name -> lines "MB/s-1 MB/s-STREAMS conn/s MiB-per-cpu-s"

run_tcp_round() {
    local name=$1 round=$2 port=$3 pid=${4:-} t0=0 t1 one many conns mbcpu out
    [[ -n $pid ]] && t0=$(cpu_ticks "$pid")
    one=$(download_mbs "$port" 1)
    many=$(download_mbs "$port" "$STREAMS")
    mbcpu="-"
    if [[ -n $pid ]]; then
        t1=$(cpu_ticks "$pid")
        mbcpu=$(awk -v mb="$((BIG_MB * (1 + STREAMS)))" -v t="$((t1 - t0))" -v hz="$(getconf CLK_TCK)" \
            'BEGIN { printf "%.0f", (t > 0 ? mb / (t / hz) : 0) }')
    fi
    out=$TMP/tcp/wrk.$name.round$round.txt
    timeout --foreground --signal=INT --kill-after=5 $((DURATION + 30)) \
        wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" -H 'Connection: close' \
        "http://127.0.0.1:$port/" >"$out" 2>&1 || { sed 's/^/    /' "$out" >&2; die "wrk against $name failed"; }
    conns=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    [[ -n $conns ]] || { sed 's/^/    /' "$out" >&2; die "could not parse $out"; }
    grep -E 'Socket errors|Non-2xx' "$out" | sed "s/^ */[load]   $name: /" >&2 || true
    if [[ -n $pid ]] && ! alive "$pid"; then die "$name died under load"; fi
    TCP_RESULTS[$name]+="$one $many $conns $mbcpu"$'\n'
    log "round $round $(printf '%-8s' "$name") MB/s 1 stream, MB/s $STREAMS streams, conn/s, MiB per CPU-s: $one $many $conns $mbcpu"
}

run_tcp_bench() {
    BIG_MB=${BIG_MB:-1024}
    STREAMS=${STREAMS:-4}
    [[ $BIG_MB =~ ^[1-9][0-9]*$ ]] || die "BIG_MB must be a positive integer"
    [[ $STREAMS =~ ^[1-9][0-9]*$ ]] || die "STREAMS must be a positive integer"
    mkdir -p "$TMP/backends/www" "$TMP/tcp" "$TMP/wasp-tcp" "$TMP/haproxy-tcp"
    # A sparse file: nginx sends it with sendfile(2), so the backend costs little CPU.
    truncate -s "${BIG_MB}M" "$TMP/backends/www/big.bin"
    local ports i
    read -r -a ports <<<"$(free_ports 7)"
    for i in 1 2 3 4; do NODE_PORT[$i]=${ports[$((i - 1))]}; done
    local wasp_port=${ports[4]} haproxy_port=${ports[5]} base_port=${ports[6]}
    # WASP_BASE_BIN: another wasp binary, measured in the same rounds as "wasp-base".
    local names=(wasp haproxy direct)
    [[ -n ${WASP_BASE_BIN:-} ]] && names=(wasp wasp-base haproxy direct)

    echo "== wasp load benchmark: TCP mode =="
    echo "date        $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "cpus        $(nproc) ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo))"
    echo "kernel      $(uname -sr)"
    echo "load avg    $(cut -d' ' -f1-3 /proc/loadavg) (at start; other work on the machine skews results)"
    echo "wasp        $("$WASP_BIN" --version 2>/dev/null | awk '{print $2}') ($(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown), $BUILD_KIND), workers = 2, mode tcp"
    echo "haproxy     $(haproxy -v | awk 'NR == 1 {print $3}'), nbthread 2, mode tcp"
    echo "backends    nginx, 1 worker, node1..node4; /big.bin = $BIG_MB MiB (sendfile)"
    echo "transfers   curl, 1 stream and $STREAMS streams of $BIG_MB MiB; conn/s: wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s, Connection: close"
    [[ -n ${WASP_BASE_BIN:-} ]] && echo "wasp-base   $WASP_BASE_BIN, workers = 2, mode tcp"
    echo "rounds      $ROUNDS, order per round: ${names[*]}"
    echo "note        proxies, backends, curl and wrk all share these CPUs"
    echo

    start_backends
    write_wasp_tcp_conf "$TMP/wasp-tcp/wasp.toml" "$wasp_port"
    start_bg wasp-tcp "$TMP/wasp-tcp/output.log" "$WASP_BIN" run -c "$TMP/wasp-tcp/wasp.toml"
    wait_http wasp-tcp "${PID_OF[wasp-tcp]}" "http://127.0.0.1:$wasp_port/" "${LOG_OF[wasp-tcp]}"
    if [[ -n ${WASP_BASE_BIN:-} ]]; then
        mkdir -p "$TMP/wasp-base-tcp"
        write_wasp_tcp_conf "$TMP/wasp-base-tcp/wasp.toml" "$base_port"
        start_bg wasp-base-tcp "$TMP/wasp-base-tcp/output.log" "$WASP_BASE_BIN" run -c "$TMP/wasp-base-tcp/wasp.toml"
        wait_http wasp-base-tcp "${PID_OF[wasp-base-tcp]}" "http://127.0.0.1:$base_port/" "${LOG_OF[wasp-base-tcp]}"
    fi
    write_haproxy_tcp_conf "$TMP/haproxy-tcp/haproxy.cfg" "$haproxy_port"
    haproxy -c -q -f "$TMP/haproxy-tcp/haproxy.cfg" || die "haproxy rejected its tcp config"
    start_bg haproxy-tcp "$TMP/haproxy-tcp/output.log" haproxy -db -f "$TMP/haproxy-tcp/haproxy.cfg"
    wait_http haproxy-tcp "${PID_OF[haproxy-tcp]}" "http://127.0.0.1:$haproxy_port/" "${LOG_OF[haproxy-tcp]}"
    local rss_wasp rss_base=0 rss_haproxy round
    rss_wasp=$(rss_kib "${PID_OF[wasp-tcp]}")
    [[ -n ${WASP_BASE_BIN:-} ]] && rss_base=$(rss_kib "${PID_OF[wasp-base-tcp]}")
    rss_haproxy=$(rss_kib "${PID_OF[haproxy-tcp]}")

    # The first read of the fresh sparse file fills the page cache (measured here: 567 MB/s
    # straight from nginx, then about 2,000): one unmeasured download first, so that it does
    # not land on whichever proxy goes first.
    log "warm-up: $(download_mbs "${NODE_PORT[1]}" 1) MB/s straight from node1 (not counted)"

    for ((round = 1; round <= ROUNDS; round++)); do
        run_tcp_round wasp "$round" "$wasp_port" "${PID_OF[wasp-tcp]}"
        [[ -n ${WASP_BASE_BIN:-} ]] && run_tcp_round wasp-base "$round" "$base_port" "${PID_OF[wasp-base-tcp]}"
        run_tcp_round haproxy "$round" "$haproxy_port" "${PID_OF[haproxy-tcp]}"
        run_tcp_round direct "$round" "${NODE_PORT[1]}"
    done

    echo
    echo "== results (TCP mode): median over $ROUNDS round(s) =="
    echo "load avg at end: $(cut -d' ' -f1-3 /proc/loadavg)"
    printf '%-9s %10s %12s %10s %12s %10s %10s\n' proxy "MB/s 1x" "MB/s ${STREAMS}x" "conn/s" "MiB/CPU-s" "idle RSS" "RSS after"
    local p lines idle after
    for p in "${names[@]}"; do
        lines=${TCP_RESULTS[$p]}
        idle="-"
        after="-"
        case $p in
            wasp) idle="$((rss_wasp / 1024)) MiB" after="$(($(rss_kib "${PID_OF[wasp-tcp]}") / 1024)) MiB" ;;
            wasp-base) idle="$((rss_base / 1024)) MiB" after="$(($(rss_kib "${PID_OF[wasp-base-tcp]}") / 1024)) MiB" ;;
            haproxy) idle="$((rss_haproxy / 1024)) MiB" after="$(($(rss_kib "${PID_OF[haproxy-tcp]}") / 1024)) MiB" ;;
        esac
        printf '%-9s %10s %12s %10.0f %12s %10s %10s\n' "$p" "$(median "$lines" 1)" "$(median "$lines" 2)" \
            "$(median "$lines" 3)" "$(median "$lines" 4)" "$idle" "$after"
    done
    echo "(direct = straight at backend node1, no proxy; MiB/CPU-s = MiB relayed per second of the proxy's CPU time, user + system)"
}

# ---------------------------------------------------------------------------------------------
# Idle connections (IDLE=1)
#
# What an open connection that does nothing costs each proxy: IDLE_CONNS client connections,
# opened one after another, each sending one request (GET /item/1) and reading its answer, then
# left open; the proxy's VmRSS growth divided by their number. In HTTP mode (lab 2, keep-alive
# timeouts raised to 60 s) an idle connection is a keep-alive client waiting for its next
# request; in TCP mode (the TCP-mode configs) it is a session whose client and server both stay
# silent. 500 connections opened and closed first warm the allocators and the server pools.

# Prints "RSS-before RSS-after bytes-per-connection" for N idle connections to PORT of PID.
idle_rss() {
    python3 - "$1" "$2" "$3" <<'EOF'
import resource, socket, sys, time
pid, port, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
if hard < n + 600:
    sys.exit(f"open-file limit {hard} is too low for {n} connections")
def rss():
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
def open_idle(k):
    socks = []
    for _ in range(k):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET /item/1 HTTP/1.1\r\nHost: lab\r\n\r\n")
        got = b""
        while b"\r\n\r\nnode" not in got:
            chunk = s.recv(4096)
            if not chunk:
                sys.exit("the proxy closed a connection before answering")
            got += chunk
        socks.append(s)
    return socks
for s in open_idle(500):
    s.close()
time.sleep(1)
before = rss()
idle = open_idle(n)
time.sleep(1)
after = rss()
print(before, after, round((after - before) * 1024 / n))
EOF
}

run_idle_bench() {
    IDLE_CONNS=${IDLE_CONNS:-2000}
    [[ $IDLE_CONNS =~ ^[1-9][0-9]*$ ]] || die "IDLE_CONNS must be a positive integer"
    mkdir -p "$TMP/backends/www" "$TMP/idle" "$TMP/haproxy" "$TMP/haproxy-tcp"
    local ports i
    read -r -a ports <<<"$(free_ports 8)"
    for i in 1 2 3 4; do NODE_PORT[$i]=${ports[$((i - 1))]}; done

    echo "== wasp idle connection benchmark =="
    echo "date        $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "kernel      $(uname -sr)"
    echo "wasp        $("$WASP_BIN" --version 2>/dev/null | awk '{print $2}') ($(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown), $BUILD_KIND), workers = 2"
    echo "haproxy     $(haproxy -v | awk 'NR == 1 {print $3}'), nbthread 2"
    echo "connections $IDLE_CONNS idle per proxy and mode, after one request each"
    echo

    start_backends
    write_wasp_conf "$TMP/idle/wasp-http.toml" "${ports[4]}" false
    sed -i 's/client = "10s"/client = "60s"/; s/http_request = "10s"/http_request = "60s", http_keep_alive = "60s"/' \
        "$TMP/idle/wasp-http.toml"
    write_haproxy_conf "$TMP/idle/haproxy-http.cfg" "${ports[5]}"
    sed -i 's/timeout client 10s/timeout client 60s/; s/timeout http-request 10s/timeout http-request 60s/' \
        "$TMP/idle/haproxy-http.cfg"
    write_wasp_tcp_conf "$TMP/idle/wasp-tcp.toml" "${ports[6]}"
    write_haproxy_tcp_conf "$TMP/idle/haproxy-tcp.cfg" "${ports[7]}"

    printf '%-8s %-5s %12s %12s %16s\n' proxy mode "RSS before" "RSS after" "bytes per conn"
    local name proxy mode port pid out before after per
    for name in wasp-http haproxy-http wasp-tcp haproxy-tcp; do
        proxy=${name%-*} mode=${name#*-}
        case $name in
            wasp-http) port=${ports[4]} ;;
            haproxy-http) port=${ports[5]} ;;
            wasp-tcp) port=${ports[6]} ;;
            haproxy-tcp) port=${ports[7]} ;;
        esac
        case $proxy in
            wasp) start_bg "idle-$name" "$TMP/idle/$name.log" "$WASP_BIN" run -c "$TMP/idle/$name.toml" ;;
            haproxy)
                haproxy -c -q -f "$TMP/idle/$name.cfg" || die "haproxy rejected $TMP/idle/$name.cfg"
                start_bg "idle-$name" "$TMP/idle/$name.log" haproxy -db -f "$TMP/idle/$name.cfg"
                ;;
        esac
        pid=${PID_OF[idle-$name]}
        wait_http "$name" "$pid" "http://127.0.0.1:$port/" "${LOG_OF[idle-$name]}"
        out=$(idle_rss "$pid" "$port" "$IDLE_CONNS") || die "measuring $name failed"
        read -r before after per <<<"$out"
        printf '%-8s %-5s %8s KiB %8s KiB %16s\n' "$proxy" "$mode" "$before" "$after" "$per"
        stop_pid "$pid"
    done
}

# ---------------------------------------------------------------------------------------------

# TLS=1: HTTPS keep-alive, new handshakes and h2, wasp vs HAProxy

# Prints: rps failed_requests (from h2load's summary)
parse_h2load() {
    local f=$1 rps failed
    rps=$(awk '/^finished in/ {gsub(/,/, ""); print $4}' "$f")
    failed=$(awk '/^requests:/ {gsub(/,/, ""); print $10 + $12}' "$f")
    [[ -n $rps ]] || { sed 's/^/    /' "$f" >&2; die "could not parse h2load output $f"; }
    echo "$rps ${failed:-0}"
}

# One TLS measurement: tls_run PROXY TEST ROUND; TEST is keepalive, handshake or h2.
tls_run() {
    local name=$1 test=$2 round=$3 url=https://127.0.0.1:${PORT[$1]}/ out
    out=$TMP/wrk/$name.$test.round$round.txt
    mkdir -p "$TMP/wrk"
    local limit=$((DURATION + 30)) r
    case $test in
        keepalive)
            timeout --foreground --signal=INT --kill-after=5 $limit \
                wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$TMP/mix.lua" "$url" >"$out" 2>&1 ||
                { sed 's/^/    /' "$out" >&2; die "wrk against $name failed"; }
            r=$(parse_wrk "$out")
            ;;
        handshake)
            timeout --foreground --signal=INT --kill-after=5 $limit \
                wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -H "Connection: close" "$url" >"$out" 2>&1 ||
                { sed 's/^/    /' "$out" >&2; die "wrk against $name failed"; }
            r=$(parse_wrk "$out")
            ;;
        h2)
            timeout --foreground --signal=INT --kill-after=5 $limit \
                h2load -D "$DURATION" -c "$CONNECTIONS" -m 10 -t "$THREADS" "$url" >"$out" 2>&1 ||
                { sed 's/^/    /' "$out" >&2; die "h2load against $name failed"; }
            grep -qi "application protocol: h2" "$out" || die "$name did not negotiate h2 with h2load"
            r=$(parse_h2load "$out")
            ;;
    esac
    alive "${PID_OF[$name]}" || { sed 's/^/    /' "${LOG_OF[$name]}" >&2; die "$name died under load"; }
    RESULTS[$name.$test]+="$r"$'\n'
    log "round $round $(printf '%-12s %-9s' "$name" "$test") $r"
}

tls_main() {
    local d=$TMP/tls p test round
    mkdir -p "$d"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 90 \
        -subj "/CN=bench.test" -addext "subjectAltName=DNS:bench.test" \
        -keyout "$d/key.pem" -out "$d/cert.pem" 2>/dev/null || die "openssl could not make a certificate"
    cat "$d/cert.pem" "$d/key.pem" >"$d/combined.pem"
    PORT[wasp-tls]=${PORT[wasp]}
    PORT[haproxy-tls]=${PORT[haproxy]}
    mkdir -p "$TMP/wasp-tls" "$TMP/haproxy-tls"
    write_wasp_conf "$TMP/wasp-tls/wasp.toml" "${PORT[wasp-tls]}" false
    sed -i "s|^bind = .*|bind = [{ addr = \"127.0.0.1:${PORT[wasp-tls]}\", tls = { cert = \"$d/cert.pem\", key = \"$d/key.pem\" } }]|" \
        "$TMP/wasp-tls/wasp.toml"
    "$WASP_BIN" check -c "$TMP/wasp-tls/wasp.toml" || die "wasp check rejected the TLS config"
    start_bg wasp-tls "$TMP/wasp-tls/output.log" "$WASP_BIN" run -c "$TMP/wasp-tls/wasp.toml"
    write_haproxy_conf "$TMP/haproxy-tls/haproxy.cfg" "${PORT[haproxy-tls]}" https
    sed -i "s|^    bind 127.0.0.1:${PORT[haproxy-tls]}\$|    bind 127.0.0.1:${PORT[haproxy-tls]} ssl crt $d/combined.pem alpn h2,http/1.1|" \
        "$TMP/haproxy-tls/haproxy.cfg"
    grep -q " ssl crt " "$TMP/haproxy-tls/haproxy.cfg" || die "could not add ssl to the HAProxy config"
    haproxy -c -q -f "$TMP/haproxy-tls/haproxy.cfg" || die "haproxy rejected the TLS config"
    start_bg haproxy-tls "$TMP/haproxy-tls/output.log" haproxy -db -f "$TMP/haproxy-tls/haproxy.cfg"
    for p in wasp-tls haproxy-tls; do
        wait_http "$p" "${PID_OF[$p]}" "https://127.0.0.1:${PORT[$p]}/" "${LOG_OF[$p]}"
        [[ $(curl -kfsS "https://127.0.0.1:${PORT[$p]}/item/1") == node[12] ]] || die "$p misroutes /item/1"
        log "$p: $(curl -kso /dev/null -w '%{http_version} %{ssl_verify_result}' --http2 "https://127.0.0.1:${PORT[$p]}/") (http version, curl)"
    done
    echo "== wasp TLS benchmark: lab 2 routing behind TLS termination =="
    echo "date        $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "cpus        $(nproc) ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo))"
    echo "load avg    $(cut -d' ' -f1-3 /proc/loadavg) (at start)"
    echo "wasp        $("$WASP_BIN" --version 2>/dev/null | awk '{print $2}') ($(git -C "$ROOT" describe --always --dirty 2>/dev/null)), workers = 2, rustls (ring)"
    echo "haproxy     $(haproxy -v | awk 'NR == 1 {print $3}'), nbthread 2, $(haproxy -vv 2>/dev/null | sed -n 's/^Running on: *//p; s/^Running on OpenSSL version *: *//p' | head -1)"
    echo "certificate ECDSA P-256 self-signed, the same file for both"
    echo "load        wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s (keep-alive; handshake = Connection: close), h2load -c$CONNECTIONS -m10 -t$THREADS -D$DURATION"
    echo "note        proxies, nginx backends and the load generators all share these CPUs"
    for ((round = 1; round <= ROUNDS; round++)); do
        for test in keepalive handshake h2; do
            for p in wasp-tls haproxy-tls; do
                tls_run "$p" "$test" "$round"
                sleep 0.5
            done
        done
    done
    echo
    echo "== results: median over $ROUNDS round(s), $DURATION s each, $CONNECTIONS connections =="
    echo "load avg at end: $(cut -d' ' -f1-3 /proc/loadavg)"
    printf '%-12s %16s %16s %16s %10s\n' proxy "https req/s" "handshakes/s" "h2 req/s" "errors"
    declare -A MED=()
    for p in wasp-tls haproxy-tls; do
        local ka hs h2 errs
        ka=$(median "${RESULTS[$p.keepalive]}" 1)
        hs=$(median "${RESULTS[$p.handshake]}" 1)
        h2=$(median "${RESULTS[$p.h2]}" 1)
        errs=$(printf '%s%s' "${RESULTS[$p.keepalive]}" "${RESULTS[$p.handshake]}" | awk 'NF {s += $4 + $5} END {print s + 0}')
        errs=$((errs + $(printf '%s' "${RESULTS[$p.h2]}" | awk 'NF {s += $2} END {print s + 0}')))
        MED[$p]="$ka $hs $h2"
        printf '%-12s %16.0f %16.0f %16.0f %10s\n' "$p" "$ka" "$hs" "$h2" "$errs"
    done
    echo "(errors = non-2xx + socket errors of wrk, failed + errored requests of h2load, all rounds)"
    read -r wk wh w2 <<<"${MED[wasp-tls]}"
    read -r hk hh h2 <<<"${MED[haproxy-tls]}"
    awk -v a="$wk" -v b="$hk" -v c="$wh" -v d="$hh" -v e="$w2" -v f="$h2" 'BEGIN {
        printf "wasp / haproxy: https keep-alive x%.2f, handshakes x%.2f, h2 x%.2f\n", a / b, c / d, e / f }'
}

# ---------------------------------------------------------------------------------------------
# Main

ensure_tools

BUILD_KIND="release build"
if [[ -n ${WASP_BIN:-} ]]; then
    log "using $WASP_BIN (WASP_BIN set: no build)"
    BUILD_KIND="WASP_BIN=$WASP_BIN"
elif [[ ${PGO:-0} == 1 ]]; then
    log "building wasp with profile-guided optimization (benches/pgo.sh)"
    WASP_BIN=$("$ROOT/benches/pgo.sh")
    BUILD_KIND="profile-guided release build (benches/pgo.sh)"
else
    log "building wasp (cargo build --release)"
    (cd "$ROOT" && cargo build --release --quiet)
    WASP_BIN=$ROOT/target/release/wasp
fi
[[ -x $WASP_BIN ]] || die "$WASP_BIN missing after the build"
if [[ " $PROXIES " == *" wasp+plugin "* ]]; then
    log "building the plugins (plugins/: cargo build --release --target wasm32-wasip2)"
    (cd "$ROOT/plugins" && cargo build --release --quiet --target wasm32-wasip2)
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/wasp-load.XXXXXX")
chmod 755 "$TMP" # nginx workers run as nobody and must reach their temp paths
if [[ ${TCP:-0} == 1 ]]; then
    run_tcp_bench
    exit 0
fi
if [[ ${IDLE:-0} == 1 ]]; then
    run_idle_bench
    exit 0
fi
write_wrk_script

read -r -a ports <<<"$(free_ports $((4 + 11)))"
for i in 1 2 3 4; do NODE_PORT[$i]=${ports[$((i - 1))]}; done
PORT[wasp]=${ports[4]}
PORT[wasp+log]=${ports[5]}
PORT[haproxy]=${ports[6]}
PORT[nginx]=${ports[7]}
PORT[wasp+scrape]=${ports[8]}
PORT[wasp-base]=${ports[9]}
ADMIN_PORT=${ports[10]}
PORT[wasp+plugin]=${ports[11]}
PORT[wasp+slice]=${ports[12]}
PORT[wasp+pin]=${ports[13]}
PORT[wasp+nopin]=${ports[14]}

nginx_version=$(nginx -v 2>&1 | sed 's/^nginx version: //')
haproxy_version=$(haproxy -v | awk 'NR == 1 {print $3}')
wrk_version=$( (wrk -v 2>&1 || true) | awk 'NR == 1 {print $2}') # wrk -v exits 1
wasp_version=$("$WASP_BIN" --version 2>/dev/null | awk '{print $2}')
wasp_commit=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)
n_runs=$(($(wc -w <<<"$PROXIES") + 1))

echo "== wasp load benchmark: lab 2 routing =="
echo "date        $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "cpus        $(nproc) ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo))"
echo "memory      $(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
echo "kernel      $(uname -sr)"
echo "os          $(awk -F= '$1 == "PRETTY_NAME" {gsub(/"/, "", $2); print $2}' /etc/os-release 2>/dev/null)"
echo "load avg    $(cut -d' ' -f1-3 /proc/loadavg) (at start; other work on the machine skews results)"
echo "wasp        $wasp_version ($wasp_commit, $BUILD_KIND), workers = 2"
echo "haproxy     $haproxy_version, nbthread 2"
echo "nginx       $nginx_version, proxy: 2 workers, upstream keepalive 64; backends: 1 worker, 4 server blocks"
echo "wrk         $wrk_version, -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency, paths /item/1 /basket/1 / in rotation"
echo "rounds      $ROUNDS, order: $PROXIES direct, each round starting one further along (~$((ROUNDS * n_runs * DURATION)) s of load)"
echo "forwarding  FORWARDFOR=$FORWARDFOR: $(case $FORWARDFOR in lab) echo "wasp adds X-Forwarded-For/-Proto/-Host, HAProxy and nginx add none" ;; same) echo "every proxy adds X-Forwarded-For/-Proto/-Host" ;; off) echo "no proxy adds forwarding headers" ;; esac)"
echo "backends    node1..node4 on 127.0.0.1:${NODE_PORT[1]} ${NODE_PORT[2]} ${NODE_PORT[3]} ${NODE_PORT[4]}$([[ $BACKEND_REQUESTS == 1 ]] && echo ", closing every connection after one response (SERVER_CLOSE=1)")"
[[ ${CLIENT_CLOSE:-0} == 1 ]] && echo "clients     a new connection for every request (CLIENT_CLOSE=1: Connection: close)"
echo "note        proxies, backends and wrk all share these CPUs"
echo

start_backends
if [[ ${TLS:-0} == 1 ]]; then
    tls_main
    exit 0
fi
for p in $PROXIES; do
    start_proxy "$p"
    RSS_IDLE[$p]=$(rss_kib "${PID_OF[$p]}") # after the readiness probe, before any load
    check_routing "$p"
done

# Each round starts one place further along the order, so that no proxy always runs first
# (right after the backend was loaded straight) or last.
read -ra ORDER <<<"$PROXIES direct"
for ((round = 1; round <= ROUNDS; round++)); do
    for ((i = 0; i < ${#ORDER[@]}; i++)); do
        p=${ORDER[$(((i + round - 1) % ${#ORDER[@]}))]}
        if [[ $p == direct ]]; then
            run_wrk direct "$round" "http://127.0.0.1:${NODE_PORT[1]}/"
        else
            run_wrk "$p" "$round" "http://127.0.0.1:${PORT[$p]}/"
        fi
        sleep 0.5
    done
done

declare -A RSS_AFTER=()
for p in $PROXIES; do
    RSS_AFTER[$p]=$(rss_kib "${PID_OF[$p]}")
done

echo
echo "== results: median over $ROUNDS round(s), $DURATION s each, $CONNECTIONS connections =="
echo "load avg at end: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-10s %12s %9s %9s %9s %9s %10s %10s\n' \
    proxy "req/s" "p50 ms" "p99 ms" "non-2xx" "sock err" "idle RSS" "RSS after"
declare -A MED_RPS=() MED_P99=()
for p in $PROXIES direct; do
    lines=${RESULTS[$p]}
    MED_RPS[$p]=$(median "$lines" 1)
    MED_P99[$p]=$(median "$lines" 3)
    if [[ $p == direct ]]; then
        idle="-"
        after="-"
    else
        idle="$((RSS_IDLE[$p] / 1024)) MiB"
        after="$((RSS_AFTER[$p] / 1024)) MiB"
    fi
    label=$p
    [[ -n ${MISROUTED[$p]:-} ]] && label="$p!"
    printf '%-10s %12.0f %9.3f %9.3f %9s %9s %10s %10s\n' "$label" "${MED_RPS[$p]}" "$(median "$lines" 2)" \
        "${MED_P99[$p]}" "$(median "$lines" 4)" "$(median "$lines" 5)" "$idle" "$after"
done
echo "(direct = wrk straight at backend node1, no proxy; RSS = VmRSS of the process plus its children)"
if ((${#MISROUTED[@]} > 0)); then
    echo "! = failed the lab 2 routing check before the load (see the WARNING above): not like for like"
fi

if [[ -n ${MED_RPS[wasp+plugin]:-} && -n ${MED_RPS[wasp]:-} ]]; then
    echo
    awk -v r="${MED_RPS[wasp+plugin]}" -v n="${MED_RPS[wasp]}" \
        -v l="${MED_P99[wasp+plugin]}" -v nl="${MED_P99[wasp]}" 'BEGIN {
        printf "wasp+plugin / wasp: req/s x%.2f, p99 x%.2f\n", r / n, (nl > 0 ? l / nl : 0) }'
fi

if [[ -n ${MED_RPS[haproxy]:-} ]]; then
    echo
    for p in wasp wasp+log wasp+slice wasp+pin wasp+nopin wasp-base; do
        [[ -n ${MED_RPS[$p]:-} ]] || continue
        awk -v p="$p" -v r="${MED_RPS[$p]}" -v hr="${MED_RPS[haproxy]}" \
            -v l="${MED_P99[$p]}" -v hl="${MED_P99[haproxy]}" 'BEGIN {
            printf "%-9s / haproxy: req/s x%.2f, p99 x%.2f\n", p, r / hr, (hl > 0 ? l / hl : 0) }'
    done
    for p in wasp wasp+log wasp+slice wasp+pin wasp+nopin wasp-base; do
        if [[ -n ${MED_RPS[$p]:-} ]]; then paired "$p" haproxy; fi
    done
fi

# The control plane's cost: the same wasp with /metrics scraped every 100 ms, and (when given)
# the current wasp against another build.
for pair in "wasp+scrape wasp" "wasp+slice wasp" "wasp+pin wasp" "wasp wasp+nopin" "wasp wasp-base"; do
    read -r a b <<<"$pair"
    [[ -n ${MED_RPS[$a]:-} && -n ${MED_RPS[$b]:-} ]] || continue
    awk -v a="$a" -v b="$b" -v r="${MED_RPS[$a]}" -v br="${MED_RPS[$b]}" \
        -v l="${MED_P99[$a]}" -v bl="${MED_P99[$b]}" 'BEGIN {
        printf "%-11s / %-9s: req/s x%.3f, p99 x%.2f\n", a, b, r / br, (bl > 0 ? l / bl : 0) }'
done
if [[ -n ${MED_RPS[wasp+slice]:-} && -n ${MED_RPS[wasp]:-} ]]; then paired wasp+slice wasp; fi
if [[ -n ${MED_RPS[wasp+pin]:-} && -n ${MED_RPS[wasp]:-} ]]; then paired wasp+pin wasp; fi
if [[ -n ${MED_RPS[wasp+nopin]:-} && -n ${MED_RPS[wasp]:-} ]]; then paired wasp wasp+nopin; fi
if [[ -n ${MED_RPS[wasp-base]:-} && -n ${MED_RPS[wasp]:-} ]]; then paired wasp wasp-base; fi
