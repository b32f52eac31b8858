#!/usr/bin/env bash
# Install everything the tests need (idempotently) and run them. Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
ensure_venv "test"
cd "$HERMES_ROOT"
say "running the test suite"
exec "$VENV/bin/python" -m pytest "$@"
