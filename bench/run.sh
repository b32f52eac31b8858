#!/usr/bin/env bash
# Install what the benchmarks need (idempotently), then run them: `bash bench/run.sh [--quick] --out DIR`.
# Hermes with the bench extra in .venv (ops/bootstrap.sh), redis-server, and the sandbox image when a
# Docker engine is there (HERMES_BENCH_SKIP_IMAGES=1 skips that; container figures are then "not measured").
source "$(dirname "${BASH_SOURCE[0]}")/../ops/bootstrap.sh"
ensure_venv "bench"
if ! command -v redis-server >/dev/null 2>&1; then
  apt_install redis-server
fi
if [ "${HERMES_BENCH_SKIP_IMAGES:-0}" != "1" ] && command -v docker >/dev/null 2>&1; then
  PYTHON="$VENV/bin/python" bash "$HERMES_ROOT/ops/ensure-images.sh" || say "no sandbox image: container figures will be skipped"
fi
cd "$HERMES_ROOT"
# py-spy and the peers' CLIs live in the virtualenv's bin.
export PATH="$VENV/bin:$PATH"
exec "$VENV/bin/python" -m bench "$@"
