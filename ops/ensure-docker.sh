#!/usr/bin/env bash
# Make sure a Docker engine answers: install docker.io if the CLI is missing, start the daemon if
# nothing answers, then wait until `docker info` works. Idempotent: a working engine is left alone.
# Usage: ops/ensure-docker.sh        (HERMES_DOCKER_WAIT: seconds to wait for the engine, default 60)
set -euo pipefail

WAIT="${HERMES_DOCKER_WAIT:-60}"
LOG="${HERMES_DOCKERD_LOG:-/tmp/dockerd.log}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
say() { printf '==> %s\n' "$*" >&2; }

if docker info >/dev/null 2>&1; then
  exit 0
fi
if ! command -v docker >/dev/null 2>&1 || ! command -v dockerd >/dev/null 2>&1; then
  say "installing docker.io"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq docker.io >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  # A DOCKER_HOST elsewhere is the user's engine: starting a local daemon would not help.
  if [ -n "${DOCKER_HOST:-}" ] && [ "${DOCKER_HOST#unix://}" = "$DOCKER_HOST" ]; then
    echo "ops/ensure-docker.sh: DOCKER_HOST=$DOCKER_HOST does not answer; start that engine" >&2
    exit 1
  fi
  if [ -d /run/systemd/system ] && $SUDO systemctl start docker 2>/dev/null; then
    say "started docker with systemd"
  elif ! pgrep -x dockerd >/dev/null 2>&1; then
    say "starting dockerd in the background (log: $LOG)"
    # setsid: the daemon must outlive this script and the shell that ran it.
    $SUDO setsid dockerd >"$LOG" 2>&1 < /dev/null &
  fi
fi
for _ in $(seq 1 "$WAIT"); do
  if docker info >/dev/null 2>&1; then
    say "docker engine ready: $(docker version --format '{{.Server.Version}}')"
    exit 0
  fi
  sleep 1
done
echo "ops/ensure-docker.sh: no Docker engine answered within ${WAIT}s (DOCKER_HOST=${DOCKER_HOST:-default socket})." >&2
echo "  Last lines of $LOG:" >&2
tail -n 5 "$LOG" 2>/dev/null | sed 's/^/    /' >&2 || true
echo "  If it says 'permission denied', add your user to the docker group: sudo usermod -aG docker \$USER" >&2
exit 1
