#!/usr/bin/env bash
# Profiles wsgate under the fixed-rate load (128 B echoes over 100 connections, plain and TLS).
# perf with hardware counters when `perf stat -e instructions true` works, else
# valgrind --tool=callgrind (user space only, instrumented during the measured window),
# plus `strace -c` syscall counts (kernel side, which callgrind cannot see).
#   bench/profile.sh [OUTDIR]     (default: /tmp/wsgate-profile)
# Run bench/run.sh first (it builds wsgate and loadgen). Not part of CI.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-/tmp/wsgate-profile}"
mkdir -p "$OUT"
WSGATE="$ROOT/target/release/wsgate"
LG="$ROOT/bench/loadgen/target/release/loadgen"
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
cd "$OUT"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout leaf.key -out leaf.crt \
    -subj /CN=localhost -days 1 -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -addext basicConstraints=critical,CA:FALSE 2>/dev/null
cat >wsgate.yaml <<EOF
listeners:
  - bind: "127.0.0.1:19501"
  - bind: "127.0.0.1:19502"
    tls: {cert: $OUT/leaf.crt, key: $OUT/leaf.key}
routes:
  - path: /ws
    upstream: ws://127.0.0.1:19500
limits: {handshake_rate_per_ip: 0, max_connections_per_ip: 0, max_connections: 20000}
EOF
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
taskset -c 0 "$LG" echo --bind 127.0.0.1:19500 2>/dev/null & PIDS+=($!)
wait_port 19500
# perf stat exits 0 even when the counter is "<not supported>" (no PMU in this VM).
if perf stat -e instructions true 2>&1 | grep -q '[0-9][0-9,]* *instructions'; then TOOL=perf; else TOOL=callgrind; fi
echo "profiler: $TOOL" | tee summary.txt
for mode in plain tls; do
    if [ "$mode" = plain ]; then URL=ws://127.0.0.1:19501/ws; X=(); else URL=wss://localhost:19502/ws; X=(--ca leaf.crt); fi
    # 1) syscalls per message at the benchmark rate
    taskset -c 1 "$WSGATE" --config wsgate.yaml 2>/dev/null & W=$!; PIDS+=($W); wait_port 19501
    (sleep 2; timeout -s INT 3 strace -c -f -p "$W" -o "strace.$mode.txt" 2>/dev/null || true) & S=$!
    taskset -c 0 "$LG" rate --url "$URL" "${X[@]}" --conns 100 --rate 2000 --warmup 1 --duration 5 >"rate.$mode.json"
    wait "$S" || true
    kill "$W"; wait "$W" 2>/dev/null || true
    # 2) instruction profile (lower rate: the profiler slows wsgate ~50x)
    if [ "$TOOL" = perf ]; then
        taskset -c 1 perf record -g -o "perf.$mode.data" "$WSGATE" --config wsgate.yaml 2>/dev/null & W=$!
    else
        taskset -c 1 valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="cg.$mode.out" \
            "$WSGATE" --config wsgate.yaml 2>/dev/null & W=$!
    fi
    PIDS+=($W); wait_port 19501; sleep 1
    if [ "$TOOL" = callgrind ]; then (sleep 3.5; callgrind_control -i on "$W" >/dev/null; sleep 6; callgrind_control -i off "$W" >/dev/null) & fi
    taskset -c 0 "$LG" rate --url "$URL" "${X[@]}" --conns 100 --rate 1000 --warmup 4 --duration 6 >/dev/null
    sleep 1; kill -INT "$W"; wait "$W" 2>/dev/null || true
    set +o pipefail
    {
        echo "== $mode: syscalls at 2,000 echoes/s over 100 conns, 3 s strace window = ~6,000 echoes = ~12,000 forwarded frames"
        head -12 "strace.$mode.txt"
        echo "== $mode: top self cost"
        if [ "$TOOL" = callgrind ]; then
            callgrind_annotate "cg.$mode.out" 2>/dev/null | sed -n '/PROGRAM TOTALS/,$p' | head -30
            echo "== $mode: top inclusive"
            callgrind_annotate --inclusive=yes "cg.$mode.out" 2>/dev/null | sed -n '/PROGRAM TOTALS/,$p' | head -40
        else
            perf report -i "perf.$mode.data" --no-children --stdio 2>/dev/null | grep -v '^#' | grep '%' | head -30
        fi
    } >>summary.txt
    set -o pipefail
done
echo "wrote $OUT/summary.txt"
