#!/usr/bin/env bash
# Renders the status page with some traffic on it and saves a headless-Chromium screenshot
# to docs/status-page.png. Needs: docker-registry, skopeo, chromium, a built binary.
# Usage: scripts/status-page-screenshot.sh [OUTPUT.png]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/docs/status-page.png}
# The newer of the debug and release builds.
bin=$(ls -t "$here"/.build/{debug,release}/registry-mirror 2>/dev/null | head -1)
work=$(mktemp -d /tmp/status-shot.XXXX)
trap 'kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up=$(port); mp=$(port)
printf 'version: 0.1\nlog: {level: error}\nstorage: {filesystem: {rootdirectory: %s}}\nhttp: {addr: 127.0.0.1:%s}\n' "$work/up" "$up" > "$work/up.yml"
docker-registry serve "$work/up.yml" > "$work/up.log" 2>&1 & echo $! > "$work/up.pid"
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$up/v2/" >/dev/null && break; sleep 0.1; done
for name in team/api:v2 team/web:v7 library/base:1; do
  python3 "$here/bench/make-layout.py" --seed "${#name}" "$work/l-${name//[\/:]/-}" v1 1 3 >/dev/null
  skopeo copy -q --dest-tls-verify=false "oci:$work/l-${name//[\/:]/-}:v1" "docker://127.0.0.1:$up/$name"
done
"$bin" serve --listen "127.0.0.1:$mp" --data-dir "$work/data" --upstream "http://127.0.0.1:$up" \
  --upstream "ghcr.io=http://127.0.0.1:1" --max-size 1GiB --log-level error > "$work/m.log" 2>&1 & echo $! > "$work/m.pid"
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$mp/healthz" >/dev/null && break; sleep 0.1; done
for name in team/api:v2 team/web:v7 library/base:1 team/api:v2 team/api:v2; do
  skopeo copy -q --src-tls-verify=false "docker://127.0.0.1:$mp/$name" "oci:$work/pulled:x" >/dev/null; rm -rf "$work/pulled"
done
# One failing upstream, so the health table shows an error.
curl -s "http://127.0.0.1:$mp/v2/ghcr.io/org/tool/manifests/1" >/dev/null || true
sleep 1
chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,1100 \
  --screenshot="$out" "http://127.0.0.1:$mp/" 2>/dev/null
echo "wrote $out"
