#!/usr/bin/env bash
# Install everything the tests need (idempotently) and run them. Extra arguments go to pytest.
# Needs: Python 3.11+, redis-server (a private instance is started by the tests themselves).
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
ensure_venv "test"
if ! command -v redis-server >/dev/null 2>&1; then
  apt_install redis-server
fi
cd "$HERMES_ROOT"
say "running the test suite"
exec "$VENV/bin/python" -m pytest "$@"
