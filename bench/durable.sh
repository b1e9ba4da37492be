#!/usr/bin/env bash
# Durable rooms (issue 14): SendMessage rate and latency per --fsync policy
# against memory only (no --data-dir), the same load tool and flags for
# each, a FRESH server and data directory per figure, runs interleaved (the
# order rotates each run), medians and the ratio to memory only; then the
# restart time with about a million retained messages.
#
# Usage: bench/durable.sh publish [unary options...]   e.g.
#          bench/durable.sh publish --connections 4 --concurrency 64
#          bench/durable.sh publish --connections 1 --concurrency 1
#        bench/durable.sh restart   (MESSAGES, default 1000000)
# Environment: RUNS (default 3), DURATION (seconds, default 8), DATA (a
# directory on the disk to measure, default /var/tmp), STREAMHUB_BIN,
# BENCH_BIN (default target/release/), OUT (a directory for every run's
# JSON and log; default /tmp/durable-bench.DATE).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STREAMHUB_BIN=${STREAMHUB_BIN:-$ROOT/target/release/streamhub}
BENCH_BIN=${BENCH_BIN:-$ROOT/target/release/streamhub-bench}
RUNS=${RUNS:-3}
DURATION=${DURATION:-8}
DATA=${DATA:-/var/tmp}
MESSAGES=${MESSAGES:-1000000}
OUT=${OUT:-/tmp/durable-bench.$(date +%Y%m%d-%H%M%S)}
MODE=${1:-}
[ $# -gt 0 ] && shift
case $MODE in publish|restart) ;; *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;; esac
mkdir -p "$OUT"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Starts the server on PORT with FLAGS..., waits until the port accepts;
# sets PID and the milliseconds it took in STARTED_MS.
start() {
  local port=$1; shift
  local t0; t0=$(date +%s%N)
  "$STREAMHUB_BIN" serve --grpc-addr "127.0.0.1:$port" --http-addr 127.0.0.1:0 "$@" \
    >>"$OUT/server.log" 2>&1 &
  PID=$!
  for _ in $(seq 2000); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && {
      STARTED_MS=$(( ($(date +%s%N) - t0) / 1000000 )); return 0; }
    kill -0 "$PID" 2>/dev/null || { echo "durable.sh: the server exited" >&2; exit 1; }
    sleep 0.01
  done
  echo "durable.sh: the server did not start" >&2; exit 1
}

stop() { kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null || true; }

if [ "$MODE" = publish ]; then
  policies=(memory never batch always)
  for run in $(seq "$RUNS"); do
    for i in 0 1 2 3; do
      policy=${policies[$(( (i + run) % 4 ))]}
      dir="$DATA/streamhub-bench-$$"
      rm -rf "$dir"
      flags=()
      [ "$policy" = memory ] || flags=(--data-dir "$dir" --fsync "$policy")
      port=$(free_port)
      start "$port" "${flags[@]}"
      out="$OUT/$policy-$run.json"
      "$BENCH_BIN" unary --server "127.0.0.1:$port" --duration-secs "$DURATION" \
        --server-pid "$PID" --json --quiet "$@" >"$out" || true
      stop
      rm -rf "$dir"
      echo "run $run $policy: $(python3 -c "import json,sys; d=json.load(open('$out')); print(d['requests_per_sec'], 'req/s p50', d['latency']['p50_us'], 'us p99', d['latency']['p99_us'], 'us errors', d['errors'])")" >&2
    done
  done
  python3 - "$OUT" "$RUNS" <<'PY'
import json, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
def med(policy, get):
    return statistics.median(get(json.load(open(f"{out}/{policy}-{r}.json"))) for r in range(1, runs + 1))
base = med("memory", lambda d: d["requests_per_sec"])
print(f"{'policy':8} {'req/s':>9} {'x memory':>9} {'p50 us':>8} {'p99 us':>8}")
for p in ["memory", "never", "batch", "always"]:
    rate = med(p, lambda d: d["requests_per_sec"])
    print(f"{p:8} {rate:9.0f} {rate / base:9.2f} {med(p, lambda d: d['latency']['p50_us']):8.0f} {med(p, lambda d: d['latency']['p99_us']):8.0f}")
PY
  exit 0
fi

# restart: fill a data directory with MESSAGES (100 B, one room, all
# retained), stop, then time fresh starts until the port accepts.
dir="$DATA/streamhub-bench-restart-$$"
rm -rf "$dir"
flags=(--data-dir "$dir" --fsync never --history 1048576 --history-bytes 1099511627776 \
       --history-total-bytes 1099511627776 --max-grpc-streams 64)
port=$(free_port)
start "$port" "${flags[@]}"
"$BENCH_BIN" unary --server "127.0.0.1:$port" --duration-secs 3600 --warmup-secs 0 --json --quiet \
  --connections 4 --concurrency 256 >"$OUT/fill.json" 2>/dev/null &
FILL=$!
http=$(grep -o 'HTTP listening on 127.0.0.1:[0-9]*' "$OUT/server.log" | tail -1 | cut -d: -f2)
while :; do
  n=$(curl -s "http://127.0.0.1:$http/metrics" | awk '/^streamhub_messages_published_total/ {print int($2)}')
  [ "${n:-0}" -ge "$MESSAGES" ] && break
  sleep 1
done
kill "$FILL" 2>/dev/null; wait "$FILL" 2>/dev/null || true
stop
du -sh "$dir" >&2
for run in $(seq "$RUNS"); do
  port=$(free_port)
  start "$port" "${flags[@]}"
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")
  read_line=$(grep -- "--data-dir $dir: .* messages" "$OUT/server.log" | tail -1)
  echo "restart $run: port accepts after ${STARTED_MS} ms, RSS ${rss} KiB; ${read_line#*INFO  }" >&2
  stop
done
rm -rf "$dir"
