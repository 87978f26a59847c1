#!/usr/bin/env bash
# Cold pulls of the 289 MiB image through several registry-mirror binaries, interleaved round
# by round (each on an empty cache every time), beside direct pulls: for bisecting a change in
# the cold path. Prints per binary the median wall seconds, the median ÷ direct of the same
# round, and the mirror's median CPU seconds per pull (utime+stime from /proc).
#   Usage: bash bench/cold-pull-ab.sh [--rounds N] BINARY...
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
rounds=5
[ "${1:-}" = --rounds ] && { rounds=$2; shift 2; }
[ $# -ge 1 ] || { echo "usage: $0 [--rounds N] BINARY..." >&2; exit 2; }
w=$(mktemp -d /tmp/coldab.XXXX); trap 'kill $(cat $w/*.pid 2>/dev/null) 2>/dev/null; rm -rf $w' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() { for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$1/v2/" && return 0; sleep 0.05; done; return 1; }
up=$(port)
printf 'version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\nstorage: {filesystem: {rootdirectory: %s}}\nhttp: {addr: 127.0.0.1:%s}\n' "$w/up" "$up" > $w/up.yml
docker-registry serve $w/up.yml > $w/up.log 2>&1 & echo $! > $w/up.pid
wait_up $up
python3 "$here/bench/make-layout.py" --gzip $w/layout v1 1 32 256 >/dev/null
skopeo copy -q --dest-tls-verify=false oci:$w/layout:v1 docker://127.0.0.1:$up/bench/big:v1
pull() { rm -rf $w/o; local t0=$(date +%s.%N); skopeo copy -q --src-tls-verify=false "docker://127.0.0.1:$1/bench/big:v1" oci:$w/o:v1 >/dev/null; echo "$(date +%s.%N) - $t0" | bc; }
tck=$(getconf CLK_TCK)
for r in $(seq "$rounds"); do
  d=$(pull $up); echo "direct $r $d 0" >> $w/res
  i=0
  for bin in "$@"; do
    i=$((i + 1)); p=$(port); rm -rf $w/data
    "$bin" serve --listen 127.0.0.1:$p --data-dir $w/data --upstream http://127.0.0.1:$up --log-level error > $w/m.log 2>&1 & echo $! > $w/m.pid
    wait_up $p
    t=$(pull $p)
    cpu=$(awk -v t=$tck '{print ($14+$15)/t}' /proc/$(cat $w/m.pid)/stat)
    kill $(cat $w/m.pid); wait $(cat $w/m.pid) 2>/dev/null || true; rm -f $w/m.pid
    echo "$i $r $t $cpu $(echo "$t / $d" | bc -l)" >> $w/res
  done
done
python3 - "$w/res" "$@" <<'PY'
import sys, statistics as st
rows=[l.split() for l in open(sys.argv[1])]
bins=sys.argv[2:]
d=[float(r[2]) for r in rows if r[0]=="direct"]
print(f"direct: median {st.median(d):.3f} s over {len(d)} rounds")
for i,b in enumerate(bins,1):
    rs=[r for r in rows if r[0]==str(i)]
    t=[float(r[2]) for r in rs]; c=[float(r[3]) for r in rs]; q=[float(r[4]) for r in rs]
    print(f"{b}: wall {st.median(t):.3f} s ({min(t):.2f}-{max(t):.2f}), ÷ direct {st.median(q):.2f} ({min(q):.2f}-{max(q):.2f}), mirror CPU {st.median(c):.2f} s")
PY
