#!/usr/bin/env bash
# Builds the root file systems of the Debian systems the booted-system tests
# (tests/suite/booted.rs) boot with systemd-nspawn, once, from Debian's
# archive, idempotently:
#   .tools/debian/SUITE/    a minimal Debian SUITE (bookworm, trixie) with
#                           systemd as PID 1 and dbus; nothing else
# Usage: scripts/install-debian-root.sh [SUITE...]   (default: bookworm trixie)
#
# debootstrap --variant=minbase plus systemd, systemd-sysv and dbus: about 45
# MB of packages. Downloads are kept in .tools/debian/cache, so a rebuilt root
# (a new include list) downloads only what changed. A root is built in a
# temporary directory and renamed into place when complete, so an interrupted
# run leaves no half root behind; the stamp file names the include list it
# was built with. Needs root (debootstrap); `make test` installs debootstrap
# and systemd-nspawn (systemd-container).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${TOOLS:-$ROOT/.tools}"
DEST="$TOOLS/debian"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
INCLUDE="systemd,systemd-sysv,dbus,sudo"
[ "$#" -gt 0 ] || set -- bookworm trixie

command -v debootstrap >/dev/null || { echo "install-debian-root: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "install-debian-root: debootstrap needs root" >&2; exit 1; }
mkdir -p "$DEST/cache"

for suite in "$@"; do
    stamp="$DEST/$suite.built"
    want="minbase $INCLUDE"
    if [ -d "$DEST/$suite" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        continue
    fi
    rm -rf "$DEST/$suite" "$DEST/$suite.tmp" "$stamp"
    started=$(date +%s)
    debootstrap --variant=minbase --include="$INCLUDE" --cache-dir="$DEST/cache" \
        "$suite" "$DEST/$suite.tmp" "$MIRROR" >"$DEST/$suite.log" 2>&1 ||
        { tail -30 "$DEST/$suite.log" >&2; echo "install-debian-root: debootstrap $suite failed (log: $DEST/$suite.log)" >&2; exit 1; }
    r="$DEST/$suite.tmp"
    # The container gets a machine id at each boot; no package lists or
    # downloaded packages are kept in the root.
    : >"$r/etc/machine-id"
    rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin
    mv "$r" "$DEST/$suite"
    echo "$want" >"$stamp"
    echo "install-debian-root: $suite in $DEST/$suite ($(($(date +%s) - started)) s)"
done
