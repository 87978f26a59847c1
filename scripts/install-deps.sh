#!/usr/bin/env bash
# Installs the Debian packages the project needs. Usage: install-deps.sh [--test]
# Build/run: libcurl, SQLite, OpenSSL, zlib (gzip layers of docker-save archives) and
# libcrypt (htpasswd bcrypt) headers. Tests add the real parts they run:
# distribution's registry, skopeo and podman, and wrk for the load test.
set -euo pipefail
packages=(libcurl4-openssl-dev libsqlite3-dev libssl-dev zlib1g-dev libcrypt-dev)
if [ "${1:-}" = "--test" ]; then packages+=(docker-registry skopeo podman curl tar openssl wrk); fi
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
