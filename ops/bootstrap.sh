# Sourced by ops/demo.sh and ops/test.sh: make a virtualenv in .venv with Hermes installed.
# Idempotent: a second run only checks what is already there. Works as root or with sudo.
set -euo pipefail

HERMES_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HERMES_VENV:-$HERMES_ROOT/.venv}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

say() { printf '==> %s\n' "$*" >&2; }

apt_install() {
  # Install Debian packages that are missing; apt-get update only when something is.
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

ensure_python() {
  if ! command -v python3 >/dev/null 2>&1; then
    apt_install python3 python3-venv python3-pip
  fi
  if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "Hermes needs Python 3.11 or newer; python3 is $(python3 -V 2>&1)" >&2
    exit 2
  fi
  # Debian splits venv and ensurepip out of python3.
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    apt_install python3-venv
  fi
}

ensure_venv() {
  # $1: the extras to install, e.g. "" or "test".
  local extras="${1:-}"
  ensure_python
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtualenv $VENV"
    python3 -m venv "$VENV"
  fi
  local spec="$HERMES_ROOT"
  if [ -n "$extras" ]; then spec="$HERMES_ROOT[$extras]"; fi
  say "installing Hermes ($spec) into $VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$spec"
}
