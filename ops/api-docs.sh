#!/usr/bin/env bash
# The API reference, generated from the docstrings with pdoc (the `docs` extra, in `test` too):
# Hermes from Python (hermes_producer: normalize, Client, Cleaned) and the public Celery task's
# contract (hermes_worker.public). Usage: bash ops/api-docs.sh [OUT_DIR]   (default: docs/api)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/docs/api}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
cd "$ROOT"
# '!hermes_producer.' leaves out the package's modules: the CLI and the batch machinery are not API.
exec "$PYTHON" -m pdoc --docformat google --no-show-source -o "$OUT" hermes_producer '!hermes_producer.' hermes_worker.public
