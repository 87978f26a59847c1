#!/usr/bin/env bash
# Builds and runs the mirror on its embedded defaults: listen on 0.0.0.0:5000, data in ./data.
# Extra arguments go to `registry-mirror serve` (see `registry-mirror serve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
swift build -c release --product registry-mirror
exec .build/release/registry-mirror serve "$@"
