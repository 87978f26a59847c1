#!/usr/bin/env bash
# The warm manifest lookup in process: no socket, no client. Builds the release binaries,
# imports one small image into a scratch data directory, and runs manifest-benchmark
# (Benchmarks/ManifestBenchmark), which builds the application exactly as `registry-mirror
# serve` does and sends GETs of the manifest by digest through its router from 1, 2, 8 and 32
# concurrent tasks. Prints ops/s for each, 2 tasks ÷ 1 task (target ≥ 1.8 on 2 cores) and
# whether throughput falls as tasks are added (a lock every request takes shows as a fall).
#
#   bash bench/inprocess.sh [--rounds N] [--seconds S] [--tasks 1,2,8,32] [--log-level L]
#                           [--records FILE] [--no-build]
#
# Defaults: 3 rounds of 2 s per task count (medians and the spread of rounds), log level
# error (info adds the request log line, written to standard error, here /dev/null).
# --records FILE writes "KEY VALUE" lines for bench/report.py (bench/run.sh --inprocess).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
build=1 args=()
while [ $# -gt 0 ]; do
  case $1 in
    --no-build) build=0 ;;
    --rounds|--seconds|--tasks|--log-level|--records) args+=("$1" "$2"); shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ $build = 1 ]; then
  swift build -c release --product registry-mirror >&2
  swift build -c release --product manifest-benchmark >&2
fi
for b in registry-mirror manifest-benchmark; do
  [ -x ".build/release/$b" ] || { echo "no .build/release/$b (build it, or drop --no-build)" >&2; exit 1; }
done

w=$(mktemp -d /tmp/inprocess.XXXXXX)
trap 'rm -rf "$w"' EXIT
python3 bench/make-layout.py "$w/layout" docker.io/bench/small:v1 1 > /dev/null
.build/release/registry-mirror import "$w/layout" --data-dir "$w/data" --log-level error > /dev/null
digest=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['manifests'][0]['digest'])" "$w/layout/index.json")
.build/release/manifest-benchmark --data-dir "$w/data" --repository bench/small --digest "$digest" "${args[@]}" 2> "$w/stderr" \
  || { cat "$w/stderr" >&2; exit 1; }
