#!/usr/bin/env bash
# Cold and warm pulls through registry-mirror and through distribution's proxy mode
# (docker-registry with proxy.remoteurl), side by side on one machine, against one real
# docker-registry upstream on loopback. Each measurement starts from an empty cache.
#
# Usage: bench/pull-bench.sh [RUNS] [LAYER_MIB...]     (defaults: 3 runs; layers 1 32 256)
# Prints one markdown table: medians of RUNS runs, and ratios taken within each run.
set -euo pipefail
runs=${1:-3}; shift || true
layers=("${@:-1 32 256}"); [ $# -gt 0 ] || layers=(1 32 256)
here=$(cd "$(dirname "$0")/.." && pwd)
bin="$here/.build/release/registry-mirror"
[ -x "$bin" ] || (cd "$here" && swift build -c release --product registry-mirror >&2)
work=$(mktemp -d /tmp/pull-bench.XXXX)
cleanup() { kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true; sleep 0.5; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 200); do curl -fs "http://127.0.0.1:$1/v2/" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "no answer on $1" >&2; return 1; }

# A docker-registry; $1 name, $2 port, $3 extra YAML. Its access log goes to $work/$1.log.
start_registry() {
  mkdir -p "$work/$1"
  printf 'version: 0.1\nlog: {level: error, accesslog: {disabled: false}}\nstorage: {filesystem: {rootdirectory: %s}, delete: {enabled: true}}\nhttp: {addr: 127.0.0.1:%s}\n%s\n' \
    "$work/$1/storage" "$2" "$3" > "$work/$1/config.yml"
  docker-registry serve "$work/$1/config.yml" > "$work/$1.log" 2> "$work/$1.err" &
  echo $! > "$work/$1.pid"
  wait_http "$2"
}
stop() { kill "$(cat "$work/$1.pid")" 2>/dev/null || true; rm -f "$work/$1.pid"; sleep 0.3; }
start_mirror() { # $1 port
  rm -rf "$work/mirror-data"
  "$bin" serve --listen "127.0.0.1:$1" --data-dir "$work/mirror-data" --upstream "http://127.0.0.1:$up" --log-level error > "$work/mirror.log" 2>&1 &
  echo $! > "$work/mirror.pid"
  wait_http "$1"
}
start_proxy() { # $1 port
  rm -rf "$work/proxy"
  start_registry proxy "$1" "proxy: {remoteurl: http://127.0.0.1:$up}"
}
# Bytes of GET responses in the upstream's access log since line $1.
upstream_bytes() { tail -n +"$(( $1 + 1 ))" "$work/upstream.log" | awk '$6 == "\"GET" && $9 ~ /^2/ {s += $10} END {print s+0}'; }
lines() { wc -l < "$work/upstream.log"; }
peak_rss_mib() { awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$(cat "$work/$1.pid")/status"; }
now() { date +%s.%N; }
pull() { # $1 port, $2 dest; prints seconds
  local t0 t1; rm -rf "$2"; t0=$(now)
  skopeo copy -q --src-tls-verify=false "docker://127.0.0.1:$1/bench/big:v1" "oci:$2:v1" >/dev/null
  t1=$(now); echo "$t1 - $t0" | bc
}
pull8() { # $1 port; prints wall seconds for 8 concurrent pulls
  local t0 t1 pids=(); t0=$(now)
  for i in 1 2 3 4 5 6 7 8; do
    skopeo copy -q --src-tls-verify=false "docker://127.0.0.1:$1/bench/big:v1" "oci:$work/out8-$i:v1" >/dev/null & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  t1=$(now); rm -rf "$work"/out8-*; echo "$t1 - $t0" | bc
}

up=$(free_port); mp=$(free_port); pp=$(free_port)
start_registry upstream "$up" ""
python3 "$here/bench/make-layout.py" --gzip "$work/layout" v1 "${layers[@]}" >/dev/null
skopeo copy -q --dest-tls-verify=false "oci:$work/layout:v1" "docker://127.0.0.1:$up/bench/big:v1"
image=$(du -cb "$work"/layout/blobs/sha256/* | tail -1 | cut -f1)
echo "image: $(( image / 1048576 )) MiB in ${#layers[@]} layers (${layers[*]} MiB), $runs runs" >&2

for run in $(seq "$runs"); do
  echo "run $run" >&2
  echo "direct $(pull "$up" "$work/out")" >> "$work/r"
  for kind in mirror proxy; do
    port=$mp; [ $kind = proxy ] && port=$pp
    start_$kind "$port"; mark=$(lines)
    echo "$kind.cold $(pull "$port" "$work/out")" >> "$work/r"
    echo "$kind.bytes1 $(upstream_bytes "$mark")" >> "$work/r"
    mark=$(lines)
    echo "$kind.warm $(pull "$port" "$work/out")" >> "$work/r"
    echo "$kind.warmreq $(( $(lines) - mark ))" >> "$work/r"
    stop $kind
    start_$kind "$port"; mark=$(lines)
    echo "$kind.cold8 $(pull8 "$port")" >> "$work/r"
    echo "$kind.bytes8 $(upstream_bytes "$mark")" >> "$work/r"
    echo "$kind.rss8 $(peak_rss_mib $kind)" >> "$work/r"
    stop $kind
  done
  # Ratios within this run: the contenders and the direct pull ran minutes apart at most.
  for kind in mirror proxy; do
    for m in cold warm; do
      echo "$kind.$m.ratio $(python3 -c "print($(grep "^$kind.$m " "$work/r" | tail -1 | cut -d' ' -f2) / $(grep '^direct ' "$work/r" | tail -1 | cut -d' ' -f2))")" >> "$work/r"
    done
  done
done

median() { grep "^$1 " "$work/r" | awk '{print $2}' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
all() { grep "^$1 " "$work/r" | awk '{printf "%s ", $2}'; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
d=$(median direct)
echo "| measure | registry-mirror | distribution proxy | target |"
echo "|---|---|---|---|"
echo "| upstream bytes ÷ image, 1 cold pull | $(ratio "$(median mirror.bytes1)" "$image") | $(ratio "$(median proxy.bytes1)" "$image") | 1.00 |"
echo "| upstream bytes ÷ image, 8 concurrent cold pulls | $(ratio "$(median mirror.bytes8)" "$image") | $(ratio "$(median proxy.bytes8)" "$image") | 1.00 |"
r2() { python3 -c "print(f'{$1:.2f}')"; }
echo "| cold pull time ÷ direct pull, median of per-run ratios (direct: ${d}s) | $(r2 "$(median mirror.cold.ratio)") | $(r2 "$(median proxy.cold.ratio)") | ≤ 1.05 |"
echo "| warm pull time ÷ direct pull, median of per-run ratios | $(r2 "$(median mirror.warm.ratio)") | $(r2 "$(median proxy.warm.ratio)") | ≤ 1.00 |"
echo "| upstream requests, warm pull within TTL | $(median mirror.warmreq) | $(median proxy.warmreq) | 0 |"
echo "| 8 concurrent cold pulls, wall seconds | $(median mirror.cold8) | $(median proxy.cold8) | |"
echo "| peak RSS during 8 concurrent cold pulls, MiB | $(median mirror.rss8) | $(median proxy.rss8) | ≤ 64 |"
echo
echo "Raw runs (seconds, bytes, MiB): direct: $(all direct)"
for k in cold warm cold.ratio warm.ratio cold8 bytes1 bytes8 rss8; do echo "- $k: mirror $(all mirror.$k)/ proxy $(all proxy.$k)"; done
