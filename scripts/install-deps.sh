#!/usr/bin/env bash
# Installs the Debian packages the project needs. Usage: install-deps.sh [--test] [--bench]
# Build/run: libcurl, SQLite, OpenSSL, zlib (gzip layers of docker-save archives) and
# libcrypt (htpasswd bcrypt) headers. Tests add the real parts they run: distribution's
# registry, skopeo and podman, wrk for the load test, and PostgreSQL 15 (the tests make
# throwaway clusters with initdb for the PostgreSQL index). The benchmark (bench/run.sh) adds
# its load and timing tools, wrk and hyperfine, and nginx-light (the static-file reference).
set -euo pipefail
packages=(libcurl4-openssl-dev libsqlite3-dev libssl-dev zlib1g-dev libcrypt-dev)
for flag in "$@"; do
  case $flag in
    --test) packages+=(docker-registry skopeo podman curl tar openssl wrk python3 python3-venv util-linux postgresql) ;;
    --bench) packages+=(docker-registry skopeo curl python3 wrk hyperfine nginx-light) ;;
    *) echo "unknown flag: $flag (known: --test, --bench)" >&2; exit 2 ;;
  esac
done
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
