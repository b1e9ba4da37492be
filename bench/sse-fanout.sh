#!/usr/bin/env bash
# SSE fan-out, side by side: streamhub, nginx+nchan (the peer) and the
# thread-per-stream prototype (the ceiling), measured by the same load tool
# (`streamhub-bench fanout --protocol sse`) with the same flags.
#
# For each run index, for each server (interleaved; the order rotates by one
# each run so no server always goes first), it starts a FRESH server on free
# 127.0.0.1 ports, waits until it answers, runs the load tool once, keeps its
# JSON, stops the server, and at the end prints a markdown table of medians
# per server and the ratios streamhub/nchan and proto/nchan.
#
# Usage: bench/sse-fanout.sh [options]          (bench/README.md has more)
#   --runs N                 runs per server (default 3; medians need >= 3)
#   --subscribers N          SSE subscribers, one room (default 1000)
#   --rate R                 messages/s asked, 0 = flat out (default 0)
#   --duration S             seconds of publishing per run (default 10)
#   --size B                 content bytes per message (default 100)
#   --publishers N           publisher threads (default 1)
#   --window W               flat out: pause while the slowest subscriber
#                            is W messages behind (default 512, the tool's)
#   --servers LIST           comma list of streamhub,nchan,proto (default all),
#                            and streamhub-web: streamhub with its subscribers
#                            on gRPC-Web (SubscribeMessages over HTTP/1.1
#                            chunks) instead of SSE, for the two side by side
#   --streamhub-args "..."   extra arguments for 'streamhub serve'
#   --streamhub-publish M    http (POST /messages, JSON; default) or grpc
#                            (SendMessage, as BENCHMARKS.md did)
#   --out DIR                where JSON results and server logs go
#                            (default /tmp/sse-fanout.YYYYmmdd-HHMMSS)
#   --dry-run                print the commands, run nothing
# Binaries (environment): STREAMHUB_BIN, BENCH_BIN (default target/release/
# of this repository), PROTO_BIN (default /tmp/proto-target/release/
# fanout-proto; built from PROTO_SRC if missing), NCHAN_CONF.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STREAMHUB_BIN=${STREAMHUB_BIN:-$ROOT/target/release/streamhub}
BENCH_BIN=${BENCH_BIN:-$ROOT/target/release/streamhub-bench}
PROTO_SRC=${PROTO_SRC:-/work/shared/prototypes/sse-fanout}
PROTO_BIN=${PROTO_BIN:-/tmp/proto-target/release/fanout-proto}
NCHAN_CONF=${NCHAN_CONF:-/work/shared/peers/nchan/nginx.conf}
PROTO_FLAGS=(--variant E --sub-sched idle --sndbuf 32768 --window-bytes 65536)

RUNS=3 SUBSCRIBERS=1000 RATE=0 DURATION=10 SIZE=100 PUBLISHERS=1 WINDOW=512
SERVERS=streamhub,nchan,proto STREAMHUB_ARGS="" STREAMHUB_PUBLISH=http
OUT=/tmp/sse-fanout.$(date +%Y%m%d-%H%M%S) DRY=0

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "sse-fanout: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case $1 in
    --runs) RUNS=$2; shift 2 ;;
    --subscribers) SUBSCRIBERS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --publishers) PUBLISHERS=$2; shift 2 ;;
    --window) WINDOW=$2; shift 2 ;;
    --servers) SERVERS=$2; shift 2 ;;
    --streamhub-args) STREAMHUB_ARGS=$2; shift 2 ;;
    --streamhub-publish) STREAMHUB_PUBLISH=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "sse-fanout: unknown argument '$1'" >&2; usage 2 ;;
  esac
done
for n in "$RUNS" "$SUBSCRIBERS" "$DURATION" "$SIZE" "$PUBLISHERS" "$WINDOW"; do
  [[ $n =~ ^[0-9]+$ ]] || die "expected a whole number, got '$n'"
done
[[ $RATE =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--rate: expected a number, got '$RATE'"
[[ $STREAMHUB_PUBLISH == http || $STREAMHUB_PUBLISH == grpc ]] || die "--streamhub-publish: http or grpc"
IFS=, read -r -a SERVER_LIST <<<"$SERVERS"
for s in "${SERVER_LIST[@]}"; do
  case $s in streamhub|streamhub-web|nchan|proto) ;; *) die "--servers: unknown server '$s'" ;; esac
done
# shellcheck disable=SC2206  # --streamhub-args is split into words on purpose
EXTRA_STREAMHUB_ARGS=($STREAMHUB_ARGS)

# ---- prerequisites -------------------------------------------------------
need() { [ -x "$1" ] || die "$2"; }
prepare() {
  command -v curl >/dev/null || die "curl is needed"
  command -v python3 >/dev/null || die "python3 is needed (for the summary)"
  need "$BENCH_BIN" "no load tool at $BENCH_BIN: cargo build --release --workspace"
  for s in "${SERVER_LIST[@]}"; do
    case $s in
      streamhub|streamhub-web) need "$STREAMHUB_BIN" "no server at $STREAMHUB_BIN: cargo build --release" ;;
      nchan)
        # The same packages as /work/shared/peers/nchan/run.sh installs.
        if ! command -v nginx >/dev/null || [ ! -f /usr/lib/nginx/modules/ngx_nchan_module.so ]; then
          echo "installing nginx-light libnginx-mod-nchan" >&2
          DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light libnginx-mod-nchan >/dev/null
        fi
        [ -r "$NCHAN_CONF" ] || die "no nchan config at $NCHAN_CONF" ;;
      proto)
        if [ ! -x "$PROTO_BIN" ]; then
          # The shared folder is read-only: build a copy, with its own target dir.
          echo "building the prototype into $(dirname "$(dirname "$PROTO_BIN")")" >&2
          rm -rf /tmp/sse-fanout-proto && cp -r "$PROTO_SRC" /tmp/sse-fanout-proto
          chmod -R u+w /tmp/sse-fanout-proto
          (cd /tmp/sse-fanout-proto &&
             CARGO_TARGET_DIR=$(dirname "$(dirname "$PROTO_BIN")") cargo build --release -q)
        fi
        need "$PROTO_BIN" "no prototype at $PROTO_BIN" ;;
    esac
  done
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# ---- one server ----------------------------------------------------------
# start_server NAME TAG: sets SERVER_PID (the process to stop), LOAD_PID (the
# process whose CPU the load tool reports), SUB_ARGS (how the load tool
# subscribes) and PUBLISH_ARGS.
SERVER_PID="" NCHAN_DIR=""
start_server() {
  local name=$1 tag=$2 port gport=""
  port=$(free_port)
  case $name in
    streamhub|streamhub-web)
      gport=$(free_port)
      while [ "$gport" = "$port" ]; do gport=$(free_port); done
      SERVER_CMD=("$STREAMHUB_BIN" serve --grpc-addr "127.0.0.1:$gport" --http-addr "127.0.0.1:$port"
        --max-grpc-streams 20000 --max-sse-clients 20000 --max-http-connections 30000
        --shutdown-grace-secs 1 "${EXTRA_STREAMHUB_ARGS[@]}")
      READY_URL="http://127.0.0.1:$port/healthz"
      SUB_ARGS=(--protocol sse --sse-url "http://127.0.0.1:$port/events?room={room}")
      if [ "$name" = streamhub-web ]; then
        SUB_ARGS=(--protocol grpc-web --grpc-web-url "http://127.0.0.1:$port")
      fi
      if [ "$STREAMHUB_PUBLISH" = grpc ]; then
        PUBLISH_ARGS=(--publish-via grpc --server "127.0.0.1:$gport")
      else
        PUBLISH_ARGS=(--publish-via http --publish-url "http://127.0.0.1:$port/messages" --publish-body json)
      fi ;;
    nchan)
      # What peers/nchan/run.sh does (its nginx.conf, nginx in the foreground),
      # but in a prefix of its own: run.sh always uses /tmp/peers/nchan (and
      # its pid file), which a second nchan on this machine would share.
      NCHAN_DIR=$(mktemp -d "/tmp/sse-fanout-nchan.XXXXXX")
      sed -e "s/__PORT__/$port/" -e "s#/tmp/peers/nchan#$NCHAN_DIR#g" "$NCHAN_CONF" >"$NCHAN_DIR/nginx.conf"
      SERVER_CMD=(nginx -c "$NCHAN_DIR/nginx.conf" -p "$NCHAN_DIR")
      READY_URL="http://127.0.0.1:$port/pub?room=sse-fanout-ready"   # 404 until a channel exists: fine
      SUB_ARGS=(--protocol sse --sse-url "http://127.0.0.1:$port/sub?room={room}")
      PUBLISH_ARGS=(--publish-via http --publish-url "http://127.0.0.1:$port/pub?room={room}" --publish-body raw) ;;
    proto)
      SERVER_CMD=("$PROTO_BIN" --port "$port" "${PROTO_FLAGS[@]}")
      READY_URL="http://127.0.0.1:$port/stats"
      SUB_ARGS=(--protocol sse --sse-url "http://127.0.0.1:$port/sub?room={room}")
      PUBLISH_ARGS=(--publish-via http --publish-url "http://127.0.0.1:$port/pub?room={room}" --publish-body raw) ;;
  esac
  if [ "$DRY" = 1 ]; then
    SERVER_PID=0 LOAD_PID='$PID'
    [ -z "$NCHAN_DIR" ] || { rm -rf "$NCHAN_DIR"; NCHAN_DIR=""; }
    return 0
  fi
  "${SERVER_CMD[@]}" >"$OUT/$tag.server.log" 2>&1 &
  SERVER_PID=$!
  local i code
  for i in $(seq 150); do
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$OUT/$tag.server.log" >&2; die "$name exited at start"; }
    code=$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$READY_URL" || true)
    [ "$code" != 000 ] && [ -n "$code" ] && break
    sleep 0.1
  done
  [ "$code" != 000 ] || die "$name did not answer on $READY_URL within 15 s"
  if [ -n "$gport" ] && [ "$STREAMHUB_PUBLISH" = grpc ]; then
    for i in $(seq 150); do (exec 3<>"/dev/tcp/127.0.0.1/$gport") 2>/dev/null && break; sleep 0.1; done
  fi
  LOAD_PID=$SERVER_PID
  if [ "$name" = nchan ]; then
    # worker_processes 1: the worker does the work; the master only waits.
    LOAD_PID=$(pgrep -P "$SERVER_PID" | head -1)
    [ -n "$LOAD_PID" ] || die "no nginx worker under $SERVER_PID"
  fi
}

stop_server() {
  [ -n "$SERVER_PID" ] && [ "$SERVER_PID" != 0 ] || { SERVER_PID=""; return 0; }
  local kids i
  kids=$(pgrep -P "$SERVER_PID" || true)   # nginx workers
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for i in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  for k in $kids; do
    for i in $(seq 50); do kill -0 "$k" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$k" 2>/dev/null || true
  done
  [ -n "$NCHAN_DIR" ] && rm -rf "$NCHAN_DIR"
  SERVER_PID="" NCHAN_DIR=""
}
trap 'stop_server' EXIT
trap 'exit 130' INT TERM

# ---- the runs ------------------------------------------------------------
# Shell-quotes a command for the log (single quotes where needed).
q() {
  local a out=""
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=,+-]+$ ]]; then out+="$a "
    elif [[ $a != *"'"* ]]; then out+="'$a' "
    else out+="$(printf '%q' "$a") "; fi
  done
  echo "${out% }"
}

[ "$DRY" = 1 ] || prepare
mkdir -p "$OUT"
NS=${#SERVER_LIST[@]}
TOOL_LIMIT=$((DURATION + 10 + 10 + 60))   # publishing + drain + connect timeout + margin
{
  echo "# sse-fanout $(date -Is) on $(hostname), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# runs=$RUNS subscribers=$SUBSCRIBERS rate=$RATE duration=$DURATION size=$SIZE publishers=$PUBLISHERS window=$WINDOW servers=$SERVERS streamhub-publish=$STREAMHUB_PUBLISH streamhub-args='$STREAMHUB_ARGS'"
  # A worktree's .git is a file; a tarball has none (no line then).
  if [ -e "$ROOT/.git" ]; then
    echo "# streamhub commit $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- src tools 2>/dev/null || echo ' (+ uncommitted changes in src/ or tools/)')"
  fi
} | tee "$OUT/meta.txt" >&2

for r in $(seq 1 "$RUNS"); do
  for j in $(seq 0 $((NS - 1))); do
    s=${SERVER_LIST[$(((j + r - 1) % NS))]}
    tag="$s.run$r"
    start_server "$s" "$tag"
    CMD=("$BENCH_BIN" fanout "${SUB_ARGS[@]}" "${PUBLISH_ARGS[@]}"
      --subscribers "$SUBSCRIBERS" --rooms 1 --publishers "$PUBLISHERS" --rate "$RATE"
      --window "$WINDOW" --size "$SIZE" --duration-secs "$DURATION"
      --server-pid "$LOAD_PID" --json --quiet)
    echo "== run $r/$RUNS $s: $(q "${SERVER_CMD[@]}")" >&2
    echo "   $(q "${CMD[@]}")" >&2
    echo "$(q "${SERVER_CMD[@]}")" >"$OUT/$tag.cmd"; echo "$(q "${CMD[@]}")" >>"$OUT/$tag.cmd"
    if [ "$DRY" = 1 ]; then continue; fi
    rc=0
    timeout -k 5 "$TOOL_LIMIT" "${CMD[@]}" >"$OUT/$tag.json" 2>"$OUT/$tag.tool.log" || rc=$?
    stop_server
    if [ "$rc" != 0 ]; then
      echo "   load tool failed (exit $rc); see $OUT/$tag.tool.log" >&2
      tail -3 "$OUT/$tag.tool.log" >&2 || true
      rm -f "$OUT/$tag.json"
      continue
    fi
    python3 - "$OUT/$tag.json" <<'PY' >&2
import json, sys
j = json.load(open(sys.argv[1])); l = j["latency"]
print("   %.0f deliveries/s, %.0f msg/s published, p50 %.1f ms, p99 %.1f ms, lost %d, dup %d, reordered %d, kept up %d/%d%s"
      % (j["deliveries_per_sec"], j["publish_per_sec"], l["p50_us"] / 1e3, l["p99_us"] / 1e3,
         j["lost"], j["duplicated"], j["out_of_order"], j["kept_up"], j["subscribers"],
         "" if j["drained"] else ", drain timed out"))
PY
  done
done
[ "$DRY" = 1 ] && exit 0

# ---- summary -------------------------------------------------------------
python3 - "$OUT" "$SERVERS" "$RUNS" <<'PY' | tee "$OUT/summary.md"
import glob, json, os, statistics, sys
out, servers, runs = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
res = {s: [json.load(open(f)) for f in sorted(glob.glob(os.path.join(out, s + ".run*.json")))] for s in servers}
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
def fig(s, key):
    return med([key(j) for j in res[s]])
def cost(j, k):
    c = j.get("server_cost")
    return c.get(k) if c else None
rows = {}
for s in servers:
    rs = res[s]
    rows[s] = dict(
        n=len(rs),
        pub=fig(s, lambda j: j["publish_per_sec"]),
        dps=fig(s, lambda j: j["deliveries_per_sec"]),
        p50=fig(s, lambda j: j["latency"]["p50_us"] / 1e3),
        p99=fig(s, lambda j: j["latency"]["p99_us"] / 1e3),
        mx=fig(s, lambda j: j["latency"]["max_us"] / 1e3),
        lost=sum(j["lost"] for j in rs), dup=sum(j["duplicated"] for j in rs),
        ooo=sum(j["out_of_order"] for j in rs),
        kept=min((j["kept_up"] for j in rs), default=None),
        subs=rs[0]["subscribers"] if rs else None,
        drained=all(j["drained"] for j in rs),
        us=fig(s, lambda j: cost(j, "cpu_us_per_op")),
        sw=fig(s, lambda j: cost(j, "context_switches_per_op")))
def f(x, d=0):
    return "-" if x is None else f"{x:,.{d}f}"
base = rows.get("nchan", {}).get("dps")
j0 = next((js[0] for js in res.values() if js), None)
if j0:
    rate = "flat out (window %d)" % j0["window"] if not j0["rate"] else "%g msg/s asked" % j0["rate"]
    print(f"SSE fan-out: {j0['subscribers']} subscribers, 1 room, {j0['publishers']} publisher(s), {rate}, "
          f"{j0['size']} B, {j0['publish_secs']:.0f} s; medians of {runs} interleaved run(s), fresh server each\n")
print("| server | runs ok | published msg/s | deliveries/s | x nchan | p50 ms | p99 ms | max ms "
      "| lost | dup | reordered | kept up (min) | server us / delivery | server switches / delivery |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for s in servers:
    r = rows[s]
    ratio = f"{r['dps'] / base:.2f}" if base and r["dps"] is not None else "-"
    kept = "-" if r["kept"] is None else f"{r['kept']}/{r['subs']}" + ("" if r["drained"] else " (drain timed out)")
    print(f"| {s} | {r['n']}/{runs} | {f(r['pub'])} | {f(r['dps'])} | {ratio} | {f(r['p50'], 1)} | {f(r['p99'], 1)} "
          f"| {f(r['mx'], 1)} | {r['lost']} | {r['dup']} | {r['ooo']} | {kept} | {f(r['us'], 1)} | {f(r['sw'], 2)} |")
print()
for s in ("streamhub", "streamhub-web", "proto"):
    if s in rows and base and rows[s]["dps"] is not None:
        print(f"- {s}/nchan deliveries/s: {rows[s]['dps'] / base:.2f}")
sse, web = rows.get("streamhub", {}).get("dps"), rows.get("streamhub-web", {}).get("dps")
if sse and web:
    print(f"- streamhub gRPC-Web/SSE deliveries/s: {web / sse:.2f}")
if not base:
    print("- no nchan figure in this sitting: no ratios")
print("- lost/dup/reordered are sums over all runs, for subscribers that kept up; "
      "nchan keeps a 1,000-message buffer per channel; proto (variant E) stalls a publisher "
      "at most --block-ms, then evicts the laggard; streamhub stalls a publisher up to --publish-stall-ms (10) for a subscriber a window (1,024) behind, then drops it.")
print(f"- raw JSON, commands and server logs: {out}")
PY
