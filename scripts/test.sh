#!/usr/bin/env bash
# The whole test suite: unit, HTTP and end-to-end (real docker-registry, skopeo, podman).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --test
# The end-to-end tests run the built registry-mirror binary, so build everything first.
swift build --build-tests
swift test --skip-build
