#!/usr/bin/env bash
# The peers the conformance tests (tests/conformance.rs) measure streamhub's
# gRPC port with, built offline from Debian's Go packages (GOPATH mode, no
# module proxy):
#   h2spec          HTTP/2 conformance tester (source: shared/tools/h2spec)
#   seed-go-server  the seed's grpc-go ChatService server (shared/peers/seed-go)
#   seed-go-client  its client: one demo of each of the five RPC kinds
#
#   bench/peers.sh [OUT]      -> OUT/h2spec, OUT/seed-go-server, OUT/seed-go-client
#                                (OUT defaults to target/peers in the repository)
#
# Idempotent: a binary already in OUT is kept (delete it to rebuild). Installs
# golang-go and the Debian Go packages with apt-get when they are missing.
# shared/ is looked for in $STREAMHUB_SHARED, then beside the repository
# (../shared, as on a developer's machine and in CI), then /work/shared.
#
# h2spec: shared/tools/h2spec holds the library but not its cmd/h2spec main
# package, so shared/tools/build-h2spec.sh cannot build it; the small main
# below is written here instead. Its flags are h2spec's own short ones:
#   h2spec -h HOST -p PORT -o TIMEOUT_S [-j report.xml] [-S] [-v] [-t -k] [SPEC...]
# (flags first, then spec ids such as http2/6.5 or generic; -j writes JUnit XML).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/target/peers}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

SHARED=""
for d in "${STREAMHUB_SHARED:-}" "$ROOT/../shared" /work/shared; do
  if [ -n "$d" ] && [ -d "$d/tools/h2spec" ] && [ -d "$d/peers/seed-go" ]; then
    SHARED="$(cd "$d" && pwd)"
    break
  fi
done
if [ -z "$SHARED" ]; then
  echo "peers.sh: no shared/ with tools/h2spec and peers/seed-go (set STREAMHUB_SHARED)" >&2
  exit 1
fi

have_all=1
for b in h2spec seed-go-server seed-go-client; do
  [ -x "$OUT/$b" ] || have_all=0
done
if [ "$have_all" = 1 ]; then
  echo "peers: present in $OUT"
  exit 0
fi

# --- Debian packages, only those missing --------------------------------------
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
PKGS="golang-go golang-github-fatih-color-dev golang-golang-x-net-dev \
  golang-google-grpc-dev golang-google-protobuf-dev golang-goprotobuf-dev \
  protobuf-compiler libprotobuf-dev"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "peers: installing$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# The machine has 2 cores that a cargo build may be using too.
NICE="nice -n 10"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# --- h2spec ---------------------------------------------------------------------
if [ ! -x "$OUT/h2spec" ]; then
  echo "peers: building h2spec"
  src="$WORK/src/github.com/summerwind/h2spec"
  mkdir -p "$(dirname "$src")"
  cp -a "$SHARED/tools/h2spec" "$src"
  chmod -R u+w "$src"
  mkdir -p "$src/cmd/h2spec"
  cat >"$src/cmd/h2spec/main.go" <<'EOF'
// h2spec's command line (server spec only), over the library in this tree.
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/summerwind/h2spec"
	"github.com/summerwind/h2spec/config"
)

func main() {
	host := flag.String("h", "127.0.0.1", "target host")
	port := flag.Int("p", 0, "target port (default 80, or 443 with -t)")
	path := flag.String("P", "/", "target path")
	timeout := flag.Int("o", 2, "seconds before a test case times out")
	maxHeader := flag.Int("max-header-length", 4000, "maximum length of an HTTP header")
	junit := flag.String("j", "", "path of a JUnit XML report")
	strict := flag.Bool("S", false, "also run the strict (SHOULD) test cases")
	useTLS := flag.Bool("t", false, "connect over TLS")
	insecure := flag.Bool("k", false, "do not verify the server's certificate")
	ciphers := flag.String("c", "", "colon-separated TLS cipher names")
	verbose := flag.Bool("v", false, "verbose log")
	dryRun := flag.Bool("dryrun", false, "list the test cases only")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: %s [flags] [spec...]   (spec: http2, hpack, generic, http2/6.5, http2/6.5/1)\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if *port == 0 {
		*port = 80
		if *useTLS {
			*port = 443
		}
	}
	c := &config.Config{
		Host:         *host,
		Port:         *port,
		Path:         *path,
		Timeout:      time.Duration(*timeout) * time.Second,
		MaxHeaderLen: *maxHeader,
		JUnitReport:  *junit,
		Strict:       *strict,
		DryRun:       *dryRun,
		TLS:          *useTLS,
		Ciphers:      *ciphers,
		Insecure:     *insecure,
		Verbose:      *verbose,
		Sections:     flag.Args(),
	}
	ok, err := h2spec.Run(c)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if !ok {
		os.Exit(1)
	}
}
EOF
  (cd "$src" && GO111MODULE=off GOPROXY=off GOFLAGS= GOPATH="$WORK:/usr/share/gocode" \
    GOCACHE="$WORK/.cache" CGO_ENABLED=0 $NICE go build -o "$OUT/h2spec.tmp" ./cmd/h2spec)
  mv "$OUT/h2spec.tmp" "$OUT/h2spec"
fi

# --- the seed's Go server and client ----------------------------------------------
if [ ! -x "$OUT/seed-go-server" ] || [ ! -x "$OUT/seed-go-client" ]; then
  echo "peers: building seed-go-server and seed-go-client"
  PEER_BIN_DIR="$OUT" PEER_WORK_DIR="$WORK/seed-go" GOCACHE="$WORK/.cache" \
    bash "$SHARED/peers/seed-go/build.sh" >"$WORK/seed-go.log" 2>&1 || {
      cat "$WORK/seed-go.log" >&2
      exit 1
    }
fi

ls -l "$OUT/h2spec" "$OUT/seed-go-server" "$OUT/seed-go-client"
