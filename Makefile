# basalt: the two commands a fresh machine needs are `make run` and `make test`.
CARGO ?= cargo
BASALTCTL := target/debug/basaltctl
OUT := hack/out

.PHONY: all build run test e2e deps bench fuzz check fmt fmt-check clippy lint clean

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

# Release build, one node on loopback against its peers (nginx in front of the same machined,
# cfssl signing like trustd; both installed from Debian if missing), load from hack/loadgen and
# hack/signbench; writes docs/BENCHMARKS.md and docs/bench/*.json in under 10 minutes. Never part
# of `make test`.
bench:
	bash hack/bench.sh

# libFuzzer (cargo-fuzz) on the parsers of untrusted input, FUZZ_SECONDS each (default 30).
# Never part of `make test`. Uses the nightly toolchain when rustup has one, else stable with
# RUSTC_BOOTSTRAP=1 (cargo-fuzz needs -Z flags). Builds under target/fuzz; a crash leaves its
# input in fuzz/artifacts/<target>/ and fails the run (turn it into a regression test).
# fuzz/seeds/ holds small valid inputs (no key material); fuzz/corpus/ grows locally.
FUZZ_SECONDS ?= 30
FUZZ_TARGETS ?= csr_policy cert_identity machine_config client_config fanout_splice
FUZZ_TOOLCHAIN := $(shell rustup toolchain list 2>/dev/null | grep -q '^nightly' && echo +nightly)
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install --locked cargo-fuzz
	cd fuzz && for target in $(FUZZ_TARGETS); do \
		mkdir -p corpus/$$target && \
		RUSTC_BOOTSTRAP=1 cargo $(FUZZ_TOOLCHAIN) fuzz run $$target -O \
			--target-dir=$(CURDIR)/target/fuzz corpus/$$target seeds/$$target -- \
			-max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 || exit 1; \
	done

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
