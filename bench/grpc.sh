#!/usr/bin/env bash
# gRPC side by side: streamhub and the seed's Go server (grpc-go), the same
# load tool and flags for both, a FRESH server per figure, runs interleaved
# (the order rotates each run), medians and the ratio streamhub/Go.
#
# Usage: bench/grpc.sh fanout [fanout options...]   e.g.
#          bench/grpc.sh fanout --subscribers 1000 --rate 0 --publishers 4
#          bench/grpc.sh fanout --subscribers 1000 --connections 1000
#          bench/grpc.sh fanout --subscribers 1000 --rate 400
#        bench/grpc.sh unary          (h2load -c 4 -m 16 -t 1, 100 B)
# Environment: RUNS (default 3), DURATION (seconds, default 10),
# STREAMHUB_BIN, BENCH_BIN (default target/release/), GO_SERVER (default
# target/peers/seed-go-server, built by bench/peers.sh), OUT (a directory
# for the JSON of every run; default /tmp/grpc-bench.DATE).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STREAMHUB_BIN=${STREAMHUB_BIN:-$ROOT/target/release/streamhub}
BENCH_BIN=${BENCH_BIN:-$ROOT/target/release/streamhub-bench}
GO_SERVER=${GO_SERVER:-$ROOT/target/peers/seed-go-server}
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
OUT=${OUT:-/tmp/grpc-bench.$(date +%Y%m%d-%H%M%S)}
MODE=${1:-}
[ $# -gt 0 ] && shift
case $MODE in fanout|unary) ;; *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;; esac
[ -x "$GO_SERVER" ] || "$ROOT/bench/peers.sh" "$(dirname "$GO_SERVER")" >/dev/null
[ "$MODE" != unary ] || command -v h2load >/dev/null || {
  echo "grpc.sh: h2load is needed (apt-get install nghttp2-client)" >&2; exit 2; }
mkdir -p "$OUT"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Starts SERVER on PORT in the background, waits until the port accepts.
start() {
  local server=$1 port=$2
  case $server in
    streamhub) "$STREAMHUB_BIN" serve --grpc-addr "127.0.0.1:$port" --http-addr 127.0.0.1:0 \
                 --max-grpc-streams 20000 >"$OUT/$server.log" 2>&1 & ;;
    go) "$GO_SERVER" -addr "127.0.0.1:$port" >"$OUT/$server.log" 2>&1 & ;;
  esac
  PID=$!
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "grpc.sh: $server did not start" >&2; exit 1
}

servers=(streamhub go)
for run in $(seq "$RUNS"); do
  for i in 0 1; do
    server=${servers[$(( (i + run) % 2 ))]}
    port=$(free_port)
    start "$server" "$port"
    out="$OUT/$MODE-$server-$run.json"
    if [ "$MODE" = fanout ]; then
      "$BENCH_BIN" fanout --protocol grpc --server "127.0.0.1:$port" --duration-secs "$DURATION" \
        --server-pid "$PID" --json --quiet "$@" >"$out" || true
    else
      "$BENCH_BIN" grpc-body --out "$OUT/body.bin" --size 100 >/dev/null
      h2load -c 4 -m 16 -t 1 -D "$DURATION" --warm-up-time=1 -d "$OUT/body.bin" \
        -H 'content-type: application/grpc' -H 'te: trailers' \
        "http://127.0.0.1:$port/chat.ChatService/SendMessage" >"$out.txt" 2>&1 || true
      grep -oE 'finished in [0-9.]+s, [0-9.]+ req/s' "$out.txt" \
        | awk '{print "{\"req_per_sec\": " $4 "}"}' >"$out"
    fi
    kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null || true
    echo "run $run $server: $(head -c 300 "$out" | tr -d '\n' | cut -c1-160)" >&2
  done
done

python3 - "$OUT" "$MODE" <<'EOF'
import glob, json, statistics, sys
out, mode = sys.argv[1:3]
def load(server):
    rows = []
    for f in sorted(glob.glob(f"{out}/{mode}-{server}-*.json")):
        try:
            rows.append(json.load(open(f)))
        except Exception:
            pass
    return rows
def med(rows, *path):
    vals = []
    for r in rows:
        for p in path:
            r = r.get(p) if isinstance(r, dict) else None
        if isinstance(r, (int, float)):
            vals.append(r)
    return statistics.median(vals) if vals else None
res = {s: load(s) for s in ("streamhub", "go")}
if mode == "unary":
    cols = [("req/s", ("req_per_sec",))]
else:
    cols = [("deliveries/s", ("deliveries_per_sec",)), ("p50 us", ("latency", "p50_us")),
            ("p99 us", ("latency", "p99_us")), ("lost", ("lost",)), ("dropped", ("dropped",)),
            ("server us/delivery", ("server_cost", "cpu_us_per_op")),
            ("client us/delivery", ("client_cost", "cpu_us_per_op"))]
print(f"| server | runs | " + " | ".join(c for c, _ in cols) + " |")
print("|---|---|" + "---|" * len(cols))
for s, rows in res.items():
    vals = [med(rows, *p) for _, p in cols]
    print(f"| {s} | {len(rows)} | " + " | ".join("-" if v is None else f"{v:,.1f}" if isinstance(v, float) else f"{v:,}" for v in vals) + " |")
a, b = med(res["streamhub"], *cols[0][1]), med(res["go"], *cols[0][1])
if a and b:
    print(f"\nstreamhub / Go ({cols[0][0]}, medians): {a / b:.2f}x")
print(f"\nJSON of every run: {out}")
EOF
