#!/usr/bin/env bash
# Build a minimal Debian bookworm image with Python 3 and no registry at all:
# debootstrap from Debian's package mirror into a folder, then `docker import` it.
# Usage: ops/build-base-image.sh [TAG]   (default TAG: hermes-base:bookworm)
# Idempotent: an existing TAG is kept unless HERMES_REBUILD_BASE=1. HERMES_BASE_PACKAGES: the
# Debian packages to include (default python3); ops/compose-images.sh builds its stand-ins so.
set -euo pipefail

TAG="${1:-hermes-base:bookworm}"
SUITE="${HERMES_BASE_SUITE:-bookworm}"
PACKAGES="${HERMES_BASE_PACKAGES:-python3}"
# Package names only: the list becomes one debootstrap argument, never shell words.
if ! [[ "$PACKAGES" =~ ^[a-z0-9][a-z0-9.+-]*([\ ][a-z0-9][a-z0-9.+-]*)*$ ]]; then
  echo "ops/build-base-image.sh: HERMES_BASE_PACKAGES must be Debian package names separated by spaces" >&2
  exit 2
fi
# Optional: a Debian mirror of your own, or a frozen point in time for a byte-for-byte rebuild,
# e.g. https://snapshot.debian.org/archive/debian/20250101T000000Z/. Whatever the mirror, every
# package is checked against Debian's archive keyring (below): a mirror can be slow or stale,
# never the author of what is installed.
MIRROR="${HERMES_DEBIAN_MIRROR:-}"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if docker image inspect "$TAG" >/dev/null 2>&1 && [ "${HERMES_REBUILD_BASE:-0}" != "1" ]; then
  echo "base image $TAG already exists (HERMES_REBUILD_BASE=1 rebuilds it)" >&2
  exit 0
fi
if ! command -v debootstrap >/dev/null 2>&1 || [ ! -s "$KEYRING" ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq debootstrap debian-archive-keyring >/dev/null
fi
ROOTFS="$(mktemp -d /tmp/hermes-rootfs.XXXXXX)"
trap '$SUDO rm -rf "$ROOTFS"' EXIT
echo "debootstrap $SUITE into $ROOTFS (about a minute)" >&2
# python3 (not python3-minimal): the engine needs json, unicodedata and the rest of the stdlib.
# With no mirror given, debootstrap uses its own default Debian mirror. --force-check-gpg with
# Debian's keyring: the Release file must carry a valid signature and every package its hash in
# it, or the build stops (without a keyring debootstrap would only warn, and install anyway).
$SUDO debootstrap --force-check-gpg --keyring="$KEYRING" --variant=minbase --include="${PACKAGES// /,}" \
  "$SUITE" "$ROOTFS" $MIRROR >/dev/null
# Nothing from apt's caches or lists belongs in the image.
$SUDO rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
$SUDO tar -C "$ROOTFS" -c . | docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  - "$TAG" >/dev/null
echo "built $TAG with $PACKAGES" >&2
