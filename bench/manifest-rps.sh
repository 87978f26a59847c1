#!/usr/bin/env bash
# Warm manifest-by-digest requests/s (wrk -t2 -c32 -d8s) of each registry-mirror binary given,
# interleaved, 3 rounds, for before/after comparisons of the manifest path. wrk is pinned to one
# CPU, as in bench/run.sh (the last one, or the taskset list $BENCH_WRK_CPUS); the servers are not.
# Usage: bash bench/manifest-rps.sh BINARY...
set -euo pipefail
w=$(mktemp -d /tmp/mrps.XXXX); trap 'kill $(cat $w/*.pid 2>/dev/null) 2>/dev/null; rm -rf $w' EXIT
python3 "$(dirname "$0")/make-layout.py" $w/layout docker.io/bench/small:v1 1 >/dev/null
"$1" import $w/layout --data-dir $w/data >/dev/null
digest=$(python3 -c "import json;print(json.load(open('$w/layout/index.json'))['manifests'][0]['digest'])")
cat > $w/accept.lua <<'L'
wrk.headers["Accept"] = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json"
L
i=0
for b in "$@"; do
  i=$((i+1)); p=$((5400+i))
  "$b" serve --offline --listen 127.0.0.1:$p --data-dir $w/data --log-level error > $w/$i.log 2>&1 & echo $! > $w/$i.pid
  sleep 1  # a newer binary migrates the index: an older one must open it first
done
sleep 1
for round in 1 2 3; do
  i=0
  for b in "$@"; do
    i=$((i+1)); p=$((5400+i))
    r=$(taskset -c "${BENCH_WRK_CPUS:-$(( $(nproc) - 1 ))}" wrk -t2 -c32 -d8s -s $w/accept.lua http://127.0.0.1:$p/v2/bench/small/manifests/$digest | awk '/Requests\/sec/ {print $2}')
    echo "$(basename $b) round $round: $r req/s"
  done
done
