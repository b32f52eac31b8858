#!/usr/bin/env bash
# Install everything the tests need (idempotently) and run them. Extra arguments go to pytest.
# Needs: Python 3.11+, redis-server and redis-sentinel (the tests start private instances), a Docker engine and
# the sandbox image (built offline: debootstrap + docker import, then `hermes image build`).
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
ensure_venv "test"
if ! command -v redis-server >/dev/null 2>&1; then
  apt_install redis-server
fi
# Debian's Sentinel: the failover scenarios start a group of their own (tests/test_chaos_sentinel.py).
if ! command -v redis-sentinel >/dev/null 2>&1; then
  apt_install redis-sentinel
fi
# Debian's Chromium, driven by Playwright in the Flower test (no browser download).
if [ ! -x /usr/bin/chromium ]; then
  apt_install chromium
fi
# Debian's Prometheus: promtool checks the alert rules and the dashboard's queries, and the
# server scrapes a real cluster for the dashboard rendering (tests/test_monitoring.py, bench/dashboard.py).
if ! command -v promtool >/dev/null 2>&1; then
  apt_install prometheus
fi
# A Docker engine (docker.io, dockerd) and the sandbox image, built with no registry.
PYTHON="$VENV/bin/python" bash "$HERMES_ROOT/ops/ensure-images.sh"
cd "$HERMES_ROOT"
say "running the test suite"
# In parallel (pytest-xdist, -n auto: tests/conftest.py says how many processes); HERMES_TEST_PROCESSES=0
# (or -n 0, any -n given after it wins) runs it in one process: about 10 minutes instead of 25.
exec "$VENV/bin/python" -m pytest -n "${HERMES_TEST_PROCESSES:-auto}" "$@"
