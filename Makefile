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

$(CHROMA_BIN): scripts/install-chroma.sh
	CHROMA_VERSION=$(CHROMA_VERSION) PYTHON=$(PYTHON) scripts/install-chroma.sh

# Test-only tools: object-store emulators (moto, Azurite, fake-gcs-server).
EMULATORS_STAMP := $(TOOLS)/.emulators-installed

$(EMULATORS_STAMP): scripts/install-emulators.sh
	scripts/install-emulators.sh
	touch $@

tools: $(CHROMA_BIN)

test-tools: tools $(EMULATORS_STAMP) package-tools

# Debian tools the package build and the package, doctor and runbook tests
# need: dpkg-deb and dpkg-shlibdeps (dpkg-dev), lintian, faketime,
# systemd-analyze, curl, objcopy (binutils), and for the booted-system tests
# debootstrap and systemd-nspawn (systemd-container). Installed from
# Debian's archive when missing and running as root; otherwise the missing
# ones are named and the target fails (the tests never skip).
DEB_TOOLS := dpkg-deb:dpkg-dev dpkg-shlibdeps:dpkg-dev lintian:lintian faketime:faketime systemd-analyze:systemd curl:curl objcopy:binutils debootstrap:debootstrap systemd-nspawn:systemd-container

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

# The whole check. The suite spends most of its time waiting on servers,
# processes and timers, so everything that does not feed it runs beside it:
# - Chroma and the emulators install (mostly download) while the debug
#   build compiles (log: $(TOOLS_LOG));
# - the Debian roots the booted-system tests boot (tests/suite/booted.rs,
#   scripts/install-debian-root.sh; built once into .tools/debian, log:
#   $(ROOTS_LOG)) download and install beside the build too;
# - the doc tests and rustfmt start at once at the lowest priority, so they
#   take the cores only when the build and the suite leave them idle (log:
#   $(SIDE_LOG), printed once they end). They run in a session of their own
#   (one signal stops them all), and where the kernel groups a session's
#   processes for scheduling (autogroup) a nice value alone would not hold
#   them back against the other group: the group's own nice value is set too;
# - the test .deb is packed from the stripped debug binary (gzip -1, a few
#   seconds) right after the build: the release build is not part of
#   `make test` (`make package` makes the release .deb). The package and
#   booted-system tests then run beside the suite, niced (log: $(PKG_LOG));
# - clippy lints as the debug build compiles ($(LINTED_BUILD)).
# Every check runs even when an earlier one fails; the target fails if any
# did, naming them. (The recipe names no $$(MAKE), so `make -n test` stays a
# dry run.)
SIDE_LOG  := target/make-test-side.log
TOOLS_LOG := target/make-test-tools.log
ROOTS_LOG := target/make-test-debian.log
ROOTS_RC  := target/.make-test-debian-rc
PKG_LOG   := target/make-test-package.log
TEST_DEB_DIR := target/debian-test
# The tests that need the .deb (and the Debian roots).
PACKAGED   := test(/^package::/) | test(/^booted::/)

# $(call suite,NEXTEST-FILTERSET,CARGO-TEST-ARGS): part of the suite, under
# nextest (each test in its own process) when installed, else cargo test.
suite = { if command -v cargo-nextest >/dev/null 2>&1; then $(CARGO) nextest run --no-fail-fast -E '$(1)'; else $(CARGO) test --no-fail-fast $(2); fi; }

# The integration tests stay one crate (tests/suite/main.rs): a new
# tests/NAME.rs would be another binary to compile and link.
ONE_TEST_CRATE = { test -z "$$(ls tests/*.rs 2>/dev/null)" || { echo "$$(ls tests/*.rs): integration tests are modules of tests/suite (see tests/suite/main.rs)" >&2; false; }; }
CLIPPY    = $(CARGO) clippy --all-targets -- -D warnings
# `make test` lints while it builds: cargo runs clippy-driver, a rustc that
# also lints, on this workspace's crates (dependencies build as usual), and
# CLIPPY_ARGS is how `cargo clippy` passes it `-D warnings`. One compile
# instead of a build and a separate check of every crate; the release build
# stays plain rustc.
LINTED_BUILD = RUSTC_WORKSPACE_WRAPPER=clippy-driver CLIPPY_ARGS=-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__
# `make test` is CI's build from a clean clone, which incremental
# compilation does not speed up: without it, target/debug is 1.4 GB
# smaller. (Re-running `make test` after an edit recompiles chromaprod's
# crates whole; `cargo build` and `cargo nextest run` stay incremental.)
ONE_SHOT_BUILD = CARGO_INCREMENTAL=0
# Nothing below the daemon imports it; no source file past 600 lines.
ARCHITECTURE = scripts/check-architecture.sh
UNIT_CHECK = MAX_EXPOSURE=1.5 scripts/check-unit.sh target/debug/chromaprod

test: package-tools
	@mkdir -p target $(TEST_DEB_DIR); rm -f $(ROOTS_RC); \
	echo "make test: Chroma, the emulators and the Debian roots install beside the build (logs: $(TOOLS_LOG), $(ROOTS_LOG));"; \
	echo "           doc tests and rustfmt run beside the suite (log: $(SIDE_LOG)), the package and booted tests too ($(PKG_LOG))"; \
	{ CHROMA_VERSION=$(CHROMA_VERSION) PYTHON=$(PYTHON) scripts/install-chroma.sh && \
		PYTHON=$(PYTHON) scripts/install-emulators.sh && touch $(EMULATORS_STAMP); } > $(TOOLS_LOG) 2>&1 & tools=$$!; \
	{ scripts/install-debian-root.sh; echo $$? > $(ROOTS_RC); } > $(ROOTS_LOG) 2>&1 & roots=$$!; \
	export $(LINTED_BUILD) $(ONE_SHOT_BUILD) DEB_COMPRESSION=gzip DEB_COMPRESSION_LEVEL=1; \
	nice -n 19 setsid sh -xc 'echo 19 > /proc/self/autogroup 2>/dev/null || true; \
		rc=0; $(CARGO) test --doc || rc=1; $(ONE_TEST_CRATE) || rc=1; $(ARCHITECTURE) || rc=1; \
		$(CARGO) fmt --check || rc=1; exit $$rc' > $(SIDE_LOG) 2>&1 & side=$$!; \
	trap 'kill $$tools $$roots $$pkg 2>/dev/null; kill -TERM -$$side 2>/dev/null; exit 130' INT TERM HUP; \
	failed=""; pkg=""; \
	$(CARGO) build --all-targets || failed="$$failed build/clippy"; \
	if ! wait $$tools; then cat $(TOOLS_LOG); failed="$$failed tools"; fi; \
	if [ -z "$$failed" ]; then \
		objcopy --strip-all target/debug/chromaprod $(TEST_DEB_DIR)/chromaprod && \
		CHROMAPROD_BIN=$(TEST_DEB_DIR)/chromaprod DEB_OUT_DIR=$(TEST_DEB_DIR) packaging/build-deb.sh > $(TEST_DEB_DIR)/build-deb.log 2>&1 && \
		CHROMAPROD_DEB=$$(tail -1 $(TEST_DEB_DIR)/build-deb.log) || { cat $(TEST_DEB_DIR)/build-deb.log; failed="$$failed package"; }; \
		export CHROMAPROD_DEB; \
		{ while [ ! -s $(ROOTS_RC) ] && kill -0 $$roots 2>/dev/null; do sleep 1; done; \
			[ "$$(cat $(ROOTS_RC) 2>/dev/null)" = 0 ] || cat $(ROOTS_LOG); \
			renice -n 10 -p $$(sh -c 'echo $$PPID') >/dev/null; \
			$(call suite,$(PACKAGED),--test suite -- package:: booted::); } > $(PKG_LOG) 2>&1 & pkg=$$!; \
		$(call suite,not ($(PACKAGED)),-- --skip package:: --skip booted::) || failed="$$failed suite"; \
		wait $$pkg || failed="$$failed package-tests"; \
		echo "--- $(PKG_LOG)"; cat $(PKG_LOG); echo "---"; \
	fi; \
	wait $$side || failed="$$failed doc-tests/lint"; \
	echo "--- $(SIDE_LOG)"; cat $(SIDE_LOG); echo "---"; \
	$(UNIT_CHECK) || failed="$$failed unit-check"; \
	if [ -n "$$failed" ]; then echo "make test failed:$$failed (see above)" >&2; exit 1; fi; \
	echo "make test: all checks passed"

# systemd-analyze verify, and the exposure score held at 1.5 or lower.
unit-check: build
	$(UNIT_CHECK)

lint:
	@$(ONE_TEST_CRATE)
	$(ARCHITECTURE)
	$(CLIPPY)
	$(CARGO) fmt --check

demo: tools build
	scripts/demo.sh

clean:
	$(CARGO) clean
	rm -rf $(TOOLS)
