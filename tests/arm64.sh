#!/usr/bin/env bash
# Runs the ARM64 streamhub under qemu-aarch64 and checks serve, send,
# subscribe and an SSE stream end to end, with the host binary as client.
# Usage: tests/arm64.sh ARM64_BINARY HOST_BINARY
set -euo pipefail
arm=$1 host=$2
qemu=$(command -v qemu-aarch64-static || command -v qemu-aarch64)
work=$(mktemp -d)
trap 'kill $server $sub $sse 2>/dev/null || true; rm -rf "$work"' EXIT
server= sub= sse=

pick_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
grpc_port=$(pick_port) http_port=$(pick_port)

"$qemu" -L /usr/aarch64-linux-gnu "$arm" serve \
  --grpc-addr 127.0.0.1:$grpc_port --http-addr 127.0.0.1:$http_port 2>"$work/server.log" &
server=$!
for _ in $(seq 1 300); do
  curl -fsS -m 1 "http://127.0.0.1:$http_port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS -m 2 "http://127.0.0.1:$http_port/healthz" >/dev/null || { echo "FAIL: ARM64 server did not come up"; cat "$work/server.log"; exit 1; }

timeout 30 "$host" subscribe --server 127.0.0.1:$grpc_port --room arm --user "" >"$work/sub.out" &
sub=$!
timeout 30 curl -sN -m 30 "http://127.0.0.1:$http_port/events?room=arm" >"$work/sse.out" &
sse=$!
for _ in $(seq 1 100); do
  grep -q "Welcome" "$work/sub.out" 2>/dev/null && grep -q ": connected" "$work/sse.out" 2>/dev/null && break
  sleep 0.1
done
id=$(timeout 20 "$host" send --server 127.0.0.1:$grpc_port --room arm --user pi "hello from arm64" | awk '{print $2}')
for _ in $(seq 1 100); do
  grep -q "hello from arm64" "$work/sub.out" && grep -q "hello from arm64" "$work/sse.out" && break
  sleep 0.1
done
grep -q "$id" "$work/sub.out" || { echo "FAIL: gRPC subscriber missed $id"; cat "$work/sub.out"; exit 1; }
grep -q "hello from arm64" "$work/sse.out" || { echo "FAIL: SSE stream missed the message"; cat "$work/sse.out"; exit 1; }
kill -TERM $server
wait $server && echo "PASS: ARM64 binary served gRPC send/subscribe and SSE under qemu, and exited 0 on SIGTERM"
