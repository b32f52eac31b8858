#!/usr/bin/env bash
# Make sure the sandbox image exists, with no registry: the base image via ops/build-base-image.sh
# (debootstrap + docker import), then the sandbox image on it via `hermes image build`, which
# reuses an image whose content-hash tag already exists. Idempotent.
# Usage: ops/ensure-images.sh [BASE]   (default BASE: hermes-base:bookworm; PYTHON: the interpreter
#        that has Hermes installed, default the project's .venv, else python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE="${1:-hermes-base:bookworm}"
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON="python3"; fi
fi

bash "$ROOT/ops/ensure-docker.sh"
bash "$ROOT/ops/build-base-image.sh" "$BASE"
cd "$ROOT"
"$PYTHON" -m hermes_producer image build --base "$BASE"
