# basalt: the two commands a fresh machine needs are `make run` and `make test`.
CARGO ?= cargo
BASALTCTL := target/debug/basaltctl
OUT := hack/out

.PHONY: all build run test e2e deps bench check fmt fmt-check clippy lint clean

all: build

build:
	$(CARGO) build --workspace --all-targets

# A one-node cluster on this machine: machined (detached, state in hack/out/dev) runs apid on
# 127.0.0.1:50000 (or a free loopback address if that is taken). A previous `dev` is destroyed
# first. The context "dev" is merged into the client config ($$BASALTCONFIG or ~/.basalt/config).
DEV_STATE := $(OUT)/dev
run:
	$(CARGO) build --workspace --bins
	@$(BASALTCTL) cluster destroy --name dev --state $(DEV_STATE) >/dev/null 2>&1 || true
	$(BASALTCTL) cluster create --name dev --state $(DEV_STATE)
	$(BASALTCTL) --context dev version
	$(BASALTCTL) --context dev memory
	@echo
	@echo "Talk to it:  $(BASALTCTL) --context dev processes | mounts | loadavg | stats | hostname"
	@echo "             (add -o json or -o yaml; -n NODE,... targets nodes through apid)"
	@echo "Destroy it:  $(BASALTCTL) cluster destroy --name dev --state $(DEV_STATE)"

test:
	$(CARGO) test --workspace --all-targets --no-fail-fast

# Only the end-to-end tests (tests/, real machined + apid processes). The binaries are built
# first so the scenarios never run a stale daemon.
e2e:
	$(CARGO) build -p machined -p apid -p basaltctl
	$(CARGO) test -p basalt-e2e

# What the tests need beyond cargo: the openssl binary (handshake tests) and Python grpcio +
# grpcio-tools (the foreign-client test, tests/tests/python_interop.rs).
deps:
	command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl; }
	python3 -m pip install --quiet --disable-pip-version-check grpcio grpcio-tools

# Release build, one node on loopback, load from hack/loadgen; writes docs/BENCHMARKS.md and
# docs/bench/*.json. Never part of `make test`.
bench:
	bash hack/bench.sh

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

lint: fmt-check clippy

check: lint test

clean:
	$(CARGO) clean
	rm -rf $(OUT)
