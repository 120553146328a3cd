#!/usr/bin/env bash
# Installs the Debian 12 packages ringbid builds, tests and runs with; quick when all are present.
set -euo pipefail

PKGS=(
  build-essential pkg-config make gcc clang
  libuv1-dev libnng-dev libmbedtls-dev libprotobuf-c-dev protobuf-c-compiler
  libpq-dev postgresql postgresql-client
  libsodium-dev libjansson-dev libcmocka-dev acl
  libbsd-dev uthash-dev python3 valgrind procps iproute2 util-linux curl ca-certificates
  python3-yaml docker-compose chromium
)
# The wallboard's browser test drives chromium with playwright-core (npm). A Node.js from
# elsewhere (with its own npm) is kept; otherwise Debian's npm brings Node.js 18.
if ! command -v npm >/dev/null 2>&1; then
  PKGS+=(npm)
fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

SUDO=
if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
