#!/usr/bin/env bash
# Syscall and allocation budget per plain WebSocket handshake and per echoed message,
# wsgate next to nginx and HAProxy (issue #13, lever 1). Counts, not timings: the numbers do
# not depend on how busy the machine is.
#
#   bench/budget.sh [--no-build] [--handshakes N] [--targets "relay nginx haproxy wsgate wsgate-raw wsgate-nolog"] [--out FILE]
#   (more targets: relay-uring; WSGATE_BIN=path picks another wsgate binary; --no-handshakes
#   counts only the messages; --rate N msg/s for them (5000); --no-allocs: syscalls only, no
#   uprobes, which would also slow other processes running the same binaries)
#
# Syscalls: `strace -c -f -p` attached to every process/thread of the proxy while the
# loadgen does N handshakes one at a time (plus one priming handshake, counted), or for a
# fixed window of a steady 128-byte echo at 5,000 msg/s over 100 connections.
# Allocations: uprobes (`perf stat -e probe_*`) on the proxy's allocator entry points: glibc's
# malloc/calloc/realloc/posix_memalign for nginx and HAProxy, mimalloc's mi_*_aligned for
# wsgate (its global allocator). Needs root, strace and perf with uprobes. Not part of CI.
set -euo pipefail

N=2000
NO_BUILD=0
NO_HS=0
RATE=5000
COUNTERS="strace perf"
TARGETS="relay nginx haproxy wsgate wsgate-raw wsgate-nolog"
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --handshakes) N="$2"; shift ;;
        --targets) TARGETS="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        --no-build) NO_BUILD=1 ;;
        --no-handshakes) NO_HS=1 ;;
        --rate) RATE="$2"; shift ;;
        --no-allocs) COUNTERS="strace" ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
    shift
done
case "$OUT" in /*|"") ;; *) OUT="$PWD/$OUT" ;; esac
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
for b in strace perf taskset nginx haproxy python3; do
    command -v "$b" >/dev/null || { echo "need $b" >&2; exit 1; }
done
if [ "$NO_BUILD" = 0 ]; then
    (cd "$ROOT" && cargo build --release -q --bin wsgate)
    (cd "$ROOT/bench/loadgen" && cargo build --release -q)
fi
WSGATE="${WSGATE_BIN:-$ROOT/target/release/wsgate}"
LOADGEN="$ROOT/bench/loadgen/target/release/loadgen"
LIBC="$(ldd "$(command -v nginx)" | awk '/libc.so/ {print $3}')"

TMP="$(mktemp -d /tmp/wsgate-budget.XXXXXX)"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 0.3
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    if [ "$COUNTERS" != strace ]; then
        perf probe -q -d 'probe_libc:*' 2>/dev/null || true
        perf probe -q -d 'probe_wsgate:*' 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
ulimit -n "$(ulimit -Hn)"

# Uprobes, re-made every run: the wsgate binary's offsets change with every build.
if [ "$COUNTERS" != strace ]; then
    perf probe -q -d 'probe_libc:*' 2>/dev/null || true
    perf probe -q -d 'probe_wsgate:*' 2>/dev/null || true
    for f in malloc calloc realloc posix_memalign free; do perf probe -q -x "$LIBC" "$f"; done
    for f in mi_malloc_aligned mi_zalloc_aligned mi_realloc_aligned mi_free; do
        perf probe -q -x "$WSGATE" "$f"
    done
fi
LIBC_EV="probe_libc:malloc,probe_libc:calloc,probe_libc:realloc,probe_libc:posix_memalign,probe_libc:free"
WSGATE_EV="probe_wsgate:mi_malloc_aligned,probe_wsgate:mi_zalloc_aligned,probe_wsgate:mi_realloc_aligned,probe_wsgate:mi_free"

ECHO=127.0.0.1:19000
cd "$TMP"
mkdir -p nginx-tmp
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
defaults
    mode http
    maxconn 9900
    timeout connect 5s
    timeout client 3600s
    timeout server 3600s
    timeout tunnel 3600s
frontend fe
    bind 127.0.0.1:19201
    option forwardfor
    default_backend be
backend be
    server echo $ECHO
EOF
cat >wsgate.yaml <<EOF
listeners:
  - bind: "127.0.0.1:19401"
admin:
  bind: "127.0.0.1:19409"
routes:
  - path: /ws
    upstream: ws://$ECHO
  - path: /raw
    upstream: ws://$ECHO
    track_frames: false
limits:
  handshake_rate_per_ip: 0
  max_connections_per_ip: 0
  max_connections: 20000
EOF
"$WSGATE" check --config wsgate.yaml >/dev/null

wait_port() {
    local i
    for i in $(seq 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "port $1 did not open" >&2; return 1
}
stop_pid() {
    kill "$1" 2>/dev/null || true
    local i
    for i in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

taskset -c 0 "$LOADGEN" echo --bind "$ECHO" 2>"$TMP/echo.log" &
PIDS+=("$!")
wait_port 19000

MAIN=""; WORKER=""; URL=""; EVENTS=""
start() { # target
    case "$1" in
        nginx)
            taskset -c 1 nginx -p "$TMP" -c "$TMP/nginx.conf" 2>>"$TMP/nginx-error.log" &
            MAIN=$!; wait_port 19101; sleep 0.3
            WORKER=$(pgrep -P "$MAIN" | head -1); URL="ws://127.0.0.1:19101/ws"; EVENTS="$LIBC_EV" ;;
        haproxy)
            taskset -c 1 haproxy -db -f "$TMP/haproxy.cfg" 2>>"$TMP/haproxy.log" &
            MAIN=$!; wait_port 19201; WORKER=$MAIN; URL="ws://127.0.0.1:19201/ws"; EVENTS="$LIBC_EV" ;;
        relay)
            taskset -c 1 "$LOADGEN" relay --bind 127.0.0.1:19701 --to "$ECHO" 2>>"$TMP/relay.log" &
            MAIN=$!; wait_port 19701; WORKER=$MAIN; URL="ws://127.0.0.1:19701/ws"; EVENTS="$LIBC_EV" ;;
        relay-uring)
            taskset -c 1 "$LOADGEN" relay --engine uring --bind 127.0.0.1:19702 --to "$ECHO" 2>>"$TMP/relay.log" &
            MAIN=$!; wait_port 19702; WORKER=$MAIN; URL="ws://127.0.0.1:19702/ws"; EVENTS="$LIBC_EV" ;;
        wsgate|wsgate-raw|wsgate-nolog)
            # wsgate-nolog: the access log off (RUST_LOG=warn), to price the log line.
            local level=info; [ "$1" = wsgate-nolog ] && level=warn
            RUST_LOG=$level taskset -c 1 "$WSGATE" --config "$TMP/wsgate.yaml" 2>>"$TMP/wsgate.log" &
            MAIN=$!; wait_port 19401; WORKER=$MAIN; EVENTS="$WSGATE_EV"
            if [ "$1" = wsgate-raw ]; then URL="ws://127.0.0.1:19401/raw"; else URL="ws://127.0.0.1:19401/ws"; fi ;;
    esac
    PIDS+=("$MAIN")
    sleep 0.3
}

# Runs "$@" (a loadgen command) with a counter attached to $WORKER; prints the loadgen's JSON.
# counter: strace | perf; window: seconds to count for (0 = the whole command).
counted() { # target kind counter window cmd...
    local target="$1" kind="$2" counter="$3" window="$4"; shift 4
    local out="$TMP/$target.$kind.$counter" cpid
    "$@" >"$out.json" 2>>"$TMP/loadgen.log" &
    local lpid=$!
    if [ "$window" != 0 ]; then sleep 2.5; fi
    case "$counter" in
        strace) strace -qq -c -f -p "$WORKER" -o "$out.txt" & cpid=$! ;;
        perf) perf stat -x, -e "$EVENTS" -p "$WORKER" -o "$out.txt" & cpid=$! ;;
    esac
    if [ "$window" != 0 ]; then
        sleep "$window"; kill -INT "$cpid"; wait "$cpid" 2>/dev/null || true; wait "$lpid"
    else
        wait "$lpid"; sleep 0.2; kill -INT "$cpid"; wait "$cpid" 2>/dev/null || true
    fi
}

WINDOW=2
for t in $TARGETS; do
    log "$t"
    start "$t"
    # Prime (allocator arenas, caches) outside the counted runs.
    taskset -c 0 "$LOADGEN" handshake --url "$URL" --concurrency 1 --warmup 0 --duration 1 --max 200 >/dev/null 2>&1
    for c in $COUNTERS; do
        if [ "$t" != wsgate-raw ] && [ "$NO_HS" = 0 ]; then
            # The attach itself must not be counted: start the loadgen once the counter runs.
            counted "$t" hs "$c" 0 bash -c "sleep 1; exec taskset -c 0 '$LOADGEN' handshake --url '$URL' --concurrency 1 --warmup 0 --duration 60 --max $N"
        fi
        counted "$t" msg "$c" "$WINDOW" taskset -c 0 "$LOADGEN" rate --url "$URL" --conns 100 --rate "$RATE" --warmup 1 --duration 6
    done
    stop_pid "$MAIN"
    sleep 0.5
done

python3 - "$TMP" "$TARGETS" "$N" "$WINDOW" "$RATE" "bench/budget.sh${*:+ $*}" >"$TMP/report.md" <<'PY'
import json, os, sys, re, collections, datetime
tmp, targets, n, window, rate, cmd = sys.argv[1:]
targets = targets.split(); window = float(window); rate = float(rate)
def strace(path):
    calls = {}
    for line in open(path):
        f = line.split()
        if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
            try: calls[f[-1]] = int(f[3])
            except ValueError: pass
    return calls
def perf(path):
    ev = {}
    for line in open(path):
        f = line.strip().split(",")
        if len(f) > 3 and f[0].replace(".", "").isdigit():
            ev[f[2].split(":")[-1]] = int(float(f[0]))
    return ev
def units(t, kind):
    if kind == "hs":
        j = json.load(open(f"{tmp}/{t}.hs.strace.json"))
        return j["handshakes"] + 1
    return rate * window
rows = {}
for t in targets:
    for kind in ("hs", "msg"):
        s = f"{tmp}/{t}.{kind}.strace.txt"
        if not os.path.exists(s): continue
        # Messages: the rate the loadgen achieved (below the target when the machine is busy).
        u_s = json.load(open(f"{tmp}/{t}.msg.strace.json"))["achieved_rate"] * window if kind == "msg" else json.load(open(f"{tmp}/{t}.{kind}.strace.json"))["handshakes"] + 1
        u_p = rate * window if kind == "msg" or not os.path.exists(f"{tmp}/{t}.{kind}.perf.json") else json.load(open(f"{tmp}/{t}.{kind}.perf.json"))["handshakes"] + 1
        sc = strace(s)
        p = f"{tmp}/{t}.{kind}.perf.txt"
        al = perf(p) if os.path.exists(p) else None
        if al is None:
            rows[(t, kind)] = (u_s, sc, 1, None, None)
            continue
        frees = sum(v for k, v in al.items() if "free" in k)
        allocs = sum(v for k, v in al.items() if "free" not in k)
        rows[(t, kind)] = (u_s, sc, u_p, allocs, frees)
print(f"Command: `{cmd}` ({datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}); "
      f"handshakes one at a time (concurrency 1, {n} + 1 priming); messages: 128 B echo at {rate:.0f} msg/s over "
      f"100 connections, counted for {window:.0f} s ({rate*window:.0f} messages, both directions through the proxy).")
print()
for kind, title in (("hs", "per plain handshake (connect, upgrade, close)"), ("msg", "per echoed message (client → upstream → client)")):
    ts = [t for t in targets if (t, kind) in rows]
    if not ts: continue
    print(f"#### Syscalls and allocations {title}")
    print()
    print("| | " + " | ".join(ts) + " |")
    print("|---" * (len(ts) + 1) + "|")
    total = {t: sum(rows[(t, kind)][1].values()) / rows[(t, kind)][0] for t in ts}
    print("| **syscalls** | " + " | ".join(f"**{total[t]:.1f}**" for t in ts) + " |")
    names = collections.Counter()
    for t in ts:
        for k, v in rows[(t, kind)][1].items(): names[k] += v / rows[(t, kind)][0]
    for name, _ in names.most_common():
        vals = [rows[(t, kind)][1].get(name, 0) / rows[(t, kind)][0] for t in ts]
        if max(vals) < 0.05: continue
        print(f"| {name} | " + " | ".join(f"{v:.2f}" if v else "–" for v in vals) + " |")
    if all(rows[(t, kind)][3] is not None for t in ts):
        print("| **allocations** | " + " | ".join(f"**{rows[(t, kind)][3] / rows[(t, kind)][2]:.1f}**" for t in ts) + " |")
        print("| frees | " + " | ".join(f"{rows[(t, kind)][4] / rows[(t, kind)][2]:.1f}" for t in ts) + " |")
    print()
PY
cat "$TMP/report.md"
if [ -n "$OUT" ]; then cat "$TMP/report.md" >>"$OUT"; fi
