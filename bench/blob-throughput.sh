#!/usr/bin/env bash
# Warm blob throughput: one 256 MiB blob served by registry-mirror (sendfile, and buffered
# with --no-sendfile), fetched with `curl -o /dev/null` on loopback, beside `cat` of the
# same file. Median of RUNS runs each, interleaved, in one run. Usage: bench/blob-throughput.sh [RUNS]
set -euo pipefail
runs=${1:-5}
here=$(cd "$(dirname "$0")/.." && pwd)
bin="$here/.build/release/registry-mirror"
[ -x "$bin" ] || (cd "$here" && swift build -c release --product registry-mirror)
work=$(mktemp -d)
# Servers start inside $(…) subshells, so they are tracked by pid file, not `jobs`.
trap 'kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT

digest=$(python3 "$here/bench/make-layout.py" "$work/layout" docker.io/bench/big:v1 256)
"$bin" import "$work/layout" --data-dir "$work/data" >/dev/null
file="$work/data/blobs/sha256/${digest:7:2}/${digest:7}"

start() { # $1: extra flags; prints the port
  "$bin" serve --listen 127.0.0.1:0 --data-dir "$work/data" --log-level warning $1 > "$work/out.$2" 2>&1 &
  echo $! > "$work/$2.pid"
  for _ in $(seq 100); do grep -q listening "$work/out.$2" 2>/dev/null && break; sleep 0.1; done
  grep -o 'http://[^ ]*' "$work/out.$2" | sed 's/.*://'
}
zero=$(start "" zero)
buffered=$(start "--no-sendfile" buffered)
# The client's ceiling: the same file from a bare sendfile server with no HTTP stack.
python3 "$here/bench/sendfile-server.py" "$file" > "$work/out.bare" 2>&1 &
echo $! > "$work/bare.pid"
for _ in $(seq 50); do [ -s "$work/out.bare" ] && break; sleep 0.1; done
bare=$(head -1 "$work/out.bare")

mbps() { python3 -c "import sys; print(round($1 / $2 / 1e6))"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
cat "$file" > /dev/null  # page cache warm
for i in $(seq "$runs"); do
  for port in $zero $buffered $bare; do
    curl -s -o /dev/null -w "%{speed_download}\n" "http://127.0.0.1:$port/v2/bench/big/blobs/$digest" \
      | awk '{printf "%d\n", $1/1e6}' >> "$work/r.$port"
  done
  t0=$(date +%s.%N); cat "$file" > /dev/null; t1=$(date +%s.%N)
  mbps 268435456 "$(echo "$t1 - $t0" | bc)" >> "$work/r.cat"
done
z=$(median < "$work/r.$zero"); b=$(median < "$work/r.$buffered"); c=$(median < "$work/r.cat"); x=$(median < "$work/r.$bare")
echo "| path | MB/s (median of $runs) | runs | ratio to cat |"
echo "|---|---|---|---|"
echo "| registry-mirror, sendfile | $z | $(paste -sd' ' "$work/r.$zero") | $(python3 -c "print(round($z/$c, 2))") |"
echo "| registry-mirror, --no-sendfile (buffers) | $b | $(paste -sd' ' "$work/r.$buffered") | $(python3 -c "print(round($b/$c, 2))") |"
echo "| bare sendfile server, no HTTP stack (curl's ceiling) | $x | $(paste -sd' ' "$work/r.$bare") | $(python3 -c "print(round($x/$c, 2))") |"
echo "| cat FILE > /dev/null | $c | $(paste -sd' ' "$work/r.cat") | 1.00 |"
