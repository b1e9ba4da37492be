#!/usr/bin/env bash
# Cross-node fan-out with --cluster (issue 14) against a single node: the
# same load tool and flags for each, FRESH servers (and a fresh, empty
# redis-server) per figure, runs interleaved (the order rotates each run),
# medians and the ratio to the single node.
#
#   single  one plain node: publish and subscribe on it
#   local   one --cluster node: publish and subscribe on it (the cost of
#           the Lua script's round trip and the channel's hop, one node)
#   cross   two --cluster nodes: publish on A, subscribe on B
#
# Usage: bench/cluster.sh [fanout options...]   e.g.
#          bench/cluster.sh                       (flat out)
#          bench/cluster.sh --rate 1000           (paced)
# Environment: RUNS (default 3), DURATION (seconds, default 5), SUBSCRIBERS
# (default 100), VARIANTS (default "single local cross"), STREAMHUB_BIN,
# BENCH_BIN (default target/release/), REDIS_SERVER (default
# redis-server), OUT (a directory for every run's JSON and logs; default
# /tmp/cluster-bench.DATE).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STREAMHUB_BIN=${STREAMHUB_BIN:-$ROOT/target/release/streamhub}
BENCH_BIN=${BENCH_BIN:-$ROOT/target/release/streamhub-bench}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
RUNS=${RUNS:-3}
DURATION=${DURATION:-5}
SUBSCRIBERS=${SUBSCRIBERS:-100}
read -r -a VARIANTS <<<"${VARIANTS:-single local cross}"
OUT=${OUT:-/tmp/cluster-bench.$(date +%Y%m%d-%H%M%S)}
case ${1:-} in -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac
command -v "$REDIS_SERVER" >/dev/null || { echo "cluster.sh: $REDIS_SERVER is missing (apt-get install redis-server)" >&2; exit 1; }
mkdir -p "$OUT"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# Starts a node with FLAGS...; prints "PID HTTP_PORT" once it answers.
node() {
  local log="$OUT/node-$RANDOM$RANDOM.log"
  "$STREAMHUB_BIN" serve --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 "$@" >"$log" 2>&1 &
  local pid=$! port=""
  for _ in $(seq 1000); do
    port=$(grep -o 'HTTP listening on 127.0.0.1:[0-9]*' "$log" | head -1 | cut -d: -f2 || true)
    [ -n "$port" ] && curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && { echo "$pid $port"; return 0; }
    kill -0 "$pid" 2>/dev/null || { echo "cluster.sh: a node exited; see $log" >&2; exit 1; }
    sleep 0.01
  done
  echo "cluster.sh: a node did not start; see $log" >&2; exit 1
}

for run in $(seq "$RUNS"); do
  n=${#VARIANTS[@]}
  for i in $(seq 0 $((n - 1))); do
    variant=${VARIANTS[$(( (i + run) % n ))]}
    redis_dir=$(mktemp -d /tmp/cluster-bench-redis.XXXXXX)
    PIDS=()
    if [ "$variant" != single ]; then
      "$REDIS_SERVER" --port 0 --unixsocket "$redis_dir/redis.sock" --unixsocketperm 700 \
        --save "" --appendonly no --dir "$redis_dir" >"$redis_dir/log" 2>&1 &
      PIDS+=($!)
      for _ in $(seq 500); do
        [ -S "$redis_dir/redis.sock" ] && redis-cli -s "$redis_dir/redis.sock" ping >/dev/null 2>&1 && break
        sleep 0.01
      done
      cluster=(--cluster "redis+unix://$redis_dir/redis.sock")
    fi
    case $variant in
      single) read -r pa a < <(node); pb=$pa; b=$a; PIDS+=("$pa") ;;
      local) read -r pa a < <(node "${cluster[@]}"); pb=$pa; b=$a; PIDS+=("$pa") ;;
      cross) read -r pa a < <(node "${cluster[@]}"); read -r pb b < <(node "${cluster[@]}"); PIDS+=("$pa" "$pb") ;;
      *) echo "cluster.sh: unknown variant $variant" >&2; exit 2 ;;
    esac
    out="$OUT/$variant-$run.json"
    # Subscribers on B; publishes to A; server cost is B's (the node that fans out).
    "$BENCH_BIN" fanout --protocol sse --publish-via http \
      --sse-url "http://127.0.0.1:$b/events?room={room}" \
      --publish-url "http://127.0.0.1:$a/messages" \
      --subscribers "$SUBSCRIBERS" --duration-secs "$DURATION" --server-pid "$pb" \
      --json --quiet "$@" >"$out" 2>"$OUT/$variant-$run.tool.log" || true
    cleanup
    rm -rf "$redis_dir"
    python3 - "$out" "$run" "$variant" <<'PY' >&2
import json, sys
j = json.load(open(sys.argv[1])); l = j["latency"]
print("run %s %-6s %9.0f deliveries/s, %6.0f msgs/s, p50 %.2f ms, p99 %.2f ms, lost %d, dup %d, reordered %d, kept up %d/%d"
      % (sys.argv[2], sys.argv[3], j["deliveries_per_sec"], j["publish_per_sec"], l["p50_us"] / 1e3,
         l["p99_us"] / 1e3, j["lost"], j["duplicated"], j["out_of_order"], j["kept_up"], j["subscribers"]))
PY
  done
done

python3 - "$OUT" "$RUNS" "${VARIANTS[@]}" <<'PY' | tee "$OUT/summary.md"
import json, statistics, sys
out, runs, variants = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
res = {v: [json.load(open(f"{out}/{v}-{r}.json")) for r in range(1, runs + 1)] for v in variants}
med = lambda v, get: statistics.median(get(j) for j in res[v])
base = med("single", lambda j: j["deliveries_per_sec"]) if "single" in res else None
print("| variant | deliveries/s | x single | published msgs/s | p50 ms | p99 ms | lost | dup | reordered | kept up (min) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for v in variants:
    d = med(v, lambda j: j["deliveries_per_sec"])
    ratio = f"{d / base:.2f}" if base else "-"
    print(f"| {v} | {d:,.0f} | {ratio} | {med(v, lambda j: j['publish_per_sec']):,.0f} "
          f"| {med(v, lambda j: j['latency']['p50_us'] / 1e3):.2f} | {med(v, lambda j: j['latency']['p99_us'] / 1e3):.2f} "
          f"| {sum(j['lost'] for j in res[v])} | {sum(j['duplicated'] for j in res[v])} "
          f"| {sum(j['out_of_order'] for j in res[v])} | {min(j['kept_up'] for j in res[v])}/{res[v][0]['subscribers']} |")
PY
