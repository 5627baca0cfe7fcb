#!/usr/bin/env bash
# wsgate benchmark suite (issue #5): wsgate vs nginx, HAProxy and Caddy, plain and TLS;
# WebSockets over HTTP/2 (RFC 8441, targets *-h2: 100 streams per connection) vs HAProxy.
#
#   bench/run.sh            full run: 3 interleaved reps (~12 min), writes bench/RESULTS.md
#   bench/run.sh --quick    smoke run: 1 short rep, writes bench/RESULTS-quick.md
#   options: --reps N, --out FILE, --keep (leave the temp dir with configs and raw JSON),
#            --only "T1 T2 ..." (run only these targets, e.g. "nginx wsgate wsgate-raw"),
#            --tests "bulk rate" (run only these tests of each target), --bulk-size BYTES (16384)
#            --no-build (use the binaries as they are; WSGATE_BIN=path picks another wsgate binary)
#
# Not part of CI. Everything listens on 127.0.0.1; every process started here is stopped
# by PID on exit. Proxies run on CPU 1, load generator and echo backend on CPU 0.
set -euo pipefail

QUICK=0
REPS=3
KEEP=0
OUT=""
ONLY=""
ONLY_TESTS=""
BULK_SIZE=16384
NO_BUILD=0
CMDLINE="bench/run.sh${*:+ $*}"
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --reps) REPS="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        --keep) KEEP=1 ;;
        --only) ONLY="$2"; shift ;;
        --tests) ONLY_TESTS="$2"; shift ;;
        --bulk-size) BULK_SIZE="$2"; shift ;;
        --no-build) NO_BUILD=1 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
    shift
done

# The run happens in a temp dir: a relative --out means relative to where we were started.
case "$OUT" in /*|"") ;; *) OUT="$PWD/$OUT" ;; esac
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BENCH="$ROOT/bench"
if [ "$QUICK" = 1 ]; then
    [ -n "$OUT" ] || OUT="$BENCH/RESULTS-quick.md"
    [ "$REPS" = 3 ] && REPS=1
    RATE_ARGS=(--warmup 1 --duration 2)
    BULK_ARGS=(--warmup 0.5 --duration 1.5)
    HS_ARGS=(--warmup 0.5 --duration 1.5)
    IDLE_CONNS=1000
else
    [ -n "$OUT" ] || OUT="$BENCH/RESULTS.md"
    RATE_ARGS=(--warmup 2 --duration 5)
    BULK_ARGS=(--warmup 1 --duration 4)
    HS_ARGS=(--warmup 1 --duration 4)
    IDLE_CONNS=9500
fi
RATE=20000
CONNS=100

TMP="$(mktemp -d /tmp/wsgate-bench.XXXXXX)"
PIDS=()
PROXY_PIDS=""
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 0.3
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    if [ "$KEEP" = 1 ]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---------------------------------------------------------------- prerequisites
ulimit -n "$(ulimit -Hn)"
log "open files: $(ulimit -n)"
if ! command -v nginx >/dev/null || ! command -v haproxy >/dev/null || ! command -v caddy >/dev/null; then
    log "installing nginx haproxy caddy (Debian)"
    # Keep the packages' services from starting; we run each binary ourselves.
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx haproxy caddy >/dev/null
    [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
for b in taskset openssl python3; do command -v "$b" >/dev/null || { echo "need $b" >&2; exit 1; }; done

if [ "$NO_BUILD" = 0 ]; then
    log "building wsgate and loadgen (release)"
    (cd "$ROOT" && cargo build --release -q)
    (cd "$BENCH/loadgen" && cargo build --release -q)
fi
WSGATE="${WSGATE_BIN:-$ROOT/target/release/wsgate}"
LOADGEN="$BENCH/loadgen/target/release/loadgen"

# ---------------------------------------------------------------- certificates, secrets
cd "$TMP"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key 2>/dev/null
openssl req -x509 -new -key ca.key -subj /CN=wsgate-bench-CA -days 2 -out ca.crt \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out leaf.key 2>/dev/null
openssl req -new -key leaf.key -subj /CN=localhost -out leaf.csr 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' >leaf.ext
openssl x509 -req -in leaf.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
    -extfile leaf.ext -out leaf.crt 2>/dev/null
cat leaf.crt leaf.key >haproxy.pem

JWT_SECRET="bench-secret-$(openssl rand -hex 16)"
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
JWT_HEAD=$(printf '{"alg":"HS256","typ":"JWT"}' | b64url)
JWT_BODY=$(printf '{"sub":"bench","exp":%d}' $(( $(date +%s) + 7200 )) | b64url)
JWT_SIG=$(printf '%s.%s' "$JWT_HEAD" "$JWT_BODY" | openssl dgst -sha256 -hmac "$JWT_SECRET" -binary | b64url)
JWT="$JWT_HEAD.$JWT_BODY.$JWT_SIG"
printf 'benchpw\n' | "$WSGATE" hash-password bench >users.htpasswd

# ---------------------------------------------------------------- configs
ECHO=127.0.0.1:19000
mkdir -p nginx-tmp caddy-home
cat >nginx.conf <<EOF
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log warn;
events { worker_connections 19990; }
http {
    access_log $TMP/nginx-access.log;
    client_body_temp_path $TMP/nginx-tmp/body;
    proxy_temp_path $TMP/nginx-tmp/proxy;
    fastcgi_temp_path $TMP/nginx-tmp/fastcgi;
    uwsgi_temp_path $TMP/nginx-tmp/uwsgi;
    scgi_temp_path $TMP/nginx-tmp/scgi;
    server {
        listen 127.0.0.1:19101;
        listen 127.0.0.1:19102 ssl;
        ssl_certificate $TMP/leaf.crt;
        ssl_certificate_key $TMP/leaf.key;
        ssl_protocols TLSv1.3;
        ssl_session_tickets off;
        location / {
            proxy_pass http://$ECHO;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host \$host;
            proxy_set_header X-Real-IP \$remote_addr;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_read_timeout 3600s;
        }
    }
}
EOF
cat >haproxy.cfg <<EOF
global
    nbthread 1
    maxconn 9900
    ssl-default-bind-options ssl-min-ver TLSv1.3 no-tls-tickets
defaults
    mode http
    maxconn 9900
    timeout connect 5s
    timeout client 3600s
    timeout server 3600s
    timeout tunnel 3600s
frontend fe
    bind 127.0.0.1:19201
    # h2 for the haproxy-h2 target (RFC 8441); the HTTP/1.1 targets offer only http/1.1.
    bind 127.0.0.1:19202 ssl crt $TMP/haproxy.pem alpn h2,http/1.1
    option forwardfor
    default_backend be
backend be
    server echo $ECHO
EOF
cat >Caddyfile <<EOF
{
    admin off
    auto_https off
    storage file_system $TMP/caddy-home/data
}
http://127.0.0.1:19301 {
    bind 127.0.0.1
    reverse_proxy $ECHO
}
https://localhost:19302 {
    bind 127.0.0.1
    tls $TMP/leaf.crt $TMP/leaf.key {
        protocols tls1.3
    }
    reverse_proxy $ECHO
}
EOF
cat >wsgate.yaml <<EOF
listeners:
  - bind: "127.0.0.1:19401"
  - bind: "127.0.0.1:19402"
    tls:
      cert: $TMP/leaf.crt
      key: $TMP/leaf.key
admin:
  bind: "127.0.0.1:19409"
auth:
  users:
    type: basic
    htpasswd: $TMP/users.htpasswd
  jwt:
    type: jwt
    algorithms: [HS256]
    secret: "$JWT_SECRET"
routes:
  - path: /ws
    upstream: ws://$ECHO
  - path: /basic
    upstream: ws://$ECHO
    auth: [users]
  - path: /jwt
    upstream: ws://$ECHO
    auth: [jwt]
  - path: /raw
    upstream: ws://$ECHO
    track_frames: false
  # The same two without splice(2), to weigh it (targets wsgate-copy, wsgate-raw-copy).
  - path: /copy
    upstream: ws://$ECHO
    splice: false
  - path: /raw-copy
    upstream: ws://$ECHO
    track_frames: false
    splice: false
limits:
  handshake_rate_per_ip: 0
  max_connections_per_ip: 0
  max_connections: 20000
EOF
"$WSGATE" check --config wsgate.yaml >/dev/null
nginx -t -p "$TMP" -c "$TMP/nginx.conf" 2>/dev/null || nginx -t -p "$TMP" -c "$TMP/nginx.conf"
haproxy -c -q -f haproxy.cfg
caddy validate --config Caddyfile --adapter caddyfile >/dev/null 2>&1 || caddy validate --config Caddyfile --adapter caddyfile

# ---------------------------------------------------------------- processes
wait_port() { # port
    local i
    for i in $(seq 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "port $1 did not open" >&2; return 1
}
forget_pid() { local p keep=(); for p in "${PIDS[@]}"; do [ "$p" != "$1" ] && keep+=("$p"); done; PIDS=("${keep[@]}"); }
stop_pid() { # pid
    kill "$1" 2>/dev/null || true
    local i
    for i in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    forget_pid "$1"
}

taskset -c 0 "$LOADGEN" echo --bind "$ECHO" 2>"$TMP/echo.log" &
ECHO_PID=$!; PIDS+=("$ECHO_PID")
wait_port 19000

MAIN_PID=""
start_proxy() { # kind -> sets MAIN_PID, PROXY_PIDS (csv of all its processes)
    case "$1" in
        nginx)
            taskset -c 1 nginx -p "$TMP" -c "$TMP/nginx.conf" 2>>"$TMP/nginx-error.log" &
            MAIN_PID=$!; PIDS+=("$MAIN_PID"); wait_port 19101; wait_port 19102
            sleep 0.3
            local w; w=$(pgrep -P "$MAIN_PID" | head -1 || true)
            PROXY_PIDS="$MAIN_PID${w:+,$w}" ;;
        haproxy)
            taskset -c 1 haproxy -db -f "$TMP/haproxy.cfg" 2>>"$TMP/haproxy.log" &
            MAIN_PID=$!; PIDS+=("$MAIN_PID"); wait_port 19201; wait_port 19202
            PROXY_PIDS="$MAIN_PID" ;;
        caddy)
            HOME="$TMP/caddy-home" XDG_DATA_HOME="$TMP/caddy-home" XDG_CONFIG_HOME="$TMP/caddy-home" GOMAXPROCS=1 \
                taskset -c 1 caddy run --config "$TMP/Caddyfile" --adapter caddyfile 2>>"$TMP/caddy.log" &
            MAIN_PID=$!; PIDS+=("$MAIN_PID"); wait_port 19301; wait_port 19302
            PROXY_PIDS="$MAIN_PID" ;;
        wsgate)
            taskset -c 1 "$WSGATE" --config "$TMP/wsgate.yaml" 2>>"$TMP/wsgate.log" &
            MAIN_PID=$!; PIDS+=("$MAIN_PID"); wait_port 19401; wait_port 19402
            PROXY_PIDS="$MAIN_PID" ;;
        relay)
            # The floor: a minimal one-thread epoll relay, no HTTP (bench/loadgen/src/relay.rs).
            taskset -c 1 "$LOADGEN" relay --bind 127.0.0.1:19701 --to "$ECHO" 2>>"$TMP/relay.log" &
            MAIN_PID=$!; PIDS+=("$MAIN_PID"); wait_port 19701
            PROXY_PIDS="$MAIN_PID" ;;
        relay-uring)
            # The same floor on io_uring (multishot receives, provided buffers); exits
            # non-zero where io_uring is blocked, and then the port never opens.
            taskset -c 1 "$LOADGEN" relay --engine uring --bind 127.0.0.1:19702 --to "$ECHO" 2>>"$TMP/relay-uring.log" &
            MAIN_PID=$!; PIDS+=("$MAIN_PID"); wait_port 19702
            PROXY_PIDS="$MAIN_PID" ;;
        none) MAIN_PID=""; PROXY_PIDS="" ;;
    esac
    sleep 0.3
}
stop_proxy() { [ -n "$MAIN_PID" ] && stop_pid "$MAIN_PID"; MAIN_PID=""; PROXY_PIDS=""; sleep 0.5; }

RESULTS="$TMP/results.jsonl"
: >"$RESULTS"
lg() { # target rep mode args... ; appends the JSON line tagged with target and rep
    local target="$1" rep="$2" mode="$3"; shift 3
    local line
    if line=$(timeout 120 taskset -c 0 "$LOADGEN" "$mode" ${PROXY_PIDS:+--pid "$PROXY_PIDS"} --label "$target" "$@" 2>>"$TMP/loadgen.log"); then
        printf '{"target":"%s","rep":%d,"r":%s}\n' "$target" "$rep" "$line" >>"$RESULTS"
        log "  $target $mode: $(printf '%s' "$line" | cut -c1-220)"
    else
        log "  $target $mode: FAILED (see loadgen.log)"; tail -3 "$TMP/loadgen.log" >&2 || true
    fi
    sleep 0.3
}

# target -> proxy kind, url, extra loadgen args, which tests
declare -A KIND URL EXTRA TESTS
add() { KIND[$1]=$2; URL[$1]=$3; EXTRA[$1]="$4"; TESTS[$1]="$5"; }
CA=(--ca "$TMP/ca.crt")
add direct       none    "ws://127.0.0.1:19000/ws"   ""                       "rate bulk"
add relay        relay   "ws://127.0.0.1:19701/ws"   ""                       "idle rate bulk handshake"
# Not in the default order: issue 13 lever 4's measurement (bench/RESULTS.md, io_uring floor).
add relay-uring  relay-uring "ws://127.0.0.1:19702/ws" ""                     "rate bulk"
add nginx        nginx   "ws://127.0.0.1:19101/ws"   ""                       "idle rate bulk handshake"
add nginx-tls    nginx   "wss://localhost:19102/ws"  "tls"                    "idle rate bulk handshake"
add haproxy      haproxy "ws://127.0.0.1:19201/ws"   ""                       "idle rate bulk handshake"
add haproxy-tls  haproxy "wss://localhost:19202/ws"  "tls"                    "idle rate bulk handshake"
add caddy        caddy   "ws://127.0.0.1:19301/ws"   ""                       "idle rate bulk handshake"
add caddy-tls    caddy   "wss://localhost:19302/ws"  "tls"                    "idle rate bulk handshake"
add wsgate       wsgate  "ws://127.0.0.1:19401/ws"   ""                       "idle rate bulk handshake"
add wsgate-tls   wsgate  "wss://localhost:19402/ws"  "tls"                    "idle rate bulk handshake"
add wsgate-raw   wsgate  "ws://127.0.0.1:19401/raw"  ""                       "idle rate bulk"
add wsgate-tls-raw wsgate "wss://localhost:19402/raw" "tls"                    "idle rate bulk"
# Plain tunnels copying through user space (`splice: false`); not in the default order.
add wsgate-copy  wsgate  "ws://127.0.0.1:19401/copy"  ""                      "rate bulk"
add wsgate-raw-copy wsgate "ws://127.0.0.1:19401/raw-copy" ""                 "rate bulk"
add wsgate-basic wsgate  "ws://127.0.0.1:19401/basic" "basic"                 "handshake"
add wsgate-jwt   wsgate  "ws://127.0.0.1:19401/jwt"  "jwt"                    "handshake"
# WebSockets as extended CONNECT streams, 100 per HTTP/2 connection (nginx has no RFC 8441).
add wsgate-h2    wsgate  "wss://localhost:19402/ws"  "h2"                     "idle rate bulk"
add haproxy-h2   haproxy "wss://localhost:19202/ws"  "h2"                     "idle rate bulk"
ORDER=(direct relay nginx nginx-tls haproxy haproxy-tls caddy caddy-tls wsgate wsgate-tls wsgate-raw wsgate-tls-raw wsgate-basic wsgate-jwt wsgate-h2 haproxy-h2)
if [ -n "$ONLY" ]; then
    for t in $ONLY; do [ -n "${KIND[$t]:-}" ] || { echo "unknown target: $t" >&2; exit 2; }; done
    read -r -a ORDER <<<"$ONLY"
fi

COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || COMMIT="$COMMIT+dirty"
T0=$(date +%s)
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
for rep in $(seq "$REPS"); do
    log "rep $rep/$REPS"
    for t in "${ORDER[@]}"; do
        extra=()
        case "${EXTRA[$t]}" in
            tls) extra=("${CA[@]}") ;;
            h2) extra=("${CA[@]}" --h2 100) ;;
            basic) extra=(--basic bench:benchpw) ;;
            jwt) extra=(--token "$JWT") ;;
        esac
        # A fresh proxy per target, so the idle-RSS delta starts from a clean heap.
        start_proxy "${KIND[$t]}"
        for test in ${TESTS[$t]}; do
            [ -z "$ONLY_TESTS" ] || [[ " $ONLY_TESTS " == *" $test "* ]] || continue
            case "$test" in
                idle) lg "$t" "$rep" idle --url "${URL[$t]}" "${extra[@]}" --conns "$IDLE_CONNS" --settle 1 ;;
                rate) lg "$t" "$rep" rate --url "${URL[$t]}" "${extra[@]}" --conns "$CONNS" --rate "$RATE" "${RATE_ARGS[@]}" ;;
                bulk) lg "$t" "$rep" bulk --url "${URL[$t]}" "${extra[@]}" --conns 4 --size "$BULK_SIZE" "${BULK_ARGS[@]}" ;;
                handshake) lg "$t" "$rep" handshake --url "${URL[$t]}" "${extra[@]}" --concurrency 8 "${HS_ARGS[@]}" ;;
            esac
        done
        stop_proxy
    done
done
ELAPSED=$(( $(date +%s) - T0 ))
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"
log "measurements took ${ELAPSED}s"
cp "$RESULTS" "${OUT%.md}.jsonl"

# ---------------------------------------------------------------- report
python3 - "$RESULTS" "$OUT" "$CMDLINE" "$ELAPSED" "$REPS" "$IDLE_CONNS" "$COMMIT" "$LOAD_BEFORE / $LOAD_AFTER" \
    "$(nginx -v 2>&1 | sed 's/.*\///'), $(haproxy -v | head -1 | cut -d' ' -f3), $(caddy version | cut -d' ' -f1)" <<'PY'
import json, statistics, sys, platform, os, re, datetime, subprocess
res, out, cmd, elapsed, reps, idle_n, commit, load, versions = sys.argv[1:]
rows = [json.loads(l) for l in open(res) if l.strip()]
def vals(t, mode, key, sub=None):
    v = []
    for r in rows:
        if r["target"] == t and r["r"]["mode"] == mode:
            x = r["r"][key]
            if sub: x = x[sub]
            v.append(float(x))
    return v
def med(v): return statistics.median(v) if v else None
bulk_kib = next((r["r"]["size"] // 1024 for r in rows if r["r"]["mode"] == "bulk"), 16)
def fmt(v, nd=1):
    if not v: return "–"
    m = med(v)
    s = f"{m:,.{nd}f}"
    if len(v) > 1: s += f" ({min(v):,.{nd}f}–{max(v):,.{nd}f})"
    return s
targets = [t for t in ["direct","relay","relay-uring","nginx","nginx-tls","haproxy","haproxy-tls","caddy","caddy-tls","wsgate","wsgate-copy","wsgate-tls","wsgate-raw","wsgate-raw-copy","wsgate-tls-raw","wsgate-basic","wsgate-jwt","wsgate-h2","haproxy-h2"]
           if any(r["target"] == t for r in rows)]
base = med(vals("direct","rate","rtt_us","p50"))
metrics = [
 ("proxy CPU µs / 128 B echo @20k msg/s", lambda t: vals(t,"rate","proxy_cpu_us_per_msg") if t!="direct" else [], 2),
 ("achieved msg/s", lambda t: vals(t,"rate","achieved_rate"), 0),
 ("RTT p50 µs", lambda t: vals(t,"rate","rtt_us","p50"), 0),
 ("added RTT p50 µs vs direct", lambda t: [x-base for x in vals(t,"rate","rtt_us","p50")] if base is not None and t!="direct" else [], 0),
 ("RTT p99 µs", lambda t: vals(t,"rate","rtt_us","p99"), 0),
 ("RSS KiB / idle conn", lambda t: vals(t,"idle","rss_kib_per_conn"), 1),
 ("idle conns open", lambda t: vals(t,"idle","open"), 0),
 ("proxy CPU µs / handshake", lambda t: vals(t,"handshake","proxy_cpu_us_per_handshake"), 0),
 ("handshakes/s (8 loops)", lambda t: vals(t,"handshake","per_s"), 0),
 (f"bulk MB/s each way ({bulk_kib} KiB)", lambda t: vals(t,"bulk","mb_per_s_each_way"), 0),
 ("proxy CPU util in bulk", lambda t: vals(t,"bulk","proxy_cpu_util"), 2),
 ("proxy CPU µs / MB in bulk", lambda t: vals(t,"bulk","proxy_cpu_us_per_mb") if t!="direct" else [], 0),
]
L = []
L.append(f"Command: `{cmd}` — {reps} rep(s), targets interleaved rep by rep, {elapsed}s of measurements, "
         f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, "
         f"wsgate {commit}; nginx/HAProxy/Caddy {versions}; {idle_n} idle connections per proxy; "
         f"load average before / after: {load} (the machine is shared: other jobs compete for both vCPUs).")
L.append("")
L.append("Medians over the reps, (min–max) in brackets. Proxy on CPU 1 (`taskset -c 1`), loadgen + echo on CPU 0; "
         "CPU = utime+stime of all the proxy's processes/threads over the measured window.")
L.append("")
L.append("| figure | " + " | ".join(targets) + " |")
L.append("|---" * (len(targets)+1) + "|")
for name, f, nd in metrics:
    L.append(f"| {name} | " + " | ".join(fmt(f(t), nd) for t in targets) + " |")
L.append("")
def ratio(a, b, fa, fb=None):
    fb = fb or fa
    va, vb = med(fa(a)), med(fb(b))
    if va is None or vb in (None, 0): return None
    return va / vb
cpu = lambda t: vals(t,"rate","proxy_cpu_us_per_msg")
addrtt = lambda t: [x-base for x in vals(t,"rate","rtt_us","p50")] if base is not None else []
rss = lambda t: vals(t,"idle","rss_kib_per_conn")
hs = lambda t: vals(t,"handshake","proxy_cpu_us_per_handshake")
bulk = lambda t: vals(t,"bulk","mb_per_s_each_way")
goals = [
 ("CPU/msg wsgate ÷ nginx (plain)", ratio("wsgate","nginx",cpu), "≤ 0.7", lambda r: r <= 0.7),
 ("CPU/msg wsgate-tls ÷ nginx-tls", ratio("wsgate-tls","nginx-tls",cpu), "≤ 0.7", lambda r: r <= 0.7),
 ("RSS/idle conn wsgate ÷ haproxy", ratio("wsgate","haproxy",rss), "≤ 0.5", lambda r: r <= 0.5),
 ("RSS/idle conn wsgate-tls ÷ haproxy-tls", ratio("wsgate-tls","haproxy-tls",rss), "≤ 0.5", lambda r: r <= 0.5),
 ("CPU/handshake wsgate ÷ nginx", ratio("wsgate","nginx",hs), "≤ 0.7", lambda r: r <= 0.7),
 ("CPU/handshake wsgate-tls ÷ nginx-tls", ratio("wsgate-tls","nginx-tls",hs), "≤ 0.7", lambda r: r <= 0.7),
 ("bulk wsgate ÷ caddy", ratio("wsgate","caddy",bulk), "≥ 1.2", lambda r: r >= 1.2),
 ("bulk wsgate-tls ÷ caddy-tls", ratio("wsgate-tls","caddy-tls",bulk), "≥ 1.2", lambda r: r >= 1.2),
 ("added RTT p50 wsgate ÷ nginx", ratio("wsgate","nginx",addrtt), "≤ 0.7", lambda r: r <= 0.7),
 ("added RTT p50 wsgate-tls ÷ nginx-tls", ratio("wsgate-tls","nginx-tls",addrtt), "≤ 0.7", lambda r: r <= 0.7),
 # Frame tracking (on by default: wsgate, wsgate-tls) against the same gateway with
 # `track_frames: false` (wsgate-raw, wsgate-tls-raw).
 ("CPU/msg frames tracked ÷ untracked (plain)", ratio("wsgate","wsgate-raw",cpu), "≤ 1.10", lambda r: r <= 1.10),
 ("CPU/msg frames tracked ÷ untracked (TLS)", ratio("wsgate-tls","wsgate-tls-raw",cpu), "≤ 1.10", lambda r: r <= 1.10),
]
def diff_bytes(a, b):
    va, vb = med(rss(a)), med(rss(b))
    return None if va is None or vb is None else (va - vb) * 1024
for name, a, b in (("plain", "wsgate", "wsgate-raw"), ("TLS", "wsgate-tls", "wsgate-tls-raw")):
    d = diff_bytes(a, b)
    goals.append((f"RSS/idle conn tracked − untracked ({name}), bytes", d, "≤ 64", lambda r: r <= 64))
L.append("| goal (ratio of medians, same run) | value | target | met |")
L.append("|---|---|---|---|")
for name, r, tgt, ok in goals:
    val = '–' if r is None else (f'{r:+.0f}' if 'bytes' in name else f'{r:.2f}')
    L.append(f"| {name} | {val} | {tgt} | {'–' if r is None else ('yes' if ok(r) else '**no**')} |")
w, b_, j = med(hs("wsgate")), med(hs("wsgate-basic")), med(hs("wsgate-jwt"))
for name, x in (("JWT", j), ("Basic (warm cache)", b_)):
    if w is not None and x is not None:
        d = x - w
        L.append(f"| CPU/handshake added by {name} (µs) | {d:+.0f} | < 10 | {'yes' if d < 10 else '**no**'} |")
L.append("")
L.append("Other ratios: " + ", ".join(
    f"{a}÷{b} {m}: {r:.2f}" for a, b, m, f in [
        ("wsgate","haproxy","CPU/msg",cpu), ("wsgate-tls","haproxy-tls","CPU/msg",cpu),
        ("wsgate","nginx","RSS/conn",rss), ("wsgate-tls","nginx-tls","RSS/conn",rss),
        ("wsgate","haproxy","CPU/handshake",hs), ("wsgate-tls","haproxy-tls","CPU/handshake",hs),
        ("wsgate","haproxy","bulk",bulk), ("wsgate-tls","haproxy-tls","bulk",bulk),
        # HTTP/2 beside HTTP/1.1 over TLS, and beside HAProxy's RFC 8441.
        ("wsgate-h2","wsgate-tls","CPU/msg",cpu), ("wsgate-h2","wsgate-tls","bulk",bulk),
        ("wsgate-h2","wsgate-tls","RSS/conn",rss), ("wsgate-h2","haproxy-h2","CPU/msg",cpu),
        ("wsgate-h2","haproxy-h2","bulk",bulk), ("wsgate-h2","haproxy-h2","RSS/conn",rss)]
    for r in [ratio(a,b,f)] if r is not None) + ".")
gen = "\n".join(L)
begin, end = "<!-- BEGIN GENERATED by bench/run.sh -->", "<!-- END GENERATED -->"
block = f"{begin}\n{gen}\n{end}"
if os.path.exists(out) and begin in open(out).read():
    old = open(out).read()
    new = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda m: block, old, flags=re.S)
else:
    new = "# wsgate benchmark results (issue #5)\n\n" + block + "\n"
open(out, "w").write(new)
print(gen)
PY
log "wrote $OUT"
