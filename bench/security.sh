#!/usr/bin/env bash
# The cost of TLS and of token checks, as ratios to the same server without
# them, measured in one run: a fresh server per figure, the variants
# interleaved RUNS times, medians. Every figure is h2load against
# streamhub alone (the peers have no tokens to compare with).
#
# Usage: bench/security.sh
#   per message:    h2load -c 4 -m 16 -t 1, SendMessage (100 B) on long-lived
#                   connections (gRPC verifies a connection's token once)
#                   and POST /messages over HTTP/1.1 keep-alive (-c 4)
#   per connection: h2load -c 1 -n 1, 100 times: a new connection for one
#                   call, so each pays the TCP and TLS handshakes and the
#                   token check; its time to first byte, median of the 100
#                   (200 connections at once overflowed the listen backlog:
#                   1 s SYN retries measured the kernel, not streamhub)
# Variants: plain, tls, hs256, es256, rs256, tls+rs256.
# Environment: RUNS (default 3), DURATION (seconds, default 5), VARIANTS and
# FIGURES (subsets of the above),
# STREAMHUB_BIN, BENCH_BIN, OUT (default /tmp/security-bench.DATE).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STREAMHUB_BIN=${STREAMHUB_BIN:-$ROOT/target/release/streamhub}
BENCH_BIN=${BENCH_BIN:-$ROOT/target/release/streamhub-bench}
RUNS=${RUNS:-3}
DURATION=${DURATION:-5}
OUT=${OUT:-/tmp/security-bench.$(date +%Y%m%d-%H%M%S)}
VARIANTS=${VARIANTS:-"plain tls hs256 es256 rs256 tls+rs256"}
FIGURES=${FIGURES:-"grpc-message http-message grpc-connection"}
command -v h2load >/dev/null || { echo "security.sh: h2load is needed (apt-get install nghttp2-client)" >&2; exit 2; }
mkdir -p "$OUT"
cd "$OUT"

# Keys, a certificate and one token per key (user bench, every room).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj /CN=localhost -keyout tls-key.pem -out tls-cert.pem 2>/dev/null
head -c 48 /dev/urandom | base64 >secret
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 -out es.pem 2>/dev/null
openssl pkey -in es.pem -pubout -out es.pub
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rs.pem 2>/dev/null
openssl pkey -in rs.pem -pubout -out rs.pub
mint() { "$STREAMHUB_BIN" token "$@" --sub bench --publish '*' --subscribe '*' --ttl-secs 86400; }
echo "$(mint --secret-file secret)" >hs256.token
echo "$(mint --private-key-file es.pem)" >es256.token
echo "$(mint --private-key-file rs.pem)" >rs256.token
"$BENCH_BIN" grpc-body --out grpc.bin --size 100 >/dev/null
printf '{"room":"bench","user":"bench","content":"%0100d"}' 0 >http.json

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Flags of streamhub and the token file of a variant.
flags() {
  case $1 in
    plain) ;;
    tls) echo "--tls-cert tls-cert.pem --tls-key tls-key.pem" ;;
    hs256) echo "--auth required --auth-secret-file secret" ;;
    es256) echo "--auth required --auth-public-key-file es.pub" ;;
    rs256) echo "--auth required --auth-public-key-file rs.pub" ;;
    tls+rs256) echo "--tls-cert tls-cert.pem --tls-key tls-key.pem --auth required --auth-public-key-file rs.pub" ;;
  esac
}
token_of() { case $1 in *hs256) cat hs256.token ;; *es256) cat es256.token ;; *rs256) cat rs256.token ;; esac; }
scheme_of() { case $1 in tls*) echo https ;; *) echo http ;; esac; }

# One h2load run: variant, figure name, then h2load's own arguments.
measure() {
  local variant=$1 figure=$2 run=$3; shift 3
  local grpc http pid out="$figure-$variant-$run"
  grpc=$(free_port); http=$(free_port)
  # shellcheck disable=SC2046
  "$STREAMHUB_BIN" serve --grpc-addr "127.0.0.1:$grpc" --http-addr "127.0.0.1:$http" \
    --max-connections-per-address 0 $(flags "$variant") >"$out.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $http), 0.2)" 2>/dev/null && break
    sleep 0.05
  done
  local auth=() token
  token=$(token_of "$variant")
  [ -z "$token" ] || auth=(-H "authorization: Bearer $token")
  local scheme; scheme=$(scheme_of "$variant")
  case $figure in
    grpc-message) h2load -c 4 -m 16 -t 1 -D "$DURATION" --warm-up-time=1 -d grpc.bin \
        -H 'content-type: application/grpc' -H 'te: trailers' "${auth[@]}" \
        "$scheme://127.0.0.1:$grpc/chat.ChatService/SendMessage" >"$out.txt" 2>&1 || true ;;
    http-message) h2load --h1 -c 4 -m 1 -t 1 -D "$DURATION" --warm-up-time=1 -d http.json \
        -H 'content-type: application/json' "${auth[@]}" \
        "$scheme://127.0.0.1:$http/messages" >"$out.txt" 2>&1 || true ;;
    grpc-connection)
      : >"$out.txt"
      for _ in $(seq 100); do
        h2load -c 1 -n 1 -m 1 -t 1 -d grpc.bin \
          -H 'content-type: application/grpc' -H 'te: trailers' "${auth[@]}" \
          "$scheme://127.0.0.1:$grpc/chat.ChatService/SendMessage" 2>&1 \
          | grep -E 'time to 1st byte|succeeded' >>"$out.txt" || true
      done ;;
  esac
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  local rate ok
  if [ "$figure" = grpc-connection ]; then
    # Connections per second one client could open one after another:
    # 1 / the median time to first byte.
    rate=$(python3 -c '
import re, statistics, sys
ms = []
for line in open(sys.argv[1]):
    m = re.search(r"time to 1st byte:\s+([0-9.]+)(us|ms|s)\b", line)
    if m:
        ms.append(float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)])
print(f"{1000 / statistics.median(ms):.1f}" if ms else 0)' "$out.txt")
    ok=$(grep -cE ' 1 succeeded' "$out.txt" || true)
  else
    rate=$(grep -oE 'finished in [0-9.]+s, [0-9.]+ req/s' "$out.txt" | awk '{print $4}')
    ok=$(grep -oE '[0-9]+ succeeded' "$out.txt" | head -1 | awk '{print $1}')
  fi
  echo "{\"req_per_sec\": ${rate:-0}, \"succeeded\": ${ok:-0}}" >"$out.json"
  echo "$figure $variant run $run: ${rate:-?}/s (${ok:-0} succeeded)" >&2
}

for run in $(seq "$RUNS"); do
  for figure in $FIGURES; do
    for variant in $VARIANTS; do
      measure "$variant" "$figure" "$run"
    done
  done
done

python3 - "$OUT" "$VARIANTS" "$FIGURES" <<'EOF'
import glob, json, statistics, sys
out, variants, figures = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
print("| figure | " + " | ".join(variants) + " |")
print("|---|" + "---|" * len(variants))
for figure in figures:
    med = {}
    for v in variants:
        rates = [json.load(open(f))["req_per_sec"] for f in glob.glob(f"{out}/{figure}-{v}-*.json")]
        med[v] = statistics.median(rates) if rates else 0
    base = med.get("plain") or 0
    cells = [f"{med[v]:,.0f}/s" + (f" ({med[v] / base:.2f}x)" if base and v != "plain" else "") for v in variants]
    print(f"| {figure} | " + " | ".join(cells) + " |")
print(f"\nEvery run: {out}")
EOF
