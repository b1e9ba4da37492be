# streamhub: the README's two commands are `make run` and `make test`.
# Both work on a fresh Debian machine: they install what the build needs
# (a C compiler, for ring's C and assembly) when it is missing.

CARGO ?= cargo
PREFIX ?= /usr/local
DESTDIR ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
VENV := .venv
BIN := target/release/streamhub
BENCH_BIN := target/release/streamhub-bench

.PHONY: run test build deps test-deps apt-install py-deps fmt clippy install uninstall bench bench-sse

# ring (rustls's crypto) compiles C and assembly. Installed only when missing.
deps:
	@$(MAKE) -s apt-install PKGS="$$(command -v cc >/dev/null 2>&1 || echo gcc)"

# The tests also use curl, a Python venv (for Python's grpcio), Chromium,
# openssl (certificates for the TLS tests), Node, npm and protoc (the
# browser test bundles Connect-ES, a real gRPC-Web client, from npm) and
# redis-server (the cluster tests start their own on a unix socket).
test-deps:
	@$(MAKE) -s apt-install PKGS="$$(command -v curl >/dev/null 2>&1 || echo curl) \
		$$(command -v openssl >/dev/null 2>&1 || echo openssl) \
		$$(command -v redis-server >/dev/null 2>&1 || echo redis-server) \
		$$(python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || echo python3-venv) \
		$$(command -v chromium >/dev/null 2>&1 || echo chromium) \
		$$(command -v node >/dev/null 2>&1 || echo nodejs) \
		$$(command -v npm >/dev/null 2>&1 || echo npm) \
		$$(command -v protoc >/dev/null 2>&1 || echo protobuf-compiler)"

apt-install:
	@pkgs="$$(echo $(PKGS))"; if [ -n "$$pkgs" ]; then \
		echo "installing: $$pkgs"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$pkgs >/dev/null; \
	fi

build: deps
	$(CARGO) build --release

run: build
	$(BIN) serve

# Python's grpcio client proves that a client nobody here wrote works.
$(VENV)/.ready: tests/py/requirements.txt | test-deps
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -r tests/py/requirements.txt
	touch $@

py-deps: $(VENV)/.ready

# The browser tests (headless Chromium: EventSource, Connect-ES over
# gRPC-Web, the built-in page) must run here, not skip.
# One test at a time: several tests bound latencies, which a second test
# hammering the same 2 cores would blur.
test: deps test-deps py-deps peers
	STREAMHUB_REQUIRE_BROWSER=1 $(CARGO) test --release --workspace -- --test-threads=1

fmt:
	$(CARGO) fmt --all --check

clippy:
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

# Installs the binary, the systemd unit and the settings file. Honours
# PREFIX (default /usr/local) and DESTDIR. An existing settings file is kept.
UNITDIR ?= /etc/systemd/system
ENVFILE ?= /etc/default/streamhub
install: build
	install -Dm755 $(BIN) $(DESTDIR)$(PREFIX)/bin/streamhub
	install -d $(DESTDIR)$(UNITDIR)
	sed -e 's#/usr/local/bin/streamhub#$(PREFIX)/bin/streamhub#' \
	    -e 's#/usr/local/share/doc#$(PREFIX)/share/doc#' \
	    systemd/streamhub.service > $(DESTDIR)$(UNITDIR)/streamhub.service
	chmod 644 $(DESTDIR)$(UNITDIR)/streamhub.service
	[ -e $(DESTDIR)$(ENVFILE) ] || install -Dm644 systemd/streamhub.env $(DESTDIR)$(ENVFILE)
	install -Dm644 README.md $(DESTDIR)$(PREFIX)/share/doc/streamhub/README.md
	@echo "installed; now: sudo systemctl daemon-reload && sudo systemctl enable --now streamhub"

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/streamhub $(DESTDIR)$(UNITDIR)/streamhub.service \
	      $(DESTDIR)$(ENVFILE) $(DESTDIR)$(PREFIX)/share/doc/streamhub/README.md
	-rmdir $(DESTDIR)$(PREFIX)/share/doc/streamhub 2>/dev/null

# ARM64: cross-build with Debian's aarch64 toolchain (ring's C goes through
# the CC variable), then run the binary under
# qemu-user. Skips with a clear message where the rustup target cannot be
# installed.
ARM64 := aarch64-unknown-linux-gnu
ARM64_BIN := target/$(ARM64)/release/streamhub
ARM64_ENV := CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
	CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
	AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar

.PHONY: cross-arm64 test-arm64 arm64-deps
arm64-deps: deps
	@command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 && command -v qemu-aarch64-static >/dev/null 2>&1 || { \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq gcc-aarch64-linux-gnu qemu-user-static >/dev/null; }

cross-arm64: arm64-deps
	@if ! rustup target list --installed 2>/dev/null | grep -qx $(ARM64) && \
	    ! rustup target add $(ARM64); then \
		echo "SKIPPED cross-arm64: the rustup target $(ARM64) cannot be installed on this machine"; \
		exit 0; \
	fi; \
	$(ARM64_ENV) $(CARGO) build --release --target $(ARM64) && \
	ls -l $(ARM64_BIN) && file $(ARM64_BIN) 2>/dev/null || true

test-arm64: cross-arm64 build
	@if [ ! -x $(ARM64_BIN) ]; then echo "SKIPPED test-arm64: no ARM64 binary (see cross-arm64 above)"; exit 0; fi; \
	tests/arm64.sh $(ARM64_BIN) $(BIN)

# Stress and churn at the sizes of issue 5: 2,000 SSE and 200 gRPC
# subscribers in one room, 5,000 connect/disconnect cycles of each kind,
# 8,192 cases per property. Client and server share this process, so it
# needs about 5,000 file descriptors: 'ulimit -n 65536' first if lower (the
# test scales down, saying so, when the limit is short).
.PHONY: stress bench
stress: deps
	STREAMHUB_STRESS=long $(CARGO) test --release --test tests stress:: -- --test-threads=1

# SSE fan-out side by side with nginx+nchan and the prototype: fresh server
# per figure, 3 runs interleaved, medians (bench/README.md; nchan comes from
# apt-get when missing). BENCH_SSE_ARGS passes options, e.g. "--rate 400".
bench-sse: build
	$(CARGO) build --release -p streamhub-tools
	bench/sse-fanout.sh $(BENCH_SSE_ARGS)

# A short run of every bench scenario against a local server started here
# (BENCHMARKS.md has the careful method and the figures). The idle-stream
# holds come first, on the fresh server.
BENCH_GRPC ?= 127.0.0.1:50151
BENCH_HTTP ?= 127.0.0.1:18151
bench: build
	$(CARGO) build --release -p streamhub-tools
	@$(BIN) serve --grpc-addr $(BENCH_GRPC) --http-addr $(BENCH_HTTP) \
		--max-grpc-streams 20000 --max-sse-clients 20000 --max-http-connections 30000 \
		>/dev/null 2>&1 & pid=$$!; \
	trap "kill $$pid" EXIT; \
	for i in $$(seq 100); do curl -sf http://$(BENCH_HTTP)/healthz >/dev/null && break; sleep 0.1; done; \
	set -e; \
	$(BENCH_BIN) startup --runs 5; \
	$(BENCH_BIN) hold --protocol sse --sse-url 'http://$(BENCH_HTTP)/events?room={room}' --streams 1000 --duration-secs 2 --server-pid $$pid; \
	$(BENCH_BIN) hold --protocol grpc --server $(BENCH_GRPC) --streams 1000 --duration-secs 2 --server-pid $$pid; \
	$(BENCH_BIN) unary --server $(BENCH_GRPC) --duration-secs 5; \
	$(BENCH_BIN) fanout --protocol grpc --server $(BENCH_GRPC) --subscribers 1000 --publishers 4 --duration-secs 5; \
	$(BENCH_BIN) fanout --protocol sse --server $(BENCH_GRPC) --sse-url 'http://$(BENCH_HTTP)/events?room={room}' --subscribers 1000 --publishers 4 --duration-secs 5

# The HTTP/2 peers tests/conformance.rs judges the gRPC port with: h2spec and
# the seed's grpc-go server and client, built offline from Debian's Go
# packages into target/peers (kept when present; the tests build them too
# when missing). Installs golang-go and the Go packages when missing.
.PHONY: peers
peers:
	bench/peers.sh target/peers
