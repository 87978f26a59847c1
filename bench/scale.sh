#!/usr/bin/env bash
# Scale of the cache itself (issue 11): start-up, warm manifest hits, eviction, gc, ls and
# memory on synthetic data directories of 1k, 100k and 1M blobs (a tenth as many images).
#
#   bash bench/scale.sh                      # 1000 100000 1000000 blobs, 3 runs of each timing
#   bash bench/scale.sh --scales "1000 100000" --runs 1 --no-build
#
# Options: --scales "N ...", --runs N, --no-build, --dir DIR (default /tmp/registry-mirror-scale;
# the data directories are kept there and reused until the real gc pass spends them).
# Needs python3, wrk and /usr/bin/time. Prints a markdown table; raw figures go to DIR/results.jsonl.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCALES="1000 100000 1000000"
RUNS=3
BUILD=1
DIR=/tmp/registry-mirror-scale
while [ $# -gt 0 ]; do
  case "$1" in
    --scales) SCALES=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --dir) DIR=$2; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
BIN=$ROOT/.build/release/registry-mirror
if [ "$BUILD" = 1 ]; then
  (cd "$ROOT" && swift build -c release --product registry-mirror 2>&1 | tail -3)
fi
[ -x "$BIN" ] || { echo "no release binary at $BIN" >&2; exit 1; }
for tool in python3 wrk /usr/bin/time; do command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }; done

mkdir -p "$DIR"
RESULTS=$DIR/results.jsonl
: > "$RESULTS"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$ROOT" rev-parse --short HEAD)"
for n in $SCALES; do
  data=$DIR/$n
  if [ ! -f "$data/gen.json" ]; then
    rm -rf "$data"
    start=$(date +%s)
    "$BIN" ls --data-dir "$data" > /dev/null  # the schema, from the binary's own migrations
    python3 "$ROOT/bench/scale-gen.py" "$data" "$n" > "$DIR/$n.gen.json.tmp"
    mv "$DIR/$n.gen.json.tmp" "$data/gen.json"
    echo "generated $n blobs in $(( $(date +%s) - start )) s: $(cat "$data/gen.json")"
  fi
  python3 "$ROOT/bench/scale-measure.py" --bin "$BIN" --data "$data" --runs "$RUNS" | tee -a "$RESULTS"
done
python3 "$ROOT/bench/scale-measure.py" --table "$RESULTS"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
