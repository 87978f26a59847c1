#!/usr/bin/env bash
# Warm pulls of the 289 MiB image, interleaved by hyperfine: direct from the upstream, through
# the mirror with sendfile, and through the mirror with --no-sendfile (buffers). A focused
# re-check of the warm-pull gap in docs/benchmarks.md. Usage: bash bench/warm-pull-check.sh
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd); bin=$here/.build/release/registry-mirror
[ -x "$bin" ] || (cd "$here" && swift build -c release --product registry-mirror >&2)
w=$(mktemp -d /tmp/warmexp.XXXX); trap 'kill $(cat $w/*.pid) 2>/dev/null; rm -rf $w' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up=$(port); a=$(port); b=$(port)
printf 'version: 0.1\nlog: {level: error}\nstorage: {filesystem: {rootdirectory: %s}}\nhttp: {addr: 127.0.0.1:%s}\n' "$w/up" "$up" > $w/up.yml
docker-registry serve $w/up.yml > $w/up.log 2>&1 & echo $! > $w/up.pid
sleep 1
python3 $here/bench/make-layout.py --gzip $w/layout v1 1 32 256 >/dev/null
skopeo copy -q --dest-tls-verify=false oci:$w/layout:v1 docker://127.0.0.1:$up/bench/big:v1
$bin serve --listen 127.0.0.1:$a --data-dir $w/da --upstream http://127.0.0.1:$up --log-level error > $w/a.log 2>&1 & echo $! > $w/a.pid
$bin serve --listen 127.0.0.1:$b --data-dir $w/db --upstream http://127.0.0.1:$up --log-level error --no-sendfile > $w/b.log 2>&1 & echo $! > $w/b.pid
sleep 1
for p in $a $b; do skopeo copy -q --src-tls-verify=false docker://127.0.0.1:$p/bench/big:v1 oci:$w/o:v1 >/dev/null; rm -rf $w/o; done
hyperfine -N -w 1 -r 7 --prepare "rm -rf $w/o" \
  -n direct "skopeo copy -q --src-tls-verify=false docker://127.0.0.1:$up/bench/big:v1 oci:$w/o:v1" \
  -n sendfile "skopeo copy -q --src-tls-verify=false docker://127.0.0.1:$a/bench/big:v1 oci:$w/o:v1" \
  -n buffered "skopeo copy -q --src-tls-verify=false docker://127.0.0.1:$b/bench/big:v1 oci:$w/o:v1" 2>&1 | grep -E "Time|±|direct|sendfile|buffered" 
