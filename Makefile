# basalt: the two commands a fresh machine needs are `make run` and `make test`.
CARGO ?= cargo
BASALTCTL := target/debug/basaltctl
OUT := hack/out

.PHONY: all build run test check fmt fmt-check clippy lint clean

all: build

build:
	$(CARGO) build --workspace --all-targets

# What exists at this stage: generate secrets, node configs and an admin client config
# into hack/out, then show what the client config holds.
run:
	$(CARGO) build -p basaltctl
	mkdir -p $(OUT)
	$(BASALTCTL) gen secrets -o $(OUT)/secrets.yaml --force
	$(BASALTCTL) gen config dev 127.0.0.1 --with-secrets $(OUT)/secrets.yaml -o $(OUT) --force
	$(BASALTCTL) --config $(OUT)/basaltconfig config info
	@echo
	@echo "Try: $(BASALTCTL) --config $(OUT)/basaltconfig config contexts"
	@echo "     $(BASALTCTL) gen client-config --with-secrets $(OUT)/secrets.yaml --roles os:reader --cert-ttl 24h -o $(OUT)/reader.config"

test:
	$(CARGO) test --workspace --all-targets --no-fail-fast

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
