#!/usr/bin/env bash
# The whole test suite: unit, HTTP and end-to-end (real docker-registry, skopeo, podman).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --test
# The S3 protocol peer the S3 store's tests run: moto's server, from PyPI, in a venv of its own
# (the tests look there first, then on PATH). Idempotent: an existing venv is reused.
if [ ! -x .build/venv-moto/bin/moto_server ]; then
  python3 -m venv .build/venv-moto
  .build/venv-moto/bin/pip install -q 'moto[server]'
fi
# The end-to-end tests run the built registry-mirror binary, so build everything first.
swift build --build-tests
# Suites run one at a time: the machine has 2 cores, and several suites run servers and
# skopeo/podman processes; in parallel they only compete and stretch timeouts.
swift test --skip-build --no-parallel
