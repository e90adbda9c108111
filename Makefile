# chromaprod — the two commands: `make demo` and `make test`.
#
# Everything a run needs is installed here from package registries: the Chroma
# server (the `chroma` binary in the chromadb wheel) into a virtual environment
# under .tools/, and later the object-store emulators.

CHROMA_VERSION ?= 1.5.9
TOOLS          := $(CURDIR)/.tools
VENV           := $(TOOLS)/venv
PYTHON         ?= python3
export CHROMA_BIN := $(VENV)/bin/chroma
CARGO          ?= cargo

.PHONY: all build release tools test-tools test unit-check lint demo clean

all: build

build:
	$(CARGO) build

release:
	$(CARGO) build --release

$(CHROMA_BIN):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check "chromadb==$(CHROMA_VERSION)"
	@test -x $(CHROMA_BIN) || { echo "chromadb wheel did not provide $(CHROMA_BIN)"; exit 1; }

# Test-only tools: object-store emulators (moto, Azurite, fake-gcs-server).
EMULATORS_STAMP := $(TOOLS)/.emulators-installed

$(EMULATORS_STAMP): scripts/install-emulators.sh
	scripts/install-emulators.sh
	touch $@

tools: $(CHROMA_BIN)

test-tools: tools $(EMULATORS_STAMP)

# The whole suite against real servers, then the unit-file checks, clippy and rustfmt.
test: test-tools
	$(CARGO) build --all-targets
	@if command -v cargo-nextest >/dev/null 2>&1; then \
		$(CARGO) nextest run --no-fail-fast; \
	else \
		$(CARGO) test --no-fail-fast; \
	fi
	$(CARGO) test --doc
	$(MAKE) unit-check
	$(MAKE) lint

unit-check: build
	scripts/check-unit.sh target/debug/chromaprod

lint:
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) fmt --check

demo: tools build
	scripts/demo.sh

clean:
	$(CARGO) clean
	rm -rf $(TOOLS)
