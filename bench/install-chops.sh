#!/usr/bin/env bash
# Installs chromadb-ops (`chops`) into its own virtual environment,
# .tools/chops, for the comparison in `cargo bench --bench backup`.
#
# chromadb-ops 0.1.5 imports chromadb (pinned here to the server's version)
# and pins typer 0.9, which crashes on click >= 8.2 whenever it prints help
# or a usage message (`TyperArgument.make_metavar() takes 1 positional
# argument but 2 were given`), so click is held below 8.2.
set -euo pipefail
cd "$(dirname "$0")/.."
CHROMA_VERSION=${CHROMA_VERSION:-1.5.9}
PYTHON=${PYTHON:-python3}
"$PYTHON" -m venv .tools/chops
.tools/chops/bin/pip install --quiet --disable-pip-version-check \
    chromadb-ops "chromadb==$CHROMA_VERSION" "click<8.2"
.tools/chops/bin/chops collection snapshot --help >/dev/null
echo "chops installed: $(pwd)/.tools/chops/bin/chops"
