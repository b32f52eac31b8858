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
# The whole suite runs in one process (-n 0) unless HERMES_TEST_PROCESSES says otherwise: run in
# parallel (pytest-xdist, -n auto) it took 10 minutes instead of 25, but a few cluster tests that
# pass alone and serially failed in full parallel runs (to be isolated: issue 12). Any -n given
# after it wins.
exec "$VENV/bin/python" -m pytest -n "${HERMES_TEST_PROCESSES:-0}" "$@"
