#!/usr/bin/env bash
# Stand-ins for the public images compose.yaml starts from, for a Docker host with no registry:
# built from Debian's packages (debootstrap, ops/build-base-image.sh) and the repository, with no
# network during any image build. Prints the .env lines that make compose.yaml use them (and build
# the worker image with no network).
#
#   hermes-standin/python:3.11-bookworm   for python:3.11-slim (the worker image's and the sandbox's base)
#   hermes-standin/redis:7-bookworm       for redis:7.2-alpine (Debian's redis-server 7.0)
#   hermes-standin/socket-proxy:1.12      for wollomatic/socket-proxy:1.12.2 (ops/standins/socket-proxy/)
#
# It also fills ops/worker/wheels/ with the wheels locked in ops/worker/requirements*.txt (pip on
# this host downloads them; the image build checks every hash), so the worker image builds with
# no index either. Idempotent: an existing Debian root is kept unless HERMES_REBUILD_BASE=1.
# Usage: ops/compose-images.sh        (PYTHON: the interpreter whose pip downloads, default python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
say() { printf '==> %s\n' "$*" >&2; }

PY_IMAGE=hermes-standin/python:3.11-bookworm
REDIS_IMAGE=hermes-standin/redis:7-bookworm
PROXY_IMAGE=hermes-standin/socket-proxy:1.12

bash "$ROOT/ops/ensure-docker.sh"

standin() {
  # $1: the tag, $2: the folder under ops/standins/ with its Dockerfile, $3: its base image.
  # Always built: its files are the repository's, and the layer cache makes an unchanged one instant.
  say "building $1 from $3 (no network)"
  local log
  log="$(mktemp)"
  if ! docker build --network none --pull=false --label org.opencontainers.image.vendor=hermes-standin \
      --build-arg "BASE=$3" -t "$1" "$ROOT/ops/standins/$2" >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
}

# Debian roots: python3 alone (also the sandbox's offline base), Python with venv, Redis.
bash "$ROOT/ops/build-base-image.sh" hermes-base:bookworm
HERMES_BASE_PACKAGES="python3 python3-venv python-is-python3" \
  bash "$ROOT/ops/build-base-image.sh" hermes-base:bookworm-python
HERMES_BASE_PACKAGES="redis-server" bash "$ROOT/ops/build-base-image.sh" hermes-base:bookworm-redis

standin "$PY_IMAGE" python hermes-base:bookworm-python
standin "$REDIS_IMAGE" redis hermes-base:bookworm-redis
standin "$PROXY_IMAGE" socket-proxy hermes-base:bookworm

# The worker image's wheels, exactly those locked (hashes), for CPython 3.11 on this machine.
WHEELS="$ROOT/ops/worker/wheels"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --require-hashes --python-version 3.11 --implementation cp --platform manylinux2014_x86_64 \
    --platform "manylinux_2_17_$(uname -m)" --platform "manylinux_2_28_$(uname -m)" \
    -r "$ROOT/ops/worker/requirements.txt" -r "$ROOT/ops/worker/requirements-build.txt" -d "$WHEELS" >"$log" 2>&1; then
  grep -v '^WARNING: Location' "$log" | tail -n 20 >&2
  echo "ops/compose-images.sh: could not download the locked wheels into $WHEELS (pip needs an index or" >&2
  echo "  a mirror: PIP_INDEX_URL); without them the worker image's build needs network" >&2
  exit 1
fi

say "stand-ins ready; compose.yaml uses them with these lines in .env:"
cat <<EOF
HERMES_PYTHON_IMAGE=$PY_IMAGE
HERMES_SANDBOX_BASE=$PY_IMAGE
HERMES_REDIS_IMAGE=$REDIS_IMAGE
HERMES_DOCKER_PROXY_IMAGE=$PROXY_IMAGE
HERMES_BUILD_NETWORK=none
EOF
