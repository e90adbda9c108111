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

.PHONY: all build release tools test-tools package-tools package test unit-check lint demo clean

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

test-tools: tools $(EMULATORS_STAMP) package-tools

# Debian tools the package build and the package, doctor and runbook tests
# need: dpkg-deb and dpkg-shlibdeps (dpkg-dev), lintian, faketime,
# systemd-analyze, curl. Installed from
# Debian's archive when missing and running as root; otherwise the missing
# ones are named and the target fails (the tests never skip).
DEB_TOOLS := dpkg-deb:dpkg-dev dpkg-shlibdeps:dpkg-dev lintian:lintian faketime:faketime systemd-analyze:systemd curl:curl

package-tools:
	@missing=""; for t in $(DEB_TOOLS); do \
		command -v $${t%%:*} >/dev/null 2>&1 || missing="$$missing $${t#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing from Debian's archive:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
		else \
			echo "missing packages:$$missing (sudo apt-get install$$missing)" >&2; exit 1; \
		fi; \
	fi

# The Debian package, built with dpkg-deb from the release binary:
# target/debian/chromaprod_VERSION_ARCH.deb (packaging/build-deb.sh).
package: release package-tools
	packaging/build-deb.sh

# The whole suite against real servers (the package test inspects, lints and
# installs the .deb built here), then the unit-file checks, clippy and rustfmt.
test: test-tools
	$(CARGO) build --all-targets
	$(MAKE) package
	@if command -v cargo-nextest >/dev/null 2>&1; then \
		$(CARGO) nextest run --no-fail-fast; \
	else \
		$(CARGO) test --no-fail-fast; \
	fi
	$(CARGO) test --doc
	$(MAKE) unit-check
	$(MAKE) lint

# systemd-analyze verify, and the exposure score held at 1.5 or lower.
unit-check: build
	MAX_EXPOSURE=1.5 scripts/check-unit.sh target/debug/chromaprod

lint:
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) fmt --check

demo: tools build
	scripts/demo.sh

clean:
	$(CARGO) clean
	rm -rf $(TOOLS)
