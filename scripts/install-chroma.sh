#!/usr/bin/env bash
# Installs the Chroma server the tests and the demo run (the `chroma` binary
# of the chromadb wheel) into a virtual environment, idempotently:
#   .tools/venv/bin/chroma    (PyPI, chromadb==$CHROMA_VERSION)
# Usage: CHROMA_VERSION=1.5.9 scripts/install-chroma.sh   (PYTHON=python3.11 to pick another interpreter)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${TOOLS:-$ROOT/.tools}"
VENV="$TOOLS/venv"
PYTHON="${PYTHON:-python3}"
: "${CHROMA_VERSION:?set CHROMA_VERSION (the Makefile pins it)}"

if [ -x "$VENV/bin/chroma" ]; then
    exit 0
fi
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "chromadb==$CHROMA_VERSION"
test -x "$VENV/bin/chroma" || { echo "chromadb wheel did not provide $VENV/bin/chroma" >&2; exit 1; }
